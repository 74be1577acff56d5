"""The clipped policy-gradient loss and token log-probs (pilotcommit/learner/loss.py).

Hand-computed cases for each branch of the asymmetric clip, the diagnostics,
the two aggregations, the gradient, and micro-batch accumulation with a
normalizer. Tiny CPU tensors, milliseconds.
"""

from __future__ import annotations

import math

import pytest
import torch

from pilotcommit.learner import masked_mean, policy_loss, token_logprobs

EPS_LOW, EPS_HIGH = 0.2, 0.28


def _hand_batch():
    """Five one-token responses (plus a padded slot holding -inf) covering every clip branch.

    (ratio, advantage) -> per-token loss, clipped?, d loss_token / d logp
      (1.5, +1) -> -1.28, clipped (upper), 0
      (0.5, +1) -> -0.50, not clipped, -0.5   (low ratio never clipped for A > 0)
      (1.5, -1) -> +1.50, not clipped, +1.5   (high ratio never clipped for A < 0)
      (0.5, -2) -> +1.60, clipped (lower), 0
      (1.1, +2) -> -2.20, inside the band, -2.2
    """
    ratios = torch.tensor([1.5, 0.5, 1.5, 0.5, 1.1], dtype=torch.float64)
    advantages_B = torch.tensor([1.0, 1.0, -1.0, -2.0, 2.0], dtype=torch.float64)
    old_logp_BT = torch.full((5, 2), -1.0, dtype=torch.float64)
    logp_BT = old_logp_BT.clone()
    logp_BT[:, 0] += torch.log(ratios)
    logp_BT[:, 1] = -math.inf  # padding: must be selected away, not multiplied by 0
    mask_BT = torch.tensor([[1, 0]] * 5, dtype=torch.float32)
    return logp_BT.requires_grad_(True), old_logp_BT, advantages_B, mask_BT, ratios


def test_hand_case_clipping_both_sides_loss_clip_fraction_and_gradient():
    logp_BT, old_logp_BT, advantages_B, mask_BT, ratios = _hand_batch()
    out = policy_loss(
        logp_BT, old_logp_BT, advantages_B, mask_BT, eps_low=EPS_LOW, eps_high=EPS_HIGH
    )

    assert out.loss.item() == pytest.approx((-1.28 - 0.5 + 1.5 + 1.6 - 2.2) / 5)
    assert out.clip_fraction.item() == pytest.approx(2 / 5)
    assert out.num_tokens.item() == 5
    assert out.ratio_mean.item() == pytest.approx(float(ratios.mean()))
    k3 = [(r - 1) - math.log(r) for r in ratios.tolist()]
    assert out.approx_kl.item() == pytest.approx(sum(k3) / 5)
    assert not out.clip_fraction.requires_grad and not out.approx_kl.requires_grad

    out.loss.backward()
    expected = torch.zeros(5, 2, dtype=torch.float64)
    expected[:, 0] = torch.tensor([0.0, -0.5, 1.5, 0.0, -2.2]) / 5
    torch.testing.assert_close(logp_BT.grad, expected)
    assert torch.isfinite(logp_BT.grad).all()


@pytest.mark.parametrize(
    "ratio, advantage, clipped, token_loss",
    [
        (1.5, 1.0, True, -1.28),
        (0.5, 1.0, False, -0.5),
        (1.5, -1.0, False, 1.5),
        (0.5, -1.0, True, 0.8),
        (1.1, -3.0, False, 3.3),
    ],
)
def test_each_clip_branch_loss_and_clip_fraction(ratio, advantage, clipped, token_loss):
    logp_BT = torch.tensor([[math.log(ratio)]], dtype=torch.float64)
    out = policy_loss(
        logp_BT,
        torch.zeros_like(logp_BT),
        torch.tensor([advantage], dtype=torch.float64),
        torch.ones_like(logp_BT),
        eps_low=EPS_LOW,
        eps_high=EPS_HIGH,
    )
    assert out.clip_fraction.item() == (1.0 if clipped else 0.0)
    assert out.loss.item() == pytest.approx(token_loss)


