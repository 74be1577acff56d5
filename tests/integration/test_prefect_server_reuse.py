"""The CLI uses an already running Prefect server instead of starting the ephemeral one.

A real ``prefect server start`` on 127.0.0.1 (a free port, its own database under tmp_path),
recorded the way ``pilotcommit serve`` records it; a fresh Python process runs the CLI's
start-up step (``pilotcommit.cli._connect_prefect``) and then a real flow, and the flow run is
looked up on that server. The server is stopped by the test; the stale record is then ignored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pilotcommit import services

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys
from pathlib import Path
from pilotcommit import cli
url = cli._connect_prefect(Path(sys.argv[1]))
from prefect import flow
from prefect.settings import PREFECT_API_URL

@flow(name="server-reuse-probe")
def probe():
    from prefect.runtime import flow_run
    return flow_run.id

run_id = probe()
found = None
if url:
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        found = str(client.read_flow_run(run_id).id)
print(json.dumps({"url": url, "setting": PREFECT_API_URL.value(), "run_id": str(run_id), "found": found}))
"""


def _child(runs_dir: Path, env_extra: dict[str, str] | None = None) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(services.prefect_env(runs_dir / "client-home"))  # never the user's ~/.prefect
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", CHILD, str(runs_dir)], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout


def test_the_cli_uses_the_running_server_and_says_so(tmp_path):
    runs = tmp_path / "runs"
    home = runs / "prefect"
    server = services.start_prefect_server(home, tmp_path / "server.log")
    try:
        services.record_prefect_server(home, server.url, server.process.pid)
        assert services.running_prefect_server(home) == server.url
        got, stdout = _child(runs)
        assert got["url"] == got["setting"] == server.url
        assert got["found"] == got["run_id"]  # the flow ran against that server
        assert f"Prefect: the running server at {server.url} (pilotcommit serve" in stdout
        # PREFECT_API_URL wins over the record, and is named as the reason
        got, stdout = _child(runs, {"PREFECT_API_URL": server.url})
        assert got["found"] == got["run_id"] and f"Prefect: the server at {server.url} (PREFECT_API_URL)" in stdout
    finally:
        server.stop()
    # a record left by a stopped server is ignored: the ephemeral server runs the flow
    assert services.running_prefect_server(home) is None
    got, stdout = _child(runs)
    assert got["url"] is None and got["run_id"]
    assert "Prefect: an ephemeral server for this command" in stdout


def test_a_missing_or_corrupt_record_means_no_server(tmp_path):
    assert services.running_prefect_server(tmp_path) is None
    (tmp_path / services.PREFECT_SERVER_FILE).write_text("{not json")
    assert services.running_prefect_server(tmp_path) is None
    (tmp_path / services.PREFECT_SERVER_FILE).write_text(json.dumps({"url": "http://127.0.0.1:9/api"}))
    assert services.running_prefect_server(tmp_path) is None
