"""Prometheus exporter for the fleet: what every node's head is doing, per scrape.

A background loop sweeps every node of the inventory and every chain's
references every `--interval` seconds through `tasks.probes.assessment`, the
same assessment the runbooks use; a scrape only reads the last completed sweep.

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

Disk facts (with --ssh-key and --known-hosts; deployments/disk_facts.py, every --disk-interval s):
    runbooks_node_fs_size_bytes, runbooks_node_fs_used_bytes, runbooks_node_fs_avail_bytes
                                           the filesystem holding the node's datadir
    runbooks_node_datadir_bytes            the datadir itself (du)
    runbooks_node_fs_growth_bytes_per_second  slope of used bytes over the last 15 min of samples
    runbooks_node_disk_sample_timestamp_seconds
    runbooks_node_disk_warn_ratio, runbooks_node_disk_act_ratio, runbooks_node_disk_critical_ratio
                                           the inventory's disk thresholds for the node, as ratios

Run:
    RUNBOOKS_INVENTORY=inventory.yaml python -m deployments.exporter --port 19100 \
        [--ssh-key ~/.ssh/runbooks --known-hosts ~/.ssh/known_hosts --disk-interval 60]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from deployments import disk_facts
from deployments.inventory_watch import WatchedInventory
from inventory import Inventory, InventoryError
from tasks.probes.assessment import Sweep, sweep
from tasks.probes.model import ProbeError, Timeouts

log = logging.getLogger("runbooks.exporter")

NODE_LABELS = ("node", "chain", "host", "region")


class FleetCollector(Collector):
    """Turns the last sweep into metrics. Never does I/O: a scrape cannot hang."""

    def __init__(self, disks: disk_facts.DiskFacts | None = None) -> None:
        self.disks = disks
        # The last sweep with the inventory it was made from: labels and
        # thresholds must match what was probed, even after an inventory edit.
        self._last: tuple[Inventory, Sweep] | None = None
        self._errors = 0
        self._lock = threading.Lock()

    def publish(self, inventory: Inventory, sweep: Sweep) -> None:
        with self._lock:
            self._last = (inventory, sweep)

    def count_error(self) -> None:
        with self._lock:
            self._errors += 1

    def collect(self):
        with self._lock:
            last, errors = self._last, self._errors
        now = time.time()

        def node_gauge(name: str, doc: str, unit: str = "") -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=NODE_LABELS, unit=unit)

        up = node_gauge("runbooks_node_up", "1 if the node gave a usable answer to the last probe, else 0")
        head = node_gauge("runbooks_node_head_block", "Head block number the node reported")
        age = node_gauge("runbooks_node_head_age_seconds", "Seconds since the head block's timestamp")
        lag = node_gauge("runbooks_node_lag_blocks", "Best reference head minus the node's head (negative: ahead)")
        latency = node_gauge("runbooks_node_probe_latency_seconds", "Duration of the node's last probe")
        ref = GaugeMetricFamily("runbooks_reference_head_block", "Best head among the chain's references",
                                labels=("chain",))
        max_lag = GaugeMetricFamily("runbooks_chain_max_lag_blocks", "Inventory threshold: blocks a node may lag",
                                    labels=("chain",))
        max_age = GaugeMetricFamily("runbooks_chain_max_head_age_seconds",
                                    "Inventory threshold: age of the head block beyond which a node is stalled",
                                    labels=("chain",))
        inventory, swept = last if last else (None, None)
        if swept is not None:
            for name, a in swept.nodes.items():
                labels = (name, a.chain, inventory.nodes[name].host, inventory.region_of(name) or "")
                up.add_metric(labels, 1.0 if a.up else 0.0)
                latency.add_metric(labels, a.latency_s)
                if a.up and a.head is not None:
                    head.add_metric(labels, a.head)
                if a.up and a.head_timestamp is not None:
                    age.add_metric(labels, max(0.0, now - a.head_timestamp))
                if a.up and a.lag is not None:
                    lag.add_metric(labels, a.lag)
            for chain, value in sorted(swept.reference_heads.items()):
                if value is not None:
                    ref.add_metric((chain,), value)
            for chain, spec in sorted(inventory.chains.items()):
                max_lag.add_metric((chain,), spec.max_lag_blocks)
                max_age.add_metric((chain,), spec.max_head_age_seconds)
        yield from (up, head, age, lag, latency, ref, max_lag, max_age)
        if self.disks is not None and inventory is not None:
            yield from self._disk_metrics(inventory)

        yield GaugeMetricFamily("runbooks_exporter_last_probe_timestamp_seconds",
                                "Unix time the last fleet sweep completed (0: none yet)",
                                value=(swept.completed_at if swept else None) or 0.0)
        if swept is not None and swept.duration_s is not None:
            yield GaugeMetricFamily("runbooks_exporter_probe_duration_seconds",
                                    "Duration of the last fleet sweep", value=swept.duration_s)
        yield CounterMetricFamily("runbooks_exporter_probe_errors", "Fleet sweeps that failed outright",
                                  value=errors)


    def _disk_metrics(self, inventory: Inventory):
        families = {k: GaugeMetricFamily(f"runbooks_node_{k}", doc, labels=NODE_LABELS) for k, doc in (
            ("fs_size_bytes", "Size of the filesystem holding the node's datadir"),
            ("fs_used_bytes", "Used bytes of the filesystem holding the node's datadir"),
            ("fs_avail_bytes", "Bytes available to the node on its datadir's filesystem"),
            ("datadir_bytes", "Size of the node's datadir"),
            ("fs_growth_bytes_per_second", "Growth of the datadir filesystem's used bytes over the last 15 min"),
            ("disk_sample_timestamp_seconds", "Unix time of the node's last disk sample"),
            ("disk_warn_ratio", "Inventory disk policy: used/size beyond which Slack is told"),
            ("disk_act_ratio", "Inventory disk policy: used/size beyond which disk-prune acts"),
            ("disk_critical_ratio", "Inventory disk policy: used/size beyond which it pages"))}
        for name, (s, rate) in sorted(self.disks.latest().items()):
            if name not in inventory.nodes:
                continue
            labels = (name, inventory.nodes[name].chain, inventory.nodes[name].host, inventory.region_of(name) or "")
            families["fs_size_bytes"].add_metric(labels, s.size_bytes)
            families["fs_used_bytes"].add_metric(labels, s.used_bytes)
            families["fs_avail_bytes"].add_metric(labels, s.avail_bytes)
            families["disk_sample_timestamp_seconds"].add_metric(labels, s.at)
            for level, ratio in disk_facts.policy_ratios(inventory, name).items():
                families[f"disk_{level}_ratio"].add_metric(labels, ratio)
            if s.datadir_bytes is not None:
                families["datadir_bytes"].add_metric(labels, s.datadir_bytes)
            if rate is not None:
                families["fs_growth_bytes_per_second"].add_metric(labels, rate)
        yield from families.values()


def sample_disks_forever(inventory: WatchedInventory, facts: disk_facts.DiskFacts, interval: float,
                         private_key: str, known_hosts: str, stop: threading.Event) -> None:
    from tasks.audit import AuditRecord
    from tasks.audit.files import audit_dir

    # The exporter's SSH commands go to an audit record of its own, beside the runbooks' trail.
    audit = AuditRecord(f"exporter-{os.getpid()}", "exporter", directory=audit_dir() / "exporter")
    while not stop.is_set():
        started = time.monotonic()
        try:
            fleet = inventory.current()
            runner = disk_facts.ssh_host_runner(fleet, private_key, known_hosts, audit)
            facts.add(disk_facts.sample_once(fleet, runner))
            facts.forget_except(set(fleet.nodes))
        except Exception:  # noqa: BLE001 - as the probe loop: the last good samples stay
            log.exception("disk sample failed; serving the previous one")
        stop.wait(max(0.0, interval - (time.monotonic() - started)))


def log_changes(previous: Sweep | None, current: Sweep) -> None:
    """One log line when a node starts or stops answering, not one per sweep."""
    was_up = {n: a.up for n, a in previous.nodes.items()} if previous else {}
    for name, a in current.nodes.items():
        if was_up.get(name, True) != a.up:  # a new node is logged only when down
            if a.up:
                log.info("%s answers again (head %s)", name, a.head)
            else:
                log.warning("%s does not answer: %s", name, a.error)


def probe_forever(inventory: WatchedInventory, collector: FleetCollector, interval: float,
                  timeout: Timeouts, stop: threading.Event) -> None:
    """Sweep every node and every chain's references every `interval` seconds
    (back to back when a sweep takes longer)."""
    previous = None
    while not stop.is_set():
        started = time.monotonic()
        try:
            fleet = inventory.current()
            current = sweep(fleet, sorted(fleet.nodes), chains=sorted(fleet.chains), timeout=timeout)
            collector.publish(fleet, current)
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
    parser.add_argument("--ssh-key", help="private key file for reading disk facts over SSH (none: no disk facts)")
    parser.add_argument("--known-hosts", help="known_hosts file the hosts' keys must be in (with --ssh-key)")
    parser.add_argument("--disk-interval", type=float, default=60.0, help="seconds between disk samples (default 60)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe request is noise
    if not 0.1 <= args.interval <= 3600:
        parser.error("--interval must be in [0.1, 3600] seconds")
    try:
        timeout = Timeouts(connect=args.connect_timeout, read=args.read_timeout)
        inventory = WatchedInventory(args.inventory)
    except (ProbeError, InventoryError) as exc:
        raise SystemExit(f"exporter: {exc}") from None

    if bool(args.ssh_key) != bool(args.known_hosts):
        parser.error("--ssh-key and --known-hosts go together")
    if not 1 <= args.disk_interval <= 3600:
        parser.error("--disk-interval must be in [1, 3600] seconds")
    private_key = known_hosts = None
    if args.ssh_key:
        try:
            private_key = open(args.ssh_key).read()
            known_hosts = open(args.known_hosts).read()
        except OSError as exc:
            raise SystemExit(f"exporter: {exc}") from None

    registry = CollectorRegistry(auto_describe=False)
    collector = FleetCollector(disk_facts.DiskFacts() if private_key else None)
    registry.register(collector)
    server, _ = start_http_server(args.port, addr=args.host, registry=registry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("exporter on http://%s:%d/metrics: %d nodes from %s, sweep every %gs (probe deadline %gs)",
             args.host, args.port, len(inventory.current().nodes), inventory.path, args.interval, timeout.deadline)
    if collector.disks is not None:
        threading.Thread(target=sample_disks_forever, name="disk-facts", daemon=True,
                         args=(inventory, collector.disks, args.disk_interval, private_key, known_hosts, stop)).start()
    try:
        probe_forever(inventory, collector, args.interval, timeout, stop)
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
