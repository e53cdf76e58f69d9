"""Runbook: a node is down, frozen, stalled or lagging.

Confirm the problem (never trust the trigger blindly), make sure it is the
node and not the chain, respect the node's restart budget, take it out of
rotation without emptying its backend, capture diagnostics, restart it through
its service manager, wait with a deadline until it has caught up, put it back,
and report. If it does not recover: leave it drained, escalate, fail the run.

Automatic runs (started by an event: fleet-health or an alert) also honour
the pause switch and give up at once when another run holds the node.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks import events, guards, slack
from tasks.errors import RunbookError
from tasks.escalation import Kind
from tasks.runbook import Runbook, run_url
from tasks.steps import (
    as_dict,
    assess_chain,
    capture_diagnostics,
    check_disruption_budget,
    drain_from_rotation,
    open_ssh,
    restart_service,
    return_to_rotation,
    wait_until_synced,
)
from tasks.vocabulary import NodeName

# A duplicate automatic run should end quickly; an operator's run waits for the other one.
AUTOMATIC_LEASE_WAIT_S = 2.0


class RecoveryFailed(RunbookError):
    """The node did not recover, or could not be acted on; it was escalated."""


def recovery_plan(rb: Runbook, node: str) -> list[str]:
    n = rb.inventory.node(node)
    host = rb.inventory.host_of(node)
    chain = rb.inventory.chain_of(node)
    lb = f"{n.lb.balancer} {n.lb.backend}/{n.lb.server}" if n.lb else None
    return [
        f"check that draining {node} leaves a healthy server in {lb}" if lb else "node is not behind a load balancer",
        f"drain {node} from {lb}" if lb else "no drain needed",
        f"capture diagnostics on {host.address} (service status, log tail, disk usage of {n.datadir})",
        f"restart {n.service.manager.value} service {n.service.name} on {host.address}",
        f"wait up to {chain.recovery_deadline_seconds:.0f}s for the head to advance and lag <= {chain.max_lag_blocks} blocks",
        f"return {node} to rotation" if lb else "no rotation change",
        "post the before/after report to Slack; escalate and leave drained if it does not recover",
    ]


def describe_trigger(reason: str, trigger_event_id: str | None) -> tuple[dict, dict | None]:
    """What started this run, for the audit: the event and, for alerts, the alert itself."""
    if not trigger_event_id:
        return {"kind": "manual", "reason": reason}, None
    event = events.read_event(trigger_event_id)
    trigger = {"kind": "event", "event_id": trigger_event_id, "reason": reason,
               "event": event["event"] if event else "(not found)"}
    if event and event["event"] == events.ALERT_FIRING:
        payload = event.get("payload") or {}
        trigger["alert"] = {k: payload.get(k) for k in ("alertname", "fingerprint", "startsAt", "severity")}
    return trigger, event


@flow(name="node-recovery", log_prints=True)
def node_recovery(
    node: NodeName,
    reason: str = "manual",
    dry_run: bool = False,
    trigger_event_id: str | None = None,
    lease_wait_seconds: Annotated[float, Field(ge=0, le=3600, description="How long an on-demand run waits for another run on this node")] = 300,
) -> dict:
    """Recover one node: confirm, guard, drain, diagnose, restart, verify, undrain, report."""
    automatic = trigger_event_id is not None
    trigger, event = describe_trigger(reason, trigger_event_id)
    rb = Runbook.open("node-recovery", {"node": node, "reason": reason, "dry_run": dry_run}, node=node, trigger=trigger)

    if automatic:
        pause = guards.pause_state()
        if pause.paused:
            rb.audit.guard("pause", f"automatic remediation is paused (by {pause.by or '?'}: {pause.reason or 'no reason given'})")
            rb.finish("refused", f"{node}: not acted on, automatic remediation is paused")
            return {"outcome": "paused"}
    try:
        with guards.node_lease(node, wait_seconds=AUTOMATIC_LEASE_WAIT_S if automatic else lease_wait_seconds):
            return recover(rb, node, reason, dry_run, automatic, event)
    except guards.LeaseBusy as exc:
        rb.audit.guard("lease", str(exc))
        if automatic:
            rb.finish("noop", f"{node}: another run is already working on this node; nothing done")
            return {"outcome": "busy"}
        rb.finish("refused", f"{node}: another run held the node for {lease_wait_seconds:.0f}s; nothing done")
        raise


def recover(rb: Runbook, node: str, reason: str, dry_run: bool, automatic: bool, event: dict | None) -> dict:
    chain_name = rb.inventory.node(node).chain
    chain = rb.inventory.chains[chain_name]
    fleet = assess_chain(rb, chain_name)
    before = fleet.nodes[node]
    rb.audit.state("before", as_dict(before))

    if event and event["event"] == events.ALERT_FIRING and events.alert_resolved_after(event):
        rb.audit.guard("alert-resolved", "the alert that started this run resolved before any action")
        rb.finish("noop", f"{node}: the alert resolved before action; nothing done")
        return {"outcome": "noop", "before": as_dict(before)}
    if before.healthy:
        rb.finish("noop", f"{node} is healthy (head {before.head}, lag {before.lag}); nothing to do")
        return {"outcome": "noop", "before": as_dict(before)}

    incident = guards.chain_incident(rb.inventory, chain_name, fleet.nodes, fleet.references[chain_name])
    if incident:
        escalate_now = guards.should_escalate_chain_incident(chain_name)
        guards.record_chain_incident(rb.audit, chain_name, incident, escalated=escalate_now)
        if escalate_now:
            rb.escalate(guards.chain_target(chain_name), Kind.CHAIN_INCIDENT, incident,
                        {n: f"{a.status}: {a.reason}" for n, a in fleet.nodes.items()})
        rb.finish("refused", f"{node}: not restarted, this is a chain incident: {incident}")
        return {"outcome": "chain-incident", "before": as_dict(before)}

    plan = recovery_plan(rb, node)
    rb.audit.plan(plan)
    if dry_run:
        rb.finish("noop", f"dry run: {node} is {before.status} ({before.reason}); the plan above was not executed")
        return {"outcome": "dry-run", "before": as_dict(before), "plan": plan}

    if automatic:
        decision = guards.restart_decision(node, chain.restart_budget)
        if not decision.allowed:
            rb.audit.guard("restart-budget", decision.reason, **decision.as_dict())
            if decision.escalate:
                guards.record_circuit_open(rb.audit, node, decision)
                rb.escalate(node, Kind.CIRCUIT_OPEN, f"{node}: circuit open, automatic restarts stopped: {decision.reason}",
                            {"before": f"{before.status}: {before.reason}", "close it": "run the close-circuit deployment"})
            rb.finish("refused", f"{node}: not restarted: {decision.reason}")
            return {"outcome": "circuit-open" if decision.circuit_open else "backoff", "before": as_dict(before)}

    try:
        check_disruption_budget(rb, node)
    except guards.DisruptionBudgetExceeded as exc:
        fail(rb, node, before, Kind.BACKEND_DOWN, str(exc), drained=False)

    drained = drain_from_rotation(rb, node)
    try:
        with open_ssh(rb, node) as ssh:
            capture_diagnostics(rb, ssh, node)
            restarted = restart_service(rb, ssh, node, automatic=automatic)
    except RunbookError as exc:
        fail(rb, node, before, Kind.NOT_RECOVERED, f"could not reach or restart {node}: {exc}", drained)

    after = wait_until_synced(rb, node, chain.recovery_deadline_seconds) if restarted else fleet.nodes[node]
    rb.audit.state("after", as_dict(after))
    if not (restarted and after.healthy):
        why = "the service manager could not start it" if not restarted else f"still {after.status} after the deadline: {after.reason}"
        fail(rb, node, before, Kind.NOT_RECOVERED, why, drained)

    if drained:
        return_to_rotation(rb, node)
    rb.resolve_incident(node)
    rb.notify(
        f"{node} recovered ({before.status} -> healthy)",
        slack.recovery_report(node, "recovered", as_dict(before), as_dict(after), run_url(), [f"reason: {reason}"]),
    )
    rb.finish("succeeded", f"{node} recovered: {before.status} -> healthy, head {after.head}, lag {after.lag}")
    return {"outcome": "recovered", "before": as_dict(before), "after": as_dict(after)}


def fail(rb: Runbook, node: str, before, kind: str, why: str, drained: bool) -> None:
    """Escalate, close the record and fail the run; the node stays out of rotation if it was drained."""
    where = "left out of rotation" if drained else "rotation unchanged"
    rb.escalate(node, kind, f"{node} did not recover: {why}; {where}",
                {"before": f"{before.status}: {before.reason}", "rotation": where})
    rb.finish("escalated", f"{node}: {why}; {where}")
    raise RecoveryFailed(f"{node} did not recover: {why}; {where}")


if __name__ == "__main__":
    import sys

    node_recovery(sys.argv[1])
