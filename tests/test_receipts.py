"""Reconciliation of the bot's records with the chain: a real anvil mining 1 s blocks, the lab's MEV bot
sending real transactions (coinbase transfers, calls that revert) and recording them in a throwaway
PostgreSQL with mismatches seeded on purpose; every seeded mismatch is found and nothing else.

No lab: anvil from the lab's npm install (installed by `make setup`), PostgreSQL from tests/postgres.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from datetime import date, timedelta

import httpx
import psycopg
import pytest

from lab import mevbot, mevdb
from lab import topology as t
from tasks.probes.model import ProbeTarget, Timeouts
from tasks.receipts import Recorded, fetch_receipts, reconcile
from tests.postgres import postgres_server  # noqa: F401  (pytest fixture)
from tests.processes import free_port, stop_process

pytestmark = pytest.mark.skipif(not t.ANVIL_BIN.is_file(), reason="anvil is installed by `make setup`")


@pytest.fixture(scope="module")
def anvil():
    home = tempfile.mkdtemp(prefix="receipts-anvil-")
    port = free_port()
    proc = subprocess.Popen([str(t.ANVIL_BIN), "--host", "127.0.0.1", "--port", str(port), "--block-time", "1",
                             "--chain-id", "31337", "--prune-history"], env={**os.environ, "HOME": home},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    stop_process(proc)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def bot_day(postgres_server, anvil):  # noqa: F811
    dsn = postgres_server.dsn(postgres_server.create_database())
    with psycopg.connect(dsn, autocommit=True) as conn:
        mevdb.generate(conn, 2_000, seed=3, day=date.today() - timedelta(days=1))
        done = mevbot.run(conn, anvil, "lab-eth", 31337, executions=12, seed=5, mismatches=4)
    return dsn, done


def recorded(dsn: str) -> list[Recorded]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, chain, tx_hash, status, gas_used, effective_gas_price FROM executions "
                            "WHERE chain = 'lab-eth' AND status IN ('included', 'reverted') ORDER BY id").fetchall()
    return [Recorded(i, c, "0x" + bytes(h).hex(), s, g, int(p)) for i, c, h, s, g, p in rows]


def test_every_seeded_mismatch_is_found_and_nothing_else(bot_day, anvil):
    dsn, done = bot_day
    records = recorded(dsn)
    assert len(records) == 12 and {r.status for r in records} == {"included", "reverted"}
    # The same chain twice (two endpoints) and one that refuses: answers are merged, the dead one reported.
    dead = f"http://127.0.0.1:{free_port()}"
    answers = asyncio.run(fetch_receipts([ProbeTarget("ref", anvil), ProbeTarget("node", anvil),
                                          ProbeTarget("down", dead)], [r.tx_hash for r in records],
                                         Timeouts(connect=1, read=3)))
    result = reconcile(records, answers)
    found = sorted((m["execution_id"], m["field"]) for m in result.mismatches)
    assert found == sorted((s["execution_id"], s["field"]) for s in done.seeded)
    assert result.confirmed == 12 - 4 and result.checked == 12
    assert result.unreachable == {"down": "connection refused"} and not result.unverified and not result.disagreements


def test_no_endpoint_answering_leaves_records_unverified_not_mismatched(bot_day):
    dsn, _ = bot_day
    records = recorded(dsn)
    answers = asyncio.run(fetch_receipts([ProbeTarget("down", f"http://127.0.0.1:{free_port()}")],
                                         [r.tx_hash for r in records], Timeouts(connect=1, read=1)))
    result = reconcile(records, answers)
    assert result.mismatches == [] and sorted(result.unverified) == [r.execution_id for r in records]


def test_endpoints_that_hold_different_receipts_are_reported_as_disagreeing(bot_day, anvil):
    dsn, done = bot_day
    records = [r for r in recorded(dsn) if r.execution_id not in {s["execution_id"] for s in done.seeded}]
    answers = asyncio.run(fetch_receipts([ProbeTarget("ref", anvil)], [r.tx_hash for r in records]))
    twisted = {h: dict(rc, gasUsed=hex(int(rc["gasUsed"], 16) + 7)) for h, rc in answers["ref"].items()}
    result = reconcile(records, {"ref": answers["ref"], "forked": twisted})
    assert len(result.disagreements) == len(records)
    assert result.mismatches == []  # the first endpoint holding it stands for the chain: the bot agrees with it


def test_the_days_sample_is_matched_to_the_inventorys_chains_by_chain_id(bot_day, anvil):
    from datetime import datetime, timezone

    from inventory import Inventory
    from tasks.receipts import reconcile_day

    dsn, done = bot_day
    inventory = Inventory.model_validate({"chains": {"lab-eth": {"family": "ethereum", "chain_id": 31337,
                                                                 "references": [anvil]}},
                                          "hosts": {}, "nodes": {}})
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    with psycopg.connect(dsn, autocommit=True) as conn:
        bots = reconcile_day(conn, inventory, today, today + timedelta(days=1), n=200)
        generated = reconcile_day(conn, inventory, today - timedelta(days=1), today, n=200)
        small = reconcile_day(conn, inventory, today, today + timedelta(days=1), n=5)
    assert sorted((m["execution_id"], m["field"]) for m in bots.mismatches) == \
        sorted((s["execution_id"], s["field"]) for s in done.seeded)
    assert bots.checked == 12 and not bots.not_reconciled
    # Yesterday's generated chains (ethereum, base, ...) have no endpoint in this inventory: said, not mismatched.
    assert set(generated.not_reconciled) == {c.name for c in mevdb.CHAINS} and generated.checked == 0
    assert small.checked == 5  # the sample is bounded per chain
