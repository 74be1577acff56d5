"""The comparison: target accuracy, rollouts to target per method and seed, and the speed-ups of a
candidate (Pilot-Commit) over the baselines, as pure functions over plain records
(:class:`RunHistory`: one run's evaluation history), tested by hand cases in milliseconds; the
target and the rollouts-to-target rule themselves are :mod:`pilotcommit.evaluation`'s.

Conventions (ALGORITHMS.md, "Evaluation and the headline metric"):
- a seed that never reaches the target is reported as *not reached*, never as a number;
- a method's mean and std of rollouts to target are over the seeds that reached it, shown
  with how many did (``reached 2/3``); a speed-up computed from such partial means is
  flagged ``partial``;
- speed-up of PC over a baseline = baseline's mean rollouts to target / PC's; the spread is
  that of the per-seed paired ratios (same seed, both reached).

Deliberately not here: reading runs from MLflow (reads.py), printing and markdown (render.py),
figures (figures.py), writing reports to MLflow (publish.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pilotcommit.config import TargetConfig
from pilotcommit.evaluation import rollouts_to_target, target_accuracy
from pilotcommit.types import EvalRecord

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


def histories_from_results(results: Mapping[tuple[str, int], Sequence[EvalRecord]]) -> list[RunHistory]:
    """``{(method, seed): eval history}`` -> runs (for callers that have RunResults at hand)."""
    return [RunHistory(method, seed, list(history)) for (method, seed), history in results.items()]
