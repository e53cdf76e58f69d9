"""Runbook: copy the audit trail's finished days to the object store for long retention (daily).

Each UTC day before today that the store does not hold yet is written as one
object (tasks/audit/export.py), never replaced; the last RECHECK_DAYS already
exported are compared with the trail again, and a day whose records changed
after export escalates (P2): someone edited or removed records. Read an
exported day with `tasks.audit.export.read_exported`, and check the chain
across the exported days with `verify_exported`.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks import objectstore, runbook, trigger
from tasks.approval import Plan
from tasks.audit.export import PREFIX, day_key, days_with_records, export_day
from tasks.backups.store import open_store
from tasks.escalation import Kind
from tasks.guards import Resource
from tasks.runbook import Done, Failed, Runbook
from tasks.vocabulary import AUTOMATION_ONLY, ActionKind, Outcome

RECHECK_DAYS = 7


class AuditExport:
    flow = "audit-export"
    needs_approval = False

    def parameters(self) -> dict:
        return {}

    def resources(self) -> list[Resource]:
        return []

    def plan(self, rb: Runbook) -> Plan:
        self.store = open_store(rb.inventory)[0]
        today = datetime.now(timezone.utc).date()
        held = {o.key for o in objectstore.list_objects(self.store, f"{PREFIX}/")}
        days = days_with_records(today)
        self.todo = [d for d in days if day_key(d) not in held or d >= today - timedelta(days=RECHECK_DAYS)]
        return Plan([f"{d}: {'compare with' if day_key(d) in held else 'copy to'} {self.store.bucket}/{day_key(d)}"
                     for d in self.todo] or ["nothing to export"], {"days": len(self.todo)})

    def act(self, rb: Runbook, plan: Plan) -> dict:
        done, changed = [], []
        for day in self.todo:
            if not rb.gate.allows("s3", self.store.bucket, f"export {day_key(day)}", action=ActionKind.upload):
                continue
            e = export_day(self.store, day)
            rb.audit.action(f"s3:{self.store.bucket}", f"export {e.key}", 0, 0.0, action=ActionKind.upload,
                            bytes=e.bytes, sha256=e.sha256, result=e.status)
            (changed if e.status.startswith("CHANGED") else done).append(f"{day}: {e.status}")
        rb.gate.verify("the exported days read back")
        if changed:
            raise Failed(Kind.AUDIT_CHANGED, "audit", "audit records changed after they were exported: "
                         + ", ".join(changed) + "; compare the trail with the exported copy and run "
                         "`python -m tasks.audit verify`", {"days": ", ".join(changed)})
        raise Done(Outcome.succeeded if done else Outcome.noop, "exported", "; ".join(done) or "nothing to export")


@flow(name="audit-export", log_prints=True)
def audit_export(
    dry_run: Annotated[bool, Field(description="List the days it would copy; copy nothing")] = False,
    trigger_event_id: AUTOMATION_ONLY = None,
) -> dict:
    """Copy the audit trail's finished days to the object store; escalate a day changed since its export."""
    return runbook.run(AuditExport(), trigger.describe("audit-export", trigger_event_id), dry_run=dry_run)
