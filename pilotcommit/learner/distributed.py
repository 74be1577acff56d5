"""The learner on several processes: FSDP2 (``torch.distributed.fsdp.fully_shard``) under ``torchrun``.

Launch (one process per GPU; the same command on every node with ``--node-rank`` and a
rendezvous endpoint for several nodes, see docs/paper_scale.md)::

    torchrun --nproc-per-node 8 -m <entry point that calls init_distributed()>

What this module does:

- :func:`init_distributed` joins the process group ``torchrun`` describes in the environment
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL with one
  GPU per process where CUDA is available, gloo on CPU (the tests).
- :func:`shard_model` shards a ``transformers`` causal LM the usual FSDP2 way: every decoder
  layer is its own ``fully_shard`` unit (all-gathered just before it runs, freed after), then
  the root takes the embeddings, the final norm and the head. Gradients are SUMMED across
  ranks (divide factor 1), not averaged: each rank's loss is already divided by the token
  count of the whole mini-batch, so the sum is the single-process gradient.
- :func:`make_learner` is the one call a training loop makes: a :class:`DistributedLearner`
  on the sharded model under ``torchrun``, the plain ``Learner`` in a single process.
- :func:`load_sharded_policy` loads a checkpoint at scale: rank 0 alone reads it (host memory),
  every rank builds the model on the meta device, shards it and receives its shards by
  broadcast; the training loop uses it under ``torchrun``.
- :class:`DistributedLearner` is :class:`~pilotcommit.learner.update.Learner` on the sharded
  module. Every rank holds the same :class:`~pilotcommit.types.TrainBatch` (the loop runs the
  same allocation with the same seeds everywhere), packs all of it (a group's advantage needs
  all of its rewards), and trains on its own slice of each mini-batch's rows. The token-mean
  normaliser is the token count of the whole mini-batch, obtained by an all-reduce of the
  ranks' shares (and checked against the local count, which catches ranks that disagree on
  the batch). The result equals the single-process update up to float rounding; the
  two-process test (tests/integration/test_fsdp_sharding.py) checks it on the tiny model.
- Full (unsharded) state dicts for checkpoints and for the vLLM weight sync:
  :func:`full_model_state_dict`, :func:`load_full_model_state_dict`,
  :func:`iter_full_parameters`, and the learner's own ``state_dict`` (full optimizer state).

The update loop itself is :meth:`Learner.update`, written once; this class overrides its three
hooks: ``_plan_minibatch`` (the rank's slice of rows, the all-reduced normaliser, the padding of
micro-batch counts: every rank must run the same number of forward and backward passes, or
FSDP's collectives hang), ``_any_rank`` (a non-finite loss stops every rank at once) and
``_sum_over_ranks`` (the metrics).

Not here: tensor or pipeline parallelism of the learner (FSDP only), CPU offload of
parameters, sharded checkpoint files (full state dicts are gathered on rank 0), generation.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from pilotcommit.config import LearnerConfig
from pilotcommit.learner.update import Learner, PackedBatch

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def exit_distributed(code: int = 0) -> None:
    """End a torchrun worker once its work is written: a barrier, the process group destroyed,
    logs and stdio flushed, then ``os._exit``.

    Why not a normal exit: gloo's C++ worker threads can still be alive during interpreter
    finalization, and tearing them down there aborts the process (SIGABRT, "terminate called
    without an active exception"; seen on a loaded 2-core machine after a whole run had finished
    and written everything, pytorch/pytorch#179291). torchrun then reports the job failed. Every
    file the run writes is closed before this is called, so skipping finalization loses nothing.
    """
    import logging
    import sys

    dist.barrier()
    dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group described by ``torchrun``'s environment variables.

    ``backend`` defaults to ``nccl`` when CUDA is available (each process then uses GPU
    ``LOCAL_RANK``), else ``gloo`` on CPU. Calling it again in the same process returns the
    existing group's context.
    """
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing and not dist.is_initialized():
        raise RuntimeError(
            f"init_distributed: environment variables {missing} are not set; start the job with "
            "`torchrun --nproc-per-node N ...` (or set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR "
            "and MASTER_PORT yourself)"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            # before the group exists, so NCCL binds this process to its own GPU
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    backend = dist.get_backend()
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
        backend=backend,
    )


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a ``transformers`` causal LM (``model.model.layers`` for
    Qwen2/Qwen3/Llama), the units FSDP shards one at a time."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers):
        return list(layers)
    raise ValueError(
        f"shard_model: {type(model).__name__} has no `model.layers` ModuleList; shard its "
        "transformer blocks explicitly with torch.distributed.fsdp.fully_shard"
    )


def shard_model(
    model: nn.Module,
    *,
    mesh=None,
    mp_policy: MixedPrecisionPolicy | None = None,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Shard ``model`` in place with FSDP2 (each decoder layer, then the root) and return it.

    ``mesh`` defaults to all processes of the default group; ``mp_policy`` (e.g. bf16 params
    with fp32 gradient reduction) is passed to every unit. Build the optimizer AFTER this call:
    the parameters become ``DTensor`` shards.
    """
    if not dist.is_initialized():
        raise RuntimeError("shard_model: call init_distributed() first (no process group)")
    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    # each rank divides its loss by the GLOBAL token count, so gradients must be summed; with a
    # factor of 1 a plain SUM reduction needs no pre/post scaling (and gloo has no PREMUL_SUM)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def make_learner(
    model: nn.Module, config: LearnerConfig, *, pad_id: int, temperature: float = 1.0,
    minibatch_sequences: int | None = None,
) -> Learner:
    """The learner for this process: under ``torchrun`` with more than one process, shard
    ``model`` (in place) and return a :class:`DistributedLearner`; otherwise a plain
    :class:`Learner`. The one call the training loop needs to run on several GPUs.

    With ``config.dtype == "bfloat16"`` the shards stay in their own dtype (float32 master
    weights) and FSDP all-gathers them in bfloat16 for compute, reducing gradients in float32.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DistributedLearner(
            shard_model(model, mp_policy=_mixed_precision(config)), config, pad_id=pad_id, temperature=temperature,
            minibatch_sequences=minibatch_sequences,
        )
    return Learner(model, config, pad_id=pad_id, temperature=temperature, minibatch_sequences=minibatch_sequences)


def _mixed_precision(config: LearnerConfig) -> MixedPrecisionPolicy | None:
    if config.dtype == "bfloat16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return None


def load_sharded_policy(name_or_path, model_config, learner_config: LearnerConfig, *, temperature: float = 1.0,
                        minibatch_sequences: int | None = None):
    """``(model, tokenizer, learner)`` for this rank, the checkpoint read by rank 0 ALONE.

    Every rank builds the architecture on the meta device (no memory), shards it
    (:func:`make_learner`'s sharding and mixed precision), and allocates only its own shards;
    rank 0 reads the full weights into host memory once and they are broadcast tensor by tensor
    into the shards (``set_model_state_dict(..., broadcast_from_rank0=True)``). Buffers that are
    not in the state dict (rotary frequencies) are broadcast from rank 0 too. One host copy of
    the full float32 weights per job instead of one per process (14B: 59 GB instead of 8 x 59 GB
    on an 8-GPU node).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from pilotcommit.config import PretrainedModelConfig
    from pilotcommit.models.loading import _DTYPES, load_policy, load_tokenizer

    if not dist.is_initialized():
        raise RuntimeError("load_sharded_policy: call init_distributed() first (no process group)")
    rank = dist.get_rank()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tokenizer = load_tokenizer(name_or_path, model_config)
    pretrained = isinstance(model_config, PretrainedModelConfig)
    kwargs = {"trust_remote_code": False}
    if pretrained:
        kwargs.update(dtype=_DTYPES[model_config.dtype], attn_implementation=model_config.attn_implementation)
    else:
        kwargs.update(dtype=torch.float32)
    architecture = AutoConfig.from_pretrained(
        str(name_or_path), trust_remote_code=False, revision=model_config.revision if pretrained else None
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(architecture, **kwargs)
    full_state, buffers = {}, {}
    if rank == 0:
        host_model, _ = load_policy(name_or_path, model_config, device=torch.device("cpu"))
        full_state = host_model.state_dict()
        buffers = dict(host_model.named_buffers())
        del host_model
    shard_model(model, mp_policy=_mixed_precision(learner_config))
    model.to_empty(device=device)  # this rank's shards only; values arrive below
    load_full_model_state_dict(model, full_state)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if rank == 0:
                buffer.copy_(buffers[name])
            dist.broadcast(buffer, src=0)
    model.eval()
    # the optimizer is built on the materialised shards
    return model, tokenizer, DistributedLearner(model, learner_config, pad_id=tokenizer.pad_token_id,
                                                temperature=temperature, minibatch_sequences=minibatch_sequences)


def partition_rows(rows_N: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's contiguous share of ``rows_N``: sizes differ by at most one across ranks."""
    if not 0 <= rank < world_size:
        raise ValueError(f"partition_rows: rank {rank} outside [0, {world_size})")
    return torch.tensor_split(rows_N, world_size)[rank]


def max_rows_per_rank(num_rows: int, world_size: int) -> int:
    """The largest share :func:`partition_rows` hands any rank."""
    return math.ceil(num_rows / world_size)


def _as_local(value: Tensor) -> Tensor:
    return value.full_tensor() if isinstance(value, DTensor) else value


class DistributedLearner(Learner):
    """:class:`Learner` on an FSDP2-sharded model; every rank calls :meth:`update` with the same batch."""

    def __init__(
        self,
        model: nn.Module,
        config: LearnerConfig,
        *,
        pad_id: int,
        temperature: float = 1.0,
        group: dist.ProcessGroup | None = None,
        minibatch_sequences: int | None = None,
    ) -> None:
        if not dist.is_initialized():
            raise RuntimeError(
                "DistributedLearner: call init_distributed() and shard_model() first"
            )
        if not isinstance(model, FSDPModule):
            raise TypeError(
                "DistributedLearner: the model is not sharded; call shard_model(model) before "
                "building the learner (the optimizer must see the sharded parameters)"
            )
        super().__init__(model, config, pad_id=pad_id, temperature=temperature,
                         minibatch_sequences=minibatch_sequences)
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    # ------------------------------------------------------------------ collectives
    def _all_reduce(self, values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
        # float64 on the device NCCL needs; exact for token counts up to 2**53
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor, op=op, group=self.group)
        return tensor.tolist()

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend(self.group) == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------------ Learner.update's hooks
    def _plan_minibatch(
        self, packed: PackedBatch, mini_rows: Tensor, step: int
    ) -> tuple[float, list[Tensor], int]:
        """This rank's slice of the mini-batch's rows with the GLOBAL normaliser, padded so every
        rank runs the same number of micro-batches (FSDP all-gathers parameters in every forward
        and reduce-scatters gradients in every backward)."""
        tokens_B = packed.completion_mask_BT.sum(dim=1)
        has_advantage_N = packed.advantages_B[mini_rows] != 0
        active, inactive = mini_rows[has_advantage_N], mini_rows[~has_advantage_N]
        my_rows = partition_rows(active, self.rank, self.world_size)
        # this rank's share of the normaliser: its rows, plus its share of the zero-advantage
        # rows (no gradient, but their tokens count in the token mean, as in Learner)
        my_inactive = partition_rows(inactive, self.rank, self.world_size)
        share = self._normalizer_share(tokens_B, torch.cat([my_rows, my_inactive]))
        local_full = self._normalizer_share(tokens_B, mini_rows)
        normalizer = self._all_reduce([share])[0]
        if normalizer != local_full:
            raise RuntimeError(
                f"training step {step}: ranks disagree on the training batch (the mini-batch "
                f"normaliser is {normalizer} summed over ranks but {local_full} on rank "
                f"{self.rank}); every rank must build the same batch"
            )
        micro = self._micro_batches(packed, my_rows)
        if self.packing:  # token-budget micro-batches: their count depends on each rank's lengths
            num_micro = int(self._all_reduce([float(len(micro))], op=dist.ReduceOp.MAX)[0])
        else:
            num_micro = math.ceil(max_rows_per_rank(len(active), self.world_size) / self.config.micro_batch_size)
        padding = num_micro - len(micro)
        # a padding micro-batch is one real row; Learner.update gives it an empty mask
        micro += [mini_rows[:1]] * padding
        return normalizer, micro, padding

    def _any_rank(self, flag: bool) -> bool:
        # every rank learns it at once: a lone raise would leave the others in the next all-gather
        return self._all_reduce([1.0 if flag else 0.0], op=dist.ReduceOp.MAX)[0] > 0

    def _sum_over_ranks(self, values: list[float]) -> list[float]:
        return self._all_reduce(values)

    def _normalizer_share(self, tokens_B: Tensor, rows: Tensor) -> float:
        if self.config.loss_aggregation == "token_mean":
            return float(tokens_B[rows].sum())
        return float((tokens_B[rows] > 0).sum())

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Full (unsharded) optimizer state on rank 0 (empty on the others) and the scheduler."""
        optimizer = get_optimizer_state_dict(
            self.model,
            self.optimizer,
            options=StateDictOptions(full_state_dict=True, cpu_offload=True),
        )
        return {"optimizer": optimizer, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Load a :meth:`state_dict` (read on rank 0 is enough: it is broadcast)."""
        set_optimizer_state_dict(
            self.model,
            self.optimizer,
            copy.deepcopy(state["optimizer"]),  # the loader shards the caller's dict in place
            options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
        )
        self.scheduler.load_state_dict(state["scheduler"])


# --------------------------------------------------------------------------- full weights


def full_model_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The unsharded weights as CPU tensors on rank 0 (an empty dict on the other ranks).

    A collective: every rank must call it. Keys are the ``transformers`` names (FSDP2 keeps
    them), so rank 0 can ``save_pretrained`` or ``torch.save`` the result directly.
    """
    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_full_model_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load full weights read on rank 0 into the sharded model (broadcast to the other ranks)."""
    # a shallow copy: the loader replaces the dict's entries by their shards in place
    set_model_state_dict(
        model,
        dict(state),
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )


def iter_full_parameters(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(name, full tensor)`` one parameter at a time, on every rank (a collective per
    parameter: all ranks must iterate to the end). Peak memory is one unsharded parameter,
    which is what a weight sync into an inference engine wants."""
    for name, parameter in model.named_parameters():
        yield name, _as_local(parameter.detach())
