"""daily-report against the real lab: the MEV database (PostgreSQL), the lab's MEV bot's real transactions on
the lab-eth reference, Prometheus, the audit trail, the backup store, the Slack stub, run through the worker.

The day is today (UTC): what the tests make happen today is what the report must show. Known figures come from
the bot's own records (it returns them), the seeded mismatches from the bot, the operations from the runs this
module starts itself (a recovery, a config backup, a DR drill), read back from their own results.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timezone
from decimal import Decimal

import psycopg
import pytest
from PIL import Image

import lab
from blocks import Database, ObjectStore
from flows.config_backup import config_backup
from flows.daily_report import daily_report
from flows.dr_drill import dr_drill
from flows.node_recovery import node_recovery
from flows.snapshot_backup import snapshot_backup
from lab import mevbot
from lab import topology as t
from tasks import objectstore
from tasks.audit import read_entries
from tasks.backups.drills import read_drills
from tasks.backups.manifest import list_manifests, read_verifications
from tasks.report_store import day_prefix, read_parquet
from tests import fleet

pytestmark = [pytest.mark.lab, pytest.mark.last]
CHARTS = {"profit_by_hour.png", "cost_breakdown.png", "success_by_strategy.png", "uptime_by_node.png"}


def download(store, key: str) -> bytes:
    body = io.BytesIO()
    objectstore.download(store, key, body)
    return body.getvalue()


@pytest.fixture(scope="module")
def reported(runbooks):
    """Today's bot activity and operations, then the report run through the worker."""
    from prefect.deployments import run_deployment

    fleet.restore_fleet()
    lab.clear_stub_records()
    store = ObjectStore.load(t.BLOCK_STORE)
    db = Database.load(t.BLOCK_DB)
    with psycopg.connect(**db.conninfo(), autocommit=True) as conn:
        # The bot's rows of earlier runs today go: the day's known figures are this run's.
        conn.execute("DELETE FROM executions WHERE id >= %s", (mevbot.BOT_IDS,))
        conn.execute("DELETE FROM opportunities WHERE id >= %s", (mevbot.BOT_IDS,))
        bot = mevbot.run(conn, t.reference_url("lab-eth"), "lab-eth", t.CHAINS["lab-eth"].chain_id,
                         executions=12, seed=11, mismatches=4, big_loss=True)
    # A recovery, a backup and a drill, today.
    lab.fault("eth-c", "kill")
    fleet.wait_status("eth-c", {"down"})
    recovery = node_recovery(node="eth-c", reason="kill", return_state=True)
    assert recovery.is_completed(), recovery.message
    backup = config_backup(hosts=["h2"])
    today = datetime.now(timezone.utc).date()
    # The suite's own drill of the day when there is one (test_snapshot_backup's: this module runs last), else one here.
    drills = [d for d in read_drills(store) if d["started_at"].startswith(today.isoformat())]
    if not drills:
        if not any(read_verifications(store, m.key) for m in list_manifests(store, "snapshot", "eth-a")):
            assert snapshot_backup("eth-a")["status"] == "succeeded"
        assert dr_drill(target="lab-eth", standby_host=t.STANDBY_HOST)["status"] == "succeeded"
        drills = [d for d in read_drills(store) if d["started_at"].startswith(today.isoformat())]
    fleet.restore_fleet()
    run = run_deployment("daily-report/daily-report", parameters={"day": today.isoformat()}, timeout=300)
    assert run.state.is_completed(), run.state
    return {"store": store, "day": today, "bot": bot, "run": run, "recovery": recovery, "backup": backup,
            "drills": drills}


def test_profit_equals_the_bots_records_to_the_wei(reported):
    store, day, bot = reported["store"], reported["day"], reported["bot"]
    by_chain = read_parquet(download(store, f"{day_prefix(day)}/aggregates/by_chain.parquet"))
    [row] = by_chain[by_chain["chain"] == "lab-eth"].to_dict("records")
    rows = bot.executions
    landed = [r for r in rows if r["status"] in ("included", "reverted")]
    assert row["executions"] == 12 and row["included"] == sum(r["status"] == "included" for r in rows)
    assert row["base_fee_wei"] == sum(r["gas_used"] * r["base_fee"] for r in landed)
    assert row["priority_fee_wei"] == sum(r["gas_used"] * (r["effective_gas_price"] - r["base_fee"]) for r in landed)
    assert row["builder_tip_wei"] == sum(r["coinbase_transfer"] for r in rows)
    # USD at the prices the bot wrote for its hours (ETH = WETH = 3200), exactly.
    price = Decimal(mevbot.ETH_USD) / 10**18
    gross = sum(r["gross_revenue"] for r in rows) * price
    cost = sum(r["gas_used"] * r["effective_gas_price"] + r["coinbase_transfer"] for r in landed) * price
    assert Decimal(row["gross_usd"]) == gross and Decimal(row["net_usd"]) == gross - cost
    assert Decimal(row["gross_usd"]) - Decimal(row["net_usd"]) == Decimal(row["cost_usd"])


