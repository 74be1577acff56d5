"""GPU check: one Qwen2.5-Math-1.5B-shaped policy, random weights, decode and learner step.

    python bench/gpu_check.py                 # on one GPU (H200: a few minutes), prints a table
    python bench/gpu_check.py --tiny          # seconds on CPU: the same code on a tiny shape (CI)

Needs only torch and transformers, downloads nothing: the model is a random-initialised
``Qwen2ForCausalLM`` with Qwen2.5-Math-1.5B's shape (hidden 1536, 28 layers, 12 heads / 2 KV
heads, FFN 8960, vocabulary 151,936, tied embeddings). Weights are float32 (master weights, as
``conf/model/qwen2.5-math-1.5b.yaml``); compute is bfloat16 (``learner.dtype: bfloat16``).

Measured:

- **decode**: ``generate`` with the KV cache on a bfloat16 copy (what vLLM samples from),
  ``--decode-batch`` sequences of ``--decode-prompt`` tokens, ``--decode-new`` new tokens
  each: tokens/s, and the fraction of the memory-bandwidth limit, i.e. of the steps per
  second the GPU could do if every decoding step only read the bf16 weights and the KV cache
  once at ``--bandwidth-gbs`` (H200: 4,800 GB/s);
- **learner**: one :meth:`pilotcommit.learner.update.Learner.update` (the project's own learner:
  chunked completion log-probs, PPO loss, backward, AdamW) on ``--learner-rows`` rollouts of
  ``--prompt`` + up to ``--completion`` tokens (paper: 2048 + 8192) in micro-batches of
  ``--micro-batch`` with gradient checkpointing: step time, MFU (6 x parameters x tokens per
  second over ``--peak-tflops``, H200 dense bf16: 989), the peak memory of the step (whose
  largest micro-batch is 2 x 10,240 tokens at paper lengths) and the memory the caching
  allocator still reserves but does not use after the learner (what vLLM's wake-up would find
  missing without ``torch.cuda.empty_cache()``).

On CPU (``--tiny``) memory is the process's peak RSS and the bandwidth and MFU columns are
not computed (no meaningful peak). Not a test: tests/unit/test_gpu_check.py runs ``--tiny``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_requires.py, also when loaded by path
from _requires import require  # noqa: E402

require(__file__, "torch", "transformers", "pilotcommit")

import torch  # noqa: E402
from _common import (  # noqa: E402
    GIB,
    QWEN25_MATH_15B,
    cuda_sync,
    peak_rss_bytes,
    print_environment,
    print_table,
    qwen2_model,
)
from transformers import Qwen2ForCausalLM  # noqa: E402

from pilotcommit.config import LearnerConfig  # noqa: E402
from pilotcommit.learner.update import Learner  # noqa: E402
from pilotcommit.types import Group, Rollout, RolloutKind, TrainBatch  # noqa: E402

PAPER_SHAPE = {**QWEN25_MATH_15B, "max_position_embeddings": 16_384}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=256)


def build_model(shape: dict, device: torch.device, seed: int = 0) -> Qwen2ForCausalLM:
    return qwen2_model(shape, seed=seed, device=device, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       attn_implementation="sdpa")


def decode(model, batch: int, prompt: int, new: int, device: torch.device) -> dict:
    """Tokens/s of sampling ``new`` tokens for ``batch`` sequences with a bf16 copy of ``model``."""
    sampler = Qwen2ForCausalLM(model.config).to(device=device, dtype=torch.bfloat16)
    sampler.load_state_dict(model.state_dict())
    sampler.eval()
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt), device=device)
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=1.0, top_p=1.0,
                  pad_token_id=0)
    with torch.no_grad():
        sampler.generate(ids[:, :8], max_new_tokens=2, do_sample=True, pad_token_id=0)  # warm-up
        cuda_sync(device)
        started = time.perf_counter()
        sampler.generate(ids, **kwargs)
        cuda_sync(device)
    elapsed = time.perf_counter() - started
    weight_bytes = sum(p.numel() * p.element_size() for p in sampler.parameters())
    config = model.config
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * (
        config.hidden_size // config.num_attention_heads) * 2  # K and V, bf16
    mean_context = prompt + new / 2
    bytes_per_step = weight_bytes + batch * mean_context * kv_per_token
    del sampler
    return {"tokens_per_s": batch * new / elapsed, "steps_per_s": new / elapsed, "bytes_per_step": bytes_per_step,
            "elapsed_s": elapsed}


def learner_batch(rows: int, prompt: int, completion: int, vocab: int, seed: int = 0) -> TrainBatch:
    """``rows`` rollouts in groups of 2 (one correct, one wrong: every row trains); the first
    group has the longest completions (the worst micro-batch), the rest shorter ones."""
    generator = torch.Generator().manual_seed(seed)
    groups = []
    for g in range(max(rows // 2, 1)):
        length = completion if g == 0 else max(completion // (g + 1), 1)
        prompt_ids = torch.randint(3, vocab, (prompt,), generator=generator).tolist()
        rollouts = []
        for reward in (1.0, 0.0):
            ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
            rollouts.append(Rollout(prompt_id=f"p{g}", kind=RolloutKind.UNIFORM, prompt_token_ids=prompt_ids,
                                    completion_token_ids=ids, sampler_logprobs=[-1.0] * length, text="",
                                    finish_reason="length", reward=reward))
        groups.append(Group(group_id=g, prompt_id=f"p{g}", rollouts=rollouts))
    return TrainBatch(step=0, groups=groups)


def learn(model, batch: TrainBatch, micro_batch: int, device: torch.device) -> dict:
    config = LearnerConfig(lr=1e-6, warmup_steps=0, micro_batch_size=micro_batch, dtype="bfloat16",
                           gradient_checkpointing=True)
    learner = Learner(model, config, pad_id=0)
    tokens = sum(len(r.prompt_token_ids) + len(r.completion_token_ids) for r in batch.rollouts)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    cuda_sync(device)
    started = time.perf_counter()
    metrics = learner.update(batch, seed=0)
    cuda_sync(device)
    elapsed = time.perf_counter() - started
    out = {"step_s": elapsed, "tokens": tokens, "trained_rows": metrics["learner/trained_sequences"]}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        out["reserved_unallocated_gib"] = (torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)) / GIB
    else:
        out["peak_gib"] = peak_rss_bytes() / GIB
        out["reserved_unallocated_gib"] = float("nan")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shape and lengths on CPU (CI)")
    parser.add_argument("--decode-batch", type=int, default=256)
    parser.add_argument("--decode-prompt", type=int, default=512)
    parser.add_argument("--decode-new", type=int, default=256)
    parser.add_argument("--learner-rows", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=2048)
    parser.add_argument("--completion", type=int, default=8192)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--bandwidth-gbs", type=float, default=4800.0, help="HBM bandwidth (H200: 4800)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H200: 989)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.decode_batch, args.decode_prompt, args.decode_new = 4, 8, 8
        args.prompt, args.completion, args.learner_rows = 16, 32, 4
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    model = build_model(TINY if args.tiny else PAPER_SHAPE, device)
    torch.manual_seed(0)  # the decode's random prompts
    params = sum(p.numel() for p in model.parameters())
    dec = decode(model, args.decode_batch, args.decode_prompt, args.decode_new, device)
    batch = learner_batch(args.learner_rows, args.prompt, args.completion, model.config.vocab_size)
    lrn = learn(model, batch, args.micro_batch, device)
    on_gpu = device.type == "cuda"
    bandwidth_fraction = dec["steps_per_s"] * dec["bytes_per_step"] / (args.bandwidth_gbs * 1e9) if on_gpu else float("nan")
    mfu = 6 * params * lrn["tokens"] / lrn["step_s"] / (args.peak_tflops * 1e12) if on_gpu else float("nan")
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    title = (f"{name}; {params / 1e6:,.1f} M parameters ({'tiny' if args.tiny else 'Qwen2.5-Math-1.5B'} shape), "
             "float32 weights, bf16 compute")
    rows = [
        (f"decode tokens/s ({args.decode_batch} seqs, {args.decode_prompt} + {args.decode_new} tokens)",
         f"{dec['tokens_per_s']:,.0f}"),
        (f"decode: fraction of the bandwidth limit ({args.bandwidth_gbs:,.0f} GB/s)", f"{bandwidth_fraction:.2f}"),
        (f"learner step ({args.learner_rows} rows, {args.prompt} + <= {args.completion} tokens, "
         f"micro-batch {args.micro_batch}) s", f"{lrn['step_s']:.2f}"),
        (f"learner MFU (6 N tokens / s over {args.peak_tflops:,.0f} TFLOP/s)", f"{mfu:.3f}"),
        ("peak memory of the step, worst micro-batch (GiB)" + ("" if on_gpu else ", process RSS"),
         f"{lrn['peak_gib']:.2f}"),
        ("reserved but unallocated after the learner (GiB)", f"{lrn['reserved_unallocated_gib']:.2f}"),
    ]
    print_table(("measurement", "value"), rows, title=title)
    print_environment()
    return {"decode": dec, "learner": lrn, "bandwidth_fraction": bandwidth_fraction, "mfu": mfu}


if __name__ == "__main__":
    main()
