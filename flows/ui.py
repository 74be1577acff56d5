"""What a user watching the Prefect UI sees at the end of a flow: the summary lines and MLflow
links in the run log, and artifacts (the comparison as markdown beside links to the MLflow parent
run and its chart; the nightly's verdict). The markdown is pilotcommit/analysis/render.py's."""

from __future__ import annotations

import re
from collections.abc import Mapping

from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.tasks import run_logger
from pilotcommit.analysis.render import comparison_markdown, summary_text, verdict_markdown
from pilotcommit.analysis.summary import ComparisonSummary
from pilotcommit.stages.context import Context
from pilotcommit.tracking.links import MlflowLinks, mlflow_links


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from free-form parts."""
    return "-".join(p for p in (re.sub(r"[^a-z0-9]+", "-", str(part).lower()).strip("-") for part in parts) if p)


def publish_comparison(key: str, title: str, summaries: Mapping[str, ComparisonSummary],
                       links: MlflowLinks | None) -> list[str]:
    """Markdown artifact ``key`` with each summary (one section per cell for a sweep) and link
    artifacts ``key-mlflow-run`` / ``key-mlflow-chart``. Returns the keys created."""
    if len(summaries) == 1:
        ((label, summary),) = summaries.items()
        markdown = comparison_markdown(summary, title if not label else f"{title}: {label}", links)
    else:
        markdown = "\n".join(comparison_markdown(s, f"{title}: {label}") for label, s in summaries.items())
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


def publish_outcome(key: str, title: str, summaries: Mapping[str, ComparisonSummary], ctx: Context,
                    parent_run_id: str, run_ids: list[str]) -> MlflowLinks:
    """The end of a flow on the Prefect run: the summary lines and the MLflow links in its log, and
    the comparison's artifacts (:func:`publish_comparison`)."""
    links = mlflow_links(ctx.tracking_uri, ctx.experiment_id, parent_run_id, run_ids)
    log = run_logger()
    for label, summary in summaries.items():
        for line in summary_text(summary).splitlines():
            log.info("%s%s", f"{label}: " if label else "", line)
    log.info("MLflow parent run %s; accuracy against rollouts of every run: %s", links.parent_run, links.chart)
    if links.local_store:
        log.info("(%s)", links.hint())
    publish_comparison(key, title, summaries, links)
    return links


def publish_verdict(key: str, passed: bool, report_text: str, baseline_url: str | None = None,
                    rerun_url: str | None = None) -> str:
    create_markdown_artifact(verdict_markdown(passed, report_text, baseline_url, rerun_url), key=key,
                             description="nightly regression verdict: " + ("passed" if passed else "FAILED"))
    return key
