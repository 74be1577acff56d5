"""Training runs in their own processes, so a comparison trains several runs at once, through an
explicit window of at most ``max_workers`` runs (:class:`RunWindow`).

A comparison is many independent runs (method x seed). On a CPU machine each run uses
``torch_threads`` cores, so ``cores // torch_threads`` of them fit side by side. Threads do not
work for this: the learner and the sampler hold the GIL between torch calls, and two runs in
threads of one process were slower than one after the other (docs/benchmarks.md). So the train
task, when its flow's window holds more than one run, hands its run to a child process and
waits for it. The window is opened by the flow (``with RunWindow(k):``) and found by the tasks
it runs through a context variable (Prefect copies the context into its task threads): no
module state, and two flows in one process each have their own.

- Children come from a ``forkserver`` that imported torch, transformers and the pipeline once,
  so a child starts in a fraction of a second; the forkserver is started clean (no Prefect
  threads or event loop in it to fork).
- Progress events travel back over a pipe (multiprocessing's own channel between this process
  and its child, nothing else writes to it) and are re-emitted in the parent (the CLI's bars).
- The child's return value comes back over the pipe; its exception comes back with its
  traceback as a note. A child that dies (SIGKILL, out of memory) raises
  :class:`TrainingProcessDied`; the Prefect retry of the train task then resumes the run from
  its last checkpoint, exactly as after a crash of the whole pipeline.
- If the parent is interrupted (Ctrl-C) or fails, the window terminates its children; their checkpoints stay.

Each run's results do not depend on where it ran (same seeds, its own torch threads); the
flow tests compare a parallel comparison with a sequential one.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

# imported once by the forkserver, not by every child
PRELOAD = ["torch", "transformers", "pilotcommit.pipeline", "pilotcommit.tracking", "pilotcommit.runner.training"]



class TrainingProcessDied(RuntimeError):
    """A training child process ended without a result (killed, or out of memory)."""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_parallel_runs(torch_threads: int | None, num_runs: int) -> int:
    """How many runs to train at once when the caller does not say: one per ``torch_threads``
    cores on a CPU-only machine; one on a GPU machine (runs would share the accelerator) or when
    torch picks its own thread count (it then uses every core)."""
    import torch

    if torch.cuda.is_available() or not torch_threads:
        return 1
    return max(1, min(num_runs, available_cores() // torch_threads))


@functools.cache
def _mp_context():
    """The forkserver context, made once per process (its server imports PRELOAD once)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _child(conn, target: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    def progress(event: dict[str, Any]) -> None:
        conn.send(("progress", event))

    try:
        value = target(**kwargs, progress=progress)
        conn.send(("result", value))
    except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
        text = traceback.format_exc()
        try:
            conn.send(("error", (err, text)))
        except Exception:  # an exception that does not pickle: its type name and message
            conn.send(("error", (RuntimeError(f"{type(err).__name__}: {err}"), text)))
    finally:
        conn.close()


def run_in_child(
    target: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    on_progress: Callable[[Any], None] | None = None,
    describe: str = "training run",
    live: set | None = None,
) -> Any:
    """``target(**kwargs, progress=...)`` in a fresh child process; its return value.

    ``target`` must be a module-level function and ``kwargs`` picklable. Progress events the
    child emits are passed to ``on_progress`` here, in the calling thread.
    """
    context = _mp_context()
    parent_conn, child_conn = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child_conn, target, kwargs), name=describe)
    process.start()
    child_conn.close()
    if live is not None:
        live.add(process)
    try:
        while True:
            try:
                kind, payload = parent_conn.recv()
            except EOFError:
                process.join()
                raise TrainingProcessDied(
                    f"{describe}: its process (pid {process.pid}) ended with exit code "
                    f"{process.exitcode} before returning a result (killed, or out of memory?); "
                    "rerunning resumes it from its last checkpoint"
                ) from None
            if kind == "progress":
                if on_progress is not None:
                    on_progress(payload)
            elif kind == "result":
                process.join()
                return payload
            else:
                err, text = payload
                err.add_note(f"in the {describe} process:\n{text}")
                process.join()
                raise err
    finally:
        parent_conn.close()
        if live is not None:
            live.discard(process)
        _stop(process)


def _stop(process, timeout_s: float = 10.0) -> None:
    if process.is_alive():  # the parent was interrupted or failed: do not leave the child
        process.terminate()
        process.join(timeout_s)
        if process.is_alive():
            process.kill()
            process.join()


class RunWindow:
    """At most ``max_workers`` training runs at once: with one, each run trains in the calling
    thread; with more, each in its own child process (the GIL: see the module docstring).

    A flow opens it around the runs it trains (``with RunWindow(k): ...``); the tasks find it
    with :func:`current_window` (no window open: one run at a time, in process)."""

    def __init__(self, max_workers: int) -> None:
        if max_workers < 1:
            raise ValueError(f"parallel_runs must be at least 1, got {max_workers}")
        self.max_workers = max_workers
        self._slots = threading.BoundedSemaphore(max_workers)
        self._live: set = set()
        self._token = None

    @property
    def in_children(self) -> bool:
        return self.max_workers > 1

    def run(self, target: Callable[..., Any], kwargs: dict[str, Any], *, progress: Callable[[Any], None],
            describe: str) -> Any:
        """``target(**kwargs, progress=...)``: here, or in a child process when the window holds
        several runs (waiting for one of its ``max_workers`` slots)."""
        if not self.in_children:
            return target(**kwargs, progress=progress)
        with self._slots:
            return run_in_child(target, kwargs, on_progress=progress, describe=describe, live=self._live)

    def terminate(self) -> None:
        """Stop every running child (SIGTERM, then SIGKILL): for an interrupted flow, whose task
        threads would otherwise wait for their children to finish. Checkpoints stay; a rerun resumes."""
        for process in list(self._live):
            _stop(process)

    def __enter__(self) -> RunWindow:
        self._token = _CURRENT_WINDOW.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _CURRENT_WINDOW.reset(self._token)


_CURRENT_WINDOW: ContextVar[RunWindow | None] = ContextVar("pilotcommit_run_window", default=None)


def current_window() -> RunWindow:
    """The window of the flow this runs in; one run at a time in process when none is open."""
    return _CURRENT_WINDOW.get() or RunWindow(1)
