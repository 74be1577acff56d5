"""Stage bookkeeping of pilotcommit/stages/ (no Prefect): atomic materialisation, reuse
of valid outputs, rebuild, stale leftovers, failed builds leaving nothing behind, stage keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pilotcommit.stages import materialise, table


def build_into(content: str, calls: list):
    def build(tmp: Path) -> dict:
        calls.append(tmp)
        tmp.mkdir(parents=True)
        (tmp / "data.txt").write_text(content)
        return {"file": str(tmp / "data.txt")}

    return build


def file_exists(stage: dict) -> bool:
    return Path(stage["file"]).is_file()


def test_materialise_moves_into_place_and_rewrites_paths(tmp_path):
    calls: list = []
    out = tmp_path / "stage"
    result = materialise.materialise(out, build_into("a", calls), file_exists)
    assert result == {"file": str(out / "data.txt")} and (out / "data.txt").read_text() == "a"
    assert json.loads((out / table.STAGE_FILE).read_text()) == result
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]  # no temporary directory left

    again = materialise.materialise(out, build_into("b", calls), file_exists)
    assert again == result and len(calls) == 1  # valid outputs are reused, not rebuilt

    rebuilt = materialise.materialise(out, build_into("c", calls), file_exists, rebuild=True)
    assert rebuilt == result and (out / "data.txt").read_text() == "c" and len(calls) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_stale_leftovers_are_replaced_and_failed_builds_leave_nothing(tmp_path):
    out = tmp_path / "stage"
    out.mkdir()
    (out / table.STAGE_FILE).write_text(json.dumps({"file": str(out / "gone.txt")}))  # names a missing file
    result = materialise.materialise(out, build_into("fresh", []), file_exists)
    assert Path(result["file"]).read_text() == "fresh"

    def broken(tmp: Path) -> dict:
        tmp.mkdir()
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("crashed mid-build")

    other = tmp_path / "other"
    with pytest.raises(RuntimeError, match="crashed mid-build"):
        materialise.materialise(other, broken, file_exists)
    assert not other.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_stage_keys_and_run_config(smoke_config):
    from pilotcommit.config import config_hash

    assert table.stage_key("train", "a", 1) == table.stage_key("train", "a", "1")
    assert table.stage_key("train", "a") != table.stage_key("train", "b")
    assert table.stage_key("data", "x").startswith("data-")
    narrowed = table.run_config(smoke_config, "grpo", 0)
    assert list(narrowed.methods) == ["grpo"] and narrowed.seeds == [0]
    wider = smoke_config.model_copy(update={"seeds": [0, 1, 2]})
    assert config_hash(table.run_config(wider, "grpo", 0)) == config_hash(narrowed)  # seeds list not in it


def test_read_train_outputs_needs_result_tracking_and_final_policy(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert table.read_train_outputs(run) is None
    (run / "final_policy").mkdir()
    (run / table.RESULT_FILE).write_text(json.dumps({"final_checkpoint": str(run / "final_policy")}))
    assert table.read_train_outputs(run) is None  # no tracking.json yet: the run did not finish
    (run / table.TRACKING_FILE).write_text(json.dumps({"mlflow_run_id": "abc"}))
    assert table.read_train_outputs(run)["mlflow_run_id"] == "abc"
    (run / "final_policy").rmdir()
    assert table.read_train_outputs(run) is None
