r"""Verifiable reward for math answers: the last ``\boxed{}`` of a completion against a reference.

``math_reward(completion, ground_truth)`` is 1.0 when the completion's final
answer is mathematically equivalent to the reference answer, else 0.0. The
completion is model output and therefore untrusted: the function never raises
on it, never evaluates it as code, and returns within about ``timeout_s`` even
for inputs built to make a parser hang.

The steps, cheapest first:

1. **Extract the model's answer.** The content of the *last* brace-matched
   ``\boxed{...}`` (also ``\boxed 5`` without braces, ``\fbox{...}``,
   ``\framebox{...}``), as in the paper ("answer = the last ``\boxed{...}``").
   If the last box is malformed (unbalanced braces, e.g. a truncated
   completion, or nesting deeper than ``MAX_BRACE_DEPTH``) the answer is
   missing: no earlier box is used, so a cut-off completion cannot score on a
   draft answer. Only when the completion contains *no* box macro at all,
   two conservative fallbacks are tried in its last ``FALLBACK_TAIL_CHARS``
   characters: the text after the last ``####`` (GSM8K's marker), else the rest
   of the line after the last "the (final) answer is" / "Answer:". There is
   deliberately no "last number in the text" fallback: it would reward
   completions that merely end with the right number somewhere in a sentence,
   and RL would learn to exploit that.
2. **Normalise the reference** (trusted data): the text after the last
   ``####`` (a GSM8K solution), the last box if it has one (a MATH solution),
   then surrounding ``$...$`` / ``\(...\)`` removed (OlympiadBench writes
   ``$\frac{1}{2}$``).
3. **Fast paths, without math-verify.** Plain numbers (integers, decimals,
   ``3/4``, ``\frac{3}{4}``, comma thousands ``1,000``, unicode minus) are
   compared exactly as fractions: equal -> 1.0; unequal exact values (no
   decimal point on either side) -> 0.0; a decimal against a different value
   goes on to math-verify, whose rounding tolerance decides (``0.333333`` vs
   ``1/3``). Then the two strings are compared after removing LaTeX spacing,
   ``\left``/``\right`` and ``\text{}`` wrappers: identical -> 1.0.
4. **Guards on the model's answer** before any parser sees it: at most
   ``MAX_ANSWER_CHARS`` characters, no control characters (NUL ...), no numeric power
   tower (``9^9^9^9``, ``9^{9^{9}}``, ``10**10**10``) unless the reference has one.
   A guarded answer scores 0.0 at once.
5. **math-verify** (``parse`` + ``verify``) with LaTeX extraction only:
   its plain-expression extraction calls ``sympy.parse_expr``, which
   ``eval``s, so it is never enabled. Both sides are wrapped in ``\boxed{}``,
   the form math-verify expects.

The time limit (a deliberate choice). math-verify enforces its own timeouts
with ``signal.alarm``: whole seconds, only in the main thread of the main
interpreter (it raises elsewhere, e.g. under a thread pool), and powerless
against C-level work such as a huge integer power, which never returns to the
interpreter to receive the signal. So step 5 runs in one long-lived worker
process per calling process (``python -m pilotcommit.rewards.math --worker``,
JSON lines over pipes; started on first use, warmed up once): inside it a
sub-second ``setitimer`` deadline interrupts Python-level work, and the worker
runs under a ``RLIMIT_AS`` memory cap; the caller waits at most the remaining
time for the answer and otherwise kills the worker with SIGKILL (a fresh one
is started at once, in the background). Steps 1-4 are linear scans with
length caps, so the whole call is bounded by ``timeout_s`` plus, on the first
call of a process or the first after a kill, the worker's start-up (about a
second; a missing math-verify installation raises ``RuntimeError`` there,
because an environment fault must not look like a wrong answer).

Departures from the paper's reward: the two extraction fallbacks in step 1
(the reference scores only boxed answers); the 0/1 scale (the reference uses
+1/-1; see ALGORITHMS.md).

This module does not fill rollouts (``rewards.scoring``), score the embedded
integer task (``rewards.arith``) or read datasets (``data.loaders``, which
reuses :func:`extract_last_boxed` for solution columns).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

# Longest MATH-500 answer is 53 characters, AIME / AMC / GSM8K are numbers; 1000 leaves room
# for long matrices or tuples while keeping every later step cheap.
MAX_ANSWER_CHARS = 1000
# Real answers nest a handful of braces (\frac{\sqrt{2}}{2}); thousands of levels are an attack.
MAX_BRACE_DEPTH = 32
# Fallback phrases are searched only near the end: a final answer is stated last.
FALLBACK_TAIL_CHARS = 2000
FALLBACK_MAX_CHARS = 200
# Numbers longer than this skip the exact fast path (and Python's int parsing limits).
MAX_NUMBER_CHARS = 64
# Worker: time to import sympy + math-verify and warm its grammar; memory cap (virtual).
WORKER_START_TIMEOUT_S = 60.0
WORKER_MEMORY_BYTES = 2 * 1024**3
# Part of the caller's remaining time the worker's own deadline gets, so that it usually
# answers (and survives) before the caller gives up and kills it.
WORKER_SOFT_DEADLINE_FRACTION = 0.8

_BOX_MACROS = ("\\boxed", "\\fbox", "\\framebox")
_WORKER_MODULE = "pilotcommit.rewards.math"
_WORKER_FLAG = "--worker"


# --------------------------------------------------------------------------- extraction


def _find_last_box_macro(text: str) -> tuple[int, int] | None:
    """(start of the macro, index just after its name) of the last box macro, or None."""
    best: tuple[int, int] | None = None
    for macro in _BOX_MACROS:
        end = len(text)
        while True:
            i = text.rfind(macro, 0, end)
            if i < 0:
                break
            after = i + len(macro)
            # "\boxedfoo" is another macro; "\boxed{" / "\boxed 5" / "\boxed" at the end are ours
            if after < len(text) and text[after].isalpha():
                end = i
                continue
            if best is None or i > best[0]:
                best = (i, after)
            break
    return best


def _match_braces(text: str, open_at: int, max_depth: int, max_chars: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_at``; None if unbalanced or out of bounds.

    ``\\{`` and ``\\}`` are escaped literal braces and do not count.
    """
    depth = 0
    k = open_at
    limit = min(len(text), open_at + max_chars + 2)
    while k < limit:
        c = text[k]
        if c == "\\":
            k += 2
            continue
        if c == "{":
            depth += 1
            if depth > max_depth:
                return None
        elif c == "}":
            depth -= 1
            if depth == 0:
                return k
        k += 1
    return None


