"""Local services the pipeline can use: an MLflow tracking server, a Prefect server and a process
worker, started as child processes on 127.0.0.1, health-checked, and stopped again.

``pilotcommit serve`` uses these to give a laptop the same shape as a cluster (a tracking
server, an orchestration server, a work pool); the integration tests use them to exercise the
real servers. Every service binds 127.0.0.1 unless the caller passes another host on purpose,
runs in its own process group (so stopping it also stops the children it spawns, e.g. the
flow-run processes of a worker), and writes its output to a log file that the error messages
name.

Deliberately not here: anything about what the flows compute, or how runs are tracked.

    processes.py      child processes in their own group, health checks, a stack that stops them
    mlflow_server.py  an MLflow tracking server
    prefect.py        Prefect's home and database check, the server a command uses, a local
                      server, work pool, worker and deployments
    local.py          all of them for ``pilotcommit serve``
"""

from pilotcommit.services.local import LocalServices, start_local_services
from pilotcommit.services.mlflow_server import start_mlflow_server
from pilotcommit.services.prefect import (
    DEFAULT_WORK_POOL,
    PREFECT_SERVER_FILE,
    PrefectChoice,
    PrefectDatabaseError,
    check_prefect_database,
    choose_prefect,
    deploy_all,
    ensure_work_pool,
    prefect_cli,
    prefect_database_path,
    prefect_env,
    prefect_home,
    prefect_migrations,
    quiet_prefect_console,
    record_prefect_server,
    running_prefect_server,
    start_prefect_server,
    start_prefect_worker,
    use_local_prefect_home,
)
from pilotcommit.services.processes import (
    LOCALHOST,
    ManagedProcess,
    ServiceError,
    ServiceStack,
    free_port,
    http_ok,
    start_process,
)

__all__ = [
    "DEFAULT_WORK_POOL", "LOCALHOST", "LocalServices", "ManagedProcess", "PREFECT_SERVER_FILE",
    "PrefectChoice", "PrefectDatabaseError", "ServiceError", "ServiceStack", "check_prefect_database",
    "choose_prefect", "deploy_all", "ensure_work_pool", "free_port", "http_ok", "prefect_cli",
    "prefect_database_path", "prefect_env", "prefect_home", "prefect_migrations", "quiet_prefect_console",
    "record_prefect_server", "running_prefect_server", "start_local_services", "start_mlflow_server",
    "start_prefect_server", "start_prefect_worker", "start_process", "use_local_prefect_home",
]
