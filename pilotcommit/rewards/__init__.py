"""Verifiable rewards: pure functions ``(completion text, ground truth) -> float``.

``REWARDS`` is the registry the configs name a reward by; ``score_rollouts``
applies one to the engine's rollouts in place (accuracy and shaped reward).
"""

from pilotcommit.rewards.arith import arith_chat_reward, arith_reward, chat_answer, is_canonical_integer
from pilotcommit.rewards.math import math_reward
from pilotcommit.rewards.math_verifier import math_verifier_timeouts
from pilotcommit.rewards.scoring import RewardFn, overlong_penalty, score_rollouts

REWARDS: dict[str, RewardFn] = {
    "arith_exact": arith_reward,
    "arith_chat": arith_chat_reward,
    "math_verify": math_reward,
}


def reward_timeouts() -> int:
    """Rewards of this process that hit their time limit so far (only math_verify has one)."""
    return math_verifier_timeouts()


__all__ = [
    "REWARDS",
    "RewardFn",
    "arith_chat_reward",
    "arith_reward",
    "chat_answer",
    "is_canonical_integer",
    "math_reward",
    "overlong_penalty",
    "reward_timeouts",
    "score_rollouts",
]
