"""Packed micro-batches: the learner's sequences concatenated into one row, no padding.

A padded micro-batch is ``[B, T_max]``: every row costs as much as the longest. With the
long-tailed completion lengths of chain-of-thought RL (most responses far shorter than the
longest of their batch) most of those positions are padding, and every one of them goes
through every layer forward and backward. A packed micro-batch is ``[1, sum of lengths]``:

- the sequences' tokens one after another, no padding anywhere;
- position ids that restart at 0 for every sequence (RoPE sees each sequence as if alone);
- attention that cannot cross sequences: causal attention *inside* each sequence only.

How the attention is kept inside each sequence depends on the model's attention
implementation (checked on transformers 5.24's Qwen2 and Qwen3, tests/unit/test_packing.py):

- ``sdpa`` (the default, and the one on CPU): transformers *does* honour restarting
  ``position_ids`` when no 2-D attention mask and no cache are passed (``masking_utils.
  find_packed_sequence_indices`` turns the restarts into sequence ids and ``create_causal_mask``
  ANDs a same-sequence mask onto the causal one), but it builds that mask as a dense
  ``[1, 1, T, T]`` tensor and the kernel computes the full ``T x T`` scores, then masks them:
  attention work grows with the square of the packed row, which on a small model at long
  lengths is more than the padding saved. So a packing learner switches a ``sdpa`` model to
  :func:`varlen_sdpa_attention` (registered in transformers' ``AttentionInterface``;
  :func:`enable_packed_attention`): with the sequence boundaries ``cu_seq_lens_q`` that the
  learner passes with a packed forward, one causal ``scaled_dot_product_attention`` per
  sequence (the work is ``sum(L_i^2)``, as a varlen flash kernel's); without them, exactly
  transformers' sdpa (generation and evaluation are unchanged).
- ``flash_attention_2`` / ``_3``: transformers' own varlen path reads the same
  ``cu_seq_lens_q/k`` and ``max_length_q/k`` keyword arguments; nothing is switched.
- anything else (``eager``, ``flex_attention``): transformers' packed mask from the position
  ids (correct; the dense cost above).

A packed forward therefore passes **no attention mask** (``attention_mask=None``) under every
implementation, with the restarting position ids and the boundaries (:func:`packed_forward_kwargs`).
A per-layer-type mask mapping (a dict, which Qwen2/Qwen3 take as already prepared masks) is not an
option: Llama's model forward has no such branch and hands the dict to ``create_causal_mask``
(transformers 5.19 and 5.25: ``AttributeError: 'dict' object has no attribute 'ndim'``). So that
the varlen implementation still builds no ``[T, T]`` mask, its *mask* function
(:func:`varlen_sdpa_mask`, registered in ``AttentionMaskInterface``) returns no mask for a
cache-free call without a 2-D mask: the call is either plain causal or packed, and
:func:`varlen_sdpa_attention` keeps it causal inside each sequence, from ``cu_seq_lens_q`` or,
when a caller passed only restarting position ids, from those. Every other call (a padding mask,
a cache offset, a sliding window, extra mask functions) gets exactly ``sdpa_mask``.

The maths is pure (:func:`pack_sequences`, :func:`token_budget_micro_batches`); the only state
touched is the model config's ``_attn_implementation`` (:func:`enable_packed_attention`).
Known limit: the varlen kernel treats a sliding-window layer as full causal attention inside each
packed sequence (the window is not applied).

Not here: which rows are trained or the normaliser (``update.py``), the log-probs of the
completion positions (``logprobs.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

VARLEN_SDPA = "pilotcommit_varlen_sdpa"


@dataclass(frozen=True)
class PackedRow:
    """Sequences of a micro-batch concatenated without padding (``T = sum of lengths``)."""

    input_ids_1T: Tensor
    position_ids_1T: Tensor  # restart at 0 for every sequence
    # completion_mask_1T[0, t] = 1 where token t+1 is a completion token of the SAME sequence as
    # token t (the last position of a sequence predicts the next sequence's first token: never set)
    completion_mask_1T: Tensor
    cu_seq_lens_S: Tensor  # int32 [num_sequences + 1]: sequence s is tokens cu[s]:cu[s+1]
    max_length: int

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids_1T.shape[1])


def pack_sequences(input_ids_BT: Tensor, attention_mask_BT: Tensor, completion_mask_BT: Tensor) -> PackedRow:
    """Concatenate the right-padded rows of a micro-batch into one row.

    ``completion_mask_BT`` is ``[B, T-1]`` aligned with the targets (as in ``update.PackedBatch``).
    The completion positions of the packed row come out in the same order as
    ``completion_mask_BT.bool()`` selects them row-major, so log-probs computed on the packed
    row scatter back into the padded layout with ``masked_scatter``.
    """
    if attention_mask_BT.shape != input_ids_BT.shape or completion_mask_BT.shape != (
        input_ids_BT.shape[0], input_ids_BT.shape[1] - 1
    ):
        raise ValueError(
            f"pack_sequences: ids {tuple(input_ids_BT.shape)}, attention mask "
            f"{tuple(attention_mask_BT.shape)} and completion mask {tuple(completion_mask_BT.shape)} "
            "must be [B, T], [B, T] and [B, T-1]"
        )
    lengths_B = attention_mask_BT.sum(dim=1)
    width = input_ids_BT.shape[1]
    # right padding only: every row's tokens are its first `length` positions
    if not bool((attention_mask_BT == (torch.arange(width, device=lengths_B.device) < lengths_B[:, None])).all()):
        raise ValueError("pack_sequences: the attention mask must be right padding (ones, then zeros)")
    if int(lengths_B.max()) < 1:
        raise ValueError("pack_sequences: no row holds a token")
    keep_BT = attention_mask_BT.bool()
    input_ids_1T = input_ids_BT[keep_BT].unsqueeze(0)
    positions_BT = torch.arange(width, device=input_ids_BT.device).expand_as(input_ids_BT)
    position_ids_1T = positions_BT[keep_BT].unsqueeze(0)
    # the target mask of row b covers its positions 0..length-2; append one 0 for its last token
    # (which predicts nothing of its own sequence), then select the row's `length` positions
    target_BT = torch.cat([completion_mask_BT, torch.zeros_like(completion_mask_BT[:, :1])], dim=1)
    completion_1T = target_BT[keep_BT].unsqueeze(0)[:, :-1]
    # an empty row (a rollout without completion tokens, as update.pack_batch leaves it) adds no
    # token and no segment
    lengths_S = lengths_B[lengths_B > 0]
    cu_seq_lens_S = torch.zeros(len(lengths_S) + 1, dtype=torch.int32, device=input_ids_BT.device)
    cu_seq_lens_S[1:] = lengths_S.cumsum(0)
    return PackedRow(input_ids_1T, position_ids_1T, completion_1T, cu_seq_lens_S, int(lengths_B.max()))


def token_budget_micro_batches(rows_N: Tensor, tokens_N: Tensor, budget: int) -> list[Tensor]:
    """Split ``rows_N`` (in their order) into consecutive micro-batches of at most ``budget``
    tokens each (``tokens_N[i]``: tokens of row ``rows_N[i]``); greedy, order kept.

    Keeping the order (no bin-packing sort) keeps the split a pure function of the seeded
    mini-batch order; with one packed row per micro-batch the only waste is the unfilled tail
    of a micro-batch's budget, which costs nothing (the row is just shorter). A row longer
    than the budget is an error: the budget is the learner's memory bound, and the config check
    (``ExperimentConfig``) rules it out for any sequence the rollout settings can produce.
    """
    if budget < 1:
        raise ValueError(f"token_budget_micro_batches: budget must be >= 1, got {budget}")
    if rows_N.shape != tokens_N.shape:
        raise ValueError("token_budget_micro_batches: rows and token counts must have the same shape")
    micro, start, used = [], 0, 0
    for i, tokens in enumerate(tokens_N.tolist()):
        if tokens > budget:
            raise ValueError(
                f"a sequence of {tokens} tokens (row {int(rows_N[i])}) is longer than "
                f"learner.max_tokens_per_micro_batch={budget}"
            )
        if used + tokens > budget:
            micro.append(rows_N[start:i])
            start, used = i, 0
        used += tokens
    if len(rows_N) > start:
        micro.append(rows_N[start:])
    return micro


def _repeat_kv(x_BHTD: Tensor, groups: int) -> Tensor:
    return x_BHTD if groups == 1 else x_BHTD.repeat_interleave(groups, dim=1)


def varlen_sdpa_attention(
    module: nn.Module,
    query_BHTD: Tensor,
    key_BHTD: Tensor,
    value_BHTD: Tensor,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: Tensor | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """With ``cu_seq_lens_q`` (a packed forward): causal attention inside each packed sequence,
    one ``scaled_dot_product_attention`` per segment, never across. Without it (generation,
    evaluation, padded batches): transformers' own ``sdpa_attention_forward``, unchanged. The
    signature of transformers' attention functions; returns ``[B, T, H, D]``.

    A call without ``cu_seq_lens_q`` and without a mask whose ``position_ids`` restart (rows packed
    by a caller that passed no boundaries: :func:`varlen_sdpa_mask` built no mask for it) takes
    each row's boundaries from its position ids: never attention across sequences."""
    if cu_seq_lens_q is not None:
        if query_BHTD.shape[0] != 1:
            raise ValueError(f"{VARLEN_SDPA}: a packed batch is one row, got {query_BHTD.shape[0]}")
        bounds_B = [cu_seq_lens_q.tolist()]
    elif attention_mask is None:
        bounds_B = _boundaries_from_position_ids(kwargs.get("position_ids"), *query_BHTD.shape[::2])
    else:
        bounds_B = None
    if bounds_B is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query_BHTD, key_BHTD, value_BHTD, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    groups = query_BHTD.shape[1] // key_BHTD.shape[1]
    key_BHTD, value_BHTD = _repeat_kv(key_BHTD, groups), _repeat_kv(value_BHTD, groups)
    rows = [
        torch.cat([
            nn.functional.scaled_dot_product_attention(
                query_BHTD[b : b + 1, :, s:e], key_BHTD[b : b + 1, :, s:e], value_BHTD[b : b + 1, :, s:e],
                dropout_p=dropout, is_causal=True, scale=scaling,
            )
            for s, e in pairwise(bounds)
        ], dim=2)
        for b, bounds in enumerate(bounds_B)
    ]
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def _boundaries_from_position_ids(position_ids: Tensor | None, batch: int, length: int) -> list[list[int]] | None:
    """Each row's sequence boundaries (``cu_seq_lens``) from position ids that restart (a new
    sequence wherever a position is not the previous one + 1, as transformers'
    ``find_packed_sequence_indices``); None when no row restarts or there are no position ids."""
    if position_ids is None or position_ids.shape[-1] != length or length < 2:
        return None
    starts_BT = (position_ids[..., 1:] - position_ids[..., :-1]) != 1
    if not bool(starts_BT.any()):
        return None
    starts_BT = starts_BT.reshape(-1, length - 1).expand(batch, -1)
    return [[0, *(torch.nonzero(row).flatten() + 1).tolist(), length] for row in starts_BT]