def test_clip_boundaries_are_not_counted_as_clipped():
    # exactly at 1 + eps_high (A > 0) and 1 - eps_low (A < 0) both branches agree
    ratios = torch.tensor([1.0 + EPS_HIGH, 1.0 - EPS_LOW], dtype=torch.float64)
    logp_BT = torch.log(ratios).unsqueeze(1).requires_grad_(True)
    out = policy_loss(
        logp_BT,
        torch.zeros_like(logp_BT),
        torch.tensor([1.0, -1.0], dtype=torch.float64),
        torch.ones_like(logp_BT),
        eps_low=EPS_LOW,
        eps_high=EPS_HIGH,
    )
    assert out.clip_fraction.item() == 0.0


def test_zero_advantage_never_clipped_and_gives_zero_gradient():
    logp_BT = torch.tensor([[0.5, -0.5]], requires_grad=True)
    out = policy_loss(
        logp_BT,
        torch.zeros(1, 2),
        torch.zeros(1),
        torch.ones(1, 2),
        eps_low=EPS_LOW,
        eps_high=EPS_HIGH,
    )
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.clip_fraction.item() == 0.0
    assert torch.equal(logp_BT.grad, torch.zeros(1, 2))


def test_first_update_ratio_one_kl_zero_and_loss_is_minus_token_weighted_advantage():
    torch.manual_seed(0)
    logp_BT = torch.randn(3, 4, requires_grad=True)
    mask_BT = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    advantages_B = torch.tensor([0.5, -1.0, 2.0])
    out = policy_loss(
        logp_BT, logp_BT.detach().clone(), advantages_B, mask_BT, eps_low=EPS_LOW, eps_high=EPS_HIGH
    )
    assert out.approx_kl.item() == 0.0
    assert out.ratio_mean.item() == pytest.approx(1.0)
    assert out.clip_fraction.item() == 0.0
    assert out.loss.item() == pytest.approx(-(3 * 0.5 - 1 * 1.0 + 2 * 2.0) / 6)
    out.loss.backward()
    # d/dlogp of -ratio * A at ratio 1 is -A, divided by the token count
    expected = -advantages_B.unsqueeze(1) * mask_BT.float() / 6
    torch.testing.assert_close(logp_BT.grad, expected)


def test_token_mean_and_sequence_mean_weight_unequal_lengths_differently():
    # sequence 0: one token, A = +1; sequence 1: three tokens, A = -1; ratio 1 -> loss_t = -A
    logp_BT = torch.zeros(2, 3, requires_grad=True)
    mask_BT = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    advantages_B = torch.tensor([1.0, -1.0])
    kwargs = dict(eps_low=EPS_LOW, eps_high=EPS_HIGH)
    token = policy_loss(logp_BT, torch.zeros(2, 3), advantages_B, mask_BT, **kwargs)
    sequence = policy_loss(
        logp_BT, torch.zeros(2, 3), advantages_B, mask_BT, aggregation="sequence_mean", **kwargs
    )
    assert token.loss.item() == pytest.approx((-1 + 3) / 4)  # the long sequence dominates
    assert sequence.loss.item() == pytest.approx((-1 + 1) / 2)  # each sequence counts once
    sequence.loss.backward()
    # the short sequence's single token carries its sequence's whole weight
    torch.testing.assert_close(
        logp_BT.grad, torch.tensor([[-0.5, 0.0, 0.0], [0.5 / 3, 0.5 / 3, 0.5 / 3]])
    )


def test_sequence_mean_ignores_sequences_without_tokens():
    logp_BT = torch.zeros(3, 2, requires_grad=True)
    mask_BT = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    out = policy_loss(
        logp_BT,
        torch.zeros(3, 2),
        torch.tensor([1.0, 5.0, 3.0]),
        mask_BT,
        eps_low=EPS_LOW,
        eps_high=EPS_HIGH,
        aggregation="sequence_mean",
    )
    assert out.loss.item() == pytest.approx(-(1.0 + 3.0) / 2)


def test_empty_mask_gives_zero_loss_connected_to_the_graph():
    logp_BT = torch.zeros(2, 3, requires_grad=True)
    for aggregation in ("token_mean", "sequence_mean"):
        out = policy_loss(
            logp_BT,
            torch.zeros(2, 3),
            torch.ones(2),
            torch.zeros(2, 3),
            eps_low=EPS_LOW,
            eps_high=EPS_HIGH,
            aggregation=aggregation,
        )
        assert out.loss.item() == 0.0 and out.num_tokens.item() == 0
        assert out.clip_fraction.item() == 0.0 and out.approx_kl.item() == 0.0
        out.loss.backward()
        assert torch.equal(logp_BT.grad, torch.zeros(2, 3))


