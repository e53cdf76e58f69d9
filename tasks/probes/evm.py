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


# One version segment: the numeric core and, when there is one, a pre-release tag.
# Leading v's are optional and repeatable: Erigon prints none ("erigon/3.0.4"),
# most print one, and Nitro printed two ("nitro/vv2.1.1-e9d8842") until
# OffchainLabs/nitro#1942. After the core only the known pre-release words are
# kept (rc, alpha, beta, dev, pre, unstable: builds that come before the
# release of that number); everything else after it is build information and is
# dropped: Geth's "-stable" and commit ("-a9523b64", "-20250211"), Nethermind's
# "+2bf8a789" and its older git-describe "-0-310037468-20210717", Reth's and
# Nitro's "-7d1d84c", Infura's "-omnibus-b38477ec". Commits are hex, and no
# kept word is, so a commit is never mistaken for a pre-release.
_VERSION = re.compile(
    r"v*(?P<core>\d{1,9}(?:\.\d{1,9}){0,3})"
    r"(?:-(?P<pre>(?:rc|alpha|beta|dev|pre|unstable)(?:\.?\d{1,9})?)(?=$|[-+.]))?",
    re.IGNORECASE,
)
_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,39}")

# Forks of Geth that call themselves "Geth": op-geth always (its NodeName keeps
# the title-cased "Geth"), and Bor builds run as a `geth` binary. op-geth is
# still recognisable by its version scheme, 1.MMmmpp (major, minor, patch of
# the upstream Geth it is built on: v1.101411.4 is Geth 1.14.11), a minor no
# Geth release comes near; Bor is not, so the inventory's declared client says it.
GETH_FORKS = ("op-geth", "bor")
OP_GETH_MIN_MINOR = 100000


def parse_client_version(raw: Any, declared: str | None = None) -> ClientVersion | None:
    """web3_clientVersion -> (client, version); None when it does not look like one. Never raises.

    name[/identity]/version[/platform/runtime], where the identity (Geth's and
    Besu's --identity) is an operator's free text before a "v"-prefixed version:

    erigon/3.0.4/linux-amd64/go1.23.1, erigon/v2.60.10/...   -> ("erigon", "3.0.4" / "2.60.10")
    Geth/mynode/v1.10.26-stable/linux-amd64/go1.18.5         -> ("geth", "1.10.26")
    Nethermind/v1.25.4+2bf8a789/linux-x64/dotnet8.0.8        -> ("nethermind", "1.25.4")
    nitro/v3.10.1-rc.2-d7f07be/linux-amd64/go1.25.10         -> ("nitro", "3.10.1-rc.2")
    Geth/v1.101411.8-rc.1-374d61f9-20250211/linux-amd64/...  -> ("op-geth", "1.101411.8-rc.1")
    anvil/v1.7.1                                             -> ("anvil", "1.7.1")

    `declared` is the inventory's client for the node: a node declared as a
    Geth fork (op-geth, bor) that answers "Geth/..." is reported as that fork.
    """
    if not isinstance(raw, str) or not raw or len(raw) > 500:
        return None
    parts = [p.strip() for p in raw.strip().split("/")]
    name = parts[0].lower()
    if not _NAME.fullmatch(name) or len(parts) < 2:
        return None
    # Erigon, the one client whose version has no "v", takes no identity, so a
    # "v"-prefixed segment in second or third place is the version, and
    # otherwise the second segment is.
    prefixed = [p for p in parts[1:3] if re.match(r"v+\d", p, re.IGNORECASE)]
    match = _VERSION.match(prefixed[0] if prefixed else parts[1])
    if not match:
        return None
    version = match["core"] + (f"-{match['pre'].lower()}" if match["pre"] else "")
    if name == "geth":
        minor = match["core"].split(".")[1:2]
        if declared in GETH_FORKS:
            name = declared
        elif minor and int(minor[0]) >= OP_GETH_MIN_MINOR:
            name = "op-geth"
    return ClientVersion(name, version)


def version_key(version: str) -> tuple:
    """A sort key for parsed versions: numeric parts compared as numbers, and a
    pre-release before its release (3.0.0-alpha4 < 3.0.0-rc.1 < 3.0.0 < 3.0.1).

    Only versions of the same client compare meaningfully (Erigon's 2022.09.3
    CalVer era sorts after its 2.60.10 and before 3.0.4 only by accident of size).
    """
    core, _, pre = version.partition("-")
    numbers = tuple(int(n) for n in re.findall(r"\d+", core))
    # A release ranks above every pre-release of the same number; pre-releases
    # rank by word order (alpha < beta < dev < pre < rc < unstable is close enough:
    # no client ships two of these for one number) and then by their number.
    pre_key = (1,) if not pre else (0, re.sub(r"[.\d]+$", "", pre), *map(int, re.findall(r"\d+", pre)))
    return (numbers + (0,) * (4 - len(numbers)), pre_key)
