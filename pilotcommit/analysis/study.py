"""The study report of a sweep: per cell, where the candidate method pays and whether the probe's
prediction said so (docs/regimes.md).

A sweep's cells differ in one or two factors (the regime map: the training prompts' pass-rate
spread and the group size). Per cell this module computes, from the runs under the sweep's MLflow
parent run:

- the candidate's (Pilot-Commit's) speed-up over every baseline in rollouts to target, at the
  reference's (GRPO's) best accuracy and at a lower target (75% of the reference's gain), each
  with a 95% paired bootstrap interval over seeds (:func:`pilotcommit.analysis.stats.bootstrap_speedups`);
- accuracy at equal budgets, candidate minus each baseline, paired by seed
  (:func:`pilotcommit.analysis.stats.equal_budget_table`);
- the reference's measured zero-variance share of trained groups (mean over its steps, then over
  seeds, with a bootstrap interval over seeds): the x axis of the speed-up figure;
- the measured informative groups per 1,000 sampled rollouts per method
  (:func:`pilotcommit.analysis.reads.informative_group_rates`) beside the probe's prediction (the
  ``probe/<cell>/probe.json`` artifact the sweep logs), and whether the predicted ranking of the
  methods matches the measured ranking by rollouts to target.

    reads.load_study_inputs(client, parent_run_id)  -> StudyInputs      (MLflow reads only)
    merge_study_inputs([(parent, inputs), ...])     -> StudyInputs      (pure: several sweeps as one)
    study_cells(inputs, ...)                        -> list[CellOutcome] (pure)
    render.study_markdown(cells) / figures.speedup_figure(cells) / publish.log_study(...)

Several sweeps of the same cells (say, the first with three methods and a later one with two
more, through ``pilotcommit sweep --methods``) are reported as one by
:func:`merge_study_inputs`: a run that two sweeps both trained (the same cell, method and seed)
must have the same evaluations and per-step counts in both, else the merge fails naming it; that
check is what makes runs of two code versions comparable, so a later sweep should retrain the
reference method.

Not here: MLflow (reads.py, publish.py), rendering (render.py), Prefect (the sweep flow reports
at its end; ``pilotcommit study`` re-renders from MLflow).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from pilotcommit.analysis import stats
from pilotcommit.analysis.summary import (
    CANDIDATE_METHOD,
    ComparisonSummary,
    RunHistory,
    summarize_comparison,
)
from pilotcommit.config import TargetConfig

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
    candidate: str = CANDIDATE_METHOD  # the method whose speed-ups the cell holds

    def to_dict(self) -> dict:
        out = asdict(self)
        out["zero_variance"] = asdict(self.zero_variance)
        return out


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


def measured_ranking(summary: ComparisonSummary) -> list[list[str]]:
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
    candidate: str = CANDIDATE_METHOD,
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
            summary = summaries[name] = summarize_comparison(runs, target_cfg, candidate=candidate,
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
