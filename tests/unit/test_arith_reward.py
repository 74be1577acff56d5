"""Hand cases of the exact-integer reward, and of filling rollouts with it."""

from __future__ import annotations

import math

import pytest

from pilotcommit.rewards import REWARDS, arith_reward, score_rollouts
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
