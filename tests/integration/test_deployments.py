"""`pilotcommit serve` and the `sweep/model-scale` deployment, as on a laptop.

The test starts ``pilotcommit serve`` (an MLflow server, a Prefect server and a process worker,
all on 127.0.0.1 at free ports, plus ``prefect deploy --all`` of prefect.yaml), runs
``prefect deployment run sweep/model-scale`` with the smoke sweep, waits until the flow run is
Completed (its per-model cells dispatched with ``run_deployment`` to the same worker), checks
the sweep's MLflow runs through the MLflow server and the Prefect run logs and artifacts of
the sweep and its cells through the Prefect server, and stops ``serve`` with Ctrl-C (SIGINT),
after which nothing answers on the ports any more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pilotcommit import services, tracking
from tests.conftest import REPO_ROOT, copy_stages, listening_addresses

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_for(predicate, timeout_s: float, what: str, process: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"serve exited ({process.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


def prefect_api_post(api: str, path: str, body: dict) -> list[dict]:
    import json
    import urllib.request

    request = urllib.request.Request(f"{api}/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def wait_for_logs(api: str, flow_run_id: str, expected: str, timeout_s: float = 120) -> str:
    """The log messages of a flow run once ``expected`` is among them (logs arrive in batches)."""
    deadline = time.monotonic() + timeout_s
    while True:
        logs = prefect_api_post(api, "logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                                     "sort": "TIMESTAMP_ASC", "limit": 200})
        text = "\n".join(log["message"] for log in logs)
        if expected in text or time.monotonic() > deadline:
            return text
        time.sleep(2)


def prefect_artifact_keys(api: str, flow_run_id: str) -> set[str]:
    artifacts = prefect_api_post(api, "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    return {a["key"] for a in artifacts if a.get("key")}


def test_serve_deploy_and_run_model_scale_sweep(tmp_path, smoke_stages):
    # the smoke config's data and its model's initial policy already there (the other model of
    # the sweep warms up in the cell)
    runs = copy_stages(smoke_stages, tmp_path / "runs")
    mlflow_port, prefect_port = services.free_port(), services.free_port()
    env = dict(os.environ)
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PILOTCOMMIT_RUNS_DIR"):
        env.pop(key, None)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "pilotcommit.cli", "serve", "--runs-dir", str(runs),
             "--mlflow-port", str(mlflow_port), "--prefect-port", str(prefect_port)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    prefect_api = f"http://127.0.0.1:{prefect_port}/api"
    try:
        wait_for(lambda: "Ctrl-C stops everything" in log.read_text(), 420, "serve to be ready", serve, log)
        assert services.http_ok(f"{mlflow_url}/health") and services.http_ok(f"{prefect_api}/health")
        # CLI commands on the same runs directory find this server (pilotcommit.cli._connect_prefect)
        assert services.running_prefect_server(runs / "prefect") == prefect_api
        # every socket serve's process tree listens on is loopback-only (MLflow and its workers,
        # the Prefect server, the worker)
        listening = listening_addresses(serve.pid)
        assert {mlflow_port, prefect_port} <= {port for _, port in listening}, listening
        assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening

        done = services.prefect_cli(
            # one of the smoke sweep's methods (`pilotcommit sweep --methods`): the parameter reaches
            # the cell deployments; the mechanics under test do not depend on the method count
            ["deployment", "run", "sweep/model-scale", "--param", "sweep_config=conf/sweep/smoke.yaml",
             "--param", 'methods=["grpo"]', "--watch", "--watch-timeout", "480"],
            runs / "prefect", prefect_api, cwd=REPO_ROOT, timeout_s=540,
        )
        assert "Completed" in done.stdout, done.stdout[-3000:]

        client = tracking.mlflow_client(mlflow_url)
        experiment = client.get_experiment_by_name("sweep-smoke")
        parents = client.search_runs([experiment.experiment_id], filter_string="tags.`pilotcommit.kind` = 'sweep'")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        parent = parents[0]
        children = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        cells = sorted((r.data.tags["model"], r.data.tags["method"]) for r in children)
        assert cells == [("tiny-h64-l1", "grpo"), ("tiny-h64-l2", "grpo")]
        cell_flow_runs = {r.data.tags["prefect_flow_run_id"] for r in children}
        assert len(cell_flow_runs) == 2  # one sweep-model flow run per model, via run_deployment
        for child in children:
            assert child.info.status == "FINISHED"
            assert "by_rollouts/eval/average_accuracy" in child.data.metrics
        assert [a.path for a in client.list_artifacts(parent.info.run_id, "sweep")] == ["sweep/scale_summary.csv"]

        # what the user sees on the Prefect run pages of the deployment runs: logs and artifacts
        sweep_run = parent.data.tags["prefect_flow_run_id"]
        logs = wait_for_logs(prefect_api, sweep_run, "MLflow parent run")
        assert "sweep sweep-smoke: models" in logs and "handed to sweep-model/cell" in logs
        assert f"MLflow parent run {mlflow_url}/#/experiments/{experiment.experiment_id}/runs/" in logs
        assert {"sweep-sweep-smoke", "sweep-sweep-smoke-mlflow-run"} <= prefect_artifact_keys(prefect_api, sweep_run)
        for cell_run in cell_flow_runs:
            logs = wait_for_logs(prefect_api, cell_run, "MLflow parent run")
            assert "train grpo seed 0" in logs and "evaluation at step 2/2 (100% of the budget)" in logs
            assert any(k.startswith("sweep-sweep-smoke-cell-tiny-h64-") for k in prefect_artifact_keys(prefect_api, cell_run))
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(timeout=180)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
    assert "stopped" in log.read_text()
    assert not (runs / "prefect" / services.PREFECT_SERVER_FILE).exists()  # the record goes with the server
    assert not services.http_ok(f"{mlflow_url}/health") and not services.http_ok(f"{prefect_api}/health")
