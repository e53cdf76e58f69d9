"""Stand-ins for the outside services the lab cannot run: Slack's Web API and
PagerDuty's Events API v2. Every request is recorded for tests.

    POST /api/<method>        Slack Web API (slack_sdk base_url=http://HOST:PORT/api/)
    POST /upload/<file_id>    where files.getUploadURLExternal sends the upload
    POST /v2/enqueue          PagerDuty Events API v2
    GET  /_records[?service=] recorded requests (JSON list);  DELETE /_records clears
    GET  /_health             liveness

Records (one JSON object a line in the records file): service, method, path,
query, headers (Authorization replaced by a marker), authorization_present,
content_type, body (parsed JSON or form; for uploads only size and sha256),
status (what the stub answered) and time.

Run: python -m lab.stubs --host 127.0.0.1 --port 18080 --records FILE
Tests that need failures start their own in-process with `Stubs.start(records)`
and set its fault knobs (slack_errors, pagerduty_failures, delay_seconds,
slack_token).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import itertools
import json
import logging
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)

REDACTED = "<redacted>"
PAGERDUTY_ACTIONS = ("trigger", "acknowledge", "resolve")
PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")


class Recorder:
    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def add(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"), default=str)
        with self.lock, self.path.open("a") as f:
            f.write(line + "\n")

    def all(self, service: str | None = None) -> list[dict]:
        with self.lock:
            lines = self.path.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        return [r for r in records if service is None or r["service"] == service]

    def clear(self) -> None:
        with self.lock:
            self.path.write_text("")


_ts_counter = itertools.count(1)


def _slack_ts() -> str:
    """Unique, increasing, shaped like Slack's '1700000000.000100'."""
    return f"{int(time.time())}.{next(_ts_counter):06d}"


