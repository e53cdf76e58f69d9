"""deployments/prestart.py: a run's process forked from a warm server behaves, to the worker, like the
`python -m prefect.engine` it replaces (exit code, death by signal, output, signals), and without a
server the run starts cold. A server of the test's own on a socket of its own. Its engine runs never
reach a Prefect API: a run with a bad id fails at once; a run that must still be running when the test
signals it asks an API that accepts the connection and never answers, so it only ends when told to."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from deployments.prestart import SOCKET_ENV
from tests.fleet import wait_for
from tests.processes import stop_process

ROOT = Path(__file__).resolve().parents[1]
CLIENT = [sys.executable, str(ROOT / "deployments" / "prestart.py")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("prestart") / "prestart.sock"
    log = open(path.with_suffix(".log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "deployments.prestart", "serve", "--socket", str(path)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: path.exists() or proc.poll() is not None, 120, what="the prestart server's socket")
    assert proc.poll() is None, path.with_suffix(".log").read_text()
    yield path, proc
    stop_process(proc)
    log.close()


@pytest.fixture(scope="module")
def silent_api():
    """An API URL whose server takes the connection (the kernel's backlog) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/api"
    listener.close()


def _client(env: dict, tmp_path) -> subprocess.Popen:
    # Port 9: nothing listens, so an engine that gets that far fails at once, and never talks elsewhere.
    env = os.environ | {"PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_API_REQUEST_TIMEOUT": "60"} | env
    return subprocess.Popen(CLIENT, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _running_run(server_path: Path, api: str, tmp_path) -> tuple[subprocess.Popen, int]:
    """A client whose forked run waits on the silent API: it ends only when signalled."""
    client = _client({SOCKET_ENV: str(server_path), "PREFECT__FLOW_RUN_ID": str(uuid.uuid4()),
                      "PREFECT_API_URL": api}, tmp_path)
    pid = _forked_pid(client)
    time.sleep(1)  # past its start: the engine is waiting on the API, its signal handling installed
    assert client.poll() is None and _alive(pid), "the run ended by itself: the test would prove nothing"
    return client, pid


def _forked_pid(proc: subprocess.Popen) -> int:
    line = proc.stderr.readline()
    assert line.startswith("prestart: run process "), line
    return int(line.split()[3])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_run_forked_by_the_server_exits_with_the_engines_code_and_output(server, tmp_path):
    path, proc = server
    client = _client({SOCKET_ENV: str(path), "PREFECT__FLOW_RUN_ID": "not-a-uuid"}, tmp_path)
    pid = _forked_pid(client)
    assert pid != client.pid
    _, err = client.communicate(timeout=60)
    # The engine's own refusal, written by the forked child straight to the client's stderr.
    assert "Invalid flow run id" in err
    assert client.returncode == 1
    wait_for(lambda: not _alive(pid), 10, interval=0.1, what=f"run process {pid} to end")


def test_a_run_killed_shows_the_worker_the_same_signal_and_a_killed_client_takes_its_run_along(
        server, silent_api, tmp_path):
    path, _ = server
    # The run process SIGKILLed (as the crash tests do): its client dies of SIGKILL too.
    client, pid = _running_run(path, silent_api, tmp_path)
    os.kill(pid, signal.SIGKILL)
    assert client.wait(timeout=30) == -signal.SIGKILL
    # The client SIGKILLed (the worker's process gone): the run does not outlive it.
    client, pid = _running_run(path, silent_api, tmp_path)
    client.kill()
    client.wait(timeout=10)
    wait_for(lambda: not _alive(pid), 10, interval=0.1, what=f"run process {pid} to end with its client")


def test_sigterm_to_the_client_reaches_the_run(server, silent_api, tmp_path):
    path, _ = server
    client, pid = _running_run(path, silent_api, tmp_path)
    client.send_signal(signal.SIGTERM)
    # Forwarded, the run dies of it and so does the client; not forwarded, both would wait on the API.
    assert client.wait(timeout=15) == -signal.SIGTERM
    wait_for(lambda: not _alive(pid), 10, interval=0.1, what=f"run process {pid} to end on SIGTERM")


def test_without_a_server_the_run_starts_cold(tmp_path):
    client = _client({SOCKET_ENV: str(tmp_path / "nobody.sock"), "PREFECT__FLOW_RUN_ID": "not-a-uuid"}, tmp_path)
    _, err = client.communicate(timeout=60)
    assert "prestart: run process" not in err
    assert "Invalid flow run id" in err and client.returncode == 1
