r"""Verifiable reward for math answers: the last ``\boxed{}`` of a completion against a reference.

``math_reward(completion, ground_truth)`` is 1.0 when the completion's final
answer is mathematically equivalent to the reference answer, else 0.0. The
completion is model output and therefore untrusted: the function never raises
on it, never evaluates it as code, and returns within about ``timeout_s`` even
for inputs built to make a parser hang.

The steps, cheapest first (each described in full where it lives):

1. **Extract the model's answer**: the content of the *last* box macro; a malformed last
   box means no answer; two conservative fallbacks only when there is no box at all
   (``rewards.math_answer``).
2. **Normalise the reference** (trusted data): GSM8K's ``####``, a MATH solution's last box,
   math delimiters (``rewards.math_answer``).
3. **Fast paths, without math-verify**: exact comparison of plain numbers, then of the
   strings without LaTeX spacing and wrappers (``rewards.math_answer``).
4. **Guards on the model's answer** before any parser sees it: length, control characters,
   numeric power towers; a guarded answer scores 0.0 at once (``rewards.math_answer``).
5. **math-verify** (``parse`` + ``verify``, LaTeX extraction only, never ``eval``) in a
   long-lived worker process that is killed when it overruns (``rewards.math_verifier``).

The bound. Steps 1-4 are linear scans with length caps, and step 5 gets only the time
that is left of ``timeout_s``, so the whole call is bounded by ``timeout_s`` plus, on the
first call of a process or the first after a kill, the worker's start-up (about a
second; a missing math-verify installation raises ``RuntimeError`` there, because an
environment fault must not look like a wrong answer). An exception in steps 1, 3 or 4
(which see the model's answer) scores 0.0 instead of crashing a training run; a reference
with no answer raises ``ValueError``.

Departures from the paper's reward: the two extraction fallbacks in step 1
(the reference scores only boxed answers); the 0/1 scale (the reference uses
+1/-1; see ALGORITHMS.md).

This module does not parse answers itself (``rewards.math_answer``), run processes
(``rewards.math_verifier``), fill rollouts (``rewards.scoring``), score the embedded
integer task (``rewards.arith``) or read datasets (``data.loaders``).
"""

from __future__ import annotations

import math
import time

from pilotcommit.rewards.math_answer import (
    _fast_verdict,
    _guard_failure,
    extract_answer,
    normalise_ground_truth,
)
from pilotcommit.rewards.math_verifier import equivalent_within


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
    return 1.0 if equivalent_within(prediction, reference, remaining) else 0.0
