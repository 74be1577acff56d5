"""The training loop on the smoke config: each method runs end to end with the real tiny model,
the real transformers engine and the real learner; accounting follows ALGORITHMS.md."""

from __future__ import annotations

import json

import pytest
import torch

from pilotcommit.checkpoint import load_checkpoint
from pilotcommit.loop import RESULT_FILE, RunResult, train_run
from pilotcommit.tracking import MemoryTracker

pytestmark = pytest.mark.integration

METHODS = ["grpo", "dapo", "pilot_commit", "greso", "speed_rl"]


def _run(cfg, method, prepared, policy, run_dir, seed=0, **kwargs):
    tracker = MemoryTracker()
    result = train_run(
        cfg, method, seed, prepared=prepared, initial_policy=policy, run_dir=run_dir,
        tracker=tracker, **kwargs,
    )
    return result, tracker


@pytest.mark.parametrize("method", METHODS)
def test_two_steps_and_accounting(method, smoke_config, smoke_prepared, smoke_policy, tmp_path):
    result, tracker = _run(smoke_config, method, smoke_prepared, smoke_policy, tmp_path)
    method_cfg = smoke_config.methods[method]
    assert result.steps == 2
    steps = [s for s, _ in tracker.metrics]
    assert steps == [1, 2]
    cumulative = 0
    for _, m in tracker.metrics:
        assert m["rollouts/trained"] == method_cfg.train_batch_size * method_cfg.group_size
        cumulative += m["rollouts/sampled"]
        assert m["rollouts/cumulative"] == cumulative
        if method == "pilot_commit":
            assert m["rollouts/sampled"] == m["rollouts/pilot"] + m["rollouts/commit"]
            assert m["rollouts/commit"] == method_cfg.train_batch_size * method_cfg.n_commit
        elif method == "speed_rl":  # screens and continuations; every screen counts
            assert m["rollouts/sampled"] == m["rollouts/pilot"] + m["rollouts/commit"]
            assert m["rollouts/pilot"] == m["alloc/rounds"] * method_cfg.gen_batch_size * method_cfg.n_screen
            assert m["rollouts/commit"] == m["alloc/continued"] * method_cfg.n_continue
        else:
            assert m["rollouts/sampled"] == m["rollouts/uniform"]
            rounds = m["alloc/rounds"]
            per_round = method_cfg.train_batch_size if method == "grpo" else method_cfg.gen_batch_size
            assert m["rollouts/sampled"] == rounds * per_round * method_cfg.n
        for key in ("loss/policy", "loss/clip_fraction", "loss/approx_kl", "grad/norm",
                    "time/generate_s", "time/learn_s", "throughput/generated_tokens_per_s",
                    "reward/mean", "tokens/generated_cumulative", "response_length/mean",
                    "response_length/max", "response_length/clip_ratio"):
            assert key in m, key
        assert 0 <= m["response_length/clip_ratio"] <= 1
        assert 0 < m["response_length/mean"] <= m["response_length/max"] <= smoke_config.rollout.max_new_tokens
    if method == "grpo":
        assert all(m["alloc/rounds"] == 1 for _, m in tracker.metrics)
    if method in ("pilot_commit", "speed_rl"):
        assert tracker.metrics[0][1]["alloc/rounds"] >= 2  # the buffer / the continuations start empty
    assert result.cumulative_rollouts == cumulative
    # evaluations before training and after every step (smoke: every_steps=1)
    assert [e.step for e in result.eval_history] == [0, 1, 2]
    assert [c for _, c, _ in tracker.evaluations] == [e.cumulative_rollouts for e in result.eval_history]
    assert "eval/average_accuracy" in result.eval_history[-1].metrics
    assert {name for _, name, _ in tracker.prompt_stats} == {"eval", "train"}
    saved = RunResult.from_dict(json.loads((tmp_path / RESULT_FILE).read_text()))
    assert saved.final_metrics == result.final_metrics
    assert (result.final_checkpoint / "config.json").is_file()


