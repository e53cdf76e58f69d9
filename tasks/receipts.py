"""Reconciliation: what the MEV bot recorded against what the chain says.

The bot writes its executions to the database from its own view (the
receipt it saw, or thought it saw). The daily report checks a bounded,
stable sample of the day's landed executions (`reconcile_day`; database
chains matched to the inventory's by chain id) against the chain: for every
endpoint of the chain (its references and the fleet's nodes, from the
inventory) ONE JSON-RPC batch of `eth_getTransactionReceipt`, all
endpoints at once, through the probes' transport (timeouts, a cap on the
answer's size, no proxy from the environment).

Which answer is "the chain's": any endpoint that holds the receipt. A
node that lacks a receipt another endpoint holds is not a mismatch of the
bot's records (a node behind or recently restored lacks the newest ones);
two endpoints that hold *different* receipts for one hash is reported
apart, as a disagreement. What is compared, as mev-inspect and Brontes
account gas: status (included = 1, reverted = 0), gas used and the
effective gas price. A hash no endpoint holds while at least one answered
is "not on chain"; a hash no endpoint could be asked about is
"unverified", never a mismatch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import psycopg

from tasks.probes.model import DEFAULT_TIMEOUTS, ProbeTarget, Timeouts
from tasks.probes.targets import checked_target, node_target, reference_targets
from tasks.probes.transport import JSON_HEADERS, request, transport_error

MAX_SAMPLE = 2000  # hashes per batch: a receipt with logs is a few KiB, so a batch stays under the cap
MAX_ANSWER_BYTES = 64 << 20
COMPARED = ("status", "gas_used", "effective_gas_price")


@dataclass(frozen=True)
class Recorded:
    """One execution as the bot recorded it."""

    execution_id: int
    chain: str
    tx_hash: str  # 0x + 64 hex
    status: str  # included | reverted
    gas_used: int
    effective_gas_price: int


@dataclass
class Reconciliation:
    checked: int = 0  # executions looked up
    confirmed: int = 0  # found, and every compared field agrees
    mismatches: list[dict] = field(default_factory=list)  # execution_id, tx_hash, field, recorded, chain
    disagreements: list[dict] = field(default_factory=list)  # endpoints holding different receipts
    unverified: list[int] = field(default_factory=list)  # execution ids no endpoint could be asked about
    unreachable: dict[str, str] = field(default_factory=dict)  # endpoint -> why
    not_reconciled: dict[str, str] = field(default_factory=dict)  # database chain -> why (no endpoints...)


def _batch(hashes: Sequence[str]) -> bytes:
    return json.dumps([{"jsonrpc": "2.0", "id": i, "method": "eth_getTransactionReceipt", "params": [h]}
                       for i, h in enumerate(hashes)]).encode()


def _parse(hashes: Sequence[str], body: bytes) -> dict[str, dict | None]:
    """hash -> receipt (None: the endpoint does not hold it). Raises ValueError on a malformed answer."""
    answer = json.loads(body)
    if not isinstance(answer, list):
        raise ValueError(f"not a batch answer: {str(answer)[:160]}")
    out: dict[str, dict | None] = {}
    for item in answer:
        i = item.get("id") if isinstance(item, dict) else None
        if not isinstance(i, int) or not 0 <= i < len(hashes):
            continue
        if "error" in item:
            raise ValueError(f"eth_getTransactionReceipt: {str(item['error'])[:160]}")
        out[hashes[i]] = item.get("result")
    missing = [h for h in hashes if h not in out]
    if missing:
        raise ValueError(f"{len(missing)} of {len(hashes)} answers missing from the batch")
    return out


async def fetch_receipts(targets: Sequence[ProbeTarget | tuple], hashes: Sequence[str],
                         timeouts: Timeouts = DEFAULT_TIMEOUTS) -> dict[str, dict[str, dict | None] | str]:
    """endpoint name -> {hash: receipt or None}, or the text of why that endpoint gave no answer."""
    checked = [checked_target(t) for t in targets]
    if len(hashes) > MAX_SAMPLE:
        raise ValueError(f"{len(hashes)} hashes: at most {MAX_SAMPLE} per reconciliation")
    if not hashes or not checked:
        return {}
    body = _batch(hashes)
    limits = httpx.Limits(max_connections=len(checked), max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=timeouts.for_httpx(), limits=limits, trust_env=False) as http:

        async def one(target: ProbeTarget) -> dict[str, dict | None] | str:
            try:
                async with asyncio.timeout(timeouts.deadline + len(hashes) * 0.01):
                    status, answer = await request(http, "POST", target.url, content=body, headers=JSON_HEADERS,
                                                   max_bytes=MAX_ANSWER_BYTES)
                if status != 200:
                    return f"HTTP {status}"
                return _parse(hashes, answer)
            except ValueError as exc:
                return f"unusable answer: {exc}"
            except Exception as exc:  # noqa: BLE001 - an endpoint's failure is reported, not raised
                return transport_error(exc, timeouts)

        answers = await asyncio.gather(*(one(t) for t in checked))
    return {t.name: a for t, a in zip(checked, answers)}


def _fields(receipt: dict) -> dict[str, Any]:
    return {"status": "included" if int(receipt.get("status", "0x0"), 16) == 1 else "reverted",
            "gas_used": int(receipt["gasUsed"], 16),
            "effective_gas_price": int(receipt["effectiveGasPrice"], 16)}


def reconcile(records: Sequence[Recorded], answers: dict[str, dict[str, dict | None] | str]) -> Reconciliation:
    """Compare each record with the chain's receipts (`fetch_receipts` of its chain's endpoints)."""
    result = Reconciliation(checked=len(records))
    result.unreachable = {name: a for name, a in answers.items() if isinstance(a, str)}
    held = {name: a for name, a in answers.items() if not isinstance(a, str)}
    for r in records:
        found = {name: _fields(a[r.tx_hash]) for name, a in held.items() if a.get(r.tx_hash)}
        if not held:
            result.unverified.append(r.execution_id)
            continue
        if not found:
            result.mismatches.append({"execution_id": r.execution_id, "chain": r.chain, "tx_hash": r.tx_hash,
                                      "field": "receipt", "recorded": r.status, "on_chain": "not found"})
            continue
        distinct = {json.dumps(f, sort_keys=True) for f in found.values()}
        if len(distinct) > 1:
            result.disagreements.append({"execution_id": r.execution_id, "tx_hash": r.tx_hash, "endpoints": found})
        chain_view = next(iter(found.values()))
        wrong = [{"execution_id": r.execution_id, "chain": r.chain, "tx_hash": r.tx_hash, "field": name,
                  "recorded": getattr(r, name), "on_chain": chain_view[name]}
                 for name in COMPARED if getattr(r, name) != chain_view[name]]
        result.mismatches += wrong
        result.confirmed += not wrong
    return result


# ------------------------------------------------------------------ the day's sample, from the database

# A stable sample: the same executions are checked on every re-run of a day (md5 of the id orders them).
SAMPLE = """
SELECT id, chain, '0x' || encode(tx_hash, 'hex'), status, gas_used, effective_gas_price FROM (
  SELECT e.*, row_number() OVER (PARTITION BY e.chain ORDER BY md5(e.id::text)) AS n
    FROM executions e JOIN chains c ON c.chain = e.chain
   WHERE e.submitted_at >= %(lo)s AND e.submitted_at < %(hi)s AND e.status IN ('included', 'reverted')
     AND e.tx_hash IS NOT NULL AND e.gas_used IS NOT NULL AND e.effective_gas_price IS NOT NULL
     AND c.chain_id = %(chain_id)s) s
 WHERE n <= %(n)s ORDER BY id
