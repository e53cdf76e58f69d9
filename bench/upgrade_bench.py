"""client-upgrade and disk-prune on the lab: where the time goes, stage by stage.

1. baseline: each lab-eth node restarted by a plain `supervisorctl restart` over SSH, timed from the
   command to the node healthy again (what an operator's hand-made upgrade costs at the least);
2. a three-node wave, anvil 1.5.1 -> 1.7.1, approved at once, soak 0: per node, each stage from the
   run's `upgrade-stage` notes (install, drain -> stop, datadir backup, switch + start, verify,
   back in rotation), the node's time out of rotation, and that against the plain restart;
3. a rollback: the canary upgraded to the lab's release that exits at start, then rolled back
   (old version and pre-change datadir): the rollback's stages;
4. pruning: eth-a's temp/ filled with scratch, disk-prune(host=h1) empties it with the node
   stopped: bytes freed per second of the node's downtime (drain -> back in rotation).

IT NEEDS THE LAB TO ITSELF (never during `make test`): it upgrades and rolls back the fleet and puts
it back on 1.5.1 at the end. It refuses to start without --i-own-the-lab.

    uv run python bench/upgrade_bench.py --i-own-the-lab [--json bench/results/upgrade_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NODES = ["eth-a", "eth-b", "eth-c"]
STAGES = [("install", "started", "drained"), ("drain+stop", "drained", "stopped"),
          ("datadir backup", "stopped", "backed-up"), ("switch+start", "backed-up", "verifying"),
          ("verify+soak", "verifying", "done")]


def ts(entry: dict) -> float:
    return datetime.fromisoformat(entry["ts"]).timestamp()


def stage_times(run_id: str) -> dict[str, dict[str, float]]:
    from tasks.audit import read_entries
    from tasks.upgrades import STAGE

    entries = read_entries(run_id=run_id)
    started = ts(entries[0])
    out: dict[str, dict[str, float]] = {}
    for e in entries:
        d = e.get("data") or {}
        if e["kind"] == "note" and d.get("text") == STAGE:
            out.setdefault(d["node"], {"started": started})[d["stage"]] = ts(e)
    # A node's install begins when the previous node is done (or the run started).
    previous = started
    for node in [n for n in NODES if n in out]:
        out[node]["started"] = previous
        previous = out[node].get("done", out[node].get("rolled-back", previous))
    return out


def plain_restart(node: str) -> float:
    """`supervisorctl restart` over the runbooks' SSH identity, then wait until healthy: seconds."""
    from blocks import SshIdentity
    from inventory import load_inventory
    from tasks.audit import AuditRecord
    from tasks.services import service_manager_for
    from tasks.ssh import SshRunner
    from tasks.steps import assess_nodes

    inv = load_inventory()
    host = inv.host_of(node)
    audit = AuditRecord(f"bench-{os.getpid()}", "upgrade-bench", node=node)
    started = time.monotonic()
    with SshRunner(host, SshIdentity.load(host.ssh_identity_block), audit) as ssh:
        ssh.run(service_manager_for(inv.node(node), host).restart_argv(), check=True)
    first = assess_nodes(inv, [node])[node].head
    while True:
        a = assess_nodes(inv, [node])[node]
        if a.healthy and a.head and first is not None and a.head > first:
            return time.monotonic() - started
        time.sleep(0.2)


