"""The alert bridge turns Alertmanager webhooks into Prefect events, and nothing else.

Runs the real bridge (`python -m deployments.alert_bridge`) as a subprocess
against a real Prefect server and checks what landed with
`POST {api}/events/filter`.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent


from tests.processes import free_port, stop_process  # noqa: E402


# ---------------------------------------------------------------------------
# The bridge under test
# ---------------------------------------------------------------------------

INVENTORY = """
chains:
  lab-eth:
    family: ethereum
    references: ["http://127.0.0.1:9/"]
    max_lag_blocks: 5
    max_head_age_seconds: 8
hosts:
  h1: {address: 127.0.0.1, ssh_user: ops, ssh_identity_block: lab-ssh, region: eu}
nodes:
  eth-a:
    chain: lab-eth
    client: anvil
    host: h1
    service: {manager: supervisor, name: eth-a}
    rpc_url: http://127.0.0.1:9/
    metrics_url: http://127.0.0.1:6060/debug/metrics/prometheus
    datadir: /var/tmp/eth-a
  eth-b:
    chain: lab-eth
    client: anvil
    host: h1
    service: {manager: supervisor, name: eth-b}
    rpc_url: http://127.0.0.1:10/
    datadir: /var/tmp/eth-b
"""

NODE_ENTRY = """
  {name}:
    chain: lab-eth
    client: anvil
    host: h1
    service: {{manager: supervisor, name: {name}}}
    rpc_url: http://127.0.0.1:9/
    datadir: /var/tmp/{name}
"""

TOKEN = "brg-" + secrets.token_hex(20)
BASIC_USER, BASIC_PASSWORD = "alertmanager", "pw-" + secrets.token_hex(12)
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class Bridge:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path, inventory: Path) -> None:
        self.url, self.proc, self.log, self.inventory = url, proc, log, inventory
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(10.0, connect=2.0))

    def post(self, body, headers=BEARER, **kwargs) -> httpx.Response:
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        return self.http.post("/alerts", content=body, headers=headers, **kwargs)


def start_bridge(tmp: Path, prefect_api: str, env_extra: dict | None = None,
                 with_credentials: bool = True) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BRIDGE_"))} | {
        "PREFECT_API_URL": prefect_api,
        "RUNBOOKS_INVENTORY": str(tmp / "inventory.yaml"),
        "PREFECT_HOME": str(tmp / "prefect-home"),
    }
    if with_credentials:
        env |= {"BRIDGE_BEARER_TOKEN": TOKEN, "BRIDGE_BASIC_USER": BASIC_USER, "BRIDGE_BASIC_PASSWORD": BASIC_PASSWORD}
    env |= env_extra or {}
    log = tmp / f"bridge-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.alert_bridge", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}", log


def wait_listening(proc: subprocess.Popen, url: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bridge exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            httpx.get(f"{url}/healthz", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"bridge not listening within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def bridge(prefect_api, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bridge")
    (tmp / "inventory.yaml").write_text(textwrap.dedent(INVENTORY))
    proc, url, log = start_bridge(tmp, prefect_api)
    try:
        wait_listening(proc, url, log)
        b = Bridge(url, proc, log, tmp / "inventory.yaml")
        yield b
        b.http.close()
    finally:
        stop_process(proc)


# ---------------------------------------------------------------------------
# Webhooks and what landed in Prefect
# ---------------------------------------------------------------------------

def alert(node: str | None = "eth-a", status: str = "firing", fingerprint: str | None = None,
          alertname: str = "NodeStalled", **labels: str) -> dict:
    base = {"alertname": alertname, "chain": "lab-eth", "severity": "critical", "reason": "stalled"}
    if node is not None:
        base["node"] = node
    return {
        "status": status,
        "labels": base | labels,
        "annotations": {"summary": f"{node} head is not advancing", "description": "head is 12s old"},
        "startsAt": "2026-11-21T08:00:00.123456789Z",
        "endsAt": "2026-11-21T08:05:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:19090/graph?g0.expr=x",
        "fingerprint": fingerprint or uuid.uuid4().hex[:16],
    }


def webhook(*alerts: dict) -> dict:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="NodeStalled", node="eth-a"}',
        "truncatedAlerts": 0,
        "status": "firing" if any(a.get("status") == "firing" for a in alerts) else "resolved",
        "receiver": "runbooks-bridge",
        "groupLabels": {"alertname": "NodeStalled"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:19093",
        "alerts": list(alerts),
    }


def events(prefect_api: str, fingerprint: str | None = None, since: str | None = None,
           node: str | None = None) -> list[dict]:
    """Bridge events in Prefect: for one alert (by its related resource), a node, or all since a time."""
    flt: dict = {"event": {"prefix": ["runbooks.alert."]}}
    if fingerprint:
        flt["any_resource"] = {"id": [f"runbooks.alert.{fingerprint}"]}
    if node:
        flt["resource"] = {"id": [f"runbooks.node.{node}"]}
    if since:
        flt["occurred"] = {"since": since}
    r = httpx.post(f"{prefect_api}/events/filter", json={"filter": flt, "limit": 50}, timeout=10)
    r.raise_for_status()
    return r.json()["events"]


def wait_for_unroutable(prefect_api: str, fingerprint: str, timeout: float = 20) -> list[dict]:
    """The bridge's records of an alert that started nothing."""
    flt = {"event": {"name": ["runbooks.bridge.unroutable"]}, "resource": {"id": [f"runbooks.alert.{fingerprint}"]}}
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.post(f"{prefect_api}/events/filter", json={"filter": flt, "limit": 10}, timeout=10)
        r.raise_for_status()
        if (found := r.json()["events"]) or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def wait_for_event_id(prefect_api: str, event_id: str, timeout: float = 20) -> dict:
    flt = {"id": {"id": [event_id]}, "occurred": {"since": "2000-01-01T00:00:00Z"}}
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.post(f"{prefect_api}/events/filter", json={"filter": flt, "limit": 1}, timeout=10)
        r.raise_for_status()
        if found := r.json()["events"]:
            return found[0]
        assert time.monotonic() < deadline, f"event {event_id} never landed"
        time.sleep(0.25)


