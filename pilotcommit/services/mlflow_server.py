"""An MLflow tracking server on 127.0.0.1 (its store and artifacts where the caller says)."""

from __future__ import annotations

import sys
from pathlib import Path

from pilotcommit.services.processes import (
    LOCALHOST,
    ManagedProcess,
    ServiceError,
    free_port,
    start_process,
)


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
