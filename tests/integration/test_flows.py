"""The flows (compare, sweep, nightly) through a real (ephemeral) Prefect with a real MLflow SQLite store.

Smoke config (conf/experiment/smoke.yaml): seconds per run. Checked: the parent run, one
child per method with the tags and metric names of DESIGN.md (by_rollouts against cumulative
rollouts), artifacts and dataset inputs; a second identical compare served from the Prefect
cache; deleted outputs recomputed instead of returned stale; an added seed reusing the trained
runs; a failed training attempt retried by Prefect resuming from its checkpoint without
duplicate MLflow steps and with the same result as an uninterrupted run.
Prefect's home and database live in a temporary directory (never ~/.prefect).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as safetensors_load

from pilotcommit.config import load_experiment_config
from pilotcommit.runner.progress import StepProgress, progress_sink
from tests.conftest import SMOKE_CONFIG

SMOKE_METHODS = sorted(load_experiment_config(SMOKE_CONFIG).methods)  # all five allocation methods

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DESIGN_METRICS = [
    "rollouts/sampled", "rollouts/trained", "rollouts/cumulative", "tokens/generated_cumulative",
    "alloc/rounds", "reward/mean", "reward/zero_variance_groups", "loss/policy", "loss/clip_fraction",
    "loss/approx_kl", "grad/norm", "time/generate_s", "time/learn_s", "throughput/generated_tokens_per_s",
    "eval/average_accuracy", "eval/arith/accuracy",
]


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_LOGGING_LEVEL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    settings = {PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: home / "storage",
                PREFECT_SERVER_ANALYTICS_ENABLED: False, PREFECT_LOGGING_LEVEL: "WARNING"}
    # The harness's database and server are temporary too (its own temp dir).
    with temporary_settings(updates=settings), prefect_test_harness(server_startup_timeout=240):
        yield home


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def first_compare(prefect_home, runs_dir):
    from flows.compare import compare_flow

    started = time.perf_counter()
    # two runs at once, each in its own process (the default on a 2-core machine, said explicitly
    # so the test means the same on any machine)
    out = compare_flow(config_path=str(SMOKE_CONFIG), runs_dir=str(runs_dir), parallel_runs=2)
    return out, time.perf_counter() - started


def _client(out):
    from pilotcommit import tracking

    return tracking.mlflow_client(out["tracking_uri"])


def _task_states(flow_run_id: str) -> dict[str, list[str]]:
    """{task name prefix: [state names]} of a flow run's task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    # Task-run records reach the API asynchronously (events): wait until every state is final.
    deadline = time.monotonic() + 60
    previous = -1
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        settled = all(r.state is not None and r.state.is_final() for r in runs)
        if runs and settled and len(runs) == previous:  # the same count twice: all arrived
            break
        previous = len(runs)
        assert time.monotonic() < deadline, f"task runs of {flow_run_id} not final: {runs}"
        time.sleep(1)
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)
    return states


def test_parent_children_tags_metrics_artifacts(first_compare, runs_dir):
    out, _ = first_compare
    client = _client(out)
    assert out["tracking_uri"] == f"sqlite:///{runs_dir / 'mlflow.db'}"
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.tags["pilotcommit.kind"] == "comparison" and parent.info.status == "FINISHED"
    children = client.search_runs([out["experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{out['parent_run_id']}'")
    assert sorted(r.data.tags["method"] for r in children) == SMOKE_METHODS
    for child in children:
        tags = child.data.tags
        for key in ("method", "model", "seed", "config_hash", "git_sha", "prefect_flow_run_id"):
            assert tags.get(key), f"{tags['method']}: tag {key} missing"
        assert tags["model"] == "tiny-h64-l2" and tags["seed"] == "0"
        for name in DESIGN_METRICS:
            assert name in child.data.metrics, f"{tags['method']}: metric {name} missing"
        # Evaluations again against the budget: step = cumulative rollouts at that evaluation.
        cumulative = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "rollouts/cumulative")}
        by_rollouts = sorted(m.step for m in client.get_metric_history(child.info.run_id, "by_rollouts/eval/average_accuracy"))
        assert by_rollouts == [0] + [int(cumulative[s]) for s in sorted(cumulative)]
        assert child.data.params["method"] == tags["method"] and "learner.lr" in child.data.params
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config", "prompt_stats", "run"} <= artifacts
        figures = [a.path for a in client.list_artifacts(child.info.run_id, "prompt_stats/eval")]
        assert any(p.endswith(".png") for p in figures) and any(p.endswith(".csv") for p in figures)
        contexts = {d.dataset.name: {t.value for t in d.tags} for d in child.inputs.dataset_inputs}
        assert contexts == {"train": {"training"}, "arith": {"evaluation"}}
    comparison = {a.path for a in client.list_artifacts(out["parent_run_id"], "comparison")}
    assert comparison == {"comparison/accuracy_vs_rollouts.png", "comparison/summary.csv", "comparison/summary.json"}
    assert "comparison/target_accuracy" in parent.data.metrics
    assert set(out["report"]["summary"]["methods"]) == set(SMOKE_METHODS)


