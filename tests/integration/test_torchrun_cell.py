"""A training cell launches torchrun itself when a run asks for more than one process.

``pilotcommit train`` and ``pilotcommit compare`` on the smoke config with
``resources.nproc_per_node=2``: the flow, the data and policy stages and the MLflow run
creation happen once, in the CLI's process; the cell starts ``torchrun`` with two CPU (gloo)
processes; rank 0 logs into the cell's MLflow run (tag ``pilotcommit.world_size`` = 2, every
step once), and the cell marks the run finished. Real subprocesses, the session's real Prefect
server, real MLflow; the compare on the smoke config's data and initial policy copied in
(``fresh_runs``).
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from pilotcommit import tracking
from tests.conftest import SMOKE_CONFIG
from tests.integration.conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")]

SETTINGS = ["resources.nproc_per_node=2", "budget.max_steps=2", "tracking.system_metrics_interval_s=null"]


def _train_runs(runs):
    client = tracking.mlflow_client(tracking.resolve_tracking_uri(None, runs))
    found = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
             if r.data.tags.get(tracking.TAG_KIND) == "train"]
    return client, found


def _assert_trained_by_two_processes(client, run, run_dirs):
    assert run.info.status == "FINISHED"
    assert run.data.tags.get("pilotcommit.world_size") == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/policy")] == [1, 2]
    assert run.data.params["resources.nproc_per_node"] == "2"
    assert len(run_dirs) == 1 and (run_dirs[0] / "torchrun.log").is_file()
    assert (run_dirs[0] / "final_policy" / "model.safetensors").is_file()


def test_pilotcommit_train_launches_two_processes(prefect_server, tmp_path):
    runs = tmp_path / "runs"  # empty: the stages are built here, once, not on every rank
    env = prefect_server.env()
    done = run_cli(["train", "-c", str(SMOKE_CONFIG), "--runs-dir", str(runs), "--method", "grpo",
                    *[a for s in SETTINGS for a in ("--set", s)]], env)
    assert done.returncode == 0, done.stdout + done.stderr
    client, found = _train_runs(runs)
    assert len(found) == 1  # one MLflow run: the stages did not run on every rank
    assert len(list((runs / "data").iterdir())) == 1 and len(list((runs / "policies").iterdir())) == 1
    _assert_trained_by_two_processes(client, found[0], list(runs.glob("smoke/train/grpo-seed0-*")))


def test_a_compare_cell_launches_two_processes(prefect_server, fresh_runs, tmp_path):
    raw = yaml.safe_load(SMOKE_CONFIG.read_text())
    raw["methods"] = {"grpo": raw["methods"]["grpo"]}
    raw["name"] = "smoke-torchrun"
    config = tmp_path / "smoke-torchrun.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = prefect_server.env()
    runs = fresh_runs  # the data and policy stages do not depend on the experiment's name
    done = run_cli(["compare", "-c", str(config), "--runs-dir", str(runs), *[a for s in SETTINGS for a in ("--set", s)]],
                   env)
    assert done.returncode == 0, done.stdout + done.stderr
    client, found = _train_runs(runs)
    assert len(found) == 1
    _assert_trained_by_two_processes(client, found[0], list(runs.glob("smoke-torchrun/train/grpo-seed0-*")))
