"""Regional workers: a run for a node executes in the node's region; a region without its worker gets its
runs from its fallback region after the bound, and the audit says so; two regions' workers working on one
node at once restart it once, logging in to its host from their own.

Where a run executed is read from the hosts, not from what the run says of itself: the processes' network
namespaces (/proc/PID/ns/net) and the address the hosts' sshd saw the runbooks log in from.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from prefect.deployments import run_deployment

import lab as lab_api
from deployments.regional_worker import takes
from flows.circuit import close_circuit
from inventory import Inventory, InventoryError, load_inventory
from lab import services, supervisor, topology
from tasks import prefect_api
from tasks.audit import read_entries
from tests import fleet

PATHS = topology.Paths(topology.lab_dir())
RECOVERY = "node-recovery/node-recovery"


# ---------------------------------------------------------------- the routing rule (no lab)

def inventory_with(regions: dict) -> dict:
    return {
        "chains": {"eth": {"family": "ethereum", "references": ["http://127.0.0.1:1"]}},
        "hosts": {h: {"address": f"10.0.0.{i}", "ssh_user": "u", "ssh_identity_block": "k", "region": r}
                  for i, (h, r) in enumerate({"h1": "eu", "h2": "us", "h3": "ap"}.items(), 1)},
        "nodes": {n: {"chain": "eth", "client": "erigon", "host": h, "service": {"manager": "systemd", "name": "erigon"},
                      "rpc_url": "http://127.0.0.1:1", "datadir": "/var/lib/erigon"}
                  for n, h in {"n1": "h1", "n2": "h2"}.items()},
        "regions": regions,
    }


def test_a_run_goes_to_its_regions_worker_and_to_the_fallback_only_after_the_bound():
    inv = Inventory.model_validate(inventory_with({"us": {"fallback": "eu", "fallback_after_seconds": 30}}))
    assert takes(inv, {"node": "n2"}, 0, "us") == "own"
    assert takes(inv, {"node": "n2"}, 29.9, "eu") is None  # not before the bound
    assert takes(inv, {"node": "n2"}, 30, "eu") == "fallback"
    assert takes(inv, {"node": "n2"}, 3600, "ap") is None  # only the designated fallback
    assert takes(inv, {"node": "n1"}, 3600, "us") is None  # eu has no fallback
    # The host a run works on decides before its node: a restore onto another region's standby runs there.
    assert takes(inv, {"node": "n1", "target_host": "h3"}, 0, "ap") == "own"
    assert takes(inv, {"node": "n1", "target_host": "h3"}, 0, "eu") is None
    # Fleet-wide runs, and names the inventory does not know (the run refuses them itself), go to anyone.
    assert takes(inv, {"nodes": ["n1", "n2"]}, 0, "ap") == "own"
    assert takes(inv, {"node": "typo"}, 0, "ap") == "own"


@pytest.mark.parametrize("regions,complaint", [
    ({"uss": {"fallback": "eu"}}, "regions.uss"),              # a misspelt region
    ({"us": {"fallback": "europe"}}, "regions.us.fallback"),   # a fallback nobody is in
    ({"us": {"fallback": "us"}}, "cannot fall back to itself"),
    ({"us": {"fallback": "eu", "fallback_after_seconds": 0}}, "fallback_after_seconds"),
])
def test_a_regions_section_that_cannot_work_is_refused_by_name(tmp_path, regions, complaint):
    import yaml

    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory_with(regions)))
    with pytest.raises(InventoryError, match=re.escape(complaint)):
        load_inventory(path)


# ---------------------------------------------------------------- on the lab

def netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def rpc():
    return supervisor.client(PATHS.supervisord_sock, timeout=60).supervisor


class worker_stopped:
    """`with worker_stopped("lab-b"):` the region has no worker; it is started again (and ONLINE) after."""

    def __init__(self, region: str):
        self.region = region

    def __enter__(self):
        rpc().stopProcess(f"worker-{self.region}", True)
        return self

    def start(self) -> None:
        if lab_api.status()["services"][f"worker-{self.region}"]["state"] != "RUNNING":
            rpc().startProcess(f"worker-{self.region}", True)
        auth = services.runbook_env(PATHS).get("PREFECT_API_AUTH_STRING")
        fleet.wait_for(lambda: services.worker_online(f"region-{self.region}", auth) is None, 60,
                       what=f"the {self.region} worker to be ONLINE again")

    def __exit__(self, *exc):
        self.start()


def started_entry(run_id: str) -> dict:
    [entry] = [e for e in read_entries(run_id=run_id) if e["kind"] == "started"]
    return entry["data"]


def state_of(run_id) -> str:
    with prefect_api.client() as client:
        return client.read_flow_run(run_id).state.type.value


def wait_final(run_ids, timeout: float) -> None:
    fleet.wait_for(lambda: all(state_of(r) in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in run_ids),
                   timeout, interval=0.5, what="the runs to finish")


def run_logs(run_id) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with prefect_api.client() as client:
        return [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))]


def test_each_regions_worker_and_the_runs_it_forks_live_in_its_hosts_namespace(lab):
    services_now = lab_api.status()["services"]
    root = netns_inode(os.getpid())
    for region, host in topology.worker_hosts().items():
        inode = os.stat(f"/run/netns/{host.namespace}").st_ino
        for program in (f"worker-{region}", f"prestart-{region}", f"gateway-{region}"):
            pid = services_now[program]["pid"]
            assert pid and netns_inode(pid) == inode != root, f"{program} (pid {pid}) is not in {host.namespace}"


def test_a_region_without_its_worker_gets_its_runs_from_the_fallback_region_after_the_bound(healthy_fleet):
    node, region = "eth-b", topology.HOSTS[topology.NODES["eth-b"].host].region
    fallback = topology.REGION_FALLBACK[region]
    with worker_stopped(region):
        run = run_deployment(RECOVERY, parameters={"node": node, "reason": "region test", "dry_run": True}, timeout=0)
        created = time.monotonic()
        time.sleep(topology.FALLBACK_AFTER_SECONDS - 3)
        assert state_of(run.id) in ("SCHEDULED", "LATE"), "another region took the run before the bound"
        wait_final([run.id], topology.FALLBACK_AFTER_SECONDS + 30)
        took = time.monotonic() - created
    assert state_of(run.id) == "COMPLETED"
    assert topology.FALLBACK_AFTER_SECONDS - 3 < took < topology.FALLBACK_AFTER_SECONDS + 30
    assert started_entry(str(run.id))["placement"] == {"region": region, "ran_in": fallback, "fallback": True}
    assert any(f"its fallback region {fallback} takes it" in m for m in run_logs(run.id)), run_logs(run.id)


def test_two_regions_workers_recovering_one_node_at_once_restart_it_once(healthy_fleet):
    node = "eth-b"
    region = topology.HOSTS[topology.NODES[node].host].region
    fallback = topology.REGION_FALLBACK[region]
    close_circuit(node=node, operator="tests", note="a fresh budget for the two-region test")
    spawns_before = fleet.spawns(node)
    sshd_log = Path(lab_api.status()["hosts"][topology.NODES[node].host]["sshd_log"])
    seen = len(sshd_log.read_text().splitlines())
    lab_api.fault(node, "stall")
    fleet.wait_status(node, {"stalled"})
    params = {"node": node, "reason": "stalled"}
    with worker_stopped(region) as stopped:
        # The first wave waits out the bound and goes to the fallback region...
        first = [run_deployment(RECOVERY, parameters=params, timeout=0).id for _ in range(3)]
        fleet.wait_for(lambda: any(state_of(r) in ("PENDING", "RUNNING") for r in first),
                       topology.FALLBACK_AFTER_SECONDS + 20, interval=0.2, what="the fallback region to take a run")
        # ...and the region's own worker, back, takes the second while the first is still at work.
        stopped.start()
        second = [run_deployment(RECOVERY, parameters=params, timeout=0).id for _ in range(3)]
        wait_final(first + second, 150)
    runs = [str(r) for r in first + second]
    assert all(state_of(r) == "COMPLETED" for r in runs), {r: state_of(r) for r in runs}
    assert {started_entry(r)["placement"]["ran_in"] for r in runs} == {region, fallback}
    restarts = [e for e in read_entries(kind="action") if e["run_id"] in runs and e["data"].get("action") == "restart"]
    assert len(restarts) == 1, restarts
    assert fleet.spawns(node) == spawns_before + 1
    assert fleet.status_of(node) == "healthy"
    statuses = sorted(fleet.outcome(read_entries(run_id=r))["status"] for r in runs)
    assert statuses == ["noop"] * (len(runs) - 1) + ["succeeded"], statuses
    # The run that acted logged in to the node's host from its own region's host: the address the host's sshd
    # saw is that worker host's, not the root namespace's (10.213.7.1) nor another region's.
    [acted] = [r for r in runs if fleet.outcome(read_entries(run_id=r))["status"] == "succeeded"]
    ran_in = started_entry(acted)["placement"]["ran_in"]
    new = sshd_log.read_text().splitlines()[seen:]
    sources = {re.search(r" from (\S+) port ", line).group(1) for line in new if fleet.runbook_logins(line)}
    assert sources == {topology.worker_hosts()[ran_in].address}, (ran_in, sources)