def test_second_identical_compare_is_a_cache_hit(first_compare, runs_dir):
    from flows.compare import compare_flow

    out, first_s = first_compare
    result_files = {p: p.stat().st_mtime_ns for p in runs_dir.glob("smoke/train/*/result.json")}
    started = time.perf_counter()
    again = compare_flow(config_path=str(SMOKE_CONFIG), runs_dir=str(runs_dir))
    second_s = time.perf_counter() - started
    print(f"compare on smoke: first {first_s:.1f} s, second (cached) {second_s:.1f} s")
    assert again["parent_run_id"] == out["parent_run_id"]
    assert [r["mlflow_run_id"] for r in again["runs"]] == [r["mlflow_run_id"] for r in out["runs"]]
    assert again["report"]["summary"] == out["report"]["summary"]
    second_states = _task_states(_latest_flow_run_id("compare"))
    for stage in ("prepare-data", "initial-policy", "train", "report"):
        assert set(second_states[stage]) == {"Cached"}, (stage, second_states[stage])
    assert {p: p.stat().st_mtime_ns for p in result_files} == result_files  # nothing rewritten
    # The cache hit is shown by the task states and untouched files above; how long it takes is
    # a measurement (printed here, and in docs/benchmarks.md), not a pass/fail condition.


def _latest_flow_run_id(flow_name: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)
    return str(runs[0].id)


def test_deleted_outputs_are_recomputed_not_returned_stale(first_compare, runs_dir):
    from flows.compare import compare_flow

    out, _ = first_compare
    grpo = next(r for r in out["runs"] if r["method"] == "grpo")
    final_policy = Path(grpo["run_dir"]) / "final_policy"
    shutil.rmtree(final_policy)
    again = compare_flow(config_path=str(SMOKE_CONFIG), runs_dir=str(runs_dir))
    states = _task_states(_latest_flow_run_id("compare"))
    assert sorted(states["train"]) == ["Cached"] * (len(SMOKE_METHODS) - 1) + ["Completed"]
    assert (final_policy / "config.json").is_file()
    client = _client(out)
    steps = [m.step for m in client.get_metric_history(grpo["mlflow_run_id"], "loss/policy")]
    assert steps == sorted(set(steps))  # the recomputation resumed; no step logged twice
    assert again["report"]["summary"] == out["report"]["summary"]


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_cached_result_never_runs_and_is_recomputed(first_compare, runs_dir, tmp_path):
    """Someone with write access to the runs directory replaces the report stage's cached
    result with a Prefect record of the pickle serializer whose unpickling runs code. The next
    compare refuses it (flows/results.py): the payload never runs, the report is recomputed
    (not Cached) and the file is plain JSON again. Control: Prefect's own reader runs it."""
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    from flows.compare import compare_flow

    out, _ = first_compare
    marker = tmp_path / "MARKER"
    cached = sorted((runs_dir / "prefect-results").glob("report-*"))
    assert cached
    for path in cached:
        path.write_bytes(ResultRecord(metadata=ResultRecordMetadata(serializer=PickleSerializer(), storage_key=str(path)),
                                      result=_RunsCodeWhenUnpickled(marker)).serialize())
    planted = cached[0].read_bytes()
    again = compare_flow(config_path=str(SMOKE_CONFIG), runs_dir=str(runs_dir))
    assert not marker.exists()
    states = _task_states(_latest_flow_run_id("compare"))
    assert states["report"] == ["Completed"], states["report"]
    assert again["report"]["summary"] == out["report"]["summary"]
    assert all(json.loads(p.read_bytes())["metadata"]["serializer"]["type"] == "json" for p in cached
               if p.exists())
    ResultRecord.deserialize(planted)  # the control: what Prefect would have done with the file
    assert marker.exists()


