"""Conversion between the rollout protocol and vLLM's objects, for the colocated vLLM engine.

:class:`pilotcommit.rollout.vllm_engine.VLLMEngine` hands vLLM its requests and reads its
outputs through the functions here. None of them needs an engine (a ``vllm.LLM``), so the
unit tests run them on stand-ins shaped like vLLM's objects; only :func:`_platform_options`
imports vLLM (through :func:`pilotcommit.dependencies.require`).

- **Requests in** (:func:`vllm_generate_inputs`). One vLLM request per
  :class:`~pilotcommit.types.RolloutRequest`: a token-id prompt (``TokensPrompt``) and
  ``SamplingParams(n=count, temperature, top_p, max_tokens, seed, logprobs=0,
  stop_token_ids, detokenize=False)``. ``logprobs=0`` returns the log-probability of the
  sampled token only; the engine builds vLLM with ``logprobs_mode="processed_logprobs"``, so
  that value is taken after temperature and top-p. A greedy request is sampled once
  (``n=1``) and its completion copied ``count`` times on the way out.
- **Seeds** (:func:`request_seed`). Request ``i`` of a call gets ``request_seed(seed, i)``;
  vLLM gives the ``k``-th of its ``n`` samples the seed ``+ k``. A rollout therefore depends
  on (weights, prompt, params, call seed, request position), not on how vLLM batches the
  call, except for the float differences any batched engine has.
- **Outputs out** (:func:`request_output_to_result`). A ``RequestOutput`` becomes a
  :class:`~pilotcommit.types.RequestResult`, its completions in sample order. Completion ids
  keep the stop token (vLLM appends it before it stops), the text is decoded here without
  special tokens, and the sampled token's log-prob is read per position; an unfinished
  completion, a wrong number of completions or an answer to another prompt is an error.
- **Replicas** (:func:`assign_requests_to_replicas`). Under ``torchrun`` the requests of a
  call are split between tensor-parallel replicas, whole requests so seeds stay put.
- **Weight names** (:func:`expected_weight_names`, :func:`check_weight_names`). The names a
  weight sync must carry (the learner model's parameters) and may carry (the rest of its
  state dict); a sync that lacks one or adds an unknown one is refused before anything loads.
- **Arguments of** ``vllm.LLM``: the supported version, this process's replica and executor
  backend, the platform's options, the KV cache size in bytes, the context length check.

Deliberately not here: the ``vllm.LLM`` and everything that needs it (generating, sleep and
wake-up, streaming the weights and checking inside vLLM's worker that every parameter was
loaded: ``rollout.vllm_engine``), choosing call seeds (``derive_seed`` at the call site),
and rewards.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pilotcommit.dependencies import VLLM_INSTALL, require
from pilotcommit.rollout.protocol import (
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationStats,
    SamplingParams,
    derive_seed,
)
from pilotcommit.types import RequestResult, Rollout, RolloutRequest

if TYPE_CHECKING:
    import torch

SUPPORTED_VLLM = ((0, 32), (0, 33))  # [lower, upper) of (major, minor)
# vLLM gives the k-th of a request's n samples the seed `seed + k`; 62 bits leave room for k
_SEED_MASK = (1 << 62) - 1


# --------------------------------------------------------------------------- requests in


def request_seed(seed: int, request_index: int) -> int:
    """The vLLM seed of request ``request_index`` of a ``generate(..., seed=seed)`` call."""
    return derive_seed(seed, request_index) & _SEED_MASK


def vllm_generate_inputs(
    requests: Sequence[RolloutRequest],
    prompts: Sequence[list[int]],
    indices: Sequence[int],
    params: SamplingParams,
    *,
    seed: int,
    stop_token_ids: list[int],
    sampling_params_cls: Any,
) -> tuple[list[dict[str, list[int]]], list[Any]]:
    """The prompts and sampling params ``llm.generate`` gets for requests ``indices`` of a
    ``generate(..., seed=seed)`` call (``prompts`` holds every request's token ids, in order)."""
    # greedy samples are all the same: ask once, copy
    per_request = 1 if params.greedy else None
    sampling = [
        sampling_params_cls(
            n=per_request or requests[i].count,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=request_seed(seed, i),
            logprobs=0,
            stop_token_ids=stop_token_ids,
            detokenize=False,  # decoded here, with the project's tokenizer
        )
        for i in indices
    ]
    # TokensPrompt is a TypedDict: a plain dict is one
    return [{"prompt_token_ids": prompts[i]} for i in indices], sampling

# --------------------------------------------------------------------------- outputs out


def sampled_token_logprobs(
    position_logprobs: Sequence[Any] | None, token_ids: Sequence[int]
) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position ``{token_id: Logprob}``.

    With ``logprobs=0`` each position holds the sampled token only (vLLM adds the sampled
    token to the top-k it was asked for). A ``Logprob`` object's ``.logprob`` and a bare float
    are both accepted.
    """
    if position_logprobs is None:
        raise ValueError("vLLM returned no log-probs: the request must set logprobs=0")
    if len(position_logprobs) != len(token_ids):
        raise ValueError(
            f"vLLM returned {len(position_logprobs)} log-prob positions for {len(token_ids)} tokens"
        )
    values = []
    for position, (token_id, entry) in enumerate(zip(token_ids, position_logprobs)):
        if token_id not in entry:
            raise ValueError(
                f"vLLM log-probs at position {position} do not include the sampled token {token_id}"
            )
        value = entry[token_id]
        values.append(float(getattr(value, "logprob", value)))
    return values


def completion_to_rollout(
    completion: Any,
    *,
    request: RolloutRequest,
    prompt_token_ids: list[int],
    policy_step: int,
    tokenizer: Any,
) -> Rollout:
    """A :class:`Rollout` from one vLLM ``CompletionOutput`` (fields ``token_ids``,
    ``logprobs``, ``finish_reason``)."""
    token_ids = [int(t) for t in completion.token_ids]
    if completion.finish_reason == "stop":
        finish = FINISH_STOP
    elif completion.finish_reason == "length":
        finish = FINISH_LENGTH
    else:  # "abort" or None: the request did not finish
        raise RuntimeError(
            f"vLLM did not finish a completion of prompt id {request.prompt_id!r} "
            f"(finish_reason={completion.finish_reason!r})"
        )
    return Rollout(
        prompt_id=request.prompt_id,
        kind=request.kind,
        prompt_token_ids=list(prompt_token_ids),
        completion_token_ids=token_ids,
        sampler_logprobs=sampled_token_logprobs(completion.logprobs, token_ids),
        text=tokenizer.decode(token_ids, skip_special_tokens=True),
        finish_reason=finish,
        policy_step=policy_step,
    )


def request_output_to_result(
    output: Any,
    request: RolloutRequest,
    prompt_token_ids: list[int],
    *,
    policy_step: int,
    tokenizer: Any,
    replicate: int = 1,
) -> RequestResult:
    """The :class:`RequestResult` of one vLLM ``RequestOutput`` (its ``outputs`` in sample
    order). ``replicate`` repeats each completion (greedy requests are sampled once)."""
    completions = sorted(output.outputs, key=lambda c: c.index)
    if len(completions) * replicate != request.count:
        raise RuntimeError(
            f"vLLM returned {len(completions)} x {replicate} completions for prompt id "
            f"{request.prompt_id!r}, which asked for {request.count}"
        )
    returned_prompt = getattr(output, "prompt_token_ids", None)
    if returned_prompt is not None and list(returned_prompt) != list(prompt_token_ids):
        raise RuntimeError(f"vLLM answered prompt id {request.prompt_id!r} with another prompt")
    rollouts = []
    for completion in completions:
        rollout = completion_to_rollout(
            completion,
            request=request,
            prompt_token_ids=prompt_token_ids,
            policy_step=policy_step,
            tokenizer=tokenizer,
        )
        rollouts.append(rollout)
        for _ in range(replicate - 1):  # each copy its own record: rewards are filled in place
            rollouts.append(_copy_rollout(rollout))
    return RequestResult(request=request, rollouts=rollouts)


def _copy_rollout(rollout: Rollout) -> Rollout:
    return Rollout(
        prompt_id=rollout.prompt_id,
        kind=rollout.kind,
        prompt_token_ids=list(rollout.prompt_token_ids),
        completion_token_ids=list(rollout.completion_token_ids),
        sampler_logprobs=list(rollout.sampler_logprobs),
        text=rollout.text,
        finish_reason=rollout.finish_reason,
        policy_step=rollout.policy_step,
    )


def generation_stats(results: Sequence[RequestResult], wall_s: float,
                     memory: Mapping[str, float] | None = None) -> GenerationStats:
    rollouts = [r for result in results for r in result.rollouts]
    return GenerationStats(
        num_rollouts=len(rollouts),
        num_prompt_tokens=sum(len(r.prompt_token_ids) for r in rollouts),
        num_generated_tokens=sum(r.num_completion_tokens for r in rollouts),
        wall_s=wall_s,
        memory=dict(memory or {}),
    )

# --------------------------------------------------------------------------- replicas, weights


def assign_requests_to_replicas(counts: Sequence[int], num_replicas: int) -> list[int]:
    """The replica of each request: largest requests first, each to the least loaded replica
    (ties to the lower replica), so replicas get about the same number of rollouts.
    Deterministic: every rank computes the same assignment."""
    if num_replicas < 1:
        raise ValueError(
            f"assign_requests_to_replicas: num_replicas must be >= 1, got {num_replicas}"
        )
    load = [0] * num_replicas
    assignment = [0] * len(counts)
    for index in sorted(range(len(counts)), key=lambda i: (-counts[i], i)):
        replica = min(range(num_replicas), key=lambda r: (load[r], r))
        assignment[index] = replica
        load[replica] += counts[index]
    return assignment


def stop_token_ids_of(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (as the transformers engine)."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos is not None:
        ids.update(int(i) for i in generation_eos)
    return sorted(ids)


def expected_weight_names(model: torch.nn.Module) -> tuple[frozenset[str], frozenset[str]]:
    """(names every sync must send, names a sync may send) for the learner's ``model``.

    Required: its parameters (a tied output head is one parameter, under the embedding's name).
    Allowed besides: the rest of its state dict (the tied ``lm_head.weight`` alias, persistent
    buffers), which vLLM's model classes accept and skip."""
    required = frozenset(name for name, _ in model.named_parameters())
    return required, required | frozenset(model.state_dict().keys())


def check_weight_names(
    names: Iterable[str], required: frozenset[str], allowed: frozenset[str]
) -> None:
    """Refuse a sync that would leave a parameter stale or send one vLLM does not know."""
    names = set(names)
    missing, unknown = sorted(required - names), sorted(names - allowed)
    if missing:
        raise ValueError(
            f"VLLMEngine.update_weights: the weights lack {len(missing)} of the model's "
            f"{len(required)} parameters (first: {missing[:5]}); a weight sync must carry every "
            "parameter, nothing was loaded"
        )
    if unknown:
        raise ValueError(
            f"VLLMEngine.update_weights: {len(unknown)} weights are not parameters of the model "
            f"(first: {unknown[:5]}); nothing was loaded"
        )

# --------------------------------------------------------------------------- arguments of vllm.LLM


def _check_vllm_version(version: str) -> None:
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if not SUPPORTED_VLLM[0] <= parts < SUPPORTED_VLLM[1]:
        raise RuntimeError(
            f"vllm {version} is installed; this engine supports {VLLM_INSTALL}. Other "
            "versions moved the APIs it uses (weight reload, collective_rpc, logprobs_mode, "
            "sleep mode)"
        )


def _parallel_layout(tensor_parallel_size: int) -> tuple[int, int, str | None]:
    """(replica, number of replicas, vLLM executor backend) for this process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        if world % tensor_parallel_size:
            raise ValueError(
                f"rollout.vllm.tensor_parallel_size ({tensor_parallel_size}) must divide the "
                f"torchrun world size ({world})"
            )
        return (
            dist.get_rank() // tensor_parallel_size,
            world // tensor_parallel_size,
            "external_launcher",
        )
    if tensor_parallel_size > 1:
        raise ValueError(
            f"rollout.vllm.tensor_parallel_size is {tensor_parallel_size} but this is a single "
            "process: start the run under `torchrun --nproc-per-node N` (N a multiple of it), "
            "where each rank hosts one tensor-parallel shard next to its FSDP learner shard"
        )
    return 0, 1, None


def _platform_options() -> dict[str, Any]:
    """``vllm.LLM`` arguments this platform needs.

    CPU: no chunked prefill. vLLM 0.32 rewinds a seeded request's generator after a partial
    prefill with ``Generator.set_offset``, which CPU generators lack ("CPU Generator does not
    use offset"): a call whose prompts exceed one step's token budget (4096 tokens on CPU,
    e.g. the demo's 512 rollouts of 11-token prompts) would crash. Without chunking a prompt is
    prefilled whole or waits for the next step."""
    current_platform = require("vllm.platforms").current_platform

    return {"enable_chunked_prefill": False} if current_platform.is_cpu() else {}


def _kv_cache_bytes(gib: float | None) -> int | None:
    return None if gib is None else int(gib * (1 << 30))


def _check_context_length(model: torch.nn.Module, max_model_len: int) -> None:
    declared = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if (
        declared is not None
        and max_model_len > declared
        and not os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN")
    ):
        raise ValueError(
            f"model.max_prompt_length + rollout.max_new_tokens = {max_model_len} tokens exceeds "
            f"the model's max_position_embeddings ({declared}); vLLM refuses it unless "
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 is set (the paper's 1.5B run needs it, see "
            "docs/paper_scale.md) or the lengths are lowered"
        )
