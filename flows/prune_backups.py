"""Runbook: delete the backups the retention policy no longer keeps.

Grandfather-father-son, per (kind, node), as restic's `forget` counts
(tasks/backups/retention.py): the newest backup of each of the last N days,
weeks and months that have one; the newest verified backup of everything is
never deleted; a backup that never completed (objects under a prefix with no
manifest, left by a run that died) goes once it is older than the grace
period. An object shared by several backups (a segment file) goes only when
no kept backup names it.

Deletion order: a backup's manifest first, then its objects, so a run that
dies halfway leaves unreferenced objects (deleted next time, as an
incomplete backup) and never a manifest that points at missing data.
Every delete passes through the run's gate: a dry run lists them all.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks import objectstore, runbook, trigger
from tasks.approval import Plan
from tasks.backups.manifest import MANIFEST, read_manifest, read_verifications
from tasks.backups.retention import Backup, RetentionPolicy, plan_retention
from tasks.backups.store import open_store
from tasks.backups.verify import METHOD as STORED_BYTES_CHECK
from tasks.escalation import Kind
from tasks.guards import Resource
from tasks.runbook import Done, Failed, Runbook
from tasks.vocabulary import AUTOMATION_ONLY, ActionKind, Outcome

Keep = Annotated[int, Field(ge=0, le=3650)]
# A segment object no manifest names: left by a snapshot that failed or died (a running one
# names its segments only in its manifest, written last, so give it two days to finish).
ORPHAN_SEGMENT_GRACE = timedelta(hours=48)


def stored_backups(store) -> list[Backup]:
    """Every backup in the store, complete (a manifest) or not (objects under a prefix without one)."""
    by_prefix: dict[str, list[objectstore.StoredObject]] = defaultdict(list)
    for o in objectstore.list_objects(store, "backups/"):
        parts = o.key.split("/")
        if len(parts) >= 5:  # backups/<kind>/<node>/<stamp>/...
            by_prefix["/".join(parts[:4])].append(o)
    out = []
    for prefix, objects in sorted(by_prefix.items()):
        keys = {o.key for o in objects}
        _, kind, node, stamp = prefix.split("/")
        manifest_key = f"{prefix}/{MANIFEST}"
        if manifest_key in keys:
            manifest = read_manifest(store, manifest_key)
            # Re-read bytes (verify-backups) prove the store kept them, not that they restore.
            verified = any(v.ok and v.method != STORED_BYTES_CHECK for v in read_verifications(store, manifest_key))
            keys |= {ref.key for ref in manifest.stored_objects()}  # segments live outside the prefix
            out.append(Backup(prefix, kind, node, manifest.created_at, True, verified, frozenset(keys)))
        else:
            # Dated by its prefix, when its run started: a run without a manifest a day later is dead.
            try:
                started = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
            except ValueError:
                continue  # not a backup's folder (not written by us): never deleted
            out.append(Backup(prefix, kind, node, started, False, False, frozenset(keys)))
    return out


@dataclass
class PruneBackups:
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    flow = "prune-backups"
    needs_approval = False

    def parameters(self) -> dict:
        return {"keep_daily": self.keep_daily, "keep_weekly": self.keep_weekly, "keep_monthly": self.keep_monthly}

    def resources(self) -> list[Resource]:
        return []

    def plan(self, rb: Runbook) -> Plan:
        self.store, _ = open_store(rb.inventory)
        self.backups = {b.id: b for b in stored_backups(self.store)}
        self.retention = plan_retention(self.backups.values(), datetime.now(timezone.utc),
                                        RetentionPolicy(self.keep_daily, self.keep_weekly, self.keep_monthly,
                                                        incomplete_grace=timedelta(hours=24)))
        named = set().union(*(b.objects for b in self.backups.values()))
        cutoff = datetime.now(timezone.utc) - ORPHAN_SEGMENT_GRACE
        self.orphans = sorted(o.key for o in objectstore.list_objects(self.store, "segments/")
                              if o.key not in named and o.last_modified is not None and o.last_modified <= cutoff)
        steps = [f"delete {b} ({why.value})" for b, why in self.retention.deleted.items()]
        steps += [f"delete {k} (a segment no backup names, older than {ORPHAN_SEGMENT_GRACE})" for k in self.orphans]
        return Plan(steps or ["delete nothing"], {"backups": len(self.backups), "kept": len(self.retention.kept),
                                                  "deleted": len(self.retention.deleted), "orphans": len(self.orphans)})

    def act(self, rb: Runbook, plan: Plan) -> dict:
        deletable = set(self.retention.deletable_objects)
        manifests = [f"{b}/{MANIFEST}" for b in self.retention.deleted if f"{b}/{MANIFEST}" in deletable]
        rb.audit.state("kept", {b: [r.value for r in why] for b, why in self.retention.kept.items()})
        rb.step("delete")
        deleted = 0
        for key in manifests + sorted(deletable - set(manifests)) + self.orphans:  # manifests first: see the docstring
            if rb.gate.allows("s3", self.store.bucket, f"delete {key}", action=ActionKind.delete):
                started = time.monotonic()
                objectstore.delete(self.store, key)
                rb.audit.action(f"s3:{self.store.bucket}", f"delete {key}", 0, time.monotonic() - started,
                                action=ActionKind.delete)
                deleted += 1
        rb.gate.verify("no deleted backup's manifest is left")  # a dry run ends here
        remaining = {o.key for o in objectstore.list_objects(self.store, "backups/")}
        if left := [m for m in manifests if m in remaining]:
            raise Failed(Kind.BACKUP_FAILED, "backups", f"{len(left)} manifests were deleted but are still listed: "
                         f"{', '.join(left[:5])}", {"store": self.store.bucket})
        detail = (f"{len(self.backups)} backups: kept {len(self.retention.kept)}, deleted "
                  f"{len(self.retention.deleted)} ({deleted} objects)")
        detail += f", {len(self.orphans)} orphaned segment objects" if self.orphans else ""
        raise Done(Outcome.succeeded if self.retention.deleted or self.orphans else Outcome.noop, "pruned", detail,
                   kept=sorted(self.retention.kept), deleted=sorted(self.retention.deleted), orphans=self.orphans)


@flow(name="prune-backups", log_prints=True)
def prune_backups(
    keep_daily: Annotated[Keep, Field(description="Keep the newest backup of each of this many days")] = 30,
    keep_weekly: Annotated[Keep, Field(description="... and of each of this many ISO weeks")] = 8,
    keep_monthly: Annotated[Keep, Field(description="... and of each of this many months")] = 12,
    dry_run: Annotated[bool, Field(description="List what would be deleted; delete nothing")] = False,
    trigger_event_id: AUTOMATION_ONLY = None,
) -> dict:
    """Apply the retention policy to every backup in the store; never the newest verified one."""
    return runbook.run(PruneBackups(keep_daily, keep_weekly, keep_monthly),
                       trigger.describe("prune-backups", trigger_event_id), dry_run=dry_run)