def varlen_sdpa_mask(*args, **kwargs):
    """The mask function of :data:`VARLEN_SDPA`: no mask for a cache-free call without a 2-D mask,
    a sliding window or extra mask functions (plain causal, or packed: the kernel keeps it causal
    inside each sequence, module docstring), so no dense ``[T, T]`` mask is built for a packed
    row; anything else exactly transformers' ``sdpa_mask`` (called by keyword, the same
    signature in transformers 5.19 and 5.25)."""
    from transformers.masking_utils import sdpa_mask

    q_offset, kv_offset = kwargs.get("q_offset", 0), kwargs.get("kv_offset", 0)
    if (
        not args
        and kwargs.get("attention_mask") is None
        and kwargs.get("q_length") is not None
        and kwargs.get("q_length") == kwargs.get("kv_length")
        and not torch.is_tensor(q_offset) and q_offset == 0
        and not torch.is_tensor(kv_offset) and kv_offset == 0
        and kwargs.get("local_size") is None
        and not kwargs.get("use_vmap", False)  # or/and mask functions (image tokens and the like)
    ):
        return None
    return sdpa_mask(*args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention)
    # unpacked calls get exactly sdpa's masks (padding, causal) and kernel
    AttentionMaskInterface.register(VARLEN_SDPA, varlen_sdpa_mask)


