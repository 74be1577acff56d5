"""The pure statistics of the benchmarks in bench/ (hand cases; milliseconds, no model).

bench/ is not a package: the scripts are loaded from their files. Only their pure functions
are tested here: the bandwidth bound of ``bench/throughput.py --gpu`` and the bootstrap,
interpolation and equal-budget comparison of ``bench/sample_efficiency.py``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest

from pilotcommit.config import TargetConfig
from pilotcommit.evaluation import AVERAGE_ACCURACY, EvalRecord
from pilotcommit.report import RunHistory

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    environ = dict(os.environ)
    try:
        spec.loader.exec_module(module)
    finally:  # the scripts set Prefect/MLflow logging defaults for themselves: not for other tests
        os.environ.clear()
        os.environ.update(environ)
    return module


throughput = _load("throughput")
sample_efficiency = _load("sample_efficiency")


def _history(points: list[tuple[int, float]]) -> list[EvalRecord]:
    return [
        EvalRecord(i, rollouts, {AVERAGE_ACCURACY: acc}) for i, (rollouts, acc) in enumerate(points)
    ]


# --------------------------------------------------------------------------- bandwidth bound


def test_bandwidth_bound_hand_case():
    # 3.09 GB of weights at 3350 GB/s: 1084 steps/s at most; 256 steps in 2 s is 11.8% of that
    out = throughput.bandwidth_limit_fraction(
        generated_tokens=128 * 256,
        wall_s=2.0,
        decode_steps=256,
        weight_bytes=3_090_000_000,
        bandwidth_gbs=3350.0,
    )
    assert out["limit_steps_per_s"] == pytest.approx(3350e9 / 3.09e9)
    assert out["limit_tokens_per_s"] == pytest.approx(128 * 3350e9 / 3.09e9)
    assert out["tokens_per_s"] == pytest.approx(128 * 256 / 2.0)
    assert out["fraction_of_limit"] == pytest.approx(256 * 3.09e9 / 3350e9 / 2.0)
    assert out["fraction_of_limit"] == pytest.approx(out["steps_per_s"] / out["limit_steps_per_s"])


def test_bandwidth_bound_rejects_empty_measurements():
    with pytest.raises(ValueError, match="positive"):
        throughput.bandwidth_limit_fraction(10, 0.0, 5, 1000, 1.0)


# --------------------------------------------------------------------------- sample efficiency


def test_accuracy_at_interpolates_and_never_extrapolates():
    history = _history([(0, 0.40), (1000, 0.50), (3000, 0.60)])
    assert sample_efficiency.accuracy_at(history, 500, AVERAGE_ACCURACY) == pytest.approx(0.45)
    assert sample_efficiency.accuracy_at(history, 2000, AVERAGE_ACCURACY) == pytest.approx(0.55)
    assert math.isnan(sample_efficiency.accuracy_at(history, 3001, AVERAGE_ACCURACY))


def _runs(pc_scale: float, seeds=(0, 1, 2, 3)) -> list[RunHistory]:
    """GRPO reaches 0.50 at 1000 x (seed + 1) rollouts; PC does the same at pc_scale of that;
    DAPO never gets above 0.45."""
    runs = []
    for seed in seeds:
        at = 1000 * (seed + 1)
        runs.append(RunHistory("grpo", seed, _history([(0, 0.40), (at, 0.50), (8000, 0.50)])))
        pc_at = int(at * pc_scale)
        runs.append(
            RunHistory("pilot_commit", seed, _history([(0, 0.40), (pc_at, 0.50), (8000, 0.50)]))
        )
        runs.append(RunHistory("dapo", seed, _history([(0, 0.40), (8000, 0.45)])))
    return runs


def test_bootstrap_speedup_of_a_uniformly_faster_method_is_exact():
    out = sample_efficiency.bootstrap_speedups(_runs(0.5), TargetConfig(), resamples=300)
    grpo = out["grpo"]
    # every resample keeps the pairing, so every ratio of means is exactly 2
    assert grpo["speedup"] == pytest.approx(2.0)
    assert grpo["ci_low"] == pytest.approx(2.0) and grpo["ci_high"] == pytest.approx(2.0)
    assert grpo["undefined_fraction"] == 0.0
    dapo = out["dapo"]
    assert dapo["note"] == "not reached" and dapo["undefined_fraction"] == 1.0
    assert math.isnan(dapo["ci_low"])


def test_bootstrap_interval_contains_the_point_and_spreads_with_unequal_seeds():
    runs = _runs(1.0)
    # seed 0: PC twice as fast; seed 3: PC half as fast; the others equal
    runs = [
        RunHistory(r.method, r.seed, _history([(0, 0.40), (500, 0.50), (8000, 0.50)]))
        if (r.method, r.seed) == ("pilot_commit", 0)
        else RunHistory(r.method, r.seed, _history([(0, 0.40), (8000, 0.50)]))
        if (r.method, r.seed) == ("pilot_commit", 3)
        else r
        for r in runs
    ]
    out = sample_efficiency.bootstrap_speedups(runs, TargetConfig(), resamples=2000)["grpo"]
    # GRPO: 1000+2000+3000+4000 = 10000; PC: 500+2000+3000+8000 = 13500
    assert out["speedup"] == pytest.approx(10_000 / 13_500)
    assert out["ci_low"] < out["speedup"] < out["ci_high"]


def test_equal_budget_table_pairs_seeds():
    runs = []
    for seed, offset in [
        (0, 0.0),
        (1, 0.1),
    ]:  # seed 1 is better for both methods by the same amount
        runs.append(RunHistory("grpo", seed, _history([(0, 0.4 + offset), (2000, 0.6 + offset)])))
        runs.append(
            RunHistory("pilot_commit", seed, _history([(0, 0.42 + offset), (2000, 0.62 + offset)]))
        )
    (row,) = sample_efficiency.equal_budget_table(runs, [1000], AVERAGE_ACCURACY, resamples=200)
    assert row["grpo"] == pytest.approx(0.55)
    assert row["pilot_commit"] == pytest.approx(0.57)
    # paired by seed the difference is exactly 0.02 in every seed, so the interval has no width
    assert row["diff_vs_grpo"] == pytest.approx(0.02)
    assert row["diff_vs_grpo_ci"] == pytest.approx([0.02, 0.02])
