"""Throughput of one GRPO training step: this project against TRL's ``GRPOTrainer``, same work.

Both sides train the same warm-started tiny ``Qwen2ForCausalLM`` of the embedded demo (the
demo's model config and warm start, built once as ``pilotcommit compare`` builds it and cached
under ``--cache-dir``, or ``--policy DIR``; ``--config`` and ``--set`` choose another experiment,
e.g. the smoke one for a quick run of the code) on the demo's synthetic arithmetic training
prompts, with the same step shape and settings:

- 32 prompts x 16 rollouts = 512 rollouts per step, ``max_new_tokens`` / ``max_completion_length``
  from the demo (8), temperature 1, top-p 1, no top-k;
- the same exact-integer reward (``pilotcommit.rewards.arith_reward``);
- the same loss: PPO clip 0.2 / 0.28, token-mean, no KL, one optimizer step per training step
  over all 512 sequences in one micro-batch, AdamW with the demo's lr / warm-up / weight decay,
  grad clip 1.0, no gradient checkpointing;
- the same ``torch.set_num_threads`` (``--threads``), float32, CPU, no vLLM.

Sides (``--sides``), each in its own subprocess so that its peak RSS is its own:

- ``ours``: ``GRPOPolicy.plan`` -> ``TransformersEngine.generate`` -> ``arith_reward`` ->
  ``GRPOPolicy.observe`` -> ``Learner.update`` (the body of ``pilotcommit.loop.train_run``
  without evaluation and checkpoints). Its learner skips the forward and backward of rows
  whose group has equal rewards (zero advantage: zero gradient, the same update).
- ``ours-all``: the same, with each group's rewards jittered by +-1e-3 so that no group has
  equal rewards and the learner trains all 512 rows, as TRL does: the strictly identical-work
  comparison (the gradient then carries noise, which costs the same compute).
- ``trl``: ``GRPOTrainer.train`` (transformers ``generate`` on the 512 repeated prompts,
  rewards, one forward/backward over all rows), timed per step with a callback and per phase
  by wrapping its ``_generate`` and ``_calculate_rewards``.
- ``trl-gc``: the same with TRL's own default ``gradient_checkpointing=True`` (what a TRL
  user gets unless they turn it off).

``--rounds`` alternates the sides so that bursts of load from other processes on the
machine hit all of them. Reported as medians over the timed steps: time per step and its
rollout / reward / learner parts; process CPU seconds per step (less sensitive to other
processes than wall time, most of all with ``--threads 1``, where no OpenMP thread spins
waiting for a descheduled sibling); rollout tokens/s (generated completion tokens, EOS
included, per generation second) and learner tokens/s (prompt + completion tokens of the 512
sequences per learner second), both per wall and per CPU second; the learner's achieved model
FLOP rate (6 x matmul parameters x trained tokens per second: how close to the CPU's matmul
peak it runs); peak RSS (``ru_maxrss``) and the RSS after setup. The ratios come last.

``--profile SIDE`` runs one side in-process under cProfile and prints where the time goes.
``--gpu`` instead measures the engine's decoding tokens/s on a Qwen2.5-Math-1.5B-shaped model
(random weights, bf16) against the card's memory-bandwidth limit (every decoding step reads
all weights once): see :func:`bandwidth_limit_fraction`.

A benchmark, not a test; results and the exact commands are in docs/benchmarks.md.

    python bench/throughput.py [--steps 8] [--warmup 2] [--rounds 2] [--threads 2]
    python bench/throughput.py --config conf/experiment/smoke.yaml --sides ours ours-all --steps 1 --warmup 0 --rounds 1
    python bench/throughput.py --profile ours
    python bench/throughput.py --gpu            # on a CUDA machine
    python bench/throughput.py --lengths realistic [learner_lengths.py options]   # the learner at long-tailed lengths
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_requires.py, also when loaded by path
from _requires import require  # noqa: E402

require(__file__, "torch", "transformers", "pilotcommit")

from _common import (  # noqa: E402
    QWEN25_MATH_15B,
    REPO_ROOT,
    current_rss_bytes,
    load_average,
    peak_rss_bytes,
    print_environment,
    print_table,
    qwen2_model,
)

NUM_PROMPTS, GROUP_SIZE = 32, 16
DEFAULT_CACHE = REPO_ROOT / "runs" / "bench" / "throughput"
JITTER = 1e-3  # reward jitter of the ours-all variant
SIDES = ("ours", "ours-all", "trl", "trl-gc")


# --------------------------------------------------------------------------- records


@dataclass
class StepTiming:
    """One training step of one side."""

    step_s: float
    rollout_s: float
    reward_s: float
    learner_s: float
    generated_tokens: int  # completion tokens, EOS included
    sequence_tokens: int  # prompt + completion tokens of every trained sequence
    reward_mean: float
    skipped_rows: int = 0  # rows the learner did not forward (zero advantage); TRL: 0
    # process CPU seconds (all threads): less sensitive than wall time to other processes on
    # the machine, which slow a step down without adding to its CPU time
    step_cpu_s: float = 0.0
    rollout_cpu_s: float = 0.0
    trained_tokens: int = 0  # tokens of the rows that went through forward and backward

    @property
    def learner_cpu_s(self) -> float:
        # the reward is microseconds: the step's CPU time after the rollout is the learner's
        return self.step_cpu_s - self.rollout_cpu_s


@dataclass
class SideResult:
    """What one side's subprocess reports (medians over the timed steps)."""

    side: str
    steps: list[StepTiming]
    rss_setup_mb: float  # RSS after imports, model and trainer construction
    rss_peak_mb: float  # ru_maxrss at the end
    threads: int
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    matmul_params: int = 0  # parameters in matrix multiplies per token (embedding lookup excluded)

    def median(self, name: str) -> float:
        return statistics.median(getattr(s, name) for s in self.steps)

    @property
    def rollout_tokens_per_s(self) -> float:
        return statistics.median(s.generated_tokens / s.rollout_s for s in self.steps)

    @property
    def learner_tokens_per_s(self) -> float:
        return statistics.median(s.sequence_tokens / s.learner_s for s in self.steps)

    @property
    def rollout_tokens_per_cpu_s(self) -> float:
        return statistics.median(s.generated_tokens / s.rollout_cpu_s for s in self.steps)

    @property
    def learner_tokens_per_cpu_s(self) -> float:
        return statistics.median(s.sequence_tokens / s.learner_cpu_s for s in self.steps)

    @property
    def learner_gflops(self) -> float:
        """Achieved model FLOP rate of the learner: 6 x params x trained tokens (forward 2,
        backward 4; attention scores left out) per learner second; ours includes the forward
        pass it makes for nothing but the old log-probs when that pass exists."""
        return statistics.median(
            6 * self.matmul_params * s.trained_tokens / s.learner_s / 1e9 for s in self.steps
        )


