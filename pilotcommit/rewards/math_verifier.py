r"""The math-verify step of the math reward, in a worker process with a hard time limit.

:func:`pilotcommit.rewards.math.math_reward` asks :func:`equivalent_within` whether a
prediction and a reference that the string steps (``rewards.math_answer``) left undecided
are mathematically equivalent. The answer comes from **math-verify** (``parse`` +
``verify``) with LaTeX extraction only: its plain-expression extraction calls
``sympy.parse_expr``, which ``eval``s, so it is never enabled. Both sides are wrapped in
``\boxed{}``, the form math-verify expects.

The time limit (a deliberate choice). math-verify enforces its own timeouts
with ``signal.alarm``: whole seconds, only in the main thread of the main
interpreter (it raises elsewhere, e.g. under a thread pool), and powerless
against C-level work such as a huge integer power, which never returns to the
interpreter to receive the signal. So math-verify runs in one long-lived worker
process per calling process (``python -m pilotcommit.rewards.math_verifier --worker``,
JSON lines over pipes; started on first use or by :func:`start_math_verifier`, warmed up
once): inside it a sub-second ``setitimer`` deadline interrupts Python-level work, and the
worker runs under a ``RLIMIT_AS`` memory cap; the caller waits at most the remaining
time for the answer and otherwise kills the worker with SIGKILL (a fresh one
is started at once, in the background) and the answer counts as not equivalent
(:func:`math_verifier_timeouts` counts those kills). The first call of a process, or the
first after a kill, also waits for the worker's start-up (about a second; a missing
math-verify installation raises ``RuntimeError`` there, because an environment fault must
not look like a wrong answer).

Deliberately not here: extracting or normalising answers, the cheap fast paths and the
guards that keep hostile answers away from the parser (``rewards.math_answer``, all run
before this), and the reward's own rules (``rewards.math``). The worker trusts its caller
to have applied those guards; it only bounds time and memory.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

# Worker: time to import sympy + math-verify and warm its grammar; memory cap (virtual).
WORKER_START_TIMEOUT_S = 60.0
WORKER_MEMORY_BYTES = 2 * 1024**3
# Part of the caller's remaining time the worker's own deadline gets, so that it usually
# answers (and survives) before the caller gives up and kills it.
WORKER_SOFT_DEADLINE_FRACTION = 0.8

_WORKER_MODULE = "pilotcommit.rewards.math_verifier"
_WORKER_FLAG = "--worker"


# --------------------------------------------------------------------------- worker process


class _Deadline(BaseException):
    """Raised by the worker's timer. A BaseException, so math-verify's ``except Exception``
    handlers cannot swallow it and carry on with the next (possibly slow) comparison."""


def _worker_main() -> None:
    """The math-verify worker: one JSON request per stdin line, one JSON answer per stdout line."""
    import logging
    import signal

    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):  # not available / not permitted: the kill remains
        pass
    # Our protocol owns the real stdout; anything a library prints goes to stderr instead.
    protocol_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    from math_verify import LatexExtractionConfig, parse, verify

    latex_only = [LatexExtractionConfig()]
    gold_cache: dict[str, list] = {}

    def on_alarm(signum, frame):
        raise _Deadline()

    signal.signal(signal.SIGALRM, on_alarm)

    def equivalent(prediction: str, reference: str, budget_s: float) -> bool:
        signal.setitimer(signal.ITIMER_REAL, max(budget_s, 0.01))
        try:
            gold = gold_cache.get(reference)
            if gold is None:
                gold = parse(
                    "\\boxed{" + reference + "}", extraction_config=latex_only, parsing_timeout=None
                )
                if len(gold_cache) > 10_000:
                    gold_cache.clear()
                gold_cache[reference] = gold
            pred = parse(
                "\\boxed{" + prediction + "}", extraction_config=latex_only, parsing_timeout=None
            )
            return bool(pred) and bool(gold) and bool(verify(gold, pred, timeout_seconds=None))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    equivalent("\\frac{1}{2}", "0.5", 30.0)  # load the LaTeX grammar before saying ready
    protocol_out.write(json.dumps({"ready": True}) + "\n")
    protocol_out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        answer: dict = {"id": request["id"]}
        try:
            answer["equal"] = equivalent(
                request["prediction"], request["reference"], float(request["budget_s"])
            )
        except _Deadline:
            answer.update(equal=False, error="deadline")
        # model output broke the parser: whatever it raised, the answer is simply not equal
        except (Exception, RecursionError, MemoryError) as err:  # noqa: BLE001
            answer.update(equal=False, error=type(err).__name__)
        protocol_out.write(json.dumps(answer) + "\n")
        protocol_out.flush()


class _VerifierProcess:
    """The caller's side of the worker: start, ask with a hard deadline, kill on overrun."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._owner_pid: int | None = None
        self._ready = False
        self._next_id = 0
        self.kills = 0  # diagnostics: how many times a deadline forced a kill

    def _spawn(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", _WORKER_MODULE, _WORKER_FLAG],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        self._owner_pid = os.getpid()
        self._ready = False

    def _readline(self, timeout_s: float) -> bytes | None:
        """One line from the worker, or None if none arrives in time (or it died)."""
        assert self._proc is not None and self._proc.stdout is not None
        # poll, not select: select fails on descriptors above 1023, which a training process
        # holding many files (datasets, checkpoints, sockets) can reach
        poller = select.poll()
        poller.register(self._proc.stdout, select.POLLIN | select.POLLHUP | select.POLLERR)
        if not poller.poll(max(timeout_s, 0.0) * 1000.0):
            return None
        line = self._proc.stdout.readline()
        return line or None

    def _kill(self, *, respawn: bool) -> None:
        if self._proc is not None and self._owner_pid == os.getpid():
            try:
                self._proc.kill()
                self._proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            for stream in (self._proc.stdin, self._proc.stdout):
                try:
                    stream.close()  # type: ignore[union-attr]
                except OSError:
                    pass
        self._proc = None
        self._ready = False
        if respawn:
            self._spawn()  # starts importing now, while the caller goes on

    def _ensure_ready(self) -> None:
        # A forked child must not share its parent's worker (and its pipes): it starts its own.
        if self._proc is None or self._owner_pid != os.getpid() or self._proc.poll() is not None:
            if self._proc is not None and self._owner_pid == os.getpid():
                self._kill(respawn=False)
            self._spawn()
        if self._ready:
            return
        line = self._readline(WORKER_START_TIMEOUT_S)
        if line is None or not json.loads(line).get("ready"):
            self._kill(respawn=False)
            raise RuntimeError(
                "math_reward: the math-verify worker did not start within "
                f"{WORKER_START_TIMEOUT_S:.0f} s (is math-verify installed? try "
                f"`{sys.executable} -m {_WORKER_MODULE} {_WORKER_FLAG}` < /dev/null)"
            )
        self._ready = True

    def start(self) -> None:
        """Start the worker now (else on first use) so that no scored call pays its start-up."""
        with self._lock:
            self._ensure_ready()

    def equivalent(self, prediction: str, reference: str, timeout_s: float) -> bool:
        with self._lock:
            self._ensure_ready()
            deadline = time.monotonic() + timeout_s
            self._next_id += 1
            request = {
                "id": self._next_id,
                "prediction": prediction,
                "reference": reference,
                "budget_s": timeout_s * WORKER_SOFT_DEADLINE_FRACTION,
            }
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write((json.dumps(request) + "\n").encode("utf-8"))
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._kill(respawn=True)
                return False
            line = self._readline(deadline - time.monotonic())
            if line is None:
                self.kills += 1
                self._kill(respawn=True)
                return False
            try:
                answer = json.loads(line)
            except ValueError:
                self._kill(respawn=True)
                return False
            if answer.get("id") != self._next_id:
                self._kill(respawn=True)
                return False
            return bool(answer.get("equal"))

    def close(self) -> None:
        with self._lock:
            self._kill(respawn=False)


_VERIFIER = _VerifierProcess()
atexit.register(_VERIFIER.close)


def math_verifier_timeouts() -> int:
    """How many math-verify calls of this process ran out of time (the worker was killed and the
    rollout scored 0): the training loop reports the count per step (``reward/timeouts``)."""
    return _VERIFIER.kills


def start_math_verifier() -> None:
    """Start math-verify's worker process ahead of the first reward (optional)."""
    _VERIFIER.start()


def equivalent_within(prediction: str, reference: str, timeout_s: float) -> bool:
    """Whether math-verify finds ``prediction`` equivalent to ``reference`` within ``timeout_s``
    seconds. False also when the parser fails on them or the worker does not answer in time
    (then it is killed and replaced); ``RuntimeError`` when the worker cannot start."""
    return _VERIFIER.equivalent(prediction, reference, timeout_s)


if __name__ == "__main__" and _WORKER_FLAG in sys.argv[1:]:
    _worker_main()
