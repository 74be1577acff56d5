"""The ``compare`` flow: every method x seed of one experiment under the same rollout budget,
then the comparison report, all under one MLflow parent run.

    prepare-data -> initial-policy -> train (method x seed, one nested MLflow run each) -> report

:func:`run_model_cells` is the part shared with the sweep (one model's cells under a given
parent run). Deliberately thin: every step is a task in flows/stages.py calling one library
function; this file only decides keys, directories and which cached results to trust.
"""

from __future__ import annotations

import hashlib
import json

from pathlib import Path

from prefect import flow

from flows import reporting, stages
from pilotcommit import report, tracking
from pilotcommit.pipeline import data_fingerprint
from pilotcommit.config import (
    ExperimentConfig,
    config_hash,
    demo_config_path,
    load_experiment_config,
)


def comparison_tags(ctx: stages.Context, cfg: ExperimentConfig, kind: str) -> dict[str, str]:
    return {
        tracking.TAG_KIND: kind,
        tracking.TAG_CONFIG_NAME: cfg.name,
        "config_hash": config_hash(cfg),
        "model": cfg.model.label,
        "git_sha": ctx.git_sha,
        tracking.TAG_CODE_VERSION: ctx.code_version,
        "prefect_flow_run_id": stages.current_flow_run_id(),
    }


def prepare_stages(ctx: stages.Context, cfg: ExperimentConfig, refresh: bool = False) -> dict:
    """The data and initial-policy stages of ``cfg`` (cached); their outputs and keys."""
    data_key = stages.stage_key("data", *data_fingerprint(cfg), ctx.code_version)
    data_dir = ctx.data_dir(data_key)
    data_stage = stages.read_stage(data_dir)
    stale = refresh or not (data_stage and stages.prepared_valid(data_stage))
    prepared = stages.run_stage(
        stages.prepare_data_task.with_options(**stages.stage_options(ctx, stale)), f"prepare-data ({cfg.name})",
        cfg, data_key, str(data_dir), rebuild=refresh,
    )["prepared"]

    policy_key = stages.stage_key("policy", config_hash(cfg.model), data_key, ctx.code_version)
    policy_dir = ctx.policy_dir(policy_key)
    policy_stage = stages.read_stage(policy_dir)
    stale = refresh or not (policy_stage and stages.policy_valid(policy_stage))
    initial_policy = stages.run_stage(
        stages.initial_policy_task.with_options(**stages.stage_options(ctx, stale)),
        f"initial-policy ({cfg.model.label})", cfg, policy_key, prepared, str(policy_dir), rebuild=refresh,
    )["initial_policy"]
    return {"prepared": prepared, "initial_policy": initial_policy, "data_key": data_key, "policy_key": policy_key}


def probe_stage(ctx: stages.Context, cfg: ExperimentConfig, upstream: dict, refresh: bool = False) -> dict | None:
    """The cached probe of ``cfg``'s training prompts under its initial policy (``cfg.probe``;
    None when ``probe.prompts`` is 0), reported as a progress event before any training, so that
    the CLI prints the prediction first (docs/regimes.md)."""
    if cfg.probe.prompts == 0:
        return None
    settings = cfg.model_dump(mode="json", include={"probe", "methods", "train_mix", "rollout"})
    key = stages.stage_key("probe", hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16],
                           upstream["policy_key"], upstream["data_key"], ctx.code_version)
    out = stages.run_stage(stages.probe_task.with_options(**stages.stage_options(ctx, refresh)),
                           f"probe ({cfg.cell_label})", cfg, key, upstream["prepared"], upstream["initial_policy"])
    reporting.run_logger().info("probe (%s): %s", cfg.cell_label, out["recommendation"])
    stages.emit_progress({"stage": "probe", "cell": cfg.cell_label, "probe": out})
    return out


def train_stage_key(ctx: stages.Context, run_cfg: ExperimentConfig, upstream: dict) -> str:
    return stages.stage_key("train", config_hash(run_cfg), upstream["policy_key"], upstream["data_key"],
                            ctx.code_version)


def train_tags(ctx: stages.Context, run_cfg: ExperimentConfig, label: str, seed: int) -> dict[str, str]:
    return {
        tracking.TAG_KIND: "train",
        "method": label,
        "model": run_cfg.model.label,
        "cell": run_cfg.cell_label,
        "seed": str(seed),
        "config_hash": config_hash(run_cfg),
        "git_sha": ctx.git_sha,
        tracking.TAG_CODE_VERSION: ctx.code_version,
        "prefect_flow_run_id": stages.current_flow_run_id(),
    }


