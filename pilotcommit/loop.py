"""One training run of one method and seed: allocate -> generate -> reward -> learn -> evaluate.

    policy.ready_batch()   a batch of groups completed earlier (SPEED-RL's surplus), else None
    policy.plan()          which prompts get how many rollouts (pilotcommit.allocation)
    engine.generate(...)   sample them with the current weights (pilotcommit.rollout)
    reward_fn(text, ans)   0/1 per rollout, plus shaping (pilotcommit.rewards)
    policy.observe(...)    a full TrainBatch when one is ready, else plan another round
    learner.update(batch)  one policy-gradient step (pilotcommit.learner)

The run evaluates before training and every ``eval.every_steps`` steps, stops
at the rollout or step budget (the step that crosses the budget completes),
checkpoints every ``checkpoint.every_steps`` steps and at the end, and resumes
from its last checkpoint when started again with the same config. All
randomness is derived from ``(seed, step, round)``, so a resumed run makes the
same decisions and produces the same weights as an uninterrupted one.

Metrics go to a :class:`~pilotcommit.tracking.Tracker` as plain dicts with the
names of DESIGN.md. Step numbering: step ``k`` is the state after ``k``
updates; evaluation at step 0 is the initial policy.

Not here: Prefect, MLflow, data preparation, the warm start. This module sits
below ``pilotcommit.pipeline`` (the stage functions call it) and never imports it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pilotcommit.allocation import make_policy
from pilotcommit.checkpoint import (
    checkpoint_root,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from pilotcommit.config import ExperimentConfig, config_hash
from pilotcommit.data.mix import apply_train_mix
from pilotcommit.data.prepared import PreparedData, read_prompt_table
from pilotcommit.evaluation import evaluate_policy
from pilotcommit.fingerprint import as_params, machine_fingerprint
from pilotcommit.learner.update import Learner, NonFiniteLossError
from pilotcommit.memory import memory_metrics
from pilotcommit.rollout.protocol import RolloutEngine, SamplingParams, derive_seed
from pilotcommit.run_parts import (
    build_eval_sets,
    encode_prompts,
    make_engine,
    reward_function,
    score_once,
)
from pilotcommit.tracking.protocol import MemoryTracker, Tracker
from pilotcommit.types import EvalRecord, LoopState, RequestResult

RESULT_FILE = "result.json"
FINAL_POLICY_DIR = "final_policy"
# What a finished run leaves in its directory (tracking.json is the Prefect stage's record of
# the MLflow run, written next to result.json); a restart from scratch retires all of it.
RUN_OUTPUTS = (RESULT_FILE, "tracking.json", FINAL_POLICY_DIR, "checkpoints")
_LEARN_SEED_TAG = 7_777  # separates the learner's seed stream from the sampling rounds'


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class RunResult:
    """What a finished run leaves behind (also written to ``run_dir/result.json``)."""

    method: str
    seed: int
    run_dir: Path
    final_checkpoint: Path
    eval_history: list[EvalRecord]
    final_metrics: dict[str, float]
    steps: int
    cumulative_rollouts: int
    wall_s: float
    config_hash: str = ""
    step_timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["run_dir"] = str(self.run_dir)
        data["final_checkpoint"] = str(self.final_checkpoint)
        data["eval_history"] = [r.to_dict() for r in self.eval_history]
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "RunResult":
        data = dict(data)
        data["run_dir"] = Path(data["run_dir"])
        data["final_checkpoint"] = Path(data["final_checkpoint"])
        data["eval_history"] = [EvalRecord.from_dict(r) for r in data["eval_history"]]
        return cls(**data)


# --------------------------------------------------------------------------- building blocks














def budget_reached(cfg: ExperimentConfig, steps: int, cumulative_rollouts: int) -> bool:
    budget = cfg.budget
    if budget.max_steps is not None and steps >= budget.max_steps:
        return True
    return budget.max_rollouts is not None and cumulative_rollouts >= budget.max_rollouts


# --------------------------------------------------------------------------- the run




def train_run(
    cfg: ExperimentConfig,
    method_label: str,
    seed: int,
    *,
    prepared: PreparedData,
    initial_policy: str,
    run_dir: Path,
    tracker: Tracker | None = None,
    resume: bool | None = None,
    progress: Callable[[int, dict], None] | None = None,
) -> RunResult:
    """Train ``cfg.methods[method_label]`` from ``initial_policy`` with ``seed``; see module docstring.

    The rollout engine is closed when the run ends, also on an error: a process that runs
    several trainings (``compare``, the tests) gets the vLLM engine's memory back each time."""
    engines: list[RolloutEngine] = []
    try:
        return _train_run(
            cfg, method_label, seed, prepared=prepared, initial_policy=initial_policy,
            run_dir=run_dir, tracker=tracker, resume=resume, progress=progress, engines=engines,
        )
    finally:
        for engine in engines:
            close = getattr(engine, "close", None)  # the transformers engine holds nothing to free
            if close is not None:
                close()


