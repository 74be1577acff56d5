"""Where a flow writes and tracks, resolved once per flow run: the runs directory (and its
layout), the MLflow store and experiment, the code version of every cache key, the git commit.

:func:`open_experiment` is how every flow starts: load the config (or the embedded demo), check
before any compute that this machine can run it (GPUs, optional packages) and that the store
answers, and make sure the MLflow experiment exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pilotcommit import tracking
from pilotcommit.config import ExperimentConfig, demo_config_path, load_experiment_config
from pilotcommit.stages.table import RunsLayout


@dataclass(frozen=True)
class Context:
    """Where a flow writes and tracks."""

    runs_root: Path
    tracking_uri: str
    experiment_id: str
    code_version: str
    git_sha: str

    @property
    def layout(self) -> RunsLayout:
        return RunsLayout(self.runs_root)

    def client(self):
        return tracking.mlflow_client(self.tracking_uri)

    def to_dict(self) -> dict:
        return {"runs_root": str(self.runs_root), "tracking_uri": self.tracking_uri,
                "experiment_id": self.experiment_id, "code_version": self.code_version,
                "git_sha": self.git_sha}

    @classmethod
    def from_dict(cls, data: dict) -> Context:
        return cls(Path(data["runs_root"]), data["tracking_uri"], data["experiment_id"],
                   data["code_version"], data["git_sha"])


def make_context(experiment_name: str, runs_dir: str | None, tracking_uri: str | None) -> Context:
    """Resolve the runs directory and the tracking store, check the store is usable (fail fast,
    before any compute), and make sure the MLflow experiment exists."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # copies of cached runs
    runs_root = Path(runs_dir).expanduser().resolve() if runs_dir else tracking.default_runs_root()
    runs_root.mkdir(parents=True, exist_ok=True)
    uri = tracking.resolve_tracking_uri(tracking_uri, runs_root)
    tracking.configure_mlflow_http()
    tracking.check_tracking_server(uri)
    client = tracking.mlflow_client(uri)
    experiment_id = tracking.ensure_experiment(client, experiment_name, tracking.default_artifact_root(uri, runs_root))
    return Context(runs_root, uri, experiment_id, tracking.code_version(), tracking.git_sha())


def preflight(cfg: ExperimentConfig, where: str) -> None:
    """What must hold before any data or model is loaded: enough GPUs, the optional packages
    the config's settings need."""
    from pilotcommit.dependencies import check_experiment
    from pilotcommit.runner.torchrun import check_gpus

    check_gpus(cfg, where)
    check_experiment(cfg, where)


def open_experiment(config_path: str | None, overrides: list[str] | None, runs_dir: str | None,
                    tracking_uri: str | None, *, where: str = "") -> tuple[ExperimentConfig, Context]:
    """The validated config (default: the embedded demo) and the flow's context, after the
    preflight checks (:func:`preflight`)."""
    cfg = load_experiment_config(config_path or demo_config_path(), list(overrides or []))
    preflight(cfg, where or f"experiment {cfg.name}")
    ctx = make_context(cfg.tracking.experiment_name or cfg.name, runs_dir, tracking_uri or cfg.tracking.tracking_uri)
    return cfg, ctx
