"""The Prefect events runbooks emit and react to, and the resource that names a node.

Triggers in prefect.yaml match on these names and labels; keep them here only.
"""

from __future__ import annotations

NODE_UNHEALTHY = "runbooks.node.unhealthy"  # fleet-health found a sick node
ALERT_FIRING = "runbooks.alert.firing"  # Alertmanager, through the bridge
ALERT_RESOLVED = "runbooks.alert.resolved"


def node_resource(node: str, chain: str) -> dict[str, str]:
    """The event resource that names a node; triggers match on its id and read `runbooks.node`."""
    return {
        "prefect.resource.id": f"runbooks.node.{node}",
        "prefect.resource.name": node,
        "runbooks.node": node,
        "runbooks.chain": chain,
    }
