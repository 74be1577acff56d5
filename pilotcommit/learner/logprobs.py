"""Log-probabilities of the sampled tokens at completion positions, without full-vocabulary tensors.

The learner needs one number per completion token: ``log p(token | prefix)``. Computing it the
direct way (the model's ``[B, T, V]`` logits over every prompt and completion position, upcast
to float32, then ``gather - logsumexp``) makes the vocabulary the memory peak: with Qwen's
151,936-token vocabulary, a micro-batch of 2 x 10,240 tokens has 12 GB of float32 logits, and
autograd keeps about four such copies alive between forward and backward (docs/benchmarks.md,
"Learner memory"). This module does instead:

- only the completion positions (the rows of ``hidden_NH``) are scored: a prompt's positions
  never enter the vocabulary projection;
- those positions go through the output projection ``chunk_size`` rows at a time, each chunk
  under activation checkpointing, so forward and backward hold one chunk's ``[C, V]`` logits at
  a time; backward recomputes them (one extra ``[C, H] x [H, V]`` matmul per chunk);
- the logits are formed in ONE place, :func:`chunk_logits` (projection, optional bias,
  float32 upcast, division by the sampling temperature), so that every caller scores tokens
  under the same distribution.

The arithmetic per token is the same as before (``logit[target] - logsumexp(logits)`` in
float32 on logits produced by the same matmul), so the values equal the full-tensor path's up
to float rounding of the matmul's blocking: 1e-5 absolute in float32 on CPU
(tests/unit/test_logprobs.py).

How the learner reaches the hidden states without a second code path for FSDP: see
:func:`completion_logprobs_from_model` (a pair of hooks on the model's output layer, so the
projection still runs inside the model's own forward, where FSDP2 has gathered its weights).

Not here: the policy loss (``loss.py``), which positions are completion tokens (``update.py``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pilotcommit.learner.packing import pack_sequences, packed_forward_kwargs

DEFAULT_CHUNK_SIZE = 1024


def chunk_logits(hidden_CH: Tensor, weight_VH: Tensor, bias_V: Tensor | None, temperature: float) -> Tensor:
    """The float32 logits ``(hidden @ weight.T + bias) / temperature`` of one chunk, ``[C, V]``.

    The projection runs in the ambient autocast dtype (bf16 compute in the paper configs), the
    upcast and the temperature in float32, as ``token_logprobs`` did on the model's logits.
    """
    logits_CV = nn.functional.linear(hidden_CH, weight_VH, bias_V).float()
    if temperature != 1.0:
        logits_CV = logits_CV / temperature
    return logits_CV


def _chunk_logprobs(
    hidden_CH: Tensor, weight_VH: Tensor, bias_V: Tensor | None, targets_C: Tensor, temperature: float
) -> Tensor:
    logits_CV = chunk_logits(hidden_CH, weight_VH, bias_V, temperature)
    target_logit_C = logits_CV.gather(-1, targets_C.unsqueeze(-1)).squeeze(-1)
    return target_logit_C - torch.logsumexp(logits_CV, dim=-1)


def selected_token_logprobs(
    hidden_NH: Tensor,
    weight_VH: Tensor,
    targets_N: Tensor,
    *,
    bias_V: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
) -> Tensor:
    """``log softmax(hidden @ weight.T / temperature)[target]`` for each of N positions, float32 ``[N]``.

    Args:
        hidden_NH: final hidden states of the positions to score (each predicts its target).
        weight_VH: the output projection (``lm_head.weight``), ``[V, H]``.
        targets_N: the token each position predicts, integers in ``[0, V)``.
        bias_V: the projection's bias, if it has one.
        chunk_size: positions projected at once; the peak is about 4 float32 ``[chunk, V]``
            tensors in backward, whatever N is.
        temperature: the sampling temperature the tokens were drawn at (> 0); 1.0 is the
            plain model distribution.

    With gradients enabled each chunk is checkpointed (only its ``[C, H]`` input is kept for
    backward). N = 0 still runs one empty projection, so the output is connected to
    ``weight_VH`` and every parameter gets a (zero) gradient: sharded ranks must reduce the
    same set of gradients.
    """
    if hidden_NH.ndim != 2 or targets_N.shape != hidden_NH.shape[:1]:
        raise ValueError(
            f"selected_token_logprobs: hidden {tuple(hidden_NH.shape)} must be [N, H] and targets "
            f"{tuple(targets_N.shape)} must be [N]"
        )
    if chunk_size < 1:
        raise ValueError(f"selected_token_logprobs: chunk_size must be >= 1, got {chunk_size}")
    if not temperature > 0.0:
        raise ValueError(f"selected_token_logprobs: temperature must be > 0, got {temperature}")
    vocab_size = weight_VH.shape[0]
    if targets_N.numel() and (int(targets_N.min()) < 0 or int(targets_N.max()) >= vocab_size):
        raise ValueError(
            f"selected_token_logprobs: target ids must lie in [0, {vocab_size}), got range "
            f"[{int(targets_N.min())}, {int(targets_N.max())}]"
        )
    targets_N = targets_N.long()
    recompute = torch.is_grad_enabled()
    pieces = []
    for start in range(0, max(hidden_NH.shape[0], 1), chunk_size):
        args = (hidden_NH[start : start + chunk_size], weight_VH, bias_V,
                targets_N[start : start + chunk_size], temperature)
        if recompute:
            pieces.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(*args))
    return torch.cat(pieces)


@contextmanager
def _output_layer_scores(model: nn.Module, keep_BT: Tensor, targets_N: Tensor, chunk_size: int,
                         temperature: float):
    """While active, the model's output layer returns the log-probs ``[N]`` of ``targets_N`` at
    the positions ``keep_BT`` instead of ``[B, T, V]`` logits.

    A pre-hook takes the ``[B, T, H]`` hidden states and hands the layer an empty slice (so it
    projects nothing); the forward hook replaces the layer's (empty) output by the chunked
    log-probs. Both run inside the model's forward, where FSDP2 has all-gathered the output
    layer's weight and will reduce its gradient: no separate path for the sharded learner.
    """
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise TypeError(
            f"completion log-probs: the output layer of {type(model).__name__} is "
            f"{type(head).__name__}, not nn.Linear"
        )
    stash: dict[str, Tensor] = {}

    def take_hidden(module, args):
        (hidden_BTH,) = args
        if hidden_BTH.ndim != 3 or hidden_BTH.shape[1] != keep_BT.shape[1] + 1:
            raise ValueError(
                f"completion log-probs: the output layer got hidden states {tuple(hidden_BTH.shape)}, "
                f"expected [B, {keep_BT.shape[1] + 1}, H] (every position; logits_to_keep unset)"
            )
        stash["hidden_BTH"] = hidden_BTH
        return (hidden_BTH[:, :0],)

    def score(module, args, output):
        # position t predicts token t + 1: drop the last position, keep the completion ones
        hidden_NH = stash.pop("hidden_BTH")[:, :-1][keep_BT]
        return selected_token_logprobs(hidden_NH, module.weight, targets_N, bias_V=module.bias,
                                       chunk_size=chunk_size, temperature=temperature)

    handles = [head.register_forward_pre_hook(take_hidden), head.register_forward_hook(score)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def completion_logprobs_from_model(
    model: nn.Module,
    input_ids_BT: Tensor,
    attention_mask_BT: Tensor,
    completion_mask_BT: Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
    packed: bool = False,
) -> Tensor:
    """Float32 log-probs ``[B, T-1]`` of ``input_ids_BT[:, 1:]`` under a causal LM, filled where
    ``completion_mask_BT`` (``[B, T-1]``, aligned with the targets) is set and 0 elsewhere.

    ``packed``: run the forward on the rows concatenated into one row without padding
    (``attention_mask_BT`` must be right padding); the same values up to float rounding, with
    no compute on padding (pilotcommit/learner/packing.py; call ``enable_packed_attention`` on a
    sdpa model first, or its attention builds a dense ``[T, T]`` mask).

    Same values as ``token_logprobs(model(...).logits[:, :-1], input_ids_BT[:, 1:])`` at the
    completion positions; no ``[B, T, V]`` tensor is ever made (module docstring).
    """
    keep_BT = completion_mask_BT.bool()
    targets_N = input_ids_BT[:, 1:][keep_BT]
    if packed:
        # one row without padding (pilotcommit/learner/packing.py); its completion positions come
        # out in the row-major order of keep_BT, so they scatter back into the padded layout
        row = pack_sequences(input_ids_BT, attention_mask_BT, completion_mask_BT)
        keep_row = row.completion_mask_1T.bool()
        with _output_layer_scores(model, keep_row, targets_N, chunk_size, temperature):
            logp_N = model(**packed_forward_kwargs(model, row)).logits
    else:
        with _output_layer_scores(model, keep_BT, targets_N, chunk_size, temperature):
            logp_N = model(input_ids=input_ids_BT, attention_mask=attention_mask_BT).logits
    return torch.zeros(keep_BT.shape, dtype=logp_N.dtype, device=logp_N.device).masked_scatter(keep_BT, logp_N)
