"""The comparison: target accuracy, rollouts to target per method and seed, speed-ups of
Pilot-Commit over the baselines, the accuracy-versus-budget figure, and the nightly
regression verdict.

The numbers are pure functions over plain records (:class:`RunHistory`: one run's evaluation
history), so they are tested by hand cases in milliseconds; the target and the
rollouts-to-target rule themselves are :mod:`pilotcommit.evaluation`'s. Around them, thin
readers and writers: :func:`load_comparison_runs` reads a comparison's child runs back from
MLflow (``eval/*`` against steps, ``by_rollouts/*`` against cumulative rollouts),
:func:`log_comparison` writes the figure, the summary table and summary metrics to the parent
run, :func:`render_summary` and :func:`render_details` make the rich tables the CLI prints.

Conventions (ALGORITHMS.md, "Evaluation and the headline metric"):
- a seed that never reaches the target is reported as *not reached*, never as a number;
- a method's mean and std of rollouts to target are over the seeds that reached it, shown
  with how many did (``reached 2/3``); a speed-up computed from such partial means is
  flagged ``partial``;
- speed-up of PC over a baseline = baseline's mean rollouts to target / PC's; the spread is
  that of the per-seed paired ratios (same seed, both reached).

Deliberately not here: training, evaluation sampling, or how runs are launched.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pilotcommit.config import TargetConfig
from pilotcommit.evaluation import AVERAGE_ACCURACY, EvalRecord, rollouts_to_target, target_accuracy

CANDIDATE_METHOD = "pilot_commit"
BASELINE_METHODS = ("grpo", "dapo")
SUMMARY_PREFIX = "comparison/"


@dataclass(frozen=True)
class RunHistory:
    """One training run's evaluations, with what identifies it in the comparison."""

    method: str
    seed: int
    history: list[EvalRecord]
    model: str = ""
    run_id: str | None = None
    cell: str = ""  # the sweep cell (tag `cell`; the model's label where a run has no such tag)


@dataclass(frozen=True)
class MethodSummary:
    """Rollouts to target of one method over its seeds."""

    method: str
    rollouts_to_target: dict[int, int | None]  # seed -> rollouts (None: not reached)
    mean: float | None  # over the seeds that reached the target
    std: float | None
    final_accuracy_mean: float
    final_accuracy_std: float
    final_rollouts_mean: float
    # seed -> final accuracy (the nightly pairs seeds and bootstraps over them)
    final_accuracy: dict[int, float] = field(default_factory=dict)

    @property
    def reached(self) -> int:
        return sum(v is not None for v in self.rollouts_to_target.values())

    @property
    def seeds(self) -> int:
        return len(self.rollouts_to_target)

    @property
    def all_reached(self) -> bool:
        return self.reached == self.seeds and self.seeds > 0


@dataclass(frozen=True)
class SpeedUp:
    """How many times fewer rollouts ``method`` needed than ``baseline`` to reach the target."""

    method: str
    baseline: str
    ratio_of_means: float | None  # None: one side never reached the target
    paired: dict[int, float]  # seed -> baseline / method, seeds where both reached
    partial: bool  # a mean behind the ratio leaves out seeds that never reached the target
    note: str = ""  # why there is no ratio: "not reached" or "target met before training"

    @property
    def paired_min(self) -> float | None:
        return min(self.paired.values()) if self.paired else None

    @property
    def paired_max(self) -> float | None:
        return max(self.paired.values()) if self.paired else None

    @property
    def paired_std(self) -> float | None:
        return float(np.std(list(self.paired.values()))) if len(self.paired) > 1 else None


