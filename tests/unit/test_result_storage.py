"""The Prefect result store under <runs>/prefect-results is read as data, never as code
(flows/results.py).

Prefect result records name their own serializer, so a file planted in the results directory
could make a cache lookup unpickle it or import a class it names. Each refusal below has a
control showing that Prefect's own reader does run (or import) what the planted file names.
No Prefect server is needed: the storage block is exercised directly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
from prefect.serializers import JSONSerializer, PickleSerializer

from pilotcommit.stages.result_storage import TrustedResultStorage, UntrustedResultError


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _record(serializer, result, key: str = "k") -> bytes:
    return ResultRecord(metadata=ResultRecordMetadata(serializer=serializer, storage_key=key), result=result).serialize()


def _pickled_payload(tmp_path: Path) -> tuple[Path, bytes]:
    marker = tmp_path / "MARKER"
    return marker, _record(PickleSerializer(), _RunsCodeWhenUnpickled(marker))


def test_control_prefect_runs_a_planted_pickle_record(tmp_path):
    marker, content = _pickled_payload(tmp_path)
    ResultRecord.deserialize(content)  # what a cache lookup does with the file's bytes
    assert marker.exists()


@pytest.mark.parametrize("reader", ["sync", "async"])
def test_a_planted_pickle_record_is_refused_naming_the_file_and_never_runs(reader, tmp_path):
    import asyncio

    storage = TrustedResultStorage(basepath=str(tmp_path / "results"))
    marker, content = _pickled_payload(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "train-abc").write_bytes(content)
    with pytest.raises(UntrustedResultError, match=str(tmp_path / "results" / "train-abc") + ".*'pickle'"):
        if reader == "sync":
            storage.read_path("train-abc", _sync=True)
        else:
            asyncio.run(storage.aread_path("train-abc"))
    assert not marker.exists()


def test_control_prefect_json_imports_the_class_a_record_names():
    text = json.dumps({"__class__": "pathlib.PurePosixPath", "data": "/etc"})
    assert type(JSONSerializer().loads(text.encode())).__name__ == "PurePosixPath"


def test_a_json_record_naming_a_class_is_refused(tmp_path):
    storage = TrustedResultStorage(basepath=str(tmp_path))
    content = json.loads(_record(JSONSerializer(), {"a": 1}))
    content["result"] = json.dumps({"run": {"__class__": "pathlib.PurePosixPath", "data": "/etc"}})
    (tmp_path / "k").write_text(json.dumps(content))
    with pytest.raises(UntrustedResultError, match="__class__"):
        storage.read_path("k", _sync=True)


@pytest.mark.parametrize("change", ["decoder", "duplicate", "not-json"])
def test_other_tampered_records_are_refused(change, tmp_path):
    storage = TrustedResultStorage(basepath=str(tmp_path))
    text = _record(JSONSerializer(), {"a": 1}).decode()
    if change == "decoder":  # the decoder is itself an import path Prefect resolves
        text = text.replace("prefect.serializers.prefect_json_object_decoder", "builtins.print")
    elif change == "duplicate":  # a second metadata a different JSON parser might pick
        text = text[:-1] + ',"metadata":{"serializer":{"type":"pickle"}}}'
    else:
        text = text[:20]
    (tmp_path / "k").write_text(text)
    with pytest.raises(UntrustedResultError, match=str(tmp_path / "k")):
        storage.read_path("k", _sync=True)


def test_what_the_pipeline_writes_round_trips(tmp_path):
    storage = TrustedResultStorage(basepath=str(tmp_path))
    content = _record(JSONSerializer(), {"result": {"final_metrics": {"eval/average_accuracy": 0.5}}, "ids": [1, "x"]})
    storage.write_path("k", content, _sync=True)
    read = storage.read_path("k", _sync=True)
    assert ResultRecord.deserialize(read).result == {"result": {"final_metrics": {"eval/average_accuracy": 0.5}}, "ids": [1, "x"]}


def test_a_task_result_that_is_not_plain_json_is_refused_at_write(tmp_path):
    storage = TrustedResultStorage(basepath=str(tmp_path))
    with pytest.raises(UntrustedResultError, match="__class__"):
        storage.write_path("k", _record(JSONSerializer(), {"run_dir": Path("/x")}), _sync=True)
    assert not (tmp_path / "k").exists()
