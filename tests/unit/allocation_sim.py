"""A scripted stand-in for the engine and the reward, for allocation tests.

Each prompt has a true pass rate; a rollout is correct with that probability
(or by a fixed pattern). No model involved: the allocation policies only read
prompt ids, kinds and rewards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pilotcommit.types import RequestResult, Rollout, RolloutRequest, TrainBatch


def make_rollout(request: RolloutRequest, reward: float) -> Rollout:
    return Rollout(
        prompt_id=request.prompt_id,
        kind=request.kind,
        prompt_token_ids=[1],
        completion_token_ids=[2, 3],
        sampler_logprobs=[-0.1, -0.2],
        text="x",
        finish_reason="stop",
        reward=reward,
    )


class Scorer:
    """Bernoulli rewards from per-prompt pass rates, with its own seeded generator."""

    def __init__(self, pass_rates: dict[str, float], seed: int = 0) -> None:
        self.pass_rates = pass_rates
        self.rng = np.random.default_rng(seed)

    def __call__(self, requests: Sequence[RolloutRequest]) -> list[RequestResult]:
        results = []
        for req in requests:
            draws = self.rng.random(req.count) < self.pass_rates[req.prompt_id]
            results.append(RequestResult(req, [make_rollout(req, float(d)) for d in draws]))
        return results


def fixed_scorer(pattern: Callable[[RolloutRequest], list[float]]):
    """Rewards given by ``pattern(request)`` (a list of ``request.count`` floats)."""

    def score(requests: Sequence[RolloutRequest]) -> list[RequestResult]:
        return [RequestResult(r, [make_rollout(r, x) for x in pattern(r)]) for r in requests]

    return score


def run_until_batch(policy, score, max_rounds: int = 100) -> tuple[TrainBatch, list[list[RolloutRequest]]]:
    """Plan/observe rounds until the policy hands out a batch; returns it and the plans."""
    plans = []
    for _ in range(max_rounds):
        plan = policy.plan()
        plans.append(plan)
        batch = policy.observe(score(plan))
        if batch is not None:
            return batch, plans
    raise AssertionError("no batch within max_rounds")


def prompt_ids(n: int) -> list[str]:
    return [f"p{i:03d}" for i in range(n)]
