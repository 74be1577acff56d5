"""The ``train`` flow: one method x seed of an experiment, as its own MLflow run.

The same cached stages as ``compare`` (data, initial policy, train), so a run trained here is
reused by a later comparison and vice versa. ``resume=False`` retrains from scratch into a new
MLflow run; otherwise an interrupted run continues from its last checkpoint.
"""

from __future__ import annotations

from prefect import flow

from flows import tasks
from flows.compare import prepare_stages, run_tags
from pilotcommit.runner.training import TrainOutput, TrainRequest
from pilotcommit.stages.context import open_experiment
from pilotcommit.stages.table import STAGES, run_config, run_key
from pilotcommit.tracking import mlflow_run_url


@flow(name="train")
def train_flow(method: str, seed: int = 0, config_path: str | None = None, overrides: list[str] | None = None,
               runs_dir: str | None = None, tracking_uri: str | None = None, resume: bool = True) -> dict:
    """Train ``method`` (a method label of the config) with ``seed``."""
    cfg, ctx = open_experiment(config_path, overrides, runs_dir, tracking_uri, where=f"training run {method}")
    if method not in cfg.methods:
        raise ValueError(f"method {method!r} is not one of the config's methods {sorted(cfg.methods)}")
    keys, prepared, policy = prepare_stages(ctx, cfg)
    run_cfg = run_config(cfg, method, seed)
    train_key = keys.train(run_cfg, ctx.code_version)
    run_dir = ctx.layout.train_dir(cfg.name, method, seed, train_key)
    run = tasks.open_run_task(
        ctx.to_dict(), run_key("train", train_key, "" if resume else tasks.current_flow_run_id()),
        f"{method}-{cfg.model.label}-seed{seed}",
        run_tags(ctx, run_cfg, "train", method=method, cell=cfg.cell_label, seed=str(seed)),
        config=run_cfg, datasets=prepared)
    stale = (not resume) or run["created"] or not STAGES["train"].done(run_dir)
    request = TrainRequest(run_cfg, method, seed, prepared, policy, str(run_dir), ctx.tracking_uri, run["run_id"])
    out = TrainOutput.from_dict(tasks.run_stage(
        tasks.train_task.with_options(**tasks.stage_options(ctx, stale)),
        f"train {method} seed {seed} ({cfg.model.label})", request, train_key, fresh=not resume))
    tasks.run_logger().info("MLflow run %s; run directory %s",
                            mlflow_run_url(ctx.tracking_uri, ctx.experiment_id, run["run_id"]), run_dir)
    return {"mlflow_run_id": run["run_id"], "tracking_uri": ctx.tracking_uri, "run_dir": str(run_dir),
            "final_metrics": out.result.final_metrics, "tracking_gap": out.tracking_gap}
