"""The lab's MEV database: a schema an operator would keep, filled with a day of
bot activity that is the same for the same seed, and fingerprints that tell a
faithful restore from a broken one.

No lab: each test session runs its own throwaway PostgreSQL (tests/postgres.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import psycopg
import pytest

from lab import mevdb
from tests.postgres import database, postgres_server  # noqa: F401  (pytest fixtures)

DAY = date(2026, 12, 3)
N = 20_000
ROOT = Path(__file__).resolve().parents[1]


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True)


@pytest.fixture(scope="module")
def filled(postgres_server) -> str:  # noqa: F811
    """One database with 20k executions of seed 7 on DAY, shared by the read-only tests."""
    dsn = postgres_server.dsn(postgres_server.create_database())
    with connect(dsn) as conn:
        mevdb.generate(conn, N, seed=7, day=DAY)
    return dsn


def schema_shape(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        """SELECT 'table', relname, relkind::text FROM pg_class WHERE relnamespace = 'public'::regnamespace
           UNION ALL SELECT 'constraint', conname, pg_get_constraintdef(oid) FROM pg_constraint
                      WHERE connamespace = 'public'::regnamespace
           ORDER BY 1, 2""").fetchall()


def test_creating_the_schema_twice_changes_nothing(database):  # noqa: F811
    with connect(database) as conn:
        mevdb.create_schema(conn)
        first = schema_shape(conn), conn.execute("SELECT count(*) FROM tokens").fetchone(), mevdb.fingerprints(conn)
        mevdb.create_schema(conn)
        assert (schema_shape(conn), conn.execute("SELECT count(*) FROM tokens").fetchone(), mevdb.fingerprints(conn)) == first
    tables = {name for kind, name, relkind in first[0] if kind == "table" and relkind == "r"}
    assert tables == {"tokens", "chains", "token_prices", "opportunities", "executions"}
    indexes = {name for kind, name, relkind in first[0] if kind == "table" and relkind == "i"}
    assert {"executions_chain_strategy_time", "executions_chain_time", "executions_time_brin"} <= indexes


def test_the_same_seed_gives_the_same_database_and_another_seed_does_not(database):  # noqa: F811
    with connect(database) as conn:
        seven = mevdb.generate(conn, N, seed=7, day=DAY)
        first = mevdb.fingerprints(conn)
        mevdb.generate(conn, N, seed=8, day=DAY)
        other = mevdb.fingerprints(conn)
        mevdb.generate(conn, N, seed=7, day=DAY)  # generating again replaces, it does not add
        again = mevdb.fingerprints(conn)
    assert seven.executions == N and first["executions"].rows == N
    assert again == first
    for table in ("executions", "opportunities", "token_prices"):
        assert other[table].md5 != first[table].md5, table
    assert other["chains"] == first["chains"] and other["tokens"] == first["tokens"]


def test_every_row_obeys_the_status_rules(filled):
    with connect(filled) as conn:
        one = lambda q: conn.execute(q).fetchone()[0]  # noqa: E731
        assert one("SELECT count(*) FROM executions WHERE status NOT IN ('submitted', 'included', 'reverted', 'dropped')") == 0
        assert one("""SELECT count(*) FROM executions WHERE status IN ('included', 'reverted')
                      AND (block_number IS NULL OR gas_used IS NULL OR effective_gas_price < base_fee)""") == 0
        assert one("""SELECT count(*) FROM executions WHERE status IN ('dropped', 'submitted')
                      AND (block_number IS NOT NULL OR gas_used IS NOT NULL OR gross_revenue > 0 OR coinbase_transfer > 0)""") == 0
        assert one("SELECT count(*) FROM executions WHERE status = 'reverted' AND (gross_revenue > 0 OR coinbase_transfer > 0)") == 0
        assert one("SELECT count(*) FROM executions e JOIN opportunities o ON o.id = e.opportunity_id "
                   "WHERE o.chain <> e.chain OR o.strategy <> e.strategy OR e.submitted_at < o.detected_at") == 0
        # The database itself refuses a dropped bundle that claims gas, and an unknown chain.
        with pytest.raises(psycopg.errors.CheckViolation, match="landed_rows_have_block_and_gas"):
            conn.execute("""INSERT INTO executions (id, submitted_at, chain, strategy, opportunity_id, tx_hash,
                            status, gas_used, revenue_token) VALUES (-1, now(), 'base', 'arbitrage', 1,
                            decode(repeat('ab', 32), 'hex'), 'dropped', 21000, 'WETH')""")
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO opportunities VALUES (-1, now(), 'solana', 'arbitrage', 1)")


# What the daily report will compute: USD revenue and cost per execution, at the hour's prices.
PROFIT = """
WITH priced AS (
  SELECT e.*, c.native_token,
         e.gross_revenue / 10::numeric ^ rt.decimals * rp.usd_price AS revenue_usd,
         (coalesce(e.gas_used * e.effective_gas_price, 0) + e.l1_fee + e.coinbase_transfer) / 1e18 * np.usd_price
           + e.flash_loan_fee / 10::numeric ^ rt.decimals * rp.usd_price AS cost_usd
    FROM executions e JOIN chains c USING (chain) JOIN tokens rt ON rt.symbol = e.revenue_token
    JOIN token_prices rp ON rp.token = e.revenue_token AND rp.hour = date_trunc('hour', e.submitted_at)
    JOIN token_prices np ON np.token = c.native_token AND np.hour = date_trunc('hour', e.submitted_at))
