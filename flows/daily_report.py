"""Report: the day's MEV profit joined with the state of the infrastructure that earned it.

Daily at 00:15 UTC for yesterday (prefect.yaml), or for any day or range of
days from the UI (a backfill). Per day:

1. profit from the MEV database (tasks/profit.py: aggregated in PostgreSQL,
   USD from its own price table);
2. reconciliation of a bounded, stable sample of the day's landed
   executions per chain with the chain's receipts (tasks/receipts.py): the
   database's chains are matched to the inventory's by chain id;
3. operations from Prometheus, the audit trail and the backup store
   (tasks/operations.py), against the seeds' KPIs;
4. delivery: a markdown artifact and table artifacts (keyed by day), the
   message with its charts on Slack, and report.md, the charts and the
   aggregates as Parquet under `reports/daily/<day>/` in the store;
5. the day's hours under the operators' profit thresholds escalate once,
   at the worst one's priority (profit-loss-major P1, profit-loss P2,
   profit-low P3).

Re-running a day replaces it: the store's folder is rewritten
(tasks/report_store.py) and the day's earlier Slack message and its files
are deleted before the new one is posted (their ids are kept in the day's
folder), so there is one report per day. A dry run computes everything and
makes the artifacts, and posts, stores and escalates nothing.
"""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import date, datetime, timedelta, timezone
from typing import Annotated

import pandas as pd
import psycopg
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from blocks import Database
from tasks import objectstore, report_charts, runbook, slack, trigger
from tasks.approval import Plan
from tasks.backups.store import open_store
from tasks.errors import InvalidInput, NotificationError
from tasks.escalation import Kind
from tasks.guards import Resource
from tasks.operations import Operations, day_operations, day_window
from tasks.profit import DayProfit, day_profit
from tasks.receipts import Reconciliation, reconcile_day
from tasks.redaction import register_secret
from tasks.report_render import markdown, slack_text, success_by_strategy
from tasks.report_store import day_prefix, parquet_bytes, store_day_report
from tasks.runbook import Done, Runbook
from tasks.vocabulary import AUTOMATION_ONLY, ActionKind, Outcome

MAX_DAYS = 366
ESCALATION_TARGET = "mev-profit"
KIND_BY_SEVERITY = {"P1": Kind.PROFIT_LOSS_MAJOR, "P2": Kind.PROFIT_LOSS, "P3": Kind.PROFIT_LOW}
SLACK_RECORD = "slack.json"

def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def charts(profit: DayProfit, ops: Operations) -> dict[str, bytes]:
    costs = profit.by_chain[["chain", "base_fee_usd", "priority_fee_usd", "l1_fee_usd", "builder_tip_usd",
                             "flash_loan_fee_usd"]].copy()
    for c in costs.columns[1:]:
        costs[c] = costs[c].astype(float)
    hourly = profit.hourly[["hour", "chain", "net_usd"]].copy()
    hourly["net_usd"] = hourly["net_usd"].astype(float)
    return {
        "charts/profit_by_hour.png": report_charts.profit_by_hour(hourly),
        "charts/cost_breakdown.png": report_charts.cost_breakdown(costs),
        "charts/success_by_strategy.png": report_charts.success_by_strategy(success_by_strategy(profit)),
        "charts/uptime_by_node.png": report_charts.uptime_by_node(ops.nodes[["node", "uptime"]]),
    }


def aggregates(profit: DayProfit, recon: Reconciliation, ops: Operations) -> dict[str, bytes]:
    frames = {
        "by_chain_strategy": profit.by_strategy, "by_chain": profit.by_chain, "hourly": profit.hourly,
        "revenue_tokens": profit.revenue_tokens, "comparison": profit.comparison, "bad_rows": profit.bad_rows,
        "reconciliation_mismatches": pd.DataFrame(recon.mismatches, columns=["execution_id", "chain", "tx_hash",
                                                                             "field", "recorded", "on_chain"]),
        "nodes": ops.nodes, "runs": ops.runs,
    }
    out = {}
    for name, df in frames.items():
        df = df.copy()
        for col in df.columns:  # mixed ints and text (a mismatch's recorded value) as text: Parquet columns have one type
            if df[col].dtype == object and df[col].map(type).nunique() > 1:
                df[col] = df[col].astype(str)
        out[f"aggregates/{name}.parquet"] = parquet_bytes(df)
    return out


