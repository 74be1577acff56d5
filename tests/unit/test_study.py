"""pilotcommit.study: the sweep study report on hand-made runs (no model, no MLflow)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from pilotcommit.analysis import figures, render, study
from pilotcommit.analysis.summary import RunHistory, summarize_comparison
from pilotcommit.config import TargetConfig
from pilotcommit.evaluation import AVERAGE_ACCURACY, EvalRecord


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
    # a pair predicted at the same rate has no predicted order: left out, whichever comes first
    rates = {"grpo": 20.0, "pilot_commit": 20.0, "dapo": 10.0}
    assert study.ranking_agreement(["pilot_commit", "grpo", "dapo"], measured, rates) == (1, 1)
    assert study.ranking_agreement(["grpo", "pilot_commit", "dapo"], measured, rates) == (1, 1)


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
    text = render.study_markdown([cell])
    assert "| c | grpo | 20.0 | 22.0 | 21.0 |" in text
    assert "| c | pilot_commit > grpo > dapo | pilot_commit > grpo > dapo | 3/3 | use pilot_commit: ... |" in text
    assert "2.00x [2.00, 2.00]" in text


def test_speedup_figure_draws_one_marker_per_defined_cell_and_target():
    cells = study.study_cells(study.StudyInputs(_cell("a", 0.5) + _cell("b", 2.0),
                                                _steps("a", {0: (8, 24), 1: (16, 16)})), resamples=50)
    fig = figures.speedup_figure(cells)
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
    assert "### Accuracy at equal optimizer steps" in render.study_markdown([cell])


def _probe(methods: dict[str, float], successes=(0, 2, 4)):
    spread = {"at_0": 1 / 3, "at_1": 1 / 3}
    return {"prompt_ids": ["a", "b", "c"], "successes": list(successes), "samples": 4,
            "estimator": "empirical_bayes", "spread": spread, "recommendation": "as logged",
            "predictions": [{"method": m, "kind": m, "informative_groups_per_1k": v, "breakdown": {}, "note": ""}
                            for m, v in methods.items()]}


def _sweep(cell: str, methods: dict[str, float], pc_scale: float = 0.5):
    """One sweep's inputs: _cell's runs of `methods` (greso: DAPO's runs renamed), its probe."""
    runs = []
    for r in _cell(cell, pc_scale):
        if r.method in methods:
            runs.append(r)
        if r.method == "dapo" and "greso" in methods:
            runs.append(RunHistory("greso", r.seed, list(r.history), cell=cell))
    steps = [study.RunSteps(r.method, r.seed, cell, [8] * 2, [24] * 2) for r in runs]
    rates = {cell: {m: {"per_1k": v, "early_per_1k": v} for m, v in methods.items()}}
    return study.StudyInputs(runs, steps, {cell: _probe(methods)}, rates,
                             [{"run_id": "x", "code_version": "v", "methods": sorted(methods), "runs": len(runs)}])


def test_two_sweeps_of_the_same_cells_report_as_one():
    """A later sweep of two more methods (and GRPO again): one study of all four, the shared GRPO
    runs checked identical and counted, the probes' predictions joined, the recommendation redone."""
    first = _sweep("c", {"grpo": 20.0, "dapo": 10.0, "pilot_commit": 30.0})
    later = _sweep("c", {"grpo": 20.0, "greso": 40.0})
    merged = study.merge_study_inputs([("p1", first), ("p2", later)])
    assert merged.shared_runs == 3  # GRPO's three seeds
    assert sorted((r.method, r.seed) for r in merged.runs) == sorted(
        (m, s) for m in ("grpo", "dapo", "pilot_commit", "greso") for s in range(3))
    assert len(merged.steps) == 12 and len(merged.sources) == 2
    assert set(merged.rates["c"]) == {"grpo", "dapo", "pilot_commit", "greso"}
    probe = merged.probes["c"]
    assert [p["method"] for p in probe["predictions"]] == ["grpo", "dapo", "pilot_commit", "greso"]
    assert probe["recommendation"].startswith("use greso: 40.0")  # 40 > 30 by more than the clear edge
    (cell,) = study.study_cells(merged, resamples=100)
    assert cell.methods == ["dapo", "greso", "grpo", "pilot_commit"]
    assert cell.speedups["gain75"]["greso"]["note"] == cell.speedups["gain75"]["dapo"]["note"] == "not reached"
    assert cell.speedups["best"]["grpo"]["speedup"] == pytest.approx(2.0)
    assert cell.predicted_ranking == ["greso", "pilot_commit", "grpo", "dapo"]
    assert cell.rollouts_to_target["best"]["greso"] is None and cell.reached["best"]["greso"] == "0/3"
    text = render.study_markdown([cell], header=render.provenance_text(merged))
    assert text.startswith("The runs of 2 sweeps")
    assert "3 runs appear in more than one of them and are identical" in text
    assert "| c | greso > pilot_commit > grpo > dapo |" in text  # no two predicted alike here
    assert "| c | best | - (0/3) | - (0/3) | 2,000 (3/3) | 1,000 (3/3) |" in text  # dapo greso grpo pc
    # no shared run: the report says nothing checks the two sweeps against each other
    alone = study.merge_study_inputs([("p1", first), ("p2", _sweep("c", {"greso": 40.0}))])
    assert alone.shared_runs == 0 and "No run appears in more than one of them" in render.provenance_text(alone)
    # one sweep: nothing to merge, no provenance paragraph
    assert study.merge_study_inputs([("p1", first)]) is first and render.provenance_text(first) == ""


def test_a_run_two_sweeps_trained_differently_stops_the_merge():
    """A shared run that differs (other code or settings) fails naming the cell, method, seed and
    both runs; so do probes of different prompts or counts."""
    first = _sweep("c", {"grpo": 20.0, "pilot_commit": 30.0})
    later = _sweep("c", {"grpo": 20.0, "greso": 40.0})
    i = next(i for i, r in enumerate(later.runs) if r.method == "grpo" and r.seed == 1)
    history = list(later.runs[i].history)
    history[1] = EvalRecord(1, history[1].cumulative_rollouts, {AVERAGE_ACCURACY: 0.59})
    later.runs[i] = dataclasses.replace(later.runs[i], run_id="r-later", history=history)
    with pytest.raises(study.StudyMergeError, match=r"cell 'c', grpo seed 1: run \(no run id\) \(sweep p1\) and run "
                                                    r"r-later \(sweep p2\) differ: the evaluation at step 1"):
        study.merge_study_inputs([("p1", first), ("p2", later)])
    # the same evaluations, other per-step counts: also a different run
    later = _sweep("c", {"grpo": 20.0, "greso": 40.0})
    later.steps[0] = study.RunSteps("grpo", 0, "c", [0, 0], [32, 32])
    with pytest.raises(study.StudyMergeError, match="grpo seed 0.*their per-step group counts"):
        study.merge_study_inputs([("p1", first), ("p2", later)])
    later = _sweep("c", {"greso": 40.0})
    later.probes["c"] = _probe({"greso": 40.0}, successes=(0, 2, 3))
    with pytest.raises(study.StudyMergeError, match="cell 'c': the probes of sweeps p1 and p2 differ"):
        study.merge_study_inputs([("p1", first), ("p2", later)])


def test_another_candidate_gets_its_speedups_over_every_other_method():
    """`pilotcommit study --candidate grpo`: the same runs, GRPO's speed-ups (the inverse of
    Pilot-Commit's over GRPO), named in the tables and the figure."""
    (cell,) = study.study_cells(study.StudyInputs(_cell("c", 0.5), []), candidate="grpo", resamples=100)
    assert cell.candidate == "grpo"
    assert set(cell.speedups["best"]) == {"dapo", "pilot_commit"}
    assert cell.speedups["best"]["pilot_commit"]["speedup"] == pytest.approx(0.5)
    text = render.study_markdown([cell])
    assert "### Speed-up of grpo in rollouts to target" in text and "| grpo - pilot_commit |" in text
    fig = figures.speedup_figure([cell], baseline="pilot_commit")
    assert fig.axes[0].get_ylabel() == "grpo speed-up over pilot_commit (rollouts)"
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_methods_predicted_alike_are_shown_tied():
    """GRESO's first epoch is DAPO's: the same predicted rate, shown "=" in the rankings table."""
    inputs = _sweep("c", {"grpo": 20.0, "dapo": 10.0, "greso": 10.0})
    (cell,) = study.study_cells(inputs, resamples=50)
    assert set(cell.predicted_ranking[1:]) == {"dapo", "greso"}
    row = next(line for line in render.study_markdown([cell]).splitlines() if line.startswith("| c | grpo >"))
    assert row.split(" | ")[1] in ("grpo > dapo = greso", "grpo > greso = dapo")