def _train_run(
    cfg: ExperimentConfig,
    method_label: str,
    seed: int,
    *,
    prepared: "PreparedData",
    initial_policy: str,
    run_dir: Path,
    tracker: Tracker | None,
    resume: bool | None,
    progress: Callable[[int, dict], None] | None,
    engines: list[RolloutEngine],
) -> RunResult:
    from pilotcommit.models.loading import load_policy
    if method_label not in cfg.methods:
        raise ValueError(f"method {method_label!r} is not in the config's methods {sorted(cfg.methods)}")
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sharding = _Sharding.from_environment()  # several processes under torchrun, else None
    if sharding is not None and not sharding.is_main:
        tracker = MemoryTracker()  # one process logs: rank 0
    tracker = tracker or MemoryTracker()
    resume = cfg.checkpoint.resume if resume is None else resume
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)

    train_df = apply_train_mix(read_prompt_table(prepared.train_path), cfg.train_mix, str(prepared.train_path))
    if sharding is None:
        model, tokenizer = load_policy(initial_policy, cfg.model)
        learner = Learner(model, cfg.learner_for(method_label), pad_id=tokenizer.pad_token_id,
                          temperature=cfg.rollout.temperature,
                          minibatch_sequences=cfg.minibatch_sequences(method_label))
    else:  # rank 0 reads the weights, the shards are broadcast (FSDP2); every rank builds the same batches
        model, tokenizer, learner = sharding.load_and_shard(initial_policy, cfg, method_label)
    train_ids = train_df["prompt_id"].tolist()
    prompt_token_ids = dict(zip(train_ids, encode_prompts(train_df["problem"].tolist(), tokenizer, cfg)))
    answers = dict(zip(train_ids, train_df["answer"].tolist()))
    eval_sets = build_eval_sets(cfg, prepared.eval_paths, tokenizer)
    reward_fn = reward_function(cfg)

    policy = make_policy(cfg.methods[method_label], train_ids, seed=seed)
    engine = make_engine(cfg, model, tokenizer)
    engines.append(engine)  # closed by train_run
    params = SamplingParams(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_new_tokens)
    state = LoopState()
    run_hash = config_hash(cfg)

    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        # meta.json is compared before anything else of the checkpoint is read
        saved = load_checkpoint(checkpoint, expect={"config_hash": run_hash, "method": method_label, "seed": seed})
        _load_weights(model, saved["model"], sharding)
        learner.load_state_dict(saved["learner"])
        policy.load_state_dict(saved["policy"])
        state = saved["loop"]
        torch.set_rng_state(saved["torch_rng"])
        engine.update_weights(model)
    else:
        if sharding is None or sharding.is_main:
            retire_outputs(run_dir)  # from scratch: nothing of an earlier run may look finished
        # the hardware and software the numbers come from (docs/embedded_task.md: they are
        # hardware-specific), and the prompts dropped as too long; logged once, at the run's start
        tracker.log_params({**_flat_params(cfg, method_label, seed), **as_params(machine_fingerprint()),
                            **prepared.dropped_prompts()})
        _evaluate(state, engine, eval_sets, reward_fn, cfg, tracker, policy.cumulative_sampled)

    def save(final: bool = False) -> Path:
        weights = _full_weights(model, sharding)  # a collective under torchrun: every rank calls
        learner_state = learner.state_dict()
        if sharding is not None and not sharding.is_main:
            return checkpoint_root(run_dir) / f"step-{state.steps:06d}"
        tracker.checkpoint_barrier()  # metrics up to this step reach the store before the checkpoint
        return save_checkpoint(
            run_dir,
            state.steps,
            {
                "config_hash": run_hash,
                "method": method_label,
                "seed": seed,
                "model": weights,
                "learner": learner_state,
                "policy": policy.state_dict(),
                "loop": state,
                "torch_rng": torch.get_rng_state(),
            },
            {"method": method_label, "seed": seed, "config_hash": run_hash, "final": final,
             "cumulative_rollouts": policy.cumulative_sampled},
        )

    while not budget_reached(cfg, state.steps, policy.cumulative_sampled):
        step = state.steps
        t0 = time.perf_counter()
        generated = 0
        reward_timeouts = 0
        memory: dict[str, float] = {}
        round_index = 0
        batch = policy.ready_batch()  # groups completed in earlier steps (SPEED-RL), else None
        while batch is None:
            requests = policy.plan()
            results = engine.generate(
                requests, prompt_token_ids, params,
                seed=derive_seed(seed, step, round_index), policy_step=step,
            )
            generated += engine.last_stats.num_generated_tokens
            memory = {**memory, **engine.last_stats.memory}  # the last round's phases
            if not finite_sampling(results):
                # a diverged policy samples garbage that scores 0 everywhere: its groups carry no
                # gradient, so the loss alone would never turn NaN and the run would go on silently
                raise _diverged(
                    "the policy's sampled log-probabilities are NaN or infinite", step, run_dir
                )
            # under torchrun: each rank scores a share, all get every reward (identical plans)
            reward_timeouts += score_once(results, answers, reward_fn, cfg, sharding)
            for result in results:
                correct = [r.correct for r in result.rollouts]
                state.train_pass_rates[result.request.prompt_id] = (float(np.mean(correct)), step)
            batch = policy.observe(results)
            round_index += 1
        t1 = time.perf_counter()
        memory.update(memory_metrics("before_learn"))
        try:
            learn_metrics = learner.update(batch, seed=derive_seed(seed, step, _LEARN_SEED_TAG))
        except NonFiniteLossError as err:
            raise _diverged(f"non-finite update (learner: {err})", step, run_dir) from err
        if not all(bool(torch.isfinite(_local(p)).all()) for p in model.parameters()):
            # checked before the next checkpoint, so that a checkpoint never holds NaN weights
            raise _diverged("the update left NaN or infinite weights", step, run_dir)
        memory.update(memory_metrics("after_learn"))  # reserved - allocated: what the cache holds
        engine.update_weights(model)
        t2 = time.perf_counter()
        state.steps += 1
        state.generated_tokens += generated
        state.timings["generate_s"].append(t1 - t0)
        state.timings["learn_s"].append(t2 - t1)
        metrics = {
            **batch.metrics,
            **learn_metrics,
            "tokens/generated_cumulative": state.generated_tokens,
            "reward/timeouts": float(reward_timeouts),  # scored 0 because the verifier ran out of time
            "time/generate_s": t1 - t0,
            "time/learn_s": t2 - t1,
            "throughput/generated_tokens_per_s": generated / max(t1 - t0, 1e-9),
            **memory,  # memory/*_gib on a GPU; nothing on CPU
        }
        tracker.log_metrics(metrics, state.steps)
        done = budget_reached(cfg, state.steps, policy.cumulative_sampled)
        if done or state.steps % cfg.eval.every_steps == 0:
            _evaluate(state, engine, eval_sets, reward_fn, cfg, tracker, policy.cumulative_sampled,
                      final=done)
        if not done and state.steps % cfg.checkpoint.every_steps == 0:
            save()
        if progress is not None:
            progress(state.steps, metrics)

    save(final=True)
    final_dir = run_dir / FINAL_POLICY_DIR
    final_weights = _full_weights(model, sharding)
    if sharding is None or sharding.is_main:
        model.save_pretrained(final_dir, state_dict=final_weights)
        tokenizer.save_pretrained(final_dir)
    final_metrics = dict(state.eval_history[-1].metrics) if state.eval_history else {}
    final_metrics["rollouts/cumulative"] = float(policy.cumulative_sampled)
    final_metrics["tokens/generated_cumulative"] = float(state.generated_tokens)
    result = RunResult(
        method=method_label,
        seed=seed,
        run_dir=run_dir,
        final_checkpoint=final_dir,
        eval_history=list(state.eval_history),
        final_metrics=final_metrics,
        steps=state.steps,
        cumulative_rollouts=policy.cumulative_sampled,
        wall_s=time.perf_counter() - started,
        config_hash=run_hash,
        step_timings={
            f"median_{k}": float(np.median(v)) if v else math.nan for k, v in state.timings.items()
        },
    )
    if sharding is None or sharding.is_main:
        (run_dir / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=2))
    return result


