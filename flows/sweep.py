"""The ``sweep`` flow (deployment ``sweep/model-scale``): model configs x methods x seeds.

One MLflow parent run for the sweep; every model x method x seed is a child run nested under
it (tag ``model`` tells the sizes apart). Each model's cells are one ``sweep-model`` flow run:

- ``dispatch="subflow"`` (default, a laptop): the cells run one model after another as
  subflows of this flow run, in this process;
- ``dispatch="deployment"``: each model's cells are handed to the ``sweep-model/cell``
  deployment with ``run_deployment`` (they run in parallel on whatever work pool that
  deployment is bound to: the local process pool of ``pilotcommit serve``, or a GPU pool);
  this flow waits for them and fails if any failed.

At the end the sweep reads every child run back from MLflow and logs, per model, the
comparison figure and table, plus a table of rollouts to target against model size, and the
study report of :mod:`pilotcommit.study` (``study/``: per-cell speed-ups with paired bootstrap
intervals at two targets, equal-budget accuracy, the speed-up against zero-variance-share
figure, and each cell's probe prediction, logged as ``probe/<cell>/probe.json``, beside the
measured informative-group rates).
Workers must see the same runs directory and tracking store (paths are passed on).
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import reporting, stages
from flows.compare import comparison_tags, publish_outcome, run_model_cells
from pilotcommit import report, study, tracking
from pilotcommit.config import config_hash
from pilotcommit.dependencies import check_experiment
from pilotcommit.launch import check_gpus
from pilotcommit.sweep import cell_config, cell_configs, load_sweep_config

DISPATCH_MODES = ("subflow", "deployment")


@flow(name="sweep-model")
def sweep_model_flow(
    sweep_config: str,
    model_index: int,
    parent_run_id: str,
    parent_key: str,
    overrides: list[str] | None = None,
    runs_dir: str | None = None,
    tracking_uri: str | None = None,
    refresh: bool = False,
    parallel_runs: int | None = None,
    methods: list[str] | None = None,
) -> dict:
    """One model of a sweep: prepare data, warm start, train every method x seed as child runs
    of the sweep's parent run ``parent_run_id`` (``parallel_runs`` at once, see compare;
    ``methods``: these of the experiment's methods only)."""
    sweep = load_sweep_config(sweep_config, methods=methods)
    cfg = cell_config(sweep, model_index, list(overrides or []))
    # before the tracking store, the data or the model: a too-small worker fails in seconds
    check_gpus(cfg, f"sweep {sweep.name}, cell models[{model_index}]")
    check_experiment(cfg, f"sweep {sweep.name}, cell models[{model_index}]")
    ctx = stages.make_context(sweep.name, runs_dir, tracking_uri)
    reporting.run_logger().info("sweep %s, model %s: %s x seeds %s, MLflow parent run %s", sweep.name,
                                cfg.cell_label, ", ".join(cfg.methods), cfg.seeds, parent_run_id)
    runs, probe = run_model_cells(ctx, cfg, parent_run_id, parent_key, refresh, parallel_runs)
    if probe is not None:  # the prediction the study report sets beside the measurement
        study.log_cell_probe(ctx.client(), parent_run_id, cfg.cell_label, probe)
    run_ids = [r["mlflow_run_id"] for r in runs]
    summary = cell_summary_task(ctx.tracking_uri, run_ids, cfg.target)
    publish_outcome(reporting.artifact_key("sweep", sweep.name, "cell", cfg.cell_label),
                    f"sweep {sweep.name}", {cfg.cell_label: report.ComparisonSummary.from_dict(summary)},
                    ctx, parent_run_id, run_ids)
    return {"model": cfg.model.label, "cell": cfg.cell_label, "runs": runs}


