"""The one configuration schema of the project (pydantic), validated at load time.

YAML files under ``conf/`` only supply values; every field, its bounds and its
meaning live here. An impossible combination fails when the file is loaded,
with a message naming the field, before any data is read or any model is built.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------- methods


class GRPOConfig(StrictModel):
    """Uniform allocation: every drawn prompt gets ``n`` rollouts, all trained on."""

    name: Literal["grpo"] = "grpo"
    n: int = Field(16, ge=1, description="Rollouts per prompt (group size).")
    train_batch_size: int = Field(32, ge=1, description="Prompts (groups) per training step.")

    @property
    def group_size(self) -> int:
        return self.n


class DAPOConfig(StrictModel):
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


class PilotCommitConfig(StrictModel):
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
        if self.p_evict < 1.0 - self.p_high:
            raise ValueError(
                f"p_evict ({self.p_evict}) must be >= 1 - p_high ({1.0 - self.p_high}): "
                "an evicted prompt must also be too easy"
            )
        return self

    @property
    def pilots_in_group(self) -> int:
        return self.n_pilot if self.n_pilot_effective is None else self.n_pilot_effective

    @property
    def group_size(self) -> int:
        return self.pilots_in_group + self.n_commit


MethodConfig = Annotated[
    Union[GRPOConfig, DAPOConfig, PilotCommitConfig], Field(discriminator="name")
]
METHOD_NAMES = ("grpo", "dapo", "pilot_commit")


# --------------------------------------------------------------------------- learner


class LearnerConfig(StrictModel):
    """The policy-gradient update shared by all three methods (ALGORITHMS.md, 'Shared learner')."""

    lr: float = Field(1e-6, gt=0.0, description="AdamW learning rate.")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps, constant after.")
    grad_clip: float = Field(1.0, gt=0.0, description="Max global gradient norm.")
    eps_low: float = Field(0.2, ge=0.0, lt=1.0, description="Lower PPO clip: ratio >= 1 - eps_low.")
    eps_high: float = Field(0.28, ge=0.0, description="Upper PPO clip: ratio <= 1 + eps_high.")
    loss_aggregation: Literal["token_mean", "sequence_mean"] = Field(
        "token_mean",
        description="token_mean: mean over all response tokens of the mini-batch; "
        "sequence_mean: mean over sequences of each sequence's token mean.",
    )
    advantage_std_normalize: bool = Field(
        True, description="Divide group-centred rewards by the group std (False: Dr.GRPO-style)."
    )
    advantage_eps: float = Field(1e-6, gt=0.0, description="Added to the group std.")
    optimizer_steps_per_batch: int = Field(
        1,
        ge=1,
        description="Optimizer steps per training step, the same for every method (the batch is "
        "split into this many equal mini-batches). The reference code scales the mini-batch by "
        "n_commit, giving PC more steps than GRPO; we keep it equal for a fair comparison.",
    )
    micro_batch_size: int = Field(
        64, ge=1, description="Sequences per forward/backward pass (gradient accumulation)."
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Autocast dtype of the learner's forward pass."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward.")
