"""Exact-answer reward for the embedded arithmetic task.

A completion earns 1.0 iff, stripped of surrounding whitespace, it is exactly
the canonical decimal integer of the ground truth: ASCII digits, an optional
leading ``-``, no leading zeros (``"0"`` itself is fine), no ``+`` sign, no
inner spaces, no ``-0``. The rule is deliberately strict: the tiny policy emits
the answer and then EOS, and "almost an integer" outputs (``"05"``, ``"5 5"``)
should stay wrong so that RL does not learn to exploit a lenient parser.

Nothing is ever evaluated as code; the completion is only compared as a
string. This module does not score boxed math answers (``rewards.math``) or
fill rollouts (``rewards.scoring``).
"""

from __future__ import annotations

import re

# [0-9], not \d: \d also matches non-ASCII digits such as "٣"
_CANONICAL_INTEGER = re.compile(r"0|-?[1-9][0-9]*")


def is_canonical_integer(text: str) -> bool:
    """True iff ``text`` is an integer written the one canonical way (no sign but ``-``,
    no leading zeros, no whitespace)."""
    return _CANONICAL_INTEGER.fullmatch(text) is not None


def arith_reward(completion: str, ground_truth: str) -> float:
    """1.0 iff ``completion.strip()`` is exactly the integer ``ground_truth``, else 0.0.

    Raises ``ValueError`` if ``ground_truth`` is not a canonical integer: a
    malformed answer in the data must fail loudly, not score every rollout 0.
    """
    if not isinstance(ground_truth, str) or not is_canonical_integer(ground_truth.strip()):
        raise ValueError(
            f"arith_reward: ground truth {ground_truth!r} is not a canonical integer "
            "(optional '-', ASCII digits, no leading zeros)"
        )
    return 1.0 if completion.strip() == ground_truth.strip() else 0.0
