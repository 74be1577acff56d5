"""Packed micro-batches (pilotcommit/learner/packing.py) against padded ones.

Tolerance, float32 on CPU: per-token log-probs agree to 1e-5 absolute, gradients to 1e-5
relative + 1e-7 absolute (the packed row runs the same arithmetic as the padded rows, in matmuls
of other shapes, so only the summation order differs); weights after whole updates to the
learner tests' own 2e-4 / 1e-3 (Adam divides rounding noise on near-zero gradients by their
own small scale). Tiny Qwen2-, Qwen3- and Llama-shaped models with grouped-query attention, built
here; the Llama one ties its output head to the embedding, as SmolLM2 does (Llama has no per-layer-
type mask mapping: a packed forward must pass no mask at all, pilotcommit/learner/packing.py).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from pilotcommit.config import LearnerConfig, demo_config_path, load_experiment_config
from pilotcommit.learner.logprobs import completion_logprobs_from_model
from pilotcommit.learner.loss import policy_loss
from pilotcommit.learner.packing import (
    VARLEN_SDPA,
    enable_packed_attention,
    pack_sequences,
    packed_forward_kwargs,
    token_budget_micro_batches,
)
from pilotcommit.learner.update import Learner, pack_batch
from tests.unit.test_learner_update import _assert_same_weights, _batch, _config, _model

VOCAB = 40
LOGP_ATOL = 1e-5


def _qwen(kind: str) -> torch.nn.Module:
    common = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "qwen2":
            model = Qwen2ForCausalLM(Qwen2Config(**common))
        elif kind == "qwen3":
            model = Qwen3ForCausalLM(Qwen3Config(head_dim=8, **common))
        elif kind == "llama":
            model = LlamaForCausalLM(LlamaConfig(head_dim=8, tie_word_embeddings=True, **common))
            assert model.lm_head.weight is model.model.embed_tokens.weight
        else:
            raise ValueError(kind)
    assert model.config._attn_implementation == "sdpa"  # what the learner meets by default
    return model.train()


def _rows(lengths=((3, 5), (6, 2), (2, 9), (4, 4))):
    """Right-padded rows of (prompt, completion) lengths, as update.pack_batch builds them."""
    generator = torch.Generator().manual_seed(1)
    width = max(p + c for p, c in lengths)
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    att = torch.zeros_like(ids)
    mask = torch.zeros((len(lengths), width - 1))
    for row, (p, c) in enumerate(lengths):
        ids[row, : p + c] = torch.randint(3, VOCAB, (p + c,), generator=generator)
        att[row, : p + c] = 1
        mask[row, p - 1 : p - 1 + c] = 1.0
    return ids, att, mask


def test_pack_sequences_concatenates_without_padding_and_restarts_positions():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [3, 4, 5, 6]])
    att = (ids != 0).long()
    mask = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    row = pack_sequences(ids, att, mask)
    assert row.input_ids_1T.tolist() == [[5, 6, 7, 8, 9, 3, 4, 5, 6]]
    assert row.position_ids_1T.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert row.cu_seq_lens_S.tolist() == [0, 3, 5, 9] and row.max_length == 4
    # position t predicts t+1: 6->7, 8->9, 5->6; a sequence's last token never predicts the next one's first
    assert row.completion_mask_1T.tolist() == [[0, 1, 0, 1, 0, 0, 0, 1]]


def test_an_empty_row_adds_no_token_and_no_segment():
    ids = torch.tensor([[5, 6, 7], [0, 0, 0], [8, 9, 0]])
    row = pack_sequences(ids, (ids != 0).long(), torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]))
    assert row.input_ids_1T.tolist() == [[5, 6, 7, 8, 9]] and row.cu_seq_lens_S.tolist() == [0, 3, 5]
    assert row.completion_mask_1T.tolist() == [[0, 1, 0, 1]]


def test_pack_sequences_refuses_left_padding():
    ids = torch.tensor([[0, 5, 6]])
    with pytest.raises(ValueError, match="right padding"):
        pack_sequences(ids, (ids != 0).long(), torch.ones((1, 2)))


def test_token_budget_micro_batches_keep_order_and_respect_the_budget():
    rows = torch.tensor([4, 0, 3, 1, 2])
    tokens = torch.tensor([5, 4, 2, 8, 1])
    micro = token_budget_micro_batches(rows, tokens, budget=9)
    assert [m.tolist() for m in micro] == [[4, 0], [3], [1, 2]]  # 5 + 4; 2 (2 + 8 > 9); 8 + 1
    assert torch.cat(micro).tolist() == rows.tolist()
    with pytest.raises(ValueError, match="row 1.*longer than learner.max_tokens_per_micro_batch=6"):
        token_budget_micro_batches(rows, tokens, budget=6)


KINDS = ["qwen2", "qwen3", "llama"]


@pytest.mark.parametrize("attention", ["varlen", "transformers-mask", "eager"])
@pytest.mark.parametrize("kind", KINDS)
def test_packed_logprobs_loss_and_gradients_equal_the_padded_ones(kind, attention):
    """``varlen``: the learner's attention (one sdpa call per sequence); ``transformers-mask``:
    a plain sdpa model, whose packed mask transformers builds from the position ids; ``eager``:
    the same from the position ids, as an additive float mask."""
    model = _qwen(kind)
    if attention == "varlen":
        enable_packed_attention(model)
        assert model.config._attn_implementation == VARLEN_SDPA
    elif attention == "eager":
        model.set_attn_implementation("eager")
        enable_packed_attention(model)  # leaves a non-sdpa model alone
        assert model.config._attn_implementation == "eager"
    ids, att, mask = _rows()
    advantages = torch.tensor([1.0, -0.5, 0.7, -1.2])
    results = {}
    for packed in (False, True):
        model.zero_grad(set_to_none=True)
        logp = completion_logprobs_from_model(model, ids, att, mask, chunk_size=5, packed=packed)
        out = policy_loss(logp, logp.detach() - 0.1 * mask, advantages, mask, eps_low=0.2, eps_high=0.28,
                          normalizer=float(mask.sum()))
        out.loss.backward()
        results[packed] = (logp.detach(), out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (lp0, loss0, g0), (lp1, loss1, g1) = results[False], results[True]
    assert bool((lp1[mask.bool()] != 0).all()) and bool((lp1[~mask.bool()] == 0).all())
    torch.testing.assert_close(lp1, lp0, atol=LOGP_ATOL, rtol=0)
    torch.testing.assert_close(loss1, loss0, atol=1e-6, rtol=1e-5)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-7, rtol=1e-5, msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_sdpa_honours_restarting_position_ids_without_a_mask(kind):
    """The claim packing relies on where no varlen kernel is used: with no 2-D mask and no
    cache, sdpa models keep attention inside each sequence from the position ids alone."""
    model = _qwen(kind).eval()
    ids, att, mask = _rows()
    row = pack_sequences(ids, att, mask)
    with torch.no_grad():
        packed = model(input_ids=row.input_ids_1T, position_ids=row.position_ids_1T, use_cache=False).logits[0]
        padded = model(input_ids=ids, attention_mask=att).logits
    torch.testing.assert_close(packed, padded[att.bool()], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_varlen_packed_forward_builds_no_dense_mask(kind):
    """The learner's packed forward: every attention layer gets no mask (no ``[T, T]`` tensor
    is built); the kernel keeps attention inside each sequence from the boundaries."""
    model = _qwen(kind).eval()
    enable_packed_attention(model)
    row = pack_sequences(*_rows())
    masks = []
    hooks = [layer.self_attn.register_forward_pre_hook(lambda m, a, kw: masks.append(kw.get("attention_mask", "absent")),
                                                       with_kwargs=True)
             for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(**packed_forward_kwargs(model, row))
    finally:
        for hook in hooks:
            hook.remove()
    assert masks == [None] * len(model.model.layers)


@pytest.mark.parametrize("kind", KINDS)
def test_the_varlen_attention_keeps_restarting_position_ids_apart_without_boundaries(kind):
    """A caller that packs rows but passes only the restarting position ids (no ``cu_seq_lens``):
    no mask is built for it, so the kernel takes the boundaries from the position ids."""
    model = _qwen(kind).eval()
    enable_packed_attention(model)
    ids, att, mask = _rows()
    row = pack_sequences(ids, att, mask)
    with torch.no_grad():
        packed = model(input_ids=row.input_ids_1T, position_ids=row.position_ids_1T, use_cache=False).logits[0]
        padded = model(input_ids=ids, attention_mask=att).logits
    torch.testing.assert_close(packed, padded[att.bool()], atol=1e-5, rtol=0)
    # two packed rows with boundaries of their own
    other = pack_sequences(ids.flip(0), att.flip(0), mask.flip(0))
    with torch.no_grad():
        both = model(input_ids=torch.cat([row.input_ids_1T, other.input_ids_1T]),
                     position_ids=torch.cat([row.position_ids_1T, other.position_ids_1T]), use_cache=False).logits
    torch.testing.assert_close(both[0], packed, atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1], padded.flip(0)[att.flip(0).bool()], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_the_varlen_attention_leaves_unpacked_calls_to_sdpa(kind):
    """Generation and evaluation on a packing learner's model: the same logits and tokens."""
    model = _qwen(kind).eval()
    reference = copy.deepcopy(model)
    enable_packed_attention(model)
    ids, att, _ = _rows()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=att).logits,
                           reference(input_ids=ids, attention_mask=att).logits)
        prompt = ids[:2, :3]
        kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.equal(model.generate(prompt, **kwargs), reference.generate(prompt, **kwargs))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_gradients_survive_activation_checkpointing(checkpointing):
    """Checkpointed layers are recomputed in backward, after the forward returned: they must
    run the same (packed) attention."""
    grads = []
    for packed in (False, True):
        model = _qwen("qwen2")
        enable_packed_attention(model)
        if checkpointing:
            model.gradient_checkpointing_enable()
        ids, att, mask = _rows()
        completion_logprobs_from_model(model, ids, att, mask, packed=packed).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_a_packed_forward_computes_no_padding():
    """The model sees exactly the batch's tokens: one row of their summed length."""
    model = _qwen("qwen2")
    ids, att, mask = _rows()
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, a, o: seen.append(tuple(a[0].shape)))
    try:
        completion_logprobs_from_model(model, ids, att, mask, packed=True)
        completion_logprobs_from_model(model, ids, att, mask, packed=False)
    finally:
        handle.remove()
    assert seen == [(1, int(att.sum())), tuple(ids.shape)]
    assert int(att.sum()) < ids.numel()  # the padded batch does have padding


