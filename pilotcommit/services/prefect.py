"""Prefect for this project: where its run history lives (``<runs>/prefect``, never the shared
``~/.prefect``), the check that a newer Prefect did not write that database, which server a
command uses, and a local server, work pool, worker and deployments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pilotcommit.services.processes import (
    LOCALHOST,
    ManagedProcess,
    ServiceError,
    free_port,
    http_ok,
    start_process,
)

DEFAULT_WORK_POOL = "pilotcommit-local"


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """Environment for a Prefect that keeps its state under ``home`` (not ``~/.prefect``):
    its own database, result storage and profiles; ``api_url`` points clients at a server
    (None: the client starts an ephemeral one)."""
    home = Path(home)
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",
        # INFO: the flow runs' own log lines reach the server's run pages (docs/orchestration.md)
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def start_prefect_server(
    home: Path, log_path: Path, *, host: str = LOCALHOST, port: int | None = None, timeout_s: float = 180.0
) -> ManagedProcess:
    """``prefect server start`` on ``host:port`` with its database under ``home``."""
    port = port or free_port(host)
    url = f"http://{host}:{port}/api"
    Path(home).mkdir(parents=True, exist_ok=True)  # its SQLite database cannot create a folder
    env = prefect_env(home)
    env["PREFECT_SERVER_API_HOST"] = host
    env["PREFECT_SERVER_API_PORT"] = str(port)
    args = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    service = start_process("prefect server", args, log_path, env=env, url=url, health_url=f"{url}/health")
    try:
        service.wait_healthy(timeout_s)
    except ServiceError:
        service.stop()
        raise
    return service


class PrefectDatabaseError(ServiceError):
    """The Prefect database was written by a Prefect this one cannot read (checked before any
    compute; the message says what happened and what to do)."""


def prefect_home(runs_root: Path) -> Path:
    """Where the run history of this runs directory's Prefect lives: ``$PREFECT_HOME`` when the
    user set it, else ``<runs>/prefect`` (next to the MLflow store; the same folder as the
    server of ``pilotcommit serve``), never the shared ``~/.prefect``."""
    env = os.environ.get("PREFECT_HOME")
    return Path(env).expanduser() if env else Path(runs_root) / "prefect"


def use_local_prefect_home(runs_root: Path) -> Path:
    """Point this process's Prefect (read at its first import) at :func:`prefect_home`, unless
    the user chose a home; returns the folder. Must run before prefect is imported."""
    home = prefect_home(runs_root)
    if "PREFECT_HOME" not in os.environ:
        for key, value in prefect_env(home).items():
            os.environ.setdefault(key, value)
    return home


def prefect_database_path(home: Path) -> Path | None:
    """The SQLite file the ephemeral server of this process would open (None: another database,
    e.g. PostgreSQL, set by ``PREFECT_API_DATABASE_CONNECTION_URL``)."""
    url = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")
    if not url:
        return Path(home) / "prefect.db"
    scheme, _, rest = url.partition(":///")
    return Path(rest) if scheme.startswith("sqlite") and rest else None


def prefect_migrations(dialect: str = "sqlite") -> list[str]:
    """The schema revisions the installed Prefect knows, oldest first (read from its migration
    files, nothing imported)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("prefect")
    folder = Path(spec.origin).parent / "server" / "database" / "_migrations" / "versions" / dialect
    found = []
    for path in sorted(folder.glob("*.py")):
        match = re.search(r'^revision\s*=\s*["\']([0-9a-f]+)["\']', path.read_text(), re.M)
        if match:
            found.append(match.group(1))
    return found


def check_prefect_database(path: Path | None) -> None:
    """Fail, before any compute, when the database at ``path`` holds a schema revision the
    installed Prefect does not know: a newer Prefect wrote it, and this one's ephemeral server
    would die at start with alembic's "Can't locate revision" and a start-up timeout."""
    import sqlite3
    from importlib.metadata import version

    if path is None or not Path(path).is_file():
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as connection:
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return  # no schema yet (or not a Prefect database): Prefect's own start-up reports it
    known = set(prefect_migrations())
    unknown = [row[0] for row in rows if row[0] not in known]
    if unknown:
        raise PrefectDatabaseError(
            f"the Prefect database {path} was written by a newer Prefect than the installed "
            f"prefect {version('prefect')} (its schema revision {unknown[0]} is unknown here), so "
            "this Prefect cannot start on it. Every environment that shares this runs directory must "
            "run the same Prefect: install with `pip install -c constraints.txt ...` (README). Or "
            "keep this environment's history apart (PREFECT_HOME=<another folder>), or move the "
            "database away to start a new Prefect history (the MLflow store, the runs and their "
            "checkpoints do not depend on it)."
        )


PREFECT_SERVER_FILE = "server.json"  # under the Prefect home of `pilotcommit serve`


