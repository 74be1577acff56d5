"""Hand cases of the exact-integer reward, and of filling rollouts with it."""

from __future__ import annotations

import math

import pytest

from pilotcommit.config import OverlongPenalty
from pilotcommit.rewards import (
    REWARDS,
    arith_chat_reward,
    arith_reward,
    chat_answer,
    overlong_penalty,
    score_rollouts,
)
from pilotcommit.types import RequestResult, Rollout, RolloutKind, RolloutRequest


@pytest.mark.parametrize(
    "completion, truth",
    [
        ("5", "5"),
        (" 5\n", "5"),
        ("\t-12 ", "-12"),
        ("0", "0"),
        ("264", "264"),
        ("1000", "1000"),
    ],
)
def test_correct_answers_score_one(completion: str, truth: str) -> None:
    assert arith_reward(completion, truth) == 1.0


@pytest.mark.parametrize(
    "completion, truth",
    [
        ("+5", "5"),
        ("05", "5"),
        ("5 5", "55"),
        ("5 5", "5"),
        ("-0", "0"),
        ("00", "0"),
        ("6", "5"),
        ("-5", "5"),
        ("5", "-5"),
        ("", "5"),
        ("5.0", "5"),
        ("2+3", "5"),  # never evaluated
        ("٥", "5"),  # Arabic-Indic five: not an ASCII digit
        ("5=", "5"),
        ("55", "5"),
    ],
)
def test_wrong_or_non_canonical_answers_score_zero(completion: str, truth: str) -> None:
    assert arith_reward(completion, truth) == 0.0


def test_reward_is_a_float() -> None:
    assert type(arith_reward("7", "7")) is float
    assert type(arith_reward("8", "7")) is float


@pytest.mark.parametrize("truth", ["05", "+5", "x", "", "1 2", "-0"])
def test_malformed_ground_truth_fails_loudly(truth: str) -> None:
    with pytest.raises(ValueError, match="ground truth"):
        arith_reward("5", truth)


def test_registry_names_the_exact_reward() -> None:
    assert REWARDS["arith_exact"] is arith_reward


def _rollout(prompt_id: str, text: str) -> Rollout:
    return Rollout(
        prompt_id=prompt_id,
        kind=RolloutKind.UNIFORM,
        prompt_token_ids=[1],
        completion_token_ids=[2],
        sampler_logprobs=[-0.1],
        text=text,
        finish_reason="stop",
    )


def test_score_rollouts_fills_rewards_in_place() -> None:
    results = [
        RequestResult(
            RolloutRequest("a", 2, RolloutKind.PILOT), [_rollout("a", "4"), _rollout("a", "5")]
        ),
        RequestResult(RolloutRequest("b", 1, RolloutKind.COMMIT), [_rollout("b", " -3 ")]),
    ]
    assert score_rollouts(results, {"a": "4", "b": "-3"}, arith_reward) is None
    assert [r.reward for res in results for r in res.rollouts] == [1.0, 0.0, 1.0]
    assert [r.correct for res in results for r in res.rollouts] == [1.0, 0.0, 1.0]
    # plain rollouts work too
    loose = [_rollout("b", "3")]
    score_rollouts(loose, {"b": "-3"}, arith_reward)
    assert loose[0].reward == 0.0


def test_score_rollouts_missing_answer_names_prompt_and_changes_nothing() -> None:
    rollouts = [_rollout("a", "4"), _rollout("zz-missing", "5")]
    with pytest.raises(KeyError, match="zz-missing"):
        score_rollouts(rollouts, {"a": "4"}, arith_reward)
    assert all(math.isnan(r.reward) for r in rollouts)


def test_score_rollouts_rejects_other_items() -> None:
    with pytest.raises(TypeError, match="RequestResult or Rollout"):
        score_rollouts(["4"], {"a": "4"}, arith_reward)  # type: ignore[list-item]


def test_overlong_penalty_hand_cases() -> None:
    """min(-(L - start) / length, 0): the paper's 1.5B setting start = length = 4096."""
    assert overlong_penalty(100, start=4096, length=4096) == 0.0
    assert overlong_penalty(4096, start=4096, length=4096) == 0.0
    assert overlong_penalty(6144, start=4096, length=4096) == -0.5
    assert overlong_penalty(8192, start=4096, length=4096) == -1.0
    assert overlong_penalty(5, start=2, length=4) == -0.75
    with pytest.raises(ValueError, match="must be >= 1"):
        overlong_penalty(5, start=0, length=4)


def test_score_rollouts_keeps_accuracy_apart_from_the_penalised_reward() -> None:
    """``correct`` is the 0/1 verdict, ``reward`` adds the overlong penalty (3 tokens, start 1,
    length 4: -0.5)."""
    rollouts = [_rollout("a", "4"), _rollout("a", "5")]
    for r in rollouts:
        r.completion_token_ids = [2, 2, 2]
        r.sampler_logprobs = [-0.1] * 3
    score_rollouts(rollouts, {"a": "4"}, arith_reward, overlong=OverlongPenalty(start=1, length=4))
    assert [r.correct for r in rollouts] == [1.0, 0.0]
    assert [r.reward for r in rollouts] == [0.5, -0.5]
    score_rollouts(rollouts, {"a": "4"}, arith_reward)  # no penalty: reward is the accuracy
    assert [r.reward for r in rollouts] == [1.0, 0.0]


