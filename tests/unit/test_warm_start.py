"""The supervised warm start: level mix, answer noise, label smoothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pilotcommit.config import ConfigError, TinyModelConfig, WarmStartConfig
from pilotcommit.models.tiny import build_tiny_model
from pilotcommit.models.tokenizer import build_char_tokenizer
from pilotcommit.models.warm_start import (
    answer_loss,
    build_sft_batch,
    corrupt_one_digit,
    encode_examples,
    level_sampling_probabilities,
    train_warm_start,
)

DIGITS = list(range(10, 20))  # stand-in token ids of "0".."9"


@given(st.lists(st.sampled_from(DIGITS + [3, 4]), min_size=1, max_size=8), st.integers(0, 2**32 - 1))
def test_corrupting_changes_exactly_one_digit_to_another_digit(ids, seed):
    out = corrupt_one_digit(ids, DIGITS, np.random.default_rng(seed))
    assert len(out) == len(ids)
    changed = [k for k in range(len(ids)) if out[k] != ids[k]]
    if any(t in DIGITS for t in ids):
        assert len(changed) == 1 and ids[changed[0]] in DIGITS and out[changed[0]] in DIGITS
    else:
        assert changed == []  # nothing to corrupt (e.g. only a sign and EOS)


def test_level_weights_give_the_sampling_probabilities():
    probs = level_sampling_probabilities(np.array([0, 0, 1, 2, 2, 2]), {0: 3, 1: 1})
    np.testing.assert_allclose(probs, [0.375, 0.375, 0.25, 0, 0, 0])


def test_answer_noise_must_be_a_probability():
    with pytest.raises((ValueError, ConfigError), match=r"answer_noise\[3\] = 1.5"):
        WarmStartConfig(answer_noise={3: 1.5})


def _train(**warm_start) -> dict:
    tokenizer = build_char_tokenizer()
    model_cfg = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                                intermediate_size=64, max_positions=32)
    model = build_tiny_model(model_cfg, tokenizer, seed=0)
    frame = pd.DataFrame({"problem": ["12+34=", "5+0=", "7*8=", "90-1="], "answer": ["46", "5", "56", "89"],
                          "level": [3, 0, 5, 4]})
    config = WarmStartConfig(steps=3, batch_size=8, lr=1e-2, warmup_steps=0, **warm_start)
    train_warm_start(model, tokenizer, frame, config)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_answer_noise_changes_training_only_where_it_is_nonzero():
    clean = _train()
    assert all(torch.equal(clean[k], v) for k, v in _train(answer_noise={3: 0.0, 5: 0.0}).items())
    noisy = _train(answer_noise={3: 1.0, 5: 1.0})
    assert any(not torch.equal(clean[k], v) for k, v in noisy.items())


def test_label_smoothing_raises_the_loss_of_a_confident_prediction():
    tokenizer = build_char_tokenizer()
    model_cfg = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                                intermediate_size=64, max_positions=32)
    model = build_tiny_model(model_cfg, tokenizer, seed=0)
    prompts, answers = encode_examples(tokenizer, ["1+1="], ["2"])
    batch = build_sft_batch(prompts, answers, tokenizer.pad_token_id)
    with torch.no_grad():  # make the model confident: scale up its output layer
        model.lm_head.weight.mul_(50.0)
        plain, smoothed = answer_loss(model, batch), answer_loss(model, batch, label_smoothing=0.2)
    assert plain.isfinite() and smoothed.isfinite() and smoothed != plain


def test_per_example_label_smoothing_equals_torchs_when_all_equal():
    tokenizer = build_char_tokenizer()
    model_cfg = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                                intermediate_size=64, max_positions=32)
    model = build_tiny_model(model_cfg, tokenizer, seed=0)
    prompts, answers = encode_examples(tokenizer, ["1+1=", "12*3=", "7-9="], ["2", "36", "-2"])
    batch = build_sft_batch(prompts, answers, tokenizer.pad_token_id)
    with torch.no_grad():
        for eps in (0.0, 0.15):
            torch.testing.assert_close(answer_loss(model, batch, torch.full((3,), eps)), answer_loss(model, batch, eps))
        # per level: the first example unsmoothed, the others smoothed
        mixed = answer_loss(model, batch, torch.tensor([0.0, 0.15, 0.15]))
        assert answer_loss(model, batch, 0.0) != mixed != answer_loss(model, batch, 0.15)


def test_per_level_label_smoothing_config():
    config = WarmStartConfig(label_smoothing={3: 0.1})
    assert config.smoothing_of(3) == 0.1 and config.smoothing_of(0) == 0.0
    assert WarmStartConfig(label_smoothing=0.2).smoothing_of(7) == 0.2
    with pytest.raises((ValueError, ConfigError), match="label_smoothing for 2 = 1.0"):
        WarmStartConfig(label_smoothing={2: 1.0})
