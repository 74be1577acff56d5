"""Pilot-Commit, rule by rule (ALGORITHMS.md, "Pilot-Commit", rules 1-8).

No model and no engine: rewards come from the scripted scorers of
``allocation_sim`` (per-prompt pass rates, exact or Bernoulli).
"""

from __future__ import annotations

from fractions import Fraction

import pydantic
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pilotcommit.allocation import PilotCommitPolicy, PromptStream, RoundsExhaustedError
from pilotcommit.config import PilotCommitConfig
from pilotcommit.types import RolloutKind
from tests.unit.allocation_sim import (
    Scorer,
    exact_rate_scorer,
    make_rollout,
    prompt_ids,
    run_rounds,
    run_steps,
    run_until_batch,
)

PILOT, COMMIT = RolloutKind.PILOT, RolloutKind.COMMIT


def make(prompts, **overrides) -> PilotCommitPolicy:
    seed = overrides.pop("seed", 0)
    values = dict(
        n_pilot=8, n_commit=8, train_batch_size=2, gen_batch_size=4, max_num_gen_batches=10
    )
    values.update(overrides)
    return PilotCommitPolicy(PilotCommitConfig(**values), prompts, seed=seed)


# --------------------------------------------------------------------------- rule 4: the pass band


@pytest.mark.parametrize(
    "correct, verdict",
    [
        (0, "too_hard"),
        (1, "informative"),  # p = 1/8 = p_low: inclusive
        (2, "informative"),
        (4, "informative"),
        (6, "informative"),  # p = 6/8 = 1 - p_high: inclusive
        (7, "too_easy"),
        (8, "too_easy"),
    ],
)
def test_inclusive_pass_band_with_eight_pilots(correct, verdict):
    policy = make(prompt_ids(4))
    assert policy.classify(correct / 8) == verdict


def test_a_round_classifies_buffers_defers_and_evicts_by_pilot_pass_rate():
    rates = {f"k{k}": k / 8 for k in range(9)}  # exactly k of 8 pilots correct
    policy = make(list(rates), gen_batch_size=9, train_batch_size=9)
    (record,) = run_rounds(policy, exact_rate_scorer(rates), 1)
    assert sorted(record.prompt_ids(PILOT)) == sorted(rates) and not record.prompt_ids(COMMIT)
    assert sorted(e.prompt_id for e in policy.buffer.entries) == [f"k{k}" for k in range(1, 7)]
    c = policy.counters
    assert (c.informative, c.too_hard, c.too_easy) == (6, 1, 2)
    assert policy.stream.pending_evictions == {"k8"}  # all correct; 7/8 is too easy, not evicted
    # the buffered pilots are the round's own rollouts, tagged with the step being built
    entry = next(e for e in policy.buffer.entries if e.prompt_id == "k3")
    assert (
        entry.step == 0
        and entry.pilots
        == record.results[
            record.plan.index(next(r for r in record.plan if r.prompt_id == "k3"))
        ].rollouts
    )


@settings(max_examples=300, deadline=None)
@given(
    n_pilot=st.integers(1, 256),
    data=st.data(),
    p_low=st.fractions(min_value=0, max_value=1, max_denominator=64),
    p_high=st.fractions(min_value=0, max_value=1, max_denominator=64),
)
def test_property_classification_matches_the_definition(n_pilot, data, p_low, p_high):
    correct = data.draw(st.integers(0, n_pilot))
    try:
        config = PilotCommitConfig(
            n_pilot=n_pilot, n_commit=1, p_low=float(p_low), p_high=float(p_high), p_evict=1.0
        )
    except pydantic.ValidationError:
        assume(False)  # p_low > 1 - p_high: rejected at load, tested in test_method_configs
    p = Fraction(correct, n_pilot)  # exact arithmetic: the definition, not its float rendering
    if p < p_low:
        expected = "too_hard"
    elif p > 1 - p_high:
        expected = "too_easy"
    else:
        expected = "informative"
    policy = PilotCommitPolicy(config, prompt_ids(2), seed=0)
    assert policy.classify(correct / n_pilot) == expected


