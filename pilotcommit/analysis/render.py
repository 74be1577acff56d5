"""What the analyses look like to a reader: the CLI's rich tables, plain summary lines for logs,
and markdown (the comparison and the nightly verdict the Prefect UI shows, the study report),
all through one markdown table writer. Formatting only: every number comes from summary.py,
regression.py or study.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pilotcommit.analysis.study import TARGETS, CellOutcome, Interval, StudyInputs, _same_rate
from pilotcommit.analysis.summary import CANDIDATE_METHOD, ComparisonSummary, SpeedUp
from pilotcommit.tracking.links import MlflowLinks


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a markdown table (a ``|`` inside a cell becomes ``/``)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"

    return [line(head), "|" + "---|" * len(head)] + [line(r) for r in rows]


def format_rollouts(value: float | None) -> str:
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
        mean = format_rollouts(m.mean) + (f" ± {m.std:,.0f}" if m.std is not None else "")
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
        lines.append(f"{name}: rollouts to target {format_rollouts(m.mean)}{std} (reached {m.reached}/{m.seeds})")
    for s in summary.speedups:
        lines.append(f"speed-up {s.method} vs {s.baseline}: {format_speedup(s)}")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def comparison_rows(summary: ComparisonSummary) -> list[dict[str, str]]:
    """One row per method of the artifact's table (strings, as shown)."""
    baselines = [s.baseline for s in summary.speedups]
    rows = []
    for name, m in summary.methods.items():
        row = {
            "method": name,
            "rollouts to target": (_fmt(m.mean) + (f" ± {_fmt(m.std)}" if m.std is not None else ""))
            if m.mean is not None else "not reached",
            "reached": f"{m.reached}/{m.seeds}",
            "final accuracy": f"{_fmt(m.final_accuracy_mean, 4)} ± {_fmt(m.final_accuracy_std, 4)}",
        }
        for b in baselines:
            found = next((s for s in summary.speedups if s.method == name and s.baseline == b), None)
            row[f"speed-up vs {b}"] = format_speedup(found, " (partial)")
        rows.append(row)
    return rows


def comparison_markdown(summary: ComparisonSummary, title: str, links: MlflowLinks | None = None) -> str:
    """The comparison as markdown: target, one row per method, rollouts to target per seed."""
    lines = [f"# {title}", "",
             f"**Target** {summary.metric} = **{summary.target:.4f}**. Rollouts to target: mean ± std over "
             "the seeds that reached it; speed-up: ratio of the means, [min-max] of the per-seed "
             "paired ratios, *partial* when a mean leaves seeds out.", ""]
    rows = comparison_rows(summary)
    lines += markdown_table(list(rows[0]), [list(r.values()) for r in rows]) if rows else []
    seeds = sorted({s for m in summary.methods.values() for s in m.rollouts_to_target})
    lines += ["", "**Rollouts to target per seed**", ""]

    def per_seed(m, s: int) -> str:
        if s not in m.rollouts_to_target:
            return "-"
        value = m.rollouts_to_target[s]
        return "not reached" if value is None else f"{value:,}"

    lines += markdown_table(["method", *(f"seed {s}" for s in seeds)],
                            [[name, *(per_seed(m, s) for s in seeds)] for name, m in summary.methods.items()])
    if links is not None:
        lines += ["", f"MLflow: [parent run]({links.parent_run}), [accuracy against rollouts]({links.chart})"]
        if links.local_store:
            lines += ["", f"({links.hint()})"]
    return "\n".join(lines) + "\n"


def verdict_markdown(passed: bool, report_text: str, baseline_url: str | None, rerun_url: str | None) -> str:
    head = "# Nightly regression: PASSED" if passed else "# Nightly regression: FAILED (regression)"
    lines = [head, "", "```", report_text.rstrip(), "```"]
    if baseline_url or rerun_url:
        lines += [""] + [f"- {name}: {url}" for name, url in (("accepted baseline", baseline_url),
                                                               ("this rerun", rerun_url)) if url]
    return "\n".join(lines) + "\n"


