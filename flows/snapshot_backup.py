"""Runbook: a consistent snapshot of one node's datadir in the backup store.

A client's database is only consistent while the client is stopped, so:

1. plan: the node must be healthy (a backup of a broken node is the one you
   would restore later); earlier snapshots of the chain's nodes are read for
   segment files that need not be uploaded again;
2. drain it (never emptying its backend: the disruption budget), record its
   head (number and hash: what a restore must bring back), stop it;
3. stream the datadir off the host (tasks/backups/datadir.py): mutable files
   as one `tar | zstd` stream, immutable segment files each as their own
   object unless an earlier backup stored the same (path, size, sha256);
   encrypted on the worker, straight into multipart uploads, nothing staged;
4. start it, wait until it is synced, return it to rotation: whatever
   happened to the upload. A node that does not come back is escalated
   first, left drained;
5. the manifest, written last, once every object is found as recorded; then
   every object this run uploaded is read back and re-hashed, and only then
   is the backup recorded as verified.

A run killed between 2 and 4 leaves the node stopped and drained: the
reconciler (flows/reconcile.py) escalates it and hands the node to
node-recovery and return-to-service. Its half-written uploads are aborted by
the node's next backup, which holds the node's lease, so nothing else can be
writing them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from inventory import load_inventory
from tasks import guards, objectstore, runbook, trigger
from tasks.approval import Plan
from tasks.backups.datadir import backup_datadir
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
from tasks.chainstate import block_at
from tasks.errors import RunbookError
from tasks.escalation import Kind
from tasks.gate import DryRunComplete
from tasks.guards import Resource
from tasks.runbook import Done, Failed, Runbook
from tasks.steps import (
    as_dict,
    assess_nodes,
    check_disruption_budget,
    drain_from_rotation,
    return_to_rotation,
    start_service,
    step,
    stop_service,
    wait_until_synced,
)
from tasks.vocabulary import AUTOMATION_ONLY, ActionKind, NodeName, Outcome

START_ATTEMPTS = 3  # a dropped SSH connection must not leave the node stopped


@step("stream-datadir")
def stream_datadir(rb: Runbook, ssh, node: str, store, key, prefix: str, reusable: dict):
    n = rb.node(node)
    progress = TransferProgress(f"snapshot of {node}", f"snapshot-{node}-progress")
    return backup_datadir(ssh, store, key, n.datadir, layout_for(n.client.value), prefix, reusable, progress=progress,
                          owner=node)


@dataclass
class SnapshotBackup:
    node: str
    flow = "snapshot-backup"
    needs_approval = False

    def parameters(self) -> dict:
        return {"node": self.node}

    def resources(self) -> list[Resource]:
        return [Resource("node", self.node)]

    def plan(self, rb: Runbook) -> Plan:
        node, inv = self.node, rb.inventory
        n, host = inv.node(node), inv.host_of(node)
        self.before = assess_nodes(inv, [node])[node]
        rb.audit.state("before", as_dict(self.before))
        if not self.before.healthy:
            raise Done(Outcome.refused, "unhealthy", f"{node} is {self.before.status} ({self.before.reason}): not backed "
                       "up, a backup of a broken node is the one you would restore later; recover it first",
                       before=as_dict(self.before))
        self.store, self.key = open_store(inv)
        self.created = datetime.now(timezone.utc)
        self.prefix = backup_prefix("snapshot", node, self.created)
        chain_nodes = inv.nodes_on_chain(n.chain)
        self.reusable = reusable_segments([m for m in list_manifests(self.store, "snapshot") if m.node in chain_nodes],
                                          self.key.key_id)
        lb = f"{n.lb.balancer} {n.lb.backend}/{n.lb.server}" if n.lb else None
        deadline = inv.chain_of(node).recovery_deadline_seconds
        return Plan([
            f"abort uploads an earlier backup of {node} left open",
            f"check that draining {node} leaves a healthy server in {lb}" if lb else "node is not behind a load balancer",
            f"drain {node} from {lb}" if lb else "no drain needed",
            f"record {node}'s head, stop {n.service.manager.value} service {n.service.name} on {host.address}",
            f"stream {n.datadir} (tar | zstd -1 on the host; segment files already stored by "
            f"{len(self.reusable)} known objects are not uploaded again), encrypted (key {self.key.key_id}), "
            f"into {self.store.bucket}/{self.prefix}",
            f"start {n.service.name}, wait up to {deadline:.0f}s until synced, "
            + (f"return {node} to rotation" if lb else "no rotation change") + ", whatever happened to the upload",
            "write the manifest once every object is stored as recorded, read back and re-hash what was uploaded",
        ], {"store": f"{self.store.bucket}/{self.prefix}", "reusable_objects": len(self.reusable)})

    def act(self, rb: Runbook, plan: Plan) -> dict:
        node, n = self.node, rb.node(self.node)
        rb.step("abort-leftover-uploads")
        for upload in objectstore.list_open_multipart_uploads(self.store):
            if owned_by(upload.key, node) and rb.gate.allows("s3", self.store.bucket, f"abort the upload of {upload.key}",
                                                             action=ActionKind.delete):
                objectstore.abort_multipart_upload(self.store, upload)
                rb.audit.action(f"s3:{self.store.bucket}", f"abort upload {upload.key}", 0, 0.0, action=ActionKind.delete)
        try:
            check_disruption_budget(rb, node)
        except guards.DisruptionBudgetExceeded as exc:
            rb.notify(f"snapshot of {node} not taken: {exc}", [])
            raise Done(Outcome.refused, "disruption-budget", f"{node} not backed up: {exc}") from None

        drained = drain_from_rotation(rb, node)
        backup, failure, head = None, None, None
        try:
            with rb.ssh(node) as ssh:
                head = block_at(n.rpc_url)
                rb.audit.state("head", {"number": head.number, "hash": head.hash} if head else {})
                if not stop_service(rb, ssh, node):
                    raise RunbookError(f"{n.service.name} did not stop, so its datadir is not consistent: no backup")
                started = time.monotonic()
                backup = stream_datadir(rb, ssh, node, self.store, self.key, self.prefix, self.reusable)
                rb.audit.action(f"s3:{self.store.bucket}", f"upload {self.prefix}", 0, time.monotonic() - started,
                                action=ActionKind.upload, bytes=backup.uploaded_bytes, reused_bytes=backup.reused_bytes)
        except DryRunComplete:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the node is started again first
            failure = exc
            get_run_logger().error("snapshot of %s failed: %s: %s", node, type(exc).__name__, exc)

        after = self._bring_back(rb, drained)
        if failure is not None:
            raise Failed(Kind.BACKUP_FAILED, node, f"snapshot of {node} failed, no backup written "
                         f"({type(failure).__name__}: {str(failure)[:300]}); {node} is back in service",
                         {"after": f"{after.status}: {after.reason}"})

        rb.step("manifest")
        manifest = Manifest(
            kind="snapshot", node=node, host=n.host, created_at=self.created, client=n.client.value,
            version=self.before.version,
            source=Source(datadir=n.datadir, head_number=head.number if head else None,
                          head_hash=head.hash if head else None, service_stopped=True),
            archives=backup.archives, files=backup.files,
        )
        rb.gate.allows("s3", self.store.bucket, f"upload {manifest.key}", action=ActionKind.upload)
        key = write_manifest(self.store, manifest)
        rb.audit.action(f"s3:{self.store.bucket}", f"upload {key}", 0, 0.0, action=ActionKind.upload)
        rb.step("read-back")
        uploaded = {a.object.key for a in backup.archives} | {f.object.key for f in backup.files if f.object and not f.reused}
        verification = read_back(self.store, manifest, uploaded)
        record_verification(self.store, verification)
        if not verification.ok:
            raise Failed(Kind.BACKUP_FAILED, node, f"snapshot of {node} does not read back as written: "
                         + "; ".join(verification.problems)[:400], {"manifest": key}, manifest=key)
        totals = manifest.totals
        detail = (f"{node}: {totals.files} files, {totals.file_bytes} bytes, {backup.uploaded_bytes} bytes uploaded, "
                  f"{backup.reused_bytes} reused; head {manifest.source.head_number}; verified ({key})")
        rb.notify(f"snapshot backup verified: {detail}", [])
        raise Done(Outcome.succeeded, "verified", detail, manifest=key, uploaded_bytes=backup.uploaded_bytes,
                   reused_bytes=backup.reused_bytes, head_number=manifest.source.head_number,
                   head_hash=manifest.source.head_hash)

    def _bring_back(self, rb: Runbook, drained: bool):
        """Start the node, wait until synced, return it to rotation; a node that does not come back is escalated."""
        node = self.node
        started, last_error = False, None
        for attempt in range(START_ATTEMPTS):
            try:
                with rb.ssh(node) as ssh:
                    started = start_service(rb, ssh, node)
                if started:
                    break
            except RunbookError as exc:  # the connection the stream used may be the one that dropped
                last_error = exc
            time.sleep(2 * (attempt + 1))
        after = wait_until_synced(rb, node, rb.inventory.chain_of(node).recovery_deadline_seconds) if started \
            else assess_nodes(rb.inventory, [node])[node]
        rb.audit.state("after", as_dict(after))
        if not (started and after.healthy):
            why = f"could not start it ({last_error})" if not started else f"still {after.status}: {after.reason}"
            raise Failed(Kind.NOT_RECOVERED, node, f"{node} did not come back after its snapshot: {why}; "
                         + ("left out of rotation" if drained else "rotation unchanged"),
                         {"after": f"{after.status}: {after.reason}"})
        if drained:
            return_to_rotation(rb, node)
        return after


def owned_by(key: str, node: str) -> bool:
    """Is this object key written by a snapshot of `node`? Its archives live under its prefix; its
    segment objects carry its name (tasks/backups/manifest.py segment_key)."""
    if key.startswith(f"backups/snapshot/{node}/"):
        return True
    parts = key.split("/")  # segments/<key id>/<owner>/<token>
    return len(parts) == 4 and parts[0] == "segments" and parts[2] == node


@flow(name="snapshot-backup", log_prints=True)
def snapshot_backup(
    node: NodeName,
    dry_run: Annotated[bool, Field(description="Plan and show what would be done; stop nothing, upload nothing")] = False,
    lease_wait_seconds: Annotated[float, Field(ge=0, le=3600, description="How long to wait for another run on this node")] = 300,
    trigger_event_id: AUTOMATION_ONLY = None,
) -> dict:
    """Back up one node's datadir, consistent (node stopped), deduplicated, encrypted, verified."""
    return runbook.run(SnapshotBackup(node), trigger.describe("snapshot-backup", trigger_event_id),
                       dry_run=dry_run, lease_wait_seconds=lease_wait_seconds)


@flow(name="snapshot-backups", log_prints=True)
def snapshot_backups(
    nodes: Annotated[list[NodeName] | None, Field(max_length=2000, description="The nodes to back up; empty: every node")] = None,
    dry_run: Annotated[bool, Field(description="Plan each one; stop nothing, upload nothing")] = False,
) -> dict:
    """The weekly snapshot of the fleet: each node in turn, as its own snapshot-backup run (own lease, audit,
    outcome). One at a time, so at most one node of a backend is ever out for a backup; a failure is escalated
    by that node's run and does not stop the others."""
    names = nodes or sorted(load_inventory().nodes)
    results = {}
    for name in names:
        try:
            results[name] = snapshot_backup(name, dry_run=dry_run)["status"]
        except Exception as exc:  # noqa: BLE001 - escalated by the node's own run; the next node still goes
            results[name] = f"failed: {type(exc).__name__}"
    failed = sorted(n for n, s in results.items() if s.startswith("failed"))
    if failed:
        raise RuntimeError(f"snapshots failed for {', '.join(failed)} (each escalated by its own run): {results}")
    return results
