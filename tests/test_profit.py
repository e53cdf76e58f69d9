"""The daily profit report (tasks/profit.py) against what the generator knows it wrote.

The acceptance: on a generated day every figure equals the known value to the wei, costs add up to
revenue minus net exactly, and USD figures equal a recomputation from the rows themselves (Python
Decimal at 100 digits, no SQL). Bad data, on a copy whose constraints were dropped, is counted,
listed and left out; a day without data says so; the alert thresholds hold at their edges; and the
report fetches as many rows for 200k executions as for 5k.

No lab: each test session runs its own throwaway PostgreSQL (tests/postgres.py).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, localcontext

import psycopg
import pytest
from psycopg import sql

from lab import mevdb
from tasks import profit
from tasks.profit import HourAlert
from tests.postgres import database, postgres_server  # noqa: F401  (pytest fixtures)

DAY = date(2026, 12, 3)
N = 40_000  # over 8 days: ~5k executions on DAY, and 7 days before it to compare with
START = datetime(2026, 12, 3, tzinfo=timezone.utc)
LINES = ("base_fee_usd", "priority_fee_usd", "l1_fee_usd", "builder_tip_usd", "flash_loan_fee_usd")


def connect(dsn: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, **kwargs)


@dataclass
class Week:
    dsn: str
    generated: mevdb.Generated
    report: profit.DayProfit  # of DAY


@pytest.fixture(scope="module")
def week(postgres_server) -> Week:  # noqa: F811
    """One database with N executions of seed 7 over the 8 days ending with DAY, and DAY's report."""
    dsn = postgres_server.dsn(postgres_server.create_database())
    with connect(dsn) as conn:
        generated = mevdb.generate(conn, N, seed=7, day=DAY, days=8)
        return Week(dsn, generated, profit.day_profit(conn, DAY))


def copy_of(postgres_server, dsn: str) -> str:  # noqa: F811
    """A new database with the contents of `dsn` (CREATE DATABASE ... TEMPLATE, a file copy)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with connect(postgres_server.dsn()) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])))
    return postgres_server.dsn(name)


def known(week: Week, day: date) -> dict[tuple[str, str], mevdb.KnownTotals]:
    return {(c, s): t for (d, c, s), t in week.generated.totals.items() if d == day}


# --------------------------------------------------------------------------- the independent recomputation
@dataclass
class Recomputed:
    groups: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(Decimal)))  # (chain, strategy) ->
    hourly: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(Decimal)))  # (hour, chain) ->
    nets: list = field(default_factory=list)  # (net_usd, id) of every row


def recompute(conn: psycopg.Connection, lo: datetime, hi: datetime, exclude=frozenset()) -> Recomputed:
    """The report's figures from the rows of [lo, hi) themselves, in Decimal arithmetic at 100 digits."""
    prices = {(t, h): p for t, h, p in conn.execute("SELECT token, hour, usd_price FROM token_prices").fetchall()}
    decimals = dict(conn.execute("SELECT symbol, decimals FROM tokens").fetchall())
    native = dict(conn.execute("SELECT chain, native_token FROM chains").fetchall())
    rows = conn.execute("""SELECT id, submitted_at, chain, strategy, status, gas_used, base_fee, effective_gas_price,
                                  l1_fee, coinbase_transfer, flash_loan_fee, gross_revenue, revenue_token
                             FROM executions WHERE submitted_at >= %s AND submitted_at < %s""", (lo, hi)).fetchall()
    out = Recomputed()
    with localcontext(prec=100):
        for i, at, chain, strategy, status, gas, base, eff, l1, tip, flash, gross, token in rows:
            if i in exclude:
                continue
            hour = at.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
            nat = prices[native[chain], hour] / 10 ** decimals[native[chain]]
            rev = prices[token, hour] / 10 ** decimals[token]
            landed = status in ("included", "reverted")
            wei = {"base_fee_wei": gas * base if landed else 0, "priority_fee_wei": gas * (eff - base) if landed else 0,
                   "l1_fee_wei": l1, "builder_tip_wei": tip}
            usd = {"base_fee_usd": wei["base_fee_wei"] * nat, "priority_fee_usd": wei["priority_fee_wei"] * nat,
                   "l1_fee_usd": l1 * nat, "builder_tip_usd": tip * nat, "flash_loan_fee_usd": flash * rev}
            cost, gross_usd = sum(usd.values()), gross * rev
            g = out.groups[chain, strategy]
            for k, v in {**wei, **usd, "cost_usd": cost, "gross_usd": gross_usd, "net_usd": gross_usd - cost,
                         status: 1, "executions": 1}.items():
                g[k] += v
            h = out.hourly[hour, chain]
            for k, v in {"gross_usd": gross_usd, "cost_usd": cost, "net_usd": gross_usd - cost}.items():
                h[k] += v
            out.nets.append((gross_usd - cost, i))
    return out