def _random_case(seed: int):
    gen = torch.Generator().manual_seed(seed)
    B, T = 7, 6
    old_logp_BT = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    # ratios spread over [0.5, 1.6] so that both clip sides are exercised
    logp_BT = old_logp_BT + torch.empty(B, T, dtype=torch.float64).uniform_(
        -0.7, 0.5, generator=gen
    )
    lengths = [6, 1, 3, 0, 5, 2, 4]
    mask_BT = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths], dtype=torch.float64)
    advantages_B = torch.randn(B, generator=gen, dtype=torch.float64)
    return logp_BT, old_logp_BT, advantages_B, mask_BT


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_micro_batch_accumulation_with_normalizer_equals_full_batch_gradient(aggregation):
    logp_BT, old_logp_BT, advantages_B, mask_BT = _random_case(seed=3)
    kwargs = dict(eps_low=EPS_LOW, eps_high=EPS_HIGH, aggregation=aggregation)

    full_BT = logp_BT.clone().requires_grad_(True)
    full = policy_loss(full_BT, old_logp_BT, advantages_B, mask_BT, **kwargs)
    full.loss.backward()
    assert 0.0 < full.clip_fraction.item() < 1.0  # the case does exercise clipping

    if aggregation == "token_mean":
        normalizer = float(mask_BT.sum())
    else:
        normalizer = float((mask_BT.sum(dim=1) > 0).sum())
    micro_BT = logp_BT.clone().requires_grad_(True)
    total_loss = 0.0
    for rows in (slice(0, 2), slice(2, 3), slice(3, 7)):
        out = policy_loss(
            micro_BT[rows],
            old_logp_BT[rows],
            advantages_B[rows],
            mask_BT[rows],
            normalizer=normalizer,
            **kwargs,
        )
        out.loss.backward()
        total_loss += out.loss.item()

    assert total_loss == pytest.approx(full.loss.item(), rel=1e-12)
    torch.testing.assert_close(micro_BT.grad, full_BT.grad, rtol=1e-12, atol=1e-14)


