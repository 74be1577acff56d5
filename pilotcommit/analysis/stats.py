"""Statistics over seeds for comparisons: bootstrap intervals of speed-ups and accuracy at equal
budgets (pure functions of :class:`~pilotcommit.analysis.summary.RunHistory` lists).

Used by ``bench/sample_efficiency.py`` and by the sweep study report (:mod:`pilotcommit.analysis.study`).
The speed-up itself is :func:`pilotcommit.analysis.summary.summarize_comparison`'s; this module only
resamples seeds around it.

- :func:`bootstrap_speedups`: a 95% percentile bootstrap of the ratio of mean rollouts to target.
  Seeds are resampled with replacement, the same draw for every method (a seed fixes the initial
  data order of all methods), and the target is recomputed from the resampled reference runs, so
  the interval includes the uncertainty of the target itself.
- :func:`accuracy_at` / :func:`equal_budget_table`: whole curves compared at the same cumulative
  rollouts, the candidate minus each other method paired by seed, with a bootstrap interval.

With k seeds there are only C(2k-1, k) distinct resamples (10 for k = 3): intervals from three
seeds are coarse, and say so by being wide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pilotcommit.analysis.summary import (
    BASELINE_METHODS,
    CANDIDATE_METHOD,
    RunHistory,
    summarize_comparison,
)
from pilotcommit.types import EvalRecord


def bootstrap_speedups(
    runs: Sequence[RunHistory],
    target_cfg,
    *,
    resamples: int,
    seed: int = 0,
    candidate: str = CANDIDATE_METHOD,
    baselines: Sequence[str] = BASELINE_METHODS,
) -> dict[str, dict[str, float]]:
    """95% percentile bootstrap of ``report``'s speed-up (ratio of mean rollouts to target).

    Each resample draws seeds with replacement, the same draw for every method (runs of one
    seed share their data order), relabels the draw 0..k-1 so that ``report`` sees distinct
    seeds, recomputes the target from the resampled reference runs and calls
    :func:`pilotcommit.analysis.summary.summarize_comparison`. Returns per baseline the point estimate,
    the interval, and the fraction of resamples with an undefined ratio (left out).
    """
    by_method_seed = {(r.method, r.seed): r for r in runs}
    seeds = sorted({r.seed for r in runs})
    methods = sorted({r.method for r in runs})
    point = summarize_comparison(runs, target_cfg, candidate=candidate, baselines=baselines)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {b: [] for b in baselines}
    undefined = {b: 0 for b in baselines}
    for _ in range(resamples):
        draw = rng.choice(seeds, size=len(seeds), replace=True)
        resampled = [
            RunHistory(m, new_seed, by_method_seed[(m, old_seed)].history)
            for new_seed, old_seed in enumerate(draw)
            for m in methods
            if (m, old_seed) in by_method_seed
        ]
        try:
            summary = summarize_comparison(
                resampled, target_cfg, candidate=candidate, baselines=baselines
            )
        except ValueError:
            for b in baselines:
                undefined[b] += 1
            continue
        for s in summary.speedups:
            if s.ratio_of_means is None:
                undefined[s.baseline] += 1
            else:
                samples[s.baseline].append(s.ratio_of_means)
    out = {}
    for s in point.speedups:
        values = samples[s.baseline]
        low, high = np.percentile(values, [2.5, 97.5]) if values else (math.nan, math.nan)
        out[s.baseline] = {
            "speedup": s.ratio_of_means if s.ratio_of_means is not None else math.nan,
            "partial": s.partial,
            "note": s.note,
            "ci_low": float(low),
            "ci_high": float(high),
            "undefined_fraction": undefined[s.baseline] / resamples,
            "paired": s.paired,
        }
    return out


def accuracy_at(history: Sequence[EvalRecord], rollouts: float, metric: str) -> float:
    """The metric at ``rollouts`` cumulative rollouts, linearly interpolated between evaluations
    (NaN past the run's last evaluation: no extrapolation)."""
    x = np.array([r.cumulative_rollouts for r in history], float)
    if x.size == 0 or rollouts > x[-1]:
        return math.nan
    return float(np.interp(rollouts, x, [r.metrics[metric] for r in history]))


def equal_budget_table(
    runs: Sequence[RunHistory],
    budgets: Sequence[float],
    metric: str,
    *,
    resamples: int,
    seed: int = 0,
    candidate: str = CANDIDATE_METHOD,
) -> list[dict]:
    """Accuracy of every method at the same cumulative budgets (seed means), and the paired
    difference candidate - other per budget with a 95% bootstrap interval over seeds. The
    headline metric only looks at the first crossing of one target; this looks at whole curves."""
    by = {(r.method, r.seed): r.history for r in runs}
    methods = sorted({r.method for r in runs})
    rng = np.random.default_rng(seed)
    rows = []
    for budget in budgets:
        row: dict = {"rollouts": budget}
        acc = {
            m: {s: accuracy_at(h, budget, metric) for (mm, s), h in by.items() if mm == m}
            for m in methods
        }
        for m in methods:
            row[m] = float(np.nanmean(list(acc[m].values()))) if acc[m] else math.nan
        for other in methods:
            if other == candidate or candidate not in acc:
                continue
            seeds = sorted(set(acc[candidate]) & set(acc[other]))
            diffs = np.array([acc[candidate][s] - acc[other][s] for s in seeds])
            diffs = diffs[~np.isnan(diffs)]
            if len(diffs) == 0:
                continue
            boot = rng.choice(diffs, size=(resamples, len(diffs)), replace=True).mean(axis=1)
            row[f"diff_vs_{other}"] = float(diffs.mean())
            row[f"diff_vs_{other}_ci"] = [float(v) for v in np.percentile(boot, [2.5, 97.5])]
        rows.append(row)
    return rows