@dataclasses.dataclass
class DailyReport:
    first: date
    last: date
    flow = "daily-report"
    needs_approval = False
    respects_holds = False  # reads only: an operator's hold on a node does not stop the report

    def parameters(self) -> dict:
        return {"day": self.first.isoformat(), "until": self.last.isoformat()}

    def resources(self) -> list[Resource]:
        return []

    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range((self.last - self.first).days + 1)]

    def plan(self, rb: Runbook) -> Plan:
        reports = rb.inventory.reports
        if reports.database is None:
            raise InvalidInput("the inventory has no reports.database: name the MEV database (a key of "
                               "backups.databases) the report reads")
        self.db = Database.load(rb.inventory.backups.databases[reports.database].block)
        register_secret(self.db.password.get_secret_value())
        self.store = open_store(rb.inventory)[0] if rb.inventory.backups.store_block else None
        where = f"{self.store.bucket}/{day_prefix(self.first)}" if self.store else "nowhere (no store block)"
        return Plan([f"read {self.db.database} on {self.db.host} (read-only) for {len(self.days())} day(s) "
                     f"{self.first}..{self.last}",
                     f"reconcile up to {reports.reconcile_sample} landed executions a chain with the chain's receipts",
                     f"operations from {reports.prometheus_url or 'no Prometheus'}, the audit trail and the store",
                     f"store the report under {where}, replacing the day's earlier one",
                     "post it with its charts to Slack, replacing the day's earlier message",
                     "escalate hours under the profit thresholds"], {"days": len(self.days())})

    def act(self, rb: Runbook, plan: Plan) -> dict:
        summaries = {}
        for day in self.days():
            rb.step(f"report-{day}")
            summaries[day.isoformat()] = self.one_day(rb, day)
        rb.gate.verify("each day's report is stored and posted")  # a dry run ends here, listing what it would do
        raise Done(Outcome.succeeded, "reported", "; ".join(summaries.values()), days=list(summaries))

    def one_day(self, rb: Runbook, day: date) -> str:
        now = _utcnow()
        lo, hi = day_window(day, now)
        with psycopg.connect(**self.db.conninfo(), autocommit=True) as conn:
            profit = day_profit(conn, day)
            # Today's hours still to come are not under any threshold yet.
            profit = dataclasses.replace(profit, alerts=[a for a in profit.alerts if a.hour < hi])
            recon = reconcile_day(conn, rb.inventory, lo, hi, rb.inventory.reports.reconcile_sample)
        ops = day_operations(rb.inventory.reports.prometheus_url, self.store, lo, hi)
        partial = hi.isoformat(timespec="minutes") if hi < lo + timedelta(days=1) else None
        text = markdown(day, profit, recon, ops, partial)
        create_markdown_artifact(key=f"daily-report-{day}", markdown=text, description=f"daily report {day}")
        for name, df in (("profit", profit.by_strategy), ("operations", ops.nodes)):
            create_table_artifact(json.loads(df.to_json(orient="records", default_handler=str)),
                                  key=f"daily-report-{day}-{name}", description=f"{name} {day}")
        pictures = charts(profit, ops)
        files = {"report.md": text.encode(), **pictures, **aggregates(profit, recon, ops)}
        summary = slack_text(day, profit, recon, ops)
        files[SLACK_RECORD] = json.dumps(self.post(rb, day, summary, pictures)).encode()
        if self.store is not None and rb.gate.allows("s3", self.store.bucket, f"store the report under {day_prefix(day)}/",
                                                     action=ActionKind.upload):
            stored = store_day_report(self.store, day, files)
            rb.audit.action(f"s3:{self.store.bucket}", f"store {day_prefix(day)}/", 0, 0.0, action=ActionKind.upload,
                            objects=len(stored), bytes=sum(o.size for o in stored))
        if alerts := profit.alerts:
            worst = min(alerts, key=lambda a: ("P1", "P2", "P3").index(a.severity))
            rb.escalate(ESCALATION_TARGET, KIND_BY_SEVERITY[worst.severity],
                        f"{day}: {len(alerts)} hour(s) under the profit thresholds, worst {worst.hour:%H}:00 "
                        f"net ${float(worst.net_usd):,.2f}",
                        {"hours": ", ".join(f"{a.hour:%H}:00 {a.severity} ${float(a.net_usd):,.0f}" for a in alerts)})
        get_run_logger().info(summary)
        return summary

    def post(self, rb: Runbook, day: date, text: str, pictures: dict[str, bytes]) -> dict:
        """Replace the day's Slack message: delete the earlier one (and its files), post the new one."""
        workspace = rb.slack
        if workspace is None or not rb.gate.allows("slack", workspace.channel, f"post the report of {day} with "
                                                   f"{len(pictures)} charts, replacing the day's earlier message"):
            return {}
        earlier = self.earlier_post(day)
        if earlier.get("ts"):
            slack.delete_message(workspace, earlier["channel"], earlier["ts"], [f["id"] for f in earlier.get("files", [])])
            rb.audit.note("slack: the day's earlier report deleted", channel=earlier["channel"], ts=earlier["ts"])
        try:
            answer = slack.post_with_files(workspace, text, [], [(name.split("/")[-1], data, name.split("/")[-1])
                                                                  for name, data in pictures.items()])
        except NotificationError as exc:  # the report is still made and stored; Slack's failure is on record
            get_run_logger().warning("Slack: %s", exc)
            rb.audit.note("slack report failed", error=str(exc))
            return {"error": str(exc)}
        rb.audit.note("slack report posted", channel=answer.get("channel"), ts=answer.get("ts"),
                      files=len(answer.get("files", [])))
        return {"channel": answer.get("channel"), "ts": answer.get("ts"), "files": answer.get("files", [])}

    def earlier_post(self, day: date) -> dict:
        if self.store is None or objectstore.head(self.store, f"{day_prefix(day)}/{SLACK_RECORD}") is None:
            return {}
        body = io.BytesIO()
        objectstore.download(self.store, f"{day_prefix(day)}/{SLACK_RECORD}", body)
        return json.loads(body.getvalue() or b"{}")


