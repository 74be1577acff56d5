"""Training checkpoints that a run resumes from with identical future results.

A checkpoint is one directory ``<run_dir>/checkpoints/step-000010/`` holding
``state.pt`` (model weights, optimizer and scheduler, the allocation policy's
state with its replay buffer, the loop's counters and evaluation history, the
torch RNG state) and ``meta.json``. It is written under a temporary name and
renamed into place, then ``LATEST`` is replaced atomically, so a crash at any
moment leaves either the previous checkpoint or the new one, never half of one.
Only the newest ``keep`` checkpoints are kept.

These files are the project's own: they are loaded with ``weights_only=False``
because the policy state holds plain dataclasses (rollouts). Never point
``load_checkpoint`` at a file from elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

LATEST = "LATEST"
STATE_FILE = "state.pt"
META_FILE = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message names the path."""


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], meta: dict[str, Any], keep: int = 2) -> Path:
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    # one writer per run directory: any temporary directory is the leftover of a killed writer
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    torch.save(state, tmp / STATE_FILE)
    (tmp / META_FILE).write_text(json.dumps({"step": step, **meta}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / f".{LATEST}.tmp"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, root / LATEST)
    # Newer directories belong to an abandoned run (restarted without resuming): drop them, or
    # pruning by age would delete the checkpoint LATEST now names. Zero-padded names sort by step.
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    newer = [p for p in steps if p.name > final.name]
    older = [p for p in steps if p.name <= final.name][:-keep]
    for old in newer + older:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The directory named by ``LATEST``, or None when the run has no checkpoint."""
    marker = checkpoint_root(run_dir) / LATEST
    if not marker.is_file():
        return None
    path = checkpoint_root(run_dir) / marker.read_text().strip()
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{marker} names {path}, which has no {STATE_FILE}")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    state_file = Path(path) / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"checkpoint not found: {state_file}")
    try:
        return torch.load(state_file, map_location="cpu", weights_only=False)
    except Exception as err:  # corrupt or truncated file: say which
        raise CheckpointError(f"cannot read checkpoint {state_file}: {err}") from err