def peak_rss_mb() -> float:
    return peak_rss_bytes() / 2**20


def matmul_params(model) -> int:
    """Parameters used in a matrix multiply per token: all but the input embedding (the
    output head multiplies even when tied)."""
    embedding = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters() if p is not embedding)
    return total + embedding.numel() if model.config.tie_word_embeddings else total


def current_rss_mb() -> float:
    return current_rss_bytes() / 2**20


# --------------------------------------------------------------------------- shared inputs


def bench_config(inputs: dict | None = None):
    """The experiment config of ``inputs`` (default: the demo): its model sizes, data, learner
    and rollout settings."""
    from pilotcommit.config import demo_config_path, load_experiment_config

    inputs = inputs or {}
    return load_experiment_config(inputs.get("config") or demo_config_path(), inputs.get("overrides", []))


def prepare_inputs(cache_dir: Path, policy: str | None, config: Path | None = None,
                   overrides: list[str] | None = None) -> dict:
    """The config's (default: the demo's) prepared data and, unless ``policy`` is given, its
    warm start, built the way ``pilotcommit compare`` builds them and cached under ``cache_dir``."""
    from pilotcommit.config import config_hash
    from pilotcommit.pipeline import PreparedData, build_initial_policy, prepare_data

    chosen = {"config": str(config.resolve()) if config else None, "overrides": list(overrides or [])}
    cfg = bench_config(chosen)
    root = cache_dir / (config_hash(cfg.data)[:10] + "-" + config_hash(cfg.model)[:10])
    manifest = root / "inputs.json"
    inputs = json.loads(manifest.read_text()) if manifest.is_file() else {}
    inputs.update(chosen)
    if "prepared" not in inputs:
        inputs["prepared"] = prepare_data(cfg, root / "data").to_dict()
    inputs["train_path"] = inputs["prepared"]["train_path"]
    if policy:
        return {**inputs, "policy": str(Path(policy).resolve())}
    if "policy" not in inputs:
        print(
            f"warm start ({cfg.model.warm_start.steps} steps, once) into {root / 'policy'} ...",
            flush=True,
        )
        prepared = PreparedData.from_dict(inputs["prepared"])
        inputs["policy"] = build_initial_policy(cfg, prepared, root / "policy")
    root.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(inputs, indent=2))
    return inputs


