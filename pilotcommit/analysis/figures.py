"""The figures of the pipeline (matplotlib): per-prompt pass-rate and reward-variance histograms,
accuracy against cumulative rollouts of a comparison, the study's speed-up against the
zero-variance share, and the probe's pass-rate histogram beside its predictions.

Built without pyplot's global figure registry where they are drawn on a background thread
(the MLflow writer draws the prompt histograms while the training thread runs)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from pilotcommit.analysis.study import TARGETS, CellOutcome
from pilotcommit.analysis.summary import (
    CANDIDATE_METHOD,
    ComparisonSummary,
    RunHistory,
    accuracy_band,
    group_histories,
)

PROMPT_STATS_COLUMNS = ("pass_rate", "reward_variance")


def check_prompt_stats(table: pd.DataFrame, title: str) -> None:
    for column in PROMPT_STATS_COLUMNS:
        if column not in table.columns:
            raise ValueError(f"prompt stats {title!r}: missing column {column!r} (have {list(table.columns)})")


def prompt_stats_figure(table: pd.DataFrame, title: str):
    """Histograms of per-prompt pass rate and reward variance (a matplotlib ``Figure``).

    Built without pyplot (no global figure registry), so it can be drawn on a background thread
    while the training thread runs; nothing needs closing.
    """
    from matplotlib.figure import Figure

    check_prompt_stats(table, title)
    fig = Figure(figsize=(9, 3.4))
    ax_pass, ax_var = fig.subplots(1, 2)
    ax_pass.hist(table["pass_rate"].to_numpy(dtype=float), bins=20, range=(0.0, 1.0), color="#4477aa")
    ax_pass.set_xlabel("pass rate")
    ax_pass.set_ylabel("prompts")
    ax_var.hist(table["reward_variance"].to_numpy(dtype=float), bins=20, range=(0.0, 0.25), color="#cc6677")
    ax_var.set_xlabel("reward variance p(1-p)")
    fig.suptitle(f"{title} ({len(table)} prompts)")
    # a fixed layout: tight_layout measured every text box and cost a fifth of the drawing
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.16, top=0.86, wspace=0.22)
    return fig




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
    ax.set_ylabel(f"{cells[0].candidate if cells else CANDIDATE_METHOD} speed-up over {baseline} (rollouts)")
    ax.set_title(title or f"speed-up over {baseline} in rollouts to target, against GRPO's zero-variance share "
                 "(95% intervals)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if missing:
        text = "no ratio (a side never reached the target): " + ", ".join(missing)
        fig.text(0.01, 0.01, "\n".join(textwrap.wrap(text, 140)), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.08 if missing else 0, 1, 1))
    return fig


def histogram_figure(result, title: str):
    """Pass-rate histogram of the probe (K + 1 bars) beside predicted informative groups per 1k."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2)
    k = result.samples
    counts = np.bincount(np.array(result.successes), minlength=k + 1) / max(len(result.successes), 1)
    left.bar(np.arange(k + 1) / k, counts, width=0.8 / k, color="#4477aa")
    left.set_xlabel(f"pass rate ({k} samples per prompt)")
    left.set_ylabel("fraction of prompts")
    s = result.spread
    left.set_title(f"at 0: {s['at_0']:.0%}   between: {s['between']:.0%}   at 1: {s['at_1']:.0%}")
    labels = [p.method for p in result.predictions]
    right.barh(labels, [p.informative_groups_per_1k for p in result.predictions], color="#cc6677")
    right.set_xlabel("predicted informative groups per 1,000 rollouts")
    right.invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    return fig
