"""A test-only mutating runbook, written on the frame in a few lines.

It drains a node, restarts its service and puts it back: it touches a host
(SSH, the service manager) and the balancer (HAProxy). Everything else
(trigger, pause, holds, lease, plan, dry run, approval, audit, outcome,
escalation) comes from the frame: this file has no code for any of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prefect import flow

from tasks import runbook, trigger
from tasks.approval import Plan
from tasks.guards import Resource
from tasks.runbook import Done
from tasks.steps import drain_from_rotation, restart_service, return_to_rotation, rotation_state
from tasks.vocabulary import Outcome


@dataclass
class ToyRestart:
    node: str
    needs_approval: bool = False
    flow = "toy-restart"

    def parameters(self) -> dict:
        return {"node": self.node}

    def resources(self) -> list[Resource]:
        return [Resource("node", self.node)]

    def plan(self, rb) -> Plan:
        # The balancer's state is a fact the plan rests on: if it changes after approval, the plan is stale.
        server = rotation_state(rb, self.node)
        return Plan([f"drain {self.node}", f"restart {self.node}", f"return {self.node} to rotation"],
                    {"admin_state": server.admin_state})

    def act(self, rb, plan: Plan) -> dict:
        drain_from_rotation(rb, self.node)
        with rb.ssh(self.node) as ssh:
            restart_service(rb, ssh, self.node)
        return_to_rotation(rb, self.node)
        raise Done(Outcome.succeeded, "restarted", f"{self.node} restarted")


@flow(name="toy-restart")
def toy_restart(node: str, dry_run: bool = False, approval: bool = False, approval_timeout_seconds: int = 120,
                trigger_event_id: str | None = None) -> dict:
    return runbook.run(ToyRestart(node, needs_approval=approval), trigger.describe("toy", trigger_event_id),
                       dry_run=dry_run, approval_timeout_seconds=approval_timeout_seconds)


@dataclass
class ToyTouch:
    """Leases one resource (a node, or a whole chain as an upgrade wave) and records when it acted."""

    resource: Resource
    flow = "toy-overlap"
    needs_approval = False

    def parameters(self) -> dict:
        return {"resource": str(self.resource)}

    def resources(self) -> list[Resource]:
        return [self.resource]

    def plan(self, rb) -> Plan:
        return Plan([f"touch {self.resource}"], {})

    def act(self, rb, plan: Plan) -> dict:
        start = time.monotonic()
        time.sleep(0.3)
        ACTED.append((self.resource.kind, start, time.monotonic()))
        raise Done(Outcome.succeeded, "touched", "done")


# (what, entered, left) for every act of ToyTouch, in this process.
ACTED: list[tuple[str, float, float]] = []


@flow(name="toy-overlap")
def toy_overlap(kind: str, name: str) -> dict:
    return runbook.run(ToyTouch(Resource(kind, name)), trigger.describe("toy"), lease_wait_seconds=60)