def load_prompts(train_path: str) -> tuple[list[str], list[str], list[str]]:
    from pilotcommit.pipeline import read_prompt_table

    frame = read_prompt_table(Path(train_path))
    return frame["prompt_id"].tolist(), frame["problem"].tolist(), frame["answer"].tolist()


# --------------------------------------------------------------------------- this project


def run_ours(
    inputs: dict, steps: int, warmup: int, threads: int, seed: int, train_all_rows: bool = False
) -> SideResult:
    """``train_all_rows``: jitter each group's rewards by +-JITTER so that no group has equal
    rewards and the learner trains all 512 rows as TRL does (the strictly identical-work
    variant; the gradient then holds noise, which costs the same compute)."""
    import torch

    from pilotcommit.allocation import make_policy
    from pilotcommit.config import GRPOConfig
    from pilotcommit.learner.update import Learner
    from pilotcommit.models.loading import load_policy
    from pilotcommit.rewards import arith_reward
    from pilotcommit.rollout.protocol import SamplingParams, derive_seed
    from pilotcommit.run_parts import encode_prompts, make_engine, score_results

    torch.set_num_threads(threads)
    cfg = bench_config(inputs)
    ids, problems, answers = load_prompts(inputs["train_path"])
    model, tokenizer = load_policy(inputs["policy"], cfg.model)
    prompt_token_ids = dict(zip(ids, encode_prompts(problems, tokenizer, cfg)))
    answer_of = dict(zip(ids, answers))
    policy = make_policy(
        GRPOConfig(name="grpo", n=GROUP_SIZE, train_batch_size=NUM_PROMPTS), ids, seed=seed
    )
    learner = Learner(model, cfg.learner, pad_id=tokenizer.pad_token_id)
    engine = make_engine(cfg, model, tokenizer)
    params = SamplingParams(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_new_tokens)
    rss_setup = current_rss_mb()

    timings = []
    for step in range(warmup + steps):
        c0, t0 = time.process_time(), time.perf_counter()
        requests = policy.plan()
        results = engine.generate(
            requests, prompt_token_ids, params, seed=derive_seed(seed, step, 0)
        )
        c1, t1 = time.process_time(), time.perf_counter()
        score_results(results, answer_of, arith_reward, cfg)
        if train_all_rows:
            for result in results:
                for i, rollout in enumerate(result.rollouts):
                    rollout.reward += JITTER if i % 2 else 0.0
        t2 = time.perf_counter()
        batch = policy.observe(results)
        assert batch is not None, "GRPO returns a batch after every round"
        learn_metrics = learner.update(batch, seed=derive_seed(seed, step, 7_777))
        engine.update_weights(model)
        c3, t3 = time.process_time(), time.perf_counter()
        rollouts = batch.rollouts
        trained = [
            r for g in batch.groups if len({x.reward for x in g.rollouts}) > 1 for r in g.rollouts
        ]
        timing = StepTiming(
            step_s=t3 - t0,
            rollout_s=t1 - t0,
            reward_s=t2 - t1,
            learner_s=t3 - t2,
            generated_tokens=engine.last_stats.num_generated_tokens,
            sequence_tokens=sum(
                len(r.prompt_token_ids) + len(r.completion_token_ids) for r in rollouts
            ),
            reward_mean=statistics.fmean(r.reward for r in rollouts),
            skipped_rows=int(learn_metrics["learner/skipped_zero_advantage"]),
            step_cpu_s=c3 - c0,
            rollout_cpu_s=c1 - c0,
            trained_tokens=sum(
                len(r.prompt_token_ids) + len(r.completion_token_ids) for r in trained
            ),
        )
        if step >= warmup:
            timings.append(timing)
    return SideResult(
        "ours-all" if train_all_rows else "ours",
        timings,
        rss_setup,
        peak_rss_mb(),
        torch.get_num_threads(),
        {"torch": torch.__version__},
        [],
        matmul_params(model),
    )


