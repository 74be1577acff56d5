"""The transformers rollout engine against the protocol's conventions.

Everything runs on a real (tiny, random, seeded) ``Qwen2ForCausalLM`` and the
project's real character tokenizer on CPU; no test doubles. References are
computed independently of the engine: teacher-forced full forward passes
without a KV cache, and a naive argmax loop.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from pilotcommit.models.tokenizer import build_char_tokenizer
from pilotcommit.rollout.protocol import (
    FINISH_LENGTH,
    FINISH_STOP,
    RolloutEngine,
    SamplingParams,
    validated_prompts,
)
from pilotcommit.rollout.sampling import inverse_cdf_sample, left_pad, sample_next_tokens
from pilotcommit.rollout.transformers_engine import TransformersEngine
from pilotcommit.types import RequestResult, RolloutKind, RolloutRequest

PROBLEMS = {
    "short": "3+4=",
    "mid": "12*3-7=",
    "long": "(45+67)*8-123=",
    "two": "9-9=",
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # 2 shared cores: keep each test process to one intra-op thread
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_char_tokenizer()


def _model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, eos_bias: float | None = None):
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # GQA, as in the real Qwen models
        max_position_embeddings=64,
        tie_word_embeddings=eos_bias is None,
        # a larger init than the default 0.02 makes the distributions peaked
        # enough that greedy choices are not near-ties
        initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
        if eos_bias is not None:
            # an output bias towards EOS makes rows stop at different steps
            head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
            with torch.no_grad():
                head.weight.copy_(model.lm_head.weight)
                head.bias.zero_()
                head.bias[tokenizer.eos_token_id] = eos_bias
            model.lm_head = head
    return model.eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return _model(tokenizer)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer) -> dict[str, list[int]]:
    return {pid: tokenizer(text)["input_ids"] for pid, text in PROBLEMS.items()}


def _requests(*pairs: tuple[str, int], kind: RolloutKind = RolloutKind.UNIFORM):
    return [RolloutRequest(pid, count, kind) for pid, count in pairs]


def _flat(results: list[RequestResult]):
    return [r for res in results for r in res.rollouts]


def _teacher_forced_logits(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Logits that predicted each completion token, from one full uncached forward pass."""
    with torch.no_grad():
        logits_TV = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
    return logits_TV[len(prompt) - 1 : len(prompt) - 1 + len(completion)]


def _naive_greedy(model, prompt: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=torch.tensor([sequence])).logits[0, -1].argmax())
            sequence.append(token)
            if token == eos_id:
                break
    return sequence[len(prompt) :]


# --------------------------------------------------------------------------- pure sampling maths


def test_left_pad_puts_tokens_on_the_right():
    ids_BL, mask_BL = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids_BL.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask_BL.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_inverse_cdf_sample_matches_weights_and_skips_zero_weight():
    weights_V = torch.tensor([0.5, 0.0, 0.3, 0.2])
    cdf_BV = weights_V.cumsum(0).expand(1000, 4).contiguous()
    uniforms_B = (torch.arange(1000) + 0.5) / 1000
    counts = torch.bincount(inverse_cdf_sample(cdf_BV, uniforms_B), minlength=4)
    assert counts.tolist() == [500, 0, 300, 200]
    # u just below 1 must land on the last token with weight, not past it
    last = inverse_cdf_sample(torch.tensor([[0.3, 0.7, 0.7]]), torch.tensor([0.99999999]))
    assert last.tolist() == [1]


def test_top_p_nucleus_and_renormalised_logprobs():
    probs_V = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits_BV = probs_V.log().expand(400, 4)
    uniforms_B = (torch.arange(400) + 0.5) / 400
    # mass before token 1 is 0.5 < 0.6, before token 2 is 0.8 >= 0.6: nucleus {0, 1}
    tokens_B, logprobs_B = sample_next_tokens(logits_BV, uniforms_B, temperature=1.0, top_p=0.6)
    counts = torch.bincount(tokens_B, minlength=4).tolist()
    assert counts == [250, 150, 0, 0]
    expected_V = torch.tensor([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]).log()
    assert torch.allclose(logprobs_B, expected_V[tokens_B], atol=1e-6)
    # top_p exactly reaching a boundary keeps that token (mass 0.8 reaches 0.8)
    tokens_B, _ = sample_next_tokens(logits_BV, uniforms_B, temperature=1.0, top_p=0.8)
    assert set(tokens_B.tolist()) == {0, 1}


