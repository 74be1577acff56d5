"""The Prefect tasks of the flows: each one library call. Cached tasks are keyed by their stage key
(pilotcommit/stages/table.py) and persist plain JSON into ``<runs>/prefect-results``, which is
read back only through the trusted result storage (pilotcommit/stages/result_storage.py);
typed records become JSON here (``to_dict``) and are read back by the flows (``from_dict``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run, task_run

from pilotcommit import tracking
from pilotcommit.analysis import publish, regression
from pilotcommit.config import ExperimentConfig
from pilotcommit.data.prepared import PreparedData
from pilotcommit.runner.training import TrainRequest, run_training_cell
from pilotcommit.stages import materialise
from pilotcommit.stages.context import Context
from pilotcommit.stages.result_storage import trusted_storage


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger of the current flow or task run (its lines show on the run page); a
    module logger outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("pilotcommit.flows")


def current_flow_run_id() -> str:
    return str(flow_run.id or "")


def stage_options(ctx: Context, refresh: bool) -> dict:
    """Results persisted under the runs directory (read as data only: a record this pipeline did
    not write is refused); ``refresh`` recomputes and overwrites the cached entry."""
    return {"result_storage": trusted_storage(ctx.layout.results_dir), "refresh_cache": refresh}


def run_stage(task_call, describe: str, *args, **kwargs):
    """Call a configured task (``task.with_options(...)``) and log on the Prefect run whether it
    was served from the cache or computed; its result (raises as the task did)."""
    started = time.perf_counter()
    state = task_call(*args, return_state=True, **kwargs)
    log_stage_state(describe, state, time.perf_counter() - started)
    return state.result()


def log_stage_state(describe: str, state, seconds: float | None = None) -> None:
    if state.name == "Cached":
        run_logger().info("%s: served from the cache", describe)
    elif state.is_completed():
        run_logger().info("%s: computed%s", describe, f" in {seconds:.1f} s" if seconds is not None else "")


_CACHED = {"persist_result": True, "cache_key_fn": lambda context, parameters: parameters["stage_key"],
           "result_serializer": "json"}


@task(name="prepare-data", **_CACHED)
def prepare_data_task(cfg: ExperimentConfig, stage_key: str, out_dir: str, rebuild: bool = False) -> dict:
    run_logger().info("prepare-data: running (%s, into %s)", stage_key, out_dir)
    return materialise.materialise_data(cfg, Path(out_dir), rebuild, log=run_logger())


@task(name="initial-policy", **_CACHED)
def initial_policy_task(cfg: ExperimentConfig, stage_key: str, prepared: dict, out_dir: str,
                        rebuild: bool = False) -> dict:
    run_logger().info("initial-policy: running (%s, %s into %s)", stage_key, cfg.model.label, out_dir)
    return materialise.materialise_policy(cfg, prepared, Path(out_dir), rebuild)


@task(name="train", retries=1, retry_delay_seconds=2, **_CACHED)
def train_task(request: TrainRequest, stage_key: str, fresh: bool = False) -> dict:
    """A Prefect retry (or a rerun after a crash) resumes from the run's last checkpoint;
    pilotcommit/runner/training.py decides what to reuse."""
    return run_training_cell(request, fresh=fresh, attempt=str(task_run.id or ""), logger=run_logger()).to_dict()


@task(name="probe", **_CACHED)
def probe_task(cfg: ExperimentConfig, stage_key: str, prepared: dict, initial_policy: str, prompts: int,
               samples: int, seed: int = 0, estimator: str = "empirical_bayes", keep_dir: str | None = None) -> dict:
    """``keep_dir``: where finished chunks of prompts are kept, so a stopped probe resumes."""
    from pilotcommit.probe import run_probe

    run_logger().info("probe: running (%s, %d prompts x %d rollouts)", stage_key, prompts, samples)
    return run_probe(cfg, PreparedData.from_dict(prepared).train_path, initial_policy, prompts=prompts,
                     samples=samples, seed=seed, estimator=estimator, keep_dir=keep_dir).to_dict()


@task(name="evaluate", **_CACHED)
def evaluate_task(cfg: ExperimentConfig, stage_key: str, checkpoint: str, prepared: dict, seed: int) -> dict:
    from pilotcommit.pipeline import evaluate_checkpoint

    run_logger().info("evaluate: running (%s, checkpoint %s)", stage_key, checkpoint)
    return {"metrics": evaluate_checkpoint(cfg, checkpoint, PreparedData.from_dict(prepared), seed=seed)}


@task(name="report", **_CACHED)
def report_task(target, stage_key: str, tracking_uri: str, parent_run_id: str, out_dir: str,
                cell: str | None = None) -> dict:
    run_logger().info("report: running (%s, the runs under MLflow run %s)", stage_key, parent_run_id)
    return publish.report_comparison(tracking.mlflow_client(tracking_uri), parent_run_id, target, Path(out_dir),
                                     cell).to_dict()


@task(name="open-mlflow-run", cache_policy=NO_CACHE)
def open_run_task(ctx: dict, key: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None,
                  config: ExperimentConfig | None = None, datasets: dict | None = None) -> dict:
    context = Context.from_dict(ctx)
    inputs = PreparedData.from_dict(datasets).dataset_inputs() if datasets else None
    ref = tracking.open_run(context.client(), context.experiment_id, key, run_name, tags,
                            parent_run_id=parent_run_id, config=config, datasets=inputs)
    return {"run_id": ref.run_id, "created": ref.created}


@task(name="close-mlflow-run", cache_policy=NO_CACHE)
def close_run_task(ctx: dict, run_id: str, status: str) -> None:
    Context.from_dict(ctx).client().set_terminated(run_id, status=status)


@task(name="cell-summary", cache_policy=NO_CACHE)
def cell_summary_task(tracking_uri: str, run_ids: list[str], target) -> dict:
    return publish.cell_summary(tracking.mlflow_client(tracking_uri), run_ids, target).to_dict()


@task(name="sweep-report", cache_policy=NO_CACHE)
def sweep_report_task(tracking_uri: str, parent_run_id: str, targets: dict, out_dir: str,
                      failed_cells: tuple = ()) -> dict:
    return publish.report_sweep(tracking.mlflow_client(tracking_uri), parent_run_id, targets, Path(out_dir),
                                failed_cells).to_dict()


@task(name="regression-check", cache_policy=NO_CACHE)
def regression_check_task(tracking_uri: str, experiment_id: str, config_name: str, current_run_id: str, target,
                          accuracy_drop: float, rollouts_increase: float, accept_if_no_baseline: bool) -> dict:
    return regression.nightly_verdict(
        tracking.mlflow_client(tracking_uri), experiment_id, config_name, current_run_id, target,
        regression.RegressionTolerance(accuracy_drop, rollouts_increase), accept_if_no_baseline).to_dict()
