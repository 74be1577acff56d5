"""Learner.update against a hand-written PPO step: old log-probs come from the weights at the
start of the training step for EVERY mini-batch.

With several optimizer steps per batch the later mini-batches' ratios measure how far the
earlier steps moved the policy; that is what the clipped surrogate acts on. Taking the old
log-probs after earlier mini-batches moved the weights would make every ratio exactly 1 and
the clipping inert (a bug this file pins down).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pilotcommit.config import LearnerConfig, TinyModelConfig
from pilotcommit.learner.update import Learner, warmup_constant_lr
from pilotcommit.models.tiny import build_tiny_model
from pilotcommit.models.tokenizer import build_char_tokenizer
from pilotcommit.types import Group, Rollout, RolloutKind, TrainBatch

# The key projection's bias has an exactly zero true gradient (it adds the same q.b to every
# key's score, which softmax ignores); Adam divides its rounding noise by its own tiny scale, so
# it moves by noise. Compared everywhere else.
NOISE_ONLY = ".self_attn.k_proj.bias"


def _assert_same_weights(a: dict, b: dict) -> None:
    for key in a:
        if not key.endswith(NOISE_ONLY):
            torch.testing.assert_close(a[key], b[key], atol=2e-4, rtol=1e-3)


MODEL = TinyModelConfig(
    hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=64, max_positions=32
)


def _config(**overrides) -> LearnerConfig:
    settings = dict(
        lr=3e-2,  # large: the first optimizer step moves the policy enough to clip
        weight_decay=0.0,
        warmup_steps=0,
        grad_clip=1e9,
        optimizer_steps_per_batch=3,
        micro_batch_size=4,
        dtype="float32",
    )
    settings.update(overrides)
    return LearnerConfig(**settings)


def _batch(step: int = 0, equal_rewards: bool = False) -> TrainBatch:
    """6 groups of 4 rollouts with mixed rewards and varied lengths (group 2 all correct;
    every group with ``equal_rewards``: no advantage anywhere)."""
    generator = torch.Generator().manual_seed(7 + step)
    groups = []
    for g in range(6):
        prompt = torch.randint(4, 21, (3 + g % 3,), generator=generator).tolist()
        rewards = [1.0, 0.0, float(g % 2), 0.0] if g != 2 and not equal_rewards else [1.0] * 4
        rollouts = []
        for reward in rewards:
            length = int(torch.randint(2, 8, (1,), generator=generator))
            completion = torch.randint(4, 21, (length,), generator=generator).tolist()
            rollouts.append(
                Rollout(
                    prompt_id=f"p{g}",
                    kind=RolloutKind.UNIFORM,
                    prompt_token_ids=prompt,
                    completion_token_ids=completion,
                    sampler_logprobs=[-1.0] * length,
                    text="",
                    finish_reason="length",
                    reward=reward,
                )
            )
        groups.append(Group(group_id=g, prompt_id=f"p{g}", rollouts=rollouts))
    return TrainBatch(step=step, groups=groups)


def _model():
    tokenizer = build_char_tokenizer()
    return build_tiny_model(MODEL, tokenizer, seed=0), tokenizer.pad_token_id


def _hand_advantages(batch: TrainBatch, eps: float) -> list[float]:
    """(r - mean) / (sample std + eps) per group, 0 for a group of equal rewards."""
    advantages = []
    for group in batch.groups:
        rewards = [r.reward for r in group.rollouts]
        mean = sum(rewards) / len(rewards)
        if max(rewards) == min(rewards):
            advantages += [0.0] * len(rewards)
            continue
        std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / (len(rewards) - 1))
        advantages += [(x - mean) / (std + eps) for x in rewards]
    return advantages


def _hand_reference(model, config: LearnerConfig, batches, seeds, temperature: float) -> list[float]:
    """PPO training steps written plainly, from the spec and verl, sharing no code with the
    learner (no pack_batch, group_advantages, policy_loss, chunk or scheduler): one unpadded
    forward pass per rollout at ``logits / temperature``; all old log-probs before the first
    optimizer step; ``optimizer_steps_per_batch`` equal mini-batches of a seeded order, each one
    AdamW step over all of its rows (zero-advantage rows included, every gradient zero-filled so
    that the step always applies); the token-mean clipped surrogate with dual-clip; gradient
    clipping; verl's warm-up (lr * t / warmup in training step t). Returns the lr of each step."""
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    lo, hi, c = 1.0 - config.eps_low, 1.0 + config.eps_high, config.clip_ratio_c

    def completion_logprobs(rollout) -> torch.Tensor:  # [completion length]
        ids = torch.tensor([rollout.prompt_token_ids + rollout.completion_token_ids])
        logits = model(input_ids=ids).logits[0].float() / temperature
        start = len(rollout.prompt_token_ids) - 1  # logits at t predict token t + 1
        logp = torch.log_softmax(logits[start : start + len(rollout.completion_token_ids)], dim=-1)
        return logp.gather(1, torch.tensor(rollout.completion_token_ids)[:, None])[:, 0]

    lrs = []
    for t, (batch, seed) in enumerate(zip(batches, seeds)):
        lr = config.lr * (t / config.warmup_steps if t < config.warmup_steps else 1.0)
        lrs.append(lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rollouts = batch.rollouts
        advantages = _hand_advantages(batch, config.advantage_eps)
        model.train()
        with torch.no_grad():
            old = [completion_logprobs(r) for r in rollouts]
        order = torch.randperm(len(rollouts), generator=torch.Generator().manual_seed(seed)).tolist()
        size = len(rollouts) // config.optimizer_steps_per_batch
        for i in range(config.optimizer_steps_per_batch):
            rows = order[i * size : (i + 1) * size]
            for p in params:
                p.grad = torch.zeros_like(p)
            tokens = sum(len(rollouts[j].completion_token_ids) for j in rows)
            total = torch.zeros(())
            for j in rows:
                a = advantages[j]
                ratio = torch.exp(completion_logprobs(rollouts[j]) - old[j])
                token_loss = torch.maximum(-a * ratio, -a * torch.clamp(ratio, lo, hi))
                if a < 0 and c is not None:
                    token_loss = torch.minimum(token_loss, torch.full_like(token_loss, -a * c))
                total = total + token_loss.sum()
            (total / tokens).backward()
            norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params))
            scale = min(1.0, config.grad_clip / (norm + 1e-6))
            for p in params:
                p.grad.mul_(scale)
            optimizer.step()
        model.eval()
    return lrs


