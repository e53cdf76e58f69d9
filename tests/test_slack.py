"""Slack notifications against a local stand-in for Slack's Web API that records requests."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from blocks import SlackWorkspace
from tasks import slack
from tasks.errors import NotificationError
from tasks.redaction import clear_secrets, register_secret

TOKEN = "xoxb-1234567890-abcdefghijklmnop"


class SlackStub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        self.requests: list[dict] = []
        self.reply: dict = {"ok": True, "channel": "C0123", "ts": "1732180000.000100"}
        self.delay = 0.0

        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body.decode()})
                time.sleep(stub.delay)
                data = json.dumps(stub.reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def handle_error(self, request, client_address):
        pass  # the client gave up (timeout test)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/"


@pytest.fixture
def stub():
    server = SlackStub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    clear_secrets()


def workspace(stub: SlackStub, timeout: float = 5.0) -> SlackWorkspace:
    return SlackWorkspace(token=TOKEN, channel="#node-ops", base_url=stub.base_url, timeout_seconds=timeout)


def sent(stub: SlackStub) -> dict:
    assert len(stub.requests) == 1
    return json.loads(stub.requests[0]["body"])


def test_a_recovery_report_is_posted_as_block_kit(stub):
    blocks = slack.recovery_report(
        "eth-a", "recovered",
        before={"status": "stalled", "head": 100, "lag": 42},
        after={"status": "healthy", "head": 142, "lag": 0},
        run_url="http://127.0.0.1:4200/runs/flow-run/1234",
        details=["reason: NodeStalled alert", "restarted erigon via supervisor"],
    )
    answer = slack.post(workspace(stub), "eth-a recovered (stalled -> healthy)", blocks)
    assert answer["ok"] is True and answer["ts"] == "1732180000.000100"

    request = stub.requests[0]
    assert request["path"] == "/api/chat.postMessage"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    payload = sent(stub)
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
    assert TOKEN not in request["body"]


def test_an_escalation_says_why_and_links_the_run(stub):
    blocks = slack.escalation("eth-b", "still lagging 300 blocks after 120 s", ["left out of rotation"], "https://prefect/x")
    slack.post(workspace(stub), "eth-b needs a human", blocks)
    header, reason, details, actions = sent(stub)["blocks"]
    assert "Needs a human: eth-b" in header["text"]["text"]
    assert reason["text"]["text"] == ":rotating_light: *still lagging 300 blocks after 120 s*"
    assert details["text"]["text"] == "• left out of rotation"
    assert actions["type"] == "actions"
    assert [b["type"] for b in slack.escalation("eth-b", "why")] == ["header", "section"]


def test_secrets_are_masked_in_everything_posted(stub):
    register_secret("alchemy-key-ABCDEF123456")
    blocks = slack.recovery_report(
        "eth-a", "failed",
        before={"rpc": "https://eth.example/v2/alchemy-key-ABCDEF123456", "api_key": "unregistered-key"},
        after={"password": "hunter2hunter2", "url": "https://ops:s3cretpw@lb.internal/"},
        details=["curl https://eth.example/v2/alchemy-key-ABCDEF123456 failed"],
        run_url=None,
    )
    slack.post(workspace(stub), "failed: alchemy-key-ABCDEF123456 <&>", blocks)
    body = stub.requests[0]["body"]
    for secret in ("alchemy-key-ABCDEF123456", "unregistered-key", "hunter2hunter2", "s3cretpw", TOKEN):
        assert secret not in body
    payload = sent(stub)
    assert payload["text"] == "failed: *** &lt;&amp;&gt;"
    assert "https://ops:***@lb.internal/" in body


def test_text_from_nodes_cannot_ping_channels_or_disguise_links(stub):
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


def test_a_slack_api_error_is_a_notification_error(stub):
    stub.reply = {"ok": False, "error": "channel_not_found"}
    with pytest.raises(NotificationError, match="channel_not_found.*invited"):
        slack.post(workspace(stub), "hello")


def test_a_slow_or_absent_slack_fails_within_the_timeout(stub):
    stub.delay = 2.0
    started = time.monotonic()
    with pytest.raises(NotificationError, match="could not reach Slack"):
        slack.post(workspace(stub, timeout=0.3), "hello")
    assert time.monotonic() - started < 1.5

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nowhere = SlackWorkspace(token=TOKEN, channel="#x", base_url=f"http://127.0.0.1:{port}/api/", timeout_seconds=1)
    with pytest.raises(NotificationError) as info:
        slack.post(nowhere, "hello")
    assert TOKEN not in str(info.value)