def extract_last_boxed(
    text: str, *, max_depth: int = MAX_BRACE_DEPTH, max_chars: int = MAX_ANSWER_CHARS
) -> str | None:
    r"""Content of the last ``\boxed{...}`` / ``\boxed x`` / ``\fbox{...}`` / ``\framebox{...}``.

    None when there is no box macro, or when the last one is malformed: unbalanced
    braces, nesting deeper than ``max_depth``, content longer than ``max_chars``, or empty.
    """
    found = _find_last_box_macro(text)
    if found is None:
        return None
    j = found[1]
    while j < len(text) and text[j] in " \t":
        j += 1
    if j >= len(text):
        return None
    if text[j] == "{":
        close = _match_braces(text, j, max_depth, max_chars)
        if close is None:
            return None
        content = text[j + 1 : close].strip()
    else:
        # "\boxed 5": TeX takes one token; models write a short answer up to the next space or $
        m = re.match(rf"[^\s$]{{1,{max_chars}}}", text[j:])
        if m is None:
            return None
        content = m.group(0).rstrip(".,;")
    return content or None


def has_box_macro(text: str) -> bool:
    """True if ``text`` contains any box macro (well-formed or not)."""
    return _find_last_box_macro(text) is not None


_ANSWER_PHRASE = re.compile(r"(?i)\b(?:the\s+)?(?:final\s+)?answer\s*(?:is\s*:?|:)[ \t]*")


