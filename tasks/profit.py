"""The daily profit report of an MEV searcher, read from its database (lab/mevdb.py's schema).

    day_profit(conn, day)          one UTC day: by chain and strategy, totals, hourly, top/worst,
                                   the previous day and 7-day average, hourly alerts, bad data
    days_profit(conn, first, last) a backfill: one `DayProfit` per day, day by day

Where the work is done: in PostgreSQL. The day's executions are summed per (chain, strategy,
revenue token, hour) in one hash aggregate, integers only; prices, USD and every table of the
report (GROUPING SETS) are computed over those few groups. What comes back is bounded by chains x
strategies x tokens x hours, never by the number of executions; only the top/worst N and the first
N bad rows of each kind are fetched row by row. USD values use the database's own hourly prices
(token_prices), never the network.

Definitions (after flashbots mev-inspect-py and Brontes: gas paid = gas_used x effective gas price
+ coinbase transfer), per execution:
- base fee = gas_used x base_fee; priority fee = gas_used x (effective_gas_price - base_fee), for
  landed rows (included or reverted) only; l1 fee (OP-stack data fee) and builder tip (coinbase
  transfer) as stored. These are in wei of the chain's native token (chains.native_token).
- gross revenue and flash-loan fee are in the revenue token's smallest unit.
- USD: an amount x the token's price at the hour the execution was submitted
  (date_trunc('hour', submitted_at), UTC) / 10^decimals; native-token lines at the native token's
  price, revenue and flash-loan fee at the revenue token's. All of it in SQL numeric, exactly: a
  price times 10^-decimals is a product, not a rounded division. Rounding is for display only.
- cost = base fee + priority fee + l1 fee + builder tip + flash-loan fee; net = gross - cost;
  margin = net / gross (None when gross is 0); net per hour = net / 24.
- executions = the day's rows (bad ones apart); pending = status 'submitted' (not in a block yet);
  success rate = included / (included + reverted + dropped); inclusion rate = (included +
  reverted) / (included + reverted + dropped); pending rows are in neither. None when undefined.
- the day is [00:00, next 00:00) UTC on submitted_at. The comparison is with the previous day and
  with the average of the 7 days before the day (a day without executions counts as zeros).
- alerts, on the fleet's net USD of each hour: a loss over $10k is P1, a loss of $1k-10k P2 (both
  ends), any other hour under $1,000 P3 (an hour without executions included).

Bad data is reported, not hidden: operators' databases may lack the schema's CHECK and foreign-key
constraints, so every row is classified (BAD_KINDS); a row of any bad kind is left out of every
figure (counts and money) and counted and listed (up to `listed` rows a kind) instead. Primary keys
are assumed (one chain row per chain, one price per token and hour). A day without a single
execution says so (`empty`) and raises no hourly alerts.

Reading: one REPEATABLE READ, READ ONLY transaction (every query sees the same snapshot while the
bot keeps writing; the report cannot write) with a statement_timeout, so a report never holds the
database up. The connection must not be inside a transaction already.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import NamedTuple

import pandas as pd
import psycopg
from psycopg.rows import dict_row

# Operators' thresholds on the fleet's net USD per hour.
P3_BELOW_USD = Decimal(1000)  # hourly profit under $1,000
P2_LOSS_USD = Decimal(1000)  # a loss of $1k-10k in an hour
P1_LOSS_USD = Decimal(10_000)  # a loss over $10k in an hour
COMPARED_DAYS = 7
TOTAL = "all"  # the chain column of the fleet's rows in `comparison`

COUNTS = ("executions", "included", "reverted", "dropped", "pending")
RATES = ("success_rate", "inclusion_rate")
WEI = ("base_fee_wei", "priority_fee_wei", "l1_fee_wei", "builder_tip_wei")
RAW = ("gross_revenue", "flash_loan_fee")  # in the revenue token's smallest unit
USD_LINES = ("base_fee_usd", "priority_fee_usd", "l1_fee_usd", "builder_tip_usd", "flash_loan_fee_usd")
USD = (*USD_LINES, "cost_usd", "gross_usd", "net_usd")
FIGURES = (*COUNTS, *RATES, *WEI, *USD, "margin", "net_usd_per_hour")
COMPARED = ("executions", "included", "reverted", "dropped", "gross_usd", "cost_usd", "net_usd")

# What makes a row bad. Each is wrapped in coalesce(..., false): a comparison with a NULL must
# neither let a row through nor hide it. The row's own values, over `rows` below:
ROW_KINDS = {
    "unknown_status": "status NOT IN ('submitted', 'included', 'reverted', 'dropped')",
    "gas_used_not_positive": "gas_used <= 0 OR (landed AND gas_used IS NULL)",
    "gas_price_below_base_fee": "effective_gas_price < base_fee"
                                " OR (landed AND (effective_gas_price IS NULL OR base_fee IS NULL))",
    "negative_amount": "least(base_fee, effective_gas_price, l1_fee, coinbase_transfer, flash_loan_fee,"
                       " gross_revenue) < 0",
}
# ...and what it refers to, the same for every row of a (chain, revenue token, hour): `c` its chain
# row, `np` and `rp` the native and revenue token's price rows (> 0, and the token in `tokens`).
GROUP_KINDS = {
    "unknown_chain": "c.chain IS NULL",
    "missing_price": "c.chain IS NOT NULL AND (np.unit_usd IS NULL OR rp.unit_usd IS NULL)",
}
BAD_KINDS = (*ROW_KINDS, *GROUP_KINDS)
_IS = {kind: f"coalesce(({condition}), false)" for kind, condition in {**ROW_KINDS, **GROUP_KINDS}.items()}

# Every execution of [lo, hi) with its wei lines and whether its own values are bad, and the prices
# of the range per smallest unit of each token (price x 10^-decimals, an exact product). No join
# per row here: a chain and its prices are looked up per group (FINE), not per execution.
ROWS = f"""
WITH prices AS (
  SELECT p.token, p.hour, p.usd_price * ('1e-' || t.decimals)::numeric AS unit_usd
    FROM token_prices p JOIN tokens t ON t.symbol = p.token
   WHERE p.hour >= %(lo)s AND p.hour < %(hi)s AND p.usd_price > 0 AND t.decimals >= 0
), rows AS (
  SELECT r.*, {" OR ".join(_IS[k] for k in ROW_KINDS)} AS row_bad,
         CASE WHEN landed THEN gas_used * base_fee ELSE 0 END AS base_fee_wei,
         CASE WHEN landed THEN gas_used * (effective_gas_price - base_fee) ELSE 0 END AS priority_fee_wei,
         l1_fee AS l1_fee_wei, coinbase_transfer AS builder_tip_wei
    FROM (SELECT e.*, date_trunc('hour', e.submitted_at) AS hour, e.status IN ('included', 'reverted') AS landed
            FROM executions e WHERE e.submitted_at >= %(lo)s AND e.submitted_at < %(hi)s) r
)"""
# A row's (or a group's) chain and prices; LEFT joins, so that the bad ones are there to be seen.
_LOOKUP = """
LEFT JOIN chains c ON c.chain = s.chain
LEFT JOIN prices np ON np.token = c.native_token AND np.hour = s.hour
LEFT JOIN prices rp ON rp.token = s.revenue_token AND rp.hour = s.hour"""


def _priced(source: str) -> str:
    """`source` (rows or groups of one chain, revenue token and hour) with its USD lines and net,
    leaving out an unknown chain or a missing price. Each has one price per token, so
    sum(amount) x price is sum(amount x price), exactly."""
    return f"""