# --------------------------------------------------------------------------- TRL


def run_trl(
    inputs: dict,
    steps: int,
    warmup: int,
    threads: int,
    seed: int,
    gradient_checkpointing: bool = False,
) -> SideResult:
    """``gradient_checkpointing``: TRL's own default (True) instead of ours (False): the
    configuration a user of TRL gets unless they turn it off; it recomputes activations."""
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer

    from pilotcommit.models.loading import load_policy
    from pilotcommit.rewards import arith_reward

    torch.set_num_threads(threads)
    cfg = bench_config(inputs)
    _, problems, answers = load_prompts(inputs["train_path"])
    model, tokenizer = load_policy(inputs["policy"], cfg.model)
    model.train()
    dataset = Dataset.from_dict({"prompt": problems, "answer": answers})

    def exact_match(completions, answer, **_):
        return [arith_reward(c, a) for c, a in zip(completions, answer)]

    learner = cfg.learner
    out_dir = tempfile.mkdtemp(prefix="trl-bench-")
    args = TRLGRPOConfig(
        output_dir=out_dir,
        # one optimizer step = one generation batch = 32 prompts x 16 completions
        per_device_train_batch_size=NUM_PROMPTS * GROUP_SIZE,
        num_generations=GROUP_SIZE,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        top_k=0,
        beta=0.0,
        epsilon=learner.eps_low,
        epsilon_high=learner.eps_high,
        loss_type="dapo",  # token-mean over the batch, as ours
        scale_rewards="group",
        mask_truncated_completions=False,
        learning_rate=learner.lr,
        weight_decay=learner.weight_decay,
        adam_beta1=learner.betas[0],
        adam_beta2=learner.betas[1],
        warmup_steps=learner.warmup_steps,
        lr_scheduler_type="constant_with_warmup",
        max_grad_norm=learner.grad_clip,
        gradient_checkpointing=gradient_checkpointing,  # TRL's default is on; ours is off
        max_steps=warmup + steps,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        seed=seed,
    )

    phase = {
        "generate": 0.0,
        "generate_cpu": 0.0,
        "reward": 0.0,
        "generated_tokens": 0,
        "sequence_tokens": 0,
        "reward_sum": 0.0,
        "rewards": 0,
    }

    class TimedTrainer(GRPOTrainer):
        def _generate(self, prompts):
            cpu, start = time.process_time(), time.perf_counter()
            out = super()._generate(prompts)
            phase["generate"] += time.perf_counter() - start
            phase["generate_cpu"] += time.process_time() - cpu
            prompt_ids, completion_ids = out[0], out[1]
            phase["generated_tokens"] += sum(len(c) for c in completion_ids)
            phase["sequence_tokens"] += sum(
                len(p) + len(c) for p, c in zip(prompt_ids, completion_ids)
            )
            return out

        def _calculate_rewards(self, *args, **kwargs):
            start = time.perf_counter()
            rewards = super()._calculate_rewards(*args, **kwargs)
            phase["reward"] += time.perf_counter() - start
            phase["reward_sum"] += float(rewards.sum())
            phase["rewards"] += int(rewards.numel())
            return rewards

    timings: list[StepTiming] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            for key, value in phase.items():
                phase[key] = 0 if isinstance(value, int) else 0.0
            self.cpu, self.start = time.process_time(), time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_s = time.perf_counter() - self.start
            step_cpu_s = time.process_time() - self.cpu
            if state.global_step > warmup:
                timings.append(
                    StepTiming(
                        step_s=step_s,
                        rollout_s=phase["generate"],
                        reward_s=phase["reward"],
                        learner_s=step_s - phase["generate"] - phase["reward"],
                        generated_tokens=int(phase["generated_tokens"]),
                        sequence_tokens=int(phase["sequence_tokens"]),
                        reward_mean=phase["reward_sum"] / max(phase["rewards"], 1),
                        step_cpu_s=step_cpu_s,
                        rollout_cpu_s=phase["generate_cpu"],
                        trained_tokens=int(phase["sequence_tokens"]),  # TRL trains every row
                    )
                )

    trainer = TimedTrainer(
        model=model,
        reward_funcs=[exact_match],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepClock()],
    )
    trainer.remove_callback(PrinterCallback)  # its per-step dicts would bury the table
    rss_setup = current_rss_mb()
    trainer.train()
    if len(timings) != steps:
        raise RuntimeError(f"TRL ran {len(timings)} timed steps, expected {steps}")
    notes = []
    if torch.get_num_threads() != threads:
        notes.append(f"TRL/accelerate reset torch threads to {torch.get_num_threads()}")
    return SideResult(
        "trl-gc" if gradient_checkpointing else "trl",
        timings,
        rss_setup,
        peak_rss_mb(),
        torch.get_num_threads(),
        {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        notes,
        matmul_params(model),
    )


# --------------------------------------------------------------------------- GPU: bandwidth limit


# HBM bandwidth in GB/s of cards we may be lent (vendor data sheets), used when the driver
# does not report clock and bus width
KNOWN_BANDWIDTH_GBS = {
    "H100 80GB HBM3": 3350.0,  # SXM
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "H200": 4800.0,
    "A100-SXM4-80GB": 2039.0,
    "A100-SXM4-40GB": 1555.0,
    "A100 80GB PCIe": 1935.0,
    "L40S": 864.0,
}


def bandwidth_limit_fraction(
    generated_tokens: int, wall_s: float, decode_steps: int, weight_bytes: int, bandwidth_gbs: float
) -> dict[str, float]:
    """How close decoding got to the memory-bandwidth bound.

    At small batch a decoding step is bound by reading every weight once, so at most
    ``bandwidth / weight_bytes`` steps per second are possible; a call that ran ``decode_steps``
    forward passes cannot take less than ``decode_steps * weight_bytes / bandwidth`` seconds.
    The fraction is that floor over the measured wall time (1.0 = at the limit). Also
    returned: the tokens/s ceiling at the call's mean number of active rows per step. KV-cache
    reads and the prefill are ignored, so the bound is optimistic for long contexts.
    """
    if wall_s <= 0 or decode_steps <= 0:
        raise ValueError("bandwidth_limit_fraction: wall_s and decode_steps must be positive")
    floor_s = decode_steps * weight_bytes / (bandwidth_gbs * 1e9)
    rows_per_step = generated_tokens / decode_steps
    return {
        "tokens_per_s": generated_tokens / wall_s,
        "steps_per_s": decode_steps / wall_s,
        "limit_steps_per_s": bandwidth_gbs * 1e9 / weight_bytes,
        "limit_tokens_per_s": rows_per_step * bandwidth_gbs * 1e9 / weight_bytes,
        "fraction_of_limit": floor_s / wall_s,
    }


def device_bandwidth_gbs(override: float | None) -> tuple[float, str]:
    import torch

    if override:
        return override, "--bandwidth-gbs"
    props = torch.cuda.get_device_properties(0)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        # double data rate: two transfers per clock
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "driver (memory clock x bus width)"
    for name, gbs in KNOWN_BANDWIDTH_GBS.items():
        if name in props.name:
            return gbs, f"data sheet ({name})"
    raise RuntimeError(f"unknown memory bandwidth of {props.name}; pass --bandwidth-gbs")


def run_gpu(
    prompts: int, rollouts: int, max_new_tokens: int, bandwidth_override: float | None
) -> None:
    """Engine decoding tokens/s of a 1.5B-shaped Qwen2 (bf16, random weights) vs the bound."""
    import torch

    from pilotcommit.rollout.protocol import SamplingParams
    from pilotcommit.rollout.transformers_engine import TransformersEngine
    from pilotcommit.types import RolloutKind, RolloutRequest

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    # Qwen2.5-Math-1.5B's shape; random weights (initialised on the card), nothing is downloaded
    model = qwen2_model(QWEN25_MATH_15B, device="cuda", max_position_embeddings=4096, eos_token_id=151643,
                        pad_token_id=151643).to(dtype=torch.bfloat16).eval()
    config = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    class _Tok:  # the engine needs ids only: no tokenizer download
        eos_token_id = 151643
        pad_token_id = 151643

        def batch_decode(self, seqs, skip_special_tokens=True):
            return ["" for _ in seqs]

    # never stop early: every row decodes max_new_tokens, so decode steps are known
    engine = TransformersEngine(
        model,
        _Tok(),
        stop_token_ids=[config.vocab_size + 1],
        max_rollouts_per_batch=prompts * rollouts,
    )
    gen = torch.Generator().manual_seed(0)
    prompt_ids = {
        f"p{i}": torch.randint(0, 150000, (128,), generator=gen).tolist() for i in range(prompts)
    }
    requests = [RolloutRequest(f"p{i}", rollouts, RolloutKind.UNIFORM) for i in range(prompts)]
    params = SamplingParams(1.0, 1.0, max_new_tokens)
    engine.generate(requests, prompt_ids, params, seed=0)  # warm-up
    torch.cuda.synchronize()
    walls = []
    for seed in range(1, 4):
        start = time.perf_counter()
        engine.generate(requests, prompt_ids, params, seed=seed)
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
    bandwidth, source = device_bandwidth_gbs(bandwidth_override)
    wall = statistics.median(walls)
    out = bandwidth_limit_fraction(
        prompts * rollouts * max_new_tokens, wall, max_new_tokens, weight_bytes, bandwidth
    )
    print_table(("quantity", "value"), [(key, f"{value:,.3f}") for key, value in out.items()],
                title=f"device {torch.cuda.get_device_name(0)}; bandwidth {bandwidth:.0f} GB/s ({source}); "
                f"model 1.5B-shaped, {weight_bytes / 1e9:.2f} GB of bf16 weights; {prompts} prompts x "
                f"{rollouts} rollouts x {max_new_tokens} tokens; median wall {wall:.2f} s")
    print_environment()


# --------------------------------------------------------------------------- driver


def child_main(args: argparse.Namespace) -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renames, via TRL
    inputs = json.loads(Path(args.inputs).read_text())
    result = run_named(args.child, inputs, args)
    Path(args.out).write_text(json.dumps(asdict(result)))


def run_named(side: str, inputs: dict, args: argparse.Namespace) -> SideResult:
    if side in ("trl", "trl-gc"):
        return run_trl(
            inputs,
            args.steps,
            args.warmup,
            args.threads,
            args.seed,
            gradient_checkpointing=side == "trl-gc",
        )
    return run_ours(
        inputs, args.steps, args.warmup, args.threads, args.seed, train_all_rows=side == "ours-all"
    )


def run_side(side: str, inputs_path: Path, args: argparse.Namespace) -> SideResult:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--inputs",
        str(inputs_path),
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]
    subprocess.run(cmd, check=True)
    data = json.loads(out.read_text())
    out.unlink()
    data["steps"] = [StepTiming(**s) for s in data["steps"]]
    return SideResult(**data)


