"""Experiment tracking: the small interface the training loop logs through, and MLflow behind it.

The loop calls a :class:`Tracker` with plain dicts named as in DESIGN.md
("Metric names"); it never imports MLflow. :class:`MemoryTracker` keeps
everything in memory (tests, the bare loop). :class:`MlflowTracker` writes to
one MLflow run through a background queue, so a tracking-server outage delays
metrics instead of stopping the training, and drops the (metric, step) pairs
already in the store when a run resumes. The helpers below it are what the flows need: where the store is
(``resolve_tracking_uri``: explicit > ``$MLFLOW_TRACKING_URI`` > SQLite under the
runs directory), a fail-fast reachability check, experiments, parent and child
runs found again by a key tag, the resolved config and dataset inputs, and the
code version that goes into every cache key.

Deliberately not here: what a run trains (loop.py / pipeline.py) and how a
comparison is summarised (report.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import pandas as pd


@runtime_checkable
class Tracker(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Per-training-step metrics (``rollouts/*``, ``alloc/*``, ``loss/*``, ...) at ``step``."""

    def log_evaluation(self, metrics: Mapping[str, float], step: int, cumulative_rollouts: int) -> None:
        """Evaluation metrics (``eval/*``) at ``step``; trackers also log them under
        ``by_rollouts/`` against ``cumulative_rollouts`` so charts compare by budget."""

    def log_prompt_stats(self, table: pd.DataFrame, step: int, name: str) -> None:
        """A per-prompt table (``prompt_id``, ``pass_rate``, ``reward_variance``, ...):
        trackers log histograms of it as figures and the table itself."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flat run parameters (resolved config values)."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file produced by the run."""

    def checkpoint_barrier(self) -> bool:
        """Called just before a checkpoint is written: make what was logged so far durable (a
        crash after the checkpoint then loses nothing at or before it). True when it is."""


class MemoryTracker:
    """Keeps everything it is given; for tests and runs without a tracking store."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.evaluations: list[tuple[int, int, dict[str, float]]] = []
        self.prompt_stats: list[tuple[int, str, pd.DataFrame]] = []
        self.params: dict[str, Any] = {}
        self.artifacts: list[tuple[Path, str | None]] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_evaluation(self, metrics: Mapping[str, float], step: int, cumulative_rollouts: int) -> None:
        self.evaluations.append((step, cumulative_rollouts, dict(metrics)))

    def log_prompt_stats(self, table: pd.DataFrame, step: int, name: str) -> None:
        self.prompt_stats.append((step, name, table.copy()))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def checkpoint_barrier(self) -> bool:
        return True  # nothing is queued


# =========================================================================== MLflow
#
# Everything below talks to MLflow. The training loop only sees the Tracker protocol above; the
# flows use the helpers (experiments, parent/child runs, tags, config and dataset inputs).
# Deliberately not here: what a run trains or how a comparison is summarised (report.py).

logger = logging.getLogger(__name__)

# Tag keys owned by this project (DESIGN.md lists method, model, seed, config_hash, git_sha,
# prefect_flow_run_id; the pilotcommit.* keys identify runs so a rerun finds them again).
TAG_RUN_KEY = "pilotcommit.run_key"
TAG_KIND = "pilotcommit.kind"  # "comparison", "sweep", "train", "regression"
TAG_CODE_VERSION = "pilotcommit.code_version"
TAG_ACCEPTED_BASELINE = "pilotcommit.accepted_baseline"
TAG_ACCEPTED_AT = "pilotcommit.accepted_at"
TAG_CONFIG_NAME = "pilotcommit.config_name"
TAG_DELAYED_METRICS = "pilotcommit.tracking.delayed_metrics"
TAG_DELAYED_STEPS = "pilotcommit.tracking.delayed_steps"
TAG_LOST_METRICS = "pilotcommit.tracking.lost_metrics"
TAG_SPOOL = "pilotcommit.tracking.spool_file"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"

BY_ROLLOUTS_PREFIX = "by_rollouts/"

# Modules whose source does not change any stage's outputs (only how they are shown or
# orchestrated); editing them must not invalidate cached training runs.
_PRESENTATION_MODULES = frozenset({"cli.py", "report.py", "services.py", "tracking.py", "sweep.py"})


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached or written; raised before any compute starts."""


