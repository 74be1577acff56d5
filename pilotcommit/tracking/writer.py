"""The MLflow writer behind the :class:`~pilotcommit.tracking.protocol.Tracker` protocol: one run,
written through a background queue, so a tracking-server outage delays metrics instead of
stopping the training, and a resumed run drops the (metric, step) pairs already in the store."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pandas as pd

from pilotcommit.analysis.figures import check_prompt_stats, prompt_stats_figure
from pilotcommit.tracking.store import TrackingUnavailable, mlflow_client
from pilotcommit.tracking.tags import (
    BY_ROLLOUTS_PREFIX,
    TAG_DELAYED_METRICS,
    TAG_DELAYED_STEPS,
    TAG_LOST_METRICS,
    TAG_SPOOL,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the tracker


# MLflow error codes that retrying cannot fix (the request itself is wrong); anything else,
# including connection failures (reported as INTERNAL_ERROR), is treated as an outage.
_PERMANENT_ERROR_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "MALFORMED_REQUEST",
        "INVALID_STATE", "RESOURCE_ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED",
        "ENDPOINT_NOT_FOUND",
    }
)


def is_permanent_error(err: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and err.error_code in _PERMANENT_ERROR_CODES


@dataclass
class _Op:
    """One queued write: a metric batch, or any other client call (params, artifacts)."""

    describe: str
    metrics: list = field(default_factory=list)  # mlflow.entities.Metric
    call: Callable[[], None] | None = None
    attempts: int = 0
    cleanup: Callable[[], None] | None = None


@dataclass
class TrackingGap:
    """What an outage cost: writes that had to wait, and writes that never arrived."""

    delayed_metrics: int = 0
    delayed_steps: tuple[int, int] | None = None  # (first, last) training step delayed
    failed_attempts: int = 0
    lost_metrics: int = 0
    lost_operations: list[str] = field(default_factory=list)
    spool_path: Path | None = None

    def note_delayed(self, op: _Op) -> None:
        if op.attempts == 0:
            self.delayed_metrics += len(op.metrics)
            steps = [m.step for m in op.metrics if not m.key.startswith(BY_ROLLOUTS_PREFIX)]
            if steps:
                lo, hi = min(steps), max(steps)
                if self.delayed_steps is not None:
                    lo, hi = min(lo, self.delayed_steps[0]), max(hi, self.delayed_steps[1])
                self.delayed_steps = (lo, hi)

    @property
    def any(self) -> bool:
        return bool(self.delayed_metrics or self.failed_attempts or self.lost_metrics or self.lost_operations)

    def summary(self) -> str:
        if not self.any:
            return "no tracking outage"
        parts = [f"{self.failed_attempts} failed write attempt(s)", f"{self.delayed_metrics} metric value(s) delayed"]
        if self.delayed_steps:
            parts.append(f"steps {self.delayed_steps[0]}-{self.delayed_steps[1]}")
        if self.lost_metrics or self.lost_operations:
            parts.append(
                f"{self.lost_metrics} metric value(s) and {len(self.lost_operations)} other write(s) "
                f"not delivered (saved to {self.spool_path})"
            )
        return "; ".join(parts)



class MlflowTracker:
    """:class:`Tracker` writing to one MLflow run, without ever stopping the training.

    Writes go through a queue drained by a background thread: metrics are batched
    (``log_batch``, at most ``max_batch`` values per call), and a failed write stays at the head
    of the queue and is retried with exponential backoff, so a tracking-server outage delays
    metrics instead of killing the run. :meth:`close` waits up to ``close_timeout_s`` for the
    queue, then records the gap (tags ``pilotcommit.tracking.*``) and saves anything
    undelivered to a JSONL spool file.

    On a resumed run (same ``run_id``) the loop re-logs the steps after its last checkpoint;
    the tracker reads every (metric, step) pair already logged at start and drops exactly those
    pairs, so no step appears twice and the gaps a crash left (writes still queued when
    the process died, possibly before later ones that were delivered) are filled.
    """

    def __init__(
        self,
        run_id: str,
        client=None,
        *,
        tracking_uri: str | None = None,
        skip_logged_steps: bool = True,
        flush_interval_s: float = 1.0,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 20.0,
        close_timeout_s: float = 60.0,
        max_batch: int = 1000,
        spool_path: Path | None = None,
        prompt_stats_tables: bool = True,
    ) -> None:
        if client is None:
            if tracking_uri is None:
                raise ValueError("MlflowTracker needs a client or a tracking_uri")
            client = mlflow_client(tracking_uri)
        self.run_id = run_id
        self.client = client
        self.flush_interval_s = flush_interval_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.close_timeout_s = close_timeout_s
        self.max_batch = max_batch
        self.spool_path = Path(spool_path) if spool_path else None
        self.prompt_stats_tables = prompt_stats_tables
        self.gap = TrackingGap()
        self._queue: deque[_Op] = deque()
        self._lock = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._tmpdir = Path(tempfile.mkdtemp(prefix="pilotcommit-tracker-"))
        # Every step already in the store per metric key (resume: exact (metric, step) pairs are
        # dropped, not everything up to a highest step), and params already set.
        self._logged_steps: dict[str, set[int]] = {}
        self._logged_params: dict[str, str] = {}
        try:
            run = client.get_run(run_id)
        except Exception as err:  # before training: fail clearly rather than log into the void
            raise TrackingUnavailable(f"MLflow run {run_id}: cannot read it: {err}") from err
        self._logged_params = dict(run.data.params)
        if skip_logged_steps:
            for key in run.data.metrics:
                steps = [m.step for m in client.get_metric_history(run_id, key)]
                self._logged_steps[key] = set(steps)

    # ---------------------------------------------------------------- Tracker protocol

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._enqueue_metrics({k: v for k, v in metrics.items()}, step, f"metrics at step {step}")

    def log_evaluation(self, metrics: Mapping[str, float], step: int, cumulative_rollouts: int) -> None:
        self._enqueue_metrics(dict(metrics), step, f"evaluation at step {step}")
        self._enqueue_metrics(
            {f"{BY_ROLLOUTS_PREFIX}{k}": v for k, v in metrics.items()},
            int(cumulative_rollouts),
            f"evaluation at {cumulative_rollouts} rollouts",
        )

    def log_prompt_stats(self, table: pd.DataFrame, step: int, name: str) -> None:
        # Only a copy of the table is taken here; the figure and the CSV are written by the
        # background thread just before the upload, so drawing them (~0.15 s per call) does not
        # hold up the training thread, which spends its time in torch ops without the GIL.
        title = f"{name}, step {step}"
        check_prompt_stats(table, title)  # a wrong table fails now, in the caller, not in a retry loop
        table = table.copy()
        # Step-numbered files: re-logging a step after a resume overwrites instead of appending.
        stem = f"step_{int(step):06d}"
        out_dir = self._tmpdir / f"{name}-{stem}"
        figure_path = out_dir / f"{stem}.png"
        table_path = out_dir / f"{stem}.csv" if self.prompt_stats_tables else None
        artifact_dir = f"prompt_stats/{name}"

        def upload() -> None:
            if not (figure_path.exists() and (table_path is None or table_path.exists())):
                # drawn once, even if the upload is retried after an outage
                out_dir.mkdir(parents=True, exist_ok=True)
                prompt_stats_figure(table, title).savefig(figure_path, dpi=90)
                if table_path is not None:
                    table.to_csv(table_path, index=False)
            for path in (figure_path, table_path):
                if path is not None:
                    self.client.log_artifact(self.run_id, str(path), artifact_dir)

        self._enqueue(_Op(f"prompt stats {name!r} at step {step}", call=upload,
                          cleanup=lambda: _remove_tree(out_dir)))

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        fresh: list = []
        for key, value in params.items():
            text = str(value)[:6000]  # MLflow's limit on a param value
            previous = self._logged_params.get(key)
            if previous == text:
                continue
            if previous is not None:
                # Params are immutable in MLflow; a resumed run with a changed value is a bug
                # upstream (the run key includes the config hash), not a reason to stop training.
                logger.warning("param %s already logged as %r, not %r: kept the first", key, previous, text)
                continue
            self._logged_params[key] = text
            fresh.append(Param(key, text))
        for i in range(0, len(fresh), 100):  # log_batch accepts 100 params per call
            chunk = fresh[i : i + 100]
            self._enqueue(_Op(f"{len(chunk)} params", call=lambda c=chunk: self.client.log_batch(self.run_id, params=c)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        self._enqueue(_Op(f"artifact {path}", call=lambda: self.client.log_artifact(self.run_id, str(path), artifact_path)))

    # ---------------------------------------------------------------- lifecycle

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self._enqueue(_Op(f"tag {key}", call=lambda k=key, v=str(value): self.client.set_tag(self.run_id, k, v)))

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued write is delivered (True) or ``timeout_s`` passes (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            self._lock.notify_all()
            while self._queue:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(timeout=0.05 if remaining is None else min(remaining, 0.05))
        return True

    def checkpoint_barrier(self, timeout_s: float = 30.0) -> bool:
        """Deliver everything queued before a checkpoint is written, so that a crash after it
        (even SIGKILL) loses no metric of a step at or before the checkpoint: the resumed run
        re-logs exactly the steps after it. Skipped (False) while MLflow is failing: an outage
        must not stall the training; the queue still holds those writes and retries them."""
        with self._lock:
            failing = bool(self._queue) and self._queue[0].attempts > 0
        return False if failing else self.flush(timeout_s)

    def close(self, status: str | None = None) -> TrackingGap:
        """Deliver what is queued (up to ``close_timeout_s``), record the gap, optionally end
        the run with ``status`` (FINISHED / FAILED), and return the gap."""
        delivered = self.flush(self.close_timeout_s)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            leftover = list(self._queue)
            self._queue.clear()
        if not delivered and leftover:
            self._spool(leftover)
        if self.gap.any:
            logger.warning("MLflow run %s: %s", self.run_id, self.gap.summary())
            tags = {
                TAG_DELAYED_METRICS: self.gap.delayed_metrics,
                TAG_DELAYED_STEPS: "-".join(map(str, self.gap.delayed_steps)) if self.gap.delayed_steps else "",
                TAG_LOST_METRICS: self.gap.lost_metrics,
            }
            if self.gap.spool_path:
                tags[TAG_SPOOL] = str(self.gap.spool_path)
            self._try_now(lambda: [self.client.set_tag(self.run_id, k, str(v)) for k, v in tags.items()])
        if status:
            self._try_now(lambda: self.client.set_terminated(self.run_id, status=status))
        _remove_tree(self._tmpdir)
        return self.gap

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    # ---------------------------------------------------------------- internals

    def _enqueue_metrics(self, metrics: Mapping[str, float], step: int, describe: str) -> None:
        from mlflow.entities import Metric

        timestamp_ms = int(time.time() * 1000)
        values = []
        for key, value in metrics.items():
            if step in self._logged_steps.get(key, ()):
                continue  # already in the store from before a resume
            values.append(Metric(key=key, value=float(value), timestamp=timestamp_ms, step=int(step)))
        if values:
            self._enqueue(_Op(describe, metrics=values))

    def _enqueue(self, op: _Op) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"MlflowTracker for run {self.run_id} is closed ({op.describe})")
            # Merge consecutive metric batches so a fast loop does not make one call per step.
            if op.metrics and self._queue and self._queue[-1].metrics and self._queue[-1].attempts == 0 \
                    and len(self._queue[-1].metrics) + len(op.metrics) <= self.max_batch and len(self._queue) > 1:
                tail = self._queue[-1]
                tail.metrics.extend(op.metrics)
                tail.describe = f"{tail.describe} + {op.describe}"
            else:
                self._queue.append(op)
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name=f"mlflow-tracker-{self.run_id[:8]}", daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def _drain(self) -> None:
        delay_s = self.retry_initial_s
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait(timeout=self.flush_interval_s)
                if self._closed:
                    return
                op = self._queue[0]  # stays queued until delivered
            try:
                self._deliver(op)
            except Exception as err:  # noqa: BLE001 (any failure must not reach the training)
                if is_permanent_error(err):
                    logger.error("MLflow rejected %s for run %s, dropped: %s", op.describe, self.run_id, err)
                    self.gap.lost_operations.append(f"{op.describe}: rejected: {err}")
                    self.gap.lost_metrics += len(op.metrics)
                    self._pop(op)
                    continue
                with self._lock:
                    self.gap.failed_attempts += 1
                    self.gap.note_delayed(op)
                    op.attempts += 1
                if op.attempts == 1:
                    logger.warning("MLflow write failed (%s), will retry: %s", op.describe, err)
                with self._lock:
                    if self._closed:
                        return
                    self._lock.wait(timeout=delay_s)
                delay_s = min(delay_s * 2.0, self.retry_max_s)
                continue
            delay_s = self.retry_initial_s
            if op.attempts:
                logger.warning("MLflow write delivered after %d retries: %s", op.attempts, op.describe)
            self._pop(op)

    def _deliver(self, op: _Op) -> None:
        if op.metrics:
            self.client.log_batch(self.run_id, metrics=op.metrics)
        elif op.call is not None:
            op.call()

    def _pop(self, op: _Op) -> None:
        with self._lock:
            if self._queue and self._queue[0] is op:
                self._queue.popleft()
            self._lock.notify_all()
        if op.cleanup:
            op.cleanup()

    def _spool(self, leftover: list[_Op]) -> None:
        path = self.spool_path or (self._tmpdir.parent / f"pilotcommit-undelivered-{self.run_id}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            for op in leftover:
                for m in op.metrics:
                    handle.write(json.dumps({"run_id": self.run_id, "key": m.key, "value": m.value,
                                             "step": m.step, "timestamp": m.timestamp}) + "\n")
                if not op.metrics:
                    handle.write(json.dumps({"run_id": self.run_id, "undelivered": op.describe}) + "\n")
                    self.gap.lost_operations.append(op.describe)
                self.gap.lost_metrics += len(op.metrics)
        self.gap.spool_path = path

    def _try_now(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as err:  # noqa: BLE001
            logger.warning("MLflow run %s: could not record the tracking gap / status: %s", self.run_id, err)


def replay_spool(client, spool_path: Path) -> int:
    """Send the metrics of a spool file written by :meth:`MlflowTracker.close` (after an outage
    that outlasted the run); returns how many values were sent."""
    from mlflow.entities import Metric

    by_run: dict[str, list] = {}
    for line_no, line in enumerate(Path(spool_path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{spool_path}:{line_no}: not JSON: {err}") from None
        if "key" in row:
            by_run.setdefault(row["run_id"], []).append(
                Metric(row["key"], float(row["value"]), int(row["timestamp"]), int(row["step"]))
            )
    sent = 0
    for run_id, metrics in by_run.items():
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i : i + 1000])
        sent += len(metrics)
    return sent


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
