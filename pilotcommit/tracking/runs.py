"""MLflow runs of the pipeline: found again by their key tag or created (nested under a parent),
their children, copies of a cached run into a new comparison, the latest parent of a config,
and what a new run records first (the resolved config, the dataset inputs)."""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pilotcommit.tracking.tags import (
    PARENT_TAG,
    RUN_NAME_TAG,
    TAG_CONFIG_NAME,
    TAG_KIND,
    TAG_RUN_KEY,
)


@dataclass(frozen=True)
class RunRef:
    """An MLflow run found or created by :func:`find_or_create_run`."""

    run_id: str
    experiment_id: str
    created: bool  # False: an earlier run with the same key was found and reused



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



def metric_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric, sorted by step (last value wins on a repeated step)."""
    by_step: dict[int, float] = {}
    for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
        by_step[int(m.step)] = float(m.value)
    return sorted(by_step.items())




def open_run(client, experiment_id: str, key: str, run_name: str, tags: Mapping[str, str], *,
             parent_run_id: str | None = None, config: Any = None,
             datasets: Mapping[str, tuple[Path, str]] | None = None) -> RunRef:
    """The MLflow run of ``key``, found or created (:func:`find_or_create_run`); a new run gets
    the resolved config as an artifact and ``datasets`` (``{name: (file, context)}``) as inputs."""
    ref = find_or_create_run(client, experiment_id, key, run_name=run_name, tags=tags, parent_run_id=parent_run_id)
    if ref.created:
        if config is not None:
            log_resolved_config(client, ref.run_id, config)
        if datasets:
            log_dataset_inputs(client, ref.run_id, datasets)
    return ref


def resolve_parent_run(client, experiment_name: str, config_name: str, run_id: str | None = None,
                       kind: str = "comparison") -> str:
    """``run_id`` when given, else the newest finished parent run of ``kind`` for
    ``config_name``; :class:`LookupError` saying what to run first when there is none."""
    if run_id:
        return run_id
    experiment = client.get_experiment_by_name(experiment_name)
    parent = latest_parent_run(client, experiment.experiment_id, config_name, kind=kind) if experiment else None
    if parent is None:
        command = "pilotcommit compare" if kind == "comparison" else f"pilotcommit {kind}"
        raise LookupError(f"no finished {kind} of {config_name!r} in MLflow; run `{command}` first")
    return parent.info.run_id
