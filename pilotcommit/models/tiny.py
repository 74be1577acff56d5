"""A tiny random-initialised ``Qwen2ForCausalLM`` for the embedded task.

Same architecture class as the paper's Qwen models, so the rollout engines and
the learner handle the embedded default and the real models through one code
path; only the sizes differ. Initialisation is seeded and does not disturb the
caller's global torch RNG.

It deliberately does not train (``warm_start``) or load hub checkpoints.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from pilotcommit.config import TinyModelConfig


def tiny_qwen2_config(spec: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen2Config:
    """The ``Qwen2Config`` for ``spec`` with the tokenizer's vocabulary and special ids."""
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=spec.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )


def build_tiny_model(
    spec: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int
) -> Qwen2ForCausalLM:
    """A freshly initialised model; the same ``seed`` gives the same weights."""
    config = tiny_qwen2_config(spec, tokenizer)
    # fork_rng: seeding must not leak into the caller's sampling streams
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
