"""What per-request seeds and vLLM's ``flat_logprobs`` cost at the demo's 512 rollouts per call.

:class:`pilotcommit.rollout.vllm_engine.VLLMEngine` gives every request its own seed
(``request_seed(call seed, position)``), so that a rollout depends on the call seed and its
position, not on batching, and a resumed run samples exactly what the uninterrupted one did.
vLLM's sampler then draws the noise of every seeded row with its own generator, in a Python
loop over rows at every decoding step (``vllm/v1/sample/ops/topk_topp_sampler.py``,
``random_sample``). This measures that cost against unseeded requests (one batched draw), and
the cost of vLLM's per-token ``{token_id: Logprob}`` dicts against ``flat_logprobs=True``, on
the same ``vllm.LLM`` and the same 32 prompts x 16 rollouts: a random tiny Qwen2 of the demo's
shape (float32, eager), at 8 and 128 new tokens. Median and min of ``--calls`` calls.

Needs the vLLM environment (README, "The vLLM engine"):

    ~/.cache/pilotcommit/venv-vllm/bin/python bench/vllm_sampling.py [--calls 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_requires.py, also when loaded by path
from _requires import require  # noqa: E402

require(__file__, "torch", "transformers", "pilotcommit")
require(__file__, "vllm", needed_for="the whole benchmark: it measures vLLM's sampler")

import os  # noqa: E402

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from _common import load_average, print_environment, print_table  # noqa: E402
from engine_throughput import NUM_PROMPTS, ROLLOUTS_PER_PROMPT, problems, tiny_model  # noqa: E402

from pilotcommit.models.tokenizer import build_char_tokenizer  # noqa: E402
from pilotcommit.rollout.vllm_convert import request_seed  # noqa: E402


def time_variant(llm, prompts, *, max_tokens: int, seeded: bool, flat: bool, calls: int) -> tuple[list[float], int]:
    from vllm import SamplingParams, TokensPrompt

    walls, tokens = [], 0
    for call in range(calls + 1):  # the first call warms up
        params = [
            SamplingParams(n=ROLLOUTS_PER_PROMPT, temperature=1.0, top_p=1.0, max_tokens=max_tokens, logprobs=0,
                           seed=request_seed(call, i) if seeded else None, flat_logprobs=flat)
            for i in range(len(prompts))
        ]
        started = time.perf_counter()
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        wall = time.perf_counter() - started
        if call:
            walls.append(wall)
            tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return walls, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, nargs="+", default=[8, 128])
    args = parser.parse_args()
    import torch
    from vllm import LLM

    torch.manual_seed(0)
    load_before = load_average()
    tokenizer = build_char_tokenizer()
    prompts = [tokenizer(t)["input_ids"] for t in problems(NUM_PROMPTS)]
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        longest = max(args.max_new_tokens)
        model = tiny_model(tokenizer, eos_bias=0.0, max_new_tokens=longest)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        llm = LLM(model=directory, skip_tokenizer_init=True, dtype="float32", enforce_eager=True,
                  kv_cache_memory_bytes=1 << 30, max_num_seqs=NUM_PROMPTS * ROLLOUTS_PER_PROMPT,
                  enable_chunked_prefill=False, logprobs_mode="processed_logprobs", seed=0)
        for max_tokens in args.max_new_tokens:
            base = None
            for seeded, flat in ((False, False), (True, False), (True, True)):
                walls, tokens = time_variant(llm, prompts, max_tokens=max_tokens, seeded=seeded, flat=flat,
                                             calls=args.calls)
                median = statistics.median(walls)
                base = median if base is None else base
                rows.append((max_tokens, "per-request" if seeded else "none", "flat" if flat else "dicts",
                             f"{median:.3f}", f"{min(walls):.3f}", f"{tokens / median:,.0f}", f"{median / base:.2f}x"))
    print_table(("new tokens", "seeds", "logprobs", "wall s (median)", "wall s (min)", "tokens/s", "vs unseeded"), rows,
                title=f"{NUM_PROMPTS} prompts x {ROLLOUTS_PER_PROMPT} rollouts per call, median and min of "
                f"{args.calls} calls")
    print_environment(load_before)


if __name__ == "__main__":
    main()