# --------------------------------------------------------------------------- rule 4: across epochs


def pilots_per_epoch(records) -> dict[int, list[str]]:
    by_epoch: dict[int, list[str]] = {}
    for record in records:
        by_epoch.setdefault(record.epoch, []).extend(record.prompt_ids(PILOT))
    return by_epoch


def epoch_scenario(special_rate: float):
    """12 prompts, 3 rounds per epoch; ``hard`` never solved, ``special`` at the given rate."""
    rates = {p: 0.5 for p in prompt_ids(10)}
    rates["hard"] = 0.0
    rates["special"] = special_rate
    policy = make(list(rates), train_batch_size=3, gen_batch_size=4)
    records = run_rounds(policy, exact_rate_scorer(rates), 3 * 3)  # three epochs of 3 rounds
    return policy, records


def test_too_hard_prompt_is_deferred_not_buffered_and_piloted_again_next_epoch():
    policy, records = epoch_scenario(special_rate=0.5)
    per_epoch = pilots_per_epoch(records)
    assert sorted(per_epoch) == [0, 1, 2]
    for epoch in (0, 1, 2):
        assert per_epoch[epoch].count("hard") == 1
    assert all("hard" not in r.prompt_ids(COMMIT) for r in records)
    # rounds are planned before they are observed: check the buffer right after each round
    rates = {**{p: 0.5 for p in prompt_ids(10)}, "hard": 0.0, "special": 0.5}
    policy = make(list(rates), train_batch_size=3, gen_batch_size=4)
    for _ in range(6):
        run_rounds(policy, exact_rate_scorer(rates), 1)
        assert "hard" not in policy.buffer
    assert "hard" not in policy.stream.evicted | policy.stream.pending_evictions


def test_all_correct_prompt_is_evicted_from_the_next_epoch_on_only():
    evicting_policy, evicting = epoch_scenario(special_rate=1.0)
    keeping_policy, keeping = epoch_scenario(special_rate=7 / 8)  # too easy, not all correct
    evicted_epochs, kept_epochs = pilots_per_epoch(evicting), pilots_per_epoch(keeping)

    # the epoch that saw it all-correct runs in exactly the same order as without eviction
    assert evicted_epochs[0] == kept_epochs[0] and "special" in evicted_epochs[0]
    # from the next epoch on it is gone from the data; 7/8 is only skipped for its epoch
    assert "special" not in evicted_epochs[1] and "special" not in evicted_epochs[2]
    assert kept_epochs[1].count("special") == 1 and kept_epochs[2].count("special") == 1
    assert "special" in evicting_policy.stream.evicted
    assert not keeping_policy.stream.evicted and not keeping_policy.stream.pending_evictions
    assert all("special" not in r.prompt_ids(COMMIT) for r in evicting + keeping)
    # the metric counts it from the moment it is marked
    batches = [r.batch for r in evicting if r.batch is not None]
    assert all(
        b.metrics["alloc/evicted_total"] == 1 for b in batches if b.metrics["alloc/epoch"] > 0
    )


def test_eviction_waits_for_the_epoch_boundary():
    rates = {**{p: 0.5 for p in prompt_ids(11)}, "special": 1.0}
    policy = make(list(rates), train_batch_size=3, gen_batch_size=4)
    score = exact_rate_scorer(rates)
    records = []
    while not any("special" in r.prompt_ids(PILOT) for r in records):
        records += run_rounds(policy, score, 1)
    order_before = list(policy.stream._order)
    assert policy.stream.pending_evictions == {"special"} and not policy.stream.evicted
    assert policy.stream.num_active == 12 and policy.stream._order == order_before
    while policy.stream.epoch == 0:
        records += run_rounds(policy, score, 1)
    assert policy.stream.evicted == {"special"} and not policy.stream.pending_evictions
    assert policy.stream.num_active == 11


# --------------------------------------------------------------------------- rules 2, 4, 5, 6


