"""Load a policy (model + tokenizer) from a checkpoint directory or a hub name.

The tiny model's warm-start checkpoint and the paper's Qwen models load
through the same ``transformers`` calls; only dtype and attention settings
differ. Remote code is never trusted (``trust_remote_code=False``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from pilotcommit.config import ModelConfig, PretrainedModelConfig

# library progress bars would interleave with the CLI's own progress display
transformers.utils.logging.disable_progress_bar()

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_policy(
    name_or_path: str | Path, model_config: ModelConfig, device: torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    device = device or default_device()
    source = str(name_or_path)
    local = Path(source)
    # a tiny model is always a local directory: a missing one must not be looked up on the hub
    if local.is_absolute() or source.startswith(".") or not isinstance(model_config, PretrainedModelConfig):
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"policy checkpoint not found: {local} has no config.json")
    kwargs: dict = {"trust_remote_code": False}
    if isinstance(model_config, PretrainedModelConfig):
        kwargs.update(
            dtype=_DTYPES[model_config.dtype],
            attn_implementation=model_config.attn_implementation,
            revision=model_config.revision,
        )
    tokenizer = load_tokenizer(source, model_config)
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs).to(device)
    model.eval()
    return model, tokenizer


def load_tokenizer(name_or_path: str | Path, model_config: ModelConfig) -> PreTrainedTokenizerBase:
    """The policy's tokenizer alone (data preparation counts prompt tokens with it)."""
    revision = model_config.revision if isinstance(model_config, PretrainedModelConfig) else None
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=False, revision=revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
