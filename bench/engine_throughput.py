"""Throughput of the transformers rollout engine on the embedded task's tiny model.

One call = 32 prompts x 16 rollouts (512 rollouts), ``max_new_tokens`` 8,
temperature 1, on a random tiny ``Qwen2ForCausalLM`` (hidden 128, 3 layers, 4
heads, FFN 512, tied embeddings; 0.79 M parameters) with the character
tokenizer, ``torch.set_num_threads(2)``. Prints wall time per call (median and
min over ``--calls``; the machine is shared, so the median is the number to
quote and the min the uncontended cost), rollouts/s and generated tokens/s, and
the process CPU seconds per call (less sensitive to other processes), for:

- ``engine``: :class:`TransformersEngine` (shared-prompt prefill, finished rows
  dropped, log-probs returned);
- ``hf-generate``: ``model.generate`` on the same rows with ``output_logits``
  (what a trainer built on ``generate`` pays for the same information).

``--eos-bias`` adds a bias on the EOS logit so that completions are short, as
the warm-started policy's are (answers of 1-4 characters then EOS); 0 leaves
the random model, whose completions mostly run to the length limit.

A benchmark, not a test: tests/unit/test_transformers_engine.py checks
correctness.

    python bench/engine_throughput.py [--calls 15] [--eos-bias 0 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_requires.py, also when loaded by path
from _requires import require  # noqa: E402

require(__file__, "torch", "transformers", "pilotcommit")

import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from pilotcommit.models.tokenizer import build_char_tokenizer  # noqa: E402
from pilotcommit.rollout.protocol import SamplingParams  # noqa: E402
from pilotcommit.rollout.transformers_engine import TransformersEngine  # noqa: E402
from pilotcommit.types import RolloutKind, RolloutRequest  # noqa: E402

NUM_PROMPTS, ROLLOUTS_PER_PROMPT, MAX_NEW_TOKENS = 32, 16, 8


def tiny_model(tokenizer, eos_bias: float) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).eval()
    if eos_bias:
        # an output bias on EOS (keeps the tied weights, adds one vector)
        head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight)
            head.bias.zero_()
            head.bias[tokenizer.eos_token_id] = eos_bias
        model.lm_head = head
    return model


def problems(n: int) -> list[str]:
    rng = random.Random(0)
    return [f"{rng.randint(10, 99)}*{rng.randint(1, 9)}+{rng.randint(10, 99)}=" for _ in range(n)]


def time_engine(
    model, tokenizer, calls: int, compact_fraction: float
) -> tuple[list[float], list[int]]:
    texts = problems(NUM_PROMPTS)
    prompt_ids = {f"p{i}": tokenizer(t)["input_ids"] for i, t in enumerate(texts)}
    requests = [
        RolloutRequest(f"p{i}", ROLLOUTS_PER_PROMPT, RolloutKind.UNIFORM)
        for i in range(NUM_PROMPTS)
    ]
    engine = TransformersEngine(model, tokenizer, compact_fraction=compact_fraction)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS)
    engine.generate(requests, prompt_ids, params, seed=-1)  # warm-up
    walls, cpus, tokens = [], [], []
    for seed in range(calls):
        cpu_start = time.process_time()
        engine.generate(requests, prompt_ids, params, seed=seed)
        cpus.append(time.process_time() - cpu_start)
        walls.append(engine.last_stats.wall_s)
        tokens.append(engine.last_stats.num_generated_tokens)
    return walls, cpus, tokens


def time_hf_generate(model, tokenizer, calls: int) -> tuple[list[float], list[int]]:
    batch = tokenizer(problems(NUM_PROMPTS), padding=True, return_tensors="pt")
    input_ids = batch["input_ids"].repeat_interleave(ROLLOUTS_PER_PROMPT, dim=0)
    attention_mask = batch["attention_mask"].repeat_interleave(ROLLOUTS_PER_PROMPT, dim=0)
    eos = tokenizer.eos_token_id
    walls, cpus, tokens = [], [], []
    for seed in range(calls + 1):
        torch.manual_seed(seed)
        cpu_start = time.process_time()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=MAX_NEW_TOKENS,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
                output_logits=True,
                return_dict_in_generate=True,
            )
            completions_BT = out.sequences[:, input_ids.shape[1] :]
            logp_BTV = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
            logp_BTV.gather(2, completions_BT.unsqueeze(2))
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        # tokens up to and including the first EOS
        is_eos_BT = completions_BT == eos
        first_eos_B = torch.where(
            is_eos_BT.any(1), is_eos_BT.float().argmax(1) + 1, completions_BT.shape[1]
        )
        if seed > 0:  # the first call is a warm-up
            walls.append(wall)
            cpus.append(cpu)
            tokens.append(int(first_eos_B.sum()))
    return walls, cpus, tokens


def report(
    name: str, eos_bias: float, walls: list[float], cpus: list[float], tokens: list[int]
) -> None:
    rollouts = NUM_PROMPTS * ROLLOUTS_PER_PROMPT
    median = statistics.median(walls)
    mean_tokens = statistics.mean(tokens)
    print(
        f"{name:<22} eos_bias={eos_bias:<4} tokens/rollout {mean_tokens / rollouts:4.2f}  "
        f"wall median {median * 1e3:7.1f} ms (min {min(walls) * 1e3:6.1f})  "
        f"rollouts/s {rollouts / median:7.0f}  tokens/s {mean_tokens / median:7.0f}  "
        f"cpu s/call median {statistics.median(cpus):5.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--eos-bias", type=float, nargs="+", default=[0.0, 3.0])
    parser.add_argument("--compact-fraction", type=float, nargs="+", default=[0.25])
    parser.add_argument("--skip-hf", action="store_true", help="do not time model.generate")
    args = parser.parse_args()
    torch.set_num_threads(2)
    tokenizer = build_char_tokenizer()
    for eos_bias in args.eos_bias:
        model = tiny_model(tokenizer, eos_bias)
        for fraction in args.compact_fraction:
            walls, cpus, tokens = time_engine(model, tokenizer, args.calls, fraction)
            report(f"engine (compact {fraction})", eos_bias, walls, cpus, tokens)
        if not args.skip_hf:
            walls, cpus, tokens = time_hf_generate(model, tokenizer, args.calls)
            report("hf-generate", eos_bias, walls, cpus, tokens)


if __name__ == "__main__":
    main()
