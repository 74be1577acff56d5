"""The trusted result storage's Prefect block, saved by flow runs that start at once.

A sweep dispatched to a worker starts its cells' flow runs in separate processes at the same
moment; on a fresh server each reads the block type as absent and registers it, and all but
one of them get ``ObjectAlreadyExists`` (seen in tests/integration/test_deployments.py before
the fix). The server here is real; the interleaving is forced by hiding the already registered
type from this process's first read, as the other process's registration would.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_a_block_type_registered_meanwhile_by_another_process_is_saved_again(prefect_server, tmp_path, monkeypatch):
    from prefect.client.orchestration._blocks_types.client import BlocksTypeClient
    from prefect.exceptions import ObjectNotFound

    from pilotcommit.stages.result_storage import TrustedResultStorage, trusted_storage

    trusted_storage(tmp_path / "first")  # the other process: the type now exists on the server
    read = BlocksTypeClient.read_block_type_by_slug
    reads = []

    def stale_first_read(self, slug):
        reads.append(slug)
        if len(reads) == 1:  # what this process saw before the other one registered the type
            raise ObjectNotFound(http_exc=Exception("404"))
        return read(self, slug)

    monkeypatch.setattr(BlocksTypeClient, "read_block_type_by_slug", stale_first_read)
    TrustedResultStorage._block_type_id = None  # as in a fresh process
    storage = trusted_storage(tmp_path / "second")
    assert len(reads) >= 2 and storage.basepath == str(tmp_path / "second")