def _speedup_text(entry: Mapping | None) -> str:
    if entry is None:
        return "-"
    if entry.get("note"):
        return f"n/a ({entry['note']})"
    value = Interval(entry["speedup"], entry["ci_low"], entry["ci_high"]).text(".2f", "x")
    return value + (" (partial)" if entry.get("partial") else "")


def _difference_table(cells: Sequence[CellOutcome], attr: str, x_name: str, x_fmt: str, methods: Sequence[str],
                      baselines: Sequence[str], candidate: str) -> list[str]:
    """Rows of :func:`pilotcommit.analysis.stats.equal_budget_table` output (``CellOutcome.<attr>``)."""
    head = ["cell", x_name, *methods] + [f"{candidate} - {b}" for b in baselines]
    rows = []
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
            rows.append(out)
    return markdown_table(head, rows)


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


def study_markdown(cells: Sequence[CellOutcome], candidate: str | None = None, header: str = "") -> str:
    """The study's tables as Markdown: speed-ups, rollouts to target per method, equal budgets,
    predictor check; ``header`` (e.g. :func:`provenance_text`) first. ``candidate``: the
    cells' own (``CellOutcome.candidate``) unless given."""
    candidate = candidate or (cells[0].candidate if cells else CANDIDATE_METHOD)
    baselines = sorted({b for c in cells for t in c.speedups.values() for b in t})
    methods = sorted({m for c in cells for m in c.methods})
    lines = ([header] if header else []) + [f"### Speed-up of {candidate} in rollouts to target (95% paired bootstrap over seeds)", "",
             ("target `best`: GRPO's best seed-mean accuracy; `gain75`: 75% of GRPO's gain over the "
              "initial accuracy. *partial*: a mean leaves out seeds that never reached the target."), ""]
    head = ["cell", "seeds", "GRPO zero-variance share", "target", "accuracy",
            f"reached ({', '.join(methods)})"] + [f"vs {b}" for b in baselines]
    lines += markdown_table(head, [
        [c.cell, str(len(c.seeds)), c.zero_variance.text(".1%"), name, f"{c.targets[name]:.4f}",
         ", ".join(c.reached[name].get(m, "-") for m in methods), *(_speedup_text(c.speedups[name].get(b)) for b in baselines)]
        for c in cells for name in TARGETS])

    lines += ["", ("### Rollouts to target per method (mean over the seeds that reached it, reached/seeds; "
                   "-: no seed did)"), ""]
    def to_target(c: CellOutcome, name: str, m: str) -> str:
        mean, got = c.rollouts_to_target.get(name, {}).get(m), c.reached[name].get(m)
        return "-" if got is None else (f"{mean:,.0f} ({got})" if mean is not None else f"- ({got})")

    lines += markdown_table(["cell", "target", *methods],
                            [[c.cell, name, *(to_target(c, name, m) for m in methods)] for c in cells for name in TARGETS])

    lines += ["", f"### Accuracy at equal budgets ({candidate} minus baseline, paired by seed, 95% bootstrap)", ""]
    lines += _difference_table(cells, "equal_budget", "rollouts", ",.0f", methods, baselines, candidate)
    lines += ["", f"### Accuracy at equal optimizer steps ({candidate} minus baseline, paired by seed, 95% bootstrap)", ""]
    lines += _difference_table(cells, "equal_steps", "step", ".0f", methods, baselines, candidate)

    lines += ["", "### The predictor against the measurement (informative groups per 1,000 sampled rollouts)", ""]
    rows = []
    for c in cells:
        for m in c.methods:
            pred, meas = c.predicted_rates.get(m), c.measured_rates.get(m, {})
            rows.append([c.cell, m, f"{pred:.1f}" if pred is not None else "-",
                         f"{meas['early_per_1k']:.1f}" if meas else "-", f"{meas['per_1k']:.1f}" if meas else "-"])
    lines += markdown_table(["cell", "method", "predicted", "measured, first 10 steps", "measured, whole run"], rows)
    lines += ["", ("### Rankings: predicted (informative groups per rollout) against measured "
                   "(rollouts to 75% of GRPO's gain; not reached = tied last)"), ""]
    lines += markdown_table(["cell", "predicted", "measured", "pairs agreeing", "probe's recommendation"], [
        [c.cell, _predicted_text(c), " > ".join(" = ".join(r) for r in c.measured_ranking),
         f"{c.ranking_pairs_agree[0]}/{c.ranking_pairs_agree[1]}" if c.ranking_pairs_agree else "-",
         c.recommendation or "-"] for c in cells])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the probe