@flow(name="daily-report", log_prints=True)
def daily_report(
    day: Annotated[date | None, Field(description="UTC day to report; empty: yesterday")] = None,
    until: Annotated[date | None, Field(description="Backfill: report every day from `day` to this one (inclusive)")] = None,
    dry_run: Annotated[bool, Field(description="Compute and show the report; post, store and escalate nothing")] = False,
    trigger_event_id: AUTOMATION_ONLY = None,
) -> dict:
    """The day's profit by chain and strategy, reconciled with the chain, beside the fleet's operations."""
    first, last = days_asked(day, until, _utcnow().date())
    return runbook.run(DailyReport(first, last), trigger.describe("daily-report", trigger_event_id), dry_run=dry_run)


def days_asked(day: date | None, until: date | None, today: date) -> tuple[date, date]:
    """The first and last day to report (yesterday by default); InvalidInput before anything runs."""
    first = day or today - timedelta(days=1)
    last = until or first
    if last < first:
        raise InvalidInput(f"until ({last}) is before day ({first})")
    if last > today:
        raise InvalidInput(f"{last} has not begun yet (today is {today} UTC)")
    if (last - first).days >= MAX_DAYS:
        raise InvalidInput(f"{(last - first).days + 1} days: at most {MAX_DAYS} per run; split the backfill")
    return first, last