def test_micro_batches_without_normalizer_do_not_equal_the_full_batch():
    # guards the test above: the normalizer is what makes accumulation exact
    logp_BT, old_logp_BT, advantages_B, mask_BT = _random_case(seed=3)
    full = policy_loss(
        logp_BT, old_logp_BT, advantages_B, mask_BT, eps_low=EPS_LOW, eps_high=EPS_HIGH
    )
    parts = [
        policy_loss(
            logp_BT[r],
            old_logp_BT[r],
            advantages_B[r],
            mask_BT[r],
            eps_low=EPS_LOW,
            eps_high=EPS_HIGH,
        ).loss.item()
        for r in (slice(0, 2), slice(2, 7))
    ]
    assert sum(parts) != pytest.approx(full.loss.item(), rel=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(old_logp_BT=torch.zeros(2, 4)), "old_logp_BT has shape"),
        (dict(mask_BT=torch.ones(3, 3)), "mask_BT has shape"),
        (dict(advantages_B=torch.zeros(2, 1)), "advantages_B has shape"),
        (dict(advantages_B=torch.zeros(3)), "one advantage per sequence"),
        (dict(logp_BT=torch.zeros(2, 3, 1)), "logp_BT must be [B, T]"),
        (dict(eps_low=1.0), "eps_low"),
        (dict(eps_high=-0.1), "eps_high"),
        (dict(aggregation="sum"), "aggregation"),
        (dict(normalizer=0.0), "normalizer"),
        (dict(clip_ratio_c=1.0), "clip_ratio_c must be > 1"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    args = dict(
        logp_BT=torch.zeros(2, 3),
        old_logp_BT=torch.zeros(2, 3),
        advantages_B=torch.zeros(2),
        mask_BT=torch.ones(2, 3),
        eps_low=EPS_LOW,
        eps_high=EPS_HIGH,
    )
    args.update(change)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        policy_loss(**args)


def test_masked_mean():
    values_BT = torch.tensor([[1.0, 2.0, math.inf], [4.0, math.nan, 6.0]])
    mask_BT = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_mean(values_BT, mask_BT).item() == pytest.approx((1 + 2 + 4 + 6) / 4)
    assert masked_mean(values_BT, torch.zeros(2, 3)).item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        masked_mean(values_BT, torch.ones(3, 2))


def test_token_logprobs_match_log_softmax_and_are_float32():
    gen = torch.Generator().manual_seed(0)
    logits_BTV = torch.randn(2, 5, 11, generator=gen) * 4
    target_ids_BT = torch.randint(0, 11, (2, 5), generator=gen)
    expected_BT = (
        torch.log_softmax(logits_BTV, dim=-1).gather(-1, target_ids_BT.unsqueeze(-1)).squeeze(-1)
    )
    torch.testing.assert_close(token_logprobs(logits_BTV, target_ids_BT), expected_BT)

    bf16_BT = token_logprobs(logits_BTV.bfloat16(), target_ids_BT)
    assert bf16_BT.dtype == torch.float32
    reference_BT = (
        torch.log_softmax(logits_BTV.bfloat16().float(), dim=-1)
        .gather(-1, target_ids_BT.unsqueeze(-1))
        .squeeze(-1)
    )
    torch.testing.assert_close(bf16_BT, reference_BT)


def test_token_logprobs_gradient_is_onehot_minus_softmax():
    logits_BTV = torch.tensor([[[1.0, 2.0, 0.5]]], requires_grad=True)
    token_logprobs(logits_BTV, torch.tensor([[1]])).sum().backward()
    expected = torch.tensor([0.0, 1.0, 0.0]) - torch.softmax(logits_BTV.detach()[0, 0], dim=-1)
    torch.testing.assert_close(logits_BTV.grad[0, 0], expected)


def test_token_logprobs_bad_inputs():
    logits_BTV = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        token_logprobs(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="do not match"):
        token_logprobs(logits_BTV, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        token_logprobs(logits_BTV, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        token_logprobs(logits_BTV, torch.full((2, 3), 4, dtype=torch.long))


# --------------------------------------------------------------------------- dual-clip


@pytest.mark.parametrize(
    "ratio, advantage, token_loss, grad, dual_clipped",
    [
        # A < 0, ratio above c = 3: bounded at -c * A = 3 (verl's clip_ratio_c); no gradient
        (5.0, -1.0, 3.0, 0.0, True),
        (20.0, -0.5, 1.5, 0.0, True),
        # A < 0, ratio below c: the ordinary clipped surrogate, -A * ratio, gradient -A * ratio
        (2.0, -1.0, 2.0, 2.0, False),
        # A < 0, ratio below 1 - eps_low: the lower clip as before (0.8 * 1), no gradient
        (0.5, -1.0, 0.8, 0.0, False),
        # A > 0: dual-clip never applies, even far above c (upper clip: -1.28 * 2)
        (5.0, 2.0, -2.56, 0.0, False),
    ],
)
def test_dual_clip_bounds_the_loss_of_negative_advantages(ratio, advantage, token_loss, grad, dual_clipped):
    logp_BT = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    args = dict(
        old_logp_BT=torch.zeros(1, 1, dtype=torch.float64),
        advantages_B=torch.tensor([advantage], dtype=torch.float64),
        mask_BT=torch.ones(1, 1),
        eps_low=EPS_LOW,
        eps_high=EPS_HIGH,
    )
    out = policy_loss(logp_BT, clip_ratio_c=3.0, **args)
    assert out.loss.item() == pytest.approx(token_loss)
    assert out.dual_clip_fraction.item() == float(dual_clipped)
    out.loss.backward()
    # d loss / d logp = d loss / d ratio * ratio
    assert logp_BT.grad.item() == pytest.approx(grad)
    # without dual-clip, a negative advantage at a large ratio costs -A * ratio
    plain = policy_loss(logp_BT.detach(), **args)
    if advantage < 0 and ratio > 3.0:
        assert plain.loss.item() == pytest.approx(-advantage * ratio)
        assert plain.dual_clip_fraction.item() == 0.0
    else:
        assert plain.loss.item() == pytest.approx(token_loss)


def test_token_logprobs_at_a_temperature_are_of_the_tempered_softmax():
    gen = torch.Generator().manual_seed(1)
    logits_BTV = torch.randn(2, 4, 9, generator=gen) * 3
    target_ids_BT = torch.randint(0, 9, (2, 4), generator=gen)
    expected_BT = (
        torch.log_softmax(logits_BTV / 0.7, dim=-1).gather(-1, target_ids_BT.unsqueeze(-1)).squeeze(-1)
    )
    torch.testing.assert_close(token_logprobs(logits_BTV, target_ids_BT, temperature=0.7), expected_BT)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_logprobs(logits_BTV, target_ids_BT, temperature=0.0)
