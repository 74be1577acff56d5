"""``pilotcommit probe``: measure the initial policy's pass-rate spread on the training prompts and
predict, before any training, which allocation method buys the most informative groups.

    probe_pass_rates(cfg, prepared, policy)   K rollouts for each of N training prompts -> counts
    run_probe(...)                            counts + predictions + a one-line recommendation

The sampling uses the config's own training prompts (its ``train_mix``, if any), engine,
template, reward and training sampling parameters (temperature, top-p, max new tokens), so the
histogram is the one the first training step will meet. Prompts are drawn without replacement with the given seed. The maths is
:mod:`pilotcommit.allocation.predict`; this module only samples and tabulates.

Not here: Prefect, MLflow (flows/probe.py logs the result), the CLI's printing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pilotcommit.allocation.predict import (
    Estimator,
    MethodPrediction,
    PassRateCounts,
    predict_methods,
    recommend,
)
from pilotcommit.allocation.steps import recommend_by_steps, step_predictions
from pilotcommit.config import ExperimentConfig
from pilotcommit.runner.progress import GenerationProgress, check_stop, emit
from pilotcommit.types import RolloutKind, RolloutRequest

logger = logging.getLogger(__name__)
_PROBE_SEED_TAG = 31_337  # the probe's sampling stream, apart from training's (seed, step, round)


@dataclass
class ProbeResult:
    """What a probe measured and predicted (plain data: JSON-safe through :meth:`to_dict`)."""

    prompt_ids: list[str]
    successes: list[int]
    samples: int
    estimator: str
    predictions: list[MethodPrediction]
    recommendation: str
    spread: dict[str, float]
    wall_s: float = 0.0
    levels: list[str] = field(default_factory=list)
    pool_size: int = 0  # training prompts a run draws from (after train_mix); 0: unknown
    # the step-aware prediction (pilotcommit/allocation/steps.py): one dict per method of
    # StepPrediction's fields, and its recommendation; empty in probes made before it existed
    step_predictions: list[dict] = field(default_factory=list)
    step_recommendation: str = ""

    def prompt_table(self) -> pd.DataFrame:
        p = np.array(self.successes) / self.samples
        table = pd.DataFrame({"prompt_id": self.prompt_ids, "successes": self.successes,
                              "samples": self.samples, "pass_rate": p, "reward_variance": p * (1 - p)})
        if self.levels:
            table["level"] = self.levels
        return table

    def prediction_table(self) -> pd.DataFrame:
        rows = []
        for pred in self.predictions:
            rows.append({"method": pred.method, "kind": pred.kind,
                         "informative_groups_per_1k": pred.informative_groups_per_1k,
                         **pred.breakdown, "note": pred.note})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {
            "prompt_ids": self.prompt_ids, "successes": self.successes, "samples": self.samples,
            "estimator": self.estimator, "recommendation": self.recommendation, "spread": self.spread,
            "wall_s": self.wall_s, "levels": self.levels, "pool_size": self.pool_size,
            "step_predictions": self.step_predictions, "step_recommendation": self.step_recommendation,
            "predictions": [{"method": p.method, "kind": p.kind,
                             "informative_groups_per_1k": p.informative_groups_per_1k,
                             "breakdown": p.breakdown, "note": p.note} for p in self.predictions],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ProbeResult":
        data = dict(data)
        data["predictions"] = [MethodPrediction(**p) for p in data["predictions"]]
        return cls(**data)


def probe_pass_rates(cfg: ExperimentConfig, train_path, initial_policy: str, *, prompts: int,
                     samples: int, seed: int, keep_dir=None) -> tuple[list[str], list[int], list[str]]:
    """``samples`` rollouts for ``prompts`` training prompts: (prompt ids, successes, levels).
    With ``keep_dir``, each finished chunk of prompts is kept there and reused by a rerun."""
    from pilotcommit.data.prepared import read_prompt_table
    from pilotcommit.models.loading import load_policy
    from pilotcommit.rollout.protocol import SamplingParams, derive_seed
    from pilotcommit.run_parts import encode_prompts, make_engine, reward_function

    if prompts < 1 or samples < 1:
        raise ValueError(f"probe needs prompts >= 1 and samples >= 1 (got {prompts}, {samples})")
    from pilotcommit.data.mix import apply_train_mix

    table = apply_train_mix(read_prompt_table(train_path), cfg.train_mix, str(train_path))
    rng = np.random.default_rng(seed)
    take = min(prompts, len(table))
    chosen = table.iloc[np.sort(rng.choice(len(table), size=take, replace=False))]
    model, tokenizer = load_policy(initial_policy, cfg.model)
    opened: dict = {}

    def engine():  # built on first use: a probe whose chunks were all kept starts none
        if "engine" not in opened:
            opened["engine"] = make_engine(cfg, model, tokenizer)
        return opened["engine"]

    try:
        ids = chosen["prompt_id"].tolist()
        token_ids = dict(zip(ids, encode_prompts(chosen["problem"].tolist(), tokenizer, cfg)))
        answers = dict(zip(ids, chosen["answer"].tolist()))
        reward_fn = reward_function(cfg)
        params = SamplingParams(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_new_tokens)
        # chunks of at most rollout.max_rollouts_per_batch rollouts: progress after each, a stop
        # request honoured between them, each finished chunk kept in keep_dir (a rerun after a
        # stop or a crash samples only the rest); chunk 0's seed is the one-call probe's, so a
        # probe that fits in one chunk samples exactly as before chunking existed
        per_chunk = max(1, cfg.rollout.max_rollouts_per_batch // samples)
        counts: dict[str, int] = {}
        started = time.perf_counter()
        for index, first in enumerate(range(0, len(ids), per_chunk)):
            check_stop("probe")
            chunk_ids = ids[first:first + per_chunk]
            kept = _kept_chunk(keep_dir, cfg, initial_policy, chunk_ids, samples, seed, index)
            if kept is not None and kept.is_file():
                counts.update(json.loads(kept.read_text()))
                source = "kept"
            else:
                chunk = [RolloutRequest(p, samples, RolloutKind.UNIFORM) for p in chunk_ids]
                results = engine().generate(chunk, token_ids, params,
                                            seed=derive_seed(seed, index, _PROBE_SEED_TAG), policy_step=0)
                # the 0/1 correctness, never a shaped reward: the predictor models what filtering sees
                done = {res.request.prompt_id: int(sum(float(reward_fn(r.text, answers[res.request.prompt_id])) > 0.5
                                                       for r in res.rollouts)) for res in results}
                if kept is not None:
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    partial = kept.with_suffix(".partial")
                    partial.write_text(json.dumps(done))
                    partial.replace(kept)
                counts.update(done)
                source = "sampled"
            logger.info("probe: %d/%d prompts x %d samples (%.0f s; chunk %d %s)", len(counts), len(ids),
                        samples, time.perf_counter() - started, index, source)
            emit(GenerationProgress("probe", len(counts), len(ids)))
    finally:
        close = getattr(opened.get("engine"), "close", None)
        if close is not None:
            close()
    successes = [counts[p] for p in ids]
    levels = ([("" if v is None else str(v)) for v in chosen["level"]] if "level" in chosen.columns else [])
    return ids, successes, levels


def _kept_chunk(keep_dir, cfg: ExperimentConfig, initial_policy: str, chunk_ids: list[str], samples: int,
                seed: int, index: int) -> Path | None:
    """Where a finished probe chunk is kept: named by everything its counts depend on (the policy,
    the model, data and rollout settings, the prompts, samples, seed and chunk index)."""
    if keep_dir is None:
        return None
    settings = cfg.model_dump(mode="json", include={"model", "data", "rollout"})
    digest = hashlib.sha256(json.dumps([initial_policy, settings, chunk_ids, samples, seed, index],
                                       sort_keys=True).encode()).hexdigest()[:24]
    return Path(keep_dir) / f"chunk-{digest}.json"


def run_probe(cfg: ExperimentConfig, train_path, initial_policy: str, *, prompts: int, samples: int,
              seed: int = 0, estimator: Estimator = "empirical_bayes", keep_dir=None) -> ProbeResult:
    """Probe the training prompts and predict every configured method's informative-group rate."""
    started = time.perf_counter()
    ids, successes, levels = probe_pass_rates(cfg, train_path, initial_policy, prompts=prompts,
                                              samples=samples, seed=seed, keep_dir=keep_dir)
    from pilotcommit.data.mix import apply_train_mix
    from pilotcommit.data.prepared import read_prompt_table

    pool = len(apply_train_mix(read_prompt_table(train_path), cfg.train_mix, str(train_path)))
    return predict_from_counts(cfg, ids, successes, samples, estimator, levels=levels,
                               wall_s=time.perf_counter() - started, pool_size=pool)


