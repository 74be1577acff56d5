"""Flows that fail and recover, each in a runs directory of its own (the smoke config's data and
initial policy copied in), against the session's real Prefect server and a real MLflow store.

Checked: a failed sweep cell does not stop the others; a failed training attempt retried by
Prefect resumes from its checkpoint (the same result as an uninterrupted run), also after a
refresh, where the retry continues the new run and never hands back the old one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pilotcommit.runner.progress import StepProgress, progress_sink
from tests.conftest import SMOKE_CONFIG
from tests.integration.conftest import (
    copy_stages,
    latest_flow_run_id,
    methods_override,
    mlflow_client_of,
    task_states,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_failed_sweep_cell_does_not_stop_the_others(prefect_server, fresh_runs, tmp_path):
    """A cell whose training fails (here: 8 training prompts, fewer than Pilot-Commit's round of
    12 needs) is reported as failed, the other cell still runs and is reported on the parent run,
    and the sweep fails at the end naming the failed cell."""
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
        sweep_flow(sweep_config=str(sweep_file), runs_dir=str(fresh_runs))
    assert "fed" not in str(info.value).split("cells failed:")[1].split("(")[0]
    client = tracking.mlflow_client(f"sqlite:///{fresh_runs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweep-starved")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`pilotcommit.kind` = 'sweep'")
    assert parent.info.status == "FAILED"
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    status = {(r.data.tags["cell"], r.data.tags["method"]): r.info.status for r in children}
    assert status[("fed", "grpo")] == status[("fed", "pilot_commit")] == "FINISHED"
    assert status[("starved", "pilot_commit")] == "FAILED"
    assert "comparison/fed" in {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert tracking.TAG_KIND in parent.data.tags


# --------------------------------------------------------------------------- Prefect retries


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


def test_prefect_retry_resumes_from_checkpoint(prefect_server, fresh_runs, tmp_path, smoke_stages):
    """The first attempt of the PC training task fails after step 2 (an exception raised in
    the real task through the progress hook, after the step-2 checkpoint); Prefect retries it.
    The retry resumes: the only step it trains is step 3; MLflow holds every training metric at
    steps 1, 2, 3 exactly once (the first attempt's steps up to the checkpoint are not logged
    again); the result equals an uninterrupted run."""
    from flows.compare import compare_flow

    overrides = ["budget.max_steps=3", methods_override("grpo", "pilot_commit")]
    crash = _CrashOnce("pilot_commit", step=2)
    with progress_sink(crash):  # two runs at once: the failure terminates the training child
        out = compare_flow(config_path=str(SMOKE_CONFIG), overrides=overrides, runs_dir=str(fresh_runs),
                           parallel_runs=2)
    assert crash.failed
    # Resumed past the step-2 checkpoint; a restart would report steps 1 and 2 again. (The
    # failure terminates the training child; if it finished step 3 before the signal landed,
    # the retry trains nothing.)
    assert crash.after_failure in ([3], []), crash.after_failure
    states = task_states(latest_flow_run_id("compare"))
    assert sorted(states["train"]) == ["Completed"] * 2
    # the same Pilot-Commit run uninterrupted (alone: a run does not depend on the others)
    reference = compare_flow(config_path=str(SMOKE_CONFIG), runs_dir=str(copy_stages(smoke_stages, tmp_path / "ref")),
                             overrides=["budget.max_steps=3", methods_override("pilot_commit"), "target.accuracy=0.5"])

    client = mlflow_client_of(out)
    pc = next(r for r in out["runs"] if r["method"] == "pilot_commit")
    pc_ref = next(r for r in reference["runs"] if r["method"] == "pilot_commit")
    steps = _metric_steps(client, pc["mlflow_run_id"])
    for key in ("loss/policy", "rollouts/cumulative", "reward/mean", "grad/norm"):
        assert steps[key] == [1, 2, 3], (key, steps[key])
    assert steps["eval/average_accuracy"] == [0, 1, 2, 3]
    assert steps == _metric_steps(mlflow_client_of(reference), pc_ref["mlflow_run_id"])
    assert pc["final_metrics"] == pc_ref["final_metrics"]
    result = json.loads((Path(pc["run_dir"]) / "result.json").read_text())
    assert result["steps"] == 3


def test_refresh_whose_first_attempt_fails_continues_the_new_run(prefect_server, fresh_runs):
    """A finished comparison is refreshed, and the refresh's first PC attempt fails after step 1.
    The retry must continue the *new* run (from its step-1 checkpoint: it trains steps 2 and 3)
    and never hand back the previous run's result: the new MLflow run holds every step, its
    result.json and final policy are the new run's."""
    from flows.compare import compare_flow

    runs_dir = str(fresh_runs)
    overrides = ["budget.max_steps=3", methods_override("pilot_commit"), "target.accuracy=0.5"]
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
    client = mlflow_client_of(new)
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
