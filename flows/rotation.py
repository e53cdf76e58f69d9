"""Runbooks for a node's place in rotation: hold it out, release it, return it.

hold-node: an operator takes a node out of rotation on purpose (maintenance),
with a reason and an optional expiry. Every runbook respects the hold: none
acts on the node until it is released or expires.

release-node: the operator is done; the hold is lifted and, if the node is
healthy, it goes back in rotation at once (else automation takes it from there).

return-to-service: a node that is healthy but out of rotation, with no run
working on it and no hold, goes back in. The reconciler starts it after a
crashed run, or once such a node has stayed healthy for the soak period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks import guards, runbook, trigger
from tasks.approval import Plan
from tasks.guards import Resource
from tasks.runbook import Done, Runbook
from tasks.steps import as_dict, assess_nodes, drain_from_rotation, return_to_rotation, rotation_state
from tasks.vocabulary import AUTOMATION_ONLY, NodeName, Operator, Outcome

HoldReason = Annotated[str, Field(min_length=3, max_length=500, description="What the maintenance is (shown to everyone the hold stops)")]
Note = Annotated[str, Field(min_length=3, max_length=500, description="Why the node may be automated again")]
Hours = Annotated[float, Field(ge=0, le=24 * 30, description="Release the hold on its own after this many hours (0: hold until released)")]


def _observe(rb: Runbook, node: str) -> tuple:
    """The node's health and its load-balancer state, recorded as the run's `before`."""
    health = assess_nodes(rb.inventory, [node])[node]
    server = rotation_state(rb, node)
    rb.audit.state("before", as_dict(health) | {"admin_state": server.admin_state if server else None})
    return health, server


@dataclass
class HoldNode:
    node: str
    operator: str
    reason: str
    hours: float
    flow = "hold-node"
    needs_approval = False

    def parameters(self) -> dict:
        return {"node": self.node, "operator": self.operator, "reason": self.reason, "hours": self.hours}

    def resources(self) -> list[Resource]:
        return [Resource("node", self.node)]

    def plan(self, rb: Runbook) -> Plan:
        _, server = _observe(rb, self.node)
        self.drain = server is not None and server.admin_state == "ready"
        until = f"for {self.hours:g} h" if self.hours else "until released"
        steps = [f"record a hold on {self.node} by {self.operator} {until}: {self.reason}"]
        steps.append(f"drain {self.node} from rotation" if self.drain else "leave rotation as it is")
        return Plan(steps, {"admin_state": server.admin_state if server else None})

    def act(self, rb: Runbook, plan: Plan) -> dict:
        expires = datetime.now(timezone.utc) + timedelta(hours=self.hours) if self.hours else None
        if self.drain:
            drain_from_rotation(rb, self.node)
        if rb.gate.allows("audit", self.node, "record the hold"):
            hold = guards.place_hold(rb.audit, self.node, self.operator, self.reason, expires)
            raise Done(Outcome.succeeded, "held", hold.describe())
        raise Done(Outcome.noop, "held", "dry run")


@dataclass
class ReleaseNode:
    node: str
    operator: str
    note: str
    flow = "release-node"
    needs_approval = False
    respects_holds = False  # releasing is what a hold waits for

    def parameters(self) -> dict:
        return {"node": self.node, "operator": self.operator, "note": self.note}

    def resources(self) -> list[Resource]:
        return [Resource("node", self.node)]

    def plan(self, rb: Runbook) -> Plan:
        if guards.active_hold(self.node) is None:
            raise Done(Outcome.noop, "not-on-hold", f"{self.node} is not on hold (or its hold expired); nothing to release")
        self.health, server = _observe(rb, self.node)
        self.back = self.health.healthy and server is not None and server.admin_state != "ready"
        return Plan([f"release the hold on {self.node}",
                     f"return {self.node} to rotation" if self.back else f"leave rotation as it is ({self.health.status})"],
                    {"status": self.health.status, "admin_state": server.admin_state if server else None})

    def act(self, rb: Runbook, plan: Plan) -> dict:
        if rb.gate.allows("audit", self.node, "release the hold"):
            guards.release_hold(rb.audit, self.node, self.operator, self.note)
        if self.back:
            return_to_rotation(rb, self.node)
            raise Done(Outcome.succeeded, "released", f"{self.node}: hold released by {self.operator}; back in rotation")
        raise Done(Outcome.succeeded, "released",
                   f"{self.node}: hold released by {self.operator}; it is {self.health.status}, so automation takes it from here")


@dataclass
class ReturnToService:
    node: str
    reason: str
    flow = "return-to-service"
    needs_approval = False

    def parameters(self) -> dict:
        return {"node": self.node, "reason": self.reason}

    def resources(self) -> list[Resource]:
        return [Resource("node", self.node)]

    def plan(self, rb: Runbook) -> Plan:
        health, server = _observe(rb, self.node)
        if server is None or server.admin_state == "ready":
            raise Done(Outcome.noop, "in-rotation", f"{self.node} is in rotation (or behind no load balancer); nothing to do")
        if not health.healthy:
            raise Done(Outcome.refused, "unhealthy",
                       f"{self.node} is {health.status} ({health.reason}): not returned to rotation; node-recovery's job")
        self.health = health
        return Plan([f"return {self.node} to rotation ({server.admin_state} -> ready)",
                     "resolve its open incident; tell Slack"], {"status": health.status, "admin_state": server.admin_state})

    def act(self, rb: Runbook, plan: Plan) -> dict:
        return_to_rotation(rb, self.node)
        rb.resolve_incident(self.node)
        rb.notify(f"{self.node} returned to rotation: {self.reason}", [])
        raise Done(Outcome.succeeded, "returned", f"{self.node} back in rotation: {self.reason}", after=as_dict(self.health))


@flow(name="hold-node", log_prints=True)
def hold_node(node: NodeName, operator: Operator, reason: HoldReason, hours: Hours = 0,
              dry_run: Annotated[bool, Field(description="Show what would be done, changing nothing")] = False) -> dict:
    """Hold a node out of rotation and out of every runbook's reach (maintenance)."""
    return runbook.run(HoldNode(node, operator, reason, hours), trigger.describe(reason, operator=operator), dry_run=dry_run)


@flow(name="release-node", log_prints=True)
def release_node(node: NodeName, operator: Operator, note: Note,
                 dry_run: Annotated[bool, Field(description="Show what would be done, changing nothing")] = False) -> dict:
    """Release a node's hold; a healthy node goes back in rotation."""
    return runbook.run(ReleaseNode(node, operator, note), trigger.describe(note, operator=operator), dry_run=dry_run)


@flow(name="return-to-service", log_prints=True)
def return_to_service(
    node: NodeName,
    reason: Annotated[str, Field(max_length=300, description="Why it may go back (kept in the audit record)")] = "manual",
    trigger_event_id: AUTOMATION_ONLY = None,
) -> dict:
    """Put a healthy node that is out of rotation back in (not a held one, not one another run is working on)."""
    return runbook.run(ReturnToService(node, reason), trigger.describe(reason, trigger_event_id))
