r"""Answer handling of the math reward: pure string work on one completion and one reference.

:func:`pilotcommit.rewards.math.math_reward` runs steps 1-4 below with the functions of this
module, then, only if they leave the answer undecided, step 5 (math-verify, in
``rewards.math_verifier``). Everything here is a linear scan with length caps over plain
strings, so it is fast and bounded on any input without a time limit of its own:

1. **Extract the model's answer** (:func:`extract_answer`). The content of the *last*
   brace-matched ``\boxed{...}`` (also ``\boxed 5`` without braces, ``\fbox{...}``,
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
2. **Normalise the reference** (:func:`normalise_ground_truth`; trusted data): the text after
   the last ``####`` (a GSM8K solution), the last box if it has one (a MATH solution),
   then surrounding ``$...$`` / ``\(...\)`` removed (OlympiadBench writes
   ``$\frac{1}{2}$``).
3. **Fast paths, without math-verify** (``_fast_verdict``). Plain numbers (integers, decimals,
   ``3/4``, ``\frac{3}{4}``, comma thousands ``1,000``, unicode minus) are
   compared exactly as fractions: equal -> 1.0; unequal exact values (no
   decimal point on either side) -> 0.0; a decimal against a different value
   goes on to math-verify, whose rounding tolerance decides (``0.333333`` vs
   ``1/3``). Then the two strings are compared after removing LaTeX spacing,
   ``\left``/``\right`` and ``\text{}`` wrappers: identical -> 1.0.
4. **Guards on the model's answer** (``_guard_failure``) before any parser sees it: at most
   ``MAX_ANSWER_CHARS`` characters, no control characters (NUL ...), no numeric power
   tower (``9^9^9^9``, ``9^{9^{9}}``, ``10**10**10``) unless the reference has one.
   A guarded answer scores 0.0 at once.

Deliberately not here: anything that parses or evaluates mathematics (sympy, math-verify),
processes and time limits (``rewards.math_verifier``), the order of the steps and the
exception and timeout policy of the reward (``rewards.math``), filling rollouts
(``rewards.scoring``) and reading datasets (``data.loaders``, which reuses
:func:`extract_last_boxed` for solution columns). The extraction fallbacks of step 1 are a
departure from the paper's reward, which scores boxed answers only.
"""

from __future__ import annotations

import re
from fractions import Fraction

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

_BOX_MACROS = ("\\boxed", "\\fbox", "\\framebox")


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
