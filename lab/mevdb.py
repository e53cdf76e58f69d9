"""The lab's MEV database: the schema a searcher's operator would keep, and a
deterministic generator that fills it with a realistic day (or days) of bot activity.

    python -m lab.mevdb --dsn "host=127.0.0.1 port=5432 dbname=mev" --executions 1000000 --seed 7 [--day 2026-12-03]
    python -m lab.mevdb --dsn ... --fingerprints     # row counts and content checksums only

What it is for: the daily profit report reads it, and the database backup
runbook dumps it and proves a restore is the same database (`fingerprints`).

Determinism: the same seed, number of executions, day and days give the same
rows, byte for byte, and so the same fingerprints (numpy's PCG64 stream, with
the numpy version uv.lock pins). The generator owns the data tables: it
replaces what they hold; reference data (chains, tokens) is upserted.

Known totals: `generate` also returns, per (UTC day, chain, strategy), the
counts by status and the exact integer sums of every cost line and of the
revenue per token (`KnownTotals`), tallied from the very values it writes.
The profit report is checked against them to the wei.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone

import numpy as np
import psycopg

# Row counts and content checksums: in tasks/, since the database backup proves its restores with them.
from tasks.database import fingerprints

# --------------------------------------------------------------------------- the schema
# Amounts on chain are integers in the token's smallest unit (wei for gas):
# numeric(78,0) holds any uint256, so nothing is rounded through a float.
# Statuses and strategies are text with CHECKs rather than enum types: a new
# strategy is one ALTER of a constraint, and CREATE ... IF NOT EXISTS works.
SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    symbol      text PRIMARY KEY,                   -- priced per asset: USDC on base is USDC
    name        text NOT NULL,
    decimals    smallint NOT NULL CHECK (decimals BETWEEN 0 AND 36)
);
CREATE TABLE IF NOT EXISTS chains (
    chain        text PRIMARY KEY,
    chain_id     integer NOT NULL UNIQUE,
    native_token text NOT NULL REFERENCES tokens    -- what gas is paid in (ETH, POL)
);
CREATE TABLE IF NOT EXISTS token_prices (
    token       text NOT NULL REFERENCES tokens,
    hour        timestamptz NOT NULL,               -- the start of a UTC hour
    usd_price   numeric(30,10) NOT NULL CHECK (usd_price > 0),
    PRIMARY KEY (token, hour),
    CHECK (extract(epoch FROM hour)::bigint % 3600 = 0)
);
CREATE TABLE IF NOT EXISTS opportunities (
    id                  bigint PRIMARY KEY,
    detected_at         timestamptz NOT NULL,
    chain               text NOT NULL REFERENCES chains,
    strategy            text NOT NULL CHECK (strategy IN ('sandwich', 'arbitrage', 'liquidation', 'cross-chain')),
    expected_profit_usd numeric(20,6) NOT NULL      -- what the bot expected to net, after estimated costs
);
CREATE TABLE IF NOT EXISTS executions (
    id                  bigint PRIMARY KEY,
    submitted_at        timestamptz NOT NULL,
    chain               text NOT NULL REFERENCES chains,
    strategy            text NOT NULL CHECK (strategy IN ('sandwich', 'arbitrage', 'liquidation', 'cross-chain')),
    opportunity_id      bigint NOT NULL REFERENCES opportunities,
    tx_hash             bytea CHECK (octet_length(tx_hash) = 32),
    bundle_hash         bytea CHECK (octet_length(bundle_hash) = 32),   -- builder bundles (ethereum)
    status              text NOT NULL CHECK (status IN ('submitted', 'included', 'reverted', 'dropped')),
    block_number        bigint CHECK (block_number > 0),
    gas_used            bigint CHECK (gas_used > 0),
    effective_gas_price numeric(78,0),              -- wei per gas, base fee + priority fee
    base_fee            numeric(78,0),              -- wei per gas, of the including block
    l1_fee              numeric(78,0) NOT NULL DEFAULT 0 CHECK (l1_fee >= 0),  -- OP-stack L1 data fee, wei
    coinbase_transfer   numeric(78,0) NOT NULL DEFAULT 0 CHECK (coinbase_transfer >= 0),  -- to the builder, wei
    flash_loan_fee      numeric(78,0) NOT NULL DEFAULT 0 CHECK (flash_loan_fee >= 0),  -- in revenue_token units
    gross_revenue       numeric(78,0) NOT NULL DEFAULT 0 CHECK (gross_revenue >= 0),   -- in revenue_token units
    revenue_token       text NOT NULL REFERENCES tokens,
    CONSTRAINT a_hash_to_find_it_by CHECK (tx_hash IS NOT NULL OR bundle_hash IS NOT NULL),
    -- Landed (included or reverted) rows are in a block and paid for gas; the others never reached one.
    CONSTRAINT landed_rows_have_block_and_gas CHECK (CASE WHEN status IN ('included', 'reverted')
        THEN block_number IS NOT NULL AND gas_used IS NOT NULL AND base_fee IS NOT NULL
             AND effective_gas_price IS NOT NULL AND effective_gas_price >= base_fee
        ELSE block_number IS NULL AND gas_used IS NULL AND base_fee IS NULL
             AND effective_gas_price IS NULL AND l1_fee = 0 END),
    -- A reverted transaction undoes its own transfers: only gas (and the L1 fee) is spent.
    CONSTRAINT only_included_rows_earn_or_tip CHECK (status = 'included'
        OR (gross_revenue = 0 AND coinbase_transfer = 0 AND flash_loan_fee = 0))
);
-- The report's questions: a time range, by chain, by chain and strategy.
CREATE INDEX IF NOT EXISTS executions_chain_strategy_time ON executions (chain, strategy, submitted_at);
CREATE INDEX IF NOT EXISTS executions_chain_time ON executions (chain, submitted_at);
-- Rows arrive in time order, so a BRIN index serves whole-fleet time ranges for a few pages.
CREATE INDEX IF NOT EXISTS executions_time_brin ON executions USING brin (submitted_at);
CREATE INDEX IF NOT EXISTS executions_opportunity ON executions (opportunity_id);
CREATE INDEX IF NOT EXISTS opportunities_chain_strategy_time ON opportunities (chain, strategy, detected_at);
CREATE INDEX IF NOT EXISTS token_prices_hour ON token_prices (hour);
"""

