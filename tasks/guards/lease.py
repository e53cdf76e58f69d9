"""Leases over what a mutating run touches: one node, several, a host, or a whole chain.

Every resource is a Prefect global concurrency limit with limit 1
(`runbooks-node-<node>`, `runbooks-host-<host>`, `runbooks-chain-<chain>`),
taken with a lease that is renewed in the background. A host or chain lease
also takes the lease of every node on it, so a run on node eth-a and an
upgrade wave over its chain exclude each other.

All at once, so no deadlock: Prefect's server takes every name of one
request in one transaction, all or nothing (`_acquire_concurrency_slots`,
prefect/server/api/concurrency_limits_v2.py:189-234: one UPDATE over every
limit id with `active_slots + slots <= limit`, and a rollback unless it
touched every row, prefect/server/models/concurrency_limits_v2.py:263-279).
A run never holds some of its names while waiting for the rest, so two runs
cannot wait on each other whatever their order; `lock_names` sorts anyway so
the names (and a database's row-lock order) are one fixed global order.

A run that dies without releasing (SIGKILL, lost host) stops renewing; the
server expires the lease after `lease_seconds` and its repossessor service
frees the slots on its next pass (every
PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS). A reconciler that knows
the run crashed need not wait: `release_lease(held.lease_id)` frees them now.

Lease timing (measured here, Prefect 3.9.1, SQLite server on loopback): a
free lease is taken in ~55 ms (max 160) and released in ~70 ms; a waiting run
polls every `poll_seconds` (0.5 s) instead of sleeping the server's
Retry-After, which follows the limit's average occupancy (up to ~39 s); it
gets the lease ~0.2-0.5 s after the holder leaves its block. A SIGKILLed
holder's lease was reclaimed 60.7-62.1 s after it was taken (60 s lease,
repossessor loop 2 s).

Server requirement: run the Prefect server with
PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem.
The default in-memory lease storage forgets leases on a server restart: the
holder is then interrupted at its next renewal (410 Gone) and the slots stay
taken forever (measured), so every later run on them is LeaseBusy until an
operator resets the limit's active slots.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from tasks.errors import InvalidInput, RunbookError
from tasks.prefect_api import API_TIMEOUT_S, client
from tasks.redaction import redact_text
from tasks.vocabulary import NODE_NAME_RE, check_node_name

if TYPE_CHECKING:  # pragma: no cover
    from inventory import Inventory

log = logging.getLogger(__name__)

MIN_LEASE_SECONDS = 60.0  # the server refuses shorter leases
MAX_LEASE_SECONDS = 86400.0  # and longer ones
# Answers that mean "the server is momentarily overloaded" (a busy SQLite
# database answers 503 under concurrent runs, measured): polled again, for at
# least this long even when wait_seconds is shorter, before giving up.
TRANSIENT_STATUSES = frozenset({408, 429, 502, 503})
TRANSIENT_GRACE_S = 5.0

ResourceKind = Literal["node", "host", "chain"]
PREFIXES: dict[str, str] = {"node": "runbooks-node-", "host": "runbooks-host-", "chain": "runbooks-chain-"}
LEASE_PREFIX = PREFIXES["node"]


@dataclass(frozen=True, order=True)
class Resource:
    """Something a run leases: a node, a host (and every node on it) or a chain (and every node on it)."""

    kind: ResourceKind
    name: str

    def __post_init__(self) -> None:
        if self.kind not in PREFIXES:
            raise InvalidInput(f"resource kind must be one of {', '.join(PREFIXES)}, got {self.kind!r}")
        if not isinstance(self.name, str) or not re.fullmatch(NODE_NAME_RE, self.name):
            raise InvalidInput(f"{self.name!r} is not a {self.kind} name (letters, digits, . _ -; at most 63 characters)")

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def node_limit_name(node: str) -> str:
    return f"{LEASE_PREFIX}{check_node_name(node)}"


def limit_name(resource: Resource) -> str:
    return f"{PREFIXES[resource.kind]}{resource.name}"


def lock_names(inventory: "Inventory | None", resources: Iterable[Resource]) -> list[str]:
    """The concurrency limits that leasing `resources` takes, deduplicated, in one global (sorted) order.

    node X -> runbooks-node-X; host H -> runbooks-host-H and every node on H;
    chain C -> runbooks-chain-C and every node on C. A host or chain needs
    the inventory; a node alone does not (it is checked against the
    inventory when one is given). No resources: nothing to lock, [].
    """
    names: set[str] = set()
    for r in resources:
        if not isinstance(r, Resource):
            raise InvalidInput(f"leases take Resource values, got {r!r}")
        names.add(limit_name(r))
        if r.kind == "node":
            if inventory is not None and r.name not in inventory.nodes:
                raise InvalidInput(f"node {r.name!r} is not in the inventory (known: {', '.join(sorted(inventory.nodes))})")
            continue
        if inventory is None:
            raise InvalidInput(f"leasing {r} needs the inventory, to know its nodes")
        known = inventory.hosts if r.kind == "host" else inventory.chains
        if r.name not in known:
            raise InvalidInput(f"unknown {r.kind} {r.name!r} (known: {', '.join(sorted(known))})")
        on_it = [n for n, node in inventory.nodes.items() if getattr(node, r.kind) == r.name]
        names.update(node_limit_name(n) for n in on_it)
    return sorted(names)


class LeaseError(RunbookError):
    """The lease could not be taken (Prefect API unreachable or refusing)."""


class LeaseBusy(LeaseError):
    """Another mutating run holds (one of) the leases."""

    def __init__(self, target: str, waited_s: float = 0.0, detail: str = "", names: Iterable[str] = ()) -> None:
        names = list(names) or [node_limit_name(target)]
        super().__init__(
            f"{target}: another runbook run holds a lease this run needs (waited {waited_s:.1f}s)"
            + (f"; {detail}" if detail else "")
            + f". See concurrency limit(s) {', '.join(names)} in the Prefect UI: a crashed "
            "holder's lease expires on its own within lease_seconds plus the server's repossessor "
            "loop; a slot that stays taken with no run active (a Prefect server restarted with "
            "in-memory lease storage) needs its active slots reset to 0 there."
        )
        self.target = target
        self.node = target  # a single-node lease names the node
        self.waited_s = waited_s
        self.names = names


@dataclass(frozen=True)
class HeldLeases:
    """What a run holds: the limit names and the one Prefect lease over all of them."""

    resources: tuple[Resource, ...]
    names: tuple[str, ...]
    lease_id: str | None  # None when there was nothing to lease
    waited_s: float
    lease_seconds: float
    refused: int = 0  # answers that another run held it (423) before we got it: 0 when it was free at once


def _ensure_limits(names: list[str]) -> dict[str, int]:
    """Create each limit (limit 1) unless it exists; idempotent. Returns name -> limit.

    A concurrent creator's 409 is fine. A limit an operator deactivated in
    the UI gives no protection: say so loudly, but respect it (it is the
    documented way to bypass a stuck lease).
    """
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    limits: dict[str, int] = {}
    name = names[0]
    try:
        # With the client's retries: a momentarily busy server must not refuse the run.
        with client(API_TIMEOUT_S, retries=True) as api:
            for name in names:
                try:
                    limit = api.read_global_concurrency_limit_by_name(name)
                except ObjectNotFound:
                    try:
                        api.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
                    except ObjectAlreadyExists:
                        pass
                    limits[name] = 1
                    continue
                if not limit.active:
                    log.warning("concurrency limit %s is inactive: runs on it are NOT mutually excluded", name)
                limits[name] = limit.limit
    except Exception as exc:  # noqa: BLE001 - any API failure means no lease
        raise LeaseError(f"could not read or create concurrency limit {name}: {redact_text(str(exc))}") from exc
    return limits


def ensure_node_limit(node: str) -> str:
    """Create the node's concurrency limit (limit 1) unless it exists; returns its name."""
    name = node_limit_name(node)
    _ensure_limits([name])
    return name


