"""What tests look at on the real fleet: processes, sshd logs, HAProxy, heads, audit."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from pathlib import Path

import httpx

import lab as lab_api
from lab import topology
from lab.runs import flow_runs, set_automation  # noqa: F401 - re-exported for tests
from inventory import load_inventory
from tasks.audit import read_entries
from tasks.haproxy import HAProxyRuntime
from tasks.probes.assessment import assess_nodes

HAPROXY = HAProxyRuntime("tcp://127.0.0.1:19999", timeout=3)


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def node(name: str) -> dict:
    return lab_api.status()["nodes"][name]


def pid(name: str) -> int | None:
    return node(name)["pid"]


def spawns(node: str) -> int:
    """How many times the node's host supervisord has started it: the host's own count of restarts."""
    info = lab_api.status()["nodes"][node]
    log = Path(info["supervisor_config"]).parent / "logs" / "supervisord.log"
    return log.read_text().count(f"spawned: '{info['program']}' with pid")


def head(name: str) -> int | None:
    try:
        r = httpx.post(node(name)["rpc_url"], json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []},
                       timeout=2)
        return int(r.json()["result"], 16)
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def head_advances(name: str, within: float = 5.0) -> bool:
    first = head(name)
    if first is None:
        return False
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = head(name)
        if now is not None and now > first:
            return True
    return False


def server(name: str):
    lb = node(name)["lb"]
    return HAPROXY.server_state(lb["backend"], lb["server"])


def runbook_logins(sshd_log_text: str) -> int:
    """Logins with the runbooks' key, told apart by its fingerprint from the exporter's monitoring key,
    whose disk reads come and go on their own clock."""
    blob = base64.b64decode(topology.Paths(topology.lab_dir()).ssh_pub.read_text().split()[1])
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return sum(1 for line in sshd_log_text.splitlines()
               if "Accepted publickey" in line and line.rstrip().endswith(fingerprint))


def sshd_sessions() -> dict[str, int]:
    """Logins with the runbooks' key per lab host, read from each host's sshd log."""
    out = {}
    for host, info in lab_api.status()["hosts"].items():
        log = Path(info["sshd_log"])
        out[host] = runbook_logins(log.read_text()) if log.exists() else 0
    return out


def status_of(name: str) -> str:
    return assess_nodes(load_inventory(), [name])[name].status


def wait_status(name: str, wanted: set[str], timeout: float = 30) -> str:
    return wait_for(lambda: (s := status_of(name)) in wanted and s, timeout, what=f"{name} to be {wanted}")


def run_entries(state) -> list[dict]:
    return read_entries(run_id=str(state.state_details.flow_run_id))


def kinds(entries: list[dict]) -> list[str]:
    return [e["kind"] for e in entries]


def outcome(entries: list[dict]) -> dict:
    return [e for e in entries if e["kind"] == "outcome"][-1]["data"]


def restore_fleet(timeout: float = 60) -> None:
    """Heal every injected fault, restore binaries, start stopped nodes, put every
    server back in rotation, and wait until every node is healthy."""
    st = lab_api.status()
    for host in st["hosts"].values():
        binary = Path(host["binary"])
        if not binary.exists() and not binary.is_symlink():
            os.symlink(Path(host["install_dir"]) / "current" / "anvil", binary)
    for name, info in {**st["nodes"], **st["references"]}.items():
        if info.get("fault"):
            lab_api.heal(name)
    for info in lab_api.status()["nodes"].values():
        lb = info["lb"]
        if HAPROXY.server_state(lb["backend"], lb["server"]).admin_state != "ready":
            HAPROXY.ready(lb["backend"], lb["server"])
    inv = load_inventory()

    def all_healthy() -> bool:
        # A node that gave up starting (FATAL) while its binary was gone is started again.
        nodes = lab_api.status()["nodes"].values()
        for info in nodes:
            if info["state"] in ("STOPPED", "EXITED", "FATAL"):
                _start(info)
        # RUNNING too, not only answering: supervisord says STARTING for its
        # startsecs after a restart, and a fault can only be injected once RUNNING.
        return (all(info["state"] == "RUNNING" for info in nodes)
                and all(a.healthy for a in assess_nodes(inv, sorted(inv.nodes)).values()))

    wait_for(all_healthy, timeout, interval=1, what="every node healthy")


def _start(info: dict) -> None:
    import xmlrpc.client

    from lab import supervisor

    try:
        supervisor.client(Path(info["supervisor_socket"]), timeout=30).supervisor.startProcess(info["program"], True)
    except xmlrpc.client.Fault as fault:
        if "ALREADY_STARTED" not in fault.faultString:  # started meanwhile (STARTING when we looked)
            raise


def fresh_restart_budget(node: str) -> None:
    """Earlier tests' automatic restarts of `node` are forgiven, as an operator closing its circuit forgives
    them: a test whose triggered run must restart the node gets the chain's whole budget. (The budget counts
    an hour of the shared trail, and the suite restarts the lab's nodes many times an hour.)"""
    import uuid

    from tasks.audit import AuditRecord
    from tasks.guards import CIRCUIT_CLOSED

    AuditRecord(run_id=f"tests-{uuid.uuid4()}", flow="close-circuit", node=node).guard(
        CIRCUIT_CLOSED, "closed by tests: a fresh restart budget for this test", node=node, operator="tests")


