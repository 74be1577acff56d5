"""bench/gpu_check.py --tiny: the GPU check's code path (random Qwen2 model, bf16 decode copy,
the project's Learner with bf16 autocast and gradient checkpointing) runs on CPU and measures
what it claims: every row trained, positive rates, the worst micro-batch is the longest."""

from __future__ import annotations

import importlib.util
import math

from tests.conftest import REPO_ROOT


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_mode_runs_on_cpu_and_reports_every_measurement(capsys):
    gpu_check = _gpu_check()
    out = gpu_check.main(["--tiny"])
    assert out["decode"]["tokens_per_s"] > 0 and out["learner"]["step_s"] > 0
    assert out["learner"]["trained_rows"] == 4  # groups of one correct and one wrong rollout
    assert out["learner"]["peak_gib"] > 0
    assert math.isnan(out["mfu"]) and math.isnan(out["bandwidth_fraction"])  # no peak numbers on CPU
    table = capsys.readouterr().out
    for row in ("decode tokens/s", "fraction of the bandwidth limit", "learner MFU", "worst micro-batch",
                "reserved but unallocated"):
        assert row in table


def test_the_learner_batch_puts_the_longest_completions_first():
    gpu_check = _gpu_check()
    batch = gpu_check.learner_batch(rows=6, prompt=4, completion=12, vocab=50)
    lengths = [len(r.completion_token_ids) for r in batch.rollouts]
    assert lengths == [12, 12, 6, 6, 4, 4]
    assert all(len(r.prompt_token_ids) == 4 for r in batch.rollouts)