@task(name="cell-summary", cache_policy=NO_CACHE)
def cell_summary_task(tracking_uri: str, run_ids: list[str], target_cfg) -> dict:
    """The comparison of one sweep cell's runs (read back from MLflow; nothing logged): the
    content of the cell's Prefect artifact. Only these runs are read, since other cells of the
    sweep may still be training under the same parent run."""
    client = tracking.mlflow_client(tracking_uri)
    runs = [report.load_run_history(client, client.get_run(run_id), target_cfg.metric) for run_id in run_ids]
    return report.summarize_comparison(runs, target_cfg).to_dict()


def _wait_for_flow_runs(flow_run_ids: list, timeout_s: float, poll_s: float = 5.0) -> dict[str, str]:
    """Poll until every flow run is final; ``{id: state name}``."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    states: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        pending = list(flow_run_ids)
        while pending:
            for run_id in list(pending):
                run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    states[str(run_id)] = run.state.name
                    pending.remove(run_id)
            if pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sweep: cells {pending} not finished after {timeout_s:.0f} s")
                time.sleep(poll_s)
    return states


@task(name="sweep-report", cache_policy=NO_CACHE)
def sweep_report_task(ctx: dict, parent_run_id: str, cell_configs: dict, out_dir: str,
                      failed_cells: tuple = ()) -> dict:
    """Per cell: summary, figure and table on the sweep's parent run; then the scale table."""
    context = stages.Context.from_dict(ctx)
    client = context.client()
    runs = report.load_comparison_runs(client, parent_run_id)
    summaries = {}
    for cell, cfg in cell_configs.items():
        cell_runs = [r for r in runs if r.cell == cell and r.history]
        if not cell_runs and cell in failed_cells:
            continue  # failed before any evaluation: nothing to report
        if not cell_runs:
            raise ValueError(f"sweep: no finished runs of cell {cell!r} under MLflow run {parent_run_id}")
        summaries[cell] = report.summarize_comparison(cell_runs, cfg.target)
        report.log_comparison(client, parent_run_id, cell_runs, summaries[cell], Path(out_dir) / cell,
                              artifact_dir=f"comparison/{cell}", metric_prefix=f"comparison/{cell}/")
    table = report.scale_frame(summaries)
    path = Path(out_dir) / "scale_summary.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    client.log_artifact(parent_run_id, str(path), "sweep")
    # the study report (docs/regimes.md): speed-ups with bootstrap intervals at two targets, equal
    # budgets, zero-variance share, predicted against measured informative groups, per cell
    target = next(iter(cell_configs.values())).target
    cells = study.study_cells(study.load_study_inputs(client, parent_run_id, target.metric), target,
                              order=list(cell_configs))
    study_paths = study.log_study(client, parent_run_id, cells, Path(out_dir) / "study")
    return {"summaries": {m: s.to_dict() for m, s in summaries.items()},
            "text": {m: report.summary_text(s) for m, s in summaries.items()}, "table": str(path),
            "study": {k: str(v) for k, v in study_paths.items()},
            "run_ids": [r.run_id for r in runs]}


