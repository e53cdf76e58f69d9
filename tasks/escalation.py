"""Escalation: who hears about a problem, and how loudly. The one place for the matrix.

| priority | kind (what the runbook found)                                    | Slack | PagerDuty        |
| -------- | ---------------------------------------------------------------- | ----- | ---------------- |
| P1       | `chain-incident`: the chain, not a node, is the problem          | yes   | page, critical   |
| P1       | `backend-down`: a node did not recover and its load-balancer     | yes   | page, critical   |
|          | backend has no healthy server left                               |       |                  |
| P1       | `profit-loss-major`: an hour lost over $10k (daily report)       | yes   | page, critical   |
| P2       | `not-recovered`: a node did not recover (peers still serve)      | yes   | page, error      |
| P2       | `circuit-open`: the node's restart budget is spent               | yes   | page, error      |
| P2       | `run-crashed`: a mutating run died half way (found by reconcile) | yes   | page, error      |
| P2       | `run-failed`: a mutating run failed on an error nobody planned   | yes   | page, error      |
| P2       | `upgrade-failed`: a node failed its upgrade and was rolled back  | yes   | page, error      |
| P2       | `disk-full`: safe clean-ups left a disk past its critical mark   | yes   | page, error      |
| P2       | `audit-changed`: audit records changed after they were exported  | yes   | page, error      |
| P2       | `profit-loss`: an hour lost $1k-10k (daily report)               | yes   | page, error      |
| P3       | `lagging`, `warning`: degraded, automation is handling it        | yes   | no               |
| P3       | `profit-low`: an hour earned under $1k (daily report)            | yes   | no               |
| P3       | `disk-over-target`: safe clean-ups were not enough; heavy client | yes   | no               |
|          | pruning (approval) or more disk is a human's call                |       |                  |
| P4       | `info`: for the record                                           | yes   | no               |

An alert's `severity` label can raise the priority, never lower it:
critical -> at least P2, warning -> at least P3, info -> P4 (no effect).
Only what a runbook found itself reaches P1 (the daily report's profit loss included). An unknown kind without a
severity is P3 (someone should look; nobody is woken); an unknown severity
counts as warning.

`escalate` posts to Slack always, and pages PagerDuty for P1 and P2. Repeats
for the same node (or chain: use `guards.chain_target`) update one PagerDuty
incident: the open incident's dedup key is derived from the audit trail (the
last `pagerduty_action: trigger` note for that target not followed by a
successful resolve), else a new key `runbooks/<target>/<run_id>` is used.
`resolve_incident` closes it when the node recovers. Every call to Slack and
PagerDuty, failed or not, is an audit note; a failing notification is logged
and audited, never fatal.
"""

from __future__ import annotations

import json
import logging
from enum import Enum
from typing import TYPE_CHECKING, Any

from tasks import pagerduty, slack
from tasks.audit import AuditRecord, read_entries
from tasks.errors import InvalidInput, RunbookError
from tasks.redaction import redact_text, register_secret
from tasks.vocabulary import EntryKind

if TYPE_CHECKING:  # pragma: no cover
    from blocks import PagerDutyService, SlackWorkspace

log = logging.getLogger(__name__)


class Priority(str, Enum):
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"
    P4 = "P4"

    @property
    def pages(self) -> bool:
        """Whether this priority wakes someone up (PagerDuty)."""
        return self in (Priority.P1, Priority.P2)

    @property
    def pagerduty_severity(self) -> pagerduty.Severity:
        return {"P1": "critical", "P2": "error", "P3": "warning", "P4": "info"}[self.value]  # type: ignore[return-value]


class Kind:
    """What a runbook found, in the words of the matrix above."""

    CHAIN_INCIDENT = "chain-incident"
    BACKEND_DOWN = "backend-down"
    NOT_RECOVERED = "not-recovered"
    CIRCUIT_OPEN = "circuit-open"
    RUN_CRASHED = "run-crashed"
    RUN_FAILED = "run-failed"
    BACKUP_FAILED = "backup-failed"  # a backup that is missing, corrupt or does not restore
    UPGRADE_FAILED = "upgrade-failed"  # a node failed its upgrade (rolled back, or not: then not-recovered too)
    AUDIT_CHANGED = "audit-changed"  # the trail no longer matches its exported copy: edited or removed records
    DISK_FULL = "disk-full"  # safe clean-ups could not bring a disk under its critical mark
    DISK_OVER_TARGET = "disk-over-target"  # under critical, still over target: heavy pruning needs a human
    PROFIT_LOSS_MAJOR = "profit-loss-major"  # the seeds' thresholds: over $10k lost in an hour
    PROFIT_LOSS = "profit-loss"  # $1k-10k lost in an hour
    PROFIT_LOW = "profit-low"  # under $1k earned in an hour
    LAGGING = "lagging"
    WARNING = "warning"
    INFO = "info"