"""


def sample(conn: psycopg.Connection, chain_id: int, lo: datetime, hi: datetime, n: int) -> list[Recorded]:
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        rows = conn.execute(SAMPLE, {"lo": lo, "hi": hi, "chain_id": chain_id, "n": n}).fetchall()
    return [Recorded(i, c, h, s, int(g), int(p)) for i, c, h, s, g, p in rows]


def reconcile_day(conn: psycopg.Connection, inventory, lo: datetime, hi: datetime, n: int) -> Reconciliation:
    """Each database chain with a chain id the inventory knows: its sample against its endpoints' receipts."""
    ids = dict(conn.execute("SELECT chain, chain_id FROM chains").fetchall())
    by_id = {c.chain_id: name for name, c in inventory.chains.items() if c.chain_id is not None}
    result = Reconciliation()
    active = conn.execute("SELECT DISTINCT chain FROM executions WHERE submitted_at >= %s AND submitted_at < %s "
                          "AND status IN ('included', 'reverted')", (lo, hi)).fetchall()
    for (db_chain,) in active:
        inv_chain = by_id.get(ids.get(db_chain))
        if inv_chain is None:
            result.not_reconciled[db_chain] = (f"no chain with chain_id {ids.get(db_chain)} in the inventory: "
                                               "no endpoint to ask")
            continue
        records = sample(conn, ids[db_chain], lo, hi, n)
        targets = reference_targets(inv_chain, inventory.chains[inv_chain]) + [
            node_target(name, inventory.nodes[name]) for name in inventory.nodes_on_chain(inv_chain)]
        part = reconcile(records, asyncio.run(fetch_receipts(targets, [r.tx_hash for r in records])))
        result.checked += part.checked
        result.confirmed += part.confirmed
        result.mismatches += part.mismatches
        result.disagreements += part.disagreements
        result.unverified += part.unverified
        result.unreachable |= part.unreachable
    return result
