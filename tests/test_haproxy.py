"""Taking servers in and out of rotation on a real HAProxy started by this module.

HAProxy runs in the foreground (-db) on free 127.0.0.1 ports with two
backends whose servers are small HTTP servers in this process, and is
stopped by PID at the end.
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tasks.audit import AuditRecord
from tasks.errors import HAProxyError, InvalidInput
from tasks.haproxy import HAProxyRuntime
from tests.processes import stop_process

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
pytestmark = pytest.mark.skipif(not Path(HAPROXY).exists(), reason="needs haproxy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_server(name: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass  # HAProxy's checks hang up once they have the status line

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@dataclass
class Lab:
    dir: Path
    admin_tcp: str
    admin_unix: str
    user_unix: str
    frontend: int


@pytest.fixture(scope="module")
def own_haproxy():  # the test's own HAProxy, not the shared lab's
    d = Path(tempfile.mkdtemp(prefix="rb-haproxy-"))
    servers = {n: http_server(n) for n in ("node-a", "node-b", "arch-1")}
    port = {n: s.server_address[1] for n, s in servers.items()}
    stats, frontend, dead = free_port(), free_port(), free_port()
    (d / "haproxy.cfg").write_text(f"""
global
    stats socket ipv4@127.0.0.1:{stats} level admin
    stats socket {d}/admin.sock mode 600 level admin
    stats socket {d}/user.sock mode 600 level user

defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s

frontend fe_rpc
    bind 127.0.0.1:{frontend}
    default_backend be_rpc

backend be_rpc
    balance roundrobin
    option httpchk GET /
    server node-a 127.0.0.1:{port['node-a']} check inter 100ms
    server node-b 127.0.0.1:{port['node-b']} check inter 100ms weight 2

backend be_archive
    option httpchk GET /
    server arch-1 127.0.0.1:{port['arch-1']} check inter 100ms
    server arch-2 127.0.0.1:{dead} check inter 100ms
    server arch-3 127.0.0.1:{dead} disabled
""")
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(d / "haproxy.cfg")],
                            stdout=open(d / "haproxy.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rt = HAProxyRuntime(f"tcp://127.0.0.1:{stats}", timeout=2)
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (d / "haproxy.log").read_text()
            try:
                states = {s.server: s for s in rt.server_states()}
                if states["node-a"].check_status == "L7OK" and states["node-b"].check_status == "L7OK" \
                        and states["arch-2"].op_state == "DOWN" and states["arch-2"].check_status:
                    break
            except HAProxyError:
                pass
            assert time.monotonic() < deadline, "haproxy checks did not settle"
            time.sleep(0.05)
        yield Lab(d, f"tcp://127.0.0.1:{stats}", f"unix://{d}/admin.sock", f"unix://{d}/user.sock", frontend)
    finally:
        stop_process(proc, grace=5)
        for s in servers.values():
            s.shutdown()
            s.server_close()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rt(own_haproxy):
    client = HAProxyRuntime(own_haproxy.admin_tcp, timeout=2)
    yield client
    # Every test leaves this HAProxy as it found it.
    for backend, server, weight in [("be_rpc", "node-a", 1), ("be_rpc", "node-b", 2), ("be_archive", "arch-1", 1)]:
        client.ready(backend, server)
        client.set_weight(backend, server, weight)


def hits(own_haproxy: Lab, n: int = 12) -> Counter:
    out = Counter()
    for _ in range(n):
        with urllib.request.urlopen(f"http://127.0.0.1:{own_haproxy.frontend}/", timeout=2) as r:
            out[r.read().decode()] += 1
    return out


def by_name(states):
    return {(s.backend, s.server): s for s in states}


def test_server_states_read_checks_admin_state_and_weight(own_haproxy, rt):
    states = by_name(rt.server_states())
    a, b = states["be_rpc", "node-a"], states["be_rpc", "node-b"]
    assert (a.op_state, a.admin_state, a.weight, a.check_status) == ("UP", "ready", 1, "L7OK")
    assert a.address.startswith("127.0.0.1:") and a.in_rotation
    assert b.weight == 2
    down = states["be_archive", "arch-2"]
    assert (down.op_state, down.admin_state, down.check_status) == ("DOWN", "ready", "L4CON")
    disabled = states["be_archive", "arch-3"]
    assert (disabled.op_state, disabled.admin_state) == ("DOWN", "maint") and not disabled.in_rotation
    assert {s.server for s in rt.server_states("be_archive")} == {"arch-1", "arch-2", "arch-3"}


def test_our_reading_agrees_with_show_stat(own_haproxy, rt):
    """The numeric check status and admin bits mean what HAProxy's own CSV says."""
    rt.drain("be_rpc", "node-a")
    rt.maint("be_archive", "arch-1")
    ours = by_name(rt.server_states())
    text = rt.command("show stat -1 4 -1")
    rows = list(csv.DictReader(io.StringIO(text.lstrip("# "))))
    assert len(rows) == len(ours) == 5
    for row in rows:
        s = ours[row["pxname"], row["svname"]]
        if s.admin_state != "maint":  # in maint, show stat hides the last check; we keep it
            assert s.check_status == row["check_status"].removeprefix("* ")
        expected_status = {"maint": "MAINT", "drain": "DRAIN"}.get(s.admin_state, "UP" if s.op_state == "UP" else "DOWN")
        assert row["status"] == expected_status, (s, row["status"])
        assert int(row["weight"]) == s.weight


