"""The five allocation methods' settings (ALGORITHMS.md; docs/algorithms.md for GRESO and
SPEED-RL), one schema each, chosen by ``name``; and Pilot-Commit's pass band, the one definition
the policy classifies with and the config checks with."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_serializer, model_validator

from pilotcommit.config.base import StrictModel
from pilotcommit.config.sections import check_minibatch_rule


class MinibatchOverride(StrictModel):
    """One method's own mini-batch rule, in place of the experiment's ``learner`` one: how a
    study compares the reference rule with the equal rule inside one experiment (its arms are
    methods with their own labels, paired by seed)."""

    minibatch_rule: Literal["equal", "reference"] = Field(
        description="equal or reference (LearnerConfig.minibatch_rule)."
    )
    minibatch_prompts: int | None = Field(
        None, ge=1, description="The reference rule's mini-batch size in prompts."
    )

    @model_validator(mode="after")
    def _check(self) -> "MinibatchOverride":
        check_minibatch_rule(self.minibatch_rule, self.minibatch_prompts, "learner")
        return self


class MethodBase(StrictModel):
    """What every method's settings share: an optional mini-batch rule of its own."""

    learner: MinibatchOverride | None = Field(
        None, description="This method's mini-batch rule (None: the experiment's learner's)."
    )

    @model_serializer(mode="wrap")
    def _omit_unset_learner(self, handler):
        # absent unless set, so configs without it keep their hashes (and their cached runs)
        data = handler(self)
        if self.learner is None:
            data.pop("learner", None)
        return data

    @property
    def verl_rollout_n(self) -> int:
        """verl's ``rollout.n`` for this method: what the reference multiplies its mini-batch
        size in prompts by (``ppo_mini_batch_size * rollout.n`` sequences)."""
        return self.group_size


class GRPOConfig(MethodBase):
    """Uniform allocation: every drawn prompt gets ``n`` rollouts, all trained on."""

    name: Literal["grpo"] = "grpo"
    n: int = Field(16, ge=1, description="Rollouts per prompt (group size).")
    train_batch_size: int = Field(32, ge=1, description="Prompts (groups) per training step.")

    @property
    def group_size(self) -> int:
        return self.n


class DAPOConfig(MethodBase):
    """Dynamic sampling: over-sample prompts, drop zero-variance groups, fill the batch."""

    name: Literal["dapo"] = "dapo"
    n: int = Field(16, ge=2, description="Rollouts per prompt (group size).")
    train_batch_size: int = Field(32, ge=1, description="Groups per training step.")
    gen_batch_size: int = Field(
        96, ge=1, description="Prompts drawn per sampling round (3 x train_batch_size in the paper)."
    )
    max_num_gen_batches: int = Field(
        10, ge=1, description="Sampling rounds allowed per step before the step fails."
    )

    @property
    def group_size(self) -> int:
        return self.n


# float slack of the inclusive pass band: a pilot pass rate k / n_pilot is compared with thresholds
# such as 0.125 that are themselves decimal renderings
PASS_RATE_TOLERANCE = 1e-9

PilotVerdict = Literal["informative", "too_hard", "too_easy"]


def pass_band_verdict(p: float, *, p_low: float, p_high: float) -> PilotVerdict:
    """Pilot-Commit's classification of a pilot pass rate ``p`` (ALGORITHMS.md, PC rule 4).

    The band is inclusive: ``p_low <= p <= 1 - p_high`` is informative, below it too hard,
    above it too easy. The one definition of the band: the policy classifies with it and the
    config validator checks with it that some ``k / n_pilot`` can be informative.
    """
    if p < p_low - PASS_RATE_TOLERANCE:
        return "too_hard"
    if p > 1.0 - p_high + PASS_RATE_TOLERANCE:
        return "too_easy"
    return "informative"


