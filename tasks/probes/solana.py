"""Solana RPC nodes: the slot as head, health from getHealth and GET /health."""

from __future__ import annotations

import re

import httpx

from tasks.probes.model import ClientHealth, HealthOptions
from tasks.probes.parsing import as_text, obj, parse_json, rpc_error_text, snippet, split_batch, to_int
from tasks.probes.transport import fetch_health, with_path

BATCH = (("getSlot", []), ("getHealth", []), ("getVersion", []))

NODE_UNHEALTHY = -32005  # the JSON-RPC error code of getHealth on a node that is behind


def interpret(status: int, body: bytes, now: float, options: HealthOptions) -> dict | str:
    """The head batch's answer -> NodeProbe fields (with getHealth as health), or an error."""
    calls = split_batch(body, BATCH)
    if isinstance(calls, str):
        return calls
    slot = calls["getSlot"]
    if slot.error or to_int(slot.result) is None:
        return f"getSlot failed: {slot.error or 'no slot'}"
    health = _rpc_health(calls["getHealth"].raw)
    version = obj(calls["getVersion"].result).get("solana-core")
    return {
        "head": to_int(slot.result),
        "head_timestamp": None,  # a slot's time needs a second round trip (getBlockTime)
        "head_age_s": None,
        "syncing": None,
        "peers": None,
        "client_version": f"solana-core/{version}" if isinstance(version, str) else None,
        "health": health,
    }


def parse_solana_health(status_code: int, body: str | bytes) -> ClientHealth:
    """Solana RPC GET /health: plain text ok | behind | unknown (newer: "transaction status behind")."""
    text = as_text(body).strip().lower()
    data = {"status_code": status_code, "status": text[:40]}
    if text == "ok":
        return ClientHealth(healthy=True, detail="ok", data=data)
    if text in ("behind", "transaction status behind"):
        return ClientHealth(healthy=False, detail=text, data=data)
    if text == "unknown":
        return ClientHealth(healthy=None, detail="node cannot tell whether it is behind (unknown)", data=data)
    return ClientHealth(healthy=None, detail=f"unexpected /health answer (HTTP {status_code}){snippet(body)}", data=data)


def parse_solana_get_health(status_code: int, body: str | bytes) -> ClientHealth:
    """Solana JSON-RPC getHealth: "ok", or error -32005 with data.numSlotsBehind (null: unknown)."""
    doc = parse_json(body)
    if not isinstance(doc, dict):
        return ClientHealth(healthy=None, detail=f"unexpected getHealth answer (HTTP {status_code})")
    return _rpc_health(doc)


def _rpc_health(doc: dict) -> ClientHealth:
    if doc.get("result") == "ok":
        return ClientHealth(healthy=True, detail="ok")
    error = obj(doc.get("error"))
    if error.get("code") == NODE_UNHEALTHY:
        behind = to_int(obj(error.get("data")).get("numSlotsBehind"))
        if behind is None:  # older nodes only say so in the message
            m = re.search(r"behind by (\d{1,12}) slots", str(error.get("message", "")))
            behind = int(m.group(1)) if m else None
        if behind is None:
            return ClientHealth(healthy=None, detail="node unhealthy, distance unknown", data={"numSlotsBehind": None})
        return ClientHealth(healthy=False, detail=f"behind by {behind} slots", data={"numSlotsBehind": behind})
    if doc.get("error") is not None:
        return ClientHealth(healthy=None, detail=f"getHealth failed: {rpc_error_text(doc['error'])}")
    return ClientHealth(healthy=None, detail="unexpected getHealth answer")


async def fetch_solana_health(http: httpx.AsyncClient, url: str) -> ClientHealth:
    return await fetch_health(http, "GET", with_path(url, "/health"), parse_solana_health)