# --------------------------------------------------------------------------- provenance


def source_hash(package_dir: Path | None = None) -> str:
    """Hash of the package's ``*.py`` sources that can change results (16 hex).

    Part of every stage's cache key: a code edit invalidates cached stages even without a
    commit (git sha alone would not see uncommitted edits).
    """
    root = Path(package_dir) if package_dir else Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in _PRESENTATION_MODULES:
            continue
        digest.update(rel.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+<source hash>``: the code part of every stage's cache key.

    Computed once per process: the code that runs is the code imported at start, even if the
    files change on disk meanwhile (a later edit belongs to the next process).
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg_version = version("pilotcommit")
    except PackageNotFoundError:
        pkg_version = "0+unknown"
    return f"{pkg_version}+{source_hash()}"


def git_sha(repo_dir: Path | None = None) -> str:
    """The repository's HEAD commit, ``"<sha>-dirty"`` with uncommitted changes, ``"unknown"``
    outside a git checkout (an installed wheel)."""
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


# --------------------------------------------------------------------------- store location


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


# --------------------------------------------------------------------------- experiments, runs


@dataclass(frozen=True)
class RunRef:
    """An MLflow run found or created by :func:`find_or_create_run`."""

    run_id: str
    experiment_id: str
    created: bool  # False: an earlier run with the same key was found and reused


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


def run_key(*parts: object) -> str:
    """Stable identity of a run from its defining parts (config hash, code version, method, ...)."""
    text = json.dumps([str(p) for p in parts])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_run(client, experiment_id: str, key: str):
    """The newest live run tagged with ``key``, or ``None``."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_RUN_KEY}` = '{key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def find_or_create_run(
    client,
    experiment_id: str,
    key: str,
    *,
    run_name: str,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> RunRef:
    """Reuse the run tagged ``pilotcommit.run_key = key`` or create it (nested under
    ``parent_run_id``). A reused run that ended FAILED or KILLED is reopened (RUNNING) so a
    resumed training continues in it; its existing tags are kept (``prefect_flow_run_id`` stays
    the flow run that produced it) and only missing ones are added."""
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    all_tags[TAG_RUN_KEY] = key
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    existing = find_run(client, experiment_id, key)
    if existing is not None:
        run_id = existing.info.run_id
        if existing.info.status in ("FAILED", "KILLED"):
            client.update_run(run_id, status="RUNNING")
        for k, v in all_tags.items():
            if k not in existing.data.tags:
                client.set_tag(run_id, k, v)
        return RunRef(run_id, experiment_id, created=False)
    run = client.create_run(experiment_id, tags=all_tags, run_name=run_name)
    return RunRef(run.info.run_id, experiment_id, created=True)


def child_runs(client, experiment_id: str, parent_run_id: str) -> list:
    """Runs nested directly under ``parent_run_id``."""
    return client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=5000
    )


def run_exists(client, run_id: str | None) -> bool:
    """True when ``run_id`` is a live run of the store (not deleted)."""
    if not run_id:
        return False
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except Exception:  # noqa: BLE001 (unknown id, or another store)
        return False


def copy_run_contents(client, source_run_id: str, target_run_id: str) -> int:
    """Copy metrics (full histories), params, artifacts and the run's own tags from one run to
    another; returns the number of metric values copied.

    Used when a cached training run is reused by a new comparison or sweep: the new parent gets
    its own child run with the same data, instead of a child that points elsewhere.
    """
    from mlflow.entities import Param

    source = client.get_run(source_run_id)
    copied = 0
    for key in source.data.metrics:
        history = client.get_metric_history(source_run_id, key)
        for i in range(0, len(history), 1000):
            client.log_batch(target_run_id, metrics=history[i : i + 1000])
        copied += len(history)
    target_params = client.get_run(target_run_id).data.params
    params = [Param(k, v) for k, v in source.data.params.items() if k not in target_params]
    for i in range(0, len(params), 100):
        client.log_batch(target_run_id, params=params[i : i + 100])
    skip = {TAG_RUN_KEY, PARENT_TAG, RUN_NAME_TAG, "prefect_flow_run_id"}
    for key, value in source.data.tags.items():
        if key not in skip and not key.startswith("mlflow."):
            client.set_tag(target_run_id, key, value)
    client.set_tag(target_run_id, "pilotcommit.copied_from", source_run_id)
    with tempfile.TemporaryDirectory() as tmp:
        if client.list_artifacts(source_run_id):
            local = client.download_artifacts(source_run_id, "", tmp)
            client.log_artifacts(target_run_id, local)
    return copied


TAG_FINGERPRINT_PREFIX = "pilotcommit.fingerprint."
TAG_FINGERPRINT_KEY = "pilotcommit.fingerprint_key"


def comparison_fingerprint(client, parent_run_id: str) -> dict[str, str]:
    """The machine fingerprint (``pilotcommit.fingerprint``) of a comparison's training runs,
    read from their ``env.*`` params; a value the runs disagree on reads ``mixed: a | b``;
    empty when no run recorded one (runs older than the fingerprint)."""
    from pilotcommit import fingerprint

    parent = client.get_run(parent_run_id)
    values: dict[str, set[str]] = {}
    for run in child_runs(client, parent.info.experiment_id, parent_run_id):
        for key, value in fingerprint.from_params(run.data.params).items():
            values.setdefault(key, set()).add(value)
    return {k: v.pop() if len(v) == 1 else "mixed: " + " | ".join(sorted(v)) for k, v in values.items()}


def baseline_fingerprint(run) -> dict[str, str]:
    """The fingerprint an accepted baseline (a parent run) carries in its tags."""
    return {
        k[len(TAG_FINGERPRINT_PREFIX):]: v
        for k, v in run.data.tags.items()
        if k.startswith(TAG_FINGERPRINT_PREFIX)
    }


def accept_baseline(client, run_id: str, note: str = "") -> None:
    """Mark a comparison's parent run as the accepted baseline of its configuration name, with
    the machine fingerprint its training runs recorded (tags ``pilotcommit.fingerprint.*``)."""
    from pilotcommit import fingerprint

    client.set_tag(run_id, TAG_ACCEPTED_BASELINE, "true")
    client.set_tag(run_id, TAG_ACCEPTED_AT, f"{time.time():.3f}")
    if note:
        client.set_tag(run_id, "pilotcommit.accepted_note", note)
    machine = comparison_fingerprint(client, run_id)
    for key, value in machine.items():
        client.set_tag(run_id, TAG_FINGERPRINT_PREFIX + key, value[:5000])
    if machine:
        client.set_tag(run_id, TAG_FINGERPRINT_KEY, fingerprint.fingerprint_key(machine))


def find_accepted_baseline(
    client, experiment_id: str, config_name: str, exclude_run_id: str | None = None,
    fingerprint_key: str | None = None,
):
    """The most recently accepted baseline of ``config_name`` (a parent run), or ``None``.

    With ``fingerprint_key``, the newest baseline accepted from that hardware and software comes
    first (like with like); only when there is none, the newest from anywhere (the caller then
    says that it came from other hardware)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_ACCEPTED_BASELINE}` = 'true' and tags.`{TAG_CONFIG_NAME}` = '{config_name}'"
        ),
        max_results=1000,
    )
    runs = [r for r in runs if r.info.run_id != exclude_run_id]
    if not runs:
        return None
    same = [r for r in runs if fingerprint_key and r.data.tags.get(TAG_FINGERPRINT_KEY) == fingerprint_key]
    return max(same or runs, key=lambda r: float(r.data.tags.get(TAG_ACCEPTED_AT, "0")))


def latest_parent_run(client, experiment_id: str, config_name: str, kind: str = "comparison"):
    """The newest finished parent run of ``kind`` for ``config_name``, or ``None``."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_KIND}` = '{kind}' and tags.`{TAG_CONFIG_NAME}` = '{config_name}' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.end_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def log_resolved_config(client, run_id: str, config: Any, artifact_file: str = "config/resolved.yaml") -> None:
    """The resolved config (every default filled in) as a YAML artifact."""
    import yaml

    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / Path(artifact_file).name
        target.write_text(yaml.safe_dump(data, sort_keys=False))
        client.log_artifact(run_id, str(target), str(Path(artifact_file).parent))