def wait_for_events(prefect_api: str, fingerprint: str, count: int = 1, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = events(prefect_api, fingerprint)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def events_of_alerts(prefect_api: str, fingerprints: list[str], since: str) -> dict[str, dict]:
    """Every bridge event since a time for these alerts, read page by page: fingerprint -> event."""
    flt = {"event": {"prefix": ["runbooks.alert."]}, "occurred": {"since": since},
           "any_resource": {"id": [f"runbooks.alert.{fp}" for fp in fingerprints]}}
    r = httpx.post(f"{prefect_api}/events/filter", json={"filter": flt, "limit": 50}, timeout=10)
    found = []
    for _ in range(100):  # pages of 50: far more than any test sends
        r.raise_for_status()
        page = r.json()
        found += page["events"]
        if not page.get("next_page"):
            break
        r = httpx.get(page["next_page"], timeout=10)
    return {e["payload"]["fingerprint"]: e for e in found}


def assert_nothing_landed(bridge: Bridge, prefect_api: str, *fingerprints: str) -> None:
    """Send a good alert after the bad ones and wait for it: by then a bad one would have landed too."""
    sentinel = uuid.uuid4().hex[:16]
    assert bridge.post(webhook(alert(fingerprint=sentinel, alertname="Sentinel"))).status_code == 200
    assert len(wait_for_events(prefect_api, sentinel)) == 1, "the sentinel event never landed"
    for fp in fingerprints:
        assert events(prefect_api, fp) == [], f"an event landed for refused alert {fp}"


# ---------------------------------------------------------------------------
# Alerts that name a known node become events
# ---------------------------------------------------------------------------

def test_a_firing_alert_for_a_known_node_becomes_one_event_on_the_node(bridge, prefect_api):
    a = alert(fingerprint=uuid.uuid4().hex[:16])
    r = bridge.post(webhook(a))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["received"] == 1 and body["emitted"] == 1
    assert body["alerts"][0]["outcome"] == "emitted"

    landed = wait_for_events(prefect_api, a["fingerprint"])
    assert len(landed) == 1
    event = landed[0]
    assert event["event"] == "runbooks.alert.firing"
    assert event["id"] == body["alerts"][0]["event_id"]
    assert event["resource"] == {
        "prefect.resource.id": "runbooks.node.eth-a",
        "prefect.resource.name": "eth-a",
        "runbooks.node": "eth-a",
        "runbooks.chain": "lab-eth",
        "runbooks.remediation": "node-recovery",  # a stalled node is node-recovery's to fix
    }
    assert event["payload"] == {
        "alertname": "NodeStalled",
        "severity": "critical",
        "reason": "stalled",
        "problem": "stalled",
        "fingerprint": a["fingerprint"],
        "status": "firing",
        "startsAt": a["startsAt"],
        "endsAt": a["endsAt"],
        "labels": a["labels"],
        "annotations": a["annotations"],
        "runbook": "node-recovery",
        "route": 'alertname="NodeStalled"',
        "node_found_by": "label node",
    }


def test_a_disk_alert_names_disk_prune_as_remediation_never_node_recovery(bridge, prefect_api):
    # A filling disk is pruning's business: its event must not match node-recovery's trigger.
    a = alert("eth-a", alertname="DiskFilling", reason="disk")
    r = bridge.post(webhook(a))
    assert r.status_code == 200, r.text
    landed = wait_for_events(prefect_api, a["fingerprint"])
    assert landed[0]["resource"]["runbooks.node"] == "eth-a"
    assert landed[0]["resource"]["runbooks.remediation"] == "disk-prune"


def test_a_resolved_alert_becomes_a_resolved_event(bridge, prefect_api):
    fp = uuid.uuid4().hex[:16]
    assert bridge.post(webhook(alert(fingerprint=fp))).status_code == 200
    r = bridge.post(webhook(alert(fingerprint=fp, status="resolved")))
    assert r.status_code == 200 and r.json()["alerts"][0]["event"] == "runbooks.alert.resolved"
    landed = {e["event"]: e for e in wait_for_events(prefect_api, fp, count=2)}
    assert set(landed) == {"runbooks.alert.firing", "runbooks.alert.resolved"}
    resolved = landed["runbooks.alert.resolved"]
    assert resolved["resource"]["prefect.resource.id"] == "runbooks.node.eth-a"
    assert resolved["payload"]["status"] == "resolved"
    assert resolved["payload"]["endsAt"] == "2026-11-21T08:05:00Z"


def test_the_route_gives_the_reason_when_the_alert_has_none(bridge, prefect_api):
    a = alert(fingerprint=uuid.uuid4().hex[:16], alertname="NodeDown")
    del a["labels"]["reason"]
    assert bridge.post(webhook(a)).status_code == 200
    [event] = wait_for_events(prefect_api, a["fingerprint"])
    assert event["payload"]["reason"] == "down"
    assert event["resource"]["runbooks.remediation"] == "node-recovery"


def test_a_repeated_notification_of_the_same_alert_is_one_event(bridge, prefect_api):
    # Alertmanager retries, repeat_interval and a second Alertmanager replica all
    # resend the same alert state: one incident must start one runbook.
    a = alert(fingerprint=uuid.uuid4().hex[:16])
    ids = {bridge.post(webhook(a)).json()["alerts"][0]["event_id"] for _ in range(3)}
    assert len(ids) == 1
    assert_nothing_landed(bridge, prefect_api)  # lets all three land if they were to
    assert len(events(prefect_api, a["fingerprint"])) == 1


def test_only_the_known_nodes_of_a_group_are_emitted(bridge, prefect_api):
    known, unknown, unlabelled = (uuid.uuid4().hex[:16] for _ in range(3))
    r = bridge.post(webhook(alert(fingerprint=known), alert("no-such-node", fingerprint=unknown),
                            alert(None, fingerprint=unlabelled)))
    assert r.status_code == 200
    outcomes = {o["fingerprint"]: (o["outcome"], o.get("why")) for o in r.json()["alerts"]}
    assert outcomes == {known: ("emitted", None),
                        unknown: ("unroutable", "node='no-such-node' is not an inventory node"),
                        unlabelled: ("unroutable", "no node: none of the labels node, instance is set")}
    assert len(wait_for_events(prefect_api, known)) == 1
    assert_nothing_landed(bridge, prefect_api, unknown, unlabelled)


def test_an_alert_for_an_unknown_node_is_answered_200_and_not_emitted(bridge, prefect_api):
    fp = uuid.uuid4().hex[:16]
    r = bridge.post(webhook(alert("eth-zz", fingerprint=fp)))
    assert r.status_code == 200
    assert r.json()["emitted"] == 0
    said = r.json()["alerts"][0]
    assert {k: said[k] for k in ("fingerprint", "alertname", "status", "node", "outcome", "why", "event")} == {
        "fingerprint": fp, "alertname": "NodeStalled", "status": "firing", "node": None, "outcome": "unroutable",
        "why": "node='eth-zz' is not an inventory node", "event": "runbooks.bridge.unroutable"}
    assert "eth-zz" in bridge.log.read_text()  # logged for the operator
    assert_nothing_landed(bridge, prefect_api, fp)
    [record] = wait_for_unroutable(prefect_api, fp)  # and recorded where an operator looks
    assert record["id"] == said["event_id"] and record["payload"]["why"] == said["why"]


def test_a_node_added_to_the_inventory_is_known_without_a_restart(bridge, prefect_api):
    fp = uuid.uuid4().hex[:16]
    assert bridge.post(webhook(alert("eth-new", fingerprint=fp))).json()["emitted"] == 0
    bridge.inventory.write_text(bridge.inventory.read_text() + NODE_ENTRY.format(name="eth-new"))
    fp2 = uuid.uuid4().hex[:16]
    r = bridge.post(webhook(alert("eth-new", fingerprint=fp2)))
    assert r.json()["emitted"] == 1, r.text
    [event] = wait_for_events(prefect_api, fp2)
    assert event["resource"]["runbooks.node"] == "eth-new"

    # A broken edit keeps the last good inventory rather than forgetting every node.
    bridge.inventory.write_text("nodes: [broken\n")
    fp3 = uuid.uuid4().hex[:16]
    said = bridge.post(webhook(alert("eth-new", fingerprint=fp3))).json()
    assert "keeping the previous one" in bridge.log.read_text()
    bridge.inventory.write_text(textwrap.dedent(INVENTORY))
    [event] = wait_for_events(prefect_api, fp3)  # in Prefect, not only in the bridge's answer
    assert event["id"] == said["alerts"][0]["event_id"]
    assert event["resource"]["prefect.resource.id"] == "runbooks.node.eth-new"
    assert_nothing_landed(bridge, prefect_api, fp)  # sent while eth-new was unknown


# ---------------------------------------------------------------------------
# Refused requests emit nothing
# ---------------------------------------------------------------------------

def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Token {TOKEN}"},
    basic(BASIC_USER, "wrong"),
    basic("someone", BASIC_PASSWORD),
    {"Authorization": "Basic !!!not-base64"},
], ids=["none", "wrong-bearer", "longer-bearer", "other-scheme", "wrong-password", "wrong-user", "bad-basic"])
def test_wrong_or_missing_credentials_are_refused_with_401_and_nothing_is_emitted(bridge, prefect_api, headers):
    fp = uuid.uuid4().hex[:16]
    r = bridge.post(webhook(alert(fingerprint=fp)), headers=headers)
    assert r.status_code == 401
    assert r.json()["emitted"] == 0
    assert "WWW-Authenticate" in r.headers
    assert_nothing_landed(bridge, prefect_api, fp)


