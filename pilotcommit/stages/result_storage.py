"""The Prefect result store under ``<runs>/prefect-results``, read as data and never as code.

A Prefect result record names its own serializer: a record saying ``"type": "pickle"`` is
unpickled when Prefect reads it for a cache lookup, and the JSON serializer's decoder imports
any class a ``"__class__"`` key names. Anyone who can write into the results directory could
therefore run code in every flow that reads it. :class:`TrustedResultStorage` is the local file
system block the stages persist to; it lets through only what this pipeline writes: a record
of Prefect's JSON serializer with its default encoder and decoder whose result is plain JSON
(no ``__class__`` anywhere). Anything else is refused with ``UntrustedResultError`` naming the
file, before Prefect parses it; a cache lookup then counts as a miss, the stage runs again and
the file is overwritten. Writes are checked the same way, so a task that returned an object
(a ``Path``, a dataclass) fails loudly instead of persisting a class name.

Not here: which results are cached (the flows' tasks, keyed by pilotcommit/stages/table.py).
The runs directory is still a trust boundary for everything else in it (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect.filesystems import LocalFileSystem
from prefect.serializers import JSONSerializer

# exactly what JSONSerializer() writes into a record's metadata (type, jsonlib, encoder, decoder)
_PLAIN_JSON = JSONSerializer().model_dump(mode="json")


class UntrustedResultError(ValueError):
    """A result file that this pipeline did not write (or that names code to run)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise UntrustedResultError(f"duplicate keys {sorted(k for k in set(keys) if keys.count(k) > 1)}")
    if "__class__" in keys:
        raise UntrustedResultError("a '__class__' key (an object to import and build)")
    return dict(pairs)


def check_result_record(content: bytes, where: str) -> bytes:
    """``content`` unchanged if it is a plain-JSON result record, else ``UntrustedResultError``."""
    try:
        record = json.loads(content, object_pairs_hook=_no_duplicate_keys)
        if not isinstance(record, dict) or set(record) != {"metadata", "result"}:
            raise UntrustedResultError("not a result record {metadata, result}")
        serializer = record["metadata"].get("serializer") if isinstance(record["metadata"], dict) else None
        if serializer != _PLAIN_JSON:
            raise UntrustedResultError(f"serializer {serializer!r} is not plain JSON")
        if not isinstance(record["result"], str):
            raise UntrustedResultError("the result is not serialized JSON text")
        json.loads(record["result"], object_pairs_hook=_no_duplicate_keys)
    except UntrustedResultError as err:
        raise UntrustedResultError(f"{where}: refused, not a result this pipeline wrote: {err}") from None
    except (ValueError, AttributeError) as err:
        raise UntrustedResultError(f"{where}: refused, not a result this pipeline wrote: {err}") from None
    return content


class TrustedResultStorage(LocalFileSystem):
    """:class:`~prefect.filesystems.LocalFileSystem` that refuses records it did not write (see module)."""

    # its own block type: inheriting LocalFileSystem's would replace that type in Prefect's registry
    _block_type_name = "Pilotcommit Trusted Result Storage"
    _block_type_slug = "pilotcommit-trusted-result-storage"

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:  # Prefect passes _sync=True
        return check_result_record(super().read_path(path, _sync=True), str(self._resolve_path(path)))

    async def aread_path(self, path: str) -> bytes:
        return check_result_record(await super().aread_path(path), str(self._resolve_path(path)))

    def write_path(self, path: str, content: bytes, _sync: bool | None = None) -> str:
        check_result_record(content, str(self._resolve_path(path)))
        return super().write_path(path, content, _sync=True)

    async def awrite_path(self, path: str, content: bytes) -> str:
        check_result_record(content, str(self._resolve_path(path)))
        return await super().awrite_path(path, content)


def trusted_storage(results_dir: Path) -> TrustedResultStorage:
    """The :class:`TrustedResultStorage` of ``results_dir``, saved as a block on the Prefect API
    (Prefect takes only saved blocks as a task's result storage). One block per directory,
    named by its path's hash; saving again updates it, so concurrent workers agree.

    Two flow runs starting at once on a fresh server (a sweep's cells dispatched to a worker)
    race to register the block type and the block: Prefect reads "absent", the other process
    creates it, and this create fails with ``ObjectAlreadyExists``. Saving again then finds it
    and updates it."""
    from prefect.exceptions import ObjectAlreadyExists

    storage = TrustedResultStorage(basepath=str(results_dir))
    name = "pilotcommit-results-" + hashlib.sha256(str(results_dir).encode()).hexdigest()[:16]
    for attempt in range(3):
        try:
            storage.save(name, overwrite=True, _sync=True)
            return storage
        except ObjectAlreadyExists:
            if attempt == 2:
                raise
    return storage
