"""The policy model: the tiny Qwen2 of the embedded task (with its warm start) or a pretrained
causal LM."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_serializer, model_validator

from pilotcommit.config.base import StrictModel


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


class GGUFFileConfig(StrictModel):
    """A model shipped as one GGUF file, converted once into an ordinary safetensors folder
    (pilotcommit/models/gguf.py) that both engines and the learner load."""

    file: str = Field(
        min_length=1,
        description="The GGUF file: a path, or a name in the model cache "
        "($PILOTCOMMIT_MODEL_CACHE, default ~/.cache/pilotcommit/models), where "
        "`python -m pilotcommit.models.fetch` puts the files it knows.",
    )
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="The file's sha256: checked before conversion; it also names the converted "
        "folder, so a different file can never be mistaken for this one.",
    )


class PretrainedModelConfig(StrictModel):
    """A causal LM loaded with transformers (hub name or local directory, or a GGUF file)."""

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
    prompt_template: Literal["boxed_cot", "raw", "arith_chat"] = Field(
        "boxed_cot", description="boxed_cot: chat template + the paper's instruction; arith_chat: "
        "an arithmetic problem of the synthetic task as a chat question (\"What is 3+4? Reply "
        "with only the number.\"), scored by the arith_chat reward."
    )
    gguf: GGUFFileConfig | None = Field(
        None, description="Load the model from this GGUF file (converted once into the model "
        "cache) instead of name_or_path, which then only names the model."
    )

    @model_serializer(mode="wrap")
    def _omit_unset_gguf(self, handler):
        data = handler(self)  # absent unless set: hub models keep their config hashes
        if self.gguf is None:
            data.pop("gguf", None)
        return data

    @property
    def load_path(self) -> str:
        """What transformers and vLLM load: the converted folder of a GGUF model (made by
        ``pilotcommit.models.gguf.ensure_converted``), else ``name_or_path``."""
        if self.gguf is None:
            return self.name_or_path
        from pilotcommit.models.fetch import converted_folder

        return str(converted_folder(self.gguf.file, self.gguf.sha256))

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

