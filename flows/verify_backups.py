"""Runbook: prove the backup store still holds every backup as it was written.

A backup nobody reads back is a hope. database-backup restores its dump once,
when it is made; after that the store may lose or rot it, or a cleanup may
remove a segment a later backup still names, and nobody would know until a
restore. Daily (prefect.yaml), as restic's `check --read-data-subset`
(tasks/backups/verify.py has the policy and why):

1. survey: read and validate every manifest, and when each object was last
   re-read (from the verification records beside the manifests);
2. HEAD every object every manifest names: present, at the recorded size;
3. re-read this run's share of the rotation in full, sha256 compared with the
   manifest's, so every object is re-read at least once per `period_days`;
4. record a verification beside every manifest with an object re-read or a
   problem; a missing or corrupt object escalates (P2) naming the backups and
   objects.

Reads only, so no lease and no node resource: the deployment runs one at a
time. The records are writes and pass through the run's gate, so a dry run
does every read and check and writes nothing. The key is not needed: the
stored bytes' sha256 is checked, not the plaintext.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated

from prefect import flow
from prefect.artifacts import create_table_artifact
from pydantic import Field

from tasks import runbook, trigger
from tasks.approval import Plan
from tasks.backups import verify
from tasks.backups.manifest import Kind as BackupKind
from tasks.backups.manifest import Verification, record_verification
from tasks.backups.store import open_store
from tasks.escalation import Kind
from tasks.guards import Resource
from tasks.runbook import Done, Failed, Runbook
from tasks.vocabulary import AUTOMATION_ONLY, ActionKind, Outcome

ARTIFACT_ROWS = 500  # a table an operator can read; the audit record has everything
SHOWN = 20  # objects and manifests named in an escalation


@dataclass
class VerifyBackups:
    period_days: int
    kinds: list[str] | None
    flow = "verify-backups"
    needs_approval = False

    def parameters(self) -> dict:
        return {"period_days": self.period_days, "kinds": self.kinds}

    def resources(self) -> list[Resource]:
        return []

    def plan(self, rb: Runbook) -> Plan:
        self.store, _ = open_store(rb.inventory)
        self.now = datetime.now(timezone.utc)
        self.found = verify.survey(self.store, self.kinds)
        self.due = verify.due_objects(self.found.objects.values(), self.now, self.period_days, self.found.last_checked)
        manifests = len(self.found.manifests) + len(self.found.unreadable)
        due_bytes = sum(r.size for r in self.due)
        return Plan([
            f"read and validate {manifests} manifests; HEAD each of the {len(self.found.objects)} objects they name",
            f"re-read {len(self.due)} objects ({due_bytes} bytes) in full and compare their sha256 with the manifests'",
            f"record a {verify.METHOD} verification beside each manifest with an object re-read or a problem",
        ], {"store": self.store.bucket, "kinds": self.kinds or "all", "manifests": manifests,
            "objects": len(self.found.objects), "stored_bytes": sum(r.size for r in self.found.objects.values()),
            "due_objects": len(self.due), "due_bytes": due_bytes, "period_days": self.period_days})

    def act(self, rb: Runbook, plan: Plan) -> dict:
        found, store = self.found, self.store
        rb.step("head")
        problems = dict(found.conflicts)  # object key -> what is wrong with it
        for key, problem in verify.check_present(store, found.objects.values()).items():
            problems.setdefault(key, problem)

        rb.step("re-read")
        passed: set[str] = set()
        reread: list[str] = []
        read = 0
        for ref in self.due:
            if ref.key in problems:  # already known missing or the wrong size: reading proves nothing more
                continue
            problem = verify.rehash(store, ref)
            reread.append(ref.key)
            read += ref.size
            if problem is None:
                passed.add(ref.key)
            else:
                problems[ref.key] = problem

        rb.step("confirm")
        broken = {m for key in problems for m in found.named_by.get(key, [])} | set(found.unreadable)
        # prune-backups deletes a manifest before its objects: one gone meanwhile was pruned, not broken.
        pruned = broken - set(verify.still_there(store, sorted(broken)))
        broken -= pruned
        problems = {k: p for k, p in problems.items() if set(found.named_by.get(k, [])) - pruned}

        rb.step("record")
        touched = sorted(broken | {m for key in passed for m in found.named_by[key]} - pruned)
        for manifest_key in touched:
            verification = self._verification(manifest_key, problems, passed)
            what = "ok" if verification.ok else f"{len(verification.problems)} problems"
            if rb.gate.allows("s3", store.bucket, f"record the verification of {manifest_key} ({what})",
                              action=ActionKind.upload):
                started = time.monotonic()
                key = record_verification(store, verification)
                rb.audit.action(f"s3:{store.bucket}", f"upload {key}", 0, time.monotonic() - started,
                                action=ActionKind.upload)

        total = len(found.objects)
        covered = verify.covered(found.objects, self.now, self.period_days,
                                 found.last_checked | {key: self.now for key in passed})
        rb.audit.state("checked", {"re-read": reread,
                                   "problems": problems, "unreadable_manifests": found.unreadable,
                                   "unreadable_records": found.unreadable_records, "pruned_meanwhile": sorted(pruned),
                                   "covered": covered, "objects": total})
        self._artifact(problems, passed)
        rb.gate.verify("no stored object is missing or corrupt")  # a dry run ends here, having written nothing

        if broken:
            shown = [f"{k}: {p}" for k, p in sorted(problems.items())][:3] + [
                f"{m}: {why}" for m, why in sorted(found.unreadable.items()) if m in broken][:3]
            raise Failed(Kind.BACKUP_FAILED, "backups",
                         f"{len(broken)} backups in {store.bucket} are broken: {len(problems)} stored objects missing "
                         f"or corrupt, {len(broken & set(found.unreadable))} manifests unreadable "
                         f"({'; '.join(shown)})"[:600],
                         {"store": store.bucket, "manifests": sorted(broken)[:SHOWN],
                          "objects": dict(sorted(problems.items())[:SHOWN])},
                         manifests=sorted(broken), objects=problems)
        if not found.manifests:
            raise Done(Outcome.noop, "no-backups", f"no backups of {self.kinds or 'any kind'} in {store.bucket}")
        detail = (f"{len(found.manifests)} backups, {total} objects present; {len(passed)} re-read ({read} bytes), "
                  f"all as recorded; {covered} of {total} objects re-read within the last {self.period_days} days")
        raise Done(Outcome.succeeded, "verified", detail, manifests=len(found.manifests), objects=total,
                   objects_read=len(passed), bytes_read=read, covered=covered, period_days=self.period_days)

    def _verification(self, manifest_key: str, problems: dict[str, str], passed: set[str]) -> Verification:
        manifest = self.found.manifests.get(manifest_key)
        if manifest is None:  # unreadable: the record says why, beside it
            return Verification(manifest_key=manifest_key, verified_at=self.now, method=verify.METHOD, ok=False,
                                problems=[self.found.unreadable[manifest_key]])
        refs = manifest.stored_objects()
        # Only objects that matched are "checked": a failed one earns no credit in the rotation.
        checked = [r for r in refs if r.key in passed]
        return Verification(manifest_key=manifest_key, verified_at=self.now, method=verify.METHOD,
                            ok=not any(r.key in problems for r in refs), objects_checked=[r.key for r in checked],
                            bytes_read=sum(r.size for r in checked),
                            problems=[f"{r.key}: {problems[r.key]}" for r in refs if r.key in problems])

    def _artifact(self, problems: dict[str, str], passed: set[str]) -> None:
        rows = [{"object": key, "bytes": self.found.objects[key].size, "result": problems.get(key, "ok"),
                 "backups": len(self.found.named_by.get(key, []))}
                for key in sorted(passed | set(problems))]
        rows += [{"object": key, "bytes": None, "result": why, "backups": 1}
                 for key, why in sorted(self.found.unreadable.items())]
        create_table_artifact(key="verify-backups", table=rows[:ARTIFACT_ROWS] or [{"object": "-", "result": "nothing"}],
                              description=f"verify-backups: {len(rows)} objects re-read or with a problem"
                                          + (f" (first {ARTIFACT_ROWS})" if len(rows) > ARTIFACT_ROWS else ""))


@flow(name="verify-backups", log_prints=True)
def verify_backups(
    period_days: Annotated[int, Field(ge=1, le=90, description="Re-read every stored object in full at least once "
                                                                  "in this many days (the deployment runs daily)")] = 7,
    kinds: Annotated[list[BackupKind] | None, Field(min_length=1, max_length=3,
                                                    description="Only backups of these kinds (none chosen: every kind)")] = None,
    dry_run: Annotated[bool, Field(description="Read and check everything; record no verification")] = False,
    trigger_event_id: AUTOMATION_ONLY = None,
) -> dict:
    """Check every backup's manifest and objects, and re-read this run's share of the store in full."""
    return runbook.run(VerifyBackups(period_days, sorted(set(kinds)) if kinds else None),
                       trigger.describe("verify-backups", trigger_event_id), dry_run=dry_run)
