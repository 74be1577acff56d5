r"""The math reward: hand cases, and coverage on the shipped benchmark answers.

The coverage test scores every shipped MATH-500 / AIME 2024 / AMC 2023 / GSM8K answer
wrapped in ``\boxed{}`` against itself (must be 1) and against another problem's answer
(must be 0), through the real loader, the real math-verify worker and the real files;
it is skipped when ../shared is absent. bench/reward_coverage.py prints the same numbers.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pilotcommit.data.loaders import load_prompt_table
from pilotcommit.data.specs import read_dataset_specs
from pilotcommit.rewards import REWARDS
from pilotcommit.rewards.math import math_reward
from pilotcommit.rewards.math_answer import (
    extract_answer,
    extract_last_boxed,
    has_power_tower,
    normalise_ground_truth,
    normalise_latex_string,
    parse_plain_number,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_DIR = REPO_ROOT.parent / "shared" / "data" / "benchmarks"
SHIPPED_SPECS = REPO_ROOT / "conf" / "data" / "benchmarks-shipped.yaml"


def test_registered_under_math_verify() -> None:
    assert REWARDS["math_verify"] is math_reward


# --------------------------------------------------------------------------- hand cases

CORRECT = [
    # fractions, decimals, plain numbers
    ("so the answer is $\\boxed{\\frac{3}{4}}$.", "0.75"),
    ("\\boxed{0.75}", "\\frac{3}{4}"),
    ("\\boxed{\\dfrac{1}{2}}", "0.5"),
    ("\\boxed{3/4}", "\\frac{3}{4}"),
    ("\\boxed{1,000}", "1000"),
    ("\\boxed{25}", "025"),  # AIME writes leading zeros
    ("\\boxed{27}", "27.0"),  # AMC 2023 stores floats
    ("\\boxed{0.333333}", "\\frac{1}{3}"),  # math-verify's 6-digit rounding
    # negative numbers
    ("\\boxed{-5}", "-5"),
    ("\\boxed{\u22125}", "-5"),  # unicode minus
    ("\\boxed{-\\frac{1}{2}}", "-0.5"),
    # nested braces and LaTeX spacing
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{(3,\\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{3 \\sqrt{13}}", "3\\sqrt{13}"),
    ("\\boxed{\\sqrt{117}}", "3\\sqrt{13}"),
    ("\\boxed{x^2+2x+1}", "(x+1)^2"),
    ("\\boxed{e^{-x^{2}}}", "\\exp(-x^2)"),  # a symbolic tower is an answer like any other
    ("\\boxed{p-q}", "p - q"),
    # multiple choice
    ("\\boxed{\\text{(A)}}", "\\text{(A)}"),
    ("\\boxed{(A)}", "\\text{(A)}"),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}"),
    # intervals
    ("\\boxed{[1,2)}", "[1, 2)"),
    ("\\boxed{(-\\infty, 3]}", "(-\\infty,3]"),
    # several boxes: the last one counts
    ("First \\boxed{7}, but wait, it is \\boxed{8}.", "8"),
    # box variants
    ("\\boxed 5", "5"),
    ("\\fbox{5}", "5"),
    ("\\framebox{204}", "204"),
    # GSM8K references
    ("... \\boxed{72}", "#### 72"),
    ("... \\boxed{72}", "She sold 48 + 24 = <<48+24=72>>72 clips.\n#### 72"),
    ("... \\boxed{70,000}", "#### 70000"),
    # references as solutions or with math delimiters
    ("\\boxed{\\frac{1}{2}}", "$\\frac{1}{2}$"),
    ("\\boxed{9}", "so we get \\boxed{9}."),
    # conservative fallbacks, only when there is no box at all
    ("So the final answer is 72.", "72"),
    ("Answer: $\\frac{1}{2}$", "0.5"),
    ("reasoning...\n#### 72", "72"),
]

WRONG = [
    ("\\boxed{0.33}", "\\frac{1}{3}"),
    ("\\boxed{5}", "-5"),
    ("\\boxed{[1,2]}", "[1,2)"),
    ("\\boxed{(1,2]}", "[1,2)"),
    ("\\boxed{\\text{(B)}}", "\\text{(A)}"),
    ("\\boxed{q-p}", "p - q"),
    ("\\boxed{3\\sqrt{12}}", "3\\sqrt{13}"),
    ("First \\boxed{8}, but wait, it is \\boxed{7}.", "8"),  # an earlier box does not count
    ("\\boxed{8} ... then \\boxed{7", "8"),  # a truncated last box: no answer
    ("So we get 72 apples.", "72"),  # no "last number" fallback
    ("", "72"),
    ("\\boxed{}", "72"),
    ("The answer is \\boxed{71}. Answer: 72", "72"),  # a box exists: no fallback
]


@pytest.mark.parametrize("completion, truth", CORRECT)
def test_equivalent_answers_score_one(completion: str, truth: str) -> None:
    assert math_reward(completion, truth) == 1.0


@pytest.mark.parametrize("completion, truth", WRONG)
def test_different_or_missing_answers_score_zero(completion: str, truth: str) -> None:
    assert math_reward(completion, truth) == 0.0


def test_extract_last_boxed_matches_braces() -> None:
    assert extract_last_boxed("\\boxed{\\frac{a}{b^{2}}} and \\boxed{{x}+1}") == "{x}+1"
    assert extract_last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"  # escaped braces
    assert extract_last_boxed("\\boxed{1} \\boxedtext{2}") == "1"  # another macro
    assert extract_last_boxed("no box") is None
    assert extract_last_boxed("\\boxed{" + "{" * 40 + "}" * 40 + "}") is None  # too deep


def test_extract_answer_fallback_only_near_the_end() -> None:
    assert extract_answer("The answer is 5.\n" + "x" * 5000) is None
    assert extract_answer("x" * 5000 + "\nThe answer is 5.") == "5"


def test_normalise_ground_truth_forms() -> None:
    assert normalise_ground_truth("  #### 1,234 ") == "1,234"
    assert normalise_ground_truth("$\\frac{1}{2}$") == "\\frac{1}{2}"
    assert normalise_ground_truth("Thus \\boxed{\\frac{\\pi}{2}}.") == "\\frac{\\pi}{2}"


@pytest.mark.parametrize(
    "text, value",
    [
        ("-12", -12),
        ("1,000", 1000),
        ("0.75", 0.75),
        ("3/4", 0.75),
        ("\\frac{3}{4}", 0.75),
        ("-\\dfrac{1}{2}", -0.5),
        ("$7$", 7),
        ("\\$18", 18),
        ("5.", 5),
    ],
)
def test_plain_numbers_parse_exactly(text: str, value: float) -> None:
    assert parse_plain_number(text) == value


@pytest.mark.parametrize("text", ["x+1", "1,2", "1/0", "50\\%", "\\sqrt{2}", "9" * 100, "1e5"])
def test_non_plain_numbers_are_left_to_math_verify(text: str) -> None:
    assert parse_plain_number(text) is None


def test_latex_string_normalisation() -> None:
    assert normalise_latex_string("\\left( 3, \\dfrac{\\pi}{2} \\right)") == "(3,\\frac{\\pi}{2})"
    assert normalise_latex_string("\\text{(A)}") == "(A)"


@pytest.mark.parametrize(
    "text, tower",
    [
        ("9^9^9^9", True),
        ("9^{9^{9}}", True),
        ("10**10**10", True),
        ("2^{10}^{2}", True),
        ("2^{2^{10}}", True),
        ("2^{x}^{2}", False),  # symbolic towers cannot blow up
        ("e^{-x^{2}}", False),
        ("2^{2^{n}}", False),
        ("x^2y^2", False),
        ("2^{10}", False),
        ("x^2+y^2", False),
        ("10**10", False),
        ("90^\\circ", False),
    ],
)
def test_power_tower_detection(text: str, tower: bool) -> None:
    assert has_power_tower(text) is tower


def test_reference_errors_are_loud() -> None:
    with pytest.raises(ValueError, match="holds no answer"):
        math_reward("\\boxed{1}", "   ")
    with pytest.raises(TypeError, match="must be a string"):
        math_reward("\\boxed{1}", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s"):
        math_reward("\\boxed{1}", "1", timeout_s=0)


# --------------------------------------------------------------------------- shipped coverage


def _coverage(name: str) -> tuple[float, float, int, float]:
    spec = next(s for s in read_dataset_specs(SHIPPED_SPECS) if s.name == name)
    answers = list(load_prompt_table(spec, base_dir=REPO_ROOT).frame["answer"])
    keys = [normalise_latex_string(normalise_ground_truth(a)) for a in answers]
    started = time.monotonic()
    correct = wrong_rejected = 0
    for i, answer in enumerate(answers):
        correct += math_reward(f"The answer is $\\boxed{{{answer}}}$.", answer) == 1.0
        # the next problem whose answer is written differently (equal answers are not wrong)
        j = next(
            k % len(answers)
            for k in range(i + 1, i + len(answers))
            if keys[k % len(answers)] != keys[i]
        )
        wrong_rejected += math_reward(f"\\boxed{{{answers[j]}}}", answer) == 0.0
    seconds = time.monotonic() - started
    n = len(answers)
    return correct / n, wrong_rejected / n, n, seconds


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED_DIR.is_dir(), reason=f"shipped benchmarks absent: {SHIPPED_DIR}")
@pytest.mark.parametrize("name, size", [("math500", 500), ("aime24", 30), ("amc23", 40)])
def test_shipped_gold_answers_score_one_and_other_answers_zero(name: str, size: int) -> None:
    gold_rate, wrong_rate, n, seconds = _coverage(name)
    assert n == size
    assert gold_rate >= 0.99, f"{name}: gold scored 1 on {gold_rate:.1%}"
    assert wrong_rate >= 0.99, f"{name}: another answer scored 0 on {wrong_rate:.1%}"
    assert seconds < 60, f"{name}: {seconds:.1f} s for {2 * n} rewards"
