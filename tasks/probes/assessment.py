"""The fleet assessment: probe some nodes with their chains' references in one
sweep and judge each node. The ONE assessment the runbooks (tasks.steps) and
the Prometheus exporter (deployments.exporter) both report.

    result = sweep(inventory, ["eth-a", "eth-b"])
    result.nodes["eth-a"].status      # healthy | lagging | stalled | down | unknown
    result.reference_heads["lab-eth"]  # best head among the chain's references

Plain functions, no Prefect: steps wrap them as tasks, the exporter calls
them from its own loop.
"""

from __future__ import annotations

import time
from dataclasses import KW_ONLY, dataclass

from inventory import Inventory
from tasks.probes.classify import classify, reference_head
from tasks.probes.model import DEFAULT_TIMEOUTS, NodeProbe, ProbeError, Status, Timeouts
from tasks.probes.probe import probe_many_sync
from tasks.probes.targets import node_target, reference_targets, references_of


@dataclass
class Assessment:
    """One node's state, judged against its chain's references and thresholds."""

    node: str
    status: Status
    reason: str
    head: int | None
    reference_head: int | None
    lag: int | None  # best reference head - node head (negative: ahead)
    head_age_s: float | None
    client_version: str | None
    _: KW_ONLY
    chain: str = ""
    up: bool = False  # the node gave a usable answer
    head_timestamp: float | None = None  # unix time the head was made; age at any later moment follows from it
    latency_s: float = 0.0  # how long the probe took
    error: str | None = None  # why the node gave no usable answer
    client: str | None = None  # parsed from client_version: "erigon", "op-geth", ...
    version: str | None = None  # "3.0.4", "3.10.1-rc.2": compare with evm.version_key

    @property
    def healthy(self) -> bool:
        return self.status == "healthy"


# What the records show of an assessment (audit state, reports, artifacts):
# the verdict and its evidence. Not latency or timestamps, which change on
# every probe and would mark every line changed in a before/after report.
# The client and version, parsed, beside the raw string: an upgrade runbook
# compares the before and after versions of the node it upgraded.
RECORD_FIELDS = ("node", "status", "reason", "head", "reference_head", "lag", "head_age_s", "client_version",
                 "client", "version")


def as_dict(a: Assessment) -> dict:
    return {k: getattr(a, k) for k in RECORD_FIELDS}


@dataclass
class Sweep:
    """One concurrent probe of some nodes and their chains' references."""

    nodes: dict[str, Assessment]  # in the order asked
    references: dict[str, list[NodeProbe]]  # chain -> its references' probes
    completed_at: float | None = None  # unix time
    duration_s: float | None = None

    @property
    def reference_heads(self) -> dict[str, int | None]:
        """chain -> best head among its references that answered (None: none did)."""
        return {chain: reference_head(refs) for chain, refs in self.references.items()}


def sweep(
    inventory: Inventory,
    names: list[str],
    *,
    chains: list[str] | None = None,
    timeout: Timeouts | float = DEFAULT_TIMEOUTS,
) -> Sweep:
    """Probe nodes and their chains' references together; classify each node.

    `chains` adds the references of more chains (the exporter reports every
    chain, with or without nodes). Bounded by the timeout's deadline.
    """
    started = time.monotonic()
    nodes = {n: inventory.node(n) for n in names}
    unknown = sorted(set(chains or ()) - set(inventory.chains))
    if unknown:
        raise ProbeError(f"unknown chain(s) {unknown} (known: {', '.join(sorted(inventory.chains))})")
    swept = sorted({node.chain for node in nodes.values()} | set(chains or ()))
    targets = [node_target(n, node) for n, node in nodes.items()]
    targets += [t for c in swept for t in reference_targets(c, inventory.chains[c])]
    results = {p.name: p for p in probe_many_sync(targets, timeout=timeout)}
    now = time.time()
    references = {c: references_of(results.values(), c) for c in swept}
    assessed = {}
    for n, node in nodes.items():
        probe = results[n]
        ref_head = reference_head(references[node.chain])
        verdict = classify(probe, ref_head, inventory.chains[node.chain])
        assessed[n] = Assessment(
            node=n, status=verdict.status, reason=verdict.reason, head=probe.head,
            reference_head=ref_head, lag=verdict.lag, head_age_s=probe.head_age_s,
            client_version=probe.client_version,
            chain=node.chain, up=probe.ok, head_timestamp=_head_timestamp(probe, now),
            latency_s=probe.latency_s, error=probe.error, client=probe.client, version=probe.version,
        )
    return Sweep(assessed, references, completed_at=now, duration_s=time.monotonic() - started)


def assess_nodes(inventory: Inventory, names: list[str]) -> dict[str, Assessment]:
    return sweep(inventory, names).nodes


def _head_timestamp(probe: NodeProbe, now: float) -> float | None:
    """When the head was made: the block's own timestamp, or (for protocols that
    only report an age) the age at probe time turned back into a time."""
    if not probe.ok:
        return None
    if probe.head_timestamp is not None:
        return float(probe.head_timestamp)
    if probe.head_age_s is not None:
        return now - probe.head_age_s  # within a sweep's duration of the truth
    return None