STRATEGIES = ("arbitrage", "sandwich", "liquidation", "cross-chain")
STATUSES = ("included", "reverted", "dropped", "submitted")
# symbol, name, decimals, price at the start, hourly volatility (log)
TOKENS = (
    ("ETH", "Ether", 18, 3200.0, 0.006), ("WETH", "Wrapped Ether", 18, 3200.0, 0.006),
    ("POL", "Polygon Ecosystem Token", 18, 0.45, 0.01), ("WPOL", "Wrapped POL", 18, 0.45, 0.01),
    ("USDC", "USD Coin", 6, 1.0, 0.0003), ("USDT", "Tether USD", 6, 1.0, 0.0003), ("DAI", "Dai", 18, 1.0, 0.0003),
    ("WBTC", "Wrapped Bitcoin", 8, 95000.0, 0.005),
)
STABLE = {"USDC", "USDT", "DAI"}
REVENUE_TOKENS = ("WETH", "USDC", "USDT", "WBTC", "DAI")  # on polygon WETH revenue is WPOL
REVENUE_SHARE = (0.55, 0.25, 0.10, 0.05, 0.05)


@dataclass(frozen=True)
class Chain:
    name: str
    chain_id: int
    native: str
    share: float  # of the bot's executions
    block_seconds: float
    block_at_2026: int  # block number at 2026-01-01T00:00Z (close to the real chains')
    base_fee_wei: float  # median
    strategy_mix: tuple[float, ...]  # STRATEGIES order; no sandwiches behind a private sequencer
    status_mix: tuple[float, ...]  # included, reverted, dropped


