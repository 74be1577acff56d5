"""GRESO (docs/algorithms.md, "GRESO"): every rule with hand cases, scripted rewards, no model.

The skip draws come from a scripted stand-in for the policy's generator where a test needs to
know them; elsewhere the policy's own seeded generator.
"""

from __future__ import annotations

import copy

import pytest

from pilotcommit.allocation import DAPOPolicy, GRESOPolicy, PromptStream, RoundsExhaustedError
from pilotcommit.allocation.greso import adapt_exploration_rate, keep_probability
from pilotcommit.config import DAPOConfig, GRESOConfig
from pilotcommit.types import RequestResult, RolloutKind
from tests.unit.allocation_sim import (
    Scorer,
    exact_rate_scorer,
    make_rollout,
    prompt_ids,
    run_rounds,
    run_steps,
)


class ScriptedRandom:
    """Stands in for ``policy.rng``: ``random()`` returns the scripted values in order."""

    def __init__(self, values):
        self.values = list(values)

    def random(self):
        if not self.values:
            raise AssertionError("the policy drew a random number the test did not expect")
        return self.values.pop(0)


def make(prompts, seed=0, **overrides) -> GRESOPolicy:
    values = dict(n=4, train_batch_size=3, gen_batch_size=4, max_num_gen_batches=10)
    values.update(overrides)
    return GRESOPolicy(GRESOConfig(**values), prompts, seed=seed)


# --------------------------------------------------------------------------- pure rules


def test_keep_probability_shrinks_geometrically_with_the_streak_down_to_the_floor():
    assert keep_probability(0, 0.5, 0.01) == 1.0  # no streak: always rolled out
    assert keep_probability(1, 0.5, 0.01) == 0.5
    assert keep_probability(3, 0.5, 0.01) == 0.125
    assert keep_probability(6, 0.5, 0.01) == 0.015625
    assert keep_probability(7, 0.5, 0.01) == 0.01  # 0.0078 is below the floor
    assert keep_probability(50, 0.9, 0.02) == 0.02


def test_exploration_rate_moves_one_step_toward_its_target_within_bounds():
    kw = dict(step=0.01, low=0.05, high=0.95)
    assert adapt_exploration_rate(0.5, 0.30, 0.25, **kw) == pytest.approx(0.49)  # too many: skip more
    assert adapt_exploration_rate(0.5, 0.25, 0.25, **kw) == pytest.approx(0.49)  # at target: down too
    assert adapt_exploration_rate(0.5, 0.10, 0.25, **kw) == pytest.approx(0.51)  # too few: skip less
    assert adapt_exploration_rate(0.055, 0.9, 0.25, **kw) == 0.05
    assert adapt_exploration_rate(0.945, 0.0, 0.25, **kw) == 0.95


# --------------------------------------------------------------------------- history


def test_streaks_count_consecutive_all_correct_or_all_wrong_groups_and_a_mixed_group_ends_them():
    policy = make(prompt_ids(8))
    policy.record_group("a", [1, 1, 1, 1])
    policy.record_group("a", [1, 1, 1, 1])
    assert policy.easy_streak == {"a": 2} and policy.hard_streak == {}
    policy.record_group("a", [0, 0, 0, 0])  # a switch of kind starts a new streak
    assert policy.easy_streak == {} and policy.hard_streak == {"a": 1}
    policy.record_group("a", [0, 0, 0, 0])
    assert policy.hard_streak == {"a": 2}
    policy.record_group("a", [0, 1, 0, 0])
    assert policy.easy_streak == {} and policy.hard_streak == {}


def test_zero_variance_is_judged_on_accuracy_not_on_the_shaped_reward():
    ids = prompt_ids(8)
    policy = make(ids, gen_batch_size=4, train_batch_size=1)
    plan = policy.plan()
    # all correct, but the overlong penalty made the rewards differ: still zero variance
    shaped = [RequestResult(r, [make_rollout(r, 1.0 - 0.1 * i, correct=1.0) for i in range(r.count)])
              for r in plan]
    assert policy.observe(shaped) is None  # every group dropped
    assert policy.counters.dropped_groups == 4 and policy.counters.too_easy == 4
    assert policy.easy_streak == {r.prompt_id: 1 for r in plan}