def test_a_drained_server_gets_no_new_requests_and_comes_back_when_ready(own_haproxy, rt):
    assert set(hits(own_haproxy)) == {"node-a", "node-b"}
    rt.drain("be_rpc", "node-a")
    a = rt.server_state("be_rpc", "node-a")
    assert (a.op_state, a.admin_state, a.in_rotation) == ("UP", "drain", False)
    assert set(hits(own_haproxy)) == {"node-b"}
    rt.ready("be_rpc", "node-a")
    assert rt.server_state("be_rpc", "node-a").in_rotation
    assert set(hits(own_haproxy, 60)) == {"node-a", "node-b"}


def test_maintenance_and_weights(own_haproxy, rt):
    rt.maint("be_rpc", "node-b")
    assert rt.server_state("be_rpc", "node-b").admin_state == "maint"
    assert set(hits(own_haproxy)) == {"node-a"}
    rt.ready("be_rpc", "node-b")
    rt.set_weight("be_rpc", "node-a", 0)
    assert rt.server_state("be_rpc", "node-a").weight == 0
    assert set(hits(own_haproxy)) == {"node-b"}
    rt.set_weight("be_rpc", "node-a", 256)
    assert rt.server_state("be_rpc", "node-a").weight == 256
    for bad in (-1, 257, 1.5, True, "10"):
        with pytest.raises(InvalidInput):
            rt.set_weight("be_rpc", "node-a", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend,server", [
    ("be_rpc", "node-a;disable server be_rpc/node-b"),
    ("be_rpc", "node-a\nset server be_rpc/node-b state maint"),
    ("be_rpc;shutdown sessions", "node-a"),
    ("be rpc", "node-a"),
    ("be_rpc", ""),
])
def test_names_that_would_inject_commands_are_refused_before_sending(own_haproxy, rt, backend, server):
    with pytest.raises(InvalidInput):
        rt.drain(backend, server)
    assert rt.server_state("be_rpc", "node-b").admin_state == "ready"
    with pytest.raises(InvalidInput):
        rt.command("show info; show stat")


def test_haproxy_refusals_become_errors(own_haproxy, rt):
    with pytest.raises(HAProxyError, match="No such server"):
        rt.drain("be_rpc", "node-z")
    with pytest.raises(HAProxyError, match="No such backend"):
        rt.drain("be_nope", "node-a")
    with pytest.raises(HAProxyError, match="Can't find backend"):
        rt.server_states("be_nope")
    with pytest.raises(HAProxyError, match="no server node-z"):
        rt.server_state("be_rpc", "node-z")
    user = HAProxyRuntime(own_haproxy.user_unix, timeout=2)
    assert user.server_states("be_rpc")  # reading is allowed at level user...
    with pytest.raises(HAProxyError, match="Permission denied"):
        user.drain("be_rpc", "node-a")  # ...changing is not


def test_a_client_from_a_block_over_a_unix_socket(own_haproxy, rt):
    from blocks import HAProxyAdmin

    block = HAProxyAdmin(address=own_haproxy.admin_unix, timeout_seconds=2)
    client = HAProxyRuntime.from_block(block)
    client.drain("be_archive", "arch-1")
    assert client.server_state("be_archive", "arch-1").admin_state == "drain"
    client.ready("be_archive", "arch-1")
    assert {s.server for s in client.server_states("be_rpc")} == {"node-a", "node-b"}
    client.set_weight("be_archive", "arch-1", 7)
    assert rt.server_state("be_archive", "arch-1").weight == 7  # the same HAProxy, seen over TCP


def test_changes_are_audited_when_asked(own_haproxy, tmp_path):
    audit = AuditRecord("haproxy-audit", "test", directory=tmp_path)
    rt = HAProxyRuntime(own_haproxy.admin_tcp, timeout=2, audit=audit)
    rt.drain("be_rpc", "node-a")
    rt.ready("be_rpc", "node-a")
    with pytest.raises(HAProxyError):
        rt.ready("be_rpc", "node-z")
    rt.set_weight("be_rpc", "node-a", 1)
    rows = [(e["data"]["command"], e["data"]["exit_code"], e["data"]["action"]) for e in audit.entries()]
    assert rows == [
        ("set server be_rpc/node-a state drain", 0, "drain"),
        ("set server be_rpc/node-a state ready", 0, "ready"),
        ("set server be_rpc/node-z state ready", 1, "ready"),
        ("set weight be_rpc/node-a 1", 0, "set-weight"),
    ]


def test_an_unreachable_or_silent_haproxy_fails_within_the_timeout(tmp_path):
    with pytest.raises(HAProxyError, match="cannot reach"):
        HAProxyRuntime(f"tcp://127.0.0.1:{free_port()}", timeout=1).server_states()
    with pytest.raises(HAProxyError, match="cannot reach"):
        HAProxyRuntime(f"unix://{tmp_path}/none.sock", timeout=1).server_states()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        started = time.monotonic()
        with pytest.raises(HAProxyError, match="within 0.3s"):
            HAProxyRuntime(f"tcp://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3).server_states()
        assert time.monotonic() - started < 1.5
    finally:
        silent.close()
    for bad in ("http://x:1", "tcp://nohost", "x"):
        with pytest.raises(InvalidInput):
            HAProxyRuntime(bad)
