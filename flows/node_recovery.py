"""Runbook: a node is down, frozen, stalled or lagging.

Confirm the problem (never trust the trigger blindly), take the node out of
rotation without emptying its backend, capture diagnostics, restart it through
its service manager, wait with a deadline until it has caught up, put it back,
and report. If it does not recover: leave it drained, escalate, fail the run.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks import slack
from tasks.errors import RunbookError
from tasks.runbook import Runbook, run_url
from tasks.steps import (
    DisruptionBudgetExceeded,
    as_dict,
    assess_node,
    capture_diagnostics,
    check_disruption_budget,
    drain_from_rotation,
    open_ssh,
    restart_service,
    return_to_rotation,
    wait_until_synced,
)

NodeName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", description="Node name from the inventory")]


class RecoveryFailed(RunbookError):
    """The node did not recover; it was left out of rotation and escalated."""


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


@flow(name="node-recovery", log_prints=True)
def node_recovery(
    node: NodeName,
    reason: str = "manual",
    dry_run: bool = False,
    trigger_event_id: str | None = None,
) -> dict:
    """Recover one node: confirm, drain, diagnose, restart, verify, undrain, report."""
    trigger = {"kind": "event", "event_id": trigger_event_id, "reason": reason} if trigger_event_id else {"kind": "manual", "reason": reason}
    rb = Runbook.open("node-recovery", {"node": node, "reason": reason, "dry_run": dry_run}, node=node, trigger=trigger)

    before = assess_node(rb, node)
    rb.audit.state("before", as_dict(before))
    if before.healthy:
        rb.finish("noop", f"{node} is healthy (head {before.head}, lag {before.lag}); nothing to do")
        return {"outcome": "noop", "before": as_dict(before)}

    plan = recovery_plan(rb, node)
    rb.audit.plan(plan)
    if dry_run:
        rb.finish("noop", f"dry run: {node} is {before.status} ({before.reason}); the plan above was not executed")
        return {"outcome": "dry-run", "before": as_dict(before), "plan": plan}

    try:
        check_disruption_budget(rb, node)
    except DisruptionBudgetExceeded as exc:
        return _escalate(rb, node, before, str(exc), drained=False)

    drained = drain_from_rotation(rb, node)
    try:
        with open_ssh(rb, node) as ssh:
            capture_diagnostics(rb, ssh, node)
            restarted = restart_service(rb, ssh, node)
    except RunbookError as exc:
        return _escalate(rb, node, before, f"could not reach or restart {node}: {exc}", drained)

    after = wait_until_synced(rb, node, rb.inventory.chain_of(node).recovery_deadline_seconds) if restarted else assess_node(rb, node)
    rb.audit.state("after", as_dict(after))
    if not (restarted and after.healthy):
        why = "the service manager could not start it" if not restarted else f"still {after.status} after the deadline: {after.reason}"
        return _escalate(rb, node, before, why, drained, after)

    if drained:
        return_to_rotation(rb, node)
    rb.notify(
        f"{node} recovered ({before.status} -> healthy)",
        slack.recovery_report(node, "recovered", as_dict(before), as_dict(after), run_url(), [f"reason: {reason}"]),
    )
    rb.finish("succeeded", f"{node} recovered: {before.status} -> healthy, head {after.head}, lag {after.lag}")
    return {"outcome": "recovered", "before": as_dict(before), "after": as_dict(after)}


def _escalate(rb: Runbook, node: str, before, why: str, drained: bool, after=None) -> dict:
    where = "left out of rotation" if drained else "rotation unchanged"
    rb.notify(
        f":rotating_light: {node} did not recover ({why}); {where}",
        slack.escalation(node, why, [f"before: {before.status} ({before.reason})", where], run_url()),
    )
    rb.finish("escalated", f"{node}: {why}; {where}")
    raise RecoveryFailed(f"{node} did not recover: {why}; {where}")


if __name__ == "__main__":
    import sys

    node_recovery(sys.argv[1])