# --------------------------------------------------------------------------- skip rule


def test_skip_rule_draws_once_per_prompt_on_a_streak_against_one_minus_the_keep_probability():
    policy = make(prompt_ids(8), p_easy=0.5, p_hard=0.5)
    policy.easy_streak = {"e2": 2, "e20": 20}
    policy.hard_streak = {"h1": 1}
    # e2 keeps with 0.25: a draw below 0.75 skips it; h1 keeps with 0.5; e20 at the 0.01 floor
    policy.rng = ScriptedRandom([0.74, 0.75, 0.49, 0.5, 0.989, 0.991])
    assert policy.skip_kind("e2") == "easy"
    assert policy.skip_kind("e2") is None
    assert policy.skip_kind("h1") == "hard"
    assert policy.skip_kind("h1") is None
    assert policy.skip_kind("e20") == "easy"
    assert policy.skip_kind("e20") is None
    assert policy.skip_kind("fresh") is None  # no history: never skipped, no draw
    assert policy.rng.values == []


def test_easy_and_hard_streaks_are_skipped_at_their_own_exploration_rates():
    """p_easy and p_hard differ (as they do after adapting): an all-correct streak keeps with
    p_easy ** k, an all-wrong one with p_hard ** k, each against its own rate."""
    policy = make(prompt_ids(8), p_easy=0.8, p_hard=0.3)
    policy.easy_streak = {"e1": 1}
    policy.hard_streak = {"h1": 1}
    # e1 keeps with 0.8 (skip below 0.2); h1 keeps with 0.3 (skip below 0.7)
    policy.rng = ScriptedRandom([0.19, 0.21, 0.69, 0.71])
    assert policy.skip_kind("e1") == "easy"
    assert policy.skip_kind("e1") is None
    assert policy.skip_kind("h1") == "hard"  # against p_easy (skip below 0.2) it would be kept
    assert policy.skip_kind("h1") is None
    assert policy.rng.values == []


def test_a_skipped_prompt_keeps_its_streak():
    """The reference records history only for groups it rolled out: a prompt skipped before
    rollout keeps its streak (and so its skip probability) for the next time it comes up."""
    ids = prompt_ids(12)
    policy = make(ids, gen_batch_size=4)
    order = PromptStream(ids, seed=0)._order
    policy.easy_streak = {order[0]: 2}
    policy.hard_streak = {order[2]: 3}
    policy.rng = ScriptedRandom([0.0, 0.0])  # both skipped
    plan = policy.plan()
    assert order[0] not in [r.prompt_id for r in plan] and order[2] not in [r.prompt_id for r in plan]
    policy.observe(exact_rate_scorer({p: 0.5 for p in ids})(plan))  # the rolled-out ones: mixed
    assert policy.easy_streak.get(order[0]) == 2 and policy.hard_streak.get(order[2]) == 3


def test_skipped_prompts_cost_no_rollouts_and_a_round_holds_gen_batch_size_rolled_out_prompts():
    ids = prompt_ids(12)
    policy = make(ids, gen_batch_size=4)
    order = PromptStream(ids, seed=0)._order
    policy.easy_streak = {order[0]: 1}
    policy.hard_streak = {order[2]: 3, order[3]: 1}
    policy.rng = ScriptedRandom([0.0, 0.0, 0.99])  # skip order[0] and order[2]; keep order[3]
    plan = policy.plan()
    assert [r.prompt_id for r in plan] == [order[1], order[3], order[4], order[5]]
    assert all(r.count == 4 and r.kind is RolloutKind.UNIFORM for r in plan)
    assert policy.skipped == {"easy": 1, "hard": 1, "considered": 6}
    batch = policy.observe(exact_rate_scorer({p: 0.5 for p in ids})(plan))
    m = batch.metrics
    assert m["rollouts/sampled"] == m["rollouts/cumulative"] == 4 * 4  # the skipped two: nothing
    assert (m["alloc/skipped_easy"], m["alloc/skipped_hard"], m["alloc/prompts_considered"]) == (1, 1, 6)