def print_results(results: list[SideResult], load_before: tuple) -> None:
    rows = [
        ("time per step (s, median)", lambda r: f"{r.median('step_s'):.3f}"),
        ("  rollout (s)", lambda r: f"{r.median('rollout_s'):.3f}"),
        ("  reward (s)", lambda r: f"{r.median('reward_s'):.4f}"),
        ("  learner (s)", lambda r: f"{r.median('learner_s'):.3f}"),
        (
            "time per step (s, min: the least contended)",
            lambda r: f"{min(s.step_s for s in r.steps):.3f}",
        ),
        ("CPU s per step (median)", lambda r: f"{r.median('step_cpu_s'):.3f}"),
        ("CPU s per step (min)", lambda r: f"{min(s.step_cpu_s for s in r.steps):.3f}"),
        ("  rollout CPU s", lambda r: f"{r.median('rollout_cpu_s'):.3f}"),
        ("  learner CPU s", lambda r: f"{statistics.median(s.learner_cpu_s for s in r.steps):.3f}"),
        ("rollout tokens/s", lambda r: f"{r.rollout_tokens_per_s:,.0f}"),
        ("learner tokens/s", lambda r: f"{r.learner_tokens_per_s:,.0f}"),
        ("rollout tokens per CPU s", lambda r: f"{r.rollout_tokens_per_cpu_s:,.0f}"),
        ("learner tokens per CPU s", lambda r: f"{r.learner_tokens_per_cpu_s:,.0f}"),
        ("learner model GFLOP/s (6 N x trained tokens)", lambda r: f"{r.learner_gflops:.1f}"),
        ("generated tokens/step", lambda r: f"{r.median('generated_tokens'):,.0f}"),
        ("reward mean", lambda r: f"{statistics.fmean(s.reward_mean for s in r.steps):.3f}"),
        (
            "rows skipped by the learner",
            lambda r: f"{statistics.fmean(s.skipped_rows for s in r.steps):.0f}",
        ),
        (
            "step time min-max (s)",
            lambda r: f"{min(s.step_s for s in r.steps):.2f}-{max(s.step_s for s in r.steps):.2f}",
        ),
        ("RSS after setup (MB)", lambda r: f"{r.rss_setup_mb:,.0f}"),
        ("peak RSS (MB)", lambda r: f"{r.rss_peak_mb:,.0f}"),
        ("torch threads", lambda r: str(r.threads)),
    ]
    names = [r.side for r in results]
    print_table(("metric", *names), [(label, *(fmt(r) for r in results)) for label, fmt in rows])
    for r in results:
        for note in r.notes:
            print(f"note ({r.side}): {note}")
    by_side = {r.side: r for r in results}
    for name, other in (("ours-all", "trl"), ("ours", "trl"), ("ours", "trl-gc")):
        ours, theirs = by_side.get(name), by_side.get(other)
        if ours is None or theirs is None:
            continue
        best = min(s.step_s for s in theirs.steps) / min(s.step_s for s in ours.steps)
        print(
            f"ratio {name} over {other}: min step time {best:.2f}x, step time {theirs.median('step_s') / ours.median('step_s'):.2f}x, "
            f"rollout tokens/s {ours.rollout_tokens_per_s / theirs.rollout_tokens_per_s:.2f}x, "
            f"learner tokens/s {ours.learner_tokens_per_s / theirs.learner_tokens_per_s:.2f}x, "
            f"CPU s per step {theirs.median('step_cpu_s') / ours.median('step_cpu_s'):.2f}x "
            "(each: how many times faster or cheaper ours is; < 1: slower)"
        )
    print_environment(load_before, libraries=("trl", "accelerate"), torch_threads=results[0].threads)


