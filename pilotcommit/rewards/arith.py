r"""Exact-answer rewards for the arithmetic task: the tiny policy's and a chat model's.

``arith_exact`` (:func:`arith_reward`), for the embedded tiny policy: a completion earns 1.0
iff, stripped of surrounding whitespace, it is exactly the canonical decimal integer of the
ground truth: ASCII digits, an optional leading ``-``, no leading zeros (``"0"`` itself is
fine), no ``+`` sign, no inner spaces, no ``-0``. The rule is deliberately strict: the tiny
policy emits the answer and then EOS, and "almost an integer" outputs (``"05"``, ``"5 5"``)
should stay wrong so that RL does not learn to exploit a lenient parser.

``arith_chat`` (:func:`arith_chat_reward`), for a pretrained chat model asked "What is 3+4?
Reply with only the number." (``templates.format_prompt(..., template="arith_chat")``). Chat
models do not answer with the bare number: SmolLM2-135M-Instruct replies ``"3 + 4 = 7"``, others
``"The answer is 7."`` or ``"**7**"``. The answer is therefore:

1. the content of the last ``\boxed{...}`` when the completion has a box macro (the same
   extraction as ``math_verify``: a malformed last box is no answer, an earlier box is never
   used); the content must be one integer, else 0.0. Models rarely box unless asked (the prompt
   does not ask), but one that does has stated its answer unambiguously;
2. otherwise the **last** integer written in the completion. Not the first: a chat model
   restates the question before answering (``"3 + 4 = 7"``, ``"47*6-18 is 264"``), so the first
   integer is an operand; the answer comes last, after any working.

An integer here is ASCII digits, optionally with comma thousands groups (``"1,234"``), with a
minus sign (``-`` or the Unicode minus ``−``) directly before the digits and not after a digit,
letter or closing bracket (``"5-12=-7"``: operator, then the sign of ``-7``). A last number with
a decimal part (``"7.5"``, ``".5"``) is not an integer: 0.0, never its integer digits. The value
is compared exactly with the ground truth, as canonical strings (leading zeros and ``-0``
normalised; no ``int()``, so a huge digit string costs linear time and cannot hit Python's
integer-parsing limit). Known leniency, accepted for chat models: a completion that only
restates the question scores when its last operand happens to equal the answer (``"0+7"``),
and one that lists several numbers is judged by its last.

Nothing is ever evaluated as code; the completion is only matched and compared as text. This
module does not score general math answers (``rewards.math``) or fill rollouts
(``rewards.scoring``).
"""

from __future__ import annotations

import re

from pilotcommit.rewards.math_answer import extract_last_boxed, has_box_macro

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


# a number as written in chat text: an optional sign directly before the digits, an integer part
# with or without comma thousands groups, an optional decimal part; [0-9], not \d (ASCII only)
_MINUS = "-\u2212"
_NUMBER = re.compile(rf"([{_MINUS}]?)([0-9]{{1,3}}(?:,[0-9]{{3}})+(?![0-9])|[0-9]+)(\.[0-9]+)?")
# characters after which a "-" is a binary operator, not a sign ("5-3", "x-3", "(2)-3")
_OPERAND_END = re.compile(r"[0-9A-Za-z_)\]}]")


def _canonical(negative: bool, digits: str) -> str:
    digits = digits.replace(",", "").lstrip("0") or "0"
    return f"-{digits}" if negative and digits != "0" else digits


def _integer_value(text: str) -> str | None:
    """Canonical form of ``text`` if it is exactly one integer (surrounding whitespace allowed)."""
    match = _NUMBER.fullmatch(text.strip())
    if match is None or match.group(3):
        return None
    return _canonical(bool(match.group(1)), match.group(2))


def chat_answer(completion: str) -> str | None:
    r"""The integer a chat model's completion answers with, canonical (``"-12"``, ``"1234"``), or
    None: the last ``\boxed{}`` if there is a box macro, else the last number (module docstring)."""
    if has_box_macro(completion):
        boxed = extract_last_boxed(completion)
        return None if boxed is None else _integer_value(boxed)
    last = None
    for last in _NUMBER.finditer(completion):
        pass
    if last is None:
        return None
    sign, digits, fraction = last.group(1), last.group(2), last.group(3)
    start = last.start(2) if not sign else last.start(1)
    before = completion[start - 1] if start > 0 else ""
    if fraction or before == ".":  # "7.5", ".5": a decimal, not an integer
        return None
    if sign and _OPERAND_END.fullmatch(before):  # "10-4": the operator, not a sign
        sign = ""
    return _canonical(bool(sign), digits)


def arith_chat_reward(completion: str, ground_truth: str) -> float:
    """1.0 iff the integer a chat model's completion answers with (:func:`chat_answer`) equals the
    integer ``ground_truth``, else 0.0. ``ValueError`` for a malformed ground truth, as
    :func:`arith_reward`."""
    if not isinstance(ground_truth, str) or not is_canonical_integer(ground_truth.strip()):
        raise ValueError(
            f"arith_chat_reward: ground truth {ground_truth!r} is not a canonical integer "
            "(optional '-', ASCII digits, no leading zeros)"
        )
    return 1.0 if chat_answer(completion) == ground_truth.strip() else 0.0
