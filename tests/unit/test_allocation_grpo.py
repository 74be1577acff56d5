"""GRPO uniform allocation (ALGORITHMS.md, "GRPO"), with scripted rewards."""

from __future__ import annotations

import pytest

from pilotcommit.allocation import AllocationError, GRPOPolicy
from pilotcommit.config import GRPOConfig
from pilotcommit.types import RolloutKind
from tests.unit.allocation_sim import exact_rate_scorer, prompt_ids, run_rounds


def test_one_round_per_step_and_every_group_trained_on_including_zero_variance():
    rates = {p: r for p, r in zip(prompt_ids(12), [0.0, 0.5, 1.0] * 4)}
    policy = GRPOPolicy(GRPOConfig(n=4, train_batch_size=6), list(rates), seed=0)
    records = run_rounds(policy, exact_rate_scorer(rates), 4)  # two epochs of two steps
    for i, record in enumerate(records):
        assert record.batch is not None and record.batch.step == i
        assert all(r.kind is RolloutKind.UNIFORM and r.count == 4 for r in record.plan)
        assert [g.prompt_id for g in record.batch.groups] == record.prompt_ids(RolloutKind.UNIFORM)
        m = record.batch.metrics
        assert m["rollouts/sampled"] == m["rollouts/trained"] == m["rollouts/uniform"] == 24
        assert m["rollouts/cumulative"] == 24 * (i + 1)
        assert m["alloc/rounds"] == 1
        zero_variance = sum(rates[g.prompt_id] in (0.0, 1.0) for g in record.batch.groups)
        assert m["reward/zero_variance_groups"] == zero_variance
        assert m["alloc/informative"] == 6 - zero_variance
    assert [r.epoch for r in records] == [0, 0, 1, 1]


def test_batch_larger_than_the_data_fails_clearly():
    policy = GRPOPolicy(GRPOConfig(n=2, train_batch_size=5), prompt_ids(4), seed=0)
    with pytest.raises(AllocationError, match="needs 5 prompts but the training set has only 4"):
        policy.plan()