def test_added_seed_reuses_trained_runs(first_compare, runs_dir):
    from flows.compare import compare_flow

    out, _ = first_compare
    wider = compare_flow(config_path=str(SMOKE_CONFIG), overrides=["seeds=[0,1]"], runs_dir=str(runs_dir))
    assert wider["parent_run_id"] != out["parent_run_id"]
    client = _client(out)
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
        (m, s) for m in SMOKE_METHODS for s in (0, 1))
    summary = wider["report"]["summary"]["methods"]["grpo"]["rollouts_to_target"]
    assert set(summary) == {"0", "1"}


def test_runs_in_child_processes_equal_runs_in_the_flow_process(first_compare, tmp_path):
    """The same comparison trained one run after another in the flow's own process gives every
    run the same final metrics and weights as two at a time in child processes."""
    from flows.compare import compare_flow

    parallel, _ = first_compare
    sequential = compare_flow(config_path=str(SMOKE_CONFIG), runs_dir=str(tmp_path / "seq"), parallel_runs=1)
    by_cell = {(r["method"], r["seed"]): r for r in sequential["runs"]}
    assert len(by_cell) == len(parallel["runs"]) == len(SMOKE_METHODS)
    for run in parallel["runs"]:
        other = by_cell[(run["method"], run["seed"])]
        assert run["final_metrics"] == other["final_metrics"], run["method"]
        weights = [
            safetensors_load(Path(r["run_dir"]) / "final_policy" / "model.safetensors") for r in (run, other)
        ]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), run["method"]


class _CrashOnce:
    """A progress sink that raises once, in the real train task, when ``method`` reports
    ``step`` (the checkpoint of that step is already written), and records every step reported
    after that failure: what the Prefect retry trained."""

    def __init__(self, method: str, step: int) -> None:
        self.method, self.step = method, step
        self.failed = False
        self.after_failure: list[int] = []

    def __call__(self, event) -> None:
        # only the end-of-step event: the per-evaluation report comes before the step's checkpoint
        if not isinstance(event, StepProgress) or event.run.method != self.method:
            return
        if self.failed:
            self.after_failure.append(event.step)
        elif event.step == self.step:
            self.failed = True
            raise RuntimeError(f"injected failure after step {self.step}")


def _metric_steps(client, run_id: str) -> dict[str, list[int]]:
    """{metric key: every step MLflow holds for it, duplicates included} of one run."""
    keys = client.get_run(run_id).data.metrics
    return {key: sorted(m.step for m in client.get_metric_history(run_id, key)) for key in keys}


def test_prefect_retry_resumes_from_checkpoint(prefect_home, tmp_path):
    """The first attempt of the PC training task fails after step 2 (an exception raised in
    the real task through the progress hook, after the step-2 checkpoint); Prefect retries it.
    The retry resumes: the only step it trains is step 3; MLflow holds every training metric at
    steps 1, 2, 3 exactly once (the first attempt's steps up to the checkpoint are not logged
    again); the result equals an uninterrupted run."""
    from flows.compare import compare_flow

    overrides = ["budget.max_steps=3"]
    crash = _CrashOnce("pilot_commit", step=2)
    with progress_sink(crash):
        out = compare_flow(config_path=str(SMOKE_CONFIG), overrides=overrides, runs_dir=str(tmp_path / "a"))
    assert crash.failed
    # Resumed past the step-2 checkpoint; a restart would report steps 1 and 2 again. (The
    # failure terminates the training child; if it finished step 3 before the signal landed,
    # the retry trains nothing.)
    assert crash.after_failure in ([3], []), crash.after_failure
    states = _task_states(_latest_flow_run_id("compare"))
    assert sorted(states["train"]) == ["Completed"] * len(SMOKE_METHODS)
    reference = compare_flow(config_path=str(SMOKE_CONFIG), overrides=overrides, runs_dir=str(tmp_path / "b"))

    client = _client(out)
    pc = next(r for r in out["runs"] if r["method"] == "pilot_commit")
    pc_ref = next(r for r in reference["runs"] if r["method"] == "pilot_commit")
    steps = _metric_steps(client, pc["mlflow_run_id"])
    for key in ("loss/policy", "rollouts/cumulative", "reward/mean", "grad/norm"):
        assert steps[key] == [1, 2, 3], (key, steps[key])
    assert steps["eval/average_accuracy"] == [0, 1, 2, 3]
    assert steps == _metric_steps(_client(reference), pc_ref["mlflow_run_id"])
    assert pc["final_metrics"] == pc_ref["final_metrics"]
    result = json.loads((Path(pc["run_dir"]) / "result.json").read_text())
    assert result["steps"] == 3


