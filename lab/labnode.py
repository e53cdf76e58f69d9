#!/usr/bin/python3
"""One lab node: anvil plus a stand-in for p2p sync.

Standard library only: this runs as the service user under /usr/bin/python3,
which cannot use the project's virtualenv. `lab up` copies it into LAB_DIR.

Modes
  reference  anvil mines one block a second: it stands for the chain tip.
  follower   anvil mines only when told; every ~0.5 s this wrapper asks its
             reference for the head and mines the missing blocks
             (`anvil_mine N`, which stamps them with the current time, so a
             node that catches up has a fresh head, never one in the future).

Signals
  SIGUSR1    stall: stop advancing (follower stops following; reference
             switches interval mining off). Held in memory only, so a
             restart clears it, as a restart clears a real stuck node.
  SIGUSR2    resume.

Files
  DATADIR/sync-held  while it exists, a follower does not follow (the `lag`
             fault). On disk, so a restart does not clear it: a node whose
             sync source is gone restarts fine and stays behind.
  DATADIR/state.json anvil's state, rewritten in place every 2 s. A kill in
             the middle of a write tears it, and anvil then refuses to start
             (exit 2) for good. A real client recovers from an unclean stop, so
             a torn file (not JSON) is set aside as state.json.torn and the node
             starts empty and catches up. A file that is JSON but that anvil
             cannot load (another anvil's, the failed-upgrade case) is left
             for anvil to refuse.
  SIGTERM/INT  forwarded to anvil, which dumps its state; then exit.

Metrics
  With --metrics-port, serves /debug/metrics/prometheus on the node's address
  as Geth and Erigon do on :6060 (`chain_head_block`), from this process: a
  killed or frozen node's metrics go with it, so a scrape of them fails as a
  real client's does. Operators' own rules (`up == 0`) watch exactly that.

Exit codes: anvil's own when it dies, 127 when the anvil binary is missing.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

POLL_SECONDS = 0.5
MAX_MINE_PER_CALL = 5000
STOP_WAIT_SECONDS = 4.0
SYNC_HELD = "sync-held"  # the `lag` fault's file in the datadir


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} labnode: {msg}", file=sys.stderr, flush=True)


def rpc(url: str, method: str, params: list | None = None, timeout: float = 1.0):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        answer = json.loads(resp.read())
    if "error" in answer:
        raise RuntimeError(f"{method} at {url}: {answer['error']}")
    return answer["result"]


def _die_with_parent() -> None:
    """In the child: killed if this wrapper dies, so anvil is never orphaned (SIGKILL, not SIGTERM: a frozen
    anvil would hold its port with the SIGTERM pending, and the node's restart could not bind it)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


METRICS_PATH = "/debug/metrics/prometheus"  # Geth's and Erigon's


def serve_metrics(host: str, port: int, own_url: str) -> None:
    """A client-style metrics endpoint in a daemon thread of this process."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != METRICS_PATH:
                self.send_error(404)
                return
            try:
                head = int(rpc(own_url, "eth_blockNumber", timeout=0.5), 16)
            except Exception:  # noqa: BLE001 - anvil not answering: no head to report
                self.send_error(503)
                return
            body = f"# TYPE chain_head_block gauge\nchain_head_block {head}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # one line per scrape would drown the node's log
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()


def set_aside_torn_state(path: str) -> None:
    """A state file a kill tore mid-write (see Files) out of anvil's way."""
    try:
        with open(path, "rb") as f:
            json.load(f)
    except FileNotFoundError:
        return
    except ValueError as exc:  # not JSON (or not UTF-8): a torn write
        os.replace(path, path + ".torn")
        log(f"{path} torn by an unclean stop ({exc}): set aside as {path}.torn; starting empty")


class Node:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.own_url = f"http://{args.host}:{args.port}"
        self.child: subprocess.Popen | None = None
        self.stalled = False  # wanted
        self.applied_stall: bool | None = None  # reference: what anvil was last told
        self.stopping = False
        self.sync_held = os.path.join(args.datadir, SYNC_HELD)

    # signal handlers: only set flags (and forward TERM at once)
    def on_stall(self, *_):
        self.stalled = True
        log("stall requested (SIGUSR1)")

    def on_resume(self, *_):
        self.stalled = False
        log("resume requested (SIGUSR2)")

    def on_stop(self, signum, _frame):
        self.stopping = True
        if self.child and self.child.poll() is None:
            try:
                self.child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def start_anvil(self) -> None:
        a = self.args
        os.makedirs(os.path.join(a.datadir, "home"), exist_ok=True)
        state = os.path.join(a.datadir, "state.json")
        set_aside_torn_state(state)
        cmd = [
            a.anvil,
            "--host", a.host,
            "--port", str(a.port),
            "--chain-id", str(a.chain_id),
            "--state", state,
            "--state-interval", "2",
            "--prune-history",
        ]
        if a.mode == "reference":
            cmd += ["--block-time", "1"]
        env = dict(os.environ, HOME=os.path.join(a.datadir, "home"))
        log(f"starting {' '.join(cmd)}")
        self.child = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)

    def step(self) -> None:
        """One poll: apply stall state (reference) or follow the reference (follower)."""
        if self.args.mode == "reference":
            if self.applied_stall != self.stalled:
                rpc(self.own_url, "evm_setIntervalMining", [0 if self.stalled else 1])
                self.applied_stall = self.stalled
                log("interval mining " + ("off (stalled)" if self.stalled else "on"))
            return
        if self.stalled or os.path.exists(self.sync_held):
            return
        ref = int(rpc(self.args.reference, "eth_blockNumber"), 16)
        own = int(rpc(self.own_url, "eth_blockNumber"), 16)
        if ref > own:
            n = min(ref - own, MAX_MINE_PER_CALL)
            rpc(self.own_url, "anvil_mine", [hex(n)], timeout=10.0)
            if n > 1:
                log(f"caught up {n} blocks ({own} -> {own + n}, reference at {ref})")

    def run(self) -> int:
        if not (os.path.isfile(self.args.anvil) and os.access(self.args.anvil, os.X_OK)):
            log(f"anvil binary missing or not executable: {self.args.anvil}")
            return 127
        signal.signal(signal.SIGUSR1, self.on_stall)
        signal.signal(signal.SIGUSR2, self.on_resume)
        signal.signal(signal.SIGTERM, self.on_stop)
        signal.signal(signal.SIGINT, self.on_stop)
        self.start_anvil()
        if self.args.metrics_port:
            serve_metrics(self.args.host, self.args.metrics_port, self.own_url)
        last_error = ""
        while True:
            if self.stopping:
                try:
                    self.child.wait(timeout=STOP_WAIT_SECONDS)
                    return 0
                except subprocess.TimeoutExpired:
                    log("anvil did not stop in time; killing it")
                    self.child.kill()
                    self.child.wait()
                    return 1
            code = self.child.poll()
            if code is not None:
                log(f"anvil exited with {code}")
                return 128 - code if code < 0 else (code or 1)
            try:
                self.step()
                last_error = ""
            except Exception as exc:  # noqa: BLE001 - keep polling; log each new kind of failure once
                text = f"{type(exc).__name__}: {exc}"
                if text != last_error:
                    log(f"poll failed: {text}")
                    last_error = text
            time.sleep(POLL_SECONDS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--anvil", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--chain-id", type=int, required=True)
    p.add_argument("--datadir", required=True)
    p.add_argument("--mode", choices=("reference", "follower"), required=True)
    p.add_argument("--reference", help="reference RPC URL (follower mode)")
    p.add_argument("--metrics-port", type=int, help="serve client-style metrics on this port")
    args = p.parse_args(argv)
    if args.mode == "follower" and not args.reference:
        p.error("--reference is required in follower mode")
    return Node(args).run()


if __name__ == "__main__":
    sys.exit(main())