def retire_outputs(run_dir: Path) -> bool:
    """Remove an earlier run's :data:`RUN_OUTPUTS` from ``run_dir`` in one atomic step.

    The directory is renamed away and recreated, and everything that is not an output (logs,
    spool files, markers of the caller) is moved back: a kill at any moment leaves either the
    old run whole or none of it, never a ``result.json`` without the checkpoints it came from
    or checkpoints of the old run under a new attempt (which a retry would resume). True when
    there was something to retire.
    """
    run_dir = Path(run_dir)
    if not any((run_dir / name).exists() for name in RUN_OUTPUTS):
        return False
    for leftover in run_dir.parent.glob(f".{run_dir.name}.retired-*"):  # of a retire killed midway
        shutil.rmtree(leftover, ignore_errors=True)
    retired = run_dir.parent / f".{run_dir.name}.retired-{os.getpid()}-{time.time_ns()}"
    os.rename(run_dir, retired)
    run_dir.mkdir()
    for entry in retired.iterdir():
        if entry.name not in RUN_OUTPUTS:
            os.rename(entry, run_dir / entry.name)
    shutil.rmtree(retired, ignore_errors=True)
    return True


# --------------------------------------------------------------------------- several processes


@dataclass
class _Sharding:
    """This process's place in a ``torchrun`` job (see pilotcommit/learner/distributed.py).

    Every rank runs the same loop with the same seeds, so all ranks build identical batches;
    the learner shards the model and splits each batch's rows. Rank 0 alone writes
    checkpoints, the final policy, the result file and tracking data; full weights are
    gathered for it by collectives that every rank joins.
    """

    rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> "_Sharding | None":
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        from pilotcommit.learner.distributed import init_distributed

        context = init_distributed()
        return cls(context.rank, context.device)

    @staticmethod
    def load_and_shard(initial_policy: str, cfg: ExperimentConfig, method_label: str):
        """``(model, tokenizer, learner)``: read on rank 0, sharded and broadcast (FSDP2)."""
        from pilotcommit.learner.distributed import load_sharded_policy

        return load_sharded_policy(initial_policy, cfg.model, cfg.learner_for(method_label),
                                   temperature=cfg.rollout.temperature,
                                   minibatch_sequences=cfg.minibatch_sequences(method_label))


