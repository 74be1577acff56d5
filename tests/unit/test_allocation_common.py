"""What all allocation policies share: batch shape, rollout accounting, the registry,
the plan/observe protocol and checkpointing (state_dict / load_state_dict).

Scripted Bernoulli rewards (``allocation_sim.Scorer``); no model, milliseconds per test.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from pilotcommit.allocation import (
    POLICIES,
    AllocationError,
    DAPOPolicy,
    GRESOPolicy,
    GRPOPolicy,
    PilotCommitPolicy,
    SpeedRLPolicy,
    make_policy,
)
from pilotcommit.checkpoint import load_checkpoint, save_checkpoint
from pilotcommit.config import (
    METHOD_NAMES,
    DAPOConfig,
    GRESOConfig,
    GRPOConfig,
    PilotCommitConfig,
    SpeedRLConfig,
)
from pilotcommit.types import RequestResult, RolloutKind
from tests.unit.allocation_sim import Scorer, make_rollout, prompt_ids, run_rounds, run_steps

PROMPTS = prompt_ids(120)
# a spread of difficulties: some too hard, some too easy, most in between
RATES = {p: [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0][i % 7] for i, p in enumerate(PROMPTS)}

CONFIGS = {
    "grpo": GRPOConfig(n=6, train_batch_size=4),
    "dapo": DAPOConfig(n=6, train_batch_size=4, gen_batch_size=6),
    "pilot_commit": PilotCommitConfig(n_pilot=4, n_commit=4, train_batch_size=4, gen_batch_size=8),
    "pilot_commit_random": PilotCommitConfig(
        n_pilot=4, n_commit=4, train_batch_size=4, gen_batch_size=8, buffer_sampling="random"
    ),
    "pilot_commit_effective": PilotCommitConfig(
        n_pilot=6,
        n_commit=4,
        n_pilot_effective=2,
        train_batch_size=4,
        gen_batch_size=8,
        buffer_sampling="most_recent",
        max_off_steps=1,
    ),
    # exploration rates that adapt quickly, so that the skip rule acts within a few epochs
    "greso": GRESOConfig(n=6, train_batch_size=4, gen_batch_size=6, p_easy=0.6, p_hard=0.6,
                         exploration_step=0.2),
    "speed_rl": SpeedRLConfig(n_screen=3, n_continue=3, train_batch_size=4, gen_batch_size=8),
    # a screening batch that qualifies more prompts than a step trains: steps without sampling
    "speed_rl_surplus": SpeedRLConfig(n_screen=4, n_continue=2, train_batch_size=2, gen_batch_size=9),
}
# policies whose rollouts are pilots/screens and commits/continuations, not uniform groups
TWO_PHASE = ("pilot_commit", "speed_rl")


def build(key: str, seed: int = 11):
    return make_policy(CONFIGS[key], PROMPTS, seed=seed)


# --------------------------------------------------------------------------- batch shape


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_every_batch_has_train_batch_size_groups_of_group_size_with_distinct_ids(key):
    policy = build(key)
    config = CONFIGS[key]
    records = run_steps(policy, Scorer(RATES, seed=1), 12)
    batches = [r.batch for r in records if r.batch is not None]
    assert [b.step for b in batches] == list(range(12))
    for batch in batches:
        assert len(batch.groups) == config.train_batch_size
        assert [g.group_id for g in batch.groups] == list(range(config.train_batch_size))
        assert len({g.prompt_id for g in batch.groups}) == config.train_batch_size
        for group in batch.groups:
            assert len(group.rollouts) == config.group_size
            assert {r.prompt_id for r in group.rollouts} == {group.prompt_id}
        assert batch.metrics["rollouts/trained"] == config.train_batch_size * config.group_size
        assert len(batch.rollouts) == config.train_batch_size * config.group_size


# --------------------------------------------------------------------------- accounting


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_rollout_accounting_per_step_and_cumulative(key):
    policy = build(key)
    records = run_steps(policy, Scorer(RATES, seed=2), 15)
    cumulative = 0
    step_sampled = 0
    for record in records:
        step_sampled += sum(r.count for r in record.plan)
        if record.batch is None:
            continue
        m = record.batch.metrics
        assert m["rollouts/sampled"] == step_sampled  # every generated rollout of the step
        if key.startswith(TWO_PHASE):
            assert m["rollouts/sampled"] == m["rollouts/pilot"] + m["rollouts/commit"]
            assert m["rollouts/uniform"] == 0
        else:
            assert m["rollouts/sampled"] == m["rollouts/uniform"]
            assert m["rollouts/pilot"] == m["rollouts/commit"] == 0
        cumulative += step_sampled
        assert m["rollouts/cumulative"] == cumulative
        step_sampled = 0


def untrained_rollouts(records):
    """Sampled rollouts (by identity) that no batch contains."""
    trained = {id(r) for rec in records if rec.batch for r in rec.batch.rollouts}
    return [
        r for rec in records for res in rec.results for r in res.rollouts if id(r) not in trained
    ]


def test_dapo_cumulative_includes_dropped_and_discarded_groups():
    policy = build("dapo")
    records = run_steps(policy, Scorer(RATES, seed=3), 10)
    batches = [r.batch for r in records if r.batch is not None]
    n = CONFIGS["dapo"].n
    dropped = sum(b.metrics["alloc/dropped_groups"] for b in batches)
    discarded = sum(b.metrics["alloc/discarded_groups"] for b in batches)
    trained = sum(b.metrics["rollouts/trained"] for b in batches)
    assert dropped > 0 and discarded > 0
    assert batches[-1].metrics["rollouts/cumulative"] == trained + (dropped + discarded) * n
    assert len(untrained_rollouts(records)) == (dropped + discarded) * n


def test_pilot_commit_cumulative_includes_pilots_of_prompts_never_committed():
    policy = build("pilot_commit")
    records = run_steps(policy, Scorer(RATES, seed=4), 10)
    batches = [r.batch for r in records if r.batch is not None]
    assert all(b.metrics["alloc/epoch"] == 0 for b in batches)  # no epoch-end discard here
    committed = {g.prompt_id for b in batches for g in b.groups}
    untrained = untrained_rollouts(records)
    # every commit rollout is trained on; the untrained ones are the pilots of the other prompts
    assert all(r.kind is RolloutKind.PILOT and r.prompt_id not in committed for r in untrained)
    piloted = [p for rec in records for p in rec.prompt_ids(RolloutKind.PILOT)]
    never_committed = [p for p in piloted if p not in committed]
    assert len(untrained) == 4 * len(never_committed) > 0
    trained = sum(b.metrics["rollouts/trained"] for b in batches)
    assert records[-1].batch is not None  # every recorded round belongs to a finished step
    assert batches[-1].metrics["rollouts/cumulative"] == trained + len(untrained)


# --------------------------------------------------------------------------- registry, protocol


def test_registry_builds_each_method_by_name():
    assert set(POLICIES) == set(METHOD_NAMES)
    expected = {"grpo": GRPOPolicy, "dapo": DAPOPolicy, "pilot_commit": PilotCommitPolicy,
                "greso": GRESOPolicy, "speed_rl": SpeedRLPolicy}
    assert set(expected) == set(POLICIES)
    for name, cls in expected.items():
        policy = make_policy(CONFIGS[name], PROMPTS, seed=0)
        assert type(policy) is cls and policy.name == name and policy.config is CONFIGS[name]


def test_registry_unknown_name_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown allocation method 'ppo'.*dapo.*greso.*grpo.*pilot_commit.*speed_rl"
    ):
        make_policy(SimpleNamespace(name="ppo"), PROMPTS, seed=0)


def test_protocol_misuse_fails_clearly():
    policy = build("grpo")
    with pytest.raises(AllocationError, match="without a plan"):
        policy.observe([])
    plan = policy.plan()
    with pytest.raises(AllocationError, match="plan\\(\\) called twice"):
        policy.plan()
    score = Scorer(RATES, seed=0)
    results = score(plan)
    with pytest.raises(ValueError, match="3 results for 4 planned"):
        policy.observe(results[:3])
    with pytest.raises(ValueError, match="result 0 answers"):
        policy.observe([results[1], results[0], *results[2:]])
    short = RequestResult(results[0].request, results[0].rollouts[:-1])
    with pytest.raises(ValueError, match="has 5 rollouts, expected 6"):
        policy.observe([short, *results[1:]])
    unscored = RequestResult(plan[0], [make_rollout(plan[0], math.nan)] * plan[0].count)
    with pytest.raises(ValueError, match="not finite; score every rollout"):
        policy.observe([unscored, *results[1:]])
    assert policy.observe(results) is not None  # the failed calls left the plan pending


# --------------------------------------------------------------------------- checkpointing


def through_disk(state: dict) -> dict:
    """The round trip a checkpoint makes (pilotcommit/checkpoint.py: tensors in state.pt,
    everything else as tagged JSON of allow-listed records, no pickle)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(Path(tmp), 1, {"policy": state}, {})
        return load_checkpoint(path)["policy"]