def run_model_cells(
    ctx: stages.Context,
    cfg: ExperimentConfig,
    parent_run_id: str,
    parent_key: str,
    refresh: bool = False,
    parallel_runs: int | None = None,
) -> list[dict]:
    """Prepare data, build the initial policy, and train every method x seed of ``cfg`` as
    child runs of ``parent_run_id``. Returns ``(runs, probe)``: one dict per run (stage key,
    MLflow run id, result) and the probe's result before training (None when not configured).

    ``parallel_runs``: how many runs train at once, each in its own process (None: one per
    ``torch_threads`` cores on a CPU machine, one on a GPU machine; flows/processes.py)."""
    from flows.processes import auto_parallel_runs
    from pilotcommit.dependencies import check_experiment
    from pilotcommit.launch import check_gpus

    check_gpus(cfg, f"experiment {cfg.name}")  # before any data or model is loaded
    check_experiment(cfg, f"experiment {cfg.name}")
    num_runs = len(cfg.methods) * len(cfg.seeds)
    stages.set_parallel_runs(parallel_runs or auto_parallel_runs(cfg.torch_threads, num_runs))
    ctx_dict = ctx.to_dict()
    upstream = prepare_stages(ctx, cfg, refresh)
    prepared, initial_policy = upstream["prepared"], upstream["initial_policy"]
    probe = probe_stage(ctx, cfg, upstream, refresh)
    runs, calls = [], []
    for label in cfg.methods:
        for seed in cfg.seeds:
            run_cfg = stages.run_config(cfg, label, seed)
            train_key = train_stage_key(ctx, run_cfg, upstream)
            run_dir = ctx.train_dir(cfg.name, label, seed, train_key)
            child = stages.open_run_task(
                ctx_dict,
                tracking.run_key(parent_key, label, seed, cfg.cell_label, train_key),
                f"{label}-{cfg.cell_label}-seed{seed}",
                train_tags(ctx, run_cfg, label, seed),
                parent_run_id=parent_run_id,
                config=run_cfg,
                datasets=prepared,
            )
            # Trust a cached result only if its files are still there and it belongs to this run.
            stale = refresh or child["created"] or stages.read_train_outputs(run_dir) is None
            task = stages.train_task.with_options(**stages.stage_options(ctx, stale))
            calls.append((task, (run_cfg, label, seed, train_key, prepared, initial_policy, str(run_dir),
                                 ctx.tracking_uri, child["run_id"])))
            runs.append({"method": label, "seed": seed, "model": cfg.model.label, "cell": cfg.cell_label,
                         "stage_key": train_key,
                         "mlflow_run_id": child["run_id"], "run_dir": str(run_dir)})
    names = [f"train {r['method']} seed {r['seed']} ({r['cell']})" for r in runs]
    for run, out, name in zip(runs, _train_cells(calls, refresh, names), names, strict=True):
        run.update(final_metrics=out["result"]["final_metrics"], tracking_gap=out.get("tracking_gap", ""))
        if out.get("copied_from"):
            reporting.run_logger().info("%s: reused the finished run on disk (MLflow data copied from run %s)",
                                        name, out["copied_from"])
    return runs, probe


def _train_cells(calls: list[tuple], refresh: bool, names: list[str]) -> list[dict]:
    """Run the train tasks ``(task, args)``: one after the other in this process, or
    (``parallel_runs`` > 1) submitted together, each training in its own child process, at most
    ``parallel_runs`` at once. Every task finishes (or fails) before the first failure is
    raised, so no child is orphaned. Each one's cache hit or computation is logged (``names``)."""
    if stages.parallel_runs() <= 1:
        return [stages.run_stage(task, name, *args, fresh=refresh) for (task, args), name in zip(calls, names)]
    from prefect.futures import wait

    from flows.processes import terminate_children

    futures = [task.submit(*args, fresh=refresh) for task, args in calls]
    try:
        wait(futures)
    except BaseException:  # Ctrl-C or SIGTERM: the task threads are waiting on their children
        terminate_children()
        raise
    for future, name in zip(futures, names):
        stages.log_stage_state(name, future.state)
    return [future.result() for future in futures]


