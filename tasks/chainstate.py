"""A node's block at a height, as JSON-RPC gives it: what proves a restore brought back the same chain.

A backup records the head's number and hash just before the node stopped; a
restored node must answer the same hash at that number (its history is the
one backed up, not merely as long). One bounded request, no retries: the
runbooks poll.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from inventory.endpoints import endpoint_url

TIMEOUT = httpx.Timeout(5.0, connect=2.0)


@dataclass(frozen=True)
class Block:
    number: int
    hash: str
    timestamp: int


def block_at(rpc_url, number: int | str = "latest") -> Block | None:
    """The block at `number` ("latest": the head), or None if the node has no such block.

    Raises httpx.HTTPError when the node does not answer, ValueError on a JSON-RPC error.
    """
    tag = hex(number) if isinstance(number, int) else number
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": [tag, False]}
    response = httpx.post(endpoint_url(rpc_url), json=body, timeout=TIMEOUT)
    response.raise_for_status()
    answer = response.json()
    if answer.get("error"):
        raise ValueError(f"eth_getBlockByNumber({tag}): {answer['error']}")
    block = answer.get("result")
    if not block:
        return None
    return Block(int(block["number"], 16), block["hash"], int(block["timestamp"], 16))
