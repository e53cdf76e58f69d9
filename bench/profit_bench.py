"""The daily report's profit figures over a day of 100k and 1M executions: aggregated in PostgreSQL
(tasks/profit.py `day_profit`) against fetching the day's rows into pandas and aggregating there.

    uv run --frozen python bench/profit_bench.py [--sizes 100000,1000000]

Starts its own throwaway PostgreSQL 15 (tests/postgres.py; needs root), fills one database per size with
lab/mevdb.py's generator (the day's executions), and times in a fresh process each (a flow run's, so peak RSS is the side's own):

  ours      day_profit(conn, day): every figure a GROUP BY in the database; the rows returned are
            bounded by chains x strategies x tokens x hours;
  baseline  SELECT the day's executions joined with their prices into pandas (read_sql over the
            same connection), then groupby(chain, strategy) for the same wei and USD sums.

Prints wall time, rows fetched and peak RSS (VmHWM) per side and size, and ours/baseline; checks
that both sides agree on every (chain, strategy)'s wei sums and net USD (to 1e-6 USD).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAY = date(2026, 12, 3)
BASELINE_SQL = """
SELECT e.chain, e.strategy, e.status, e.gas_used, e.base_fee, e.effective_gas_price, e.l1_fee,
       e.coinbase_transfer, e.flash_loan_fee, e.gross_revenue,
       np.usd_price / power(10::numeric, nt.decimals) AS native_unit_usd,
       rp.usd_price / power(10::numeric, rt.decimals) AS revenue_unit_usd
  FROM executions e JOIN chains c ON c.chain = e.chain
  JOIN tokens nt ON nt.symbol = c.native_token JOIN tokens rt ON rt.symbol = e.revenue_token
  JOIN token_prices np ON np.token = c.native_token AND np.hour = date_trunc('hour', e.submitted_at)
  JOIN token_prices rp ON rp.token = e.revenue_token AND rp.hour = date_trunc('hour', e.submitted_at)
 WHERE e.submitted_at >= %(lo)s AND e.submitted_at < %(hi)s
"""


def _peak_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _side(side: str, dsn: str, pipe) -> None:
    """One timed aggregation in this fresh process; sends back time, rows fetched, peak RSS and the figures."""
    from datetime import datetime, timedelta, timezone

    import pandas as pd
    import psycopg

    from tasks.profit import day_profit

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")
        start_rss = _peak_mib()
        t0 = time.monotonic()
        if side == "ours":
            p = day_profit(conn, DAY)
            rows = len(p.by_strategy) + len(p.hourly) + len(p.revenue_tokens) + len(p.comparison)
            figures = {(r.chain, r.strategy): (int(r.base_fee_wei), int(r.builder_tip_wei), float(r.net_usd))
                       for r in p.by_strategy.itertuples()}
        else:
            lo = datetime(DAY.year, DAY.month, DAY.day, tzinfo=timezone.utc)
            with conn.cursor() as cur:
                cur.execute("SET TimeZone = 'UTC'")
                cur.execute(BASELINE_SQL, {"lo": lo, "hi": lo + timedelta(days=1)})
                df = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
            rows = len(df)
            landed = df["status"].isin(["included", "reverted"])
            # Exact, as the database's numeric: Python ints and Decimals (NULL gas of unlanded rows as 0).
            gas = df["gas_used"].map(lambda v: 0 if pd.isna(v) else int(v)).astype(object)
            df["base_fee_wei"] = (gas * df["base_fee"].fillna(0)).where(landed, 0)
            df["builder_tip_wei"] = df["coinbase_transfer"]
            cost_native = (gas * df["effective_gas_price"].fillna(0)).where(landed, 0) + df["l1_fee"] + df["coinbase_transfer"]
            df["net_usd"] = (df["gross_revenue"] - df["flash_loan_fee"]) * df["revenue_unit_usd"] \
                - cost_native * df["native_unit_usd"]
            g = df.groupby(["chain", "strategy"])[["base_fee_wei", "builder_tip_wei", "net_usd"]].sum()
            figures = {k: (int(v.base_fee_wei), int(v.builder_tip_wei), float(v.net_usd)) for k, v in g.iterrows()}
        elapsed = time.monotonic() - t0
    pipe.send({"seconds": elapsed, "rows": rows, "peak_mib": _peak_mib(), "start_mib": start_rss, "figures": figures})


def run_side(side: str, dsn: str) -> dict:
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_side, args=(side, dsn, theirs))
    proc.start()
    result = ours.recv()
    proc.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="executions on the day, comma separated")
    args = parser.parse_args()
    import psycopg

    from lab import mevdb
    from tests.postgres import start_server, stop_server

    server = start_server()
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            dsn = server.dsn(server.create_database())
            t0 = time.monotonic()
            with psycopg.connect(dsn, autocommit=True) as conn:
                mevdb.generate(conn, size, seed=7, day=DAY)
            print(f"\n{size:,} executions on the day, generated in {time.monotonic() - t0:.0f}s")
            got = {side: run_side(side, dsn) for side in ("ours", "baseline")}
            o, b = got["ours"], got["baseline"]
            for side, r in got.items():
                print(f"  {side:8s} {r['seconds']:6.2f}s  rows fetched {r['rows']:>9,}  peak RSS {r['peak_mib']:6.0f} MiB "
                      f"(+{r['peak_mib'] - r['start_mib']:.0f} over the process before the query)")
            agree = o["figures"].keys() == b["figures"].keys() and all(
                o["figures"][k][:2] == b["figures"][k][:2] and abs(o["figures"][k][2] - b["figures"][k][2]) < 1e-6
                for k in o["figures"])
            print(f"  baseline time / ours: {b['seconds'] / o['seconds']:.1f}x; peak RSS ours {o['peak_mib']:.0f} MiB, "
                  f"baseline {b['peak_mib']:.0f} MiB; figures agree: {agree}")
            if not agree:
                return 1
    finally:
        stop_server(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