def predict_from_counts(cfg: ExperimentConfig, ids: list[str], successes: list[int], samples: int,
                        estimator: Estimator = "empirical_bayes", *, levels: list[str] | None = None,
                        wall_s: float = 0.0, pool_size: int = 0) -> ProbeResult:
    """Predictions and the recommendation from probe counts; with ``pool_size``, Pilot-Commit's
    evictions are checked against the budget (``predict.pool_exhaustion``)."""
    counts = PassRateCounts(np.array(successes), np.full(len(successes), samples))
    predictions = predict_methods(cfg.methods, counts, estimator, pool_size=pool_size or None,
                                  budget_rollouts=cfg.budget.max_rollouts, budget_steps=cfg.budget.max_steps)
    spread = counts.spread()
    steps = step_predictions(predictions, {label: cfg.optimizer_steps(label) for label in cfg.methods})
    exhausted = [p.method for p in predictions if "pool_exhausted_after_rollouts" in p.breakdown]
    return ProbeResult(ids, list(successes), samples, estimator, predictions,
                       recommend(predictions, spread), spread, wall_s, list(levels or []), pool_size,
                       [{**asdict(s), "rollouts_per_optimizer_step": s.rollouts_per_optimizer_step} for s in steps],
                       recommend_by_steps(steps, exhausted))


def histogram_figure(result: ProbeResult, title: str):
    """Pass-rate histogram of the probe (K + 1 bars) beside predicted informative groups per 1k."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2)
    k = result.samples
    counts = np.bincount(np.array(result.successes), minlength=k + 1) / max(len(result.successes), 1)
    left.bar(np.arange(k + 1) / k, counts, width=0.8 / k, color="#4477aa")
    left.set_xlabel(f"pass rate ({k} samples per prompt)")
    left.set_ylabel("fraction of prompts")
    s = result.spread
    left.set_title(f"at 0: {s['at_0']:.0%}   between: {s['between']:.0%}   at 1: {s['at_1']:.0%}")
    labels = [p.method for p in result.predictions]
    right.barh(labels, [p.informative_groups_per_1k for p in result.predictions], color="#cc6677")
    right.set_xlabel("predicted informative groups per 1,000 rollouts")
    right.invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    return fig
