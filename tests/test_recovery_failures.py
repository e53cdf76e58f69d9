"""node-recovery when recovery is impossible, against the real lab: the run
fails, a human is told at once, and the node is left out of rotation rather
than returned to serve traffic nobody has verified it can serve.

Taken from the hosts (supervisord's own log, sshd), HAProxy's runtime state,
the Slack/PagerDuty stand-in and the audit trail, never from the flow's word.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

import lab
from flows.node_recovery import node_recovery
from tests import fleet

# node-recovery is called in-process (no deployment): these start while the deployments are being registered.
pytestmark = pytest.mark.no_deployments

# Short enough for a test, long enough for a restarted anvil to answer (~1.5 s).
SHORT_DEADLINE_SECONDS = 8


def escalations(node: str) -> tuple[list[str], list[dict]]:
    """Slack texts and PagerDuty events about the node since the test began."""
    texts = [r["body"]["text"] for r in lab.stub_records("slack")
             if r["path"] == "/api/chat.postMessage" and node in r["body"].get("text", "")]
    pages = [r["body"] for r in lab.stub_records("pagerduty") if node in r["body"].get("dedup_key", "")]
    return texts, pages


def recover_expecting_escalation(node: str, reason: str) -> tuple[list[dict], dict, float]:
    """Run node-recovery for the node; it must fail and escalate. (entries, outcome, seconds)"""
    started = time.monotonic()
    state = node_recovery(node=node, reason=reason, return_state=True)
    took = time.monotonic() - started
    assert state.is_failed(), state.message
    entries = fleet.run_entries(state)
    outcome = fleet.outcome(entries)
    assert outcome["status"] == "escalated", outcome
    assert "left out of rotation" in outcome["detail"], outcome
    return entries, outcome, took


@pytest.fixture
def short_deadline(tmp_path, monkeypatch):
    """An inventory of the test's own: the lab's, with a short recovery deadline.
    The flow reads RUNBOOKS_INVENTORY when it runs, as a deployment would."""
    inventory = yaml.safe_load(Path(lab.status()["inventory"]).read_text())
    for chain in inventory["chains"].values():
        chain["recovery_deadline_seconds"] = SHORT_DEADLINE_SECONDS
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    monkeypatch.setenv("RUNBOOKS_INVENTORY", str(path))
    return SHORT_DEADLINE_SECONDS


def test_ssh_unreachable_during_a_recovery_fails_escalates_and_leaves_the_node_drained(healthy_fleet, audit_dir):
    node = "eth-a"  # on h1, with eth-b and eth-c (other hosts) serving lab-eth
    lab.fault(node, "partition")  # the host's link is down: no RPC, no SSH
    fleet.wait_status(node, {"down"})
    entries, outcome, took = recover_expecting_escalation(node, "down")
    assert "could not reach or restart" in outcome["detail"]
    # Drained, and still drained: once the partition heals it must not take
    # traffic until a recovery has verified it (the operator is told so).
    assert fleet.server(node).admin_state == "drain"
    commands = [e["data"].get("command", "") for e in entries if e["kind"] == "action"]
    assert any("state drain" in c for c in commands)
    assert not any("state ready" in c for c in commands)
    assert not any(" restart " in c for c in commands)  # it never reached the host
    texts, pages = escalations(node)
    assert any("did not recover" in t and "left out of rotation" in t for t in texts), texts
    assert [p["event_action"] for p in pages] == ["trigger"]  # P2: paged once
    assert took < 30, f"the run took {took:.1f}s to give up on an unreachable host"


def test_a_node_that_never_catches_up_stays_drained_and_escalates_after_the_deadline(healthy_fleet, audit_dir,
                                                                                     short_deadline):
    node = "eth-c"
    lab.fault(node, "lag")  # its sync source is held: a restart does not bring it back
    fleet.wait_status(node, {"stalled", "lagging"})
    before = fleet.spawns(node)
    entries, outcome, took = recover_expecting_escalation(node, "stalled")
    assert "after the deadline" in outcome["detail"]
    assert fleet.spawns(node) == before + 1  # it was restarted once, on the host
    assert fleet.server(node).admin_state == "drain"
    assert fleet.status_of(node) in ("stalled", "lagging")
    after = [e["data"]["data"] for e in entries if e["kind"] == "state" and e["data"]["label"] == "after"]
    assert after and after[0]["status"] in ("stalled", "lagging")
    texts, pages = escalations(node)
    assert any("did not recover" in t and "after the deadline" in t for t in texts), texts
    assert [p["event_action"] for p in pages] == ["trigger"]
    # It waited out the deadline, and not much more.
    assert short_deadline <= took < short_deadline + 20, took
