"""Fit the step-aware predictor (pilotcommit/allocation/steps.py) on measured studies, and score
it against the informative-group rate, leaving one cell out at a time.

Inputs, all committed files, so the fit reruns without the studies' MLflow stores:

- the studies' report tables in docs/regimes.md (the ``pilotcommit study`` markdown: accuracy at
  equal training steps per method, rollouts to target per method, the reference's zero-variance
  share), one section per study;
- each cell's configuration (the sweep files), which gives every method's optimizer steps per
  training step;
- each mix's probe (``ProbeResult.to_dict`` JSON, docs/data/probes/), from which the predictors
  compute what a user would have before training: informative share and rollouts per step.

**The fit.** A method whose accuracy after ``t`` training steps equals the reference method's
after ``t'`` steps progresses ``rho = t' / t`` times as fast per training step (``t'`` read off
the reference's piecewise-linear curve through its initial accuracy). The model says
``log rho = share_exponent * log(s_m / s_ref) + steps_exponent * log(k_m / k_ref)`` with ``s``
the measured informative share of the trained groups (the reference's: 1 minus its measured
zero-variance share; the filtering methods' 1) and ``k`` the optimizer steps per training step;
least squares without intercept over every (cell, method, step) point that can be read off.

**The score.** For each cell, the model fitted on the other cells predicts every method's
rollouts to target from the probe (``steps.step_predictions``); the ranking is compared with the
measured one (rollouts to 75% of the reference's gain; a method that never reached it ranks last,
tied with any other that did not) over the ordered pairs the measurement separates, and its
top method with the measured best. The informative-group rate is scored on the same pairs.

Run ``python -m pilotcommit.analysis.step_fit`` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pilotcommit.allocation.steps import StepModel, step_predictions

# --------------------------------------------------------------------------- reading the report


def _table_after(text: str, title: str) -> list[dict[str, str]]:
    """The markdown table under the first heading that starts with ``title`` in ``text``."""
    match = re.search(rf"^#+ {re.escape(title)}.*$", text, flags=re.MULTILINE)
    if match is None:
        raise ValueError(f"no table titled {title!r}")
    lines = text[match.end():].lstrip("\n").splitlines()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    if len(rows) < 2:
        raise ValueError(f"the table {title!r} is empty")
    head = rows[0]
    return [dict(zip(head, r)) for r in rows[2:]]


def _section(text: str, heading: str) -> str:
    """The text of the ``## heading`` section (up to the next ``## ``)."""
    match = re.search(rf"^## {re.escape(heading)}\s*$", text, flags=re.MULTILINE)
    if match is None:
        raise ValueError(f"no section '## {heading}'")
    rest = text[match.end():]
    end = re.search(r"^## ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


@dataclass
class CellMeasurement:
    """What a study measured in one cell."""

    cell: str
    reference: str
    initial_accuracy: float
    zero_variance: float  # the reference's measured zero-variance share of trained groups
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # method -> (step, accuracy)
    rollouts_to_target: dict[str, float] = field(default_factory=dict)  # gain75; inf: never reached


def read_study_tables(text: str, reference: str = "grpo") -> dict[str, CellMeasurement]:
    """The cells of one study report (the markdown ``pilotcommit study`` writes)."""
    speedups = _table_after(text, "Speed-up of")
    to_target = _table_after(text, "Rollouts to target per method")
    steps = _table_after(text, "Accuracy at equal optimizer steps")
    cells: dict[str, CellMeasurement] = {}
    for row in speedups:
        if row["target"] != "gain75":
            continue
        best = next(float(r["accuracy"]) for r in speedups if r["cell"] == row["cell"] and r["target"] == "best")
        gain75 = float(row["accuracy"])
        # gain75 = a0 + 0.75 (best - a0), both printed to 4 decimals
        initial = (gain75 - 0.75 * best) / 0.25
        share = float(row["GRPO zero-variance share"].split("%")[0]) / 100
        cells[row["cell"]] = CellMeasurement(row["cell"], reference, initial, share)
    for row in to_target:
        if row["target"] != "gain75" or row["cell"] not in cells:
            continue
        for method, value in row.items():
            if method in ("cell", "target"):
                continue
            mean = value.split("(")[0].strip()
            cells[row["cell"]].rollouts_to_target[method] = math.inf if mean in ("-", "") else float(mean.replace(",", ""))
    for row in steps:
        cell = cells.get(row["cell"])
        if cell is None:
            continue
        for method, value in row.items():
            if method in ("cell", "step") or " - " in method or value in ("-", ""):
                continue
            cell.curves.setdefault(method, []).append((int(row["step"]), float(value)))
    return cells


# --------------------------------------------------------------------------- the fit


def step_ratio(curve: list[tuple[int, float]], reference: list[tuple[int, float]], initial: float) -> list[float]:
    """For each point of ``curve``, ``t' / t`` with ``t'`` where the reference's curve (through
    ``(0, initial)``) reaches that accuracy; points outside the reference's range are skipped."""
    ref = [(0, initial), *sorted(reference)]
    ratios = []
    for step, accuracy in curve:
        for (t0, a0), (t1, a1) in zip(ref, ref[1:]):
            if a0 <= accuracy <= a1 and a1 > a0:
                ratios.append((t0 + (t1 - t0) * (accuracy - a0) / (a1 - a0)) / step)
                break
    return ratios


@dataclass(frozen=True)
class FitPoint:
    cell: str
    method: str
    log_share_ratio: float
    log_steps_ratio: float
    log_rho: float


def fit_points(cells: dict[str, CellMeasurement], optimizer_steps: dict[str, dict[str, int]],
               shares: dict[str, dict[str, float]]) -> list[FitPoint]:
    points = []
    for name, cell in cells.items():
        ref_curve = cell.curves.get(cell.reference)
        if not ref_curve:
            continue
        for method, curve in cell.curves.items():
            if method == cell.reference:
                continue
            s = math.log(shares[name][method] / shares[name][cell.reference])
            k = math.log(optimizer_steps[name][method] / optimizer_steps[name][cell.reference])
            for rho in step_ratio(curve, ref_curve, cell.initial_accuracy):
                points.append(FitPoint(name, method, s, k, math.log(rho)))
    return points


def fit_step_model(points: list[FitPoint], fitted_on: str = "") -> StepModel:
    """Least squares of ``log rho`` on the two log ratios (no intercept); an exponent whose
    ratio never varies in ``points`` is 0 (nothing to learn it from)."""
    X = np.array([[p.log_share_ratio, p.log_steps_ratio] for p in points])
    y = np.array([p.log_rho for p in points])
    if not len(points):
        return StepModel(0.0, 0.0, fitted_on)
    used = [j for j in range(2) if np.any(np.abs(X[:, j]) > 1e-12)]
    coef = np.zeros(2)
    if used:
        coef[used] = np.linalg.lstsq(X[:, used], y, rcond=None)[0]
    return StepModel(float(coef[0]), float(coef[1]), fitted_on)


# --------------------------------------------------------------------------- the score


def ordered_pairs(costs: dict[str, float], measured: dict[str, float]) -> tuple[int, int]:
    """``(agreeing, compared)`` over the method pairs the measurement separates (lower is
    better in both; two methods that never reached the target are tied)."""
    methods = sorted(set(costs) & set(measured))
    agree = total = 0
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            if measured[a] == measured[b]:
                continue
            total += 1
            agree += (costs[a] < costs[b]) == (measured[a] < measured[b])
    return agree, total


def leave_one_cell_out(cells, optimizer_steps, shares, predictions_of) -> list[dict]:
    """One row per cell: the two predictors' pair agreement and top method against the
    measurement, the step model fitted without that cell. ``predictions_of(cell)`` gives the
    probe's ``MethodPrediction`` list for that cell's configured methods."""
    rows = []
    for held in cells:
        others = {c: m for c, m in cells.items() if c != held}
        model = fit_step_model(fit_points(others, optimizer_steps, shares), fitted_on=f"all but {held}")
        predictions = predictions_of(held)
        measured = cells[held].rollouts_to_target
        rate = {p.method: -p.informative_groups_per_1k for p in predictions}
        steps = {s.method: s.relative_rollouts_to_target
                 for s in step_predictions(predictions, optimizer_steps[held], model)}
        best_measured = min(measured.values())
        winners = {m for m, v in measured.items() if v == best_measured and math.isfinite(v)}
        rows.append({
            "cell": held, "share_exponent": model.share_exponent, "steps_exponent": model.steps_exponent,
            "rate_pairs": ordered_pairs(rate, measured), "step_pairs": ordered_pairs(steps, measured),
            "rate_top": min(rate, key=rate.get), "step_top": min(steps, key=steps.get),
            "measured_top": sorted(winners),
        })
    return rows


# --------------------------------------------------------------------------- the command

STUDIES = {  # section of docs/regimes.md -> the sweep file whose cells it reports
    "Results": "conf/sweep/regimes.yaml",
    "The optimizer-step study: results": "conf/sweep/optimizer-steps.yaml",
}


def load_studies(doc: str | Path = "docs/regimes.md"):
    """The studies' cells (``CellMeasurement``), their configs, every method's optimizer steps per
    training step and measured informative share, from the report tables in ``doc``."""
    from pilotcommit.config import cell_configs, load_sweep_config

    text = Path(doc).read_text()
    cells, configs = {}, {}
    for heading, sweep_file in STUDIES.items():
        try:
            section = _section(text, heading)
        except ValueError:
            print(f"(no section '## {heading}' in {doc}: its cells are left out)")
            continue
        study_cells = read_study_tables(section)
        by_label = {c.cell_label: c for c in cell_configs(load_sweep_config(sweep_file))}
        prefix = Path(sweep_file).stem
        for name, cell in study_cells.items():
            key = f"{prefix}/{name}"
            cell.cell = key
            cells[key], configs[key] = cell, by_label[name]
    optimizer_steps = {k: {m: cfg.optimizer_steps(m) for m in cfg.methods} for k, cfg in configs.items()}
    shares = {k: {m: (1.0 - cells[k].zero_variance) if configs[k].methods[m].name == "grpo" else 1.0
                  for m in configs[k].methods} for k in cells}
    return cells, configs, optimizer_steps, shares


def main(argv: list[str] | None = None) -> int:
    from pilotcommit.allocation.predict import PassRateCounts, predict_methods

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--doc", default="docs/regimes.md")
    parser.add_argument("--probes", default="docs/data/probes", help="<mix>.json probe results")
    args = parser.parse_args(argv)
    cells, configs, optimizer_steps, shares = load_studies(args.doc)

    def predictions_of(key: str):
        mix = key.split("/")[1].split("-")[0]  # demo-n16 -> demo
        probe = json.loads((Path(args.probes) / f"{mix}.json").read_text())
        counts = PassRateCounts(np.array(probe["successes"]), np.full(len(probe["successes"]), probe["samples"]))
        measured = set(cells[key].rollouts_to_target)
        methods = {m: c for m, c in configs[key].methods.items() if m in measured}
        return predict_methods(methods, counts, probe.get("estimator", "empirical_bayes"))

    model = fit_step_model(fit_points(cells, optimizer_steps, shares), fitted_on=", ".join(cells))
    print(f"fitted on all {len(cells)} cells: share_exponent {model.share_exponent:.3f}, "
          f"steps_exponent {model.steps_exponent:.3f}")
    rows = leave_one_cell_out(cells, optimizer_steps, shares, predictions_of)
    print("| cell | exponents (share, steps) without it | informative-group rate: pairs, top | "
          "step-aware: pairs, top | measured best |")
    print("|---|---|---|---|---|")
    totals = np.zeros(4, dtype=int)
    tops = np.zeros(2, dtype=int)
    for r in rows:
        (ra, rt), (sa, st) = r["rate_pairs"], r["step_pairs"]
        totals += [ra, rt, sa, st]
        tops += [r["rate_top"] in r["measured_top"], r["step_top"] in r["measured_top"]]
        print(f"| {r['cell']} | {r['share_exponent']:.2f}, {r['steps_exponent']:.2f} | {ra}/{rt}, {r['rate_top']} | "
              f"{sa}/{st}, {r['step_top']} | {', '.join(r['measured_top']) or '-'} |")
    print(f"| all | | {totals[0]}/{totals[1]} pairs, top right in {tops[0]}/{len(rows)} | "
          f"{totals[2]}/{totals[3]} pairs, top right in {tops[1]}/{len(rows)} | |")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
