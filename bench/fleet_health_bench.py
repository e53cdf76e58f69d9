"""Fleet health sweep: probe_many against a plain sequential web3.py loop.

Starts real anvil nodes on 127.0.0.1 (each with its own HOME, --prune-history),
gives each a different head (anvil_mine), then times, over the same endpoints:

  probe_many   one JSON-RPC batch per endpoint (latest block, syncing, peers,
               client version), all endpoints concurrently over one pool;
  web3 loop    for each endpoint in turn: Web3(HTTPProvider(url, timeout 3s)),
               block_number, get_block("latest"), syncing, client_version.

Each side runs --runs times (after one untimed warm-up each), alternating
which goes first; the medians are reported, and every run's fetched values
are checked to agree endpoint by endpoint. The anvils are stopped by PID and
their HOMEs removed at the end, also on Ctrl-C.

    uv run python bench/fleet_health_bench.py --endpoints 200 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from web3 import Web3

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.probes.model import Timeouts  # noqa: E402
from lab.simfleet import free_ports  # noqa: E402
from tasks.probes.probe import probe_many_sync  # noqa: E402

DEFAULT_ANVIL = "/opt/rblab/npm/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"


@dataclass
class Node:
    proc: subprocess.Popen
    port: int
    home: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def rpc(url: str, method: str, params: list | None = None):
    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}, timeout=5)
    r.raise_for_status()
    return r.json()["result"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def launch(anvil: str, port: int, scratch: Path) -> Node:
    home = scratch / f"anvil-{port}"
    home.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [anvil, "--host", "127.0.0.1", "--port", str(port), "--prune-history", "--silent"],
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return Node(proc, port, home)


def start_anvils(anvil: str, count: int, scratch: Path, started: list[Node]) -> list[Node]:
    """Start count anvils; each goes into `started` at once so the caller can always stop it."""
    nodes = []
    for port in free_ports(count):
        nodes.append(launch(anvil, port, scratch))
        started.append(nodes[-1])
    deadline = time.monotonic() + 60
    for i, node in enumerate(nodes):
        while True:
            if node.proc.poll() is not None:  # lost its port to someone else: once more on another
                shutil.rmtree(node.home, ignore_errors=True)
                node = nodes[i] = launch(anvil, free_ports(1)[0], scratch)
                started.append(node)
            try:
                rpc(node.url, "eth_chainId")
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"anvil on port {node.port} did not answer within 60s") from None
                time.sleep(0.05)
    return nodes


def stop_anvils(nodes: list[Node]) -> None:
    for node in nodes:
        if node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGTERM)
    for node in nodes:
        try:
            node.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait(timeout=10)
        shutil.rmtree(node.home, ignore_errors=True)


def sweep_probe_many(urls: list[str], concurrency: int) -> dict[str, tuple]:
    probes = probe_many_sync([(f"e{i}", u, "anvil", None) for i, u in enumerate(urls)],
                             concurrency=concurrency, timeout=Timeouts(connect=2.0, read=3.0))
    bad = [p for p in probes if not p.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} probes failed, first: {bad[0].name} {bad[0].error}")
    return {p.url: (p.head, p.head_timestamp, p.syncing, p.client_version) for p in probes}


def sweep_web3(urls: list[str]) -> dict[str, tuple]:
    out = {}
    for url in urls:
        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 3}))
        number = w3.eth.block_number
        block = w3.eth.get_block("latest")
        syncing = w3.eth.syncing
        version = w3.client_version
        if number != block["number"]:
            raise RuntimeError(f"{url}: block_number {number} != latest block {block['number']}")
        out[url] = (block["number"], block["timestamp"], syncing, version)
    return out


def timed(fn, *args) -> tuple[float, dict]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=200)
    parser.add_argument("--processes", type=int, default=0,
                        help="anvil processes (default: one per endpoint if memory allows)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--anvil", default=os.environ.get("ANVIL_BIN", DEFAULT_ANVIL))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if not Path(args.anvil).exists():
        print(f"anvil not found at {args.anvil}: npm install --prefix /opt/rblab/npm "
              "@foundry-rs/anvil-linux-amd64@1.7.1", file=sys.stderr)
        return 2

    # SIGTERM unwinds like Ctrl-C, so the finally below still stops the anvils.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scratch = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    nodes: list[Node] = []
    try:
        # Size one anvil first: one process per endpoint only if that fits in half of what is free.
        (probe_node,) = start_anvils(args.anvil, 1, scratch, nodes)
        rpc(probe_node.url, "anvil_mine", [50])
        one_rss = rss_kib(probe_node.proc.pid)
        available = mem_available_kib()
        processes = args.processes or (args.endpoints if one_rss * args.endpoints < available // 2
                                       else max(1, (available // 2) // max(one_rss, 1)))
        processes = min(processes, args.endpoints)
        print(f"one anvil: {one_rss / 1024:.1f} MiB RSS; MemAvailable {available / 1024 / 1024:.1f} GiB; "
              f"{args.endpoints} endpoints on {processes} anvil processes")

        t0 = time.monotonic()
        serving = [probe_node] + start_anvils(args.anvil, processes - 1, scratch, nodes)
        print(f"started {processes} anvils in {time.monotonic() - t0:.1f}s")
        for i, node in enumerate(serving):  # distinct heads, so agreement means something
            rpc(node.url, "anvil_mine", [i % 50])
        total_rss = sum(rss_kib(n.proc.pid) for n in serving)
        print(f"all anvils: {total_rss / 1024 / 1024:.2f} GiB RSS")
        # Several endpoints per process, when there are fewer processes: distinct URLs by query string
        # (anvil serves JSON-RPC on / whatever the query).
        urls = [serving[i % processes].url + ("" if processes == args.endpoints else f"/?endpoint={i}")
                for i in range(args.endpoints)]

        sweep_probe_many(urls, args.concurrency)  # warm-up, untimed
        sweep_web3(urls)
        times = {"probe_many": [], "web3_loop": []}
        for run in range(args.runs):
            order = [("probe_many", sweep_probe_many, (urls, args.concurrency)), ("web3_loop", sweep_web3, (urls,))]
            results = {}
            for name, fn, fn_args in (order if run % 2 == 0 else order[::-1]):
                elapsed, results[name] = timed(fn, *fn_args)
                times[name].append(elapsed)
            if results["probe_many"] != results["web3_loop"]:
                diff = [u for u in urls if results["probe_many"][u] != results["web3_loop"][u]]
                raise RuntimeError(f"run {run}: values differ for {len(diff)} endpoints, e.g. {diff[0]}: "
                                   f"{results['probe_many'][diff[0]]} vs {results['web3_loop'][diff[0]]}")
            print(f"run {run + 1}: probe_many {times['probe_many'][-1]:.3f}s, "
                  f"web3 loop {times['web3_loop'][-1]:.3f}s, values agree on {len(urls)} endpoints")

        med = {k: statistics.median(v) for k, v in times.items()}
        print()
        print(f"endpoints {args.endpoints} on {processes} anvil processes, {args.runs} runs, "
              f"concurrency {args.concurrency}, cpus {os.cpu_count()}")
        print(f"probe_many   median {med['probe_many']:.3f}s  (min {min(times['probe_many']):.3f}, "
              f"max {max(times['probe_many']):.3f})")
        print(f"web3 loop    median {med['web3_loop']:.3f}s  (min {min(times['web3_loop']):.3f}, "
              f"max {max(times['web3_loop']):.3f})")
        print(f"ratio        web3 loop / probe_many = {med['web3_loop'] / med['probe_many']:.1f}x")
        print("fetched values (head, head timestamp, syncing, client version) agree in every run")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "endpoints": args.endpoints, "processes": processes, "runs": args.runs,
                "concurrency": args.concurrency, "anvil_rss_mib": one_rss / 1024,
                "seconds": times, "median": med, "ratio": med["web3_loop"] / med["probe_many"],
            }, indent=2))
        return 0
    finally:
        stop_anvils(nodes)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
