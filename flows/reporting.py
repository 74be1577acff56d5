"""What a user watching the Prefect UI sees: run log lines and artifacts of the flows.

- :func:`run_logger`: Prefect's run logger inside a flow or task run (its lines go to the
  Prefect API and show on the run page), a plain logger elsewhere.
- Training progress: :class:`AllocationTally` adds up the allocation counters of the steps
  between two evaluations; :class:`TrainingLog` turns a run's progress events into log lines,
  one per evaluation but at most :data:`PROGRESS_LOG_LINES` per run (:func:`evaluation_due`),
  so a 1,000-step run with an evaluation every 5 steps logs about 20 lines, not 200.
- Artifacts: :func:`comparison_markdown` renders a :class:`~pilotcommit.report.ComparisonSummary`
  (target, rollouts to target, speed-ups with their paired intervals, final accuracies, per
  seed); :func:`publish_comparison` creates it as a markdown artifact beside link artifacts to
  the MLflow parent run and its by-rollouts chart; :func:`publish_verdict` the nightly's verdict.

Deliberately not here: any number of the comparison (pilotcommit/report.py computes them all;
this module only formats), and the CLI's rich progress bars (pilotcommit/cli.py).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pilotcommit import tracking
from pilotcommit.report import ComparisonSummary, format_speedup

# At most this many evaluation lines per training run (plus the first and the final one):
# enough to follow a day-long run, few enough to read on the run page.
PROGRESS_LOG_LINES = 20

# The MLflow UI a local (SQLite / file) store is browsed with: `mlflow ui` / `pilotcommit serve`.
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"

# allocation counters that add up over steps; the others are read at the latest step
_SUMMED_ALLOC = ("alloc/rounds", "alloc/informative", "alloc/too_hard", "alloc/too_easy", "alloc/dropped_groups")
_LATEST_ALLOC = ("alloc/evicted_total", "alloc/buffer_size")


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger of the current flow or task run; a module logger outside a run."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("pilotcommit.flows")


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from free-form parts."""
    return "-".join(p for p in (re.sub(r"[^a-z0-9]+", "-", str(part).lower()).strip("-") for part in parts) if p)


# --------------------------------------------------------------------------- MLflow links


@dataclass(frozen=True)
class MlflowLinks:
    """Where a comparison is in the MLflow UI."""

    ui: str
    parent_run: str
    chart: str  # by_rollouts/eval/average_accuracy of the comparison's training runs
    local_store: bool  # a SQLite/file store: the UI is only there once `mlflow ui` runs on it
    tracking_uri: str

    def hint(self) -> str:
        if not self.local_store:
            return ""
        return f"start the UI first: mlflow ui --backend-store-uri {self.tracking_uri} --host 127.0.0.1 --port 5000"


