"""flows/processes.py: a function in a real forkserver child, its progress, result, error and death."""

from __future__ import annotations

import os
import signal

import pytest

from flows.processes import TrainingProcessDied, auto_parallel_runs, run_in_child

pytestmark = pytest.mark.timeout(120)


class Diverged(FloatingPointError):
    pass


def count_to(n: int, progress) -> dict:
    for step in range(1, n + 1):
        progress({"step": step, "pid": os.getpid()})
    return {"steps": n, "pid": os.getpid()}


def fail_after_one(progress) -> None:
    progress({"step": 1})
    raise Diverged("training step 1: loss is nan")


def die_after_one(progress) -> None:
    progress({"step": 1})
    os.kill(os.getpid(), signal.SIGKILL)


def test_result_and_progress_come_back_from_another_process():
    events = []
    out = run_in_child(count_to, {"n": 3}, on_progress=events.append)
    assert out["steps"] == 3 and out["pid"] != os.getpid()
    assert [e["step"] for e in events] == [1, 2, 3]
    assert {e["pid"] for e in events} == {out["pid"]}


def test_the_childs_exception_is_raised_here_with_its_traceback():
    events = []
    with pytest.raises(Diverged, match="loss is nan") as err:
        run_in_child(fail_after_one, {}, on_progress=events.append, describe="training run grpo seed 0")
    assert events == [{"step": 1}]
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "in the training run grpo seed 0 process" in notes and "fail_after_one" in notes


def test_a_killed_child_is_reported_with_its_exit_code():
    with pytest.raises(TrainingProcessDied, match=r"exit code -9 .*resumes it from its last checkpoint"):
        run_in_child(die_after_one, {}, describe="training run dapo seed 1")


def test_an_error_in_the_progress_handler_stops_the_child():
    seen = []

    def handler(event):
        seen.append(event["pid"])
        raise KeyboardInterrupt  # e.g. Ctrl-C while the parent handles an event

    with pytest.raises(KeyboardInterrupt):
        run_in_child(count_to, {"n": 10_000_000}, on_progress=handler)
    with pytest.raises(ProcessLookupError):
        os.kill(seen[0], 0)  # the child is gone (terminated and reaped)


def test_auto_parallel_runs(monkeypatch):
    import flows.processes as processes

    monkeypatch.setattr(processes, "available_cores", lambda: 8)
    assert auto_parallel_runs(1, 9) == 8
    assert auto_parallel_runs(2, 9) == 4
    assert auto_parallel_runs(1, 3) == 3  # never more than there are runs
    assert auto_parallel_runs(16, 9) == 1
    assert auto_parallel_runs(None, 9) == 1  # torch takes every core itself
