"""Reports written to MLflow (and kept as files): a comparison's figure, table and summary metrics
on its parent run, a sweep's per-cell comparisons with its scale table and study report, a
cell's probe, a probe run. Each is one library call a flow's task makes.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pilotcommit.analysis import figures, render
from pilotcommit.analysis.reads import load_comparison_runs, load_run_history, load_study_inputs
from pilotcommit.analysis.study import PROBE_ARTIFACT, CellOutcome, study_cells
from pilotcommit.analysis.summary import (
    CANDIDATE_METHOD,
    SUMMARY_PREFIX,
    ComparisonSummary,
    RunHistory,
    scale_frame,
    summarize_comparison,
)


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
    fig = figures.accuracy_figure(runs, summary, title=f"{', '.join(models)}: accuracy against rollout budget" if models else "")
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


def write_study(cells: Sequence[CellOutcome], out_dir: Path, header: str = "") -> dict[str, Path]:
    """The report's files under ``out_dir``: tables (Markdown, ``header`` first; JSON) and the figure."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "study.md", "json": out_dir / "study.json",
             "figure": out_dir / "speedup_vs_zero_variance.png"}
    paths["markdown"].write_text(render.study_markdown(cells, header=header))
    paths["json"].write_text(json.dumps([c.to_dict() for c in cells], indent=2, default=str))
    candidate = cells[0].candidate if cells else CANDIDATE_METHOD
    others = sorted({m for c in cells for m in c.methods} - {candidate})
    baseline = "grpo" if candidate != "grpo" else (CANDIDATE_METHOD if CANDIDATE_METHOD in others
                                                    else (others[0] if others else "grpo"))
    fig = figures.speedup_figure(cells, baseline=baseline)
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
                    who = "" if c.candidate == CANDIDATE_METHOD else f"{c.candidate}/"
                    client.log_metric(parent_run_id, f"{metric_prefix}/{c.cell}/{who}speedup_vs_{b}_{name}",
                                      float(entry["speedup"]))
        if not math.isnan(c.zero_variance.value):
            client.log_metric(parent_run_id, f"{metric_prefix}/{c.cell}/grpo_zero_variance_share", c.zero_variance.value)
    return paths


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


def log_probe(client, run_id: str, result, title: str) -> None:
    """Metrics, tags, figure and tables of a probe into an MLflow run."""
    metrics = {f"probe/{k}": v for k, v in result.spread.items()}
    metrics["probe/prompts"] = len(result.prompt_ids)
    metrics["probe/samples_per_prompt"] = result.samples
    for pred in result.predictions:
        metrics[f"predict/{pred.method}/informative_groups_per_1k"] = pred.informative_groups_per_1k
        for key, value in pred.breakdown.items():
            metrics[f"predict/{pred.method}/{key}"] = value
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value), step=0)
    client.set_tag(run_id, "pilotcommit.recommendation", result.recommendation)
    client.set_tag(run_id, "pilotcommit.estimator", result.estimator)
    client.log_figure(run_id, figures.histogram_figure(result, title), "probe/pass_rate_histogram.png")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        result.prompt_table().to_csv(out / "prompts.csv", index=False)
        result.prediction_table().to_csv(out / "predictions.csv", index=False)
        (out / "probe.json").write_text(json.dumps(result.to_dict(), indent=2))
        for name in ("prompts.csv", "predictions.csv", "probe.json"):
            client.log_artifact(run_id, str(out / name), "probe")


# --------------------------------------------------------------------------- reports of flows


@dataclass(frozen=True)
class ComparisonReport:
    """A comparison's report: its summary, the plain text of its headline numbers, its files."""

    summary: ComparisonSummary
    text: str
    files: dict[str, str]

    def to_dict(self) -> dict:
        return {"summary": self.summary.to_dict(), "text": self.text, "files": dict(self.files)}

    @classmethod
    def from_dict(cls, data: Mapping) -> ComparisonReport:
        return cls(ComparisonSummary.from_dict(data["summary"]), data["text"], dict(data["files"]))


def report_comparison(client, parent_run_id: str, target, out_dir: Path, cell: str | None = None) -> ComparisonReport:
    """The comparison of the runs under ``parent_run_id`` (only ``cell``'s, for a sweep), logged to
    the parent run (``comparison/`` or ``comparison/<cell>/``) and kept under ``out_dir``."""
    runs = load_comparison_runs(client, parent_run_id, target.metric)
    if cell is not None:
        runs = [r for r in runs if r.cell == cell]
    summary = summarize_comparison(runs, target)
    subdir = f"comparison/{cell}" if cell else "comparison"
    paths = log_comparison(client, parent_run_id, runs, summary, Path(out_dir), artifact_dir=subdir,
                           metric_prefix=f"{subdir}/")
    return ComparisonReport(summary, render.summary_text(summary), {k: str(v) for k, v in paths.items()})


def cell_summary(client, run_ids: Sequence[str], target) -> ComparisonSummary:
    """The comparison of one sweep cell's runs, read back from MLflow, nothing logged (other
    cells may still be training under the same parent run)."""
    runs = [load_run_history(client, client.get_run(run_id), target.metric) for run_id in run_ids]
    return summarize_comparison(runs, target)


@dataclass(frozen=True)
class SweepReport:
    """A sweep's report: per cell its comparison, the scale table, the study report's files."""

    summaries: dict[str, ComparisonSummary]
    table: str
    study: dict[str, str]
    run_ids: list[str]

    def to_dict(self) -> dict:
        return {"summaries": {c: s.to_dict() for c, s in self.summaries.items()},
                "text": {c: render.summary_text(s) for c, s in self.summaries.items()},
                "table": self.table, "study": dict(self.study), "run_ids": list(self.run_ids)}

    @classmethod
    def from_dict(cls, data: Mapping) -> SweepReport:
        return cls({c: ComparisonSummary.from_dict(s) for c, s in data["summaries"].items()}, data["table"],
                   dict(data["study"]), list(data["run_ids"]))