SELECT s.*, c.native_token,
       s.base_fee_wei * np.unit_usd AS base_fee_usd, s.priority_fee_wei * np.unit_usd AS priority_fee_usd,
       s.l1_fee_wei * np.unit_usd AS l1_fee_usd, s.builder_tip_wei * np.unit_usd AS builder_tip_usd,
       s.flash_loan_fee * rp.unit_usd AS flash_loan_fee_usd, s.gross_revenue * rp.unit_usd AS gross_usd,
       s.gross_revenue * rp.unit_usd - ({" + ".join(f"s.{c}" for c in WEI)}) * np.unit_usd
         - s.flash_loan_fee * rp.unit_usd AS net_usd
  FROM ({source}) s {_LOOKUP}
 WHERE NOT ({" OR ".join(_IS[k] for k in GROUP_KINDS)})"""


# The good rows summed per (chain, strategy, revenue token, hour): the only work per row is integer
# sums in one hash aggregate, and the rest (prices, USD, every table) is done over these few groups.
_STATUS_COUNTS = {"included": "included", "reverted": "reverted", "dropped": "dropped", "pending": "submitted"}
_GROUPS = f"""
  SELECT chain, strategy, revenue_token, hour, count(*) AS executions,
         {", ".join(f"count(*) FILTER (WHERE status = '{s}') AS {c}" for c, s in _STATUS_COUNTS.items())},
         {", ".join(f"sum({c}) AS {c}" for c in (*WEI, *RAW))}
    FROM rows WHERE NOT row_bad GROUP BY chain, strategy, revenue_token, hour"""
FINE = ROWS + f"\n, priced AS ({_priced(_GROUPS)})"

# The day's tables, each one grouping set of a single query (GROUPING() tells them apart).
KEYS = ("chain", "native_token", "strategy", "revenue_token", "hour")
SETS = {
    "by_strategy": ("chain", "native_token", "strategy"),
    "by_chain": ("chain", "native_token"),
    "total": (),
    "by_native_token": ("native_token",),
    "revenue_tokens": ("chain", "native_token", "strategy", "revenue_token"),
    "hourly": ("hour", "chain"),
    "hourly_total": ("hour",),
}
AGGREGATE = FINE + f"""
, grouped AS (
  SELECT GROUPING({", ".join(KEYS)}) AS grouping_id, {", ".join(KEYS)},
         {", ".join(f"coalesce(sum({c}), 0) AS {c}" for c in (*COUNTS, *WEI, *RAW, *USD_LINES, "gross_usd", "net_usd"))}
    FROM priced
   GROUP BY GROUPING SETS ({", ".join("(" + ", ".join(keys) + ")" for keys in SETS.values())})
)
SELECT g.*, {" + ".join(USD_LINES)} AS cost_usd, net_usd / NULLIF(gross_usd, 0) AS margin,
       net_usd / 24 AS net_usd_per_hour, included / NULLIF(included + reverted + dropped, 0) AS success_rate,
       (included + reverted) / NULLIF(included + reverted + dropped, 0) AS inclusion_rate
  FROM grouped g
