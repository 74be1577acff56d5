"""A training run of a flow, tracked in MLflow: what to train (:class:`TrainRequest`), what it left
(:class:`TrainOutput`), and the two steps between them.

- :func:`run_training_cell` is the train task's body: it reads what is on disk and in MLflow,
  asks the pure reuse decision (:mod:`pilotcommit.stages.reuse`) and acts on it: hand back a
  finished run, copy one into this comparison's MLflow run, retire old outputs and retrain,
  or train (resuming from the last checkpoint). Training goes through the flow's
  :class:`~pilotcommit.runner.processes.RunWindow`: here, or in a child process.
- :func:`train_tracked` trains one run into its MLflow run: status, system metrics, the run
  itself in this process, or, when it asks for more than one process
  (``resources.nproc_per_node``), under ``torchrun`` with rank 0 tracking
  (:mod:`pilotcommit.runner.torchrun`); then ``tracking.json`` beside the run's ``result.json``.

Deliberately not here: Prefect (the flows' tasks call these), what a run trains
(pilotcommit/loop.py), the keys and folders (pilotcommit/stages/).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilotcommit import tracking
from pilotcommit.config import ExperimentConfig
from pilotcommit.loop import RunResult
from pilotcommit.runner.processes import current_window
from pilotcommit.runner.progress import (
    EvaluationReporter,
    ProgressEvent,
    RunIdentity,
    StepProgress,
    TrainingLog,
)
from pilotcommit.stages.materialise import read_attempt, write_attempt
from pilotcommit.stages.reuse import Reuse, RunOnDisk, decide_reuse
from pilotcommit.stages.table import RESULT_FILE, TRACKING_FILE, read_train_outputs


@dataclass(frozen=True)
class TrainRequest:
    """One training run of a flow: the run config (one method, one seed), where its data and
    initial policy are, its folder, and the MLflow run it is tracked into."""

    cfg: ExperimentConfig
    label: str
    seed: int
    prepared: dict  # PreparedData.to_dict()
    initial_policy: str
    run_dir: str
    tracking_uri: str
    mlflow_run_id: str

    @property
    def run(self) -> RunIdentity:
        return RunIdentity(self.label, self.seed, self.cfg.model.label, self.cfg.cell_label)


@dataclass(frozen=True)
class TrainOutput:
    """What a finished training run left: its result (``result.json``), the MLflow run it is in,
    the tracking gap of an outage, and the run it was copied from (a cached run)."""

    result: RunResult
    mlflow_run_id: str
    tracking_uri: str
    tracking_gap: str
    copied_from: str | None = None

    def to_dict(self) -> dict:
        return {"result": self.result.to_dict(), "mlflow_run_id": self.mlflow_run_id,
                "tracking_uri": self.tracking_uri, "tracking_gap": self.tracking_gap,
                **({"copied_from": self.copied_from} if self.copied_from else {})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainOutput:
        return cls(RunResult.from_dict(data["result"]), data["mlflow_run_id"], data["tracking_uri"],
                   data.get("tracking_gap", ""), data.get("copied_from"))


# --------------------------------------------------------------------------- the task's body


def run_training_cell(request: TrainRequest, *, fresh: bool, attempt: str, logger) -> TrainOutput:
    """The train task: hand back, copy, resume or retrain (module docstring), logging each
    decision and the run's evaluations (thinned) to ``logger`` (the Prefect run log)."""
    from pilotcommit.loop import retire_outputs

    run_path = Path(request.run_dir)
    client = tracking.mlflow_client(request.tracking_uri)
    done = read_train_outputs(run_path)
    source = done.get("mlflow_run_id") if done is not None else None
    decision = decide_reuse(RunOnDisk(
        finished_run_id=source,
        target_run_id=request.mlflow_run_id,
        target_finished=source == request.mlflow_run_id
        and client.get_run(request.mlflow_run_id).info.status == "FINISHED",
        source_exists=source is not None and source != request.mlflow_run_id and tracking.run_exists(client, source),
        attempt=attempt,
        recorded_attempt=read_attempt(run_path) if attempt else None,
    ), fresh=fresh)
    if decision is Reuse.REUSE:
        return TrainOutput.from_dict(done)
    if decision is Reuse.COPY:
        if not client.get_run(request.mlflow_run_id).data.metrics:  # not already copied by an earlier try
            tracking.copy_run_contents(client, source, request.mlflow_run_id)
        client.set_terminated(request.mlflow_run_id, status="FINISHED")
        return TrainOutput.from_dict({**done, "mlflow_run_id": request.mlflow_run_id, "copied_from": source})
    retrain = decision is Reuse.RETRAIN
    if retrain:
        # From scratch: the old result, tracking record, final policy and checkpoints go first,
        # in one step, so neither a retry nor a cache check can mistake them for this run's.
        retire_outputs(run_path)
        write_attempt(run_path, attempt)

    cfg = request.cfg
    describe = request.run.describe()
    log = TrainingLog(describe, cfg.budget.max_steps, cfg.budget.max_rollouts, cfg.target.metric, logger)
    logger.info("%s: %s", describe, _start_point(cfg, run_path, retrain))
    out = current_window().run(train_tracked, {"request": request, "fresh": retrain}, progress=log,
                               describe=f"training run {request.label} seed {request.seed} ({cfg.cell_label})")
    value = out.result.final_metrics.get(cfg.target.metric)
    logger.info(
        "%s: finished after %d steps, %s rollouts, final %s %s; MLflow run %s", describe, out.result.steps,
        f"{out.result.cumulative_rollouts:,}", cfg.target.metric, "missing" if value is None else f"{value:.4f}",
        tracking.mlflow_run_url(request.tracking_uri, client.get_run(request.mlflow_run_id).info.experiment_id,
                                request.mlflow_run_id),
    )
    return out


