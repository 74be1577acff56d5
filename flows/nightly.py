"""The nightly regression flow: rerun a named configuration and compare it with the last
accepted baseline recorded in MLflow.

The baseline is the newest parent run of the same configuration name tagged
``pilotcommit.accepted_baseline=true`` (``pilotcommit accept`` sets it, or this flow with
``accept=True``). The rerun is summarised against the *baseline's* target accuracy, so a
weaker reference method cannot lower the bar; the flow fails with a readable per-method report
(:func:`pilotcommit.report.check_regression`) when a method's final accuracy drops, paired seed
by seed, by more than the bootstrap tolerance of the baseline's seed spread (``accuracy_drop``
with a single seed), or its rollouts to target grow by more than ``rollouts_increase``
(relative), or it reaches the target in fewer seeds. Numbers are hardware-specific
(docs/embedded_task.md): the baseline accepted from the same machine fingerprint
(:mod:`pilotcommit.fingerprint`) is preferred; if there is none, the report says plainly
that the baseline came from other hardware and which fields differ. The verdict is tagged on
the rerun's parent run (``pilotcommit.regression``) and saved as an artifact.

``refresh=True`` (the scheduled default) retrains every stage into new MLflow runs: with the
code version in every cache key a rerun of unchanged code would otherwise be a cache hit.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.compare import compare_flow
from pilotcommit import report, tracking
from pilotcommit.config import demo_config_path, load_experiment_config


class RegressionDetected(RuntimeError):
    """The rerun is worse than the accepted baseline beyond the tolerance; the message is the report."""


@task(name="regression-check", cache_policy=NO_CACHE)
def regression_check_task(
    tracking_uri: str, experiment_id: str, config_name: str, current_run_id: str, target_cfg,
    accuracy_drop: float, rollouts_increase: float, accept_if_no_baseline: bool,
) -> dict:
    from pilotcommit import fingerprint

    client = tracking.mlflow_client(tracking_uri)
    machine = tracking.comparison_fingerprint(client, current_run_id)
    baseline = tracking.find_accepted_baseline(
        client, experiment_id, config_name,
        fingerprint_key=fingerprint.fingerprint_key(machine) if machine else None,
    )
    if baseline is None:
        if not accept_if_no_baseline:
            raise RegressionDetected(f"no accepted baseline for configuration {config_name!r}; "
                                     "run `pilotcommit accept` on a comparison first")
        tracking.accept_baseline(client, current_run_id, note="first nightly run, no earlier baseline")
        return {"passed": True, "baseline_run_id": current_run_id,
                "report": f"nightly regression: no accepted baseline for {config_name!r}; "
                          f"this run ({current_run_id}) is now the baseline"}
    baseline_summary = report.summarize_comparison(
        report.load_comparison_runs(client, baseline.info.run_id, target_cfg.metric), target_cfg
    )
    current_summary = report.summarize_comparison(
        report.load_comparison_runs(client, current_run_id, target_cfg.metric), target_cfg,
        target_override=baseline_summary.target,
    )
    recorded = tracking.baseline_fingerprint(baseline)
    differences = (
        fingerprint.fingerprint_differences(recorded, machine)
        if recorded and machine
        else ["unknown: the baseline or the rerun recorded no machine fingerprint (runs from "
              "before fingerprints existed), so the baseline may come from other hardware"]
    )
    verdict = report.check_regression(
        current_summary, baseline_summary, report.RegressionTolerance(accuracy_drop, rollouts_increase),
        hardware_differences=differences,
    )
    text = verdict.report() + f"\nbaseline run {baseline.info.run_id}, rerun {current_run_id}"
    client.set_tag(current_run_id, "pilotcommit.regression", "passed" if verdict.passed else "failed")
    client.set_tag(current_run_id, "pilotcommit.regression_baseline", baseline.info.run_id)
    client.set_tag(current_run_id, "pilotcommit.regression_same_hardware", str(not differences).lower())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "regression.txt"
        path.write_text(text + "\n")
        client.log_artifact(current_run_id, str(path), "nightly")
    return {"passed": verdict.passed, "baseline_run_id": baseline.info.run_id, "report": text}


def publish_nightly(config_name: str, out: dict, verdict: dict) -> None:
    """The verdict and the rerun's comparison on the Prefect run (log lines and artifacts), so the
    UI shows why a nightly failed without opening MLflow."""
    from flows import reporting

    log = reporting.run_logger()
    for line in verdict["report"].splitlines():
        (log.info if verdict["passed"] else log.error)("%s", line)
    uri, experiment_id = out["tracking_uri"], out["experiment_id"]
    baseline = verdict.get("baseline_run_id")
    reporting.publish_verdict(
        reporting.artifact_key("nightly", config_name, "verdict"), bool(verdict["passed"]), verdict["report"],
        reporting.mlflow_run_url(uri, experiment_id, baseline) if baseline else None,
        reporting.mlflow_run_url(uri, experiment_id, out["parent_run_id"]),
    )
    links = reporting.mlflow_links(uri, experiment_id, out["parent_run_id"], [r["mlflow_run_id"] for r in out["runs"]])
    reporting.publish_comparison(reporting.artifact_key("nightly", config_name), f"nightly {config_name}",
                                 {"": report.ComparisonSummary.from_dict(out["report"]["summary"])}, links)


@flow(name="nightly-regression")
def nightly_regression_flow(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    runs_dir: str | None = None,
    tracking_uri: str | None = None,
    accuracy_drop: float = 0.02,
    rollouts_increase: float = 0.25,
    refresh: bool = True,
    accept: bool = False,
    accept_if_no_baseline: bool = True,
    parallel_runs: int | None = None,
) -> dict:
    """Rerun ``config_path`` (default: the demo) and fail when it regressed against the accepted baseline.

    accuracy_drop: allowed absolute drop of a method's final accuracy when the baseline has a
        single seed (with several, the tolerance is the bootstrap half-width of their spread).
    rollouts_increase: allowed relative growth of its mean rollouts to the baseline's target.
    accept: mark this rerun as the new baseline when it passes.
    parallel_runs: training runs at once (default: automatic, see compare).
    """
    config_path = config_path or str(demo_config_path())
    cfg = load_experiment_config(config_path, list(overrides or []))
    out = compare_flow(config_path=config_path, overrides=overrides, runs_dir=runs_dir,
                       tracking_uri=tracking_uri, refresh=refresh, parallel_runs=parallel_runs)
    verdict = regression_check_task(
        out["tracking_uri"], out["experiment_id"], cfg.name, out["parent_run_id"], cfg.target,
        accuracy_drop, rollouts_increase, accept_if_no_baseline,
    )
    print(verdict["report"])
    publish_nightly(cfg.name, out, verdict)
    if not verdict["passed"]:
        raise RegressionDetected(verdict["report"])
    if accept:
        tracking.accept_baseline(tracking.mlflow_client(out["tracking_uri"]), out["parent_run_id"],
                                 note="accepted by the nightly flow")
    return {**verdict, "parent_run_id": out["parent_run_id"], "tracking_uri": out["tracking_uri"]}
