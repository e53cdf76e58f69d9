"""The probe model: what a probe is asked (targets, timeouts, health options)
and what it answers (NodeProbe, ClientHealth, Verdict, ClientVersion).

Imports nothing from `tasks/` but the errors: every other module of the
package stands on this one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import httpx
from pydantic import BaseModel, ConfigDict

from inventory import Client
from tasks.errors import InvalidInput


class ProbeError(InvalidInput):
    """Bad probe input (a malformed URL, an unknown client, a bad option).

    Node problems are never raised: they are reported in `NodeProbe.error`.
    """


# --- what a probe is asked ------------------------------------------------------

@dataclass(frozen=True)
class Timeouts:
    """How long to wait for a node. Every request of a probe gets these.

    A probe as a whole never takes longer than `deadline` (connect + read):
    httpx's read timeout applies per read, so a node that drips bytes could
    otherwise hold a probe for much longer.
    """

    connect: float = 2.0
    read: float = 3.0

    def __post_init__(self) -> None:
        for name in ("connect", "read"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 300:
                raise ProbeError(f"timeout {name} must be a number of seconds in (0, 300], got {value!r}")

    @property
    def deadline(self) -> float:
        return self.connect + self.read

    def for_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.read, pool=self.deadline)


DEFAULT_TIMEOUTS = Timeouts()

# The X-ERIGON-HEALTHCHECK values Erigon's rpcdaemon understands. Here, not in
# erigon.py: HealthOptions validates them and every client module stands on this one.
ERIGON_CHECK = re.compile(r"synced|min_peer_count\d{1,6}|check_block\d{1,12}|max_seconds_behind\d{1,9}")


@dataclass(frozen=True)
class HealthOptions:
    """What the client health checks ask for and tolerate."""

    # X-ERIGON-HEALTHCHECK values; each is one header. e.g. ("synced", "min_peer_count3").
    erigon_checks: tuple[str, ...] = ("synced",)
    # op-node: the safe head trails the unsafe head by the batcher's submission
    # interval; a gap beyond this many L2 blocks means batches are not landing.
    op_node_max_unsafe_safe_gap: int = 1800
    # op-node: the unsafe head must be newer than this (P2P gossip or sequencing stopped).
    op_node_max_unsafe_age_s: float = 60.0
    # Avalanche: the chain whose info.isBootstrapped is asked.
    avalanche_chain: str = "C"

    def __post_init__(self) -> None:
        bad = [c for c in self.erigon_checks if not isinstance(c, str) or not ERIGON_CHECK.fullmatch(c)]
        if bad:
            raise ProbeError(
                f"unknown Erigon health check(s) {bad}: use synced, min_peer_count<N>, "
                "check_block<N> or max_seconds_behind<S>"
            )
        if not isinstance(self.avalanche_chain, str) or not re.fullmatch(r"[A-Za-z0-9]{1,64}", self.avalanche_chain):
            raise ProbeError(f"avalanche_chain must be a chain alias or ID, got {self.avalanche_chain!r}")


DEFAULT_HEALTH = HealthOptions()

# The client name of a plain Ethereum JSON-RPC endpoint (a chain's references).
GENERIC_EVM = "reference"


class ProbeTarget(NamedTuple):
    """One endpoint to probe. Plain 4-tuples in this order work too."""

    name: str
    url: str
    client: Client | str | None = None  # None or GENERIC_EVM: a plain Ethereum JSON-RPC endpoint
    health_url: str | None = None


# --- what it answers --------------------------------------------------------------

class ClientHealth(BaseModel):
    """A client's own opinion of its health.

    healthy: True / False as the client reports it; None when the check was
    asked for but gave no usable answer (endpoint unreachable, unparseable,
    the client itself cannot tell yet).
    """

    model_config = ConfigDict(frozen=True)

    healthy: bool | None
    detail: str
    data: dict[str, Any] = {}


class NodeProbe(BaseModel):
    """What one node answered, at one moment."""

    model_config = ConfigDict(frozen=True)

    name: str
    url: str
    ok: bool
    error: str | None = None
    head: int | None = None
    head_timestamp: int | None = None
    head_age_s: float | None = None
    syncing: bool | dict | None = None
    peers: int | None = None
    client_version: str | None = None  # as the node reported it (web3_clientVersion, or its protocol's own)
    # ... and parsed (evm.parse_client_version): what an upgrade compares. None
    # when the node names no version we can read (Heimdall's /status names none).
    client: str | None = None
    version: str | None = None
    latency_s: float
    health: ClientHealth | None = None


Status = Literal["healthy", "lagging", "stalled", "down", "unknown"]


class Verdict(NamedTuple):
    status: Status
    reason: str
    lag: int | None


class ClientVersion(NamedTuple):
    client: str  # lower case: erigon, geth, nethermind, nitro, op-geth, bor, anvil, ...
    version: str  # without the leading "v" and build suffixes: "3.0.4", "1.14.8", "3.10.1-rc.2"
