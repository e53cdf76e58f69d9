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

from dataclasses import dataclass
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from inventory import load_inventory
from tasks import guards, objectstore, runbook, trigger
from tasks.approval import Plan
from tasks.backups.snapshot import SnapshotTarget, stream_datadir, write_verified_manifest
from tasks.chainstate import block_at
from tasks.errors import RunbookError
from tasks.escalation import Kind
from tasks.gate import DryRunComplete
from tasks.guards import Resource
from tasks.runbook import Done, Failed, Runbook
from tasks.steps import as_dict, assess_nodes, bring_back, check_disruption_budget, drain_from_rotation, stop_service
from tasks.vocabulary import AUTOMATION_ONLY, ActionKind, NodeName, Outcome


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
        self.target = SnapshotTarget.open(rb, node)
        self.store, self.key, self.prefix, self.reusable = (self.target.store, self.target.key, self.target.prefix,
                                                            self.target.reusable)
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
                backup = stream_datadir(rb, ssh, self.target)
        except DryRunComplete:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the node is started again first
            failure = exc
            get_run_logger().error("snapshot of %s failed: %s: %s", node, type(exc).__name__, exc)

        after = bring_back(rb, node, drained, "its snapshot")
        if failure is not None:
            raise Failed(Kind.BACKUP_FAILED, node, f"snapshot of {node} failed, no backup written "
                         f"({type(failure).__name__}: {str(failure)[:300]}); {node} is back in service",
                         {"after": f"{after.status}: {after.reason}"})

        manifest = write_verified_manifest(rb, self.target, backup, self.before.version, head)
        key = manifest.key
        totals = manifest.totals
        detail = (f"{node}: {totals.files} files, {totals.file_bytes} bytes, {backup.uploaded_bytes} bytes uploaded, "
                  f"{backup.reused_bytes} reused; head {manifest.source.head_number}; verified ({key})")
        rb.notify(f"snapshot backup verified: {detail}", [])
        raise Done(Outcome.succeeded, "verified", detail, manifest=key, uploaded_bytes=backup.uploaded_bytes,
                   reused_bytes=backup.reused_bytes, head_number=manifest.source.head_number,
                   head_hash=manifest.source.head_hash)


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
    return runbook.each_in_turn(names, lambda name: snapshot_backup(name, dry_run=dry_run), "snapshots")
