"""DAPO dynamic sampling (ALGORITHMS.md, "DAPO"), with scripted rewards."""

from __future__ import annotations

import pytest

from pilotcommit.allocation import DAPOPolicy, PromptStream, RoundsExhaustedError
from pilotcommit.allocation.base import is_zero_variance
from pilotcommit.config import DAPOConfig
from pilotcommit.types import RolloutKind
from tests.unit.allocation_sim import Scorer, exact_rate_scorer, prompt_ids, run_rounds, run_steps


def make(prompts, **overrides) -> DAPOPolicy:
    values = dict(n=4, train_batch_size=3, gen_batch_size=6, max_num_gen_batches=10)
    values.update(overrides)
    return DAPOPolicy(DAPOConfig(**values), prompts, seed=0)


def test_zero_variance_groups_are_dropped_and_the_surplus_of_the_last_round_discarded():
    ids = prompt_ids(12)
    order = PromptStream(ids, seed=0)._order  # epoch 0's order: place prompts in rounds
    rates = {p: 0.0 for p in ids}
    # round 1 = order[0:6]: one informative, one all correct; round 2: four informative
    rates.update({order[0]: 0.5, order[1]: 1.0, order[6]: 0.25, order[7]: 0.5, order[9]: 0.75})
    rates[order[11]] = 0.5
    policy = make(ids)
    records = run_rounds(policy, exact_rate_scorer(rates), 2)
    assert records[0].batch is None
    batch = records[1].batch
    # kept in arrival order until full: order[0] from round 1, then the first two of round 2
    assert [g.prompt_id for g in batch.groups] == [order[0], order[6], order[7]]
    assert all(not is_zero_variance(g.rewards) for g in batch.groups)
    m = batch.metrics
    assert m["alloc/dropped_groups"] == 12 - 5  # zero variance: never trained on
    assert m["alloc/discarded_groups"] == 2  # order[9], order[11]: kept but surplus
    assert (m["alloc/informative"], m["alloc/too_easy"], m["alloc/too_hard"]) == (5, 1, 6)
    # every generated rollout counts toward the budget, dropped and discarded included
    assert m["rollouts/sampled"] == m["rollouts/cumulative"] == 2 * 6 * 4
    assert m["rollouts/uniform"] == 2 * 6 * 4 and m["rollouts/pilot"] == m["rollouts/commit"] == 0
    assert m["rollouts/trained"] == 3 * 4
    assert m["alloc/rounds"] == 2
    assert m["reward/zero_variance_groups"] == 0


def test_the_surplus_is_not_carried_into_the_next_step():
    rates = {p: 0.5 for p in prompt_ids(60)}
    policy = make(list(rates))
    records = run_rounds(policy, exact_rate_scorer(rates), 3)
    for record in records:  # every round fills a batch from its own first 3 groups
        assert record.batch is not None
        assert [g.prompt_id for g in record.batch.groups] == record.prompt_ids(RolloutKind.UNIFORM)[
            :3
        ]
        assert record.batch.metrics["alloc/discarded_groups"] == 3
    assert policy.kept == []


def test_rounds_exhausted_error_says_why_and_what_to_change():
    rates = {p: (0.0 if i % 2 else 1.0) for i, p in enumerate(prompt_ids(40))}
    rates["p000"] = 0.5  # a single informative group: the batch of 3 can never fill
    policy = make(list(rates), max_num_gen_batches=4, gen_batch_size=5)
    score = exact_rate_scorer(rates)
    for _ in range(3):
        assert policy.observe(score(policy.plan())) is None
    with pytest.raises(RoundsExhaustedError) as info:
        policy.observe(score(policy.plan()))
    message = str(info.value)
    kept = 1 if "p000" in policy.stream._order[:20] else 0
    assert f"only {kept} of 3 groups" in message
    assert "max_num_gen_batches=4" in message and "rounds of 5 prompts" in message
    assert "too hard or too easy" in message
    assert "Raise max_num_gen_batches or gen_batch_size" in message
    assert policy.counters.rounds == 4
    assert policy.cumulative_sampled == 4 * 5 * 4  # the failed step's rollouts were spent


def test_partial_batch_carries_over_an_epoch_boundary():
    rates = {p: 0.5 for p in prompt_ids(5)}
    policy = make(list(rates), train_batch_size=5, gen_batch_size=2)  # 2 rounds per epoch
    records = run_steps(policy, exact_rate_scorer(rates), 1)
    assert [r.epoch for r in records] == [0, 0, 1]  # 2 + 2 kept in epoch 0, then 2 more
    batch = records[-1].batch
    assert len(batch.groups) == 5 and batch.metrics["alloc/discarded_groups"] == 1
    epoch0 = records[0].prompt_ids(RolloutKind.UNIFORM) + records[1].prompt_ids(RolloutKind.UNIFORM)
    assert [g.prompt_id for g in batch.groups][:4] == epoch0


def test_bernoulli_run_keeps_only_informative_groups_over_many_steps():
    rates = {p: r for p, r in zip(prompt_ids(50), [0.0, 0.2, 0.5, 0.8, 1.0] * 10)}
    policy = make(list(rates), n=6, train_batch_size=4, gen_batch_size=12)
    records = run_steps(policy, Scorer(rates, seed=5), 10)
    for record in records:
        if record.batch is not None:
            assert len(record.batch.groups) == 4
            assert all(not is_zero_variance(g.rewards) for g in record.batch.groups)
            assert all(rates[g.prompt_id] not in (0.0, 1.0) for g in record.batch.groups)


def test_zero_variance_filter_reads_accuracy_not_the_penalised_reward():
    """Groups whose accuracy is all 0 or all 1 are dropped even when overlong penalties make
    their shaped rewards differ (the reference filters on ``acc``); a mixed group is kept."""
    from pilotcommit.types import RequestResult
    from tests.unit.allocation_sim import make_rollout

    correct = {"p000": 0.0, "p001": 1.0, "p002": 0.5, "p003": 0.5}

    def score(requests):
        results = []
        for req in requests:
            rate = correct[req.prompt_id]
            values = [1.0 if i < rate * req.count else 0.0 for i in range(req.count)]
            penalties = [-0.5 * (i % 2) for i in range(req.count)]  # every 2nd one overlong
            results.append(
                RequestResult(req, [make_rollout(req, c + p, correct=c) for c, p in zip(values, penalties)])
            )
        return results

    policy = DAPOPolicy(
        DAPOConfig(n=4, train_batch_size=2, gen_batch_size=4, max_num_gen_batches=2),
        prompt_ids(4), seed=0,
    )
    batch = policy.observe(score(policy.plan()))
    assert batch is not None
    assert sorted(g.prompt_id for g in batch.groups) == ["p002", "p003"]
    m = batch.metrics
    assert (m["alloc/dropped_groups"], m["alloc/too_hard"], m["alloc/too_easy"]) == (2, 1, 1)
    # the learner still gets the shaped rewards
    assert sorted(batch.groups[0].rewards) == [-0.5, 0.0, 0.5, 1.0]
    assert m["reward/accuracy_mean"] == 0.5 and m["reward/mean"] == 0.25