class automation_on:
    """`with automation_on():` triggers (and, unless schedules=False, the
    fleet-health schedule) act on the fleet, as in production."""

    def __init__(self, schedules: bool = True):
        self.schedules = schedules

    def __enter__(self):
        set_automation(True, schedules=self.schedules)
        return self

    def __exit__(self, *exc):
        set_automation(False)


class schedule_due_soon:
    """`with schedule_due_soon("fleet-health/fleet-health"):` the deployment's interval schedule keeps its
    interval, but its next slot comes `in_seconds` from now rather than up to a whole interval later; the
    original schedule is put back afterwards. The lab's scheduler creates runs every 5 s, and only for slots
    still to come: `in_seconds` leaves it two rounds to do so."""

    def __init__(self, deployment: str, in_seconds: float = 12):
        self.deployment, self.in_seconds = deployment, in_seconds

    def _update(self, schedule_for) -> None:
        from tasks import prefect_api

        with prefect_api.client(30, retries=True) as client:
            d = client.read_deployment_by_name(self.deployment)
            for s in d.schedules:
                # The parameters are sent back: a PATCH without them clears them (see lab/runs.py).
                client.update_deployment_schedule(d.id, s.id, schedule=schedule_for(s),
                                                  parameters=s.parameters or {})

    def __enter__(self):
        from datetime import datetime, timedelta, timezone

        from prefect.client.schemas.schedules import IntervalSchedule

        self.original = {}
        soon = datetime.now(timezone.utc) + timedelta(seconds=self.in_seconds)

        def moved(s):
            assert isinstance(s.schedule, IntervalSchedule), f"{self.deployment}: not an interval schedule"
            self.original[s.id] = s.schedule
            return IntervalSchedule(interval=s.schedule.interval, anchor_date=soon, timezone=s.schedule.timezone)

        self._update(moved)
        return self

    def __exit__(self, *exc):
        self._update(lambda s: self.original.get(s.id, s.schedule))


class one_automation_on:
    """`with one_automation_on(trigger=..., schedule=...):` only that trigger (by
    automation name) and that deployment's schedules act, nothing else."""

    def __init__(self, trigger: str | None = None, schedule: str | None = None):
        self.trigger, self.schedule = trigger, schedule

    def _set(self, enabled: bool) -> None:
        from tasks import prefect_api

        with prefect_api.client(30, retries=True) as client:
            if self.trigger:
                [a] = [a for a in client.read_automations() if a.name == self.trigger]
                (client.resume_automation if enabled else client.pause_automation)(a.id)
            if self.schedule:
                d = client.read_deployment_by_name(self.schedule)
                for s in d.schedules:
                    client.update_deployment_schedule(d.id, s.id, active=enabled)

    def __enter__(self):
        self._set(True)
        return self

    def __exit__(self, *exc):
        self._set(False)


def active_alerts(node: str) -> list[dict]:
    """Alertmanager's alerts for the node that have not resolved (silenced ones included)."""
    r = httpx.get("http://127.0.0.1:19093/api/v2/alerts", params={"filter": f'node="{node}"'}, timeout=5)
    r.raise_for_status()
    return r.json()


class alerts_silenced:
    """`with alerts_silenced(node):` an Alertmanager silence for the node, as an
    operator would set, so only fleet-health's schedule can notice it."""

    URL = "http://127.0.0.1:19093/api/v2/silences"

    def __init__(self, node: str, minutes: int = 15):
        self.node, self.minutes = node, minutes

    def __enter__(self):
        from datetime import datetime, timedelta, timezone

        now = datetime.now(timezone.utc)
        r = httpx.post(self.URL, timeout=5, json={
            "matchers": [{"name": "node", "value": self.node, "isRegex": False, "isEqual": True}],
            "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=self.minutes)).isoformat(),
            "createdBy": "tests", "comment": "end-to-end test of the schedule path",
        })
        r.raise_for_status()
        self.silence_id = r.json()["silenceID"]
        return self

    def __exit__(self, *exc):
        httpx.delete(f"{self.URL.removesuffix('s')}/{self.silence_id}", timeout=5).raise_for_status()


def start_in_thread(flow, **params) -> tuple[threading.Thread, dict]:
    """Run a flow in a thread (it may pause for an approval the test gives); the box gets its final `state`
    (return_state) or the `error` it raised."""
    box: dict = {}

    def target():
        try:
            box["state"] = flow(return_state=True, **params)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def reset_fleet_version(nodes: list[str]) -> None:
    """Put nodes a previous run left on another anvil version back on the fleet's (test and bench set-up
    only): a downgrade cannot read the newer state file, so each starts afresh and re-syncs."""
    from lab import supervisor

    for name in nodes:
        install_dir = Path(load_inventory().node(name).install_dir)
        if os.readlink(install_dir / "current") == topology.FLEET_ANVIL_VERSION:
            continue
        info = node(name)
        rpc = supervisor.client(Path(info["supervisor_socket"]), timeout=60)
        rpc.supervisor.stopProcess(info["program"], True)
        (install_dir / "current").unlink()
        (install_dir / "current").symlink_to(topology.FLEET_ANVIL_VERSION)
        Path(info["state_file"]).unlink(missing_ok=True)
        rpc.supervisor.startProcess(info["program"], True)
    restore_fleet()
