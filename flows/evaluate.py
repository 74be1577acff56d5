"""The ``evaluate`` flow: one policy checkpoint on the experiment's evaluation sets.

The data stage is shared with the other flows (same cache key); the evaluation itself is cached
on the evaluation-relevant config sections, the checkpoint's files (path, size, mtime) and the
code version. The metrics go to an MLflow run tagged ``pilotcommit.kind=evaluation``.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows import tasks
from pilotcommit import tracking
from pilotcommit.stages.context import open_experiment
from pilotcommit.stages.table import STAGES, UpstreamKeys, evaluate_key, run_key


@flow(name="evaluate")
def evaluate_flow(checkpoint: str, config_path: str | None = None, overrides: list[str] | None = None,
                  runs_dir: str | None = None, tracking_uri: str | None = None, seed: int | None = None) -> dict:
    """Evaluate ``checkpoint`` (a directory or hub name) with the config's evaluation settings."""
    cfg, ctx = open_experiment(config_path, overrides, runs_dir, tracking_uri)
    data_key = UpstreamKeys.of(cfg, ctx.code_version).data
    data_dir = ctx.layout.data_dir(data_key)
    prepared = tasks.run_stage(
        tasks.prepare_data_task.with_options(**tasks.stage_options(ctx, not STAGES["data"].done(data_dir))),
        f"prepare-data ({cfg.name})", cfg, data_key, str(data_dir))["prepared"]
    eval_seed = cfg.eval.seed if seed is None else seed
    key = evaluate_key(cfg, data_key, checkpoint, eval_seed, ctx.code_version)
    metrics = tasks.run_stage(tasks.evaluate_task.with_options(**tasks.stage_options(ctx, False)),
                              f"evaluate ({checkpoint})", cfg, key, checkpoint, prepared, eval_seed)["metrics"]
    run = tasks.open_run_task(
        ctx.to_dict(), run_key(key), f"evaluate-{Path(checkpoint).name}",
        {tracking.TAG_KIND: "evaluation", "model": cfg.model.label, "checkpoint": checkpoint,
         "git_sha": ctx.git_sha, "prefect_flow_run_id": tasks.current_flow_run_id()}, config=cfg)
    if run["created"]:
        client = ctx.client()
        for name, value in metrics.items():
            client.log_metric(run["run_id"], name, float(value), step=0)
        client.set_terminated(run["run_id"], "FINISHED")
    value = metrics.get(cfg.target.metric)
    tasks.run_logger().info("evaluate %s: %s %s; MLflow run %s", checkpoint, cfg.target.metric,
                            "missing" if value is None else f"{value:.4f}",
                            tracking.mlflow_run_url(ctx.tracking_uri, ctx.experiment_id, run["run_id"]))
    return {"metrics": metrics, "mlflow_run_id": run["run_id"]}