def test_a_prompt_is_never_committed_in_the_round_that_piloted_it():
    rates = {p: r for p, r in zip(prompt_ids(40), [0.1, 0.3, 0.5, 0.7, 0.9] * 8)}
    policy = make(list(rates), train_batch_size=5, gen_batch_size=8, n_pilot=4, n_commit=4)
    records = run_rounds(policy, Scorer(rates, seed=1), 80)
    commits_seen = 0
    for i, record in enumerate(records):
        committed = set(record.prompt_ids(COMMIT))
        assert not committed & set(record.prompt_ids(PILOT))
        commits_seen += len(committed)
        # every committed prompt was piloted in an earlier round of the same epoch
        earlier = {p for r in records[:i] if r.epoch == record.epoch for p in r.prompt_ids(PILOT)}
        assert committed <= earlier
    assert commits_seen > 50  # the scenario does commit a lot


def test_first_step_needs_at_least_two_rounds():
    rates = {p: 0.5 for p in prompt_ids(16)}
    policy = make(list(rates), train_batch_size=2, gen_batch_size=4)
    batch, plans = run_until_batch(policy, exact_rate_scorer(rates))
    assert len(plans) == 2
    assert all(r.kind is PILOT for r in plans[0])  # the buffer starts empty
    assert [r.kind for r in plans[1]].count(COMMIT) == 2
    assert batch.metrics["alloc/rounds"] == 2


@pytest.mark.parametrize("n_pilot_effective", [None, 3])
def test_groups_are_buffered_pilots_plus_fresh_commits_of_one_prompt(n_pilot_effective):
    rates = {p: r for p, r in zip(prompt_ids(30), [0.25, 0.5, 0.75] * 10)}
    policy = make(
        list(rates),
        train_batch_size=4,
        gen_batch_size=6,
        n_pilot=8,
        n_commit=5,
        n_pilot_effective=n_pilot_effective,
    )
    records = run_steps(policy, Scorer(rates, seed=2), 5)
    pilot_rollouts = {}  # (epoch, prompt) -> its pilot rollouts
    commit_rollouts = {}
    checked_balance = 0
    for record in records:
        for result in record.results:
            key = (record.epoch, result.request.prompt_id)
            target = pilot_rollouts if result.request.kind is PILOT else commit_rollouts
            target[key] = result.rollouts
        if record.batch is None:
            continue
        pilots_in_group = 8 if n_pilot_effective is None else 3
        assert len(record.batch.groups) == 4
        assert [g.group_id for g in record.batch.groups] == [0, 1, 2, 3]
        for group in record.batch.groups:
            key = (record.epoch, group.prompt_id)
            assert len(group.rollouts) == pilots_in_group + 5
            assert {r.prompt_id for r in group.rollouts} == {group.prompt_id}
            pilots, commits = group.rollouts[:pilots_in_group], group.rollouts[pilots_in_group:]
            assert all(r.kind is PILOT for r in pilots) and all(r.kind is COMMIT for r in commits)
            assert all(any(p is q for q in pilot_rollouts[key]) for p in pilots)  # the same objects
            assert all(c is d for c, d in zip(commits, commit_rollouts[key]))
            if n_pilot_effective is not None:
                # balanced: as many correct as the supply allows up to half (rounded down), the
                # rest wrong; i.e. the largest accuracy variance any 3 of the 8 pilots have
                available = sum(r.correct for r in pilot_rollouts[key])
                kept = sum(r.correct for r in pilots)
                feasible = range(max(0, 3 - int(8 - available)), min(3, int(available)) + 1)
                assert kept == max(feasible, key=lambda k: (k * (3 - k), -k))
                checked_balance += 1
    assert checked_balance == (0 if n_pilot_effective is None else 5 * 4)


def test_commit_takes_only_what_the_batch_still_needs():
    rates = {p: 0.5 for p in prompt_ids(40)}
    policy = make(list(rates), train_batch_size=3, gen_batch_size=8)
    records = run_rounds(policy, exact_rate_scorer(rates), 2)
    # round 1 buffered 8 informative prompts; round 2 commits only the 3 the batch needs
    assert len(records[1].prompt_ids(COMMIT)) == 3 and records[1].batch is not None
    assert len(policy.buffer) == 5 + 8


