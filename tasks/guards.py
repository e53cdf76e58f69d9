"""Safety guards shared by every mutating runbook (recovery now; upgrades and pruning later).

Five guards, each answering one question before a runbook touches a node:

- **Per-node lease** (`node_lease`): is another mutating run already working on
  this node? A Prefect global concurrency limit `runbooks-node-<node>` with
  limit 1, taken with a lease that Prefect renews in the background. A run
  that dies without releasing (SIGKILL, lost host) stops renewing; the server
  expires the lease after `lease_seconds` and its repossessor service frees
  the slot on its next pass (every PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS).
- **Restart budget and circuit breaker** (`restart_decision`): may automation
  restart this node again, now? Counted from the audit trail, never from a
  second tally.
- **Fleet short-circuit** (`chain_incident`): is the chain, not the node, the
  problem? Then restarting nodes would not help.
- **Disruption budget** (`disruption_budget`): would taking the node out of
  rotation leave its load-balancer backend without a healthy server?
- **Global pause switch** (`pause_state`): has an operator paused automatic
  remediation? A Prefect Variable, editable in the UI.

Guards decide and record; flows act on the decision. Every state a guard
reports is derived from audit entries written through `tasks.audit`:

    action  data.step == "restart", data.automatic is True   an automatic restart
    guard   name "circuit-open"      the node's circuit opened (escalated once)
    guard   name "circuit-closed"    an operator closed it (flow close-circuit)
    guard   name "chain-incident"    a chain incident was seen (data.escalated)

Lease timing (measured here, Prefect 3.9.1, SQLite server on loopback): a
free lease is taken in ~55 ms (max 160) and released in ~70 ms; a waiting run
polls every `poll_seconds` (0.5 s) instead of sleeping the server's
Retry-After, which follows the limit's average occupancy (up to ~39 s: a
waiter measured 12 s late after a few 40 s holds); it gets the lease ~0.2-0.5 s
after the holder leaves its block. A SIGKILLed holder's lease was reclaimed
60.7-62.1 s after it was taken (60 s lease, repossessor loop 2 s).

Server requirement: run the Prefect server with
PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem.
The default in-memory lease storage forgets leases on a server restart: the
holder is then interrupted at its next renewal (410 Gone) and the node's slot
stays taken forever (measured), so every later run on that node is LeaseBusy
until an operator resets the limit's active slots.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal
from uuid import uuid4

from tasks import probes
from tasks.audit import AuditRecord, _iter_file, day_files, read_entries
from tasks.errors import InvalidInput, RunbookError
from tasks.redaction import redact_text

if TYPE_CHECKING:  # pragma: no cover
    from inventory import Inventory, RestartBudget
    from tasks.steps import Assessment

log = logging.getLogger(__name__)

NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# Every call to the Prefect API made here is bounded by this.
API_TIMEOUT_S = 10.0


def _check_node(node: str) -> str:
    if not isinstance(node, str) or not NODE_NAME.match(node):
        raise InvalidInput(f"{node!r} is not a node name (letters, digits, . _ -; at most 63 characters)")
    return node


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _ts(entry: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(entry["ts"])
    except (KeyError, TypeError, ValueError):
        return None


def _about(entry: dict[str, Any], node: str) -> bool:
    """The entry concerns `node`: it names the node in its data, else it is on that node's record."""
    data = entry.get("data")
    named = data.get("node") if isinstance(data, dict) else None
    return (named or entry.get("node")) == node


def _scan(needle: str, kind: str, since: datetime | None = None) -> list[dict[str, Any]]:
    """Entries of `kind` whose raw line contains `needle`, over the whole trail (or from `since`).

    Circuit and incident states can be weeks old, so these reads cannot be
    bounded by a window; the byte pre-filter (the one audit.read_entries uses
    for run ids) keeps a long trail cheap to scan.
    TODO(audit owner): expose this as `read_entries(contains=...)`.
    """
    raw = needle.encode("utf-8")
    out = []
    for path in day_files(since):
        for e in _iter_file(path, raw):
            if e.get("kind") != kind:
                continue
            if since is not None and ((t := _ts(e)) is None or t < since):
                continue
            out.append(e)
    return out


# =============================================================================
# Per-node lease
# =============================================================================


