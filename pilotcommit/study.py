"""The study report of a sweep: per cell, where the candidate method pays and whether the probe's
prediction said so (docs/regimes.md).

A sweep's cells differ in one or two factors (the regime map: the training prompts' pass-rate
spread and the group size). Per cell this module computes, from the runs under the sweep's MLflow
parent run:

- the candidate's (Pilot-Commit's) speed-up over every baseline in rollouts to target, at the
  reference's (GRPO's) best accuracy and at a lower target (75% of the reference's gain), each
  with a 95% paired bootstrap interval over seeds (:func:`pilotcommit.stats.bootstrap_speedups`);
- accuracy at equal budgets, candidate minus each baseline, paired by seed
  (:func:`pilotcommit.stats.equal_budget_table`);
- the reference's measured zero-variance share of trained groups (mean over its steps, then over
  seeds, with a bootstrap interval over seeds): the x axis of :func:`speedup_figure`;
- the measured informative groups per 1,000 sampled rollouts per method
  (:func:`pilotcommit.report.informative_group_rates`) beside the probe's prediction (the
  ``probe/<cell>/probe.json`` artifact the sweep logs), and whether the predicted ranking of the
  methods matches the measured ranking by rollouts to target.

    load_study_inputs(client, parent_run_id)  -> StudyInputs      (MLflow reads only)
    merge_study_inputs([(parent, inputs), ...]) -> StudyInputs    (pure: several sweeps as one)
    study_cells(inputs, ...)                  -> list[CellOutcome] (pure)
    markdown_tables(cells) / speedup_figure(cells) / log_study(...)

Several sweeps of the same cells (say, the first with three methods and a later one with two
more, through ``pilotcommit sweep --methods``) are reported as one by
:func:`merge_study_inputs`: a run that two sweeps both trained (the same cell, method and seed)
must have the same evaluations and per-step counts in both, else the merge fails naming it; that
check is what makes runs of two code versions comparable, so a later sweep should retrain the
reference method.

Not here: Prefect (flows/sweep.py calls this at the end of a sweep; ``pilotcommit study``
re-renders it from MLflow).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from pilotcommit import report, stats
from pilotcommit.config import TargetConfig
from pilotcommit.report import RunHistory

# the two targets of the study (TargetConfig.fraction_of_reference): the reference's best, and a
# target that is not decided by evaluation noise at the last few evaluations of the budget
TARGETS = {"best": 1.0, "gain75": 0.75}
# equal-budget (and equal-step) comparisons, as fractions of the shortest run that trained at all
# (a run that stopped before its first step, e.g. out of prompts, only shows as "-")
BUDGET_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
ZERO_VARIANCE = "reward/zero_variance_groups"
PROBE_ARTIFACT = "probe.json"


@dataclass(frozen=True)
class Interval:
    """A point estimate with a 95% bootstrap interval (NaN where undefined)."""

    value: float
    low: float
    high: float

    def text(self, fmt: str = ".2f", suffix: str = "") -> str:
        if math.isnan(self.value):
            return "-"
        if math.isnan(self.low):
            return f"{self.value:{fmt}}{suffix}"
        return f"{self.value:{fmt}}{suffix} [{self.low:{fmt}}, {self.high:{fmt}}]"


@dataclass(frozen=True)
class RunSteps:
    """The per-step metrics of one training run that the study reads."""

    method: str
    seed: int
    cell: str
    zero_variance: list[float]  # zero-variance groups in the trained batch, per step
    informative: list[float]  # informative groups, per step


@dataclass
class StudyInputs:
    """Everything the study reads from MLflow: run histories, per-step group counts, probes,
    and the measured informative-group rates per cell and method."""

    runs: list[RunHistory]
    steps: list[RunSteps]
    probes: dict[str, dict] = field(default_factory=dict)  # cell -> ProbeResult.to_dict()
    rates: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # cell -> method -> rates
    # where the runs came from: one entry per sweep parent run (run_id, code_version, methods, runs)
    sources: list[dict] = field(default_factory=list)
    shared_runs: int = 0  # runs two merged sweeps both trained, found identical


class StudyMergeError(ValueError):
    """Two sweeps cannot be reported together: a run both trained differs between them."""


@dataclass
class CellOutcome:
    """One cell of the study."""

    cell: str
    seeds: list[int]
    methods: list[str]
    targets: dict[str, float]  # target name -> accuracy
    reached: dict[str, dict[str, str]]  # target -> method -> "k/n"
    # target -> method -> mean rollouts to it over the seeds that reached it (None: none did)
    rollouts_to_target: dict[str, dict[str, float | None]]
    speedups: dict[str, dict[str, dict]]  # target -> baseline -> bootstrap_speedups() entry
    equal_budget: list[dict]
    equal_steps: list[dict]  # the same at equal optimizer steps (key "rollouts" holds the step)
    zero_variance: Interval  # the reference's zero-variance share of trained groups
    measured_rates: dict[str, dict[str, float]]  # method -> {per_1k, early_per_1k}
    predicted_rates: dict[str, float]  # method -> predicted informative groups per 1k (probe)
    predicted_ranking: list[str]
    measured_ranking: list[list[str]]  # best first; ties (e.g. not reached) share a rank
    ranking_pairs_agree: tuple[int, int] | None  # (agreeing, strictly ordered measured pairs)
    recommendation: str = ""
    candidate: str = report.CANDIDATE_METHOD  # the method whose speed-ups the cell holds

    def to_dict(self) -> dict:
        out = asdict(self)
        out["zero_variance"] = asdict(self.zero_variance)
        return out


# --------------------------------------------------------------------------- pure statistics


def zero_variance_share(steps: Sequence[RunSteps], *, resamples: int, seed: int = 0) -> Interval:
    """Mean over seeds of each run's zero-variance share of trained groups (over all its steps),
    with a 95% bootstrap interval over seeds."""
    shares = []
    for s in steps:
        total = sum(s.zero_variance) + sum(s.informative)
        if total > 0:
            shares.append(sum(s.zero_variance) / total)
    if not shares:
        return Interval(math.nan, math.nan, math.nan)
    values = np.array(shares)
    if len(values) < 2:
        return Interval(float(values.mean()), math.nan, math.nan)
    rng = np.random.default_rng(seed)
    boot = rng.choice(values, size=(resamples, len(values)), replace=True).mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return Interval(float(values.mean()), float(low), float(high))


def _by_step(runs: Sequence[RunHistory]) -> list[RunHistory]:
    """The runs with each evaluation's x coordinate set to its optimizer step, so that the
    equal-budget statistics compare accuracy at equal steps (a method that spends more rollouts
    per step, such as Pilot-Commit's pilots or DAPO's extra rounds, is then not penalised)."""
    return [replace(r, history=[replace(e, cumulative_rollouts=e.step) for e in r.history]) for r in runs]


def measured_ranking(summary: report.ComparisonSummary) -> list[list[str]]:
    """Methods by mean rollouts to target, best first. A method that reached the target in fewer
    seeds than another ranks behind it (reaching is what counts first); methods that never reached
    it share the last rank."""
    keyed = []
    for name, m in summary.methods.items():
        mean = m.mean if m.mean is not None else math.inf
        keyed.append(((-m.reached, mean), name))
    keyed.sort()
    ranks: list[list[str]] = []
    last = None
    for key, name in keyed:
        tie = last is not None and (key == last or (math.isinf(key[1]) and math.isinf(last[1])))
        if tie:
            ranks[-1].append(name)
        else:
            ranks.append([name])
        last = key
    return ranks


def _same_rate(a: float, b: float) -> bool:
    """Two predicted rates that are the same prediction (GRESO's first epoch is DAPO's)."""
    return math.isclose(a, b, rel_tol=1e-9)


def ranking_agreement(predicted: Sequence[str], measured: Sequence[Sequence[str]],
                      rates: Mapping[str, float] | None = None) -> tuple[int, int] | None:
    """(pairs ordered the same way, pairs both order strictly): pairs tied in the measurement,
    or predicted at the same rate (``rates``, e.g. GRESO's first epoch and DAPO, or two screening
    rules with the same split), are left out. None when the prediction does not cover the
    measured methods."""
    position = {m: i for i, m in enumerate(predicted)}
    rank = {m: r for r, names in enumerate(measured) for m in names}
    if not set(rank) <= set(position):
        return None
    names = sorted(rank)
    agree = ordered = 0
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if rank[a] == rank[b] or (rates is not None and _same_rate(rates[a], rates[b])):
                continue
            ordered += 1
            agree += (rank[a] < rank[b]) == (position[a] < position[b])
    return agree, ordered


def study_cells(
    inputs: StudyInputs,
    target: TargetConfig | None = None,
    *,
    candidate: str = report.CANDIDATE_METHOD,
    resamples: int = 2000,
    seed: int = 0,
    order: Sequence[str] = (),
) -> list[CellOutcome]:
    """Every cell's outcome: the cells in ``order`` first (a sweep file's order), then any other
    cell in the order its runs first appear."""
    target = target or TargetConfig()
    present = dict.fromkeys(r.cell for r in inputs.runs)
    cells = [c for c in order if c in present] + [c for c in present if c not in order]
    out = []
    for cell in cells:
        runs = [r for r in inputs.runs if r.cell == cell and r.history]  # not yet evaluated: left out
        if not runs:
            continue
        methods = sorted({r.method for r in runs})
        baselines = tuple(m for m in methods if m != candidate)
        targets, reached, speedups, to_target, summaries = {}, {}, {}, {}, {}
        for name, fraction in TARGETS.items():
            target_cfg = target.model_copy(update={"fraction_of_reference": fraction})
            summary = summaries[name] = report.summarize_comparison(runs, target_cfg, candidate=candidate,
                                                                    baselines=baselines)
            targets[name] = summary.target
            reached[name] = {m: f"{s.reached}/{s.seeds}" for m, s in summary.methods.items()}
            to_target[name] = {m: s.mean for m, s in summary.methods.items()}
            speedups[name] = stats.bootstrap_speedups(runs, target_cfg, resamples=resamples, seed=seed,
                                                      candidate=candidate, baselines=baselines)
        trained = [r for r in runs if r.history[-1].step > 0] or runs
        shortest = min(r.history[-1].cumulative_rollouts for r in trained)
        budgets = [round(f * shortest) for f in BUDGET_FRACTIONS]
        equal = stats.equal_budget_table(runs, budgets, target.metric, resamples=resamples, seed=seed,
                                         candidate=candidate)
        fewest = min(r.history[-1].step for r in trained)
        steps = sorted({max(1, round(f * fewest)) for f in BUDGET_FRACTIONS}) if fewest > 0 else []
        equal_steps = stats.equal_budget_table(_by_step(runs), steps, target.metric, resamples=resamples,
                                               seed=seed, candidate=candidate)
        ref_steps = [s for s in inputs.steps if s.cell == cell and s.method == target.reference_method]
        probe = inputs.probes.get(cell) or {}
        predicted = {p["method"]: float(p["informative_groups_per_1k"]) for p in probe.get("predictions", [])}
        predicted_ranking = sorted(predicted, key=lambda m: -predicted[m])
        ranking = measured_ranking(summaries["gain75"])
        out.append(CellOutcome(
            cell=cell, seeds=sorted({r.seed for r in runs}), methods=methods, targets=targets,
            reached=reached, rollouts_to_target=to_target, speedups=speedups, equal_budget=equal, equal_steps=equal_steps,
            zero_variance=zero_variance_share(ref_steps, resamples=resamples, seed=seed),
            measured_rates=inputs.rates.get(cell, {}), predicted_rates=predicted,
            predicted_ranking=predicted_ranking, measured_ranking=ranking,
            ranking_pairs_agree=ranking_agreement(predicted_ranking, ranking, predicted) if predicted else None,
            recommendation=probe.get("recommendation", ""), candidate=candidate,
        ))
    return out


# --------------------------------------------------------------------------- several sweeps as one


def _first_difference(a: RunHistory, b: RunHistory) -> str:
    if len(a.history) != len(b.history):
        return f"{len(a.history)} against {len(b.history)} evaluations"
    for ra, rb in zip(a.history, b.history):
        if ra != rb:
            return (f"the evaluation at step {ra.step} ({ra.cumulative_rollouts:,} rollouts: {ra.metrics}) "
                    f"against step {rb.step} ({rb.cumulative_rollouts:,} rollouts: {rb.metrics})")
    return "their per-step group counts"


def _merge_probe(cell: str, first: dict, other: dict, names: tuple[str, str]) -> dict:
    """One probe of ``cell`` from two: the same probed counts (else StudyMergeError), the union
    of the predictions (per method the first's), the recommendation made again over all of them."""
    from pilotcommit.allocation.predict import MethodPrediction, recommend

    same = ("prompt_ids", "successes", "samples", "estimator")
    if any(first.get(k) != other.get(k) for k in same):
        raise StudyMergeError(
            f"cell {cell!r}: the probes of sweeps {names[0]} and {names[1]} differ ({', '.join(same)}); "
            "their initial policies or probe settings differ, so their predictions are not of the same prompts")
    have = {p["method"] for p in first.get("predictions", [])}
    predictions = list(first.get("predictions", [])) + [p for p in other.get("predictions", [])
                                                        if p["method"] not in have]
    merged = dict(first, predictions=predictions)
    if predictions and first.get("spread"):
        merged["recommendation"] = recommend([MethodPrediction(**p) for p in predictions], first["spread"])
    return merged


def merge_study_inputs(parts: Sequence[tuple[str, StudyInputs]]) -> StudyInputs:
    """Several sweeps' inputs as one study: ``parts`` are ``(parent run id, inputs)``.

    Runs are keyed by (cell, method, seed). A key in two sweeps must hold the same evaluations and
    per-step group counts in both (then the first is kept and counted in ``shared_runs``); any
    difference raises :class:`StudyMergeError` naming the cell, method, seed, both runs and the
    first difference. Probes of one cell must have probed the same counts; their predictions are
    joined and the recommendation is made again over all methods (``predict.recommend``).
    """
    if not parts:
        raise ValueError("merge_study_inputs: no sweeps given")
    if len(parts) == 1:
        return parts[0][1]
    runs: dict[tuple, tuple[str, RunHistory]] = {}
    steps: dict[tuple, RunSteps] = {}
    probes: dict[str, tuple[str, dict]] = {}
    rates: dict[str, dict[str, dict[str, float]]] = {}
    sources, shared = [], 0
    for parent, inputs in parts:
        own_steps = {(x.cell, x.method, x.seed): x for x in inputs.steps}
        for r in inputs.runs:
            key = (r.cell, r.method, r.seed)
            if key in runs:
                first_parent, first = runs[key]
                if first.history != r.history or steps.get(key) != own_steps.get(key):
                    raise StudyMergeError(
                        f"cell {r.cell!r}, {r.method} seed {r.seed}: run {first.run_id or '(no run id)'} (sweep "
                        f"{first_parent}) and run {r.run_id or '(no run id)'} (sweep {parent}) differ: {_first_difference(first, r)}. The "
                        "sweeps trained the same run differently (other code or settings), so their runs "
                        "cannot be reported together; rerun one of them")
                shared += 1
                continue
            runs[key] = (parent, r)
            if key in own_steps:
                steps[key] = own_steps[key]
        for cell, probe in inputs.probes.items():
            if cell in probes:
                probes[cell] = (probes[cell][0], _merge_probe(cell, probes[cell][1], probe, (probes[cell][0], parent)))
            else:
                probes[cell] = (parent, probe)
        for cell, per_method in inputs.rates.items():
            into = rates.setdefault(cell, {})
            for method, value in per_method.items():
                into.setdefault(method, value)
        sources += inputs.sources or [{"run_id": parent}]
    return StudyInputs([r for _, r in runs.values()], list(steps.values()),
                       {c: p for c, (_, p) in probes.items()}, rates, sources, shared)


# --------------------------------------------------------------------------- MLflow reads


def load_study_inputs(client, parent_run_id: str | Sequence[str],
                      metric: str = report.AVERAGE_ACCURACY) -> StudyInputs:
    """The sweep's child runs (histories and per-step group counts), its probes, and the
    measured informative-group rates per cell; several parent runs: :func:`merge_study_inputs`
    of each one's, in the order given, with the rates over every merged run (a method's seeds may
    come from several sweeps)."""
    ids = [parent_run_id] if isinstance(parent_run_id, str) else list(parent_run_id)
    inputs = merge_study_inputs([(p, _load_sweep(client, p, metric)) for p in ids])
    inputs.rates = _measured_rates(client, inputs.runs)
    return inputs


def _measured_rates(client, runs: Sequence[RunHistory]) -> dict[str, dict[str, dict[str, float]]]:
    return {cell: report.informative_group_rates(client, [(r.method, r.run_id) for r in runs if r.cell == cell])
            for cell in dict.fromkeys(r.cell for r in runs)}


def _load_sweep(client, parent_run_id: str, metric: str) -> StudyInputs:
    """One sweep's runs, per-step counts, probes and provenance (rates: :func:`_measured_rates`)."""
    from pilotcommit.tracking import TAG_CODE_VERSION, metric_history

    runs = report.load_comparison_runs(client, parent_run_id, metric)
    steps = []
    for r in runs:
        zero = [v for _, v in metric_history(client, r.run_id, ZERO_VARIANCE)]
        informative = [v for _, v in metric_history(client, r.run_id, report.INFORMATIVE_GROUPS)]
        steps.append(RunSteps(r.method, r.seed, r.cell, zero, informative))
    source = {"run_id": parent_run_id,
              "code_version": client.get_run(parent_run_id).data.tags.get(TAG_CODE_VERSION, "unknown"),
              "methods": sorted({r.method for r in runs}), "runs": len(runs)}
    return StudyInputs(runs, steps, load_probes(client, parent_run_id), {}, [source])


def load_probes(client, parent_run_id: str) -> dict[str, dict]:
    """``probe/<cell>/probe.json`` artifacts of the parent run: cell -> probe dict."""
    probes = {}
    try:
        cells = client.list_artifacts(parent_run_id, "probe")
    except Exception:  # noqa: BLE001 - no probe folder: a sweep without probes
        return probes
    with tempfile.TemporaryDirectory() as tmp:
        for entry in cells:
            if not entry.is_dir:
                continue
            cell = entry.path.rsplit("/", 1)[-1]
            try:
                local = client.download_artifacts(parent_run_id, f"{entry.path}/{PROBE_ARTIFACT}", tmp)
            except Exception:  # noqa: BLE001 - a cell folder without a probe file: no prediction
                local = None
            if local is not None:
                probes[cell] = json.loads(Path(local).read_text())
    return probes


def log_cell_probe(client, parent_run_id: str, cell: str, probe: Mapping) -> None:
    """The probe of one cell as ``probe/<cell>/probe.json`` on the sweep's parent run (the
    predictions the study report sets beside the measured rates), plus its headline metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / PROBE_ARTIFACT
        path.write_text(json.dumps(dict(probe), indent=2))
        client.log_artifact(parent_run_id, str(path), f"probe/{cell}")
    for key, value in probe.get("spread", {}).items():
        client.log_metric(parent_run_id, f"probe/{cell}/{key}", float(value), step=0)
    for p in probe.get("predictions", []):
        client.log_metric(parent_run_id, f"probe/{cell}/{p['method']}/informative_groups_per_1k",
                          float(p["informative_groups_per_1k"]), step=0)


# --------------------------------------------------------------------------- rendering


def _speedup_text(entry: Mapping | None) -> str:
    if entry is None:
        return "-"
    if entry.get("note"):
        return f"n/a ({entry['note']})"
    value = Interval(entry["speedup"], entry["ci_low"], entry["ci_high"]).text(".2f", "x")
    return value + (" (partial)" if entry.get("partial") else "")


def _difference_table(cells: Sequence[CellOutcome], attr: str, x_name: str, x_fmt: str, methods: Sequence[str],
                      baselines: Sequence[str], candidate: str) -> list[str]:
    """Rows of :func:`pilotcommit.stats.equal_budget_table` output (``CellOutcome.<attr>``)."""
    head = ["cell", x_name, *methods] + [f"{candidate} - {b}" for b in baselines]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        for row in getattr(c, attr):
            out = [c.cell, format(row["rollouts"], x_fmt)]
            out += [f"{row[m]:.4f}" if m in row and not math.isnan(row[m]) else "-" for m in methods]
            for b in baselines:
                if f"diff_vs_{b}" in row:
                    lo, hi = row[f"diff_vs_{b}_ci"]
                    out.append(f"{row[f'diff_vs_{b}']:+.4f} [{lo:+.4f}, {hi:+.4f}]")
                else:
                    out.append("-")
            lines.append("| " + " | ".join(out) + " |")
    return lines


def _predicted_text(c: CellOutcome) -> str:
    """The predicted ranking, "=" between methods predicted at the same rate."""
    if not c.predicted_ranking:
        return "-"
    out = c.predicted_ranking[0]
    for a, b in zip(c.predicted_ranking, c.predicted_ranking[1:]):
        out += (" = " if _same_rate(c.predicted_rates[a], c.predicted_rates[b]) else " > ") + b
    return out


def provenance_text(inputs: StudyInputs) -> str:
    """Which sweeps the study's runs come from (Markdown), when it merges more than one."""
    if len(inputs.sources) < 2:
        return ""
    lines = [f"The runs of {len(inputs.sources)} sweeps (MLflow parent runs), reported as one:", ""]
    for src in inputs.sources:
        lines.append(f"- `{src['run_id']}`: code `{src.get('code_version', 'unknown')}`, "
                     f"{src.get('runs', '?')} runs of {', '.join(src.get('methods', [])) or '?'}")
    if inputs.shared_runs:
        lines += ["", (f"{inputs.shared_runs} runs appear in more than one of them and are identical in every "
                       "evaluation and per-step count, which is what lets their runs be compared."), ""]
    else:
        lines += ["", ("**No run appears in more than one of them: nothing checks that they trained alike** "
                       "(rerun the reference method in the later sweep)."), ""]
    return "\n".join(lines) + "\n"


def markdown_tables(cells: Sequence[CellOutcome], candidate: str | None = None, header: str = "") -> str:
    """The study's tables as Markdown: speed-ups, rollouts to target per method, equal budgets,
    predictor check; ``header`` (e.g. :func:`provenance_text`) first. ``candidate``: the
    cells' own (``CellOutcome.candidate``) unless given."""
    candidate = candidate or (cells[0].candidate if cells else report.CANDIDATE_METHOD)
    baselines = sorted({b for c in cells for t in c.speedups.values() for b in t})
    methods = sorted({m for c in cells for m in c.methods})
    lines = ([header] if header else []) + [f"### Speed-up of {candidate} in rollouts to target (95% paired bootstrap over seeds)", "",
             ("target `best`: GRPO's best seed-mean accuracy; `gain75`: 75% of GRPO's gain over the "
              "initial accuracy. *partial*: a mean leaves out seeds that never reached the target."), ""]
    head = ["cell", "seeds", "GRPO zero-variance share", "target", "accuracy",
            f"reached ({', '.join(methods)})"] + [f"vs {b}" for b in baselines]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        for name in TARGETS:
            row = [c.cell, str(len(c.seeds)), c.zero_variance.text(".1%"), name, f"{c.targets[name]:.4f}",
                   ", ".join(c.reached[name].get(m, "-") for m in methods)]
            row += [_speedup_text(c.speedups[name].get(b)) for b in baselines]
            lines.append("| " + " | ".join(row) + " |")

    lines += ["", ("### Rollouts to target per method (mean over the seeds that reached it, reached/seeds; "
                   "-: no seed did)"), ""]
    head = ["cell", "target", *methods]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        for name in TARGETS:
            row = [c.cell, name]
            for m in methods:
                mean = c.rollouts_to_target.get(name, {}).get(m)
                got = c.reached[name].get(m)
                row.append("-" if got is None else (f"{mean:,.0f} ({got})" if mean is not None else f"- ({got})"))
            lines.append("| " + " | ".join(row) + " |")

    lines += ["", f"### Accuracy at equal budgets ({candidate} minus baseline, paired by seed, 95% bootstrap)", ""]
    lines += _difference_table(cells, "equal_budget", "rollouts", ",.0f", methods, baselines, candidate)
    lines += ["", f"### Accuracy at equal optimizer steps ({candidate} minus baseline, paired by seed, 95% bootstrap)", ""]
    lines += _difference_table(cells, "equal_steps", "step", ".0f", methods, baselines, candidate)

    lines += ["", "### The predictor against the measurement (informative groups per 1,000 sampled rollouts)", ""]
    head = ["cell", "method", "predicted", "measured, first 10 steps", "measured, whole run"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        for m in c.methods:
            pred = c.predicted_rates.get(m)
            meas = c.measured_rates.get(m, {})
            lines.append(f"| {c.cell} | {m} | {pred:.1f} |" if pred is not None else f"| {c.cell} | {m} | - |")
            lines[-1] += (f" {meas['early_per_1k']:.1f} | {meas['per_1k']:.1f} |" if meas else " - | - |")
    lines += ["", ("### Rankings: predicted (informative groups per rollout) against measured "
                   "(rollouts to 75% of GRPO's gain; not reached = tied last)"), ""]
    head = ["cell", "predicted", "measured", "pairs agreeing", "probe's recommendation"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        measured = " > ".join(" = ".join(r) for r in c.measured_ranking)
        agree = f"{c.ranking_pairs_agree[0]}/{c.ranking_pairs_agree[1]}" if c.ranking_pairs_agree else "-"
        lines.append(f"| {c.cell} | {_predicted_text(c)} | {measured} | {agree} "
                     f"| {c.recommendation or '-'} |")
    return "\n".join(lines) + "\n"


def speedup_figure(cells: Sequence[CellOutcome], baseline: str = "grpo", title: str = ""):
    """Speed-up over ``baseline`` against the measured zero-variance share of GRPO's groups, one
    marker per cell and target, with 95% intervals on both axes. Cells where the ratio is
    undefined (a side never reached the target) are listed under the plot, not plotted."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(9.5, 5.0))
    markers = {"best": "o", "gain75": "s"}
    colours = [f"C{i}" for i in range(10)]
    missing = []
    for i, c in enumerate(cells):
        x = c.zero_variance
        for name in TARGETS:
            entry = c.speedups[name].get(baseline)
            if entry is None or entry.get("note") or math.isnan(entry["speedup"]):
                missing.append(f"{c.cell} ({name})")
                continue
            y, lo, hi = entry["speedup"], entry["ci_low"], entry["ci_high"]
            yerr = [[y - lo], [hi - y]] if not math.isnan(lo) else None
            xerr = [[x.value - x.low], [x.high - x.value]] if not math.isnan(x.low) else None
            ax.errorbar([x.value], [y], xerr=xerr, yerr=yerr, fmt=markers[name], color=colours[i % 10],
                        capsize=3, label=f"{c.cell}, target {name}")
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    low, high = ax.get_ylim()
    ax.set_yticks([t for t in (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0) if low <= t <= high])
    ax.set_ylim(low, high)
    ax.set_xlabel("GRPO's zero-variance share of groups (measured, mean over seeds)")
    ax.set_ylabel(f"{cells[0].candidate if cells else report.CANDIDATE_METHOD} speed-up over {baseline} (rollouts)")
    ax.set_title(title or f"speed-up over {baseline} in rollouts to target, against GRPO's zero-variance share "
                 "(95% intervals)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if missing:
        text = "no ratio (a side never reached the target): " + ", ".join(missing)
        fig.text(0.01, 0.01, "\n".join(textwrap.wrap(text, 140)), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.08 if missing else 0, 1, 1))
    return fig


def write_study(cells: Sequence[CellOutcome], out_dir: Path, header: str = "") -> dict[str, Path]:
    """The report's files under ``out_dir``: tables (Markdown, ``header`` first; JSON) and the figure."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "study.md", "json": out_dir / "study.json",
             "figure": out_dir / "speedup_vs_zero_variance.png"}
    paths["markdown"].write_text(markdown_tables(cells, header=header))
    paths["json"].write_text(json.dumps([c.to_dict() for c in cells], indent=2, default=str))
    candidate = cells[0].candidate if cells else report.CANDIDATE_METHOD
    others = sorted({m for c in cells for m in c.methods} - {candidate})
    baseline = "grpo" if candidate != "grpo" else (report.CANDIDATE_METHOD if report.CANDIDATE_METHOD in others
                                                    else (others[0] if others else "grpo"))
    fig = speedup_figure(cells, baseline=baseline)
    fig.savefig(paths["figure"], dpi=120)
    plt.close(fig)
    return paths


def log_study(client, parent_run_id: str, cells: Sequence[CellOutcome], out_dir: Path,
              artifact_dir: str = "study", header: str = "", metric_prefix: str = "study") -> dict[str, Path]:
    """:func:`write_study`, then its files and per-cell speed-up metrics on the parent run
    (``study/<cell>/speedup_vs_<baseline>_<target>``; for another candidate than Pilot-Commit
    ``study/<cell>/<candidate>/speedup_vs_...``)."""
    paths = write_study(cells, out_dir, header)
    for path in paths.values():
        client.log_artifact(parent_run_id, str(path), artifact_dir)
    for c in cells:
        for name, per_baseline in c.speedups.items():
            for b, entry in per_baseline.items():
                if not entry.get("note") and not math.isnan(entry["speedup"]):
                    who = "" if c.candidate == report.CANDIDATE_METHOD else f"{c.candidate}/"
                    client.log_metric(parent_run_id, f"{metric_prefix}/{c.cell}/{who}speedup_vs_{b}_{name}",
                                      float(entry["speedup"]))
        if not math.isnan(c.zero_variance.value):
            client.log_metric(parent_run_id, f"{metric_prefix}/{c.cell}/grpo_zero_variance_share", c.zero_variance.value)
    return paths
