"""A training run killed with SIGKILL and started again ends exactly where an uninterrupted run ends.

For each method, a real training run (tiny model, transformers engine, learner,
allocation policy) runs in a subprocess (tests/integration/_train_subprocess.py)
and is killed with SIGKILL mid-way: after a checkpoint exists and before the
run finishes, at a different point for each method (right after the first
checkpoint, during the step after a later one, ...: see KILL_POINTS). The same
command is then run again: it resumes from the last checkpoint. Its final
evaluation history, rollout counts, per-step metrics, weights, optimizer state
and allocation state must equal those of an uninterrupted run with the same seed,
bit for bit. The uninterrupted run is done in this process, so the test also shows
that the result does not depend on the process it was computed in.

A second test kills a process that does nothing but write checkpoints, at
random moments, and checks that the latest checkpoint always loads whole.

The smoke data and warm-started policy are built once per session (conftest) and
shared by every run; each run is 12 steps of seconds. Nothing here is a test double.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pilotcommit.checkpoint import LATEST, checkpoint_root, latest_checkpoint, load_checkpoint
from pilotcommit.config import load_experiment_config
from pilotcommit.loop import FINAL_POLICY_DIR, RESULT_FILE, train_run
from pilotcommit.tracking import MemoryTracker
from tests.conftest import REPO_ROOT, SMOKE_CONFIG
from tests.integration.conftest import read_log_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN_SCRIPT = Path(__file__).with_name("_train_subprocess.py")
# Enough steps after every kill point that the run cannot finish before the kill lands, even
# when this process is starved of CPU for a second or two on a loaded machine.
MAX_STEPS = 12
OVERRIDES = [f"budget.max_steps={MAX_STEPS}", "checkpoint.every_steps=3", "eval.every_steps=3"]
# metrics that measure the machine, not the run
TIMING_PREFIXES = ("time/", "throughput/")
START_TIMEOUT_S = 180.0  # a cold subprocess imports torch + transformers on a shared 2-core box


@pytest.fixture(scope="module")
def resume_config():
    return load_experiment_config(SMOKE_CONFIG, overrides=OVERRIDES)


@pytest.fixture(scope="module")
def prepared_file(smoke_prepared, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prepared") / "prepared.json"
    path.write_text(json.dumps(smoke_prepared.to_dict()))
    return path


def _command(method: str, run_dir: Path, metrics_log: Path, prepared_file: Path, policy: str,
             overrides: list[str] = OVERRIDES) -> list[str]:
    command = [
        sys.executable, str(TRAIN_SCRIPT), "--config", str(SMOKE_CONFIG), "--method", method,
        "--seed", "0", "--run-dir", str(run_dir), "--prepared", str(prepared_file),
        "--initial-policy", policy, "--metrics-log", str(metrics_log),
    ]
    for item in overrides:
        command += ["--set", item]
    return command


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def _checkpoint_written(run_dir: Path, metrics_log: Path) -> bool:
    return (checkpoint_root(run_dir) / LATEST).is_file()


def _mid_step(step: int):
    """Kill as soon as step ``step`` has logged its metrics (its evaluation and checkpoint may
    or may not have been written yet)."""

    def reached(run_dir: Path, metrics_log: Path) -> bool:
        return any(r["step"] >= step for r in read_log_records(metrics_log, "metrics"))

    return reached


KILL_POINTS = {
    "grpo": ("right after the first checkpoint (step 3)", _checkpoint_written),
    "dapo": ("right after step 4 logged its metrics, a step past the step-3 checkpoint", _mid_step(4)),
    "pilot_commit": ("right after step 7, a step past the step-6 checkpoint", _mid_step(7)),
    # past the first epoch (GRESO's skip then reads the streaks a resume must restore)
    "greso": ("right after step 8, two steps past the step-6 checkpoint", _mid_step(8)),
    "speed_rl": ("right after step 5, two steps past the step-3 checkpoint", _mid_step(5)),
}


def _kill_when(command: list[str], run_dir: Path, metrics_log: Path, trigger) -> int:
    """Start ``command``, SIGKILL it as soon as ``trigger`` holds; return the checkpoint step it
    left behind. Fails if the run finished before it could be killed."""
    # output to a file, not a pipe: a pipe nobody reads until the end would stall a chatty run
    log = metrics_log.with_name("killed-run.log")
    with log.open("w") as output:
        proc = subprocess.Popen(command, env=_env(), stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not trigger(run_dir, metrics_log):
            if proc.poll() is not None:
                pytest.fail(f"the run ended (exit {proc.returncode}) before it could be killed:\n"
                            f"{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no kill point within {START_TIMEOUT_S} s")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:  # also when the test itself fails: never leave the run behind
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}: the run was not killed mid-way"
    assert not (run_dir / RESULT_FILE).exists(), "a killed run left a result.json that looks complete"
    latest = latest_checkpoint(run_dir)
    assert latest is not None, "killed before any checkpoint: the kill point is wrong"
    step = load_checkpoint(latest)["loop"].steps
    assert 0 < step < MAX_STEPS
    return step


def _strip(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if not k.startswith(TIMING_PREFIXES)}


def _assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what}: {different[:5]} differ"


def _optimizer_tensors(state: dict) -> dict:
    flat = {}
    for index, per_param in state["learner"]["optimizer"]["state"].items():
        for name, value in per_param.items():
            flat[f"{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return flat


@pytest.mark.parametrize(
    "method, packing", [*[(m, False) for m in KILL_POINTS], ("grpo", True)],
    ids=[*KILL_POINTS, "grpo-packed"],
)
def test_sigkill_then_rerun_equals_uninterrupted_run(
    method, packing, resume_config, smoke_prepared, smoke_policy, prepared_file, tmp_path
):
    overrides = OVERRIDES
    if packing:  # packed micro-batches of at most two sequences' worth of tokens
        overrides = [*OVERRIDES, f"learner.max_tokens_per_micro_batch={2 * resume_config.model.max_positions}"]
        resume_config = load_experiment_config(SMOKE_CONFIG, overrides=overrides)
    # the uninterrupted reference, in this process
    reference_tracker = MemoryTracker()
    reference = train_run(
        resume_config, method, 0, prepared=smoke_prepared, initial_policy=smoke_policy,
        run_dir=tmp_path / "reference", tracker=reference_tracker,
    )
    assert reference.steps == MAX_STEPS
    reference_metrics = {step: _strip(m) for step, m in reference_tracker.metrics}

    run_dir, metrics_log = tmp_path / "killed", tmp_path / "metrics.jsonl"
    command = _command(method, run_dir, metrics_log, prepared_file, smoke_policy, overrides)
    _, trigger = KILL_POINTS[method]
    resumed_from = _kill_when(command, run_dir, metrics_log, trigger)
    logged_before_kill = len(read_log_records(metrics_log, "metrics"))

    rerun = subprocess.run(command, check=False, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    # the rerun resumed (it did not start over): it logged only the steps after the checkpoint
    metric_records = read_log_records(metrics_log, "metrics")
    rerun_steps = [r["step"] for r in metric_records[logged_before_kill:]]
    assert rerun_steps == list(range(resumed_from + 1, MAX_STEPS + 1))
    assert len(read_log_records(metrics_log, "params")) == 1  # params are logged once, by the first start
    # every step logged, before or after the kill, has the reference's values
    for record in metric_records:
        assert _strip(record["metrics"]) == reference_metrics[record["step"]], f"step {record['step']}"
    for record in read_log_records(metrics_log, "evaluation"):
        expected = next(e for e in reference.eval_history if e.step == record["step"])
        assert record["metrics"] == expected.metrics and record["cumulative_rollouts"] == expected.cumulative_rollouts

    # final metrics, evaluation history and budget accounting
    result = json.loads((run_dir / RESULT_FILE).read_text())
    assert result["steps"] == reference.steps
    assert result["cumulative_rollouts"] == reference.cumulative_rollouts
    assert result["final_metrics"] == reference.final_metrics
    assert result["eval_history"] == [e.to_dict() for e in reference.eval_history]

    # final weights, optimizer and allocation state
    _assert_same_tensors(
        load_file(run_dir / FINAL_POLICY_DIR / "model.safetensors"),
        load_file(reference.run_dir / FINAL_POLICY_DIR / "model.safetensors"),
        "final weights",
    )
    resumed_state = load_checkpoint(latest_checkpoint(run_dir))
    reference_state = load_checkpoint(latest_checkpoint(reference.run_dir))
    _assert_same_tensors(_optimizer_tensors(resumed_state), _optimizer_tensors(reference_state), "optimizer")
    assert resumed_state["learner"]["scheduler"] == reference_state["learner"]["scheduler"]
    assert resumed_state["policy"] == reference_state["policy"]
    assert resumed_state["loop"].eval_history == reference_state["loop"].eval_history
    assert resumed_state["loop"].train_pass_rates == reference_state["loop"].train_pass_rates
    assert resumed_state["loop"].generated_tokens == reference_state["loop"].generated_tokens
    # (the saved global torch RNG state is not compared: the reference ran in this process, whose
    # global RNG has been used by other tests; the equalities above show the run never reads it)


# A process that writes checkpoints back to back, continuing from the latest one it finds: a
# kill at a random moment lands inside save_checkpoint almost surely (that is all it does).
_WRITER = """
import sys, torch
from pilotcommit.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
run_dir = sys.argv[1]
latest = latest_checkpoint(run_dir)
step = 0 if latest is None else load_checkpoint(latest)["step"]
while True:
    step += 1
    save_checkpoint(run_dir, step, {"step": step, "weights": torch.full((1 << 20,), float(step))},
                    {"writer": "test"})