def test_the_update_equals_a_hand_written_ppo_step_with_decay_warmup_and_clipping():
    """Three training steps (lr 0, lr / 2, lr under a 2-step warm-up) with weight decay,
    gradient clipping, dual-clip and temperature 0.7 on, against :func:`_hand_reference`."""
    config = _config(weight_decay=0.1, warmup_steps=2, grad_clip=0.5, clip_ratio_c=3.0)
    model, pad_id = _model()
    initial = copy.deepcopy(model.state_dict())
    reference = copy.deepcopy(model)
    learner = Learner(model, config, pad_id=pad_id, temperature=0.7)
    metrics = [learner.update(_batch(step), seed=3 + step) for step in range(3)]
    lrs = _hand_reference(reference, config, [_batch(s) for s in range(3)], [3, 4, 5], 0.7)
    assert [m["learner/lr"] for m in metrics] == pytest.approx(lrs) == [0.0, 1.5e-2, 3e-2]
    assert all(m["grad/norm"] > config.grad_clip for m in metrics)  # clipping was active
    assert all(m["learner/optimizer_steps"] == 3 for m in metrics)
    expected, got = reference.state_dict(), model.state_dict()
    moved = max(float((got[k] - initial[k]).abs().max()) for k in got)
    assert moved > 1e-2  # the comparison below is not trivial
    # agreement to ~5e-5 (float rounding, amplified by Adam on near-zero gradients such as the
    # key biases'); old log-probs taken after earlier mini-batches' steps differ by ~0.1
    _assert_same_weights(got, expected)


def test_the_update_equals_the_hand_written_step_without_gradient_clipping():
    """Clipping off: the gradient's scale reaches AdamW, so the token-mean normaliser must be
    every response token of the mini-batch, zero-advantage rows included (with clipping on, a
    wrong normaliser only rescales a gradient that clipping rescales anyway)."""
    config = _config(grad_clip=1e9, weight_decay=0.0, warmup_steps=0)
    model, pad_id = _model()
    reference = copy.deepcopy(model)
    learner = Learner(model, config, pad_id=pad_id)
    for step in range(3):
        learner.update(_batch(step), seed=3 + step)
    _hand_reference(reference, config, [_batch(s) for s in range(3)], [3, 4, 5], 1.0)
    _assert_same_weights(model.state_dict(), reference.state_dict())


