"""config-backup against the lab: every host's node configuration, and the load balancer's, read over SSH,
encrypted into the store, and proved by unpacking it here and comparing with the files on disk."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from blocks import ObjectStore
from flows.config_backup import config_backup
from lab import topology
from tasks import objectstore
from tasks.backups.crypto import DecryptingReader, EncryptionKey
from tasks.backups.manifest import read_manifest, read_verifications
from tests import fleet

PATHS = topology.Paths(topology.lab_dir())


@pytest.fixture
def store(healthy_fleet) -> ObjectStore:
    return ObjectStore.load(topology.BLOCK_STORE)


def unpack(store: ObjectStore, key: str) -> dict[str, bytes]:
    """The archive decrypted and unpacked here, with the tools an operator would use by hand."""
    enc = EncryptionKey.from_text(store.encryption_key_text())
    with objectstore.open_object(store, key) as body:
        packed = DecryptingReader(body, enc).read()
    tar_bytes = subprocess.run(["zstd", "-d", "-q", "-c"], input=packed, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_every_hosts_configuration_is_stored_encrypted_and_reads_back_as_on_disk(store):
    state = config_backup(return_state=True)
    result = state.result()
    assert result["status"] == "succeeded", result
    assert sorted(result["manifests"]) == sorted(topology.HOSTS)
    h1 = read_manifest(store, result["manifests"]["h1"])
    [archive] = h1.archives
    expected = {str(PATHS.host_supervisord_conf("h1")), str(PATHS.haproxy_cfg)}  # h1 carries the LB's config
    assert set(archive.paths) == expected
    files = unpack(store, archive.object.key)
    assert files == {p.lstrip("/"): Path(p).read_bytes() for p in expected}
    with objectstore.open_object(store, archive.object.key) as body:
        assert b"frontend" not in body.read()  # encrypted at rest
    assert all(v.ok for v in read_verifications(store, h1.key))
    # The standby's slots are configuration too.
    h4 = read_manifest(store, result["manifests"]["h4"])
    assert [a.paths for a in h4.archives] == [[str(PATHS.host_supervisord_conf("h4"))]]
    # Nothing on a host changed: read only.
    assert not [e for e in fleet.run_entries(state) if e["kind"] == "action" and e["data"].get("action") in
                ("stop", "start", "restart", "drain")]


def test_an_unknown_host_is_refused_before_anything_runs(store):
    before = objectstore.list_objects(store, "backups/config/")
    state = config_backup(hosts=["h9"], return_state=True)
    assert state.is_failed() and "unknown hosts ['h9']" in state.message
    assert objectstore.list_objects(store, "backups/config/") == before
