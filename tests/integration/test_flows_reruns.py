"""Flows rerun in a runs directory of their own (GRPO and Pilot-Commit compared once per module,
the smoke config's data and initial policy copied in; the mechanics under test do not depend on
the method), against the session's real Prefect server and a real MLflow SQLite store.

Checked: deleted outputs recomputed instead of returned stale; a planted cached result refused;
an added seed reusing the trained runs; a code change retraining into new folders; a sweep as
subflows with its artifacts and study report; the nightly regression and its verdict artifact.
The tests run in order on one pytest-xdist worker (tests/conftest.py: they share the module's
comparison).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, SMOKE_CONFIG
from tests.integration.conftest import (
    copy_stages,
    flow_artifacts,
    flow_logs,
    latest_flow_run_id,
    methods_override,
    mlflow_client_of,
    table_rows,
    task_states,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def small_compare(prefect_server, smoke_stages, tmp_path_factory):
    """GRPO and Pilot-Commit compared in a runs directory of their own (stages copied in), for
    the tests below that change what is on disk, in MLflow or in the Prefect cache, in turn."""
    from flows.compare import compare_flow

    runs = copy_stages(smoke_stages, tmp_path_factory.mktemp("small") / "runs")
    overrides = [methods_override("grpo", "pilot_commit")]
    out = compare_flow(config_path=str(SMOKE_CONFIG), overrides=overrides, runs_dir=str(runs))
    return out, runs, overrides


def test_deleted_outputs_are_recomputed_not_returned_stale(small_compare):
    from flows.compare import compare_flow

    out, runs, overrides = small_compare
    grpo = next(r for r in out["runs"] if r["method"] == "grpo")
    final_policy = Path(grpo["run_dir"]) / "final_policy"
    shutil.rmtree(final_policy)
    again = compare_flow(config_path=str(SMOKE_CONFIG), overrides=overrides, runs_dir=str(runs))
    states = task_states(latest_flow_run_id("compare"))
    assert sorted(states["train"]) == ["Cached", "Completed"]
    assert (final_policy / "config.json").is_file()
    steps = [m.step for m in mlflow_client_of(out).get_metric_history(grpo["mlflow_run_id"], "loss/policy")]
    assert steps == sorted(set(steps))  # the recomputation resumed; no step logged twice
    assert again["report"]["summary"] == out["report"]["summary"]


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_cached_result_never_runs_and_is_recomputed(small_compare, tmp_path):
    """Someone with write access to the runs directory replaces the report stage's cached
    result with a Prefect record of the pickle serializer whose unpickling runs code. The next
    compare refuses it (pilotcommit/stages/result_storage.py): the payload never runs, the report
    is recomputed (not Cached) and the file is plain JSON again. Control: Prefect's own reader
    runs it."""
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    from flows.compare import compare_flow

    out, runs, overrides = small_compare
    marker = tmp_path / "MARKER"
    cached = sorted((runs / "prefect-results").glob("report-*"))
    assert cached
    for path in cached:
        path.write_bytes(ResultRecord(metadata=ResultRecordMetadata(serializer=PickleSerializer(), storage_key=str(path)),
                                      result=_RunsCodeWhenUnpickled(marker)).serialize())
    planted = cached[0].read_bytes()
    again = compare_flow(config_path=str(SMOKE_CONFIG), overrides=overrides, runs_dir=str(runs))
    assert not marker.exists()
    states = task_states(latest_flow_run_id("compare"))
    assert states["report"] == ["Completed"], states["report"]
    assert again["report"]["summary"] == out["report"]["summary"]
    assert all(json.loads(p.read_bytes())["metadata"]["serializer"]["type"] == "json" for p in cached if p.exists())
    ResultRecord.deserialize(planted)  # the control: what Prefect would have done with the file
    assert marker.exists()


def test_added_seed_reuses_trained_runs(small_compare):
    from flows.compare import compare_flow

    out, runs, overrides = small_compare
    wider = compare_flow(config_path=str(SMOKE_CONFIG), overrides=[*overrides, "seeds=[0,1]"], runs_dir=str(runs))
    assert wider["parent_run_id"] != out["parent_run_id"]
    client = mlflow_client_of(out)
    old = {r["method"]: r for r in out["runs"]}
    for run in wider["runs"]:
        if run["seed"] == 0:  # trained before: same run dir, MLflow data copied into the new child
            assert run["run_dir"] == old[run["method"]]["run_dir"]
            tags = client.get_run(run["mlflow_run_id"]).data.tags
            assert tags["pilotcommit.copied_from"] == old[run["method"]]["mlflow_run_id"]
            new_hist = [(m.step, m.value) for m in client.get_metric_history(run["mlflow_run_id"], "eval/average_accuracy")]
            old_hist = [(m.step, m.value) for m in client.get_metric_history(old[run["method"]]["mlflow_run_id"], "eval/average_accuracy")]
            assert sorted(new_hist) == sorted(old_hist)
    assert sorted((r["method"], r["seed"]) for r in wider["runs"]) == sorted(
        (m, s) for m in ("grpo", "pilot_commit") for s in (0, 1))
    assert set(wider["report"]["summary"]["methods"]["grpo"]["rollouts_to_target"]) == {"0", "1"}


def test_a_code_change_retrains_into_new_directories(small_compare, monkeypatch):
    """New code (another source hash) must not resume or reuse the runs of the old code."""
    from flows.compare import compare_flow
    from pilotcommit.tracking import provenance

    out, runs, overrides = small_compare
    monkeypatch.setattr(provenance, "source_hash", lambda *args: "0" * 16)
    provenance.code_version.cache_clear()
    try:
        changed = compare_flow(config_path=str(SMOKE_CONFIG), overrides=overrides, runs_dir=str(runs))
    finally:
        monkeypatch.undo()
        provenance.code_version.cache_clear()
    assert changed["parent_run_id"] != out["parent_run_id"]
    old_dirs = {r["run_dir"] for r in out["runs"]}
    assert not old_dirs & {r["run_dir"] for r in changed["runs"]}
    states = task_states(latest_flow_run_id("compare"))
    for stage in ("prepare-data", "initial-policy", "train"):
        assert set(states[stage]) == {"Completed"}, (stage, states[stage])
    client = mlflow_client_of(out)
    for run in changed["runs"]:
        assert "pilotcommit.copied_from" not in client.get_run(run["mlflow_run_id"]).data.tags


def test_sweep_as_subflows_with_artifacts_and_study_report(small_compare):
    """conf/sweep/smoke.yaml with GRPO and Pilot-Commit: two model sizes, one child run each
    under the sweep's parent; the model already trained by the compare is reused, not retrained;
    each cell's flow run and the sweep's have their comparison artifacts on the Prefect server;
    the study report; then a second sweep of GRPO and SPEED-RL reported with the first as one."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from flows.sweep import sweep_flow

    _, runs, _ = small_compare
    methods = ["grpo", "pilot_commit"]
    state = sweep_flow(sweep_config="conf/sweep/smoke.yaml", runs_dir=str(runs), methods=methods, parallel_runs=2,
                       return_state=True)
    out, flow_run_id = state.result(), state.state_details.flow_run_id
    client = mlflow_client_of(out)
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.tags["pilotcommit.kind"] == "sweep" and parent.info.status == "FINISHED"
    children = client.search_runs([out["experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{out['parent_run_id']}'")
    cells = sorted((r.data.tags["model"], r.data.tags["method"], r.data.tags["seed"]) for r in children)
    assert cells == sorted((m, k, "0") for m in ("tiny-h64-l1", "tiny-h64-l2") for k in methods)
    copied = [r for r in children if "pilotcommit.copied_from" in r.data.tags]
    assert sorted(r.data.tags["model"] for r in copied) == ["tiny-h64-l2"] * 2
    artifacts = {a.path for a in client.list_artifacts(out["parent_run_id"], "comparison")}
    assert artifacts == {"comparison/tiny-h64-l1", "comparison/tiny-h64-l2"}
    assert [a.path for a in client.list_artifacts(out["parent_run_id"], "sweep")] == ["sweep/scale_summary.csv"]
    assert "comparison/tiny-h64-l1/target_accuracy" in parent.data.metrics
    # the study report: per cell, with each cell's probe prediction beside it
    assert {a.path for a in client.list_artifacts(out["parent_run_id"], "probe")} == {
        "probe/tiny-h64-l1", "probe/tiny-h64-l2"}
    assert {a.path for a in client.list_artifacts(out["parent_run_id"], "study")} == {
        "study/study.md", "study/study.json", "study/speedup_vs_zero_variance.png"}
    study_md = Path(out["report"]["study"]["markdown"]).read_text()
    for cell in ("tiny-h64-l1", "tiny-h64-l2"):
        assert f"| {cell} | pilot_commit |" in study_md  # the predictor-check rows
    assert "| tiny-h64-l1 | " in study_md.split("### Rankings")[1]
    study_json = json.loads(Path(out["report"]["study"]["json"]).read_text())
    assert [c["cell"] for c in study_json] == ["tiny-h64-l1", "tiny-h64-l2"]
    for c in study_json:
        assert set(c["predicted_rates"]) == set(c["measured_rates"]) == set(methods)
        assert 0.0 <= c["zero_variance"]["value"] <= 1.0

    # what the Prefect UI shows: the sweep's comparison artifact, one per cell (subflow run)
    artifacts = flow_artifacts(flow_run_id)
    assert {"sweep-sweep-smoke", "sweep-sweep-smoke-mlflow-run", "sweep-sweep-smoke-mlflow-chart"} <= set(artifacts)
    sweep_md = artifacts["sweep-sweep-smoke"].data
    for model in out["models"]:
        assert f"# sweep sweep-smoke: {model}" in sweep_md
    assert sweep_md.count("| pilot_commit |") == 2 * len(out["models"])  # summary and per-seed rows per model
    with get_client(sync_client=True) as prefect:
        cell_runs = prefect.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
    keys = set()
    for cell in cell_runs:
        cell_artifacts = flow_artifacts(cell.id)
        keys |= set(cell_artifacts)
        (md,) = [a for k, a in cell_artifacts.items() if not k.endswith(("-mlflow-run", "-mlflow-chart"))]
        assert set(methods) <= set(table_rows(md.data))
    assert keys == {f"sweep-sweep-smoke-cell-{m}{suffix}" for m in out["models"]
                    for suffix in ("", "-mlflow-run", "-mlflow-chart")}

    # a later sweep of GRPO and SPEED-RL only (`pilotcommit sweep --methods`): its GRPO runs are
    # the cached ones, copied; `pilotcommit study --run-id A --run-id B` reports both sweeps as one
    some = sweep_flow(sweep_config="conf/sweep/smoke.yaml", runs_dir=str(runs), methods=["grpo", "speed_rl"])
    assert some["parent_run_id"] != out["parent_run_id"]
    children = client.search_runs([out["experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{some['parent_run_id']}'")
    assert sorted(r.data.tags["method"] for r in children) == ["grpo", "grpo", "speed_rl", "speed_rl"]
    done = subprocess.run(
        [sys.executable, "-m", "pilotcommit.cli", "study", "-c", "conf/sweep/smoke.yaml", "--runs-dir", str(runs),
         "--run-id", out["parent_run_id"], "--run-id", some["parent_run_id"], "--resamples", "100"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "The runs of 2 sweeps" in done.stdout and "2 runs appear in more than one" in done.stdout
    merged = json.loads((runs / "sweep-smoke" / "reports" / f"{out['parent_run_id']}+{some['parent_run_id']}"
                         / "study-merged" / "study.json").read_text())
    for c in merged:
        assert c["methods"] == ["grpo", "pilot_commit", "speed_rl"]
        assert set(c["predicted_rates"]) == set(c["measured_rates"]) == set(c["methods"])
        assert "speed_rl" in c["speedups"]["gain75"]
    bad = subprocess.run(
        [sys.executable, "-m", "pilotcommit.cli", "study", "-c", "conf/sweep/smoke.yaml", "--runs-dir", str(runs),
         "--run-id", out["parent_run_id"], "--run-id", "0123456789abcdef"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode != 0 and "--run-id" in bad.stderr and "Traceback" not in bad.stderr


def test_nightly_passes_unchanged_and_fails_on_injected_regression(small_compare):
    """Accept the comparison as baseline; a fresh rerun (refresh=True retrains every stage)
    passes; a rerun with a weaker warm start (40 instead of 80 steps: the injected regression)
    fails with a readable per-method report, recorded on its parent run and shown as the flow
    run's verdict artifact beside its comparison."""
    from flows.nightly import RegressionDetected, nightly_regression_flow
    from pilotcommit import tracking

    out, runs, overrides = small_compare
    client = mlflow_client_of(out)
    tracking.accept_baseline(client, out["parent_run_id"], note="test baseline")
    # the baseline carries the machine fingerprint its training runs recorded
    baseline_tags = client.get_run(out["parent_run_id"]).data.tags
    assert baseline_tags["pilotcommit.fingerprint.torch"] == torch.__version__
    assert baseline_tags["pilotcommit.fingerprint.cpu_model"] and baseline_tags["pilotcommit.fingerprint.cpu_id"]
    assert baseline_tags[tracking.TAG_FINGERPRINT_KEY]

    passed = nightly_regression_flow(config_path=str(SMOKE_CONFIG), overrides=overrides, runs_dir=str(runs),
                                     accuracy_drop=0.01)
    assert passed["passed"] and passed["baseline_run_id"] == out["parent_run_id"]
    assert "WARNING" not in passed["report"]  # the same machine: compared like with like
    assert client.get_run(passed["parent_run_id"]).data.tags["pilotcommit.regression_same_hardware"] == "true"
    assert passed["parent_run_id"] != out["parent_run_id"]  # a real rerun, not the cached runs
    assert "nightly regression: PASSED" in passed["report"]
    assert client.get_run(passed["parent_run_id"]).data.tags["pilotcommit.regression"] == "passed"

    state = nightly_regression_flow(config_path=str(SMOKE_CONFIG), overrides=[*overrides, "model.warm_start.steps=40"],
                                    runs_dir=str(runs), accuracy_drop=0.01, return_state=True)
    with pytest.raises(RegressionDetected) as info:
        state.result()
    report = str(info.value)
    assert report.startswith("nightly regression: FAILED") and "REGRESSED" in report
    assert "grpo: accuracy" in report and f"baseline run {out['parent_run_id']}" in report
    failed_runs = client.search_runs([out["experiment_id"]], filter_string="tags.`pilotcommit.regression` = 'failed'")
    assert len(failed_runs) == 1
    assert [a.path for a in client.list_artifacts(failed_runs[0].info.run_id, "nightly")] == ["nightly/regression.txt"]
    # The accepted baseline did not move.
    assert tracking.find_accepted_baseline(client, out["experiment_id"], "smoke").info.run_id == out["parent_run_id"]
    # the Prefect UI: the verdict (the whole per-method report) beside the rerun's comparison
    artifacts = flow_artifacts(state.state_details.flow_run_id)
    assert {"nightly-smoke-verdict", "nightly-smoke", "nightly-smoke-mlflow-run", "nightly-smoke-mlflow-chart"} <= set(artifacts)
    verdict = artifacts["nightly-smoke-verdict"].data
    assert verdict.startswith("# Nightly regression: FAILED") and report.strip() in verdict
    assert f"/runs/{out['parent_run_id']}" in verdict  # the accepted baseline's link
    assert {"grpo", "pilot_commit"} <= set(table_rows(artifacts["nightly-smoke"].data))
    logs = "\n".join(flow_logs(state.state_details.flow_run_id))
    assert "nightly regression: " in logs and "grpo: accuracy" in logs


