"""The ``pilotcommit`` command as a user runs it (real subprocesses, ephemeral Prefect, SQLite
MLflow, all under a temporary directory).

Checked: config errors and an unreachable tracking server end with a clean message and exit
codes 2 / 3 before any compute; ``compare`` on the smoke config prints the comparison table and
a second identical ``compare`` is served from the cache (nothing retrained; both wall times
printed); ``report``, ``accept`` and ``train`` work on what ``compare`` left in MLflow.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pilotcommit import services
from tests.conftest import REPO_ROOT, SMOKE_CONFIG, smoke_core_methods_override

pytestmark = pytest.mark.integration


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PILOTCOMMIT_RUNS_DIR"):
        env.pop(key, None)
    env.update(services.prefect_env(tmp_path / "prefect"))
    env["COLUMNS"] = "160"
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pilotcommit.cli", *args], check=False, cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_config_error_exits_2_before_compute(tmp_path):
    env = cli_env(tmp_path)
    runs = tmp_path / "runs"
    done = run_cli(["compare", "-c", str(SMOKE_CONFIG), "--runs-dir", str(runs),
                    "--set", "learner.lr=-1", "--set", "budget.typo=3"], env)
    assert done.returncode == 2, done.stderr
    assert "learner.lr" in done.stderr and "budget.typo" in done.stderr and "invalid configuration" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not runs.exists()  # nothing was computed or even created

    done = run_cli(["compare", "-c", str(tmp_path / "missing.yaml")], env)
    assert done.returncode == 2 and "config file not found" in done.stderr


def test_unreachable_tracking_server_exits_3_before_compute(tmp_path):
    env = cli_env(tmp_path)
    port = services.free_port()
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
    done = run_cli(["compare", "-c", str(SMOKE_CONFIG), "--runs-dir", str(tmp_path / "runs")], env)
    assert done.returncode == 3
    assert f"http://127.0.0.1:{port} is unreachable" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "data").exists()


@pytest.mark.slow
def test_compare_twice_then_report_accept_train(tmp_path):
    env = cli_env(tmp_path)
    runs = tmp_path / "runs"
    # GRPO, DAPO, Pilot-Commit: the commands' mechanics, not the methods, are under test here
    common = ["-c", str(SMOKE_CONFIG), "--runs-dir", str(runs), "--set", smoke_core_methods_override()]

    started = time.perf_counter()
    first = run_cli(["compare", *common], env)
    first_s = time.perf_counter() - started
    assert first.returncode == 0, first.stdout + first.stderr
    # no server running for this runs directory: the command says it starts its own
    assert first.stdout.splitlines()[0].startswith("Prefect: an ephemeral server for this command"), first.stdout[:300]
    for text in ("rollouts to target", "grpo", "dapo", "pilot_commit", "pilot_commit vs grpo",
                 "rollouts to target per seed", "parent run"):
        assert text in first.stdout, text
    results = {p: p.stat().st_mtime_ns for p in runs.glob("smoke/train/*/result.json")}
    assert len(results) == 3  # one run per method
    # the probe's prediction is printed before any training, the measured rates beside it after
    out = first.stdout
    assert out.index("prediction for tiny-h64-l2, before training") < out.index("rollouts to target")
    assert "informative groups per 1,000 sampled rollouts" in out
    check = out[out.index("informative groups per 1,000 sampled rollouts"):]
    assert all(label in check for label in ("grpo", "dapo", "pilot_commit"))

    started = time.perf_counter()
    second = run_cli(["compare", *common], env)
    second_s = time.perf_counter() - started
    print(f"`pilotcommit compare` on smoke: first {first_s:.1f} s, second (cached) {second_s:.1f} s wall")
    assert second.returncode == 0, second.stdout + second.stderr
    assert {p: p.stat().st_mtime_ns for p in results} == results  # nothing retrained
    assert second_s < first_s

    report = run_cli(["report", *common], env)
    assert report.returncode == 0, report.stderr
    assert "target eval/average_accuracy" in report.stdout and "pilot_commit" in report.stdout

    accept = run_cli(["accept", *common, "--note", "cli test"], env)
    assert accept.returncode == 0, accept.stderr
    assert "is now the accepted baseline of 'smoke'" in accept.stdout

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

    client = tracking.mlflow_client(f"sqlite:///{runs / 'mlflow.db'}")  # the CLI's default store
    max_steps = 2  # conf/experiment/smoke.yaml budget.max_steps
    assert [m.step for m in client.get_metric_history(fresh_run, "eval/average_accuracy")] == list(range(max_steps + 1))
    assert sorted(m.step for m in client.get_metric_history(fresh_run, "loss/policy")) == list(range(1, max_steps + 1))
    assert "learner.lr" in client.get_run(fresh_run).data.params  # params are logged by a run that starts
    # and --resume (the default, spelled out) trains nothing: the finished run on disk serves the
    # train flow's own MLflow run of this config again
    after_fresh = {p: p.stat().st_mtime_ns for p in results}
    again = run_cli(["train", *common, "--method", "grpo", "--resume"], env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _mlflow_run_id(again.stdout) == reused_run
    assert {p: p.stat().st_mtime_ns for p in results} == after_fresh

    bad_method = run_cli(["train", *common, "--method", "ppo"], env)
    assert bad_method.returncode == 2 and "--method 'ppo'" in bad_method.stderr


def _mlflow_run_id(stdout: str) -> str:
    """The run id from train's last line: ``MLflow run <id> in <uri>; run dir <dir>``."""
    match = re.search(r"MLflow run (\w+) in", stdout)
    assert match, stdout[-2000:]
    return match.group(1)


def test_study_needs_a_finished_sweep_and_a_valid_file(tmp_path):
    """`pilotcommit study` reads a finished sweep from MLflow (its report is tested with a real
    sweep in test_flows.py::test_sweep_as_subflows): without one it says what to run, and a
    missing sweep file is a config error, both before any compute."""
    env = cli_env(tmp_path)
    runs = tmp_path / "runs"
    none = run_cli(["study", "-c", "conf/sweep/regimes.yaml", "--runs-dir", str(runs)], env)
    assert none.returncode == 1, none.stdout + none.stderr
    text = " ".join((none.stdout + none.stderr).split())
    assert "no finished sweep 'regimes'" in text and "pilotcommit sweep --config conf/sweep/regimes.yaml" in text
    missing = run_cli(["study", "-c", str(tmp_path / "nope.yaml"), "--runs-dir", str(runs)], env)
    assert missing.returncode == 2 and "nope.yaml" in missing.stdout + missing.stderr
    # a candidate that is not one of the sweep's methods, and --methods naming none: config errors
    wrong = run_cli(["study", "-c", "conf/sweep/regimes.yaml", "--runs-dir", str(runs), "--candidate", "ppo"], env)
    text = " ".join((wrong.stdout + wrong.stderr).split())
    assert wrong.returncode == 2 and "--candidate 'ppo': not a method of conf/sweep/regimes.yaml" in text
    assert "speed_rl" in text
    fresh = tmp_path / "fresh"
    empty = run_cli(["sweep", "-c", "conf/sweep/smoke.yaml", "--runs-dir", str(fresh), "--methods", ","], env)
    assert empty.returncode == 2 and "--methods: name at least one method" in empty.stdout + empty.stderr
    assert not fresh.exists()  # before any compute