def test_basic_auth_is_accepted_as_well_as_the_bearer_token(bridge, prefect_api):
    fp = uuid.uuid4().hex[:16]
    assert bridge.post(webhook(alert(fingerprint=fp)), headers=basic(BASIC_USER, BASIC_PASSWORD)).status_code == 200
    assert len(wait_for_events(prefect_api, fp)) == 1


@pytest.mark.parametrize("body", [
    b'{"version": "4", "alerts": [',
    b"\xff\xfe not utf-8",
    b"",
    b"[]",
    b'"just a string"',
], ids=["truncated", "binary", "empty", "a-list", "a-string"])
def test_malformed_json_is_refused_with_400_and_nothing_is_emitted(bridge, prefect_api, body):
    r = bridge.post(body)
    assert r.status_code == 400, r.text
    assert r.json()["emitted"] == 0


def test_text_that_is_not_valid_unicode_is_refused_with_400(bridge, prefect_api):
    fp = uuid.uuid4().hex[:16]
    body = json.dumps(webhook(alert(fingerprint=fp))).replace("head is 12s old", "head \\ud800 old")
    assert "\\ud800" in body
    r = bridge.post(body)
    assert r.status_code == 400, r.text
    assert_nothing_landed(bridge, prefect_api, fp)


@pytest.mark.parametrize("mutate", [
    lambda w: w.update(version="3"),
    lambda w: w.pop("alerts"),
    lambda w: w.update(alerts={"0": w["alerts"][0]}),
    lambda w: w.update(status="exploded"),
], ids=["version-3", "no-alerts", "alerts-not-a-list", "bad-group-status"])
def test_a_body_that_is_not_a_v4_webhook_is_refused_with_400_and_nothing_is_emitted(bridge, prefect_api, mutate):
    fp = uuid.uuid4().hex[:16]
    body = webhook(alert(fingerprint=fp), alert(fingerprint=fp + "b"))
    mutate(body)
    r = bridge.post(body)
    assert r.status_code == 400, r.text
    assert "v4" in r.json()["error"]
    assert_nothing_landed(bridge, prefect_api, fp, fp + "b")


