"""The stages of an experiment as library functions: the flows call these, one per task.

Each stage takes the resolved config and paths and returns paths or plain
records, never models, so that Prefect can cache and persist them:

    prepare_data(cfg, dir)                   -> PreparedData (parquet files + manifest)
    build_initial_policy(cfg, prepared, dir) -> checkpoint directory (or hub name)
    train_run(cfg, method, seed, ...)        -> RunResult (see pilotcommit.loop)
    evaluate_checkpoint(cfg, ckpt, prepared) -> eval metrics

Nothing here knows about Prefect or MLflow. The layering runs one way: this
module calls the run loop (``pilotcommit.loop``), never the reverse; what both
need (``PreparedData``, ``read_prompt_table``) lives below them in
``pilotcommit.data.prepared``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pilotcommit.config import (
    ArithDataConfig,
    ExperimentConfig,
    MathDataConfig,
    PretrainedModelConfig,
    TinyModelConfig,
    config_hash,
)
from pilotcommit.data.prepared import PROMPTS_TOO_LONG, PreparedData, read_prompt_table
from pilotcommit.evaluation import evaluate_policy
from pilotcommit.loop import RunResult, train_run
from pilotcommit.run_parts import build_eval_sets, reward_function

REPO_ROOT = Path(__file__).resolve().parent.parent
_log = logging.getLogger(__name__)

__all__ = [
    "PreparedData",
    "RunResult",
    "build_initial_policy",
    "evaluate_checkpoint",
    "prepare_data",
    "read_prompt_table",
    "train_run",
]


def prepare_data(cfg: ExperimentConfig, out_dir: Path) -> PreparedData:
    """Write the training set and the evaluation sets of ``cfg.data`` under ``out_dir``."""
    out_dir = Path(out_dir)
    data = cfg.data
    if isinstance(data, ArithDataConfig):
        from pilotcommit.data.synthetic import write_prepared_dataset

        paths = write_prepared_dataset(out_dir, data.to_spec())
        prepared = PreparedData(paths.train, {"arith": paths.test}, paths.manifest)
    else:
        prepared = _prepare_math_data(cfg, out_dir, prompt_length_filter(cfg))
    for path in [prepared.train_path, *prepared.eval_paths.values()]:
        read_prompt_table(path)  # fail here, naming the file, not in the middle of training
    return prepared


@dataclass(frozen=True)
class PromptLengthFilter:
    """Drops prompts longer than ``max_tokens`` tokens, counted as the policy will see them
    (template applied, the policy's tokenizer): ``model.max_prompt_length``."""

    max_tokens: int
    tokenizer_source: str
    fingerprint: str  # what the prepared data then depend on (for the data stage's cache key)
    model: object  # the PretrainedModelConfig (tokenizer revision, template)

    def too_long(self, problems: list[str], cfg: ExperimentConfig) -> list[bool]:
        from pilotcommit.models.loading import load_tokenizer
        from pilotcommit.run_parts import encode_prompts

        tokenizer = load_tokenizer(self.tokenizer_source, self.model)
        return [len(ids) > self.max_tokens for ids in encode_prompts(problems, tokenizer, cfg)]


def prompt_length_filter(cfg: ExperimentConfig) -> PromptLengthFilter | None:
    """The prompt-length filter of ``cfg`` (math data with a pretrained model), else None."""
    model = cfg.model
    if not isinstance(cfg.data, MathDataConfig) or not isinstance(model, PretrainedModelConfig):
        return None
    parts = [model.name_or_path, model.revision, model.prompt_template, model.max_prompt_length]
    if model.gguf is not None:  # the tokenizer comes from that file (hub models keep their keys)
        parts.append(model.gguf.sha256)
    return PromptLengthFilter(model.max_prompt_length, model.load_path, json.dumps(parts), model)


def data_fingerprint(cfg: ExperimentConfig) -> list[str]:
    """What the prepared data depend on (the parts of the data stage's cache key): the data
    config, and the prompt-length filter's tokenizer, template and limit where one applies."""
    length_filter = prompt_length_filter(cfg)
    parts = [config_hash(cfg.data)]
    return parts if length_filter is None else [*parts, length_filter.fingerprint]


def _prepare_math_data(
    cfg: ExperimentConfig, out_dir: Path, length_filter: PromptLengthFilter | None
) -> PreparedData:
    from pilotcommit.data.loaders import load_prompt_table

    data = cfg.data
    base_dir = Path(data.base_dir) if data.base_dir else REPO_ROOT
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"train": {}, "benchmarks": {}}

    def write(spec, path: Path, section: dict) -> Path:
        loaded = load_prompt_table(spec, base_dir=base_dir)
        frame, too_long = loaded.frame, 0
        if length_filter is not None:
            drop = length_filter.too_long(frame["problem"].tolist(), cfg)
            too_long = sum(drop)
            frame = frame[[not d for d in drop]]
            if too_long:
                _log.warning("%s: dropped %d of %d prompts longer than model.max_prompt_length = %d tokens",
                             loaded.origin, too_long, len(loaded.frame), length_filter.max_tokens)
            if frame.empty:
                raise ValueError(
                    f"{loaded.origin}: every one of its {len(loaded.frame)} prompts is longer than "
                    f"model.max_prompt_length = {length_filter.max_tokens} tokens; raise the limit"
                )
        tmp = path.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)  # no half-written file ever carries the final name
        section[spec.name] = {
            "origin": loaded.origin,
            "rows": len(frame),
            "duplicates_removed": loaded.duplicates_removed,
            PROMPTS_TOO_LONG: too_long,
        }
        return path

    train_path = write(data.train, out_dir / "train.parquet", manifest["train"])
    eval_paths = {
        spec.name: write(spec, out_dir / f"eval-{spec.name}.parquet", manifest["benchmarks"])
        for spec in data.benchmarks
    }
    manifest_path = out_dir / "manifest.json"
    write_json(manifest_path, manifest)
    return PreparedData(train_path, eval_paths, manifest_path)


def build_initial_policy(cfg: ExperimentConfig, prepared: PreparedData, out_dir: Path) -> str:
    """The policy every method starts from: the tiny model's warm start, or a hub model."""
    model = cfg.model
    if not isinstance(model, TinyModelConfig):
        return model.load_path
    from pilotcommit.models.tokenizer import build_char_tokenizer
    from pilotcommit.models.warm_start import run_warm_start

    train_df = read_prompt_table(prepared.train_path)
    train_df["level"] = train_df["level"].astype(int)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    result = run_warm_start(train_df, out_dir, build_char_tokenizer(), model.warm_start, model)
    return str(result.checkpoint_dir)


def evaluate_checkpoint(
    cfg: ExperimentConfig, checkpoint: str, prepared: PreparedData, *, seed: int | None = None
) -> dict[str, float]:
    """Evaluate a policy checkpoint on the prepared evaluation sets (``eval/*`` metrics)."""
    from pilotcommit.models.loading import load_policy
    from pilotcommit.run_parts import make_engine

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    model, tokenizer = load_policy(checkpoint, cfg.model)
    eval_cfg = cfg.eval if seed is None else cfg.eval.model_copy(update={"seed": seed})
    engine = make_engine(cfg, model, tokenizer)
    outcome = evaluate_policy(
        engine,
        build_eval_sets(cfg, prepared.eval_paths, tokenizer),
        reward_function(cfg),
        eval_cfg,
        max_new_tokens=cfg.rollout.max_new_tokens,
    )
    return outcome.metrics


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
