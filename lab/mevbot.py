"""The lab's MEV bot: real transactions on a lab chain, recorded in the MEV database as a bot records them.

    python -m lab.mevbot --dsn "host=... dbname=mev user=... password=..." --rpc http://127.0.0.1:8545 \
        --chain lab-eth --chain-id 31337 --executions 12 --seed 3 --mismatches 3

Why it exists: the daily report reconciles the bot's records with the
chain's receipts, so receipts must exist. Each execution is one
transaction from one of anvil's unlocked dev accounts, sent to the chain's
reference node (the lab's stand-in for the chain tip; the fleet's
followers mine empty blocks and do not carry transactions):

- a Flashbots-style coinbase transfer (value to the block's miner, the
  builder tip) -> included, its gross revenue recorded in WETH;
- one in four a call to a contract that always reverts -> reverted, gas
  paid, nothing earned, as a lost race is.

Transactions are legacy-priced (`gasPrice`), so the receipt's effective
gas price is the same on every node. The bot reads each receipt and writes
the execution from it, then writes `mismatches` of them wrong on purpose
(status, gas used, effective gas price, or a hash that was never sent,
in turn) and returns exactly which, so a test knows what reconciliation
must find and that it finds nothing else.

Rows go under ids from BOT_IDS up, next to the generator's (which start at
1), into chain `--chain` (added to the chains table with its chain id), at
the time they were sent; hourly ETH/WETH prices for those hours are added
if missing (the lab has no price feed; the generator's fill only its days).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import httpx
import psycopg

BOT_IDS = 9_000_000_000_000  # above anything the generator writes
GAS_PRICE_WEI = 3_000_000_000  # above anvil's base fee, which starts at 1 gwei and only falls on empty blocks
ETH_USD = "3200.0000000000"
# Init code that deploys `PUSH1 0 PUSH1 0 REVERT`: every call to it reverts.
REVERTER_INITCODE = "0x600580600b6000396000f360006000fd"
STRATEGIES = ("arbitrage", "sandwich", "liquidation")
MISMATCH_KINDS = ("status", "gas_used", "effective_gas_price", "receipt")


@dataclass
class BotRun:
    chain: str
    executions: list[dict] = field(default_factory=list)  # as recorded in the database
    seeded: list[dict] = field(default_factory=list)  # execution_id, field: what reconciliation must find


def _rpc(url: str, method: str, params: list | None = None, timeout: float = 5.0):
    answer = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []},
                        timeout=timeout, trust_env=False).json()
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def _receipt(url: str, tx_hash: str, wait_s: float = 15.0) -> dict:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if receipt := _rpc(url, "eth_getTransactionReceipt", [tx_hash]):
            return receipt
        time.sleep(0.2)
    raise RuntimeError(f"{tx_hash} was not mined within {wait_s:.0f}s: is the reference node mining?")


def _send(url: str, sender: str, **tx) -> str:
    return _rpc(url, "eth_sendTransaction", [{"from": sender, "gasPrice": hex(GAS_PRICE_WEI), **tx}])


def _prepare(conn: psycopg.Connection, chain: str, chain_id: int, hours: list[datetime]) -> None:
    conn.execute("INSERT INTO chains VALUES (%s, %s, 'ETH') ON CONFLICT (chain) DO NOTHING", (chain, chain_id))
    for hour in hours:
        for token in ("ETH", "WETH"):
            conn.execute("INSERT INTO token_prices VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", (token, hour, ETH_USD))


def run(conn: psycopg.Connection, rpc_url: str, chain: str, chain_id: int, executions: int, seed: int,
        mismatches: int, big_loss: bool = False) -> BotRun:
    """Send `executions` transactions, record them, make `mismatches` of the records wrong; what was done.

    `big_loss`: the first execution tips the builder 1.5 ETH for 0.1 ETH of revenue, a ~$4,500 loss
    (an over-bid bundle): its hour is under the operators' $1k-10k loss threshold (P2)."""
    if not 0 <= mismatches <= executions:
        raise ValueError("mismatches must be between 0 and executions")
    rng = random.Random(seed)
    accounts = _rpc(rpc_url, "eth_accounts")
    sender = accounts[-1]  # the last dev account: nothing else in the lab sends from it
    reverter = _receipt(rpc_url, _send(rpc_url, sender, data=REVERTER_INITCODE, gas=hex(100_000)))["contractAddress"]
    with conn.transaction():
        start = conn.execute("SELECT coalesce(max(id), %s) FROM executions WHERE id >= %s",
                             (BOT_IDS, BOT_IDS)).fetchone()[0]
        opp_start = conn.execute("SELECT coalesce(max(id), %s) FROM opportunities WHERE id >= %s",
                                 (BOT_IDS, BOT_IDS)).fetchone()[0]
    miner = _rpc(rpc_url, "eth_getBlockByNumber", ["latest", False])["miner"]
    sent = []  # all sent first, then their receipts: one block time in all, not one per transaction
    for i in range(executions):
        tip = 15 * 10**17 if big_loss and i == 0 else rng.randrange(10**14, 10**16)
        tx = dict(to=reverter, gas=hex(60_000)) if i % 4 == 3 else dict(to=miner, value=hex(tip), gas=hex(21_000))
        sent_at = datetime.now(timezone.utc)
        sent.append((i, tip, sent_at, _send(rpc_url, sender, **tx)))
    done = BotRun(chain)
    for i, tip, sent_at, tx_hash in sent:
        receipt = _receipt(rpc_url, tx_hash)
        block = _rpc(rpc_url, "eth_getBlockByNumber", [receipt["blockNumber"], False])
        included = int(receipt["status"], 16) == 1
        done.executions.append({
            "id": start + 1 + i, "opportunity_id": opp_start + 1 + i, "submitted_at": sent_at,
            "strategy": STRATEGIES[i % len(STRATEGIES)],
            "tx_hash": receipt["transactionHash"], "status": "included" if included else "reverted",
            "block_number": int(receipt["blockNumber"], 16), "gas_used": int(receipt["gasUsed"], 16),
            "effective_gas_price": int(receipt["effectiveGasPrice"], 16),
            "base_fee": int(block.get("baseFeePerGas", "0x0"), 16),
            "coinbase_transfer": tip if included else 0,
            # WETH wei: the trade paid its tip and more, but for the over-bid one
            "gross_revenue": (tip // 15 if big_loss and i == 0 else tip * (2 + i % 3)) if included else 0,
        })
    # Wrong on purpose, one kind after another; only landed-and-included rows can be "included" wrongly.
    for n, row in enumerate(rng.sample(done.executions[1 if big_loss else 0:], mismatches)):
        kind = MISMATCH_KINDS[n % len(MISMATCH_KINDS)]
        if kind == "status":
            row["status"] = "reverted" if row["status"] == "included" else "included"
            row["coinbase_transfer"] = row["gross_revenue"] = 0 if row["status"] == "reverted" else row["coinbase_transfer"]
        elif kind == "gas_used":
            row["gas_used"] += 1_000
        elif kind == "effective_gas_price":
            row["effective_gas_price"] += 1
        else:
            row["tx_hash"] = "0x" + rng.randbytes(32).hex()  # a hash the chain never saw
        done.seeded.append({"execution_id": row["id"], "field": kind})
    hours = sorted({r["submitted_at"].replace(minute=0, second=0, microsecond=0) for r in done.executions})
    with conn.transaction():
        _prepare(conn, chain, chain_id, hours)
        for r in done.executions:
            conn.execute("INSERT INTO opportunities VALUES (%s, %s, %s, %s, %s)",
                         (r["opportunity_id"], r["submitted_at"], chain, r["strategy"], 1))
            conn.execute(
                "INSERT INTO executions (id, submitted_at, chain, strategy, opportunity_id, tx_hash, status, "
                "block_number, gas_used, effective_gas_price, base_fee, coinbase_transfer, gross_revenue, "
                "revenue_token) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'WETH')",
                (r["id"], r["submitted_at"], chain, r["strategy"], r["opportunity_id"], bytes.fromhex(r["tx_hash"][2:]),
                 r["status"], r["block_number"], r["gas_used"], r["effective_gas_price"], r["base_fee"],
                 r["coinbase_transfer"], r["gross_revenue"]))
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.mevbot", description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", required=True, help="libpq connection string of the MEV database")
    p.add_argument("--rpc", required=True, help="JSON-RPC URL of the chain's reference node")
    p.add_argument("--chain", required=True, help="chain name the rows are recorded under")
    p.add_argument("--chain-id", type=int, required=True)
    p.add_argument("--executions", type=int, default=12)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mismatches", type=int, default=0)
    p.add_argument("--big-loss", action="store_true", help="the first execution loses ~$4,500 (a P2 hour)")
    args = p.parse_args(argv)
    with psycopg.connect(args.dsn, connect_timeout=10) as conn:
        done = run(conn, args.rpc, args.chain, args.chain_id, args.executions, args.seed, args.mismatches,
                   args.big_loss)
    json.dump(asdict(done), sys.stdout, indent=1, default=str)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