def assert_matches(report: profit.DayProfit, expected: Recomputed) -> None:
    """Every count, wei and USD figure of `report` equals the recomputation, exactly; ratios to 1e-12."""
    assert {(r.chain, r.strategy) for r in report.by_strategy.itertuples()} == set(expected.groups)
    for row in report.by_strategy.to_dict("records"):
        e = expected.groups[row["chain"], row["strategy"]]
        for column in (*profit.WEI, *LINES, "cost_usd", "gross_usd", "net_usd", "executions", "included", "reverted",
                       "dropped"):
            assert row[column] == e[column], (row["chain"], row["strategy"], column)
        assert row["pending"] == e["submitted"]
        closed = e["included"] + e["reverted"] + e["dropped"]
        assert abs(row["success_rate"] - e["included"] / closed) < Decimal("1e-12")
        assert abs(row["inclusion_rate"] - (e["included"] + e["reverted"]) / closed) < Decimal("1e-12")
        assert abs(row["margin"] - e["net_usd"] / e["gross_usd"]) < Decimal("1e-12")
    money = ("gross_usd", "cost_usd", "net_usd")
    with localcontext(prec=100):
        fleet = {k: sum(g[k] for g in expected.groups.values()) for k in (*money, "executions")}
    assert {k: report.total[k] for k in fleet} == fleet
    for row in report.hourly.to_dict("records"):
        e = expected.hourly.get((row["hour"], row["chain"]), {})
        assert [row[k] for k in money] == [e.get(k, 0) for k in money]
    ranked = sorted(expected.nets, key=lambda t: (-t[0], t[1]))
    assert list(zip(report.top.net_usd, report.top.id)) == ranked[:5]
    assert list(zip(report.worst.net_usd, report.worst.id)) == sorted(expected.nets)[:5]


# --------------------------------------------------------------------------- a generated day
def test_every_wei_figure_equals_the_generators_known_totals(week):
    report, expected = week.report, known(week, DAY)
    assert not report.empty and not any(report.bad_counts.values())
    assert {(r.chain, r.strategy) for r in report.by_strategy.itertuples()} == set(expected)
    for row in report.by_strategy.itertuples():
        k = expected[row.chain, row.strategy]
        assert (row.included, row.reverted, row.dropped, row.pending) == tuple(k.statuses[s] for s in mevdb.STATUSES)
        assert row.executions == sum(k.statuses.values())
        assert (row.base_fee_wei, row.priority_fee_wei, row.l1_fee_wei, row.builder_tip_wei) == (
            k.base_fee_cost, k.priority_fee_cost, k.l1_fee, k.coinbase_transfer), (row.chain, row.strategy)
    tokens = {(r.chain, r.strategy, r.revenue_token): (r.gross_revenue, r.flash_loan_fee)
              for r in report.revenue_tokens.itertuples()}
    assert tokens == {(c, s, t): (k.gross_revenue[t], k.flash_loan_fee[t]) for (c, s), k in expected.items()
                      for t in k.gross_revenue}
    # ...and summed per chain, per native token (the total in wei) and for the fleet.
    native = {c.name: c.native for c in mevdb.CHAINS}
    for level, key in ((report.by_chain, lambda c: c), (report.by_native_token, lambda c: native[c])):
        keyed = level.set_index(level.columns[0])
        sums = defaultdict(lambda: [0, 0, 0, 0])
        for (c, _), k in expected.items():
            for i, v in enumerate((k.base_fee_cost, k.priority_fee_cost, k.l1_fee, k.coinbase_transfer)):
                sums[key(c)][i] += v
        assert {i: list(keyed.loc[i, list(profit.WEI)]) for i in keyed.index} == dict(sums)
    assert report.total["executions"] == sum(sum(k.statuses.values()) for k in expected.values())
    assert report.total["included"] == sum(k.statuses["included"] for k in expected.values())