class Handler(BaseHTTPRequestHandler):
    server_version = "rblab-stubs/1"
    protocol_version = "HTTP/1.1"
    server: "Stubs"

    def log_message(self, fmt, *args):  # to the supervisord log in the lab; captured by pytest in tests
        log.info("%s %s", self.address_string(), fmt % args)

    # ------------------------------------------------------------ plumbing
    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _parse(self, raw: bytes):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype == "application/json":
            try:
                return json.loads(raw or b"null")
            except ValueError:
                return {"_unparsable": raw.decode("utf-8", "replace")}
        if ctype == "application/x-www-form-urlencoded":
            form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
            return {k: v[0] if len(v) == 1 else v for k, v in form.items()}
        if not raw:
            return None
        return {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}

    def _headers_redacted(self) -> dict:
        return {k: (REDACTED if k.lower() == "authorization" else v) for k, v in self.headers.items()}

    def _send(self, status: int, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, service: str, body, status: int) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        self.server.recorder.add(
            {
                "service": service,
                "method": self.command,
                "path": parsed.path,
                "query": dict(urllib.parse.parse_qsl(parsed.query)),
                "headers": self._headers_redacted(),
                "authorization_present": "Authorization" in self.headers,
                "content_type": self.headers.get("Content-Type"),
                "body": body,
                "status": status,
                "time": time.time(),
            }
        )

    # ------------------------------------------------------------ routes
    def do_GET(self):
        path = urllib.parse.urlsplit(self.path)
        if path.path == "/_health":
            return self._send(200, {"ok": True})
        if path.path == "/_records":
            service = dict(urllib.parse.parse_qsl(path.query)).get("service")
            return self._send(200, self.server.recorder.all(service))
        if path.path.startswith("/api/"):  # Slack accepts GET for many methods
            return self._slack(path.path[len("/api/"):], dict(urllib.parse.parse_qsl(path.query)))
        self._send(404, {"error": "not found", "path": path.path})

    def do_DELETE(self):
        if urllib.parse.urlsplit(self.path).path == "/_records":
            self.server.recorder.clear()
            return self._send(200, {"ok": True})
        self._send(404, {"error": "not found"})

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        raw = self._read_body()
        body = self._parse(raw)
        if path.startswith("/api/"):
            return self._slack(path[len("/api/"):], body)
        if path.startswith("/upload/"):  # raw file bytes, whatever the Content-Type says
            self._record("slack", {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}, 200)
            data = b"OK - " + str(len(raw)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        if path == "/v2/enqueue":
            return self._pagerduty(body)
        self._send(404, {"error": "not found", "path": path})

    # ------------------------------------------------------------ Slack
    def _slack(self, method: str, body) -> None:
        form = body if isinstance(body, dict) else {}
        token = form.get("token") or (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        expected = self.server.slack_token
        if not token:
            answer = {"ok": False, "error": "not_authed"}
        elif expected is not None and not hmac.compare_digest(token.encode(), expected.encode()):
            answer = {"ok": False, "error": "invalid_auth"}
        elif self.server.slack_errors:
            answer = {"ok": False, "error": self.server.slack_errors.pop(0)}
        else:
            answer = self._slack_answer(method, form)
        self._record("slack", body, 200)  # Slack answers errors with 200 and ok: false
        time.sleep(self.server.delay_seconds)
        self._send(200, answer)

    def _slack_answer(self, method: str, form: dict) -> dict:
        host = self.headers.get("Host") or f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        if method == "files.getUploadURLExternal":
            file_id = "F" + uuid.uuid4().hex[:10].upper()
            return {"ok": True, "upload_url": f"http://{host}/upload/{file_id}", "file_id": file_id}
        if method == "files.completeUploadExternal":
            files = form.get("files")
            if isinstance(files, str):
                try:
                    files = json.loads(files)
                except ValueError:
                    files = []
            return {"ok": True, "files": [{"id": f.get("id"), "title": f.get("title")} for f in files or []]}
        if method == "auth.test":
            return {"ok": True, "url": f"http://{host}/", "team": "lab", "user": "rbbot", "team_id": "T123", "user_id": "U123"}
        return {"ok": True, "channel": "C123", "ts": _slack_ts()}

    # ------------------------------------------------------------ PagerDuty
    def _pagerduty(self, body) -> None:
        errors = []
        if not isinstance(body, dict):
            errors.append("body must be a JSON object")
            body_d = {}
        else:
            body_d = body
        if not body_d.get("routing_key"):
            errors.append("'routing_key' is missing or blank")
        action = body_d.get("event_action")
        if action not in PAGERDUTY_ACTIONS:
            errors.append(f"'event_action' must be one of {', '.join(PAGERDUTY_ACTIONS)}")
        if action == "trigger":
            payload = body_d.get("payload") if isinstance(body_d.get("payload"), dict) else {}
            for key in ("summary", "source"):
                if not payload.get(key):
                    errors.append(f"'payload.{key}' is missing or blank")
            if payload.get("severity") not in PAGERDUTY_SEVERITIES:
                errors.append(f"'payload.severity' must be one of {', '.join(PAGERDUTY_SEVERITIES)}")
        elif action in ("acknowledge", "resolve") and not body_d.get("dedup_key"):
            errors.append("'dedup_key' is required to acknowledge or resolve")
        if self.server.pagerduty_failures:
            # A real error may echo what it got; an injected one echoes the routing key.
            status = self.server.pagerduty_failures.pop(0)
            self._record("pagerduty", body, status)
            return self._send(status, {"status": "error", "message": f"bad key {body_d.get('routing_key')}",
                                       "errors": [f"routing_key {body_d.get('routing_key')} rejected"]})
        if errors:
            self._record("pagerduty", body, 400)
            return self._send(400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors})
        dedup = body_d.get("dedup_key") or uuid.uuid4().hex
        self._record("pagerduty", body, 202)
        self._send(202, {"status": "success", "message": "Event processed", "dedup_key": dedup})


class Stubs(ThreadingHTTPServer):
    """Both stand-ins on one port: run by supervisord in the lab (`serve`),
    in-process by unit tests (`start`), which also set the fault knobs."""

    daemon_threads = True

    def __init__(self, host: str, port: int, records: Path):
        self.recorder = Recorder(records)
        self.slack_token: str | None = None  # when set, any other token gets invalid_auth
        self.slack_errors: list[str] = []  # Slack error codes to answer (ok: false), in order
        self.pagerduty_failures: list[int] = []  # HTTP statuses to answer before accepting again
        self.delay_seconds = 0.0  # before every Slack answer
        super().__init__((host, port), Handler)

    @classmethod
    def start(cls, records: Path) -> "Stubs":
        """On a free loopback port, serving from a daemon thread; `stop()` ends it."""
        server = cls("127.0.0.1", 0, records)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def records(self, service: str | None = None) -> list[dict]:
        return self.recorder.all(service)

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return  # the client gave up waiting (timeout tests): its business, not an error here
        super().handle_error(request, client_address)


def serve(host: str, port: int, records: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    server = Stubs(host, port, records)
    print(f"stubs listening on http://{host}:{port}, recording to {records}", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Slack and PagerDuty stand-ins for the lab")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18080)
    p.add_argument("--records", type=Path, required=True)
    a = p.parse_args(argv)
    serve(a.host, a.port, a.records)


if __name__ == "__main__":
    main()