@pytest.mark.parametrize("break_it", [
    lambda a: a.update(status="exploded"),
    lambda a: a["labels"].update(node=7),
    lambda a: a.update(startsAt="yesterday"),
    lambda a: a.update(fingerprint="not a fingerprint!"),
    lambda a: a.clear() or a.update(junk="not an alert"),
], ids=["bad-status", "int-label", "bad-time", "bad-fingerprint", "junk-alert"])
def test_one_malformed_alert_in_a_group_does_not_cost_the_others_their_runbook(bridge, prefect_api, break_it):
    good, bad = alert(fingerprint=uuid.uuid4().hex[:16]), alert(fingerprint=uuid.uuid4().hex[:16])
    break_it(bad)
    r = bridge.post(webhook(bad, good))
    assert r.status_code == 200, r.text  # a 4xx would make Alertmanager drop the good one too
    rejected, emitted = r.json()["alerts"]
    assert emitted["fingerprint"] == good["fingerprint"] and emitted["outcome"] == "emitted"
    assert rejected["outcome"] == "rejected" and rejected["why"]
    assert len(wait_for_events(prefect_api, good["fingerprint"])) == 1
    record = wait_for_event_id(prefect_api, rejected["event_id"])
    assert record["event"] == "runbooks.bridge.unroutable" and record["payload"]["why"].startswith("malformed alert")
    assert "rejected a malformed alert" in bridge.log.read_text()