@pytest.mark.parametrize("steps", [1, 3])
def test_the_packed_update_equals_the_padded_update(steps):
    """Three training steps with clipping, dual-clip, weight decay and warm-up; packed micro-
    batches of at most 24 tokens (several per mini-batch) against padded ones of 4 rows."""
    results = []
    for budget in (None, 24):
        model, pad_id = _model()
        config = _config(optimizer_steps_per_batch=steps, max_tokens_per_micro_batch=budget,
                         weight_decay=0.1, warmup_steps=1, clip_ratio_c=3.0)
        learner = Learner(model, config, pad_id=pad_id, temperature=0.7)
        metrics = [learner.update(_batch(s), seed=3 + s) for s in range(3)]
        results.append((model.state_dict(), metrics))
    (w0, m0), (w1, m1) = results
    _assert_same_weights(w1, w0)
    for a, b in zip(m0, m1):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def test_micro_batches_follow_the_token_budget():
    model, pad_id = _model()
    learner = Learner(model, _config(optimizer_steps_per_batch=1, max_tokens_per_micro_batch=24), pad_id=pad_id)
    batch = _batch()
    packed = pack_batch(batch, pad_id, learner.config)
    rows = torch.arange(len(batch.rollouts))
    _, micro, _ = learner._plan_minibatch(packed, rows, step=0)
    tokens = packed.attention_mask_BT.sum(dim=1)
    assert len(micro) > 1 and all(int(tokens[m].sum()) <= 24 for m in micro)
    active = rows[packed.advantages_B != 0]
    assert torch.cat(micro).tolist() == active.tolist()  # every trained row once, in order