def report_stage(ctx: stages.Context, cfg: ExperimentConfig, parent: dict, parent_key: str,
                 runs: list[dict], refresh: bool, model: str | None = None) -> dict:
    key = stages.stage_key(
        "report", parent_key, model or "", *[r["stage_key"] for r in runs], stages.file_hash(Path(report.__file__))
    )
    return stages.run_stage(
        stages.report_task.with_options(**stages.stage_options(ctx, refresh or parent["created"])),
        f"report ({cfg.name})", cfg, key, ctx.tracking_uri, parent["run_id"], str(ctx.report_dir(cfg.name, key)),
        model,
    )


def publish_outcome(key: str, title: str, summaries: dict[str, report.ComparisonSummary], ctx: stages.Context,
                    parent_run_id: str, run_ids: list[str]) -> reporting.MlflowLinks:
    """The end of a flow on the Prefect run: the summary lines and the MLflow links in its log, and
    the comparison's markdown artifact ``key`` with link artifacts to the parent run and its chart."""
    links = reporting.mlflow_links(ctx.tracking_uri, ctx.experiment_id, parent_run_id, run_ids)
    log = reporting.run_logger()
    for label, summary in summaries.items():
        for line in report.summary_text(summary).splitlines():
            log.info("%s%s", f"{label}: " if label else "", line)
    log.info("MLflow parent run %s; accuracy against rollouts of every run: %s", links.parent_run, links.chart)
    if links.local_store:
        log.info("(%s)", links.hint())
    reporting.publish_comparison(key, title, summaries, links)
    return links


@flow(name="compare")
def compare_flow(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    runs_dir: str | None = None,
    tracking_uri: str | None = None,
    refresh: bool = False,
    parallel_runs: int | None = None,
) -> dict:
    """The config's methods (GRPO, DAPO, Pilot-Commit; GRESO, SPEED-RL where listed) x seeds, then the comparison.

    config_path: experiment YAML (default: the embedded demo). overrides: KEY=VALUE strings.
    runs_dir: where runs, caches and the default MLflow store go (default ./runs or
    $PILOTCOMMIT_RUNS_DIR). tracking_uri: MLflow store (default: config, $MLFLOW_TRACKING_URI,
    SQLite under runs_dir). refresh: recompute every stage into new MLflow runs.
    parallel_runs: training runs at once, each in its own process (default: one per
    `torch_threads` cores on a CPU machine, one on a GPU machine).
    """
    cfg = load_experiment_config(config_path or demo_config_path(), list(overrides or []))
    ctx = stages.make_context(cfg.tracking.experiment_name or cfg.name, runs_dir,
                              tracking_uri or cfg.tracking.tracking_uri)
    attempt = stages.current_flow_run_id() if refresh else ""
    parent_key = stages.stage_key("comparison", config_hash(cfg), ctx.code_version, attempt)
    parent = stages.open_run_task(ctx.to_dict(), parent_key, f"{cfg.name}-compare",
                                  comparison_tags(ctx, cfg, "comparison"), config=cfg)
    try:
        reporting.run_logger().info("compare %s: %s x seeds %s on %s, MLflow parent run %s", cfg.name,
                                    ", ".join(cfg.methods), cfg.seeds, cfg.model.label, parent["run_id"])
        runs, probe = run_model_cells(ctx, cfg, parent["run_id"], parent_key, refresh, parallel_runs)
        summary = report_stage(ctx, cfg, parent, parent_key, runs, refresh)
        measured = report.informative_group_rates(ctx.client(), [(r["method"], r["mlflow_run_id"]) for r in runs])
        publish_outcome(reporting.artifact_key("comparison", cfg.name), f"comparison {cfg.name}",
                        {"": report.ComparisonSummary.from_dict(summary["summary"])}, ctx, parent["run_id"],
                        [r["mlflow_run_id"] for r in runs])
    except BaseException:
        stages.close_run_task(ctx.to_dict(), parent["run_id"], "FAILED")
        raise
    stages.close_run_task(ctx.to_dict(), parent["run_id"], "FINISHED")
    return {
        "config_name": cfg.name,
        "config_hash": config_hash(cfg),
        "parent_run_id": parent["run_id"],
        "experiment_id": ctx.experiment_id,
        "tracking_uri": ctx.tracking_uri,
        "runs_root": str(ctx.runs_root),
        "runs": runs,
        "report": summary,
        "probe": probe,
        "informative_measured": measured,
    }
