"""A rollout engine on plain ``transformers`` causal LMs (CPU or one GPU).

It implements :class:`pilotcommit.rollout.protocol.RolloutEngine` with its own
sampling loop (prefill, then one forward pass per new token with a KV cache),
because the learner needs exactly what ``model.generate`` does not hand back
cheaply: the log-probability of every sampled token under the distribution it
was really drawn from (after temperature and top-p), EOS included in the ids,
and a seed-determined result that does not touch the global torch RNG.

How a call runs:

1. Every request becomes ``count`` rows. Requests are sorted by prompt length
   (stable) so that a chunk of at most ``max_rollouts_per_batch`` rows needs
   little left padding; results are put back in request order.
2. Rows of one request share their prompt, so a chunk prefills each distinct
   request once and copies its KV cache to the request's rows (a 512-rollout
   call of 32 prompts runs 32 prompt prefills, not 512).
3. Decoding feeds one token per active row; rows that emitted a stop token
   are dropped from the batch (and the cache) so they cost nothing after.
4. Sampling is inverse-CDF sampling on tensors (``rollout.sampling``) with
   one uniform number per (row, step), drawn up front in request-row order
   from a local ``torch.Generator`` seeded with ``seed``. A row's random
   numbers therefore do not depend on the sort order or the chunking, only on
   its place in the call; the logits it sees may differ in the last float bits
   with the batch composition (padding), as with any batched engine.

Departures from ``model.generate`` worth knowing: no repetition penalty,
top-k, min-p or beam search (the paper's settings need none of them); the
stop tokens are the tokenizer's EOS plus the model's generation-config EOS ids.

Deliberately not here: choosing seeds (``derive_seed`` at the call site),
rewards, and anything vLLM does (paged attention, continuous batching).
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from pilotcommit.rollout.protocol import (
    EMPTY_STATS,
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationStats,
    SamplingParams,
    validated_prompts,
)
from pilotcommit.rollout.sampling import left_pad, sample_next_tokens
from pilotcommit.types import RequestResult, Rollout, RolloutRequest

# --------------------------------------------------------------------------- engine


@dataclass(frozen=True)
class _Segment:
    """Consecutive rows of one request inside a chunk (they share one prefill)."""

    request_index: int
    num_rows: int
    first_global_row: int


class TransformersEngine:
    """Samples rollouts from a ``transformers`` causal LM (see the module docstring).

    By default the engine *shares* ``model`` with the learner: every call
    samples from the learner's current weights and ``update_weights`` only
    counts versions. With ``own_copy=True`` it samples from a private copy
    (optionally on another ``device`` / in another ``dtype``, e.g. a bf16
    inference copy) that ``update_weights`` refreshes from a module or a state
    dict.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_rollouts_per_batch: int = 1024,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        own_copy: bool = False,
        stop_token_ids: Iterable[int] | None = None,
        compact_fraction: float = 0.25,
    ) -> None:
        """``max_rollouts_per_batch`` rows are decoded together (memory bound);
        ``stop_token_ids`` default to the tokenizer's and generation config's EOS;
        finished rows are dropped from the batch once they are ``compact_fraction``
        of it (0 drops them at once: a cache copy per step with any stop)."""
        if max_rollouts_per_batch < 1:
            raise ValueError(
                f"TransformersEngine: max_rollouts_per_batch must be >= 1, got {max_rollouts_per_batch}"
            )
        model_device = next(model.parameters()).device
        model_dtype = next(model.parameters()).dtype
        target_device = torch.device(device) if device is not None else model_device
        target_dtype = dtype if dtype is not None else model_dtype
        if own_copy:
            model = copy.deepcopy(model).to(device=target_device, dtype=target_dtype)
            model.requires_grad_(False)
        elif _device_differs(target_device, model_device) or target_dtype != model_dtype:
            raise ValueError(
                f"TransformersEngine: the model is on {model_device} in {model_dtype} but "
                f"device={target_device} / dtype={target_dtype} was asked for; a shared model "
                "is never moved behind the learner's back: pass own_copy=True to sample from "
                "a copy"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_rollouts_per_batch = max_rollouts_per_batch
        self.device = target_device
        self.own_copy = own_copy
        self.stop_token_ids = sorted(
            set(
                stop_token_ids
                if stop_token_ids is not None
                else _default_stop_ids(model, tokenizer)
            )
        )
        if not self.stop_token_ids:
            raise ValueError(
                "TransformersEngine: no stop token: the tokenizer has no eos_token_id and the "
                "model's generation_config none either; pass stop_token_ids"
            )
        pad_id = tokenizer.pad_token_id
        self.pad_token_id = int(pad_id if pad_id is not None else self.stop_token_ids[0])
        if not 0.0 <= compact_fraction <= 1.0:
            raise ValueError(
                f"TransformersEngine: compact_fraction must be in [0, 1], got {compact_fraction}"
            )
        self.compact_fraction = compact_fraction
        self.last_stats: GenerationStats = EMPTY_STATS
        # bumped by update_weights; the loop can assert the engine saw every update
        self.weights_version = 0
        self._bind_forward_signature()

    # ----------------------------------------------------------------- protocol

    def update_weights(self, weights: Any) -> None:
        """Take the learner's weights: an ``nn.Module`` or a state dict.

        Shared engine: the same module is a no-op; another module becomes the
        shared one. Own copy: the module's state dict (or the given state dict)
        is copied in (cast to the copy's device and dtype by ``load_state_dict``).
        """
        if isinstance(weights, torch.nn.Module):
            if weights is not self.model:
                if self.own_copy:
                    self.model.load_state_dict(weights.state_dict())
                else:
                    self.model = weights
                    self.device = next(weights.parameters()).device
                    self._bind_forward_signature()
        elif isinstance(weights, Mapping):
            with torch.no_grad():
                self.model.load_state_dict(weights)
        else:
            raise TypeError(
                "TransformersEngine.update_weights: expected an nn.Module or a state dict, "
                f"got {type(weights).__name__}"
            )
        self.weights_version += 1

    def generate(
        self,
        requests: Sequence[RolloutRequest],
        prompt_token_ids: Mapping[str, list[int]],
        params: SamplingParams,
        *,
        seed: int,
        policy_step: int = 0,
    ) -> list[RequestResult]:
        """Sample ``request.count`` completions per request (protocol contract)."""
        start = time.perf_counter()
        prompts = validated_prompts(requests, prompt_token_ids, vocab_size=self._vocab_size)
        counts = [r.count for r in requests]
        total_rows = sum(counts)
        row_offsets = [0]
        for count in counts:
            row_offsets.append(row_offsets[-1] + count)
        steps = params.max_new_tokens

        # one uniform per (row, step) in request-row order: chunking and sorting
        # do not change which random numbers a row gets
        uniforms_RT: Tensor | None = None
        if not params.greedy and total_rows:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
            uniforms_RT = torch.rand((total_rows, steps), generator=generator)

        tokens_RT = torch.full((total_rows, steps), self.pad_token_id, dtype=torch.long)
        logprobs_RT = torch.zeros((total_rows, steps), dtype=torch.float32)
        lengths_R = torch.full((total_rows,), steps, dtype=torch.long)
        stopped_R = torch.zeros((total_rows,), dtype=torch.bool)

        was_training = self.model.training
        self.model.eval()
        try:
            with _grad_free(self.model):
                for chunk in self._chunks(requests, prompts, row_offsets):
                    rows_B = torch.cat(
                        [
                            torch.arange(s.first_global_row, s.first_global_row + s.num_rows)
                            for s in chunk
                        ]
                    )
                    chunk_uniforms_BT = (
                        uniforms_RT[rows_B].to(self.device) if uniforms_RT is not None else None
                    )
                    tokens_BT, logprobs_BT, lengths_B, stopped_B = self._generate_chunk(
                        [prompts[s.request_index] for s in chunk],
                        [s.num_rows for s in chunk],
                        chunk_uniforms_BT,
                        params,
                    )
                    tokens_RT[rows_B] = tokens_BT.cpu()
                    logprobs_RT[rows_B] = logprobs_BT.float().cpu()
                    lengths_R[rows_B] = lengths_B.cpu()
                    stopped_R[rows_B] = stopped_B.cpu()
        finally:
            self.model.train(was_training)

        results = self._assemble(
            requests,
            prompts,
            row_offsets,
            tokens_RT,
            logprobs_RT,
            lengths_R,
            stopped_R,
            policy_step,
        )
        self.last_stats = GenerationStats(
            num_rollouts=total_rows,
            num_prompt_tokens=sum(len(prompts[i]) * c for i, c in enumerate(counts)),
            num_generated_tokens=int(lengths_R.sum()),
            wall_s=time.perf_counter() - start,
        )
        return results

    # ----------------------------------------------------------------- internals

    def _bind_forward_signature(self) -> None:
        # transformers 5 renamed past_key_values -> cache; support both
        parameters = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self._has_logits_to_keep = "logits_to_keep" in parameters
        self._vocab_size = self.model.get_input_embeddings().num_embeddings

    def _chunks(
        self,
        requests: Sequence[RolloutRequest],
        prompts: list[list[int]],
        row_offsets: list[int],
    ) -> Iterable[list[_Segment]]:
        """Chunks of at most ``max_rollouts_per_batch`` rows, requests sorted by prompt length."""
        order = sorted(range(len(requests)), key=lambda i: len(prompts[i]))
        chunk: list[_Segment] = []
        room = self.max_rollouts_per_batch
        for index in order:
            done = 0
            while done < requests[index].count:
                take = min(room, requests[index].count - done)
                chunk.append(_Segment(index, take, row_offsets[index] + done))
                done += take
                room -= take
                if room == 0:
                    yield chunk
                    chunk, room = [], self.max_rollouts_per_batch
        if chunk:
            yield chunk

    def _forward(self, cache: DynamicCache, **inputs: Tensor) -> Tensor:
        """Logits of the last position, ``[B, V]``."""
        kwargs: dict[str, Any] = {self._cache_kwarg: cache, "use_cache": True, **inputs}
        if self._has_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        return self.model(**kwargs).logits[:, -1]

    def _generate_chunk(
        self,
        prompts: list[list[int]],
        rows_per_prompt: list[int],
        uniforms_BT: Tensor | None,
        params: SamplingParams,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Decode one chunk; return ``tokens_BT, logprobs_BT, lengths_B, stopped_B``."""
        device = self.device
        steps = params.max_new_tokens
        input_ids_UL, attention_mask_UL = left_pad(prompts, self.pad_token_id)
        input_ids_UL = input_ids_UL.to(device)
        attention_mask_UL = attention_mask_UL.to(device)
        # positions count real tokens only, so left padding does not shift RoPE
        position_ids_UL = (attention_mask_UL.cumsum(dim=1) - 1).clamp_(min=0)
        cache = _new_cache(self.model)
        logits_UV = self._forward(
            cache,
            input_ids=input_ids_UL,
            attention_mask=attention_mask_UL,
            position_ids=position_ids_UL,
        )
        # copy each distinct prompt's prefill to its rows
        expand_B = torch.repeat_interleave(
            torch.arange(len(prompts), device=device),
            torch.as_tensor(rows_per_prompt, device=device),
        )
        num_rows = int(expand_B.shape[0])
        if num_rows != len(prompts):
            cache.batch_select_indices(expand_B)
        logits_AV = logits_UV[expand_B]
        attention_mask_AL = attention_mask_UL[expand_B]
        next_position_A = torch.as_tensor([len(p) for p in prompts], device=device)[expand_B]

        stop_ids = torch.as_tensor(self.stop_token_ids, device=device)
        tokens_BT = torch.full(
            (num_rows, steps), self.pad_token_id, dtype=torch.long, device=device
        )
        logprobs_BT = torch.zeros((num_rows, steps), dtype=torch.float32, device=device)
        lengths_B = torch.full((num_rows,), steps, dtype=torch.long, device=device)
        stopped_B = torch.zeros((num_rows,), dtype=torch.bool, device=device)
        # batch row -> chunk row; rows that stopped stay in the batch (their samples
        # are ignored) until enough of them have piled up to pay for a compaction
        rows_A = torch.arange(num_rows, device=device)
        alive_A = torch.ones((num_rows,), dtype=torch.bool, device=device)
        for step in range(steps):
            uniforms_A = uniforms_BT[rows_A, step] if uniforms_BT is not None else None
            token_ids_A, logprobs_A = sample_next_tokens(
                logits_AV, uniforms_A, params.temperature, params.top_p
            )
            tokens_BT[rows_A, step] = torch.where(alive_A, token_ids_A, self.pad_token_id)
            logprobs_BT[rows_A, step] = torch.where(alive_A, logprobs_A, 0.0)
            stop_A = torch.isin(token_ids_A, stop_ids) & alive_A
            lengths_B[rows_A] = torch.where(stop_A, step + 1, lengths_B[rows_A])
            stopped_B[rows_A] |= stop_A
            alive_A &= ~stop_A
            if step == steps - 1:
                break
            num_alive = int(alive_A.sum())
            if num_alive == 0:
                break
            num_rows_in_batch = rows_A.shape[0]
            if num_alive < num_rows_in_batch and num_alive <= (
                (1.0 - self.compact_fraction) * num_rows_in_batch
            ):
                keep_A = alive_A.nonzero().squeeze(1)
                cache.batch_select_indices(keep_A)
                rows_A = rows_A[keep_A]
                alive_A = alive_A[keep_A]
                token_ids_A = token_ids_A[keep_A]
                attention_mask_AL = attention_mask_AL[keep_A]
                next_position_A = next_position_A[keep_A]
            attention_mask_AL = torch.cat(
                [attention_mask_AL, attention_mask_AL.new_ones((attention_mask_AL.shape[0], 1))],
                dim=1,
            )
            logits_AV = self._forward(
                cache,
                input_ids=token_ids_A.unsqueeze(1),
                attention_mask=attention_mask_AL,
                position_ids=next_position_A.unsqueeze(1),
            )
            next_position_A = next_position_A + 1
        return tokens_BT, logprobs_BT, lengths_B, stopped_B

    def _assemble(
        self,
        requests: Sequence[RolloutRequest],
        prompts: list[list[int]],
        row_offsets: list[int],
        tokens_RT: Tensor,
        logprobs_RT: Tensor,
        lengths_R: Tensor,
        stopped_R: Tensor,
        policy_step: int,
    ) -> list[RequestResult]:
        # one conversion to Python lists for the whole call, then slicing
        token_rows = tokens_RT.tolist()
        logprob_rows = logprobs_RT.tolist()
        lengths = lengths_R.tolist()
        stopped = stopped_R.tolist()
        completions = [row[:n] for row, n in zip(token_rows, lengths)]
        # many rollouts of one prompt are identical: decode each distinct text once
        text_keys = [tuple(c[:-1] if s else c) for c, s in zip(completions, stopped)]
        distinct = list(dict.fromkeys(text_keys))
        decoded = self.tokenizer.batch_decode([list(k) for k in distinct], skip_special_tokens=True)
        text_of = dict(zip(distinct, decoded))

        results: list[RequestResult] = []
        for index, request in enumerate(requests):
            prompt = prompts[index]
            rollouts = [
                Rollout(
                    prompt_id=request.prompt_id,
                    kind=request.kind,
                    prompt_token_ids=prompt,
                    completion_token_ids=completions[row],
                    sampler_logprobs=logprob_rows[row][: lengths[row]],
                    text=text_of[text_keys[row]],
                    finish_reason=FINISH_STOP if stopped[row] else FINISH_LENGTH,
                    policy_step=policy_step,
                )
                for row in range(row_offsets[index], row_offsets[index + 1])
            ]
            results.append(RequestResult(request, rollouts))
        return results


def _device_differs(a: torch.device, b: torch.device) -> bool:
    # "cuda" and "cuda:0" name the same device when the model sits on cuda:0
    if a.type != b.type:
        return True
    return a.index is not None and b.index is not None and a.index != b.index


def _default_stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(generation_eos, int):
        ids.append(generation_eos)
    elif generation_eos is not None:
        ids.extend(int(i) for i in generation_eos)
    return ids


def _new_cache(model: PreTrainedModel) -> DynamicCache:
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56 builds layers lazily without a config
        return DynamicCache()


def _grad_free(model: torch.nn.Module):
    """``inference_mode`` (fastest), except on an FSDP-sharded model: there the parameters
    all-gathered during sampling are reused in place by the learner's next forward, which
    inference tensors forbid, so plain ``no_grad`` is used."""
    from torch.distributed.fsdp import FSDPModule

    return torch.no_grad() if isinstance(model, FSDPModule) else torch.inference_mode()
