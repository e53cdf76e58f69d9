"""Faults during a snapshot backup, each injected at a random moment of the run, in repeated runs:
the object store killed, the SSH connection dropped, the worker's run process killed.

Whatever the fault hits, afterwards:
- the node is running, healthy and in rotation;
- no backup of this run is listed complete unless it was also verified, and
  the newest verified backup from before is still whole;
- the node's next backup succeeds and leaves no multipart upload open.

The moment is random (seeded, printed) over the window from the node's stop
to shortly after the stream ends, so repeated runs hit the stop, the stream,
the restart and the manifest; the outcome each round had is printed too.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from datetime import datetime, timezone

import pytest
from prefect.deployments import run_deployment

from blocks import ObjectStore
from flows.snapshot_backup import owned_by, snapshot_backup
from lab import supervisor, topology
from tasks import objectstore
from tasks.audit import read_entries
from tasks.backups.manifest import list_manifests, read_verifications
from tasks.backups.verify import check_present
from tests import fleet

PATHS = topology.Paths(topology.lab_dir())
ROUNDS = 2
SEED = int(os.environ.get("RB_FAULT_SEED", time.time()))
RNG = random.Random(SEED)
RECONCILE_TRIGGER = "reconcile-on-crashed-run"


@pytest.fixture
def store(healthy_fleet) -> ObjectStore:
    print(f"fault moments seeded with RB_FAULT_SEED={SEED}")
    return ObjectStore.load(topology.BLOCK_STORE)


def steps(run_id: str) -> list[str]:
    return [e["data"]["step"] for e in read_entries(run_id=run_id) if e["kind"] == "note" and e["data"].get("step")]


def newest_verified(store, node: str):
    verified = [m for m in list_manifests(store, "snapshot", node)
                if (checks := read_verifications(store, m.key)) and checks[-1].ok]
    return verified[-1] if verified else None


def at_a_random_moment(run_id: str, inject) -> float:
    """Wait for the run to stop its node, then inject the fault after a random delay; the delay."""
    fleet.wait_for(lambda: "stop-service" in steps(run_id), 60, interval=0.02, what="the node to be stopped")
    delay = RNG.uniform(0.0, 1.5)
    time.sleep(delay)
    inject()
    return delay


def kill_object_store() -> None:
    """SIGKILL SeaweedFS; supervisord starts it again, as a real store's supervisor would."""
    supervisor.client(PATHS.supervisord_sock).supervisor.signalProcess("objectstore", "KILL")


def store_answers(store) -> bool:
    try:
        objectstore.list_objects(store, "drills/")
        return True
    except Exception:  # noqa: BLE001 - still starting
        return False


def drop_ssh(host: str):
    def inject() -> None:
        """Kill the sshd processes serving the runner's connections to `host`: the connection drops."""
        listener = int(PATHS.sshd_pid(host).read_text())
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
                if ppid == listener:
                    os.kill(int(pid), signal.SIGKILL)
    return inject


def afterwards(store, node: str, before, run_id: str, took: dict) -> None:
    """What must hold once the fault's dust settled, whatever it hit."""
    fleet.wait_for(lambda: fleet.server(node).admin_state == "ready" and fleet.status_of(node) == "healthy",
                   120, interval=1, what=f"{node} healthy and in rotation")
    fleet.wait_for(lambda: store_answers(store), 60, what="the store answering")
    for m in list_manifests(store, "snapshot", node, complete_only=False):
        assert m.complete, m.key
        assert read_verifications(store, m.key), f"{m.key} is listed but was never verified"
    if before is not None:
        assert check_present(store, before.stored_objects()) == {}, "the newest verified backup lost objects"
        assert newest_verified(store, node) is not None
    outcome = [e["data"] for e in read_entries(run_id=run_id) if e["kind"] == "outcome"]
    took["outcome"] = outcome[-1]["result"] if outcome else "killed"
    print(f"round: {took}")

    again = snapshot_backup(node)
    assert again["status"] == "succeeded", again
    assert [u.key for u in objectstore.list_open_multipart_uploads(store) if owned_by(u.key, node)] == []


def in_process(node: str, inject) -> tuple[str, float]:
    """Run the backup here, in a thread, and inject the fault into it; its run id and the delay."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(state=snapshot_backup(node, return_state=True)))
    since = time.time()
    thread.start()
    run_id = fleet.wait_for(lambda: _newest_run(node, since), 30, interval=0.02, what="the run's audit record")
    delay = at_a_random_moment(run_id, inject)
    thread.join(300)
    assert not thread.is_alive()
    return run_id, delay


def _newest_run(node: str, since: float) -> str | None:
    started = [e for e in read_entries(node=node, kind="started", since=datetime.fromtimestamp(since, timezone.utc))
               if e["flow"] == "snapshot-backup"]
    return started[-1]["run_id"] if started else None


@pytest.mark.parametrize("fault", ["object-store-killed", "ssh-dropped"])
def test_a_fault_during_a_backup_leaves_the_node_serving_and_no_partial_backup(store, fault):
    node = {"object-store-killed": "eth-b", "ssh-dropped": "op-b"}[fault]
    host = topology.NODES[node].host
    assert snapshot_backup(node)["status"] == "succeeded"  # a verified one that must survive
    for _ in range(ROUNDS):
        before = newest_verified(store, node)
        inject = kill_object_store if fault == "object-store-killed" else drop_ssh(host)
        run_id, delay = in_process(node, inject)
        afterwards(store, node, before, run_id, {"fault": fault, "delay_s": round(delay, 2)})


@pytest.fixture
def reconciler_on(store):
    with fleet.one_automation_on(trigger=RECONCILE_TRIGGER):
        yield store


def test_a_worker_killed_mid_backup_is_put_right_and_the_next_backup_succeeds(reconciler_on):
    store, node = reconciler_on, "eth-c"
    assert snapshot_backup(node)["status"] == "succeeded"
    for _ in range(ROUNDS):
        before = newest_verified(store, node)
        run = run_deployment("snapshot-backup/snapshot-backup", parameters={"node": node}, timeout=0)
        run_id = str(run.id)
        pid = fleet.wait_for(lambda: next((e["data"]["process"]["pid"] for e in read_entries(run_id=run_id)
                                           if e["kind"] == "started"), None), 60, interval=0.05, what="the run's pid")

        def kill() -> None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it finished first: a round where the fault came too late
        delay = at_a_random_moment(run_id, kill)
        afterwards(store, node, before, run_id, {"fault": "worker-killed", "delay_s": round(delay, 2)})
