"""node-recovery against the real lab: what an operator would see on the hosts,
in HAProxy, in Slack and in the audit trail."""

from __future__ import annotations

from pathlib import Path

import pytest

import lab
from lab import topology
from flows.node_recovery import node_recovery
from inventory import InventoryError
from tests import fleet

# node-recovery is called in-process (no deployment): these start while the deployments are being registered.
pytestmark = pytest.mark.no_deployments


def recovered_correctly(node: str, state, before_pid):
    assert state.is_completed(), state.message
    # On the host: a new process, running, its head advancing.
    assert fleet.pid(node) not in (None, before_pid)
    assert fleet.head_advances(node)
    # In HAProxy: back in rotation (ready), and UP once its health check passes.
    fleet.wait_for(lambda: fleet.server(node).in_rotation, 10, what=f"{node} in rotation")
    # In Slack: the before/after report.
    messages = [r["body"] for r in lab.stub_records("slack") if r["path"] == "/api/chat.postMessage"]
    assert any(node in m["text"] and "recovered" in m["text"] for m in messages), messages
    # In the audit: the whole story, in order.
    entries = fleet.run_entries(state)
    kinds = fleet.kinds(entries)
    for kind in ("started", "state", "plan", "action", "outcome"):
        assert kind in kinds
    assert kinds.index("started") < kinds.index("plan") < kinds.index("action") < kinds.index("outcome")
    commands = [e["data"]["command"] for e in entries if e["kind"] == "action"]
    assert any("state drain" in c for c in commands) and any("state ready" in c for c in commands)
    restart = [e["data"] for e in entries if e["kind"] == "action" and " restart " in e["data"]["command"]]
    assert restart and restart[0]["exit_code"] == 0 and restart[0]["host"].endswith(":22")
    labels = [e["data"]["label"] for e in entries if e["kind"] == "state"]
    assert {"before", "diagnostics", "after"} <= set(labels)
    # The client and version the node reported, before and after: what an upgrade compares.
    states = {e["data"]["label"]: e["data"]["data"] for e in entries if e["kind"] == "state"}
    anvil = topology.FLEET_ANVIL_VERSION  # the fleet runs its hosts' install, not the references' anvil
    assert (states["after"]["client"], states["after"]["version"]) == ("anvil", anvil), states["after"]
    if states["before"]["status"] != "down":  # a dead node reports nothing
        assert (states["before"]["client"], states["before"]["version"]) == ("anvil", anvil), states["before"]
    assert fleet.outcome(entries)["status"] == "succeeded"


@pytest.mark.parametrize("fault,seen_as", [("stall", {"stalled"}), ("freeze", {"down"}), ("kill", {"down"})])
def test_a_broken_node_is_restarted_verified_and_put_back_in_rotation(healthy_fleet, fault, seen_as):
    node = "eth-b"
    before_pid = fleet.pid(node)
    lab.fault(node, fault)
    fleet.wait_status(node, seen_as)
    state = node_recovery(node=node, reason=fault, return_state=True)
    recovered_correctly(node, state, before_pid)
    # A frozen node (it runs, it does not answer) is killed after its diagnostics, not waited out by the
    # restart's stop timeout; a stalled one is restarted gracefully, a dead one simply started.
    entries = fleet.run_entries(state)
    kills = [e["data"] for e in entries if e["kind"] == "action" and e["data"].get("action") == "kill"]
    assert [k["exit_code"] for k in kills] == ([0] if fault == "freeze" else []), kills
    if fault == "freeze":
        order = [e["data"].get("label") if e["kind"] == "state" else e["data"].get("action")
                 for e in entries if e["kind"] in ("state", "action")]
        assert order.index("diagnostics") < order.index("kill") < order.index("restart"), order


def test_a_healthy_node_is_left_alone(healthy_fleet):
    node = "eth-a"
    before = (fleet.pid(node), fleet.server(node).admin_state, fleet.sshd_sessions())
    state = node_recovery(node=node, reason="operator asked", return_state=True)
    assert state.is_completed()
    assert (fleet.pid(node), fleet.server(node).admin_state, fleet.sshd_sessions()) == before
    entries = fleet.run_entries(state)
    assert "action" not in fleet.kinds(entries)
    assert fleet.outcome(entries)["status"] == "noop"
    assert not lab.stub_records("slack")


