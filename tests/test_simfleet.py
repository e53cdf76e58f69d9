"""lab/simfleet.py: simulated nodes that the inventory, the probes and fleet-health treat as real ones, each
classified as it was built (the thousand-node bench relies on it: bench/fleet_scale_bench.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from inventory import load_inventory
from lab import simfleet
from tasks.guards import chain_incident
from tasks.probes.assessment import sweep
from tests.processes import stop_process

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def serving(spec: simfleet.Spec, tmp_path: Path):
    """The spec served by one simfleet process; yields its inventory as load_inventory reads it."""
    (tmp_path / "spec.json").write_text(spec.to_json())
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(simfleet.inventory(spec)))
    inventory = load_inventory(tmp_path / "inventory.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "lab.simfleet", "serve", "--spec", str(tmp_path / "spec.json")],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().startswith("ready")
        yield inventory
    finally:
        stop_process(proc)


def test_every_simulated_node_is_classified_as_built_and_far_regions_cost_their_round_trip(tmp_path):
    regions = {"near": 0.001, "far": 0.150}
    spec = simfleet.build_spec(60, regions, fault_every={"stalled": 10, "lagging": 10, "down": 20, "frozen": 25})
    assert {n.fault for n in spec.nodes} == {None, "stalled", "lagging", "down", "frozen"}
    with serving(spec, tmp_path) as inventory:
        assert inventory.region_of(spec.nodes[1].name) == "far"
        swept = sweep(inventory, [n.name for n in spec.nodes], timeout=1.0)
        assert {n.name: swept.nodes[n.name].status for n in spec.nodes} == \
               {n.name: simfleet.expected_status(n) for n in spec.nodes}
        healthy = [n for n in spec.nodes if n.fault is None]
        assert all(swept.nodes[n.name].client_version == simfleet.CLIENT_VERSION for n in healthy)
        # One far node on its own: a handshake and a request, each a round trip.
        far = next(n for n in healthy if n.region == "far")
        started = time.perf_counter()
        assert sweep(inventory, [far.name]).nodes[far.name].status == "healthy"
        assert time.perf_counter() - started >= 2 * regions["far"]


def test_a_halted_chain_is_every_node_and_the_reference_stalled_and_reads_as_a_chain_incident(tmp_path):
    """The 1,000-node storm test (tests/test_storm_scale.py) relies on it for its chain short-circuit."""
    spec = simfleet.build_spec(12, {"near": 0.001}, fault_every={}, halted=("sim-base",))
    halted = [n for n in spec.nodes if n.chain == "sim-base"]
    assert halted and {n.fault for n in halted} == {"stalled"}
    assert {n.fault for n in spec.nodes if n.chain != "sim-base"} == {None}
    with serving(spec, tmp_path) as inventory:
        swept = sweep(inventory, [n.name for n in spec.nodes], timeout=1.0)
        assert {n.name: swept.nodes[n.name].status for n in spec.nodes} == \
               {n.name: "stalled" if n.chain == "sim-base" else "healthy" for n in spec.nodes}
        incident = chain_incident(inventory, "sim-base", {n: swept.nodes[n] for n in inventory.nodes_on_chain("sim-base")},
                                  swept.references["sim-base"])
        assert incident and "every reference head is stale" in incident
        assert chain_incident(inventory, "sim-eth", {n: swept.nodes[n] for n in inventory.nodes_on_chain("sim-eth")},
                              swept.references["sim-eth"]) is None
