"""A snapshot of a stopped node's datadir in the backup store, as a run's steps: shared by
snapshot-backup (weekly) and client-upgrade (the datadir before a version that may migrate it).

The caller owns the node's downtime (drain, stop, start, return); these steps own the store side:
segment reuse from the chain's earlier snapshots, the stream, and the manifest written last, then
read back and re-hashed before the backup counts as verified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from tasks.backups.datadir import DatadirBackup, backup_datadir
from tasks.backups.layout import layout_for
from tasks.backups.manifest import (
    Manifest,
    Source,
    backup_prefix,
    list_manifests,
    record_verification,
    reusable_segments,
    write_manifest,
)
from tasks.backups.progress import TransferProgress
from tasks.backups.store import open_store
from tasks.backups.verify import read_back
from tasks.chainstate import Block
from tasks.escalation import Kind
from tasks.runbook import Failed, Runbook
from tasks.steps import step
from tasks.vocabulary import ActionKind


@dataclass
class SnapshotTarget:
    """Where one snapshot of `node` goes, opened before the node is stopped (a store problem refuses early)."""

    node: str
    store: object
    key: object
    created: datetime
    prefix: str
    reusable: dict

    @classmethod
    def open(cls, rb: Runbook, node: str) -> "SnapshotTarget":
        store, key = open_store(rb.inventory)
        created = datetime.now(timezone.utc)
        chain_nodes = rb.inventory.nodes_on_chain(rb.node(node).chain)
        reusable = reusable_segments([m for m in list_manifests(store, "snapshot") if m.node in chain_nodes], key.key_id)
        return cls(node, store, key, created, backup_prefix("snapshot", node, created), reusable)


@step("stream-datadir")
def stream_datadir(rb: Runbook, ssh, target: SnapshotTarget) -> DatadirBackup:
    """The stopped node's datadir into the store (tar | zstd on the host, segments reused or one object each)."""
    n = rb.node(target.node)
    progress = TransferProgress(f"snapshot of {target.node}", f"snapshot-{target.node}-progress")
    started = time.monotonic()
    backup = backup_datadir(ssh, target.store, target.key, n.datadir, layout_for(n.client.value), target.prefix,
                            target.reusable, progress=progress, owner=target.node)
    rb.audit.action(f"s3:{target.store.bucket}", f"upload {target.prefix}", 0, time.monotonic() - started,
                    action=ActionKind.upload, bytes=backup.uploaded_bytes, reused_bytes=backup.reused_bytes)
    return backup


@step("manifest")
def write_verified_manifest(rb: Runbook, target: SnapshotTarget, backup: DatadirBackup, version: str | None,
                            head: Block | None) -> Manifest:
    """Write the manifest last, then read back and re-hash what this run uploaded; Failed if it does not."""
    n = rb.node(target.node)
    manifest = Manifest(
        kind="snapshot", node=target.node, host=n.host, created_at=target.created, client=n.client.value,
        version=version,
        source=Source(datadir=n.datadir, head_number=head.number if head else None,
                      head_hash=head.hash if head else None, service_stopped=True),
        archives=backup.archives, files=backup.files,
    )
    rb.gate.allows("s3", target.store.bucket, f"upload {manifest.key}", action=ActionKind.upload)
    key = write_manifest(target.store, manifest)
    rb.audit.action(f"s3:{target.store.bucket}", f"upload {key}", 0, 0.0, action=ActionKind.upload)
    rb.step("read-back")
    uploaded = {a.object.key for a in backup.archives} | {f.object.key for f in backup.files if f.object and not f.reused}
    verification = read_back(target.store, manifest, uploaded)
    record_verification(target.store, verification)
    if not verification.ok:
        raise Failed(Kind.BACKUP_FAILED, target.node, f"snapshot of {target.node} does not read back as written: "
                     + "; ".join(verification.problems)[:400], {"manifest": key}, manifest=key)
    return manifest
