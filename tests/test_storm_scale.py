"""An alert storm over a thousand nodes (issue 12, item 3): one recovery run per node and no more, the chain
short-circuit instead of restarts when a whole chain halted, and nothing stops answering meanwhile.

Everything is real except the nodes (lab/simfleet.py: a thousand JSON-RPC nodes in one process) and Slack
and PagerDuty (lab/stubs.py). The test has a Prefect of its own, never the lab's (a thousand runs there would
show up in other tests' run listings and the lab's worker would execute them), in Prefect's scaled shape
(lab/prefect_ha.py, one API server and no balancer): a throwaway PostgreSQL (tests/postgres.py) and Redis, the
API server apart from one background-services process, the services the test has no use for switched off.
node-recovery is registered on it as `prefect deploy` registers it, with the trigger read from prefect.yaml
(so a change to the shipped trigger that lets a storm start duplicates fails here), on the shipped pool name
whose queue is paused: the runs are created and held, and a real worker polls that pool with its health
endpoint on. The real alert bridge receives the storm as Alertmanager sends it: alerts grouped into webhooks,
several alerts for one node, the whole storm repeated (Alertmanager delivers at least once and re-sends groups).

Then a sample of the halted chain's runs is executed in-process with the parameters the automation gave
them, against the simulated fleet: each must refuse (a chain incident), none may reach an action, and the
incident is paged once. (They run one after another; runs racing each other are not tested here.)

What it costs here (2 cores shared with the lab and other tests): ~150-170 s wall in all (~20 s to start
PostgreSQL, Redis, migrate and start Prefect; all thousand runs 90-110 s after the first webhook, ~10 a
second; the repeat delivery ~1 s; the eight halted-chain runs 7-16 s), health answers at most ~0.3 s, no
error in Prefect's logs. On one SQLite server with its services in the same process it was ~355 s (~4 runs
a second, the server CPU-bound; its event persister dropped batches under the burst). What bounds the rate
now is the reactive-triggers service: it evaluates the events one at a time (a PostgreSQL transaction per
event that matches, a Redis round trip or two for every one, ~12,000 events with the automation's own) in
the services process, ~0.8-0.9 of a core; a second services process consuming the same streams, batched
stream reads or in-memory causal ordering did not change it measurably here. Beside a whole `pytest -n 2` run
on the same machine it took 187 s to the thousandth run and 263 s wall, and beside the fleet's tests it slowed
them by ~2 min (and a UI test timed out) while every process shared the CPU alike. So it is marked `scale`: the
session's last test, and under `pytest -n 2` its worker waits until every test but the fleet's has finished
(tests/conftest.py): it runs beside the fleet's last tests only, on the worker left free, below the lab's
priority (the suite turns Linux's autogroups off so that priorities hold). Add `-s` to see its figures.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import itertools
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from lab import simfleet
from tests.conftest import _send_prefect_logs_and_events, wait_until_only_the_fleet_runs
from tests.processes import free_port, stop_process
from tests.test_alert_bridge import BEARER, start_bridge, wait_listening

ROOT = Path(__file__).resolve().parent.parent

# RUNBOOKS_STORM_NODES: a smaller storm for working on this test (the acceptance is the thousand).
BURST_NODES = int(os.environ.get("RUNBOOKS_STORM_NODES", "1000"))
HALTED = "sim-polygon"  # the chain that stops as a whole
SAMPLE = 8  # runs of the halted chain executed for the short-circuit
ALERTS_PER_WEBHOOK = 50
SENDERS = 4  # webhooks in flight at once
HEALTH_BOUND_S = 1.0
# Measured here: 90-110 s for the thousand (~10 runs a second), the trigger service the bound. See the module
# docstring.
ALL_RUNS_BOUND_S = 300.0
STARTS_AT = "2026-12-06T08:00:00Z"  # one incident per alert: the same startsAt in every repeat

# `scale`: the suite's last test, beside the fleet's last tests only (tests/conftest.py). Timed from its fixtures
# on: the wait for the other tests to finish has its own bound.
pytestmark = [pytest.mark.scale, pytest.mark.timeout(900, func_only=True)]


def node_recovery_declared() -> tuple[dict, str]:
    """node-recovery as prefect.yaml declares it, and its work pool's name."""
    declared = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployment = next(d for d in declared["deployments"] if d["name"] == "node-recovery")
    return deployment, deployment["work_pool"]["name"]