def test_the_loss_is_the_mean_over_every_token_of_the_minibatch():
    """One mini-batch, first pass (ratio 1): the policy loss is -sum(A_i * tokens_i) over all
    tokens of the batch, the zero-advantage group's tokens in the denominator too."""
    model, pad_id = _model()
    batch = _batch()
    metrics = Learner(model, _config(optimizer_steps_per_batch=1), pad_id=pad_id).update(batch, seed=3)
    advantages = _hand_advantages(batch, 1e-6)
    lengths = [len(r.completion_token_ids) for r in batch.rollouts]
    assert any(a == 0 for a in advantages)  # the all-correct group is in the denominator
    expected = -sum(a * n for a, n in zip(advantages, lengths)) / sum(lengths)
    assert metrics["loss/policy"] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_later_minibatches_see_ratios_away_from_one_and_clip():
    model, pad_id = _model()
    metrics = Learner(model, _config(), pad_id=pad_id).update(_batch(), seed=3)
    # the 2nd and 3rd mini-batches are evaluated after one and two optimizer steps
    assert abs(metrics["loss/ratio_mean"] - 1.0) > 1e-3
    assert metrics["loss/clip_fraction"] > 0.0
    assert metrics["loss/approx_kl"] > 0.0


def test_a_single_minibatch_starts_exactly_on_policy():
    model, pad_id = _model()
    metrics = Learner(model, _config(optimizer_steps_per_batch=1), pad_id=pad_id).update(_batch(), seed=3)
    assert metrics["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-7)
    assert metrics["loss/clip_fraction"] == 0.0
    assert metrics["loss/approx_kl"] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("steps", [1, 3])
def test_the_micro_batch_size_does_not_change_the_update(steps):
    """Micro-batches of 1 vs one pass over the mini-batch: the same weights. (Both runs skip
    the zero-advantage rows; that skipping them is exact is checked against the hand-written
    reference above, which forwards every row.)"""
    results = []
    for micro in (1, 64):
        model, pad_id = _model()
        Learner(model, _config(optimizer_steps_per_batch=steps, micro_batch_size=micro), pad_id=pad_id).update(
            _batch(), seed=5
        )
        results.append(model.state_dict())
    _assert_same_weights(results[0], results[1])


def test_a_zero_advantage_minibatch_still_takes_its_adamw_step():
    """As verl: zero gradients, but AdamW still applies weight decay and its momentum."""
    config = _config(optimizer_steps_per_batch=1, weight_decay=0.1, lr=1e-2)
    # a fresh optimizer: Adam's update is exactly 0, only the decoupled weight decay moves
    model, pad_id = _model()
    before = [p.detach().clone() for p in model.parameters()]
    metrics = Learner(model, config, pad_id=pad_id).update(_batch(equal_rewards=True), seed=0)
    assert metrics["learner/trained_sequences"] == 0 and metrics["learner/optimizer_steps"] == 1
    for p, q in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), q * (1 - 1e-2 * 0.1), rtol=0, atol=1e-7)
    # after a real step: the momentum moves the weights too, exactly as an AdamW step on zeros
    model, pad_id = _model()
    learner = Learner(model, config, pad_id=pad_id)
    learner.update(_batch(), seed=0)
    expected = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    optimizer = torch.optim.AdamW(expected, lr=1e-2, betas=config.betas, weight_decay=0.1)
    optimizer.load_state_dict(copy.deepcopy(learner.optimizer.state_dict()))  # no shared moments
    for p in expected:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    start = [p.detach().clone() for p in model.parameters()]
    learner.update(_batch(equal_rewards=True), seed=1)
    moved = max(float((p.detach() - q).abs().max()) for p, q in zip(model.parameters(), start))
    assert moved > 1e-3  # momentum, not only the 1e-3 relative weight decay
    for p, q in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-7)