"""


def test_the_day_looks_like_a_bots_day(filled):
    with connect(filled) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        status = dict(conn.execute("SELECT status, count(*)::float / sum(count(*)) OVER () FROM executions GROUP BY 1").fetchall())
        assert 0.82 <= status["included"] <= 0.88
        assert 0.03 <= status["reverted"] <= 0.10 and 0.05 <= status["dropped"] <= 0.12
        assert status.get("submitted", 0) < 0.01  # only the last seconds of the day are pending
        assert conn.execute("SELECT min(submitted_at) FILTER (WHERE status = 'submitted') >= '2026-12-03 23:59:30+00', "
                            "min(submitted_at) >= '2026-12-03', max(submitted_at) < '2026-12-04' FROM executions"
                            ).fetchone() == (True, True, True)
        mix = dict(conn.execute("SELECT chain || '/' || strategy, count(*) FROM executions GROUP BY 1").fetchall())
        assert {c.name for c in mevdb.CHAINS} == {k.split("/")[0] for k in mix}
        assert {"arbitrum/sandwich", "optimism/sandwich"}.isdisjoint(mix)  # no sandwiches behind a FCFS sequencer
        assert mix["ethereum/sandwich"] > 0 and mix["base/liquidation"] > 0
        # Builder bundles (hash and tips) exist on ethereum only.
        assert conn.execute("SELECT bool_and((bundle_hash IS NOT NULL) = (chain = 'ethereum')), "
                            "bool_and(coinbase_transfer = 0 OR chain = 'ethereum') FROM executions").fetchone() == (True, True)
        losing, reverted_cost, net = conn.execute(PROFIT + """
            SELECT avg((cost_usd > revenue_usd)::int) FILTER (WHERE status = 'included'),
                   min(cost_usd) FILTER (WHERE status = 'reverted'), sum(revenue_usd - cost_usd) FROM priced""").fetchone()
        assert 0.02 <= losing <= 0.25, losing  # sometimes the tip and gas cost more than the fill brought
        assert reverted_cost > 0  # a revert still pays for its gas
        assert net > 0  # and the bot makes money overall
        assert conn.execute(PROFIT + "SELECT count(*) FROM priced").fetchone()[0] == N  # every row has its prices


def test_a_dump_restored_into_another_database_has_the_same_fingerprints(filled, postgres_server):  # noqa: F811
    # The check the database backup runbook will make: pg_dump -Fc | pg_restore, then compare.
    restored = postgres_server.dsn(postgres_server.create_database())
    dump = subprocess.Popen([postgres_server.bin("pg_dump"), "-Fc", "-Z0", "-d", filled], stdout=subprocess.PIPE)
    restore = subprocess.run([postgres_server.bin("pg_restore"), "--exit-on-error", "--no-owner", "-d", restored],
                             stdin=dump.stdout, capture_output=True, text=True, timeout=120)
    dump.stdout.close()
    assert dump.wait(timeout=120) == 0 and restore.returncode == 0, restore.stderr
    with connect(filled) as source, connect(restored) as copy:
        expected = mevdb.fingerprints(source)
        assert mevdb.fingerprints(copy) == expected
        assert expected["executions"].rows == N
        # ...and a restore that lost one wei is told apart.
        copy.execute("UPDATE executions SET gas_used = gas_used + 1 WHERE id = (SELECT min(id) FROM executions WHERE gas_used IS NOT NULL)")
        changed = mevdb.fingerprints(copy)
    assert changed["executions"].rows == N and changed["executions"].md5 != expected["executions"].md5
    assert {t: f for t, f in changed.items() if t != "executions"} == {t: f for t, f in expected.items() if t != "executions"}


def test_the_command_line_fills_a_database_the_same_way_twice(database):  # noqa: F811
    argv = [sys.executable, "-m", "lab.mevdb", "--dsn", database, "--executions", "3000", "--seed", "3", "--day", "2026-12-03"]
    runs = [json.loads(subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, text=True, timeout=60).stdout)
            for _ in range(2)]
    assert runs[0]["tables"] == runs[1]["tables"]
    assert runs[0]["executions"] == 3000 and runs[0]["tables"]["executions"]["rows"] == 3000
    only = subprocess.run([*argv[:5], "--fingerprints"], cwd=ROOT, check=True, capture_output=True, text=True, timeout=60)
    assert json.loads(only.stdout)["tables"] == runs[0]["tables"]