def probe_spread_line(result) -> str:
    s = result.spread
    return (f"pass rates of {len(result.prompt_ids)} prompts ({result.samples} samples each): "
            f"{s['at_0']:.1%} at 0, {s['between']:.1%} between, {s['at_1']:.1%} at 1")


def _where_the_rest_goes(pred) -> str:
    b = pred.breakdown
    if pred.kind == "grpo":
        return f"{b['zero_variance_groups_per_1k']:.1f} zero-variance groups trained"
    if pred.kind in ("dapo", "greso"):  # GRESO's first epoch is DAPO's
        return f"{b.get('dropped_groups_per_1k', 0):.1f} dropped, {b.get('discarded_groups_per_1k', 0):.1f} discarded groups"
    if pred.kind == "speed_rl":
        return f"{b.get('rejected_screens_per_1k', 0):.0f} screened prompts rejected"
    return (f"{b.get('too_hard_pilots_per_1k', 0):.0f} too hard, {b.get('too_easy_pilots_per_1k', 0):.0f} too easy, "
            f"{b.get('stale_pilots_per_1k', 0):.0f} stale pilots")


def probe_table(result):
    """Each method's predicted informative groups per 1,000 rollouts and where the rest goes (a
    rich Table within 80 columns)."""
    from rich.table import Table

    table = Table(title=f"predicted per 1,000 sampled rollouts ({result.estimator})")
    table.add_column("method")
    table.add_column("informative groups", justify="right")
    table.add_column("where the rest goes")
    for pred in result.predictions:
        table.add_row(pred.method, f"{pred.informative_groups_per_1k:.1f}", pred.note or _where_the_rest_goes(pred))
    return table


def probe_steps_table(result):
    """The step-aware prediction (pilotcommit/allocation/steps.py): optimizer steps and rollouts
    per optimizer step, and predicted rollouts to target relative to the cheapest method."""
    from rich.table import Table

    from pilotcommit.allocation.steps import STEP_MODEL

    table = Table(title=(f"predicted by optimizer steps (progress per step = steps^{STEP_MODEL.steps_exponent:.2f}"
                         f" x informative share^{STEP_MODEL.share_exponent:.2f})"))
    table.add_column("method")
    table.add_column("optimizer steps per step", justify="right")
    table.add_column("rollouts per optimizer step", justify="right")
    table.add_column("informative share", justify="right")
    table.add_column("rollouts to target (x best)", justify="right")
    for row in result.step_predictions:
        table.add_row(row["method"], str(row["optimizer_steps"]), f"{row['rollouts_per_optimizer_step']:,.0f}",
                      f"{row['informative_share']:.0%}", f"{row['relative_rollouts_to_target']:.2f}")
    return table


def prediction_check_table(probe: Mapping, measured: Mapping, early_steps: int):
    """Predicted (before training) beside measured informative groups per 1,000 rollouts."""
    from rich.table import Table

    table = Table(title="informative groups per 1,000 sampled rollouts")
    table.add_column("method")
    table.add_column("predicted", justify="right")
    table.add_column(f"measured, first {early_steps} steps", justify="right")
    table.add_column("measured, whole run", justify="right")
    for pred in probe["predictions"]:
        got = measured.get(pred["method"])
        table.add_row(pred["method"], f"{pred['informative_groups_per_1k']:.1f}",
                      f"{got['early_per_1k']:.1f}" if got else "-", f"{got['per_1k']:.1f}" if got else "-")
    return table


def final_metrics_table(title: str, metrics: Mapping[str, float]):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(metrics.items()):
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) and abs(value) < 1e4 else f"{value:,.0f}")
    return table
