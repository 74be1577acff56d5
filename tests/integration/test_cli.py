"""The ``pilotcommit`` command as a user runs it.

Real subprocesses where the process boundary is the point (compare, train), against the
session's Prefect server and a SQLite MLflow store under a temporary directory; the commands
that only read (report, accept, study) and every error case in this process, through typer's
runner. Checked: config errors and an unreachable tracking server end with a clean message and
exit codes 2 / 3 before any compute; ``compare`` prints the prediction, the comparison tables
and the Prefect server it used, and a second identical ``compare`` is served from the cache
(nothing retrained); ``report``, ``accept`` and ``train`` work on what ``compare`` left.
"""

from __future__ import annotations

import re
import time

import pytest
from typer.testing import CliRunner

from pilotcommit import services
from pilotcommit.cli import app
from tests.conftest import SMOKE_CONFIG
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration


def invoke(args: list, **env: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "160", **env})


def test_config_error_exits_2_before_compute(tmp_path):
    runs = tmp_path / "runs"
    done = invoke(["compare", "-c", SMOKE_CONFIG, "--runs-dir", runs, "--set", "learner.lr=-1", "--set", "budget.typo=3"])
    assert done.exit_code == 2, done.output
    assert "learner.lr" in done.output and "budget.typo" in done.output and "invalid configuration" in done.output
    assert "Traceback" not in done.output
    assert not runs.exists()  # nothing was computed or even created
    done = invoke(["compare", "-c", tmp_path / "missing.yaml"])
    assert done.exit_code == 2 and "config file not found" in done.output


