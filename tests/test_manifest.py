"""A backup exists when its manifest does: written last, only when every object it names is stored,
never replaced; later backups reuse immutable segments. Against a real store (`weed mini`), no lab."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from tasks import objectstore
from tasks.backups import manifest as mf
from tasks.backups.crypto import EncryptingReader, EncryptionKey
from tasks.errors import BackupIntegrityError, ObjectExists, ObjectStoreError
from tests.s3 import s3_server, store  # noqa: F401  (fixtures)

KEY = EncryptionKey(bytes(range(32)))
T0 = datetime(2026, 12, 4, 14, 22, 27, tzinfo=timezone.utc)


def put_encrypted(store, key: str, data: bytes) -> mf.StoredRef:
    enc = EncryptingReader(io.BytesIO(data), KEY)
    stored = objectstore.upload(store, key, enc)
    return mf.StoredRef(key=key, size=stored.size, sha256=stored.sha256, encrypted_with=KEY.key_id,
                        plaintext_size=enc.plaintext_size, plaintext_sha256=enc.plaintext_sha256)


def snapshot_backup(store, created_at: datetime, segments: dict[str, bytes], earlier: list[mf.Manifest] = ()):
    """What the snapshot flow will do: reuse known segments, upload new ones, then the archive, manifest last."""
    reusable = mf.reusable_segments(earlier, KEY.key_id)
    shell = mf.Manifest(kind="snapshot", node="erigon-1", host="h1", created_at=created_at)
    files, uploaded = [], []
    for path, data in segments.items():
        digest = hashlib.sha256(data).hexdigest()
        ref = reusable.get((path, len(data), digest))
        if ref is None:
            ref = put_encrypted(store, mf.segment_key(KEY.key_id), data)
            uploaded.append(path)
        files.append(mf.BackupFile(path=path, size=len(data), sha256=digest, object=ref, reused=path not in uploaded))
    chaindata = os.urandom(3000)
    archive = mf.Archive(name="chaindata.tar.zst.enc", object=put_encrypted(store, shell.archive_key("chaindata.tar.zst.enc"),
                                                                            chaindata), paths=["chaindata"])
    files.append(mf.BackupFile(path="chaindata/mdbx.dat", size=len(chaindata), sha256=hashlib.sha256(chaindata).hexdigest(),
                               archive=archive.name))
    manifest = mf.Manifest(kind="snapshot", node="erigon-1", host="h1", created_at=created_at, client="erigon",
                           version="3.0.4", source=mf.Source(datadir="/data/erigon", head_number=21_000_000,
                                                             head_hash="0x" + "ab" * 32, service_stopped=True),
                           archives=[archive], files=files)
    return manifest, uploaded


def test_the_key_layout_is_sortable_and_safe():
    m = mf.Manifest(kind="config", node="erigon-1", host="h1", created_at=T0)
    assert m.key == "backups/config/erigon-1/20261204T142227Z/manifest.json"
    assert m.archive_key("etc.tar.zst.enc") == "backups/config/erigon-1/20261204T142227Z/etc.tar.zst.enc"
    first, second = mf.segment_key(KEY.key_id), mf.segment_key(KEY.key_id)
    # Unique per upload: concurrent backups never overwrite each other's ciphertext.
    assert re.fullmatch(f"segments/{KEY.key_id}/_/" + r"[0-9a-f]{16}", first) and first != second
    # The node whose backup uploaded it is in the name: its next backup aborts only its own leftovers.
    owned = mf.segment_key(KEY.key_id, "eth.a")
    assert re.fullmatch(f"segments/{KEY.key_id}/eth\\.a/" + r"[0-9a-f]{16}", owned)
    from flows.snapshot_backup import owned_by
    assert owned_by(owned, "eth.a") and not owned_by(owned, "eth") and not owned_by(first, "eth.a")
    assert mf.verification_key(m.key, T0 + timedelta(hours=1)) == \
        f"backups/config/erigon-1/20261204T142227Z/verified/20261204T152227.{T0.microsecond:06d}Z.json"
    with pytest.raises(ValidationError):
        mf.Manifest(kind="config", node="../etc", host="h1", created_at=T0)
    with pytest.raises(ValidationError):
        mf.Manifest(kind="config", node="n", host="h1", created_at=T0.replace(tzinfo=None))


@pytest.mark.parametrize("path", ["/etc/passwd", "../up", "a/../b", "a//b", "./a"])
def test_file_paths_must_stay_inside_the_backup(path):
    with pytest.raises(ValidationError):
        mf.BackupFile(path=path, size=1, sha256="0" * 64, archive="a")


def test_a_file_is_in_exactly_one_place():
    ref = mf.StoredRef(key="segments/plain/sha256/00/x", size=1, sha256="0" * 64)
    with pytest.raises(ValidationError, match="exactly one"):
        mf.BackupFile(path="a", size=1, sha256="0" * 64)
    with pytest.raises(ValidationError, match="exactly one"):
        mf.BackupFile(path="a", size=1, sha256="0" * 64, object=ref, archive="x")
    with pytest.raises(ValidationError, match="not listed"):
        mf.Manifest(kind="config", node="n", host="h", created_at=T0,
                    files=[mf.BackupFile(path="a", size=1, sha256="0" * 64, archive="x")])


def test_a_snapshot_manifest_round_trips_and_later_backups_reuse_segments(store):
    segs = {"snapshots/v1-000000-000500-headers.seg": os.urandom(5000),
            "snapshots/v1-000000-000500-bodies.seg": os.urandom(7000)}
    first, uploaded = snapshot_backup(store, T0, segs)
    assert sorted(uploaded) == sorted(segs)
    key = mf.write_manifest(store, first)
    assert key == first.key

    [read] = mf.list_manifests(store, "snapshot", "erigon-1")
    assert read.complete and read.key == key
    assert read.model_dump(exclude={"complete"}) == first.model_dump(exclude={"complete"})
    assert read.totals.files == 3 and read.totals.objects == 3 and read.totals.reused_bytes == 0
    assert read.source.head_number == 21_000_000
    stored = json.loads(io.BytesIO(b"".join(iter(lambda b=open_object_bytes(store, key): b.read(65536), b""))).getvalue())
    assert stored["complete"] is True and stored["kind"] == "snapshot"

    # A day later one segment is new, the other unchanged: only the new one is uploaded.
    segs2 = dict(segs) | {"snapshots/v1-000500-001000-headers.seg": os.urandom(4000)}
    second, uploaded2 = snapshot_backup(store, T0 + timedelta(days=1), segs2, earlier=[read])
    assert uploaded2 == ["snapshots/v1-000500-001000-headers.seg"]
    mf.write_manifest(store, second)
    latest = mf.list_manifests(store, node="erigon-1")
    assert [m.created_at for m in latest] == [T0, T0 + timedelta(days=1)]
    assert latest[1].totals.reused_bytes == sum(f.object.size for f in latest[1].files if f.reused) > 0
    shared = {f.object.key for f in latest[0].files if f.object} & {f.object.key for f in latest[1].files if f.object}
    assert len(shared) == 2

    # A different key (or plaintext) never reuses objects encrypted with this one.
    assert mf.reusable_segments(latest, None) == {}
    assert mf.reusable_segments(latest, "0" * 16) == {}


def open_object_bytes(store, key):
    out = io.BytesIO()
    objectstore.download(store, key, out)
    out.seek(0)
    return out


def test_no_manifest_is_written_while_an_object_it_names_is_missing_or_short(store):
    manifest, _ = snapshot_backup(store, T0, {"snapshots/a.seg": b"segment bytes"})
    objectstore.delete(store, manifest.archives[0].object.key)
    with pytest.raises(ObjectStoreError, match="missing, so|is missing"):
        mf.write_manifest(store, manifest)
    assert mf.list_manifests(store, "snapshot", complete_only=False) == []
    assert objectstore.head(store, manifest.key) is None

    objectstore.put_bytes(store, manifest.archives[0].object.key, b"short")
    with pytest.raises(ObjectStoreError, match="holds 5 bytes"):
        mf.write_manifest(store, manifest)
    assert objectstore.head(store, manifest.key) is None


def test_a_manifest_is_never_replaced(store):
    m = mf.Manifest(kind="database", node="mev-db", host="db1", created_at=T0,
                    source=mf.Source(database="mev"))
    mf.write_manifest(store, m)
    with pytest.raises(ObjectExists):
        mf.write_manifest(store, m.model_copy(update={"client": "postgres"}))
    assert mf.read_manifest(store, m.key).client is None


def test_a_manifest_whose_totals_were_edited_is_refused(store):
    m = mf.Manifest(kind="config", node="n1", host="h1", created_at=T0)
    raw = json.loads(m.model_dump_json()) | {"complete": True}
    raw["totals"]["stored_bytes"] = 999
    objectstore.put_bytes(store, m.key, json.dumps(raw).encode())
    with pytest.raises(BackupIntegrityError, match="not a valid manifest"):
        mf.read_manifest(store, m.key)


def test_verifications_are_records_beside_the_manifest(store):
    m = mf.Manifest(kind="config", node="n1", host="h1", created_at=T0)
    key = mf.write_manifest(store, m)
    for hours, ok in ((1, True), (25, False)):
        mf.record_verification(store, mf.Verification(
            manifest_key=key, verified_at=T0 + timedelta(hours=hours), method="stored-sha256", ok=ok,
            objects_checked=[key], bytes_read=100, problems=[] if ok else ["x: sha256 differs"]))
    checks = mf.read_verifications(store, key)
    assert [c.ok for c in checks] == [True, False] and checks[1].problems == ["x: sha256 differs"]
    assert mf.read_manifest(store, key).complete  # the manifest itself is untouched
    assert [x.key for x in mf.list_manifests(store, "config")] == [key]  # records are not manifests
