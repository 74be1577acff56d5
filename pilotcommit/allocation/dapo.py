"""DAPO dynamic sampling (ALGORITHMS.md, "DAPO").

Each round draws ``gen_batch_size`` prompts with ``n`` rollouts each, drops the
groups whose rewards are all equal, and appends the kept groups to the batch
until it holds ``train_batch_size``; the surplus of the last round is
discarded (its rollouts still count toward the budget). "All equal" is
judged on the 0/1 accuracy (``Rollout.correct``), as the reference's
``filter_groups.metric=acc``: with the overlong penalty on, an all-wrong
group whose penalties differ is still dropped, and an all-correct one too.
After
``max_num_gen_batches`` rounds with a short batch the step fails.

As in the reference code, a partly filled batch carries over an epoch
boundary (only Pilot-Commit discards it, because its buffer is epoch-scoped).
"""

from __future__ import annotations

from collections.abc import Sequence

from pilotcommit.allocation.base import (
    AllocationPolicy,
    is_zero_variance,
    pass_rate,
    register_policy,
)
from pilotcommit.config import DAPOConfig
from pilotcommit.types import Group, RequestResult, RolloutKind, RolloutRequest


@register_policy
class DAPOPolicy(AllocationPolicy):
    name = "dapo"
    config: DAPOConfig

    def __init__(self, config: DAPOConfig, prompt_ids: Sequence[str], *, seed: int) -> None:
        super().__init__(config, prompt_ids, seed=seed)
        self.kept: list[Group] = []

    def _plan_round(self) -> list[RolloutRequest]:
        prompts = self._take_prompts(self.config.gen_batch_size)
        return [RolloutRequest(p, self.config.n, RolloutKind.UNIFORM) for p in prompts]

    def _observe_round(self, results: Sequence[RequestResult]) -> list[Group] | None:
        for result in results:
            correct = [r.correct for r in result.rollouts]
            if is_zero_variance(correct):
                self.counters.dropped_groups += 1
                if pass_rate(correct) <= 0.0:
                    self.counters.too_hard += 1
                else:
                    self.counters.too_easy += 1
                continue
            self.counters.informative += 1
            if len(self.kept) < self.config.train_batch_size:
                self.kept.append(Group(0, result.request.prompt_id, list(result.rollouts)))
            else:
                self.counters.discarded_groups += 1
        if len(self.kept) < self.config.train_batch_size:
            return None
        groups, self.kept = self.kept, []
        return groups

    def _max_rounds(self) -> int:
        return self.config.max_num_gen_batches

    def _exhausted_message(self) -> str:
        c = self.config
        return (
            f"dapo: step {self.step} has only {len(self.kept)} of {c.train_batch_size} groups with "
            f"non-zero reward variance after max_num_gen_batches={c.max_num_gen_batches} sampling "
            f"rounds of {c.gen_batch_size} prompts ({self.counters.too_hard} groups all wrong, "
            f"{self.counters.too_easy} all correct): the data are too hard or too easy for the "
            "model. Raise max_num_gen_batches or gen_batch_size, or use data matched to the model."
        )

    def _subclass_state(self) -> dict:
        return {"kept": self.kept}

    def _load_subclass_state(self, state: dict) -> None:
        self.kept = state["kept"]