@flow(name="sweep")
def sweep_flow(
    sweep_config: str = "conf/sweep/model-scale.yaml",
    overrides: list[str] | None = None,
    dispatch: str = "subflow",
    runs_dir: str | None = None,
    tracking_uri: str | None = None,
    refresh: bool = False,
    cell_timeout_s: float = 7 * 24 * 3600,
    parallel_runs: int | None = None,
    methods: list[str] | None = None,
) -> dict:
    """Run the sweep file's models x methods x seeds; see the module docstring.

    sweep_config: conf/sweep/*.yaml. overrides: KEY=VALUE for every cell's experiment config.
    dispatch: "subflow" or "deployment" (run_deployment of the sweep's cell deployment).
    parallel_runs: training runs at once within a model's cells (default: automatic, see compare).
    methods: run these of the experiment's methods only (None: the sweep file's ``methods``). A
    sweep of some methods has its own MLflow parent run; ``pilotcommit study`` reports several as one.
    """
    if dispatch not in DISPATCH_MODES:
        raise ValueError(f"dispatch: {dispatch!r} is not one of {DISPATCH_MODES}")
    sweep_path = str(Path(sweep_config).resolve())
    sweep = load_sweep_config(sweep_path, methods=methods)
    configs = cell_configs(sweep, list(overrides or []))  # every cell valid before any compute
    ctx = stages.make_context(sweep.name, runs_dir, tracking_uri)
    attempt = stages.current_flow_run_id() if refresh else ""
    parent_key = stages.stage_key(
        "sweep", config_hash(sweep), *[config_hash(c) for c in configs], ctx.code_version, attempt
    )
    tags = comparison_tags(ctx, configs[0], "sweep")
    tags.update({"model": ",".join(sorted({c.model.label for c in configs})), "config_hash": parent_key,
                 tracking.TAG_CONFIG_NAME: sweep.name})
    parent = stages.open_run_task(ctx.to_dict(), parent_key, f"{sweep.name}-sweep", tags)
    reporting.run_logger().info("sweep %s: models %s (dispatch %s), MLflow parent run %s", sweep.name,
                                [c.cell_label for c in configs], dispatch, parent["run_id"])
    cell_parameters = [
        {"sweep_config": sweep_path, "model_index": i, "parent_run_id": parent["run_id"],
         "parent_key": parent_key, "overrides": list(overrides or []),
         "runs_dir": str(ctx.runs_root), "tracking_uri": ctx.tracking_uri, "refresh": refresh,
         "parallel_runs": parallel_runs,
         # only when set: a cell deployment served before this parameter existed still runs
         **({"methods": list(methods)} if methods is not None else {})}
        for i in range(len(configs))
    ]
    try:
        if dispatch == "deployment":
            from prefect.deployments import run_deployment

            flow_runs = [run_deployment(sweep.cell_deployment, parameters=p, timeout=0) for p in cell_parameters]
            for config, fr in zip(configs, flow_runs):
                reporting.run_logger().info("sweep %s: model %s handed to %s as flow run %s", sweep.name,
                                            config.cell_label, sweep.cell_deployment, fr.id)
            states = _wait_for_flow_runs([fr.id for fr in flow_runs], cell_timeout_s)
            failed = {str(c.cell_label): states[str(fr.id)] for c, fr in zip(configs, flow_runs) if states[str(fr.id)] != "Completed"}
        else:
            # a failed cell does not stop the others: their runs are what a rerun would redo
            # otherwise; the sweep reports what finished, then fails naming the failed cells
            failed = {}
            for config, p in zip(configs, cell_parameters):
                try:
                    sweep_model_flow(**p)
                except Exception as err:  # noqa: BLE001 - recorded, re-raised after the report
                    failed[config.cell_label] = f"{type(err).__name__}: {err}"
                    reporting.run_logger().error("sweep %s: cell %s failed (%s); going on with the "
                                                 "other cells", sweep.name, config.cell_label, failed[config.cell_label])
        summary = sweep_report_task(
            ctx.to_dict(), parent["run_id"], {c.cell_label: c for c in configs},
            str(ctx.runs_root / sweep.name / "reports" / parent_key), tuple(failed),
        )
        publish_outcome(reporting.artifact_key("sweep", sweep.name), f"sweep {sweep.name}",
                        {m: report.ComparisonSummary.from_dict(s) for m, s in summary["summaries"].items()},
                        ctx, parent["run_id"], summary["run_ids"])
        if failed:
            raise RuntimeError(f"sweep {sweep.name}: cells failed: {failed} (the other cells finished and "
                               "are reported on the parent run; rerun the same command to retry the failed ones)")
    except BaseException:
        stages.close_run_task(ctx.to_dict(), parent["run_id"], "FAILED")
        raise
    stages.close_run_task(ctx.to_dict(), parent["run_id"], "FINISHED")
    return {"sweep": sweep.name, "parent_run_id": parent["run_id"], "experiment_id": ctx.experiment_id,
            "tracking_uri": ctx.tracking_uri, "models": [c.cell_label for c in configs], "report": summary}