class PilotCommitConfig(MethodBase):
    """Pilot-Commit: a few pilot rollouts per prompt, the rest only for informative prompts."""

    name: Literal["pilot_commit"] = "pilot_commit"
    n_pilot: int = Field(4, ge=1, description="Pilot rollouts per new prompt.")
    n_commit: int = Field(12, ge=1, description="Extra rollouts per committed prompt.")
    n_pilot_effective: int | None = Field(
        None,
        ge=1,
        description=(
            "Pilots reused in the training group (None: all n_pilot). Chosen to maximise "
            "reward variance: half correct, half wrong where possible."
        ),
    )
    p_low: float = Field(
        0.125, ge=0.0, le=1.0, description="Pilot pass rates below this are too hard (deferred)."
    )
    p_high: float = Field(
        0.25, ge=0.0, le=1.0, description="Pilot pass rates above 1 - p_high are too easy."
    )
    p_evict: float = Field(
        1.0, ge=0.0, le=1.0, description="Pilot pass rates >= this evict the prompt for later epochs."
    )
    max_off_steps: int = Field(
        4, ge=0, description="Buffer entries older than this many training steps are dropped."
    )
    buffer_sampling: Literal["max_variance", "random", "most_recent"] = Field(
        "max_variance", description="How committed prompts are taken out of the replay buffer."
    )
    train_batch_size: int = Field(32, ge=1, description="Groups per training step.")
    gen_batch_size: int = Field(96, ge=1, description="New prompts piloted per sampling round.")
    max_num_gen_batches: int = Field(
        10, ge=1, description="Sampling rounds allowed per step before the step fails."
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> "PilotCommitConfig":
        if self.p_low > 1.0 - self.p_high:
            raise ValueError(
                f"p_low ({self.p_low}) must be <= 1 - p_high ({1.0 - self.p_high}): "
                "otherwise no pilot pass rate is informative"
            )
        if self.n_pilot_effective is not None and self.n_pilot_effective > self.n_pilot:
            raise ValueError(
                f"n_pilot_effective ({self.n_pilot_effective}) must be <= n_pilot ({self.n_pilot})"
            )
        if self.p_evict <= 1.0 - self.p_high:
            raise ValueError(
                f"p_evict ({self.p_evict}) must be > 1 - p_high ({1.0 - self.p_high}): "
                "an evicted prompt must also be too easy (the pass band is inclusive)"
            )
        rates = [k / self.n_pilot for k in range(self.n_pilot + 1)]
        if not any(self.verdict(p) == "informative" for p in rates):
            raise ValueError(
                f"n_pilot ({self.n_pilot}): no pilot pass rate k/{self.n_pilot} falls in "
                f"[p_low, 1 - p_high] = [{self.p_low}, {1.0 - self.p_high}], so no prompt could "
                "ever be committed; use more pilots or widen the band"
            )
        return self

    def verdict(self, p: float) -> PilotVerdict:
        """The pass band's verdict on pilot pass rate ``p`` (:func:`pass_band_verdict`)."""
        return pass_band_verdict(p, p_low=self.p_low, p_high=self.p_high)

    def evicts(self, p: float) -> bool:
        """Whether pilot pass rate ``p`` evicts the prompt from later epochs (``p >= p_evict``)."""
        return p >= self.p_evict - PASS_RATE_TOLERANCE

    @property
    def verl_rollout_n(self) -> int:
        """The reference sets ``rollout.n = n_commit`` (the pilots run under their own n)."""
        return self.n_commit

    @property
    def pilots_in_group(self) -> int:
        return self.n_pilot if self.n_pilot_effective is None else self.n_pilot_effective

    @property
    def group_size(self) -> int:
        return self.pilots_in_group + self.n_commit


class GRESOConfig(MethodBase):
    """GRESO (Zheng et al. 2025): DAPO's dynamic sampling plus a probabilistic pre-rollout skip
    of prompts whose latest groups all had zero reward variance (docs/algorithms.md, "GRESO").

    Defaults: the public code's train scripts (``p_easy = p_hard = 0.5``,
    ``target_zero_variance = 0.25``) and ``ray_trainer.py`` (step 0.01 within [0.05, 0.95],
    easy target = 1/3 of the total, keep-probability floor 0.01 in ``presampling_selector.py``).
    """

    name: Literal["greso"] = "greso"
    n: int = Field(16, ge=2, description="Rollouts per prompt (group size).")
    train_batch_size: int = Field(32, ge=1, description="Groups per training step.")
    gen_batch_size: int = Field(
        96, ge=1,
        description="Prompts rolled out per sampling round, counted after the pre-rollout skip "
        "(the reference's sampling_batch_size); a round is cut short at an epoch's end.",
    )
    max_num_gen_batches: int = Field(
        10, ge=1, description="Sampling rounds allowed per step before the step fails."
    )
    p_easy: float = Field(
        0.5, gt=0.0, le=1.0,
        description="Initial exploration rate of easy prompts: a prompt whose last k groups were "
        "all correct is rolled out with probability max(p_easy ** k, min_keep_probability).",
    )
    p_hard: float = Field(
        0.5, gt=0.0, le=1.0,
        description="Initial exploration rate of hard prompts: a prompt whose last k groups were "
        "all wrong is rolled out with probability max(p_hard ** k, min_keep_probability).",
    )
    target_zero_variance: float = Field(
        0.25, ge=0.0, le=1.0,
        description="Target share of zero-variance groups among a step's rolled-out groups; the "
        "exploration rates adapt toward it from the second epoch on.",
    )
    easy_target_fraction: float = Field(
        1.0 / 3.0, ge=0.0, le=1.0,
        description="Part of target_zero_variance allotted to all-correct groups (the rest to "
        "all-wrong ones): the reference targets 1/3 easy, 2/3 hard.",
    )
    exploration_step: float = Field(
        0.01, gt=0.0, le=1.0,
        description="Change of p_easy / p_hard after each step: down when that kind's share of "
        "zero-variance groups reached its target, up otherwise.",
    )
    p_min: float = Field(0.05, gt=0.0, le=1.0, description="Lower bound of the adapted exploration rates.")
    p_max: float = Field(0.95, gt=0.0, le=1.0, description="Upper bound of the adapted exploration rates.")
    min_keep_probability: float = Field(
        0.01, gt=0.0, le=1.0,
        description="Floor of a prompt's roll-out probability however long its zero-variance streak.",
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> "GRESOConfig":
        if self.p_min > self.p_max:
            raise ValueError(f"p_min ({self.p_min}) must be <= p_max ({self.p_max})")
        return self

    @property
    def group_size(self) -> int:
        return self.n


class SpeedRLConfig(MethodBase):
    """SPEED-RL (Zhang et al. 2025): screen every new prompt with a few rollouts, continue only
    those with a screening pass rate strictly between 0 and 1, and train on the screening plus
    continuation rollouts (docs/algorithms.md, "SPEED-RL").

    Defaults: the public code's ``recipe/dapo/src/config/fast_dapo_trainer.yaml``
    (``rollout.n = 4`` screening, ``n_continue = 12``, a group of 16).
    """

    name: Literal["speed_rl"] = "speed_rl"
    n_screen: int = Field(
        4, ge=2,
        description="Screening rollouts per new prompt (the reference's rollout.n); at least 2, "
        "or no screening pass rate lies strictly between 0 and 1.",
    )
    n_continue: int = Field(
        12, ge=1, description="Continuation rollouts per qualified prompt (the reference's n_continue)."
    )
    train_batch_size: int = Field(32, ge=1, description="Groups per training step.")
    gen_batch_size: int = Field(96, ge=1, description="New prompts screened per sampling round.")
    max_num_gen_batches: int = Field(
        10, ge=1, description="Sampling rounds allowed per step before the step fails."
    )

    @property
    def verl_rollout_n(self) -> int:
        """The public code's ``rollout.n`` is the screening count."""
        return self.n_screen

    @property
    def group_size(self) -> int:
        return self.n_screen + self.n_continue


MethodConfig = Annotated[
    Union[GRPOConfig, DAPOConfig, PilotCommitConfig, GRESOConfig, SpeedRLConfig],
    Field(discriminator="name"),
]
METHOD_NAMES = ("grpo", "dapo", "pilot_commit", "greso", "speed_rl")

