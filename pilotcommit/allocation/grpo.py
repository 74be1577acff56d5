"""GRPO: uniform allocation (ALGORITHMS.md, "GRPO").

Each step draws ``train_batch_size`` prompts, samples ``n`` rollouts for each
and trains on all of them, including groups whose rewards are all equal (they
get zero advantage). One sampling round per step.
"""

from __future__ import annotations

from collections.abc import Sequence

from pilotcommit.allocation.base import (
    AllocationPolicy,
    is_zero_variance,
    pass_rate,
    register_policy,
)
from pilotcommit.config import GRPOConfig
from pilotcommit.types import Group, RequestResult, RolloutKind, RolloutRequest


@register_policy
class GRPOPolicy(AllocationPolicy):
    name = "grpo"
    config: GRPOConfig

    def _plan_round(self) -> list[RolloutRequest]:
        prompts = self._take_prompts(self.config.train_batch_size)
        return [RolloutRequest(p, self.config.n, RolloutKind.UNIFORM) for p in prompts]

    def _observe_round(self, results: Sequence[RequestResult]) -> list[Group]:
        groups = []
        for result in results:
            correct = [r.correct for r in result.rollouts]  # the counters classify by accuracy
            if not is_zero_variance(correct):
                self.counters.informative += 1
            elif pass_rate(correct) <= 0.0:
                self.counters.too_hard += 1
            else:
                self.counters.too_easy += 1
            groups.append(Group(0, result.request.prompt_id, list(result.rollouts)))
        return groups