class LeaseError(RunbookError):
    """The node's lease could not be taken (Prefect API unreachable or refusing)."""


class LeaseBusy(LeaseError):
    """Another mutating run holds the node's lease."""

    def __init__(self, node: str, waited_s: float = 0.0, detail: str = "") -> None:
        super().__init__(
            f"{node}: another runbook run holds this node's lease (waited {waited_s:.1f}s)"
            + (f"; {detail}" if detail else "")
            + f". See concurrency limit {node_limit_name(node)} in the Prefect UI: a crashed "
            "holder's lease expires on its own within lease_seconds plus the server's repossessor "
            "loop; a slot that stays taken with no run active (a Prefect server restarted with "
            "in-memory lease storage) needs its active slots reset to 0 there."
        )
        self.node = node
        self.waited_s = waited_s


@dataclass(frozen=True)
class HeldLease:
    node: str
    limit: str
    waited_s: float
    lease_seconds: float


MIN_LEASE_SECONDS = 60.0  # the server refuses shorter leases
MAX_LEASE_SECONDS = 86400.0
LEASE_PREFIX = "runbooks-node-"


def node_limit_name(node: str) -> str:
    return f"{LEASE_PREFIX}{_check_node(node)}"


def ensure_node_limit(node: str) -> str:
    """Create the node's concurrency limit (limit 1) unless it exists; idempotent.

    Returns the limit name. A concurrent creator's 409 is fine. A limit an
    operator deactivated in the UI gives no protection: say so loudly, but
    respect it (it is the documented way to bypass a stuck lease).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = node_limit_name(node)
    try:
        with get_client(sync_client=True, httpx_settings={"timeout": API_TIMEOUT_S}) as client:
            try:
                limit = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
                except ObjectAlreadyExists:
                    pass
                return name
    except Exception as exc:  # noqa: BLE001 - any API failure means no lease
        raise LeaseError(f"{node}: could not read or create concurrency limit {name}: {redact_text(str(exc))}") from exc
    if not limit.active:
        log.warning("concurrency limit %s is inactive: runs on %s are NOT mutually excluded", name, node)
    return name


def _holder() -> Any:
    """The current flow run as the lease holder (shown in the UI), when there is one."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is not None and ctx.flow_run is not None:
        return ConcurrencyLeaseHolder(type="flow_run", id=ctx.flow_run.id)
    return None


def _status(exc: BaseException) -> int | None:
    """The HTTP status behind a failed acquisition: 423 means the slot is taken."""
    return getattr(getattr(exc.__cause__, "response", None), "status_code", None)