def test_warmup_matches_verl_from_zero_to_the_full_lr_at_step_warmup():
    assert [warmup_constant_lr(s, 10) for s in range(12)] == pytest.approx(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0]
    )
    assert warmup_constant_lr(0, 0) == 1.0
    model, pad_id = _model()
    learner = Learner(model, _config(warmup_steps=4, lr=1e-3, optimizer_steps_per_batch=1), pad_id=pad_id)
    lrs = [learner.update(_batch(s), seed=s)["learner/lr"] for s in range(6)]
    # learner/lr is the lr the step trained with
    assert lrs == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


def test_a_batch_that_does_not_split_into_equal_minibatches_is_refused():
    model, pad_id = _model()
    learner = Learner(model, _config(optimizer_steps_per_batch=5), pad_id=pad_id)
    with pytest.raises(ValueError, match="24 rollouts cannot be split into optimizer_steps_per_batch=5"):
        learner.update(_batch(), seed=0)


def test_learner_logprobs_at_temperature_0_7_equal_the_engines_sampler_logprobs():
    """The transformers engine samples at T = 0.7 and reports log-probs of softmax(logits / T);
    the learner's first-pass log-probs of the same tokens must agree (loss/sampler_logp_gap is
    their mean absolute difference over the trained tokens). At T = 1 they would not."""
    from pilotcommit.models.tokenizer import build_char_tokenizer
    from pilotcommit.rollout.protocol import SamplingParams
    from pilotcommit.rollout.transformers_engine import TransformersEngine
    from pilotcommit.types import RolloutRequest

    tokenizer = build_char_tokenizer()
    gaps = {}
    for learner_temperature in (0.7, 1.0):
        model, pad_id = _model()
        engine = TransformersEngine(model, tokenizer)
        prompts = {"a": tokenizer("12+3=")["input_ids"], "b": tokenizer("7*8=")["input_ids"]}
        requests = [RolloutRequest(p, 4, RolloutKind.UNIFORM) for p in prompts]
        results = engine.generate(
            requests, prompts, SamplingParams(temperature=0.7, top_p=1.0, max_new_tokens=6), seed=0
        )
        groups = []
        for g, result in enumerate(results):
            for i, rollout in enumerate(result.rollouts):
                rollout.reward = rollout.correct = float(i % 2)  # every row has an advantage
            groups.append(Group(g, result.request.prompt_id, list(result.rollouts)))
        batch = TrainBatch(step=0, groups=groups)
        assert sum(r.num_completion_tokens for r in batch.rollouts) > 8
        learner = Learner(
            model, _config(optimizer_steps_per_batch=1), pad_id=pad_id, temperature=learner_temperature
        )
        metrics = learner.update(batch, seed=0)
        assert metrics["learner/trained_sequences"] == 8
        gaps[learner_temperature] = metrics["loss/sampler_logp_gap"]
        if learner_temperature == 0.7:  # actor/entropy: the mean -log pi of the sampled tokens
            sampled = [-lp for r in batch.rollouts for lp in r.sampler_logprobs]
            assert metrics["actor/entropy"] == pytest.approx(sum(sampled) / len(sampled), abs=1e-4)
            assert metrics["actor/entropy"] > 0.1
    assert gaps[0.7] < 1e-5
    assert gaps[1.0] > 1e-2


def test_the_learner_trains_on_the_shaped_reward_not_on_accuracy():
    """All four rollouts correct, two of them overlong (reward 0.5): the policies see a
    zero-variance group, the learner a group with advantages (the penalty's signal)."""
    from pilotcommit.learner.update import pack_batch

    batch = _batch()
    group = batch.groups[2]  # all correct
    for rollout, reward in zip(group.rollouts, [1.0, 0.5, 1.0, 0.5]):
        rollout.correct, rollout.reward = 1.0, reward
    packed = pack_batch(batch, pad_id=0, config=_config())
    advantages = packed.advantages_B[8:12].tolist()
    assert advantages[0] > 0 > advantages[1] and advantages[0] == pytest.approx(-advantages[1])
@pytest.mark.parametrize("enabled", [True, False])
def test_learner_gradient_checkpointing_is_the_switch_that_reaches_the_model(enabled):
    model, pad_id = _model()
    Learner(model, _config(gradient_checkpointing=enabled), pad_id=pad_id)
    assert model.is_gradient_checkpointing is enabled