def test_a_node_that_cannot_restart_is_left_drained_escalated_and_the_run_fails(healthy_fleet):
    node = "eth-c"
    binary = Path(fleet.node(node)["binary"])
    binary.unlink()  # the node's binary is gone: supervisord cannot start it again
    lab.fault(node, "kill")
    fleet.wait_status(node, {"down"})
    state = node_recovery(node=node, reason="down", return_state=True)
    assert state.is_failed()
    # supervisord has given up on it: FATAL after its one retry (startretries=1) of a start that failed
    # within startsecs, or EXITED when the failing start outlived startsecs (a loaded machine). No process.
    fleet.wait_for(lambda: fleet.node(node)["state"] in ("FATAL", "EXITED"), 15, what=f"{node} to be FATAL or EXITED")
    assert fleet.pid(node) is None
    assert fleet.server(node).admin_state == "drain"
    messages = [r["body"]["text"] for r in lab.stub_records("slack") if r["path"] == "/api/chat.postMessage"]
    assert any(node in m and "did not recover" in m for m in messages), messages
    entries = fleet.run_entries(state)
    assert fleet.outcome(entries)["status"] == "escalated"
    restart = [e["data"] for e in entries if e["kind"] == "action" and " restart " in e["data"]["command"]]
    assert restart and restart[0]["exit_code"] != 0


def test_a_dry_run_renders_the_plan_and_runs_nothing_on_any_host(healthy_fleet):
    node = "eth-b"
    lab.fault(node, "stall")
    fleet.wait_status(node, {"stalled"})
    before = (fleet.pid(node), fleet.server(node).admin_state, fleet.sshd_sessions())
    state = node_recovery(node=node, reason="stalled", dry_run=True, return_state=True)
    assert state.is_completed()
    # Asserted on the hosts: no SSH login anywhere, same process, same rotation.
    assert (fleet.pid(node), fleet.server(node).admin_state, fleet.sshd_sessions()) == before
    assert fleet.status_of(node) == "stalled"
    entries = fleet.run_entries(state)
    assert "plan" in fleet.kinds(entries) and "action" not in fleet.kinds(entries)
    assert "dry run" in fleet.outcome(entries)["detail"]


def test_the_last_healthy_server_of_a_backend_is_never_drained(healthy_fleet):
    # eth-a and eth-c are healthy but out of rotation (maintenance): eth-b is
    # the only server left serving eth_rpc, so it must not be drained or restarted.
    for peer in ("eth-a", "eth-c"):
        lb = fleet.node(peer)["lb"]
        fleet.HAPROXY.drain(lb["backend"], lb["server"])
    lab.fault("eth-b", "stall")
    fleet.wait_status("eth-b", {"stalled"})
    before = (fleet.pid("eth-b"), fleet.sshd_sessions())
    state = node_recovery(node="eth-b", reason="stalled", return_state=True)
    assert state.is_failed()
    assert fleet.server("eth-b").admin_state == "ready"
    assert (fleet.pid("eth-b"), fleet.sshd_sessions()) == before
    entries = fleet.run_entries(state)
    assert "last healthy server" in fleet.outcome(entries)["detail"]
    assert fleet.outcome(entries)["status"] == "escalated"


def test_a_chain_wide_problem_restarts_nothing(healthy_fleet):
    # Both nodes of lab-op sick at once: a chain incident, not two node problems.
    for node in ("op-a", "op-b"):
        lab.fault(node, "stall")
    for node in ("op-a", "op-b"):
        fleet.wait_status(node, {"stalled"})
    before = (fleet.pid("op-a"), fleet.pid("op-b"), fleet.sshd_sessions())
    state = node_recovery(node="op-a", reason="stalled", return_state=True)
    assert state.is_completed()
    assert (fleet.pid("op-a"), fleet.pid("op-b"), fleet.sshd_sessions()) == before
    assert fleet.server("op-a").admin_state == "ready"
    entries = fleet.run_entries(state)
    assert fleet.outcome(entries)["status"] == "refused"
    assert any(e["kind"] == "guard" and e["data"]["name"] == "chain-incident" for e in entries)


def test_an_unknown_node_is_refused_before_anything_runs(healthy_fleet):
    before = fleet.sshd_sessions()
    with pytest.raises(InventoryError, match="node 'eth-z' is not in the inventory"):
        node_recovery(node="eth-z")
    assert fleet.sshd_sessions() == before


def test_shell_metacharacters_in_the_node_parameter_are_refused(healthy_fleet, tmp_path):
    marker = tmp_path / "pwned"
    before = fleet.sshd_sessions()
    with pytest.raises(Exception, match="pattern"):
        node_recovery(node=f"eth-a; touch {marker}")
    assert not marker.exists()
    assert fleet.sshd_sessions() == before