def test_a_round_stops_at_the_epoch_end_and_never_holds_a_prompt_twice():
    ids = prompt_ids(10)
    policy = make(ids, gen_batch_size=4, train_batch_size=4)
    records = run_rounds(policy, exact_rate_scorer({p: 0.5 for p in ids}), 4)
    assert [len(r.plan) for r in records] == [4, 4, 2, 4]  # 10 = 4 + 4 + 2: none dropped
    assert [r.epoch for r in records] == [0, 0, 0, 1]
    epoch0 = [p for r in records[:3] for p in r.prompt_ids(RolloutKind.UNIFORM)]
    assert sorted(epoch0) == ids
    assert all(len(set(r.prompt_ids(RolloutKind.UNIFORM))) == len(r.plan) for r in records)
    assert records[2].batch is None  # 2 groups do not fill the batch of 4; they carry over
    assert [g.prompt_id for g in records[3].batch.groups][:2] == records[2].prompt_ids(RolloutKind.UNIFORM)


def test_first_epoch_is_exactly_dapo():
    """No prompt has a history before its first rollout: epoch 0 is DAPO's dynamic sampling."""
    ids = prompt_ids(60)  # 10 rounds of 6 per epoch
    rates = {p: [0.0, 0.25, 0.5, 1.0][i % 4] for i, p in enumerate(ids)}
    values = dict(n=4, train_batch_size=3, gen_batch_size=6, max_num_gen_batches=10)
    greso = GRESOPolicy(GRESOConfig(**values), ids, seed=3)
    dapo = DAPOPolicy(DAPOConfig(**values), ids, seed=3)
    score = Scorer(rates, seed=5)
    g_records = run_rounds(greso, copy.deepcopy(score), 10)
    d_records = run_rounds(dapo, copy.deepcopy(score), 10)
    assert [r.plan for r in g_records] == [r.plan for r in d_records]
    assert [None if r.batch is None else [g.prompt_id for g in r.batch.groups] for r in g_records] == \
        [None if r.batch is None else [g.prompt_id for g in r.batch.groups] for r in d_records]
    assert all(r.batch is None or r.batch.metrics["alloc/p_easy"] == 0.5 for r in g_records)  # no adaptation
    # epoch 1: the all-correct and all-wrong prompts of epoch 0 now face the skip
    more = run_rounds(greso, copy.deepcopy(score), 10)
    skipped = sum(r.batch.metrics["alloc/skipped_easy"] + r.batch.metrics["alloc/skipped_hard"]
                  for r in more if r.batch is not None)
    assert more[0].epoch == 1 and skipped > 0


def test_prompts_on_a_streak_are_skipped_at_the_rate_the_rule_says():
    """200 always-solved prompts on a streak of 1 at p_easy 0.5: about half skipped in epoch 1;
    the 200 mixed prompts never."""
    ids = prompt_ids(400)
    rates = {p: (1.0 if i % 2 else 0.5) for i, p in enumerate(ids)}
    policy = make(ids, seed=1, n=4, train_batch_size=10, gen_batch_size=20, max_num_gen_batches=30,
                  exploration_step=1e-9)
    score = exact_rate_scorer(rates)
    rolled_out = {0: [], 1: []}
    while policy.stream.epoch < 2:
        records = run_rounds(policy, score, 1)
        rolled_out.setdefault(records[0].epoch, []).extend(records[0].prompt_ids(RolloutKind.UNIFORM))
    assert sorted(rolled_out[0]) == ids
    easy = [p for p in ids if rates[p] == 1.0]
    skipped = set(ids) - set(rolled_out[1])
    assert skipped <= set(easy)  # a mixed prompt is never skipped
    assert 200 * 0.5 - 25 <= len(skipped) <= 200 * 0.5 + 25  # binomial(200, .5): sd 7


# --------------------------------------------------------------------------- exploration rates


