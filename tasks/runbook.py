"""The runbook frame: the story every mutating run shares, told once.

A runbook module (flows/) holds only its own steps: a `Procedure` with
`resources()` (what it touches), `plan(rb)` (look, decide, say what it will
do) and `act(rb, plan)` (do it, verify, report). `run(procedure, ...)` wraps
them in the frame:

1. open: validate the inventory and every resource before anything runs,
   start the audit record (trigger, parameters, where the run's process is),
   register blocks' secrets with the redactor;
2. may it run now: the pause switch (automatic runs), operator holds on any
   node it touches (every run);
3. the plan, recorded before any action; for runbooks that need approval the
   run pauses with the plan and its hash on a typed form (tasks/approval.py);
4. leases over every resource, taken together in one fixed order
   (tasks/guards/lease.py), so two runbooks never deadlock and never act at
   once on the same node; with approval the plan is made again under the
   leases and must hash the same as the approved one;
5. act: every mutating call goes through the run's gate (tasks/gate.py), so
   a dry run records what it would do and touches nothing;
6. the outcome, one of `Outcome`, in the flow's result and the audit alike;
   a `Failed` is escalated (tasks/escalation.py) and fails the run; anything
   unexpected is escalated too, with the step it happened in.

A run that dies without reaching 6 (killed, out of memory, host lost) is
found by the reconciler (flows/reconcile.py) from its audit record.
"""

from __future__ import annotations

import os
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from blocks import HAProxyAdmin, PagerDutyService, SlackWorkspace, SshIdentity
from inventory import Inventory, Node, load_inventory
from tasks import escalation, guards, slack
from tasks.approval import Plan, wait_for_approval
from tasks.audit import AuditRecord, render_markdown
from tasks.errors import RunbookError
from tasks.gate import DryRunComplete, Gate
from tasks.guards import Resource
from tasks.haproxy import HAProxyRuntime
from tasks.pagerduty import load_pagerduty
from tasks.redaction import redact, register_secret
from tasks.ssh import SshRunner
from tasks.trigger import Trigger
from tasks.vocabulary import REGION_ENV, Outcome

# A duplicate automatic run should end quickly; an operator's run waits for the other one.
AUTOMATIC_LEASE_WAIT_S = 2.0
DEFAULT_APPROVAL_TIMEOUT_S = 3600
READ_OUTPUT_CAP_BYTES = 16 * 1024 * 1024  # a file listing of a big datadir's clean-up directories


class Done(Exception):
    """End the run now with this outcome (a no-op, a refusal, a success decided early)."""

    def __init__(self, status: Outcome, outcome: str, detail: str, **data: Any) -> None:
        super().__init__(detail)
        self.status, self.outcome, self.detail, self.data = Outcome(status), outcome, detail, data


class Failed(RunbookError):
    """The runbook could not do its job: escalate at the matrix's priority and fail the run."""

    def __init__(self, kind: str, target: str, summary: str, details: dict | None = None, **data: Any) -> None:
        super().__init__(summary)
        self.kind, self.target, self.summary, self.details, self.data = kind, target, summary, details or {}, data


class Procedure(Protocol):
    """What a mutating runbook supplies to the frame."""

    flow: str  # the Prefect flow's name, also the audit record's
    needs_approval: bool

    def parameters(self) -> dict[str, Any]: ...
    def resources(self) -> list[Resource]: ...
    def plan(self, rb: "Runbook") -> Plan: ...
    def act(self, rb: "Runbook", plan: Plan) -> dict[str, Any]: ...


