"""The Prefect events runbooks emit and react to, and the resource that names a node.

Triggers in prefect.yaml match on these names and labels; keep them here only.
"""

from __future__ import annotations

import time

from tasks import prefect_api
from tasks.prefect_api import API_TIMEOUT_S

NODE_UNHEALTHY = "runbooks.node.unhealthy"  # fleet-health found a sick node
NODE_OUT_OF_ROTATION = "runbooks.node.out-of-rotation"  # healthy, but its load balancer sends it nothing
ALERT_FIRING = "runbooks.alert.firing"  # Alertmanager, through the bridge
ALERT_RESOLVED = "runbooks.alert.resolved"
ALERT_UNROUTABLE = "runbooks.bridge.unroutable"  # an alert that names no node or matches no route


# Problems node-recovery answers; anything else (disk filling, ...) is for
# other runbooks and must not restart a node.
RECOVERABLE_PROBLEMS = frozenset({"down", "stalled", "lagging"})
DISK_PROBLEMS = frozenset({"disk"})
# The runbooks an alert may start (the bridge's routing table names them) and
# the reasons each one takes; each has an event trigger in prefect.yaml.
ALERT_RUNBOOKS: dict[str, frozenset[str]] = {"node-recovery": RECOVERABLE_PROBLEMS, "disk-prune": DISK_PROBLEMS}


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
    for runbook, problems in ALERT_RUNBOOKS.items():
        if problem in problems:
            resource["runbooks.remediation"] = runbook
    return resource


def _events(filter_: dict, limit: int = 50, timeout: float = API_TIMEOUT_S) -> list[dict]:
    """Events matching a filter, from the Prefect server (bounded by `timeout`)."""
    # With the client's retries, as before: a run that cannot read its own
    # trigger fails, and a 5xx blip at a run's start should not do that.
    with prefect_api.client(timeout, retries=True) as client:
        response = client.request("POST", "/events/filter", json={"filter": filter_, "limit": limit})
    return response.json().get("events", [])


# How long a triggered run waits for its event to be readable. Runs now start within a second of
# their trigger (deployments/prestart.py), and on a loaded SQLite server the event persister can be
# seconds behind: a wait too short records an alert-started run as started by "(not found)".
EVENT_WAIT_S = 30.0


def read_event(event_id: str, wait_s: float = EVENT_WAIT_S) -> dict | None:
    """The event that started a run, waiting up to `wait_s` for it to be stored.

    A trigger fires from the server's event stream, and the event is written to
    the database in batches beside it: on a busy server the run can start
    before its event is readable (seen in the suite: a run started by
    DiskFilling recorded as started by an unknown event, its alert lost)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = _events({"id": {"id": [event_id]}, "occurred": {"since": "2000-01-01T00:00:00Z"}}, limit=1)
        if found or time.monotonic() >= deadline:
            return found[0] if found else None
        time.sleep(0.25)


def alert_resolved_after(alert_event: dict) -> bool:
    """Has the alert behind this firing event resolved since it fired?"""
    fingerprint = (alert_event.get("payload") or {}).get("fingerprint")
    if not fingerprint:
        return False
    resolved = _events({
        "event": {"name": [ALERT_RESOLVED]},
        "related": {"id": [f"runbooks.alert.{fingerprint}"]},
        "occurred": {"since": alert_event["occurred"]},
    }, limit=5)
    return bool(resolved)
