"""Prometheus exporter for the fleet: what every node's head is doing, per scrape.

A background loop probes every node of the inventory and every chain's
references (through tasks.probes, the product's one probe path) every
`--interval` seconds; a scrape only reads the last completed sweep.

Why a loop and not probe-on-scrape: a scrape must not hang, and a probe of a
frozen node takes up to its timeout (connect + read), longer than the lab's
1 s scrape timeout. With the loop, a scrape costs microseconds whatever the
nodes do, two Prometheus replicas do not double the load on the nodes, and a
slow sweep shows as `runbooks_exporter_last_probe_timestamp_seconds` falling
behind rather than as a failed scrape. Head age is computed at scrape time
from the head block's timestamp, so even a stuck sweep cannot make a stalled
node look fresh.

Metrics (node labels: node, chain, host, region):
    runbooks_node_up                       1 if the node gave a usable answer, else 0
    runbooks_node_head_block               its head block (absent while down)
    runbooks_node_head_age_seconds         now - head block timestamp (absent while unknown)
    runbooks_node_lag_blocks               best reference head - node head (negative: ahead)
    runbooks_node_probe_latency_seconds    how long the probe took
    runbooks_reference_head_block{chain}   best head among the chain's references
    runbooks_chain_max_lag_blocks{chain}, runbooks_chain_max_head_age_seconds{chain}
                                           the inventory's thresholds, so alert rules
                                           compare against the one place they live
    runbooks_exporter_last_probe_timestamp_seconds, runbooks_exporter_probe_duration_seconds,
    runbooks_exporter_probe_errors_total

Run:
    RUNBOOKS_INVENTORY=inventory.yaml python -m deployments.exporter --port 19100
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from deployments.inventory_watch import WatchedInventory
from inventory import Inventory, InventoryError
from tasks import probes

log = logging.getLogger("runbooks.exporter")

NODE_LABELS = ("node", "chain", "host", "region")


@dataclass(frozen=True)
class NodeSample:
    labels: tuple[str, str, str, str]  # node, chain, host, region
    up: bool
    head: int | None
    head_timestamp: float | None  # unix time; head age is computed from it at scrape time
    lag: int | None
    latency_s: float
    error: str | None = None  # logged on change, never a label (unbounded values)


@dataclass(frozen=True)
class Sweep:
    """One completed probe of the whole fleet: what a scrape reports."""

    nodes: list[NodeSample] = field(default_factory=list)
    reference_heads: dict[str, int | None] = field(default_factory=dict)
    max_lag_blocks: dict[str, int] = field(default_factory=dict)
    max_head_age_seconds: dict[str, float] = field(default_factory=dict)
    completed_at: float | None = None  # unix time
    duration_s: float | None = None


def _head_timestamp(probe: probes.NodeProbe) -> float | None:
    """When the head was made: the block's own timestamp, or (for protocols that
    only report an age) the age at probe time turned back into a time."""
    if probe.head_timestamp is not None:
        return float(probe.head_timestamp)
    if probe.head_age_s is not None:
        return time.time() - probe.head_age_s  # within a sweep's duration of the truth
    return None


def sweep_fleet(inventory: Inventory, timeout: probes.Timeouts) -> Sweep:
    """Probe every node and reference concurrently; bounded by `timeout.deadline`."""
    started = time.monotonic()
    names = sorted(inventory.nodes)
    targets = [probes.node_target(n, inventory.nodes[n]) for n in names]
    targets += [t for chain, spec in sorted(inventory.chains.items()) for t in probes.reference_targets(chain, spec)]
    results = {p.name: p for p in probes.probe_many_sync(targets, timeout=timeout)}
    reference_heads = {
        chain: probes.reference_head(probes.references_of(results.values(), chain))
        for chain in inventory.chains
    }
    samples = []
    for name in names:
        node, probe = inventory.nodes[name], results[name]
        verdict = probes.classify(probe, reference_heads[node.chain], inventory.chains[node.chain])
        samples.append(NodeSample(
            labels=(name, node.chain, node.host, inventory.region_of(name) or ""),
            up=probe.ok, head=probe.head if probe.ok else None,
            head_timestamp=_head_timestamp(probe) if probe.ok else None,
            lag=verdict.lag if probe.ok else None, latency_s=probe.latency_s, error=probe.error,
        ))
    return Sweep(
        nodes=samples,
        reference_heads=reference_heads,
        max_lag_blocks={c: spec.max_lag_blocks for c, spec in inventory.chains.items()},
        max_head_age_seconds={c: spec.max_head_age_seconds for c, spec in inventory.chains.items()},
        completed_at=time.time(),
        duration_s=time.monotonic() - started,
    )


class FleetCollector(Collector):
    """Turns the last sweep into metrics. Never does I/O: a scrape cannot hang."""

    def __init__(self) -> None:
        self._sweep = Sweep()
        self._errors = 0
        self._lock = threading.Lock()

    def publish(self, sweep: Sweep) -> None:
        with self._lock:
            self._sweep = sweep

    def count_error(self) -> None:
        with self._lock:
            self._errors += 1

    def collect(self):
        with self._lock:
            sweep, errors = self._sweep, self._errors
        now = time.time()

        def node_gauge(name: str, doc: str, unit: str = "") -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=NODE_LABELS, unit=unit)

        up = node_gauge("runbooks_node_up", "1 if the node gave a usable answer to the last probe, else 0")
        head = node_gauge("runbooks_node_head_block", "Head block number the node reported")
        age = node_gauge("runbooks_node_head_age_seconds", "Seconds since the head block's timestamp")
        lag = node_gauge("runbooks_node_lag_blocks", "Best reference head minus the node's head (negative: ahead)")
        latency = node_gauge("runbooks_node_probe_latency_seconds", "Duration of the node's last probe")
        for s in sweep.nodes:
            up.add_metric(s.labels, 1.0 if s.up else 0.0)
            latency.add_metric(s.labels, s.latency_s)
            if s.head is not None:
                head.add_metric(s.labels, s.head)
            if s.head_timestamp is not None:
                age.add_metric(s.labels, max(0.0, now - s.head_timestamp))
            if s.lag is not None:
                lag.add_metric(s.labels, s.lag)
        yield from (up, head, age, lag, latency)

        ref = GaugeMetricFamily("runbooks_reference_head_block", "Best head among the chain's references",
                                labels=("chain",))
        for chain, value in sorted(sweep.reference_heads.items()):
            if value is not None:
                ref.add_metric((chain,), value)
        yield ref
        max_lag = GaugeMetricFamily("runbooks_chain_max_lag_blocks", "Inventory threshold: blocks a node may lag",
                                    labels=("chain",))
        for chain, value in sorted(sweep.max_lag_blocks.items()):
            max_lag.add_metric((chain,), value)
        yield max_lag
        max_age = GaugeMetricFamily("runbooks_chain_max_head_age_seconds",
                                    "Inventory threshold: age of the head block beyond which a node is stalled",
                                    labels=("chain",))
        for chain, value in sorted(sweep.max_head_age_seconds.items()):
            max_age.add_metric((chain,), value)
        yield max_age

        yield GaugeMetricFamily("runbooks_exporter_last_probe_timestamp_seconds",
                                "Unix time the last fleet sweep completed (0: none yet)",
                                value=sweep.completed_at or 0.0)
        if sweep.duration_s is not None:
            yield GaugeMetricFamily("runbooks_exporter_probe_duration_seconds",
                                    "Duration of the last fleet sweep", value=sweep.duration_s)
        yield CounterMetricFamily("runbooks_exporter_probe_errors", "Fleet sweeps that failed outright",
                                  value=errors)


def log_changes(previous: Sweep, current: Sweep) -> None:
    """One log line when a node starts or stops answering, not one per sweep."""
    was_up = {s.labels[0]: s.up for s in previous.nodes}
    for s in current.nodes:
        if was_up.get(s.labels[0], True) != s.up:  # a new node is logged only when down
            if s.up:
                log.info("%s answers again (head %s)", s.labels[0], s.head)
            else:
                log.warning("%s does not answer: %s", s.labels[0], s.error)


def probe_forever(inventory: WatchedInventory, collector: FleetCollector, interval: float,
                  timeout: probes.Timeouts, stop: threading.Event) -> None:
    """Sweep every `interval` seconds (back to back when a sweep takes longer)."""
    previous = Sweep()
    while not stop.is_set():
        started = time.monotonic()
        try:
            current = sweep_fleet(inventory.current(), timeout)
            collector.publish(current)
            log_changes(previous, current)
            previous = current
        except Exception:  # noqa: BLE001 - the loop must outlive one bad sweep; the last good one stays
            collector.count_error()
            log.exception("fleet sweep failed; serving the previous sweep")
        stop.wait(max(0.0, interval - (time.monotonic() - started)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.exporter", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=19100)
    parser.add_argument("--inventory", help="inventory file (default: $RUNBOOKS_INVENTORY or inventory.yaml)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between fleet sweeps (default 1; 5-15 s suits real fleets)")
    parser.add_argument("--connect-timeout", type=float, default=1.0, help="per-node connect timeout, seconds")
    parser.add_argument("--read-timeout", type=float, default=2.0, help="per-node read timeout, seconds")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe request is noise
    if not 0.1 <= args.interval <= 3600:
        parser.error("--interval must be in [0.1, 3600] seconds")
    try:
        timeout = probes.Timeouts(connect=args.connect_timeout, read=args.read_timeout)
        inventory = WatchedInventory(args.inventory)
    except (probes.ProbeError, InventoryError) as exc:
        raise SystemExit(f"exporter: {exc}") from None

    registry = CollectorRegistry(auto_describe=False)
    collector = FleetCollector()
    registry.register(collector)
    server, _ = start_http_server(args.port, addr=args.host, registry=registry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("exporter on http://%s:%d/metrics: %d nodes from %s, sweep every %gs (probe deadline %gs)",
             args.host, args.port, len(inventory.current().nodes), inventory.path, args.interval, timeout.deadline)
    try:
        probe_forever(inventory, collector, args.interval, timeout, stop)
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
