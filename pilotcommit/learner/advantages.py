"""Group-normalised advantages (ALGORITHMS.md, "Shared learner").

One scalar per sequence, computed from the rewards of the sequence's group
only. The learner broadcasts it over the sequence's completion tokens.

Deliberately not here: which rollouts form a group (the allocation policy
decides, the group id carries it), reward shaping (the reward functions), and
any per-token advantage (there is no critic).
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(
    rewards_N: Tensor,
    group_ids_N: Tensor,
    *,
    std_normalize: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """Advantage of every rollout relative to the other rollouts of its group.

    ``A_i = (r_i - mean_g) / (std_g + eps)`` with ``std_normalize``; otherwise the
    centred reward ``r_i - mean_g`` (Dr.GRPO-style).

    ``std_g`` is the *sample* standard deviation (Bessel-corrected, divisor
    ``n_g - 1``), as ``torch.std`` in verl's GRPO advantage that the reference
    code uses. With 0/1 rewards it gives slightly smaller magnitudes than the
    population std; e.g. rewards ``[1, 0, 0, 1]`` give ``+-0.866`` rather than
    ``+-1``.

    A group whose rewards are all equal (including a group of one rollout) gets
    advantage exactly 0: it is set explicitly rather than left to floating
    point, because ``mean`` of equal non-dyadic values (e.g. three 0.1) is not
    bit-equal to them and dividing that residue by ``eps`` would give a
    spurious non-zero signal.

    Args:
        rewards_N: rewards, float, shape [N].
        group_ids_N: integer group id of each rollout, shape [N]; ids need not
            be contiguous or sorted.
        std_normalize: divide by the group std (plus ``eps``).
        eps: added to the std before dividing.

    Returns:
        advantages, shape [N], dtype of ``rewards_N`` (computed in float64).
    """
    if rewards_N.ndim != 1 or group_ids_N.shape != rewards_N.shape:
        raise ValueError(
            f"group_advantages: rewards_N and group_ids_N must be 1-D of equal length, got "
            f"shapes {tuple(rewards_N.shape)} and {tuple(group_ids_N.shape)}"
        )
    if not torch.isfinite(rewards_N).all():
        bad = torch.nonzero(~torch.isfinite(rewards_N)).flatten().tolist()
        raise ValueError(f"group_advantages: non-finite rewards at positions {bad[:10]}")
    if rewards_N.numel() == 0:
        return rewards_N.clone()

    rewards64_N = rewards_N.to(torch.float64)
    _, group_index_N = torch.unique(group_ids_N, return_inverse=True)
    num_groups = int(group_index_N.max()) + 1

    def per_group_sum(values_N: Tensor) -> Tensor:  # -> [G]
        return torch.zeros(num_groups, dtype=torch.float64, device=values_N.device).index_add_(
            0, group_index_N, values_N
        )

    count_G = per_group_sum(torch.ones_like(rewards64_N))
    mean_G = per_group_sum(rewards64_N) / count_G
    centred_N = rewards64_N - mean_G[group_index_N]

    blank_G = torch.zeros(num_groups, dtype=torch.float64, device=rewards_N.device)
    max_G = blank_G.scatter_reduce(0, group_index_N, rewards64_N, reduce="amax", include_self=False)
    min_G = blank_G.scatter_reduce(0, group_index_N, rewards64_N, reduce="amin", include_self=False)
    constant_group_N = (max_G == min_G)[group_index_N]

    if std_normalize:
        # sample variance; a group of one is constant and zeroed below, so clamp the divisor
        var_G = per_group_sum(centred_N**2) / (count_G - 1).clamp(min=1)
        advantages_N = centred_N / (var_G.sqrt()[group_index_N] + eps)
    else:
        advantages_N = centred_N
    advantages_N = torch.where(constant_group_N, torch.zeros_like(advantages_N), advantages_N)
    return advantages_N.to(rewards_N.dtype)
