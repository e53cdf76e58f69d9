"""Runbook: a node is down, frozen, stalled or lagging.

Confirm the problem (never trust the trigger blindly), make sure it is the
node and not the chain, respect the node's restart budget, take it out of
rotation without emptying its backend, capture diagnostics, restart it through
its service manager, wait with a deadline until it has caught up, put it back,
and report. If it does not recover: leave it drained, escalate, fail the run.

The frame (tasks/runbook.py) owns the rest: trigger, pause switch, holds,
the node's lease, the recorded plan, dry run, outcome and escalation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks import events, guards, runbook, slack, trigger
from tasks.approval import Plan
from tasks.errors import RunbookError
from tasks.escalation import Kind
from tasks.guards import Resource
from tasks.runbook import Done, Failed, Runbook, run_url
from tasks.steps import (
    as_dict,
    assess_chain,
    capture_diagnostics,
    check_disruption_budget,
    drain_from_rotation,
    kill_hung_service,
    restart_service,
    return_to_rotation,
    wait_until_synced,
)
from tasks.vocabulary import AUTOMATION_ONLY, NodeName, Outcome

Reason = Annotated[str, Field(max_length=200, description="Why you are recovering it (kept in the audit record)")]


@dataclass
class RecoverNode:
    node: str
    reason: str
    needs_approval = False
    flow = "node-recovery"

    def parameters(self) -> dict:
        return {"node": self.node, "reason": self.reason}

    def resources(self) -> list[Resource]:
        return [Resource("node", self.node)]

    def plan(self, rb: Runbook) -> Plan:
        """Confirm and decide: is there anything to do, and may automation do it?"""
        node, inv = self.node, rb.inventory
        n, host, chain = inv.node(node), inv.host_of(node), inv.chain_of(node)
        self.fleet = assess_chain(rb, n.chain)
        self.before = self.fleet.nodes[node]
        rb.audit.state("before", as_dict(self.before))
        event = rb.trigger.event
        if event and event["event"] == events.ALERT_FIRING and events.alert_resolved_after(event):
            rb.audit.guard("alert-resolved", "the alert that started this run resolved before any action")
            raise Done(Outcome.noop, "noop", f"{node}: the alert resolved before action; nothing done", before=as_dict(self.before))
        if self.before.healthy:
            raise Done(Outcome.noop, "noop", f"{node} is healthy (head {self.before.head}, lag {self.before.lag}); nothing to do",
                       before=as_dict(self.before))
        self._refuse_chain_incident(rb)
        if rb.trigger.automatic:
            self._respect_restart_budget(rb)

        lb = f"{n.lb.balancer} {n.lb.backend}/{n.lb.server}" if n.lb else None
        steps = [
            f"check that draining {node} leaves a healthy server in {lb}" if lb else "node is not behind a load balancer",
            f"drain {node} from {lb}" if lb else "no drain needed",
            f"capture diagnostics on {host.address} (service status, log tail, disk usage of {n.datadir})",
            *([f"kill {n.service.name} if it runs without answering (hung: not waited out)"]
              if self.before.status == "down" else []),
            f"restart {n.service.manager.value} service {n.service.name} on {host.address}",
            f"wait up to {chain.recovery_deadline_seconds:.0f}s for the head to advance and lag <= {chain.max_lag_blocks} blocks",
            f"return {node} to rotation" if lb else "no rotation change",
            "post the before/after report to Slack; escalate and leave drained if it does not recover",
        ]
        return Plan(steps, {"status": self.before.status})

    def _refuse_chain_incident(self, rb: Runbook) -> None:
        chain_name = rb.node(self.node).chain
        incident = guards.chain_incident(rb.inventory, chain_name, self.fleet.nodes, self.fleet.references[chain_name])
        if not incident:
            return
        escalate_now = guards.should_escalate_chain_incident(chain_name)
        guards.record_chain_incident(rb.audit, chain_name, incident, escalated=escalate_now)
        if escalate_now:
            rb.escalate(guards.chain_target(chain_name), Kind.CHAIN_INCIDENT, incident,
                        {n: f"{a.status}: {a.reason}" for n, a in self.fleet.nodes.items()})
        raise Done(Outcome.refused, "chain-incident", f"{self.node}: not restarted, this is a chain incident: {incident}",
                   before=as_dict(self.before))

    def _respect_restart_budget(self, rb: Runbook) -> None:
        node = self.node
        decision = guards.restart_decision(node, rb.inventory.chain_of(node).restart_budget)
        if decision.allowed:
            return
        rb.audit.guard("restart-budget", decision.reason, **decision.as_dict())
        if decision.escalate:
            guards.record_circuit_open(rb.audit, node, decision)
            rb.escalate(node, Kind.CIRCUIT_OPEN, f"{node}: circuit open, automatic restarts stopped: {decision.reason}",
                        {"before": f"{self.before.status}: {self.before.reason}", "close it": "run the close-circuit deployment"})
        raise Done(Outcome.refused, "circuit-open" if decision.circuit_open else "backoff",
                   f"{node}: not restarted: {decision.reason}", before=as_dict(self.before))

    def act(self, rb: Runbook, plan: Plan) -> dict:
        node, before = self.node, self.before
        try:
            check_disruption_budget(rb, node)
        except guards.DisruptionBudgetExceeded as exc:
            raise self._failed(Kind.BACKEND_DOWN, str(exc), drained=False) from None

        drained = drain_from_rotation(rb, node)
        try:
            with rb.ssh(node) as ssh:
                diagnostics = capture_diagnostics(rb, ssh, node)
                if before.status == "down" and diagnostics["service"]["running"]:
                    kill_hung_service(rb, ssh, node)
                restarted = restart_service(rb, ssh, node)
        except RunbookError as exc:
            raise self._failed(Kind.NOT_RECOVERED, f"could not reach or restart {node}: {exc}", drained) from None

        deadline = rb.inventory.chain_of(node).recovery_deadline_seconds
        after = wait_until_synced(rb, node, deadline) if restarted else self.fleet.nodes[node]
        rb.audit.state("after", as_dict(after))
        if not (restarted and after.healthy):
            why = "the service manager could not start it" if not restarted else f"still {after.status} after the deadline: {after.reason}"
            raise self._failed(Kind.NOT_RECOVERED, why, drained)

        if drained:
            return_to_rotation(rb, node)
        rb.resolve_incident(node)
        rb.notify(
            f"{node} recovered ({before.status} -> healthy)",
            slack.recovery_report(node, "recovered", as_dict(before), as_dict(after), run_url(), [f"reason: {self.reason}"]),
        )
        raise Done(Outcome.succeeded, "recovered", f"{node} recovered: {before.status} -> healthy, head {after.head}, lag {after.lag}",
                   before=as_dict(before), after=as_dict(after))

    def _failed(self, kind: str, why: str, drained: bool) -> Failed:
        """The node stays out of rotation if it was drained; the frame escalates and fails the run."""
        where = "left out of rotation" if drained else "rotation unchanged"
        return Failed(kind, self.node, f"{self.node} did not recover: {why}; {where}",
                      {"before": f"{self.before.status}: {self.before.reason}", "rotation": where,
                       # The seed's "failover and rebuild", when a restart cannot fix it.
                       "rebuild": f"run restore-node (node={self.node}): its newest verified snapshot, in place "
                                  "or on a standby host (target_host)"})


@flow(name="node-recovery", log_prints=True)
def node_recovery(
    node: NodeName,
    reason: Reason = "manual",
    dry_run: Annotated[bool, Field(description="Show what would be done, touching no host or load balancer")] = False,
    lease_wait_seconds: Annotated[float, Field(ge=0, le=3600, description="How long to wait for another run working on this node")] = 300,
    trigger_event_id: AUTOMATION_ONLY = None,
) -> dict:
    """Recover one node: confirm, guard, drain, diagnose, restart, verify, undrain, report."""
    return runbook.run(RecoverNode(node, reason), trigger.describe(reason, trigger_event_id),
                       dry_run=dry_run, lease_wait_seconds=lease_wait_seconds)


if __name__ == "__main__":
    import sys

    node_recovery(sys.argv[1])
