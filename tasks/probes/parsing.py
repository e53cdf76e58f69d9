"""Reading client answers without ever raising: the helpers every client module shares.

The ground of the probes package: it imports nothing from `tasks/`. Every
client module (evm, erigon, op_node, heimdall, solana, avalanche), the
transport and the classifier read answers through these, so they live here
and not in any one of them.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

ERROR_MAX_CHARS = 200

INVALID = object()  # what `parse_json` returns for a body that is not JSON


def parse_json(body: str | bytes) -> Any:
    """Parsed JSON, or INVALID. Never raises."""
    try:
        return json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return INVALID


def obj(value: Any) -> dict:
    """value if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def to_int(value: Any) -> int | None:
    """A JSON-RPC quantity ("0x1b4"), a decimal string ("26083") or an int; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and 0 < len(value) <= 80:
        try:
            value = int(value[2:], 16) if value[:2].lower() == "0x" else int(value, 10)
        except ValueError:
            return None
    if isinstance(value, int) and abs(value) < 2**256:  # a block number, a timestamp, a count
        return value
    return None


def age(timestamp: int | None, now: float) -> float | None:
    """Seconds since `timestamp`, never negative (a node's clock may run ahead)."""
    if timestamp is None:
        return None
    return max(0.0, now - timestamp)


def short(text: str) -> str:
    """One line of at most ERROR_MAX_CHARS: what goes into an error or a detail."""
    text = " ".join(str(text).split())
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 3] + "..."


def as_text(body: str | bytes) -> str:
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace")
    return body if isinstance(body, str) else ""


def as_bytes(body: str | bytes) -> bytes:
    return body if isinstance(body, bytes) else as_text(body).encode("utf-8", "replace")


def snippet(body: str | bytes) -> str:
    """': <the start of the body>' for an error message, or '' for an empty body."""
    text = as_bytes(body)[:120].decode("utf-8", "replace").strip()
    return f": {short(text)}" if text else ""


# --- JSON-RPC ------------------------------------------------------------------

def batch_body(batch: tuple) -> bytes:
    """A JSON-RPC batch request: ((method, params), ...) with ids 1, 2, ..."""
    return json.dumps(
        [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(batch, 1)]
    ).encode()


def rpc_body(method: str, params: Any) -> bytes:
    """A single JSON-RPC request."""
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()


def rpc_error_text(error: Any) -> str:
    e = obj(error)
    code, message = e.get("code"), e.get("message")
    text = " ".join(str(x) for x in (code, message) if x is not None) or short(json.dumps(error, default=str))
    return short(text)


class Call(NamedTuple):
    """One call's part of a batch answer."""

    result: Any
    error: str | None  # "code message" when the call failed
    raw: dict  # the call's whole answer (some errors carry data)


def split_batch(body: bytes, batch: tuple) -> dict[str, Call] | str:
    """Map each method of the batch to its call result, or an error for the whole answer."""
    doc = parse_json(body)
    if doc is INVALID:
        return f"malformed JSON{snippet(body)}"
    if isinstance(doc, dict) and "error" in doc:
        return f"batch refused: {rpc_error_text(doc['error'])}"
    if not isinstance(doc, list):
        return "not a JSON-RPC batch answer"
    by_id = {}
    for item in doc:
        if isinstance(item, dict) and isinstance(item.get("id"), (int, str)) and not isinstance(item.get("id"), bool):
            by_id[str(item["id"])] = item
    calls = {}
    for i, (method, _) in enumerate(batch, 1):
        item = by_id.get(str(i))
        if item is None:
            calls[method] = Call(None, "no answer in batch", {})
        elif item.get("error") is not None:
            calls[method] = Call(None, rpc_error_text(item["error"]), item)
        else:
            calls[method] = Call(item.get("result"), None, item)
    return calls
