"""``pilotcommit serve``: an MLflow server, a Prefect server, the work pool and a process worker on
this machine, deployed and watched until Ctrl-C."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilotcommit.services.mlflow_server import start_mlflow_server
from pilotcommit.services.prefect import (
    DEFAULT_WORK_POOL,
    deploy_all,
    ensure_work_pool,
    record_prefect_server,
    start_prefect_server,
    start_prefect_worker,
)
from pilotcommit.services.processes import LOCALHOST, ManagedProcess, ServiceError, ServiceStack


@dataclass
class LocalServices:
    """What ``pilotcommit serve`` runs: an MLflow server, a Prefect server and a process worker
    polling ``pool``, with the logs under ``<runs>/logs``."""

    stack: ServiceStack
    mlflow: ManagedProcess
    prefect: ManagedProcess
    worker: ManagedProcess
    pool: str
    logs: Path
    server_file: Path

    def check(self) -> None:
        """Raise :class:`ServiceError` with the end of its log when one of them has exited."""
        for service in (self.mlflow, self.prefect, self.worker):
            if not service.running:
                raise ServiceError(f"{service.name} exited; log {service.log_path}:\n{service.log_tail()}")

    def serve_until_stopped(self, poll_s: float = 1.0) -> None:
        """Return on Ctrl-C (SIGINT) or SIGTERM; raise :class:`ServiceError` when a service exits.
        The caller stops them (:meth:`stop`)."""
        stop = {"now": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
        # a process started in the background by a non-interactive shell inherits SIGINT as
        # *ignored*, and Python then never raises KeyboardInterrupt: make Ctrl-C/SIGINT work anyway
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            while not stop["now"]:
                self.check()
                time.sleep(poll_s)
        except KeyboardInterrupt:
            pass

    def stop(self) -> None:
        self.server_file.unlink(missing_ok=True)
        self.stack.stop()


def start_local_services(root: Path, project_dir: Path, *, host: str = LOCALHOST, mlflow_port: int = 5000,
                         prefect_port: int = 4200, pool: str = DEFAULT_WORK_POOL, deploy: bool = True,
                         status: Callable[[str], Any] | None = None) -> LocalServices:
    """Start an MLflow server (SQLite store and artifacts under ``root``), a Prefect server (its
    home ``<root>/prefect``, recorded there so CLI commands on this runs directory use it), the
    work pool and a process worker, and deploy ``project_dir``'s prefect.yaml; ``status`` is
    told what starts. Everything started so far is stopped again if a step fails."""
    from contextlib import nullcontext

    status = status or (lambda text: nullcontext())
    prefect_home, logs = root / "prefect", root / "logs"
    stack = ServiceStack()
    try:
        with status("starting MLflow server"):
            mlflow = stack.add(start_mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root / "mlartifacts",
                                                   logs / "mlflow.log", host=host, port=mlflow_port))
        with status("starting Prefect server"):
            prefect = stack.add(start_prefect_server(prefect_home, logs / "prefect-server.log", host=host,
                                                     port=prefect_port))
        server_file = record_prefect_server(prefect_home, prefect.url, prefect.process.pid)
        worker_env = {"MLFLOW_TRACKING_URI": mlflow.url, "PILOTCOMMIT_RUNS_DIR": str(root),
                      "PILOTCOMMIT_REPO_DIR": str(project_dir)}
        with status("creating the work pool and deploying prefect.yaml"):
            ensure_work_pool(prefect_home, prefect.url, pool)
            if deploy:
                deploy_all(prefect_home, prefect.url, project_dir, extra_env=worker_env)
        worker = stack.add(start_prefect_worker(prefect_home, prefect.url, logs / "prefect-worker.log", pool=pool,
                                                cwd=project_dir, extra_env=worker_env))
    except BaseException:
        stack.stop()
        raise
    return LocalServices(stack, mlflow, prefect, worker, pool, logs, server_file)