def record_prefect_server(home: Path, url: str, pid: int) -> Path:
    """Write where the Prefect server of ``pilotcommit serve`` listens, so that CLI commands on
    the same runs directory use it instead of starting an ephemeral one."""
    path = Path(home) / PREFECT_SERVER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"url": url, "pid": pid}))
    return path


def running_prefect_server(home: Path) -> str | None:
    """The API URL of the server :func:`record_prefect_server` recorded under ``home``, if it
    answers its health check now (a stale file from a killed ``serve`` gives None)."""
    path = Path(home) / PREFECT_SERVER_FILE
    try:
        url = json.loads(path.read_text())["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if http_ok(f"{url}/health") else None


@dataclass(frozen=True)
class PrefectChoice:
    """The Prefect a CLI command's flows run against, and the line that says so."""

    url: str | None  # None: an ephemeral server started by the command
    line: str


def choose_prefect(runs_root: Path) -> PrefectChoice:
    """``PREFECT_API_URL`` if set; else the server ``pilotcommit serve`` recorded for this runs
    directory (``<runs>/prefect/server.json``) if it answers now; else Prefect's ephemeral
    server, with its run history in ``<runs>/prefect`` (or ``$PREFECT_HOME``), never the
    ``~/.prefect`` every project shares. Sets the environment Prefect reads at its first import
    (call before that); :class:`PrefectDatabaseError` before any compute when a newer Prefect
    wrote that database."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return PrefectChoice(url, f"Prefect: the server at {url} (PREFECT_API_URL)")
    url = running_prefect_server(runs_root / "prefect")
    if url:
        os.environ["PREFECT_API_URL"] = url
        return PrefectChoice(url, f"Prefect: the running server at {url} (pilotcommit serve, {runs_root})")
    home = use_local_prefect_home(runs_root)
    check_prefect_database(prefect_database_path(home))
    return PrefectChoice(None, f"Prefect: an ephemeral server for this command, run history in {home} "
                               "(`pilotcommit serve` keeps one running)")


def quiet_prefect_console(verbose: bool) -> None:
    """What Prefect prints on the console: everything with ``verbose``, else nothing (the CLI
    prints failures itself; Prefect's engine would log each one with a traceback). Only the
    console handlers change, so the run logs still reach the Prefect API."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    level = logging.INFO if verbose else logging.CRITICAL
    for name in ("", "uvicorn", "fastapi"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(level)
    if not verbose:
        for name in ("prefect.server", "httpx", "mlflow"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def prefect_cli(
    args: list[str], home: Path, api_url: str, *, cwd: Path | None = None, timeout_s: float = 300.0,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``prefect <args>`` against the server at ``api_url``; raise with its output on failure."""
    env = dict(os.environ)
    env.update(prefect_env(home, api_url))
    env.update(extra_env or {})
    command = [sys.executable, "-m", "prefect", "--no-prompt", *args]
    done = subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise ServiceError(
            f"`prefect {' '.join(args)}` failed with code {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def ensure_work_pool(home: Path, api_url: str, pool: str = DEFAULT_WORK_POOL) -> None:
    """Create the process work pool ``pool`` unless it exists."""
    try:
        prefect_cli(["work-pool", "inspect", pool], home, api_url, timeout_s=120)
        return
    except ServiceError:
        pass
    prefect_cli(["work-pool", "create", pool, "--type", "process"], home, api_url, timeout_s=120)


def start_prefect_worker(
    home: Path,
    api_url: str,
    log_path: Path,
    *,
    pool: str = DEFAULT_WORK_POOL,
    cwd: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    """A process worker polling ``pool``; flow runs it starts inherit ``extra_env``."""
    env = prefect_env(home, api_url)
    env.update(extra_env or {})
    args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    return start_process("prefect worker", args, log_path, env=env, cwd=cwd)


def deploy_all(home: Path, api_url: str, project_dir: Path, extra_env: Mapping[str, str] | None = None) -> str:
    """``prefect deploy --all`` with the project's ``prefect.yaml``; returns its output."""
    done = prefect_cli(["deploy", "--all"], home, api_url, cwd=project_dir, timeout_s=600, extra_env=extra_env)
    return done.stdout


def wait_for_flow_runs(flow_run_ids: list, timeout_s: float, poll_s: float = 5.0) -> dict[str, str]:
    """Poll the Prefect API until every flow run (a sweep's cells handed to a deployment) is final;
    ``{id: state name}``."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    states: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        pending = list(flow_run_ids)
        while pending:
            for run_id in list(pending):
                run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    states[str(run_id)] = run.state.name
                    pending.remove(run_id)
            if pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sweep: cells {pending} not finished after {timeout_s:.0f} s")
                time.sleep(poll_s)
    return states
