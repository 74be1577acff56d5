"""The sampling maths of the transformers engine: pure tensor functions, no model.

:class:`pilotcommit.rollout.transformers_engine.TransformersEngine` left-pads its prompts
with :func:`left_pad` and draws every new token with :func:`sample_next_tokens`:
inverse-CDF sampling (:func:`inverse_cdf_sample`) with one uniform number per row, drawn
by the caller, from ``log_softmax(logits / temperature)`` restricted to the top-p nucleus,
returning each drawn token's log-probability under that distribution (greedy at
temperature 0, reporting the plain ``log_softmax``: the protocol's convention).

Deliberately not here: drawing the uniform numbers (the engine does, from its own seeded
generator), running the model, KV caches and batching (``rollout.transformers_engine``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-padded ``input_ids_BL`` and ``attention_mask_BL`` (1 on real tokens)."""
    width = max(len(p) for p in prompts)
    input_ids_BL = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask_BL = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            input_ids_BL[row, width - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
            attention_mask_BL[row, width - len(prompt) :] = 1
    return input_ids_BL, attention_mask_BL


def inverse_cdf_sample(cdf_BV: Tensor, uniforms_B: Tensor) -> Tensor:
    """Index ``i`` with ``cdf[i-1] <= u * cdf[-1] < cdf[i]`` per row.

    ``cdf_BV`` is a non-decreasing cumulative sum of non-negative weights (it
    need not end at exactly 1). A zero-weight entry has ``cdf[i] == cdf[i-1]``
    and can never be chosen.
    """
    total_B1 = cdf_BV[:, -1:]
    target_B1 = uniforms_B.to(cdf_BV.dtype).unsqueeze(1) * total_B1
    # u * total can round up to total; the largest float below it still lands
    # on the last entry with non-zero weight
    target_B1 = torch.minimum(target_B1, torch.nextafter(total_B1, torch.zeros_like(total_B1)))
    index_B1 = torch.searchsorted(cdf_BV, target_B1, right=True)
    return index_B1.clamp_(max=cdf_BV.shape[1] - 1).squeeze(1)


def sample_next_tokens(
    logits_BV: Tensor, uniforms_B: Tensor | None, temperature: float, top_p: float
) -> tuple[Tensor, Tensor]:
    """Draw one token per row; return ``(token_ids_B, logprobs_B)``.

    ``logprobs_B`` is the log-probability of each drawn token under the
    distribution sampled from: ``log_softmax(logits / temperature)`` restricted
    to the top-p nucleus and renormalised. The nucleus is the smallest set of
    most likely tokens whose mass reaches ``top_p`` (the most likely token is
    always in it; ties broken towards the lower token id). ``temperature == 0``
    is greedy (argmax, ``uniforms_B`` unused) and reports the plain
    ``log_softmax`` of the chosen token (protocol convention).
    """
    logits_BV = logits_BV.float()
    if temperature == 0.0:
        logp_BV = torch.log_softmax(logits_BV, dim=-1)
        token_ids_B = logp_BV.argmax(dim=-1)
        return token_ids_B, logp_BV.gather(1, token_ids_B.unsqueeze(1)).squeeze(1)
    if uniforms_B is None:
        raise ValueError("sample_next_tokens: sampling at temperature > 0 needs uniforms_B")
    logp_BV = torch.log_softmax(logits_BV / temperature, dim=-1)
    if top_p >= 1.0:
        token_ids_B = inverse_cdf_sample(logp_BV.exp().cumsum(dim=-1), uniforms_B)
        return token_ids_B, logp_BV.gather(1, token_ids_B.unsqueeze(1)).squeeze(1)
    # stable sort: equal probabilities keep id order, so the nucleus is deterministic
    sorted_logp_BV, order_BV = torch.sort(logp_BV, dim=-1, descending=True, stable=True)
    sorted_p_BV = sorted_logp_BV.exp()
    cdf_BV = sorted_p_BV.cumsum(dim=-1)
    # keep a token iff the mass of the more likely ones is still short of top_p
    in_nucleus_BV = (cdf_BV - sorted_p_BV) < top_p
    in_nucleus_BV[:, 0] = True
    nucleus_cdf_BV = torch.where(in_nucleus_BV, sorted_p_BV, 0.0).cumsum(dim=-1)
    rank_B = inverse_cdf_sample(nucleus_cdf_BV, uniforms_B)
    token_ids_B = order_BV.gather(1, rank_B.unsqueeze(1)).squeeze(1)
    logprobs_B = sorted_logp_BV.gather(1, rank_B.unsqueeze(1)).squeeze(1) - torch.log(
        nucleus_cdf_BV[:, -1]
    )
    return token_ids_B, logprobs_B
