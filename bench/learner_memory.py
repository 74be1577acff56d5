"""Learner memory at Qwen's vocabulary: peak memory and time of log-probs + loss + backward.

    python bench/learner_memory.py [--batch 1] [--prompt 256] [--completion 768] [--repeats 2]
                                   [--sides full,chunked,trl] [--threads 2] [--hidden 1536] [--vocab 151936]

What is measured: the part of one learner micro-batch that depends on the vocabulary, from the
decoder's final hidden states ``[B, T, H]`` (a float32 leaf standing in for the model body) and
the float32 output weight ``[V, H]`` (master weights) to the gradients of both: the log-probs
of the sampled tokens, the PPO loss (``policy_loss``, token mean) and ``backward()``, under
bfloat16 autocast as in the paper configs (``learner.dtype: bfloat16``). H = 1536 and
V = 151,936 are Qwen2.5-Math-1.5B's (``--hidden`` and ``--vocab`` make them smaller, for a quick
run of the code). Each row is ``--prompt`` prompt tokens followed by
``--completion`` completion tokens.

Sides:

- ``full``: the learner before this change: the model's logits at EVERY position
  (``[B, T, V]`` in bf16), upcast to float32, ``token_logprobs`` (gather - logsumexp), loss.
- ``chunked``: the learner now (``pilotcommit.learner.logprobs.selected_token_logprobs``):
  completion positions only, ``learner.logprob_chunk_size`` (1024) rows of logits at a time,
  each chunk checkpointed.
- ``trl``: TRL's ``GRPOTrainer`` approach, re-implemented here (trl is not installed): logits
  only for the last ``completion + 1`` positions (``logits_to_keep``), divided by the
  temperature, then ``selective_log_softmax`` (trl/trainer/utils.py, huggingface/trl: for
  bf16 logits a per-row loop of ``log_softmax(...).gather``, for float32 ``gather`` minus a
  per-row ``logsumexp``).

Each measurement runs in a fresh Python process; the peak is that process's peak resident
memory (``ru_maxrss``) minus its resident memory once the inputs exist, so it includes the
float32 gradients of the weight and the hidden states (the same for every side, printed
separately) and whatever the side's autograd graph keeps. Time is the median wall time of the
repeats (forward + backward). Not a test: prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_requires.py, also when loaded by path
from _requires import require  # noqa: E402

require(__file__, "torch", "pilotcommit")

from _common import (  # noqa: E402
    GIB,
    QWEN25_MATH_15B,
    current_rss_bytes,
    load_average,
    peak_rss_bytes,
    print_environment,
    print_table,
)

HIDDEN = QWEN25_MATH_15B["hidden_size"]
VOCAB = QWEN25_MATH_15B["vocab_size"]
SIDES = ("full", "chunked", "trl")


def selective_log_softmax(logits, index):
    """TRL's memory-saving ``log_softmax -> gather`` (huggingface/trl, trl/trainer/utils.py),
    re-implemented for this benchmark: per-row loops so that at most one row's ``[T, V]``
    log-softmax exists at a time in bf16, a per-row logsumexp in float32."""
    import torch

    if logits.dtype in (torch.float32, torch.float64):
        selected = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
        logsumexp = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        return selected - logsumexp
    rows = []
    for row_logits, row_index in zip(logits, index, strict=True):
        row_logps = torch.nn.functional.log_softmax(row_logits, dim=-1)
        rows.append(row_logps.gather(dim=-1, index=row_index.unsqueeze(-1)).squeeze(-1))
    return torch.stack(rows)


def measure_one(side: str, batch: int, prompt: int, completion: int, repeats: int, threads: int,
                hidden: int = HIDDEN, vocab: int = VOCAB) -> dict:
    """One side in this process: ``{"peak_gib", "time_s"}``."""
    import torch

    from pilotcommit.learner.logprobs import DEFAULT_CHUNK_SIZE, selected_token_logprobs
    from pilotcommit.learner.loss import policy_loss, token_logprobs

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    width = prompt + completion
    # filled in place: a temporary copy would raise the process's peak before the measurement
    hidden_BTH = torch.empty(batch, width, hidden).normal_(0.0, 0.5, generator=generator).requires_grad_()
    weight_VH = torch.empty(vocab, hidden).normal_(0.0, 0.02, generator=generator).requires_grad_()
    ids_BT = torch.randint(0, vocab, (batch, width), generator=generator)
    mask_BT = torch.zeros(batch, width - 1)
    mask_BT[:, prompt - 1 :] = 1.0  # position t predicts token t + 1
    advantages_B = torch.randn(batch, generator=generator)

    def logprobs_BT():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if side == "full":
                logits_BTV = torch.nn.functional.linear(hidden_BTH, weight_VH)
                return token_logprobs(logits_BTV[:, :-1], ids_BT[:, 1:])
            if side == "chunked":
                keep_BT = mask_BT.bool()
                logp_N = selected_token_logprobs(
                    hidden_BTH[:, :-1][keep_BT], weight_VH, ids_BT[:, 1:][keep_BT],
                    chunk_size=DEFAULT_CHUNK_SIZE,
                )
                return torch.zeros(keep_BT.shape).masked_scatter(keep_BT, logp_N)
            # trl: logits_to_keep = completion + 1, drop the last, divide by the temperature
            logits_BKV = torch.nn.functional.linear(hidden_BTH[:, -(completion + 1) :], weight_VH)
            logits_BKV = logits_BKV[:, :-1] / 1.0
            logp_BK = selective_log_softmax(logits_BKV, ids_BT[:, -completion:])
            return torch.cat([torch.zeros(batch, prompt - 1), logp_BK.float()], dim=1)

    def step() -> None:
        logp_BT = logprobs_BT()
        out = policy_loss(logp_BT, logp_BT.detach(), advantages_B, mask_BT, eps_low=0.2, eps_high=0.28,
                          normalizer=float(mask_BT.sum()))
        out.loss.backward()

    baseline = current_rss_bytes()
    before_peak = peak_rss_bytes()
    times = []
    for _ in range(repeats):
        hidden_BTH.grad = weight_VH.grad = None
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    peak = peak_rss_bytes()
    return {"peak_gib": max(peak - max(baseline, before_peak), 0) / GIB, "time_s": statistics.median(times),
            "load_before": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1, help="sequences in the micro-batch")
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens per sequence")
    parser.add_argument("--completion", type=int, default=768, help="completion tokens per sequence")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=HIDDEN, help="H (default: Qwen2.5-Math-1.5B's)")
    parser.add_argument("--vocab", type=int, default=VOCAB, help="V (default: Qwen2.5-Math-1.5B's)")
    parser.add_argument("--one", choices=SIDES, help=argparse.SUPPRESS)  # internal: one side, JSON out
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.batch, args.prompt, args.completion, args.repeats, args.threads,
                                     args.hidden, args.vocab)))
        return

    load_before = load_average()
    rows = {}
    for side in args.sides.split(","):
        command = [sys.executable, __file__, "--one", side, "--batch", str(args.batch), "--prompt", str(args.prompt),
                   "--completion", str(args.completion), "--repeats", str(args.repeats), "--threads", str(args.threads),
                   "--hidden", str(args.hidden), "--vocab", str(args.vocab)]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"side {side} failed:\n{proc.stderr[-3000:]}")
        rows[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    width = args.prompt + args.completion
    fp32_copy = args.batch * width * args.vocab * 4 / GIB
    grads = (args.vocab * args.hidden + args.batch * width * args.hidden) * 4 / GIB
    table = []
    for side, row in rows.items():
        rest = (row["peak_gib"] - grads) / fp32_copy
        table.append((side, f"{row['peak_gib']:.2f}", f"{grads:.2f}", f"{rest:.2f}", f"{row['time_s']:.2f}"))
    print_table(("side", "peak above inputs (GiB)", "of which gradients", "rest / fp32 [B,T,V] copy", "time (s)"), table,
                title=f"B={args.batch}, prompt {args.prompt} + completion {args.completion} = {width} tokens, "
                f"H={args.hidden}, V={args.vocab:,}; one float32 [B, T, V] copy = {fp32_copy:.2f} GiB; "
                f"float32 gradients of weight + hidden states (in every peak) = {grads:.2f} GiB; "
                f"median of {args.repeats}")
    print_environment(load_before, torch_threads=args.threads)


if __name__ == "__main__":
    main()