def _clean_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BRIDGE_"))} | extra


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_ok(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: its process exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s:\n{log.read_text()[-3000:]}")


def _until_bound(proc, where, wait, restart, attempts: int = 3):
    """Waits for a process just started on a port free_port() picked to answer there, starting it again on
    another port when that one was taken before it bound it: free_port() hands out ports from the range the
    kernel also gives outgoing connections, and this test makes thousands of them (PostgreSQL, Redis, HTTP).
    Returns the process that answers and where."""
    for attempt in range(attempts):
        try:
            wait(proc, where)
            return proc, where
        except RuntimeError as exc:
            if "address already in use" not in str(exc) or attempt == attempts - 1:
                raise
            stop_process(proc)
            proc, where = restart()
    raise AssertionError("unreachable")


class HealthWatch:
    """Polls health endpoints side by side (one thread each) and keeps each one's worst answer time; a
    refused, failed or non-200 answer counts as a miss."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls, self.worst = urls, {name: 0.0 for name in urls}
        self.samples, self.misses = Counter(), {name: [] for name in urls}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, args=(n,), daemon=True) for n in urls]

    def _poll(self, name: str) -> None:
        with httpx.Client(timeout=5.0) as http:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status = http.get(self.urls[name]).status_code
                except httpx.HTTPError as exc:
                    status = f"{type(exc).__name__}"
                took = time.perf_counter() - started
                self.worst[name] = max(self.worst[name], took)
                self.samples[name] += 1
                if status != 200:
                    self.misses[name].append(status)
                self._stop.wait(0.1)

    def __enter__(self) -> "HealthWatch":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def storm_webhooks(nodes: list[simfleet.SimNode]) -> list[dict]:
    """The storm as Alertmanager would send it: each node's NodeStalled, every third node also NodeLagging
    (two alerts, two fingerprints, one node), grouped by chain and region into webhooks of up to 50 alerts."""
    alerts = []
    for i, n in enumerate(nodes):
        for alertname in ["NodeStalled", *(["NodeLagging"] if i % 3 == 0 else [])]:
            labels = {"alertname": alertname, "node": n.name, "chain": n.chain, "region": n.region,
                      "severity": "critical"}
            alerts.append({"status": "firing", "labels": labels,
                           "annotations": {"summary": f"{n.name}: {alertname}"},
                           "startsAt": STARTS_AT, "endsAt": "0001-01-01T00:00:00Z",
                           "generatorURL": "http://127.0.0.1:9/graph",
                           "fingerprint": hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]})
    webhooks = []
    for (chain, region), group in itertools.groupby(
            sorted(alerts, key=lambda a: (a["labels"]["chain"], a["labels"]["region"])),
            key=lambda a: (a["labels"]["chain"], a["labels"]["region"])):
        group = list(group)
        for start in range(0, len(group), ALERTS_PER_WEBHOOK):
            webhooks.append({"version": "4", "groupKey": f'{{}}:{{chain="{chain}", region="{region}"}}',
                             "truncatedAlerts": 0, "status": "firing", "receiver": "runbooks-bridge",
                             "groupLabels": {"chain": chain, "region": region}, "commonLabels": {},
                             "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9",
                             "alerts": group[start:start + ALERTS_PER_WEBHOOK]})
    return webhooks


def deliver(bridge_url: str, webhooks: list[dict]) -> int:
    """Every webhook to the bridge, SENDERS at a time; each must be accepted whole. Returns the alerts sent."""
    with httpx.Client(base_url=bridge_url, timeout=30.0, headers=BEARER) as http:
        def post(body: dict) -> int:
            r = http.post("/alerts", json=body)
            assert r.status_code == 200, r.text[:500]
            assert r.json()["emitted"] == len(body["alerts"]), r.text[:500]
            return len(body["alerts"])

        with ThreadPoolExecutor(SENDERS) as pool:
            return sum(pool.map(post, webhooks))


async def register(declared: dict, pool_name: str) -> str:
    """node-recovery and its triggers as `prefect deploy` creates them (the same two steps it runs), on a
    process pool whose deployment queue is paused. The pool has a second, empty queue, unpaused: a worker
    whose every queue is paused stops polling, and its health endpoint then reports it dead (503) after
    30 polling intervals. Returns the deployment's id."""
    from prefect.cli.deploy._triggers import _create_deployment_triggers, _initialize_deployment_triggers
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(
            name=pool_name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
        queue = await client.read_work_queue_by_name("default", work_pool_name=pool_name)
        await client.update_work_queue(queue.id, is_paused=True)
        await client.create_work_queue(name="idle", work_pool_name=pool_name)
        flow_id = await client.create_flow_from_name("node-recovery")
        deployment_id = await client.create_deployment(
            flow_id, name=declared["name"], work_pool_name=pool_name, work_queue_name="default",
            entrypoint=declared["entrypoint"], parameters=declared.get("parameters") or {},
            tags=declared.get("tags") or [])
        triggers = _initialize_deployment_triggers(declared["name"], copy.deepcopy(declared["triggers"]))
        await _create_deployment_triggers(client, deployment_id, triggers)
        owned = [a for a in await client.read_automations()
                 if any(a.name == t.name for t in triggers) and a.enabled]
        assert len(owned) == len(declared["triggers"]), "a declared trigger did not become an automation"
        return str(deployment_id)


async def flow_runs(deployment_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    flt = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    async with get_client() as client:
        runs, offset = [], 0
        while page := await client.read_flow_runs(deployment_filter=flt, limit=200, offset=offset):
            runs += page
            offset += len(page)
        return runs


async def count_runs(deployment_id: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        return await client.count_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def wait_for_runs(deployment_id: str, count: int, timeout: float) -> float:
    """Seconds until the deployment has at least `count` runs; fails past the timeout."""
    started = shown = time.monotonic()
    while (have := asyncio.run(count_runs(deployment_id))) < count:
        assert time.monotonic() - started < timeout, f"{have} of {count} runs after {timeout:.0f} s"
        if time.monotonic() - shown > 5:
            print(f"  {have} runs after {time.monotonic() - started:.0f} s", flush=True)
            shown = time.monotonic()
        time.sleep(0.5)
    return time.monotonic() - started


# Server services this test has no use for (nothing is scheduled, no run executes on the server's side, no
# worker or lease to reclaim): each would only take the services process's CPU from the triggers.
UNNEEDED_SERVICES = ("scheduler", "late_runs", "foreman", "cancellation_cleanup", "pause_expirations",
                     "task_run_recorder", "repossessor", "telemetry", "db_vacuum", "cleanup_reconciler")


class StormPrefect:
    """The storm's Prefect: its API URL, the processes that make it up (each in a session of its own) and logs."""

    def __init__(self, api: str) -> None:
        self.api, self.procs, self.logs = api, [], []

    def cpu_seconds(self) -> float:
        """user+system CPU so far of every process in those sessions (Prefect's, PostgreSQL's backends aside)."""
        sessions, total, tick = {p.pid for p in self.procs}, 0.0, os.sysconf("SC_CLK_TCK")
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) in sessions:  # session id; utime and stime follow at 11 and 12
                    total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def errors(self) -> list[str]:
        return [line[:200] for log in self.logs for line in log.read_text(errors="replace").splitlines()
                if any(w in line for w in ("ERROR", "Traceback", "dropping", "constraint failed"))]


def _redis_ready(port: int) -> bool:
    done = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, timeout=5)
    return done.stdout.strip() == "PONG"


@pytest.fixture
def storm_prefect(tmp_path):
    """A Prefect of the test's own in the scaled shape (lab/prefect_ha.py, with one API server and no balancer):
    a throwaway PostgreSQL (tests/postgres.py), a throwaway Redis for messaging, the API server
    (`--no-services`) and the background services in a process of their own. All stopped by PID afterwards;
    the test's Prefect calls go to it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from tests.postgres import start_server, stop_server

    if not Path("/usr/bin/redis-server").exists():
        pytest.skip("redis-server is installed by `make setup`")
    port, redis_port = free_port(), free_port()
    api = f"http://127.0.0.1:{port}/api"
    storm = StormPrefect(api)
    pg = start_server()
    try:
        env = _clean_env(
            PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_ENABLED="false", PREFECT_SERVER_API_PORT=str(port),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/"
                                                   f"{pg.create_database('storm')}",
            PREFECT_API_DATABASE_MIGRATE_ON_START="false",  # migrated once below, before either process starts
            # Messaging through Redis: the API server and the services are separate processes.
            PREFECT_MESSAGING_BROKER="prefect_redis.messaging", PREFECT_MESSAGING_CACHE="prefect_redis.messaging",
            PREFECT_SERVER_EVENTS_CAUSAL_ORDERING="prefect_redis.ordering",
            PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE="prefect_redis.lease_storage",
            PREFECT_REDIS_MESSAGING_HOST="127.0.0.1", PREFECT_REDIS_MESSAGING_PORT=str(redis_port),
            PREFECT_REDIS_MESSAGING_DB="0", PREFECT_SERVER_DOCKET_URL=f"redis://127.0.0.1:{redis_port}/1",
            # Events are stored (and read back by node-recovery's trigger lookup) within ~0.5 s, as in the lab,
            # in batches of up to 200 rather than 20.
            PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL="0.5",
            PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE="200",
            PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE="50",
            PREFECT_SERVER_SERVICES_TRIGGERS_READ_BATCH_SIZE="20",
            # Nothing here subscribes to the server's event stream (no UI, no `prefect events stream`).
            PREFECT_API_EVENTS_STREAM_OUT_ENABLED="false",
            PREFECT_LOGGING_SERVER_LEVEL="WARNING", PYTHONUNBUFFERED="1")
        # The runs are held on a paused queue on purpose: marking a thousand of them Late is not what is measured.
        env |= {f"PREFECT_SERVER_SERVICES_{name.upper()}_ENABLED": "false" for name in UNNEEDED_SERVICES}
        (tmp_path / "redis").mkdir()
        storm.procs.append(_start(["/usr/bin/redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                                   "--dir", str(tmp_path / "redis"), "--save", "", "--appendonly", "no"],
                                  {}, tmp_path / "redis.log"))
        deadline = time.monotonic() + 20
        while not _redis_ready(redis_port):
            assert time.monotonic() < deadline, (tmp_path / "redis.log").read_text()[-2000:]
            time.sleep(0.2)
        migrated = subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert migrated.returncode == 0, (migrated.stderr or migrated.stdout)[-3000:]
        log = tmp_path / "prefect-server.log"
        storm.procs.append(_start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port), "--no-services"], env, log))
        storm.logs.append(log)
        _wait_ok(f"{api}/health", storm.procs[-1], log)
        log = tmp_path / "prefect-services.log"
        storm.procs.append(_start([sys.executable, "-m", "prefect", "server", "services", "start"], env, log))
        storm.logs.append(log)
        with temporary_settings({PREFECT_API_URL: api, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            try:
                yield storm
            finally:  # the in-process runs' logs and events, while their server is up (else a minute of retries)
                _send_prefect_logs_and_events()
    finally:
        for proc in reversed(storm.procs):
            stop_process(proc)
        stop_server(pg)


@pytest.fixture
def only_the_fleet_left(storm_prefect) -> None:
    """Every test but the fleet's has finished: the storm has this worker's share of the machine, beside the
    fleet's last tests. Its Prefect (~15 s to start) is started before the wait."""
    wait_until_only_the_fleet_runs()


def test_a_thousand_node_alert_storm_starts_one_run_per_node_and_a_halted_chain_restarts_nothing(
        storm_prefect, only_the_fleet_left, tmp_path, stubs, audit_dir, monkeypatch):
    from blocks import PagerDutyService, SlackWorkspace
    from flows.node_recovery import node_recovery
    from tasks.audit import read_entries

    api = storm_prefect.api
    declared, pool_name = node_recovery_declared()
    deployment_id = asyncio.run(register(declared, pool_name))

    # The fleet: a thousand nodes in the storm and one more, the sentinel, alerted last of all.
    spec = simfleet.build_spec(BURST_NODES + 1, {"eu": 0.001, "us": 0.001, "ap": 0.001}, fault_every={},
                               halted=(HALTED,))
    storm_nodes, sentinel = spec.nodes[:BURST_NODES], spec.nodes[BURST_NODES]
    inventory = simfleet.inventory(spec) | {"notifications": {"slack_block": "storm-slack",
                                                              "pagerduty_block": "storm-pagerduty"}}
    (tmp_path / "spec.json").write_text(spec.to_json())
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(inventory))
    SlackWorkspace(token="xoxb-storm-0123456789-abcdef", channel="#node-ops", base_url=f"{stubs.url}/api/",
                   timeout_seconds=2).save("storm-slack", overwrite=True)
    PagerDutyService(routing_key="R0UTINGKEY0123456789abcdefstorm0", events_url=f"{stubs.url}/v2/enqueue",
                     timeout_seconds=2).save("storm-pagerduty", overwrite=True)

    started: list[subprocess.Popen] = []
    try:
        fleet = _start([sys.executable, "-m", "lab.simfleet", "serve", "--spec", str(tmp_path / "spec.json")],
                       _clean_env(), tmp_path / "simfleet.log")
        started.append(fleet)

        def start_worker() -> tuple[subprocess.Popen, int]:
            port = free_port()
            proc = _start([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool_name, "--type",
                           "process", "--name", "storm-worker", "--with-healthcheck"],
                          _clean_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "worker-home"),
                                     PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1",
                                     PREFECT_WORKER_WEBSERVER_PORT=str(port)), tmp_path / "worker.log")
            started.append(proc)
            return proc, port

        def wait_worker(proc: subprocess.Popen, port: int) -> None:
            # Its health server failing to bind does not end the worker: look for that in its log meanwhile.
            log, deadline = tmp_path / "worker.log", time.monotonic() + 90
            while "address already in use" not in log.read_text(errors="replace"):
                try:
                    return _wait_ok(f"http://127.0.0.1:{port}/health", proc, log, timeout=2)
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
            raise RuntimeError(f"worker: address already in use:\n{log.read_text()[-3000:]}")

        def start_storm_bridge() -> tuple[subprocess.Popen, tuple[str, Path]]:
            proc, url, log = start_bridge(tmp_path, api)
            started.append(proc)
            return proc, (url, log)

        worker, worker_port = start_worker()
        bridge, (bridge_url, bridge_log) = start_storm_bridge()
        bridge, (bridge_url, bridge_log) = _until_bound(
            bridge, (bridge_url, bridge_log), lambda p, ul: wait_listening(p, *ul, timeout=60), start_storm_bridge)
        worker, worker_port = _until_bound(worker, worker_port, wait_worker, start_worker)

        webhooks = storm_webhooks(storm_nodes)
        health = {"prefect": f"{api}/health", "bridge": f"{bridge_url}/healthz",
                  "worker": f"http://127.0.0.1:{worker_port}/health"}
        with HealthWatch(health) as watch:
            burst_at = time.monotonic()
            cpu_at = storm_prefect.cpu_seconds()
            # The storm, then Alertmanager's duplicate delivery of all of it.
            sent = deliver(bridge_url, webhooks) + deliver(bridge_url, webhooks)
            sent_s = time.monotonic() - burst_at
            all_runs_s = wait_for_runs(deployment_id, BURST_NODES, ALL_RUNS_BOUND_S) + sent_s
            cpu_s = storm_prefect.cpu_seconds() - cpu_at
            # A repeat notification of the whole storm after the trigger's window has passed for every node
            # (Prefect must drop these by event id: the window alone would let them start runs again) ...
            time.sleep(max(0.0, declared["triggers"][0]["within"] + 1 - (time.monotonic() - burst_at)))
            repeat_at = time.monotonic()
            sent += deliver(bridge_url, webhooks)
            # ... and a fresh alert behind it: once its run exists, the repeats ahead of it were evaluated.
            deliver(bridge_url, storm_webhooks([sentinel]))
            wait_for_runs(deployment_id, BURST_NODES + 1, 90)
            repeat_s = time.monotonic() - repeat_at
            time.sleep(2)
        runs = asyncio.run(flow_runs(deployment_id))
        errors = storm_prefect.errors()

        print(f"\nstorm: {len(webhooks)} webhooks x 3 = {sent} alerts for {BURST_NODES} nodes, sent in {sent_s:.1f} s "
              f"(two deliveries); all {BURST_NODES} runs created {all_runs_s:.1f} s after the first webhook, Prefect's "
              f"processes using {cpu_s:.0f} s of CPU meanwhile ({cpu_s / all_runs_s:.0%} of one core); the repeat "
              f"delivery and the sentinel's run {repeat_s:.1f} s; {len(errors)} error lines in Prefect's logs",
              *errors[:8], sep="\n    ")
        print("worst health answer during the storm: " + ", ".join(
            f"{name} {watch.worst[name] * 1000:.0f} ms ({watch.samples[name]} polls)" for name in health))

        per_node = Counter(r.parameters.get("node") for r in runs)
        duplicated = {n: c for n, c in per_node.items() if c > 1}
        missing = sorted({n.name for n in spec.nodes} - set(per_node))
        assert not duplicated, f"{len(duplicated)} nodes got more than one run: {dict(list(duplicated.items())[:10])}"
        assert not missing, f"{len(missing)} nodes got no run: {missing[:10]}"
        assert per_node == Counter({n.name: 1 for n in spec.nodes})
        assert all(r.parameters["reason"] in ("stalled", "lagging") and r.parameters["trigger_event_id"] for r in runs)
        # Held on the paused queue: the worker polled all along and took none of them.
        assert {r.state_type.value for r in runs} == {"SCHEDULED"}
        assert all(not misses for misses in watch.misses.values()), watch.misses
        assert all(watch.samples[name] >= 10 for name in health), watch.samples
        slow = {name: round(t, 2) for name, t in watch.worst.items() if t >= HEALTH_BOUND_S}
        assert not slow, f"health endpoints slower than {HEALTH_BOUND_S} s during the storm: {slow}"

        # The halted chain: its runs, executed as the automation parameterised them, restart nothing.
        monkeypatch.setenv("RUNBOOKS_INVENTORY", str(tmp_path / "inventory.yaml"))
        halted = {n.name for n in storm_nodes if n.chain == HALTED}
        halted_runs = sorted((r for r in runs if r.parameters["node"] in halted), key=lambda r: r.parameters["node"])[:SAMPLE]
        assert len(halted_runs) == SAMPLE
        chain_at = time.monotonic()
        results = {r.parameters["node"]: node_recovery(**r.parameters) for r in halted_runs}
        chain_s = time.monotonic() - chain_at
        print(f"halted chain {HALTED}: {SAMPLE} of its runs executed in {chain_s:.1f} s: "
              + ", ".join(sorted({res["outcome"] for res in results.values()})))
        assert {res["status"] for res in results.values()} == {"refused"}, results
        assert {res["outcome"] for res in results.values()} == {"chain-incident"}, results
        entries = read_entries()
        assert not [e for e in entries if e["kind"] == "action"], "a node was acted on during a chain incident"
        incidents = [e for e in entries if e["kind"] == "guard" and e["data"]["name"] == "chain-incident"]
        assert len(incidents) == SAMPLE and sum(bool(e["data"]["escalated"]) for e in incidents) == 1
        pages = [r["body"] for r in stubs.records("pagerduty") if r["body"].get("event_action") == "trigger"]
        assert len(pages) == 1 and HALTED in pages[0]["dedup_key"], pages
    finally:
        for proc in reversed(started):
            stop_process(proc)
