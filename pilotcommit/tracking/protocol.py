"""The small interface the training loop logs through (:class:`Tracker`), and
:class:`MemoryTracker`, which keeps everything in memory (tests, the bare loop). The loop calls
it with plain dicts named as in DESIGN.md ("Metric names") and never imports MLflow; the MLflow
writer is :mod:`pilotcommit.tracking.writer`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd


@runtime_checkable
class Tracker(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Per-training-step metrics (``rollouts/*``, ``alloc/*``, ``loss/*``, ...) at ``step``."""

    def log_evaluation(self, metrics: Mapping[str, float], step: int, cumulative_rollouts: int) -> None:
        """Evaluation metrics (``eval/*``) at ``step``; trackers also log them under
        ``by_rollouts/`` against ``cumulative_rollouts`` so charts compare by budget."""

    def log_prompt_stats(self, table: pd.DataFrame, step: int, name: str) -> None:
        """A per-prompt table (``prompt_id``, ``pass_rate``, ``reward_variance``, ...):
        trackers log histograms of it as figures and the table itself."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flat run parameters (resolved config values)."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file produced by the run."""

    def checkpoint_barrier(self) -> bool:
        """Called just before a checkpoint is written: make what was logged so far durable (a
        crash after the checkpoint then loses nothing at or before it). True when it is."""


class MemoryTracker:
    """Keeps everything it is given; for tests and runs without a tracking store."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.evaluations: list[tuple[int, int, dict[str, float]]] = []
        self.prompt_stats: list[tuple[int, str, pd.DataFrame]] = []
        self.params: dict[str, Any] = {}
        self.artifacts: list[tuple[Path, str | None]] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_evaluation(self, metrics: Mapping[str, float], step: int, cumulative_rollouts: int) -> None:
        self.evaluations.append((step, cumulative_rollouts, dict(metrics)))

    def log_prompt_stats(self, table: pd.DataFrame, step: int, name: str) -> None:
        self.prompt_stats.append((step, name, table.copy()))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def checkpoint_barrier(self) -> bool:
        return True  # nothing is queued