def test_an_alert_without_a_fingerprint_gets_the_one_alertmanager_would_give_it(bridge, prefect_api):
    from deployments.alert_routing import fingerprint

    a = alert(alertname=f"NodeDown-{uuid.uuid4().hex[:6]}", reason="down")
    del a["fingerprint"]
    r = bridge.post(webhook(a))
    [said] = r.json()["alerts"]
    assert said["outcome"] == "emitted" and said["fingerprint"] == fingerprint(a["labels"])
    assert len(wait_for_events(prefect_api, said["fingerprint"])) == 1


# ---------------------------------------------------------------------------
# Alerts as operators write them: instance labels, their own names, no route
# ---------------------------------------------------------------------------

def operator_alert(alertname: str, **labels: str) -> dict:
    """As public rule sets send them: alertname, instance, job, severity; no node, no reason."""
    a = alert(None, alertname=alertname, fingerprint=uuid.uuid4().hex[:16], **labels)
    for ours in ("chain", "reason"):
        del a["labels"][ours]
    return a


def test_an_instance_on_a_nodes_metrics_port_names_the_node_and_the_alert_name_the_runbook(bridge, prefect_api):
    a = operator_alert("PrometheusTargetMissing", instance="127.0.0.1:6060", job="geth")
    said = bridge.post(webhook(a)).json()["alerts"][0]
    assert said["outcome"] == "emitted" and said["node"] == "eth-a", said
    [event] = wait_for_events(prefect_api, a["fingerprint"])
    assert event["resource"]["runbooks.node"] == "eth-a"
    assert event["resource"]["runbooks.remediation"] == "node-recovery"
    assert event["payload"]["reason"] == "down" and event["payload"]["runbook"] == "node-recovery"
    assert event["payload"]["node_found_by"] == "instance 127.0.0.1:6060 is an endpoint of the node"


def test_an_instance_on_a_host_with_two_nodes_and_no_matching_endpoint_is_ambiguous(bridge, prefect_api):
    a = operator_alert("PrometheusTargetMissing", instance="127.0.0.1:9100", job="node")  # node_exporter
    said = bridge.post(webhook(a)).json()["alerts"][0]
    assert said["outcome"] == "unroutable" and said["why"].startswith("ambiguous")
    assert "eth-a, eth-b" in said["why"]
    assert_nothing_landed(bridge, prefect_api, a["fingerprint"])
    [record] = wait_for_unroutable(prefect_api, a["fingerprint"])
    assert record["payload"]["labels"] == a["labels"]


def test_a_disk_alert_by_its_community_name_is_routed_to_disk_prune_on_the_node(bridge, prefect_api):
    a = operator_alert("Disk Space low", instance="127.0.0.1:6060")  # eth-docker's Grafana title
    said = bridge.post(webhook(a)).json()["alerts"][0]
    assert said["outcome"] == "emitted" and said["runbook"] == "disk-prune", said
    [event] = wait_for_events(prefect_api, a["fingerprint"])
    assert event["resource"]["runbooks.node"] == "eth-a"
    assert event["resource"]["runbooks.remediation"] == "disk-prune"  # disk-prune's trigger matches it
    assert event["payload"]["reason"] == "disk"


def test_an_inode_alert_is_recorded_on_the_node_and_starts_nothing(bridge, prefect_api):
    a = operator_alert("HostOutOfInodes", instance="127.0.0.1:6060")
    said = bridge.post(webhook(a)).json()["alerts"][0]
    assert said["outcome"] == "emitted" and said["runbook"] == "notify", said
    [event] = wait_for_events(prefect_api, a["fingerprint"])
    assert event["resource"]["runbooks.node"] == "eth-a"
    assert "runbooks.remediation" not in event["resource"]  # no trigger matches it


