"""The ``evaluate`` flow: one policy checkpoint on the experiment's evaluation sets.

The data stage is shared with the other flows (same cache key); the evaluation itself is cached
on the evaluation-relevant config sections, the checkpoint's files (path, size, mtime) and the
code version. The metrics go to an MLflow run tagged ``pilotcommit.kind=evaluation``.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow

from flows import reporting, stages
from pilotcommit import tracking
from pilotcommit.config import config_hash, demo_config_path, load_experiment_config
from pilotcommit.pipeline import data_fingerprint


def checkpoint_fingerprint(checkpoint: str) -> str:
    """Path, size and mtime of every file of a local checkpoint (a hub name: the name)."""
    path = Path(checkpoint)
    if not path.exists():
        return checkpoint
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return ";".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


@flow(name="evaluate")
def evaluate_flow(
    checkpoint: str,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    runs_dir: str | None = None,
    tracking_uri: str | None = None,
    seed: int | None = None,
) -> dict:
    """Evaluate ``checkpoint`` (a directory or hub name) with the config's evaluation settings."""
    cfg = load_experiment_config(config_path or demo_config_path(), list(overrides or []))
    ctx = stages.make_context(cfg.tracking.experiment_name or cfg.name, runs_dir,
                              tracking_uri or cfg.tracking.tracking_uri)
    data_key = stages.stage_key("data", *data_fingerprint(cfg), ctx.code_version)
    data_dir = ctx.data_dir(data_key)
    stale = not (stages.read_stage(data_dir) and stages.prepared_valid(stages.read_stage(data_dir)))
    prepared = stages.run_stage(stages.prepare_data_task.with_options(**stages.stage_options(ctx, stale)),
                                f"prepare-data ({cfg.name})", cfg, data_key, str(data_dir))["prepared"]
    eval_seed = cfg.eval.seed if seed is None else seed
    key = stages.stage_key("evaluate", data_key, config_hash(cfg.eval), config_hash(cfg.rollout),
                           config_hash(cfg.model), checkpoint_fingerprint(checkpoint), eval_seed,
                           ctx.code_version)
    metrics = stages.run_stage(stages.evaluate_task.with_options(**stages.stage_options(ctx, False)),
                               f"evaluate ({checkpoint})", cfg, key, checkpoint, prepared, eval_seed)["metrics"]
    run = stages.open_run_task(
        ctx.to_dict(), tracking.run_key(key), f"evaluate-{Path(checkpoint).name}",
        {tracking.TAG_KIND: "evaluation", "model": cfg.model.label, "checkpoint": checkpoint,
         "git_sha": ctx.git_sha, "prefect_flow_run_id": stages.current_flow_run_id()},
        config=cfg,
    )
    if run["created"]:
        from mlflow.entities import Metric

        client = ctx.client()
        now_ms = int(time.time() * 1000)
        client.log_batch(run["run_id"], metrics=[Metric(k, float(v), now_ms, 0) for k, v in metrics.items()])
        client.set_terminated(run["run_id"], "FINISHED")
    value = metrics.get(cfg.target.metric)
    reporting.run_logger().info(
        "evaluate %s: %s %s; MLflow run %s", checkpoint, cfg.target.metric,
        "missing" if value is None else f"{value:.4f}",
        reporting.mlflow_run_url(ctx.tracking_uri, ctx.experiment_id, run["run_id"]),
    )
    return {"metrics": metrics, "mlflow_run_id": run["run_id"]}
