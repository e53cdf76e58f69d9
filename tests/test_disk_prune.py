"""disk-prune on the lab's real, size-limited host filesystems: a filled disk raises DiskFilling,
which starts disk-prune through the worker; the safe clean-ups bring it under target; the datadir's
database and segments are never touched (segments hashed, the chain's blocks read back)."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shlex
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import lab
from flows.disk_prune import disk_prune
from inventory import load_inventory
from lab import disks
from lab import topology as t
from tasks.audit import read_entries
from tasks.chainstate import block_at
from tests import fleet

pytestmark = pytest.mark.lab
NODE = "eth-a"
EXPORTER = f"http://127.0.0.1:{t.EXPORTER_PORT}/metrics"
PROMETHEUS_ALERTS = f"http://127.0.0.1:{t.PROMETHEUS_PORT}/api/v1/alerts"
TARGET = 0.60  # the inventory's default disk policy


def datadir(node: str = NODE) -> Path:
    return Path(load_inventory().node(node).datadir)


def used_ratio(node: str = NODE) -> float:
    used, size = disks.usage(datadir(node))
    return used / size


def segment_hashes(node: str = NODE) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((datadir(node) / "snapshots").iterdir())}


def chain_marks(node: str = NODE) -> dict[int, str]:
    """A few block hashes the node's database must still hold afterwards."""
    url = load_inventory().node(node).rpc_url
    head = block_at(url).number
    return {n: block_at(url, n).hash for n in (1, head // 2, head)}


def assert_database_and_segments_intact(node: str, segments: dict, marks: dict) -> None:
    assert segment_hashes(node) == segments
    assert (datadir(node) / "state.json").stat().st_size > 0
    url = load_inventory().node(node).rpc_url
    assert {n: block_at(url, n).hash for n in marks} == marks


def deletes(run_id: str) -> list[str]:
    """Every path the run's rm commands named, from its audit record."""
    paths = []
    for e in read_entries(run_id=run_id, kind="action"):
        argv = shlex.split(e["data"].get("command", ""))
        if argv[:3] == ["rm", "-f", "--"]:
            paths += argv[3:]
    return paths


def prune_runs(since: float, **parameters) -> dict[str, dict | None]:
    """disk-prune runs started since `since` (with these parameters): run id -> its outcome (None while it runs)."""
    # To the microsecond the trail records: a second's slack let the previous test's run in.
    runs = {e["run_id"]: None for e in read_entries(kind="started") if e["flow"] == "disk-prune"
            and datetime.fromisoformat(e["ts"]).timestamp() >= since
            and parameters.items() <= e["data"]["parameters"].items()}
    for e in read_entries(kind="outcome"):
        if e["run_id"] in runs:
            runs[e["run_id"]] = e["data"]
    return runs


def the_run(since: float, **parameters) -> str:
    [run_id] = list(prune_runs(since, **parameters))[-1:]
    return run_id


def paths_artifact(prefect_api: str, target: str) -> dict[str, int]:
    r = httpx.get(f"{prefect_api}/artifacts/disk-prune-{target}-paths/latest", timeout=10)
    r.raise_for_status()
    return {row["path"]: row["bytes"] for row in json.loads(r.json()["data"])}  # a table's rows, as JSON text


def test_a_dry_run_lists_every_path_it_would_delete_with_its_size_and_deletes_nothing(healthy_fleet, prefect_api):
    written = lab.fault(NODE, "fill-disk", 85)["files"]
    try:
        sizes = {p: os.path.getsize(p) for p in written}
        ratio = used_ratio()
        assert ratio > 0.8
        result = disk_prune(node=NODE, dry_run=True)
        assert result["outcome"] == "dry-run", result
        listed = paths_artifact(prefect_api, NODE)
        old_logs = {p: s for p, s in sizes.items() if "/logs/" in p}
        assert len(old_logs) == 4 and all(listed.get(p) == s for p, s in old_logs.items()), listed
        # Old logs alone bring it under target: the temp files (node stop needed) are not planned.
        assert not [p for p in listed if "/temp/" in p]
        assert all(os.path.exists(p) for p in written) and abs(used_ratio() - ratio) < 0.01
        assert "rm -f --" in result["detail"]  # what it would run, named
    finally:
        lab.heal(NODE)


def exporter_disk_ratio(node: str) -> float | None:
    """used/size of the node's datadir filesystem, as the exporter publishes it (its own SSH reads)."""
    values = {}
    for family in text_string_to_metric_families(httpx.get(EXPORTER, timeout=5).text):
        for sample in family.samples:
            if sample.labels.get("node") == node and sample.name in ("runbooks_node_fs_used_bytes",
                                                                     "runbooks_node_fs_size_bytes"):
                values[sample.name] = sample.value
    return values["runbooks_node_fs_used_bytes"] / values["runbooks_node_fs_size_bytes"] if len(values) == 2 else None


def firing_disk_alerts() -> set[str]:
    alerts = httpx.get(PROMETHEUS_ALERTS, timeout=5).json()["data"]["alerts"]
    return {a["labels"]["node"] for a in alerts if a["labels"]["alertname"] == "DiskFilling" and a["state"] == "firing"}


def test_disk_filling_starts_disk_prune_which_frees_space_with_the_safe_steps_alone(healthy_fleet):
    """The whole path: a real disk filled, the exporter's disk facts, the shipped DiskFilling rule firing for
    every node on that filesystem and no other, Alertmanager, the bridge, disk-prune's trigger, the worker."""
    on_h1 = {name for name, n in t.NODES.items() if n.host == "h1"}
    fleet.wait_for(lambda: (exporter_disk_ratio(NODE) or 1) < 0.5 and not firing_disk_alerts(), 30,
                   what="eth-a's disk facts under 50% and no DiskFilling")
    segments, marks, spawns = segment_hashes(), chain_marks(), fleet.spawns(NODE)
    since = time.time()
    with fleet.automation_on(schedules=False):
        written = lab.fault(NODE, "fill-disk", 85)["files"]
        try:
            assert used_ratio() > 0.8
            fleet.wait_for(lambda: (exporter_disk_ratio(NODE) or 0) >= 0.84, 15, what="the exporter to see 85%")
            fleet.wait_for(lambda: used_ratio() < TARGET, 180, 1, what="disk-prune (started by DiskFilling) to free space")
            # Every node on h1's filesystem alerted, each alert started a run (Alertmanager delivers them one by
            # one): one run cleaned the disk, the others found it busy or done.
            def settled():
                runs = prune_runs(since)
                nodes = {e["data"]["parameters"]["node"] for e in read_entries(kind="started") if e["run_id"] in runs}
                return runs if nodes >= on_h1 and all(runs.values()) else None
            runs = fleet.wait_for(settled, 90, what="a finished disk-prune run for each node on h1")
        finally:
            lab.heal(NODE)
    # No triggered run may still be queued when the next test fills a disk of its own.
    fleet.wait_for(lambda: all(r.state and r.state.is_final() for r in fleet.flow_runs("disk-prune", since)), 120,
                   what="every disk-prune run the alerts started to end")
    [run_id] = [r for r, outcome in runs.items() if outcome["status"] == "succeeded"]
    assert all(o["status"] == "noop" for r, o in runs.items() if r != run_id), runs
    started = [e["data"] for e in read_entries(kind="started") if e["run_id"] in runs]
    assert {(d["trigger"].get("alert") or {}).get("alertname") for d in started} == {"DiskFilling"}, \
        [d["trigger"] for d in started]
    assert {d["parameters"]["node"] for d in started} == on_h1  # every node on that filesystem, and no other
    fleet.wait_for(lambda: not firing_disk_alerts(), 30, what="DiskFilling to resolve")
    removed = deletes(run_id)
    assert sorted(removed) == sorted(p for p in written if "/logs/" in p)  # the old logs, and nothing else
    assert_database_and_segments_intact(NODE, segments, marks)
    assert fleet.spawns(NODE) == spawns and fleet.server(NODE).in_rotation  # never stopped for this


def test_when_old_logs_are_not_enough_the_node_is_stopped_its_temp_emptied_and_returned_to_rotation(healthy_fleet):
    temp = datadir() / "temp"
    temp.mkdir(exist_ok=True)
    scratch = temp / "etl-sort-000001.tmp"
    used, size = disks.usage(datadir())
    with open(scratch, "wb") as out:  # real blocks, past the 70% act mark
        for _ in range(int((0.75 * size - used) // (4 << 20)) + 1):
            out.write(os.urandom(4 << 20))
    service = pwd.getpwnam(t.SERVICE_USER)
    os.chown(scratch, service.pw_uid, service.pw_gid)
    os.chown(temp, service.pw_uid, service.pw_gid)
    segments, marks, spawns = segment_hashes(), chain_marks(), fleet.spawns(NODE)
    try:
        assert used_ratio() > 0.7
        since = time.time()
        result = disk_prune(host="h1")
        assert result["status"] == "succeeded", result
        assert not scratch.exists() and used_ratio() < TARGET
        run_id = the_run(since, host="h1")
        assert deletes(run_id) == [str(scratch)]
        actions = [e["data"].get("action") for e in read_entries(run_id=run_id, kind="action")]
        assert actions.index("drain") < actions.index("stop") < actions.index("delete") < actions.index("start") \
            < actions.index("ready"), actions
    finally:
        scratch.unlink(missing_ok=True)
    assert fleet.spawns(NODE) == spawns + 1
    fleet.wait_for(lambda: fleet.status_of(NODE) == "healthy" and fleet.server(NODE).in_rotation, 30,
                   what=f"{NODE} healthy and in rotation")
    assert_database_and_segments_intact(NODE, segments, marks)


def test_a_disk_under_target_is_left_alone(healthy_fleet):
    assert used_ratio() < TARGET
    result = disk_prune(node=NODE)
    assert result["status"] == "noop" and result["outcome"] == "under-target", result


def test_heavy_pruning_waits_for_approval_backs_up_first_and_resyncs_one_node_at_a_time(healthy_fleet, tmp_path,
                                                                                      monkeypatch):
    """A host policy no safe step can meet (target 1%): with heavy=true the clients' own pruning is planned
    (the lab's anvil: its state resynced from the chain, as Erigon's chaindata from its segments), waits for
    approval, and per node takes a verified backup before it removes anything."""
    import yaml
    from prefect.flow_runs import resume_flow_run

    from tasks.backups.manifest import list_manifests
    from tasks.backups.restoring import is_verified
    from tasks.backups.store import open_store

    raw = yaml.safe_load(Path(os.environ["RUNBOOKS_INVENTORY"]).read_text())
    raw["hosts"]["h1"]["disk"] = {"target_percent": 1, "warn_percent": 2, "act_percent": 3, "critical_percent": 99}
    strict = tmp_path / "inventory.yaml"
    strict.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("RUNBOOKS_INVENTORY", str(strict))
    on_h1 = sorted(n for n, node in t.NODES.items() if node.host == "h1")
    segments = {n: segment_hashes(n) for n in on_h1}
    since = time.time()
    thread, _ = fleet.start_in_thread(disk_prune, host="h1", heavy=True)
    run_id = fleet.wait_for(lambda: (r := list(prune_runs(since, host="h1", heavy=True))) and r[-1], 30,
                            what="the heavy disk-prune run")
    plan = fleet.wait_for(lambda: [e["data"] for e in read_entries(run_id=run_id, kind="plan")], 60,
                          what="the heavy plan")[0]
    assert any(step.startswith("heavy on eth-a") for step in plan["steps"]), plan
    assert os.path.exists(datadir() / "state.json")  # nothing removed before approval
    fleet.wait_for(lambda: [e for e in read_entries(run_id=run_id, kind="approval") if e["data"]["status"] == "requested"],
                   60, what="the approval request")
    time.sleep(2)  # the pause lands a moment after its audit entry
    resume_flow_run(fleet.wait_for(lambda: _paused_run(run_id), 30, what="the paused run"),
                    run_input={"approve": True, "approver": "alice", "comment": "resync h1", "plan_hash": plan["hash"]})
    thread.join(600)
    outcome = fleet.outcome(read_entries(run_id=run_id))
    # Under 1% is out of reach (the segments alone are more): the run says so, after doing what it may.
    assert outcome["status"] == "escalated" and "still over target" in outcome["detail"], outcome
    actions = read_entries(run_id=run_id, kind="action")
    store, _ = open_store(load_inventory())
    for node in on_h1:
        removed = [i for i, e in enumerate(actions) if e["data"]["command"].startswith("rm -rf --")
                   and e["data"]["command"].endswith(f"/{node}/state.json")]
        backed_up = [e for e in read_entries(run_id=run_id, kind="note") if e["data"].get("text") == "heavy-prune backup"
                     and e["data"]["node"] == node]
        assert removed and backed_up, (node, [e["data"]["command"] for e in actions])
        [manifest] = [m for m in list_manifests(store, "snapshot", node) if m.key == backed_up[0]["data"]["manifest"]]
        assert is_verified(store, manifest)
        assert segment_hashes(node) == segments[node] and (datadir(node) / "state.json").exists()
        fleet.wait_for(lambda: fleet.status_of(node) == "healthy" and fleet.server(node).in_rotation, 60,
                       what=f"{node} resynced and back in rotation")
    order = [(e["data"]["action"], e["data"]["command"]) for e in actions if e["data"]["action"] in ("drain", "ready")]
    assert [a for a, _ in order] == ["drain", "ready", "drain", "ready"], order  # one node at a time


def _paused_run(run_id: str):
    from tasks import prefect_api

    with prefect_api.client() as client:
        run = client.read_flow_run(run_id)
    return run.id if run.state and run.state.is_paused() else None
