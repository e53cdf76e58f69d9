"""Disruption budget: would taking the node out of rotation leave its load-balancer backend without a healthy server?"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from tasks.errors import RunbookError

if TYPE_CHECKING:  # pragma: no cover
    from inventory import Inventory


class DisruptionBudgetExceeded(RunbookError):
    """Taking this server out would leave its backend without a healthy server."""


class ServerInRotation(Protocol):
    """What the guard reads of a `tasks.haproxy.ServerState`."""

    server: str

    @property
    def in_rotation(self) -> bool: ...


def disruption_budget(
    inventory: "Inventory", node: str, states: list[ServerInRotation], healthy: Callable[[list[str]], dict[str, bool]]
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
