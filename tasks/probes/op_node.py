"""Optimism's op-node (rollup node): its head and health from optimism_syncStatus.

An op-node is probed directly (its unsafe L2 head is the head), and it is the
health endpoint of its op-geth: op-geth is trusted only while its op-node's
safe head keeps up (see registry.py).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from tasks.probes.model import DEFAULT_HEALTH, ClientHealth, HealthOptions
from tasks.probes.parsing import age, obj, parse_json, rpc_body, rpc_error_text, short, split_batch, to_int
from tasks.probes.transport import JSON_HEADERS, fetch_health

BATCH = (("optimism_syncStatus", []), ("optimism_version", []))


def interpret(status: int, body: bytes, now: float, options: HealthOptions) -> dict | str:
    """The head batch's answer -> NodeProbe fields (with the sync status as health), or an error."""
    calls = split_batch(body, BATCH)
    if isinstance(calls, str):
        return calls
    sync = calls["optimism_syncStatus"]
    if sync.error:
        return f"optimism_syncStatus failed: {sync.error}"
    health = _health(obj(sync.result), now, options.op_node_max_unsafe_safe_gap, options.op_node_max_unsafe_age_s)
    unsafe = obj(obj(sync.result).get("unsafe_l2"))
    head, head_ts = to_int(unsafe.get("number")), to_int(unsafe.get("timestamp"))
    if head is None:
        return "optimism_syncStatus gave no unsafe_l2 head"
    version = calls["optimism_version"]
    return {
        "head": head,
        "head_timestamp": head_ts,
        "head_age_s": age(head_ts, now),
        "syncing": None,
        "peers": None,
        "client_version": f"op-node/{version.result}" if version.error is None and isinstance(version.result, str) else None,
        "health": health,
    }


def parse_op_node_sync_status(
    status_code: int,
    body: str | bytes,
    *,
    now: float | None = None,
    max_unsafe_safe_gap: int = DEFAULT_HEALTH.op_node_max_unsafe_safe_gap,
    max_unsafe_age_s: float = DEFAULT_HEALTH.op_node_max_unsafe_age_s,
) -> ClientHealth:
    """op-node's JSON-RPC answer to optimism_syncStatus (eth.SyncStatus).

    Unhealthy when the safe head trails the unsafe head by more than
    max_unsafe_safe_gap blocks or the unsafe head is older than max_unsafe_age_s.
    """
    doc = parse_json(body)
    if not isinstance(doc, dict):
        return ClientHealth(healthy=None, detail=f"unexpected optimism_syncStatus answer (HTTP {status_code})")
    if doc.get("error") is not None:
        return ClientHealth(healthy=None, detail=f"optimism_syncStatus failed: {rpc_error_text(doc['error'])}")
    return _health(obj(doc.get("result")), time.time() if now is None else now, max_unsafe_safe_gap, max_unsafe_age_s)


def _health(result: dict, now: float, max_gap: int, max_age: float) -> ClientHealth:
    def ref(key: str) -> dict:
        r = obj(result.get(key))
        return {"number": to_int(r.get("number")), "timestamp": to_int(r.get("timestamp"))}

    unsafe, safe, finalized = ref("unsafe_l2"), ref("safe_l2"), ref("finalized_l2")
    current_l1, head_l1 = ref("current_l1"), ref("head_l1")
    data: dict[str, Any] = {"unsafe_l2": unsafe, "safe_l2": safe, "finalized_l2": finalized,
                            "current_l1": current_l1, "head_l1": head_l1}
    if unsafe["number"] is None or safe["number"] is None:
        return ClientHealth(healthy=None, detail="optimism_syncStatus without unsafe_l2/safe_l2 numbers", data=data)
    if unsafe["number"] == 0:
        # "Values may be zeroed if not yet initialized."
        return ClientHealth(healthy=None, detail="op-node sync status not initialized yet (unsafe_l2 is 0)", data=data)
    gap = unsafe["number"] - safe["number"]
    unsafe_age = age(unsafe["timestamp"], now)
    data |= {"unsafe_safe_gap": gap, "unsafe_age_s": unsafe_age}
    if current_l1["number"] is not None and head_l1["number"] is not None:
        data["l1_derivation_lag"] = head_l1["number"] - current_l1["number"]
    problems = []
    if gap > max_gap:
        problems.append(f"safe head {gap} blocks behind unsafe (max {max_gap})")
    if unsafe_age is not None and unsafe_age > max_age:
        problems.append(f"unsafe head {unsafe_age:.0f}s old (max {max_age:g}s)")
    summary = f"unsafe {unsafe['number']}, safe {safe['number']}, finalized {finalized['number']}"
    if problems:
        return ClientHealth(healthy=False, detail=short("; ".join(problems) + f" ({summary})"), data=data)
    return ClientHealth(healthy=True, detail=summary, data=data)


async def fetch_op_node_sync_status(
    http: httpx.AsyncClient,
    url: str,
    max_unsafe_safe_gap: int = DEFAULT_HEALTH.op_node_max_unsafe_safe_gap,
    max_unsafe_age_s: float = DEFAULT_HEALTH.op_node_max_unsafe_age_s,
) -> ClientHealth:
    """POST optimism_syncStatus to an op-node RPC and judge the answer."""

    def parse(status: int, raw: bytes) -> ClientHealth:
        return parse_op_node_sync_status(status, raw, max_unsafe_safe_gap=max_unsafe_safe_gap,
                                         max_unsafe_age_s=max_unsafe_age_s)

    return await fetch_health(http, "POST", url, parse, content=rpc_body("optimism_syncStatus", []),
                              headers=JSON_HEADERS)
