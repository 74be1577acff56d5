"""The ``sweep`` flow (deployment ``sweep/model-scale``): model configs x methods x seeds.

One MLflow parent run for the sweep; every cell x method x seed is a child run nested under it
(tags ``model`` and ``cell``). Each cell is one ``sweep-model`` flow run:

- ``dispatch="subflow"`` (default, a laptop): the cells run one after another as subflows of
  this flow run, in this process; a failed cell does not stop the others;
- ``dispatch="deployment"``: each cell is handed to the ``sweep-model/cell`` deployment with
  ``run_deployment`` (they run in parallel on whatever work pool that deployment is bound to);
  this flow waits for them and fails if any failed.

At the end the sweep reads every child run back from MLflow and logs the per-cell comparisons,
the scale table and the study report (pilotcommit/analysis/publish.py). Workers must see the
same runs directory and tracking store (paths are passed on).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows import tasks, ui
from flows.compare import parent_run, parent_tags, train_cells
from pilotcommit import tracking
from pilotcommit.analysis.publish import SweepReport, log_cell_probe
from pilotcommit.analysis.summary import ComparisonSummary
from pilotcommit.config import cell_config, cell_configs, load_sweep_config
from pilotcommit.services.prefect import wait_for_flow_runs
from pilotcommit.stages.context import make_context, preflight
from pilotcommit.stages.table import sweep_key

DISPATCH_MODES = ("subflow", "deployment")


@flow(name="sweep-model")
def sweep_model_flow(sweep_config: str, model_index: int, parent_run_id: str, parent_key: str,
                     overrides: list[str] | None = None, runs_dir: str | None = None,
                     tracking_uri: str | None = None, refresh: bool = False, parallel_runs: int | None = None,
                     methods: list[str] | None = None) -> dict:
    """One cell of a sweep: prepare data, warm start, train every method x seed as child runs of
    the sweep's parent run ``parent_run_id`` (``parallel_runs`` at once, see compare;
    ``methods``: these of the experiment's methods only)."""
    sweep = load_sweep_config(sweep_config, methods=methods)
    cfg = cell_config(sweep, model_index, list(overrides or []))
    # before the tracking store, the data or the model: a too-small worker fails in seconds
    preflight(cfg, f"sweep {sweep.name}, cell models[{model_index}]")
    ctx = make_context(sweep.name, runs_dir, tracking_uri)
    tasks.run_logger().info("sweep %s, model %s: %s x seeds %s, MLflow parent run %s", sweep.name,
                            cfg.cell_label, ", ".join(cfg.methods), cfg.seeds, parent_run_id)
    runs, probe = train_cells(ctx, cfg, parent_run_id, parent_key, refresh, parallel_runs)
    if probe is not None:  # the prediction the study report sets beside the measurement
        log_cell_probe(ctx.client(), parent_run_id, cfg.cell_label, probe)
    run_ids = [r.mlflow_run_id for r in runs]
    summary = ComparisonSummary.from_dict(tasks.cell_summary_task(ctx.tracking_uri, run_ids, cfg.target))
    ui.publish_outcome(ui.artifact_key("sweep", sweep.name, "cell", cfg.cell_label), f"sweep {sweep.name}",
                       {cfg.cell_label: summary}, ctx, parent_run_id, run_ids)
    return {"model": cfg.model.label, "cell": cfg.cell_label, "runs": [r.to_dict() for r in runs]}


def _run_cells(sweep, configs, cell_parameters: list[dict], dispatch: str, cell_timeout_s: float) -> dict[str, str]:
    """Every cell, by ``dispatch``; ``{cell: why}`` of the cells that failed."""
    log = tasks.run_logger()
    if dispatch == "deployment":
        from prefect.deployments import run_deployment

        flow_runs = [run_deployment(sweep.cell_deployment, parameters=p, timeout=0) for p in cell_parameters]
        for config, fr in zip(configs, flow_runs):
            log.info("sweep %s: model %s handed to %s as flow run %s", sweep.name, config.cell_label,
                     sweep.cell_deployment, fr.id)
        states = wait_for_flow_runs([fr.id for fr in flow_runs], cell_timeout_s)
        return {c.cell_label: states[str(fr.id)] for c, fr in zip(configs, flow_runs) if states[str(fr.id)] != "Completed"}
    # a failed cell does not stop the others: their runs are what a rerun would redo otherwise;
    # the sweep reports what finished, then fails naming the failed cells
    failed = {}
    for config, p in zip(configs, cell_parameters):
        try:
            sweep_model_flow(**p)
        except Exception as err:  # noqa: BLE001 - recorded, re-raised after the report
            failed[config.cell_label] = f"{type(err).__name__}: {err}"
            log.error("sweep %s: cell %s failed (%s); going on with the other cells", sweep.name,
                      config.cell_label, failed[config.cell_label])
    return failed


@flow(name="sweep")
def sweep_flow(sweep_config: str = "conf/sweep/model-scale.yaml", overrides: list[str] | None = None,
               dispatch: str = "subflow", runs_dir: str | None = None, tracking_uri: str | None = None,
               refresh: bool = False, cell_timeout_s: float = 7 * 24 * 3600, parallel_runs: int | None = None,
               methods: list[str] | None = None) -> dict:
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
    ctx = make_context(sweep.name, runs_dir, tracking_uri)
    parent_key = sweep_key(sweep, configs, ctx.code_version, tasks.current_flow_run_id() if refresh else "")
    tags = parent_tags(ctx, configs[0], "sweep", **{"model": ",".join(sorted({c.model.label for c in configs})),
                                                    "config_hash": parent_key, tracking.TAG_CONFIG_NAME: sweep.name})
    parent = tasks.open_run_task(ctx.to_dict(), parent_key, f"{sweep.name}-sweep", tags)
    tasks.run_logger().info("sweep %s: models %s (dispatch %s), MLflow parent run %s", sweep.name,
                            [c.cell_label for c in configs], dispatch, parent["run_id"])
    cell_parameters = [
        {"sweep_config": sweep_path, "model_index": i, "parent_run_id": parent["run_id"], "parent_key": parent_key,
         "overrides": list(overrides or []), "runs_dir": str(ctx.runs_root), "tracking_uri": ctx.tracking_uri,
         "refresh": refresh, "parallel_runs": parallel_runs,
         # only when set: a cell deployment served before this parameter existed still runs
         **({"methods": list(methods)} if methods is not None else {})}
        for i in range(len(configs))
    ]
    with parent_run(ctx, parent["run_id"]):
        failed = _run_cells(sweep, configs, cell_parameters, dispatch, cell_timeout_s)
        report = SweepReport.from_dict(tasks.sweep_report_task(
            ctx.tracking_uri, parent["run_id"], {c.cell_label: c.target for c in configs},
            str(ctx.runs_root / sweep.name / "reports" / parent_key), tuple(failed)))
        ui.publish_outcome(ui.artifact_key("sweep", sweep.name), f"sweep {sweep.name}", report.summaries, ctx,
                           parent["run_id"], report.run_ids)
        if failed:
            raise RuntimeError(f"sweep {sweep.name}: cells failed: {failed} (the other cells finished and "
                               "are reported on the parent run; rerun the same command to retry the failed ones)")
    return {"sweep": sweep.name, "parent_run_id": parent["run_id"], "experiment_id": ctx.experiment_id,
            "tracking_uri": ctx.tracking_uri, "models": [c.cell_label for c in configs], "report": report.to_dict()}
