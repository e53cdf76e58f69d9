"""Node probes: ask every node where its head is, and judge the answer.

One probe path for the whole product, in layers (each imports only from below):

    parsing     reading answers without raising (JSON, JSON-RPC batches, quantities)
    model       what a probe is asked and answers: Timeouts, HealthOptions, ProbeTarget,
                NodeProbe, ClientHealth, Verdict, ClientVersion, ProbeError
    transport   bounded HTTP requests; transport failures as short text
    evm, erigon, op_node, heimdall, solana, avalanche
                one module per client family: its head batch and/or health endpoint
    registry    client name -> head protocol and health check: where a new client goes
    targets     inventory nodes and chain references as checked ProbeTargets
    probe       probe_many / probe_many_sync / probe_node
    classify    the one place a probe becomes a verdict (healthy, lagging, stalled, down, unknown)
    assessment  the fleet sweep the runbooks and the exporter share: Assessment, Sweep, sweep

    probes = probe_many_sync([("eth-a", "http://10.0.0.5:8545", "erigon", None), ...])
    verdict = classify(probes[0], reference_head(reference_probes), chain)

Every parser of a client response takes the raw answer (status code, body)
and never raises on garbage; the response shapes come from the clients' own
code and docs (see tests/fixtures/health/README.md). The names below are
re-exported so `from tasks import probes; probes.X` keeps working.
"""

from tasks.probes.model import (
    DEFAULT_HEALTH,
    DEFAULT_TIMEOUTS,
    GENERIC_EVM,
    ClientHealth,
    ClientVersion,
    HealthOptions,
    NodeProbe,
    ProbeError,
    ProbeTarget,
    Status,
    Timeouts,
    Verdict,
)
from tasks.probes.transport import MAX_BODY_BYTES
from tasks.probes.evm import parse_client_version
from tasks.probes.erigon import fetch_erigon_health, parse_erigon_health
from tasks.probes.op_node import fetch_op_node_sync_status, parse_op_node_sync_status
from tasks.probes.heimdall import fetch_heimdall_status, parse_heimdall_status
from tasks.probes.solana import fetch_solana_health, parse_solana_get_health, parse_solana_health
from tasks.probes.avalanche import fetch_avalanche_health, parse_avalanche_health, parse_avalanche_is_bootstrapped
from tasks.probes.targets import node_target, reference_targets, references_of
from tasks.probes.probe import probe_many, probe_many_sync, probe_node
from tasks.probes.classify import classify, reference_head
from tasks.probes.assessment import Assessment, Sweep, as_dict, assess_nodes, sweep

__all__ = [
    "DEFAULT_HEALTH", "DEFAULT_TIMEOUTS", "GENERIC_EVM", "MAX_BODY_BYTES",
    "Assessment", "ClientHealth", "ClientVersion", "HealthOptions", "NodeProbe", "ProbeError",
    "ProbeTarget", "Status", "Sweep", "Timeouts", "Verdict",
    "as_dict", "assess_nodes", "classify", "fetch_avalanche_health", "fetch_erigon_health",
    "fetch_heimdall_status", "fetch_op_node_sync_status", "fetch_solana_health", "node_target",
    "parse_avalanche_health", "parse_avalanche_is_bootstrapped", "parse_client_version",
    "parse_erigon_health", "parse_heimdall_status", "parse_op_node_sync_status",
    "parse_solana_get_health", "parse_solana_health", "probe_many", "probe_many_sync", "probe_node",
    "reference_head", "reference_targets", "references_of", "sweep",
]