def _full_weights(model: torch.nn.Module, sharding: _Sharding | None) -> dict:
    if sharding is None:
        return model.state_dict()
    from pilotcommit.learner.distributed import full_model_state_dict

    return full_model_state_dict(model)


def _load_weights(model: torch.nn.Module, weights: dict, sharding: _Sharding | None) -> None:
    if sharding is None:
        model.load_state_dict(weights)
        return
    from pilotcommit.learner.distributed import load_full_model_state_dict

    load_full_model_state_dict(model, weights)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor parameter (the tensor itself otherwise)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def finite_sampling(results: list[RequestResult]) -> bool:
    """Whether every sampled log-probability is finite (one NaN or infinite term makes a sum NaN
    or infinite, and summing each rollout's list is far cheaper than a Python check per token)."""
    return all(math.isfinite(sum(r.sampler_logprobs)) for res in results for r in res.rollouts)


def _diverged(reason: str, step: int, run_dir: Path) -> TrainingDivergedError:
    last = latest_checkpoint(run_dir)
    return TrainingDivergedError(
        f"training diverged at step {step + 1}: {reason}; the run stopped. Last good checkpoint: "
        f"{last if last is not None else 'none (no checkpoint was written yet)'}"
    )


def _evaluate(
    state: LoopState, engine, eval_sets, reward_fn, cfg, tracker: Tracker, cumulative: int,
    final: bool = False,
) -> None:
    """Evaluate, record, and log per-prompt tables every k-th evaluation and at the end."""
    outcome = evaluate_policy(engine, eval_sets, reward_fn, cfg.eval, max_new_tokens=cfg.rollout.max_new_tokens)
    record = EvalRecord(state.steps, int(cumulative), outcome.metrics)
    state.eval_history.append(record)
    tracker.log_evaluation(outcome.metrics, state.steps, int(cumulative))
    if final or state.evaluations % cfg.eval.prompt_stats_every_evals == 0:
        tracker.log_prompt_stats(outcome.per_prompt, state.steps, "eval")
        if state.train_pass_rates:
            ids = list(state.train_pass_rates)
            p = np.array([state.train_pass_rates[i][0] for i in ids])
            frame = pd.DataFrame(
                {"prompt_id": ids, "pass_rate": p, "reward_variance": p * (1 - p),
                 "last_sampled_step": [state.train_pass_rates[i][1] for i in ids]}
            )
            tracker.log_prompt_stats(frame, state.steps, "train")
    state.evaluations += 1


def _flat_params(cfg: ExperimentConfig, method_label: str, seed: int) -> dict[str, object]:
    flat: dict[str, object] = {"method": method_label, "seed": seed, "config_hash": config_hash(cfg)}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), child)
        else:
            flat[prefix] = value

    dumped = cfg.model_dump(mode="json")
    dumped["method"] = dumped.pop("methods")[method_label]
    dumped["method"].pop("learner", None)  # its mini-batch rule is in learner.* below
    dumped["learner"] = cfg.learner_for(method_label).model_dump(mode="json")
    walk("", dumped)
    # the mini-batch rule of this run and its optimizer steps per (full) training step, always
    # (the config dump leaves the default rule out to keep old config hashes)
    learner = cfg.learner_for(method_label)
    flat["learner.minibatch_rule"] = learner.minibatch_rule
    flat["learner.minibatch_prompts"] = learner.minibatch_prompts
    flat["learner.optimizer_steps_per_training_step"] = cfg.optimizer_steps(method_label)
    return flat
