"""client-upgrade on the lab: anvil 1.5.1 -> 1.7.1 from the lab's release server (published as Erigon
publishes its releases), as a change request through its approval, canary first; and the failures
that must roll back: a release that exits at start, one whose checksum is wrong, a rejected
approval, a run killed half way."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

import lab
from flows.client_upgrade import client_upgrade, client_upgrade_resume
from inventory import load_inventory
from lab import topology as t
from tasks.audit import read_entries
from tasks.upgrades import STAGE
from tests import fleet

pytestmark = pytest.mark.lab
CHAIN, NODES = "lab-eth", ["eth-a", "eth-b", "eth-c"]
OLD, NEW = t.FLEET_ANVIL_VERSION, "1.7.1"
EXITS_AT_START = next(v for v, k in t.BROKEN_RELEASES.items() if k == "exits-at-start")
BAD_CHECKSUM = next(v for v, k in t.BROKEN_RELEASES.items() if k == "bad-checksum")


def install_dir(node: str) -> Path:
    return Path(load_inventory().node(node).install_dir)


def linked(node: str) -> str:
    return os.readlink(install_dir(node) / "current")


def reported(node: str) -> str | None:
    return fleet.assess_nodes(load_inventory(), [node])[node].version


def snapshot_of_fleet() -> dict:
    return {n: (fleet.pid(n), linked(n), fleet.server(n).admin_state, sorted(os.listdir(install_dir(n)))) for n in NODES}


@pytest.fixture
def fleet_on_old(healthy_fleet):
    fleet.reset_fleet_version(NODES)
    assert all(linked(n) == OLD and reported(n) == OLD for n in NODES)
    yield


def runs(flow: str, known: set[str], state: str | None = None) -> list:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterStateType

    from tasks import prefect_api

    kwargs = {"flow_run_filter": FlowRunFilter(state=dict(type=FlowRunFilterStateType(any_=[state])))} if state else {}
    with prefect_api.client() as client:
        found = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])), **kwargs)
    return [r for r in found if str(r.id) not in known]


def start_upgrade(**params) -> tuple[threading.Thread, dict, set[str]]:
    known = {str(r.id) for r in runs("client-upgrade", set())}
    thread, box = fleet.start_in_thread(client_upgrade, **params)
    return thread, box, known


def approve(known: set[str], approve: bool = True, timeout: float = 120):
    from prefect.flow_runs import resume_flow_run

    run = fleet.wait_for(lambda: next(iter(runs("client-upgrade", known, "PAUSED")), None), timeout,
                         what="client-upgrade to pause for approval")
    plan = [e for e in read_entries(run_id=str(run.id)) if e["kind"] == "plan"][0]["data"]
    resume_flow_run(run.id, run_input={"approve": approve, "approver": "alice", "comment": "CR reviewed",
                                       "plan_hash": plan["hash"]})
    return run


def stages(run_id: str) -> list[tuple[str, str]]:
    return [(e["data"]["node"], e["data"]["stage"]) for e in read_entries(run_id=run_id, kind="note")
            if e["data"].get("text") == STAGE]


def test_a_dry_run_renders_the_change_request_and_changes_nothing(fleet_on_old, prefect_api):
    before = snapshot_of_fleet()
    state = client_upgrade(version=f"v{NEW}", chain=CHAIN, dry_run=True, return_state=True)
    result = state.result()
    assert result["outcome"] == "dry-run", result
    cr = httpx.get(f"{prefect_api}/artifacts/change-request-{CHAIN}/latest", timeout=10).json()["data"]
    assert f"upgrade anvil to {NEW} on {CHAIN}" in cr and "Risk: **Medium**" in cr  # 1.5 -> 1.7 may migrate
    assert "- [ ]" not in cr and cr.count("- [x]") == 7
    assert snapshot_of_fleet() == before


@pytest.mark.parametrize("how", ["rejected", "timed-out"])
def test_an_approval_rejected_or_never_given_changes_nothing_on_any_host(fleet_on_old, how):
    before = snapshot_of_fleet()
    thread, box, known = start_upgrade(version=NEW, chain=CHAIN, soak_minutes=0,
                                       approval_timeout_seconds=10 if how == "timed-out" else 600)
    if how == "rejected":
        approve(known, approve=False)
    thread.join(120)
    state = box["state"]
    if how == "rejected":
        assert state.is_completed() and state.result()["outcome"] == "rejected", box
    else:
        # The run gives up when the pause runs out and refuses. Prefect's server fails a run that leaves its
        # pause after the pause's deadline ("never resumed"); the run's own refusal can land first, and
        # which one does is a race between the two. Either way the audit says the approval timed out.
        [run] = runs("client-upgrade", known)
        asked = [e["data"]["status"] for e in read_entries(run_id=str(run.id), kind="approval")]
        assert asked == ["requested", "timed-out"], asked
        assert ((state.is_failed() and "never resumed" in state.message)
                or (state.is_completed() and state.result()["outcome"] == "timed-out")), box
    assert snapshot_of_fleet() == before


def test_a_chain_is_upgraded_canary_first_through_its_approval_never_below_its_budget(fleet_on_old):
    lab.clear_stub_records()
    thread, box, known = start_upgrade(version=f"v{NEW}", chain=CHAIN, soak_minutes=0, canary=1)
    run = approve(known)
    in_rotation = []  # healthy servers in the backend, sampled through the wave
    while thread.is_alive():
        health = fleet.assess_nodes(load_inventory(), NODES)
        in_rotation.append(sum(1 for n in NODES if health[n].healthy and fleet.server(n).in_rotation))
        time.sleep(0.5)
    thread.join(600)
    state = box["state"]
    assert state.is_completed(), (state.message, box)
    assert state.result()["outcome"] == "upgraded"
    assert all(linked(n) == NEW and reported(n) == NEW for n in NODES)
    assert min(in_rotation) >= len(NODES) - 1, in_rotation  # one node out at a time, at most
    order = stages(str(run.id))
    assert [n for n, s in order if s == "done"] == NODES  # eth-a, the canary, first; one after the other
    assert [s for n, s in order if n == "eth-a"] == ["drained", "stopped", "backed-up", "switched", "verifying", "done"]
    approval = [e for e in read_entries(run_id=str(run.id), kind="approval") if e["data"].get("status") == "approved"]
    assert approval and approval[0]["data"]["approver"] == "alice"


def test_a_release_that_exits_at_start_is_rolled_back_with_its_datadir_and_the_wave_stops(fleet_on_old):
    lab.clear_stub_records()
    before = snapshot_of_fleet()
    marks = {n: fleet.head(n) for n in NODES}
    thread, box, known = start_upgrade(version=EXITS_AT_START, chain=CHAIN, soak_minutes=0)
    run = approve(known)
    thread.join(600)
    assert box["state"].is_failed(), box
    canary = "eth-a"
    assert [s for n, s in stages(str(run.id)) if n == canary][-2:] == ["rolling-back", "rolled-back"]
    fleet.wait_for(lambda: fleet.status_of(canary) == "healthy" and fleet.server(canary).in_rotation, 60,
                   what="the canary healthy and back in rotation")
    assert linked(canary) == OLD and reported(canary) == OLD
    assert fleet.head(canary) >= marks[canary]  # its chain is still there (the pre-change datadir restored)
    after = snapshot_of_fleet()
    assert {n: after[n] for n in ("eth-b", "eth-c")} == {n: before[n] for n in ("eth-b", "eth-c")}  # the wave stopped
    outcome = fleet.outcome(read_entries(run_id=str(run.id)))
    assert outcome["status"] == "escalated" and "canary failed" in outcome["detail"], outcome
    slack = " ".join(str(r) for r in lab.stub_records("slack"))
    assert "upgrade" in slack and EXITS_AT_START in slack


def test_a_release_whose_checksum_is_wrong_is_refused_on_the_host_and_the_node_never_stops(fleet_on_old):
    before = snapshot_of_fleet()
    thread, box, known = start_upgrade(version=BAD_CHECKSUM, nodes=["eth-b"], soak_minutes=0)
    run = approve(known)
    thread.join(300)
    assert box["state"].is_failed(), box
    after = snapshot_of_fleet()
    assert after == before  # same pid, same version, in rotation, nothing left in its install dir
    failed = [e for e in read_entries(run_id=str(run.id), kind="action") if "sha256sum" in e["data"].get("command", "")]
    assert failed and failed[-1]["data"]["exit_code"] == 3


@pytest.mark.parametrize("kill_at, node", [("stopped", "eth-b"), ("switched", "eth-c")])
def test_a_run_killed_half_way_through_the_worker_is_rolled_back_by_the_reconciler(fleet_on_old, kill_at, node):
    """The worker's flow-run process SIGKILLed at a point of no return: Prefect marks the run Crashed, the
    reconciler's trigger starts reconcile, which hands the node to client-upgrade-resume: back on the old
    version (and, past the switch, the pre-change datadir), healthy and in rotation; nobody touched it."""
    from prefect.deployments import run_deployment

    from tasks import prefect_api

    known = {str(r.id) for r in runs("client-upgrade", set())}
    with fleet.one_automation_on(trigger="reconcile-on-crashed-run"):
        run = run_deployment("client-upgrade/client-upgrade", timeout=0,
                             parameters={"version": NEW, "nodes": [node], "soak_minutes": 0})
        approve(known)
        run_id = str(run.id)
        fleet.wait_for(lambda: (node, kill_at) in stages(run_id), 180, 0.1, what=f"the upgrade to reach {kill_at}")
        pid = [e for e in read_entries(run_id=run_id) if e["kind"] == "started"][0]["data"]["process"]["pid"]
        os.kill(pid, signal.SIGKILL)  # the worker's process dies: no finally, no rollback of its own

        def crashed():
            with prefect_api.client() as client:
                return client.read_flow_run(run.id).state.type.value == "CRASHED"
        fleet.wait_for(crashed, 60, what=f"run {run_id} to be reported Crashed")
        resumed = fleet.wait_for(lambda: [e for e in read_entries(kind="outcome") if e["flow"] == "client-upgrade-resume"
                                          and e["data"]["status"] == "succeeded" and e["ts"] > run.created.isoformat()],
                                 180, 1, what="the reconciler's client-upgrade-resume to roll the node back")
    assert node in resumed[-1]["data"]["detail"]
    fleet.wait_for(lambda: fleet.status_of(node) == "healthy" and fleet.server(node).in_rotation, 60,
                   what=f"{node} healthy and in rotation on the old version")
    assert linked(node) == OLD and reported(node) == OLD
    assert ("datadir restored" in resumed[-1]["data"]["detail"]) is (kill_at == "switched")
    assert client_upgrade_resume(node=node)["outcome"] == "nothing-half-done"


def test_the_versions_report_shows_each_nodes_version_the_newest_release_and_drift(fleet_on_old):
    from flows.client_versions import client_versions

    report = client_versions()
    rows = {r["node"]: r for r in report["nodes"]}
    assert set(rows) == set(load_inventory().nodes)
    assert all(r["running"] == OLD and r["pinned"] == OLD and r["newest"] == NEW and r["behind_newest"]
               for r in rows.values()), rows
    assert report["drifting"] == []  # pre-releases (the broken ones) are never "newest"
