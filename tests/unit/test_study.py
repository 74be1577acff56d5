"""pilotcommit.study: the sweep study report on hand-made runs (no model, no MLflow)."""

from __future__ import annotations

import math

import pytest

from pilotcommit import study
from pilotcommit.config import TargetConfig
from pilotcommit.evaluation import AVERAGE_ACCURACY, EvalRecord
from pilotcommit.report import RunHistory, summarize_comparison


def _history(points):
    return [EvalRecord(i, r, {AVERAGE_ACCURACY: a}) for i, (r, a) in enumerate(points)]


def _cell(cell: str, pc_scale: float, seeds=(0, 1, 2)):
    """GRPO: 0.40 -> 0.60 at 1000 (seed + 1) rollouts, flat after; PC the same at pc_scale of that;
    DAPO reaches 0.50 (= 50% of GRPO's gain) at 4000 and never 0.60."""
    runs = []
    for s in seeds:
        at = 1000 * (s + 1)
        runs.append(RunHistory("grpo", s, _history([(0, 0.40), (at, 0.60), (8000, 0.60)]), cell=cell))
        runs.append(RunHistory("pilot_commit", s, _history([(0, 0.40), (int(at * pc_scale), 0.60), (8000, 0.60)]),
                               cell=cell))
        runs.append(RunHistory("dapo", s, _history([(0, 0.40), (4000, 0.50), (8000, 0.50)]), cell=cell))
    return runs


def _steps(cell: str, zero_per_seed: dict[int, tuple[int, int]]):
    return [study.RunSteps("grpo", s, cell, [z] * 4, [i] * 4) for s, (z, i) in zero_per_seed.items()]


def test_speedups_targets_and_equal_budgets_per_cell():
    runs = _cell("fast", 0.5) + _cell("slow", 2.0)
    steps = _steps("fast", {0: (16, 16), 1: (16, 16), 2: (16, 16)}) + _steps("slow", {0: (0, 32), 1: (8, 24), 2: (0, 32)})
    inputs = study.StudyInputs(runs, steps)
    fast, slow = study.study_cells(inputs, resamples=300)
    assert [fast.cell, slow.cell] == ["fast", "slow"]
    # target "best" = 0.60; PC needs half GRPO's rollouts in every seed: exactly 2x in every resample
    assert fast.targets["best"] == pytest.approx(0.60)
    assert fast.speedups["best"]["grpo"]["speedup"] == pytest.approx(2.0)
    assert fast.speedups["best"]["grpo"]["ci_low"] == pytest.approx(2.0)
    assert fast.speedups["best"]["dapo"]["note"] == "not reached"
    assert fast.reached["best"] == {"dapo": "0/3", "grpo": "3/3", "pilot_commit": "3/3"}
    # 75% of GRPO's gain = 0.55: reached by GRPO at 0.75 of its crossing (linear), DAPO never
    assert fast.targets["gain75"] == pytest.approx(0.55)
    assert fast.speedups["gain75"]["grpo"]["speedup"] == pytest.approx(2.0)
    assert slow.speedups["best"]["grpo"]["speedup"] == pytest.approx(0.5)
    # equal budgets: the shortest run ends at 8000; at 8000 every method is flat, PC - GRPO = 0
    last = fast.equal_budget[-1]
    assert last["rollouts"] == 8000
    assert last["diff_vs_grpo"] == pytest.approx(0.0)
    assert last["diff_vs_dapo"] == pytest.approx(0.10)
    # zero-variance share of GRPO's groups: 0.5 in every seed of "fast"; 0, 0.25, 0 in "slow"
    assert fast.zero_variance.value == pytest.approx(0.5)
    assert fast.zero_variance.low == pytest.approx(0.5) == fast.zero_variance.high
    assert slow.zero_variance.value == pytest.approx(0.25 / 3)
    assert slow.zero_variance.low == pytest.approx(0.0)
    assert slow.zero_variance.high == pytest.approx(0.25)


def test_measured_ranking_ties_methods_that_never_reached():
    runs = _cell("c", 0.5)
    summary = summarize_comparison(runs, TargetConfig(), baselines=("dapo", "grpo"))
    assert study.measured_ranking(summary) == [["pilot_commit"], ["grpo"], ["dapo"]]
    # nobody but GRPO at the target: PC and DAPO share the last rank
    runs = [r for r in runs if r.method == "grpo"] + [
        RunHistory(m, s, _history([(0, 0.40), (8000, 0.45)]), cell="c") for m in ("dapo", "pilot_commit")
        for s in range(3)]
    summary = summarize_comparison(runs, TargetConfig(), baselines=("dapo", "grpo"))
    assert study.measured_ranking(summary) == [["grpo"], ["dapo", "pilot_commit"]]


