"""Checkpoint files (pilotcommit.checkpoint): atomic directories, the LATEST marker, pruning, and
clear errors for missing or corrupt files.

These are the file-level guarantees a resumed run relies on; the end-to-end
guarantee (a SIGKILLed run resumes bit-identically) is
tests/integration/test_crash_resume.py, which also kills a real writer at random
moments. Here the leftovers of a killed writer are made by hand, one state per test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from pilotcommit.checkpoint import (
    LATEST,
    META_FILE,
    STATE_FILE,
    CheckpointError,
    checkpoint_root,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def _state(step: int) -> dict:
    return {"step": step, "weights": torch.full((4, 3), float(step)), "rng": torch.get_rng_state()}


def _save(run_dir: Path, step: int, keep: int = 2) -> Path:
    return save_checkpoint(run_dir, step, _state(step), {"method": "grpo", "seed": 0}, keep=keep)


def _step_dirs(run_dir: Path) -> list[str]:
    return sorted(p.name for p in checkpoint_root(run_dir).iterdir() if p.is_dir())


def test_round_trip_and_meta(tmp_path):
    path = _save(tmp_path, 3)
    assert path == checkpoint_root(tmp_path) / "step-000003"
    assert latest_checkpoint(tmp_path) == path
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["weights"], torch.full((4, 3), 3.0))
    assert torch.equal(loaded["rng"], _state(3)["rng"])
    meta = json.loads((path / META_FILE).read_text())
    assert meta == {"step": 3, "method": "grpo", "seed": 0}


def test_no_checkpoint_is_none_not_an_error(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "never-created") is None


def test_only_the_newest_keep_are_kept_and_latest_names_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep=2)
    assert _step_dirs(tmp_path) == ["step-000003", "step-000004"]
    assert (checkpoint_root(tmp_path) / LATEST).read_text() == "step-000004"


def test_restart_from_scratch_in_an_old_run_dir_keeps_latest_loadable(tmp_path):
    """A run restarted without resuming (``resume=False``, e.g. a Prefect stage retraining a run
    whose metrics were lost) writes step 2 into a directory that still holds steps 4 and 6 of
    the abandoned run. LATEST must name a checkpoint that exists: the abandoned, newer
    checkpoints are the ones to go, not the one just written."""
    for step in (2, 4, 6):
        _save(tmp_path, step, keep=2)
    written = _save(tmp_path, 2, keep=2)
    latest = latest_checkpoint(tmp_path)
    assert latest == written
    assert load_checkpoint(latest)["step"] == 2
    assert _step_dirs(tmp_path) == ["step-000002"]  # nothing from the abandoned timeline is left
    _save(tmp_path, 4, keep=2)
    assert _step_dirs(tmp_path) == ["step-000002", "step-000004"]


def test_leftover_of_a_writer_killed_mid_write_is_ignored_then_cleaned(tmp_path):
    """A kill while ``state.pt`` is being written leaves ``.tmp-step-*``: it is never returned
    as the latest checkpoint, and the next save of any step removes it."""
    _save(tmp_path, 2)
    root = checkpoint_root(tmp_path)
    partial = root / ".tmp-step-000004"
    partial.mkdir()
    (partial / STATE_FILE).write_bytes(b"PK\x03\x04 truncated")
    (root / f".{LATEST}.tmp").write_text("step-0000")  # a kill while LATEST itself was replaced
    assert latest_checkpoint(tmp_path) == root / "step-000002"
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 2
    _save(tmp_path, 3)  # resumed at 2, the next save is step 3: the step-4 leftover must still go
    assert not partial.exists()
    assert latest_checkpoint(tmp_path) == root / "step-000003"


def test_kill_between_rename_and_latest_update_resumes_from_the_previous_one(tmp_path):
    """The new directory is in place but LATEST still names the old one: the old one is what a
    resumed run loads, and saving the same step again replaces the orphan cleanly."""
    _save(tmp_path, 2)
    root = checkpoint_root(tmp_path)
    orphan = root / "step-000004"
    orphan.mkdir()
    torch.save(_state(99), orphan / STATE_FILE)  # content that must not be picked up
    assert latest_checkpoint(tmp_path) == root / "step-000002"
    _save(tmp_path, 4)
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 4


def test_truncated_state_file_is_a_checkpoint_error_naming_the_file(tmp_path):
    path = _save(tmp_path, 1)
    state_file = path / STATE_FILE
    data = state_file.read_bytes()
    state_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(state_file) in str(err.value)


def test_garbage_state_file_is_a_checkpoint_error_naming_the_file(tmp_path):
    path = _save(tmp_path, 1)
    (path / STATE_FILE).write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match=str(path / STATE_FILE)):
        load_checkpoint(path)


def test_missing_checkpoint_directory_is_a_checkpoint_error_naming_it(tmp_path):
    missing = tmp_path / "checkpoints" / "step-000007"
    with pytest.raises(CheckpointError, match=str(missing / STATE_FILE)):
        load_checkpoint(missing)


def test_latest_naming_a_deleted_checkpoint_is_an_error_naming_both(tmp_path):
    path = _save(tmp_path, 5)
    (path / STATE_FILE).unlink()
    with pytest.raises(CheckpointError) as err:
        latest_checkpoint(tmp_path)
    assert str(checkpoint_root(tmp_path) / LATEST) in str(err.value)
    assert str(path) in str(err.value)