def test_refresh_whose_first_attempt_fails_continues_the_new_run(prefect_home, tmp_path):
    """A finished comparison is refreshed, and the refresh's first PC attempt fails after step 1.
    The retry must continue the *new* run (from its step-1 checkpoint: it trains steps 2 and 3)
    and never hand back the previous run's result: the new MLflow run holds every step, its
    result.json and final policy are the new run's."""
    from flows.compare import compare_flow

    runs_dir = str(tmp_path / "runs")
    overrides = ["budget.max_steps=3"]
    old = compare_flow(config_path=str(SMOKE_CONFIG), overrides=overrides, runs_dir=runs_dir)
    old_pc = next(r for r in old["runs"] if r["method"] == "pilot_commit")
    old_result = Path(old_pc["run_dir"]) / "result.json"
    old_mtime = old_result.stat().st_mtime_ns

    crash = _CrashOnce("pilot_commit", step=1)
    with progress_sink(crash):
        new = compare_flow(config_path=str(SMOKE_CONFIG), overrides=overrides, runs_dir=runs_dir, refresh=True)
    assert crash.failed
    # the retry continued the new attempt from its checkpoint (a later one if the training child
    # got further before it was terminated), never from scratch
    assert crash.after_failure in ([2, 3], [3], []), crash.after_failure
    pc = next(r for r in new["runs"] if r["method"] == "pilot_commit")
    assert pc["mlflow_run_id"] != old_pc["mlflow_run_id"] and pc["run_dir"] == old_pc["run_dir"]
    client = _client(new)
    run = client.get_run(pc["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "pilotcommit.copied_from" not in run.data.tags
    steps = _metric_steps(client, pc["mlflow_run_id"])
    for key in ("loss/policy", "rollouts/cumulative", "reward/mean"):
        assert steps[key] == [1, 2, 3], (key, steps[key])
    assert steps["eval/average_accuracy"] == [0, 1, 2, 3]
    tracked = json.loads((Path(pc["run_dir"]) / "tracking.json").read_text())
    assert tracked["mlflow_run_id"] == pc["mlflow_run_id"]
    assert old_result.stat().st_mtime_ns != old_mtime  # written again by the new run
    assert json.loads(old_result.read_text())["steps"] == 3
    assert pc["final_metrics"] == old_pc["final_metrics"]  # same config and seed: same numbers


def test_sweep_as_subflows(first_compare, runs_dir):
    """conf/sweep/smoke.yaml: two model sizes x three methods, one child run each under the
    sweep's parent; the model already trained by the compare is reused, not retrained."""
    from flows.sweep import sweep_flow

    out = sweep_flow(sweep_config="conf/sweep/smoke.yaml", runs_dir=str(runs_dir))
    client = _client(out)
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.tags["pilotcommit.kind"] == "sweep" and parent.info.status == "FINISHED"
    children = client.search_runs([out["experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{out['parent_run_id']}'")
    cells = sorted((r.data.tags["model"], r.data.tags["method"], r.data.tags["seed"]) for r in children)
    assert cells == sorted((m, k, "0") for m in ("tiny-h64-l1", "tiny-h64-l2") for k in ("grpo", "dapo", "pilot_commit"))
    copied = [r for r in children if "pilotcommit.copied_from" in r.data.tags]
    assert sorted(r.data.tags["model"] for r in copied) == ["tiny-h64-l2"] * 3
    artifacts = {a.path for a in client.list_artifacts(out["parent_run_id"], "comparison")}
    assert artifacts == {"comparison/tiny-h64-l1", "comparison/tiny-h64-l2"}
    assert [a.path for a in client.list_artifacts(out["parent_run_id"], "sweep")] == ["sweep/scale_summary.csv"]
    assert "comparison/tiny-h64-l1/target_accuracy" in parent.data.metrics
    # the study report (pilotcommit.study): per cell, with each cell's probe prediction beside it
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
        assert set(c["predicted_rates"]) == {"grpo", "dapo", "pilot_commit"}
        assert set(c["measured_rates"]) == {"grpo", "dapo", "pilot_commit"}
        assert 0.0 <= c["zero_variance"]["value"] <= 1.0

    # a later sweep of GRPO and SPEED-RL only (`pilotcommit sweep --methods`): its GRPO runs are
    # the cached ones, copied; `pilotcommit study --run-id A --run-id B` reports both sweeps as one
    some = sweep_flow(sweep_config="conf/sweep/smoke.yaml", runs_dir=str(runs_dir), methods=["grpo", "speed_rl"])
    assert some["parent_run_id"] != out["parent_run_id"]
    children = client.search_runs([out["experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{some['parent_run_id']}'")
    assert sorted(r.data.tags["method"] for r in children) == ["grpo", "grpo", "speed_rl", "speed_rl"]
    done = subprocess.run(
        [sys.executable, "-m", "pilotcommit.cli", "study", "-c", "conf/sweep/smoke.yaml", "--runs-dir", str(runs_dir),
         "--run-id", out["parent_run_id"], "--run-id", some["parent_run_id"], "--resamples", "100"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "The runs of 2 sweeps" in done.stdout and "2 runs appear in more than one" in done.stdout
    merged = json.loads((runs_dir / "sweep-smoke" / "reports" / f"{out['parent_run_id']}+{some['parent_run_id']}"
                         / "study-merged" / "study.json").read_text())
    for c in merged:
        assert c["methods"] == ["dapo", "grpo", "pilot_commit", "speed_rl"]
        assert set(c["predicted_rates"]) == set(c["measured_rates"]) == set(c["methods"])
        assert "speed_rl" in c["speedups"]["gain75"]
    bad = subprocess.run(
        [sys.executable, "-m", "pilotcommit.cli", "study", "-c", "conf/sweep/smoke.yaml", "--runs-dir", str(runs_dir),
         "--run-id", out["parent_run_id"], "--run-id", "0123456789abcdef"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode != 0 and "--run-id" in bad.stderr and "Traceback" not in bad.stderr


def test_nightly_passes_unchanged_and_fails_on_injected_regression(first_compare, runs_dir):
    """Accept the first comparison as baseline; a fresh rerun (refresh=True retrains every
    stage) passes; a rerun with a weaker warm start (40 instead of 80 steps: the injected
    regression) fails with a readable per-method report, recorded on its parent run."""
    from flows.nightly import RegressionDetected, nightly_regression_flow
    from pilotcommit import tracking

    out, _ = first_compare
    client = _client(out)
    tracking.accept_baseline(client, out["parent_run_id"], note="test baseline")
    # the baseline carries the machine fingerprint its training runs recorded
    baseline_tags = client.get_run(out["parent_run_id"]).data.tags
    assert baseline_tags["pilotcommit.fingerprint.torch"] == torch.__version__
    assert baseline_tags["pilotcommit.fingerprint.cpu_model"]
    assert baseline_tags[tracking.TAG_FINGERPRINT_KEY]

    passed = nightly_regression_flow(config_path=str(SMOKE_CONFIG), runs_dir=str(runs_dir), accuracy_drop=0.01)
    assert passed["passed"] and passed["baseline_run_id"] == out["parent_run_id"]
    assert "WARNING" not in passed["report"]  # the same machine: compared like with like
    assert client.get_run(passed["parent_run_id"]).data.tags["pilotcommit.regression_same_hardware"] == "true"
    assert passed["parent_run_id"] != out["parent_run_id"]  # a real rerun, not the cached runs
    assert "nightly regression: PASSED" in passed["report"]
    assert client.get_run(passed["parent_run_id"]).data.tags["pilotcommit.regression"] == "passed"

    with pytest.raises(RegressionDetected) as info:
        nightly_regression_flow(config_path=str(SMOKE_CONFIG), overrides=["model.warm_start.steps=40"],
                                runs_dir=str(runs_dir), accuracy_drop=0.01)
    report = str(info.value)
    assert report.startswith("nightly regression: FAILED") and "REGRESSED" in report
    assert "grpo: accuracy" in report and f"baseline run {out['parent_run_id']}" in report
    failed_runs = client.search_runs([out["experiment_id"]], filter_string="tags.`pilotcommit.regression` = 'failed'")
    assert len(failed_runs) == 1
    texts = [a.path for a in client.list_artifacts(failed_runs[0].info.run_id, "nightly")]
    assert texts == ["nightly/regression.txt"]
    # The accepted baseline did not move.
    assert tracking.find_accepted_baseline(client, out["experiment_id"], "smoke").info.run_id == out["parent_run_id"]


def test_evaluate_flow_on_a_trained_checkpoint(first_compare, runs_dir):
    from flows.evaluate import evaluate_flow

    out, _ = first_compare
    grpo = next(r for r in out["runs"] if r["method"] == "grpo")
    checkpoint = str(Path(grpo["run_dir"]) / "final_policy")
    first = evaluate_flow(checkpoint=checkpoint, config_path=str(SMOKE_CONFIG), runs_dir=str(runs_dir))
    # The same seed and checkpoint as the run's own last evaluation: the same numbers.
    assert first["metrics"]["eval/average_accuracy"] == grpo["final_metrics"]["eval/average_accuracy"]
    run = _client(out).get_run(first["mlflow_run_id"])
    assert run.data.tags["pilotcommit.kind"] == "evaluation"
    assert run.data.metrics["eval/average_accuracy"] == first["metrics"]["eval/average_accuracy"]
    again = evaluate_flow(checkpoint=checkpoint, config_path=str(SMOKE_CONFIG), runs_dir=str(runs_dir))
    assert again == first
    assert set(_task_states(_latest_flow_run_id("evaluate"))["evaluate"]) == {"Cached"}


def test_a_code_change_retrains_into_new_directories(first_compare, runs_dir, monkeypatch):
    """New code (another source hash) must not resume or reuse the runs of the old code."""
    from flows.compare import compare_flow
    from pilotcommit.tracking import provenance

    out, _ = first_compare
    monkeypatch.setattr(provenance, "source_hash", lambda *args: "0" * 16)
    provenance.code_version.cache_clear()
    try:
        changed = compare_flow(config_path=str(SMOKE_CONFIG), runs_dir=str(runs_dir))
    finally:
        monkeypatch.undo()
        provenance.code_version.cache_clear()
    assert changed["parent_run_id"] != out["parent_run_id"]
    old_dirs = {r["run_dir"] for r in out["runs"]}
    assert not old_dirs & {r["run_dir"] for r in changed["runs"]}
    states = _task_states(_latest_flow_run_id("compare"))
    for stage in ("prepare-data", "initial-policy", "train"):
        assert set(states[stage]) == {"Completed"}, (stage, states[stage])
    client = _client(out)
    for run in changed["runs"]:
        assert "pilotcommit.copied_from" not in client.get_run(run["mlflow_run_id"]).data.tags


def test_a_failed_sweep_cell_does_not_stop_the_others(first_compare, runs_dir, tmp_path):
    """A cell whose training fails (here: 8 training prompts, fewer than Pilot-Commit's round of
    12 needs) is reported as failed, the other cell still runs and is reported on the parent run,
    and the sweep fails at the end naming the failed cell."""
    import yaml

    from flows.sweep import sweep_flow
    from pilotcommit import tracking

    smoke = yaml.safe_load(SMOKE_CONFIG.read_text())
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "sweep-starved", "experiment": "smoke", "seeds": [0], "methods": ["grpo", "pilot_commit"],
        "models": [
            {"model": smoke["model"], "label": "starved",
             "overrides": ["train_mix={level_shares: {0: 1.0}, prompts: 8}", "probe.prompts=0"]},
            {"model": smoke["model"], "label": "fed", "overrides": ["probe.prompts=0"]},
        ]}))
    with pytest.raises(Exception, match="cells failed: .*starved") as info:
        sweep_flow(sweep_config=str(sweep_file), runs_dir=str(runs_dir))
    assert "fed" not in str(info.value).split("cells failed:")[1].split("(")[0]
    out, _ = first_compare
    client = _client(out)
    experiment = client.get_experiment_by_name("sweep-starved")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`pilotcommit.kind` = 'sweep'")
    assert parent.info.status == "FAILED"
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    status = {(r.data.tags["cell"], r.data.tags["method"]): r.info.status for r in children}
    assert status[("fed", "grpo")] == status[("fed", "pilot_commit")] == "FINISHED"
    assert status[("starved", "pilot_commit")] == "FAILED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert "comparison/fed" in artifacts
    assert tracking.TAG_KIND in parent.data.tags
