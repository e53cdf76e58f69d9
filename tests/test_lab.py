"""The lab itself, against the real processes: nodes follow their reference,
and each fault does to a node what it would do to a real one."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import paramiko
import pytest
from slack_sdk import WebClient

import lab as lab_api
from inventory import load_inventory
from lab import haproxy, topology
from tests.fleet import runbook_logins

# The lab itself (no deployment): these start while the deployments are being registered (conftest).
pytestmark = [pytest.mark.lab, pytest.mark.no_deployments]
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- helpers


def rpc(url: str, method: str, params: list | None = None, timeout: float = 1.0):
    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}, timeout=timeout)
    r.raise_for_status()
    return r.json()["result"]


def head(url: str, timeout: float = 1.0) -> int:
    return int(rpc(url, "eth_blockNumber", timeout=timeout), 16)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    end = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < end:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


def tcp_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def supervisor_state(node: dict) -> str:
    out = subprocess.run(
        ["supervisorctl", "-c", node["supervisor_config"], "status", node["program"]],
        capture_output=True, text=True, timeout=10,
    ).stdout.split()
    return out[1] if len(out) > 1 else "UNKNOWN"


def ssh_client(lab: dict, host: dict) -> paramiko.SSHClient:
    """A real SSH login as the service user, trusting only the lab's known_hosts."""
    client = paramiko.SSHClient()
    client.load_host_keys(lab["ssh"]["known_hosts"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    sock = socket.create_connection((host["address"], host["ssh_port"]), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.connect(host["address"], port=host["ssh_port"], username=lab["ssh"]["user"],
                   key_filename=lab["ssh"]["private_key"], sock=sock, timeout=5, banner_timeout=5,
                   auth_timeout=5, allow_agent=False, look_for_keys=False)
    return client


def ssh_run(client: paramiko.SSHClient, command: str, timeout: float = 20) -> tuple[int, str]:
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode() + stderr.read().decode()
    return stdout.channel.recv_exit_status(), out


@pytest.fixture(autouse=True)
def healed(lab):
    """Whatever a test injects is healed afterwards, pass or fail."""
    yield
    for name in list(lab_api.status()["faults"]):
        lab_api.heal(name)


# ---------------------------------------------------------------- shape


def test_inventory_validates_and_matches_the_running_lab(lab):
    inv = load_inventory(lab["inventory"])
    assert set(inv.nodes) == set(lab["nodes"]) == {"eth-a", "eth-b", "eth-c", "op-a", "op-b"}
    assert set(inv.hosts) == set(lab["hosts"]) == {"h1", "h2", "h3", "h4"}
    assert set(inv.hosts["h4"].standby) == set(topology.CHAINS)  # the standby: one slot per chain
    assert [str(u) for u in inv.chains["lab-eth"].references] == ["http://10.213.7.1:8545/"]
    for name, node in inv.nodes.items():
        assert str(node.rpc_url).rstrip("/") == lab["nodes"][name]["rpc_url"]
        assert node.lb.backend == lab["nodes"][name]["lb"]["backend"]
        assert Path(inv.hosts[node.host].supervisor_config).is_file()
    assert lab["state"] == "up"


def test_status_cli_reports_the_lab_as_json():
    done = subprocess.run([sys.executable, "-m", "lab", "status", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    st = json.loads(done.stdout)
    assert {n["state"] for n in st["nodes"].values()} == {"RUNNING"}
    assert all(n["head"] is not None for n in [*st["nodes"].values(), *st["references"].values()])
    assert st["checkout"] == str(REPO)


def test_the_lab_records_the_checkout_that_started_it(lab):
    assert lab["checkout"] == str(REPO)
    assert json.loads((Path(lab["lab_dir"]) / "lab.json").read_text())["checkout"] == str(REPO)
    assert lab_api.foreign_lab() is None


def test_this_session_holds_the_lab_alone(lab):
    import fcntl
    import os

    from tests.conftest import SESSION_ENV, SESSION_LOCK

    with open(SESSION_LOCK) as other:  # a second open file: flock(2) conflicts even in this process
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # This process, or under `pytest -n` the controller whose worker this is.
        assert other.read().strip() == os.environ.get(SESSION_ENV, str(os.getpid()))


def test_every_node_head_advances(lab):
    every = {**lab["nodes"], **lab["references"]}
    before = {name: head(n["rpc_url"]) for name, n in every.items()}
    wait_until(lambda: all(head(n["rpc_url"]) > before[name] for name, n in every.items()),
               6, "every head to advance")


def test_haproxy_serves_both_chains_with_every_server_up(lab):
    assert set(haproxy.server_status().values()) == {"UP"}
    for chain in lab["chains"].values():
        assert head(chain["frontend_url"]) >= 0


# ---------------------------------------------------------------- faults


def test_stall_stops_the_head_while_the_reference_advances_and_heal_resumes(lab):
    node, ref = lab["nodes"]["eth-b"], lab["references"]["ref-eth"]
    lab_api.fault("eth-b", "stall")
    time.sleep(0.7)  # a follow step already under way may still land
    stalled_at, ref_at = head(node["rpc_url"]), head(ref["rpc_url"])
    time.sleep(2.5)
    assert head(node["rpc_url"]) == stalled_at
    assert head(ref["rpc_url"]) >= ref_at + 2
    assert lab_api.status()["nodes"]["eth-b"]["fault"] == "stall"
    lab_api.heal("eth-b")
    wait_until(lambda: head(node["rpc_url"]) >= head(ref["rpc_url"]) - 1, 3, "eth-b to catch up")
    assert lab_api.status()["nodes"]["eth-b"]["fault"] is None


def test_stalled_reference_stops_the_tip_and_heal_resumes_it(lab):
    ref, follower = lab["references"]["ref-op"], lab["nodes"]["op-a"]
    lab_api.fault("ref-op", "stall")
    time.sleep(1.2)
    at = head(ref["rpc_url"])
    time.sleep(2.2)
    assert head(ref["rpc_url"]) == at
    assert head(follower["rpc_url"]) <= at
    lab_api.heal("ref-op")
    wait_until(lambda: head(ref["rpc_url"]) > at, 3, "ref-op to mine again")


def test_freeze_makes_rpc_time_out_and_heal_restores_it(lab):
    node = lab["nodes"]["eth-c"]
    lab_api.fault("eth-c", "freeze")
    with pytest.raises(httpx.TimeoutException):
        head(node["rpc_url"], timeout=1.0)
    assert supervisor_state(node) == "RUNNING"  # supervisord cannot tell a frozen process
    lab_api.heal("eth-c")
    wait_until(lambda: head(node["rpc_url"]) >= head(lab["references"]["ref-eth"]["rpc_url"]) - 1,
               4, "eth-c to answer and catch up")


def test_kill_leaves_the_node_down_until_heal(lab):
    node = lab["nodes"]["op-b"]
    lab_api.fault("op-b", "kill")
    assert supervisor_state(node) != "RUNNING"
    with pytest.raises(httpx.TransportError):
        head(node["rpc_url"])
    wait_until(lambda: haproxy.server_status()[("op_rpc", "op-b")].startswith("DOWN"), 5,
               "HAProxy to mark op-b DOWN")
    time.sleep(1.5)  # autorestart is off: it stays down
    assert supervisor_state(node) != "RUNNING"
    lab_api.heal("op-b")
    assert supervisor_state(node) == "RUNNING"
    wait_until(lambda: head(node["rpc_url"]) >= head(lab["references"]["ref-op"]["rpc_url"]) - 1,
               4, "op-b to answer and catch up")


def test_partition_makes_the_host_unreachable_and_heal_restores_it(lab):
    h3, h1 = lab["hosts"]["h3"], lab["hosts"]["h1"]
    lab_api.fault("eth-c", "partition")
    assert not tcp_reachable(h3["address"], 22, timeout=1.0)
    with pytest.raises(httpx.TransportError):
        head(lab["nodes"]["eth-c"]["rpc_url"], timeout=1.0)
    assert tcp_reachable(h1["address"], 22)
    assert lab_api.status()["hosts"]["h3"]["link_up"] is False
    lab_api.heal("eth-c")
    wait_until(lambda: tcp_reachable(h3["address"], 22, timeout=0.5), 5, "h3 to be reachable again")
    wait_until(lambda: head(lab["nodes"]["eth-c"]["rpc_url"]) >= head(lab["references"]["ref-eth"]["rpc_url"]) - 1,
               5, "eth-c to catch up after the partition")


def test_lag_holds_a_follower_behind_across_a_restart_until_heal(lab):
    node, ref = lab["nodes"]["op-a"], lab["references"]["ref-op"]
    lab_api.fault("op-a", "lag")
    time.sleep(0.7)  # a follow step already under way may still land
    held_at = head(node["rpc_url"])
    pid = lab_api.status()["nodes"]["op-a"]["pid"]
    done = subprocess.run(["supervisorctl", "-c", node["supervisor_config"], "restart", node["program"]],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_until(lambda: supervisor_state(node) == "RUNNING", 5, "op-a running again")
    st = lab_api.status()["nodes"]["op-a"]
    assert st["pid"] != pid and st["fault"] == "lag"  # a restart does not clear it
    wait_until(lambda: head(ref["rpc_url"]) >= held_at + 3, 6, "the reference to pull ahead")
    time.sleep(1.2)  # several follow polls of the new process
    assert head(node["rpc_url"]) <= held_at + 1  # restarted, answering, and still behind
    lab_api.heal("op-a")
    wait_until(lambda: head(node["rpc_url"]) >= head(ref["rpc_url"]) - 1, 4, "op-a to catch up")
    assert lab_api.status()["nodes"]["op-a"]["fault"] is None


def test_lag_is_refused_for_a_reference(lab):
    with pytest.raises(lab_api.LabError, match="reference"):
        lab_api.fault("ref-eth", "lag")


def _df(client: paramiko.SSHClient, path: str) -> tuple[int, int]:
    code, out = ssh_run(client, f"df -B1 --output=size,used {path} | tail -1")
    assert code == 0, out
    size, used = map(int, out.split())
    return size, used


def test_each_host_keeps_its_nodes_on_a_small_filesystem_that_fill_disk_fills_and_heal_empties(lab):
    node, host = lab["nodes"]["eth-a"], lab["hosts"]["h1"]
    datadir = node["datadir"]
    client = ssh_client(lab, host)
    try:
        size, used_before = _df(client, datadir)
        # The host's own filesystem, not the machine's disk: a few hundred MiB.
        assert 256 * 2**20 <= size <= 1024 * 2**20, size
        lab_api.fault("eth-a", "fill-disk", 80)
        size, used = _df(client, datadir)
        assert 0.79 <= used / size <= 0.82, used / size
        # What fills it is what a real node's disk fills with: old compressed logs and ETL scratch.
        code, out = ssh_run(client, f"cd {datadir} && find logs temp -type f -printf '%s %TY %p\\n'")
        assert code == 0 and "logs/" in out and "temp/" in out, out
        assert sum(int(line.split()[0]) for line in out.splitlines()) >= used - used_before - 2**20
        assert lab_api.status()["nodes"]["eth-a"]["fault"] == "fill-disk"
        with pytest.raises(lab_api.LabError, match="already"):
            lab_api.fault("eth-a", "fill-disk", 90)
        assert head(node["rpc_url"]) > 0  # the node still serves
    finally:
        lab_api.heal("eth-a")
    try:
        assert abs(_df(client, datadir)[1] - used_before) < 2**20
    finally:
        client.close()
    with pytest.raises(lab_api.LabError, match="percent"):
        lab_api.fault("eth-a", "fill-disk")
    with pytest.raises(lab_api.LabError, match="reference"):
        lab_api.fault("ref-eth", "fill-disk", 80)


# ---------------------------------------------------------------- recovery over SSH


def test_supervisorctl_restart_over_ssh_recovers_a_stalled_node(lab):
    node, ref, host = lab["nodes"]["eth-a"], lab["references"]["ref-eth"], lab["hosts"]["h1"]
    sshd_log = Path(host["sshd_log"])
    logins_before = runbook_logins(sshd_log.read_text())
    lab_api.fault("eth-a", "stall")
    stalled_at = head(node["rpc_url"])
    wait_until(lambda: head(ref["rpc_url"]) >= stalled_at + 4, 6, "the reference to pull ahead")

    client = ssh_client(lab, host)
    try:
        code, out = ssh_run(client, f"supervisorctl -c {node['supervisor_config']} restart {node['program']}")
        assert code == 0 and "eth-a: started" in out, out
        code, out = ssh_run(client, "id -un")
        assert out.strip() == "rbsvc"
    finally:
        client.close()
    assert runbook_logins(sshd_log.read_text()) == logins_before + 1

    wait_until(lambda: head(node["rpc_url"]) >= head(ref["rpc_url"]) - 5, 10, "eth-a to catch up after restart")
    block = rpc(node["rpc_url"], "eth_getBlockByNumber", ["latest", False])
    assert abs(int(block["timestamp"], 16) - time.time()) < 5, "caught-up head must be stamped about now"
    assert lab_api.status()["nodes"]["eth-a"]["fault"] is None  # the restart cleared the stall


def test_an_unknown_host_key_is_refused(lab):
    host = lab["hosts"]["h2"]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException):
        client.connect(host["address"], username="rbsvc", key_filename=lab["ssh"]["private_key"],
                       timeout=5, allow_agent=False, look_for_keys=False)
    client.close()


def test_a_node_whose_binary_is_gone_cannot_be_restarted(lab):
    node = lab["nodes"]["op-a"]
    binary = Path(node["binary"])
    target = binary.readlink()
    binary.unlink()
    try:
        t0 = time.monotonic()
        done = subprocess.run(["supervisorctl", "-c", node["supervisor_config"], "restart", node["program"]],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode != 0 and "ERROR" in done.stdout, done.stdout
        assert time.monotonic() - t0 < 6
    finally:
        binary.symlink_to(target)
    subprocess.run(["supervisorctl", "-c", node["supervisor_config"], "start", node["program"]],
                   capture_output=True, timeout=30, check=True)
    wait_until(lambda: head(node["rpc_url"]) >= head(lab["references"]["ref-op"]["rpc_url"]) - 1, 4,
               "op-a back and caught up")


# ---------------------------------------------------------------- outside-service stubs


def test_slack_stub_records_a_post_made_with_slack_sdk(lab):
    lab_api.clear_stub_records()
    slack = WebClient(token="xoxb-lab-test", base_url=lab["stubs"]["slack_base_url"], timeout=5)
    answer = slack.chat_postMessage(channel="#lab-ops", text="eth-b restarted")
    assert answer["ok"] and answer["ts"]
    (record,) = lab_api.stub_records("slack")
    assert record["path"] == "/api/chat.postMessage"
    assert record["body"] == {"channel": "#lab-ops", "text": "eth-b restarted"}
    assert record["authorization_present"] is True
    assert "xoxb-lab-test" not in json.dumps(record)


def test_slack_stub_accepts_files_upload_v2(lab):
    lab_api.clear_stub_records()
    slack = WebClient(token="xoxb-lab-test", base_url=lab["stubs"]["slack_base_url"], timeout=5)
    answer = slack.files_upload_v2(channel="C123", content="node,head\neth-a,12\n", filename="heads.csv",
                                   title="Heads")
    assert answer["ok"] and answer["file"]["title"] == "Heads"
    paths = [r["path"] for r in lab_api.stub_records("slack")]
    assert paths[0] == "/api/files.getUploadURLExternal" and paths[-1] == "/api/files.completeUploadExternal"


def test_pagerduty_stub_accepts_valid_events_and_refuses_invalid_ones(lab):
    lab_api.clear_stub_records()
    url = lab["stubs"]["pagerduty_events_url"]
    ok = httpx.post(url, json={"routing_key": "lab-routing-key", "event_action": "trigger", "dedup_key": "eth-b",
                               "payload": {"summary": "eth-b stalled", "source": "eth-b", "severity": "critical"}},
                    timeout=5)
    assert ok.status_code == 202 and ok.json() == {"status": "success", "message": "Event processed",
                                                   "dedup_key": "eth-b"}
    bad = httpx.post(url, json={"event_action": "explode"}, timeout=5)
    assert bad.status_code == 400
    assert [r["status"] for r in lab_api.stub_records("pagerduty")] == [202, 400]
