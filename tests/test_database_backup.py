"""database-backup against the lab's real PostgreSQL (on host h3) and SeaweedFS.

What counts is what the store and the database hold afterwards, read here
directly: the manifest, the verification record, the ciphertext, the source
database's own fingerprints, and no scratch database or open upload left.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import sql

import lab
from blocks import Database, ObjectStore
from flows.database_backup import database_backup
from lab import topology
from tasks import objectstore
from tasks.backups.crypto import EncryptionKey
from tasks.backups.manifest import read_manifest, read_verifications
from tasks.database import (
    _drop_scratch,
    as_records,
    fingerprints,
    restore_fingerprints,
    scratch_name,
)
from tasks.errors import BackupIntegrityError
from tests import fleet


@pytest.fixture
def store(healthy_fleet) -> ObjectStore:
    return ObjectStore.load(topology.BLOCK_STORE)


@pytest.fixture
def db(healthy_fleet) -> Database:
    return Database.load(topology.BLOCK_DB)


def scratch_databases(db: Database) -> list[str]:
    with psycopg.connect(**db.conninfo()) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE '%\\_verify\\_%'")]


def test_a_backup_restores_to_the_same_data_and_only_then_counts_as_verified(store, db):
    with psycopg.connect(**db.conninfo()) as conn:
        live = as_records(fingerprints(conn))
    assert {r["table"]: r["rows"] for r in live}["executions"] == topology.DB_EXECUTIONS

    state = database_backup(database="mev", return_state=True)
    result = state.result()
    assert result["status"] == "succeeded", result
    manifest = read_manifest(store, result["manifest"])
    assert manifest.complete and manifest.kind == "database" and manifest.node == "mev"
    [archive] = manifest.archives
    [verification] = read_verifications(store, result["manifest"])
    assert verification.ok and verification.method == "restore-scratch" and not verification.problems
    assert verification.bytes_read == archive.object.size

    # The audit's source and restored fingerprints are the database's own, table by table.
    states = {e["data"]["label"]: e["data"]["data"] for e in fleet.run_entries(state) if e["kind"] == "state"}
    assert states["source"]["tables"] == live and states["restored"]["tables"] == live
    # Stored encrypted: neither pg_dump's nor zstd's magic, and the manifest names the key.
    with objectstore.open_object(store, archive.object.key) as body:
        first = body.read(8)
    assert not first.startswith(b"PGDMP") and not first.startswith(b"\x28\xb5\x2f\xfd")
    assert archive.object.encrypted_with == EncryptionKey.from_text(store.encryption_key_text()).key_id
    assert scratch_databases(db) == []
    assert objectstore.list_open_multipart_uploads(store) == []


def test_a_dry_run_reads_the_database_and_writes_nothing_to_the_bucket(store, db):
    before = objectstore.list_objects(store, "backups/database/")
    result = database_backup(database="mev", dry_run=True)
    assert result["outcome"] == "dry-run", result
    assert "upload backups/database/mev/" in result["detail"]
    assert objectstore.list_objects(store, "backups/database/") == before
    assert scratch_databases(db) == []


def test_a_corrupted_dump_is_refused_by_the_restore_check_and_leaves_no_scratch_database(store, db):
    result = database_backup(database="mev")
    assert result["status"] == "succeeded", result
    [archive] = read_manifest(store, result["manifest"]).archives
    with objectstore.open_object(store, archive.object.key) as body:
        data = bytearray(body.read())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle of the dump
    objectstore.put_bytes(store, archive.object.key, bytes(data))
    key = EncryptionKey.from_text(store.encryption_key_text())
    with pytest.raises(BackupIntegrityError):
        restore_fingerprints(db, store, archive.object.key, key, archive.object.sha256)
    assert scratch_databases(db) == []


def test_an_unknown_database_is_refused_before_anything_runs(store):
    before, pages = objectstore.list_objects(store, "backups/"), len(lab.stub_records("slack"))
    state = database_backup(database="payments", return_state=True)
    assert state.is_failed() and "not in the inventory's backups.databases" in state.message
    assert fleet.run_entries(state) == []  # no audit record: nothing was started
    assert objectstore.list_objects(store, "backups/") == before
    assert len(lab.stub_records("slack")) == pages  # a typo is not an incident


def test_a_scratch_database_another_role_still_uses_is_dropped_once_it_lets_go(db):
    # A fresh restore attracts an autovacuum worker, a process of no role ours
    # may terminate: DROP ... WITH (FORCE) then refuses the whole drop (a CI
    # run failed so). The drop waits for the process instead.
    socket_dir = topology.Paths(topology.lab_dir()).host(topology.DB_HOST) / "pgrun"
    as_superuser = {"host": str(socket_dir), "port": topology.DB_PORT, "user": "postgres", "autocommit": True}
    scratch = scratch_name(db.database)
    with psycopg.connect(**db.conninfo(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
        other = psycopg.connect(**as_superuser, dbname=scratch)
        threading.Timer(2.0, other.close).start()
        started = time.monotonic()
        _drop_scratch(admin, scratch)
        assert time.monotonic() - started >= 1.5, "dropped while the other process was still connected"
        assert other.closed
    assert scratch_databases(db) == []
