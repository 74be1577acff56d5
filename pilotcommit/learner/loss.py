"""The policy-gradient loss shared by all three methods (ALGORITHMS.md, "Shared learner").

Pure tensor functions: per-token log-probabilities from logits (at the
sampling temperature), the PPO clipped surrogate with asymmetric
("clip-higher") clipping and optional dual-clip (the reference's
``clip_ratio_c=10``), and its diagnostics (clip fraction, approximate KL, mean
ratio). There is no KL penalty and no entropy bonus, as in the paper.

Mini-batching, a deliberate departure from the reference code: every method
gets the same number of optimizer steps per training step
(``LearnerConfig.optimizer_steps_per_batch``, default 1; the batch is split
into that many equal mini-batches). The reference code scales the learner's
mini-batch size by ``n_commit`` (ALGORITHMS.md, "Known quirks"), which gives
Pilot-Commit 6 optimizer steps per training step against 4 for GRPO; the
comparison would then be confounded by the number of updates, not only by
which rollouts are trained on. Within one optimizer step, gradient
accumulation over micro-batches passes ``normalizer`` (the token count, or
the sequence count, of the whole mini-batch) so that the accumulated gradient
equals the gradient of the full mini-batch's loss.

Deliberately not here: advantages (``advantages.py``), the forward pass,
the optimizer, gradient clipping and the micro-batch loop (the learner), and
any knowledge of which allocation policy built the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

LossAggregation = Literal["token_mean", "sequence_mean"]


@dataclass(frozen=True)
class PolicyLossOutput:
    """The loss to back-propagate and its diagnostics (all scalars).

    Diagnostics are over the response tokens of this call only; a learner that
    accumulates micro-batches weights them by ``num_tokens`` to report
    mini-batch values.
    """

    loss: Tensor  # differentiable
    # share of response tokens whose clipped branch was active (ratio outside
    # [1 - eps_low, 1 + eps_high] on the side that matters for the advantage's sign)
    clip_fraction: Tensor
    # share of response tokens whose dual-clip bound was active (negative advantage and
    # ratio > clip_ratio_c); 0 without dual-clip
    dual_clip_fraction: Tensor
    # mean over response tokens of the k3 estimator (ratio - 1) - log(ratio)
    approx_kl: Tensor
    ratio_mean: Tensor
    num_tokens: Tensor  # the mask's sum


def masked_mean(values_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """Mean of ``values_BT`` over the positions where ``mask_BT`` is non-zero.

    Returns 0 for an empty mask (a micro-batch of empty responses must not put
    NaN into the logged metrics). Masked-out positions may hold anything
    finite or not: they are selected away, never multiplied by 0.
    """
    if values_BT.shape != mask_BT.shape:
        raise ValueError(
            f"masked_mean: values {tuple(values_BT.shape)} and mask {tuple(mask_BT.shape)} "
            "must have the same shape"
        )
    keep_BT = mask_BT.bool()
    total = torch.where(keep_BT, values_BT, torch.zeros_like(values_BT)).sum()
    return total / keep_BT.sum().clamp(min=1)


def token_logprobs(logits_BTV: Tensor, target_ids_BT: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Log-probability of each target token under ``softmax(logits / temperature)``.

    Computed in float32 whatever the logits' dtype (bf16 log-probs are too
    coarse for PPO ratios). The logsumexp form is used rather than
    ``log_softmax(...).gather``: it keeps only the [B, T] result for the
    backward pass, where ``log_softmax`` would allocate and save a second full
    [B, T, V] tensor (the float32 upcast of bf16 logits is the only [B, T, V]
    copy made).

    Args:
        logits_BTV: logits predicting each target, shape [B, T, V] (already
            shifted: ``logits_BTV[:, t]`` scores ``target_ids_BT[:, t]``).
        target_ids_BT: integer token ids, shape [B, T], values in [0, V).
        temperature: the sampling temperature, > 0: the log-probs are those of the
            distribution the rollouts were drawn from (as vLLM's processed log-probs and
            verl's actor, which divide the logits by it).

    Returns:
        log-probabilities, float32, shape [B, T].
    """
    if logits_BTV.ndim != 3:
        raise ValueError(
            f"token_logprobs: logits must be [B, T, V], got shape {tuple(logits_BTV.shape)}"
        )
    if target_ids_BT.shape != logits_BTV.shape[:2]:
        raise ValueError(
            f"token_logprobs: targets {tuple(target_ids_BT.shape)} do not match logits "
            f"{tuple(logits_BTV.shape)} (expected [B, T] = {tuple(logits_BTV.shape[:2])})"
        )
    if target_ids_BT.dtype.is_floating_point or target_ids_BT.dtype == torch.bool:
        raise ValueError(f"token_logprobs: target ids must be integers, got {target_ids_BT.dtype}")
    vocab_size = logits_BTV.shape[-1]
    if target_ids_BT.numel() and (
        int(target_ids_BT.min()) < 0 or int(target_ids_BT.max()) >= vocab_size
    ):
        raise ValueError(
            f"token_logprobs: target ids must lie in [0, {vocab_size}), got range "
            f"[{int(target_ids_BT.min())}, {int(target_ids_BT.max())}]"
        )
    if not temperature > 0:
        raise ValueError(f"token_logprobs: temperature must be > 0, got {temperature}")
    logits32_BTV = logits_BTV.float()
    if temperature != 1.0:
        logits32_BTV = logits32_BTV / temperature
    target_logit_BT = logits32_BTV.gather(-1, target_ids_BT.long().unsqueeze(-1)).squeeze(-1)
    return target_logit_BT - torch.logsumexp(logits32_BTV, dim=-1)


