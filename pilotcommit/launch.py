"""What a training run needs from the machine, checked before anything is loaded.

:func:`gpus_needed` is the number of CUDA GPUs one training run of a config occupies
(``resources``: one per process; a single process with vLLM tensor parallelism uses the TP
group's GPUs). :func:`check_gpus` fails with a message naming the cell, the fields and the
visible devices when the machine has fewer, so a sweep cell on a too-small worker stops in
seconds instead of after downloading a model and data or inside NCCL.

Deliberately not here: choosing GPUs (``CUDA_VISIBLE_DEVICES`` and the work pool do that),
or anything about multi-node rendezvous.
"""

from __future__ import annotations

import os

from pilotcommit.config import ExperimentConfig


class InsufficientGPUsError(RuntimeError):
    """A training cell needs more CUDA GPUs than this machine shows."""


def gpus_needed(cfg: ExperimentConfig) -> int:
    """CUDA GPUs one training run of ``cfg`` occupies (0 when ``resources.device`` is auto)."""
    if cfg.resources.device != "cuda":
        return 0
    tensor_parallel = cfg.rollout.vllm.tensor_parallel_size if cfg.rollout.engine == "vllm" else 1
    return max(cfg.resources.nproc_per_node, tensor_parallel)


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(cfg: ExperimentConfig, where: str, visible: int | None = None) -> None:
    """Raise :class:`InsufficientGPUsError` if this machine cannot run ``cfg``'s training runs."""
    needed = gpus_needed(cfg)
    if needed == 0:
        return
    visible = visible_gpus() if visible is None else visible
    if visible < needed:
        devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise InsufficientGPUsError(
            f"{where}: model {cfg.model.label} needs {needed} CUDA GPUs "
            f"(resources.nproc_per_node={cfg.resources.nproc_per_node}, "
            f"rollout.vllm.tensor_parallel_size={cfg.rollout.vllm.tensor_parallel_size}, "
            f"resources.device=cuda) but this machine shows {visible}"
            + (f" (CUDA_VISIBLE_DEVICES={devices})" if devices is not None else "")
            + "; run the cell on a larger worker, or lower resources.nproc_per_node and the "
            "tensor parallelism"
        )