class _QuietLockedPolls(logging.Filter):
    """Drop Prefect's per-attempt error line for our polls that found the lease taken.

    With max_retries=0 every refused attempt is logged at ERROR by Prefect's
    acquisition service, although the caller handles it; a run waiting ten
    minutes would log a thousand of them. Only our polls use max_retries=0,
    and only HTTP 423 (slot taken) is dropped: real failures still log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) == 2 and args[0] == "ConcurrencySlotAcquisitionWithLeaseService":
            item = args[1]
            if isinstance(item, tuple) and len(item) == 8 and item[3] == 0:
                future = item[-1]
                try:
                    exc = future.exception(timeout=0)
                except Exception:  # noqa: BLE001 - not finished or cancelled: keep the line
                    return True
                return getattr(getattr(exc, "response", None), "status_code", None) != 423
        return True


logging.getLogger("prefect._internal.concurrency").addFilter(_QuietLockedPolls())


@contextmanager
def node_lease(
    node: str, *, wait_seconds: float, lease_seconds: float = 60, poll_seconds: float = 0.5
) -> Iterator[HeldLease]:
    """Hold the node's lease for the duration of the block: one mutating run per node.

    wait_seconds: how long to wait for another run to finish. Automated runs
    (alert, event, schedule) use ~2 s and end as a recorded no-op on
    `LeaseBusy`; on-demand runs wait with a real deadline.
    lease_seconds: how long the lease outlives a crashed holder (>= 60 s).
    Prefect renews it every 0.75 x lease_seconds while the block runs; if a
    renewal fails for good (the API unreachable for ~3 s at that moment, or
    the lease gone), Prefect interrupts the block with its internal
    CancelledError rather than let two runs act on the node.

    We poll every `poll_seconds` ourselves (one request per attempt) instead
    of letting Prefect sleep the server's Retry-After, which follows the
    limit's average occupancy (up to ~39 s): a waiter notices a release
    within about poll_seconds.

    Raises LeaseBusy when not acquired within wait_seconds, LeaseError when
    the Prefect API cannot be used (refuse to act rather than act unguarded).
    """
    from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError, ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    _check_node(node)
    if not (isinstance(wait_seconds, (int, float)) and 0 <= wait_seconds <= MAX_LEASE_SECONDS and math.isfinite(wait_seconds)):
        raise InvalidInput(f"wait_seconds must be between 0 and {MAX_LEASE_SECONDS:g}, got {wait_seconds!r}")
    if not (isinstance(lease_seconds, (int, float)) and MIN_LEASE_SECONDS <= lease_seconds <= MAX_LEASE_SECONDS):
        raise InvalidInput(f"lease_seconds must be between {MIN_LEASE_SECONDS:g} and {MAX_LEASE_SECONDS:g}, got {lease_seconds!r}")
    if not (isinstance(poll_seconds, (int, float)) and 0.05 <= poll_seconds <= 60):
        raise InvalidInput(f"poll_seconds must be between 0.05 and 60, got {poll_seconds!r}")

    name = ensure_node_limit(node)
    holder = _holder()
    started = time.monotonic()
    deadline = started + wait_seconds
    with ExitStack() as stack:
        while True:
            remaining = deadline - time.monotonic()
            try:
                stack.enter_context(
                    concurrency(
                        name,
                        occupy=1,
                        # Bounds one request, not the wait: a slow API must not be read as "busy".
                        timeout_seconds=max(remaining, API_TIMEOUT_S),
                        max_retries=0,
                        lease_duration=lease_seconds,
                        strict=True,
                        holder=holder,
                        raise_on_lease_renewal_failure=True,
                    )
                )
                break
            except ConcurrencySlotAcquisitionError as exc:
                if _status(exc) == 422:
                    raise LeaseError(
                        f"{node}: concurrency limit {name} allows no run at all (limit 0): an operator "
                        "has blocked mutating runbooks on this node; set it back to 1 in the Prefect UI to allow them"
                    ) from exc
                if _status(exc) != 423:
                    raise LeaseError(f"{node}: could not take lease {name}: {redact_text(str(exc))}") from exc
            except AcquireConcurrencySlotTimeoutError as exc:
                raise LeaseError(f"{node}: the Prefect API did not answer within {max(remaining, API_TIMEOUT_S):g}s while taking lease {name}") from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LeaseBusy(node, time.monotonic() - started)
            time.sleep(min(poll_seconds, remaining))
        yield HeldLease(node=node, limit=name, waited_s=round(time.monotonic() - started, 3), lease_seconds=lease_seconds)


# =============================================================================
# Restart budget and circuit breaker
# =============================================================================

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
    now = now or _utcnow()
    last: dict[str, dict[str, Any]] = {}
    for e in _scan('"circuit-', "guard"):
        name = (e.get("data") or {}).get("name")
        t = _ts(e)
        if name in (CIRCUIT_OPEN, CIRCUIT_CLOSED) and t is not None and t <= now and _about(e, node):
            if name not in last or t >= _ts(last[name]):
                last[name] = e
    opened, closed = last.get(CIRCUIT_OPEN), last.get(CIRCUIT_CLOSED)
    closed_at = _ts(closed) if closed else None
    if opened and (closed_at is None or _ts(opened) > closed_at):
        return _Circuit("open", opened, closed_at)
    return _Circuit("closed", None, closed_at)


def circuit_state(node: str, now: datetime | None = None) -> Literal["open", "closed"]:
    """The node's circuit, as the audit trail says: open until an operator closes it."""
    return _circuit(_check_node(node), now).state


