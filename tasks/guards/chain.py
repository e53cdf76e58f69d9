"""Fleet short-circuit: is the chain, not the node, the problem? Then restarting nodes would not help.

    guard   name "chain-incident"    a chain incident was seen (data.escalated: this run escalated it)
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from tasks.audit import AuditRecord
from tasks.errors import InvalidInput
from tasks.guards._trail import scan, ts, utcnow
from tasks.vocabulary import EntryKind

if TYPE_CHECKING:  # pragma: no cover
    from inventory import Inventory

CHAIN_INCIDENT = "chain-incident"


class NodeAssessment(Protocol):
    """What the guard reads of a node's assessment (`tasks.probes.assessment.Assessment`)."""

    @property
    def healthy(self) -> bool: ...

    @property
    def status(self) -> str: ...


class ReferenceProbe(Protocol):
    """What the guard reads of a reference's probe (`NodeProbe`)."""

    url: str
    ok: bool
    error: str | None
    head: int | None
    head_age_s: float | None


def chain_target(chain_name: str) -> str:
    """How a chain is named where a node could be (escalation, PagerDuty dedup keys).

    Node names cannot contain ':', so this never collides with one.
    """
    return f"chain:{chain_name}"


def chain_incident(
    inventory: "Inventory",
    chain_name: str,
    assessments: dict[str, NodeAssessment],
    reference_probes: list[ReferenceProbe],
) -> str | None:
    """Why this is a chain incident rather than a node problem, or None.

    A chain incident is: no reference answered; every reference's head is
    older than the chain's max_head_age_seconds (the chain itself stalled);
    or more than max_unhealthy_share of the chain's nodes unhealthy in the
    same sweep, counting at least two (a single sick node is a node problem,
    even on a chain of one or two nodes).

    `assessments` and `reference_probes` come from one sweep of the whole
    chain, otherwise the share would be judged on partial evidence.
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
    now = now or utcnow()
    since = now - timedelta(seconds=window_seconds)
    for e in scan(f'"{CHAIN_INCIDENT}"', EntryKind.guard.value, since=since):
        data = e.get("data") or {}
        if data.get("name") == CHAIN_INCIDENT and data.get("chain") == chain_name and data.get("escalated") is True:
            if (t := ts(e)) is not None and t <= now:
                return False
    return True