def test_an_alert_no_route_matches_is_answered_counted_logged_and_recorded(bridge, prefect_api):
    def unroutable_count() -> float:
        for line in bridge.http.get("/metrics").text.splitlines():
            if line.startswith('runbooks_bridge_alerts_total{outcome="unroutable",runbook=""}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = unroutable_count()
    a = alert("eth-a", alertname="CertificateExpiresSoon", fingerprint=uuid.uuid4().hex[:16])
    del a["labels"]["reason"]
    r = bridge.post(webhook(a))
    assert r.status_code == 200 and r.json()["emitted"] == 0 and r.json()["unroutable"] == 1
    [said] = r.json()["alerts"]
    assert said["why"].startswith("no route matches")
    assert unroutable_count() == before + 1
    assert a["fingerprint"] in bridge.log.read_text() and "starts nothing" in bridge.log.read_text()
    assert_nothing_landed(bridge, prefect_api, a["fingerprint"])
    [record] = wait_for_unroutable(prefect_api, a["fingerprint"])
    assert record["related"][0]["prefect.resource.id"] == "runbooks.node.eth-a"


def test_an_oversized_body_is_refused_with_400_while_reading(bridge, prefect_api):
    fp = uuid.uuid4().hex[:16]
    big = alert(fingerprint=fp)
    big["annotations"]["description"] = "x" * (1 << 20)
    r = bridge.post(webhook(big))
    assert r.status_code == 400 and "larger than" in r.json()["error"]

    # Without a Content-Length (chunked), the limit is enforced as the body arrives:
    # the bridge answers before the sender has finished.
    sent = []

    def endless():
        for _ in range(64):  # 64 MiB offered
            sent.append(1)
            yield b"x" * (1 << 20)

    r = bridge.http.post("/alerts", content=endless(), headers=BEARER)
    assert r.status_code == 400
    assert len(sent) < 64
    assert_nothing_landed(bridge, prefect_api, fp)


def test_healthz_reports_prefect_reachable(bridge):
    r = bridge.http.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "prefect": "ok", "inventory_nodes": 2}


# ---------------------------------------------------------------------------
# Prefect down, misconfiguration
# ---------------------------------------------------------------------------

def test_prefect_unreachable_answers_503_so_alertmanager_retries(tmp_path):
    (tmp_path / "inventory.yaml").write_text(textwrap.dedent(INVENTORY))
    dead_api = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    proc, url, log = start_bridge(tmp_path, dead_api)
    try:
        wait_listening(proc, url, log)
        r = httpx.post(f"{url}/alerts", json=webhook(alert()), headers=BEARER, timeout=15)
        assert r.status_code == 503
        assert r.json()["emitted"] == 0
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 503
        # An alert that starts nothing is still recorded in Prefect: it is retried too, not lost.
        assert httpx.post(f"{url}/alerts", json=webhook(alert("nope")), headers=BEARER, timeout=15).status_code == 503
    finally:
        stop_process(proc)


def test_the_bridge_refuses_to_start_without_credentials(tmp_path):
    (tmp_path / "inventory.yaml").write_text(textwrap.dedent(INVENTORY))
    proc, _, log = start_bridge(tmp_path, "http://127.0.0.1:9/api", with_credentials=False)
    try:
        assert proc.wait(60) != 0
    finally:
        stop_process(proc)
    assert "no credentials configured" in log.read_text()


@pytest.mark.parametrize("env, message", [
    ({"BRIDGE_BASIC_USER": "am"}, "needs both BRIDGE_BASIC_USER and BRIDGE_BASIC_PASSWORD"),
    ({"BRIDGE_BEARER_TOKEN": ""}, "no credentials configured"),
    ({"BRIDGE_BEARER_TOKEN": "t", "BRIDGE_BEARER_TOKEN_FILE": "/t"}, "not both"),
    ({"BRIDGE_BEARER_TOKEN_FILE": "/nonexistent/token"}, "cannot read /nonexistent/token"),
    ({"BRIDGE_BEARER_TOKEN": "t", "PREFECT_API_URL": ""}, "PREFECT_API_URL is not set"),
    ({"BRIDGE_BEARER_TOKEN": "t", "BRIDGE_MAX_BODY_BYTES": "10"}, "BRIDGE_MAX_BODY_BYTES"),
], ids=["half-basic", "empty-token", "token-twice", "unreadable-file", "no-prefect", "tiny-limit"])
def test_a_misconfigured_bridge_says_which_setting_to_fix(env, message):
    from deployments.alert_bridge import BridgeConfig, BridgeConfigError

    with pytest.raises(BridgeConfigError, match=message) as refused:
        BridgeConfig.from_env({"PREFECT_API_URL": "http://127.0.0.1:9/api"} | env)
    assert "alert bridge:" in str(refused.value)