def test_score_rollouts_rejects_a_reward_function_that_is_not_an_accuracy() -> None:
    with pytest.raises(ValueError, match="must return 0.0 or 1.0"):
        score_rollouts([_rollout("a", "4")], {"a": "4"}, lambda text, answer: 0.5)


# --------------------------------------------------------------------------- arith_chat


@pytest.mark.parametrize(
    "completion, truth",
    [
        ("7", "7"),
        ("3 + 4 = 7", "7"),  # SmolLM2-135M-Instruct's own reply: the question restated, then the answer
        ("3 + 4 = 7<|im_end|>", "7"),
        ("The answer is 7.", "7"),
        ("**7**", "7"),
        ("47*6-18 = 264", "264"),
        ("To compute 12 - 30 we subtract: 12 - 30 = -18", "-18"),
        ("-12", "-12"),
        ("5-12=-7", "-7"),  # "-" after a digit is the operator, after "=" the sign
        ("(-7)", "-7"),
        ("3 - 10 = \u22127", "-7"),  # Unicode minus
        ("1,234", "1234"),
        ("The sum is 1,234,567.", "1234567"),
        ("007", "7"),  # an integer's value, not its spelling
        ("-0", "0"),
        ("\\boxed{7}", "7"),
        ("\\boxed{-12}", "-12"),
        ("\\boxed{ 1,234 }", "1234"),
        ("I think 5, so \\boxed{7}", "7"),
        ("\\boxed{7} (check: 3 + 4 = 7, not 8)", "7"),  # a box wins over later numbers
        ("9" * 5000, "9" * 5000),  # beyond int()'s 4300-digit limit: compared as text
    ],
)
def test_chat_answers_score_one(completion: str, truth: str) -> None:
    assert arith_chat_reward(completion, truth) == 1.0


@pytest.mark.parametrize(
    "completion, truth",
    [
        ("", "7"),
        ("I don't know.", "7"),  # no digits at all
        ("seven", "7"),
        ("7 is 3 + 4", "7"),  # the last integer, not the first
        ("3 + 4", "7"),  # never evaluated
        ("The answer is 7.5", "7"),  # a decimal is not an integer: neither 7 nor 5
        ("The answer is 7.5", "5"),
        ("It is .5", "5"),
        ("10-4", "-4"),  # the operator is not a sign
        ("-7", "7"),
        ("7", "-7"),
        ("\\boxed{3+4}", "7"),  # a boxed expression is not an integer
        ("\\boxed{3+4}", "4"),
        ("\\boxed{7.}", "7"),
        ("7 \\boxed{x}", "7"),  # a box that is not an integer is the answer: no fallback to the text
        ("\\boxed{7} then \\boxed{8", "7"),  # a malformed last box: no earlier box used
        ("\\boxed{7} 8", "8"),
        ("\u0667", "7"),  # Arabic-Indic seven: not an ASCII digit
        ("1,2345", "12345"),  # not a thousands group: the last integer is 2345
        ("9" * 100_000, "9" * 99_999),
        ("1" + "0" * 10_000 + " + 1", "1" + "0" * 9_999 + "1"),
    ],
)
def test_wrong_or_missing_chat_answers_score_zero(completion: str, truth: str) -> None:
    assert arith_chat_reward(completion, truth) == 0.0


def test_chat_answer_parses_the_last_integer() -> None:
    assert chat_answer("3 + 4 = 7") == "7"
    assert chat_answer("-12") == "-12" and chat_answer("1,234") == "1234"
    assert chat_answer("no digits here") is None and chat_answer("") is None
    assert chat_answer("2 apples and 3 pears") == "3"


def test_chat_answer_is_linear_on_adversarial_text() -> None:
    """Megabytes of digits, commas and minus signs: parsed at once, never evaluated."""
    import time

    cases = ["9" * 2_000_000, "1," * 1_000_000, "-" * 1_000_000 + "5", "1,000" * 200_000 + "1",
             "\\boxed{" * 100_000 + "7", "1." * 1_000_000]
    start = time.perf_counter()
    answers = [chat_answer(text) for text in cases]
    assert time.perf_counter() - start < 5.0
    assert answers[0] == "9" * 2_000_000 and answers[2] == "-5" and answers[4] is None


@pytest.mark.parametrize("truth", ["05", "+5", "x", "", "1 2", "-0", "1,234"])
def test_chat_reward_refuses_a_malformed_ground_truth(truth: str) -> None:
    with pytest.raises(ValueError, match="ground truth"):
        arith_chat_reward("5", truth)


def test_registry_names_the_chat_reward() -> None:
    assert REWARDS["arith_chat"] is arith_chat_reward and REWARDS["arith_exact"] is arith_reward
    assert type(arith_chat_reward("7", "7")) is float
    rollouts = [_rollout("a", "3 + 4 = 7"), _rollout("a", "3 + 4 = 8")]
    score_rollouts(rollouts, {"a": "7"}, arith_chat_reward)
    assert [r.correct for r in rollouts] == [1.0, 0.0]