def test_costs_add_up_to_revenue_minus_net_exactly(week):
    report = week.report
    with localcontext(prec=100):
        for frame in (report.by_strategy, report.by_chain, report.total.to_frame().T):
            for row in frame.to_dict("records"):
                lines = sum(row[c] for c in LINES)
                assert row["cost_usd"] == lines and row["gross_usd"] - row["net_usd"] == lines
        per_chain = report.by_chain.set_index("chain")
        for column in ("gross_usd", "net_usd"):
            assert sum(report.by_strategy[column]) == report.total[column] == sum(per_chain[column])
            assert sum(report.hourly[column]) == report.total[column]
        assert abs(report.total["net_usd_per_hour"] * 24 - report.total["net_usd"]) < Decimal("1e-20")


def test_usd_figures_equal_a_recomputation_from_the_rows(week):
    report = week.report
    with connect(week.dsn) as conn:
        assert_matches(report, recompute(conn, START, START + timedelta(days=1)))
    assert len(report.hourly) == 24 * len(mevdb.CHAINS)
    assert all(h.startswith("0x") and len(h) == 66 for h in (*report.top.hash, *report.worst.hash))
    assert report.top.net_usd.iloc[0] > 0 > report.worst.net_usd.iloc[0]


def test_the_previous_day_and_the_7_day_average(week):
    comparison = week.report.comparison.set_index(["chain", "period"])
    before = known(week, DAY - timedelta(days=1))
    with connect(week.dsn) as conn:
        days = [recompute(conn, START - timedelta(days=d), START - timedelta(days=d - 1)) for d in range(1, 8)]
    for chain in [c.name for c in mevdb.CHAINS] + [profit.TOTAL]:
        mine = lambda c, chain=chain: chain in (c, profit.TOTAL)  # noqa: E731
        previous = comparison.loc[chain, "previous_day"]
        assert previous["included"] == sum(k.statuses["included"] for (c, _), k in before.items() if mine(c))
        assert previous["dropped"] == sum(k.statuses["dropped"] for (c, _), k in before.items() if mine(c))
        with localcontext(prec=100):
            nets = [sum(g["net_usd"] for (c, _), g in d.groups.items() if mine(c)) for d in days]
            gross = [sum(g["gross_usd"] for (c, _), g in d.groups.items() if mine(c)) for d in days]
        assert previous["net_usd"] == nets[0] and previous["gross_usd"] == gross[0]
        average = comparison.loc[chain, "average_7_days"]
        assert abs(average["net_usd"] - sum(nets) / 7) < Decimal("1e-6")
        assert abs(average["gross_usd"] - average["cost_usd"] - average["net_usd"]) < Decimal("1e-6")


def test_a_backfill_reports_each_day_on_its_own(week):
    with connect(week.dsn) as conn:
        reports = profit.days_profit(conn, DAY - timedelta(days=2), DAY)
    assert [r.day for r in reports] == [DAY - timedelta(days=d) for d in (2, 1, 0)]
    for r in reports:
        assert r.total["executions"] == sum(sum(k.statuses.values()) for k in known(week, r.day).values())
    assert reports[-1].total.to_dict() == week.report.total.to_dict()


def test_a_day_without_executions_says_so(week):
    with connect(week.dsn) as conn:
        report = profit.day_profit(conn, DAY + timedelta(days=1))
    assert report.empty and report.alerts == []
    assert report.by_strategy.empty and report.by_chain.empty and report.top.empty and report.bad_rows.empty
    assert report.total["executions"] == 0 and report.total["net_usd"] == 0 and report.total["margin"] is None
    assert report.total["success_rate"] is None
    assert len(report.hourly) == 24 * len(mevdb.CHAINS) and (report.hourly.net_usd == 0).all()
    # Its previous day is DAY: the comparison of the empty day says what DAY's report says.
    previous = report.comparison.set_index(["chain", "period"]).loc[(profit.TOTAL, "previous_day")]
    day = week.report.total
    assert (previous["net_usd"], previous["executions"]) == (day["net_usd"], day["executions"])


