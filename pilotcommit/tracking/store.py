"""Where the MLflow store is and whether it can be used: the runs directory, the tracking URI
(explicit > ``$MLFLOW_TRACKING_URI`` > SQLite under the runs directory), a fail-fast check
before any compute, the client, and experiments."""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pilotcommit.tracking.tags import EXPERIMENT_KIND_TAG


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached or written; raised before any compute starts."""



def default_runs_root() -> Path:
    """Where runs, caches and the default MLflow store live: ``$PILOTCOMMIT_RUNS_DIR``, else
    ``./runs`` under the working directory."""
    env = os.environ.get("PILOTCOMMIT_RUNS_DIR")
    return Path(env).expanduser().resolve() if env else (Path.cwd() / "runs").resolve()


def resolve_tracking_uri(explicit: str | None = None, runs_root: Path | None = None) -> str:
    """The MLflow tracking URI: ``explicit`` (config ``tracking.tracking_uri`` or ``--tracking-uri``)
    > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///<runs_root>/mlflow.db``.

    The default store sits beside the runs it describes, so one directory holds a whole
    experiment's outputs and can be moved or deleted as one.
    """
    if explicit:
        return explicit
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(runs_root) if runs_root else default_runs_root()
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def default_artifact_root(tracking_uri: str, runs_root: Path | None = None) -> str | None:
    """Artifact location for new experiments of a local store (``<runs_root>/mlartifacts``);
    ``None`` for a server, which decides itself."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    root = Path(runs_root) if runs_root else default_runs_root()
    if tracking_uri.startswith("sqlite:///"):
        root = Path(tracking_uri[len("sqlite:///"):]).parent
    return (root / "mlartifacts").resolve().as_uri()


def configure_mlflow_http(max_retries: int = 2, timeout_s: int = 15, backoff_factor: int = 1) -> None:
    """Short HTTP retries inside MLflow's client (user settings in the environment win).

    MLflow's defaults retry a dead server for minutes inside one call; the tracker below
    does its own queueing and backoff, so each call should fail fast instead.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", str(backoff_factor))


def check_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any compute, when the tracking store cannot be used.

    http(s): ``GET <uri>/health`` must answer 200 within ``timeout_s``. sqlite/file: the
    directory must be creatable and writable. Other schemes (databricks, ...) are not checked.
    """
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                status = response.status
        except urllib.error.HTTPError as err:
            status = err.code
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} is unreachable ({reason}). Start it "
                "(`pilotcommit serve` or `mlflow server --host 127.0.0.1 --port 5000`), or unset "
                "MLFLOW_TRACKING_URI / tracking.tracking_uri to use the local SQLite store."
            ) from None
        if status != 200:
            raise TrackingUnavailable(f"MLflow tracking server {uri}: {url} answered HTTP {status}")
        return
    if parsed.scheme == "sqlite" or parsed.scheme in ("", "file"):
        if parsed.scheme == "sqlite":
            path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
            directory = path.parent if path else None
        else:
            directory = Path(parsed.path if parsed.scheme == "file" else uri)
        if directory is None:
            return
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
                pass
        except OSError as err:
            raise TrackingUnavailable(f"tracking store {uri}: cannot write to {directory}: {err}") from None


def mlflow_client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def ensure_experiment(client, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``) when missing;
    a deleted experiment of that name is restored rather than shadowed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location,
                tags={EXPERIMENT_KIND_TAG: "custom_model_development"},
            )
        except Exception:  # a concurrent worker created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        # MLflow 3's UI opens GenAI (traces) views unless an experiment says it is model training.
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development")
    return experiment.experiment_id


