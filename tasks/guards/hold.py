"""Operator holds: a node kept out of automation on purpose (maintenance), with a reason and an optional expiry.

Derived from the audit trail, never kept as a second copy:

    guard   name "hold-placed"     node, operator, reason, expires_at (ISO time or null)
    guard   name "hold-released"   node, operator, note

The latest of the two for a node decides; a placed hold whose expires_at
has passed is no longer active. Placing a hold on a node already on hold
replaces it (a new reason, a longer or shorter expiry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tasks.audit import AuditRecord
from tasks.errors import InvalidInput, RunbookError
from tasks.guards._trail import scan, ts, utcnow
from tasks.vocabulary import OPERATOR_RE, EntryKind, check_node_name

HOLD_PLACED = "hold-placed"
HOLD_RELEASED = "hold-released"
MAX_REASON_CHARS = 500


class NotOnHold(RunbookError):
    """An operator asked to release a hold on a node that is not on hold."""


@dataclass(frozen=True)
class Hold:
    node: str
    operator: str
    reason: str
    placed_at: datetime
    expires_at: datetime | None
    run_id: str

    def describe(self) -> str:
        until = f"until {self.expires_at.isoformat(timespec='seconds')}" if self.expires_at else "until released"
        return f"{self.node} is on hold by {self.operator} since {self.placed_at.isoformat(timespec='seconds')} ({until}): {self.reason}"


def _check_operator(operator: object) -> str:
    if not isinstance(operator, str) or not re.fullmatch(OPERATOR_RE, operator):
        raise InvalidInput(f"{operator!r} is not an operator name (user name or e-mail, at most 100 characters)")
    return operator


def place_hold(audit: AuditRecord, node: str, operator: str, reason: str, expires_at: datetime | None) -> Hold:
    """Hold `node` out of automation, on the caller's record, until released (or until expires_at)."""
    check_node_name(node)
    _check_operator(operator)
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("a hold needs a reason (what the maintenance is)")
    now = utcnow()
    if expires_at is not None:
        if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
            raise InvalidInput(f"expires_at must be a time with its time zone, got {expires_at!r}")
        if expires_at <= now:
            raise InvalidInput(f"expires_at {expires_at.isoformat()} is already past")
    reason = reason.strip()[:MAX_REASON_CHARS]
    entry = audit.guard(
        HOLD_PLACED, reason, node=node, operator=operator,
        expires_at=expires_at.isoformat() if expires_at else None,
    )
    return _hold(entry)


def release_hold(audit: AuditRecord, node: str, operator: str, note: str) -> dict[str, Any]:
    """Release the node's hold, on the caller's record. Raises NotOnHold if it is not on hold."""
    check_node_name(node)
    _check_operator(operator)
    if not isinstance(note, str) or not note.strip():
        raise InvalidInput("releasing a hold needs a note (why the node may be automated again)")
    if active_hold(node) is None:
        raise NotOnHold(f"{node}: not on hold (or its hold expired); nothing to release")
    return audit.guard(HOLD_RELEASED, f"released by {operator}: {note.strip()[:MAX_REASON_CHARS]}", node=node, operator=operator)


def _hold(entry: dict[str, Any]) -> Hold:
    data = entry["data"]
    try:
        expires = datetime.fromisoformat(data["expires_at"]) if data.get("expires_at") else None
    except (TypeError, ValueError):
        expires = None  # fail safe: an expiry we cannot read holds the node until it is released
    return Hold(
        node=data["node"], operator=str(data.get("operator") or "?"), reason=str(data.get("reason") or ""),
        placed_at=ts(entry), expires_at=expires, run_id=str(entry.get("run_id") or "?"),
    )


def holds(now: datetime | None = None) -> dict[str, Hold]:
    """Every node on hold at `now` (default: now), from one pass over the trail."""
    now = now or utcnow()
    last: dict[str, dict[str, Any]] = {}
    for e in scan('"hold-', EntryKind.guard.value):
        data = e.get("data")
        if not isinstance(data, dict) or data.get("name") not in (HOLD_PLACED, HOLD_RELEASED):
            continue
        node, t = data.get("node"), ts(e)
        if not isinstance(node, str) or t is None or t > now:
            continue
        if node not in last or t >= ts(last[node]):  # entries come in write order: the later one wins a tie
            last[node] = e
    out = {}
    for node, e in last.items():
        if e["data"]["name"] != HOLD_PLACED:
            continue
        hold = _hold(e)
        if hold.expires_at is None or hold.expires_at > now:
            out[node] = hold
    return out


def active_hold(node: str, now: datetime | None = None) -> Hold | None:
    """The node's hold at `now`, or None (released, expired, or never placed)."""
    return holds(now).get(check_node_name(node))

