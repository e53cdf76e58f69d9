"""Escalation: who gets told, how loudly, and that repeats update one incident.

PagerDuty's Events API and Slack's Web API are outside services: the lab's
stand-ins (lab/stubs.py), started in-process, answer like them and record
every request.
The audit trail is real (files in a temporary directory).
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from blocks import PagerDutyService, SlackWorkspace
from tasks import pagerduty
from tasks.audit import AuditRecord, read_entries
from tasks.errors import InvalidInput, NotificationError
from tasks.escalation import Kind, Priority, escalate, open_incident, priority_for, resolve_incident
from tasks.guards import chain_target

ROUTING_KEY = "R0UTINGKEY0123456789abcdefabcdef"
SLACK_TOKEN = "xoxb-99887766-secret-token-abcdef"


def sent(stubs, service: str) -> list[dict]:
    """Bodies the stub received for one service, in order."""
    return [r["body"] for r in stubs.records(service)]


@pytest.fixture
def pd(stubs) -> PagerDutyService:
    return PagerDutyService(routing_key=ROUTING_KEY, events_url=f"{stubs.url}/v2/enqueue", timeout_seconds=2)


@pytest.fixture
def slack_ws(stubs) -> SlackWorkspace:
    return SlackWorkspace(token=SLACK_TOKEN, channel="#node-ops", base_url=f"{stubs.url}/api/", timeout_seconds=2)


def run(run_id: str, node: str = "eth-a") -> AuditRecord:
    return AuditRecord(run_id, "node-recovery", node=node)


def pd_notes(action: str | None = None) -> list[dict]:
    notes = [e["data"] for e in read_entries(kind="note") if "pagerduty_action" in e["data"]]
    return [n for n in notes if action is None or n["pagerduty_action"] == action]


# ---------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kind, severity, expected",
    [
        (Kind.CHAIN_INCIDENT, None, Priority.P1),
        (Kind.BACKEND_DOWN, None, Priority.P1),
        (Kind.NOT_RECOVERED, None, Priority.P2),
        (Kind.CIRCUIT_OPEN, None, Priority.P2),
        (Kind.LAGGING, None, Priority.P3),
        (Kind.WARNING, None, Priority.P3),
        (Kind.INFO, None, Priority.P4),
        # An alert's severity raises, never lowers; it never reaches P1 on its own.
        (Kind.LAGGING, "critical", Priority.P2),
        (Kind.CHAIN_INCIDENT, "info", Priority.P1),
        (Kind.INFO, "warning", Priority.P3),
        ("something-new", None, Priority.P3),
        ("something-new", "critical", Priority.P2),
        ("something-new", "info", Priority.P4),
        ("something-new", "bogus", Priority.P3),
    ],
)
def test_the_priority_matrix(kind, severity, expected):
    assert priority_for(kind, severity) is expected


def test_pagerduty_severity_follows_priority():
    assert [p.pagerduty_severity for p in Priority] == ["critical", "error", "warning", "info"]
    assert [p.pages for p in Priority] == [True, True, False, False]


# ---------------------------------------------------------------------------
# One incident per node: repeats update it, recovery resolves it
# ---------------------------------------------------------------------------

def test_repeats_update_one_incident_and_recovery_resolves_it(stubs, pd, slack_ws, audit_dir):
    first = escalate(run("run-1"), slack_ws, pd, "eth-a", Priority.P2, "eth-a did not recover",
                     {"status": "stalled", "lag": 42}, run_url="http://127.0.0.1:4200/runs/flow-run/1")
    assert first["pagerduty"]["ok"] and first["slack"]["ok"]
    assert first["pagerduty"]["dedup_key"] == "runbooks/eth-a/run-1"
    again = escalate(run("run-2"), slack_ws, pd, "eth-a", Priority.P2, "eth-a still down", {"status": "down"})
    assert again["pagerduty"]["dedup_key"] == "runbooks/eth-a/run-1"
    # Another node has its own incident.
    other = escalate(run("run-3", "eth-b"), slack_ws, pd, "eth-b", Priority.P2, "eth-b did not recover", {})
    assert other["pagerduty"]["dedup_key"] == "runbooks/eth-b/run-3"

    triggers = [b for b in sent(stubs, "pagerduty") if b["event_action"] == "trigger"]
    assert [b["dedup_key"] for b in triggers] == ["runbooks/eth-a/run-1"] * 2 + ["runbooks/eth-b/run-3"]
    first_event = triggers[0]
    assert first_event["payload"]["severity"] == "error" and first_event["payload"]["source"] == "eth-a"
    assert first_event["payload"]["summary"].startswith("[P2] eth-a: ")
    assert first_event["payload"]["custom_details"]["lag"] == 42
    assert first_event["links"] == [{"href": "http://127.0.0.1:4200/runs/flow-run/1", "text": "Prefect flow run"}]
    assert open_incident("eth-a") == "runbooks/eth-a/run-1"

    resolved = resolve_incident(run("run-4"), pd, "eth-a")
    assert resolved == {"ok": True, "dedup_key": "runbooks/eth-a/run-1", "status_code": 202}
    assert sent(stubs, "pagerduty")[-1] == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "runbooks/eth-a/run-1"}
    assert open_incident("eth-a") is None and open_incident("eth-b") == "runbooks/eth-b/run-3"
    # Nothing open: nothing sent, nothing recorded.
    count = len(stubs.records())
    assert resolve_incident(run("run-5"), pd, "eth-a") is None
    assert len(stubs.records()) == count

    # The next incident of the node gets a new key.
    nxt = escalate(run("run-6"), slack_ws, pd, "eth-a", Priority.P1, "eth-a down, backend empty", {})
    assert nxt["pagerduty"]["dedup_key"] == "runbooks/eth-a/run-6"
    assert sent(stubs, "pagerduty")[-1]["payload"]["severity"] == "critical"
    # Every PagerDuty call is in the audit trail.
    assert [(n["pagerduty_action"], n["dedup_key"]) for n in pd_notes()] == [
        ("trigger", "runbooks/eth-a/run-1"), ("trigger", "runbooks/eth-a/run-1"),
        ("trigger", "runbooks/eth-b/run-3"), ("resolve", "runbooks/eth-a/run-1"),
        ("trigger", "runbooks/eth-a/run-6"),
    ]


def test_a_chain_incident_is_one_incident_of_the_chain(stubs, pd, slack_ws, audit_dir):
    target = chain_target("lab-eth")
    a = escalate(run("run-1"), slack_ws, pd, target, priority_for(Kind.CHAIN_INCIDENT), "references stalled", {})
    b = escalate(run("run-2", "eth-b"), slack_ws, pd, target, Priority.P1, "references stalled", {})
    assert a["pagerduty"]["dedup_key"] == b["pagerduty"]["dedup_key"] == "runbooks/chain:lab-eth/run-1"
    assert open_incident("eth-a") is None


def test_p3_and_p4_go_to_slack_only(stubs, pd, slack_ws, audit_dir):
    for priority in (Priority.P3, Priority.P4):
        result = escalate(run(f"run-{priority.value}"), slack_ws, pd, "eth-a", priority, "eth-a lagging", {"lag": 9})
        assert result["pagerduty"] is None and result["slack"]["ok"]
    assert sent(stubs, "pagerduty") == []
    posts = sent(stubs, "slack")
    assert len(posts) == 2 and posts[0]["text"].startswith("[P3] eth-a")
    assert "eth-a lagging" in json.dumps(posts[0]["blocks"])
    assert [e["data"]["text"] for e in read_entries(kind="note")] == ["slack escalation posted"] * 2


# ---------------------------------------------------------------------------
# Failures are logged and audited, never fatal; the routing key never leaks
# ---------------------------------------------------------------------------

def test_a_slack_failure_does_not_stop_the_page(stubs, pd, slack_ws, audit_dir):
    stubs.slack_errors = ["channel_not_found"]
    result = escalate(run("run-1"), slack_ws, pd, "eth-a", Priority.P2, "eth-a did not recover", {})
    assert result["pagerduty"]["ok"] and not result["slack"]["ok"]
    assert "channel_not_found" in result["slack"]["error"]
    notes = [e["data"]["text"] for e in read_entries(kind="note")]
    assert notes == ["pagerduty trigger", "slack escalation failed"]


def test_no_slack_and_no_pagerduty_configured_is_recorded(audit_dir):
    result = escalate(run("run-1"), None, None, "eth-a", Priority.P1, "chain down", {})
    assert not result["pagerduty"]["ok"] and not result["slack"]["ok"]
    notes = [e["data"]["text"] for e in read_entries(kind="note")]
    assert notes == ["pagerduty not configured: not paged", "slack escalation not posted: no Slack workspace configured"]


def test_transient_pagerduty_errors_are_retried_a_bounded_number_of_times(stubs, pd, audit_dir):
    stubs.pagerduty_failures = [503]
    answer = pagerduty.trigger(pd, "runbooks/eth-a/r", "eth-a down", "error", "eth-a")
    assert answer.attempts == 2 and answer.status_code == 202
    stubs.pagerduty_failures = [500, 502, 503, 504]
    started = time.monotonic()
    with pytest.raises(NotificationError, match="after 3 attempts"):
        pagerduty.trigger(pd, "runbooks/eth-a/r", "eth-a down", "error", "eth-a")
    assert time.monotonic() - started < 5
    assert len(sent(stubs, "pagerduty")) == 2 + 3


def test_an_unreachable_pagerduty_fails_within_its_timeouts_and_is_audited(audit_dir, slack_ws, stubs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = PagerDutyService(routing_key=ROUTING_KEY, events_url=f"http://127.0.0.1:{port}/v2/enqueue", timeout_seconds=1)
    started = time.monotonic()
    result = escalate(run("run-1"), slack_ws, dead, "eth-a", Priority.P1, "eth-a down", {})
    assert time.monotonic() - started < 6
    assert not result["pagerduty"]["ok"] and result["slack"]["ok"]
    # Slack says it was not paged; the trail keeps the key so the next try updates the same incident.
    assert "NOT paged" in json.dumps(sent(stubs, "slack")[0]["blocks"])
    assert pd_notes("trigger")[0]["ok"] is False
    assert open_incident("eth-a") == "runbooks/eth-a/run-1"


def test_the_routing_key_never_reaches_the_audit_trail_or_slack(stubs, pd, slack_ws, audit_dir):
    escalate(run("run-1"), slack_ws, pd, "eth-a", Priority.P2, "eth-a did not recover",
             {"note": f"someone pasted {ROUTING_KEY} here", "routing_key": ROUTING_KEY})
    stubs.pagerduty_failures = [400]  # PagerDuty's error echoes the key back
    result = escalate(run("run-2"), slack_ws, pd, "eth-a", Priority.P2, "eth-a still down", {})
    assert not result["pagerduty"]["ok"] and "***" in result["pagerduty"]["error"]
    resolve_incident(run("run-3"), pd, "eth-a")

    trail = "".join(p.read_text() for p in audit_dir.glob("*.jsonl"))
    assert "pagerduty trigger failed" in trail and "pagerduty resolve" in trail
    assert ROUTING_KEY not in trail and SLACK_TOKEN not in trail
    assert ROUTING_KEY not in json.dumps(sent(stubs, "slack"))
    # What went to PagerDuty itself carries it only where it belongs.
    for body in sent(stubs, "pagerduty"):
        assert ROUTING_KEY not in json.dumps({k: v for k, v in body.items() if k != "routing_key"})


def test_bad_events_are_refused_before_sending(stubs, pd):
    with pytest.raises(InvalidInput):
        pagerduty.trigger(pd, "k", "summary", "fatal", "eth-a")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        pagerduty.resolve(pd, "x" * 256)
    with pytest.raises(InvalidInput):
        escalate(AuditRecord("r", "f"), None, None, "eth-a", "P0", "s", {})
    assert stubs.records() == []