def automatic_restarts(node: str, since: datetime, until: datetime | None = None) -> list[datetime]:
    """When automation restarted the node (audit actions with step=restart, automatic=True), oldest first."""
    until = until or _utcnow()
    times = []
    for e in read_entries(kind="action", since=since):
        data = e.get("data") or {}
        if data.get("step") == "restart" and data.get("automatic") is True and _about(e, node):
            t = _ts(e)
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
    _check_node(node)
    now = now or _utcnow()
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
    _check_node(node)
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
    _check_node(node)
    if not operator or not note:
        raise InvalidInput("closing a circuit needs the operator's name and a note saying why it is safe")
    if circuit_state(node) != "open":
        raise CircuitNotOpen(f"{node}: the circuit is not open; nothing to close")
    if audit is None:
        from prefect.runtime import flow_run

        audit = AuditRecord(run_id=str(flow_run.get_id() or f"manual-{uuid4()}"), flow="close-circuit", node=node)
    return audit.guard(CIRCUIT_CLOSED, f"closed by {operator}: {note}", node=node, operator=operator)


# =============================================================================
# Fleet short-circuit
# =============================================================================

CHAIN_INCIDENT = "chain-incident"


def chain_target(chain_name: str) -> str:
    """How a chain is named where a node could be (escalation, PagerDuty dedup keys).

    Node names cannot contain ':', so this never collides with one.
    """
    return f"chain:{chain_name}"


def chain_incident(
    inventory: "Inventory",
    chain_name: str,
    assessments: dict[str, "Assessment"],
    reference_probes: list[probes.NodeProbe],
) -> str | None:
    """Why this is a chain incident rather than a node problem, or None.

    A chain incident is: no reference answered; every reference's head is
    older than the chain's max_head_age_seconds (the chain itself stalled);
    or more than max_unhealthy_share of the chain's nodes unhealthy in the
    same sweep, counting at least two (a single sick node is a node problem,
    even on a chain of one or two nodes).

    `assessments` and `reference_probes` come from one sweep of the whole
    chain (`tasks.steps.sweep`), otherwise the share would be judged on
    partial evidence.
    """
    if chain_name not in inventory.chains:
        raise InvalidInput(f"unknown chain {chain_name!r} (known: {', '.join(sorted(inventory.chains))})")
    chain = inventory.chains[chain_name]
    answered = [p for p in reference_probes if p.ok and p.head is not None]
    if not answered:
        errors = "; ".join(f"{p.url}: {p.error}" for p in reference_probes[:3]) or "no reference probed"
        return f"chain {chain_name}: no reference answered ({errors}); cannot tell node from chain problems"
    ages = [p.head_age_s for p in answered]
    if all(a is not None and a > chain.max_head_age_seconds for a in ages):
        return (
            f"chain {chain_name}: every reference head is stale (youngest {min(ages):.0f}s old, "
            f"max {chain.max_head_age_seconds:g}s): the chain itself is stalled"
        )

    nodes = sorted(inventory.nodes_on_chain(chain_name))
    missing = [n for n in nodes if n not in assessments]
    if missing:
        raise InvalidInput(f"chain {chain_name}: assess every node of the chain first (missing: {', '.join(missing)})")
    unhealthy = [n for n in nodes if not assessments[n].healthy]
    share = len(unhealthy) / len(nodes) if nodes else 0.0
    if len(unhealthy) >= 2 and share > chain.max_unhealthy_share:
        return (
            f"chain {chain_name}: {len(unhealthy)} of {len(nodes)} nodes unhealthy at once "
            f"({share:.0%} > {chain.max_unhealthy_share:.0%}): "
            + ", ".join(f"{n} {assessments[n].status}" for n in unhealthy[:10])
        )
    return None


def record_chain_incident(audit: AuditRecord, chain_name: str, reason: str, escalated: bool) -> dict[str, Any]:
    """Record a chain incident on the caller's record (escalated: whether this run escalated it)."""
    return audit.guard(CHAIN_INCIDENT, reason, chain=chain_name, escalated=bool(escalated))


def should_escalate_chain_incident(chain_name: str, window_seconds: float = 3600, now: datetime | None = None) -> bool:
    """True unless this chain's incident was already escalated in the last window_seconds.

    One escalation per chain incident: every run that meets the incident
    records it, only the first in the window escalates (an incident lasting
    longer than the window is escalated again, as a reminder).
    """
    now = now or _utcnow()
    since = now - timedelta(seconds=window_seconds)
    for e in _scan(f'"{CHAIN_INCIDENT}"', "guard", since=since):
        data = e.get("data") or {}
        if data.get("name") == CHAIN_INCIDENT and data.get("chain") == chain_name and data.get("escalated") is True:
            if (t := _ts(e)) is not None and t <= now:
                return False
    return True