def _clean_fallback(candidate: str) -> str | None:
    candidate = candidate.strip().strip("*").strip()
    candidate = _strip_math_delimiters(candidate).rstrip(".").strip()
    candidate = _strip_math_delimiters(candidate)
    if not candidate or len(candidate) > FALLBACK_MAX_CHARS:
        return None
    return candidate


def extract_answer(completion: str) -> str | None:
    """The model's final answer: the last box, else the conservative fallbacks (module doc)."""
    if has_box_macro(completion):
        return extract_last_boxed(completion)
    tail = completion[-FALLBACK_TAIL_CHARS:]
    marker = tail.rfind("####")
    if marker >= 0:
        return _clean_fallback(tail[marker + 4 :].split("\n", 1)[0])
    last = None
    for last in _ANSWER_PHRASE.finditer(tail):
        pass
    if last is not None:
        return _clean_fallback(tail[last.end() :].split("\n", 1)[0])
    return None


def _strip_math_delimiters(text: str) -> str:
    s = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left) : len(s) - len(right)].strip()
    return s


def normalise_ground_truth(ground_truth: str) -> str:
    r"""The reference answer as a bare expression (see step 2 of the module docstring)."""
    s = ground_truth.strip()
    if "####" in s:
        s = s.rsplit("####", 1)[1].strip()
    if has_box_macro(s):
        boxed = extract_last_boxed(s, max_depth=10_000, max_chars=len(s))
        if boxed is not None:
            s = boxed
    return _strip_math_delimiters(s)


# --------------------------------------------------------------------------- fast paths

_DECIMAL = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
_SLASH_FRACTION = re.compile(r"([+-]?)(\d+)/(\d+)")
_TEX_FRACTION = re.compile(r"([+-]?)\\[dt]?frac\{([+-]?\d+)\}\{(\d+)\}")


def parse_plain_number(text: str) -> Fraction | None:
    r"""Exact value of a plain number (``-12``, ``0.75``, ``1,000``, ``3/4``, ``\frac{3}{4}``).

    None for anything else (expressions, units, percentages): those go to math-verify.
    """
    s = text.strip().replace("\u2212", "-")  # unicode minus
    s = _strip_math_delimiters(s)
    s = s.removeprefix("\\$")  # a dollar amount: "\$18"
    s = s.replace("{,}", ",").replace(" ", "").removesuffix(".")
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    if _DECIMAL.fullmatch(s):
        return Fraction(s.replace(",", ""))
    for pattern in (_SLASH_FRACTION, _TEX_FRACTION):
        m = pattern.fullmatch(s)
        if m:
            sign, numerator, denominator = m.groups()
            if int(denominator) == 0:
                return None
            value = Fraction(int(numerator), int(denominator))
            return -value if sign == "-" else value
    return None


_LATEX_NOISE = re.compile(r"\\left|\\right|\\displaystyle|\\[,;:! ]|\s+")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}")


def normalise_latex_string(text: str) -> str:
    """A string two identical answers share despite LaTeX spacing and wrapper choices."""
    s = _LATEX_NOISE.sub("", text)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _TEXT_WRAPPER.sub(r"\1", s)
    return s


def _fast_verdict(prediction: str, reference: str) -> float | None:
    """1.0 / 0.0 when the answer is decided without a parser; None to ask math-verify."""
    predicted_value = parse_plain_number(prediction)
    reference_value = parse_plain_number(reference)
    if predicted_value is not None and reference_value is not None:
        if predicted_value == reference_value:
            return 1.0
        if "." not in prediction and "." not in reference:
            return 0.0  # two exact values that differ; no rounding can reconcile them
        return None
    if normalise_latex_string(prediction) == normalise_latex_string(reference):
        return 1.0
    return None