def _holder() -> Any:
    """The current flow run as the lease holder (stored with the lease), when there is one."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is not None and ctx.flow_run is not None:
        return ConcurrencyLeaseHolder(type="flow_run", id=ctx.flow_run.id)
    return None


def _check_seconds(wait_seconds: float, lease_seconds: float, poll_seconds: float) -> None:
    def number(x: object) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not (number(wait_seconds) and 0 <= wait_seconds <= MAX_LEASE_SECONDS):
        raise InvalidInput(f"wait_seconds must be between 0 and {MAX_LEASE_SECONDS:g}, got {wait_seconds!r}")
    if not (number(lease_seconds) and MIN_LEASE_SECONDS <= lease_seconds <= MAX_LEASE_SECONDS):
        raise InvalidInput(f"lease_seconds must be between {MIN_LEASE_SECONDS:g} and {MAX_LEASE_SECONDS:g}, got {lease_seconds!r}")
    if not (number(poll_seconds) and 0.05 <= poll_seconds <= 60):
        raise InvalidInput(f"poll_seconds must be between 0.05 and 60, got {poll_seconds!r}")


def _acquire(names: list[str], limits: dict[str, int], target: str, *, wait_seconds: float,
             lease_seconds: float, poll_seconds: float) -> tuple[str, list[Any], float, int]:
    """Take one lease over every name, polling; returns (lease id, granted limits, waited seconds, times refused
    because another run held it).

    One `increment-with-lease` request per attempt on our own bounded client
    (the call Prefect's `concurrency()` makes through its acquisition
    service). Calling it directly gives us the lease id, a real timeout per
    request, and no ERROR line from Prefect's service for every refused poll
    (what the old quiet-423 log filter dropped: a run waiting ten minutes
    would have logged a thousand).
    """
    import httpx
    from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse

    holder = _holder()
    started = time.monotonic()
    deadline = started + wait_seconds
    transient = refused = 0
    try:
        # Without the client's retries: this loop is the retry, on our deadline and poll interval.
        with client(API_TIMEOUT_S) as api:
            while True:
                try:
                    response = api.increment_concurrency_slots_with_lease(
                        names=names, slots=1, mode="concurrency", lease_duration=lease_seconds, holder=holder
                    )
                    granted = ConcurrencyLimitWithLeaseResponse.model_validate(response.json())
                    break
                except httpx.HTTPStatusError as exc:
                    status = exc.response.status_code
                    if status == 422:
                        zero = [n for n in names if limits.get(n) == 0] or names
                        raise LeaseError(
                            f"{target}: concurrency limit {', '.join(zero)} allows no run at all (limit 0): an operator "
                            "has blocked mutating runbooks here; set it back to 1 in the Prefect UI to allow them"
                        ) from exc
                    now = time.monotonic()
                    if status in TRANSIENT_STATUSES and now < max(deadline, started + TRANSIENT_GRACE_S):
                        transient += 1
                        time.sleep(poll_seconds)
                        continue
                    if status != 423:
                        raise LeaseError(f"{target}: could not take lease {', '.join(names)}: {redact_text(str(exc))}") from exc
                    refused += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    detail = f"the Prefect API was momentarily unavailable {transient} time(s) meanwhile" if transient else ""
                    raise LeaseBusy(target, time.monotonic() - started, detail, names=names)
                time.sleep(min(poll_seconds, remaining))
    except LeaseError:
        raise
    except httpx.TimeoutException as exc:
        raise LeaseError(f"{target}: the Prefect API did not answer within {API_TIMEOUT_S:g}s while taking lease {', '.join(names)}") from exc
    except Exception as exc:  # noqa: BLE001 - unreachable API, garbage answer: no lease
        raise LeaseError(f"{target}: could not take lease {', '.join(names)}: {redact_text(str(exc))}") from exc
    got = {limit.name for limit in granted.limits}
    if missing := [n for n in names if n not in got]:
        # The server skips limits that do not exist (deleted since we created them): no protection there.
        release_lease(granted.lease_id)
        raise LeaseError(f"{target}: concurrency limit(s) {', '.join(missing)} vanished while taking the lease; try again")
    return str(granted.lease_id), granted.limits, time.monotonic() - started, refused


@contextmanager
def leases(
    inventory: "Inventory | None",
    resources: Iterable[Resource],
    *,
    wait_seconds: float,
    lease_seconds: float = 60,
    poll_seconds: float = 0.5,
) -> Iterator[HeldLeases]:
    """Hold the leases of `resources` for the duration of the block: one mutating run per node.

    wait_seconds: how long to wait for other runs to finish. Automated runs
    (alert, event, schedule) use ~2 s and end as a recorded no-op on
    `LeaseBusy`; on-demand runs wait with a real deadline.
    lease_seconds: how long the lease outlives a crashed holder (>= 60 s).
    Prefect's renewal thread renews it every 0.75 x lease_seconds while the
    block runs; if a renewal fails for good (the API unreachable for ~3 s at
    that moment, or the lease gone), Prefect interrupts the block with its
    internal CancelledError rather than let two runs act on the same node.

    We poll every `poll_seconds` ourselves (one request per attempt) instead
    of sleeping the server's Retry-After: a waiter notices a release within
    about poll_seconds.

    Raises LeaseBusy when not acquired within wait_seconds, LeaseError when
    the Prefect API cannot be used (refuse to act rather than act unguarded).
    """
    from prefect.concurrency._events import emit_concurrency_acquisition_events, emit_concurrency_release_events
    from prefect.concurrency._leases import maintain_concurrency_lease

    resources = tuple(resources)
    names = lock_names(inventory, resources)
    _check_seconds(wait_seconds, lease_seconds, poll_seconds)
    if not names:  # a read-only runbook touches nothing: nothing to take, nothing to ask Prefect
        yield HeldLeases((), (), None, 0.0, float(lease_seconds))
        return
    target = ", ".join(str(r) for r in resources) if len(resources) > 1 or resources[0].kind != "node" else resources[0].name

    limits = _ensure_limits(names)
    lease_id, granted, waited, refused = _acquire(names, limits, target, wait_seconds=wait_seconds,
                                         lease_seconds=lease_seconds, poll_seconds=poll_seconds)
    events = None
    try:
        # Prefect's events for the UI, and the renewal loop its own concurrency() runs
        # (prefect/concurrency/_sync.py:144-157).
        events = emit_concurrency_acquisition_events(granted, 1)
        with maintain_concurrency_lease(UUID(lease_id), lease_seconds, raise_on_lease_renewal_failure=True):
            yield HeldLeases(resources, tuple(names), lease_id, round(waited, 3), float(lease_seconds), refused)
    finally:
        try:
            release_lease(lease_id)
        except LeaseError as exc:
            # Not raised: the block's own result or error matters more, and the lease expires by itself.
            log.warning("%s; it expires on its own within %gs", exc, lease_seconds)
        if events is not None:
            emit_concurrency_release_events(granted, 1, events)


@contextmanager
def node_lease(node: str, *, wait_seconds: float, lease_seconds: float = 60, poll_seconds: float = 0.5) -> Iterator[HeldLeases]:
    """Hold one node's lease (`leases` over that node alone; no inventory needed)."""
    resource = Resource("node", check_node_name(node))
    with leases(None, [resource], wait_seconds=wait_seconds, lease_seconds=lease_seconds, poll_seconds=poll_seconds) as held:
        yield held


def release_lease(lease_id: str | UUID, timeout: float = API_TIMEOUT_S) -> None:
    """Free a lease's slots now (e.g. a run known to have crashed); a lease already gone is fine.

    The server answers 204 whether or not the lease still exists
    (prefect/server/api/concurrency_limits_v2.py:434-437), so this is idempotent.
    """
    try:
        lease = UUID(str(lease_id))
    except ValueError:
        raise InvalidInput(f"{lease_id!r} is not a lease id (a UUID)") from None
    try:
        # With the client's retries: a release lost to a busy server would hold the slots for lease_seconds.
        with client(timeout, retries=True) as api:
            api.release_concurrency_slots_with_lease(lease_id=lease)
    except Exception as exc:  # noqa: BLE001
        raise LeaseError(f"could not release lease {lease}: {redact_text(str(exc))}") from exc
