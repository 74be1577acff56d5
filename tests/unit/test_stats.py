"""pilotcommit.stats: bootstrap intervals of speed-ups and accuracy at equal budgets (hand cases)."""

from __future__ import annotations

import math

import pytest

from pilotcommit.analysis import stats
from pilotcommit.analysis.summary import RunHistory
from pilotcommit.config import TargetConfig
from pilotcommit.evaluation import AVERAGE_ACCURACY, EvalRecord


def _history(points: list[tuple[int, float]]) -> list[EvalRecord]:
    return [
        EvalRecord(i, rollouts, {AVERAGE_ACCURACY: acc}) for i, (rollouts, acc) in enumerate(points)
    ]


# --------------------------------------------------------------------------- sample efficiency


def test_accuracy_at_interpolates_and_never_extrapolates():
    history = _history([(0, 0.40), (1000, 0.50), (3000, 0.60)])
    assert stats.accuracy_at(history, 500, AVERAGE_ACCURACY) == pytest.approx(0.45)
    assert stats.accuracy_at(history, 2000, AVERAGE_ACCURACY) == pytest.approx(0.55)
    assert math.isnan(stats.accuracy_at(history, 3001, AVERAGE_ACCURACY))


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
    out = stats.bootstrap_speedups(_runs(0.5), TargetConfig(), resamples=300)
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
    out = stats.bootstrap_speedups(runs, TargetConfig(), resamples=2000)["grpo"]
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
    (row,) = stats.equal_budget_table(runs, [1000], AVERAGE_ACCURACY, resamples=200)
    assert row["grpo"] == pytest.approx(0.55)
    assert row["pilot_commit"] == pytest.approx(0.57)
    # paired by seed the difference is exactly 0.02 in every seed, so the interval has no width
    assert row["diff_vs_grpo"] == pytest.approx(0.02)
    assert row["diff_vs_grpo_ci"] == pytest.approx([0.02, 0.02])
