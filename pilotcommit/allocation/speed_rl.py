"""SPEED-RL: screen new prompts with a few rollouts, continue only the ones of moderate
difficulty (docs/algorithms.md, "SPEED-RL"; Zhang et al. 2025, arXiv 2506.09016; public code
Zanette-Labs/speed-rl, ``verl/trainer/ppo/data_controller.py`` and
``recipe/dapo/src/fast_dapo_ray_trainer.py``).

One sampling round is one generation call of the reference's ``DataController``:
``gen_batch_size`` new prompts get ``n_screen`` screening rollouts each, and, in the same call,
every prompt that qualified in the previous round gets ``n_continue`` continuation rollouts
(the reference "pre-fetches": a prompt's continuation rides along with the next screening
batch, so it is never continued in the round that screened it). A prompt qualifies when its
screening pass rate is strictly between 0 and 1 (``std > 0`` of the 0/1 accuracy,
``Rollout.correct``); the others are dropped and not revisited before the next epoch. A
qualified prompt's group is its screening rollouts plus its continuation rollouts
(``n_screen + n_continue``, one advantage normalisation), appended to a queue of completed
groups. Whenever the queue holds ``train_batch_size`` groups, the oldest of them are a
training batch; the surplus waits for the next step, which trains on it without sampling when
it is already full (:meth:`ready_batch`), as the reference's loop does. Qualified prompts
waiting for their continuation carry over step and epoch boundaries. Every screening and
continuation rollout counts toward the budget (``rollouts/pilot`` counts the screening
rollouts, ``rollouts/commit`` the continuations).

Where this departs from the reference, deliberately:
- A training step does not consume a loader batch of new prompts unused (the reference's loop
  draws one per iteration and ignores it when it trains instead of generating).
- Running out of rounds raises :class:`RoundsExhaustedError` after ``max_num_gen_batches``
  rounds of one step (the reference counts ``>=``, allowing one fewer, and crashes).
- A batch never holds two groups of one prompt (two epochs' draws of a prompt may both be
  queued on a small data set): the younger group waits for the next batch.
- Continuations are not trimmed to a multiple of the GPU count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pilotcommit.allocation.base import AllocationPolicy, pass_rate, register_policy
from pilotcommit.allocation.buffer import BufferEntry
from pilotcommit.config import SpeedRLConfig
from pilotcommit.types import Group, RequestResult, RolloutKind, RolloutRequest


def qualifies(correct: Sequence[float]) -> bool:
    """SPEED-RL's screening rule: the pass rate is strictly between 0 and 1."""
    p = pass_rate(correct)
    return 0.0 < p < 1.0


