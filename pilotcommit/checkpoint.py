"""Training checkpoints that a run resumes from with identical future results, and that cannot run code.

A checkpoint is one directory ``<run_dir>/checkpoints/step-000010/`` holding

- ``meta.json``: step, config hash, method, seed (plain JSON, read and checked first);
- ``state.json``: every value of the state that is not a tensor (the allocation policy's
  state with its replay buffer and stored rollouts, the loop's counters and evaluation
  history, the optimizer's hyper-parameters and step counts, the numpy generator) as tagged
  JSON whose only object types are the allow-listed records of :func:`record_types`;
- ``state.pt``: the tensors (model weights, AdamW moments, the torch RNG state) as one flat
  ``{name: tensor}`` dict, loaded with ``torch.load(weights_only=True)``.

Nothing in a checkpoint is unpickled: a file written by someone else can at worst fail to
load (``CheckpointError`` naming it), never execute code. ``LATEST`` may only name a
``step-NNNNNN`` directory inside the run's own checkpoint folder; anything else (an absolute
path, ``..``, an empty or truncated marker) is refused naming the marker file.

Writing: the directory is written under a temporary name and renamed into place, then
``LATEST`` is replaced atomically, so a crash at any moment leaves either the previous
checkpoint or the new one, never half of one and never a ``LATEST`` naming a missing
directory (also when the step being saved is the one ``LATEST`` names: see
:func:`save_checkpoint`). Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import re
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import torch

LATEST = "LATEST"
STATE_FILE = "state.pt"
DATA_FILE = "state.json"
META_FILE = "meta.json"
STEP_NAME = re.compile(r"step-\d{6,}")  # the only names LATEST may hold (f"step-{step:06d}")
# tags of the JSON encoding; a plain dict that would contain one is itself written tagged
_TAGS = ("__tensor__", "__tuple__", "__items__", "__record__", "__enum__", "__float__")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not this run's; the message names the path."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """The checkpoint was saved by another configuration, method or seed (read from meta.json)."""


@cache
def record_types() -> dict[str, type]:
    """The allow-list: the only classes a checkpoint's ``state.json`` may instantiate, by the
    name it carries there.

    Plain dataclasses and enums of this package, built from their fields; nothing is imported by
    a name read from a file. A record type not listed here cannot be saved (TypeError at save).
    The loop's counters are stored as ``_LoopState``, the name they had before they moved to
    :mod:`pilotcommit.types`, so checkpoints of earlier runs resume.
    """
    from pilotcommit.allocation.buffer import BufferEntry
    from pilotcommit.types import (
        EvalRecord,
        Group,
        LoopState,
        RequestResult,
        Rollout,
        RolloutKind,
        RolloutRequest,
        TrainBatch,
    )

    classes = (RolloutKind, RolloutRequest, Rollout, RequestResult, Group, TrainBatch, BufferEntry, EvalRecord)
    return {**{cls.__name__: cls for cls in classes}, "_LoopState": LoopState}


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], meta: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as checkpoint ``step`` and make it ``LATEST``; returns its directory.

    ``state`` holds tensors, plain Python values and :func:`record_types` records; ``meta``
    plain JSON values (among them whatever :func:`load_checkpoint`'s ``expect`` checks).
    """
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    # one writer per run directory: any temporary directory is the leftover of a killed writer
    for stale in [*root.glob(".tmp-step-*"), *root.glob(".old-step-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tensors: dict[str, torch.Tensor] = {}
    data = _encode(state, tensors, "state")
    meta = {"step": step, **meta}
    tmp.mkdir()
    torch.save(tensors, tmp / STATE_FILE)
    (tmp / DATA_FILE).write_text(json.dumps(data, separators=(",", ":"), allow_nan=False))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    marker = root / LATEST
    if final.exists():
        if _marker_name(marker) == final.name:
            # LATEST names the step being replaced (a resume after the final save, a restart from
            # scratch reaching the abandoned run's last step): point it at an older checkpoint of
            # this run first, or remove it when there is none, so that no moment exists where it
            # names a missing directory. A kill in between resumes from that older one (or from
            # scratch), which gives the same result.
            older = _newest_matching(root, below=final.name, meta=meta)
            if older is None:
                marker.unlink()
            else:
                _write_marker(root, older.name)
        retired = root / f".old-step-{step:06d}"
        os.replace(final, retired)
        shutil.rmtree(retired, ignore_errors=True)
    os.replace(tmp, final)
    _write_marker(root, final.name)
    # Newer directories belong to an abandoned run (restarted without resuming): drop them, or
    # pruning by age would delete the checkpoint LATEST now names. Zero-padded names sort by step.
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    newer = [p for p in steps if p.name > final.name]
    older = [p for p in steps if p.name <= final.name][:-keep]
    for old in newer + older:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The directory named by ``LATEST``, or None when the run has no checkpoint.

    ``LATEST`` must hold one ``step-NNNNNN`` name of a directory inside this run's checkpoint
    folder; anything else is a ``CheckpointError`` naming the marker (never followed).
    """
    root = checkpoint_root(run_dir)
    marker = root / LATEST
    if not marker.is_file():
        return None
    name = _marker_name(marker)
    if name is None:
        raise CheckpointError(
            f"{marker} holds {marker.read_bytes()[:80]!r}, not the name of a checkpoint of this run "
            f"(step-NNNNNN inside {root}): the marker is empty, truncated or was not written by this "
            "run; remove it to start from scratch, or write the name of one of the step-* directories"
        )
    path = root / name
    if path.is_symlink():
        raise CheckpointError(f"{marker} names {path}, a symbolic link; checkpoints are directories of the run")
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{marker} names {path}, which has no {STATE_FILE}")
    return path


def read_meta(path: Path) -> dict[str, Any]:
    meta_file = Path(path) / META_FILE
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {meta_file}") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {meta_file}: {err}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"cannot read checkpoint {meta_file}: not a JSON object")
    return meta


def load_checkpoint(path: Path, expect: dict[str, Any] | None = None) -> dict[str, Any]:
    """The state saved in checkpoint directory ``path``.

    ``expect`` (e.g. config hash, method, seed) is compared with ``meta.json`` before anything
    else is read; a difference is a :class:`CheckpointMismatchError` naming the checkpoint.
    """
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"checkpoint not found: {state_file}")
    meta = read_meta(path)
    if expect:
        differ = {k: meta.get(k) for k, v in expect.items() if meta.get(k) != v}
        if differ:
            saved = ", ".join(f"{k} {v}" for k, v in differ.items())
            raise CheckpointMismatchError(
                f"{path}: saved by another configuration ({saved}; this run has "
                f"{', '.join(f'{k} {expect[k]}' for k in differ)}); use a new run directory or --no-resume"
            )
    try:
        # weights_only: tensors and plain containers only; a pickled object is refused, never built
        tensors = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or not a tensor file: say which
        raise CheckpointError(f"cannot read checkpoint {state_file}: {err}") from err
    data_file = path / DATA_FILE
    try:
        data = json.loads(data_file.read_text())
        if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise ValueError(f"{STATE_FILE} is not a flat dict of tensors")
        return _decode(data, tensors, record_types())
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {data_file}: {err}") from err


# --------------------------------------------------------------------------- markers


def _marker_name(marker: Path) -> str | None:
    """The step name ``marker`` holds, or None (missing, empty, truncated or anything else)."""
    try:
        text = marker.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if STEP_NAME.fullmatch(text) else None


def _write_marker(root: Path, name: str) -> None:
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(name)
    os.replace(tmp, root / LATEST)


def _newest_matching(root: Path, *, below: str, meta: dict[str, Any]) -> Path | None:
    """The newest complete checkpoint older than ``below`` saved by the same run (meta.json's
    config hash, method and seed equal ``meta``'s)."""
    same = ("config_hash", "method", "seed")
    for path in sorted((p for p in root.glob("step-*") if p.is_dir() and p.name < below), reverse=True):
        try:
            other = read_meta(path)
        except CheckpointError:
            continue
        if all(other.get(k) == meta.get(k) for k in same) and (path / STATE_FILE).is_file() \
                and (path / DATA_FILE).is_file():
            return path
    return None


# --------------------------------------------------------------------------- tagged JSON


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """``value`` as JSON data; tensors move to ``tensors`` and are referenced by name. Floats are
    written by ``repr`` (exact round trip); NaN and infinities, which JSON lacks, are tagged."""
    if isinstance(value, enum.Enum):  # first: RolloutKind is also a str
        return {"__enum__": _record_name(type(value), where), "value": value.value}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        value = float(value)  # numpy float64 is a float subclass: stored as the same number
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value
        return {"__tensor__": name}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in value):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")]
                              for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = _record_name(type(value), where)
        return {"__record__": name, "fields": {
            f.name: _encode(getattr(value, f.name), tensors, f"{where}.{f.name}")
            for f in dataclasses.fields(value)
        }}
    raise TypeError(f"checkpoint state {where}: cannot store a {type(value).__qualname__}")


def _record_name(cls: type, where: str) -> str:
    names = [name for name, known in record_types().items() if known is cls]
    if not names:
        raise TypeError(f"checkpoint state {where}: {cls.__qualname__} is not an allow-listed record type")
    return names[0]


def _decode(data: Any, tensors: dict[str, torch.Tensor], allowed: dict[str, type]) -> Any:
    if isinstance(data, list):
        return [_decode(v, tensors, allowed) for v in data]
    if not isinstance(data, dict):
        return data
    if "__tensor__" in data:
        return tensors[data["__tensor__"]]
    if "__float__" in data:
        text = data["__float__"]
        if text not in ("nan", "inf", "-inf"):
            raise ValueError(f"bad float {text!r}")
        return float(text)
    if "__tuple__" in data:
        return tuple(_decode(v, tensors, allowed) for v in data["__tuple__"])
    if "__items__" in data:
        return {_decode(k, tensors, allowed): _decode(v, tensors, allowed) for k, v in data["__items__"]}
    if "__enum__" in data or "__record__" in data:
        name = data.get("__enum__", data.get("__record__"))
        cls = allowed.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ValueError(f"type {name!r} is not an allow-listed checkpoint record ({sorted(allowed)})")
        if "__enum__" in data:
            return cls(data["value"])
        fields = {f.name for f in dataclasses.fields(cls)}
        given = data["fields"]
        if set(given) != fields:
            raise ValueError(f"{name} has fields {sorted(fields)}, the file gives {sorted(given)}")
        return cls(**{k: _decode(v, tensors, allowed) for k, v in given.items()})
    return {k: _decode(v, tensors, allowed) for k, v in data.items()}