def test_the_configured_credentials_never_show_in_the_config_repr():
    from deployments.alert_bridge import BridgeConfig

    config = BridgeConfig.from_env({"PREFECT_API_URL": "http://127.0.0.1:9/api", "BRIDGE_BEARER_TOKEN": TOKEN,
                                    "BRIDGE_BASIC_USER": BASIC_USER, "BRIDGE_BASIC_PASSWORD": BASIC_PASSWORD,
                                    "PREFECT_API_AUTH_STRING": "admin:" + BASIC_PASSWORD})
    assert TOKEN not in repr(config) and BASIC_PASSWORD not in repr(config)


def test_the_bridge_reads_its_token_from_a_file(tmp_path, prefect_api):
    (tmp_path / "inventory.yaml").write_text(textwrap.dedent(INVENTORY))
    token_file = tmp_path / "token"
    token_file.write_text("file-" + TOKEN + "\n")
    proc, url, log = start_bridge(tmp_path, prefect_api, env_extra={"BRIDGE_BEARER_TOKEN_FILE": str(token_file)},
                                  with_credentials=False)
    try:
        wait_listening(proc, url, log)
        ok = {"Authorization": f"Bearer file-{TOKEN}"}
        assert httpx.post(f"{url}/alerts", json=webhook(alert("nope")), headers=ok, timeout=10).status_code == 200
        assert httpx.post(f"{url}/alerts", json=webhook(alert("nope")), headers=BEARER, timeout=10).status_code == 401
    finally:
        stop_process(proc)


