"""Group-normalised advantages (pilotcommit/learner/advantages.py): hand cases and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotcommit.learner import group_advantages


def test_hand_case_sample_std():
    # mean 0.5, sample std sqrt(1/3) -> 0.5 / 0.5774 = 0.866
    advantages_N = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 0, 0]))
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(
        advantages_N, torch.tensor([expected, -expected, -expected, expected])
    )
    assert advantages_N[0].item() == pytest.approx(0.866, abs=1e-3)


def test_hand_case_pass_rate_one_quarter():
    # p = 1/4 of G = 4: sample std = sqrt(0.75 * 0.25 * 4 / 3) = 0.5
    advantages_N = group_advantages(
        torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long)
    )
    torch.testing.assert_close(
        advantages_N, torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6)
    )


def test_equal_rewards_give_exactly_zero():
    rewards_N = torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 0.0, 0.0, 7.0])
    group_ids_N = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])  # group 3 has one rollout
    advantages_N = group_advantages(rewards_N, group_ids_N)
    assert torch.equal(advantages_N, torch.zeros(8))
    assert torch.equal(
        group_advantages(rewards_N, group_ids_N, std_normalize=False), torch.zeros(8)
    )


def test_no_std_variant_is_the_centred_reward():
    rewards_N = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0])
    group_ids_N = torch.tensor([5, 5, 5, 5, 9, 9])
    advantages_N = group_advantages(rewards_N, group_ids_N, std_normalize=False)
    torch.testing.assert_close(advantages_N, torch.tensor([0.75, -0.25, -0.25, -0.25, -1.0, 1.0]))


def test_non_contiguous_unsorted_group_ids_match_per_group_computation():
    rewards_N = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    group_ids_N = torch.tensor([42, 7, 42, 7, 42, 7, 1000])  # interleaved, gaps, unsorted
    advantages_N = group_advantages(rewards_N, group_ids_N)
    for gid in (42, 7):
        members = group_ids_N == gid
        group_rewards = rewards_N[members]
        expected = (group_rewards - group_rewards.mean()) / (group_rewards.std() + 1e-6)
        torch.testing.assert_close(advantages_N[members], expected)
    assert advantages_N[-1].item() == 0.0


def test_eps_and_dtype():
    rewards_N = torch.tensor([1.0, 0.0], dtype=torch.float64)
    advantages_N = group_advantages(rewards_N, torch.tensor([0, 0]), eps=0.5)
    std = math.sqrt(0.5)
    torch.testing.assert_close(
        advantages_N, torch.tensor([0.5 / (std + 0.5), -0.5 / (std + 0.5)], dtype=torch.float64)
    )
    assert group_advantages(rewards_N.float(), torch.tensor([0, 0])).dtype == torch.float32


def test_bad_inputs():
    with pytest.raises(ValueError, match="equal length"):
        group_advantages(torch.zeros(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"non-finite rewards at positions \[1\]"):
        group_advantages(torch.tensor([0.0, math.nan]), torch.zeros(2, dtype=torch.long))
    assert group_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long)).numel() == 0


groups_strategy = st.lists(
    st.lists(st.sampled_from([0.0, 1.0, 0.5, -1.0, 0.1]), min_size=1, max_size=12),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(groups=groups_strategy, std_normalize=st.booleans(), perm_seed=st.integers(0, 2**16))
def test_property_zero_sum_per_group_and_zero_for_constant_groups(groups, std_normalize, perm_seed):
    rewards = [r for g in groups for r in g]
    ids = [gid * 3 + 1 for gid, g in enumerate(groups) for _ in g]  # non-contiguous ids
    order = torch.randperm(len(rewards), generator=torch.Generator().manual_seed(perm_seed))
    rewards_N = torch.tensor(rewards, dtype=torch.float64)[order]
    group_ids_N = torch.tensor(ids)[order]
    advantages_N = group_advantages(rewards_N, group_ids_N, std_normalize=std_normalize)

    for gid in group_ids_N.unique():
        members = group_ids_N == gid
        group_rewards_G = rewards_N[members]
        assert abs(advantages_N[members].sum().item()) < 1e-9
        if bool((group_rewards_G == group_rewards_G[0]).all()):
            assert bool((advantages_N[members] == 0).all())
        else:
            # higher reward, higher advantage, within the group
            top = advantages_N[members][group_rewards_G.argmax()]
            bottom = advantages_N[members][group_rewards_G.argmin()]
            assert top > 0 > bottom


@settings(max_examples=100, deadline=None)
@given(group_size=st.integers(2, 128), correct=st.integers(1, 127))
def test_property_binary_rewards_match_the_closed_form(group_size, correct):
    # ALGORITHMS.md "Why variance": magnitudes sqrt((1-p)/p) and sqrt(p/(1-p)), here with the
    # sample std (factor sqrt((G-1)/G)), so the summed magnitude is 2G sqrt(p(1-p)) * that factor
    if correct >= group_size:
        correct = group_size - 1
    p = correct / group_size
    rewards_N = torch.tensor([1.0] * correct + [0.0] * (group_size - correct), dtype=torch.float64)
    advantages_N = group_advantages(rewards_N, torch.zeros(group_size, dtype=torch.long), eps=1e-12)
    bessel = math.sqrt((group_size - 1) / group_size)
    assert advantages_N[0].item() == pytest.approx(math.sqrt((1 - p) / p) * bessel, rel=1e-9)
    assert advantages_N[-1].item() == pytest.approx(-math.sqrt(p / (1 - p)) * bessel, rel=1e-9)
    assert advantages_N.abs().sum().item() == pytest.approx(
        2 * group_size * math.sqrt(p * (1 - p)) * bessel, rel=1e-9
    )
