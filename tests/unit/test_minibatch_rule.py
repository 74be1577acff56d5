"""The reference's mini-batch rule (``learner.minibatch_rule: reference``, issue 26): verl cuts
a training batch into mini-batches of ``ppo_mini_batch_size x rollout.n`` sequences, where
``rollout.n`` is Pilot-Commit's ``n_commit`` while its groups also hold the pilots; so on the
paper's 4B-14B shape Pilot-Commit takes 6 optimizer steps per batch and GRPO 4. The rule is
opt-in: the equal rule stays the default, configs that use the reference rule must say so, and
the configs that do not keep their hashes (and so their cached stages and runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pilotcommit.config import ConfigError, LearnerConfig, load_experiment_config
from pilotcommit.config.loading import config_hash
from pilotcommit.learner.update import Learner, reference_minibatches
from pilotcommit.types import RolloutKind

from tests.unit.test_learner_update import _batch, _hand_advantages, _model

CONF = Path(__file__).resolve().parents[2] / "conf"
PAPER_4B = CONF / "experiment" / "paper-4b.yaml"
SMOKE = CONF / "experiment" / "smoke.yaml"
REFERENCE_32 = ["learner.optimizer_steps_per_batch=1", "learner.minibatch_rule=reference",
                "learner.minibatch_prompts=32"]


def _paper_group_kinds(groups: int, pilots: int, commits: int) -> list[RolloutKind]:
    """A Pilot-Commit batch as the learner receives it: group after group, each its pilots then
    its commits."""
    return ([RolloutKind.PILOT] * pilots + [RolloutKind.COMMIT] * commits) * groups


def test_the_split_on_the_papers_4b_shape_is_five_full_minibatches_and_one_partial():
    """128 groups of 16 pilots + 48 commits, 32 prompts per mini-batch: 32 x 48 = 1,536
    sequences each, so 8,192 rows are 5 x 1,536 + 512; the partial one weighs 512 / 1,536."""
    kinds = _paper_group_kinds(128, 16, 48)
    cut = reference_minibatches(kinds, 32 * 48)
    assert [len(rows) for rows, _ in cut] == [1536] * 5 + [512]
    assert [scale for _, scale in cut] == [1.0] * 5 + [pytest.approx(1 / 3)]
    every_row = torch.cat([rows for rows, _ in cut])
    assert sorted(every_row.tolist()) == list(range(8192))  # each row once
    # verl's batch is the pilot batch, then the commit batch: the 2,048 pilots come first
    assert all(kinds[i] == RolloutKind.PILOT for i in every_row[:2048].tolist())
    assert all(kinds[i] == RolloutKind.COMMIT for i in every_row[2048:].tolist())
    # positional, no shuffle: within each kind the batch's own order
    assert every_row[:2048].tolist() == sorted(every_row[:2048].tolist())
    # GRPO on the same shape: 128 x 64 uniform rollouts in mini-batches of 32 x 64, 4 steps
    grpo = reference_minibatches([RolloutKind.UNIFORM] * 8192, 32 * 64)
    assert [len(rows) for rows, _ in grpo] == [2048] * 4 and {s for _, s in grpo} == {1.0}


def test_the_paper_4b_config_under_the_reference_rule_takes_6_steps_for_pc_and_4_for_grpo():
    cfg = load_experiment_config(PAPER_4B, overrides=REFERENCE_32)
    assert cfg.minibatch_sequences("pilot_commit") == 32 * 48
    assert cfg.minibatch_sequences("grpo") == cfg.minibatch_sequences("dapo") == 32 * 64
    assert cfg.optimizer_steps("pilot_commit") == 6
    assert cfg.optimizer_steps("grpo") == cfg.optimizer_steps("dapo") == 4
    # the default (the equal rule): 4 for everyone, as the file says
    equal = load_experiment_config(PAPER_4B)
    assert {equal.optimizer_steps(m) for m in equal.methods} == {4}
    assert {equal.minibatch_sequences(m) for m in equal.methods} == {None}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["learner.minibatch_rule=reference"], "learner.minibatch_prompts: minibatch_rule: reference needs"),
        (["learner.minibatch_prompts=8"], "learner.minibatch_prompts: 8 is only used by minibatch_rule: reference"),
        (["learner.optimizer_steps_per_batch=4", "learner.minibatch_rule=reference", "learner.minibatch_prompts=1"],
         "learner.optimizer_steps_per_batch: 4 counts the equal rule's mini-batches"),
        (["learner.minibatch_rule=verl"], "minibatch_rule"),
        (["learner.minibatch_rule=reference", "learner.minibatch_prompts=9"],
         r"a mini-batch of 36 sequences \(minibatch_prompts x grpo.s rollout.n 4\) is more than the 16 rollouts"),
        (["methods.grpo.learner={minibatch_rule: reference}"], "minibatch_prompts: minibatch_rule: reference needs"),
    ],
)
def test_reference_settings_without_the_explicit_switch_or_out_of_range_fail_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment_config(SMOKE, overrides=overrides)


def test_a_method_can_carry_its_own_rule_and_other_methods_keep_the_experiments():
    """A study arm: GRPO at the equal rule beside Pilot-Commit under the reference rule, in one
    experiment (smoke: 4 groups of 2 + 2; 3 prompts x n_commit 2 = 6 sequences: 6 + 6 + 4)."""
    cfg = load_experiment_config(SMOKE, overrides=[
        "learner.optimizer_steps_per_batch=2",
        "methods.pilot_commit.learner={minibatch_rule: reference, minibatch_prompts: 3}",
    ])
    assert cfg.learner_for("grpo") == cfg.learner
    assert cfg.optimizer_steps("grpo") == 2
    ref = cfg.learner_for("pilot_commit")
    assert (ref.minibatch_rule, ref.minibatch_prompts, ref.optimizer_steps_per_batch) == ("reference", 3, 1)
    assert cfg.minibatch_sequences("pilot_commit") == 6 and cfg.optimizer_steps("pilot_commit") == 3


def test_configs_without_the_rule_keep_their_hashes():
    """The new fields are left out of the dump at their defaults, so every existing config keeps
    its hash (tests/golden pins them); setting the rule changes it."""
    base = load_experiment_config(SMOKE)
    assert "minibatch_rule" not in base.learner.model_dump()
    assert "learner" not in base.methods["grpo"].model_dump()
    explicit = load_experiment_config(SMOKE, overrides=["learner.minibatch_rule=equal"])
    assert config_hash(explicit) == config_hash(base)
    reference = load_experiment_config(SMOKE, overrides=["learner.minibatch_rule=reference",
                                                         "learner.minibatch_prompts=2"])
    assert config_hash(reference) != config_hash(base)
    assert LearnerConfig.model_validate(reference.learner.model_dump()) == reference.learner


def _pilot_batch():
    """The learner test batch (6 groups of 4) with each group's first rollout a pilot."""
    batch = _batch()
    for group in batch.groups:
        group.rollouts[0] = group.rollouts[0].__class__(**{**group.rollouts[0].__dict__, "kind": RolloutKind.PILOT})
    return batch


