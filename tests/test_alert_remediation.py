"""Alert-triggered remediation that cannot make an incident worse.

Real Prometheus, Alertmanager, alert bridge, Prefect server and worker, lab
nodes. Restarts are counted on the hosts (supervisord's own log), never taken
from the flow's word.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from prefect.events import emit_event

import lab
from flows.circuit import close_circuit
from flows.node_recovery import node_recovery
from inventory import load_inventory
from lab import topology
from lab.credentials import lab_secrets
from tasks import guards
from tasks.audit import read_entries
from tasks.events import NODE_UNHEALTHY, node_resource
from tests import fleet

BRIDGE = "http://127.0.0.1:19200/alerts"
ALERTMANAGER = "http://127.0.0.1:19093/api/v2/alerts"


def alert(node: str, status: str = "firing", fingerprint: str | None = None) -> dict:
    return {
        "status": status,
        "labels": {"alertname": "NodeStalled", "node": node, "chain": "lab-eth", "severity": "critical", "reason": "stalled"},
        "annotations": {"summary": f"{node} head is not advancing"},
        "startsAt": datetime.now(timezone.utc).isoformat(),
        "endsAt": datetime.now(timezone.utc).isoformat() if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:19090/graph",
        "fingerprint": fingerprint or uuid.uuid4().hex[:16],
    }


def deliver(*alerts: dict) -> httpx.Response:
    """One Alertmanager webhook (payload version 4) to the bridge, with the lab's token."""
    token = lab_secrets(lab.lab_dir())["bridge_token"]
    body = {"version": "4", "groupKey": "test", "truncatedAlerts": 0, "status": alerts[0]["status"],
            "receiver": "runbooks-bridge", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:19093", "alerts": list(alerts)}
    r = httpx.post(BRIDGE, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r


def recovery_runs(node: str, since: float, final: bool = True) -> list:
    return [r for r in fleet.flow_runs("node-recovery", since)
            if r.parameters.get("node") == node and (not final or (r.state and r.state.is_final()))]


def settle(node: str, since: float, quiet_s: float = 20, timeout: float = 240) -> list:
    """Wait until node-recovery runs for the node have all finished and none has started for quiet_s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = recovery_runs(node, since, final=False)
        if runs and all(r.state and r.state.is_final() for r in runs):
            newest = max(r.created.timestamp() for r in runs)
            if time.time() - newest > quiet_s:
                return runs
        time.sleep(1)
    raise AssertionError(f"node-recovery runs for {node} did not settle within {timeout}s")


def outcomes(runs) -> list[str]:
    return [fleet.outcome(read_entries(run_id=str(r.id)))["status"] for r in runs]


@pytest.fixture
def alerts_on(healthy_fleet):
    """Triggers on, fleet-health's schedule off: only alerts start runbooks."""
    with fleet.automation_on(schedules=False):
        yield
    # Let the alerts of this test resolve before the next one starts.
    fleet.restore_fleet()


def test_a_stalled_node_is_alerted_on_and_recovered_with_no_human_action(alerts_on):
    node = "eth-a"
    fleet.fresh_restart_budget(node)
    before = fleet.spawns(node)
    fault_at = time.time()
    lab.fault(node, "stall")
    run = fleet.wait_for(lambda: next(iter(recovery_runs(node, fault_at)), None), 180, 1,
                         what=f"a finished node-recovery run for {node}")
    assert run.state.is_completed(), run.state.message
    fleet.wait_for(lambda: fleet.status_of(node) == "healthy" and fleet.server(node).in_rotation, 30,
                   what=f"{node} healthy and in rotation")
    assert fleet.spawns(node) == before + 1
    # The audit names the alert and the event that started the run.
    record = [e for e in read_entries(run_id=str(run.id)) if e["kind"] == "started"][0]["data"]
    # A triggered run executes in its node's region, on that region's worker (deployments/regional_worker.py).
    region = topology.HOSTS[topology.NODES[node].host].region
    assert record["placement"] == {"region": region, "ran_in": region, "fallback": False}, record["placement"]
    started = record["trigger"]
    assert started["event"] == "runbooks.alert.firing"
    assert started["event_id"] == run.parameters["trigger_event_id"]
    assert started["alert"]["alertname"] == "NodeStalled" and started["alert"]["fingerprint"]
    assert started["alert"]["startsAt"]


def test_an_alert_storm_for_one_node_restarts_it_exactly_once(alerts_on):
    node = "eth-b"
    fleet.fresh_restart_budget(node)
    lab.fault(node, "stall")
    fleet.wait_status(node, {"stalled"})
    before = fleet.spawns(node)
    storm_at = time.time()
    for i in range(50):  # 50 deliveries, each a different alert, spread over ~8 s
        deliver(alert(node))
        time.sleep(max(0.0, storm_at + (i + 1) * 0.16 - time.time()))
    assert time.time() - storm_at < 10.5
    runs = settle(node, storm_at)
    assert fleet.spawns(node) == before + 1, "the host saw more (or fewer) than one restart"
    assert outcomes(runs).count("succeeded") == 1


def test_a_flapping_node_is_restarted_within_budget_then_escalated_once_and_left_alone(healthy_fleet, tmp_path, monkeypatch):
    # A trail of its own: the budget is counted from the audit, so earlier
    # tests' restarts of this node must not count here.
    monkeypatch.setenv("RUNBOOKS_AUDIT_DIR", str(tmp_path / "audit"))
    node = "op-b"
    budget = load_inventory().chain_of(node).restart_budget
    assert budget.max_restarts == 3
    before = fleet.spawns(node)
    last_run = [time.monotonic()]

    def flap(backoff_s: float = 0.0) -> dict:
        if not fleet.node(node)["fault"]:  # a refused run leaves it stalled
            lab.fault(node, "stall")
        fleet.wait_status(node, {"stalled"})
        event = emit_event(event=NODE_UNHEALTHY, resource=node_resource(node, "lab-op", "stalled"),
                           payload={"problem": "stalled"})
        # The back-off this restart needs after the last (counted from the end of the last run, which is
        # after its restart): never refused for back-off alone. Waiting for the stall took part of it.
        time.sleep(max(0.0, last_run[0] + backoff_s - time.monotonic()))
        try:
            return node_recovery(node=node, reason="stalled", trigger_event_id=str(event.id))
        finally:
            last_run[0] = time.monotonic()

    waits = [budget.backoff_seconds[min(n, len(budget.backoff_seconds) - 1)] for n in range(budget.max_restarts)]
    results = [flap(wait) for wait in waits]
    assert [r["outcome"] for r in results] == ["recovered"] * budget.max_restarts
    assert fleet.spawns(node) == before + budget.max_restarts

    pages_before = len(lab.stub_records("pagerduty"))
    assert flap()["outcome"] == "circuit-open"  # budget spent: the circuit opens, humans are told once
    assert flap()["outcome"] == "circuit-open"  # still open: no restart, no second page
    assert fleet.spawns(node) == before + budget.max_restarts
    pages = lab.stub_records("pagerduty")[pages_before:]
    assert len(pages) == 1 and pages[0]["body"]["event_action"] == "trigger"
    assert guards.circuit_state(node) == "open"
    opened = [e for e in read_entries(node=node, kind="guard") if e["data"]["name"] == "circuit-open"]
    assert len(opened) == 1

    close_circuit(node=node, operator="alice", note="disk replaced, node stable")
    assert guards.circuit_state(node) == "closed"
    assert flap()["outcome"] == "recovered"  # counted afresh after an operator closed it
    assert fleet.spawns(node) == before + budget.max_restarts + 1


def test_a_chain_wide_halt_restarts_nothing_and_escalates_once(alerts_on):
    chain_nodes = ["eth-a", "eth-b", "eth-c"]
    before = {n: fleet.spawns(n) for n in chain_nodes}
    halt_at = time.time()
    pages_before = len(lab.stub_records("pagerduty"))
    for name in ["ref-eth", *chain_nodes]:
        lab.fault(name, "stall")
    for n in chain_nodes:
        fleet.wait_for(lambda n=n: recovery_runs(n, halt_at), 180, 1, what=f"a finished node-recovery run for {n}")
    for n in chain_nodes:
        settle(n, halt_at, quiet_s=10)
    assert {n: fleet.spawns(n) for n in chain_nodes} == before, "a node was restarted during a chain incident"
    for n in chain_nodes:
        assert fleet.server(n).admin_state == "ready"
    pages = [p for p in lab.stub_records("pagerduty")[pages_before:] if p["body"]["event_action"] == "trigger"]
    assert len(pages) == 1 and "lab-eth" in pages[0]["body"]["dedup_key"]
    incidents = [e for e in read_entries(kind="guard", since=datetime.fromtimestamp(halt_at, timezone.utc))
                 if e["data"]["name"] == "chain-incident"]
    assert incidents and sum(1 for e in incidents if e["data"]["escalated"]) == 1


def test_with_the_pause_switch_on_alert_triggered_runs_act_on_nothing(alerts_on):
    node = "eth-c"
    before = fleet.spawns(node)
    guards.set_pause(True, "maintenance window", "alice")
    try:
        fault_at = time.time()
        lab.fault(node, "stall")
        run = fleet.wait_for(lambda: next(iter(recovery_runs(node, fault_at)), None), 180, 1,
                             what=f"a finished node-recovery run for {node}")
    finally:
        guards.set_pause(False, "maintenance over", "alice")
    entries = read_entries(run_id=str(run.id))
    assert fleet.outcome(entries)["status"] == "refused"
    assert any(e["kind"] == "guard" and e["data"]["name"] == "pause" for e in entries)
    assert "action" not in fleet.kinds(entries)
    assert fleet.spawns(node) == before
    assert fleet.status_of(node) == "stalled"


def test_an_alert_that_resolves_before_the_run_acts_restarts_nothing(alerts_on):
    node = "eth-b"
    # The node is really broken, so that without the resolved-alert guard this
    # run would restart it. Its own alerts are silenced: only the alert sent
    # here (fired, then resolved before the run acts) may start a run.
    with fleet.alerts_silenced(node):
        try:
            lab.fault(node, "stall")
            fleet.wait_status(node, {"stalled"})
            before, pid_before = fleet.spawns(node), fleet.pid(node)
            sent_at = time.time()
            fingerprint = uuid.uuid4().hex[:16]
            deliver(alert(node, fingerprint=fingerprint))
            deliver(alert(node, status="resolved", fingerprint=fingerprint))
            run = fleet.wait_for(lambda: next(iter(recovery_runs(node, sent_at)), None), 120, 1,
                                 what=f"a finished node-recovery run for {node}")
            entries = read_entries(run_id=str(run.id))
            assert fleet.outcome(entries)["status"] == "noop", fleet.outcome(entries)
            assert any(e["kind"] == "guard" and e["data"]["name"] == "alert-resolved" for e in entries)
            assert "action" not in fleet.kinds(entries)  # no drain, no restart
            assert fleet.spawns(node) == before and fleet.pid(node) == pid_before
            assert fleet.status_of(node) == "stalled" and fleet.server(node).admin_state == "ready"
            assert [r.id for r in recovery_runs(node, sent_at, final=False)] == [run.id]
        finally:
            # Heal under the silence, so its own stall alert never reaches the bridge.
            lab.heal(node)
            fleet.wait_for(lambda: not fleet.active_alerts(node), 60, what=f"{node}'s alerts to resolve")


def test_pagerduty_gets_one_incident_per_node_incident_updated_by_repeats_and_resolved_on_recovery(healthy_fleet):
    node = "eth-c"
    binary = Path(fleet.node(node)["binary"])
    pages_before = len(lab.stub_records("pagerduty"))
    binary.unlink()
    lab.fault(node, "kill")
    fleet.wait_status(node, {"down"})
    for _ in range(2):  # the node cannot come back: the same incident, paged twice
        assert node_recovery(node=node, reason="down", return_state=True).is_failed()
    fleet.restore_fleet()
    lab.fault(node, "kill")  # binary back: this time the runbook recovers it
    fleet.wait_status(node, {"down"})
    assert node_recovery(node=node, reason="down", return_state=True).is_completed()
    pages = [p["body"] for p in lab.stub_records("pagerduty")[pages_before:]]
    assert [p["event_action"] for p in pages] == ["trigger", "trigger", "resolve"]
    assert len({p["dedup_key"] for p in pages}) == 1 and node in pages[0]["dedup_key"]
    assert pages[0]["payload"]["severity"] in ("critical", "error")


# ---------------------------------------------------------------------------
# Alerts as operators write them, through the lab's real Prometheus and Alertmanager
# ---------------------------------------------------------------------------

def test_an_operators_rule_that_names_the_node_only_by_instance_recovers_it(alerts_on):
    """lab/community_rules.yml: PrometheusTargetMissing on the nodes' client metrics
    (`up{job="clients"} == 0`), no node and no reason label; the bridge finds the
    node from `instance` and the runbook from the alert's name."""
    from tasks.events import read_event

    node = "eth-c"
    fleet.fresh_restart_budget(node)
    before = fleet.spawns(node)
    fault_at = time.time()
    with fleet.alerts_silenced(node):  # our own NodeDown names the node: only the operator's rule may act
        lab.fault(node, "kill")
        run = fleet.wait_for(lambda: next(iter(recovery_runs(node, fault_at)), None), 180, 1,
                             what=f"a finished node-recovery run for {node}")
    assert run.state.is_completed(), run.state.message
    assert fleet.spawns(node) == before + 1
    event = read_event(run.parameters["trigger_event_id"])
    labels = event["payload"]["labels"]
    assert labels["alertname"] == "PrometheusTargetMissing" and "node" not in labels and "reason" not in labels
    assert labels["instance"] == f"{fleet.node(node)['address']}:6060"
    assert event["payload"]["reason"] == "down" and event["payload"]["runbook"] == "node-recovery"
    assert run.parameters["reason"] == "down"


def test_an_alert_for_no_node_is_recorded_through_alertmanager_and_starts_nothing(alerts_on):
    from deployments.alert_routing import fingerprint

    def unroutable_count() -> float:
        text = httpx.get("http://127.0.0.1:19200/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('runbooks_bridge_alerts_total{outcome="unroutable"'))

    before, sent_at = unroutable_count(), time.time()
    labels = {"alertname": "PrometheusTargetMissing", "instance": "10.213.7.99:6060", "job": "clients",
              "severity": "critical", "test_run": uuid.uuid4().hex}
    now = datetime.now(timezone.utc)
    httpx.post(ALERTMANAGER, json=[{"labels": labels, "startsAt": now.isoformat()}], timeout=5).raise_for_status()
    try:
        # Alertmanager's own fingerprint for these labels is the one the bridge computes for senders without one.
        [held] = fleet.wait_for(lambda: httpx.get(ALERTMANAGER, params={"filter": f'test_run="{labels["test_run"]}"'},
                                                  timeout=5).json(), 10, what="the alert in Alertmanager")
        assert held["fingerprint"] == fingerprint(labels)
        flt = {"event": {"name": ["runbooks.bridge.unroutable"]},
               "resource": {"id": [f"runbooks.alert.{held['fingerprint']}"]}}
        [record] = fleet.wait_for(lambda: httpx.post(f"{os.environ['PREFECT_API_URL']}/events/filter",
                                                     json={"filter": flt, "limit": 5}, timeout=10).json()["events"],
                                  30, what="the bridge's record of the unroutable alert")
        assert record["payload"]["why"] == "instance='10.213.7.99:6060' matches no node's endpoint or host"
        assert unroutable_count() >= before + 1
        time.sleep(5)  # a run it started would exist by now
        assert [r for r in fleet.flow_runs("node-recovery", sent_at)] == []
    finally:  # resolve it
        httpx.post(ALERTMANAGER, json=[{"labels": labels, "startsAt": now.isoformat(),
                                        "endsAt": datetime.now(timezone.utc).isoformat()}], timeout=5)