_BY_KIND = {
    Kind.CHAIN_INCIDENT: Priority.P1,
    Kind.BACKEND_DOWN: Priority.P1,
    Kind.NOT_RECOVERED: Priority.P2,
    Kind.CIRCUIT_OPEN: Priority.P2,
    Kind.RUN_CRASHED: Priority.P2,
    Kind.RUN_FAILED: Priority.P2,
    Kind.BACKUP_FAILED: Priority.P2,
    Kind.UPGRADE_FAILED: Priority.P2,
    Kind.AUDIT_CHANGED: Priority.P2,
    Kind.DISK_FULL: Priority.P2,
    Kind.DISK_OVER_TARGET: Priority.P3,
    Kind.PROFIT_LOSS_MAJOR: Priority.P1,
    Kind.PROFIT_LOSS: Priority.P2,
    Kind.PROFIT_LOW: Priority.P3,
    Kind.LAGGING: Priority.P3,
    Kind.WARNING: Priority.P3,
    Kind.INFO: Priority.P4,
}
_BY_SEVERITY = {"critical": Priority.P2, "warning": Priority.P3, "info": Priority.P4}


def priority_for(kind: str, severity: str | None = None) -> Priority:
    """The priority of a finding: the more urgent of its kind and its alert severity (see the table)."""
    by_kind = _BY_KIND.get(kind, Priority.P3 if severity is None else Priority.P4)
    if severity is None:
        return by_kind
    by_severity = _BY_SEVERITY.get(str(severity).strip().lower(), Priority.P3)
    return min(by_kind, by_severity, key=lambda p: p.value)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run: the module logger
        return log


# -- open incidents, from the audit trail ---------------------------------------


def open_incident(target: str) -> str | None:
    """Dedup key of the target's open PagerDuty incident, as the audit trail tells it."""
    events = [
        # Over the whole trail: an incident can stay open for weeks.
        e for e in read_entries(kind=EntryKind.note, contains='"pagerduty_action"')
        if isinstance(e.get("data"), dict) and e["data"].get("target") == target
    ]
    events.sort(key=lambda e: (e.get("ts", ""), e.get("seq", 0)))
    key: str | None = None
    for e in events:
        d = e["data"]
        if d.get("pagerduty_action") == "trigger" and d.get("dedup_key"):
            # A trigger that failed may still have reached PagerDuty: reusing its key is harmless.
            key = d["dedup_key"]
        elif d.get("pagerduty_action") == "resolve" and d.get("ok") is True and d.get("dedup_key") == key:
            key = None
    return key


def new_dedup_key(target: str, run_id: str) -> str:
    return f"runbooks/{target}/{run_id}"[: pagerduty.MAX_DEDUP_KEY]


# -- escalate / resolve -----------------------------------------------------------


def _detail_lines(details: dict[str, Any]) -> list[str]:
    return [f"{k}: {v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)}" for k, v in details.items()]


