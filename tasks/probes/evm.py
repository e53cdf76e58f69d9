"""Ethereum JSON-RPC nodes (Erigon, Geth, Nethermind, Nitro, op-geth, Bor, AvalancheGo's
C-chain, anvil, and every chain's references): the head batch and client versions."""

from __future__ import annotations

import re
from typing import Any

from tasks.probes.model import ClientVersion, HealthOptions
from tasks.probes.parsing import age, obj, short, split_batch, to_int

BATCH = (
    ("eth_getBlockByNumber", ["latest", False]),  # number and timestamp in one call
    ("eth_syncing", []),
    ("net_peerCount", []),
    ("web3_clientVersion", []),
)


def interpret(status: int, body: bytes, now: float, options: HealthOptions) -> dict | str:
    """The head batch's answer -> NodeProbe fields, or why the node is not serving."""
    calls = split_batch(body, BATCH)
    if isinstance(calls, str):
        return calls
    block = calls["eth_getBlockByNumber"]
    if block.error:
        # A node that cannot name its latest block is not serving: not just a missing field.
        return f"eth_getBlockByNumber failed: {block.error}"
    head = to_int(obj(block.result).get("number"))
    if head is None:
        return "eth_getBlockByNumber gave no latest block"
    head_ts = to_int(obj(block.result).get("timestamp"))
    sync = calls["eth_syncing"]
    syncing = sync.result if sync.error is None and isinstance(sync.result, (bool, dict)) else None
    version = calls["web3_clientVersion"]
    return {
        "head": head,
        "head_timestamp": head_ts,
        "head_age_s": age(head_ts, now),
        "syncing": syncing,
        "peers": to_int(calls["net_peerCount"].result) if calls["net_peerCount"].error is None else None,
        "client_version": short(version.result) if version.error is None and isinstance(version.result, str) else None,
    }


_VERSION = re.compile(r"^v*(\d+(?:\.\d+)*(?:-(?:rc|alpha|beta|dev|pre)[0-9A-Za-z.]*)?)")


def parse_client_version(raw: Any) -> ClientVersion | None:
    """web3_clientVersion -> (client, version); None when it does not look like one.

    erigon/3.0.4/linux-amd64/go1.23.1 and erigon/v2.60.10/... -> ("erigon", "3.0.4"/"2.60.10")
    Geth/v1.14.8-stable-a9523b64/linux-amd64/go1.22.6     -> ("geth", "1.14.8")
    Nethermind/v1.25.4+2bf8a789/linux-x64/dotnet8.0.8     -> ("nethermind", "1.25.4")
    nitro/v3.10.1-rc.2-d7f07be/linux-amd64/go1.25.10      -> ("nitro", "3.10.1-rc.2")
    anvil/v1.7.1                                          -> ("anvil", "1.7.1")
    """
    if not isinstance(raw, str) or not raw or len(raw) > 500:
        return None
    name, _, rest = raw.strip().partition("/")
    name = name.strip().lower()
    if not re.match(r"^[a-z][a-z0-9_.-]{0,39}$", name):
        return None
    match = _VERSION.match(rest.split("/", 1)[0].strip())
    if not match:
        return None
    return ClientVersion(name, match.group(1))
