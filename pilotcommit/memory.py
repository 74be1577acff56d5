"""Accelerator memory: what a run holds on the GPU at each phase, and handing cached blocks back.

PyTorch's caching allocator keeps the blocks the learner freed; vLLM's sleep mode and wake-up
allocate outside it. So the cache is emptied before and after vLLM wakes its weights and KV
cache and after it sleeps (as verl does around its wake-up sequence), and the loop logs
``memory/<phase>_reserved_gib`` / ``memory/<phase>_allocated_gib`` so that a user sees where the
memory goes. Without CUDA every function here does nothing and returns nothing: the metrics
exist only on a GPU machine.
"""

from __future__ import annotations

import torch

_GIB = float(1 << 30)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def free_cached_blocks() -> None:
    """Return the caching allocator's unused blocks to the device (no-op without CUDA)."""
    if cuda_available():
        torch.cuda.empty_cache()


def memory_metrics(phase: str) -> dict[str, float]:
    """``{memory/<phase>_reserved_gib, memory/<phase>_allocated_gib}`` on CUDA, else ``{}``."""
    if not cuda_available():
        return {}
    return {f"memory/{phase}_reserved_gib": torch.cuda.memory_reserved() / _GIB,
            f"memory/{phase}_allocated_gib": torch.cuda.memory_allocated() / _GIB}
