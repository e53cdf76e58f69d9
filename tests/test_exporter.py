"""The fleet exporter reports what real nodes do, and a scrape never waits on a node.

Real anvil nodes on loopback ports (each with its own HOME, --prune-history),
an inventory pointing at them, the real exporter as a subprocess, scraped
over HTTP like Prometheus does.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import Anvil, free_port

ROOT = Path(__file__).resolve().parent.parent


def inventory_yaml(ref: Anvil, nodes: dict[str, Anvil]) -> str:
    text = f"""
    chains:
      lab-eth:
        family: ethereum
        references: ["{ref.url}"]
        max_lag_blocks: 5
        max_head_age_seconds: 8
    hosts:
      h1: {{address: 127.0.0.1, ssh_user: ops, ssh_identity_block: lab-ssh, region: eu-west}}
      h2: {{address: 127.0.0.1, ssh_user: ops, ssh_identity_block: lab-ssh}}
    nodes:
    """
    for i, (name, node) in enumerate(nodes.items()):
        text += f"""
      {name}:
        chain: lab-eth
        client: anvil
        host: {"h1" if i % 2 == 0 else "h2"}
        service: {{manager: supervisor, name: {name}}}
        rpc_url: {node.url}
        datadir: /var/tmp/{name}
    """
    return textwrap.dedent(text)


class Exporter:
    def __init__(self, tmp: Path, inventory: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.log = tmp / "exporter.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deployments.exporter", "--host", "127.0.0.1", "--port", str(self.port),
             "--inventory", str(inventory), "--interval", "0.5", "--connect-timeout", "0.5", "--read-timeout", "1"],
            cwd=ROOT, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
        )

    def scrape(self) -> dict:
        """{metric name: {frozenset(labels.items()): value}}, as Prometheus would see it."""
        r = httpx.get(self.url, timeout=2)
        r.raise_for_status()
        out: dict = {}
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
        return out

    def wait_for(self, check, timeout: float = 15):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                metrics = self.scrape()
                if check(metrics):
                    return metrics
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"exporter never satisfied the check; last log:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def labels(node: str, host: str = "h1", region: str = "eu-west") -> frozenset:
    return frozenset({"node": node, "chain": "lab-eth", "host": host, "region": region}.items())


def value(metrics: dict, name: str, node: str, **kw):
    return metrics.get(name, {}).get(labels(node, **kw))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A reference and four nodes (eth-a, eth-c on h1 in eu-west; eth-b, eth-d on h2, no region)."""
    tmp = tmp_path_factory.mktemp("fleet")
    anvils: dict[str, Anvil] = {}
    exporter = None
    try:
        for name in ("ref", "eth-a", "eth-b", "eth-c", "eth-d"):
            anvils[name] = Anvil(name, tmp)
        inventory = tmp / "inventory.yaml"
        inventory.write_text(inventory_yaml(anvils["ref"], {k: v for k, v in anvils.items() if k != "ref"}))
        exporter = Exporter(tmp, inventory)
        exporter.wait_for(lambda m: m.get("runbooks_exporter_last_probe_timestamp_seconds", {}).get(frozenset(), 0) > 0)
        yield {"anvils": anvils, "exporter": exporter, "inventory": inventory, "tmp": tmp}
    finally:
        if exporter:
            exporter.stop()
        for node in anvils.values():
            node.stop()


def test_every_answering_node_is_up_with_its_head_age_and_lag(fleet):
    exporter, anvils = fleet["exporter"], fleet["anvils"]
    m = exporter.wait_for(lambda m: all(value(m, "runbooks_node_head_block", n, host=h, region=r) is not None
                                        for n, h, r in (("eth-a", "h1", "eu-west"), ("eth-b", "h2", ""))))
    direct = {n: anvils[n].head() for n in ("ref", "eth-a", "eth-b")}
    assert value(m, "runbooks_node_up", "eth-a") == 1
    assert value(m, "runbooks_node_up", "eth-b", host="h2", region="") == 1
    # Sweeps run every 0.5 s and blocks come every 1 s: at most a block or two apart.
    assert abs(value(m, "runbooks_node_head_block", "eth-a") - direct["eth-a"]) <= 2
    assert abs(value(m, "runbooks_node_head_block", "eth-b", host="h2", region="") - direct["eth-b"]) <= 2
    assert abs(m["runbooks_reference_head_block"][frozenset({"chain": "lab-eth"}.items())] - direct["ref"]) <= 2
    # Nodes started together on 1 s blocks: close to the reference, heads fresh.
    assert abs(value(m, "runbooks_node_lag_blocks", "eth-a")) <= 3
    assert 0 <= value(m, "runbooks_node_head_age_seconds", "eth-a") < 4
    assert 0 < value(m, "runbooks_node_probe_latency_seconds", "eth-a") < 1
    # The inventory's thresholds, for the alert rules to compare against.
    assert m["runbooks_chain_max_lag_blocks"][frozenset({"chain": "lab-eth"}.items())] == 5
    assert m["runbooks_chain_max_head_age_seconds"][frozenset({"chain": "lab-eth"}.items())] == 8
    assert time.time() - m["runbooks_exporter_last_probe_timestamp_seconds"][frozenset()] < 3