def test_unreachable_tracking_server_exits_3_before_compute(tmp_path):
    port = services.free_port()
    done = invoke(["compare", "-c", SMOKE_CONFIG, "--runs-dir", tmp_path / "runs"],
                  MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    assert done.exit_code == 3
    assert f"http://127.0.0.1:{port} is unreachable" in done.output and "Traceback" not in done.output
    assert not (tmp_path / "runs" / "data").exists()


def test_compare_prints_the_prediction_the_tables_and_its_prefect(smoke_compare, prefect_server):
    out = smoke_compare.stdout
    # PREFECT_API_URL is set: the command uses that server and says so in its first line
    assert out.splitlines()[0] == f"Prefect: the server at {prefect_server.url} (PREFECT_API_URL)", out[:300]
    for text in ("rollouts to target", "grpo", "dapo", "pilot_commit", "pilot_commit vs grpo",
                 "rollouts to target per seed", "parent run"):
        assert text in out, text
    assert len(list(smoke_compare.runs.glob("smoke/train/*/result.json"))) == 3  # one run per method
    # the probe's prediction is printed before any training, the measured rates beside it after
    assert out.index("prediction for tiny-h64-l2, before training") < out.index("rollouts to target")
    check = out[out.index("informative groups per 1,000 sampled rollouts"):]
    assert all(label in check for label in ("grpo", "dapo", "pilot_commit"))


@pytest.mark.slow
def test_a_second_compare_is_served_from_the_cache(smoke_compare, smoke_outcome, prefect_server):
    results = {p: p.stat().st_mtime_ns for p in smoke_compare.runs.glob("smoke/train/*/result.json")}
    started = time.perf_counter()
    second = run_cli(["compare", *smoke_compare.cli_args()], prefect_server.env())
    seconds = time.perf_counter() - started
    print(f"`pilotcommit compare` on smoke: first {smoke_compare.seconds:.1f} s, second (cached) {seconds:.1f} s wall")
    assert second.returncode == 0, second.stdout + second.stderr
    assert {p: p.stat().st_mtime_ns for p in results} == results  # nothing retrained
    assert seconds < smoke_compare.seconds


def test_report_and_accept_read_the_finished_comparison(smoke_compare):
    report = invoke(["report", *smoke_compare.cli_args()])
    assert report.exit_code == 0, report.output
    assert "target eval/average_accuracy" in report.output and "pilot_commit" in report.output
    accept = invoke(["accept", *smoke_compare.cli_args(), "--note", "cli test"])
    assert accept.exit_code == 0, accept.output
    assert "is now the accepted baseline of 'smoke'" in accept.output
    other = invoke(["report", "-c", SMOKE_CONFIG, "--runs-dir", smoke_compare.runs.parent / "nothing"])
    assert other.exit_code == 1 and "run `pilotcommit compare` first" in other.output


@pytest.mark.slow
def test_train_reuses_the_compared_run_and_retrains_with_no_resume(smoke_compare, smoke_outcome, prefect_server):
    """Last of the module: it retrains GRPO's run of the shared comparison (to the same weights)."""
    env = prefect_server.env()
    common = smoke_compare.cli_args()
    results = {p: p.stat().st_mtime_ns for p in smoke_compare.runs.glob("smoke/train/*/result.json")}
    train = run_cli(["train", *common, "--method", "grpo"], env)
    assert train.returncode == 0, train.stdout + train.stderr
    assert "eval/average_accuracy" in train.stdout and "MLflow run" in train.stdout
    assert {p: p.stat().st_mtime_ns for p in results} == results  # the compare's run was reused
    reused_run = _mlflow_run_id(train.stdout)

    # --no-resume reaches the flow: grpo retrains from scratch into a new MLflow run, the others stay
    fresh = run_cli(["train", *common, "--method", "grpo", "--no-resume"], env)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    fresh_run = _mlflow_run_id(fresh.stdout)
    assert fresh_run != reused_run
    changed = {p.parent.name.split("-seed")[0] for p in results if p.stat().st_mtime_ns != results[p]}
    assert changed == {"grpo"}, changed
    # ... from step 0: the new run holds the initial evaluation and every training step (a resume
    # from the final checkpoint would have trained and logged none of them)
    from pilotcommit import tracking

    client = tracking.mlflow_client(smoke_compare.tracking_uri)
    max_steps = 2  # conf/experiment/smoke.yaml budget.max_steps
    assert [m.step for m in client.get_metric_history(fresh_run, "eval/average_accuracy")] == list(range(max_steps + 1))
    assert sorted(m.step for m in client.get_metric_history(fresh_run, "loss/policy")) == list(range(1, max_steps + 1))
    assert "learner.lr" in client.get_run(fresh_run).data.params  # params are logged by a run that starts

    bad_method = invoke(["train", *common, "--method", "ppo"])
    assert bad_method.exit_code == 2 and "--method 'ppo'" in bad_method.output


def _mlflow_run_id(stdout: str) -> str:
    """The run id from train's last line: ``MLflow run <id> in <uri>; run dir <dir>``."""
    match = re.search(r"MLflow run (\w+) in", stdout)
    assert match, stdout[-2000:]
    return match.group(1)


def test_study_needs_a_finished_sweep_and_a_valid_file(tmp_path):
    """`pilotcommit study` reads a finished sweep from MLflow (its report is tested with a real
    sweep in test_flows_reruns.py::test_sweep_as_subflows): without one it says what to run, and a
    missing sweep file is a config error, both before any compute."""
    runs = tmp_path / "runs"
    none = invoke(["study", "-c", "conf/sweep/regimes.yaml", "--runs-dir", runs])
    assert none.exit_code == 1, none.output
    text = " ".join(none.output.split())
    assert "no finished sweep 'regimes'" in text and "pilotcommit sweep --config conf/sweep/regimes.yaml" in text
    missing = invoke(["study", "-c", tmp_path / "nope.yaml", "--runs-dir", runs])
    assert missing.exit_code == 2 and "nope.yaml" in missing.output
    # a candidate that is not one of the sweep's methods, and --methods naming none: config errors
    wrong = invoke(["study", "-c", "conf/sweep/regimes.yaml", "--runs-dir", runs, "--candidate", "ppo"])
    text = " ".join(wrong.output.split())
    assert wrong.exit_code == 2 and "--candidate 'ppo': not a method of conf/sweep/regimes.yaml" in text
    assert "speed_rl" in text
    fresh = tmp_path / "fresh"
    empty = invoke(["sweep", "-c", "conf/sweep/smoke.yaml", "--runs-dir", fresh, "--methods", ","])
    assert empty.exit_code == 2 and "--methods: name at least one method" in empty.output
    assert not fresh.exists()  # before any compute
