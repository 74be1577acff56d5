"""Every training run gets MLflow system metrics (``system/*``) in a real MLflow store.

A short smoke run goes through the tracked training of a flow's task (``train_tracked``) with a sampling
interval of 0.2 s, logging into a SQLite store; the run must then hold MLflow's CPU and memory
series (psutil). GPU series need pynvml and a GPU, neither of which this machine has.
"""

from __future__ import annotations

import pytest

from pilotcommit import tracking
from pilotcommit.config import load_experiment_config
from pilotcommit.runner.training import TrainRequest, train_tracked
from pilotcommit.stages.table import run_config
from tests.conftest import SMOKE_CONFIG

pytestmark = [pytest.mark.integration]


def _run(tmp_path, smoke_prepared, smoke_policy, interval: str):
    cfg = load_experiment_config(SMOKE_CONFIG, ["budget.max_steps=2", f"tracking.system_metrics_interval_s={interval}"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.mlflow_client(uri)
    run_id = client.create_run(client.create_experiment("system-metrics")).info.run_id
    label = next(iter(cfg.methods))
    request = TrainRequest(run_config(cfg, label, 0), label, 0, smoke_prepared.to_dict(), smoke_policy,
                           str(tmp_path / "run"), uri, run_id)
    train_tracked(request, fresh=True, progress=lambda event: None)
    return client.get_run(run_id)


def test_a_training_run_logs_system_metrics(tmp_path, smoke_prepared, smoke_policy):
    run = _run(tmp_path, smoke_prepared, smoke_policy, "0.2")
    keys = set(run.data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys, sorted(keys)
    assert run.info.status == "FINISHED"
    assert "loss/policy" in keys  # the run's own metrics are there too


def test_system_metrics_can_be_turned_off(tmp_path, smoke_prepared, smoke_policy):
    run = _run(tmp_path, smoke_prepared, smoke_policy, "null")
    assert not [k for k in run.data.metrics if k.startswith("system/")]
