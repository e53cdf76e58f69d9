"""Processes tests start for themselves (not the lab): free loopback ports,
real anvil nodes, and stopping what a test started, by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

NPM_PREFIX = Path("/opt/rblab/npm")
ANVIL = NPM_PREFIX / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
ANVIL_PACKAGE = "@foundry-rs/anvil-linux-amd64@1.7.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def anvil_binary() -> Path:
    if not ANVIL.exists():
        if not shutil.which("npm"):
            pytest.skip(f"anvil is missing ({ANVIL}) and npm is not installed to fetch it")
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NPM_PREFIX), ANVIL_PACKAGE],
                       check=True, capture_output=True, timeout=600)
    return ANVIL


def rpc(url: str, method: str, params: list | None = None, timeout: float = 2.0):
    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}, timeout=timeout)
    r.raise_for_status()
    return r.json()["result"]


class Anvil:
    """One anvil node on a loopback port, with its own HOME (anvil writes history there)."""

    def __init__(self, name: str, tmp: Path, *args: str, block_time: int | None = 1) -> None:
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = tmp / f"home-{name}"
        self.home.mkdir()
        self.proc = subprocess.Popen(
            [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port), "--prune-history", "--silent",
             *(["--block-time", str(block_time)] if block_time else []), *args],
            env={"HOME": str(self.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                rpc(self.url, "eth_blockNumber", timeout=0.5)
                return
            except httpx.HTTPError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"anvil {name} did not start on port {self.port}") from exc
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def head(self) -> int:
        return int(rpc(self.url, "eth_blockNumber"), 16)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.home, ignore_errors=True)


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process a test started in its own session (the group is ours alone)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def kill_with_descendants(pid: int) -> None:
    """SIGKILL a process and everything under it at once, as losing its host or container would."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    victims = {pid}
    while more := {p for p, parent in parents.items() if parent in victims} - victims:
        victims |= more
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