def policy_loss(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    advantages_B: Tensor,
    mask_BT: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    clip_ratio_c: float | None = None,
    aggregation: LossAggregation = "token_mean",
    normalizer: float | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate with asymmetric clipping, aggregated over response tokens.

    Per token: ``-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)``
    with ``ratio = exp(logp - old_logp)`` and ``A`` the sequence's advantage.
    With dual-clip (``clip_ratio_c``, verl's ``compute_policy_loss``): for
    ``A < 0`` the token loss is further bounded by ``-clip_ratio_c * A``, i.e.
    ``min(that, -clip_ratio_c * A)``, so a ratio far above 1 on a bad token
    cannot blow up the loss (its gradient is then zero).

    Aggregation:
    - ``token_mean``: sum over all response tokens / their number (or /
      ``normalizer`` when given: the token count of the whole mini-batch that
      this micro-batch belongs to).
    - ``sequence_mean``: mean over sequences of each sequence's token mean;
      sequences without response tokens are ignored (or the sum of the
      per-sequence means / ``normalizer`` when given: the number of sequences
      with response tokens in the whole mini-batch).

    Args:
        logp_BT: log-prob of each response token under the current policy
            (requires grad), shape [B, T].
        old_logp_BT: the same under the policy before the update, shape [B, T];
            treated as a constant (detached).
        advantages_B: one advantage per sequence, shape [B]; broadcast over
            the sequence's tokens; treated as a constant.
        mask_BT: 1 on response tokens, 0 elsewhere (float or bool), [B, T].
        eps_low: lower clip, ratio >= 1 - eps_low; in [0, 1).
        eps_high: upper clip, ratio <= 1 + eps_high; >= 0.
        clip_ratio_c: dual-clip bound for negative advantages, > 1 (None: off).
        aggregation: ``token_mean`` (the paper's) or ``sequence_mean``.
        normalizer: denominator for micro-batch accumulation, > 0.

    Returns:
        :class:`PolicyLossOutput`; an all-empty mask gives a zero loss (still
        connected to the graph) and zero diagnostics.
    """
    if logp_BT.ndim != 2:
        raise ValueError(f"policy_loss: logp_BT must be [B, T], got shape {tuple(logp_BT.shape)}")
    for name, tensor in (("old_logp_BT", old_logp_BT), ("mask_BT", mask_BT)):
        if tensor.shape != logp_BT.shape:
            raise ValueError(
                f"policy_loss: {name} has shape {tuple(tensor.shape)}, expected "
                f"{tuple(logp_BT.shape)} like logp_BT"
            )
    if advantages_B.shape != logp_BT.shape[:1]:
        raise ValueError(
            f"policy_loss: advantages_B has shape {tuple(advantages_B.shape)}, expected "
            f"[{logp_BT.shape[0]}] (one advantage per sequence of logp_BT)"
        )
    if not 0.0 <= eps_low < 1.0:
        raise ValueError(f"policy_loss: eps_low must be in [0, 1), got {eps_low}")
    if eps_high < 0.0:
        raise ValueError(f"policy_loss: eps_high must be >= 0, got {eps_high}")
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(f"policy_loss: clip_ratio_c must be > 1 (or None), got {clip_ratio_c}")
    if aggregation not in ("token_mean", "sequence_mean"):
        raise ValueError(
            f"policy_loss: aggregation must be 'token_mean' or 'sequence_mean', got {aggregation!r}"
        )
    if normalizer is not None and not normalizer > 0:
        raise ValueError(f"policy_loss: normalizer must be > 0, got {normalizer}")

    keep_BT = mask_BT.bool()
    # select rather than multiply: padding may hold -inf log-probs, and inf * 0 is NaN
    log_ratio_BT = torch.where(keep_BT, logp_BT - old_logp_BT.detach(), torch.zeros_like(logp_BT))
    ratio_BT = torch.exp(log_ratio_BT)
    adv_BT = advantages_B.detach().to(ratio_BT.dtype).unsqueeze(1).expand_as(ratio_BT)
    surrogate_BT = ratio_BT * adv_BT
    clipped_surrogate_BT = torch.clamp(ratio_BT, 1.0 - eps_low, 1.0 + eps_high) * adv_BT
    token_loss_BT = -torch.minimum(surrogate_BT, clipped_surrogate_BT)
    if clip_ratio_c is not None:
        dual_bound_BT = -clip_ratio_c * adv_BT
        token_loss_BT = torch.where(
            adv_BT < 0, torch.minimum(token_loss_BT, dual_bound_BT), token_loss_BT
        )
    token_loss_BT = torch.where(keep_BT, token_loss_BT, torch.zeros_like(token_loss_BT))

    tokens_B = keep_BT.sum(dim=1)
    num_tokens = tokens_B.sum()
    if aggregation == "token_mean":
        denominator = normalizer if normalizer is not None else num_tokens.clamp(min=1)
        loss = token_loss_BT.sum() / denominator
    else:
        has_tokens_B = tokens_B > 0
        sequence_loss_B = token_loss_BT.sum(dim=1) / tokens_B.clamp(min=1)  # 0 for empty sequences
        denominator = normalizer if normalizer is not None else has_tokens_B.sum().clamp(min=1)
        loss = sequence_loss_B.sum() / denominator

    with torch.no_grad():
        clipped_BT = ((adv_BT > 0) & (ratio_BT > 1.0 + eps_high)) | (
            (adv_BT < 0) & (ratio_BT < 1.0 - eps_low)
        )
        clip_fraction = masked_mean(clipped_BT.to(ratio_BT.dtype), keep_BT)
        dual_clipped_BT = (
            (adv_BT < 0) & (ratio_BT > clip_ratio_c)
            if clip_ratio_c is not None
            else torch.zeros_like(keep_BT)
        )
        dual_clip_fraction = masked_mean(dual_clipped_BT.to(ratio_BT.dtype), keep_BT)
        approx_kl = masked_mean((ratio_BT - 1.0) - log_ratio_BT, keep_BT)
        ratio_mean = masked_mean(ratio_BT, keep_BT)
    return PolicyLossOutput(
        loss=loss,
        clip_fraction=clip_fraction,
        dual_clip_fraction=dual_clip_fraction,
        approx_kl=approx_kl,
        ratio_mean=ratio_mean,
        num_tokens=num_tokens,
    )
