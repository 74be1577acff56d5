"""A real browser check of the MLflow UI on a finished comparison.

The shared smoke comparison (tests/integration/conftest.py: ``pilotcommit compare`` of GRPO,
DAPO and Pilot-Commit), then ``mlflow server`` on 127.0.0.1 over its store,
then headless Chromium (Debian's ``chromium``) on the UI page that charts
``by_rollouts/eval/average_accuracy`` for the comparison's child runs: the three methods' runs
must be on the rendered page. A screenshot is written to the test's directory, or to
``docs/mlflow_by_rollouts.png`` with ``PILOTCOMMIT_UPDATE_DOCS_SCREENSHOT=1``. Only that test
needs chromium; the check that a started server listens on 127.0.0.1 only runs without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from pilotcommit import services, tracking
from tests.conftest import REPO_ROOT, listening_addresses

pytestmark = [pytest.mark.integration, pytest.mark.slow]
needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium package")


def chromium(args: list[str], url: str) -> subprocess.CompletedProcess:
    base = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=25000",
            "--window-size=1600,1000"]
    return subprocess.run(base + args + [url], check=False, capture_output=True, text=True, timeout=240)


def _assert_loopback_only(server) -> None:
    """The server (and its worker processes) listen on loopback only, on the port in its URL."""
    listening = listening_addresses(server.process.pid)
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
    assert int(server.url.rsplit(":", 1)[1]) in {port for _, port in listening}, listening


def test_a_started_mlflow_server_listens_on_127_0_0_1_only(tmp_path):
    """Needs no browser: runs where chromium is missing (the UI test below is then skipped)."""
    server = services.start_mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlartifacts",
                                          tmp_path / "mlflow.log")
    try:
        _assert_loopback_only(server)
    finally:
        server.stop()


@needs_chromium
def test_mlflow_ui_shows_the_three_methods_by_rollouts(smoke_compare, tmp_path):
    runs = smoke_compare.runs
    store = f"sqlite:///{runs / 'mlflow.db'}"
    client = tracking.mlflow_client(store)
    experiment = client.get_experiment_by_name("smoke")
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    parent = tracking.latest_parent_run(client, experiment.experiment_id, "smoke")
    children = tracking.child_runs(client, experiment.experiment_id, parent.info.run_id)
    names = sorted(r.info.run_name for r in children)
    assert sorted(r.data.tags["method"] for r in children) == ["dapo", "grpo", "pilot_commit"]

    server = services.start_mlflow_server(store, tmp_path / "mlartifacts", tmp_path / "mlflow.log")
    try:
        _assert_loopback_only(server)
        url = tracking.metric_chart_url(server.url, experiment.experiment_id, [r.info.run_id for r in children])
        page = chromium(["--dump-dom"], url)
        for name in names:
            assert name in page.stdout, f"{name} not on the rendered page"
        assert "by_rollouts/eval/average_accuracy" in page.stdout
        target = (REPO_ROOT / "docs" / "mlflow_by_rollouts.png"
                  if os.environ.get("PILOTCOMMIT_UPDATE_DOCS_SCREENSHOT") else tmp_path / "mlflow_by_rollouts.png")
        chromium([f"--screenshot={target}"], url)
        assert target.is_file() and target.stat().st_size > 10_000
    finally:
        server.stop()
