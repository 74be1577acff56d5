"""Local services the pipeline can use: an MLflow tracking server, a Prefect server and a process
worker, started as child processes on 127.0.0.1, health-checked, and stopped again.

``pilotcommit serve`` uses these to give a laptop the same shape as a cluster (a tracking
server, an orchestration server, a work pool); the integration tests use them to exercise the
real servers. Every service binds 127.0.0.1 unless the caller passes another host on purpose,
runs in its own process group (so stopping it also stops the children it spawns, e.g. the
flow-run processes of a worker), and writes its output to a log file that the error messages
name.

Deliberately not here: anything about what the flows compute, or how runs are tracked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

LOCALHOST = "127.0.0.1"
DEFAULT_WORK_POOL = "pilotcommit-local"


class ServiceError(RuntimeError):
    """A service did not start or answer in time; the message names its log file."""


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """True when ``GET url`` answers 200 within ``timeout_s``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, TimeoutError, ValueError):
        return False


@dataclass
class ManagedProcess:
    """A started service: its process, the URL it answers on (if any) and its log file."""

    name: str
    process: subprocess.Popen
    log_path: Path
    url: str | None = None
    health_url: str | None = None
    _log_handle: object = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def wait_healthy(self, timeout_s: float) -> None:
        """Block until ``health_url`` answers 200; fail (naming the log) if the process exits
        or the deadline passes."""
        if self.health_url is None:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise ServiceError(
                    f"{self.name} exited with code {self.process.returncode} before it answered "
                    f"{self.health_url}; log {self.log_path}:\n{self.log_tail()}"
                )
            if http_ok(self.health_url):
                return
            time.sleep(0.5)
        raise ServiceError(
            f"{self.name} did not answer {self.health_url} within {timeout_s:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to the process group, then SIGKILL after ``timeout_s``."""
        if self.running:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait(timeout=timeout_s)
        else:
            # The leader is gone; its children (gunicorn/uvicorn workers) may not be.
            _signal_group(self.process, signal.SIGKILL)
        if self._log_handle is not None:
            self._log_handle.close()  # type: ignore[attr-defined]
            self._log_handle = None


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the process leads its own group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def start_process(
    name: str,
    args: list[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    url: str | None = None,
    health_url: str | None = None,
) -> ManagedProcess:
    """Start ``args`` in a new session with stdout/stderr to ``log_path``."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = log_path.open("ab")
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        process = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
            start_new_session=True,
        )
    except OSError as err:
        handle.close()
        raise ServiceError(f"cannot start {name} ({' '.join(args)}): {err}") from err
    return ManagedProcess(name, process, log_path, url, health_url, handle)


# --------------------------------------------------------------------------- MLflow


def start_mlflow_server(
    backend_store_uri: str,
    artifacts_dir: Path,
    log_path: Path,
    *,
    host: str = LOCALHOST,
    port: int | None = None,
    timeout_s: float = 120.0,
) -> ManagedProcess:
    """``mlflow server`` on ``host:port`` (a free port by default) with the given SQLite store;
    artifacts are served through the server (``--serve-artifacts``) from ``artifacts_dir``."""
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable, "-m", "mlflow", "server",
        "--host", host, "--port", str(port),
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", str(artifacts_dir.resolve()),
        "--serve-artifacts",
        "--workers", "1",
    ]
    service = start_process("mlflow server", args, log_path, url=url, health_url=f"{url}/health")
    try:
        service.wait_healthy(timeout_s)
    except ServiceError:
        service.stop()
        raise
    return service


# --------------------------------------------------------------------------- Prefect


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


class ServiceStack:
    """Services started together and stopped together (in reverse order); a context manager."""

    def __init__(self) -> None:
        self.services: list[ManagedProcess] = []

    def add(self, service: ManagedProcess) -> ManagedProcess:
        self.services.append(service)
        return service

    def stop(self) -> None:
        """SIGTERM to every service at once, then wait for each (SIGKILL after its timeout):
        the stack stops in about the time of its slowest service, not the sum."""
        services, self.services = list(reversed(self.services)), []
        for service in services:
            if service.running:
                _signal_group(service.process, signal.SIGTERM)
        for service in services:
            service.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
