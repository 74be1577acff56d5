"""FSDP2 on two CPU processes (gloo) gives the single-process update, and resumes exactly.

Two real processes are spawned with the torchrun environment variables; each shards the same
tiny Qwen2 with :func:`pilotcommit.learner.distributed.shard_model` and trains on its slice of
the same :class:`TrainBatch` with :class:`DistributedLearner`. The settings make every part of
the distributed update matter: two optimizer steps per training step (the same seeded
mini-batches on both ranks), micro-batches of 3 rows (gradient accumulation, and ranks with
different numbers of rows), zero-advantage groups (skipped rows that still count in the token
mean), and a gradient clip below the gradient norm (the global norm over shards). Nothing is
mocked: real gloo collectives, real FSDP2, real Learner.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from pilotcommit.config import LearnerConfig, TinyModelConfig
from pilotcommit.learner.update import Learner
from pilotcommit.models.tiny import build_tiny_model
from pilotcommit.models.tokenizer import build_char_tokenizer
from pilotcommit.types import Group, Rollout, RolloutKind, TrainBatch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = TinyModelConfig(
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=2,
    intermediate_size=64,
    max_positions=32,
)
LEARNER = LearnerConfig(
    lr=1e-3,
    weight_decay=0.1,
    warmup_steps=1,
    grad_clip=0.05,
    optimizer_steps_per_batch=2,
    micro_batch_size=3,
    dtype="float32",
    gradient_checkpointing=True,  # as in the paper configs: recompute inside FSDP units
)
WORLD_SIZE = 2
STEPS = 3  # two before the checkpoint, one after it
MODEL_SEED = 0
ZERO_ADVANTAGE_GROUPS = (1, 2, 5)


def make_batch(step: int) -> TrainBatch:
    """7 groups of 4 rollouts with varied lengths; groups 1, 2, 5 have equal rewards (no gradient)."""
    generator = torch.Generator().manual_seed(1000 + step)
    groups = []
    for g in range(7):
        prompt = torch.randint(
            4, 21, (int(torch.randint(3, 9, (1,), generator=generator)),), generator=generator
        ).tolist()
        rewards = [1.0, 0.0] + torch.randint(0, 2, (2,), generator=generator).float().tolist()
        if g in ZERO_ADVANTAGE_GROUPS:
            rewards = [float(g == 5)] * 4
        rollouts = []
        for reward in rewards:
            length = int(torch.randint(1, 7, (1,), generator=generator))
            completion = torch.randint(4, 21, (length,), generator=generator).tolist()
            rollouts.append(
                Rollout(
                    prompt_id=f"p{g}",
                    kind=RolloutKind.UNIFORM,
                    prompt_token_ids=prompt,
                    completion_token_ids=completion,
                    sampler_logprobs=[-1.0] * length,
                    text="",
                    finish_reason="length",
                    reward=reward,
                )
            )
        groups.append(Group(group_id=g, prompt_id=f"p{g}", rollouts=rollouts))
    return TrainBatch(step=step, groups=groups)


def _tiny_model():
    tokenizer = build_char_tokenizer()
    return build_tiny_model(MODEL, tokenizer, seed=MODEL_SEED), tokenizer.pad_token_id


def _worker(rank: int, port: int, out_dir: str, learner_config: LearnerConfig = LEARNER) -> None:
    """One rank: shard, train two steps, checkpoint, resume in a fresh model, train one more."""
    import os

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    from pilotcommit.learner.distributed import (
        DistributedLearner,
        exit_distributed,
        full_model_state_dict,
        init_distributed,
        load_full_model_state_dict,
        make_learner,
        shard_model,
    )

    context = init_distributed()
    assert context.backend == "gloo" and context.world_size == WORLD_SIZE
    try:
        model, pad_id = _tiny_model()
        learner = make_learner(model, learner_config, pad_id=pad_id)  # shards the model in place
        assert isinstance(learner, DistributedLearner)
        metrics = [learner.update(make_batch(s), seed=s) for s in range(STEPS - 1)]
        weights = full_model_state_dict(model)
        learner_state = learner.state_dict()

        # resume: a fresh sharded model and learner from the full state dicts (rank 0's copy)
        resumed_model, _ = _tiny_model()
        resumed_model = shard_model(resumed_model)
        load_full_model_state_dict(resumed_model, weights if context.is_main else {})
        resumed = DistributedLearner(resumed_model, learner_config, pad_id=pad_id)
        resumed.load_state_dict(learner_state)
        resumed_metrics = resumed.update(make_batch(STEPS - 1), seed=STEPS - 1)
        metrics.append(learner.update(make_batch(STEPS - 1), seed=STEPS - 1))

        final = full_model_state_dict(model)
        final_resumed = full_model_state_dict(resumed_model)
        if context.is_main:
            torch.save(
                {
                    "after_two": weights,
                    "final": final,
                    "final_resumed": final_resumed,
                    "metrics": metrics,
                    "resumed_metrics": resumed_metrics,
                    "optimizer_keys": sorted(learner_state["optimizer"]["state"]),
                },
                Path(out_dir) / "sharded.pt",
            )
        else:
            assert weights == {}  # full state dicts are gathered on rank 0 only
    except BaseException:
        dist.destroy_process_group()
        raise
    # as a torchrun worker ends (pilotcommit.learner.distributed.exit_distributed): a normal
    # interpreter exit can abort in gloo's threads after all the work is written
    # ("terminate called without an active exception", SIGABRT, seen here under load)
    exit_distributed(0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def single_process():
    torch.manual_seed(0)
    model, pad_id = _tiny_model()
    learner = Learner(model, LEARNER, pad_id=pad_id)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    metrics, snapshots = [], []
    for step in range(STEPS):
        metrics.append(learner.update(make_batch(step), seed=step))
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
    return initial, snapshots, metrics


def _run_sharded(out_dir: Path, learner_config: LearnerConfig) -> dict:
    import torch.multiprocessing as mp

    mp.start_processes(
        _worker,
        args=(_free_port(), str(out_dir), learner_config),
        nprocs=WORLD_SIZE,
        # spawn, not fork: a pytest-xdist worker has run other tests (threads, OpenMP pools,
        # Prefect and MLflow clients) by now, and a forked child of it can die before it starts
        start_method="spawn",
        join=True,
    )
    return torch.load(out_dir / "sharded.pt", weights_only=False)


@pytest.fixture(scope="module")
def sharded_packed(tmp_path_factory):
    """The same job with packed micro-batches of at most 24 tokens (1-3 sequences each, so the
    ranks run different numbers of them and pad)."""
    packed = LEARNER.model_copy(update={"max_tokens_per_micro_batch": 24})
    return _run_sharded(tmp_path_factory.mktemp("fsdp-packed"), packed)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return _run_sharded(tmp_path_factory.mktemp("fsdp"), LEARNER)


def _max_difference(a: dict, b: dict) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.timeout(180)
def test_sharded_update_equals_the_single_process_update(sharded, single_process):
    initial, snapshots, single_metrics = single_process
    # the update moved the weights far more than the tolerance, so agreement is not trivial
    assert _max_difference(initial, snapshots[1]) > 1e-3
    assert _max_difference(sharded["after_two"], snapshots[1]) < 1e-5
    assert _max_difference(sharded["final"], snapshots[2]) < 1e-5
    for single, distributed in zip(single_metrics, sharded["metrics"]):
        # clipping was active: the global norm over both shards is what the single process saw
        assert single["grad/norm"] > LEARNER.grad_clip
        # every metric of the single-process learner, with the same value (a metric added to
        # Learner.update and not to DistributedLearner.update fails here)
        assert set(single) <= set(distributed), sorted(set(single) - set(distributed))
        for key, value in single.items():
            assert distributed[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    # the equal-reward groups were skipped, the others trained once each
    assert sharded["metrics"][0]["learner/skipped_zero_advantage"] == 4 * len(ZERO_ADVANTAGE_GROUPS)


def test_sharded_packed_update_equals_the_single_process_padded_update(sharded_packed, single_process):
    """Packed micro-batches under FSDP2 on two ranks: the padded single-process weights after
    every step (the same tolerance as the padded comparison above), and an exact resume."""
    _, snapshots, metrics = single_process
    assert _max_difference(sharded_packed["after_two"], snapshots[1]) < 1e-5
    assert _max_difference(sharded_packed["final"], snapshots[2]) < 1e-5
    assert _max_difference(sharded_packed["final_resumed"], sharded_packed["final"]) == 0.0
    for got, want in zip(sharded_packed["metrics"], metrics):
        assert got["loss/policy"] == pytest.approx(want["loss/policy"], rel=1e-4, abs=1e-7)
        assert got["learner/trained_sequences"] == want["learner/trained_sequences"]


def test_the_data_gives_the_ranks_different_numbers_of_micro_batches():
    """Guard of the test data: some mini-batch leaves one rank a padding micro-batch (the path
    where a rank runs a zero-loss pass only to take part in FSDP's collectives)."""
    from pilotcommit.learner.distributed import partition_rows
    from pilotcommit.learner.update import pack_batch

    uneven = 0
    for step in range(STEPS):
        packed = pack_batch(make_batch(step), pad_id=0, config=LEARNER)
        order_N = torch.randperm(
            len(packed.advantages_B), generator=torch.Generator().manual_seed(step)
        )
        for mini_rows in order_N.chunk(LEARNER.optimizer_steps_per_batch):
            active = mini_rows[packed.advantages_B[mini_rows] != 0]
            counts = {
                -(-len(partition_rows(active, rank, WORLD_SIZE)) // LEARNER.micro_batch_size)
                for rank in range(WORLD_SIZE)
            }
            uneven += len(counts) > 1
    assert uneven > 0


@pytest.mark.timeout(180)
def test_resuming_from_full_state_dicts_continues_the_same_run(sharded, single_process):
    _, snapshots, single_metrics = single_process
    assert _max_difference(sharded["final_resumed"], sharded["final"]) < 1e-6
    assert _max_difference(sharded["final_resumed"], snapshots[2]) < 1e-5
    assert sharded["resumed_metrics"]["grad/norm"] == pytest.approx(
        single_metrics[2]["grad/norm"], rel=1e-4
    )
    # the optimizer state is keyed by parameter name (portable across world sizes)
    assert sharded["optimizer_keys"] == sorted(
        name for name, _ in _tiny_model()[0].named_parameters()
    )


def test_init_distributed_outside_torchrun_names_the_missing_variables(monkeypatch):
    from pilotcommit.learner.distributed import TORCHRUN_ENV, init_distributed

    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="torchrun") as err:
        init_distributed()
    assert "MASTER_PORT" in str(err.value)


def test_shard_model_without_a_process_group_fails_clearly():
    from pilotcommit.learner.distributed import shard_model

    with pytest.raises(RuntimeError, match="init_distributed"):
        shard_model(_tiny_model()[0])


def test_make_learner_in_a_single_process_is_the_plain_learner():
    from pilotcommit.learner.distributed import make_learner

    model, pad_id = _tiny_model()
    learner = make_learner(model, LEARNER, pad_id=pad_id)
    assert type(learner) is Learner and learner.model is model