def run_upgrade(**params):
    """client-upgrade in this process, approved as soon as it pauses; returns (state, run id)."""
    from prefect.flow_runs import resume_flow_run

    from flows.client_upgrade import client_upgrade
    from tasks import prefect_api
    from tasks.audit import read_entries

    from tests.fleet import start_in_thread

    began = time.time()
    thread, box = start_in_thread(client_upgrade, **params)
    run_id = None
    while thread.is_alive():
        with prefect_api.client() as client:
            paused = [r for r in client.read_flow_runs() if r.state and r.state.is_paused()
                      and r.created.timestamp() >= began - 1]
        if paused and run_id is None:
            run_id = str(paused[0].id)
            plan = [e for e in read_entries(run_id=run_id) if e["kind"] == "plan"][0]["data"]
            resume_flow_run(paused[0].id, run_input={"approve": True, "approver": "bench", "comment": "",
                                                     "plan_hash": plan["hash"]})
        time.sleep(0.5)
    return box.get("state"), run_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--i-own-the-lab", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.i_own_the_lab:
        print("refusing: this bench upgrades and rolls back the lab's fleet; pass --i-own-the-lab", file=sys.stderr)
        return 2
    from lab import services, topology
    os.environ.update(services.runbook_env(topology.Paths(topology.lab_dir())))
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from tests.fleet import reset_fleet_version  # shared with the tests

    results: dict = {}
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        reset_fleet_version(NODES)
        restarts = {n: plain_restart(n) for n in NODES}
        results["plain_restart_s"] = restarts
        print("plain `supervisorctl restart` -> healthy: " + ", ".join(f"{n} {s:.1f}s" for n, s in restarts.items()))

        state, run_id = run_upgrade(version="1.7.1", chain="lab-eth", soak_minutes=0)
        if not (state and state.is_completed()):
            print(f"the wave did not complete: {state}", file=sys.stderr)
            return 1
        wave = stage_times(run_id)
        print("\nwave anvil 1.5.1 -> 1.7.1, per node (s):")
        print(f"{'node':8s}" + "".join(f"{label:>16s}" for label, _, _ in STAGES) + f"{'out of rotation':>17s}{'vs restart':>12s}")
        results["wave"] = {}
        for node, t in wave.items():
            t.setdefault("backed-up", t["stopped"])  # a patch release: no datadir backup
            durations = {label: t[b] - t[a] for label, a, b in STAGES if a in t and b in t}
            out = t["done"] - t["drained"]
            results["wave"][node] = {**durations, "out_of_rotation_s": out}
            print(f"{node:8s}" + "".join(f"{durations.get(label, float('nan')):16.1f}" for label, _, _ in STAGES)
                  + f"{out:17.1f}{out / restarts[node]:11.1f}x")
        total = max(t["done"] for t in wave.values()) - min(t["started"] for t in wave.values())
        results["wave_total_s"] = total
        print(f"three-node wave, end to end (after approval): {total:.1f}s")

        reset_fleet_version(NODES)
        broken = next(v for v, k in topology.BROKEN_RELEASES.items() if k == "exits-at-start")
        state, run_id = run_upgrade(version=broken, nodes=["eth-a"], soak_minutes=0)
        t = stage_times(run_id)["eth-a"]
        rollback = t["rolled-back"] - t["rolling-back"]
        results["rollback"] = {"failed_attempt_s": t["rolling-back"] - t["drained"], "rollback_s": rollback,
                               "out_of_rotation_s": t["rolled-back"] - t["drained"]}
        print(f"\nrollback of eth-a from {broken} (exits at start): attempt {t['rolling-back'] - t['drained']:.1f}s, "
              f"rollback (switch back, datadir restored, synced, in rotation) {rollback:.1f}s, "
              f"out of rotation {t['rolled-back'] - t['drained']:.1f}s")

        results["prune"] = prune_bench()
        reset_fleet_version(NODES)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def prune_bench() -> dict:
    import pwd

    from flows.disk_prune import disk_prune
    from inventory import load_inventory
    from lab import disks, topology
    from tasks.audit import read_entries

    datadir = Path(load_inventory().node("eth-a").datadir)
    temp = datadir / "temp"
    temp.mkdir(exist_ok=True)
    used, size = disks.usage(datadir)
    scratch = temp / "etl-bench.tmp"
    with open(scratch, "wb") as out:
        for _ in range(int((0.75 * size - used) // (4 << 20)) + 1):
            out.write(os.urandom(4 << 20))
    service = pwd.getpwnam(topology.SERVICE_USER)
    for path in (temp, scratch):
        os.chown(path, service.pw_uid, service.pw_gid)
    began = time.time()
    result = disk_prune(host="h1")
    entries = [e for e in read_entries(kind="action") if ts(e) >= began - 1 and e["flow"] == "disk-prune"]
    drained = min(ts(e) for e in entries if e["data"].get("action") == "drain")
    ready = max(ts(e) for e in entries if e["data"].get("action") == "ready")
    freed = result.get("freed_bytes", 0)
    downtime = ready - drained
    print(f"\ndisk-prune h1: {freed / 2**20:.0f} MiB freed, eth-a out of rotation {downtime:.1f}s: "
          f"{freed / 2**20 / downtime:.1f} MiB freed per second of downtime")
    scratch.unlink(missing_ok=True)
    return {"freed_bytes": freed, "downtime_s": downtime, "mib_per_s": freed / 2**20 / downtime,
            "median_step_s": statistics.median([f.get("seconds", 0) for f in result.get("freed", [])] or [0])}


if __name__ == "__main__":
    sys.exit(main())