# Ethereum goes through builders: bundles are dropped when outbid, and revert
# protection keeps reverts rare. The L2s take transactions first come first
# served, so losing races show up as reverts that pay gas.
CHAINS = (
    Chain("ethereum", 1, "ETH", 0.30, 12, 24_150_000, 12e9, (0.45, 0.35, 0.12, 0.08), (0.80, 0.02, 0.18)),
    Chain("base", 8453, "ETH", 0.25, 2, 40_500_000, 5e6, (0.60, 0.20, 0.12, 0.08), (0.875, 0.095, 0.03)),
    Chain("polygon", 137, "POL", 0.15, 2, 81_000_000, 35e9, (0.55, 0.25, 0.12, 0.08), (0.875, 0.095, 0.03)),
    Chain("arbitrum", 42161, "ETH", 0.20, 0.25, 416_000_000, 1e7, (0.75, 0.0, 0.15, 0.10), (0.875, 0.095, 0.03)),
    Chain("optimism", 10, "ETH", 0.10, 2, 146_000_000, 1e6, (0.75, 0.0, 0.15, 0.10), (0.875, 0.095, 0.03)),
)
EPOCH_2026 = datetime(2026, 1, 1, tzinfo=timezone.utc)
# Per strategy: median gross revenue (USD) and its spread, median gas, share using a flash loan.
GROSS_USD = {"arbitrage": (12.0, 1.1), "sandwich": (25.0, 1.0), "liquidation": (90.0, 1.4), "cross-chain": (40.0, 0.9)}
GAS_USED = {"arbitrage": 180_000, "sandwich": 320_000, "liquidation": 450_000, "cross-chain": 220_000}
FLASH_LOAN = {"arbitrage": 0.25, "sandwich": 0.0, "liquidation": 0.6, "cross-chain": 0.1}
CHUNK = 50_000  # executions per COPY batch: bounded memory whatever N is
PENDING_SECONDS = 30  # executions this close to the end of the range are still waiting for a block


def create_schema(conn: psycopg.Connection) -> None:
    """Create the tables and indexes if missing and upsert the reference data; safe to run again."""
    with conn.transaction():
        # Two CREATE TABLE IF NOT EXISTS racing can still collide in the catalog.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('lab.mevdb schema'))")
        conn.execute(SCHEMA)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO tokens VALUES (%s, %s, %s) ON CONFLICT (symbol) DO UPDATE "
                            "SET name = excluded.name, decimals = excluded.decimals", [t[:3] for t in TOKENS])
            cur.executemany("INSERT INTO chains VALUES (%s, %s, %s) ON CONFLICT (chain) DO UPDATE "
                            "SET chain_id = excluded.chain_id, native_token = excluded.native_token",
                            [(c.name, c.chain_id, c.native) for c in CHAINS])


# --------------------------------------------------------------------------- the generator
@dataclass
class KnownTotals:
    """What one (UTC day, chain, strategy) holds, in exact integers: the report's expected figures.

    Gas lines are in wei of the chain's native token and count landed rows only (the others have
    no gas); revenue and flash-loan fees are in the revenue token's smallest unit, per token.
    """
    statuses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    base_fee_cost: int = 0  # gas_used * base_fee
    priority_fee_cost: int = 0  # gas_used * (effective_gas_price - base_fee)
    l1_fee: int = 0
    coinbase_transfer: int = 0
    gross_revenue: dict[str, int] = field(default_factory=dict)  # revenue token -> raw units
    flash_loan_fee: dict[str, int] = field(default_factory=dict)


