"""Checkpoint files (pilotcommit.checkpoint): atomic directories, the LATEST marker, pruning, and
clear errors for missing or corrupt files.

These are the file-level guarantees a resumed run relies on; the end-to-end
guarantee (a SIGKILLed run resumes bit-identically) is
tests/integration/test_crash_resume.py, which also kills a real writer at random
moments. Here the leftovers of a killed writer are made by hand, one state per test.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from pilotcommit.checkpoint import (
    DATA_FILE,
    LATEST,
    META_FILE,
    STATE_FILE,
    CheckpointError,
    CheckpointMismatchError,
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


# --------------------------------------------------------------------------- trust boundary


class _RunsCodeWhenUnpickled:
    """Unpickling this object runs ``touch <marker>`` (pickle calls what __reduce__ names)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant_payload(path: Path, marker: Path) -> None:
    torch.save({"weights": torch.zeros(2), "evil": _RunsCodeWhenUnpickled(marker)}, path / STATE_FILE)


def test_control_the_planted_checkpoint_runs_code_under_an_unsafe_load(tmp_path):
    """Guards the refusal below: the planted state.pt really executes its payload when it is
    unpickled the way checkpoints used to be loaded (weights_only=False)."""
    path = _save(tmp_path, 1)
    marker = tmp_path / "MARKER"
    _plant_payload(path, marker)
    torch.load(path / STATE_FILE, weights_only=False)
    assert marker.exists()


def test_a_checkpoint_whose_unpickling_would_run_code_is_refused(tmp_path):
    path = _save(tmp_path, 1)
    marker = tmp_path / "MARKER"
    _plant_payload(path, marker)
    with pytest.raises(CheckpointError, match=re.escape(f"cannot read checkpoint {path / STATE_FILE}")):
        load_checkpoint(latest_checkpoint(tmp_path))
    assert not marker.exists()


def test_a_record_type_outside_the_allow_list_is_refused_naming_the_file(tmp_path):
    path = _save(tmp_path, 1)
    data_file = path / DATA_FILE
    data = json.loads(data_file.read_text())
    data["step"] = {"__record__": "Popen", "fields": {"args": ["touch", str(tmp_path / "MARKER")]}}
    data_file.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=re.escape(str(data_file)) + ".*'Popen' is not an allow-listed"):
        load_checkpoint(path)
    assert not (tmp_path / "MARKER").exists()


def test_an_object_that_is_not_an_allow_listed_record_cannot_be_saved(tmp_path):
    with pytest.raises(TypeError, match=r"state\.policy\.when: cannot store a PosixPath"):
        save_checkpoint(tmp_path, 1, {"policy": {"when": tmp_path}}, {})


def test_records_tuples_non_string_keys_and_special_floats_round_trip_exactly(tmp_path):
    from pilotcommit.allocation.buffer import BufferEntry
    from pilotcommit.evaluation import EvalRecord
    from pilotcommit.types import Rollout, RolloutKind

    rollout = Rollout("p1", RolloutKind.PILOT, [1, 2], [3], [-0.1 / 3], "7", "stop", reward=float("nan"))
    state = {
        "buffer": [BufferEntry("p1", [rollout], step=2, order=5)],
        "history": [EvalRecord(0, 0, {"eval/average_accuracy": 0.1 + 0.2})],
        "optimizer": {"state": {0: {"exp_avg": torch.arange(3.0)}}, "betas": (0.9, 0.999)},
        "extremes": [float("inf"), -float("inf"), 5e-324, 1.7976931348623157e308],
        "tricky": {"__tuple__": "a plain key that looks like a tag"},
    }
    loaded = load_checkpoint(save_checkpoint(tmp_path, 1, state, {}))
    entry = loaded["buffer"][0]
    assert isinstance(entry, BufferEntry) and isinstance(entry.pilots[0], Rollout)
    assert entry.pilots[0].kind is RolloutKind.PILOT and entry.pilots[0].sampler_logprobs == [-0.1 / 3]
    assert math.isnan(entry.pilots[0].reward)
    assert loaded["history"] == state["history"]
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], torch.arange(3.0))
    assert loaded["optimizer"]["betas"] == (0.9, 0.999)
    assert loaded["extremes"] == state["extremes"] and loaded["tricky"] == state["tricky"]


