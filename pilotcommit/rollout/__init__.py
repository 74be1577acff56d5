"""Rollout engines behind one protocol (``protocol.RolloutEngine``).

The protocol and its records are plain Python and imported eagerly; the
engines pull in torch/transformers (or vLLM) and are imported only when first
named, so ``import pilotcommit.rollout`` stays cheap for the allocation code
and the loop's unit tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pilotcommit.rollout.protocol import (
    EMPTY_STATS,
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationStats,
    RolloutEngine,
    SamplingParams,
    derive_seed,
)

if TYPE_CHECKING:
    from pilotcommit.rollout.transformers_engine import TransformersEngine

__all__ = [
    "EMPTY_STATS",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "GenerationStats",
    "RolloutEngine",
    "SamplingParams",
    "TransformersEngine",
    "derive_seed",
]


def __getattr__(name: str) -> Any:
    if name == "TransformersEngine":
        from pilotcommit.rollout.transformers_engine import TransformersEngine

        return TransformersEngine
    raise AttributeError(f"module 'pilotcommit.rollout' has no attribute {name!r}")
