"""prune-backups against the lab's SeaweedFS: a synthetic history of backups,
the policy applied, and what the bucket holds afterwards read back directly."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from blocks import ObjectStore
from flows.prune_backups import prune_backups
from lab import topology
from tasks import objectstore
from tasks.backups.manifest import Archive, Manifest, StoredRef, Verification, record_verification, write_manifest


@pytest.fixture
def store(healthy_fleet) -> ObjectStore:
    return ObjectStore.load(topology.BLOCK_STORE)


def backup(store: ObjectStore, node: str, created: datetime, verified: bool = False) -> str:
    """A complete (tiny) database backup of `node` made at `created`; its prefix."""
    manifest = Manifest(kind="database", node=node, host="h3", created_at=created)
    data = f"dump of {node} at {created.isoformat()}".encode()
    key = manifest.archive_key("dump.pgc.zst")
    objectstore.put_bytes(store, key, data)
    manifest = Manifest(kind="database", node=node, host="h3", created_at=created, archives=[Archive(
        name="dump.pgc.zst", object=StoredRef(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest()))])
    manifest_key = write_manifest(store, manifest)
    if verified:
        record_verification(store, Verification(manifest_key=manifest_key, verified_at=created, method="test", ok=True))
    return manifest.prefix


def prefixes(store: ObjectStore, node: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for o in objectstore.list_objects(store, f"backups/database/{node}/"):
        out.setdefault("/".join(o.key.split("/")[:4]), set()).add(o.key.rsplit("/", 1)[-1])
    return out


def test_retention_keeps_what_the_policy_says_and_never_the_last_verified_backup(store):
    node = f"prune-{uuid.uuid4().hex[:8]}"  # its own subject: other tests' backups are not counted in
    today = datetime.now(timezone.utc).replace(hour=1, minute=30, second=0, microsecond=0)
    made = {d: backup(store, node, today - timedelta(days=d), verified=(d == 20)) for d in range(0, 21)}
    # A run that died after its upload: objects, no manifest (old enough to be a leftover).
    dead = Manifest(kind="database", node=node, host="h3", created_at=today - timedelta(days=30))
    objectstore.put_bytes(store, dead.archive_key("dump.pgc.zst"), b"half a dump")
    assert len(prefixes(store, node)) == 22

    dry = prune_backups(keep_daily=3, keep_weekly=0, keep_monthly=0, dry_run=True)
    assert dry["outcome"] == "dry-run" and len(prefixes(store, node)) == 22  # listed, nothing deleted
    assert f"delete {made[10]}/manifest.json" in dry["detail"]

    result = prune_backups(keep_daily=3, keep_weekly=0, keep_monthly=0)
    assert result["status"] == "succeeded", result
    left = prefixes(store, node)
    # The last three days, and day 20: the only verified backup, older than every window.
    assert set(left) == {made[0], made[1], made[2], made[20]}
    assert {"manifest.json", "dump.pgc.zst"} <= left[made[20]]
    assert dead.prefix not in left  # the incomplete leftover went too
    assert set(result["deleted"]) >= {made[3], made[19], dead.prefix}

    again = prune_backups(keep_daily=3, keep_weekly=0, keep_monthly=0)
    assert set(prefixes(store, node)) == set(left) and made[3] not in again["deleted"]  # idempotent


def test_a_segment_no_backup_names_goes_after_the_grace_and_a_named_one_stays(store, monkeypatch):
    import flows.prune_backups as prune
    from tasks.backups.manifest import BackupFile, segment_key

    node = f"seg-{uuid.uuid4().hex[:8]}"
    data = b"an immutable segment"
    digest = hashlib.sha256(data).hexdigest()
    named_key, orphan_key = segment_key(None, node), segment_key(None, node)
    for key in (named_key, orphan_key):
        objectstore.put_bytes(store, key, data)
    ref = StoredRef(key=named_key, size=len(data), sha256=digest)
    write_manifest(store, Manifest(kind="snapshot", node=node, host="h1", created_at=datetime.now(timezone.utc),
                                   files=[BackupFile(path="snapshots/a.seg", size=len(data), sha256=digest, object=ref)]))

    assert orphan_key not in prune_backups(dry_run=True)["detail"]  # younger than the grace: left alone
    monkeypatch.setattr(prune, "ORPHAN_SEGMENT_GRACE", timedelta(0))
    result = prune_backups()
    assert orphan_key in result["orphans"] and named_key not in result["orphans"]
    assert objectstore.head(store, orphan_key) is None and objectstore.head(store, named_key) is not None
