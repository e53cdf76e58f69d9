"""Runbook: put right what runs left half done, and nodes left out of rotation.

A run can die anywhere (worker killed, out of memory, host rebooted) and
take its `finally` with it: a node stays drained, a service stays stopped.
Nothing in Prefect says so (the run is just Crashed), and fleet health sees
a healthy node. This runbook reads what happened from the audit trail:

1. **Crashed runs**: a run whose audit record has a start but no outcome,
   and which Prefect says is no longer running, crashed. It is escalated once
   (P2, naming the step it died in), its lease is released at once (instead
   of waiting for it to expire), and each node it touched is handed to
   node-recovery (which repairs a node that is still broken) and then to
   return-to-service (which puts a healthy node back in rotation).
2. **Forgotten nodes**: a node out of rotation that no run holds and no
   operator has put on hold, and that stays healthy for `soak_seconds`
   (after a partition heals, after an escalation a human never got to), goes
   back in rotation through return-to-service, which resolves its incident.

Scheduled every 30 s, and started at once by a mutating run crashing (the
trigger in prefect.yaml). Both passes are idempotent: a crash already
handled is recorded (`crash-handled`) and never escalated twice.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Annotated

from prefect import flow
from pydantic import Field

from flows.client_upgrade import client_upgrade_resume
from flows.node_recovery import node_recovery
from flows.rotation import return_to_service
from tasks import guards, prefect_api, trigger
from tasks.audit import read_entries
from tasks.escalation import Kind
from tasks.runbook import Runbook
from tasks.steps import assess_nodes
from tasks.vocabulary import AUTOMATION_ONLY, EntryKind, Outcome

CRASH_HANDLED = "crash-handled"
# How far back a crashed run is looked for: a run older than this was someone's problem long ago.
LOOKBACK = timedelta(hours=24)
# Prefect's states in which a run's process is gone for good.
DEAD_STATES = {"CRASHED", "FAILED", "CANCELLED", "COMPLETED"}
SOAK_POLL_S = 5.0


def crashed_runs(now: datetime | None = None) -> list[dict]:
    """Runs that started a mutating record and died without an outcome, not handled yet.

    Each: {"run_id", "flow", "nodes", "step", "last", "lease_id", "state"}.
    """
    now = now or datetime.now(timezone.utc)
    entries = read_entries(since=now - LOOKBACK)
    runs: dict[str, dict] = {}
    handled = set()
    for e in entries:
        data = e.get("data") if isinstance(e.get("data"), dict) else {}
        kind, run_id = e.get("kind"), e.get("run_id")
        if kind == EntryKind.guard.value and data.get("name") == CRASH_HANDLED:
            handled.add(data.get("crashed_run"))
        if kind == EntryKind.started.value and data.get("resources") and not data.get("dry_run"):
            runs[run_id] = {"run_id": run_id, "flow": e.get("flow"), "resources": data["resources"], "step": None,
                            "last": None, "lease_id": None, "ended": False}
        run = runs.get(run_id)
        if run is None:
            continue
        run["last"] = f"{kind}: {str(data.get('command') or data.get('text') or data.get('label') or data.get('name') or '')[:120]}"
        if kind == EntryKind.note.value and data.get("step"):
            run["step"] = data["step"]
        if kind == EntryKind.guard.value and data.get("name") == "lease-taken":
            run["lease_id"] = data.get("lease_id")
        if kind == EntryKind.outcome.value:
            run["ended"] = True
    candidates = [r for r in runs.values() if not r["ended"] and r["run_id"] not in handled and r["run_id"] != "local"]
    out = []
    for run in candidates:
        state = _prefect_state(run["run_id"])
        if state in DEAD_STATES:
            run["state"] = state
            run["nodes"] = [r.split(":", 1)[1] for r in run["resources"] if r.startswith("node:")]
            out.append(run)
    return out


def _prefect_state(run_id: str) -> str | None:
    try:
        with prefect_api.client() as client:
            run = client.read_flow_run(run_id)
    except Exception:  # noqa: BLE001 - unknown to Prefect (or Prefect down): not ours to judge now
        return None
    return run.state.type.value if run.state else None


def out_of_rotation(rb: Runbook) -> dict[str, str]:
    """Nodes whose load-balancer server is not `ready`: node -> admin state (a read)."""
    out = {}
    for name in rb.inventory.load_balancers:
        states = {(s.backend, s.server): s for s in rb.balancer(name).server_states()}
        for node, n in rb.inventory.nodes.items():
            if n.lb and n.lb.balancer == name:
                s = states.get((n.lb.backend, n.lb.server))
                if s is not None and s.admin_state != "ready":
                    out[node] = s.admin_state
    return out


def soaked(rb: Runbook, candidates: list[str], soak_seconds: float) -> list[str]:
    """The candidates that stay healthy at every look over soak_seconds."""
    alive = set(candidates)
    deadline = time.monotonic() + soak_seconds
    while alive:
        health = assess_nodes(rb.inventory, sorted(alive))
        alive = {n for n in alive if health[n].healthy}
        if time.monotonic() >= deadline:
            break
        time.sleep(min(SOAK_POLL_S, max(0.0, deadline - time.monotonic())))
    return sorted(alive)


@flow(name="reconcile", log_prints=True)
def reconcile(
    soak_seconds: Annotated[float, Field(ge=0, le=3600, description="How long a node out of rotation must stay healthy before it goes back")] = 60,
    trigger_event_id: AUTOMATION_ONLY = None,
) -> dict:
    """Find crashed runs and forgotten nodes; put them right or hand them to a human."""
    rb = Runbook.open("reconcile", {"soak_seconds": soak_seconds}, trigger.describe("reconcile", trigger_event_id))
    if rb.trigger.automatic and (pause := guards.pause_state()).paused:
        rb.audit.guard("pause", f"automatic runs are paused (by {pause.by or '?'}: {pause.reason or 'no reason given'})")
        return rb.finish(Outcome.refused, "paused", "not acted on, automatic remediation is paused")

    crashes = crashed_runs()
    repaired: dict[str, str] = {}
    for run in crashes:
        where = run["step"] or "before its first step"
        rb.audit.guard(CRASH_HANDLED, f"run {run['run_id']} ({run['flow']}) died in step {where}; last record {run['last']}",
                       crashed_run=run["run_id"], step=where, nodes=run["nodes"], prefect_state=run["state"])
        rb.escalate(run["nodes"][0] if len(run["nodes"]) == 1 else run["flow"], Kind.RUN_CRASHED,
                    f"{run['flow']} run {run['run_id']} crashed in step {where}; the reconciler is putting it right",
                    {"nodes": ", ".join(run["nodes"]) or "-", "last record": run["last"], "Prefect state": run["state"]})
        if run["lease_id"]:
            try:
                guards.release_lease(run["lease_id"])
            except guards.LeaseError as exc:
                rb.audit.note("could not release the crashed run's lease; it expires on its own", error=str(exc))
        for node in run["nodes"]:
            if run["flow"] == "client-upgrade":  # its half-done change goes back to the approved old version first
                resumed = client_upgrade_resume(node=node, return_state=True)
                repaired[node] = _outcome(resumed) + ", "
            recovery = node_recovery(node=node, reason=f"repair after crashed run {run['run_id']}", return_state=True)
            repaired[node] = repaired.get(node, "") + _outcome(recovery)
            back = return_to_service(node=node, reason=f"healthy after crashed run {run['run_id']}", return_state=True)
            repaired[node] += f", {_outcome(back)}"

    holds = guards.holds()
    waiting = {n: s for n, s in out_of_rotation(rb).items() if n not in holds and n not in repaired}
    rb.audit.state("out-of-rotation", {"nodes": waiting, "on hold": sorted(holds)})
    returned = {}
    for node in soaked(rb, sorted(waiting), soak_seconds):
        back = return_to_service(node=node, reason=f"healthy and out of rotation for {soak_seconds:g}s with no run or hold",
                                 return_state=True)
        returned[node] = _outcome(back)
    detail = (f"{len(crashes)} crashed run(s) handled {repaired or ''}; {len(waiting)} node(s) out of rotation, "
              f"returned: {returned or 'none'}; on hold: {sorted(holds) or 'none'}")
    status = Outcome.succeeded if (crashes or returned) else Outcome.noop
    return rb.finish(status, "reconciled", detail, crashed=[r["run_id"] for r in crashes], repaired=repaired, returned=returned)


def _outcome(state) -> str:
    """A subflow's result word, whether it completed or failed (a failed repair was escalated by it)."""
    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001
        return f"failed: {exc}"
    return result.get("outcome", "?") if isinstance(result, dict) else str(result)
