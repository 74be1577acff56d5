"""The parts a run is assembled from, built from its config: the reward function, the prompts
encoded as the policy sees them (template applied for pretrained models), the evaluation sets,
the rollout engine, and scoring (once per rank under torchrun). The training loop
(pilotcommit/loop.py), the stage functions (pilotcommit/pipeline.py) and the probe
(pilotcommit/probe.py) share them; this module imports none of those.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from pilotcommit.config import ExperimentConfig, MathDataConfig, PretrainedModelConfig
from pilotcommit.data.prepared import read_prompt_table
from pilotcommit.evaluation import EvalSet
from pilotcommit.rollout.protocol import RolloutEngine
from pilotcommit.types import RequestResult


def reward_function(cfg: ExperimentConfig) -> Callable[[str, str], float]:
    from pilotcommit.rewards import REWARDS

    name = cfg.data.reward
    if name not in REWARDS:
        raise ValueError(f"data.reward: unknown reward {name!r}; known: {sorted(REWARDS)}")
    return REWARDS[name]


def encode_prompts(problems: list[str], tokenizer, cfg: ExperimentConfig) -> list[list[int]]:
    """Token ids of each problem as the policy sees it (template applied for hub models)."""
    if isinstance(cfg.model, PretrainedModelConfig) and cfg.model.prompt_template != "raw":
        from pilotcommit.data.templates import format_prompt

        texts = [format_prompt(p, tokenizer, cfg.model.prompt_template) for p in problems]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return tokenizer(problems)["input_ids"]


def build_eval_sets(cfg: ExperimentConfig, eval_paths: Mapping[str, Path], tokenizer) -> list[EvalSet]:
    per_benchmark = (
        {spec.name: spec.eval_samples for spec in cfg.data.benchmarks}
        if isinstance(cfg.data, MathDataConfig)
        else {}
    )
    sets = []
    for name, path in eval_paths.items():
        frame = read_prompt_table(path)
        if cfg.eval.max_prompts is not None and len(frame) > cfg.eval.max_prompts:
            frame = frame.sample(n=cfg.eval.max_prompts, random_state=0).sort_index()
        ids = frame["prompt_id"].tolist()
        token_ids = encode_prompts(frame["problem"].tolist(), tokenizer, cfg)
        levels = frame["level"] if "level" in frame.columns else pd.Series([""] * len(frame))
        sets.append(
            EvalSet(
                name=name,
                prompt_ids=ids,
                prompt_token_ids=dict(zip(ids, token_ids)),
                answers=dict(zip(ids, frame["answer"].tolist())),
                samples_per_prompt=per_benchmark.get(name, cfg.eval.samples_per_prompt),
                levels={p: ("" if lv is None else str(lv)) for p, lv in zip(ids, levels)},
            )
        )
    return sets


def make_engine(cfg: ExperimentConfig, model, tokenizer) -> RolloutEngine:
    if cfg.rollout.engine == "vllm":
        from pilotcommit.rollout.vllm_engine import VLLMEngine  # optional extra

        return VLLMEngine.from_config(cfg, model, tokenizer)
    from pilotcommit.rollout.transformers_engine import TransformersEngine

    return TransformersEngine(
        model, tokenizer, max_rollouts_per_batch=cfg.rollout.max_rollouts_per_batch
    )


def score_results(
    results: list[RequestResult], answers: Mapping[str, str], reward_fn, cfg: ExperimentConfig
) -> None:
    """Fill ``rollout.correct`` (0/1, what the policies filter on) and ``rollout.reward``
    (what the learner trains on: with the overlong penalty when configured) in place."""
    from pilotcommit.rewards import score_rollouts

    score_rollouts(results, answers, reward_fn, overlong=cfg.rollout.overlong_penalty)


def score_once(
    results: list[RequestResult], answers: Mapping[str, str], reward_fn, cfg: ExperimentConfig,
    sharding=None,
) -> int:
    """Score ``results`` in place (:func:`score_results`); return the rewards that timed out.

    Under ``torchrun`` every rank holds the same results, but a time-limited reward can differ
    between processes (one rank's verifier runs out of time, another's does not); the
    allocation plans built from differing rewards would then differ and the ranks' collectives
    hang or train mismatched batches. So each rank scores every ``world_size``-th request and
    the rewards are all-gathered: every rank ends with the SAME rewards by construction, and
    the timeouts are summed over ranks.
    """
    from pilotcommit.rewards import reward_timeouts

    before = reward_timeouts()
    if sharding is None:
        score_results(results, answers, reward_fn, cfg)
        return reward_timeouts() - before
    import torch.distributed as dist

    world = dist.get_world_size()
    mine = results[sharding.rank :: world]
    score_results(mine, answers, reward_fn, cfg)
    # both the 0/1 correctness (what the policies filter on) and the shaped reward (what the
    # learner trains on) travel: either one differing between ranks would split the ranks
    share = ([[(r.correct, r.reward) for r in result.rollouts] for result in mine], reward_timeouts() - before)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, share)
    for rank, (scores, _) in enumerate(gathered):
        for result, values in zip(results[rank::world], scores, strict=True):
            for rollout, (correct, reward) in zip(result.rollouts, values, strict=True):
                rollout.correct, rollout.reward = correct, reward
    return sum(timeouts for _, timeouts in gathered)
