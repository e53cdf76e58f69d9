"""The Prefect events runbooks emit and react to, and the resource that names a node.

Triggers in prefect.yaml match on these names and labels; keep them here only.
"""

from __future__ import annotations

NODE_UNHEALTHY = "runbooks.node.unhealthy"  # fleet-health found a sick node
ALERT_FIRING = "runbooks.alert.firing"  # Alertmanager, through the bridge
ALERT_RESOLVED = "runbooks.alert.resolved"


# Problems node-recovery answers; anything else (disk filling, ...) is for
# other runbooks and must not restart a node.
RECOVERABLE_PROBLEMS = frozenset({"down", "stalled", "lagging"})


def node_resource(node: str, chain: str, problem: str | None = None) -> dict[str, str]:
    """The event resource that names a node; triggers match on its id and read `runbooks.node`.

    With a problem, the label `runbooks.remediation` says which runbook answers
    it, so a trigger can match exactly the events its runbook can fix.
    """
    resource = {
        "prefect.resource.id": f"runbooks.node.{node}",
        "prefect.resource.name": node,
        "runbooks.node": node,
        "runbooks.chain": chain,
    }
    if problem in RECOVERABLE_PROBLEMS:
        resource["runbooks.remediation"] = "node-recovery"
    return resource