def test_the_head_metric_follows_the_chain(fleet):
    exporter = fleet["exporter"]
    first = value(exporter.scrape(), "runbooks_node_head_block", "eth-a")
    later = exporter.wait_for(lambda m: (value(m, "runbooks_node_head_block", "eth-a") or 0) >= first + 2, timeout=10)
    assert value(later, "runbooks_node_up", "eth-a") == 1


def test_a_killed_node_is_down_and_has_no_head(fleet):
    exporter, node = fleet["exporter"], fleet["anvils"]["eth-c"]
    assert value(exporter.scrape(), "runbooks_node_up", "eth-c") == 1
    node.proc.kill()
    node.proc.wait(5)
    m = exporter.wait_for(lambda m: value(m, "runbooks_node_up", "eth-c") == 0, timeout=10)
    assert value(m, "runbooks_node_head_block", "eth-c") is None
    assert value(m, "runbooks_node_head_age_seconds", "eth-c") is None
    assert value(m, "runbooks_node_lag_blocks", "eth-c") is None
    assert value(m, "runbooks_node_up", "eth-a") == 1  # the others are unaffected
    # Refused, or reset when the kill lands while a probe is on the wire: either way the log says why.
    assert re.search(r"eth-c does not answer: (connection refused|connection lost mid-request)",
                     exporter.log.read_text()), exporter.log.read_text()


def test_a_frozen_node_never_makes_a_scrape_wait(fleet):
    exporter, node = fleet["exporter"], fleet["anvils"]["eth-d"]
    node.signal(signal.SIGSTOP)  # accepts connections (kernel backlog) but never answers
    try:
        durations = []
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            started = time.monotonic()
            exporter.scrape()
            durations.append(time.monotonic() - started)
            time.sleep(0.1)
        assert max(durations) < 0.5, durations
        m = exporter.wait_for(lambda m: value(m, "runbooks_node_up", "eth-d", host="h2", region="") == 0)
        # A frozen node's probe is bounded by the exporter's timeouts (0.5 s + 1 s).
        assert value(m, "runbooks_node_probe_latency_seconds", "eth-d", host="h2", region="") < 2.5
        assert value(m, "runbooks_node_up", "eth-a") == 1
    finally:
        node.signal(signal.SIGCONT)
    exporter.wait_for(lambda m: value(m, "runbooks_node_up", "eth-d", host="h2", region="") == 1)


def test_a_node_added_to_the_inventory_is_exported_without_a_restart(fleet):
    exporter, anvils, tmp = fleet["exporter"], fleet["anvils"], fleet["tmp"]
    anvils["eth-e"] = Anvil("eth-e", tmp)
    nodes = {k: v for k, v in anvils.items() if k != "ref"}
    fleet["inventory"].write_text(inventory_yaml(anvils["ref"], nodes))
    m = exporter.wait_for(lambda m: value(m, "runbooks_node_up", "eth-e") == 1)
    assert value(m, "runbooks_node_head_block", "eth-e") is not None

    # A broken edit keeps the last good inventory.
    fleet["inventory"].write_text("nodes: [broken\n")
    time.sleep(1.5)
    assert value(exporter.scrape(), "runbooks_node_up", "eth-e") == 1
    assert "keeping the previous one" in exporter.log.read_text()


def test_a_down_reference_leaves_lag_unknown_but_nodes_up(fleet):
    exporter, ref = fleet["exporter"], fleet["anvils"]["ref"]
    ref.proc.kill()
    ref.proc.wait(5)
    m = exporter.wait_for(lambda m: not m.get("runbooks_reference_head_block"))
    assert value(m, "runbooks_node_up", "eth-a") == 1
    assert value(m, "runbooks_node_lag_blocks", "eth-a") is None
