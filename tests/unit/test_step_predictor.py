"""The step-aware predictor (issue 26): rollouts per optimizer step in closed form from the probe,
progress per step from a fitted model, and the fit itself (pilotcommit/analysis/step_fit.py)
on the studies' committed report tables."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pilotcommit.allocation.predict import MethodPrediction
from pilotcommit.allocation.steps import StepModel, recommend_by_steps, step_predictions
from pilotcommit.analysis.step_fit import (
    CellMeasurement,
    _section,
    fit_points,
    fit_step_model,
    ordered_pairs,
    read_study_tables,
    step_ratio,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _pred(method, kind, per_1k, rollouts, share):
    return MethodPrediction(method, kind, per_1k, {"rollouts_per_step": rollouts, "informative_share": share})


def test_rollouts_per_optimizer_step_and_relative_rollouts_to_target_in_closed_form():
    """GRPO: 2,048 rollouts in 4 optimizer steps, 80% informative; Pilot-Commit under the
    reference rule: 3,236 in 6, all informative. Progress = steps^0.5 x share^0.25."""
    model = StepModel(share_exponent=0.25, steps_exponent=0.5)
    preds = [_pred("grpo", "grpo", 12.5, 2048, 0.8), _pred("pc_ref", "pilot_commit", 9.9, 3236, 1.0)]
    rows = {s.method: s for s in step_predictions(preds, {"grpo": 4, "pc_ref": 6}, model)}
    assert rows["grpo"].rollouts_per_optimizer_step == 512
    assert rows["pc_ref"].rollouts_per_optimizer_step == pytest.approx(3236 / 6)
    cost_grpo = 2048 / (4 ** 0.5 * 0.8 ** 0.25)
    cost_pc = 3236 / (6 ** 0.5 * 1.0)
    assert rows["grpo"].relative_rollouts_to_target == 1.0
    assert rows["pc_ref"].relative_rollouts_to_target == pytest.approx(cost_pc / cost_grpo)
    line = recommend_by_steps(list(rows.values()))
    assert line.startswith("use grpo: ") and f"{cost_pc / cost_grpo:.2f}x" in line


def test_a_method_whose_steps_fail_is_left_out_and_a_near_tie_keeps_grpo():
    model = StepModel(0.0, 1.0)
    preds = [_pred("grpo", "grpo", 10, 1000, 1.0), _pred("dapo", "dapo", 0.0, 0, 0.0),
             _pred("speed_rl", "speed_rl", 11, 1050, 1.0)]
    rows = step_predictions(preds, {"grpo": 1, "dapo": 1, "speed_rl": 1}, model)
    assert [r.method for r in rows] == ["grpo", "speed_rl"]
    assert recommend_by_steps(rows).startswith("no clear winner by optimizer steps") and "keep the simpler grpo" in recommend_by_steps(rows)


def test_the_regime_studys_report_tables_are_read_back():
    cells = read_study_tables(_section((DOCS / "regimes.md").read_text(), "Results"))
    assert list(cells) == ["demo-n16", "hard-n16", "saturated-n16", "demo-n64", "hard-n64", "saturated-n64"]
    demo = cells["demo-n16"]
    assert demo.zero_variance == pytest.approx(0.388)
    assert demo.initial_accuracy == pytest.approx((0.5535 - 0.75 * 0.5804) / 0.25)
    assert demo.rollouts_to_target["grpo"] == 20480 and demo.rollouts_to_target["pilot_commit"] == 26240
    assert cells["saturated-n16"].rollouts_to_target["pilot_commit"] == math.inf
    assert demo.curves["grpo"] == [(7, 0.4973), (14, 0.5181), (20, 0.5335), (27, 0.5452)]


def test_step_ratio_reads_the_reference_curve_through_its_initial_accuracy():
    ref = [(10, 0.6), (20, 0.7)]  # from (0, 0.5)
    assert step_ratio([(10, 0.65)], ref, 0.5) == [pytest.approx(1.5)]
    assert step_ratio([(5, 0.6)], ref, 0.5) == [pytest.approx(2.0)]
    assert step_ratio([(20, 0.75)], ref, 0.5) == []  # beyond the reference's range: skipped


def test_the_fit_recovers_known_exponents():
    """Curves made from a known model (linear in effective steps): the fit returns its exponents."""
    share_exp, steps_exp = 0.4, 0.7
    cells = {}
    for name, zero_variance in (("a", 0.2), ("b", 0.5)):
        cell = CellMeasurement(name, "grpo", 0.5, zero_variance)
        rate = {"grpo": 1.0,
                "pc": (1 / (1 - zero_variance)) ** share_exp,
                "pc6": (1 / (1 - zero_variance)) ** share_exp * 1.5 ** steps_exp,
                "grpo6": 1.5 ** steps_exp}
        for method, r in rate.items():
            cell.curves[method] = [(t, 0.5 + 0.001 * r * t) for t in (5, 10, 20, 40)]
        cells[name] = cell
    steps = {c: {"grpo": 4, "pc": 4, "pc6": 6, "grpo6": 6} for c in cells}
    shares = {c: {"grpo": 1 - cells[c].zero_variance, "pc": 1.0, "pc6": 1.0, "grpo6": 1 - cells[c].zero_variance}
              for c in cells}
    model = fit_step_model(fit_points(cells, steps, shares))
    assert model.share_exponent == pytest.approx(share_exp, abs=1e-6)
    assert model.steps_exponent == pytest.approx(steps_exp, abs=1e-6)


def test_ordered_pairs_count_only_pairs_the_measurement_separates():
    measured = {"grpo": 100.0, "pc": 120.0, "dapo": math.inf, "greso": math.inf}
    costs = {"grpo": 1.0, "pc": 0.9, "dapo": 2.0, "greso": 1.5}
    # separated pairs: grpo<pc (wrong), grpo<dapo, grpo<greso, pc<dapo, pc<greso (right); dapo=greso skipped
    assert ordered_pairs(costs, measured) == (4, 5)


def test_the_shipped_step_model_is_the_fit_of_the_committed_study_tables():
    """STEP_MODEL is what `python -m pilotcommit.analysis.step_fit` fits on docs/regimes.md, not a
    hand-set pair: refit here and compare (a changed table or constant fails)."""
    from pilotcommit.allocation.steps import STEP_MODEL
    from pilotcommit.analysis.step_fit import fit_points, fit_step_model, load_studies
    from tests.conftest import REPO_ROOT

    cells, _, steps, shares = load_studies(REPO_ROOT / "docs" / "regimes.md")
    assert len(cells) == 8  # 6 regime cells + 2 optimizer-step cells
    fitted = fit_step_model(fit_points(cells, steps, shares))
    assert fitted.share_exponent == pytest.approx(STEP_MODEL.share_exponent, abs=5e-4)
    assert fitted.steps_exponent == pytest.approx(STEP_MODEL.steps_exponent, abs=5e-4)