"""


def test_kill_during_checkpoint_writing_leaves_a_loadable_checkpoint(tmp_path):
    rng = random.Random(7)
    run_dir = tmp_path / "run"
    previous_step = 0
    leftovers_seen = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(run_dir)], env=_env(),
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            # wait until this writer has saved at least once, then kill it at a random moment
            while latest_checkpoint(run_dir) is None or load_checkpoint(latest_checkpoint(run_dir))["step"] <= previous_step:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "the writer never saved"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        leftovers_seen += any(checkpoint_root(run_dir).glob(".tmp-step-*"))
        latest = latest_checkpoint(run_dir)
        state = load_checkpoint(latest)  # whole, never half-written
        step = state["step"]
        assert latest.name == f"step-{step:06d}"
        assert json.loads((latest / "meta.json").read_text())["step"] == step
        assert torch.equal(state["weights"], torch.full((1 << 20,), float(step)))
        assert step > previous_step
        previous_step = step
    # whatever the last kill left behind, the next save cleans it up
    from pilotcommit.checkpoint import save_checkpoint

    save_checkpoint(run_dir, previous_step + 1, {"step": previous_step + 1}, {})
    assert not any(checkpoint_root(run_dir).glob(".tmp-step-*"))
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == previous_step + 1
    print(f"kills that left a partial .tmp-step-* directory: {leftovers_seen} of 4")