def test_rates_adapt_from_the_second_epoch_on_toward_the_split_target():
    policy = make(prompt_ids(20), target_zero_variance=0.3, easy_target_fraction=1 / 3)
    c = policy.counters
    c.informative, c.too_easy, c.too_hard = 6, 3, 1  # easy share .3 >= .1; hard share .1 < .2
    policy._adapt()
    assert (policy.p_easy, policy.p_hard) == (0.5, 0.5)  # epoch 0: the reference does not adapt
    assert policy._shares == (0.3, 0.1)
    policy.stream.next_epoch()
    policy._adapt()
    assert policy.p_easy == pytest.approx(0.49) and policy.p_hard == pytest.approx(0.51)
    # easy share 0 < .1; hard share .25 >= .2, the hard part of the target (not the whole .3)
    c.too_easy, c.too_hard, c.informative = 0, 1, 3
    policy._adapt()
    assert policy.p_easy == pytest.approx(0.50) and policy.p_hard == pytest.approx(0.50)


def test_rates_are_adapted_once_per_step_and_logged():
    ids = prompt_ids(24)
    rates = {p: 1.0 for p in ids}  # every group all correct ...
    rates.update({p: 0.5 for p in ids[:12]})  # ... except half: easy share of rolled-out ~ .5
    policy = make(ids, seed=2, n=4, train_batch_size=2, gen_batch_size=4, exploration_step=0.05,
                  max_num_gen_batches=50)
    records = run_steps(policy, exact_rate_scorer(rates), 30)
    batches = [r.batch for r in records if r.batch is not None]
    p_easy = [b.metrics["alloc/p_easy"] for b in batches]
    epochs = [b.metrics["alloc/epoch"] for b in batches]
    first = epochs.index(1)
    assert set(p_easy[:first]) == {0.5}
    # from epoch 1 on every step moves p_easy by exactly one step (down while easy groups abound)
    steps = [round(b - a, 9) for a, b in zip(p_easy[first - 1:], p_easy[first:])]
    assert all(abs(s) == 0.05 or p in (0.05, 0.95) for s, p in zip(steps, p_easy[first:]))
    assert min(p_easy) < 0.5


# --------------------------------------------------------------------------- accounting, failure


def test_cumulative_rollouts_are_the_trained_plus_dropped_plus_discarded_groups():
    ids = prompt_ids(90)
    rates = {p: [0.0, 0.3, 0.6, 1.0, 1.0][i % 5] for i, p in enumerate(ids)}
    policy = make(ids, seed=4, n=4, train_batch_size=3, gen_batch_size=6, exploration_step=0.1)
    records = run_steps(policy, Scorer(rates, seed=9), 40)
    batches = [r.batch for r in records if r.batch is not None]
    assert records[-1].batch is not None and batches[-1].metrics["alloc/epoch"] >= 2
    trained = {id(r) for b in batches for r in b.rollouts}
    sampled = [r for rec in records for res in rec.results for r in res.rollouts]
    untrained = [r for r in sampled if id(r) not in trained]
    dropped = sum(b.metrics["alloc/dropped_groups"] for b in batches)
    discarded = sum(b.metrics["alloc/discarded_groups"] for b in batches)
    assert len(untrained) == 4 * (dropped + discarded)
    assert batches[-1].metrics["rollouts/cumulative"] == len(sampled) == len(trained) + len(untrained)
    # every prompt taken from the stream was either rolled out or skipped
    rolled_out = sum(len(rec.plan) for rec in records)
    skipped = sum(b.metrics["alloc/skipped_easy"] + b.metrics["alloc/skipped_hard"] for b in batches)
    assert skipped > 0
    assert sum(b.metrics["alloc/prompts_considered"] for b in batches) == rolled_out + skipped


def test_rounds_exhausted_error_says_why_and_what_to_change():
    ids = prompt_ids(40)
    policy = make(ids, max_num_gen_batches=3, gen_batch_size=4)
    score = exact_rate_scorer({p: 1.0 for p in ids})
    for _ in range(2):
        assert policy.observe(score(policy.plan())) is None
    with pytest.raises(RoundsExhaustedError) as info:
        policy.observe(score(policy.plan()))
    message = str(info.value)
    assert message.startswith("greso: step 0 has only 0 of 3 groups")
    assert "max_num_gen_batches=3" in message and "12 all correct" in message
    assert "Raise max_num_gen_batches or gen_batch_size" in message
    assert policy.cumulative_sampled == 3 * 4 * 4