@register_policy
class SpeedRLPolicy(AllocationPolicy):
    name = "speed_rl"
    config: SpeedRLConfig

    def __init__(self, config: SpeedRLConfig, prompt_ids: Sequence[str], *, seed: int) -> None:
        super().__init__(config, prompt_ids, seed=seed)
        self.qualified: list[BufferEntry] = []  # screened in, waiting for their continuation
        self.completed: list[Group] = []  # screening + continuation, waiting for a batch
        self.completed_steps: list[int] = []  # the step that screened each completed group
        self._continuing: list[BufferEntry] = []  # continued in the planned round, plan order
        self._agreement: list[tuple[float, float]] = []  # (screening, continuation pass rate)
        self._next_order = 0

    # ------------------------------------------------------------------ rounds
    def _plan_round(self) -> list[RolloutRequest]:
        c = self.config
        new_prompts = self._take_prompts(c.gen_batch_size)
        self._continuing, self.qualified = self.qualified, []
        screens = [RolloutRequest(p, c.n_screen, RolloutKind.PILOT) for p in new_prompts]
        continues = [RolloutRequest(e.prompt_id, c.n_continue, RolloutKind.COMMIT) for e in self._continuing]
        return screens + continues

    def _observe_round(self, results: Sequence[RequestResult]) -> list[Group] | None:
        continuing = iter(self._continuing)
        for result in results:
            prompt_id = result.request.prompt_id
            if result.request.kind is RolloutKind.COMMIT:
                entry = next(continuing)  # continuations follow the screens, in plan order
                rollouts = list(entry.pilots) + list(result.rollouts)
                self.completed.append(Group(0, prompt_id, rollouts))
                self.completed_steps.append(entry.step)
                self._agreement.append((entry.pass_rate, pass_rate([r.correct for r in result.rollouts])))
                continue
            correct = [r.correct for r in result.rollouts]
            if qualifies(correct):
                self.counters.informative += 1
                self.qualified.append(BufferEntry(prompt_id, list(result.rollouts), self.step, self._next_order))
                self._next_order += 1
            elif pass_rate(correct) <= 0.0:
                self.counters.too_hard += 1
            else:
                self.counters.too_easy += 1
        if next(continuing, None) is not None:  # the plan and the results were checked against each other
            raise AssertionError("continuation results missing")
        self._continuing = []
        return self._ready_groups()

    def _ready_groups(self) -> list[Group] | None:
        """The oldest ``train_batch_size`` completed groups of distinct prompts, if there are."""
        chosen: list[int] = []
        seen: set[str] = set()
        for i, group in enumerate(self.completed):
            if group.prompt_id not in seen:
                chosen.append(i)
                seen.add(group.prompt_id)
                if len(chosen) == self.config.train_batch_size:
                    break
        if len(chosen) < self.config.train_batch_size:
            return None
        picked = set(chosen)
        groups = [self.completed[i] for i in chosen]
        for i, group in zip(chosen, groups):  # steps since its screening rollouts were sampled
            group.staleness = self.step - self.completed_steps[i]
        self.completed = [g for i, g in enumerate(self.completed) if i not in picked]
        self.completed_steps = [s for i, s in enumerate(self.completed_steps) if i not in picked]
        return groups

    def _max_rounds(self) -> int:
        return self.config.max_num_gen_batches

    def _exhausted_message(self) -> str:
        c = self.config
        return (
            f"speed_rl: step {self.step} has only {len(self.completed)} of {c.train_batch_size} "
            f"completed groups after max_num_gen_batches={c.max_num_gen_batches} sampling rounds "
            f"of {c.gen_batch_size} screened prompts ({self.counters.informative} qualified, "
            f"{self.counters.too_hard} all wrong, {self.counters.too_easy} all correct in "
            f"{c.n_screen} screening rollouts): too few prompts have a screening pass rate "
            "strictly between 0 and 1. Raise max_num_gen_batches or gen_batch_size, use more "
            "screening rollouts (n_screen), or use data matched to the model."
        )

    def _extra_metrics(self, groups: list[Group]) -> dict[str, float]:
        pairs = np.array(self._agreement, dtype=float).reshape(-1, 2)
        self._agreement = []
        metrics: dict[str, float] = {
            "alloc/qualified_waiting": len(self.qualified),
            "alloc/completed_waiting": len(self.completed),
            "alloc/continued": len(pairs),
        }
        if len(pairs):
            metrics["alloc/screen_pass_rate_mean"] = float(pairs[:, 0].mean())
            metrics["alloc/continue_pass_rate_mean"] = float(pairs[:, 1].mean())
            metrics["alloc/screen_continue_agreement"] = float(1.0 - np.abs(pairs[:, 0] - pairs[:, 1]).mean())
        return metrics

    # ------------------------------------------------------------------ state
    def _subclass_state(self) -> dict:
        return {
            "qualified": self.qualified,
            "completed": self.completed,
            "completed_steps": self.completed_steps,
            "continuing": self._continuing,
            "agreement": self._agreement,
            "next_order": self._next_order,
        }

    def _load_subclass_state(self, state: dict) -> None:
        self.qualified = list(state["qualified"])
        self.completed = list(state["completed"])
        self.completed_steps = [int(s) for s in state["completed_steps"]]
        self._continuing = list(state["continuing"])
        self._agreement = [tuple(x) for x in state["agreement"]]
        self._next_order = int(state["next_order"])