"""

# The best or worst executions: the one per-row USD computation, a top-N sort that keeps N rows.
EXTREMES = ROWS + f"""
SELECT id, chain, strategy, status, '0x' || encode(coalesce(tx_hash, bundle_hash), 'hex') AS hash, net_usd
  FROM ({_priced("SELECT * FROM rows WHERE NOT row_bad")}) p ORDER BY net_usd {{order}}, id LIMIT %(n)s
"""

BAD = ROWS + f"""
, bad AS (
  SELECT k.kind, count(*) OVER (PARTITION BY k.kind) AS of_kind,
         row_number() OVER (PARTITION BY k.kind ORDER BY s.id) AS n,
         s.id, s.submitted_at, s.chain, s.strategy, s.status, s.revenue_token
    FROM rows s {_LOOKUP}
    CROSS JOIN LATERAL unnest(array_remove(ARRAY[{", ".join(f"CASE WHEN {c} THEN '{k}' END" for k, c in _IS.items())}],
                                          NULL)) AS k(kind)
)
SELECT kind, of_kind, id, submitted_at, chain, strategy, status, revenue_token
  FROM bad WHERE n <= %(listed)s ORDER BY kind, id
"""
BAD_COLUMNS = ("kind", "id", "submitted_at", "chain", "strategy", "status", "revenue_token")

# The previous day's and the 7-day average's figures, per chain and for the fleet, in one query
# (days without executions count, as zeros, in the average).
PERIODS = ("previous_day", f"average_{COMPARED_DAYS}_days")
_COMPARED_SQL = {**{c: c for c in COMPARED}, "cost_usd": "gross_usd - net_usd"}
COMPARISON = FINE + f"""
SELECT GROUPING(chain) = 1 AS fleet, chain,
       {", ".join(f"coalesce(sum({e}) FILTER (WHERE hour >= %(previous)s), 0) AS {PERIODS[0]}_{m}, "
                  f"coalesce(sum({e}), 0) / {COMPARED_DAYS} AS {PERIODS[1]}_{m}" for m, e in _COMPARED_SQL.items())}
  FROM priced GROUP BY GROUPING SETS ((chain), ())
