"""Learner throughput at realistic lengths: padded, packed, and TRL's loss on the same rollouts.

``bench/throughput.py`` compares whole GRPO steps on the demo's 8-token answers, where padding
hardly matters. RL post-training with chain-of-thought spends its learner time on long-tailed
completion lengths instead: most responses are far shorter than the longest of their batch, and
a learner that pads every row to the longest computes mostly padding. This script fixes one
batch of rollouts with such lengths and times one learner update on it three ways:

- ``padded``: ``Learner.update`` with padded micro-batches of ``--micro-rows`` rows (the
  default learner; each micro-batch trimmed to its own longest row);
- ``packed``: ``Learner.update`` with ``learner.max_tokens_per_micro_batch`` set to the same
  token count as one padded micro-batch of the batch's full width (``--micro-rows`` x the
  longest sequence): the same memory bound, no padding (pilotcommit/learner/packing.py);
- ``packed-mask`` (not run by default): the packed rows under transformers' own sdpa packed
  mask (dense ``[T, T]`` over the whole row) instead of the per-sequence attention;
- ``trl``: TRL's ``GRPOTrainer.compute_loss`` on the same rollouts, injected as the inputs its
  ``_generate_and_score_completions`` would have produced (prompt ids left-padded and
  completions right-padded to the batch's longest, as TRL pads the whole generation batch before
  splitting it; the advantages our learner computes, ``num_items_in_batch`` = the batch's
  completion tokens), ``--micro-rows`` rows per ``compute_loss`` call with gradient
  accumulation over the batch, then the same gradient clip and the same AdamW step.

How the work is made identical: the same model weights (one seeded initialisation, copied),
the same sequences and advantages, every group with mixed rewards (no zero-advantage row for our
learner to skip), one optimizer step over all rows, float32, no gradient checkpointing, the same
loss (PPO clip 0.2 / 0.28, token-mean over the batch: TRL's ``loss_type="dapo"``, no KL, no
entropy term, temperature 1). Old log-probs are the gradient pass's own on every side (one
mini-batch; TRL with ``num_iterations=1``), so the first ratio is 1 and the loss is
``-sum(A_i * L_i) / sum(L_i)``: the printed losses must agree to float rounding (checked: the
script fails if they differ by more than 1e-4 relative).

Rollouts: ``--prompts`` prompts x ``--group`` rollouts, prompt lengths uniform in
[``--prompt-min``, ``--prompt-max``] (one per prompt), completion lengths log-normal with median
``--max-completion / 4`` and sigma ``--sigma`` (1.0: about 8% of the responses reach the cap, as
truncated responses do), capped at ``--max-completion``; random token ids, seeded. Models (random
weights, built here, nothing downloaded): ``demo`` is the embedded demo's shape (hidden 128, 3
layers, 4 heads, FFN 512, its 21-token vocabulary) and ``wide`` a wider tiny Qwen2 (hidden 512,
4 layers, 8 heads with 2 key/value heads, FFN 2048, 8,192-token vocabulary).

Each (model, side) runs in its own subprocess, so its peak RSS (``ru_maxrss``) is its own; on
CUDA (``--device cuda``) the peak is ``torch.cuda.max_memory_allocated``. One untimed update
runs first (lazy initialisation), then ``--repeats`` timed ones (medians). Learner tokens/s is the
batch's real prompt + completion tokens (no padding counted) per second of update.

    python bench/learner_lengths.py                      # the default: both models, a few minutes
    python bench/throughput.py --lengths realistic       # the same
    python bench/learner_lengths.py --models wide --repeats 3 --threads 1

The last line printed is ``learner throughput vs TRL at realistic lengths: N.Nx``: the packed
learner's tokens/s over TRL's, the smaller of the models' ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_requires.py, also when loaded by path
from _requires import require  # noqa: E402

require(__file__, "torch", "transformers", "pilotcommit")

from _common import (  # noqa: E402
    DEMO_SHAPE,
    cuda_sync,
    load_average,
    peak_memory_bytes,
    print_environment,
    print_table,
    qwen2_model,
)

SIDES = ("padded", "packed", "trl")
STEP_SIDES = ("packed-step", "trl-step")
# packed rows under transformers' own sdpa packed mask (dense [T, T], no varlen attention): why
# the learner switches to per-sequence attention (not run by default)
EXTRA_SIDES = ("packed-mask",)
MODELS = {
    # the demo's model shape (conf/model/tiny-arith.yaml); positions raised for long sequences
    "demo": dict(DEMO_SHAPE, vocab_size=21, tie_word_embeddings=False),
    "wide": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=2, vocab_size=8192, tie_word_embeddings=False),
}
LOSS_RTOL = 1e-4


@dataclass
class SideResult:
    model: str
    side: str
    update_s: list[float]
    loss: float
    tokens: int  # real prompt + completion tokens of the batch
    padded_tokens: int  # positions the side's forward passes cover (padding included)
    peak_mb: float
    memory_kind: str
    threads: int


# --------------------------------------------------------------------------- fixed rollouts


def make_rollouts(args):
    """The fixed batch: a TrainBatch of prompts x group rollouts with log-normal lengths."""
    import numpy as np

    from pilotcommit.types import Group, Rollout, RolloutKind, TrainBatch

    rng = np.random.default_rng(args.seed)
    # ids inside the demo's 21-token character vocabulary for every model, so that TRL's full
    # step can decode them with that tokenizer; the wide model still projects onto its 8,192
    vocab = MODELS["demo"]["vocab_size"]
    median = args.max_completion / 4
    groups = []
    for p in range(args.prompts):
        prompt = rng.integers(3, vocab, int(rng.integers(args.prompt_min, args.prompt_max + 1))).tolist()
        rollouts = []
        for i in range(args.group):
            length = int(np.clip(round(median * np.exp(args.sigma * rng.standard_normal())), 1, args.max_completion))
            rollouts.append(Rollout(
                prompt_id=f"p{p}", kind=RolloutKind.UNIFORM, prompt_token_ids=prompt,
                completion_token_ids=rng.integers(3, vocab, length).tolist(),
                sampler_logprobs=[-1.0] * length, text="", finish_reason="length",
                reward=float(i % 2), correct=float(i % 2),  # every group mixed: no zero-advantage row
            ))
        groups.append(Group(group_id=p, prompt_id=f"p{p}", rollouts=rollouts))
    return TrainBatch(step=0, groups=groups)


def build_model(name: str, max_positions: int):
    return qwen2_model(MODELS[name], max_position_embeddings=max_positions, pad_token_id=0, eos_token_id=1,
                       bos_token_id=2, use_cache=False)


def learner_config(args, packed: bool, width: int):
    from pilotcommit.config import LearnerConfig

    return LearnerConfig(
        # advantage_eps as TRL's (1e-4), so that its own advantages in the full step are ours
        lr=1e-4, weight_decay=0.1, warmup_steps=0, grad_clip=1.0, eps_low=0.2, eps_high=0.28, advantage_eps=1e-4,
        optimizer_steps_per_batch=1, micro_batch_size=args.micro_rows, dtype="float32",
        max_tokens_per_micro_batch=args.micro_rows * width if packed else None,
    )


# --------------------------------------------------------------------------- sides


def _peak(device) -> tuple[float, str]:
    peak, kind = peak_memory_bytes(device)
    return peak / 2**20, kind


def run_ours(args, packed: bool, dense_mask: bool = False) -> SideResult:
    import torch

    from pilotcommit.learner.update import Learner

    device = torch.device(args.device)
    batch = make_rollouts(args)
    lengths = [len(r.prompt_token_ids) + len(r.completion_token_ids) for r in batch.rollouts]
    width = max(lengths)
    model = build_model(args.model, width + 1).to(device)
    seen = []
    model.get_input_embeddings().register_forward_hook(lambda m, a, o: seen.append(a[0].numel()))
    learner = Learner(model, learner_config(args, packed, width), pad_id=0)
    if dense_mask:  # undo enable_packed_attention: transformers builds the packed mask itself
        model.config._attn_implementation = "sdpa"
    times, loss = [], None
    state = copy.deepcopy(model.state_dict())
    for i in range(1 + args.repeats):
        # every timed update starts from the same weights and optimizer state: the same work
        model.load_state_dict(state)
        learner.optimizer.state.clear()
        seen.clear()
        cuda_sync(device)
        start = time.perf_counter()
        metrics = learner.update(batch, seed=0)
        cuda_sync(device)
        if i:
            times.append(time.perf_counter() - start)
        loss = metrics["loss/policy"]
    peak, kind = _peak(device)
    side = "packed-mask" if dense_mask else "packed" if packed else "padded"
    return SideResult(args.model, side, times, loss, sum(lengths), sum(seen),
                      peak, kind, torch.get_num_threads())


def run_trl(args) -> SideResult:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from pilotcommit.learner.update import pack_batch
    from pilotcommit.models.tokenizer import build_char_tokenizer

    device = torch.device(args.device)
    batch = make_rollouts(args)
    rollouts = batch.rollouts
    lengths = [len(r.prompt_token_ids) + len(r.completion_token_ids) for r in rollouts]
    model = build_model(args.model, max(lengths) + 1).to(device)
    config = learner_config(args, False, max(lengths))
    advantages_N = pack_batch(batch, 0, config).advantages_B  # the advantages our learner uses
    n = len(rollouts)
    accumulation = -(-n // args.micro_rows)
    trl_args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-lengths-"), per_device_train_batch_size=args.micro_rows,
        gradient_accumulation_steps=accumulation, num_generations=args.group,
        max_completion_length=args.max_completion, beta=0.0, loss_type="dapo", epsilon=0.2,
        epsilon_high=0.28, learning_rate=config.lr, weight_decay=config.weight_decay,
        max_grad_norm=config.grad_clip, gradient_checkpointing=False, use_cpu=device.type == "cpu",
        bf16=False, fp16=False, report_to="none", save_strategy="no", disable_tqdm=True,
        remove_unused_columns=False, seed=0,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)], args=trl_args,
        train_dataset=Dataset.from_dict({"prompt": ["x"] * n}), processing_class=build_char_tokenizer(),
    )
    model = trainer.model
    model.train()
    optimizer = trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = accumulation  # what Trainer.train sets per window

    # the inputs _generate_and_score_completions builds: prompts left-padded, completions
    # right-padded, both to the longest of the whole generation batch
    p_max = max(len(r.prompt_token_ids) for r in rollouts)
    c_max = max(len(r.completion_token_ids) for r in rollouts)
    prompt_ids = torch.zeros((n, p_max), dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    completion_ids = torch.zeros((n, c_max), dtype=torch.long)
    completion_mask = torch.zeros_like(completion_ids)
    for i, r in enumerate(rollouts):
        p, c = len(r.prompt_token_ids), len(r.completion_token_ids)
        prompt_ids[i, p_max - p:] = torch.tensor(r.prompt_token_ids)
        prompt_mask[i, p_max - p:] = 1
        completion_ids[i, :c] = torch.tensor(r.completion_token_ids)
        completion_mask[i, :c] = 1
    num_items = completion_mask.sum().to(device)
    micro = [
        {"prompt_ids": prompt_ids[s:e].to(device), "prompt_mask": prompt_mask[s:e].to(device),
         "completion_ids": completion_ids[s:e].to(device), "completion_mask": completion_mask[s:e].to(device),
         "advantages": advantages_N[s:e].to(device), "num_items_in_batch": num_items}
        for s, e in ((s, min(s + args.micro_rows, n)) for s in range(0, n, args.micro_rows))
    ]
    state = copy.deepcopy(model.state_dict())
    times, loss = [], 0.0
    for i in range(1 + args.repeats):
        model.load_state_dict(state)
        optimizer.state.clear()
        cuda_sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for inputs in micro:
            out = trainer.compute_loss(model, inputs)
            out.backward()
            loss += float(out.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        cuda_sync(device)
        if i:
            times.append(time.perf_counter() - start)
    peak, kind = _peak(device)
    return SideResult(args.model, "trl", times, loss, sum(lengths), n * (p_max + c_max), peak, kind,
                      torch.get_num_threads())


# --------------------------------------------------------------------------- the full step


def run_ours_step(args) -> SideResult:
    """Our training step from the fixed rollouts on: GRPO's observe (the batch of groups), then
    the packed learner (generation left out, as on TRL's side)."""
    import torch

    from pilotcommit.allocation import make_policy
    from pilotcommit.config import GRPOConfig
    from pilotcommit.learner.update import Learner
    from pilotcommit.types import RequestResult

    device = torch.device(args.device)
    batch = make_rollouts(args)
    lengths = [len(r.prompt_token_ids) + len(r.completion_token_ids) for r in batch.rollouts]
    model = build_model(args.model, max(lengths) + 1).to(device)
    learner = Learner(model, learner_config(args, True, max(lengths)), pad_id=0)
    state = copy.deepcopy(model.state_dict())
    times, loss = [], None
    for i in range(1 + args.repeats):
        model.load_state_dict(state)
        learner.optimizer.state.clear()
        policy = make_policy(GRPOConfig(name="grpo", n=args.group, train_batch_size=args.prompts),
                             [g.prompt_id for g in batch.groups], seed=0)
        requests = policy.plan()
        by_prompt = {g.prompt_id: g.rollouts for g in batch.groups}
        cuda_sync(device)
        start = time.perf_counter()
        results = [RequestResult(request=q, rollouts=copy.deepcopy(by_prompt[q.prompt_id])) for q in requests]
        step_batch = policy.observe(results)
        metrics = learner.update(step_batch, seed=0)
        cuda_sync(device)
        if i:
            times.append(time.perf_counter() - start)
        loss = metrics["loss/policy"]
    peak, kind = _peak(device)
    return SideResult(args.model, "packed-step", times, loss, sum(lengths), sum(lengths), peak, kind,
                      torch.get_num_threads())


def run_trl_step(args) -> SideResult:
    """``GRPOTrainer.train`` for whole steps, its generation replaced by ``rollout_func``
    returning the fixed rollouts (and their rewards, forwarded to the reward function): TRL's
    own batching, advantages, loss, accumulation and optimizer."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from pilotcommit.models.tokenizer import build_char_tokenizer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    device = torch.device(args.device)
    batch = make_rollouts(args)
    rollouts = batch.rollouts
    lengths = [len(r.prompt_token_ids) + len(r.completion_token_ids) for r in rollouts]
    model = build_model(args.model, max(lengths) + 1).to(device)
    config = learner_config(args, False, max(lengths))
    n = len(rollouts)
    accumulation = -(-n // args.micro_rows)
    by_prompt = {g.prompt_id: g.rollouts for g in batch.groups}

    def rollout_func(prompts, trainer):
        # TRL's sampler repeats each prompt num_generations times: the k-th occurrence of a
        # prompt gets that prompt's k-th fixed rollout (a slice of distinct prompts gets whole groups)
        if len(set(prompts)) == len(prompts):
            rows = [r for p in prompts for r in by_prompt[p]]
        else:
            seen: dict[str, int] = {}
            rows = []
            for p in prompts:
                rows.append(by_prompt[p][seen.get(p, 0)])
                seen[p] = seen.get(p, 0) + 1
        return {"prompt_ids": [r.prompt_token_ids for r in rows], "completion_ids": [r.completion_token_ids for r in rows],
                "logprobs": [r.sampler_logprobs for r in rows], "fixed_reward": [r.reward for r in rows]}

    def fixed_reward(completions, fixed_reward, **_):
        return list(fixed_reward)

    trl_args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-lengths-"), per_device_train_batch_size=args.micro_rows,
        gradient_accumulation_steps=accumulation, num_generations=args.group,
        max_completion_length=args.max_completion, beta=0.0, loss_type="dapo", epsilon=0.2,
        epsilon_high=0.28, learning_rate=config.lr, weight_decay=config.weight_decay, warmup_steps=0,
        lr_scheduler_type="constant", max_grad_norm=config.grad_clip, gradient_checkpointing=False,
        use_cpu=device.type == "cpu", bf16=False, fp16=False, report_to="none", save_strategy="no",
        disable_tqdm=True, logging_steps=1, remove_unused_columns=False, seed=0, max_steps=1 + args.repeats,
    )
    losses: list[float] = []
    times: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            losses.append(0.0)
            cuda_sync(device)
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            cuda_sync(device)
            times.append(time.perf_counter() - self.start)

    class Trainer(GRPOTrainer):
        def compute_loss(self, model, inputs, *a, **k):
            out = super().compute_loss(model, inputs, *a, **k)
            losses[-1] += float(out.detach())
            return out

    trainer = Trainer(
        model=model, reward_funcs=[fixed_reward], args=trl_args, rollout_func=rollout_func,
        train_dataset=Dataset.from_dict({"prompt": [g.prompt_id for g in batch.groups]}),
        processing_class=build_char_tokenizer(), callbacks=[StepClock()],
    )
    trainer.remove_callback(PrinterCallback)
    # every step starts from the same weights: TRL's optimizer steps between them, so reset
    state = copy.deepcopy(trainer.model.state_dict())

    class Reset(TrainerCallback):
        def on_step_begin(self, *a, **k):
            trainer.model.load_state_dict(state)
            if trainer.optimizer is not None:
                trainer.optimizer.state.clear()

    trainer.add_callback(Reset())
    trainer.train()
    peak, kind = _peak(device)
    return SideResult(args.model, "trl-step", times[1:], losses[-1], sum(lengths), 0, peak, kind,
                      torch.get_num_threads())


# --------------------------------------------------------------------------- driver


def run_child(args) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if args.child == "trl-step":
        result = run_trl_step(args)
    elif args.child == "packed-step":
        result = run_ours_step(args)
    else:
        result = run_trl(args) if args.child == "trl" else run_ours(
            args, packed=args.child in ("packed", "packed-mask"), dense_mask=args.child == "packed-mask")
    Path(args.out).write_text(json.dumps(asdict(result)))


def run_side(model: str, side: str, argv: list[str]) -> SideResult:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    subprocess.run([sys.executable, __file__, *argv, "--model", model, "--child", side, "--out", str(out)],
                   check=True)
    result = SideResult(**json.loads(out.read_text()))
    out.unlink()
    return result


def print_results(results: list[SideResult], load_before) -> float:
    """The table (and the environment); returns the packed learner's tokens/s over TRL's, the
    smaller of the models' ratios (nan without both sides)."""
    rows, ratios = [], {}
    for model in dict.fromkeys(r.model for r in results):
        by_side = {r.side: r for r in results if r.model == model}
        for sides, reference in ((SIDES + EXTRA_SIDES, "trl"), (STEP_SIDES, "trl-step")):
            theirs = by_side.get(reference)
            for side in sides:
                r = by_side.get(side)
                if r is None:
                    continue
                t = statistics.median(r.update_s)
                rate = r.tokens / t
                vs = rate / (theirs.tokens / statistics.median(theirs.update_s)) if theirs else float("nan")
                if side == "packed" and theirs:
                    ratios[model] = vs
                forward = f"{r.padded_tokens:,}" if r.padded_tokens else "-"
                ratio = f"{vs:.2f}x vs {reference}" if theirs else "-"
                rows.append((model, side, f"{t:.3f}", f"{rate:,.0f}", forward, f"{r.peak_mb:,.0f}", f"{r.loss:.6f}",
                             ratio))
        losses = [r.loss for r in by_side.values()]
        spread = max(losses) - min(losses)
        if spread > LOSS_RTOL * max(abs(x) for x in losses):
            raise SystemExit(f"{model}: the sides' losses differ ({losses}): not the same work")
    print_table(("model", "side", "time per update (s, median)", "learner tokens/s", "tokens in forward (padding incl.)",
                 "peak memory (MB)", "loss", "tokens/s ratio"), rows)
    r0 = results[0]
    print_environment(load_before, libraries=("trl",), memory=r0.memory_kind, torch_threads=r0.threads)
    return min(ratios.values()) if ratios else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES + EXTRA_SIDES)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8, help="rollouts per prompt")
    parser.add_argument("--prompt-min", type=int, default=32)
    parser.add_argument("--prompt-max", type=int, default=64)
    parser.add_argument("--max-completion", type=int, default=512)
    parser.add_argument("--sigma", type=float, default=1.0, help="log-normal sigma of completion lengths")
    parser.add_argument("--micro-rows", type=int, default=8, help="rows per padded micro-batch")
    parser.add_argument("--repeats", type=int, default=1, help="timed updates per side (after one untimed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--full-step", action="store_true",
                        help="also the whole step from the fixed rollouts on: our GRPO observe + packed learner "
                        "against GRPOTrainer.train with rollout_func returning the same rollouts")
    parser.add_argument("--child", choices=SIDES + STEP_SIDES + EXTRA_SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if "trl" in args.sides or args.full_step or args.child in ("trl", "trl-step"):
        require(__file__, "trl", "accelerate", needed_for="the side trl; --sides padded packed runs without it")
    if args.child:
        run_child(args)
        return
    if args.max_completion < 512:
        print(f"note: --max-completion {args.max_completion} is below the issue's 512-token floor", flush=True)
    common = [a for a in sys.argv[1:]]
    load_before = load_average()
    results = []
    for model in args.models:
        probe = argparse.Namespace(**{**vars(args), "model": model})
        batch = make_rollouts(probe)
        completion = [len(r.completion_token_ids) for r in batch.rollouts]
        print(f"{model}: {len(completion)} rollouts, completion lengths median {statistics.median(completion):.0f}, "
              f"mean {statistics.fmean(completion):.0f}, max {max(completion)} (cap {args.max_completion}); "
              f"{sum(len(r.prompt_token_ids) + len(r.completion_token_ids) for r in batch.rollouts):,} tokens",
              flush=True)
        for side in args.sides:
            results.append(run_side(model, side, common))
        if args.full_step:
            results += [run_side(model, side, common) for side in STEP_SIDES]
    ratio = print_results(results, load_before)
    if not math.isnan(ratio):  # the packed and trl sides ran
        print(f"learner throughput vs TRL at realistic lengths: {ratio:.1f}x")


if __name__ == "__main__":
    main()