@dataclass(frozen=True)
class ComparisonSummary:
    """Everything the comparison reports."""

    metric: str
    target: float
    methods: dict[str, MethodSummary]
    speedups: list[SpeedUp] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One row per method: the summary table logged to MLflow and printed."""
        rows = []
        for name, m in self.methods.items():
            row: dict[str, Any] = {
                "method": name,
                "seeds": m.seeds,
                "reached": m.reached,
                "rollouts_to_target_mean": m.mean,
                "rollouts_to_target_std": m.std,
                "rollouts_to_target_per_seed": json.dumps({str(s): v for s, v in m.rollouts_to_target.items()}),
                "final_accuracy_mean": m.final_accuracy_mean,
                "final_accuracy_std": m.final_accuracy_std,
                "final_rollouts_mean": m.final_rollouts_mean,
            }
            for s in self.speedups:
                if s.method == name:
                    row[f"speedup_vs_{s.baseline}"] = s.ratio_of_means
                    row[f"speedup_vs_{s.baseline}_paired_min"] = s.paired_min
                    row[f"speedup_vs_{s.baseline}_paired_max"] = s.paired_max
            rows.append(row)
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "target": self.target,
            "methods": {
                k: {**asdict(v), "rollouts_to_target": {str(s): r for s, r in v.rollouts_to_target.items()},
                    "final_accuracy": {str(s): a for s, a in v.final_accuracy.items()}}
                for k, v in self.methods.items()
            },
            "speedups": [
                {**asdict(s), "paired": {str(k): v for k, v in s.paired.items()},
                 "paired_min": s.paired_min, "paired_max": s.paired_max, "paired_std": s.paired_std}
                for s in self.speedups
            ],
        }

    def metrics(self, prefix: str = SUMMARY_PREFIX) -> dict[str, float]:
        """Flat summary metrics for the parent run (``comparison/...``)."""
        out = {f"{prefix}target_accuracy": self.target}
        for name, m in self.methods.items():
            out[f"{prefix}{name}/reached_fraction"] = m.reached / max(m.seeds, 1)
            out[f"{prefix}{name}/final_accuracy_mean"] = m.final_accuracy_mean
            if m.mean is not None:
                out[f"{prefix}{name}/rollouts_to_target_mean"] = m.mean
            if m.std is not None:
                out[f"{prefix}{name}/rollouts_to_target_std"] = m.std
        for s in self.speedups:
            base = f"{prefix}speedup/{s.method}_vs_{s.baseline}"
            if s.ratio_of_means is not None:
                out[base] = s.ratio_of_means
            if s.paired:
                out[f"{base}_paired_min"] = float(s.paired_min)
                out[f"{base}_paired_max"] = float(s.paired_max)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComparisonSummary:
        """Inverse of :meth:`to_dict` (cached flow results are JSON)."""
        def seeds(d: Mapping[str, Any]) -> dict[int, Any]:
            return {int(k): v for k, v in d.items()}

        methods = {
            name: MethodSummary(
                method=m["method"], rollouts_to_target=seeds(m["rollouts_to_target"]), mean=m["mean"],
                std=m["std"], final_accuracy_mean=m["final_accuracy_mean"],
                final_accuracy_std=m["final_accuracy_std"], final_rollouts_mean=m["final_rollouts_mean"],
                final_accuracy={k: float(v) for k, v in seeds(m.get("final_accuracy", {})).items()},
            )
            for name, m in data["methods"].items()
        }
        speedups = [
            SpeedUp(s["method"], s["baseline"], s["ratio_of_means"], seeds(s["paired"]), s["partial"],
                    s.get("note", ""))
            for s in data["speedups"]
        ]
        return cls(data["metric"], float(data["target"]), methods, speedups)


# --------------------------------------------------------------------------- pure maths


def group_histories(runs: Sequence[RunHistory]) -> dict[str, list[list[EvalRecord]]]:
    """``{method: [history of each seed, ordered by seed]}`` (the input of target_accuracy)."""
    grouped: dict[str, list[RunHistory]] = {}
    for run in runs:
        grouped.setdefault(run.method, []).append(run)
    return {m: [r.history for r in sorted(rs, key=lambda r: r.seed)] for m, rs in grouped.items()}


def summarize_method(method: str, runs: Sequence[RunHistory], target: float, metric: str) -> MethodSummary:
    per_seed: dict[int, int | None] = {}
    finals, final_rollouts = [], []
    final_by_seed: dict[int, float] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        if run.seed in per_seed:
            raise ValueError(f"method {method!r}: two runs with seed {run.seed}")
        per_seed[run.seed] = rollouts_to_target(run.history, target, metric)
        if run.history:
            finals.append(run.history[-1].metrics.get(metric, math.nan))
            final_by_seed[run.seed] = float(finals[-1])
            final_rollouts.append(run.history[-1].cumulative_rollouts)
    reached = [v for v in per_seed.values() if v is not None]
    return MethodSummary(
        method=method,
        rollouts_to_target=per_seed,
        mean=float(np.mean(reached)) if reached else None,
        std=float(np.std(reached)) if reached else None,
        final_accuracy_mean=float(np.mean(finals)) if finals else math.nan,
        final_accuracy_std=float(np.std(finals)) if finals else math.nan,
        final_rollouts_mean=float(np.mean(final_rollouts)) if final_rollouts else math.nan,
        final_accuracy=final_by_seed,
    )


def speedup(candidate: MethodSummary, baseline: MethodSummary) -> SpeedUp:
    """Baseline's rollouts to target over the candidate's: of the means, and per paired seed."""
    ratio = None
    if candidate.mean is not None and baseline.mean is not None and candidate.mean > 0:
        ratio = baseline.mean / candidate.mean
    paired = {}
    for seed, ours in candidate.rollouts_to_target.items():
        theirs = baseline.rollouts_to_target.get(seed)
        if ours is not None and theirs is not None and ours > 0:
            paired[seed] = theirs / ours
    partial = ratio is not None and not (candidate.all_reached and baseline.all_reached)
    note = ""
    if ratio is None:
        # A zero means the initial policy already met the target: no budget was needed, and a
        # ratio of rollouts would divide by zero. Say so rather than print "not reached".
        note = "target met before training" if candidate.mean == 0 else "not reached"
    return SpeedUp(candidate.method, baseline.method, ratio, paired, partial, note)


def summarize_comparison(
    runs: Sequence[RunHistory],
    target_cfg: TargetConfig,
    *,
    target_override: float | None = None,
    candidate: str = CANDIDATE_METHOD,
    baselines: Sequence[str] | None = None,
) -> ComparisonSummary:
    """Target (from ``target_cfg``, or ``target_override``, e.g. a baseline's target), rollouts to
    target per method and seed, and speed-ups of ``candidate`` over each present baseline.

    ``baselines=None``: every other method present, GRPO and DAPO first (so a comparison that
    also holds GRESO and SPEED-RL gets the candidate's speed-up over each of them)."""
    if not runs:
        raise ValueError("comparison: no runs to summarise")
    histories = group_histories(runs)
    target = float(target_override) if target_override is not None else target_accuracy(histories, target_cfg)
    by_method: dict[str, list[RunHistory]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    methods = {m: summarize_method(m, rs, target, target_cfg.metric) for m, rs in sorted(by_method.items())}
    if baselines is None:
        baselines = [*BASELINE_METHODS, *sorted(set(methods) - set(BASELINE_METHODS) - {candidate})]
    speedups = [
        speedup(methods[candidate], methods[b]) for b in baselines if candidate in methods and b in methods
    ]
    return ComparisonSummary(target_cfg.metric, target, methods, speedups)


def scale_frame(summaries: Mapping[str, ComparisonSummary]) -> pd.DataFrame:
    """A sweep's table: one row per cell (a model, or a named cell) x method, the cell's own
    target in each row."""
    frames = []
    for cell, summary in summaries.items():
        frame = summary.to_frame()
        frame.insert(0, "cell", cell)
        frame.insert(1, "target", summary.target)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def accuracy_band(histories: Sequence[Sequence[EvalRecord]], metric: str, points: int = 200):
    """Seed mean, min and max of ``metric`` on a common grid of cumulative rollouts.

    Each seed's evaluations sit at its own rollout counts (DAPO and PC spend a varying number
    per step), so the curves are linearly interpolated onto a grid up to the budget every seed
    reached. Returns ``(rollouts_G, mean_G, low_G, high_G)``.
    """
    curves = [
        (np.array([r.cumulative_rollouts for r in h], float), np.array([r.metrics[metric] for r in h], float))
        for h in histories if h
    ]
    if not curves:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    end = min(x[-1] for x, _ in curves)
    start = max(x[0] for x, _ in curves)
    grid_G = np.linspace(start, end, points) if end > start else np.array([end])
    values_SG = np.stack([np.interp(grid_G, x, y) for x, y in curves])
    return grid_G, values_SG.mean(0), values_SG.min(0), values_SG.max(0)


# --------------------------------------------------------------------------- regression


@dataclass(frozen=True)
class RegressionTolerance:
    """How much worse than the accepted baseline a nightly run may be.

    The accuracy tolerance follows from the baseline's own seed spread
    (:func:`seed_spread_tolerance`): a seed-mean accuracy moves by that much from the choice
    of seeds alone. ``accuracy_drop`` is the fallback when the baseline has fewer than two
    seeds (no spread to measure), and a floor for a baseline whose seeds agree exactly.
    """

    accuracy_drop: float = 0.02  # absolute; fallback and floor (see above)
    rollouts_increase: float = 0.25  # relative, on the seed-mean rollouts to the baseline's target
    confidence: float = 0.95  # of the bootstrap interval of the baseline's seed mean
    bootstrap_samples: int = 4000
    bootstrap_seed: int = 0
    min_accuracy_drop: float = 0.0  # floor under the bootstrap tolerance


def seed_spread_tolerance(
    values: Sequence[float], *, confidence: float = 0.95, samples: int = 4000, seed: int = 0
) -> float | None:
    """Half-width of the central ``confidence`` bootstrap interval of the mean of ``values``.

    ``values`` are a method's final accuracies, one per seed, of the accepted baseline.
    Resampling seeds with replacement gives how far a seed mean moves from the choice of seeds
    alone; a rerun's paired drop smaller than that is not a regression. None for fewer than
    two values. Seeded: the same baseline always gives the same tolerance.
    """
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if len(finite) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = finite[rng.integers(0, len(finite), size=(samples, len(finite)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(high - low) / 2


def paired_drop(baseline: Mapping[int, float], current: Mapping[int, float]) -> tuple[float, list[int]] | None:
    """Mean of ``baseline[s] - current[s]`` over the seeds both have (the pairs), and the seeds."""
    seeds = sorted(set(baseline) & set(current))
    pairs = [(baseline[s], current[s]) for s in seeds if math.isfinite(baseline[s]) and math.isfinite(current[s])]
    if not pairs:
        return None
    return float(np.mean([b - c for b, c in pairs])), seeds


@dataclass(frozen=True)
class RegressionVerdict:
    passed: bool
    lines: list[str]

    def report(self) -> str:
        head = "nightly regression: PASSED" if self.passed else "nightly regression: FAILED"
        return "\n".join([head, *self.lines])


def check_regression(
    current: ComparisonSummary,
    baseline: ComparisonSummary,
    tolerance: RegressionTolerance,
    *,
    hardware_differences: Sequence[str] = (),
) -> RegressionVerdict:
    """Compare a rerun with the accepted baseline, method by method.

    ``current`` must be summarised against the baseline's target (``target_override``) so that
    a weaker reference method does not lower the bar. Fails when a method's final accuracy
    drops, seed by seed against the baseline's same seeds, by more than the tolerance of the
    baseline's seed spread (:func:`seed_spread_tolerance`; ``accuracy_drop`` with a single
    seed), its rollouts to target grow by more than ``rollouts_increase``, it reaches the
    target in fewer seeds, or it is missing. ``hardware_differences``
    (:func:`pilotcommit.fingerprint.fingerprint_differences`) non-empty means the baseline came
    from other hardware or software: the report says so first, because the same commit and
    seeds give other numbers there (docs/embedded_task.md).
    """
    lines: list[str] = []
    if hardware_differences:
        lines.append(
            "WARNING: the accepted baseline came from other hardware or software, so its numbers "
            "are not bit-comparable with this rerun's (same commit and seeds give other numbers "
            "there); differences: " + "; ".join(hardware_differences)
        )
    lines.append(f"target {baseline.metric} = {baseline.target:.4f} (from the accepted baseline)")
    passed = True
    for name, base in baseline.methods.items():
        now = current.methods.get(name)
        if now is None:
            lines.append(f"  {name}: MISSING from the rerun")
            passed = False
            continue
        problems = []
        spread = seed_spread_tolerance(
            list(base.final_accuracy.values()), confidence=tolerance.confidence,
            samples=tolerance.bootstrap_samples, seed=tolerance.bootstrap_seed,
        )
        if spread is None:
            allowed, source = tolerance.accuracy_drop, "fixed: fewer than 2 baseline seeds"
        else:
            allowed = max(spread, tolerance.min_accuracy_drop)
            source = f"{tolerance.confidence:.0%} bootstrap half-width of the baseline's {len(base.final_accuracy)} seeds"
        paired = paired_drop(base.final_accuracy, now.final_accuracy)
        if paired is not None:
            drop, seeds = paired
            compared = f"paired over seeds {seeds}"
        else:  # summaries without per-seed values (older cached results): compare the means
            drop, compared = base.final_accuracy_mean - now.final_accuracy_mean, "seed means"
        if drop > allowed:
            problems.append(
                f"final accuracy {now.final_accuracy_mean:.4f} < baseline {base.final_accuracy_mean:.4f}: "
                f"drop {drop:.4f} ({compared}) > tolerance {allowed:.4f} ({source})"
            )
        if now.reached < base.reached:
            problems.append(f"reached the target in {now.reached}/{now.seeds} seeds (baseline {base.reached}/{base.seeds})")
        elif base.mean is not None and now.mean is not None and now.mean > base.mean * (1 + tolerance.rollouts_increase):
            problems.append(
                f"rollouts to target {now.mean:.0f} > baseline {base.mean:.0f} x {1 + tolerance.rollouts_increase:.2f}"
            )
        status = "REGRESSED: " + "; ".join(problems) if problems else "ok"
        lines.append(
            f"  {name}: accuracy {now.final_accuracy_mean:.4f} (baseline {base.final_accuracy_mean:.4f}, "
            f"tolerance {allowed:.4f}), rollouts to target {_fmt_rollouts(now.mean)} "
            f"(baseline {_fmt_rollouts(base.mean)}): {status}"
        )
        passed = passed and not problems
    return RegressionVerdict(passed, lines)


# --------------------------------------------------------------------------- MLflow I/O


def _pair_histories(run_id: str, by_step: list[tuple[int, float]], by_rollouts: list[tuple[int, float]]):
    """Match the i-th evaluation against steps with the i-th against rollouts (both in order)."""
    if len(by_step) != len(by_rollouts):
        raise ValueError(
            f"MLflow run {run_id}: {len(by_step)} evaluations by step but {len(by_rollouts)} by rollouts; "
            "the run's evaluation metrics are incomplete"
        )
    return [(step, rollouts) for (step, _), (rollouts, _) in zip(by_step, by_rollouts)]


def load_run_history(client, run, metric: str = AVERAGE_ACCURACY) -> RunHistory:
    """One child run's evaluation history from its ``eval/*`` and ``by_rollouts/`` metrics."""
    from pilotcommit.tracking import BY_ROLLOUTS_PREFIX, metric_history

    run_id = run.info.run_id
    tags = run.data.tags
    for needed in ("method", "seed"):
        if needed not in tags:
            raise ValueError(f"MLflow run {run_id}: missing tag {needed!r}; not a pilotcommit training run")
    eval_keys = [k for k in run.data.metrics if k.startswith("eval/")]
    if metric not in eval_keys:
        return RunHistory(tags["method"], int(tags["seed"]), [], tags.get("model", ""), run_id,
                          tags.get("cell", tags.get("model", "")))
    by_step = metric_history(client, run_id, metric)
    by_rollouts = metric_history(client, run_id, BY_ROLLOUTS_PREFIX + metric)
    pairs = _pair_histories(run_id, by_step, by_rollouts)
    values = {k: dict(metric_history(client, run_id, k)) for k in eval_keys}
    history = [
        EvalRecord(step, int(rollouts), {k: v[step] for k, v in values.items() if step in v})
        for step, rollouts in pairs
    ]
    return RunHistory(tags["method"], int(tags["seed"]), history, tags.get("model", ""), run_id,
                      tags.get("cell", tags.get("model", "")))


INFORMATIVE_GROUPS = "reward/informative_groups"
EARLY_STEPS = 10  # "early": the first training steps, where the policy is still close to the probed one


def informative_group_rates(client, runs: Sequence[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """Measured informative groups per 1,000 sampled rollouts, per method (mean over its runs):
    over the whole run (``per_1k``) and over its first ``EARLY_STEPS`` steps (``early_per_1k``),
    the counterpart of what ``pilotcommit probe`` predicts from the initial policy.

    ``runs``: ``(method, MLflow run id)`` pairs. A run without the metric (older code) is left out.
    """
    from pilotcommit.tracking import metric_history

    per_method: dict[str, list[tuple[float, float]]] = {}
    for method, run_id in runs:
        informative = dict(metric_history(client, run_id, INFORMATIVE_GROUPS))
        cumulative = dict(metric_history(client, run_id, "rollouts/cumulative"))
        steps = sorted(set(informative) & set(cumulative))
        if not steps:
            continue
        early = [s for s in steps if s <= EARLY_STEPS] or steps[:1]
        whole = 1000 * sum(informative[s] for s in steps) / cumulative[steps[-1]]
        first = 1000 * sum(informative[s] for s in early) / cumulative[early[-1]]
        per_method.setdefault(method, []).append((whole, first))
    return {m: {"per_1k": float(np.mean([w for w, _ in v])), "early_per_1k": float(np.mean([f for _, f in v])),
                "runs": len(v)} for m, v in per_method.items()}


def load_comparison_runs(client, parent_run_id: str, metric: str = AVERAGE_ACCURACY) -> list[RunHistory]:
    """The training runs nested under a comparison's parent run."""
    from pilotcommit.tracking import child_runs

    parent = client.get_run(parent_run_id)
    children = child_runs(client, parent.info.experiment_id, parent_run_id)
    runs = [load_run_history(client, r, metric) for r in children if "method" in r.data.tags]
    if not runs:
        raise ValueError(f"MLflow run {parent_run_id} has no training runs nested under it")
    return runs


def accuracy_figure(runs: Sequence[RunHistory], summary: ComparisonSummary, title: str = ""):
    """Accuracy against cumulative rollouts: per method the seed mean, min-max band shaded,
    the target dashed, each method's mean rollouts to target marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    colours = {"grpo": "#4477aa", "dapo": "#ee6677", "pilot_commit": "#228833", "greso": "#ccbb44",
               "speed_rl": "#aa3377"}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    grouped = group_histories(runs)
    for i, (method, histories) in enumerate(sorted(grouped.items())):
        colour = colours.get(method, f"C{i}")
        grid, mean, low, high = accuracy_band(histories, summary.metric)
        if grid.size == 0:
            continue
        ax.plot(grid, mean, color=colour, label=f"{method} ({len(histories)} seeds)")
        ax.fill_between(grid, low, high, color=colour, alpha=0.18, linewidth=0)
        m = summary.methods.get(method)
        if m is not None and m.mean is not None:
            ax.axvline(m.mean, color=colour, linestyle=":", linewidth=1)
    ax.axhline(summary.target, color="black", linestyle="--", linewidth=1, label=f"target {summary.target:.3f}")
    ax.set_xlabel("cumulative sampled rollouts")
    ax.set_ylabel(summary.metric)
    ax.set_title(title or "accuracy against rollout budget (mean over seeds, min-max shaded)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def log_comparison(client, parent_run_id: str, runs: Sequence[RunHistory], summary: ComparisonSummary,
                   out_dir: Path, *, artifact_dir: str = "comparison",
                   metric_prefix: str = SUMMARY_PREFIX) -> dict[str, Path]:
    """Figure, summary table (CSV + JSON) and summary metrics on the parent run; files are also
    kept under ``out_dir``. Returns the written paths."""
    import matplotlib.pyplot as plt
    from mlflow.entities import Metric

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "figure": out_dir / "accuracy_vs_rollouts.png",
        "table": out_dir / "summary.csv",
        "json": out_dir / "summary.json",
    }
    models = sorted({r.model for r in runs if r.model})
    fig = accuracy_figure(runs, summary, title=f"{', '.join(models)}: accuracy against rollout budget" if models else "")
    fig.savefig(paths["figure"], dpi=110)
    plt.close(fig)
    summary.to_frame().to_csv(paths["table"], index=False)
    paths["json"].write_text(json.dumps(summary.to_dict(), indent=2))
    for path in paths.values():
        client.log_artifact(parent_run_id, str(path), artifact_dir)
    now_ms = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now_ms, 0) for k, v in summary.metrics(metric_prefix).items()]
    client.log_batch(parent_run_id, metrics=metrics)
    return paths


# --------------------------------------------------------------------------- printing


def _fmt_rollouts(value: float | None) -> str:
    return "not reached" if value is None else f"{value:,.0f}"


def format_speedup(s: SpeedUp | None, partial_mark: str = " partial") -> str:
    """``1.23x [1.10-1.40]`` (ratio of means, paired min-max), ``partial_mark`` when a mean
    leaves out seeds that never reached the target; ``n/a (why)`` or ``-`` otherwise."""
    if s is None:
        return "-"
    if s.ratio_of_means is None:
        return f"n/a ({s.note or 'not reached'})"
    text = f"{s.ratio_of_means:.2f}x"
    if s.paired:
        text += f" [{s.paired_min:.2f}-{s.paired_max:.2f}]"
    return text + (partial_mark if s.partial else "")


def render_summary(summary: ComparisonSummary, title: str = "Comparison"):
    """The headline rich Table, one row per method: rollouts to target (mean ± std), reached
    k/n, final accuracy. Narrow enough for an 80-column terminal; the speed-ups and the values
    per seed are :func:`render_details`' tables."""
    from rich.table import Table

    heading = f"{title}: target {summary.metric} = {summary.target:.4f}"
    # as wide as the title (up to 80 columns), so that it does not wrap over the narrow table
    table = Table(title=heading, min_width=min(len(heading), 80))
    table.add_column("method")
    table.add_column("rollouts to target", justify="right")
    table.add_column("reached", justify="right")
    table.add_column("final accuracy", justify="right")
    for name, m in summary.methods.items():
        mean = _fmt_rollouts(m.mean) + (f" ± {m.std:,.0f}" if m.std is not None else "")
        table.add_row(name, mean, f"{m.reached}/{m.seeds}",
                      f"{m.final_accuracy_mean:.4f} ± {m.final_accuracy_std:.4f}")
    return table


def render_details(summary: ComparisonSummary) -> list:
    """The speed-ups (ratio of the means, with the [min-max] of the per-seed paired ratios) and
    the rollouts to target of every seed (a row per seed, a column per method, so more seeds
    make the table longer, not wider), as rich Tables for an 80-column terminal."""
    from rich.markup import escape
    from rich.table import Table

    tables = []
    if summary.speedups:
        speedups = Table(title="speed-up in rollouts to target",
                         caption="partial: a mean leaves out seeds that never reached the target")
        speedups.add_column("method vs baseline")
        speedups.add_column("of the means", justify="right")
        speedups.add_column(escape("paired [min-max]"), justify="right")
        for s in summary.speedups:
            if s.ratio_of_means is None:
                ratio = "n/a: met at step 0" if s.note == "target met before training" else "n/a: not reached"
            else:
                ratio = f"{s.ratio_of_means:.2f}x" + (" partial" if s.partial else "")
            paired = escape(f"[{s.paired_min:.2f}-{s.paired_max:.2f}]") if s.paired else "-"
            speedups.add_row(f"{s.method} vs {s.baseline}", ratio, paired)
        tables.append(speedups)
    seeds = sorted({seed for m in summary.methods.values() for seed in m.rollouts_to_target})
    per_seed = Table(title="rollouts to target per seed", caption="-: never reached the target")
    per_seed.add_column("seed", justify="right")
    for name in summary.methods:
        per_seed.add_column(name, justify="right")
    for seed in seeds:
        cells = []
        for m in summary.methods.values():
            value = m.rollouts_to_target.get(seed)
            cells.append("-" if value is None else f"{value:,}")
        per_seed.add_row(str(seed), *cells)
    tables.append(per_seed)
    return tables


def summary_text(summary: ComparisonSummary) -> str:
    """Plain-text lines of the headline numbers (logs, flow results)."""
    lines = [f"target {summary.metric} = {summary.target:.4f}"]
    for name, m in summary.methods.items():
        std = f" ± {m.std:,.0f}" if m.std is not None else ""
        lines.append(f"{name}: rollouts to target {_fmt_rollouts(m.mean)}{std} (reached {m.reached}/{m.seeds})")
    for s in summary.speedups:
        lines.append(f"speed-up {s.method} vs {s.baseline}: {format_speedup(s)}")
    return "\n".join(lines)


def histories_from_results(results: Mapping[tuple[str, int], Sequence[EvalRecord]]) -> list[RunHistory]:
    """``{(method, seed): eval history}`` -> runs (for callers that have RunResults at hand)."""
    return [RunHistory(method, seed, list(history)) for (method, seed), history in results.items()]