"""


class HourAlert(NamedTuple):
    hour: datetime
    net_usd: Decimal
    severity: str  # "P1", "P2" or "P3"


@dataclass(frozen=True)
class DayProfit:
    day: date
    empty: bool  # not a single execution (good or bad) was submitted that day
    by_strategy: pd.DataFrame  # chain, strategy, native_token, FIGURES
    by_chain: pd.DataFrame  # chain, native_token, FIGURES
    total: pd.Series  # the fleet: COUNTS, RATES, USD, margin, net_usd_per_hour (wei of ETH and POL do not add)
    by_native_token: pd.DataFrame  # native_token, WEI: the fleet's gas lines, in wei of each native token
    revenue_tokens: pd.DataFrame  # chain, strategy, revenue_token, gross_revenue, flash_loan_fee (raw units), *_usd
    hourly: pd.DataFrame  # hour, chain, gross_usd, cost_usd, net_usd: 24 x every chain, hours without rows at 0
    top: pd.DataFrame  # id, chain, strategy, status, hash (0x hex), net_usd: the best executions by net USD
    worst: pd.DataFrame  # the same columns: the worst
    comparison: pd.DataFrame  # chain (TOTAL for the fleet), period (PERIODS), COMPARED (Decimals: averages)
    alerts: list[HourAlert]  # the day's hours under the operators' thresholds, in hour order
    bad_counts: dict[str, int]  # every kind of BAD_KINDS -> rows of it (a row can be of several kinds)
    bad_rows: pd.DataFrame  # BAD_COLUMNS: up to `listed` rows of each kind, by id


def severity(net_usd: Decimal) -> str | None:
    """The operators' alert for an hour's fleet net profit: P1, P2, P3 or None (a good hour)."""
    if -net_usd > P1_LOSS_USD:
        return "P1"
    if -net_usd >= P2_LOSS_USD:
        return "P2"
    if net_usd < P3_BELOW_USD:
        return "P3"
    return None


def day_profit(conn: psycopg.Connection, day: date, top: int = 5, listed: int = 20,
               timeout_s: float = 300) -> DayProfit:
    """The profit report of the UTC day `day` (see the module docstring for every definition)."""
    lo = datetime.combine(day, time(0), tzinfo=timezone.utc)
    hi = lo + timedelta(days=1)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # TimeZone: date_trunc('hour') of a timestamptz is taken in the session's zone, and a +05:30 is
        # not UTC hours. work_mem: a hash aggregate holds ~1 kB per group, and a week has ~17k groups.
        cur.execute("SELECT set_config('statement_timeout', %s, true), set_config('TimeZone', 'UTC', true), "
                    "set_config('work_mem', '64MB', true)", (str(int(timeout_s * 1000)),))
        span = {"lo": lo, "hi": hi}
        groups = _by_set(cur.execute(AGGREGATE, span).fetchall())
        chains = [r["chain"] for r in cur.execute("SELECT chain FROM chains ORDER BY chain").fetchall()]
        best = cur.execute(EXTREMES.format(order="DESC"), {**span, "n": top}).fetchall()
        worst = cur.execute(EXTREMES.format(order="ASC"), {**span, "n": top}).fetchall()
        bad = cur.execute(BAD, {**span, "listed": listed}).fetchall()
        before = cur.execute(COMPARISON, {"lo": lo - timedelta(days=COMPARED_DAYS), "hi": lo,
                                          "previous": lo - timedelta(days=1)}).fetchall()
    total = groups["total"][0]
    bad_counts = dict.fromkeys(BAD_KINDS, 0) | {r["kind"]: r["of_kind"] for r in bad}
    empty = total["executions"] == 0 and not any(bad_counts.values())
    hourly_total = {r["hour"]: r["net_usd"] for r in groups["hourly_total"]}
    hours = [lo + timedelta(hours=h) for h in range(24)]
    extremes = ("id", "chain", "strategy", "status", "hash", "net_usd")
    return DayProfit(
        day=day,
        empty=empty,
        by_strategy=_frame(groups["by_strategy"], ("chain", "strategy"), ("native_token", *FIGURES)),
        by_chain=_frame(groups["by_chain"], ("chain",), ("native_token", *FIGURES)),
        total=pd.Series({k: _value(k, total[k]) for k in (*COUNTS, *RATES, *USD, "margin", "net_usd_per_hour")}),
        by_native_token=_frame(groups["by_native_token"], ("native_token",), WEI),
        revenue_tokens=_frame(groups["revenue_tokens"], ("chain", "strategy", "revenue_token"),
                              ("gross_revenue", "flash_loan_fee", "gross_usd", "flash_loan_fee_usd")),
        hourly=_hourly(groups["hourly"], hours, chains),
        top=pd.DataFrame(best, columns=list(extremes)),
        worst=pd.DataFrame(worst, columns=list(extremes)),
        comparison=_comparison(before),
        alerts=[] if empty else [HourAlert(h, net, s) for h in hours
                                 if (s := severity(net := hourly_total.get(h, Decimal(0))))],
        bad_counts=bad_counts,
        bad_rows=pd.DataFrame(bad, columns=list(BAD_COLUMNS)),
    )


def days_profit(conn: psycopg.Connection, first: date, last: date, top: int = 5, listed: int = 20,
                timeout_s: float = 300) -> list[DayProfit]:
    """A backfill: the report of every day from `first` to `last` inclusive, each on its own (`day_profit`)."""
    days = range((last - first).days + 1)
    return [day_profit(conn, first + timedelta(days=d), top, listed, timeout_s) for d in days]


def _mask(keys: tuple[str, ...]) -> int:
    # GROUPING(a, b, ...) sets the bit of each argument *not* grouped by, the first argument highest.
    return sum(1 << (len(KEYS) - 1 - i) for i, k in enumerate(KEYS) if k not in keys)


def _by_set(rows: list[dict]) -> dict[str, list[dict]]:
    names = {_mask(keys): name for name, keys in SETS.items()}
    out: dict[str, list[dict]] = {name: [] for name in SETS}
    for row in rows:
        out[names[row["grouping_id"]]].append(row)
    return out


def _value(column: str, value):
    # Sums arrive as numeric (Decimal): counts, wei and raw units are integers, and said so.
    return int(value) if column in COUNTS or column in WEI or column in RAW else value


def _frame(rows: list[dict], keys: tuple[str, ...], figures: tuple[str, ...]) -> pd.DataFrame:
    columns = (*keys, *figures)
    data = [{c: _value(c, r[c]) for c in columns} for r in sorted(rows, key=lambda r: [r[k] for k in keys])]
    # dtype object: Python ints and Decimals as they are, never int64 (a wei sum passes 2**63) nor float.
    return pd.DataFrame(data, columns=list(columns), dtype=object)


def _hourly(rows: list[dict], hours: list[datetime], chains: list[str]) -> pd.DataFrame:
    found = {(r["hour"], r["chain"]): r for r in rows}
    zero = {"gross_usd": Decimal(0), "cost_usd": Decimal(0), "net_usd": Decimal(0)}
    data = [{"hour": h, "chain": c, **{k: found.get((h, c), zero)[k] for k in zero}} for h in hours for c in chains]
    return pd.DataFrame(data, columns=["hour", "chain", *zero])


def _comparison(rows: list[dict]) -> pd.DataFrame:
    data = [{"chain": TOTAL if r["fleet"] else r["chain"], "period": period,
             **{m: r[f"{period}_{m}"] for m in COMPARED}}
            for r in sorted(rows, key=lambda r: (r["fleet"], r["chain"] or "")) for period in PERIODS]
    return pd.DataFrame(data, columns=["chain", "period", *COMPARED])