def test_a_rollout_longer_than_the_budget_is_refused_by_name():
    model, pad_id = _model()
    learner = Learner(model, _config(max_tokens_per_micro_batch=8), pad_id=pad_id)
    with pytest.raises(ValueError, match=r"prompt 'p\d' has \d+ tokens .*max_tokens_per_micro_batch=8"):
        learner.update(_batch(), seed=0)


def test_the_budget_is_checked_against_the_longest_sequence_at_load_time(tmp_path):
    demo = load_experiment_config(demo_config_path())
    positions = demo.model.max_positions
    assert load_experiment_config(demo_config_path(), [f"learner.max_tokens_per_micro_batch={positions}"])
    with pytest.raises(ValueError, match=r"max_tokens_per_micro_batch: 63 .*\(model.max_positions 64\)"):
        load_experiment_config(demo_config_path(), [f"learner.max_tokens_per_micro_batch={positions - 1}"])
    with pytest.raises(ValueError):
        LearnerConfig(max_tokens_per_micro_batch=0)


@pytest.mark.real_model
def test_smollm2_packed_logprobs_equal_the_padded_ones(smollm2_folder):
    """The real 30-layer Llama (SmolLM2-135M-Instruct, converted from its GGUF): packed and padded
    log-probs under the three attention paths, to 1e-4 (30 layers of float32 summation-order
    differences; /work/research/smollm2.md measured up to 1.4e-5)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(smollm2_folder), dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    lengths = [(5, 9), (12, 3), (4, 20), (7, 7)]
    width = max(p + c for p, c in lengths)
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    att, mask = torch.zeros_like(ids), torch.zeros((len(lengths), width - 1))
    for row, (p, c) in enumerate(lengths):
        ids[row, : p + c] = torch.randint(10, 49000, (p + c,), generator=generator)
        att[row, : p + c] = 1
        mask[row, p - 1 : p - 1 + c] = 1.0
    for implementation in ("sdpa", "eager", VARLEN_SDPA):
        model.config._attn_implementation = implementation
        with torch.no_grad():
            padded = completion_logprobs_from_model(model, ids, att, mask, packed=False)
            packed = completion_logprobs_from_model(model, ids, att, mask, packed=True)
        torch.testing.assert_close(packed, padded, atol=1e-4, rtol=0, msg=implementation)