@dataclass
class Generated:
    executions: int
    opportunities: int
    token_prices: int
    seconds: float
    totals: dict[tuple[date, str, str], KnownTotals] = field(default_factory=dict, repr=False)

    @property
    def rows_per_second(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0


def _hex_hashes(rng: np.random.Generator, n: int) -> list[str]:
    # COPY's text format reads `\\x...` as the bytea literal `\x...`.
    h = rng.bytes(32 * n).hex()
    return ["\\\\x" + h[i:i + 64] for i in range(0, 64 * n, 64)]


def _timestamps(start: datetime, micros: np.ndarray) -> list[str]:
    base = np.datetime64(start.replace(tzinfo=None), "us")
    return [s + "Z" for s in np.datetime_as_string(base + micros.astype("timedelta64[us]"), unit="us").tolist()]


def _ints(values: np.ndarray) -> list[str]:
    # Wei amounts pass 2**63: format floats as whole numbers, not through int64.
    return ["%.0f" % v for v in values.tolist()]


def _copy(conn: psycopg.Connection, table: str, columns: str, rows: list[str]) -> None:
    with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        copy.write("\n".join(rows) + "\n")


def generate(conn: psycopg.Connection, executions: int, seed: int, day: date, days: int = 1) -> Generated:
    """Replace the data tables with `executions` executions spread over `days` UTC days ending with `day`."""
    if executions < 0 or days < 1:
        raise ValueError("executions must be >= 0 and days >= 1")
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) - timedelta(days=days - 1)
    span_us = days * 86_400 * 1_000_000
    create_schema(conn)
    with conn.transaction():
        conn.execute("TRUNCATE executions, opportunities, token_prices")
        prices = _token_prices(conn, rng, start, days * 24)
        opp_id = exe_id = 0
        done = 0
        totals: dict[tuple[date, str, str], KnownTotals] = {}
        while done < executions:
            n = min(CHUNK, executions - done)
            # Each chunk covers its own slice of the range, so ids follow time.
            lo, hi = span_us * done // executions, span_us * (done + n) // executions
            opp_id, exe_id = _chunk(conn, rng, start, span_us, lo, hi, n, opp_id, exe_id, prices, totals)
            done += n
    with conn.transaction():  # fresh statistics, so the report's first query plans well
        conn.execute("ANALYZE executions, opportunities, token_prices")
    return Generated(exe_id, opp_id, len(TOKENS) * days * 24, time.monotonic() - started, totals)


def _token_prices(conn, rng: np.random.Generator, start: datetime, hours: int) -> np.ndarray:
    """Hourly USD prices (a random walk per token), written to token_prices; returns [token, hour]."""
    prices = np.empty((len(TOKENS), hours))
    rows = []
    stamps = _timestamps(start, np.arange(hours, dtype=np.int64) * 3_600_000_000)
    for i, (symbol, _, _, p0, vol) in enumerate(TOKENS):
        steps = rng.normal(0.0, vol, hours)
        prices[i] = p0 * np.exp(steps) if symbol in STABLE else p0 * np.exp(np.cumsum(steps))
    prices[1], prices[3] = prices[0], prices[2]  # a wrapped token is its native token
    for i, (symbol, *_rest) in enumerate(TOKENS):
        rows += [f"{symbol}\t{stamp}\t{p:.10f}" for stamp, p in zip(stamps, prices[i].tolist())]
    _copy(conn, "token_prices", "token, hour, usd_price", rows)
    return prices