def _token_mean_loss(batch, rows: list[int]) -> float:
    """-sum(A * tokens) / tokens over ``rows`` at ratio 1 (the first-pass policy loss)."""
    advantages = _hand_advantages(batch, 1e-6)
    lengths = [len(r.completion_token_ids) for r in batch.rollouts]
    return -sum(advantages[i] * lengths[i] for i in rows) / sum(lengths[i] for i in rows)


def test_the_learner_cuts_pilots_first_and_weighs_the_partial_minibatch_by_its_share():
    """24 rows (6 pilots) in mini-batches of 16: rows [pilots, then the others] cut as 16 + 8,
    the second at half weight. With the lr at 0 (warm-up step 0) every ratio stays 1, so each
    mini-batch's loss is its token-mean surrogate: loss/policy is their mean, the partial one
    halved. Breaking the order (no pilots first) or the scale (a plain token mean) fails."""
    model, pad_id = _model()
    batch = _pilot_batch()
    config = LearnerConfig(lr=1e-2, warmup_steps=1, weight_decay=0.0, grad_clip=1e9, micro_batch_size=4,
                           minibatch_rule="reference", minibatch_prompts=4)
    learner = Learner(model, config, pad_id=pad_id, minibatch_sequences=16)
    metrics = learner.update(batch, seed=3)
    kinds = [r.kind for r in batch.rollouts]
    order = [i for i, k in enumerate(kinds) if k == RolloutKind.PILOT] + [
        i for i, k in enumerate(kinds) if k != RolloutKind.PILOT]
    expected = (_token_mean_loss(batch, order[:16]) + 0.5 * _token_mean_loss(batch, order[16:])) / 2
    assert metrics["learner/optimizer_steps"] == 2
    assert metrics["loss/policy"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    unscaled = (_token_mean_loss(batch, order[:16]) + _token_mean_loss(batch, order[16:])) / 2
    assert metrics["loss/policy"] != pytest.approx(unscaled, rel=1e-3)


def test_the_learner_refuses_the_reference_rule_without_a_minibatch_size_and_the_reverse():
    model, pad_id = _model()
    reference = LearnerConfig(minibatch_rule="reference", minibatch_prompts=4)
    with pytest.raises(ValueError, match="minibatch_sequences .* is required by minibatch_rule: reference"):
        Learner(model, reference, pad_id=pad_id)
    with pytest.raises(ValueError, match="minibatch_sequences"):
        Learner(model, LearnerConfig(), pad_id=pad_id, minibatch_sequences=16)

