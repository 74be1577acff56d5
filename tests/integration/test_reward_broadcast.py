"""Rewards under torchrun are computed once and shared, so ranks cannot diverge.

Two gloo processes hold the same rollouts. Rank 1's math-verify worker is made to run out of
time on every call it makes (a 1 ms limit; the real worker is killed and the rollout scores
0), rank 0's has the normal limit. With :func:`pilotcommit.loop.score_once` both ranks end
with the same rewards (so the same allocation plans and batches), nothing hangs, and both
report the timeouts. Scoring everything on every rank (the old behaviour) gives rank 1
different rewards: the test checks that the case really differs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from pilotcommit.types import RequestResult, Rollout, RolloutKind, RolloutRequest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD_SIZE = 2
# answers that need math-verify itself (not the fast exact-match path): sympy takes > 1 ms
PAIRS = [(r"\boxed{\frac{1}{2}+\frac{1}{3}}", r"\frac{5}{6}"), (r"\boxed{\sqrt{8}}", r"2\sqrt{2}"),
         (r"\boxed{(x+1)^2}", r"x^2+2x+1"), (r"\boxed{\frac{6}{4}}", r"\frac{3}{2}")]


def _results() -> tuple[list[RequestResult], dict[str, str]]:
    results, answers = [], {}
    for i, (text, answer) in enumerate(PAIRS):
        prompt_id = f"p{i}"
        answers[prompt_id] = answer
        rollouts = [Rollout(prompt_id=prompt_id, kind=RolloutKind.UNIFORM, prompt_token_ids=[1],
                            completion_token_ids=[2], sampler_logprobs=[-1.0], text=text,
                            finish_reason="stop") for _ in range(2)]
        results.append(RequestResult(RolloutRequest(prompt_id, 2, RolloutKind.UNIFORM), rollouts))
    return results, answers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist

    from pilotcommit.config import load_experiment_config
    from pilotcommit.learner.distributed import init_distributed
    from pilotcommit.loop import _Sharding
    from pilotcommit.rewards.math import math_reward
    from pilotcommit.run_parts import score_once, score_results
    from tests.conftest import SMOKE_CONFIG

    init_distributed(timeout_s=120)  # a hang fails the test instead of blocking it
    try:
        cfg = load_experiment_config(SMOKE_CONFIG)
        limit = 1e-3 if rank == 1 else 30.0

        def reward(text: str, answer: str) -> float:
            return math_reward(text, answer, timeout_s=limit)

        shared, answers = _results()
        timeouts = score_once(shared, answers, reward, cfg, _Sharding(rank, torch.device("cpu")))
        alone, _ = _results()
        score_results(alone, answers, reward, cfg)  # the old way: this rank's own verdicts
        torch.save({"shared": [[r.reward for r in res.rollouts] for res in shared],
                    "alone": [[r.reward for r in res.rollouts] for res in alone], "timeouts": timeouts},
                   Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_a_timeout_on_one_rank_changes_nothing_between_ranks_and_is_reported(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, start_method="spawn",
                       join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE))
    assert rank0["alone"] != rank1["alone"]  # scored separately, the ranks disagree
    assert rank0["alone"] == [[1.0, 1.0]] * len(PAIRS)
    assert rank0["shared"] == rank1["shared"]  # scored once and shared: identical by construction
    # rank 0 scored requests 0 and 2, rank 1 (timing out) requests 1 and 3: its verdicts count
    expected = [(rank0 if k % 2 == 0 else rank1)["alone"][k] for k in range(len(PAIRS))]
    assert rank0["shared"] == expected
    assert expected[1] == [0.0, 0.0]  # a correct answer scored 0 by the timed-out verifier
    assert rank0["timeouts"] == rank1["timeouts"] >= 1  # reported, summed over ranks, on every rank
