"""Progress of a flow's stages as typed events, and where they go.

Events (plain dataclasses: they cross the pipe from a training child process):

    WarmStartProgress    the tiny model's warm start started / finished
    ProbeProgress        the probe's result, before any training (the CLI prints the prediction)
    StepProgress         a training step finished (step, cumulative rollouts)
    EvaluationProgress   an evaluation of a run, with the allocation counters since the last one

Where they go: the sink of :func:`progress_sink` (the CLI's progress bars; a context variable,
so a deployment without one, or two flows in one process, are unaffected), and, thinned, the
Prefect run log (:class:`TrainingLog`: one line per evaluation, at most
:data:`PROGRESS_LOG_LINES` per run, so a 1,000-step run with an evaluation every 5 steps logs
about 20 lines, not 200). :class:`EvaluationReporter` turns the evaluations the loop hands its
tracker into events, so the loop itself knows nothing of progress reporting.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pilotcommit.tracking.protocol import Tracker

# At most this many evaluation lines per training run (plus the first and the final one):
# enough to follow a day-long run, few enough to read on the run page.
PROGRESS_LOG_LINES = 20

# allocation counters that add up over steps; the others are read at the latest step
_SUMMED_ALLOC = ("alloc/rounds", "alloc/informative", "alloc/too_hard", "alloc/too_easy", "alloc/dropped_groups")
_LATEST_ALLOC = ("alloc/evicted_total", "alloc/buffer_size")


# --------------------------------------------------------------------------- the events


@dataclass(frozen=True)
class RunIdentity:
    """Which training run an event is about."""

    method: str
    seed: int
    model: str
    cell: str

    def describe(self) -> str:
        return f"train {self.method} seed {self.seed} ({self.cell})"


@dataclass(frozen=True)
class WarmStartProgress:
    model: str
    done: bool


@dataclass(frozen=True)
class ProbeProgress:
    cell: str
    probe: dict  # ProbeResult.to_dict()


@dataclass(frozen=True)
class GenerationProgress:
    """A chunk of a long generation (a probe, an evaluation) finished: ``done`` of ``total`` prompts."""

    what: str
    done: int
    total: int


@dataclass(frozen=True)
class StepProgress:
    run: RunIdentity
    step: int
    rollouts: int | None


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



@dataclass(frozen=True)
class EvaluationProgress:
    run: RunIdentity
    step: int
    rollouts: int
    metrics: dict[str, float]
    alloc: AllocationTally


ProgressEvent = WarmStartProgress | ProbeProgress | GenerationProgress | StepProgress | EvaluationProgress


# --------------------------------------------------------------------------- where they go

_SINK: ContextVar[Callable[[ProgressEvent], None] | None] = ContextVar("pilotcommit_progress_sink", default=None)


@contextmanager
def progress_sink(sink: Callable[[ProgressEvent], None]) -> Iterator[None]:
    """Send the progress events of the flows run inside the block to ``sink``."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


# --------------------------------------------------------------------------- stopping

_STOP = threading.Event()


class StopRequested(KeyboardInterrupt):
    """SIGTERM or Ctrl-C arrived while long in-process work (a probe, an evaluation) was running;
    raised between chunks of that work, so a worker thread stops too (the signal itself only
    interrupts the main thread)."""


def request_stop() -> None:
    """Ask in-process work to stop at its next chunk (the CLI's SIGTERM/SIGINT handler calls it)."""
    _STOP.set()


def interrupt(signum=None, frame=None) -> None:
    """The CLI's SIGTERM handler: unwind like Ctrl-C, and stop in-process work in other threads
    (a probe running in a Prefect task) at its next chunk."""
    request_stop()
    raise KeyboardInterrupt


def clear_stop() -> None:
    """Forget a stop request (a process that goes on after handling one: tests, a notebook)."""
    _STOP.clear()


def check_stop(what: str) -> None:
    """Raise :class:`StopRequested` if a stop was requested."""
    if _STOP.is_set():
        raise StopRequested(f"{what}: stopped on request (SIGTERM or Ctrl-C)")


def emit(event: ProgressEvent) -> None:
    sink = _SINK.get()
    if sink is not None:
        sink(event)


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
    """One training run's progress events -> the sink (every event; :func:`emit` by default) and
    ``logger``, the Prefect run log (evaluations, thinned by :func:`evaluation_due`). Called in the
    train task's thread, also when the run trains in a child process (its events come back over a
    pipe)."""

    def __init__(self, describe: str, max_steps: int | None, max_rollouts: int | None, metric: str,
                 logger, sink: Callable[[ProgressEvent], None] = emit, lines: int = PROGRESS_LOG_LINES) -> None:
        self.describe = describe
        self.max_steps, self.max_rollouts = max_steps, max_rollouts
        self.metric = metric
        self.sink = sink
        self.logger = logger
        self.lines = lines
        self.last_logged: float | None = None
        self.pending = AllocationTally()  # steps since the last *logged* evaluation

    def __call__(self, event: ProgressEvent) -> None:
        self.sink(event)
        if not isinstance(event, EvaluationProgress):
            return
        self.pending.merge(event.alloc)
        step, rollouts = event.step, event.rollouts
        fraction = budget_fraction(self.max_steps, self.max_rollouts, step, rollouts)
        if not evaluation_due(fraction, self.last_logged, self.lines):
            return
        self.logger.info(self.evaluation_line(step, rollouts, fraction, event.metrics))
        self.last_logged = fraction
        self.pending = AllocationTally()

    def evaluation_line(self, step: int, rollouts: int, fraction: float, metrics: Mapping[str, float]) -> str:
        of_steps = f"/{self.max_steps}" if self.max_steps else ""
        value = metrics.get(self.metric)
        accuracy = f"{self.metric} {value:.4f}" if value is not None else f"{self.metric} missing"
        return (f"{self.describe}: evaluation at step {step}{of_steps} ({fraction:.0%} of the budget), "
                f"{rollouts:,} rollouts, {accuracy}; allocation: {self.pending.describe()}")


class EvaluationReporter:
    """The run's tracker, passed through, that also reports every evaluation as an
    :class:`EvaluationProgress` (step, cumulative rollouts, the evaluation metrics and the
    allocation counters of the steps since the previous evaluation). The loop already hands
    each evaluation to its tracker; listening there keeps the loop unaware of progress."""

    def __init__(self, inner: Tracker, progress: Callable[[ProgressEvent], None], run: RunIdentity) -> None:
        self.inner, self.progress, self.run = inner, progress, run
        self.tally = AllocationTally()

    def log_metrics(self, metrics, step: int) -> None:
        self.inner.log_metrics(metrics, step)
        self.tally.add_step(metrics)

    def log_evaluation(self, metrics, step: int, cumulative_rollouts: int) -> None:
        self.inner.log_evaluation(metrics, step, cumulative_rollouts)
        self.progress(EvaluationProgress(self.run, int(step), int(cumulative_rollouts),
                                         {k: float(v) for k, v in metrics.items()}, self.tally))
        self.tally = AllocationTally()

    def log_prompt_stats(self, table, step: int, name: str) -> None:
        self.inner.log_prompt_stats(table, step, name)

    def log_params(self, params) -> None:
        self.inner.log_params(params)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, artifact_path)

    def checkpoint_barrier(self) -> bool:
        return self.inner.checkpoint_barrier()

    def __getattr__(self, name: str) -> Any:  # anything a tracker grows later goes straight through
        return getattr(self.inner, name)
