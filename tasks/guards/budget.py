"""Restart budget and circuit breaker: may automation restart this node again, now?

Counted from the audit trail, never from a second tally:

    action  data.action == "restart" (older entries: data.step == "restart"),
            data.automatic is True          an automatic restart
    guard   name "circuit-open"             the node's circuit opened (escalated once)
    guard   name "circuit-closed"           an operator closed it (flow close-circuit)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from uuid import uuid4

from tasks.audit import AuditRecord, read_entries
from tasks.errors import InvalidInput, RunbookError
from tasks.guards._trail import about, scan, ts, utcnow
from tasks.vocabulary import ActionKind, EntryKind, check_node_name

if TYPE_CHECKING:  # pragma: no cover
    from inventory import RestartBudget

CIRCUIT_OPEN = "circuit-open"
CIRCUIT_CLOSED = "circuit-closed"


class CircuitNotOpen(RunbookError):
    """An operator asked to close a circuit that is not open."""


@dataclass(frozen=True)
class RestartDecision:
    allowed: bool
    reason: str
    restarts_in_window: int
    next_allowed_at: datetime | None
    circuit_open: bool
    escalate: bool

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["next_allowed_at"] = self.next_allowed_at.isoformat() if self.next_allowed_at else None
        return d


@dataclass(frozen=True)
class _Circuit:
    state: Literal["open", "closed"]
    opened: dict[str, Any] | None  # the circuit-open entry, when open
    last_closed_at: datetime | None


def _circuit(node: str, now: datetime | None = None) -> _Circuit:
    """Last circuit-open vs last circuit-closed guard entry for the node, at `now`."""
    now = now or utcnow()
    last: dict[str, dict[str, Any]] = {}
    for e in scan('"circuit-', EntryKind.guard.value):
        name = (e.get("data") or {}).get("name")
        t = ts(e)
        if name in (CIRCUIT_OPEN, CIRCUIT_CLOSED) and t is not None and t <= now and about(e, node):
            if name not in last or t >= ts(last[name]):
                last[name] = e
    opened, closed = last.get(CIRCUIT_OPEN), last.get(CIRCUIT_CLOSED)
    closed_at = ts(closed) if closed else None
    if opened and (closed_at is None or ts(opened) > closed_at):
        return _Circuit("open", opened, closed_at)
    return _Circuit("closed", None, closed_at)


def circuit_state(node: str, now: datetime | None = None) -> Literal["open", "closed"]:
    """The node's circuit, as the audit trail says: open until an operator closes it."""
    return _circuit(check_node_name(node), now).state


def _is_restart(data: dict[str, Any]) -> bool:
    # Typed actions carry action="restart"; a trail written before that only has step="restart".
    return data.get("action") == ActionKind.restart.value or data.get("step") == ActionKind.restart.value


def automatic_restarts(node: str, since: datetime, until: datetime | None = None) -> list[datetime]:
    """When automation restarted the node (restart actions with automatic=True), oldest first."""
    until = until or utcnow()
    times = []
    for e in read_entries(kind=EntryKind.action.value, since=since):
        data = e.get("data") or {}
        if _is_restart(data) and data.get("automatic") is True and about(e, node):
            t = ts(e)
            if t is not None and since <= t <= until:
                times.append(t)
    return sorted(times)


def restart_decision(node: str, budget: "RestartBudget", now: datetime | None = None) -> RestartDecision:
    """May automation restart `node` now, under its chain's restart budget?

    Counts automatic restarts in the last window_seconds and after the last
    circuit close. The (n+1)-th restart must wait backoff_seconds[n] (the last
    value repeats) after the previous one: during back-off the answer is no,
    without escalation. Once max_restarts are used the circuit opens: the first
    such answer says escalate=True (record it with `record_circuit_open`), later
    ones say circuit_open without escalating, until `close_circuit`.
    """
    check_node_name(node)
    now = now or utcnow()
    circuit = _circuit(node, now)
    window_start = now - timedelta(seconds=budget.window_seconds)
    # Restarts before the last close are forgiven; the back-off also looks a
    # little before the window, at a previous restart that just left it.
    floor = max(window_start, circuit.last_closed_at) if circuit.last_closed_at else window_start
    max_backoff = max(budget.backoff_seconds, default=0.0)
    lookback = window_start - timedelta(seconds=max_backoff)
    if circuit.last_closed_at:
        lookback = max(lookback, circuit.last_closed_at)
    recent = automatic_restarts(node, lookback, now)
    counted = [t for t in recent if t >= floor]
    n = len(counted)

    if circuit.state == "open":
        opened = circuit.opened or {}
        return RestartDecision(
            allowed=False,
            reason=(
                f"{node}: circuit open since {opened.get('ts', '?')[:19]}Z (run {opened.get('run_id', '?')}): "
                "automatic restarts stopped until an operator closes it (flow close-circuit)"
            ),
            restarts_in_window=n, next_allowed_at=None, circuit_open=True, escalate=False,
        )
    if n >= budget.max_restarts:
        return RestartDecision(
            allowed=False,
            reason=(
                f"{node}: restart budget exhausted ({n} automatic restarts in the last "
                f"{budget.window_seconds:g}s, max {budget.max_restarts}): circuit opens, a human must look"
            ),
            restarts_in_window=n, next_allowed_at=None, circuit_open=True, escalate=True,
        )
    if budget.backoff_seconds and recent:
        wait = budget.backoff_seconds[min(n, len(budget.backoff_seconds) - 1)]
        next_at = recent[-1] + timedelta(seconds=wait)
        if now < next_at:
            return RestartDecision(
                allowed=False,
                reason=(
                    f"{node}: backing off: restart {n + 1} of {budget.max_restarts} in the window needs "
                    f"{wait:g}s after the previous one ({recent[-1].isoformat(timespec='seconds')}); "
                    f"next allowed at {next_at.isoformat(timespec='seconds')}"
                ),
                restarts_in_window=n, next_allowed_at=next_at, circuit_open=False, escalate=False,
            )
    return RestartDecision(
        allowed=True,
        reason=f"{node}: restart {n + 1} of {budget.max_restarts} allowed in the {budget.window_seconds:g}s window",
        restarts_in_window=n, next_allowed_at=None, circuit_open=False, escalate=False,
    )


def record_circuit_open(audit: AuditRecord, node: str, decision: RestartDecision) -> dict[str, Any] | None:
    """Record that the node's circuit opened, on the caller's record; once per opening.

    Returns the entry, or None when the circuit was already open (nothing written).
    """
    check_node_name(node)
    if circuit_state(node) == "open":
        return None
    return audit.guard(
        CIRCUIT_OPEN, decision.reason, node=node,
        restarts_in_window=decision.restarts_in_window, escalated=decision.escalate,
    )


def close_circuit(node: str, operator: str, note: str, audit: AuditRecord | None = None) -> dict[str, Any]:
    """An operator closes the node's circuit: automatic restarts count afresh from now.

    Written as a `circuit-closed` guard entry in the given record, else in a
    record of its own (flow "close-circuit"). Raises CircuitNotOpen if it is not open.
    """
    check_node_name(node)
    if not operator or not note:
        raise InvalidInput("closing a circuit needs the operator's name and a note saying why it is safe")
    if circuit_state(node) != "open":
        raise CircuitNotOpen(f"{node}: the circuit is not open; nothing to close")
    if audit is None:
        from prefect.runtime import flow_run

        audit = AuditRecord(run_id=str(flow_run.get_id() or f"manual-{uuid4()}"), flow="close-circuit", node=node)
    return audit.guard(CIRCUIT_CLOSED, f"closed by {operator}: {note}", node=node, operator=operator)
