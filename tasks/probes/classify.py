"""Classification: the one place a probe becomes a verdict.

healthy, lagging, stalled, down or unknown, against the thresholds of the
node's chain in the inventory, judged by a first-match table that reads like
the operator's own judgement.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from inventory import Chain
from tasks.probes.model import NodeProbe, Status, Verdict
from tasks.probes.parsing import to_int


def reference_head(probes: Iterable[NodeProbe]) -> int | None:
    """The best head among the references that answered, or None if none did."""
    heads = [p.head for p in probes if p.ok and p.head is not None]
    return max(heads) if heads else None


def classify(probe: NodeProbe, reference_head: int | None, chain: Chain) -> Verdict:
    """Judge one probe against its chain's thresholds. First matching row wins."""
    age = probe.head_age_s
    lag = reference_head - probe.head if reference_head is not None and probe.head is not None else None
    health = probe.health
    client_says = f"client health: {health.detail}" if health else ""

    table: list[tuple[bool, Status, Any]] = [
        # condition                                              status     reason
        (not probe.ok,                                           "down",    lambda: f"no usable answer: {probe.error}"),
        (age is not None and age > chain.max_head_age_seconds,   "stalled", lambda: f"head {probe.head} is {age:.0f}s old (max {chain.max_head_age_seconds:g}s)"),
        (bool(probe.syncing),                                    "lagging", lambda: f"node reports it is syncing{_sync_progress(probe.syncing)}"),
        (lag is not None and lag > chain.max_lag_blocks,         "lagging", lambda: f"{lag} blocks behind the references (head {probe.head}, reference {reference_head}, max {chain.max_lag_blocks})"),
        (health is not None and health.healthy is False,         "lagging", lambda: client_says),
        (reference_head is None,                                 "unknown", lambda: f"no reference answered, cannot judge lag (head {probe.head})"),
        (health is not None and health.healthy is None,          "unknown", lambda: f"{client_says} (inconclusive)"),
    ]
    for matches, status, reason in table:
        if matches:
            return Verdict(status, reason(), lag)
    age_text = f", head {age:.0f}s old" if age is not None else ""
    return Verdict("healthy", f"head {probe.head}, {lag} behind the references{age_text}", lag)


def _sync_progress(syncing: Any) -> str:
    if not isinstance(syncing, dict):
        return ""
    current, highest = to_int(syncing.get("currentBlock")), to_int(syncing.get("highestBlock"))
    if current is not None and highest is not None:
        return f" (block {current} of {highest})"
    return ""
