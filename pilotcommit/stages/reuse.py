"""Whether a training run found on disk is reused, copied, resumed or retrained: one pure decision,
made from what is on disk and in MLflow (the caller reads both, then acts on the answer).

    REUSE    the run on disk finished into this very MLflow run, which is FINISHED: return it
    COPY     it finished into another MLflow run (a cached run of another comparison or sweep)
             that still exists: copy that run's data into this one, return it
    RESUME   train, continuing from the run's last checkpoint (a crash, a Prefect retry; also a
             finished run whose MLflow run never got its final status)
    RETRAIN  retire the folder's old outputs in one step, record this task run as the attempt,
             train from scratch (a refresh; or the finished run's MLflow data is gone, so the
             new MLflow run would have no metrics)

A retry of the task run that retired the old outputs (the attempt marker names it) continues
the new run: it can never hand back the previous run's result. Tested case by case in
tests/unit/test_reuse.py, in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Reuse(str, Enum):
    REUSE = "reuse"
    COPY = "copy"
    RESUME = "resume"
    RETRAIN = "retrain"


@dataclass(frozen=True)
class RunOnDisk:
    """What the caller found: the finished outputs in the run folder (their MLflow run id, None
    when the folder holds no finished run) and the state of the MLflow runs involved."""

    finished_run_id: str | None  # the MLflow run the finished outputs were tracked into
    target_run_id: str  # the MLflow run this task trains into
    target_finished: bool  # that run's status is FINISHED
    source_exists: bool  # ``finished_run_id`` is a live run of the store
    attempt: str = ""  # this task run's id
    recorded_attempt: str | None = None  # the task run that last restarted the folder from scratch


def decide_reuse(found: RunOnDisk, *, fresh: bool) -> Reuse:
    """The decision for a train task asked to start ``fresh`` (a refresh) or not."""
    if found.attempt and found.recorded_attempt == found.attempt:
        fresh = False  # a retry of the task run that started this run: continue it
    if not fresh and found.finished_run_id is not None:
        if found.finished_run_id == found.target_run_id:
            return Reuse.REUSE if found.target_finished else Reuse.RESUME
        return Reuse.COPY if found.source_exists else Reuse.RETRAIN
    return Reuse.RETRAIN if fresh else Reuse.RESUME
