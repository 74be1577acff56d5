"""Real services shared by the integration tests, started once per test session.

- ``prefect_server``: one real Prefect server on 127.0.0.1. The flows run in this process use it
  (``PREFECT_API_URL`` for the session), and so do the CLI subprocesses (``.env()``); only
  tests/integration/test_prefect_home.py runs the CLI's ephemeral server, on purpose.
- ``smoke_compare``: ``pilotcommit compare`` on the smoke config's GRPO, DAPO and Pilot-Commit,
  a real subprocess against that server, two runs at once in child processes. The CLI, flow,
  Prefect-page and MLflow-UI tests assert on what it printed, logged, tracked and left on disk.
  ``smoke_outcome`` is the same comparison run again in this process: a cache hit, whose
  returned outcome the flow tests read.
- ``fresh_runs``: a new runs directory that already holds the smoke config's prepared data and
  warm-started policy (copied from ``smoke_stages``), for tests that train or change runs of
  their own without warming up again.

Each pytest-xdist worker starts its own server (a session fixture); the readers of the shared
comparison all run on one worker (tests/conftest.py, ``worker_scope``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    ONE_WORKER_MODULES,
    REPO_ROOT,
    SHARED_COMPARE_MODULES,
    SMOKE_CONFIG,
    copy_stages,
    smoke_core_methods_override,
)

SHARED_FIXTURES = {"smoke_compare", "smoke_outcome"}
ONE_WORKER_FIXTURES = {"small_compare"}


def pytest_collection_modifyitems(items):
    """A test that reads the shared comparison outside the modules tests/conftest.py keeps on
    one worker would train it again on another worker: refuse it at collection."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        module = item.nodeid.split("::", 1)[0]
        if names & SHARED_FIXTURES and module not in SHARED_COMPARE_MODULES:
            raise pytest.UsageError(f"{item.nodeid} uses the shared comparison: add {module} to "
                                    "SHARED_COMPARE_MODULES in tests/conftest.py")
        if names & ONE_WORKER_FIXTURES and module not in ONE_WORKER_MODULES:
            raise pytest.UsageError(f"{item.nodeid} uses a module-scoped comparison: add {module} to "
                                    "ONE_WORKER_MODULES in tests/conftest.py")


@dataclass(frozen=True)
class PrefectServer:
    url: str
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A CLI subprocess's environment: this server, no MLflow or runs-directory settings of
        the machine, wide tables."""
        from pilotcommit import services

        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PREFECT_") and k not in ("MLFLOW_TRACKING_URI", "PILOTCOMMIT_RUNS_DIR")}
        env.update(services.prefect_env(self.home / "client", self.url))
        env.update({"COLUMNS": "160", **extra})
        return env


def read_log_records(path: Path, kind: str) -> list[dict]:
    """The records of one kind in a training subprocess's JSON-lines metrics log
    (tests/integration/_train_subprocess.py); a line cut by a kill is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if record["kind"] == kind:
            records.append(record)
    return records


def run_cli(args: list[str], env: dict[str, str], timeout: float = 900, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pilotcommit.cli", *map(str, args)], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )

    from pilotcommit import services

    home = tmp_path_factory.mktemp("prefect-server")
    server = services.start_prefect_server(home / "server", home / "server.log")
    # the run loggers' INFO lines are what the Prefect-page tests read: let them through even
    # where the environment quiets Prefect
    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
    settings = {PREFECT_API_URL: server.url, PREFECT_HOME: home / "client",
                PREFECT_LOCAL_STORAGE_PATH: home / "client" / "storage", PREFECT_SERVER_ANALYTICS_ENABLED: False}
    try:
        with temporary_settings(updates=settings):
            yield PrefectServer(server.url, home)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        server.stop()


def latest_flow_run_id(name: str) -> str:
    """The newest flow run of flow ``name`` on the session's server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)
    return str(runs[0].id)


@dataclass(frozen=True)
class SharedCompare:
    """What ``pilotcommit compare`` left: its output, its runs directory, its flow run."""

    runs: Path
    stdout: str
    seconds: float
    flow_run_id: str
    overrides: tuple[str, ...]

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.runs / 'mlflow.db'}"

    def cli_args(self) -> list[str]:
        """The compare's own config arguments, for the commands that read it again."""
        return ["-c", str(SMOKE_CONFIG), "--runs-dir", str(self.runs), *[a for o in self.overrides for a in ("--set", o)]]


@pytest.fixture(scope="session")
def smoke_compare(prefect_server, tmp_path_factory) -> SharedCompare:
    runs = tmp_path_factory.mktemp("shared-compare") / "runs"
    overrides = (smoke_core_methods_override(),)
    started = time.perf_counter()
    done = run_cli(["compare", "-c", SMOKE_CONFIG, "--runs-dir", runs, "--parallel-runs", "2",
                    *[a for o in overrides for a in ("--set", o)]], prefect_server.env())
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return SharedCompare(runs, done.stdout, seconds, latest_flow_run_id("compare"), overrides)


@pytest.fixture(scope="session")
def smoke_outcome(smoke_compare):
    """The shared comparison run again in this process (every stage a cache hit): its returned
    outcome (plain JSON, as flows return it) and its flow run id."""
    from flows.compare import compare_flow

    state = compare_flow(config_path=str(SMOKE_CONFIG), overrides=list(smoke_compare.overrides),
                         runs_dir=str(smoke_compare.runs), parallel_runs=2, return_state=True)
    return state.result(), str(state.state_details.flow_run_id)


@pytest.fixture
def fresh_runs(smoke_stages, tmp_path) -> Path:
    """A new runs directory with the smoke config's prepared data and warm-started policy: its
    stages are valid on disk, so a flow finds them without warming up again."""
    return copy_stages(smoke_stages, tmp_path / "runs")


# --------------------------------------------------------------------------- reading back what flows left


def methods_override(*names: str) -> str:
    """``methods={...}``: these of the smoke config's methods, with their smoke settings."""
    methods = yaml.safe_load(SMOKE_CONFIG.read_text())["methods"]
    return "methods=" + json.dumps({m: methods[m] for m in names})


def mlflow_client_of(out):
    """The MLflow client of a flow's returned outcome."""
    from pilotcommit import tracking

    return tracking.mlflow_client(out["tracking_uri"])


def task_states(flow_run_id: str) -> dict[str, list[str]]:
    """{task name prefix: [state names]} of a flow run's task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    # Task-run records reach the API asynchronously (events): wait until every state is final.
    deadline = time.monotonic() + 60
    previous = -1
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        settled = all(r.state is not None and r.state.is_final() for r in runs)
        if runs and settled and len(runs) == previous:  # the same count twice: all arrived
            break
        previous = len(runs)
        assert time.monotonic() < deadline, f"task runs of {flow_run_id} not final: {runs}"
        time.sleep(1)
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)
    return states


def flow_logs(flow_run_id) -> list[str]:
    """Every log message of a flow run (its tasks' included), in order, once delivered."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                sort=LogSort.TIMESTAMP_ASC, limit=200)
    return [log.message for log in logs]


def flow_artifacts(flow_run_id) -> dict[str, object]:
    """``{key: artifact}`` of the artifacts created in a flow run."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return flow_artifacts_with(client, flow_run_id)


def flow_artifacts_with(client, flow_run_id) -> dict[str, object]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in artifacts if a.key}


def table_rows(markdown: str) -> dict[str, list[str]]:
    """``{first cell: cells}`` of every markdown table row (header and separator rows included)."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells)
    return rows