def mlflow_ui_url(tracking_uri: str) -> str:
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_MLFLOW_UI


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{mlflow_ui_url(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_links(tracking_uri: str, experiment_id: str, parent_run_id: str, run_ids: Sequence[str]) -> MlflowLinks:
    ui = mlflow_ui_url(tracking_uri)
    return MlflowLinks(
        ui=ui,
        parent_run=mlflow_run_url(tracking_uri, experiment_id, parent_run_id),
        chart=tracking.metric_chart_url(ui, experiment_id, list(run_ids)),
        local_store=not tracking_uri.startswith(("http://", "https://")),
        tracking_uri=tracking_uri,
    )


# --------------------------------------------------------------------------- training progress


@dataclass
class AllocationTally:
    """The allocation counters of the training steps since the last reported evaluation."""

    steps: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    latest: dict[str, float] = field(default_factory=dict)

    def add_step(self, metrics: Mapping[str, float]) -> None:
        self.steps += 1
        for key in _SUMMED_ALLOC:
            if key in metrics:
                self.sums[key] = self.sums.get(key, 0.0) + float(metrics[key])
        self.latest.update({k: float(metrics[k]) for k in _LATEST_ALLOC if k in metrics})

    def merge(self, other: AllocationTally) -> None:
        self.steps += other.steps
        for key, value in other.sums.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.latest.update(other.latest)

    def describe(self) -> str:
        if self.steps == 0:
            return "no training steps yet"
        s = self.sums
        steps = f"{self.steps} step" + ("s" if self.steps != 1 else "")
        text = (f"{steps}, {s.get('alloc/rounds', 0.0) / self.steps:.1f} sampling rounds/step, "
                f"groups {s.get('alloc/informative', 0.0):.0f} informative / {s.get('alloc/too_hard', 0.0):.0f} "
                f"too hard / {s.get('alloc/too_easy', 0.0):.0f} too easy")
        if s.get("alloc/dropped_groups"):
            text += f", {s['alloc/dropped_groups']:.0f} dropped"
        if "alloc/evicted_total" in self.latest:
            text += f", {self.latest['alloc/evicted_total']:.0f} prompts evicted in all"
        if "alloc/buffer_size" in self.latest:
            text += f", buffer {self.latest['alloc/buffer_size']:.0f}"
        return text

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AllocationTally:
        return cls(int(data["steps"]), dict(data["sums"]), dict(data["latest"]))


def budget_fraction(max_steps: int | None, max_rollouts: int | None, step: int, rollouts: int) -> float:
    """How much of the run's budget is spent (1.0: whichever limit comes first is reached)."""
    parts = []
    if max_steps:
        parts.append(step / max_steps)
    if max_rollouts:
        parts.append(rollouts / max_rollouts)
    return min(1.0, max(parts)) if parts else 0.0


def evaluation_due(fraction: float, last_logged: float | None, lines: int = PROGRESS_LOG_LINES) -> bool:
    """Log this evaluation? The first one, the final one (budget spent), and the first one past
    each further 1/``lines`` of the budget."""
    if last_logged is None or fraction >= 1.0:
        return True
    return math.floor(fraction * lines) > math.floor(last_logged * lines)


class TrainingLog:
    """One training run's progress events -> the CLI's sink (every event) and the Prefect run
    log (evaluations, thinned by :func:`evaluation_due`). Called in the train task's thread,
    also when the run trains in a child process (its events come back over a pipe)."""

    def __init__(self, describe: str, max_steps: int | None, max_rollouts: int | None, metric: str,
                 sink: Callable[[dict], None], logger=None, lines: int = PROGRESS_LOG_LINES) -> None:
        self.describe = describe
        self.max_steps, self.max_rollouts = max_steps, max_rollouts
        self.metric = metric
        self.sink = sink
        self.logger = logger or run_logger()
        self.lines = lines
        self.last_logged: float | None = None
        self.pending = AllocationTally()  # steps since the last *logged* evaluation

    def __call__(self, event: dict) -> None:
        self.sink(event)
        if event.get("event") != "evaluation":
            return
        self.pending.merge(AllocationTally.from_dict(event["alloc"]))
        step, rollouts = int(event["step"]), int(event["rollouts"])
        fraction = budget_fraction(self.max_steps, self.max_rollouts, step, rollouts)
        if not evaluation_due(fraction, self.last_logged, self.lines):
            return
        self.logger.info(self.evaluation_line(step, rollouts, fraction, event["metrics"]))
        self.last_logged = fraction
        self.pending = AllocationTally()

    def evaluation_line(self, step: int, rollouts: int, fraction: float, metrics: Mapping[str, float]) -> str:
        of_steps = f"/{self.max_steps}" if self.max_steps else ""
        value = metrics.get(self.metric)
        accuracy = f"{self.metric} {value:.4f}" if value is not None else f"{self.metric} missing"
        return (f"{self.describe}: evaluation at step {step}{of_steps} ({fraction:.0%} of the budget), "
                f"{rollouts:,} rollouts, {accuracy}; allocation: {self.pending.describe()}")


# --------------------------------------------------------------------------- artifacts


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


def _markdown_table(rows: Sequence[Mapping[str, str]]) -> list[str]:
    if not rows:
        return []
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(r.get(h, "")).replace("|", "/") for h in header) + " |" for r in rows]
    return lines


