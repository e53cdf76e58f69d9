"""fleet-health over a simulated thousand-node fleet in three regions, against a sequential web3.py loop.

The fleet is lab/simfleet.py's: --nodes light JSON-RPC nodes (default 1,000) in --parts serving
processes, spread over three regions whose network round trip is simulated as a multi-region fleet
sees it (default eu 2 ms, us 40 ms, ap 120 ms: one round trip for a connection's handshake and one per
request), over three chains with Ethereum's, Base's and Polygon's block times, and with faults (1 in 50
stalled, 1 in 50 lagging, 1 in 100 down). An inventory naming every node is written and loaded as an
operator's would be.

Timed in one script, over the same endpoints:

- fleet-health's sweep (tasks.probes.assessment.sweep: one JSON-RPC batch per node through one
  connection pool, references included, every node classified), per region and for the whole fleet;
  one untimed warm-up, then --runs timed runs, medians;
- a plain sequential web3.py loop over every node: block_number, get_block("latest"), syncing,
  client_version (one run: it takes minutes at these round trips; `--loop-sample N` times N nodes per
  region instead and scales each region's time up to its node count, saying so).

Every sweep's classification is checked against the faults the fleet was built with (a stalled node
must be "stalled", a node that refuses "down"...): a fast sweep that got it wrong would not count.

    uv run python bench/fleet_scale_bench.py [--nodes 1000] [--runs 3] [--rtt eu=0.002,us=0.040,ap=0.120]
        [--loop-sample N] [--json bench/results/fleet_scale_bench.json]

Needs no lab (and no root): every simulated node listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from web3 import Web3  # noqa: E402

from inventory import load_inventory  # noqa: E402
from lab import simfleet  # noqa: E402
from tasks.probes.assessment import sweep  # noqa: E402


def start(spec_path: Path, parts: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-m", "lab.simfleet", "serve", "--spec", str(spec_path),
                               "--part", str(i), "--parts", str(parts)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              start_new_session=True) for i in range(parts)]
    for proc in procs:
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            raise SystemExit(f"a serving process did not start: {line!r}")
    return procs


def wrong(spec: simfleet.Spec, swept) -> list[str]:
    return [f"{n.name}: {swept.nodes[n.name].status}, built {n.fault or 'healthy'}" for n in spec.nodes
            if n.name in swept.nodes and swept.nodes[n.name].status != simfleet.expected_status(n)]


def exporter_scrape(inventory, swept) -> tuple[float, int]:
    """The exporter's /metrics over the whole fleet's last sweep (deployments/exporter.py renders it without
    I/O; the sweep runs beside it): median of 5 renders, and the body's size."""
    from prometheus_client import CollectorRegistry, generate_latest

    from deployments.exporter import FleetCollector

    collector = FleetCollector()
    collector.publish(inventory, swept)
    registry = CollectorRegistry()
    registry.register(collector)
    durations, body = [], b""
    for _ in range(5):
        started = time.perf_counter()
        body = generate_latest(registry)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations), len(body)


def web3_loop(nodes: list[simfleet.SimNode]) -> float:
    started = time.perf_counter()
    for node in nodes:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 3}))
        try:
            w3.eth.block_number
            w3.eth.get_block("latest")
            w3.eth.syncing
            w3.client_version
        except Exception:  # noqa: BLE001 - a down node costs what it costs, as in a real loop
            pass
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parts", type=int, default=2, help="serving processes")
    parser.add_argument("--rtt", default="eu=0.002,us=0.040,ap=0.120", help="region=seconds of round trip, ...")
    parser.add_argument("--loop-sample", type=int, default=0, help="time the web3 loop on N nodes per region")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "fleet_scale_bench.json")
    args = parser.parse_args()
    regions = {k: float(v) for k, v in (part.split("=") for part in args.rtt.split(","))}
    spec = simfleet.build_spec(args.nodes, regions)
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as tmp:
        spec_path, inv_path = Path(tmp) / "spec.json", Path(tmp) / "inventory.yaml"
        spec_path.write_text(spec.to_json())
        inv_path.write_text(yaml.safe_dump(simfleet.inventory(spec)))
        inventory = load_inventory(inv_path)
        procs = start(spec_path, args.parts)
        try:
            groups = {region: [n.name for n in spec.nodes if n.region == region] for region in regions}
            groups["all"] = [n.name for n in spec.nodes]
            times: dict[str, list[float]] = {g: [] for g in groups}
            for run in range(args.runs + 1):
                for group, names in groups.items():
                    started = time.perf_counter()
                    swept = sweep(inventory, names)
                    took = time.perf_counter() - started
                    if (bad := wrong(spec, swept)):
                        raise SystemExit(f"{group}: {len(bad)} nodes misclassified, e.g. {bad[:3]}")
                    if run:
                        times[group].append(took)
            median = {g: statistics.median(v) for g, v in times.items()}
            scrape_s, scrape_bytes = exporter_scrape(inventory, swept)
            loop: dict[str, float] = {}
            for region in regions:
                nodes = [n for n in spec.nodes if n.region == region]
                sample = nodes[:args.loop_sample] if args.loop_sample else nodes
                loop[region] = web3_loop(sample) * len(nodes) / len(sample)
            loop_total = sum(loop.values())
        finally:
            for proc in procs:
                os.killpg(proc.pid, 15)
                proc.wait(10)
    print(f"{args.nodes} simulated nodes, {args.parts} serving processes, cpus {os.cpu_count()}; "
          f"sweeps: median of {args.runs} (classification checked every run)")
    print(f"  {'region':8} {'rtt':>7} {'nodes':>6} {'sweep':>8} {'web3 loop':>10} {'ratio':>7}")
    for region, rtt in regions.items():
        n = len(groups[region])
        print(f"  {region:8} {rtt * 1000:5.0f}ms {n:6d} {median[region]:7.2f}s {loop[region]:9.1f}s "
              f"{loop[region] / median[region]:6.0f}x")
    print(f"  {'all':8} {'':>7} {args.nodes:6d} {median['all']:7.2f}s {loop_total:9.1f}s {loop_total / median['all']:6.0f}x")
    print(f"  exporter: a scrape renders {scrape_bytes / 1024:.0f} KiB in {scrape_s * 1000:.0f} ms; its sweep of the "
          f"whole fleet takes {median['all']:.2f}s (Prometheus's interval: 15 s in production, 1 s in the lab)")
    if args.loop_sample:
        print(f"  (web3 loop timed on {args.loop_sample} nodes per region, scaled to each region's count)")
    result = {"nodes": args.nodes, "regions": regions, "runs": args.runs, "sweep_median_s": median,
              "web3_loop_s": loop, "ratio_all": loop_total / median["all"], "loop_sample": args.loop_sample,
              "exporter_scrape_s": scrape_s, "exporter_scrape_bytes": scrape_bytes}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