def report_sweep(client, parent_run_id: str, targets: Mapping[str, object], out_dir: Path,
                 failed_cells: Sequence[str] = ()) -> SweepReport:
    """Per cell (``targets``: cell -> its TargetConfig, in the sweep file's order): its comparison
    on the parent run; then the scale table and the study report (docs/regimes.md: speed-ups with
    bootstrap intervals at two targets, equal budgets, zero-variance share, predicted against
    measured informative groups). A cell that failed before any evaluation is left out."""
    out_dir = Path(out_dir)
    runs = load_comparison_runs(client, parent_run_id)
    summaries = {}
    for cell, target in targets.items():
        cell_runs = [r for r in runs if r.cell == cell and r.history]
        if not cell_runs and cell in failed_cells:
            continue  # failed before any evaluation: nothing to report
        if not cell_runs:
            raise ValueError(f"sweep: no finished runs of cell {cell!r} under MLflow run {parent_run_id}")
        summaries[cell] = summarize_comparison(cell_runs, target)
        log_comparison(client, parent_run_id, cell_runs, summaries[cell], out_dir / cell,
                       artifact_dir=f"comparison/{cell}", metric_prefix=f"comparison/{cell}/")
    path = out_dir / "scale_summary.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    scale_frame(summaries).to_csv(path, index=False)
    client.log_artifact(parent_run_id, str(path), "sweep")
    target = next(iter(targets.values()))
    cells = study_cells(load_study_inputs(client, parent_run_id, target.metric), target, order=list(targets))
    study_paths = log_study(client, parent_run_id, cells, out_dir / "study")
    return SweepReport(summaries, str(path), {k: str(v) for k, v in study_paths.items()}, [r.run_id for r in runs])


# --------------------------------------------------------------------------- reports of the CLI


@dataclass(frozen=True)
class StudyReport:
    """The study of one or several sweeps (``pilotcommit study``): its markdown, its files."""

    run_ids: list[str]
    text: str
    paths: dict[str, Path]
    note: str  # when the latest sweep ran only some of the file's methods


def study_of_sweeps(client, sweep_cfg, run_ids: Sequence[str], runs_root: Path, *, candidate: str,
                    resamples: int, out: Path | None = None, log: bool = False, where: str = "") -> StudyReport:
    """The study report of sweep ``sweep_cfg``: of the parent runs ``run_ids`` merged (their
    shared runs checked identical), else of its latest finished sweep; written under ``out``
    (default ``<runs>/<sweep>/reports/<run ids>/study[-<candidate>][-merged]``) and, with
    ``log``, onto the first sweep's parent run (a merged study beside that sweep's own report).
    Raises ConfigError (an unknown candidate), LookupError (no finished sweep), StudyMergeError."""
    from pilotcommit.config import ConfigError, cell_configs
    from pilotcommit.tracking import resolve_parent_run

    cells_cfg = cell_configs(sweep_cfg, [])
    if candidate not in cells_cfg[0].methods:
        raise ConfigError(f"--candidate {candidate!r}: not a method of {where or 'sweep ' + sweep_cfg.name} "
                          f"(have {', '.join(cells_cfg[0].methods)})")
    latest = not run_ids
    run_ids = list(dict.fromkeys(run_ids)) or [resolve_parent_run(client, sweep_cfg.name, sweep_cfg.name, kind="sweep")]
    inputs = load_study_inputs(client, run_ids, cells_cfg[0].target.metric)
    cells = study_cells(inputs, cells_cfg[0].target, candidate=candidate, resamples=resamples,
                        order=[c.cell_label for c in cells_cfg])
    folder = ("study" if candidate == CANDIDATE_METHOD else f"study-{candidate}") + ("-merged" if len(run_ids) > 1 else "")
    out_dir = out or Path(runs_root) / sweep_cfg.name / "reports" / "+".join(run_ids) / folder
    note = ""
    if latest:  # the latest sweep: say so when it ran only some of the file's methods (--methods)
        have = set(inputs.sources[0].get("methods", [])) if inputs.sources else set()
        missing = [m for m in cells_cfg[0].methods if m not in have]
        if have and missing:
            note = (f"note: the latest sweep {run_ids[0]} ran {', '.join(sorted(have))} only, not "
                    f"{', '.join(missing)}; `--run-id A --run-id B` reports several sweeps as one")
    header = render.provenance_text(inputs)
    if log:
        paths = log_study(client, run_ids[0], cells, out_dir, header=header, artifact_dir=folder, metric_prefix=folder)
    else:
        paths = write_study(cells, out_dir, header)
    return StudyReport(run_ids, render.study_markdown(cells, header=header), paths, note)


def comparison_of(client, cfg, run_id: str | None, runs_root: Path, *, log: bool = False):
    """``(run id, summary, logged paths)`` of a finished comparison of ``cfg`` (default: its
    latest), from MLflow; with ``log``, its figure and table onto the parent run too."""
    from pilotcommit.tracking import resolve_parent_run

    run_id = resolve_parent_run(client, cfg.tracking.experiment_name or cfg.name, cfg.name, run_id)
    runs = load_comparison_runs(client, run_id, cfg.target.metric)
    summary = summarize_comparison(runs, cfg.target)
    paths = log_comparison(client, run_id, runs, summary, Path(runs_root) / cfg.name / "reports" / run_id) if log else {}
    return run_id, summary, paths
