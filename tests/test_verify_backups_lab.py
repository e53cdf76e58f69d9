"""verify-backups against the lab: a real backup made by database-backup, re-read from the lab's
SeaweedFS by the flow on the lab's Prefect server, escalated through the Slack and PagerDuty stand-ins.

What counts is what the store and the stand-ins hold afterwards, read here directly: the
verification records beside the manifest, the messages and pages, the bucket unchanged by a dry run.

Each test has a store of its own: the lab's bucket under a prefix of the test's, named by an
inventory of the test's (the flows read RUNBOOKS_INVENTORY when they run, as a deployment
would). Other tests leave backups in the lab's store, one of them corrupted on purpose
(tests/test_database_backup.py), and those are not this test's findings.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

import lab
from blocks import ObjectStore
from flows.database_backup import database_backup
from flows.verify_backups import verify_backups
from lab import topology
from tasks import objectstore
from tasks.backups.manifest import read_manifest, read_verifications
from tasks.backups.verify import METHOD
from tests import fleet


@pytest.fixture
def own_store(healthy_fleet, tmp_path, monkeypatch) -> ObjectStore:
    name = f"verify-test-{uuid.uuid4().hex[:8]}"
    shared = ObjectStore.load(topology.BLOCK_STORE)
    ObjectStore(**{f: getattr(shared, f) for f in ObjectStore.model_fields} | {"prefix": name}).save(name)
    inventory = yaml.safe_load(Path(lab.status()["inventory"]).read_text())
    inventory["backups"]["store_block"] = name
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    monkeypatch.setenv("RUNBOOKS_INVENTORY", str(path))
    store = ObjectStore.load(name)
    yield store
    for o in objectstore.list_objects(store):
        objectstore.delete(store, o.key)
    ObjectStore.delete(name)


def escalations() -> tuple[list[str], list[dict]]:
    """Slack texts and PagerDuty triggers about backups since the test began."""
    texts = [r["body"]["text"] for r in lab.stub_records("slack")
             if r["path"] == "/api/chat.postMessage" and "backups" in r["body"].get("text", "")]
    pages = [r["body"] for r in lab.stub_records("pagerduty")
             if r["body"].get("event_action") == "trigger" and "/backups/" in r["body"].get("dedup_key", "")]
    return [t for t in texts if t.startswith("[P")], pages


def make_backup(store: ObjectStore) -> tuple[str, str, int]:
    """A real database backup in the test's store: (manifest key, dump key, dump bytes)."""
    result = database_backup(database="mev")
    assert result["status"] == "succeeded", result
    [archive] = read_manifest(store, result["manifest"]).archives
    assert archive.object.key.startswith("backups/database/mev/")
    return result["manifest"], archive.object.key, archive.object.size


def test_an_intact_store_is_verified_and_recorded_and_nobody_is_paged(own_store):
    manifest, dump, size = make_backup(own_store)
    state = verify_backups(period_days=1, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert (result["status"], result["outcome"]) == ("succeeded", "verified"), result
    assert (result["manifests"], result["objects"], result["objects_read"], result["covered"]) == (1, 1, 1, 1)
    assert result["bytes_read"] == size
    records = read_verifications(own_store, manifest)
    assert {v.method for v in records} == {"restore-scratch", METHOD} and all(v.ok for v in records)
    [ours] = [v for v in records if v.method == METHOD]
    assert ours.objects_checked == [dump] and ours.bytes_read == size and not ours.problems
    assert escalations() == ([], [])
    assert fleet.outcome(fleet.run_entries(state))["status"] == "succeeded"


def test_a_dry_run_reads_everything_and_writes_nothing_to_the_bucket(own_store):
    manifest, _, _ = make_backup(own_store)
    before = objectstore.list_objects(own_store)
    result = verify_backups(period_days=1, dry_run=True)
    assert result["outcome"] == "dry-run", result
    assert f"record the verification of {manifest} (ok)" in result["detail"]
    assert objectstore.list_objects(own_store) == before
    assert escalations() == ([], [])


def test_a_corrupted_dump_fails_the_run_escalates_p2_and_is_recorded_not_ok(own_store):
    manifest, dump, _ = make_backup(own_store)
    with objectstore.open_object(own_store, dump) as body:
        data = bytearray(body.read())
    data[len(data) // 2] ^= 0x01  # one bit, same size: only a full re-read sees it
    objectstore.put_bytes(own_store, dump, bytes(data))

    state = verify_backups(period_days=1, return_state=True)
    assert state.is_failed(), state.message
    outcome = fleet.outcome(fleet.run_entries(state))
    assert (outcome["status"], outcome["result"]) == ("escalated", "backup-failed"), outcome
    assert dump in outcome["detail"]
    texts, pages = escalations()
    assert any(t.startswith("[P2] backups:") and dump in t for t in texts), texts
    assert pages and pages[-1]["payload"]["severity"] == "error", pages  # P2 pages
    ours = [v for v in read_verifications(own_store, manifest) if v.method == METHOD]
    assert len(ours) == 1 and not ours[0].ok
    assert ours[0].objects_checked == [] and ours[0].problems[0].startswith(f"{dump}: corrupt: sha256 ")


def test_a_deleted_dump_is_found_by_the_cheap_check_whatever_the_rotation(own_store):
    manifest, dump, _ = make_backup(own_store)
    objectstore.delete(own_store, dump)
    state = verify_backups(period_days=90, return_state=True)  # the rotation alone might not read it today
    assert state.is_failed(), state.message
    texts, _ = escalations()
    assert any(dump in t and "missing" in t for t in texts), texts
    [ours] = [v for v in read_verifications(own_store, manifest) if v.method == METHOD]
    assert not ours.ok and ours.problems == [f"{dump}: missing"]