def _start_point(cfg: ExperimentConfig, run_path: Path, fresh: bool) -> str:
    """Where the run starts, for the log (the loop itself decides, by the same rule)."""
    from pilotcommit.checkpoint import latest_checkpoint

    if fresh or not cfg.checkpoint.resume:
        return "training from scratch"
    try:
        checkpoint = latest_checkpoint(run_path)
    except Exception:  # noqa: BLE001 - a broken checkpoint is the loop's error to raise, not the log's
        return "training (resuming from its last checkpoint)"
    return "training from scratch" if checkpoint is None else f"resuming from checkpoint {checkpoint.name}"


# --------------------------------------------------------------------------- one tracked run


def train_tracked(request: TrainRequest, fresh: bool, progress: Callable[[ProgressEvent], None]) -> TrainOutput:
    """Train ``request`` into its MLflow run (module docstring); in this process or a child."""
    run_path = Path(request.run_dir)
    client = tracking.mlflow_client(request.tracking_uri)
    if client.get_run(request.mlflow_run_id).info.status != "RUNNING":
        client.update_run(request.mlflow_run_id, status="RUNNING")
    # system/* metrics of this machine while the run trains (all its GPUs under torchrun)
    monitor = tracking.start_system_metrics(request.mlflow_run_id, request.tracking_uri,
                                            request.cfg.tracking.system_metrics_interval_s)
    try:
        result, gap = _train(request, fresh, client, progress)
    except BaseException:
        if monitor is not None:
            monitor.finish()
        _set_status(client, request.mlflow_run_id, "FAILED")
        raise
    if monitor is not None:
        monitor.finish()  # its last samples land before the run is marked finished
    _set_status(client, request.mlflow_run_id, "FINISHED")
    out = TrainOutput(result, request.mlflow_run_id, request.tracking_uri, gap)
    tracked = {k: v for k, v in out.to_dict().items() if k != "result"}
    (run_path / TRACKING_FILE).write_text(json.dumps(tracked, indent=2))
    return out


def _train(request: TrainRequest, fresh: bool, client, progress) -> tuple[RunResult, str]:
    """``(result, tracking gap)``: the run in this process, tracked by an MlflowTracker, or in
    ``resources.nproc_per_node`` processes under torchrun (rank 0 tracks; progress is reported
    when they are done)."""
    cfg, run_path = request.cfg, Path(request.run_dir)
    resume = False if fresh else None  # fresh runs log into a new MLflow run
    if cfg.resources.nproc_per_node > 1:
        from pilotcommit.runner.torchrun import train_under_torchrun

        outcome = train_under_torchrun(cfg, request.label, request.seed, prepared=request.prepared,
                                       initial_policy=request.initial_policy, run_dir=run_path,
                                       tracking_uri=request.tracking_uri, mlflow_run_id=request.mlflow_run_id,
                                       resume=resume)
        result = RunResult.from_dict(json.loads((run_path / RESULT_FILE).read_text()))
        progress(StepProgress(request.run, result.steps, result.cumulative_rollouts))
        return result, outcome["tracking_gap"]
    from pilotcommit.data.prepared import PreparedData
    from pilotcommit.loop import train_run

    tracker = tracking.MlflowTracker(request.mlflow_run_id, client, spool_path=run_path / "tracking-undelivered.jsonl")
    reporter = EvaluationReporter(tracker, progress, request.run)
    try:
        result = train_run(
            cfg, request.label, request.seed, prepared=PreparedData.from_dict(request.prepared),
            initial_policy=request.initial_policy, run_dir=run_path, tracker=reporter, resume=resume,
            progress=lambda step, metrics: progress(StepProgress(request.run, step, metrics.get("rollouts/cumulative"))),
        )
        tracker.log_artifact(run_path / RESULT_FILE, "run")
    finally:
        gap = tracker.close()
    return result, gap.summary()


def _set_status(client, run_id: str, status: str) -> None:
    """End the MLflow run; a store that is down must not turn a trained run into a failure."""
    try:
        client.set_terminated(run_id, status=status)
    except Exception as err:  # noqa: BLE001 - the metrics are delivered or spooled already
        logging.getLogger(__name__).warning("MLflow run %s: could not set status %s: %s", run_id, status, err)