def log_dataset_inputs(client, run_id: str, datasets: Mapping[str, tuple[Path, str]]) -> None:
    """``mlflow.log_input`` for each prepared file: ``{name: (parquet path, context)}``, context
    being ``training`` or ``evaluation``. The source is the file itself, the digest MLflow's."""
    from mlflow.data import from_pandas
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for name, (path, context) in datasets.items():
        path = Path(path)
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True)
        with warnings.catch_warnings():  # MLflow's hints on int columns and source guessing
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(frame, source=str(path.resolve()), name=name)
            entity = dataset._to_mlflow_entity()
        inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dict -> flat ``{"learner.lr": "0.0001", ...}`` (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def metric_chart_url(ui_url: str, experiment_id: str, run_ids: list[str],
                     metric: str = "by_rollouts/eval/average_accuracy") -> str:
    """The MLflow UI page charting ``metric`` for ``run_ids`` against MLflow's step (for
    ``by_rollouts/`` metrics: the cumulative rollout budget). Same query as the UI builds."""
    from urllib.parse import quote

    return (
        f"{ui_url.rstrip('/')}/#/metric?runs={json.dumps(run_ids)}&metric={quote(json.dumps(metric))}"
        f"&experiments={json.dumps([experiment_id])}&plot_metric_keys={quote(json.dumps([metric]))}"
        "&plot_layout={}&x_axis=step&y_axis_scale=linear&line_smoothness=1&show_point=true"
        "&deselected_curves=[]&last_linear_y_axis_range=[]"
    ).replace(" ", "")


def metric_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric, sorted by step (last value wins on a repeated step)."""
    by_step: dict[int, float] = {}
    for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
        by_step[int(m.step)] = float(m.value)
    return sorted(by_step.items())


# --------------------------------------------------------------------------- prompt-stat figures


PROMPT_STATS_COLUMNS = ("pass_rate", "reward_variance")


def check_prompt_stats(table: pd.DataFrame, title: str) -> None:
    for column in PROMPT_STATS_COLUMNS:
        if column not in table.columns:
            raise ValueError(f"prompt stats {title!r}: missing column {column!r} (have {list(table.columns)})")


def prompt_stats_figure(table: pd.DataFrame, title: str):
    """Histograms of per-prompt pass rate and reward variance (a matplotlib ``Figure``).

    Built without pyplot (no global figure registry), so it can be drawn on a background thread
    while the training thread runs; nothing needs closing.
    """
    from matplotlib.figure import Figure

    check_prompt_stats(table, title)
    fig = Figure(figsize=(9, 3.4))
    ax_pass, ax_var = fig.subplots(1, 2)
    ax_pass.hist(table["pass_rate"].to_numpy(dtype=float), bins=20, range=(0.0, 1.0), color="#4477aa")
    ax_pass.set_xlabel("pass rate")
    ax_pass.set_ylabel("prompts")
    ax_var.hist(table["reward_variance"].to_numpy(dtype=float), bins=20, range=(0.0, 0.25), color="#cc6677")
    ax_var.set_xlabel("reward variance p(1-p)")
    fig.suptitle(f"{title} ({len(table)} prompts)")
    # a fixed layout: tight_layout measured every text box and cost a fifth of the drawing
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.16, top=0.86, wspace=0.22)
    return fig


# --------------------------------------------------------------------------- the tracker


# MLflow error codes that retrying cannot fix (the request itself is wrong); anything else,
# including connection failures (reported as INTERNAL_ERROR), is treated as an outage.
_PERMANENT_ERROR_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "MALFORMED_REQUEST",
        "INVALID_STATE", "RESOURCE_ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED",
        "ENDPOINT_NOT_FOUND",
    }
)


def is_permanent_error(err: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and err.error_code in _PERMANENT_ERROR_CODES


@dataclass
class _Op:
    """One queued write: a metric batch, or any other client call (params, artifacts)."""

    describe: str
    metrics: list = field(default_factory=list)  # mlflow.entities.Metric
    call: Callable[[], None] | None = None
    attempts: int = 0
    cleanup: Callable[[], None] | None = None


@dataclass
class TrackingGap:
    """What an outage cost: writes that had to wait, and writes that never arrived."""

    delayed_metrics: int = 0
    delayed_steps: tuple[int, int] | None = None  # (first, last) training step delayed
    failed_attempts: int = 0
    lost_metrics: int = 0
    lost_operations: list[str] = field(default_factory=list)
    spool_path: Path | None = None

    def note_delayed(self, op: _Op) -> None:
        if op.attempts == 0:
            self.delayed_metrics += len(op.metrics)
            steps = [m.step for m in op.metrics if not m.key.startswith(BY_ROLLOUTS_PREFIX)]
            if steps:
                lo, hi = min(steps), max(steps)
                if self.delayed_steps is not None:
                    lo, hi = min(lo, self.delayed_steps[0]), max(hi, self.delayed_steps[1])
                self.delayed_steps = (lo, hi)

    @property
    def any(self) -> bool:
        return bool(self.delayed_metrics or self.failed_attempts or self.lost_metrics or self.lost_operations)

    def summary(self) -> str:
        if not self.any:
            return "no tracking outage"
        parts = [f"{self.failed_attempts} failed write attempt(s)", f"{self.delayed_metrics} metric value(s) delayed"]
        if self.delayed_steps:
            parts.append(f"steps {self.delayed_steps[0]}-{self.delayed_steps[1]}")
        if self.lost_metrics or self.lost_operations:
            parts.append(
                f"{self.lost_metrics} metric value(s) and {len(self.lost_operations)} other write(s) "
                f"not delivered (saved to {self.spool_path})"
            )
        return "; ".join(parts)


def start_system_metrics(run_id: str, tracking_uri: str, interval_s: float | None):
    """Start MLflow's ``SystemMetricsMonitor`` on ``run_id`` (``system/*`` metrics, a daemon
    thread sampling this machine every ``interval_s``); returns it, to be ``finish()``-ed, or
    None when ``interval_s`` is None or psutil is missing.

    GPU metrics (``system/gpu_*``) need ``pynvml`` (the ``nvidia-ml-py`` package, which vLLM's
    CUDA build installs); without it MLflow skips them, and this says so once on a CUDA machine.
    A resumed run continues the ``system/*`` steps where they stopped (``resume_logging``).
    """
    if interval_s is None:
        return None
    from pilotcommit.dependencies import available, warn_missing_once

    # psutil before MLflow's monitor, which imports it at module level: a base dependency, but
    # an environment without it must lose the system metrics, not the run
    if not available("psutil"):
        logger.warning("MLflow run %s: no system metrics (psutil is not installed: pip install psutil)", run_id)
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    import torch

    if torch.cuda.is_available():
        warn_missing_once("pynvml", f"MLflow run {run_id}")
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, samples_before_logging=1,
                                   resume_logging=True, tracking_uri=tracking_uri)
    monitor.start()
    return monitor


class MlflowTracker:
    """:class:`Tracker` writing to one MLflow run, without ever stopping the training.

    Writes go through a queue drained by a background thread: metrics are batched
    (``log_batch``, at most ``max_batch`` values per call), and a failed write stays at the head
    of the queue and is retried with exponential backoff, so a tracking-server outage delays
    metrics instead of killing the run. :meth:`close` waits up to ``close_timeout_s`` for the
    queue, then records the gap (tags ``pilotcommit.tracking.*``) and saves anything
    undelivered to a JSONL spool file.

    On a resumed run (same ``run_id``) the loop re-logs the steps after its last checkpoint;
    the tracker reads every (metric, step) pair already logged at start and drops exactly those
    pairs, so no step appears twice and the gaps a crash left (writes still queued when
    the process died, possibly before later ones that were delivered) are filled.
    """

    def __init__(
        self,
        run_id: str,
        client=None,
        *,
        tracking_uri: str | None = None,
        skip_logged_steps: bool = True,
        flush_interval_s: float = 1.0,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 20.0,
        close_timeout_s: float = 60.0,
        max_batch: int = 1000,
        spool_path: Path | None = None,
        prompt_stats_tables: bool = True,
    ) -> None:
        if client is None:
            if tracking_uri is None:
                raise ValueError("MlflowTracker needs a client or a tracking_uri")
            client = mlflow_client(tracking_uri)
        self.run_id = run_id
        self.client = client
        self.flush_interval_s = flush_interval_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.close_timeout_s = close_timeout_s
        self.max_batch = max_batch
        self.spool_path = Path(spool_path) if spool_path else None
        self.prompt_stats_tables = prompt_stats_tables
        self.gap = TrackingGap()
        self._queue: deque[_Op] = deque()
        self._lock = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._tmpdir = Path(tempfile.mkdtemp(prefix="pilotcommit-tracker-"))
        # Every step already in the store per metric key (resume: exact (metric, step) pairs are
        # dropped, not everything up to a highest step), and params already set.
        self._logged_steps: dict[str, set[int]] = {}
        self._logged_params: dict[str, str] = {}
        try:
            run = client.get_run(run_id)
        except Exception as err:  # before training: fail clearly rather than log into the void
            raise TrackingUnavailable(f"MLflow run {run_id}: cannot read it: {err}") from err
        self._logged_params = dict(run.data.params)
        if skip_logged_steps:
            for key in run.data.metrics:
                steps = [m.step for m in client.get_metric_history(run_id, key)]
                self._logged_steps[key] = set(steps)

    # ---------------------------------------------------------------- Tracker protocol

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._enqueue_metrics({k: v for k, v in metrics.items()}, step, f"metrics at step {step}")

    def log_evaluation(self, metrics: Mapping[str, float], step: int, cumulative_rollouts: int) -> None:
        self._enqueue_metrics(dict(metrics), step, f"evaluation at step {step}")
        self._enqueue_metrics(
            {f"{BY_ROLLOUTS_PREFIX}{k}": v for k, v in metrics.items()},
            int(cumulative_rollouts),
            f"evaluation at {cumulative_rollouts} rollouts",
        )

    def log_prompt_stats(self, table: pd.DataFrame, step: int, name: str) -> None:
        # Only a copy of the table is taken here; the figure and the CSV are written by the
        # background thread just before the upload, so drawing them (~0.15 s per call) does not
        # hold up the training thread, which spends its time in torch ops without the GIL.
        title = f"{name}, step {step}"
        check_prompt_stats(table, title)  # a wrong table fails now, in the caller, not in a retry loop
        table = table.copy()
        # Step-numbered files: re-logging a step after a resume overwrites instead of appending.
        stem = f"step_{int(step):06d}"
        out_dir = self._tmpdir / f"{name}-{stem}"
        figure_path = out_dir / f"{stem}.png"
        table_path = out_dir / f"{stem}.csv" if self.prompt_stats_tables else None
        artifact_dir = f"prompt_stats/{name}"

        def upload() -> None:
            if not (figure_path.exists() and (table_path is None or table_path.exists())):
                # drawn once, even if the upload is retried after an outage
                out_dir.mkdir(parents=True, exist_ok=True)
                prompt_stats_figure(table, title).savefig(figure_path, dpi=90)
                if table_path is not None:
                    table.to_csv(table_path, index=False)
            for path in (figure_path, table_path):
                if path is not None:
                    self.client.log_artifact(self.run_id, str(path), artifact_dir)

        self._enqueue(_Op(f"prompt stats {name!r} at step {step}", call=upload,
                          cleanup=lambda: _remove_tree(out_dir)))

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        fresh: list = []
        for key, value in params.items():
            text = str(value)[:6000]  # MLflow's limit on a param value
            previous = self._logged_params.get(key)
            if previous == text:
                continue
            if previous is not None:
                # Params are immutable in MLflow; a resumed run with a changed value is a bug
                # upstream (the run key includes the config hash), not a reason to stop training.
                logger.warning("param %s already logged as %r, not %r: kept the first", key, previous, text)
                continue
            self._logged_params[key] = text
            fresh.append(Param(key, text))
        for i in range(0, len(fresh), 100):  # log_batch accepts 100 params per call
            chunk = fresh[i : i + 100]
            self._enqueue(_Op(f"{len(chunk)} params", call=lambda c=chunk: self.client.log_batch(self.run_id, params=c)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        self._enqueue(_Op(f"artifact {path}", call=lambda: self.client.log_artifact(self.run_id, str(path), artifact_path)))

    # ---------------------------------------------------------------- lifecycle

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self._enqueue(_Op(f"tag {key}", call=lambda k=key, v=str(value): self.client.set_tag(self.run_id, k, v)))

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued write is delivered (True) or ``timeout_s`` passes (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            self._lock.notify_all()
            while self._queue:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(timeout=0.05 if remaining is None else min(remaining, 0.05))
        return True

    def checkpoint_barrier(self, timeout_s: float = 30.0) -> bool:
        """Deliver everything queued before a checkpoint is written, so that a crash after it
        (even SIGKILL) loses no metric of a step at or before the checkpoint: the resumed run
        re-logs exactly the steps after it. Skipped (False) while MLflow is failing: an outage
        must not stall the training; the queue still holds those writes and retries them."""
        with self._lock:
            failing = bool(self._queue) and self._queue[0].attempts > 0
        return False if failing else self.flush(timeout_s)

    def close(self, status: str | None = None) -> TrackingGap:
        """Deliver what is queued (up to ``close_timeout_s``), record the gap, optionally end
        the run with ``status`` (FINISHED / FAILED), and return the gap."""
        delivered = self.flush(self.close_timeout_s)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            leftover = list(self._queue)
            self._queue.clear()
        if not delivered and leftover:
            self._spool(leftover)
        if self.gap.any:
            logger.warning("MLflow run %s: %s", self.run_id, self.gap.summary())
            tags = {
                TAG_DELAYED_METRICS: self.gap.delayed_metrics,
                TAG_DELAYED_STEPS: "-".join(map(str, self.gap.delayed_steps)) if self.gap.delayed_steps else "",
                TAG_LOST_METRICS: self.gap.lost_metrics,
            }
            if self.gap.spool_path:
                tags[TAG_SPOOL] = str(self.gap.spool_path)
            self._try_now(lambda: [self.client.set_tag(self.run_id, k, str(v)) for k, v in tags.items()])
        if status:
            self._try_now(lambda: self.client.set_terminated(self.run_id, status=status))
        _remove_tree(self._tmpdir)
        return self.gap

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    # ---------------------------------------------------------------- internals

    def _enqueue_metrics(self, metrics: Mapping[str, float], step: int, describe: str) -> None:
        from mlflow.entities import Metric

        timestamp_ms = int(time.time() * 1000)
        values = []
        for key, value in metrics.items():
            if step in self._logged_steps.get(key, ()):
                continue  # already in the store from before a resume
            values.append(Metric(key=key, value=float(value), timestamp=timestamp_ms, step=int(step)))
        if values:
            self._enqueue(_Op(describe, metrics=values))

    def _enqueue(self, op: _Op) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"MlflowTracker for run {self.run_id} is closed ({op.describe})")
            # Merge consecutive metric batches so a fast loop does not make one call per step.
            if op.metrics and self._queue and self._queue[-1].metrics and self._queue[-1].attempts == 0 \
                    and len(self._queue[-1].metrics) + len(op.metrics) <= self.max_batch and len(self._queue) > 1:
                tail = self._queue[-1]
                tail.metrics.extend(op.metrics)
                tail.describe = f"{tail.describe} + {op.describe}"
            else:
                self._queue.append(op)
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name=f"mlflow-tracker-{self.run_id[:8]}", daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def _drain(self) -> None:
        delay_s = self.retry_initial_s
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait(timeout=self.flush_interval_s)
                if self._closed:
                    return
                op = self._queue[0]  # stays queued until delivered
            try:
                self._deliver(op)
            except Exception as err:  # noqa: BLE001 (any failure must not reach the training)
                if is_permanent_error(err):
                    logger.error("MLflow rejected %s for run %s, dropped: %s", op.describe, self.run_id, err)
                    self.gap.lost_operations.append(f"{op.describe}: rejected: {err}")
                    self.gap.lost_metrics += len(op.metrics)
                    self._pop(op)
                    continue
                with self._lock:
                    self.gap.failed_attempts += 1
                    self.gap.note_delayed(op)
                    op.attempts += 1
                if op.attempts == 1:
                    logger.warning("MLflow write failed (%s), will retry: %s", op.describe, err)
                with self._lock:
                    if self._closed:
                        return
                    self._lock.wait(timeout=delay_s)
                delay_s = min(delay_s * 2.0, self.retry_max_s)
                continue
            delay_s = self.retry_initial_s
            if op.attempts:
                logger.warning("MLflow write delivered after %d retries: %s", op.attempts, op.describe)
            self._pop(op)

    def _deliver(self, op: _Op) -> None:
        if op.metrics:
            self.client.log_batch(self.run_id, metrics=op.metrics)
        elif op.call is not None:
            op.call()

    def _pop(self, op: _Op) -> None:
        with self._lock:
            if self._queue and self._queue[0] is op:
                self._queue.popleft()
            self._lock.notify_all()
        if op.cleanup:
            op.cleanup()

    def _spool(self, leftover: list[_Op]) -> None:
        path = self.spool_path or (self._tmpdir.parent / f"pilotcommit-undelivered-{self.run_id}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            for op in leftover:
                for m in op.metrics:
                    handle.write(json.dumps({"run_id": self.run_id, "key": m.key, "value": m.value,
                                             "step": m.step, "timestamp": m.timestamp}) + "\n")
                if not op.metrics:
                    handle.write(json.dumps({"run_id": self.run_id, "undelivered": op.describe}) + "\n")
                    self.gap.lost_operations.append(op.describe)
                self.gap.lost_metrics += len(op.metrics)
        self.gap.spool_path = path

    def _try_now(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as err:  # noqa: BLE001
            logger.warning("MLflow run %s: could not record the tracking gap / status: %s", self.run_id, err)


def replay_spool(client, spool_path: Path) -> int:
    """Send the metrics of a spool file written by :meth:`MlflowTracker.close` (after an outage
    that outlasted the run); returns how many values were sent."""
    from mlflow.entities import Metric

    by_run: dict[str, list] = {}
    for line_no, line in enumerate(Path(spool_path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{spool_path}:{line_no}: not JSON: {err}") from None
        if "key" in row:
            by_run.setdefault(row["run_id"], []).append(
                Metric(row["key"], float(row["value"]), int(row["timestamp"]), int(row["step"]))
            )
    sent = 0
    for run_id, metrics in by_run.items():
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i : i + 1000])
        sent += len(metrics)
    return sent


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
