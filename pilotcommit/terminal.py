"""What the ``pilotcommit`` command shows in the terminal: progress bars fed by the flows'
progress events, the comparison and probe tables (built by pilotcommit/analysis/render.py,
each within 80 columns), and where the runs are in MLflow."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

console = Console()


class TrainingProgress:
    """Rich progress bars fed by the flows' progress events (one bar per run)."""

    def __init__(self, cfgs: list, console: Console) -> None:
        self.budget = {c.cell_label: c.budget for c in cfgs}
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False)
        self.bars: dict[tuple, Any] = {}
        self._sink = None

    def __call__(self, event) -> None:
        from pilotcommit.probe import ProbeResult
        from pilotcommit.runner.progress import GenerationProgress, ProbeProgress, StepProgress, WarmStartProgress

        if isinstance(event, ProbeProgress):  # before any training: the prediction comes first
            console.print(f"[bold]prediction[/] for {event.cell}, before training (pilotcommit probe):")
            print_probe(ProbeResult.from_dict(event.probe))
        elif isinstance(event, GenerationProgress):  # a long probe or evaluation, chunk by chunk
            key = ("generate", event.what)
            if key not in self.bars:
                self.bars[key] = self.progress.add_task(f"{event.what} (prompts)", total=event.total)
            self.progress.update(self.bars[key], completed=event.done)
        elif isinstance(event, WarmStartProgress):
            key = ("init", event.model)
            if key not in self.bars:
                self.bars[key] = self.progress.add_task(f"warm start {event.model}", total=1)
            if event.done:
                self.progress.update(self.bars[key], completed=1)
        elif isinstance(event, StepProgress):
            run, budget = event.run, self.budget.get(event.run.cell)
            by_rollouts = budget is not None and budget.max_rollouts is not None
            total = (budget.max_rollouts if by_rollouts else budget.max_steps) if budget else None
            key = (run.cell, run.method, run.seed)
            if key not in self.bars:
                self.bars[key] = self.progress.add_task(
                    f"{run.method:<13} {run.cell} seed {run.seed} ({'rollouts' if by_rollouts else 'steps'})", total=total)
            done = event.rollouts if by_rollouts else event.step
            if done is not None:
                self.progress.update(self.bars[key], completed=min(float(done), total or float(done)))

    def __enter__(self):
        from pilotcommit.runner.progress import progress_sink

        self._sink = progress_sink(self)
        self._sink.__enter__()
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._sink.__exit__(*exc)
        self.progress.stop()


def print_summary(summary, title: str) -> None:
    """The comparison's tables, each within an 80-column terminal."""
    from pilotcommit.analysis.render import render_details, render_summary

    console.print(render_summary(summary, title))
    for table in render_details(summary):
        console.print(table)


def print_where(tracking_uri: str, experiment_id: str, parent_run_id: str, run_ids: list[str]) -> None:
    from pilotcommit import tracking

    console.print(f"MLflow: experiment {experiment_id}, parent run [bold]{parent_run_id}[/] in {tracking_uri}")
    if tracking_uri.startswith("sqlite:"):
        console.print(f"  browse: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000")
    if run_ids:
        chart = tracking.metric_chart_url(tracking.mlflow_ui_url(tracking_uri), experiment_id, run_ids)
        console.print("  accuracy against rollouts, all runs: " + chart, soft_wrap=True)


def print_probe(result) -> None:
    """The probe's spread, per-method predictions and recommendation (fits 80 columns)."""
    from pilotcommit.analysis.render import probe_spread_line, probe_steps_table, probe_table

    console.print(probe_spread_line(result))
    console.print(probe_table(result))
    console.print(f"by informative groups per rollout: {result.recommendation}")
    if result.step_predictions:
        console.print(probe_steps_table(result))
        console.print(f"by optimizer steps: {result.step_recommendation}")


def print_services(local) -> None:
    """Where ``pilotcommit serve``'s servers are, and what to run against them."""
    console.print(f"MLflow UI     {local.mlflow.url}")
    console.print(f"Prefect UI    {local.prefect.url.removesuffix('/api')}")
    console.print(f"work pool     {local.pool} (process worker, logs in {local.logs})")
    console.print("in another shell:")
    console.print(f"  export PREFECT_API_URL={local.prefect.url} MLFLOW_TRACKING_URI={local.mlflow.url}")
    console.print("  prefect deployment run sweep/model-scale")
    console.print("Ctrl-C stops everything.")


def print_sweep(report, name: str) -> None:
    """Each cell's comparison, then where the scale table and the study report are."""
    for cell, summary in report.summaries.items():
        print_summary(summary, f"{name} / {cell}")
    console.print(f"scale table: {report.table}")
    if report.study:
        console.print(f"study report: {report.study['markdown']} (also `pilotcommit study`)")
