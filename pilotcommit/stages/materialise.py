"""Stage outputs on disk that a crash or a concurrent worker can never leave half-written.

:func:`materialise` builds a stage into a temporary folder and moves it into place in one rename,
so a folder that exists is whole; the attempt marker (``attempt.json``) records which task run
restarted a training run from scratch, so a retry of that same task run continues the new run
instead of the old one. Pure file system: no Prefect, no MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pilotcommit.stages.table import STAGE_FILE, read_stage

ATTEMPT_FILE = "attempt.json"  # which task run restarted a run from scratch (kept by retire_outputs)


def _rebase(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str) and value.startswith(old):
        return new + value[len(old):]
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    return value


def materialise(
    out_dir: Path, build: Callable[[Path], dict], valid: Callable[[dict], bool], rebuild: bool = False
) -> dict:
    """Run ``build(tmp_dir)`` and move its directory into ``out_dir`` in one rename, so a crash
    or a concurrent worker never leaves a half-written stage that looks complete. Paths in the
    returned dict are rewritten from the temporary directory to ``out_dir``. A valid existing
    stage is returned as it is unless ``rebuild`` (then it is replaced)."""
    out_dir = Path(out_dir)
    existing = read_stage(out_dir)
    if existing is not None and valid(existing) and not rebuild:
        return existing
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        result = _rebase(build(tmp), str(tmp), str(out_dir))
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / STAGE_FILE).write_text(json.dumps(result, indent=2))
        if out_dir.exists():
            existing = read_stage(out_dir)
            if existing is not None and valid(existing) and not rebuild:  # another worker was first
                return existing
            retired = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out_dir, retired)  # an invalid leftover, or the stage being rebuilt
            shutil.rmtree(retired, ignore_errors=True)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def read_attempt(run_dir: Path) -> str | None:
    """The id of the task run that last restarted ``run_dir`` from scratch (``attempt.json``)."""
    try:
        return json.loads((Path(run_dir) / ATTEMPT_FILE).read_text())["task_run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_attempt(run_dir: Path, task_run_id: str) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{ATTEMPT_FILE}.tmp"
    tmp.write_text(json.dumps({"task_run_id": task_run_id}))
    os.replace(tmp, run_dir / ATTEMPT_FILE)


# --------------------------------------------------------------------------- the shared stages


def ensure_model_files(cfg) -> None:
    """The model stage of a model given as a GGUF file: its conversion into a safetensors folder
    in the model cache, once per file (keyed by its sha256; pilotcommit.models.gguf). Nothing
    for other models. A missing file fails here, before any other stage, saying how to fetch it."""
    from pilotcommit.config import PretrainedModelConfig

    if isinstance(cfg.model, PretrainedModelConfig) and cfg.model.gguf is not None:
        from pilotcommit.models.gguf import ensure_converted

        ensure_converted(cfg.model)


def materialise_data(cfg, out_dir: Path, rebuild: bool = False, log=None) -> dict:
    """The data stage: :func:`pilotcommit.pipeline.prepare_data` into ``out_dir`` (validated
    parquet files), whole or not at all; ``{"prepared": ...}``. Prompts dropped as longer than
    ``model.max_prompt_length`` are logged (the training runs log the same counts as parameters)."""
    from pilotcommit.data.prepared import PreparedData
    from pilotcommit.pipeline import prepare_data
    from pilotcommit.stages.table import prepared_valid

    ensure_model_files(cfg)  # a GGUF model's tokenizer is read from its converted folder
    stage = materialise(Path(out_dir), lambda tmp: {"prepared": prepare_data(cfg, tmp).to_dict()},
                        prepared_valid, rebuild)
    dropped = PreparedData.from_dict(stage["prepared"]).dropped_prompts()
    if dropped and log is not None:
        log.info("prompts dropped as longer than model.max_prompt_length: %s", dropped)
    return stage


def materialise_policy(cfg, prepared: dict, out_dir: Path, rebuild: bool = False) -> dict:
    """The initial-policy stage: the tiny model's warm start into ``out_dir`` (with its progress
    events), or a pretrained model's name (nothing to build); ``{"initial_policy": ..., "local": ...}``."""
    from pilotcommit.config import TinyModelConfig
    from pilotcommit.data.prepared import PreparedData
    from pilotcommit.pipeline import build_initial_policy
    from pilotcommit.runner.progress import WarmStartProgress, emit
    from pilotcommit.stages.table import policy_valid

    if not isinstance(cfg.model, TinyModelConfig):  # a hub model or a converted GGUF file
        ensure_model_files(cfg)
        return {"initial_policy": cfg.model.load_path, "local": cfg.model.gguf is not None}

    def build(tmp: Path) -> dict:
        emit(WarmStartProgress(cfg.model.label, done=False))
        path = build_initial_policy(cfg, PreparedData.from_dict(prepared), tmp)
        emit(WarmStartProgress(cfg.model.label, done=True))
        return {"initial_policy": path, "local": True}

    return materialise(Path(out_dir), build, policy_valid, rebuild)