def advance_to(policy, score, where: str):
    """Run to a snapshot point; return the pending plan when it lies between plan and observe."""
    run_steps(policy, score, 3)
    if where == "between_steps":
        return None
    if where == "mid_step":  # after a round that did not complete the batch
        for _ in range(50):
            if policy.ready_batch() is None and policy.observe(score(policy.plan())) is None:
                return None
        raise AssertionError("no incomplete round found")
    if where == "pending":  # between plan() and observe(), as the loop gets there
        while policy.ready_batch() is not None:
            pass
        return policy.plan()
    raise ValueError(where)


def comparable(records):
    return [(r.step, r.epoch, r.plan, r.results, r.batch) for r in records]


SNAPSHOTS = [
    (key, where)
    for key in sorted(CONFIGS)
    for where in ("between_steps", "mid_step", "pending")
    if not (key == "grpo" and where == "mid_step")  # every GRPO round completes a step
]


@pytest.mark.parametrize("key, where", SNAPSHOTS)
def test_state_dict_restores_identical_future_plans_and_batches(key, where):
    original, score = build(key), Scorer(RATES, seed=7)
    pending = advance_to(original, score, where)
    state = original.state_dict()
    saved = through_disk(state)
    score_copy = copy.deepcopy(score)

    def finish(policy, scorer):
        records = []
        if pending is not None:
            results = scorer(pending)
            records.append((pending, results, policy.observe(results)))
        return records + comparable(run_rounds(policy, scorer, 25))

    expected = finish(original, score)
    assert sum(r[-1] is not None for r in expected) >= 3  # the continuation spans several steps

    restored = build(key)
    restored.load_state_dict(saved)
    assert finish(restored, copy.deepcopy(score_copy)) == expected

    # state_dict() is a snapshot: continuing the original did not change it
    from_memory = build(key)
    from_memory.load_state_dict(state)
    assert finish(from_memory, copy.deepcopy(score_copy)) == expected

    # and the restore is what makes them equal: a fresh policy does something else
    if pending is None:
        fresh = build(key)
        assert comparable(run_rounds(fresh, copy.deepcopy(score_copy), 25)) != expected


def test_load_state_dict_refuses_another_method_or_seed():
    state = build("dapo").state_dict()
    with pytest.raises(ValueError, match="state of policy 'dapo' cannot be loaded into 'grpo'"):
        build("grpo").load_state_dict(state)
    with pytest.raises(ValueError, match="saved with seed 11, this policy uses 12"):
        build("dapo", seed=12).load_state_dict(state)