def _chunk(conn, rng, start, span_us, lo, hi, n, opp_id, exe_id, prices, totals) -> tuple[int, int]:
    tok = {t[0]: i for i, t in enumerate(TOKENS)}
    # Opportunities: a quarter more are detected than executed (the rest did not pay after costs).
    m = n + n // 4
    detected = np.sort(rng.integers(lo, hi, m))
    chain = rng.choice(len(CHAINS), m, p=[c.share for c in CHAINS])
    mix = np.cumsum([c.strategy_mix for c in CHAINS], axis=1)
    strategy = np.minimum((rng.random(m)[:, None] > mix[chain]).sum(axis=1), len(STRATEGIES) - 1)
    on_eth = chain == 0
    median, sigma = (np.array([GROSS_USD[s][k] for s in STRATEGIES]) for k in (0, 1))
    # Ethereum's opportunities are bigger (more liquidity), L2s' smaller.
    gross_est = median[strategy] * np.where(on_eth, 3.0, 0.6) * rng.lognormal(0, sigma[strategy])
    tip_share = np.where(on_eth, rng.uniform(0.2, 0.8, m), 0.0)  # builder bid, decided when detected
    expected = gross_est * (1 - tip_share) - np.where(on_eth, 7.0, 0.02)
    opp_ids = opp_id + 1 + np.arange(m)
    names = [c.name for c in CHAINS]
    _copy(conn, "opportunities", "id, detected_at, chain, strategy, expected_profit_usd", [
        f"{i}\t{t}\t{names[c]}\t{STRATEGIES[s]}\t{e:.6f}" for i, t, c, s, e in
        zip(opp_ids.tolist(), _timestamps(start, detected), chain.tolist(), strategy.tolist(), expected.tolist())])

    pick = np.sort(rng.choice(m, n, replace=False))
    chain, strategy, on_eth = chain[pick], strategy[pick], on_eth[pick]
    submitted = np.minimum(detected[pick] + (rng.lognormal(np.log(150_000), 0.5, n)).astype(np.int64), span_us - 1)
    status_mix = np.cumsum([c.status_mix for c in CHAINS], axis=1)
    status = np.minimum((rng.random(n)[:, None] > status_mix[chain]).sum(axis=1), 2)
    status[submitted >= span_us - PENDING_SECONDS * 1_000_000] = 3  # still pending at the end of the range
    landed, included = status <= 1, status == 0
    hour = np.minimum(submitted // 3_600_000_000, prices.shape[1] - 1)
    eth_usd = prices[tok["ETH"], hour]

    # Gas: reverted transactions stop early and use less of it.
    gas = np.array([GAS_USED[s] for s in STRATEGIES])[strategy] * rng.lognormal(0, 0.3, n)
    gas = np.round(np.where(status == 1, gas * rng.uniform(0.2, 0.7, n), gas))
    base_fee = np.round(np.array([c.base_fee_wei for c in CHAINS])[chain] * rng.lognormal(0, 0.5, n))
    # Priority fee: small on ethereum (the tip goes to coinbase), a gas auction on the L2s, polygon's floor.
    priority = np.select([on_eth, chain == 2], [rng.uniform(0, 2e9, n), 30e9 * rng.lognormal(0, 0.3, n)],
                         base_fee * rng.lognormal(0, 1.0, n))
    eff_price = base_fee + np.round(priority)
    l1_fee = np.where(np.isin(chain, (1, 4)) & landed, np.round(0.002 * rng.lognormal(0, 0.6, n) / eth_usd * 1e18), 0)
    block_seconds = np.array([c.block_seconds for c in CHAINS])[chain]
    since_2026 = (start - EPOCH_2026).total_seconds() + submitted / 1e6
    block = np.array([c.block_at_2026 for c in CHAINS])[chain] + since_2026 // block_seconds + 1 + rng.geometric(0.7, n)

    # Revenue: what landed differs from what was expected; the tip was bid on the expectation,
    # so a worse fill than expected makes an included bundle lose money.
    token = rng.choice(len(REVENUE_TOKENS), n, p=REVENUE_SHARE)
    token_idx = np.array([tok[t] for t in REVENUE_TOKENS])[token]
    token_idx = np.where((chain == 2) & (token == 0), tok["WPOL"], token_idx)
    token_usd, decimals = prices[token_idx, hour], np.array([t[2] for t in TOKENS])[token_idx]
    gross_usd = np.where(included, gross_est[pick] * rng.lognormal(-0.05, 0.35, n), 0.0)
    gross = np.round(gross_usd / token_usd * 10.0 ** decimals)
    coinbase = np.where(included & on_eth, np.round(tip_share[pick] * gross_est[pick] / eth_usd * 1e18), 0)
    flash = rng.random(n) < np.array([FLASH_LOAN[s] for s in STRATEGIES])[strategy]
    flash_fee = np.where(included & flash, np.round(gross * rng.uniform(0.002, 0.03, n)), 0)

    tx_hashes, bundle_hashes = _hex_hashes(rng, n), _hex_hashes(rng, n)
    null = "\\N"
    cols = zip(
        (exe_id + 1 + np.arange(n)).tolist(), _timestamps(start, submitted), chain.tolist(), strategy.tolist(),
        (opp_ids[pick]).tolist(), tx_hashes, bundle_hashes, on_eth.tolist(), status.tolist(), landed.tolist(),
        block.astype(np.int64).tolist(), gas.astype(np.int64).tolist(), _ints(eff_price), _ints(base_fee),
        _ints(l1_fee), _ints(coinbase), _ints(flash_fee), _ints(gross), token_idx.tolist(),
    )
    symbols = [t[0] for t in TOKENS]
    rows = [
        f"{i}\t{t}\t{names[c]}\t{STRATEGIES[s]}\t{o}\t{tx}\t{bh if eth else null}\t{STATUSES[st]}\t"
        + (f"{b}\t{g}\t{ep}\t{bf}\t" if ld else f"{null}\t{null}\t{null}\t{null}\t")
        + f"{l1}\t{cb}\t{ff}\t{gr}\t{symbols[tk]}"
        for i, t, c, s, o, tx, bh, eth, st, ld, b, g, ep, bf, l1, cb, ff, gr, tk in cols
    ]
    _copy(conn, "executions", "id, submitted_at, chain, strategy, opportunity_id, tx_hash, bundle_hash, status, "
          "block_number, gas_used, effective_gas_price, base_fee, l1_fee, coinbase_transfer, flash_loan_fee, "
          "gross_revenue, revenue_token", rows)
    _tally(totals, start, submitted, chain, strategy, status, gas, base_fee, eff_price, l1_fee, coinbase, flash_fee,
           gross, token_idx)
    return opp_id + m, exe_id + n


def _tally(totals, start, submitted, chain, strategy, status, gas, base_fee, eff_price, l1_fee, coinbase, flash_fee,
           gross, token_idx) -> None:
    """Add one chunk's rows to `totals`, from the arrays just written, in Python integers.

    The float arrays hold whole numbers (rounded), which is what COPY wrote ("%.0f"): int() of
    each is the stored value exactly, and Python's integers do not overflow where int64 would.
    """
    first = start.date()
    days = (submitted // 86_400_000_000).tolist()
    for d, c, s, st, g, bf, ep, l1, cb, ff, gr, tk in zip(
            days, chain.tolist(), strategy.tolist(), status.tolist(), gas.tolist(), base_fee.tolist(),
            eff_price.tolist(), l1_fee.tolist(), coinbase.tolist(), flash_fee.tolist(), gross.tolist(),
            token_idx.tolist()):
        t = totals.setdefault((first + timedelta(days=d), CHAINS[c].name, STRATEGIES[s]), KnownTotals())
        t.statuses[STATUSES[st]] += 1
        if st <= 1:  # landed: the only rows written with gas
            g, bf = int(g), int(bf)
            t.base_fee_cost += g * bf
            t.priority_fee_cost += g * (int(ep) - bf)
        t.l1_fee += int(l1)
        t.coinbase_transfer += int(cb)
        symbol = TOKENS[tk][0]
        t.gross_revenue[symbol] = t.gross_revenue.get(symbol, 0) + int(gr)
        t.flash_loan_fee[symbol] = t.flash_loan_fee.get(symbol, 0) + int(ff)


# --------------------------------------------------------------------------- the command line
def main(argv: list[str] | None = None) -> int:
    yesterday = datetime.now(timezone.utc).date() - timedelta(days=1)
    p = argparse.ArgumentParser(prog="python -m lab.mevdb", description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", required=True, help="libpq connection string or URL of the database to fill")
    p.add_argument("--executions", type=int, default=10_000, help="executions to generate (default 10000)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--day", type=date.fromisoformat, default=yesterday,
                   help="last UTC day to fill, YYYY-MM-DD (default: yesterday); part of what the data depends on")
    p.add_argument("--days", type=int, default=1, help="consecutive days ending with --day (default 1)")
    p.add_argument("--fingerprints", action="store_true", help="only print row counts and checksums")
    args = p.parse_args(argv)
    if args.executions < 0 or args.days < 1:
        p.error("--executions must be >= 0 and --days >= 1")
    with psycopg.connect(args.dsn, connect_timeout=10) as conn:
        result: dict = {}
        if not args.fingerprints:
            g = generate(conn, args.executions, args.seed, args.day, args.days)
            result = {"day": args.day.isoformat(), "days": args.days, "seed": args.seed, "executions": g.executions,
                      "opportunities": g.opportunities, "token_prices": g.token_prices, "seconds": g.seconds,
                      "rows_per_second": round(g.rows_per_second)}
        result["tables"] = {t: asdict(f) for t, f in fingerprints(conn).items()}
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
