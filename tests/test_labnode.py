"""The lab node's wrapper (lab/labnode.py) against real anvil processes on loopback: no lab needed.

anvil rewrites its state file in place every --state-interval; a node killed in the middle of that write must
come back (a real client recovers from an unclean stop), or every later test of the fleet fails on that node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import anvil_binary, free_port, rpc

LABNODE = Path(__file__).resolve().parent.parent / "lab" / "labnode.py"


def _start_follower(datadir: Path, port: int, reference_url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(LABNODE), "--name", "t", "--anvil", str(anvil_binary()), "--host", "127.0.0.1",
         "--port", str(port), "--chain-id", "31337", "--datadir", str(datadir), "--mode", "follower",
         "--reference", reference_url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _head(url: str) -> int | None:
    try:
        return int(rpc(url, "eth_blockNumber", timeout=0.5), 16)
    except httpx.HTTPError:
        return None


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()):
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)  # the wrapper's group: anvil dies with it either way (PR_SET_PDEATHSIG)
    out, _ = proc.communicate(timeout=15)
    return out


@pytest.fixture
def follower(tmp_path, anvils):
    reference = anvils(block_time=1)
    rpc(reference.url, "anvil_mine", ["0x20"])
    started: list[subprocess.Popen] = []

    def start() -> tuple[subprocess.Popen, str]:
        port = free_port()
        started.append(_start_follower(tmp_path / "data", port, reference.url))
        return started[-1], f"http://127.0.0.1:{port}"

    (tmp_path / "data").mkdir()
    yield start, reference, tmp_path / "data"
    for proc in started:
        _stop(proc, signal.SIGKILL)


def test_a_follower_killed_mid_state_write_restarts_and_catches_up(follower):
    start, reference, datadir = follower
    proc, url = start()
    state = datadir / "state.json"
    _wait(lambda: (_head(url) or 0) >= 0x20 and state.exists() and state.stat().st_size > 0, 20,
          "the follower caught up and dumped its state")
    _stop(proc, signal.SIGKILL)
    whole = state.read_bytes()
    json.loads(whole)  # what anvil dumped is JSON: the test's torn file is a torn dump, not made-up bytes
    state.write_bytes(whole[: len(whole) // 2])  # killed half way through rewriting it

    proc, url = start()
    head = _wait(lambda: (h := _head(url)) is not None and h >= reference.head() - 2 and h, 20,
                 "the restarted follower answering at the reference's head")
    assert head >= 0x20
    assert (datadir / "state.json.torn").read_bytes() == whole[: len(whole) // 2]
    _wait(lambda: state.exists() and json.loads(state.read_bytes() or b"null"), 10, "a whole state file again")
    assert proc.poll() is None
    assert "torn by an unclean stop" in _stop(proc)


def test_a_state_file_anvil_cannot_load_is_left_for_anvil_to_refuse(follower):
    """JSON that this anvil cannot load is the failed-upgrade case (another release's state): not set aside."""
    start, _reference, datadir = follower
    (datadir / "state.json").write_text('{"not": "an anvil state"}')
    proc, _url = start()
    assert proc.wait(timeout=15) != 0
    assert (datadir / "state.json").read_text() == '{"not": "an anvil state"}'
    assert not (datadir / "state.json.torn").exists()
