"""The ``compare`` flow: every method x seed of one experiment under the same rollout budget, then
the comparison report, all under one MLflow parent run.

    prepare-data -> initial-policy -> probe -> train (method x seed, one nested MLflow run each) -> report

:func:`train_cells` is the part shared with the sweep (one cell's runs under a given parent
run). Keys and folders are pilotcommit/stages/table.py's; every task is one library call.
"""

from __future__ import annotations

from contextlib import contextmanager

from prefect import flow
from prefect.futures import wait

from flows import tasks, ui
from pilotcommit import tracking
from pilotcommit.analysis.publish import ComparisonReport
from pilotcommit.analysis.reads import informative_group_rates
from pilotcommit.config import ExperimentConfig, config_hash
from pilotcommit.runner.outcomes import CompareOutcome, TrainedRun
from pilotcommit.runner.processes import RunWindow, auto_parallel_runs
from pilotcommit.runner.progress import ProbeProgress, emit
from pilotcommit.runner.training import TrainOutput, TrainRequest
from pilotcommit.stages.context import Context, open_experiment
from pilotcommit.stages.table import (
    STAGES,
    UpstreamKeys,
    comparison_key,
    report_code_version,
    report_key,
    run_config,
    run_key,
)


def run_tags(ctx: Context, cfg: ExperimentConfig, kind: str, **extra: str) -> dict[str, str]:
    """The tags of an MLflow run of this flow (:func:`parent_tags`: a parent run's, which also
    name the config)."""
    return {tracking.TAG_KIND: kind, "config_hash": config_hash(cfg), "model": cfg.model.label,
            "git_sha": ctx.git_sha, tracking.TAG_CODE_VERSION: ctx.code_version,
            "prefect_flow_run_id": tasks.current_flow_run_id(), **extra}


def parent_tags(ctx: Context, cfg: ExperimentConfig, kind: str, **extra: str) -> dict[str, str]:
    return run_tags(ctx, cfg, kind, **{tracking.TAG_CONFIG_NAME: cfg.name, **extra})


@contextmanager
def parent_run(ctx: Context, run_id: str):
    """Ends the MLflow parent run FINISHED after the block, FAILED when it raises."""
    try:
        yield run_id
    except BaseException:
        tasks.close_run_task(ctx.to_dict(), run_id, "FAILED")
        raise
    tasks.close_run_task(ctx.to_dict(), run_id, "FINISHED")


def prepare_stages(ctx: Context, cfg: ExperimentConfig, refresh: bool = False) -> tuple[UpstreamKeys, dict, str]:
    """The data and initial-policy stages of ``cfg`` (cached, trusted only while their folders
    are valid): their keys, the prepared data and the initial policy."""
    keys = UpstreamKeys.of(cfg, ctx.code_version)
    data_dir, policy_dir = ctx.layout.data_dir(keys.data), ctx.layout.policy_dir(keys.policy)
    prepared = tasks.run_stage(
        tasks.prepare_data_task.with_options(**tasks.stage_options(ctx, refresh or not STAGES["data"].done(data_dir))),
        f"prepare-data ({cfg.name})", cfg, keys.data, str(data_dir), rebuild=refresh)["prepared"]
    policy = tasks.run_stage(
        tasks.initial_policy_task.with_options(
            **tasks.stage_options(ctx, refresh or not STAGES["policy"].done(policy_dir))),
        f"initial-policy ({cfg.model.label})", cfg, keys.policy, prepared, str(policy_dir), rebuild=refresh,
    )["initial_policy"]
    return keys, prepared, policy


def train_cells(ctx: Context, cfg: ExperimentConfig, parent_run_id: str, parent_key: str, refresh: bool = False,
                parallel_runs: int | None = None) -> tuple[list[TrainedRun], dict | None]:
    """Prepare data, build the initial policy, probe (``cfg.probe``), and train every method x
    seed of ``cfg`` (preflight-checked by the caller) as child runs of ``parent_run_id``, ``parallel_runs`` at once (default: one
    per ``torch_threads`` cores on a CPU machine, one on a GPU machine), each in its own process
    when more than one. Returns the runs and the probe's result (None when not configured)."""
    keys, prepared, policy = prepare_stages(ctx, cfg, refresh)
    probe = None
    if cfg.probe.prompts:  # printed before any training (docs/regimes.md)
        p = cfg.probe
        probe = tasks.run_stage(tasks.probe_task.with_options(**tasks.stage_options(ctx, refresh)),
                                f"probe ({cfg.cell_label})", cfg, keys.probe(cfg, ctx.code_version), prepared,
                                policy, p.prompts, p.samples, 0, p.estimator, str(ctx.runs_root / "probe-chunks"))
        tasks.run_logger().info("probe (%s): %s", cfg.cell_label, probe["recommendation"])
        emit(ProbeProgress(cfg.cell_label, probe))
    runs, calls = [], []
    for label in cfg.methods:
        for seed in cfg.seeds:
            run_cfg = run_config(cfg, label, seed)
            train_key = keys.train(run_cfg, ctx.code_version)
            run_dir = ctx.layout.train_dir(cfg.name, label, seed, train_key)
            child = tasks.open_run_task(
                ctx.to_dict(), run_key(parent_key, label, seed, cfg.cell_label, train_key),
                f"{label}-{cfg.cell_label}-seed{seed}",
                run_tags(ctx, run_cfg, "train", method=label, cell=cfg.cell_label, seed=str(seed)),
                parent_run_id=parent_run_id, config=run_cfg, datasets=prepared)
            # trust a cached result only if its files are still there and it belongs to this run
            stale = refresh or child["created"] or not STAGES["train"].done(run_dir)
            request = TrainRequest(run_cfg, label, seed, prepared, policy, str(run_dir), ctx.tracking_uri,
                                   child["run_id"])
            calls.append((tasks.train_task.with_options(**tasks.stage_options(ctx, stale)), request, train_key))
            runs.append(TrainedRun(label, seed, cfg.model.label, cfg.cell_label, train_key, child["run_id"],
                                   str(run_dir)))
    window = RunWindow(parallel_runs or auto_parallel_runs(cfg.torch_threads, len(calls)))
    outputs = _train(calls, refresh, window, [r.describe() for r in (c[1].run for c in calls)])
    for i, out in enumerate(outputs):
        runs[i] = TrainedRun(**{**runs[i].to_dict(), "final_metrics": out.result.final_metrics,
                                "tracking_gap": out.tracking_gap})
        if out.copied_from:
            tasks.run_logger().info("%s: reused the finished run on disk (MLflow data copied from run %s)",
                                    calls[i][1].run.describe(), out.copied_from)
    return runs, probe


