"""Loading at scale: rank 0 alone reads the checkpoint, the other ranks build the model on the
meta device, and every rank ends with its shards of the same weights (two gloo processes).

Checked: the full weights gathered back from the shards equal the checkpoint bit for bit, the
non-persistent buffers (rotary frequencies) are the checkpoint model's on every rank, and a
forward pass on both ranks gives the single-process logits. Only rank 0 opens the weights
file (the other ranks would fail if they tried: it is hidden from them).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from pilotcommit.config import LearnerConfig, TinyModelConfig
from pilotcommit.models.tiny import build_tiny_model
from pilotcommit.models.tokenizer import build_char_tokenizer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=64,
                        max_positions=32)
LEARNER = LearnerConfig(dtype="float32")
WORLD_SIZE = 2
INPUT_IDS = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 4, 4]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, policy_dir: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from pilotcommit.learner.distributed import (
        DistributedLearner,
        exit_distributed,
        full_model_state_dict,
        init_distributed,
        load_sharded_policy,
    )

    init_distributed()
    try:
        if rank != 0:  # only rank 0 may read the weights: hide the file from the others
            import safetensors.torch

            def refuse(*args, **kwargs):
                raise AssertionError(f"rank {rank} read the weights file")

            safetensors.torch.load_file = refuse
            safetensors.safe_open = refuse
        model, tokenizer, learner = load_sharded_policy(policy_dir, MODEL, LEARNER)
        assert isinstance(learner, DistributedLearner)
        assert not any(p.is_meta for p in model.parameters())
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(INPUT_IDS)).logits
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        full = full_model_state_dict(model)
        torch.save({"logits": logits, "buffers": buffers, "full": full}, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # as a torchrun worker ends (pilotcommit.learner.distributed.exit_distributed): a normal
    # interpreter exit can abort in gloo's threads after all the work is written
    # ("terminate called without an active exception", SIGABRT, seen here under load)
    exit_distributed(0)


def test_rank_zero_loads_and_every_rank_gets_the_same_weights(tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    tokenizer = build_char_tokenizer()
    reference = build_tiny_model(MODEL, tokenizer, seed=3)
    policy_dir = tmp_path / "policy"
    reference.save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    reference.eval()
    with torch.no_grad():
        expected_logits = reference(input_ids=torch.tensor(INPUT_IDS)).logits
    mp.start_processes(_worker, args=(_free_port(), str(policy_dir), str(tmp_path)), nprocs=WORLD_SIZE,
                       start_method="spawn", join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]

    saved = load_file(policy_dir / "model.safetensors")
    full = ranks[0]["full"]
    for key, value in saved.items():
        assert torch.equal(full[key], value), key
    assert ranks[1]["full"] == {}  # gathered on rank 0 only
    for rank in ranks:
        for name, buffer in reference.named_buffers():
            assert torch.equal(rank["buffers"][name], buffer), name
        torch.testing.assert_close(rank["logits"], expected_logits, atol=1e-5, rtol=0)
