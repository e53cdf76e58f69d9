"""A run whose worker dies with it (its host, its container) has nobody left to say so: Prefect shows it
Running. Its heartbeats stop, and the crash detection registered with the deployments
(deployments/register.py) marks it Crashed; its node lease comes back.

The run is a toy that holds a lease on a node of its own (tests/crash_toy.py), on a regional worker of the
test's own in a pool of its own, so killing that worker touches nothing of the fleet's.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.deployments import run_deployment

from deployments.register import SILENT_SECONDS
from lab import services, topology
from tasks import guards, prefect_api
from tasks.guards.lease import node_limit_name
from tests.fleet import wait_for
from tests.processes import kill_with_descendants

pytestmark = pytest.mark.beside_fleet
REPO = Path(__file__).resolve().parent.parent


async def create_deployment(pool: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(
            name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
        flow_id = await client.create_flow_from_name("crash-detection-toy")
        return str(await client.create_deployment(
            flow_id, name=pool, work_pool_name=pool, entrypoint="tests/crash_toy.py:hold",
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]))


async def delete(pool: str, deployment_id: str) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        await client.delete_deployment(deployment_id)
        await client.delete_work_pool(pool)


def state_of(run_id):
    with prefect_api.client() as client:
        return client.read_flow_run(run_id).state


def held_slots(node: str) -> int:
    from prefect.exceptions import ObjectNotFound

    with prefect_api.client() as client:
        try:
            return client.read_global_concurrency_limit_by_name(node_limit_name(node)).active_slots
        except ObjectNotFound:  # the run creates its node's limit when it first takes the lease
            return 0


def test_a_run_whose_worker_dies_with_it_is_marked_crashed_by_its_silence_and_its_lease_comes_back(lab, tmp_path):
    token = secrets.token_hex(3)
    pool, node, name = f"crash-test-{token}", f"crash-{token}", f"region-crash-test-{token}"
    deployment_id = asyncio.run(create_deployment(pool))
    env = os.environ | services.runbook_env(topology.Paths(topology.lab_dir())) | {
        "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "deployments.regional_worker", "--region", "crash-test",
                               "--pool", pool, "--name", name], env=env, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run = run_deployment(f"crash-detection-toy/{pool}", parameters={"name": node}, timeout=0)
        wait_for(lambda: state_of(run.id).type.value == "RUNNING" and held_slots(node) == 1, 90, interval=0.5,
                 what="the toy run to hold its lease")
        kill_with_descendants(worker.pid)
        worker.wait(10)
        killed = time.monotonic()
        time.sleep(5)
        assert state_of(run.id).type.value == "RUNNING"  # nobody is left to report it

        crashed = wait_for(lambda: (s := state_of(run.id)).type.value == "CRASHED" and s, SILENT_SECONDS + 60,
                           interval=1, what="the run to be marked Crashed")
        assert "heartbeat" in (crashed.message or ""), crashed.message
        # By its silence: its last heartbeat came at most 30 s before the kill.
        assert time.monotonic() - killed > SILENT_SECONDS - 35
        # Its lease expires with it (renewals stopped): the node is free for the next run.
        wait_for(lambda: held_slots(node) == 0, 90, interval=1, what="the dead run's lease to be reclaimed")
        with guards.node_lease(node, wait_seconds=2):
            pass
    finally:
        if worker.poll() is None:
            kill_with_descendants(worker.pid)
        log.close()
        asyncio.run(delete(pool, deployment_id))
