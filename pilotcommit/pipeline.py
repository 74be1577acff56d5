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
from pathlib import Path

import torch

from pilotcommit.config import ArithDataConfig, ExperimentConfig, MathDataConfig, TinyModelConfig
from pilotcommit.data.prepared import PreparedData, read_prompt_table
from pilotcommit.evaluation import evaluate_policy
from pilotcommit.loop import RunResult, build_eval_sets, reward_function, train_run

REPO_ROOT = Path(__file__).resolve().parent.parent

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
        prepared = _prepare_math_data(data, out_dir)
    for path in [prepared.train_path, *prepared.eval_paths.values()]:
        read_prompt_table(path)  # fail here, naming the file, not in the middle of training
    return prepared


def _prepare_math_data(data: MathDataConfig, out_dir: Path) -> PreparedData:
    from pilotcommit.data.loaders import load_prompt_table

    base_dir = Path(data.base_dir) if data.base_dir else REPO_ROOT
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"train": {}, "benchmarks": {}}

    def write(spec, path: Path, section: dict) -> Path:
        loaded = load_prompt_table(spec, base_dir=base_dir)
        tmp = path.with_suffix(".tmp")
        loaded.frame.to_parquet(tmp, index=False)
        tmp.replace(path)  # no half-written file ever carries the final name
        section[spec.name] = {
            "origin": loaded.origin,
            "rows": len(loaded.frame),
            "duplicates_removed": loaded.duplicates_removed,
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
        return model.name_or_path
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
    from pilotcommit.loop import make_engine
    from pilotcommit.models.loading import load_policy

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
