"""Highly available Prefect (lab/prefect_ha.py), built from real parts and put under faults: PostgreSQL
(throwaway, tests/postgres.py), Debian's redis-server, two API servers and one services process, HAProxy in
front, API authentication on. Each component is a process of this module's own, stopped by PID.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from lab.prefect_ha import HaPrefect, LocalStack, api_healthy, redis_ready
from tests.fleet import wait_for
from tests.postgres import postgres_server  # noqa: F401 - pytest fixture
from tests.processes import free_port

pytestmark = [pytest.mark.skipif(not Path("/usr/bin/redis-server").exists(), reason="redis-server is installed by `make setup`"),
              pytest.mark.early]


@pytest.fixture(scope="module")
def stack(postgres_server, tmp_path_factory):  # noqa: F811 - the fixture imported above
    root = tmp_path_factory.mktemp("prefect-ha")
    db = postgres_server.create_database()
    password = secrets.token_hex(16)
    ha = HaPrefect(home=root / "home", database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{postgres_server.port}/{db}",
                   redis_host="127.0.0.1", redis_port=free_port(), api_ports=(free_port(), free_port()),
                   lb_port=free_port(), auth_string=f"runbooks:{password}")
    s = LocalStack(ha, root, ha.redis_port)
    try:
        yield s.start_all()
    finally:
        s.stop_all()


def auth(ha: HaPrefect) -> tuple[str, str]:
    user, password = ha.auth_string.split(":", 1)
    return user, password


def run_flow(stack: LocalStack, seconds: float, name: str) -> subprocess.Popen:
    """A flow of one-second tasks, run against the balancer in a process of its own; prints its run id."""
    code = textwrap.dedent(f"""
        import time
        from prefect import flow, task
        from prefect.runtime import flow_run

        @task
        def tick(i):
            time.sleep(1)
            return i

        @flow(name={name!r})
        def ticking():
            print("RUN", flow_run.get_id(), flush=True)
            return sum(tick(i) for i in range({int(seconds)}))

        ticking()
    """)
    return subprocess.Popen([sys.executable, "-c", code], env=os.environ | stack.ha.client_env()
                            | {"PREFECT_HOME": str(stack.root / "client")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=stack.root)


def run_id_of(proc: subprocess.Popen) -> str:
    for line in proc.stdout:
        if line.startswith("RUN "):
            return line.split()[1]
    raise AssertionError("the flow never started")


def flow_run_state(stack: LocalStack, run_id: str, via: str | None = None) -> str:
    url = via or stack.ha.api_url
    r = httpx.get(f"{url}/flow_runs/{run_id}", auth=auth(stack.ha), timeout=10)
    r.raise_for_status()
    return r.json()["state"]["type"]


def test_the_api_refuses_requests_without_the_login_and_never_logs_it(stack):
    ha = stack.ha
    urls = [ha.api_url, *(f"http://127.0.0.1:{p}/api" for p in ha.api_ports)]
    for url in urls:
        assert httpx.post(f"{url}/flows/filter", json={}, timeout=10).status_code == 401
        assert httpx.post(f"{url}/flows/filter", json={}, auth=("runbooks", "wrong"), timeout=10).status_code == 401
        assert httpx.post(f"{url}/flows/filter", json={}, auth=auth(ha), timeout=10).status_code == 200
    assert auth(ha)[1] not in stack.logs()


def test_a_flow_run_completes_while_one_api_server_is_killed_under_it(stack):
    proc = run_flow(stack, 8, "ha-survives-a-server")
    try:
        run_id = run_id_of(proc)
        time.sleep(2)
        stack.kill("prefect-api-1")  # mid-run, while its tasks report their states through the balancer
        assert proc.wait(120) == 0, proc.stdout.read()
        assert flow_run_state(stack, run_id) == "COMPLETED"
        # Both servers read one database: the survivor answers for the whole run.
        assert flow_run_state(stack, run_id, via=f"http://127.0.0.1:{stack.ha.api_ports[1]}/api") == "COMPLETED"
    finally:
        if proc.poll() is None:
            proc.kill()
        if "prefect-api-1" not in stack.procs:
            stack.start("prefect-api-1")
            stack.wait_api(stack.ha.api_ports[0], "prefect-api-1 again")


def test_a_lease_taken_through_one_server_holds_through_the_other_and_across_a_redis_restart(stack):
    ha = stack.ha
    one, two = (f"http://127.0.0.1:{p}/api" for p in ha.api_ports)
    name = f"ha-node-{secrets.token_hex(4)}"
    httpx.post(f"{one}/v2/concurrency_limits/", json={"name": name, "limit": 1}, auth=auth(ha), timeout=10).raise_for_status()

    def take(url: str) -> httpx.Response:
        return httpx.post(f"{url}/v2/concurrency_limits/increment-with-lease", auth=auth(ha), timeout=10,
                          json={"names": [name], "slots": 1, "mode": "concurrency", "lease_duration": 60})

    held = take(one)
    assert held.status_code == 200, held.text
    lease_id = held.json()["lease_id"]
    assert take(two).status_code == 423  # the other server sees the slot taken

    stack.stop("redis")  # the leases live in Redis: a restart must not forget this one
    stack.start("redis")
    wait_for(lambda: redis_ready(stack.redis_port), 20, what="redis again")
    wait_for(lambda: api_healthy(ha.api_url), 30, what="the API after the Redis restart")
    assert take(two).status_code == 423, "the slot came free when Redis restarted"
    renewed = httpx.post(f"{two}/v2/concurrency_limits/leases/{lease_id}/renew", json={"lease_duration": 60},
                         auth=auth(ha), timeout=10)
    assert renewed.status_code in (200, 204), f"the lease was forgotten across the restart: {renewed.text}"

    r = httpx.post(f"{two}/v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease_id},
                   auth=auth(ha), timeout=10)
    assert r.status_code in (200, 204), r.text
    again = take(one)
    assert again.status_code == 200, again.text


def test_a_flow_run_completes_across_a_postgres_restart(stack, postgres_server):  # noqa: F811
    from tests.postgres import _as_postgres

    proc = run_flow(stack, 8, "ha-survives-postgres")
    try:
        run_id = run_id_of(proc)
        time.sleep(2)
        data = postgres_server.dir / "data"
        # -l: the restarted postmaster writes to its log file, not to this call's pipes (which would never close).
        _as_postgres(postgres_server.bin("pg_ctl"), "-D", str(data), "-l", str(postgres_server.dir / "server.log"),
                     "-m", "fast", "-w", "-t", "30", "restart")
        assert proc.wait(120) == 0, proc.stdout.read()
        assert flow_run_state(stack, run_id) == "COMPLETED"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_flow_run_completes_across_a_redis_restart_and_is_recorded_once(stack):
    proc = run_flow(stack, 8, "ha-survives-redis")
    try:
        run_id = run_id_of(proc)
        time.sleep(2)
        stack.stop("redis")  # messaging, events and leases: mid-run, while its tasks report their states
        stack.start("redis")
        wait_for(lambda: redis_ready(stack.redis_port), 20, what="redis again")
        assert proc.wait(120) == 0, proc.stdout.read()
        assert flow_run_state(stack, run_id) == "COMPLETED"
        runs = httpx.post(f"{stack.ha.api_url}/flow_runs/filter", auth=auth(stack.ha), timeout=10,
                          json={"flows": {"name": {"any_": ["ha-survives-redis"]}}}).json()
        assert [r["id"] for r in runs] == [run_id]  # neither lost nor started twice
    finally:
        if proc.poll() is None:
            proc.kill()


REDELIVERY_S = 300  # docket.Worker's default redelivery_timeout


def test_the_services_process_killed_then_restarted_catches_up_on_schedules_and_on_the_events_it_missed(stack):
    """The services process (scheduler, triggers, ...) is down: no run is created. Restarted, it creates the
    runs a schedule added meanwhile asks for, and the run an event sent meanwhile triggers, once."""
    from uuid import uuid4

    api, token = stack.ha.api_url, secrets.token_hex(4)

    def call(method: str, path: str, body=None):
        r = httpx.request(method, f"{api}{path}", json=body, auth=auth(stack.ha), timeout=10)
        r.raise_for_status()
        return r.json() if r.content else None

    def runs(deployment_id: str) -> int:
        return len(call("POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}}))

    def poke() -> None:
        call("POST", "/events", [{"id": str(uuid4()), "occurred": datetime.now(timezone.utc).isoformat(),
                                  "event": f"ha.poke.{token}", "resource": {"prefect.resource.id": f"ha.node.{token}"}}])

    flow_id = call("POST", "/flows/", {"name": f"ha-services-{token}"})["id"]
    triggered = call("POST", "/deployments/", {"name": "triggered", "flow_id": flow_id})["id"]
    call("POST", "/automations/", {
        "name": f"ha-poke-{token}", "enabled": True,
        "trigger": {"type": "event", "posture": "Reactive", "expect": [f"ha.poke.{token}"],
                    "match": {"prefect.resource.id": f"ha.node.{token}"}, "threshold": 1, "within": 0},
        "actions": [{"type": "run-deployment", "source": "selected", "deployment_id": triggered, "parameters": {}}]})
    # The triggers service loads the new automation: once a poke starts a run, it has.
    wait_for(lambda: (poke(), time.sleep(1.5), runs(triggered) > 0)[-1], 60, interval=0.1,
             what="the automation to start a run")
    time.sleep(2)
    before = runs(triggered)

    stack.kill("prefect-services")
    try:
        scheduled = call("POST", "/deployments/", {"name": "scheduled", "flow_id": flow_id, "schedules": [
            {"schedule": {"interval": 3600}, "active": True}]})["id"]
        poke()
        time.sleep(8)  # beyond the scheduler's 5 s loop, and a trigger's usual second
        assert runs(triggered) == before and runs(scheduled) == 0, "runs were created with no services process"
    finally:
        stack.start("prefect-services")
    restarted = time.monotonic()
    wait_for(lambda: runs(triggered) == before + 1, 120, interval=0.5,
             what="the restarted services to start the run the missed event asked for")
    # The scheduler is a perpetual task on Redis (docket): one the killed process had claimed is handed to
    # the new process only after docket's redelivery timeout (5 min, not a Prefect setting), so a schedule
    # can wait that long after a SIGKILL.
    wait_for(lambda: runs(scheduled) > 0, REDELIVERY_S + 60 - (time.monotonic() - restarted), interval=1,
             what="the restarted services to schedule the deployment created while they were down")
    time.sleep(3)
    assert runs(triggered) == before + 1  # the missed event started one run, not more