@pytest.mark.parametrize("max_off_steps", [0, 2])
def test_stale_entries_are_never_committed_after_max_off_steps(max_off_steps):
    # many informative prompts per round, few commits per step: the buffer overflows and ages
    rates = {p: 0.5 for p in prompt_ids(400)}
    policy = make(
        list(rates),
        train_batch_size=2,
        gen_batch_size=6,
        n_pilot=4,
        n_commit=4,
        max_off_steps=max_off_steps,
        buffer_sampling="random",
    )
    records = run_steps(policy, exact_rate_scorer(rates), 40)
    piloted_at = {}
    staleness_seen = []
    flushed = 0
    for record in records:
        for prompt in record.prompt_ids(PILOT):
            piloted_at[(record.epoch, prompt)] = record.step
        if record.batch is None:
            continue
        flushed += record.batch.metrics["alloc/stale_flushed"]
        for group in record.batch.groups:
            age = record.batch.step - piloted_at[(record.epoch, group.prompt_id)]
            assert 0 <= age <= max_off_steps
            assert group.staleness == age
            staleness_seen.append(age)
    for entry in policy.buffer.entries:  # what survives the last flush is young enough too
        assert policy.step - entry.step <= max_off_steps
    assert flushed > 0  # entries did go stale
    assert max(staleness_seen) == max_off_steps  # the limit is reached, not just respected


# --------------------------------------------------------------------------- rule 6: exhaustion


def test_no_informative_prompt_raises_rounds_exhausted_with_advice():
    rates = {p: 0.0 for p in prompt_ids(20)}
    policy = make(list(rates), train_batch_size=2, gen_batch_size=4, max_num_gen_batches=3)
    score = exact_rate_scorer(rates)
    for _ in range(2):
        assert policy.observe(score(policy.plan())) is None
    with pytest.raises(RoundsExhaustedError) as info:
        policy.observe(score(policy.plan()))
    message = str(info.value)
    assert "0 of 2 groups" in message
    assert "max_num_gen_batches=3" in message
    assert "12 too hard" in message  # says why: 3 rounds of 4 prompts, all too hard
    assert "Raise max_num_gen_batches" in message and "p_low" in message


def test_all_too_easy_raises_rounds_exhausted_too():
    rates = {p: 1.0 for p in prompt_ids(20)}
    policy = make(list(rates), gen_batch_size=4, max_num_gen_batches=2)
    with pytest.raises(RoundsExhaustedError, match="8 too easy"):
        run_rounds(policy, exact_rate_scorer(rates), 2)


# --------------------------------------------------------------------------- rule 8: epoch end


def test_epoch_end_empties_buffer_discards_partial_batch_and_applies_evictions():
    ids = prompt_ids(20)  # 5 rounds of 4 per epoch
    order = PromptStream(ids, seed=0)._order  # epoch 0's order, to place prompts in rounds
    # epoch 0: two informative prompts in round 1 (committed in round 2, a partial batch of 2),
    # one in round 5 (still buffered at the epoch's end), one all-correct; the rest too hard
    rates = {p: 0.0 for p in ids}
    rates.update({order[0]: 0.5, order[1]: 0.5, order[19]: 0.5, order[5]: 1.0})
    policy = make(ids, train_batch_size=3, gen_batch_size=4)
    score = exact_rate_scorer(rates)  # reads ``rates`` at call time
    records = run_rounds(policy, score, 5)
    assert all(r.batch is None and r.epoch == 0 for r in records)
    assert len(policy.batch) == 2 and [e.prompt_id for e in policy.buffer.entries] == [order[19]]
    assert policy.stream.pending_evictions == {order[5]}

    plan = policy.plan()  # needs 4 prompts, none left: the epoch ends here
    assert policy.stream.epoch == 1
    assert len(policy.buffer) == 0 and policy.batch == []
    assert not [r for r in plan if r.kind is COMMIT]
    assert policy.counters.discarded_groups == 2
    assert policy.stream.evicted == {order[5]} and policy.stream.num_active == 19
    assert order[5] not in [r.prompt_id for r in plan]

    rates.update({p: 0.5 for p in ids})  # epoch 1: everything informative, the step completes
    batch = policy.observe(score(plan))
    while batch is None:
        batch = policy.observe(score(policy.plan()))
    # the discarded groups are reported with the step they delayed; their rollouts stay counted
    assert batch.metrics["alloc/discarded_groups"] == 2
    # the round count restarts with the discarded batch (as the reference's num_gen_batches)
    assert batch.metrics["alloc/rounds"] == 2  # the 2 rounds of epoch 1
    assert batch.metrics["rollouts/sampled"] == 7 * 4 * 8 + 2 * 8 + 3 * 8
    assert all(g.staleness == 0 for g in batch.groups)  # nothing crossed the epoch boundary