def test_ranking_agreement_counts_strictly_ordered_pairs():
    measured = [["grpo"], ["dapo", "pilot_commit"]]
    # grpo > pc and grpo > dapo are the two ordered pairs; the prediction puts pc first: 1 of 2
    assert study.ranking_agreement(["pilot_commit", "grpo", "dapo"], measured) == (1, 2)
    assert study.ranking_agreement(["grpo", "pilot_commit", "dapo"], measured) == (2, 2)
    assert study.ranking_agreement(["grpo"], measured) is None


def test_probe_predictions_enter_the_cell_and_the_tables():
    runs = _cell("c", 0.5)
    probe = {"recommendation": "use pilot_commit: ...", "predictions": [
        {"method": "grpo", "informative_groups_per_1k": 20.0},
        {"method": "dapo", "informative_groups_per_1k": 10.0},
        {"method": "pilot_commit", "informative_groups_per_1k": 30.0}]}
    rates = {"c": {"grpo": {"per_1k": 21.0, "early_per_1k": 22.0}}}
    (cell,) = study.study_cells(study.StudyInputs(runs, [], {"c": probe}, rates), resamples=100)
    assert cell.predicted_ranking == ["pilot_commit", "grpo", "dapo"]
    assert cell.measured_ranking == [["pilot_commit"], ["grpo"], ["dapo"]]
    assert cell.ranking_pairs_agree == (3, 3)
    assert math.isnan(cell.zero_variance.value)  # no step metrics given
    text = study.markdown_tables([cell])
    assert "| c | grpo | 20.0 | 22.0 | 21.0 |" in text
    assert "| c | pilot_commit > grpo > dapo | pilot_commit > grpo > dapo | 3/3 | use pilot_commit: ... |" in text
    assert "2.00x [2.00, 2.00]" in text


def test_speedup_figure_draws_one_marker_per_defined_cell_and_target():
    cells = study.study_cells(study.StudyInputs(_cell("a", 0.5) + _cell("b", 2.0),
                                                _steps("a", {0: (8, 24), 1: (16, 16)})), resamples=50)
    fig = study.speedup_figure(cells)
    (ax,) = fig.axes
    assert len(ax.containers) == 4  # 2 cells x 2 targets, each an errorbar container
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_equal_steps_compare_accuracy_per_optimizer_step():
    # PC: twice GRPO's rollouts per step, the same accuracy per step; a run that stopped at step 0
    # (out of prompts) is left out of the budgets and shows as "-"
    runs = []
    for s in range(3):
        runs.append(RunHistory("grpo", s, [EvalRecord(0, 0, {AVERAGE_ACCURACY: 0.4}),
                                           EvalRecord(10, 1000, {AVERAGE_ACCURACY: 0.5})], cell="c"))
        runs.append(RunHistory("pilot_commit", s, [EvalRecord(0, 0, {AVERAGE_ACCURACY: 0.4}),
                                                   EvalRecord(10, 2000, {AVERAGE_ACCURACY: 0.5 + 0.01 * s})], cell="c"))
        runs.append(RunHistory("dapo", s, [EvalRecord(0, 0, {AVERAGE_ACCURACY: 0.4})], cell="c"))
    (cell,) = study.study_cells(study.StudyInputs(runs, []), resamples=200)
    assert [r["rollouts"] for r in cell.equal_steps] == [2, 5, 8, 10]
    last = cell.equal_steps[-1]
    assert last["diff_vs_grpo"] == pytest.approx(0.01)  # 0, 0.01, 0.02 over the seeds
    assert math.isnan(last["dapo"]) and "diff_vs_dapo" not in last
    # at equal budgets PC is behind: at 1,000 rollouts it is halfway to its step-10 accuracy
    assert [r["rollouts"] for r in cell.equal_budget] == [250, 500, 750, 1000]
    assert cell.equal_budget[-1]["diff_vs_grpo"] == pytest.approx(-0.05 + 0.005)
    assert "### Accuracy at equal optimizer steps" in study.markdown_tables([cell])