# =============================================================================
# Disruption budget
# =============================================================================


class DisruptionBudgetExceeded(RunbookError):
    """Taking this server out would leave its backend without a healthy server."""


def disruption_budget(
    inventory: "Inventory", node: str, states: list, healthy: "Callable[[list[str]], dict[str, bool]]"
) -> list[str]:
    """The node's peers that would keep its backend serving; raises if there are none.

    HAProxy's health check only sees that a node answers (a stalled chain stays
    UP), so a peer counts only if HAProxy has it in rotation (UP, ready,
    weighted) *and* our probe (`healthy`: node names -> healthy?) says so.
    `states` are the backend's `tasks.haproxy.ServerState`s.
    """
    lb = inventory.node(node).lb
    by_server = {s.server: s for s in states}
    peers = {n: p for n, p in inventory.nodes_in_backend(lb.balancer, lb.backend).items() if n != node}
    in_rotation = [n for n, p in peers.items() if (s := by_server.get(p.lb.server)) and s.in_rotation]
    serving = [n for n, ok in healthy(in_rotation).items() if ok] if in_rotation else []
    if not serving:
        raise DisruptionBudgetExceeded(
            f"{node} is the last healthy server of backend {lb.backend} on {lb.balancer}: "
            f"taking it out would leave no healthy server in rotation (in rotation: {in_rotation or 'none'})"
        )
    return serving


# =============================================================================
# Global pause switch
# =============================================================================

PAUSE_VARIABLE = "runbooks_paused"
# Prefect variables hold at most a few KB; a reason is a sentence.
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class PauseState:
    paused: bool
    reason: str
    by: str


def _api(timeout: float):
    """A Prefect client whose every request is bounded by `timeout`, without client-side retries."""
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True, httpx_settings={"timeout": timeout})


def pause_state(timeout: float = 5.0) -> PauseState:
    """Is automatic remediation paused? Read from the Prefect Variable `runbooks_paused`.

    Absent, or {"paused": false}: not paused. Fails closed: when the switch
    cannot be read (API down, garbage value) remediation counts as paused,
    with the reason saying why, because acting blind is worse than waiting.
    """
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    try:
        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}), _api(timeout) as client:
            variable = client.read_variable_by_name(PAUSE_VARIABLE)
    except Exception as exc:  # noqa: BLE001 - any failure to read means "do not act"
        return PauseState(True, f"the pause switch ({PAUSE_VARIABLE}) could not be read: {redact_text(str(exc))[:200]}", "runbooks (fail-safe)")
    if variable is None:
        return PauseState(False, "", "")
    value = variable.value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, bool):
        return PauseState(value, "", "")
    if isinstance(value, dict) and isinstance(value.get("paused"), bool):
        return PauseState(value["paused"], str(value.get("reason") or ""), str(value.get("by") or ""))
    return PauseState(True, f"the pause switch ({PAUSE_VARIABLE}) holds an unreadable value {str(value)[:100]!r}", "runbooks (fail-safe)")


def set_pause(paused: bool, reason: str, by: str, timeout: float = 5.0) -> PauseState:
    """Set the pause switch (creating the variable on first use); returns the new state."""
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    if not isinstance(paused, bool):
        raise InvalidInput(f"paused must be true or false, got {paused!r}")
    if not by or not reason:
        raise InvalidInput("setting the pause switch needs who (by) and why (reason)")
    value = {"paused": paused, "reason": reason[:MAX_REASON_CHARS], "by": by[:100], "at": _utcnow().isoformat(timespec="seconds")}
    try:
        with _api(timeout) as client:
            if client.read_variable_by_name(PAUSE_VARIABLE) is None:
                try:
                    client.create_variable(VariableCreate(name=PAUSE_VARIABLE, value=value, tags=["runbooks"]))
                    return PauseState(paused, value["reason"], value["by"])
                except ObjectAlreadyExists:
                    pass
            client.update_variable(VariableUpdate(name=PAUSE_VARIABLE, value=value))
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001
        raise RunbookError(f"could not set the pause switch ({PAUSE_VARIABLE}): {redact_text(str(exc))}") from exc
    return PauseState(paused, value["reason"], value["by"])
