"""A scripted stand-in for the engine and the reward, for allocation tests.

Each prompt has a true pass rate; a rollout is correct with that probability
(or by a fixed pattern). No model involved: the allocation policies only read
prompt ids, kinds and rewards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pilotcommit.types import RequestResult, Rollout, RolloutRequest, TrainBatch


def make_rollout(request: RolloutRequest, reward: float, correct: float | None = None) -> Rollout:
    """A scored rollout; ``correct`` (0/1) defaults to ``reward`` (no shaping)."""
    return Rollout(
        prompt_id=request.prompt_id,
        kind=request.kind,
        prompt_token_ids=[1],
        completion_token_ids=[2, 3],
        sampler_logprobs=[-0.1, -0.2],
        text="x",
        finish_reason="stop",
        reward=reward,
        correct=reward if correct is None else correct,
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


def exact_rate_scorer(pass_rates: dict[str, float]):
    """Deterministic rewards: the first ``round(rate * count)`` rollouts correct, the rest wrong.

    Every request of a prompt with rate 0.5 gets exactly half correct, so the
    pilot pass rate (and the classification) is known in advance.
    """

    def pattern(request: RolloutRequest) -> list[float]:
        correct = int(round(pass_rates[request.prompt_id] * request.count))
        return [1.0] * correct + [0.0] * (request.count - correct)

    return fixed_scorer(pattern)


@dataclass
class RoundRecord:
    """One plan/observe round as the training loop would see it."""

    step: int  # the policy's step while the round was planned (the step being built)
    epoch: int  # the stream's epoch after planning (planning may start a new epoch)
    plan: list[RolloutRequest]
    results: list[RequestResult]
    batch: TrainBatch | None

    def prompt_ids(self, kind) -> list[str]:
        return [r.prompt_id for r in self.plan if r.kind is kind]


def run_rounds(policy, score, num_rounds: int) -> list[RoundRecord]:
    """Run ``num_rounds`` plan/observe rounds, recording each, as the training loop does: a
    step that ``ready_batch`` hands out without sampling is recorded as a round with an empty
    plan (SPEED-RL's carried-over groups)."""
    records = []
    for _ in range(num_rounds):
        step = policy.step
        ready = policy.ready_batch()
        if ready is not None:
            records.append(RoundRecord(step, policy.stream.epoch, [], [], ready))
            continue
        plan = policy.plan()
        epoch = policy.stream.epoch
        results = score(plan)
        batch = policy.observe(results)
        records.append(RoundRecord(step, epoch, plan, results, batch))
    return records


def run_steps(policy, score, num_steps: int, max_rounds: int = 1000) -> list[RoundRecord]:
    """Run rounds until ``num_steps`` batches were handed out."""
    records: list[RoundRecord] = []
    while sum(r.batch is not None for r in records) < num_steps:
        if len(records) >= max_rounds:
            raise AssertionError(f"fewer than {num_steps} batches within {max_rounds} rounds")
        records += run_rounds(policy, score, 1)
    return records


def run_until_batch(
    policy, score, max_rounds: int = 100
) -> tuple[TrainBatch, list[list[RolloutRequest]]]:
    """Plan/observe rounds until the policy hands out a batch; returns it and the plans."""
    plans = []
    ready = policy.ready_batch()
    if ready is not None:
        return ready, plans
    for _ in range(max_rounds):
        plan = policy.plan()
        plans.append(plan)
        batch = policy.observe(score(plan))
        if batch is not None:
            return batch, plans
    raise AssertionError("no batch within max_rounds")


def prompt_ids(n: int) -> list[str]:
    return [f"p{i:03d}" for i in range(n)]
