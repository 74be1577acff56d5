"""flows/processes.py: a function in a real forkserver child, its progress, result, error and death."""

from __future__ import annotations

import os
import signal

import pytest

from pilotcommit.runner.processes import TrainingProcessDied, auto_parallel_runs, run_in_child

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
    import pilotcommit.runner.processes as processes

    monkeypatch.setattr(processes, "available_cores", lambda: 8)
    assert auto_parallel_runs(1, 9) == 8
    assert auto_parallel_runs(2, 9) == 4
    assert auto_parallel_runs(1, 3) == 3  # never more than there are runs
    assert auto_parallel_runs(16, 9) == 1
    assert auto_parallel_runs(None, 9) == 1  # torch takes every core itself


def test_a_window_runs_in_process_with_one_worker_and_is_found_by_the_tasks_it_runs():
    """One worker: the target runs in the caller's thread; the window is what the code inside
    the ``with`` block finds (no window: one run at a time, in process), also in a thread that
    copies the context, as Prefect's task runner does."""
    import contextvars
    import threading

    from pilotcommit.runner.processes import RunWindow, current_window

    assert current_window().max_workers == 1 and not current_window().in_children
    with RunWindow(3) as window:
        seen = {}
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(lambda: seen.update(window=current_window()),))
        thread.start()
        thread.join()
        assert seen["window"] is window and window.in_children
    assert current_window() is not window
    here = RunWindow(1)
    assert here.run(lambda n, progress: (progress(n), threading.get_ident()), {"n": 1}, progress=lambda e: None,
                    describe="x")[1] == threading.get_ident()
    with pytest.raises(ValueError, match="parallel_runs must be at least 1"):
        RunWindow(0)
