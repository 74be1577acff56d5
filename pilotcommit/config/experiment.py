"""One experiment: data, model, the methods compared, and how each run is trained; the checks
across sections (same group shape for every method, a micro-batch budget that holds any
sequence, a train mix the data can supply, ...)."""

from __future__ import annotations

from pydantic import Field, model_validator

from pilotcommit.config.base import StrictModel
from pilotcommit.config.methods import MethodConfig
from pilotcommit.config.model import ModelConfig, TinyModelConfig
from pilotcommit.config.sections import (
    ArithDataConfig,
    BudgetConfig,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LearnerConfig,
    ProbeConfig,
    ResourcesConfig,
    RolloutConfig,
    TargetConfig,
    TrackingConfig,
    TrainMixConfig,
)


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
        for label in self.methods:
            sequences = self.minibatch_sequences(label)
            if sequences is not None and sequences > rollouts_per_step[0] * rollouts_per_step[1]:
                where = "learner" if self.methods[label].learner is None else f"methods.{label}.learner"
                raise ValueError(
                    f"{where}.minibatch_prompts: a mini-batch of {sequences} sequences "
                    f"(minibatch_prompts x {label}'s rollout.n {self.methods[label].verl_rollout_n}) "
                    f"is more than the {rollouts_per_step[0] * rollouts_per_step[1]} rollouts of a "
                    "training step"
                )
        if isinstance(self.data, ArithDataConfig):
            chat_model = getattr(self.model, "prompt_template", None) == "arith_chat"
            if chat_model != (self.data.reward == "arith_chat"):
                raise ValueError(
                    f"data.reward: {self.data.reward!r} with model {self.model.label!r} "
                    f"(prompt_template {getattr(self.model, 'prompt_template', 'none: the tiny model')!r}): "
                    "a pretrained chat model on the arithmetic task needs model.prompt_template: "
                    "arith_chat and data.reward: arith_chat; the tiny model needs arith_exact"
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

    def learner_for(self, label: str) -> LearnerConfig:
        """The learner settings of method ``label``'s runs: the experiment's, with the method's
        own mini-batch rule (``methods.<label>.learner``) where it has one."""
        override = self.methods[label].learner
        if override is None:
            return self.learner
        update = {"minibatch_rule": override.minibatch_rule, "minibatch_prompts": override.minibatch_prompts}
        if override.minibatch_rule == "reference":
            update["optimizer_steps_per_batch"] = 1  # the reference rule's steps follow from the batch
        return self.learner.model_copy(update=update)

    def minibatch_sequences(self, label: str) -> int | None:
        """The reference rule's mini-batch size in sequences for method ``label``
        (``minibatch_prompts x rollout.n``, as verl); None under the equal rule."""
        learner = self.learner_for(label)
        if learner.minibatch_rule != "reference":
            return None
        return learner.minibatch_prompts * self.methods[label].verl_rollout_n

    def optimizer_steps(self, label: str) -> int:
        """Optimizer steps of one full training step of method ``label`` (every batch of the
        equal rule; under the reference rule a batch of ``train_batch_size`` groups)."""
        sequences = self.minibatch_sequences(label)
        if sequences is None:
            return self.learner_for(label).optimizer_steps_per_batch
        method = self.methods[label]
        return -(-(method.train_batch_size * method.group_size) // sequences)

    @property
    def model_label(self) -> str:
        return self.model.label

    @property
    def cell_label(self) -> str:
        """What tells this configuration's runs apart from a sweep's other cells."""
        return self.cell or self.model.label


