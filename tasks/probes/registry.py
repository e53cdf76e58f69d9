"""Which probe each client gets: the ONE place a new client is added.

A client's probe is a head protocol (how to ask the node for its head and
read the answer) and, optionally, a health check asked at the node's
`health_url`. A new client is one row in CLIENTS (and, if it speaks
something new, a module of its own beside evm.py, op_node.py, ...).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import httpx

from inventory import ChainFamily, Client
from tasks.probes import avalanche, erigon, evm, heimdall, op_node, solana
from tasks.probes.model import GENERIC_EVM, ClientHealth, HealthOptions, ProbeError

# (status, body, received at (unix time), options) -> NodeProbe fields, or why the answer is unusable.
Interpreter = Callable[[int, bytes, float, HealthOptions], "dict | str"]
# (client, health_url, options) -> the client's own opinion of its health.
HealthFetcher = Callable[[httpx.AsyncClient, str, HealthOptions], Awaitable[ClientHealth]]


@dataclass(frozen=True)
class HeadProtocol:
    """How to ask one kind of node for its head, and how to read the answer."""

    method: Literal["POST", "GET"]
    interpret: Interpreter
    batch: tuple = ()  # POST: the JSON-RPC batch
    path: str = ""  # GET: appended to the node URL (heimdall: /status)


EVM = HeadProtocol("POST", evm.interpret, evm.BATCH)
OP_NODE = HeadProtocol("POST", op_node.interpret, op_node.BATCH)
SOLANA = HeadProtocol("POST", solana.interpret, solana.BATCH)
HEIMDALL = HeadProtocol("GET", heimdall.interpret, path=heimdall.STATUS_PATH)


@dataclass(frozen=True)
class ClientProbe:
    head: HeadProtocol
    # Asked concurrently with the head when the node has a health_url; its
    # answer wins over the health a head protocol carries (op-node, heimdall, solana).
    health: HealthFetcher | None = None


def _erigon(http: httpx.AsyncClient, url: str, o: HealthOptions) -> Awaitable[ClientHealth]:
    return erigon.fetch_erigon_health(http, url, o.erigon_checks)


def _op_node(http: httpx.AsyncClient, url: str, o: HealthOptions) -> Awaitable[ClientHealth]:
    return op_node.fetch_op_node_sync_status(http, url, o.op_node_max_unsafe_safe_gap, o.op_node_max_unsafe_age_s)


def _heimdall(http: httpx.AsyncClient, url: str, o: HealthOptions) -> Awaitable[ClientHealth]:
    return heimdall.fetch_heimdall_status(http, url)


def _solana(http: httpx.AsyncClient, url: str, o: HealthOptions) -> Awaitable[ClientHealth]:
    return solana.fetch_solana_health(http, url)


def _avalanche(http: httpx.AsyncClient, url: str, o: HealthOptions) -> Awaitable[ClientHealth]:
    return avalanche.fetch_avalanche_health(http, url, o.avalanche_chain)


CLIENTS: dict[str, ClientProbe] = {
    GENERIC_EVM: ClientProbe(EVM),  # a chain's references
    Client.anvil.value: ClientProbe(EVM),
    Client.erigon.value: ClientProbe(EVM, _erigon),
    Client.geth.value: ClientProbe(EVM),
    Client.nethermind.value: ClientProbe(EVM),
    Client.nitro.value: ClientProbe(EVM),
    # op-geth's health is its op-node's view: its health_url is the op-node RPC.
    Client.op_geth.value: ClientProbe(EVM, _op_node),
    Client.op_node.value: ClientProbe(OP_NODE),
    # Bor is trusted only while its Heimdall is in sync: its health_url is Heimdall's RPC.
    Client.bor.value: ClientProbe(EVM, _heimdall),
    Client.heimdall.value: ClientProbe(HEIMDALL),
    Client.solana.value: ClientProbe(SOLANA, _solana),
    Client.avalanchego.value: ClientProbe(EVM, _avalanche),
}

# References speak their chain's protocol: Ethereum JSON-RPC unless said here.
REFERENCE_CLIENT = {ChainFamily.solana: Client.solana.value}


def client_name(client: Client | str | None, target: str) -> str:
    """The registry key for a target's client; ProbeError for one we cannot probe."""
    if client is None or client == GENERIC_EVM:
        return GENERIC_EVM
    value = client.value if isinstance(client, Client) else client
    try:
        value = Client(value).value
    except ValueError:
        known = ", ".join(c.value for c in Client)
        raise ProbeError(f"{target}: unknown client {client!r} (known: {known}, or {GENERIC_EVM!r})") from None
    if value not in CLIENTS:
        raise ProbeError(f"{target}: no probe for client {value!r} yet: add it to tasks/probes/registry.py")
    return value


def probe_for(client: str) -> ClientProbe:
    """The probe of a client name that `client_name` accepted."""
    return CLIENTS[client]


def reference_client(family: ChainFamily) -> str:
    """The client name a chain's references are probed as."""
    return REFERENCE_CLIENT.get(family, GENERIC_EVM)
