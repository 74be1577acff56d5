"""The CLI uses an already running Prefect server instead of starting the ephemeral one.

The session's real ``prefect server start`` on 127.0.0.1 (tests/integration/conftest.py),
recorded the way ``pilotcommit serve`` records it; a fresh Python process runs the CLI's
start-up step (``pilotcommit.cli._connect_prefect``) and then a real flow, and the flow run is
looked up on that server. A record of a server that has gone (nothing answers at its URL) is
ignored: the command says it starts an ephemeral server (which tests/integration/
test_prefect_home.py runs).
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

run_id = probe() if url else None
found = None
if url:
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        found = str(client.read_flow_run(run_id).id)
print(json.dumps({"url": url, "setting": PREFECT_API_URL.value(), "run_id": str(run_id), "found": found}))
"""


def _child(runs_dir: Path, env_extra: dict[str, str] | None = None) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(services.prefect_env(runs_dir / "client-home"))  # never the user's ~/.prefect
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", CHILD, str(runs_dir)], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout


def test_the_cli_uses_the_running_server_and_says_so(prefect_server, tmp_path):
    runs = tmp_path / "runs"
    home = runs / "prefect"
    services.record_prefect_server(home, prefect_server.url, os.getpid())
    assert services.running_prefect_server(home) == prefect_server.url
    got, stdout = _child(runs)
    assert got["url"] == got["setting"] == prefect_server.url
    assert got["found"] == got["run_id"]  # the flow ran against that server
    assert f"Prefect: the running server at {prefect_server.url} (pilotcommit serve" in stdout
    # PREFECT_API_URL wins over the record, and is named as the reason
    got, stdout = _child(runs, {"PREFECT_API_URL": prefect_server.url})
    assert got["found"] == got["run_id"] and f"Prefect: the server at {prefect_server.url} (PREFECT_API_URL)" in stdout
    # a record left by a server that has stopped (nothing listens at its URL) is ignored
    services.record_prefect_server(home, f"http://127.0.0.1:{services.free_port()}/api", 999_999)
    assert services.running_prefect_server(home) is None
    got, stdout = _child(runs)
    assert got["url"] is None
    assert "Prefect: an ephemeral server for this command" in stdout


def test_a_missing_or_corrupt_record_means_no_server(tmp_path):
    assert services.running_prefect_server(tmp_path) is None
    (tmp_path / services.PREFECT_SERVER_FILE).write_text("{not json")
    assert services.running_prefect_server(tmp_path) is None
    (tmp_path / services.PREFECT_SERVER_FILE).write_text(json.dumps({"url": "http://127.0.0.1:9/api"}))
    assert services.running_prefect_server(tmp_path) is None