def test_temperature_scales_before_softmax():
    logits_BV = torch.tensor([[2.0, 1.0, 0.0]]).expand(300, 3)
    uniforms_B = (torch.arange(300) + 0.5) / 300
    tokens_B, logprobs_B = sample_next_tokens(logits_BV, uniforms_B, temperature=0.5, top_p=1.0)
    expected_V = torch.log_softmax(torch.tensor([4.0, 2.0, 0.0]), dim=0)
    assert torch.allclose(logprobs_B, expected_V[tokens_B], atol=1e-6)
    share_of_top = float((tokens_B == 0).float().mean())
    assert abs(share_of_top - float(expected_V[0].exp())) < 0.01


def test_greedy_reports_plain_log_softmax_and_ignores_uniforms():
    logits_BV = torch.tensor([[0.1, 3.0, 0.2], [5.0, 5.0, 1.0]])
    tokens_B, logprobs_B = sample_next_tokens(logits_BV, None, temperature=0.0, top_p=1.0)
    assert tokens_B.tolist() == [1, 0]  # ties go to the lower id
    assert torch.allclose(logprobs_B, torch.log_softmax(logits_BV, -1)[[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="uniforms"):
        sample_next_tokens(logits_BV, None, temperature=1.0, top_p=1.0)


# --------------------------------------------------------------------------- engine


def test_engine_satisfies_protocol(model, tokenizer):
    assert isinstance(TransformersEngine(model, tokenizer), RolloutEngine)


def test_request_order_counts_and_tags_preserved(model, tokenizer, prompt_ids):
    requests = [
        RolloutRequest("long", 3, RolloutKind.PILOT),
        RolloutRequest("short", 5, RolloutKind.COMMIT),
        RolloutRequest("mid", 1, RolloutKind.UNIFORM),
        RolloutRequest("short", 2, RolloutKind.PILOT),
        RolloutRequest("two", 0, RolloutKind.PILOT),
    ]
    # a batch of 4 rows splits requests across chunks
    engine = TransformersEngine(model, tokenizer, max_rollouts_per_batch=4)
    params = SamplingParams(max_new_tokens=5)
    results = engine.generate(requests, prompt_ids, params, seed=3, policy_step=7)
    assert [res.request for res in results] == requests
    for request, result in zip(requests, results):
        assert len(result.rollouts) == request.count
        for rollout in result.rollouts:
            assert rollout.prompt_id == request.prompt_id
            assert rollout.kind == request.kind
            assert rollout.prompt_token_ids == prompt_ids[request.prompt_id]
            assert rollout.policy_step == 7
            assert math.isnan(rollout.reward)
            assert len(rollout.sampler_logprobs) == len(rollout.completion_token_ids)
    stats = engine.last_stats
    assert stats.num_rollouts == 11
    assert stats.num_prompt_tokens == sum(len(prompt_ids[r.prompt_id]) * r.count for r in requests)
    assert stats.num_generated_tokens == sum(r.num_completion_tokens for r in _flat(results))
    assert stats.wall_s > 0


def test_empty_call(model, tokenizer, prompt_ids):
    engine = TransformersEngine(model, tokenizer)
    assert engine.generate([], prompt_ids, SamplingParams(), seed=0) == []
    assert engine.last_stats.num_rollouts == 0


def test_eos_included_and_finish_reasons(tokenizer, prompt_ids):
    eos = tokenizer.eos_token_id
    model = _model(tokenizer, seed=1, eos_bias=2.0)
    engine = TransformersEngine(model, tokenizer, max_rollouts_per_batch=16)
    params = SamplingParams(max_new_tokens=6)
    results = engine.generate(_requests(("short", 40), ("long", 40)), prompt_ids, params, seed=0)
    reasons = set()
    for rollout in _flat(results):
        ids = rollout.completion_token_ids
        reasons.add(rollout.finish_reason)
        if rollout.finish_reason == FINISH_STOP:
            assert ids[-1] == eos and eos not in ids[:-1]
            assert 1 <= len(ids) <= params.max_new_tokens
        else:
            assert rollout.finish_reason == FINISH_LENGTH
            assert len(ids) == params.max_new_tokens and eos not in ids
        text_ids = ids[:-1] if rollout.finish_reason == FINISH_STOP else ids
        assert rollout.text == tokenizer.decode(text_ids, skip_special_tokens=True)
        assert "<eos>" not in rollout.text
    # the bias makes rows stop at different steps, and some never
    assert reasons == {FINISH_STOP, FINISH_LENGTH}
    lengths = {r.num_completion_tokens for r in _flat(results) if r.finish_reason == FINISH_STOP}
    assert len(lengths) >= 3


def test_certain_eos_gives_eos_only_completions(tokenizer, prompt_ids):
    model = _model(tokenizer, seed=1, eos_bias=60.0)
    engine = TransformersEngine(model, tokenizer)
    results = engine.generate(_requests(("mid", 4)), prompt_ids, SamplingParams(), seed=0)
    for rollout in _flat(results):
        assert rollout.completion_token_ids == [tokenizer.eos_token_id]
        assert rollout.finish_reason == FINISH_STOP
        assert rollout.text == ""
        assert rollout.sampler_logprobs[0] == pytest.approx(0.0, abs=1e-5)


def test_same_seed_same_rollouts_other_seed_differs(model, tokenizer, prompt_ids):
    engine = TransformersEngine(model, tokenizer)
    requests = _requests(("short", 8), ("long", 8), ("mid", 8))
    params = SamplingParams(max_new_tokens=6)

    def run(seed: int):
        return [
            (r.completion_token_ids, r.sampler_logprobs, r.text, r.finish_reason)
            for r in _flat(engine.generate(requests, prompt_ids, params, seed=seed))
        ]

    first = run(11)
    assert run(11) == first
    assert run(12) != first
    # rows of one prompt are not copies of each other
    assert len({tuple(ids) for ids, *_ in first[:8]}) > 1


def test_sampling_does_not_depend_on_chunking(model, tokenizer, prompt_ids):
    requests = _requests(("long", 5), ("short", 6), ("two", 3))
    params = SamplingParams(max_new_tokens=6)
    big = TransformersEngine(model, tokenizer).generate(requests, prompt_ids, params, seed=5)
    small = TransformersEngine(model, tokenizer, max_rollouts_per_batch=4).generate(
        requests, prompt_ids, params, seed=5
    )
    assert [r.completion_token_ids for r in _flat(big)] == [
        r.completion_token_ids for r in _flat(small)
    ]


def test_dropping_finished_rows_early_or_late_gives_the_same_rollouts(tokenizer, prompt_ids):
    model = _model(tokenizer, seed=2, eos_bias=1.5)
    requests = _requests(("long", 7), ("short", 9), ("mid", 5))
    params = SamplingParams(max_new_tokens=8)
    outputs = []
    for fraction in (0.0, 0.25, 1.0):
        engine = TransformersEngine(model, tokenizer, compact_fraction=fraction)
        rollouts = _flat(engine.generate(requests, prompt_ids, params, seed=6))
        outputs.append([(r.completion_token_ids, r.finish_reason) for r in rollouts])
        logprobs = [lp for r in rollouts for lp in r.sampler_logprobs]
        if fraction == 0.0:
            reference = logprobs
        else:
            assert logprobs == pytest.approx(reference, abs=1e-5)
    assert outputs[0] == outputs[1] == outputs[2]
    assert {reason for _, reason in outputs[0]} == {FINISH_STOP, FINISH_LENGTH}


def test_global_rng_untouched_and_model_mode_restored(model, tokenizer, prompt_ids):
    engine = TransformersEngine(model, tokenizer)
    state = torch.get_rng_state()
    model.train()
    try:
        engine.generate(_requests(("short", 3)), prompt_ids, SamplingParams(), seed=1)
        assert model.training
    finally:
        model.eval()
    engine.generate(_requests(("short", 3)), prompt_ids, SamplingParams(), seed=1)
    assert not model.training
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_teacher_forced_forward(model, tokenizer, prompt_ids, temperature):
    engine = TransformersEngine(model, tokenizer, max_rollouts_per_batch=8)
    params = SamplingParams(temperature=temperature, max_new_tokens=7)
    results = engine.generate(
        _requests(("long", 4), ("short", 4), ("mid", 4)), prompt_ids, params, seed=2
    )
    for rollout in _flat(results):
        logits_TV = _teacher_forced_logits(
            model, rollout.prompt_token_ids, rollout.completion_token_ids
        )
        expected_T = (
            torch.log_softmax(logits_TV / temperature, dim=-1)
            .gather(1, torch.tensor(rollout.completion_token_ids).unsqueeze(1))
            .squeeze(1)
        )
        assert torch.allclose(torch.tensor(rollout.sampler_logprobs), expected_T, atol=1e-4)


def test_top_p_logprobs_are_renormalised_over_the_nucleus(model, tokenizer, prompt_ids):
    top_p = 0.5
    engine = TransformersEngine(model, tokenizer)
    params = SamplingParams(temperature=1.0, top_p=top_p, max_new_tokens=5)
    results = engine.generate(_requests(("mid", 6), ("long", 6)), prompt_ids, params, seed=4)
    for rollout in _flat(results):
        logits_TV = _teacher_forced_logits(
            model, rollout.prompt_token_ids, rollout.completion_token_ids
        )
        for t, token in enumerate(rollout.completion_token_ids):
            probs_V = torch.softmax(logits_TV[t], dim=-1)
            sorted_V, order_V = probs_V.sort(descending=True, stable=True)
            nucleus_size = int(((sorted_V.cumsum(0) - sorted_V) < top_p).sum())
            nucleus = order_V[:nucleus_size]
            assert token in nucleus.tolist()
            expected = math.log(probs_V[token] / probs_V[nucleus].sum())
            assert rollout.sampler_logprobs[t] == pytest.approx(expected, abs=1e-4)


def test_greedy_equals_naive_argmax_decoding(model, tokenizer, prompt_ids):
    engine = TransformersEngine(model, tokenizer)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    requests = _requests(*((pid, 2) for pid in PROBLEMS))
    results = engine.generate(requests, prompt_ids, params, seed=0)
    for rollout in _flat(results):
        expected = _naive_greedy(
            model, rollout.prompt_token_ids, params.max_new_tokens, tokenizer.eos_token_id
        )
        assert rollout.completion_token_ids == expected
        logits_TV = _teacher_forced_logits(model, rollout.prompt_token_ids, expected)
        plain_T = torch.log_softmax(logits_TV, -1).gather(1, torch.tensor(expected)[:, None])
        assert torch.allclose(torch.tensor(rollout.sampler_logprobs), plain_T.squeeze(1), atol=1e-4)
        assert all(lp < 0 for lp in rollout.sampler_logprobs)


def test_tiny_top_p_equals_greedy(model, tokenizer, prompt_ids):
    engine = TransformersEngine(model, tokenizer)
    requests = _requests(("long", 3), ("short", 3), ("mid", 3))
    greedy = engine.generate(requests, prompt_ids, SamplingParams(temperature=0.0), seed=0)
    nucleus = engine.generate(
        requests, prompt_ids, SamplingParams(temperature=1.0, top_p=1e-6), seed=9
    )
    assert [r.completion_token_ids for r in _flat(greedy)] == [
        r.completion_token_ids for r in _flat(nucleus)
    ]


def test_left_padding_matches_each_prompt_alone(tokenizer, prompt_ids):
    # an EOS bias so that rows of different lengths stop at different steps
    model = _model(tokenizer, seed=3, eos_bias=1.0)
    engine = TransformersEngine(model, tokenizer)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    together = engine.generate(
        _requests(*((pid, 1) for pid in PROBLEMS)), prompt_ids, params, seed=0
    )
    for result in together:
        alone = engine.generate([result.request], prompt_ids, params, seed=0)
        assert result.rollouts[0].completion_token_ids == alone[0].rollouts[0].completion_token_ids
        assert result.rollouts[0].sampler_logprobs == pytest.approx(
            alone[0].rollouts[0].sampler_logprobs, abs=1e-5
        )


def test_missing_prompt_id_raises_key_error_naming_it(model, tokenizer, prompt_ids):
    engine = TransformersEngine(model, tokenizer)
    with pytest.raises(KeyError, match="no-such-prompt"):
        engine.generate(
            _requests(("short", 1), ("no-such-prompt", 2)), prompt_ids, SamplingParams(), seed=0
        )


def test_bad_prompts_are_rejected_with_their_id(model, tokenizer):
    engine = TransformersEngine(model, tokenizer)
    with pytest.raises(ValueError, match="'empty'"):
        engine.generate(_requests(("empty", 1)), {"empty": []}, SamplingParams(), seed=0)
    with pytest.raises(ValueError, match="'huge'.*vocabulary"):
        engine.generate(_requests(("huge", 1)), {"huge": [1, 10_000]}, SamplingParams(), seed=0)


def test_the_request_checks_both_engines_share():
    # protocol.validated_prompts; the vLLM engine passes no vocabulary size (it never checked one)
    requests = _requests(("a", 2), ("b", 0), ("a", 1))
    assert validated_prompts(requests, {"a": (3, 4), "b": [5]}) == [[3, 4], [5], [3, 4]]
    beyond = {"a": [3, 10_000], "b": [5]}
    assert validated_prompts(requests, beyond) == [[3, 10_000], [5], [3, 10_000]]
    with pytest.raises(ValueError, match=r"'a'.*vocabulary \[0, 100\)"):
        validated_prompts(requests, beyond, vocab_size=100)
    with pytest.raises(ValueError, match=r"request 1 \(prompt id 'b'\) asks for -1 rollouts"):
        validated_prompts(_requests(("a", 1), ("b", -1)), {"a": [3], "b": [5]})


@pytest.mark.parametrize("max_new_tokens", [1, 3, 9])
def test_max_new_tokens_respected(model, tokenizer, prompt_ids, max_new_tokens):
    engine = TransformersEngine(model, tokenizer, max_rollouts_per_batch=6)
    params = SamplingParams(max_new_tokens=max_new_tokens)
    results = engine.generate(_requests(("long", 6), ("two", 6)), prompt_ids, params, seed=8)
    lengths = [r.num_completion_tokens for r in _flat(results)]
    assert max(lengths) <= max_new_tokens
    for rollout in _flat(results):
        if rollout.finish_reason == FINISH_LENGTH:
            assert rollout.num_completion_tokens == max_new_tokens


def test_shared_engine_follows_learner_weights(tokenizer, prompt_ids):
    model = _model(tokenizer, seed=4)
    engine = TransformersEngine(model, tokenizer)
    params = SamplingParams(temperature=0.0)
    requests = _requests(("mid", 1))
    before = engine.generate(requests, prompt_ids, params, seed=0)[0].rollouts[0]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    engine.update_weights(model)
    assert engine.weights_version == 1
    after = engine.generate(requests, prompt_ids, params, seed=0)[0].rollouts[0]
    assert after.sampler_logprobs != before.sampler_logprobs


def test_own_copy_changes_only_on_update_weights(tokenizer, prompt_ids):
    learner = _model(tokenizer, seed=5)
    engine = TransformersEngine(learner, tokenizer, own_copy=True)
    assert engine.model is not learner
    params = SamplingParams(temperature=0.0)
    requests = _requests(("long", 1))
    before = engine.generate(requests, prompt_ids, params, seed=0)[0].rollouts[0]
    with torch.no_grad():
        for p in learner.parameters():
            p.mul_(1.5)
    unchanged = engine.generate(requests, prompt_ids, params, seed=0)[0].rollouts[0]
    assert unchanged.sampler_logprobs == before.sampler_logprobs
    engine.update_weights(learner.state_dict())
    updated = engine.generate(requests, prompt_ids, params, seed=0)[0].rollouts[0]
    expected = _naive_greedy(learner, updated.prompt_token_ids, 8, tokenizer.eos_token_id)
    assert updated.completion_token_ids == expected
    assert updated.sampler_logprobs != before.sampler_logprobs
    with pytest.raises(TypeError, match="state dict"):
        engine.update_weights([1, 2, 3])


def test_own_copy_in_bfloat16(tokenizer, prompt_ids):
    learner = _model(tokenizer, seed=6)
    engine = TransformersEngine(learner, tokenizer, own_copy=True, dtype=torch.bfloat16)
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    assert next(learner.parameters()).dtype == torch.float32
    results = engine.generate(_requests(("mid", 4)), prompt_ids, SamplingParams(), seed=0)
    for rollout in _flat(results):
        logits_TV = _teacher_forced_logits(
            engine.model, rollout.prompt_token_ids, rollout.completion_token_ids
        )
        expected_T = torch.log_softmax(logits_TV, -1).gather(
            1, torch.tensor(rollout.completion_token_ids)[:, None]
        )
        # bf16 activations: batched and single forward passes differ more than in fp32
        assert torch.allclose(
            torch.tensor(rollout.sampler_logprobs), expected_T.squeeze(1), atol=5e-2
        )


def test_shared_model_is_never_moved_or_cast(model, tokenizer):
    with pytest.raises(ValueError, match="own_copy=True"):
        TransformersEngine(model, tokenizer, dtype=torch.float64)
    with pytest.raises(ValueError, match="max_rollouts_per_batch"):
        TransformersEngine(model, tokenizer, max_rollouts_per_batch=0)
    with pytest.raises(ValueError, match="compact_fraction"):
        TransformersEngine(model, tokenizer, compact_fraction=1.5)
