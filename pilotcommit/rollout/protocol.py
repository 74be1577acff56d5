"""The contract every rollout engine honours, and the plain records it uses.

The training loop, the evaluation and the benchmarks talk to "an engine" only
through :class:`RolloutEngine`; the transformers engine (CPU/GPU), a vLLM
engine and the test double of the loop all implement it; the engines share
:func:`validated_prompts`, the checks a ``generate`` call makes on its requests
before it samples. This module is plain Python on purpose (no torch): the loop's
unit tests and the allocation code can import it without a model.

Conventions every engine keeps (the learner relies on them):

- ``completion_token_ids`` INCLUDE the stop (EOS) token when the model
  generated one (``finish_reason == "stop"``), so the learner trains the
  policy to stop. A rollout cut at ``max_new_tokens`` has
  ``finish_reason == "length"`` and no EOS at its end.
- ``sampler_logprobs[i]`` is the log-probability of ``completion_token_ids[i]``
  under the distribution the engine actually sampled from (after temperature
  and top-p renormalisation). At ``temperature == 1`` and ``top_p == 1`` that
  is the model's plain ``log_softmax``. For greedy decoding (temperature 0) the
  sampled distribution is a point mass, so engines report the plain
  ``log_softmax`` of the chosen token instead (a useful diagnostic, never 0).
- ``text`` is the decoded completion without special tokens (no EOS).
- ``reward`` is NaN: rewards are someone else's job.
- Results come back in request order, ``len(result.rollouts) == request.count``.
- Sampling is a deterministic function of (weights, requests in order, prompt
  token ids, params, seed, engine batch settings): the same seed gives the
  same rollouts. A rollout's randomness may depend on the other requests of
  the call (they share a batch); callers must not assume otherwise.

What this module deliberately does not do: choose seeds for the caller, decide
how many rollouts a prompt gets (that is ``allocation/``), or compute rewards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pilotcommit.types import RequestResult, RolloutRequest

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass(frozen=True)
class SamplingParams:
    """How to sample completions. The seed is NOT here: it is passed to every
    ``generate`` call, because the same params (training, or evaluation) are
    used for many calls that each need their own seed (see :func:`derive_seed`)."""

    # 0 means greedy (argmax) decoding; ALGORITHMS.md trains at 1.0
    temperature: float = 1.0
    # nucleus sampling: keep the smallest set of most likely tokens whose mass
    # reaches top_p (the most likely token is always kept); 1.0 disables it
    top_p: float = 1.0
    # completion tokens per rollout, EOS included
    max_new_tokens: int = 8

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:  # also rejects NaN
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(
                f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class GenerationStats:
    """What one ``generate`` call cost; the loop logs ``time/generate_s`` and
    ``throughput/generated_tokens_per_s`` from it."""

    num_rollouts: int
    # prompt tokens summed over rollouts (a prompt sampled k times counts k times)
    num_prompt_tokens: int
    # completion tokens summed over rollouts, EOS included
    num_generated_tokens: int
    wall_s: float
    # accelerator memory around the call's phases (memory/<phase>_*_gib; empty without CUDA)
    memory: dict[str, float] = field(default_factory=dict)

    @property
    def generated_tokens_per_s(self) -> float:
        return self.num_generated_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def rollouts_per_s(self) -> float:
        return self.num_rollouts / self.wall_s if self.wall_s > 0 else 0.0


EMPTY_STATS = GenerationStats(num_rollouts=0, num_prompt_tokens=0, num_generated_tokens=0, wall_s=0.0)


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples completions for rollout requests with the current policy weights."""

    # statistics of the most recent ``generate`` call (EMPTY_STATS before the first)
    last_stats: GenerationStats

    def generate(
        self,
        requests: Sequence[RolloutRequest],
        prompt_token_ids: Mapping[str, list[int]],
        params: SamplingParams,
        *,
        seed: int,
        policy_step: int = 0,
    ) -> list[RequestResult]:
        """One ``RequestResult`` per request, in order, each with ``request.count``
        rollouts of ``prompt_token_ids[request.prompt_id]`` tagged with
        ``policy_step``. Raises ``KeyError`` naming a prompt id that has no ids."""
        ...

    def update_weights(self, weights: Any) -> None:
        """Receive the learner's weights after an update: an ``nn.Module`` or a
        state dict (engine-specific; a no-op when the engine shares the module)."""
        ...


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, step, round, ...), stable across
    processes and Python versions (unlike ``hash``), so per-call sampling seeds
    can be derived from the run seed without drawing from a shared generator."""
    if not parts:
        raise ValueError("derive_seed needs at least one integer")
    digest = hashlib.blake2b(
        b",".join(str(int(p)).encode() for p in parts), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little") >> 1


def validated_prompts(
    requests: Sequence[RolloutRequest],
    prompt_token_ids: Mapping[str, Sequence[int]],
    *,
    vocab_size: int | None = None,
) -> list[list[int]]:
    """The prompt token ids of every request, in request order, after the checks each engine's
    ``generate`` makes before it samples: no negative ``count``, ids for every prompt id
    (``KeyError`` naming it, as the protocol says), at least one id per prompt, and, when the
    engine passes its ``vocab_size``, every id in ``[0, vocab_size)``."""
    prompts: list[list[int]] = []
    checked: set[str] = set()
    for index, request in enumerate(requests):
        if request.count < 0:
            raise ValueError(
                f"request {index} (prompt id {request.prompt_id!r}) asks for "
                f"{request.count} rollouts"
            )
        if request.prompt_id not in prompt_token_ids:
            raise KeyError(
                f"no prompt token ids for prompt id {request.prompt_id!r} (request {index})"
            )
        ids = [int(t) for t in prompt_token_ids[request.prompt_id]]
        if request.prompt_id not in checked:
            if not ids:
                raise ValueError(f"prompt id {request.prompt_id!r} has no token ids")
            if vocab_size is not None and (min(ids) < 0 or max(ids) >= vocab_size):
                raise ValueError(
                    f"prompt id {request.prompt_id!r} has token ids outside the model's "
                    f"vocabulary [0, {vocab_size})"
                )
            checked.add(request.prompt_id)
        prompts.append(ids)
    return prompts