# --------------------------------------------------------------------------- guards

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _exponent_end(text: str, caret: int, *, python_style: bool) -> int | None:
    """Index after the exponent that follows ``^`` (or ``**``) at ``caret``; None if unreadable."""
    j = caret
    while j < len(text) and text[j] == " ":
        j += 1
    if j >= len(text):
        return None
    if text[j] == "{":
        close = _match_braces(text, j, MAX_BRACE_DEPTH, len(text))
        return None if close is None else close + 1
    if python_style:  # 10**10**10: the exponent is a whole number or name
        m = re.match(r"[+-]?[\w.]+", text[j:])
        return j + (len(m.group(0)) if m else 1)
    if text[j] == "\\":  # one control sequence, e.g. ^\circ
        m = re.match(r"\\[a-zA-Z]+|\\.", text[j:])
        return j + len(m.group(0))
    return j + 1  # LaTeX: one character


def _has_variable(text: str) -> bool:
    """True if ``text`` names a variable (a letter outside LaTeX control sequences)."""
    return re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", text)) is not None


def has_power_tower(text: str) -> bool:
    """True for a numeric power of a power: ``9^9^9``, ``9^{9^{9}}``, ``10**10**10``.

    Only towers whose upper exponents are numbers count: those are what a parser may try
    to evaluate (a number with billions of digits). ``e^{-x^{2}}`` or ``2^{2^{n}}`` stay
    symbolic and are fine.
    """
    for m in re.finditer(r"\*\*|\^", text):
        python_style = m.group(0) == "**"
        start = m.end()
        end = _exponent_end(text, start, python_style=python_style)
        if end is None:
            continue
        exponent = text[start:end]
        if ("^" in exponent or "**" in exponent) and not _has_variable(exponent):
            return True
        rest = text[end:].lstrip(" ")
        if rest.startswith(("^", "**")):
            upper = rest.lstrip("^*")
            upper_end = _exponent_end(upper, 0, python_style=rest.startswith("**"))
            upper_exponent = upper[:upper_end] if upper_end is not None else upper
            if not _has_variable(exponent + upper_exponent):
                return True
    return False


def _guard_failure(prediction: str, reference: str) -> str | None:
    """Why the model's answer must not reach a parser, or None if it may."""
    if len(prediction) > MAX_ANSWER_CHARS:
        return "too long"
    if _CONTROL_CHARS.search(prediction):
        return "control characters"
    if has_power_tower(prediction) and not has_power_tower(reference):
        return "power tower"
    return None


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


# --------------------------------------------------------------------------- the reward


def math_reward(completion: str, ground_truth: str, *, timeout_s: float = 2.0) -> float:
    r"""1.0 iff the completion's final answer equals ``ground_truth`` mathematically, else 0.0.

    ``ground_truth`` is trusted data: a plain answer (``"72"``, ``"\frac{3}{4}"``), a
    boxed solution, or a GSM8K solution ending in ``#### 72``; an empty one raises
    ``ValueError``. ``completion`` is untrusted model output: any string (or even a
    non-string) gives 0.0 or 1.0, never an exception, within about ``timeout_s``
    seconds (see the module docstring for the exact bound).
    """
    if not isinstance(ground_truth, str):
        raise TypeError(
            f"math_reward: ground truth must be a string, got {type(ground_truth).__name__}"
        )
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0 and math.isfinite(timeout_s)):
        raise ValueError(f"math_reward: timeout_s must be a positive number, got {timeout_s!r}")
    reference = normalise_ground_truth(ground_truth)
    if not reference:
        raise ValueError(f"math_reward: ground truth {ground_truth!r} holds no answer")
    if not isinstance(completion, str):
        return 0.0
    started = time.monotonic()
    try:
        prediction = extract_answer(completion)
        if prediction is None:
            return 0.0
        verdict = _fast_verdict(prediction, reference)
        if verdict is not None:
            return verdict
        if _guard_failure(prediction, reference) is not None:
            return 0.0
    # a bug in the steps above must not crash a training run on odd output
    except (Exception, RecursionError):  # noqa: BLE001
        return 0.0
    remaining = timeout_s - (time.monotonic() - started)
    if remaining <= 0:
        return 0.0
    return 1.0 if _VERIFIER.equivalent(prediction, reference, remaining) else 0.0


if __name__ == "__main__" and _WORKER_FLAG in sys.argv[1:]:
    _worker_main()
