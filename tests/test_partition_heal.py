"""A host cut off from the network: its nodes' recoveries fail and escalate,
and once it is back they return to rotation on their own, except a node an
operator holds, which stays out until released.

Real partition (the host's veth down), real node-recovery runs, the
reconcile deployment on its own schedule (every 30 s, soak 30 s, as
shipped; its next slot brought forward once the host is back),
HAProxy's runtime state and the PagerDuty stand-in.
"""

from __future__ import annotations

import time

import lab
from flows.node_recovery import node_recovery
from flows.rotation import hold_node, release_node
from tasks.audit import read_entries
from tests import fleet

HOST_NODES = ("eth-a", "op-a")  # both on h1
HELD = "op-a"
SOAK_S = 30  # prefect.yaml's reconcile parameters


def returned(run) -> list[str]:
    """The nodes a finished reconcile pass put back in rotation (its return-to-service runs)."""
    return sorted(e["data"]["parameters"]["node"] for e in read_entries(kind="started")
                  if e["flow"] == "return-to-service" and e["data"]["trigger"].get("parent_run") == str(run.id))


def pages(node: str) -> list[str]:
    return [r["body"]["event_action"] for r in lab.stub_records("pagerduty") if node in r["body"].get("dedup_key", "")]


def test_a_partitioned_host_comes_back_in_rotation_by_itself_but_a_held_node_waits(healthy_fleet):
    lab.fault("eth-a", "partition")  # takes h1's link down: eth-a and op-a
    for node in HOST_NODES:
        fleet.wait_status(node, {"down"})
    held = hold_node(node=HELD, operator="alice", reason="disk swap on h1 after the outage")
    try:
        _heal_and_wait(held)
    finally:  # a hold left in the lab's trail would keep op-a out of every later test
        released = release_node(node=HELD, operator="alice", note="disk swapped")
    assert released["status"] == "succeeded", released
    assert fleet.server(HELD).admin_state == "ready" and fleet.status_of(HELD) == "healthy"


def _heal_and_wait(held: dict) -> None:
    assert held["outcome"] == "held" and fleet.server(HELD).admin_state == "drain"

    failed = node_recovery(node="eth-a", reason="down", return_state=True)
    assert failed.is_failed()
    assert fleet.outcome(fleet.run_entries(failed))["status"] == "escalated"
    assert fleet.server("eth-a").admin_state == "drain" and pages("eth-a") == ["trigger"]
    refused = node_recovery(node=HELD, reason="down", return_state=True)
    assert fleet.outcome(fleet.run_entries(refused))["result"] == "on-hold", fleet.run_entries(refused)[-1]

    lab.heal("eth-a")
    healed, healed_at = time.monotonic(), time.time()
    for node in HOST_NODES:
        fleet.wait_status(node, {"healthy", "out-of-rotation"})
    # Its next pass 12 s from now rather than up to 30 s later (the interval stays): it soaks 30 s itself.
    with fleet.schedule_due_soon("reconcile/reconcile"), fleet.one_automation_on(schedule="reconcile/reconcile"):
        fleet.wait_for(lambda: fleet.server("eth-a").admin_state == "ready", SOAK_S + 60, interval=1,
                       what="eth-a back in rotation with no human action")
        back_after = time.monotonic() - healed
        # The very pass that returned eth-a looked at op-a too (both healed with h1, so both soaked the same
        # time) and left it out because it is held: its own record says so, and HAProxy agrees.
        [done] = fleet.wait_for(lambda: [r for r in fleet.flow_runs("reconcile", healed_at)
                                         if r.state and r.state.is_final() and returned(r) == ["eth-a"]][:1],
                                60, interval=1, what="the reconcile pass that returned eth-a to end")
        assert done.state.is_completed(), done.state
        [seen] = [e["data"]["data"] for e in read_entries(run_id=str(done.id), kind="state")
                  if e["data"]["label"] == "out-of-rotation"]
        assert HELD in seen["on hold"] and HELD not in seen["nodes"], seen
        assert fleet.server(HELD).admin_state == "drain"
    assert back_after < SOAK_S + 60
    assert fleet.status_of("eth-a") == "healthy"
    assert pages("eth-a") == ["trigger", "resolve"]  # returning it closed the incident
