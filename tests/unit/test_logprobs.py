"""Chunked completion-only log-probs (pilotcommit/learner/logprobs.py) against the full-tensor path.

The reference is what the learner did before: the model's ``[B, T, V]`` logits over every
position, then ``token_logprobs`` (float32 ``gather - logsumexp``). The new path must give the
same log-probs at completion positions and the same gradients, in float32 to 1e-5 absolute
(the only difference is the blocking of the vocabulary matmul), and must never build a tensor
with more than ``chunk_size`` rows of vocabulary width.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pilotcommit.config import TinyModelConfig
from pilotcommit.learner.logprobs import completion_logprobs_from_model, selected_token_logprobs
from pilotcommit.learner.loss import token_logprobs
from pilotcommit.models.tiny import build_tiny_model
from pilotcommit.models.tokenizer import build_char_tokenizer

ATOL = 1e-5  # float32; observed differences are ~1e-7

MODEL = TinyModelConfig(
    hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=64,
    max_positions=32, tie_embeddings=False,
)


class _WidestVocabTensor(TorchDispatchMode):
    """Records the largest number of rows of any tensor whose last dimension is the vocabulary
    (the output weight's own transpose ``[H, V]`` and its gradient excepted)."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.max_rows = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if (isinstance(tensor, torch.Tensor) and tensor.ndim >= 2 and tensor.shape[-1] == self.vocab_size
                    and tuple(tensor.shape) != (self.hidden_size, self.vocab_size)):
                self.max_rows = max(self.max_rows, tensor.numel() // self.vocab_size)
        return out


def _batch(vocab_size: int, seed: int = 0):
    """4 rows of 12 tokens: prompts of 3-6 tokens, completions after them, right padding."""
    generator = torch.Generator().manual_seed(seed)
    ids_BT = torch.randint(4, vocab_size, (4, 12), generator=generator)
    attention_BT = torch.ones_like(ids_BT)
    mask_BT = torch.zeros(4, 11)
    for row, (prompt, completion) in enumerate([(3, 8), (6, 2), (4, 5), (5, 0)]):
        mask_BT[row, prompt - 1 : prompt - 1 + completion] = 1.0
        attention_BT[row, prompt + completion :] = 0
    return ids_BT, attention_BT, mask_BT


def _model():
    torch.manual_seed(0)
    return build_tiny_model(MODEL, build_char_tokenizer(), seed=0)


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_selected_logprobs_and_gradients_equal_the_full_softmax(chunk_size):
    generator = torch.Generator().manual_seed(1)
    hidden_NH = torch.randn(10, 16, generator=generator, requires_grad=True)
    weight_VH = torch.randn(50, 16, generator=generator, requires_grad=True)
    targets_N = torch.randint(0, 50, (10,), generator=generator)
    upstream_N = torch.randn(10, generator=generator)

    got_N = selected_token_logprobs(hidden_NH, weight_VH, targets_N, chunk_size=chunk_size)
    (got_N * upstream_N).sum().backward()
    got_grads = hidden_NH.grad.clone(), weight_VH.grad.clone()
    hidden_NH.grad = weight_VH.grad = None

    full_N = torch.log_softmax(hidden_NH @ weight_VH.T, dim=-1).gather(-1, targets_N[:, None])[:, 0]
    (full_N * upstream_N).sum().backward()
    torch.testing.assert_close(got_N, full_N, atol=ATOL, rtol=0)
    torch.testing.assert_close(got_grads[0], hidden_NH.grad, atol=ATOL, rtol=0)
    torch.testing.assert_close(got_grads[1], weight_VH.grad, atol=ATOL, rtol=0)


def test_temperature_divides_the_logits_and_bias_is_added():
    generator = torch.Generator().manual_seed(2)
    hidden_NH, weight_VH = torch.randn(6, 8, generator=generator), torch.randn(30, 8, generator=generator)
    bias_V, targets_N = torch.randn(30, generator=generator), torch.randint(0, 30, (6,), generator=generator)
    got_N = selected_token_logprobs(hidden_NH, weight_VH, targets_N, bias_V=bias_V, chunk_size=4, temperature=0.7)
    logits_NV = (hidden_NH @ weight_VH.T + bias_V) / 0.7
    expected_N = torch.log_softmax(logits_NV, dim=-1).gather(-1, targets_N[:, None])[:, 0]
    torch.testing.assert_close(got_N, expected_N, atol=ATOL, rtol=0)


def test_no_positions_still_gives_the_weight_a_zero_gradient():
    """A micro-batch without completion tokens (a padding micro-batch of a sharded rank) must
    still produce a gradient for every parameter, or ranks would reduce different sets."""
    weight_VH = torch.randn(30, 8, requires_grad=True)
    out_N = selected_token_logprobs(torch.randn(0, 8), weight_VH, torch.zeros(0, dtype=torch.long))
    assert out_N.shape == (0,)
    out_N.sum().backward()
    assert weight_VH.grad is not None and not weight_VH.grad.any()


def test_bad_inputs_are_refused_with_the_reason():
    weight_VH = torch.randn(30, 8)
    with pytest.raises(ValueError, match="must be \\[N, H\\]"):
        selected_token_logprobs(torch.randn(2, 3, 8), weight_VH, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="lie in \\[0, 30\\)"):
        selected_token_logprobs(torch.randn(2, 8), weight_VH, torch.tensor([0, 30]))
    with pytest.raises(ValueError, match="temperature"):
        selected_token_logprobs(torch.randn(2, 8), weight_VH, torch.tensor([0, 1]), temperature=0.0)


def test_model_logprobs_and_parameter_gradients_equal_the_full_logits_path():
    ids_BT, attention_BT, mask_BT = _batch(vocab_size=21)
    upstream_BT = torch.randn(mask_BT.shape, generator=torch.Generator().manual_seed(3))
    model = _model()
    model.train()

    got_BT = completion_logprobs_from_model(model, ids_BT, attention_BT, mask_BT, chunk_size=4)
    (got_BT * upstream_BT * mask_BT).sum().backward()
    got_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    logits_BTV = model(input_ids=ids_BT, attention_mask=attention_BT).logits
    full_BT = token_logprobs(logits_BTV[:, :-1], ids_BT[:, 1:])
    (full_BT * upstream_BT * mask_BT).sum().backward()

    keep = mask_BT.bool()
    torch.testing.assert_close(got_BT[keep], full_BT[keep], atol=ATOL, rtol=0)
    assert not got_BT[~keep].any()  # prompt and padding positions are never scored
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(got_grads[name], parameter.grad, atol=ATOL, rtol=0, msg=name)


def test_no_vocabulary_tensor_wider_than_one_chunk_in_forward_or_backward():
    ids_BT, attention_BT, mask_BT = _batch(vocab_size=21)
    model = _model()
    model.train()
    vocab_size, hidden_size = model.get_output_embeddings().weight.shape
    chunk_size = 3
    saved_for_backward = []

    def pack(tensor):
        saved_for_backward.append(tuple(tensor.shape))
        return tensor

    # tensors autograd keeps between forward and backward (checkpointed chunks keep none of theirs)
    with _WidestVocabTensor(vocab_size, hidden_size) as seen, \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logp_BT = completion_logprobs_from_model(model, ids_BT, attention_BT, mask_BT, chunk_size=chunk_size)
    logp_BT.sum().backward()
    # B x T = 48 positions, 15 of them completion tokens; the full path has 44 rows of logits
    assert 0 < seen.max_rows <= chunk_size
    vocab_wide = [s for s in saved_for_backward if s[-1] == vocab_size and s != (hidden_size, vocab_size)]
    assert saved_for_backward and not vocab_wide
    with _WidestVocabTensor(vocab_size, hidden_size) as full:
        model(input_ids=ids_BT, attention_mask=attention_BT).logits.sum().backward()
    assert full.max_rows == ids_BT.numel()  # the recorder does see the full logits


def test_under_bfloat16_autocast_the_values_match_the_full_path_to_bf16_rounding():
    ids_BT, attention_BT, mask_BT = _batch(vocab_size=21, seed=4)
    model = _model()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got_BT = completion_logprobs_from_model(model, ids_BT, attention_BT, mask_BT, chunk_size=5)
        logits_BTV = model(input_ids=ids_BT, attention_mask=attention_BT).logits
    full_BT = token_logprobs(logits_BTV[:, :-1], ids_BT[:, 1:])
    keep = mask_BT.bool()
    assert got_BT.dtype == torch.float32
    # the same bf16 matmul on the same inputs: identical up to the matmul's blocking
    torch.testing.assert_close(got_BT[keep], full_BT[keep], atol=2e-2, rtol=0)


def test_the_learner_update_scores_in_chunks_only():
    """Learner.update (old log-probs, loss, backward, AdamW) never holds more than one chunk of
    vocabulary-wide rows: the learner goes through the chunked path, not the model's logits."""
    from pilotcommit.config import LearnerConfig
    from pilotcommit.learner.update import Learner
    from tests.unit.test_learner_update import _batch as learner_batch

    model = _model()
    vocab_size, hidden_size = model.get_output_embeddings().weight.shape
    config = LearnerConfig(lr=1e-3, warmup_steps=0, optimizer_steps_per_batch=2, micro_batch_size=4,
                           dtype="float32", logprob_chunk_size=5)
    learner = Learner(model, config, pad_id=build_char_tokenizer().pad_token_id)
    with _WidestVocabTensor(vocab_size, hidden_size) as seen:
        metrics = learner.update(learner_batch(), seed=0)
    assert metrics["learner/trained_sequences"] > 0
    assert 0 < seen.max_rows <= 5
