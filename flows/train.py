"""The ``train`` flow: one method x seed of an experiment, as its own MLflow run.

The same cached stages as ``compare`` (data, initial policy, train), so a run trained here is
reused by a later comparison and vice versa. ``resume=False`` retrains from scratch into a new
MLflow run; otherwise an interrupted run continues from its last checkpoint.
"""

from __future__ import annotations

from prefect import flow

from flows import reporting, stages
from flows.compare import prepare_stages, train_stage_key, train_tags
from pilotcommit import tracking
from pilotcommit.config import demo_config_path, load_experiment_config
from pilotcommit.dependencies import check_experiment
from pilotcommit.launch import check_gpus


@flow(name="train")
def train_flow(
    method: str,
    seed: int = 0,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    runs_dir: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = True,
) -> dict:
    """Train ``method`` (a method label of the config) with ``seed``."""
    cfg = load_experiment_config(config_path or demo_config_path(), list(overrides or []))
    if method not in cfg.methods:
        raise ValueError(f"method {method!r} is not one of the config's methods {sorted(cfg.methods)}")
    check_gpus(cfg, f"training run {method}")  # before the store, the data or the model
    check_experiment(cfg, f"training run {method}")
    ctx = stages.make_context(cfg.tracking.experiment_name or cfg.name, runs_dir,
                              tracking_uri or cfg.tracking.tracking_uri)
    upstream = prepare_stages(ctx, cfg)
    run_cfg = stages.run_config(cfg, method, seed)
    train_key = train_stage_key(ctx, run_cfg, upstream)
    run_dir = ctx.train_dir(cfg.name, method, seed, train_key)
    attempt = "" if resume else stages.current_flow_run_id()
    run = stages.open_run_task(
        ctx.to_dict(), tracking.run_key("train", train_key, attempt), f"{method}-{cfg.model.label}-seed{seed}",
        train_tags(ctx, run_cfg, method, seed), config=run_cfg, datasets=upstream["prepared"],
    )
    stale = (not resume) or run["created"] or stages.read_train_outputs(run_dir) is None
    out = stages.run_stage(
        stages.train_task.with_options(**stages.stage_options(ctx, stale)),
        f"train {method} seed {seed} ({cfg.model.label})",
        run_cfg, method, seed, train_key, upstream["prepared"], upstream["initial_policy"], str(run_dir),
        ctx.tracking_uri, run["run_id"], fresh=not resume,
    )
    reporting.run_logger().info("MLflow run %s; run directory %s",
                                reporting.mlflow_run_url(ctx.tracking_uri, ctx.experiment_id, run["run_id"]), run_dir)
    return {"mlflow_run_id": run["run_id"], "tracking_uri": ctx.tracking_uri, "run_dir": str(run_dir),
            "final_metrics": out["result"]["final_metrics"], "tracking_gap": out.get("tracking_gap", "")}
