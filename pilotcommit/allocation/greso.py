"""GRESO: DAPO's dynamic sampling with a pre-rollout skip of predictably useless prompts
(docs/algorithms.md, "GRESO"; Zheng et al. 2025, arXiv 2506.02177; public code
Infini-AI-Lab/GRESO, ``verl/trainer/ttis/presampling_selector.py`` and
``verl/trainer/ppo/ray_trainer.py``).

Every prompt keeps the length of its current *zero-variance streak*: how many of its latest
rolled-out groups in a row were all correct (easy) or all wrong (hard); a group with both
outcomes ends the streak. Before rollout, a prompt on an easy streak of ``k`` is rolled out
with probability ``max(p_easy ** k, min_keep_probability)``, one on a hard streak with
``max(p_hard ** k, ...)``; the others always. Prompts are drawn from the epoch until
``gen_batch_size`` of them are rolled out; skipped prompts cost no rollouts and keep their
streak. After rollout the round is DAPO's (:class:`DAPOPolicy`): zero-variance groups are
dropped, kept groups fill the batch, the surplus of the last round is discarded. From the
second epoch on, after each step, each exploration rate moves by ``exploration_step`` toward
its target: down (skip more) when that kind's share of the step's rolled-out groups reached
its target (``easy_target_fraction * target_zero_variance`` for easy,
the rest for hard), up otherwise, within ``[p_min, p_max]``.

Zero variance is judged on the 0/1 accuracy (``Rollout.correct``): the reference's
thresholds (mean reward >= 0.98 easy, <= 0.11 hard, with its rewards 1 / 0.1 / 0 and groups of
8) select exactly the all-correct and all-wrong groups.

Where this departs from the reference, deliberately:
- Rounds hold exactly ``gen_batch_size`` rolled-out prompts (fewer only at an epoch's end,
  where a round stops rather than mix two epochs). The reference fills rounds from loader
  batches and rolls out the whole overshoot, and shrinks a step's later rounds with an
  estimate of the zero-variance rate (``adaptive_sampling_bs``, which may end a step with a
  short batch); our DAPO does neither, and GRESO differs from it only by the skip.
- A step whose rounds run out raises :class:`RoundsExhaustedError`, like our DAPO.
In the first epoch no prompt has a history, so GRESO behaves exactly like DAPO there.
"""

from __future__ import annotations

from collections.abc import Sequence

from pilotcommit.allocation.base import (
    AllocationError,
    is_zero_variance,
    pass_rate,
    register_policy,
)
from pilotcommit.allocation.dapo import DAPOPolicy
from pilotcommit.config import GRESOConfig
from pilotcommit.types import Group, RequestResult, RolloutKind, RolloutRequest


def keep_probability(streak: int, exploration_rate: float, floor: float) -> float:
    """Probability that a prompt on a zero-variance streak of ``streak`` groups is rolled out.

    ``max(exploration_rate ** streak, floor)``: 1 without a streak, shrinking geometrically with
    its length (``presampling_selector.py``, ``easy_/hard_probabilistic_skip``).
    """
    if streak <= 0:
        return 1.0
    return max(exploration_rate**streak, floor)


def adapt_exploration_rate(rate: float, share: float, target: float, *, step: float,
                           low: float, high: float) -> float:
    """One step of the exploration-rate controller (``ray_trainer.py``, "adjust exploration
    factor"): a share at or above its target lowers the rate (more skipping), else raises it."""
    if share >= target:
        return max(rate - step, low)
    return min(rate + step, high)