def profile_side(side: str, inputs: dict, args: argparse.Namespace) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    run_named(side, inputs, args)
    profiler.disable()
    stats = pstats.Stats(profiler).strip_dirs().sort_stats("cumulative")
    stats.print_stats(35)
    stats.sort_stats("tottime").print_stats(25)


def main() -> None:
    lengths = argparse.ArgumentParser(add_help=False)
    lengths.add_argument("--lengths", choices=("demo", "realistic"), default="demo")
    chosen, rest = lengths.parse_known_args()
    if chosen.lengths == "realistic":  # the learner at long-tailed lengths: bench/learner_lengths.py
        import learner_lengths

        sys.argv = [learner_lengths.__file__, *rest]
        learner_lengths.main()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", choices=("demo", "realistic"), default="demo",
                        help="demo: whole GRPO steps on the demo (this script); realistic: the learner "
                        "alone on fixed long-tailed rollouts against TRL's loss (bench/learner_lengths.py, "
                        "which takes its own options)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (each round)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="subprocess runs per side, alternating"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch.set_num_threads on both sides"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument(
        "--policy",
        help="initial policy checkpoint (default: the demo's warm start, built once and cached)",
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--config", type=Path, default=None,
                        help="experiment YAML whose data, model, warm start and settings both sides use "
                        "(default: the demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE override")
    parser.add_argument("--profile", choices=SIDES, help="cProfile one side in-process")
    parser.add_argument(
        "--gpu", action="store_true", help="engine tokens/s vs bandwidth limit (CUDA)"
    )
    parser.add_argument("--gpu-prompts", type=int, default=16)
    parser.add_argument("--gpu-rollouts", type=int, default=8)
    parser.add_argument("--gpu-max-new-tokens", type=int, default=256)
    parser.add_argument("--bandwidth-gbs", type=float, default=None)
    # internal: one side in a subprocess
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if not args.gpu:  # the TRL sides need the bench extra: say so now, not from a child later
        wanted = {args.child} if args.child else {*args.sides, args.profile or ""}  # a child runs one side
        trl_sides = sorted(wanted & {"trl", "trl-gc"})
        if trl_sides:
            require(__file__, "trl", "accelerate",
                    needed_for=f"the sides {', '.join(trl_sides)}; --sides ours ours-all runs without it")
    if args.child:
        child_main(args)
        return
    if args.gpu:
        run_gpu(args.gpu_prompts, args.gpu_rollouts, args.gpu_max_new_tokens, args.bandwidth_gbs)
        return
    import torch

    torch.set_num_threads(args.threads)
    inputs = prepare_inputs(args.cache_dir, args.policy, args.config, args.overrides)
    if args.profile:
        profile_side(args.profile, inputs, args)
        return
    inputs_path = args.cache_dir / "inputs-current.json"
    inputs_path.write_text(json.dumps(inputs))
    print(
        f"{NUM_PROMPTS} prompts x {GROUP_SIZE} rollouts per step; {args.rounds} rounds x {args.steps} timed "
        f"steps after {args.warmup} warm-up per side; {args.threads} threads; policy {inputs['policy']}",
        flush=True,
    )
    load_before = load_average()
    # rounds alternate the sides, so that a burst of load from other processes hits all of them
    results: dict[str, SideResult] = {}
    for _ in range(args.rounds):
        for side in args.sides:
            got = run_side(side, inputs_path, args)
            if side in results:
                results[side].steps.extend(got.steps)
                results[side].rss_peak_mb = max(results[side].rss_peak_mb, got.rss_peak_mb)
            else:
                results[side] = got
    results = list(results.values())
    print_results(results, load_before)


if __name__ == "__main__":
    main()