def comparison_markdown(summary: ComparisonSummary, title: str, links: MlflowLinks | None = None) -> str:
    """The comparison as markdown: target, one row per method, rollouts to target per seed."""
    lines = [f"# {title}", "",
             f"**Target** {summary.metric} = **{summary.target:.4f}**. Rollouts to target: mean ± std over "
             "the seeds that reached it; speed-up: ratio of the means, [min-max] of the per-seed "
             "paired ratios, *partial* when a mean leaves seeds out.", ""]
    lines += _markdown_table(comparison_rows(summary))
    seeds = sorted({s for m in summary.methods.values() for s in m.rollouts_to_target})
    lines += ["", "**Rollouts to target per seed**", ""]
    lines += _markdown_table([
        {"method": name, **{f"seed {s}": ("not reached" if m.rollouts_to_target.get(s) is None
                                          else f"{m.rollouts_to_target[s]:,}") if s in m.rollouts_to_target else "-"
                            for s in seeds}}
        for name, m in summary.methods.items()
    ])
    if links is not None:
        lines += ["", f"MLflow: [parent run]({links.parent_run}), [accuracy against rollouts]({links.chart})"]
        if links.local_store:
            lines += ["", f"({links.hint()})"]
    return "\n".join(lines) + "\n"


def publish_comparison(key: str, title: str, summaries: Mapping[str, ComparisonSummary],
                       links: MlflowLinks | None) -> list[str]:
    """Markdown artifact ``key`` with each summary (one section per model for a sweep) and link
    artifacts ``key-mlflow-run`` / ``key-mlflow-chart``. Returns the keys created."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    if len(summaries) == 1:
        ((label, summary),) = summaries.items()
        markdown = comparison_markdown(summary, title if not label else f"{title}: {label}", links)
    else:
        sections = [comparison_markdown(s, f"{title}: {label}") for label, s in summaries.items()]
        markdown = "\n".join(sections)
        if links is not None:
            markdown += f"\nMLflow: [parent run]({links.parent_run}), [accuracy against rollouts]({links.chart})\n"
    create_markdown_artifact(markdown, key=key, description=f"{title}: rollouts to target, speed-ups, final accuracy")
    keys = [key]
    if links is not None:
        hint = f"; {links.hint()}" if links.local_store else ""
        create_link_artifact(links.parent_run, link_text=f"{title}: MLflow parent run", key=f"{key}-mlflow-run",
                             description=f"the comparison's parent run in MLflow{hint}")
        create_link_artifact(links.chart, link_text=f"{title}: accuracy against rollouts (MLflow)",
                             key=f"{key}-mlflow-chart",
                             description=f"by_rollouts/eval/average_accuracy of every training run{hint}")
        keys += [f"{key}-mlflow-run", f"{key}-mlflow-chart"]
    return keys


def verdict_markdown(passed: bool, report_text: str, baseline_url: str | None, rerun_url: str | None) -> str:
    head = "# Nightly regression: PASSED" if passed else "# Nightly regression: FAILED (regression)"
    lines = [head, "", "```", report_text.rstrip(), "```"]
    if baseline_url or rerun_url:
        lines += [""] + [f"- {name}: {url}" for name, url in (("accepted baseline", baseline_url),
                                                               ("this rerun", rerun_url)) if url]
    return "\n".join(lines) + "\n"


def publish_verdict(key: str, passed: bool, report_text: str, baseline_url: str | None = None,
                    rerun_url: str | None = None) -> str:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(verdict_markdown(passed, report_text, baseline_url, rerun_url), key=key,
                             description="nightly regression verdict: " + ("passed" if passed else "FAILED"))
    return key