def _artifact_key(*parts: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def run_url() -> str | None:
    """Link to this run in the Prefect UI, when there is one."""
    return flow_run.get_flow_run_ui_url()


@dataclass
class Runbook:
    """One run's context: inventory, audit record, gate, and the clients a runbook may use."""

    flow: str
    inventory: Inventory
    audit: AuditRecord
    trigger: Trigger
    gate: Gate
    resources: list[Resource] = field(default_factory=list)
    _ssh: dict[str, SshIdentity] = field(default_factory=dict)

    @classmethod
    def open(cls, flow: str, parameters: dict, trigger: Trigger, resources: list[Resource] = (),
             dry_run: bool = False) -> "Runbook":
        """Validate inventory and resources, then start the audit record.

        An unknown node, host or chain raises InventoryError here, before any host is touched.
        """
        inventory = load_inventory()
        resources = list(resources)
        for r in resources:
            if r.kind == "node":
                inventory.node(r.name)  # InventoryError naming the node and the inventory file
        guards.lock_names(inventory, resources)  # validates hosts and chains against the inventory too
        nodes = sorted({r.name for r in resources if r.kind == "node"})
        audit = AuditRecord(run_id=str(flow_run.get_id() or "local"), flow=flow, node=nodes[0] if len(nodes) == 1 else None)
        # Where it belongs and where it runs: a regional worker hands its region to every run it starts
        # (deployments/regional_worker.py); a fallback region's run says so here.
        region, ran_in = inventory.run_region(parameters), os.environ.get(REGION_ENV) or None
        placement = {"region": region, "ran_in": ran_in,
                     "fallback": region is not None and ran_in is not None and region != ran_in}
        audit.started(trigger=trigger.as_dict(), parameters=parameters,
                      resources=[f"{r.kind}:{r.name}" for r in resources],
                      process={"host": socket.gethostname(), "pid": os.getpid()}, placement=placement,
                      dry_run=dry_run)
        return cls(flow, inventory, audit, trigger, Gate(audit, dry_run), resources)

    @property
    def dry_run(self) -> bool:
        return self.gate.dry_run

    def node(self, name: str) -> Node:
        return self.inventory.node(name)

    def nodes(self) -> list[str]:
        """Every node the run's resources cover (a host's or chain's nodes too)."""
        names = set()
        for r in self.resources:
            if r.kind == "node":
                names.add(r.name)
            else:
                names.update(n for n, node in self.inventory.nodes.items() if getattr(node, r.kind) == r.name)
        return sorted(names)

    def step(self, name: str) -> None:
        """Mark the start of a step, so a run that dies can be reported by the step it died in."""
        self.audit.note("step", step=name)

    # -- clients, every one built with the run's gate ---------------------------

    def ssh_identity(self, block_name: str) -> SshIdentity:
        if block_name not in self._ssh:
            identity = SshIdentity.load(block_name)
            register_secret(identity.private_key.get_secret_value())
            self._ssh[block_name] = identity
        return self._ssh[block_name]

    def ssh(self, node: str) -> SshRunner:
        """An SSH session to the node's host; in a dry run it never connects."""
        return self.ssh_to_host(self.inventory.node(node).host)

    def ssh_to_host(self, host_name: str) -> SshRunner:
        """An SSH session to a host, for host-level actions; in a dry run it never connects."""
        host = self.inventory.hosts[host_name]
        return SshRunner(host, self.ssh_identity(host.ssh_identity_block), gate=self.gate)

    def inspect(self, host_name: str) -> SshRunner:
        """An SSH session for read-only commands (df, find): it runs in a dry run too, so the plan shows
        the real host; audited like any command. Its output cap is large: a listing is the point."""
        host = self.inventory.hosts[host_name]
        return SshRunner(host, self.ssh_identity(host.ssh_identity_block), audit=self.audit,
                         max_output_bytes=READ_OUTPUT_CAP_BYTES)

    def balancer(self, balancer: str) -> HAProxyRuntime:
        block = HAProxyAdmin.load(self.inventory.load_balancers[balancer].admin_block)
        return HAProxyRuntime.from_block(block, gate=self.gate)

    @cached_property
    def slack(self) -> SlackWorkspace | None:
        name = self.inventory.notifications.slack_block
        if not name:
            return None
        workspace = SlackWorkspace.load(name)
        register_secret(workspace.token.get_secret_value())
        return workspace

    @cached_property
    def pagerduty(self) -> PagerDutyService | None:
        return load_pagerduty(self.inventory)

    # -- telling people: notifications are actions too (a dry run only records them)

    def escalate(self, target: str, kind: str, summary: str, details: dict, severity: str | None = None) -> dict | None:
        """Tell humans at the priority the matrix gives (tasks/escalation.py): Slack, and PagerDuty for P1/P2."""
        priority = escalation.priority_for(kind, severity)
        if not self.gate.allows("escalation", target, f"[{priority.value}] {summary}"):
            return None
        return escalation.escalate(self.audit, self.slack, self.pagerduty, target, priority, summary, details, run_url())

    def resolve_incident(self, target: str) -> None:
        """The problem is gone: resolve the target's open PagerDuty incident, if any."""
        if self.gate.allows("pagerduty", target, "resolve the open incident, if any"):
            escalation.resolve_incident(self.audit, self.pagerduty, target)

    def notify(self, text: str, blocks: list[dict]) -> None:
        """Post to Slack; a Slack outage is logged and audited, never fatal."""
        if self.slack is None or not self.gate.allows("slack", self.slack.channel, text):
            return
        try:
            slack.post(self.slack, text=text, blocks=blocks)
            self.audit.note("slack message posted", channel=self.slack.channel, text=text)
        except Exception as exc:  # noqa: BLE001 - notification must not mask the outcome
            get_run_logger().warning("Slack notification failed: %s", redact(str(exc)))
            self.audit.note("slack message failed", error=str(exc))

    # -- the end ------------------------------------------------------------------

    def finish(self, status: Outcome, outcome: str, detail: str, **data: Any) -> dict[str, Any]:
        """Close the audit record, attach its readable copy to the run, and return the flow's result."""
        status = Outcome(status)
        self.audit.outcome(status=status, detail=detail, result=outcome)
        create_markdown_artifact(
            key=_artifact_key(self.flow, self.audit.node or "fleet"),
            markdown=render_markdown(self.audit.entries()),
            description=f"{self.flow} audit record ({status.value})",
        )
        get_run_logger().info("%s: %s (%s)", self.flow, status.value, redact(detail))
        return {"status": status.value, "outcome": outcome, "detail": detail, **data}


def each_in_turn(names: list[str], run_one, what: str) -> dict[str, str]:
    """A batch flow's body: `run_one(name)` (a runbook flow) for each name in turn, each with its own lease,
    audit and outcome; a failure was escalated by that run and does not stop the others. Raises at the end,
    naming the failures, so the batch run shows red."""
    results = {}
    for name in names:
        try:
            results[name] = run_one(name)["status"]
        except Exception as exc:  # noqa: BLE001 - escalated by its own run; the next one still goes
            results[name] = f"failed: {type(exc).__name__}"
    failed = sorted(n for n, s in results.items() if s.startswith("failed"))
    if failed:
        raise RuntimeError(f"{what} failed for {', '.join(failed)} (each escalated by its own run): {results}")
    return results


def run(procedure: Procedure, trigger: Trigger, *, dry_run: bool = False, lease_wait_seconds: float = 300,
        approval_timeout_seconds: int = DEFAULT_APPROVAL_TIMEOUT_S) -> dict[str, Any]:
    """Run a procedure inside the frame; returns {"status": Outcome, "outcome", "detail", ...}."""
    rb = Runbook.open(procedure.flow, procedure.parameters(), trigger, procedure.resources(), dry_run)
    try:
        _may_run(rb, respects_holds=getattr(procedure, "respects_holds", True))
        if dry_run:
            return _dry_run(rb, procedure)
        wait = AUTOMATIC_LEASE_WAIT_S if trigger.automatic else lease_wait_seconds
        if not procedure.needs_approval:
            with _leased(rb, wait):
                plan = _record_plan(rb, procedure.plan(rb))
                return procedure.act(rb, plan)
        approved = _approve(rb, _record_plan(rb, procedure.plan(rb)), approval_timeout_seconds)
        with _leased(rb, wait):
            plan = procedure.plan(rb)  # preconditions, checked again now that nobody else can act
            if plan.hash != approved:
                raise Done(Outcome.refused, "stale-plan",
                           f"the fleet changed after approval: the plan now hashes {plan.hash}, the approved one "
                           f"{approved}; nothing was done, start the run again to approve the new plan")
            rb.audit.plan(plan.steps, hash=plan.hash, facts=plan.facts, approved=True)
            return procedure.act(rb, plan)
    except Done as done:
        return rb.finish(done.status, done.outcome, done.detail, **done.data)
    except guards.LeaseBusy as exc:
        rb.audit.guard("lease", str(exc))
        if trigger.automatic:
            return rb.finish(Outcome.noop, "busy", "another run is already working on this; nothing done")
        rb.finish(Outcome.refused, "busy", f"another run held the lease for {lease_wait_seconds:.0f}s; nothing done")
        raise
    except Failed as failure:
        rb.escalate(failure.target, failure.kind, failure.summary, failure.details)
        rb.finish(Outcome.escalated, failure.kind, failure.summary, **failure.data)
        raise
    except Exception as exc:
        # A bug or an unreachable system we did not plan for: a human must know, with the step.
        where = _last_step(rb)
        summary = f"{procedure.flow} failed unexpectedly in step {where}: {type(exc).__name__}: {redact(str(exc))[:300]}"
        try:
            rb.escalate(rb.audit.node or procedure.flow, escalation.Kind.RUN_FAILED, summary, {"step": where})
            rb.finish(Outcome.failed, "error", summary)
        except Exception:  # noqa: BLE001 - the original error matters more than a failed report of it
            pass
        raise


def _may_run(rb: Runbook, respects_holds: bool) -> None:
    """The pause switch (automatic runs) and operator holds (every run but the one releasing them)."""
    if rb.trigger.automatic:
        pause = guards.pause_state()
        if pause.paused:
            rb.audit.guard("pause", f"automatic runs are paused (by {pause.by or '?'}: {pause.reason or 'no reason given'})")
            raise Done(Outcome.refused, "paused", "not acted on, automatic remediation is paused")
    for node in rb.nodes() if respects_holds else []:
        hold = guards.active_hold(node)
        if hold is not None:
            rb.audit.guard("hold", hold.describe(), node=node)
            raise Done(Outcome.refused, "on-hold", f"{hold.describe()}; release it (release-node) first")


def _record_plan(rb: Runbook, plan: Plan) -> Plan:
    rb.audit.plan(plan.steps, hash=plan.hash, facts=plan.facts)
    return plan


def _dry_run(rb: Runbook, procedure: Procedure) -> dict[str, Any]:
    """Plan, then act through a gate that only records: nothing is touched, everything is shown."""
    plan = _record_plan(rb, procedure.plan(rb))
    try:
        procedure.act(rb, plan)
    except DryRunComplete:
        pass
    would = "; ".join(rb.gate.would_do) or "nothing"
    raise Done(Outcome.noop, "dry-run", f"dry run: the plan above was not executed; it would do: {would}",
               plan=plan.steps, plan_hash=plan.hash)


def _approve(rb: Runbook, plan: Plan, timeout_s: int) -> str:
    """Wait for a human's decision on this plan; returns the approved hash or ends the run."""
    rb.audit.approval(status="requested", plan_hash=plan.hash, timeout_s=timeout_s)
    decision = wait_for_approval(plan, f"{rb.flow}: approve this plan?", timeout_s)
    rb.audit.approval(status="timed-out" if decision.timed_out else ("approved" if decision.approved else "rejected"),
                      **decision.as_dict())
    if decision.timed_out:
        raise Done(Outcome.refused, "timed-out", f"nobody approved within {timeout_s}s; nothing was done")
    if not decision.approved:
        raise Done(Outcome.refused, "rejected", f"rejected by {decision.approver}: {decision.comment or 'no comment'}; nothing was done")
    if decision.plan_hash != plan.hash:
        raise Done(Outcome.refused, "stale-plan", f"{decision.approver} approved plan {decision.plan_hash}, but this run's "
                   f"plan is {plan.hash}; nothing was done")
    return plan.hash


@contextmanager
def _leased(rb: Runbook, wait_seconds: float):
    """Hold every resource's lease for the block; the taking is recorded (with the lease id, for the reconciler)."""
    with guards.leases(rb.inventory, rb.resources, wait_seconds=wait_seconds) as held:
        rb.audit.guard("lease-taken", f"holding {', '.join(held.names)}", names=list(held.names),
                       lease_id=str(held.lease_id) if held.lease_id else None)
        yield held


def _last_step(rb: Runbook) -> str:
    steps = [e["data"].get("step") for e in rb.audit.entries() if e.get("kind") == "note" and isinstance(e.get("data"), dict)
             and e["data"].get("step")]
    return steps[-1] if steps else "before the first step"

