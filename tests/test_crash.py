"""A mutating run whose process dies half way is put right without a human.

A node-recovery run is started through its deployment (the lab's real
worker runs it in its own process), and that process is SIGKILLed at each
step in turn: after the drain, after the old node process stopped, after the
restart, and after verification but before the undrain. Only the reconciler's
own trigger (on `prefect.flow-run.Crashed`) is switched on. Every time the
node must end healthy and in rotation, with the crash escalated exactly once,
naming the step it died in.

Facts come from the hosts (/proc, HAProxy's runtime state), Prefect's record
of the run, the Slack/PagerDuty stand-ins and the audit trail.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prefect.deployments import run_deployment

import lab
from flows.circuit import close_circuit
from flows.reconcile import CRASH_HANDLED, reconcile
from lab import topology
from tasks import prefect_api
from tasks.audit import read_entries
from tests import fleet

RECONCILE_TRIGGER = "reconcile-on-crashed-run"
# From the kill to the node healthy and back in rotation: the worker notices
# the dead process (~5 s), the reconcile run starts (~5 s), node-recovery
# restarts and verifies (~10 s), return-to-service undrains.
PUT_RIGHT_WITHIN_S = 120


@pytest.fixture
def reconciler_on(healthy_fleet):
    """Only the reconciler's crash trigger on: no alert, schedule or other trigger acts."""
    with fleet.one_automation_on(trigger=RECONCILE_TRIGGER):
        yield


def run_entries(run_id: str) -> list[dict]:
    return read_entries(run_id=run_id)


def actions(entries: list[dict]) -> list[dict]:
    return [e["data"] for e in entries if e["kind"] == "action"]


def drained(entries) -> bool:
    return any("state drain" in a.get("command", "") for a in actions(entries))


def restarted(entries) -> bool:
    return any(a.get("action") == "restart" for a in actions(entries))


def verified(entries) -> bool:
    return any(e["kind"] == "state" and e["data"].get("label") == "after" for e in entries)


# kill point -> (when to kill, given the run's entries and the node's old pid;
#                what must still hold once the process is frozen, so the kill
#                lands where the name says)
KILL_POINTS: dict[str, tuple[Callable, Callable]] = {
    "after-drain": (lambda entries, node, pid: drained(entries),
                    lambda entries, node, pid: fleet.pid(node) == pid and not restarted(entries)),
    "after-stop": (lambda entries, node, pid: not os.path.exists(f"/proc/{pid}"),
                   lambda entries, node, pid: not restarted(entries)),
    "after-restart": (lambda entries, node, pid: restarted(entries),
                      lambda entries, node, pid: not verified(entries)),
    "before-undrain": (lambda entries, node, pid: verified(entries),
                       lambda entries, node, pid: fleet.server(node).admin_state == "drain"),
}
NODES = {"after-drain": "eth-b", "after-stop": "eth-c", "after-restart": "op-a", "before-undrain": "op-b"}


def wait_for_pid(run_id: str, timeout: float = 60) -> int:
    def started():
        for e in run_entries(run_id):
            if e["kind"] == "started":
                return e["data"]["process"]["pid"]
        return None
    return fleet.wait_for(started, timeout, interval=0.05, what=f"run {run_id} to start its audit record")


def kill_at(run_id: str, node: str, point: str) -> None:
    """SIGKILL the run's process the moment it reaches the kill point."""
    when, still = KILL_POINTS[point]
    pid = wait_for_pid(run_id)
    old_node_pid = fleet.pid(node)
    deadline = time.monotonic() + 90
    while not when(run_entries(run_id), node, old_node_pid):
        assert time.monotonic() < deadline, f"run {run_id} never reached {point}"
        time.sleep(0.005)
    os.kill(pid, signal.SIGSTOP)  # frozen: check where it is before it goes on
    try:
        # The run's process was forked by the lab's prestart server (deployments/prestart.py), not started
        # cold: killing it is killing what the worker's runs really are.
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        region = topology.HOSTS[topology.NODES[node].host].region  # the run executes in its node's region
        assert parent == lab.status()["services"][f"prestart-{region}"]["pid"], f"run process {pid}: parent {parent}"
        entries = run_entries(run_id)
        assert still(entries, node, old_node_pid), f"the run went past {point} before it was stopped: {entries[-3:]}"
        assert not any(e["kind"] == "outcome" for e in entries)
    finally:
        os.kill(pid, signal.SIGKILL)


def crash_messages(run_id: str) -> list[str]:
    """The crash escalations for this run (its return to rotation is announced separately)."""
    return [r["body"]["text"] for r in lab.stub_records("slack")
            if r["path"] == "/api/chat.postMessage" and run_id in r["body"].get("text", "")
            and "crashed in step" in r["body"]["text"]]


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_run_killed_at_each_step_is_put_right_and_escalated_once(reconciler_on, point):
    node = NODES[point]
    # Earlier tests' automatic restarts of this node must not spend the budget the repair needs.
    close_circuit(node=node, operator="tests", note="a fresh budget for the crash test")
    lab.fault(node, "stall")
    fleet.wait_status(node, {"stalled"})
    started = time.time()
    run = run_deployment("node-recovery/node-recovery", parameters={"node": node, "reason": "stalled"}, timeout=0)
    run_id = str(run.id)
    kill_at(run_id, node, point)
    killed = time.monotonic()

    # Prefect sees the run die (the worker reports it) and the reconciler takes it.
    def crashed():
        with prefect_api.client() as client:
            state = client.read_flow_run(run.id).state
        return state.type.value == "CRASHED" and state
    fleet.wait_for(crashed, 60, what=f"run {run_id} to be reported Crashed")

    def put_right():
        handled = [e for e in read_entries(kind="guard", contains=run_id) if e["data"].get("name") == CRASH_HANDLED]
        return (handled and fleet.server(node).admin_state == "ready" and fleet.status_of(node) == "healthy"
                and handled)
    [handled] = fleet.wait_for(put_right, PUT_RIGHT_WITHIN_S, interval=1, what=f"{node} back healthy and in rotation")
    took = time.monotonic() - killed

    assert handled["data"]["crashed_run"] == run_id and handled["data"]["nodes"] == [node]
    assert handled["data"]["step"] != "before its first step", handled  # it names where the run died
    [message] = crash_messages(run_id)
    assert handled["data"]["step"] in message
    reconciles = fleet.wait_for(lambda: (runs := fleet.flow_runs("reconcile", started))
                                and all(r.state and r.state.is_final() for r in runs) and runs,
                                60, what="the reconcile run to finish")
    assert all(r.state.is_completed() for r in reconciles), reconciles
    assert took < PUT_RIGHT_WITHIN_S

    # A later pass (the schedule's) finds nothing left to do for this run: no second escalation.
    assert reconcile(soak_seconds=0)["outcome"] == "reconciled"
    assert len(crash_messages(run_id)) == 1
    handled_again = [e for e in read_entries(kind="guard", contains=run_id) if e["data"].get("name") == CRASH_HANDLED]
    assert len(handled_again) == 1