def escalate(
    rb_audit: AuditRecord,
    slack_workspace: "SlackWorkspace | None",
    pagerduty_service: "PagerDutyService | None",
    node_or_chain: str,
    priority: Priority | str,
    summary: str,
    details: dict[str, Any],
    run_url: str | None = None,
) -> dict[str, Any]:
    """Tell humans: PagerDuty for P1/P2 (first, so a slow Slack cannot delay a page), Slack always.

    Returns {"target", "priority", "pagerduty": {...} | None, "slack": {...}};
    each channel's entry has ok and, on failure, error. Never raises for a
    notification failure (it is logged and audited); raises InvalidInput for
    a bad priority.
    """
    try:
        priority = Priority(priority)
    except ValueError:
        raise InvalidInput(f"unknown priority {priority!r}; expected one of P1, P2, P3, P4") from None
    if pagerduty_service is not None:
        # Before anything is written or posted: details may hold it.
        register_secret(pagerduty_service.routing_key)
    target = node_or_chain
    logger = _logger()
    result: dict[str, Any] = {"target": target, "priority": priority.value, "pagerduty": None, "slack": None}
    tagged = f"[{priority.value}] {target}: {summary}"

    if priority.pages:
        result["pagerduty"] = _page(rb_audit, pagerduty_service, target, priority, tagged, details, run_url, logger)

    lines = _detail_lines(details)
    if result["pagerduty"]:
        pd = result["pagerduty"]
        lines.append(f"PagerDuty: {'paged' if pd.get('ok') else 'NOT paged (' + str(pd.get('error', ''))[:200] + ')'}"
                     + (f", incident {pd['dedup_key']}" if pd.get("dedup_key") else ""))
    if slack_workspace is None:
        rb_audit.note("slack escalation not posted: no Slack workspace configured", target=target, priority=priority.value)
        result["slack"] = {"ok": False, "error": "no Slack workspace configured"}
    else:
        try:
            answer = slack.post(slack_workspace, text=tagged, blocks=slack.escalation(target, f"[{priority.value}] {summary}", lines, run_url))
            rb_audit.note("slack escalation posted", target=target, priority=priority.value, channel=slack_workspace.channel, ts=answer.get("ts"))
            result["slack"] = {"ok": True, "ts": answer.get("ts")}
        except Exception as exc:  # noqa: BLE001 - a chat outage must not mask the escalation
            error = redact_text(str(exc))
            logger.warning("Slack escalation for %s failed: %s", target, error)
            rb_audit.note("slack escalation failed", target=target, priority=priority.value, error=error)
            result["slack"] = {"ok": False, "error": error}
    return result


def _page(
    rb_audit: AuditRecord,
    service: "PagerDutyService | None",
    target: str,
    priority: Priority,
    summary: str,
    details: dict[str, Any],
    run_url: str | None,
    logger: Any,
) -> dict[str, Any]:
    if service is None:
        logger.error("%s escalation for %s was NOT paged: no PagerDuty service configured", priority.value, target)
        rb_audit.note("pagerduty not configured: not paged", target=target, priority=priority.value)
        return {"ok": False, "error": "no PagerDuty service configured"}
    key = open_incident(target) or new_dedup_key(target, rb_audit.run_id)
    severity = priority.pagerduty_severity
    custom = {**details, "priority": priority.value, "run_id": rb_audit.run_id, "flow": rb_audit.flow}
    if run_url:
        custom["run_url"] = run_url
    try:
        answer = pagerduty.trigger(
            service, key, summary, severity, source=target, custom_details=custom, component=target,
            event_class=rb_audit.flow, links=[{"href": run_url, "text": "Prefect flow run"}] if run_url else None,
        )
    except RunbookError as exc:
        error = redact_text(str(exc))
        logger.error("PagerDuty trigger for %s failed: %s", target, error)
        rb_audit.note("pagerduty trigger failed", pagerduty_action="trigger", ok=False, dedup_key=key,
                      target=target, priority=priority.value, severity=severity, error=error)
        return {"ok": False, "dedup_key": key, "error": error}
    rb_audit.note("pagerduty trigger", pagerduty_action="trigger", ok=True, dedup_key=key, target=target,
                  priority=priority.value, severity=severity, status_code=answer.status_code,
                  status=answer.status, message=answer.message, attempts=answer.attempts)
    return {"ok": True, "dedup_key": key, "status_code": answer.status_code}


def resolve_incident(audit: AuditRecord, pagerduty_service: "PagerDutyService | None", node: str) -> dict[str, Any] | None:
    """Resolve the node's (or chain target's) open PagerDuty incident, if there is one; recorded.

    Returns None when nothing is open, else {"ok", "dedup_key", ...}. Never
    raises for a PagerDuty failure: the incident then stays open in the trail
    and the next recovery resolves it.
    """
    key = open_incident(node)
    if key is None:
        return None
    if pagerduty_service is None:
        audit.note("pagerduty incident left open: no PagerDuty service configured", target=node, dedup_key=key)
        return {"ok": False, "dedup_key": key, "error": "no PagerDuty service configured"}
    try:
        answer = pagerduty.resolve(pagerduty_service, key)
    except RunbookError as exc:
        error = redact_text(str(exc))
        _logger().warning("PagerDuty resolve for %s failed: %s", node, error)
        audit.note("pagerduty resolve failed", pagerduty_action="resolve", ok=False, dedup_key=key, target=node, error=error)
        return {"ok": False, "dedup_key": key, "error": error}
    audit.note("pagerduty resolve", pagerduty_action="resolve", ok=True, dedup_key=key, target=node,
               status_code=answer.status_code, status=answer.status, message=answer.message, attempts=answer.attempts)
    return {"ok": True, "dedup_key": key, "status_code": answer.status_code}