def test_the_session_neither_changes_the_report_nor_is_changed_by_it(week):
    # A +05:30 session still gets UTC hours; a 1 ms statement_timeout cancels the report; and
    # the report's settings (read-only, timeout, zone) end with its transaction.
    with connect(week.dsn, options="-c TimeZone=Asia/Kolkata") as conn:
        report = profit.day_profit(conn, DAY)
        with pytest.raises(psycopg.errors.QueryCanceled):
            profit.day_profit(conn, DAY, timeout_s=0.001)
        settings = [conn.execute(f"SHOW {s}").fetchone()[0] for s in ("statement_timeout", "transaction_read_only",
                                                                      "TimeZone")]
    assert settings == ["0", "off", "Asia/Kolkata"]
    assert report.hourly.to_dict("records") == week.report.hourly.to_dict("records")
    assert report.total.to_dict() == week.report.total.to_dict()


# --------------------------------------------------------------------------- bad data
def test_bad_rows_are_counted_listed_and_left_out(week, postgres_server):  # noqa: F811
    dsn = copy_of(postgres_server, week.dsn)
    at = START + timedelta(hours=12)
    with connect(dsn) as conn:
        # An operator's database: no CHECK, no foreign key.
        for table, name in conn.execute("""SELECT conrelid::regclass::text, conname FROM pg_constraint
                                            WHERE connamespace = 'public'::regnamespace AND contype IN ('c', 'f')"""):
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(*map(sql.Identifier, (table, name))))
        good = dict(gas_used=21_000, base_fee=10**9, effective_gas_price=2 * 10**9, status="included", chain="base")
        bad = {"gas_used_not_positive": [dict(gas_used=-1)] * 25 + [dict(gas_used=0, status="reverted")],
               "gas_price_below_base_fee": [dict(effective_gas_price=10**8)],
               "unknown_chain": [dict(chain="solana")],
               "negative_amount": [dict(gross_revenue=-5)],
               "unknown_status": [dict(status="failed")]}
        inserted = defaultdict(list)
        for i, (kind, change) in enumerate((k, c) for k, cs in bad.items() for c in cs):
            row = {"id": 900_000_000 + i, "gross_revenue": 10**6, **good, **change}
            conn.execute("""INSERT INTO executions (id, submitted_at, chain, strategy, opportunity_id, tx_hash, status,
                            block_number, gas_used, effective_gas_price, base_fee, gross_revenue, revenue_token)
                            VALUES (%(id)s, %(at)s, %(chain)s, 'arbitrage', 1, decode(repeat('ab', 32), 'hex'),
                            %(status)s, 1, %(gas_used)s, %(effective_gas_price)s, %(base_fee)s, %(gross_revenue)s,
                            'USDC')""", {**row, "at": at})
            inserted[kind].append(row["id"])
        # Missing prices: one hour of WBTC gone, one hour of POL at an impossible price.
        hours = {"h5": START + timedelta(hours=5), "h9": START + timedelta(hours=9)}
        conn.execute("DELETE FROM token_prices WHERE token = 'WBTC' AND hour = %(h5)s", hours)
        conn.execute("UPDATE token_prices SET usd_price = -1 WHERE token = 'POL' AND hour = %(h9)s", hours)
        unpriced = sorted(i for (i,) in conn.execute(
            """SELECT id FROM executions WHERE
               (revenue_token = 'WBTC' AND submitted_at >= %(h5)s AND submitted_at < %(h5)s + interval '1 hour')
               OR (chain = 'polygon' AND submitted_at >= %(h9)s AND submitted_at < %(h9)s + interval '1 hour')""",
            hours))
        assert len(unpriced) > 20  # enough to see the list stop at 20
        report = profit.day_profit(conn, DAY)
        expected = recompute(conn, START, START + timedelta(days=1),
                             exclude={i for ids in inserted.values() for i in ids} | set(unpriced))
    assert report.bad_counts == {**{k: len(v) for k, v in inserted.items()}, "missing_price": len(unpriced)}
    listed = report.bad_rows.groupby("kind").id.apply(list).to_dict()
    assert listed == {**{k: sorted(v)[:20] for k, v in inserted.items()}, "missing_price": unpriced[:20]}
    # Left out of every figure: the rest is exactly the recomputation without them, and DAY's count less them.
    assert_matches(report, expected)
    assert report.total["executions"] == week.report.total["executions"] - len(unpriced)