def test_same_seed_same_metrics(smoke_config, smoke_prepared, smoke_policy, tmp_path):
    a, ta = _run(smoke_config, "pilot_commit", smoke_prepared, smoke_policy, tmp_path / "a")
    b, tb = _run(smoke_config, "pilot_commit", smoke_prepared, smoke_policy, tmp_path / "b")
    strip = lambda ms: [(s, {k: v for k, v in m.items() if not k.startswith(("time/", "throughput/"))}) for s, m in ms]
    assert strip(ta.metrics) == strip(tb.metrics)
    assert [e.metrics for e in a.eval_history] == [e.metrics for e in b.eval_history]
    wa = load_checkpoint(a.run_dir / "checkpoints" / "step-000002")["model"]
    wb = load_checkpoint(b.run_dir / "checkpoints" / "step-000002")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_other_seed_other_rollouts(smoke_config, smoke_prepared, smoke_policy, tmp_path):
    _, ta = _run(smoke_config, "grpo", smoke_prepared, smoke_policy, tmp_path / "a", seed=0)
    _, tb = _run(smoke_config, "grpo", smoke_prepared, smoke_policy, tmp_path / "b", seed=1)
    sampled = lambda t: sorted(t.prompt_stats[-1][2]["prompt_id"])  # training prompts drawn
    assert sampled(ta) != sampled(tb)


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_resume_from_checkpoint_gives_identical_result(packing, smoke_config, smoke_prepared, smoke_policy, tmp_path):
    """Stopping after step 1 (budget 1) and rerunning with budget 2 equals a straight 2-step run,
    with padded and with packed micro-batches (a budget of two sequences: several per step)."""
    if packing:
        budget = 2 * smoke_config.model.max_positions
        smoke_config = smoke_config.model_copy(
            update={"learner": smoke_config.learner.model_copy(update={"max_tokens_per_micro_batch": budget})}
        )
        assert smoke_config.learner.max_tokens_per_micro_batch == budget
    straight, _ = _run(smoke_config, "dapo", smoke_prepared, smoke_policy, tmp_path / "straight")
    # resuming needs the same config (hash): interrupt the 2-step run after step 1 instead
    class Stop(Exception):
        pass

    def stop_after_first(step, metrics):
        if step == 1:
            raise Stop

    with pytest.raises(Stop):
        _run(smoke_config, "dapo", smoke_prepared, smoke_policy, tmp_path / "resumed", progress=stop_after_first)
    resumed, tracker = _run(smoke_config, "dapo", smoke_prepared, smoke_policy, tmp_path / "resumed")
    assert [s for s, _ in tracker.metrics] == [2]  # only the step after the checkpoint ran again
    assert [e.metrics for e in resumed.eval_history] == [e.metrics for e in straight.eval_history]
    assert resumed.cumulative_rollouts == straight.cumulative_rollouts
    weights = [load_checkpoint(tmp_path / run / "checkpoints" / "step-000002")["model"] for run in ("straight", "resumed")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_speed_rl_steps_from_carried_over_groups_need_no_sampling(smoke_prepared, smoke_policy, tmp_path):
    """A screening round of nearly the whole data set qualifies more prompts than a step trains;
    the loop then takes whole steps from the carried-over groups (policy.ready_batch) without a
    sampling round, and the accounting still adds up."""
    from pilotcommit.config import load_experiment_config
    from tests.conftest import SMOKE_CONFIG

    cfg = load_experiment_config(SMOKE_CONFIG, overrides=["methods.speed_rl.gen_batch_size=400",
                                                          "budget.max_steps=5"])
    result, tracker = _run(cfg, "speed_rl", smoke_prepared, smoke_policy, tmp_path)
    assert result.steps == 5
    rounds = [m["alloc/rounds"] for _, m in tracker.metrics]
    assert 0 in rounds, rounds  # at least one step trained on carried-over groups only
    cumulative = 0
    for _, m in tracker.metrics:
        cumulative += m["rollouts/sampled"]
        assert m["rollouts/cumulative"] == cumulative
        assert m["rollouts/trained"] == 4 * 4
        if m["alloc/rounds"] == 0:
            assert m["rollouts/sampled"] == 0 and m["alloc/staleness_mean"] >= 1
    assert result.cumulative_rollouts == cumulative


def test_a_reference_rule_run_takes_and_records_its_optimizer_steps(smoke_config, smoke_prepared, smoke_policy,
                                                                    tmp_path):
    """Pilot-Commit under the reference rule (issue 26) beside GRPO at 2 equal mini-batches:
    4 groups of 2 pilots + 2 commits in mini-batches of 3 prompts x n_commit 2 = 6 sequences,
    so 6 + 6 + 4, three optimizer steps per training step; the run records its rule and steps."""
    cfg = smoke_config.model_validate({
        **smoke_config.model_dump(),
        "learner": {**smoke_config.learner.model_dump(), "optimizer_steps_per_batch": 2},
        "methods": {**smoke_config.model_dump()["methods"],
                    "pc_ref": {**smoke_config.methods["pilot_commit"].model_dump(),
                               "learner": {"minibatch_rule": "reference", "minibatch_prompts": 3}}},
    })
    _, ref = _run(cfg, "pc_ref", smoke_prepared, smoke_policy, tmp_path / "ref")
    _, grpo = _run(cfg, "grpo", smoke_prepared, smoke_policy, tmp_path / "grpo")
    assert [m["learner/optimizer_steps"] for _, m in ref.metrics] == [3, 3]
    assert [m["learner/optimizer_steps"] for _, m in grpo.metrics] == [2, 2]
    assert ref.params["learner.minibatch_rule"] == "reference" and ref.params["learner.minibatch_prompts"] == 3
    assert ref.params["learner.optimizer_steps_per_training_step"] == 3
    assert grpo.params["learner.minibatch_rule"] == "equal" and grpo.params["learner.minibatch_prompts"] is None
    assert grpo.params["learner.optimizer_steps_per_training_step"] == 2
