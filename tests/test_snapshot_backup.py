"""Snapshot backups, restores and DR drills against the lab: real anvil nodes, sshd, supervisord,
HAProxy and SeaweedFS.

What counts is read back from the systems themselves: the store's manifests
and verification records, the restored node's own blocks over JSON-RPC, the
files on the standby's disk hashed here, HAProxy's server state and
supervisord's process state.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
from pathlib import Path

import pytest

import lab
from blocks import ObjectStore
from flows.dr_drill import dr_drill
from flows.restore_node import restore_node, serves_traffic
from flows.snapshot_backup import snapshot_backup
from lab import supervisor, topology
from tasks import objectstore
from tasks.backups.manifest import list_manifests, read_manifest, read_verifications
from tasks.chainstate import block_at
from tests import fleet

STANDBY = topology.STANDBYS["lab-eth"]
PATHS = topology.Paths(topology.lab_dir())


@pytest.fixture
def store(healthy_fleet) -> ObjectStore:
    yield ObjectStore.load(topology.BLOCK_STORE)
    standby_off()


def standby_state() -> str:
    infos = supervisor.process_infos(PATHS.host_supervisord_sock(topology.STANDBY_HOST))
    return infos[STANDBY.name]["statename"]


def standby_off() -> None:
    """Leave the standby as the lab made it: stopped, its slot empty (a failed test may have left it up)."""
    sock = PATHS.host_supervisord_sock(topology.STANDBY_HOST)
    if standby_state() == "RUNNING":
        supervisor.client(sock).supervisor.stopProcess(STANDBY.name)
    datadir = PATHS.datadir(STANDBY)
    for leftover in datadir.parent.glob(f"{datadir.name}*"):
        shutil.rmtree(leftover)
    datadir.mkdir()
    pw = pwd.getpwnam(topology.SERVICE_USER)
    os.chown(datadir, pw.pw_uid, pw.pw_gid)


def files_under(root: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for f in sorted(root.rglob("*")):
        rel = str(f.relative_to(root))
        if f.is_file() and not rel.startswith("home/"):
            out[rel] = (f.stat().st_size, hashlib.sha256(f.read_bytes()).hexdigest())
    return out


def actions(state) -> list[str]:
    return [e["data"].get("action") for e in fleet.run_entries(state) if e["kind"] == "action" and e["data"].get("action")]


def test_a_snapshot_restores_onto_the_standby_with_the_same_chain_and_a_second_one_reuses_the_segments(store):
    state = snapshot_backup("eth-a", return_state=True)
    first = state.result()
    assert first["status"] == "succeeded", first
    m1 = read_manifest(store, first["manifest"])
    assert m1.complete and m1.source.service_stopped and m1.source.head_hash == first["head_hash"]
    segments = [f for f in m1.files if f.object is not None]
    assert sorted(f.path for f in segments) == sorted(
        f"snapshots/{p.name}" for p in (PATHS.datadir(topology.NODES["eth-a"]) / "snapshots").iterdir())
    assert [f.path for f in m1.files if f.archive] == ["state.json"]  # anvil's scratch HOME is not node data
    [check] = read_verifications(store, m1.key)
    assert check.ok and check.method == "read-back"
    # Drained, stopped, started, back in rotation: in that order, and it ends so.
    done = actions(state)
    assert [a for a in done if a in ("drain", "stop", "start", "ready")] == ["drain", "stop", "start", "ready"]
    assert fleet.server("eth-a").admin_state == "ready" and fleet.status_of("eth-a") == "healthy"
    assert objectstore.list_open_multipart_uploads(store) == []

    second = snapshot_backup("eth-a")
    assert second["status"] == "succeeded", second
    m2 = read_manifest(store, second["manifest"])
    assert second["uploaded_bytes"] < 0.05 * m1.totals.stored_bytes, (second, m1.totals)
    assert all(f.reused for f in m2.files if f.object is not None)

    restored = restore_node("eth-a", target_host=topology.STANDBY_HOST)
    assert restored["status"] == "succeeded", restored
    assert restored["backup"] == m2.key  # the newest verified one
    url = topology.rpc_url(STANDBY)
    assert block_at(url, m2.source.head_number).hash == m2.source.head_hash
    fleet.wait_for(lambda: block_at(url).number >= block_at(topology.reference_url("lab-eth")).number - 5, 30, what="the standby catching up")
    on_disk = files_under(PATHS.datadir(STANDBY))
    assert {p: v for p, v in on_disk.items() if p.startswith("snapshots/")} == \
        {f.path: (f.size, f.sha256) for f in m2.files if f.path.startswith("snapshots/")}
    assert fleet.server("eth-a").admin_state == "ready"  # the source was never touched

    drill = dr_drill(target="lab-eth", standby_host=topology.STANDBY_HOST)
    assert drill["status"] == "succeeded", drill
    assert drill["ok"] and 0 < drill["rto_s"] < 1800 and drill["rpo_blocks"] >= 0 and drill["backup"] == m2.key
    assert standby_state() != "RUNNING" and not any(PATHS.datadir(STANDBY).iterdir())  # torn down
    records = objectstore.list_objects(store, "drills/lab-eth/")
    assert records and records[-1].key.endswith(".json")


def test_a_restore_from_a_backup_with_a_corrupt_object_refuses_and_leaves_the_standby_untouched(store):
    result = snapshot_backup("eth-b")
    assert result["status"] == "succeeded", result
    m = read_manifest(store, result["manifest"])
    [archive] = m.archives
    with objectstore.open_object(store, archive.object.key) as body:
        data = bytearray(body.read())
    data[len(data) // 2] ^= 0x01  # one bit: same size, so only a hash or the cipher can tell
    objectstore.put_bytes(store, archive.object.key, bytes(data))
    pages = len(lab.stub_records("slack"))

    state = restore_node("eth-b", backup=m.key, target_host=topology.STANDBY_HOST, return_state=True)
    assert state.is_failed()
    assert fleet.outcome(fleet.run_entries(state))["result"] == "backup-failed"
    assert standby_state() != "RUNNING" and not any(PATHS.datadir(STANDBY).iterdir())
    assert not list(PATHS.datadir(STANDBY).parent.glob(f"{STANDBY.name}.restore-*"))  # staging removed
    assert any("refused" in r["body"].get("text", "") for r in lab.stub_records("slack")[pages:])

    # A missing object is refused before anything is streamed at all.
    objectstore.delete(store, archive.object.key)
    state = restore_node("eth-b", backup=m.key, target_host=topology.STANDBY_HOST, return_state=True)
    assert state.is_failed() and "missing" in fleet.outcome(fleet.run_entries(state))["detail"]
    assert "stage-restore" not in [e["data"].get("step") for e in fleet.run_entries(state) if e["kind"] == "note"]


def test_an_in_place_restore_needs_approval_while_the_node_serves_and_rebuilds_a_drained_one(store):
    assert serves_traffic("eth-c")
    result = snapshot_backup("eth-c")
    assert result["status"] == "succeeded", result
    lb = fleet.node("eth-c")["lb"]
    fleet.HAPROXY.drain(lb["backend"], lb["server"])
    assert not serves_traffic("eth-c")  # drained: nobody is served by it, no approval needed

    restored = restore_node("eth-c")
    assert restored["status"] == "succeeded", restored
    m = read_manifest(store, result["manifest"])
    assert block_at(topology.rpc_url(topology.NODES["eth-c"]), m.source.head_number).hash == m.source.head_hash
    assert fleet.server("eth-c").admin_state == "ready" and fleet.status_of("eth-c") == "healthy"
    datadir = PATHS.datadir(topology.NODES["eth-c"])
    assert not list(datadir.parent.glob(f"{datadir.name}.*"))  # the old datadir went once the node was proved


def test_a_dry_run_snapshot_stops_nothing_and_uploads_nothing(store):
    before = {m.key for m in list_manifests(store, "snapshot", "op-a")}
    spawns = fleet.spawns("op-a")
    result = snapshot_backup("op-a", dry_run=True)
    assert result["outcome"] == "dry-run", result
    assert "drain" in result["detail"] and "stop" in result["detail"]
    assert {m.key for m in list_manifests(store, "snapshot", "op-a")} == before
    assert fleet.spawns("op-a") == spawns and fleet.server("op-a").admin_state == "ready"


def test_the_monthly_dr_drill_runs_through_the_worker_with_its_schedules_parameters(store, prefect_api):
    """As the schedule will run it: the deployment's own schedule parameters, a flow-run process on the worker."""
    import httpx
    from prefect.deployments import run_deployment

    from tasks.audit import read_entries

    deployment = httpx.get(f"{prefect_api}/deployments/name/dr-drill/dr-drill", timeout=10).json()
    [schedule] = deployment["schedules"]
    assert schedule["schedule"]["cron"] == "0 4 1 * *"  # (the suite pauses schedules: only the test at hand acts)
    parameters = schedule["parameters"]
    assert parameters == {"target": "lab-eth", "standby_host": topology.STANDBY_HOST}
    if not any(read_verifications(store, m.key) for m in list_manifests(store, "snapshot", "eth-a")):
        assert snapshot_backup("eth-a")["status"] == "succeeded"
    drills_before = len(objectstore.list_objects(store, "drills/lab-eth/"))

    run = run_deployment("dr-drill/dr-drill", parameters=parameters, timeout=600)
    assert run.state.is_completed(), run.state
    [outcome] = [e["data"] for e in read_entries(run_id=str(run.id)) if e["kind"] == "outcome"]
    assert outcome["status"] == "succeeded" and "RPO" in outcome["detail"], outcome
    # It ran in the standby host's region, where the restore lands, on that region's worker.
    [started] = [e["data"] for e in read_entries(run_id=str(run.id)) if e["kind"] == "started"]
    region = topology.HOSTS[topology.STANDBY_HOST].region
    assert started["placement"] == {"region": region, "ran_in": region, "fallback": False}, started["placement"]
    records = objectstore.list_objects(store, "drills/lab-eth/")
    assert len(records) == drills_before + 1  # the drill's history record, as the report reads it
    from flows.dr_drill import drill_history
    record = drill_history(store, "lab-eth")[-1]
    assert record["ok"] and 0 < record["rto_s"] < 1800 and record["rpo_blocks"] >= 0, record
    assert record["standby_host"] == topology.STANDBY_HOST and record["chain"] == "lab-eth"
    artifacts = httpx.post(f"{prefect_api}/artifacts/filter", timeout=10,
                           json={"artifacts": {"flow_run_id": {"any_": [str(run.id)]}}}).json()
    assert any(a["type"] == "markdown" and "RTO" in a["data"] for a in artifacts), artifacts
    assert standby_state() != "RUNNING"  # torn down
    print(f"\ndr-drill through the worker: RTO {record['rto_s']} s (restore {record['restore_s']} s), "
          f"RPO {record['rpo_s']} s / {record['rpo_blocks']} blocks, {record['bytes']} bytes")
