"""Orchestration throughput: flow runs created and finished per minute, the embedded shape vs the HA shape.

Each shape is started from nothing by this script, on loopback ports of its own, then stopped by PID:

- embedded: one `prefect server start` on SQLite, with the lab's settings (the shape of the lab and
  `make demo`);
- ha: lab/prefect_ha.py's LocalStack: a throwaway PostgreSQL 15 (tests/postgres.py), Redis, two API
  servers behind HAProxy, one services process, API authentication on.

Load: --clients concurrent clients, each asking of the server what a worker and a flow-run engine ask
for one run: create a flow run of a deployment, then Pending, Running, Completed (Prefect's
orchestration rules judge every transition), until --runs runs are finished. A busy server's 429, 502
or 503 is retried after a back-off, as Prefect's client does, and counted (a call's time includes its
retries). No run process is
started: this measures what the server side carries. A worker's process starts are
bench/run_start_bench.py's. Meanwhile /api/health is polled every 0.2 s through the same URL;
its worst answer time is reported, as the health of a loaded server.

    uv run python bench/orchestration_bench.py [--runs 300] [--clients 8] [--shapes embedded,ha]

Prints per shape runs finished per minute and each call's p50/p95, then ha / embedded; writes
bench/results/orchestration_bench.json. Needs no lab, and runs beside one (its own ports).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab.prefect_ha import HaPrefect, LocalStack, api_healthy, wait_until
from lab.simfleet import free_ports

# The lab's own server settings (lab/services.py prefect_programs), so "embedded" is what the lab runs.
EMBEDDED_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.5",
    "PYTHONUNBUFFERED": "1",
    "PREFECT_API_LOG_RETRYABLE_ERRORS": "true",  # say why a call was answered 503
}
STATES = ("PENDING", "RUNNING", "COMPLETED")


class Shape:
    """A running Prefect: its API URL, the login if any, and how to stop it."""

    def __init__(self, name: str, api_url: str, auth: tuple[str, str] | None, stop) -> None:
        self.name, self.api_url, self.auth, self.stop = name, api_url, auth, stop


def start_embedded(root: Path) -> Shape:
    port = free_ports(1)[0]
    log = open(root / "embedded.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=os.environ | EMBEDDED_ENV | {"PREFECT_HOME": str(root / "embedded")},
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until(lambda: api_healthy(url), 120, "the embedded server")
    except BaseException:
        stop()
        raise
    return Shape("embedded", url, None, stop)


def start_ha(root: Path) -> Shape:
    from tests.postgres import start_server, stop_server

    pg = start_server()
    ports = free_ports(4)
    password = secrets.token_hex(16)
    ha = HaPrefect(home=root / "ha", database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/"
                   f"{pg.create_database('prefect')}", redis_host="127.0.0.1", redis_port=ports[0],
                   api_ports=(ports[1], ports[2]), lb_port=ports[3], auth_string=f"bench:{password}")
    stack = LocalStack(ha, root / "ha-procs", ha.redis_port)

    def stop() -> None:
        stack.stop_all()
        stop_server(pg)

    try:
        stack.start_all()
    except BaseException:
        stop()
        raise
    return Shape("ha", ha.api_url, ("bench", password), stop)


RETRY_CODES = {429, 502, 503}  # what Prefect's own client retries (with back-off): a busy server's answers


async def _post(client: httpx.AsyncClient, path: str, body: dict, retried: list[str]) -> httpx.Response:
    """POST as Prefect's client does it: a busy server's 429/502/503 retried after a back-off (up to 5 times),
    a connection the server closed under a kept-alive request retried at once."""
    for attempt in range(6):
        try:
            r = await client.post(path, json=body)
        except (httpx.ReadError, httpx.RemoteProtocolError) as exc:  # a kept-alive connection the server closed
            if attempt == 5:
                raise
            retried.append(f"{path}: {type(exc).__name__}")
            continue
        if r.status_code not in RETRY_CODES or attempt == 5:
            if r.is_error:
                raise RuntimeError(f"POST {path}: HTTP {r.status_code} {r.text[:300]}")
            return r
        retried.append(f"{path}: {r.status_code}")
        await asyncio.sleep(2 ** attempt * random.uniform(1, 1.2))  # Prefect's client: 2 s, doubling, jitter
    raise AssertionError("unreachable")


async def _deployment(client: httpx.AsyncClient, retried: list[str]) -> str:
    flow = await _post(client, "/flows/", {"name": "orchestration-bench"}, retried)
    dep = await _post(client, "/deployments/", {"name": "bench", "flow_id": flow.json()["id"]}, retried)
    return dep.json()["id"]


async def _drive(shape: Shape, runs: int, clients: int) -> dict:
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=shape.api_url, auth=shape.auth, timeout=60, limits=limits) as client:
        retried: list[str] = []
        deployment = await _deployment(client, retried)
        retried.clear()  # a server just started may be busy with its own start-up: only the load's count
        calls: dict[str, list[float]] = {"create": [], **{s.lower(): [] for s in STATES}}
        refused: list[str] = []
        todo = iter(range(runs))
        health: list[float] = []
        done = asyncio.Event()

        async def one_client() -> None:
            for _ in todo:
                t = time.perf_counter()
                r = await _post(client, f"/deployments/{deployment}/create_flow_run", {}, retried)
                calls["create"].append(time.perf_counter() - t)
                run_id = r.json()["id"]
                for state in STATES:
                    t = time.perf_counter()
                    r = await _post(client, f"/flow_runs/{run_id}/set_state", {"state": {"type": state}}, retried)
                    calls[state.lower()].append(time.perf_counter() - t)
                    if r.json()["status"] != "ACCEPT":
                        refused.append(f"{run_id} {state}: {r.json()['status']}")

        async def watch_health() -> None:
            async with httpx.AsyncClient(timeout=30) as probe:
                while not done.is_set():
                    t = time.perf_counter()
                    (await probe.get(f"{shape.api_url}/health")).raise_for_status()
                    health.append(time.perf_counter() - t)
                    await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch_health())
        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        done.set()
        await watcher
        finished = await client.post("/flow_runs/count", json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
        finished.raise_for_status()

    def pct(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]

    return {
        "shape": shape.name, "runs": runs, "clients": clients, "seconds": round(elapsed, 2),
        "runs_per_minute": round(runs / elapsed * 60, 1), "completed_on_server": finished.json(),
        "refused_transitions": refused[:5], "refused_count": len(refused),
        "retried_count": len(retried), "retried": sorted({r.split("/")[1] + " " + r.split()[-1] for r in retried}),
        "calls_ms": {k: {"p50": round(pct(v, 50) * 1000, 1), "p95": round(pct(v, 95) * 1000, 1)} for k, v in calls.items()},
        "health_worst_ms": round(max(health) * 1000, 1), "health_samples": len(health),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--shapes", default="embedded,ha")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "orchestration_bench.json")
    args = parser.parse_args()
    starters = {"embedded": start_embedded, "ha": start_ha}
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = set(shapes) - set(starters)
    if unknown:
        parser.error(f"unknown shapes {sorted(unknown)}: choose from {sorted(starters)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="rb-orch-", dir="/var/tmp") as tmp:
        for name in shapes:
            root = Path(tmp) / name
            root.mkdir()
            started = time.perf_counter()
            shape = starters[name](root)
            print(f"{name}: up in {time.perf_counter() - started:.1f}s at {shape.api_url}", flush=True)
            try:
                result = asyncio.run(_drive(shape, args.runs, args.clients))
            except httpx.HTTPError:
                logs = "".join(p.read_text(errors="replace") for p in root.rglob("*.log"))
                print(f"{name}: the server's log ends:\n{logs[-3000:]}", file=sys.stderr)
                raise
            finally:
                shape.stop()
            results.append(result)
            calls = ", ".join(f"{k} {v['p50']}/{v['p95']} ms" for k, v in result["calls_ms"].items())
            print(f"{name}: {result['runs']} runs by {result['clients']} clients in {result['seconds']}s = "
                  f"{result['runs_per_minute']} runs/min finished (server counts {result['completed_on_server']} "
                  f"completed; {result['refused_count']} transitions refused, {result['retried_count']} calls retried after "
                  f"a busy answer); calls p50/p95: {calls}; "
                  f"/health worst {result['health_worst_ms']} ms over {result['health_samples']} polls", flush=True)
    by = {r["shape"]: r for r in results}
    if {"embedded", "ha"} <= set(by):
        print(f"ha / embedded: {by['ha']['runs_per_minute'] / by['embedded']['runs_per_minute']:.2f}x runs per minute")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["refused_count"] == 0 and r["completed_on_server"] == r["runs"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
