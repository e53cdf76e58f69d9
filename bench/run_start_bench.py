"""A deployment run's start on the lab's worker: forked from the prestart server vs started cold.

Runs the same run again and again through the lab's worker (node-recovery for a healthy node: it
assesses the node and ends "noop", touching nothing), alternating two run commands in one script:

- cold:  `python -m prefect.engine`, what a process worker runs by default (the run's job
         variable `command` says so for these runs);
- warm:  the work pool's own command, deployments/prestart.py: forked from the prestart server.

From each run's own state history: created -> Pending (the worker picks it up), Pending -> Running
(the process starts, imports, loads the flow), Running -> Completed (the run itself), and from
created to Completed. Medians per side and the ratio cold / warm. Then a burst: --burst runs of each
kind created at once, timed from the first created to the last completed (runs finished per minute).

It only reads the fleet, so it can run beside nothing else that starts runs on the lab's worker (a
pytest session does): it refuses to start without --i-own-the-lab.

    uv run python bench/run_start_bench.py --i-own-the-lab [--runs 8] [--burst 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEPLOYMENT = "node-recovery/node-recovery"
PARAMETERS = {"node": "eth-a", "reason": "run-start bench"}
COLD = {"command": f"{sys.executable} -m prefect.engine"}


def _env() -> None:
    from lab import services, topology

    for key, value in services.runbook_env(topology.Paths(topology.lab_dir())).items():
        os.environ.setdefault(key, value)


async def _history(run_ids: list) -> list[dict]:
    from prefect import get_client

    out = []
    async with get_client() as client:
        for run_id in run_ids:
            states = await client.read_flow_run_states(run_id)
            first = {}
            for s in states:
                first.setdefault(s.type.value, s.timestamp.timestamp())
            out.append(first)
    return out


def _phases(first: dict) -> dict:
    created = first["SCHEDULED"]
    return {"pickup_s": first["PENDING"] - created, "process_start_s": first["RUNNING"] - first["PENDING"],
            "run_s": first["COMPLETED"] - first["RUNNING"], "created_to_completed_s": first["COMPLETED"] - created}


def _create(job_variables: dict | None):
    from prefect.deployments import run_deployment

    return run_deployment(DEPLOYMENT, parameters=PARAMETERS, timeout=0, job_variables=job_variables).id


def _wait(run_ids: list, timeout: float = 300) -> None:
    from prefect import get_client

    async def final() -> bool:
        async with get_client() as client:
            runs = [await client.read_flow_run(r) for r in run_ids]
        bad = [r for r in runs if r.state and r.state.is_final() and not r.state.is_completed()]
        if bad:
            raise SystemExit(f"run {bad[0].id} ended {bad[0].state.type.value}: {bad[0].state.message}")
        return all(r.state and r.state.is_completed() for r in runs)

    deadline = time.monotonic() + timeout
    while not asyncio.run(final()):
        if time.monotonic() > deadline:
            raise SystemExit(f"runs not completed within {timeout:.0f}s")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--i-own-the-lab", action="store_true", help="nothing else starts runs on the lab's worker")
    parser.add_argument("--runs", type=int, default=8, help="runs of each kind, one at a time, alternating")
    parser.add_argument("--burst", type=int, default=6, help="runs of each kind created at once (0: none)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "run_start_bench.json")
    args = parser.parse_args()
    if not args.i_own_the_lab:
        print("refusing: this bench starts runs on the lab's worker; pass --i-own-the-lab", file=sys.stderr)
        return 2
    _env()
    sides = {"cold": COLD, "warm": None}
    samples: dict[str, list[dict]] = {"cold": [], "warm": []}
    for i in range(args.runs + 1):  # the first pair warms the server's caches and is not counted
        for name in (("cold", "warm") if i % 2 else ("warm", "cold")):
            run_id = _create(sides[name])
            _wait([run_id])
            if i:
                samples[name].append(_phases(asyncio.run(_history([run_id]))[0]))
    result: dict = {"runs_per_side": args.runs, "cpus": os.cpu_count(), "load": os.getloadavg()[0]}
    print(f"one run at a time, {args.runs} per side, medians (cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}):")
    print(f"  {'phase':28} {'cold':>8} {'warm':>8} {'cold/warm':>10}")
    for key, label in (("pickup_s", "created -> Pending (worker)"), ("process_start_s", "Pending -> Running (process)"),
                       ("run_s", "Running -> Completed (run)"), ("created_to_completed_s", "created -> Completed")):
        cold = statistics.median(s[key] for s in samples["cold"])
        warm = statistics.median(s[key] for s in samples["warm"])
        result[key] = {"cold": round(cold, 3), "warm": round(warm, 3), "ratio": round(cold / warm, 2)}
        print(f"  {label:28} {cold:8.2f} {warm:8.2f} {cold / warm:9.1f}x")
    if args.burst:
        for name in ("cold", "warm"):
            started = time.monotonic()
            run_ids = [_create(sides[name]) for _ in range(args.burst)]
            _wait(run_ids)
            took = time.monotonic() - started
            result[f"burst_{name}"] = {"runs": args.burst, "seconds": round(took, 2), "per_minute": round(60 * args.burst / took, 1)}
            print(f"  burst of {args.burst} {name}: all completed in {took:.1f}s ({60 * args.burst / took:.1f} runs/min)")
        ratio = result["burst_warm"]["per_minute"] / result["burst_cold"]["per_minute"]
        print(f"  burst throughput warm/cold: {ratio:.1f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