def _train(calls: list, refresh: bool, window: RunWindow, names: list[str]) -> list[TrainOutput]:
    """The train tasks: one after the other in this process, or (a window of more than one)
    submitted together, each training in a child process, at most ``window.max_workers`` at once.
    Every task finishes (or fails) before the first failure is raised, so no child is orphaned."""
    with window:
        if not window.in_children:
            return [TrainOutput.from_dict(tasks.run_stage(task, name, request, key, fresh=refresh))
                    for (task, request, key), name in zip(calls, names)]
        futures = [task.submit(request, key, fresh=refresh) for task, request, key in calls]
        try:
            wait(futures)
        except BaseException:  # Ctrl-C or SIGTERM: the task threads are waiting on their children
            window.terminate()
            raise
    for future, name in zip(futures, names):
        tasks.log_stage_state(name, future.state)
    return [TrainOutput.from_dict(future.result()) for future in futures]


def report_stage(ctx: Context, cfg: ExperimentConfig, parent: dict, parent_key: str, runs: list[TrainedRun],
                 refresh: bool, cell: str | None = None) -> ComparisonReport:
    key = report_key(parent_key, cell, [r.stage_key for r in runs], report_code_version())
    return ComparisonReport.from_dict(tasks.run_stage(
        tasks.report_task.with_options(**tasks.stage_options(ctx, refresh or parent["created"])),
        f"report ({cfg.name})", cfg.target, key, ctx.tracking_uri, parent["run_id"],
        str(ctx.layout.report_dir(cfg.name, key)), cell))


@flow(name="compare")
def compare_flow(config_path: str | None = None, overrides: list[str] | None = None, runs_dir: str | None = None,
                 tracking_uri: str | None = None, refresh: bool = False, parallel_runs: int | None = None) -> dict:
    """The config's methods (GRPO, DAPO, Pilot-Commit; GRESO, SPEED-RL where listed) x seeds, then the comparison.

    config_path: experiment YAML (default: the embedded demo). overrides: KEY=VALUE strings.
    runs_dir: where runs, caches and the default MLflow store go (default ./runs or
    $PILOTCOMMIT_RUNS_DIR). tracking_uri: MLflow store (default: config, $MLFLOW_TRACKING_URI,
    SQLite under runs_dir). refresh: recompute every stage into new MLflow runs.
    parallel_runs: training runs at once, each in its own process (default: one per
    `torch_threads` cores on a CPU machine, one on a GPU machine).
    """
    cfg, ctx = open_experiment(config_path, overrides, runs_dir, tracking_uri)
    parent_key = comparison_key(cfg, ctx.code_version, tasks.current_flow_run_id() if refresh else "")
    parent = tasks.open_run_task(ctx.to_dict(), parent_key, f"{cfg.name}-compare", parent_tags(ctx, cfg, "comparison"),
                                 config=cfg)
    with parent_run(ctx, parent["run_id"]):
        tasks.run_logger().info("compare %s: %s x seeds %s on %s, MLflow parent run %s", cfg.name,
                                ", ".join(cfg.methods), cfg.seeds, cfg.model.label, parent["run_id"])
        runs, probe = train_cells(ctx, cfg, parent["run_id"], parent_key, refresh, parallel_runs)
        report = report_stage(ctx, cfg, parent, parent_key, runs, refresh)
        measured = informative_group_rates(ctx.client(), [(r.method, r.mlflow_run_id) for r in runs])
        ui.publish_outcome(ui.artifact_key("comparison", cfg.name), f"comparison {cfg.name}", {"": report.summary},
                           ctx, parent["run_id"], [r.mlflow_run_id for r in runs])
    return CompareOutcome(cfg.name, config_hash(cfg), parent["run_id"], ctx.experiment_id, ctx.tracking_uri,
                          str(ctx.runs_root), runs, report, probe, measured).to_dict()