def test_reconciliation_finds_every_seeded_mismatch_and_nothing_else(reported):
    store, day, bot = reported["store"], reported["day"], reported["bot"]
    found = read_parquet(download(store, f"{day_prefix(day)}/aggregates/reconciliation_mismatches.parquet"))
    assert sorted(zip(found["execution_id"].astype(int), found["field"])) == \
        sorted((s["execution_id"], s["field"]) for s in bot.seeded)


def test_operations_show_the_recovery_backup_and_drill_of_the_day(reported):
    store, day = reported["store"], reported["day"]
    runs = read_parquet(download(store, f"{day_prefix(day)}/aggregates/runs.parquet"))
    recovery_id = str(reported["recovery"].state_details.flow_run_id)
    [mine] = runs[runs["run_id"] == recovery_id].to_dict("records")
    assert (mine["flow"], mine["node"], mine["status"], mine["result"]) == ("node-recovery", "eth-c", "succeeded",
                                                                          "recovered")
    at = {e["kind"]: datetime.fromisoformat(e["ts"]) for e in read_entries(run_id=recovery_id)
          if e["kind"] in ("started", "outcome")}
    took = (at["outcome"] - at["started"]).total_seconds()
    assert abs(mine["seconds"] - took) < 0.01
    report = download(store, f"{day_prefix(day)}/report.md").decode()
    for key in reported["backup"]["manifests"].values():
        assert f"config h2: verified ({key})" in report
    for drill in reported["drills"]:
        assert f"{drill['chain']} {drill['node']}: RTO {drill['rto_s']} s (met against 30 min)" in report
    assert f"- DR drills: {len(reported['drills'])}" in report
    nodes = read_parquet(download(store, f"{day_prefix(day)}/aggregates/nodes.parquet"))
    assert set(t.NODES) <= set(nodes["node"]) and (nodes["samples"] > 0).all()
    assert nodes["uptime"].between(0, 1).all() and (nodes["latency_p99_ms"] > 0).all()


def test_slack_holds_the_message_with_its_charts_and_the_store_the_days_folder(reported):
    store, day = reported["store"], reported["day"]
    names = {o.key.removeprefix(day_prefix(day) + "/") for o in objectstore.list_objects(store, day_prefix(day))}
    assert {"report.md", "slack.json"} | {f"charts/{c}" for c in CHARTS} <= names
    assert {n for n in names if n.startswith("aggregates/")} >= {"aggregates/by_chain.parquet", "aggregates/nodes.parquet"}
    uploads = {r["body"]["sha256"] for r in lab.stub_records("slack") if r["path"].startswith("/upload/")}
    for chart in CHARTS:
        png = download(store, f"{day_prefix(day)}/charts/{chart}")
        assert hashlib.sha256(png).hexdigest() in uploads  # the very chart that was stored was posted
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (900, 450) and len(image.getcolors(1 << 16) or []) > 20
    posts = [r["body"] for r in lab.stub_records("slack") if r["path"] == "/api/chat.postMessage"]
    assert any(f"Daily report {day}" in p.get("text", "") for p in posts)


def test_an_hour_that_lost_over_1k_escalates_p2_with_a_page(reported):
    posts = [r["body"].get("text", "") for r in lab.stub_records("slack") if r["path"] == "/api/chat.postMessage"]
    assert any(p.startswith("[P2] mev-profit:") and "under the profit thresholds" in p for p in posts), posts
    triggers = [r["body"]["payload"] for r in lab.stub_records("pagerduty") if r["body"].get("event_action") == "trigger"]
    assert any(p["severity"] == "error" and "mev-profit" in p["summary"] for p in triggers), triggers


def test_rerunning_the_day_replaces_its_report_in_the_store_and_on_slack(reported):
    store, day = reported["store"], reported["day"]
    before = {o.key for o in objectstore.list_objects(store, day_prefix(day))}
    first_post = download(store, f"{day_prefix(day)}/slack.json")
    result = daily_report(day=day)
    assert result["status"] == "succeeded", result
    assert {o.key for o in objectstore.list_objects(store, day_prefix(day))} == before  # the same files, once
    earlier = json.loads(first_post)
    deleted = [r["body"] for r in lab.stub_records("slack") if r["path"] == "/api/chat.delete"]
    assert any(d.get("ts") == earlier["ts"] for d in deleted), deleted
    files_deleted = {r["body"].get("file") for r in lab.stub_records("slack") if r["path"] == "/api/files.delete"}
    assert {f["id"] for f in earlier["files"]} <= files_deleted
    assert json.loads(download(store, f"{day_prefix(day)}/slack.json"))["ts"] != earlier["ts"]


def test_a_dry_run_posts_and_stores_nothing(reported):
    store, day = reported["store"], reported["day"]
    stored = {o.key: o.etag for o in objectstore.list_objects(store, day_prefix(day))}
    posts = len(lab.stub_records("slack"))
    result = daily_report(day=day, dry_run=True)
    assert result["outcome"] == "dry-run", result
    assert {o.key: o.etag for o in objectstore.list_objects(store, day_prefix(day))} == stored
    assert len(lab.stub_records("slack")) == posts