def test_the_round_limit_restarts_when_an_epoch_end_discards_the_partial_batch():
    """max_num_gen_batches=6: 5 rounds of epoch 0 built a partial batch that the epoch end
    discarded; the step must still get its 6 rounds in epoch 1 (it needs 2), not 1."""
    ids = prompt_ids(20)  # 5 rounds of 4 per epoch
    order = PromptStream(ids, seed=0)._order
    rates = {p: 0.0 for p in ids}
    rates.update({order[0]: 0.5, order[1]: 0.5})  # epoch 0: a partial batch of 2 of 3
    policy = make(ids, train_batch_size=3, gen_batch_size=4, max_num_gen_batches=6)
    score = exact_rate_scorer(rates)
    assert all(r.batch is None for r in run_rounds(policy, score, 5))
    assert policy.counters.rounds == 5
    rates.update({p: 0.5 for p in ids})  # epoch 1: everything informative
    batch = None
    while batch is None:  # before the fix: RoundsExhaustedError in the first round of epoch 1
        batch = policy.observe(score(policy.plan()))
    assert batch.metrics["alloc/rounds"] == 2 and batch.metrics["alloc/epoch"] == 1
    # the rollouts of the discarded rounds are still counted, per step and cumulatively
    assert batch.metrics["rollouts/sampled"] == 7 * 4 * 8 + 2 * 8 + 3 * 8
    assert batch.metrics["rollouts/cumulative"] == batch.metrics["rollouts/sampled"]


# --------------------------------------------------------------------------- accuracy, not shaped reward


def penalised_scorer(correct_of, penalty_of):
    """Rollouts with 0/1 ``correct`` and a shaped ``reward = correct + penalty`` (the overlong
    penalty as ``loop.score_results`` adds it): ``correct_of(request)`` and ``penalty_of(request)``
    give one list each of ``request.count`` values."""

    def score(requests):
        from pilotcommit.types import RequestResult

        return [
            RequestResult(
                r, [make_rollout(r, c + p, correct=c) for c, p in zip(correct_of(r), penalty_of(r))]
            )
            for r in requests
        ]

    return score


def test_pilot_classification_and_eviction_read_accuracy_not_the_penalised_reward():
    """Every second pilot is overlong (penalty -0.75); correct ones still count as correct:
    ``two`` (2 of 8 correct, p = 0.25) is informative, not too hard (its mean shaped reward is
    -0.125); ``all`` (8 of 8) is too easy and evicted, not informative (mean shaped reward
    0.625)."""
    correct = {"two": [1.0] * 2 + [0.0] * 6, "all": [1.0] * 8, "none": [0.0] * 8}
    policy = make(list(correct), gen_batch_size=3, train_batch_size=3)
    penalty = lambda r: [-0.75 if i % 2 == 0 else 0.0 for i in range(r.count)]  # noqa: E731
    score = penalised_scorer(lambda r: correct[r.prompt_id], penalty)
    run_rounds(policy, score, 1)
    assert [e.prompt_id for e in policy.buffer.entries] == ["two"]
    assert policy.stream.pending_evictions == {"all"}
    c = policy.counters
    assert (c.informative, c.too_hard, c.too_easy) == (1, 1, 1)
    # the buffered pilots keep their shaped rewards for the learner
    assert sorted(r.reward for r in policy.buffer.entries[0].pilots) == (
        [-0.75] * 3 + [0.0] * 3 + [0.25, 1.0]
    )