_register()


def enable_packed_attention(model: nn.Module) -> None:
    """Let a ``sdpa`` model run packed forwards with :func:`varlen_sdpa_attention` (module
    docstring); flash-attention models and others keep theirs.

    Set once, for good, not around each forward: activation checkpointing recomputes the layers
    during backward, outside any forward-time context, and must run the same attention. Every
    call without packed boundaries is handed to transformers' sdpa unchanged (same masks, same
    kernel), so generation and evaluation on the same model are not affected; the setting is
    not saved with the model (transformers does not serialise ``_attn_implementation``).
    """
    if model.config._attn_implementation == "sdpa":
        model.config._attn_implementation = VARLEN_SDPA


def packed_forward_kwargs(model: nn.Module, packed: PackedRow) -> dict:
    """The forward's keyword arguments for a packed row: no cache, the position ids, and the
    sequence boundaries that flash-attention and :func:`varlen_sdpa_attention` read.

    The mask: none, under every implementation and for every model class (module docstring):
    under :func:`varlen_sdpa_attention` the mask function builds none either (the kernel reads the
    boundaries); under any other implementation transformers derives the packed mask from the
    restarting position ids. ``model`` is kept for the signature (the kwargs do not depend on it).
    """
    del model
    return {
        "input_ids": packed.input_ids_1T,
        "position_ids": packed.position_ids_1T,
        "attention_mask": None,
        "use_cache": False,
        "cu_seq_lens_q": packed.cu_seq_lens_S,
        "cu_seq_lens_k": packed.cu_seq_lens_S,
        "max_length_q": packed.max_length,
        "max_length_k": packed.max_length,
    }