# --------------------------------------------------------------------------- alerts
def test_the_alert_thresholds_at_their_edges():
    nets = ("1000", "999.99", "0", "-999.99", "-1000", "-10000", "-10000.01")
    assert [profit.severity(Decimal(v)) for v in nets] == [None, "P3", "P3", "P3", "P2", "P2", "P1"]


def test_hourly_alerts_on_crafted_hours(database):  # noqa: F811
    # ETH at $2000 and USDC at $1: revenue in USDC, losses as builder tips in ETH (0.0005 ETH a dollar).
    nets = {0: "5000", 1: "999.99", 2: "-1000", 3: "-10000", 4: "-10000.01", 5: "-500", 6: "1000"}
    with connect(database) as conn:
        mevdb.create_schema(conn)
        conn.execute("INSERT INTO opportunities VALUES (1, %s, 'ethereum', 'arbitrage', 0)", (START,))
        for h in range(24):
            conn.execute("INSERT INTO token_prices VALUES ('ETH', %(h)s, 2000), ('USDC', %(h)s, 1)",
                         {"h": START + timedelta(hours=h)})
        for h, net in nets.items():
            net = Decimal(net)
            conn.execute("""INSERT INTO executions (id, submitted_at, chain, strategy, opportunity_id, tx_hash, status,
                            block_number, gas_used, effective_gas_price, base_fee, coinbase_transfer, gross_revenue,
                            revenue_token) VALUES (%s, %s, 'ethereum', 'arbitrage', 1, decode(repeat('cd', 32), 'hex'),
                            'included', 1, 1, 0, 0, %s, %s, 'USDC')""",
                         (h + 1, START + timedelta(hours=h, minutes=30), int(max(-net, 0) * 5 * 10**14),
                          int(max(net, 0) * 10**6)))
        report = profit.day_profit(conn, DAY)
    expected = {0: None, 1: "P3", 2: "P2", 3: "P2", 4: "P1", 5: "P3", 6: None}
    assert report.alerts == [HourAlert(START + timedelta(hours=h), Decimal(nets.get(h, 0)), expected.get(h, "P3"))
                             for h in range(24) if expected.get(h, "P3")]


# --------------------------------------------------------------------------- bounded memory
def counting_cursor():
    class Counting(psycopg.Cursor):
        returned = 0  # rows the server sent back, over every statement

        def execute(self, *args, **kwargs):
            super().execute(*args, **kwargs)
            Counting.returned += max(self.rowcount, 0)
            return self
    return Counting


def test_the_report_fetches_no_more_rows_for_200k_executions(week, postgres_server):  # noqa: F811
    dsn = copy_of(postgres_server, week.dsn)
    small, big = counting_cursor(), counting_cursor()
    with connect(dsn, cursor_factory=small) as conn:
        profit.day_profit(conn, DAY)
        fetched = small.returned
        # 40 copies of DAY's rows, in the database: the same groups, 40 times the money. Without the
        # btree indexes and the foreign-key triggers (replica role), which would take most of the
        # test's time and change no figure.
        conn.execute("DROP INDEX executions_chain_strategy_time, executions_chain_time, executions_opportunity")
        conn.execute("SET session_replication_role = replica")
        conn.execute("""INSERT INTO executions SELECT e.id + k * 10000000, e.submitted_at, e.chain, e.strategy,
                        e.opportunity_id, e.tx_hash, e.bundle_hash, e.status, e.block_number, e.gas_used,
                        e.effective_gas_price, e.base_fee, e.l1_fee, e.coinbase_transfer, e.flash_loan_fee,
                        e.gross_revenue, e.revenue_token FROM executions e, generate_series(1, 39) k
                        WHERE e.submitted_at >= %s AND e.submitted_at < %s""", (START, START + timedelta(days=1)))
        conn.execute("ANALYZE executions")
        rows = conn.execute("SELECT count(*) FROM executions WHERE submitted_at >= %s", (START,)).fetchone()[0]
    with connect(dsn, cursor_factory=big) as conn:
        report = profit.day_profit(conn, DAY)
    assert rows >= 200_000 and report.total["executions"] == rows
    assert big.returned == fetched < 1_000
    for row in report.by_strategy.itertuples():
        k = known(week, DAY)[row.chain, row.strategy]
        assert (row.base_fee_wei, row.builder_tip_wei, row.pending) == (
            40 * k.base_fee_cost, 40 * k.coinbase_transfer, 40 * k.statuses["submitted"])
