r"""Model output is untrusted: pathological completions score 0, in bounded time, harmlessly.

Every case runs the real reward with its real math-verify worker process. Each call is
timed and must finish within ``BOUND_S`` (the reward's limit is 2 s; the rest is room
for the worker's restart after a kill on a loaded 2-core machine).
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pilotcommit.rewards.math_verifier as verifier_module
from pilotcommit.rewards.math import math_reward
from pilotcommit.rewards.math_verifier import start_math_verifier

TIMEOUT_S = 2.0
BOUND_S = 5.0


@pytest.fixture(scope="module", autouse=True)
def _warm_worker():
    start_math_verifier()  # start-up is not what these tests time


def _timed_reward(
    completion, truth: str = "42", timeout_s: float = TIMEOUT_S
) -> tuple[float, float]:
    started = time.monotonic()
    reward = math_reward(completion, truth, timeout_s=timeout_s)
    return reward, time.monotonic() - started


def _unicode_garbage(seed: int, n: int) -> str:
    rng = random.Random(seed)
    # everything but NUL..: surrogates, combining marks, RTL overrides, private use, emoji
    points = [rng.randrange(1, 0x110000) for _ in range(n)]
    return "".join(chr(p) for p in points)


PATHOLOGICAL = {
    "nested braces in a box": "\\boxed{" + "{" * 5000 + "5" + "}" * 5000 + "}",
    "nested braces, no box": "{" * 100_000 + "5" + "}" * 100_000,
    "nested \\frac": "\\boxed{" + "\\frac{1}{" * 3000 + "5" + "}" * 3000 + "}",
    "power tower": "\\boxed{9^9^9^9}",
    "braced power tower": "\\boxed{9^{9^{9^{9}}}}",
    "python power tower": "\\boxed{10**10**10}",
    "huge factorial": "\\boxed{(10^{100})!}",
    "huge power": "\\boxed{9^{999999999}}",
    "a megabyte of text": "lorem ipsum " * 90_000,
    "a megabyte of boxes": "\\boxed{1}" * 120_000,
    "a megabyte-long box": "\\boxed{" + "1+" * 500_000 + "1}",
    "invalid LaTeX": "\\boxed{\\frac{\\sqrt[}{}}{\\begin{matrix} & \\end{array}}",
    "unbalanced open": "\\boxed{5",
    "unbalanced close": "\\boxed{5}}}}}}",
    "lone backslash": "\\boxed{\\",
    "NUL bytes": "\\boxed{5\x00}",
    "NUL around": "\x00" * 1000 + "\\boxed{\x00}" + "\x00" * 1000,
    "unicode garbage": _unicode_garbage(0, 20_000),
    "unicode garbage in a box": "\\boxed{" + _unicode_garbage(1, 300) + "}",
    "lone surrogates": "\\boxed{\ud800\udfff}",
    "empty": "",
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_completion_scores_zero_in_bounded_time(name: str) -> None:
    reward, seconds = _timed_reward(PATHOLOGICAL[name])
    assert reward == 0.0
    assert seconds < BOUND_S, f"{name}: {seconds:.2f} s"


@pytest.mark.parametrize("completion", [None, b"\\boxed{5}", 5, ["\\boxed{5}"]])
def test_non_string_completion_scores_zero(completion) -> None:
    assert math_reward(completion, "5") == 0.0  # type: ignore[arg-type]


def test_a_correct_answer_at_the_end_of_a_megabyte_still_counts() -> None:
    reward, seconds = _timed_reward("noise " * 170_000 + "\\boxed{42}")
    assert reward == 1.0 and seconds < BOUND_S


# Python code in the answer; each would create ``{marker}`` if anything evaluated it.
CODE = {
    "import": "__import__('os').system('touch {marker}')",
    "eval": "eval(\"__import__('os').system('touch {marker}')\")",
    "exec": "exec('open(\"{marker}\", \"w\")')",
}
CODE_IN_ANSWERS = [  # (where the code sits in the completion, which code)
    ("\\boxed{{{code}}}", "import"),
    ("\\boxed{{{code}}}", "eval"),
    ("\\boxed{{{code}}}", "exec"),
    ("The answer is {code}", "import"),
    ("\\boxed{{x = {code}}}", "import"),
    ("\\boxed{{\\text{{{code}}}}}", "import"),
]


@pytest.mark.parametrize("code", list(CODE))
def test_control_the_code_runs_under_a_parser_that_evaluates_it(code: str, tmp_path: Path) -> None:
    """Guards the test below: each payload really executes under sympy's ``parse_expr`` (what
    math-verify's ExprExtractionConfig calls, and which the package never uses:
    tests/unit/test_config_safety.py scans for it), so 'marker absent' there means something."""
    from sympy.parsing.sympy_parser import parse_expr

    marker = tmp_path / "executed"
    try:
        parse_expr(CODE[code].format(marker=marker))
    except Exception:  # noqa: BLE001 (sympy cannot make an expression of the result: it ran anyway)
        pass
    assert marker.exists()


@pytest.mark.parametrize(("template", "code"), CODE_IN_ANSWERS)
def test_code_in_the_answer_is_never_executed(template: str, code: str, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    completion = template.format(code=CODE[code].format(marker=marker))
    reward, seconds = _timed_reward(completion, truth="0")
    assert reward == 0.0 and seconds < BOUND_S
    assert not marker.exists(), "the completion was executed"


def test_a_worker_that_overruns_is_killed_and_replaced(monkeypatch) -> None:
    # Let the worker's own deadline lie far beyond the caller's, as it would for work that no
    # signal can interrupt (a C-level loop): the caller must then kill the process itself.
    monkeypatch.setattr(verifier_module, "WORKER_SOFT_DEADLINE_FRACTION", 50.0)
    kills_before = verifier_module._VERIFIER.kills
    reward, seconds = _timed_reward("\\boxed{(10^{100})!}", timeout_s=1.0)
    assert reward == 0.0
    # The worker's own deadline is 50 s here and the factorial never ends: returning within the
    # caller's 1 s plus a margin for the kill on a loaded machine shows the caller killed it.
    assert seconds < 1.0 + 9.0, f"{seconds:.2f} s"
    assert verifier_module._VERIFIER.kills == kills_before + 1
    monkeypatch.undo()
    # the replacement answers (its start-up is paid here, not by the killed call)
    reward, seconds = _timed_reward("\\boxed{x+1}", truth="1+x")
    assert reward == 1.0 and seconds < BOUND_S


def test_works_from_worker_threads() -> None:
    # math-verify's own signal-based timeout raises outside the main thread; ours does not.
    cases = [("\\boxed{x+1}", "1+x", 1.0), ("\\boxed{(1,2]}", "[1,2)", 0.0)] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        rewards = list(pool.map(lambda c: math_reward(c[0], c[1]), cases))
    assert rewards == [expected for _, _, expected in cases]


_latex_bits = st.sampled_from(
    [
        "\\boxed{",
        "\\boxed",
        "\\fbox{",
        "{",
        "}",
        "^",
        "**",
        "\\frac",
        "\\sqrt",
        "\\left(",
        "(",
        ")",
        "9",
        "5",
        "-",
        "/",
        ",",
        ".",
        "x",
        "$",
        "\\",
        "\x00",
        "\\text{",
        "####",
        "Answer:",
        " ",
        "\n",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_latex_bits, st.text(max_size=5)), max_size=60))
def test_any_text_scores_zero_or_one_without_raising(parts: list[str]) -> None:
    reward, seconds = _timed_reward("".join(parts))
    assert reward in (0.0, 1.0)
    assert seconds < BOUND_S
