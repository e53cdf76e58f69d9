"""Polygon's Heimdall (Tendermint/CometBFT): GET :26657/status.

A Heimdall node is probed through /status (its latest block is the head), and
it is the health endpoint of its Bor: Bor is trusted only while its Heimdall
is in sync (see registry.py).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import httpx

from tasks.probes.model import ClientHealth, HealthOptions
from tasks.probes.parsing import age, obj, parse_json, rpc_error_text, snippet, to_int
from tasks.probes.transport import fetch_health, with_path

STATUS_PATH = "/status"


def interpret(status: int, body: bytes, now: float, options: HealthOptions) -> dict | str:
    """The /status answer -> NodeProbe fields (with catching_up as health), or an error."""
    health = parse_heimdall_status(status, body)
    head = health.data.get("latest_block_height")
    if head is None:
        return f"heimdall /status unusable: {health.detail}"
    head_ts = health.data.get("latest_block_unix")
    return {
        "head": head,
        "head_timestamp": head_ts,
        "head_age_s": age(head_ts, now),
        "syncing": health.data.get("catching_up"),
        "peers": None,
        # node_info.version is the Tendermint/CometBFT engine's ("0.32.7"), not
        # Heimdall's own release, so it would mislead an upgrade: none is recorded.
        "client_version": None,
        "health": health,
    }


def parse_heimdall_status(status_code: int, body: str | bytes) -> ClientHealth:
    """Tendermint /status: healthy when .result.sync_info.catching_up is false."""
    doc = parse_json(body)
    result = obj(doc.get("result")) if isinstance(doc, dict) and "result" in doc else obj(doc)
    if isinstance(doc, dict) and doc.get("error") is not None:
        return ClientHealth(healthy=None, detail=f"/status failed: {rpc_error_text(doc['error'])}")
    sync = obj(result.get("sync_info"))
    catching_up = sync.get("catching_up")
    height = to_int(sync.get("latest_block_height"))
    if not isinstance(catching_up, bool) or height is None:
        return ClientHealth(healthy=None, detail=f"unexpected /status answer (HTTP {status_code}){snippet(body)}")
    block_time = sync.get("latest_block_time")
    node_info = obj(result.get("node_info"))
    data = {
        "latest_block_height": height,
        "latest_block_time": block_time if isinstance(block_time, str) else None,
        "latest_block_unix": _rfc3339_unix(block_time),
        "catching_up": catching_up,
        "network": node_info.get("network") if isinstance(node_info.get("network"), str) else None,
        "version": node_info.get("version") if isinstance(node_info.get("version"), str) else None,
    }
    if catching_up:
        return ClientHealth(healthy=False, detail=f"catching up (height {height})", data=data)
    return ClientHealth(healthy=True, detail=f"in sync (height {height})", data=data)


def _rfc3339_unix(value: Any) -> int | None:
    """Tendermint block times carry nanoseconds ("2024-06-11T14:07:57.12519517Z")."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    m = re.match(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})$", value.strip())
    if not m:
        return None
    try:
        zone = "+00:00" if m.group(2) == "Z" else m.group(2)
        return int(datetime.fromisoformat(m.group(1) + zone).timestamp())
    except ValueError:
        return None


async def fetch_heimdall_status(http: httpx.AsyncClient, url: str) -> ClientHealth:
    return await fetch_health(http, "GET", with_path(url, STATUS_PATH), parse_heimdall_status)