# ---------------------------------------------------------------------------
# Fuzzing: whatever arrives, the bridge answers 200 or 400 and keeps running
# ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
label_maps = st.dictionaries(st.text(max_size=12), st.text(max_size=20), max_size=6)
# Shaped like a v4 webhook, with random labels: they reach routing, never a known node.
v4_like = st.builds(
    lambda status, alerts, extra: {"version": "4", "status": status, "alerts": alerts, **extra},
    st.sampled_from(["firing", "resolved"]),
    st.lists(st.builds(
        lambda status, labels, node, fp: {
            "status": status,
            "labels": {k: v for k, v in labels.items() if k != "node"} | ({"node": node} if node is not None else {}),
            "annotations": {}, "startsAt": "2026-11-21T08:00:00Z", "fingerprint": fp},
        st.sampled_from(["firing", "resolved"]), label_maps,
        st.none() | st.text(max_size=20).filter(lambda n: n not in ("eth-a", "eth-new")),
        st.from_regex(r"\A[a-f0-9]{16}\Z"),
    ), max_size=4),
    st.dictionaries(st.sampled_from(["receiver", "groupKey", "externalURL"]), st.text(max_size=20), max_size=3),
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


def test_fuzz_any_text_in_an_alert_for_a_known_node_lands_in_prefect_as_sent(bridge, prefect_api):
    started = datetime.now(timezone.utc).isoformat()
    sent: dict[str, tuple[dict, str]] = {}  # fingerprint -> (alert, the event id the bridge gave it)

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(labels=label_maps, annotations=label_maps, alertname=st.text(max_size=40))
    def post(labels, annotations, alertname):
        a = alert(fingerprint=uuid.uuid4().hex[:16], alertname=alertname)
        a["labels"] = labels | {"alertname": alertname, "node": "eth-a", "reason": "stalled"}
        a["annotations"] = annotations
        r = bridge.post(webhook(a))
        assert r.status_code == 200, r.text
        [said] = r.json()["alerts"]
        sent[a["fingerprint"]] = (a, said["event_id"])

    post()
    # What Prefect holds, not what the bridge says it emitted: every alert, once, as sent.
    deadline = time.monotonic() + 30
    while len(landed := events_of_alerts(prefect_api, list(sent), started)) < len(sent):
        assert time.monotonic() < deadline, f"{len(sent) - len(landed)} of {len(sent)} events never landed"
        time.sleep(0.5)
    assert set(landed) == set(sent)
    for fingerprint, (a, event_id) in sent.items():
        event = landed[fingerprint]
        assert event["id"] == event_id
        assert event["event"] == "runbooks.alert.firing"
        assert event["resource"]["prefect.resource.id"] == "runbooks.node.eth-a"
        assert event["payload"]["alertname"] == a["labels"]["alertname"]
        assert event["payload"]["labels"] == a["labels"]
        assert event["payload"]["annotations"] == a["annotations"]


@pytest.fixture(scope="module")
def fuzz_started() -> str:
    """When the first fuzz test began: no bridge event may have landed since, but the final sentinel."""
    return datetime.now(timezone.utc).isoformat()


@FUZZ
@given(body=st.binary(max_size=2048))
def test_fuzz_random_bytes(bridge, fuzz_started, body):
    assert bridge.post(body).status_code in (200, 400)


@FUZZ
@given(doc=json_values)
def test_fuzz_random_json(bridge, fuzz_started, doc):
    r = bridge.post(json.dumps(doc))
    assert r.status_code == 400, r.text


@FUZZ
@given(doc=v4_like)
def test_fuzz_v4_shaped_webhooks_for_unknown_nodes(bridge, fuzz_started, doc):
    r = bridge.post(json.dumps(doc))
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert r.json()["emitted"] == 0


def test_after_fuzzing_the_bridge_is_alive_healthy_and_emitted_nothing(bridge, prefect_api, fuzz_started):
    assert bridge.proc.poll() is None
    assert bridge.http.get("/healthz").status_code == 200
    assert_nothing_landed(bridge, prefect_api)  # one sentinel, and waits for it
    landed = events(prefect_api, since=fuzz_started)
    assert [e["payload"]["alertname"] for e in landed] == ["Sentinel"]


def test_credentials_never_reach_the_log(bridge):
    text = bridge.log.read_text()
    for secret in (TOKEN, BASIC_PASSWORD, base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()):
        assert secret not in text


# ---------------------------------------------------------------------------
# The whole alerting path, with the configs we ship
# ---------------------------------------------------------------------------

def test_a_frozen_node_fires_node_down_through_prometheus_and_alertmanager_into_prefect(prefect_api, tmp_path):
    """anvil -> exporter -> Prometheus (our rules) -> Alertmanager (our config) -> bridge -> Prefect."""
    from tests.test_exporter import Anvil, Exporter, inventory_yaml

    from deployments.templates import render_alertmanager_config, render_prometheus_config

    prometheus = shutil.which("prometheus")
    alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if not (prometheus and alertmanager):
        pytest.skip("prometheus and alertmanager binaries are needed (Debian: prometheus, prometheus-alertmanager)")
    procs: list[subprocess.Popen] = []
    anvils = {}
    exporter = None
    try:
        anvils = {"ref": Anvil("ref", tmp_path), "eth-p": Anvil("eth-p", tmp_path)}
        (tmp_path / "inventory.yaml").write_text(inventory_yaml(anvils["ref"], {"eth-p": anvils["eth-p"]}))
        exporter = Exporter(tmp_path, tmp_path / "inventory.yaml")
        bridge_proc, bridge_url, bridge_log = start_bridge(tmp_path, prefect_api)
        procs.append(bridge_proc)
        token_file = tmp_path / "bridge.token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        am_port, prom_port = free_port(), free_port()
        (tmp_path / "alertmanager.yml").write_text(render_alertmanager_config(f"{bridge_url}/alerts", token_file))
        (tmp_path / "prometheus.yml").write_text(
            render_prometheus_config(f"127.0.0.1:{exporter.port}", f"127.0.0.1:{am_port}"))
        for argv, name in (
            ([alertmanager, f"--config.file={tmp_path / 'alertmanager.yml'}",
              f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
              f"--storage.path={tmp_path / 'am'}"], "alertmanager"),
            ([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
              f"--web.listen-address=127.0.0.1:{prom_port}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"], "prometheus"),
        ):
            procs.append(subprocess.Popen(argv, stdout=open(tmp_path / f"{name}.log", "wb"), stderr=subprocess.STDOUT,
                                          start_new_session=True))
        wait_listening(bridge_proc, bridge_url, bridge_log)
        exporter.wait_for(lambda m: m.get("runbooks_node_up"))
        time.sleep(3)  # a few healthy scrapes first

        node = anvils["eth-p"]
        node.signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        deadline = time.monotonic() + 30
        while not (fired := events(prefect_api, node="eth-p")):
            assert time.monotonic() < deadline, f"no event; bridge log:\n{bridge_log.read_text()[-2000:]}"
            time.sleep(0.5)
        took = time.monotonic() - frozen_at
        [event] = fired
        assert event["event"] == "runbooks.alert.firing"
        assert event["payload"]["alertname"] == "NodeDown" and event["payload"]["reason"] == "down"
        assert event["resource"]["prefect.resource.id"] == "runbooks.node.eth-p"
        assert took < 15, took

        node.signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while not [e for e in events(prefect_api, node="eth-p")
                   if e["event"] == "runbooks.alert.resolved" and e["payload"]["alertname"] == "NodeDown"]:
            assert time.monotonic() < deadline, f"no resolved event; bridge log:\n{bridge_log.read_text()[-2000:]}"
            time.sleep(0.5)
        assert TOKEN not in (tmp_path / "alertmanager.yml").read_text()
    finally:
        for proc in procs:
            stop_process(proc)
        if exporter:
            exporter.stop()
        for a in anvils.values():
            a.stop()
