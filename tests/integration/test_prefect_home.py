"""Where the CLI's ephemeral Prefect keeps its run history, and what happens when another Prefect
wrote that database (issue 23).

- With no server and no ``PREFECT_HOME``, a command's Prefect lives in ``<runs>/prefect``, next
  to the MLflow store, not in the ``~/.prefect`` that every project (and every environment) of
  the user shares.
- A database whose schema revision the installed Prefect does not know (a newer Prefect wrote
  it) ends the command before any compute, with exit code 3 and a message that says what
  happened and what to do, instead of alembic's "Can't locate revision" and a start-up timeout.
- The vLLM tier: one command in another environment (the base install, or the main test
  environment), then one in the vLLM environment, with the same home directory and runs
  directory, as a user following the README would: both run.

Real subprocesses of the real CLI, a real Prefect database; nothing is mocked.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pilotcommit import services
from tests.conftest import SMOKE_CONFIG

pytestmark = pytest.mark.integration

PROBE = ["probe", "--config", str(SMOKE_CONFIG), "--prompts", "8", "--samples", "2"]


def user_env(home: Path) -> dict[str, str]:
    """A user's shell: their own HOME, no Prefect or MLflow settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.pop("PILOTCOMMIT_RUNS_DIR", None)
    env.update(HOME=str(home), COLUMNS="160", HF_HUB_OFFLINE="1")
    return env


def run_cli(python: str, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pilotcommit.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900, check=False)


def test_a_database_written_by_a_newer_prefect_is_refused_before_any_compute(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    runs = tmp_path / "runs"
    database = runs / "prefect" / "prefect.db"
    database.parent.mkdir(parents=True)
    with sqlite3.connect(database) as connection:  # what a newer Prefect leaves: an unknown head
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES ('27d8f4e1a6c9')")
    assert "27d8f4e1a6c9" not in services.prefect_migrations()

    done = run_cli(sys.executable, PROBE, tmp_path, user_env(home))
    assert done.returncode == 3, done.stdout + done.stderr
    message = " ".join(done.stderr.split())
    assert f"the Prefect database {database} was written by a newer Prefect" in message
    assert "27d8f4e1a6c9" in message and "constraints.txt" in message and "PREFECT_HOME" in message
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in runs.iterdir()) == ["prefect"]  # no data, no model, no MLflow store


def test_known_revisions_are_read_from_the_installed_prefect():
    revisions = services.prefect_migrations()
    assert len(revisions) > 50 and all(len(r) == 12 for r in revisions)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                    reason="needs the vLLM environment: .ci/run runs it there")
def test_a_command_in_another_environment_then_one_in_the_vllm_environment_share_a_home(tmp_path):
    other = os.environ.get("PILOTCOMMIT_OTHER_PYTHON")
    assert other, "set PILOTCOMMIT_OTHER_PYTHON to another environment's python (.ci/vllm-tests does)"
    other_prefix = subprocess.run([other, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                                  check=True).stdout.strip()
    assert other_prefix != sys.prefix, "the other python must be another environment"
    home = tmp_path / "home"
    home.mkdir()
    env = user_env(home)
    first = run_cli(other, PROBE, tmp_path, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = run_cli(sys.executable, PROBE, tmp_path, env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for done in (first, second):
        assert f"run history in {tmp_path / 'runs' / 'prefect'}" in " ".join(done.stdout.split())
    assert (tmp_path / "runs" / "prefect" / "prefect.db").is_file()
    assert not (home / ".prefect" / "prefect.db").exists()  # the shared default was never touched


def test_the_ephemeral_prefect_keeps_its_history_in_the_runs_directory(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    done = run_cli(sys.executable, PROBE, tmp_path, user_env(home))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "runs" / "prefect" / "prefect.db").is_file()
    assert not (home / ".prefect" / "prefect.db").exists()