def test_meta_is_checked_before_the_state_is_read(tmp_path):
    """A checkpoint of another configuration is refused from meta.json alone: its state file is
    not even opened (here it is garbage, which would give a read error instead)."""
    path = save_checkpoint(tmp_path, 1, _state(1), {"config_hash": "aaa", "method": "grpo", "seed": 0})
    (path / STATE_FILE).write_bytes(os.urandom(64))
    with pytest.raises(CheckpointMismatchError, match=re.escape(f"{path}: saved by another configuration")) as err:
        load_checkpoint(path, expect={"config_hash": "bbb", "method": "grpo", "seed": 0})
    assert "config_hash aaa" in str(err.value) and "config_hash bbb" in str(err.value)


def _other_run_checkpoint(tmp_path: Path) -> Path:
    """A whole, loadable checkpoint of another run (the control: a marker naming it is refused
    because of where it is, not because it would not load)."""
    other = save_checkpoint(tmp_path / "other-run", 9, _state(9), {"method": "grpo", "seed": 0})
    assert load_checkpoint(other)["step"] == 9
    return other


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "nested-dotdot"])
def test_latest_pointing_outside_the_run_is_refused_naming_the_marker(kind, tmp_path):
    run_dir = tmp_path / "run"
    _save(run_dir, 1)
    other = _other_run_checkpoint(tmp_path)
    text = {
        "absolute": str(other),
        "dotdot": "../../other-run/checkpoints/step-000009",
        "nested-dotdot": "step-000001/../../../other-run/checkpoints/step-000009",
    }[kind]
    marker = checkpoint_root(run_dir) / LATEST
    marker.write_text(text)
    with pytest.raises(CheckpointError, match=re.escape(str(marker)) + ".*not the name of a checkpoint of this run"):
        latest_checkpoint(run_dir)


def test_latest_naming_a_symbolic_link_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    _save(run_dir, 1)
    other = _other_run_checkpoint(tmp_path)
    link = checkpoint_root(run_dir) / "step-000009"
    link.symlink_to(other, target_is_directory=True)
    (checkpoint_root(run_dir) / LATEST).write_text(link.name)
    with pytest.raises(CheckpointError, match="symbolic link"):
        latest_checkpoint(run_dir)


@pytest.mark.parametrize("text", ["", "\n", "step-00", "step-0000", "ste"])
def test_empty_or_truncated_latest_is_a_checkpoint_error_naming_the_file(text, tmp_path):
    _save(tmp_path, 12)
    marker = checkpoint_root(tmp_path) / LATEST
    marker.write_text(text)
    with pytest.raises(CheckpointError, match=re.escape(str(marker)) + ".*empty, truncated"):
        latest_checkpoint(tmp_path)


class _Killed(BaseException):
    """Stands for SIGKILL inside save_checkpoint (raised where the process would die)."""


def _kill_when_moving_the_new_directory_in(monkeypatch):
    real = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".tmp-step-"):
            raise _Killed
        return real(src, dst)

    monkeypatch.setattr("pilotcommit.checkpoint.os.replace", replace)


@pytest.mark.parametrize("older", [True, False])
def test_resaving_the_step_latest_names_never_leaves_it_naming_a_missing_folder(older, tmp_path, monkeypatch):
    """Saving step 4 again while LATEST names step 4 (a resume after the final save, a restart
    from scratch reaching the abandoned run's last step). A kill after the old step-4 is gone and
    before the new one is in place leaves LATEST naming an older checkpoint of the run (or no
    LATEST at all when there is none: the resume starts from scratch), never a missing folder."""
    if older:
        _save(tmp_path, 2)
    _save(tmp_path, 4)
    _kill_when_moving_the_new_directory_in(monkeypatch)
    with pytest.raises(_Killed):
        _save(tmp_path, 4)
    monkeypatch.undo()
    latest = latest_checkpoint(tmp_path)  # raised "names ..., which has no state.pt" before the fix
    if older:
        assert latest == checkpoint_root(tmp_path) / "step-000002"
        assert load_checkpoint(latest)["step"] == 2
    else:
        assert latest is None
    _save(tmp_path, 4)  # the next save completes the replacement
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 4
    assert not list(checkpoint_root(tmp_path).glob(".*-step-*"))
