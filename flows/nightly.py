"""The nightly regression flow: rerun a named configuration and compare it with the last accepted
baseline recorded in MLflow (pilotcommit/analysis/regression.py decides; docs/orchestration.md).

The baseline is the newest parent run of the same configuration name tagged
``pilotcommit.accepted_baseline=true`` (``pilotcommit accept`` sets it, or this flow with
``accept=True``), from the same machine fingerprint when there is one. The flow fails with a
readable per-method report when a method regressed; the verdict is tagged on the rerun's parent
run, saved as its artifact, and shown in the Prefect UI. ``refresh=True`` (the scheduled
default) retrains every stage into new MLflow runs: with the code version in every cache key a
rerun of unchanged code would otherwise be a cache hit.
"""

from __future__ import annotations

from prefect import flow

from flows import tasks, ui
from flows.compare import compare_flow
from pilotcommit import tracking
from pilotcommit.analysis.regression import RegressionDetected
from pilotcommit.config import demo_config_path, load_experiment_config
from pilotcommit.runner.outcomes import CompareOutcome

__all__ = ["RegressionDetected", "nightly_regression_flow"]


@flow(name="nightly-regression")
def nightly_regression_flow(config_path: str | None = None, overrides: list[str] | None = None,
                            runs_dir: str | None = None, tracking_uri: str | None = None,
                            accuracy_drop: float = 0.02, rollouts_increase: float = 0.25, refresh: bool = True,
                            accept: bool = False, accept_if_no_baseline: bool = True,
                            parallel_runs: int | None = None) -> dict:
    """Rerun ``config_path`` (default: the demo) and fail when it regressed against the accepted baseline.

    accuracy_drop: allowed absolute drop of a method's final accuracy when the baseline has a
        single seed (with several, the tolerance is the bootstrap half-width of their spread).
    rollouts_increase: allowed relative growth of its mean rollouts to the baseline's target.
    accept: mark this rerun as the new baseline when it passes.
    parallel_runs: training runs at once (default: automatic, see compare).
    """
    config_path = config_path or str(demo_config_path())
    cfg = load_experiment_config(config_path, list(overrides or []))
    out = CompareOutcome.from_dict(compare_flow(config_path=config_path, overrides=overrides, runs_dir=runs_dir,
                                                tracking_uri=tracking_uri, refresh=refresh,
                                                parallel_runs=parallel_runs))
    verdict = tasks.regression_check_task(out.tracking_uri, out.experiment_id, cfg.name, out.parent_run_id,
                                          cfg.target, accuracy_drop, rollouts_increase, accept_if_no_baseline)
    print(verdict["report"])
    log = tasks.run_logger()
    for line in verdict["report"].splitlines():
        (log.info if verdict["passed"] else log.error)("%s", line)
    run_url = lambda run_id: tracking.mlflow_run_url(out.tracking_uri, out.experiment_id, run_id)  # noqa: E731
    ui.publish_verdict(ui.artifact_key("nightly", cfg.name, "verdict"), bool(verdict["passed"]), verdict["report"],
                       run_url(verdict["baseline_run_id"]) if verdict["baseline_run_id"] else None,
                       run_url(out.parent_run_id))
    links = tracking.mlflow_links(out.tracking_uri, out.experiment_id, out.parent_run_id,
                                  [r.mlflow_run_id for r in out.runs])
    ui.publish_comparison(ui.artifact_key("nightly", cfg.name), f"nightly {cfg.name}", {"": out.report.summary}, links)
    if not verdict["passed"]:
        raise RegressionDetected(verdict["report"])
    if accept:
        tracking.accept_baseline(tracking.mlflow_client(out.tracking_uri), out.parent_run_id,
                                 note="accepted by the nightly flow")
    return {**verdict, "parent_run_id": out.parent_run_id, "tracking_uri": out.tracking_uri}