@register_policy
class GRESOPolicy(DAPOPolicy):
    name = "greso"
    config: GRESOConfig

    def __init__(self, config: GRESOConfig, prompt_ids: Sequence[str], *, seed: int) -> None:
        super().__init__(config, prompt_ids, seed=seed)
        # zero-variance streaks of the prompts rolled out so far (a prompt is in at most one)
        self.easy_streak: dict[str, int] = {}
        self.hard_streak: dict[str, int] = {}
        self.p_easy = float(config.p_easy)
        self.p_hard = float(config.p_hard)
        self.skipped = {"easy": 0, "hard": 0, "considered": 0}  # of the step being built
        self._shares = (float("nan"), float("nan"))  # (easy, hard) of the last finished step

    # ------------------------------------------------------------------ skip rule
    def skip_kind(self, prompt_id: str) -> str | None:
        """``"easy"`` or ``"hard"`` when the prompt is skipped before rollout, else None.

        Draws from the policy's generator only for prompts on a streak.
        """
        c = self.config
        for kind, streaks, rate in (("easy", self.easy_streak, self.p_easy),
                                    ("hard", self.hard_streak, self.p_hard)):
            streak = streaks.get(prompt_id, 0)
            if streak > 0:
                skip = 1.0 - keep_probability(streak, rate, c.min_keep_probability)
                return kind if self.rng.random() < skip else None  # the reference's draw
        return None

    def record_group(self, prompt_id: str, correct: Sequence[float]) -> None:
        """Update the prompt's streak with one rolled-out group's 0/1 accuracies."""
        easy = self.easy_streak.pop(prompt_id, 0)
        hard = self.hard_streak.pop(prompt_id, 0)
        if is_zero_variance(correct):
            if pass_rate(correct) >= 1.0:
                self.easy_streak[prompt_id] = easy + 1
            else:
                self.hard_streak[prompt_id] = hard + 1

    # ------------------------------------------------------------------ rounds
    def _plan_round(self) -> list[RolloutRequest]:
        c = self.config
        if c.gen_batch_size > self.stream.num_prompts:
            raise AllocationError(
                f"greso: a round needs {c.gen_batch_size} prompts but the training set has only "
                f"{self.stream.num_prompts}; lower gen_batch_size or use more data"
            )
        accepted: list[str] = []
        # terminates: every prompt is rolled out with probability >= min_keep_probability > 0
        while len(accepted) < c.gen_batch_size:
            if self.stream.remaining_in_epoch == 0:
                if accepted:
                    break  # a round never mixes two epochs (no prompt twice in a round)
                self._start_next_epoch()
            (prompt,) = self.stream.take(1)
            self.skipped["considered"] += 1
            kind = self.skip_kind(prompt)
            if kind is None:
                accepted.append(prompt)
            else:
                self.skipped[kind] += 1
        return [RolloutRequest(p, c.n, RolloutKind.UNIFORM) for p in accepted]

    def _observe_round(self, results: Sequence[RequestResult]) -> list[Group] | None:
        for result in results:
            self.record_group(result.request.prompt_id, [r.correct for r in result.rollouts])
        groups = super()._observe_round(results)
        if groups is not None:
            self._adapt()
        return groups

    def _adapt(self) -> None:
        """End of a step: move the exploration rates toward their targets (from epoch 1 on)."""
        c, k = self.config, self.counters
        rolled_out = k.informative + k.too_hard + k.too_easy
        easy_share, hard_share = k.too_easy / rolled_out, k.too_hard / rolled_out
        self._shares = (easy_share, hard_share)
        if self.stream.epoch == 0:  # the reference adapts only when epoch > 0
            return
        easy_target = c.easy_target_fraction * c.target_zero_variance
        hard_target = c.target_zero_variance - easy_target
        bounds = dict(step=c.exploration_step, low=c.p_min, high=c.p_max)
        self.p_easy = adapt_exploration_rate(self.p_easy, easy_share, easy_target, **bounds)
        self.p_hard = adapt_exploration_rate(self.p_hard, hard_share, hard_target, **bounds)

    def _extra_metrics(self, groups: list[Group]) -> dict[str, float]:
        metrics = {
            "alloc/skipped_easy": self.skipped["easy"],
            "alloc/skipped_hard": self.skipped["hard"],
            "alloc/prompts_considered": self.skipped["considered"],
            "alloc/p_easy": self.p_easy,
            "alloc/p_hard": self.p_hard,
            "alloc/easy_share": self._shares[0],
            "alloc/hard_share": self._shares[1],
            "alloc/easy_streaks": len(self.easy_streak),
            "alloc/hard_streaks": len(self.hard_streak),
        }
        self.skipped = {"easy": 0, "hard": 0, "considered": 0}
        return metrics

    def _exhausted_message(self) -> str:
        c = self.config
        return (
            f"greso: step {self.step} has only {len(self.kept)} of {c.train_batch_size} groups with "
            f"non-zero reward variance after max_num_gen_batches={c.max_num_gen_batches} sampling "
            f"rounds of {c.gen_batch_size} prompts ({self.counters.too_hard} groups all wrong, "
            f"{self.counters.too_easy} all correct; {self.skipped['easy']} easy and "
            f"{self.skipped['hard']} hard prompts skipped): the data are too hard or too easy for "
            "the model. Raise max_num_gen_batches or gen_batch_size, or use data matched to the model."
        )

    # ------------------------------------------------------------------ state
    def _subclass_state(self) -> dict:
        return {
            **super()._subclass_state(),
            "easy_streak": self.easy_streak,
            "hard_streak": self.hard_streak,
            "p_easy": self.p_easy,
            "p_hard": self.p_hard,
            "skipped": self.skipped,
            "shares": list(self._shares),
        }

    def _load_subclass_state(self, state: dict) -> None:
        super()._load_subclass_state(state)
        self.easy_streak = dict(state["easy_streak"])
        self.hard_streak = dict(state["hard_streak"])
        self.p_easy = float(state["p_easy"])
        self.p_hard = float(state["p_hard"])
        self.skipped = dict(state["skipped"])
        self._shares = tuple(state["shares"])
