"""Held-out evaluation and the headline metric (ALGORITHMS.md, "Evaluation and the headline metric").

- :func:`evaluate_policy` samples ``k`` completions per held-out prompt (mean@k)
  and one greedy completion, scores them, and returns ``eval/*`` metrics plus a
  per-prompt table (pass rate, reward variance) for histograms.
- :func:`target_accuracy` and :func:`rollouts_to_target` turn evaluation
  histories into the comparison's numbers.

The evaluation seed is the same at every evaluation of a run (common random
numbers), so two checkpoints are compared on the same sampling noise.

Not here: the training loop, tracking, or how benchmarks are loaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pilotcommit.config import EvalConfig, TargetConfig
from pilotcommit.rollout.protocol import RolloutEngine, SamplingParams, derive_seed
from pilotcommit.types import EvalRecord, RolloutKind, RolloutRequest

AVERAGE_ACCURACY = "eval/average_accuracy"
logger = logging.getLogger(__name__)
_CHUNK_SEED_TAG = 4_242


@dataclass
class EvalSet:
    """One benchmark ready for sampling: token ids and reference answers per prompt."""

    name: str
    prompt_ids: list[str]
    prompt_token_ids: dict[str, list[int]]
    answers: dict[str, str]
    samples_per_prompt: int
    levels: dict[str, str] = field(default_factory=dict)




@dataclass
class EvalOutcome:
    metrics: dict[str, float]
    per_prompt: pd.DataFrame  # benchmark, prompt_id, level, pass_rate, reward_variance, greedy_correct
    generated_tokens: int


def _score(results, answers: Mapping[str, str], reward_fn: Callable[[str, str], float]) -> dict[str, list[float]]:
    rewards: dict[str, list[float]] = {}
    for result in results:
        pid = result.request.prompt_id
        rewards[pid] = [reward_fn(r.text, answers[pid]) for r in result.rollouts]
    return rewards


def _generate(engine: RolloutEngine, requests: list[RolloutRequest], token_ids, params: SamplingParams, seed: int,
              chunk_prompts: int | None, what: str) -> tuple[list, int]:
    """``engine.generate`` over ``requests``, in chunks of ``chunk_prompts`` prompts when set
    (progress logged after each, a stop request honoured before each; the first chunk keeps
    ``seed``, so a set that fits in one chunk samples as an unchunked one); (results, tokens)."""
    from pilotcommit.runner.progress import GenerationProgress, check_stop, emit  # (it imports this module)

    size = chunk_prompts or len(requests) or 1
    results, tokens, started = [], 0, time.perf_counter()
    for index, first in enumerate(range(0, len(requests), size)):
        check_stop(f"evaluation ({what})")
        results += engine.generate(requests[first:first + size], token_ids, params,
                                   seed=seed if index == 0 else derive_seed(seed, index, _CHUNK_SEED_TAG))
        tokens += engine.last_stats.num_generated_tokens
        if chunk_prompts:
            logger.info("evaluation (%s): %d/%d prompts (%.0f s)", what, len(results), len(requests),
                        time.perf_counter() - started)
            emit(GenerationProgress(f"evaluate {what}", len(results), len(requests)))
    return results, tokens


def evaluate_policy(
    engine: RolloutEngine,
    eval_sets: Sequence[EvalSet],
    reward_fn: Callable[[str, str], float],
    config: EvalConfig,
    *,
    max_new_tokens: int,
) -> EvalOutcome:
    metrics: dict[str, float] = {}
    frames = []
    tokens = 0
    sampled = SamplingParams(config.temperature, config.top_p, max_new_tokens)
    greedy = SamplingParams(0.0, 1.0, max_new_tokens)
    for index, eval_set in enumerate(eval_sets):
        requests = [
            RolloutRequest(pid, eval_set.samples_per_prompt, RolloutKind.UNIFORM)
            for pid in eval_set.prompt_ids
        ]
        results, used = _generate(engine, requests, eval_set.prompt_token_ids, sampled,
                                  derive_seed(config.seed, index), config.chunk_prompts, eval_set.name)
        tokens += used
        rewards = _score(results, eval_set.answers, reward_fn)
        pass_rate_N = np.array([np.mean(rewards[p]) for p in eval_set.prompt_ids])
        frame = pd.DataFrame(
            {
                "benchmark": eval_set.name,
                "prompt_id": eval_set.prompt_ids,
                "level": [eval_set.levels.get(p, "") for p in eval_set.prompt_ids],
                "pass_rate": pass_rate_N,
                "reward_variance": pass_rate_N * (1.0 - pass_rate_N),
            }
        )
        metrics[f"eval/{eval_set.name}/accuracy"] = float(pass_rate_N.mean())
        if config.greedy:
            greedy_requests = [RolloutRequest(p, 1, RolloutKind.UNIFORM) for p in eval_set.prompt_ids]
            greedy_results, used = _generate(engine, greedy_requests, eval_set.prompt_token_ids, greedy,
                                             derive_seed(config.seed, index, 1), config.chunk_prompts,
                                             f"{eval_set.name}, greedy")
            tokens += used
            greedy_rewards = _score(greedy_results, eval_set.answers, reward_fn)
            correct_N = np.array([greedy_rewards[p][0] for p in eval_set.prompt_ids])
            frame["greedy_correct"] = correct_N
            metrics[f"eval/{eval_set.name}/greedy_accuracy"] = float(correct_N.mean())
        frames.append(frame)
    metrics[AVERAGE_ACCURACY] = float(
        np.mean([metrics[f"eval/{s.name}/accuracy"] for s in eval_sets])
    )
    if config.greedy:
        metrics["eval/average_greedy_accuracy"] = float(
            np.mean([metrics[f"eval/{s.name}/greedy_accuracy"] for s in eval_sets])
        )
    return EvalOutcome(metrics, pd.concat(frames, ignore_index=True), tokens)


# --------------------------------------------------------------------------- headline metric


def mean_curve(histories: Sequence[Sequence[EvalRecord]], metric: str = AVERAGE_ACCURACY) -> list[float]:
    """Seed-averaged metric at each evaluation index (histories truncated to the shortest)."""
    if not histories:
        return []
    length = min(len(h) for h in histories)
    return [float(np.mean([h[i].metrics[metric] for h in histories])) for i in range(length)]


def target_accuracy(histories: Mapping[str, Sequence[Sequence[EvalRecord]]], target: TargetConfig) -> float:
    """The accuracy every method must reach.

    Default: the best seed-averaged value of ``target.metric`` that the reference method
    (GRPO) reaches over its evaluations; with ``fraction_of_reference < 1`` that fraction of
    its best gain over the initial value; or a fixed ``target.accuracy``.
    """
    if target.accuracy is not None:
        return float(target.accuracy)
    if target.reference_method not in histories:
        raise ValueError(
            f"target: reference method {target.reference_method!r} has no runs "
            f"(have {sorted(histories)})"
        )
    curve = mean_curve(histories[target.reference_method], target.metric)
    if not curve:
        raise ValueError(f"target: the {target.reference_method!r} runs have no evaluations")
    best, initial = max(curve), curve[0]
    return float(initial + target.fraction_of_reference * (best - initial))


def rollouts_to_target(
    history: Sequence[EvalRecord], target: float, metric: str = AVERAGE_ACCURACY
) -> int | None:
    """Cumulative sampled rollouts at the first evaluation reaching ``target`` (None: never)."""
    for record in history:
        if record.metrics.get(metric, float("-inf")) >= target - 1e-12:
            return record.cumulative_rollouts
    return None
