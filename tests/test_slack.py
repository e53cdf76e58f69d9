"""Slack notifications against the lab's stand-in for Slack's Web API (lab/stubs.py),
started in-process, which records every request."""

from __future__ import annotations

import json
import socket
import time

import pytest

from blocks import SlackWorkspace
from tasks import slack
from tasks.errors import NotificationError
from tasks.redaction import register_secret

TOKEN = "xoxb-1234567890-abcdefghijklmnop"


def workspace(stubs, timeout: float = 5.0, token: str = TOKEN) -> SlackWorkspace:
    stubs.slack_token = TOKEN  # like Slack, the stubs now refuses any other token
    return SlackWorkspace(token=token, channel="#node-ops", base_url=f"{stubs.url}/api/", timeout_seconds=timeout)


def sent(stubs) -> dict:
    """The one request's recorded JSON body."""
    [record] = stubs.records("slack")
    return record["body"]


def test_a_recovery_report_is_posted_as_block_kit(stubs):
    blocks = slack.recovery_report(
        "eth-a", "recovered",
        before={"status": "stalled", "head": 100, "lag": 42},
        after={"status": "healthy", "head": 142, "lag": 0},
        run_url="http://127.0.0.1:4200/runs/flow-run/1234",
        details=["reason: NodeStalled alert", "restarted erigon via supervisor"],
    )
    answer = slack.post(workspace(stubs), "eth-a recovered (stalled -> healthy)", blocks)
    assert answer["ok"] is True and answer["ts"]  # the stubs took our token

    [request] = stubs.records("slack")
    assert request["path"] == "/api/chat.postMessage" and request["authorization_present"]
    payload = sent(stubs)
    assert payload["channel"] == "#node-ops"
    assert payload["text"] == "eth-a recovered (stalled -&gt; healthy)"
    header, fields, comparison, details, actions = payload["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": ":white_check_mark: eth-a: recovered", "emoji": True}}
    assert [f["text"] for f in fields["fields"]] == ["*Node*\neth-a", "*Outcome*\nrecovered"]
    table = comparison["text"]["text"]
    assert table.startswith("*Before → after*\n```") and table.endswith("```")
    assert "* status  stalled" in table and "→ healthy" in table
    assert "  lag" not in table.replace("* lag", "")  # every changed row is marked
    assert details["text"]["text"] == "• reason: NodeStalled alert\n• restarted erigon via supervisor"
    assert actions["elements"][0]["url"] == "http://127.0.0.1:4200/runs/flow-run/1234"
    assert TOKEN not in json.dumps(request["body"])


def test_an_escalation_says_why_and_links_the_run(stubs):
    blocks = slack.escalation("eth-b", "still lagging 300 blocks after 120 s", ["left out of rotation"], "https://prefect/x")
    slack.post(workspace(stubs), "eth-b needs a human", blocks)
    header, reason, details, actions = sent(stubs)["blocks"]
    assert "Needs a human: eth-b" in header["text"]["text"]
    assert reason["text"]["text"] == ":rotating_light: *still lagging 300 blocks after 120 s*"
    assert details["text"]["text"] == "• left out of rotation"
    assert actions["type"] == "actions"
    assert [b["type"] for b in slack.escalation("eth-b", "why")] == ["header", "section"]


def test_secrets_are_masked_in_everything_posted(stubs):
    register_secret("alchemy-key-ABCDEF123456")
    blocks = slack.recovery_report(
        "eth-a", "failed",
        before={"rpc": "https://eth.example/v2/alchemy-key-ABCDEF123456", "api_key": "unregistered-key"},
        after={"password": "hunter2hunter2", "url": "https://ops:s3cretpw@lb.internal/"},
        details=["curl https://eth.example/v2/alchemy-key-ABCDEF123456 failed"],
        run_url=None,
    )
    slack.post(workspace(stubs), "failed: alchemy-key-ABCDEF123456 <&>", blocks)
    body = json.dumps(sent(stubs))
    for secret in ("alchemy-key-ABCDEF123456", "unregistered-key", "hunter2hunter2", "s3cretpw", TOKEN):
        assert secret not in body
    payload = sent(stubs)
    assert payload["text"] == "failed: *** &lt;&amp;&gt;"
    assert "https://ops:***@lb.internal/" in body


def test_text_from_nodes_cannot_ping_channels_or_disguise_links(stubs):
    blocks = slack.escalation("eth-a", "log said <!channel> & <https://evil.example|the runbook>",
                              ["<@U123> look"], None)
    texts = json.dumps(blocks)
    assert "<!channel>" not in texts and "<https://evil" not in texts and "<@U123>" not in texts
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|the runbook&gt;" in texts


def test_block_kit_limits_are_respected():
    blocks = slack.recovery_report("eth-a", "failed", {"k": "v" * 5000}, {}, None, ["x" * 500] * 20)
    for b in blocks:
        if b["type"] == "section" and "text" in b:
            assert len(b["text"]["text"]) <= slack.MAX_SECTION_TEXT
    long_node = "n" * 300
    header = slack.escalation(long_node, "why")[0]
    assert len(header["text"]["text"]) <= slack.MAX_HEADER_TEXT


def test_a_slack_api_error_is_a_notification_error(stubs):
    stubs.slack_errors = ["channel_not_found"]
    with pytest.raises(NotificationError, match="channel_not_found.*invited"):
        slack.post(workspace(stubs), "hello")


def test_a_wrong_token_is_refused_by_slack_and_not_echoed(stubs):
    with pytest.raises(NotificationError, match="invalid_auth") as info:
        slack.post(workspace(stubs, token="xoxb-0000-wrong-token-value"), "hello")
    assert "xoxb-0000-wrong-token-value" not in str(info.value)


def test_a_slow_or_absent_slack_fails_within_the_timeout(stubs):
    stubs.delay_seconds = 2.0
    started = time.monotonic()
    with pytest.raises(NotificationError, match="could not reach Slack"):
        slack.post(workspace(stubs, timeout=0.3), "hello")
    assert time.monotonic() - started < 1.5

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nowhere = SlackWorkspace(token=TOKEN, channel="#x", base_url=f"http://127.0.0.1:{port}/api/", timeout_seconds=1)
    with pytest.raises(NotificationError) as info:
        slack.post(nowhere, "hello")
    assert TOKEN not in str(info.value)
