"""The daily report as an operator reads it: markdown (the Prefect artifact, report.md in the store) and
the Slack message's text. Figures come from tasks/profit.py, tasks/receipts.py and tasks/operations.py;
this module only formats them, against the seeds' KPIs.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pandas as pd

from tasks.operations import LAG_KPI_BLOCKS, LATENCY_P99_KPI_S, UPTIME_KPI, Operations
from tasks.profit import COMPARED, TOTAL, DayProfit
from tasks.receipts import Reconciliation

SUCCESS_KPI = 0.85  # the seeds' MEV success rate target


def usd(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    v = Decimal(str(value)).quantize(Decimal("0.01"))
    return f"-${-v:,.2f}" if v < 0 else f"${v:,.2f}"


def pct(value, digits: int = 1) -> str:
    if value is None or pd.isna(value):
        return "-"
    return f"{float(value) * 100:.{digits}f}%"


def num(value) -> str:
    """A count, or an average of counts, as an operator reads it."""
    if value is None or pd.isna(value):
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{float(value):,.1f}"


def met(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**MISSED**")


def table(df: pd.DataFrame, columns: dict[str, callable]) -> list[str]:
    """A markdown table of `df`, each column formatted by its function."""
    if df.empty:
        return ["_none_"]
    out = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for _, row in df.iterrows():
        out.append("| " + " | ".join(str(fmt(row[name])) for name, fmt in columns.items()) + " |")
    return out


def success_by_strategy(profit: DayProfit) -> pd.DataFrame:
    """strategy, success_rate over every chain: included / (included + reverted + dropped)."""
    s = profit.by_strategy.groupby("strategy")[["included", "reverted", "dropped"]].sum()
    landed_or_failed = s["included"] + s["reverted"] + s["dropped"]
    rate = (s["included"] / landed_or_failed.where(landed_or_failed > 0)).astype(float)
    return pd.DataFrame({"strategy": s.index, "success_rate": rate.values})


def markdown(day: date, profit: DayProfit, recon: Reconciliation, ops: Operations, partial_until: str | None) -> str:
    t = profit.total
    lines = [f"# Daily profit and operations report, {day.isoformat()} (UTC)", ""]
    if partial_until:
        lines += [f"_The day is not over: figures up to {partial_until}._", ""]
    lines += ["## Profit", ""]
    if profit.empty:
        lines += ["**No executions were recorded this day.**", ""]
    else:
        success = t["success_rate"]
        lines += [
            f"- **Net profit {usd(t['net_usd'])}** on gross revenue {usd(t['gross_usd'])}, costs {usd(t['cost_usd'])}"
            f" (margin {pct(t['margin'])}); {usd(t['net_usd_per_hour'])} an hour",
            f"- Executions {t['executions']}: included {t['included']}, reverted {t['reverted']}, dropped {t['dropped']},"
            f" pending {t['pending']}; success rate {pct(success)} (KPI {pct(SUCCESS_KPI, 0)}:"
            f" {met(None if pd.isna(success) else success >= SUCCESS_KPI)}), inclusion {pct(t['inclusion_rate'])}",
            "", "### By chain", ""]
        lines += table(profit.by_chain, {"chain": str, "executions": str, "success_rate": pct, "gross_usd": usd,
                                         "base_fee_usd": usd, "priority_fee_usd": usd, "l1_fee_usd": usd,
                                         "builder_tip_usd": usd, "flash_loan_fee_usd": usd, "net_usd": usd,
                                         "margin": pct})
        lines += ["", "### By chain and strategy", ""]
        lines += table(profit.by_strategy, {"chain": str, "strategy": str, "executions": str, "included": str,
                                            "reverted": str, "dropped": str, "success_rate": pct, "gross_usd": usd,
                                            "cost_usd": usd, "net_usd": usd})
        lines += ["", "### Against the previous day and the 7-day average", ""]
        fleet = profit.comparison[profit.comparison["chain"] == TOTAL]
        lines += table(fleet, {c: (usd if c.endswith("usd") else num if c in COMPARED else str) for c in fleet.columns})
        lines += ["", "### Best and worst executions", ""]
        cols = {"id": str, "chain": str, "strategy": str, "status": str, "hash": str, "net_usd": usd}
        lines += table(profit.top, cols) + [""] + table(profit.worst, cols)
        if profit.alerts:
            lines += ["", "### Hours under the thresholds", ""]
            lines += [f"- {a.hour:%H}:00 net {usd(a.net_usd)} ({a.severity})" for a in profit.alerts]
    bad = {k: n for k, n in profit.bad_counts.items() if n}
    lines += ["", "### Bad data", ""]
    lines += [f"- {kind}: {n} rows (left out of every figure)" for kind, n in bad.items()] or ["_none found_"]
    if bad:
        lines += [""] + table(profit.bad_rows, {c: str for c in profit.bad_rows.columns})

    lines += ["", "## Reconciliation with the chain", "",
              f"- {recon.checked} landed executions checked, {recon.confirmed} confirmed, "
              f"{len(recon.mismatches)} mismatches, {len(recon.unverified)} unverified (no endpoint answered)"]
    lines += [f"- not reconciled: {chain}: {why}" for chain, why in recon.not_reconciled.items()]
    lines += [f"- endpoint {name} gave no answer: {why}" for name, why in recon.unreachable.items()]
    if recon.mismatches:
        lines += [""] + table(pd.DataFrame(recon.mismatches), {c: str for c in recon.mismatches[0]})
    if recon.disagreements:
        lines += ["", f"- {len(recon.disagreements)} receipts differ between endpoints (a fork or a broken node)"]

    lines += ["", "## Operations", ""]
    lines += table(ops.nodes, {"node": str, "chain": str, "uptime": lambda v: pct(v, 3), "uptime_met": met,
                               "latency_p99_ms": lambda v: "-" if pd.isna(v) else f"{v:.1f} ms", "latency_met": met,
                               "lag_p99": lambda v: "-" if pd.isna(v) else f"{v:.1f}", "lag_met": met})
    lines += ["", f"KPIs: uptime {pct(UPTIME_KPI, 2)}, RPC latency p99 under {LATENCY_P99_KPI_S * 1000:.0f} ms, "
              f"block lag under {LAG_KPI_BLOCKS} blocks.", ""]
    rec = ops.recoveries
    lines += [f"- Recoveries: {len(rec)}" + (f", time to recover median {rec['seconds'].median():.0f} s, "
                                               f"max {rec['seconds'].max():.0f} s" if len(rec) else "")]
    lines += [f"  - {r.node}: {r.seconds:.0f} s (run {r.run_id})" for r in rec.itertuples()]
    lines += [f"- Restarts and starts by runbooks: {sum(ops.restarts.values())}"
              + (" (" + ", ".join(f"{n} {c}" for n, c in sorted(ops.restarts.items())) + ")" if ops.restarts else "")]
    lines += [f"- Incidents (runs that escalated or failed): {len(ops.incidents)}"]
    lines += [f"  - {i['flow']} {i['node'] or ''}: {i['status']} ({i['result']})" for i in ops.incidents]
    runs = ops.runs
    for flow, what in (("client-upgrade", "Upgrades"), ("disk-prune", "Prunings")):
        mine = runs[runs["flow"] == flow]
        lines += [f"- {what}: {len(mine)}" + ("" if mine.empty else " (" + ", ".join(
            f"{s} {n}" for s, n in mine["status"].fillna("unfinished").value_counts().items()) + ")")]
    verified = sum(b["verified"] for b in ops.backups)
    lines += [f"- Backups made: {len(ops.backups)}, verified {verified}"
              + ("" if verified == len(ops.backups) else " (**not all verified**)")]
    lines += [f"  - {b['kind']} {b['node']}: {'verified' if b['verified'] else 'NOT verified'} ({b['key']})"
              for b in ops.backups]
    lines += [f"- DR drills: {len(ops.drills)}"]
    lines += [f"  - {d.get('chain')} {d.get('node')}: RTO {d.get('rto_s')} s ({met(d['rto_met'])} against 30 min), "
              f"RPO {d.get('rpo_s')} s / {d.get('rpo_blocks')} blocks" for d in ops.drills]
    lines += [f"- could not read: {p}" for p in ops.problems]
    return "\n".join(lines) + "\n"


def slack_text(day: date, profit: DayProfit, recon: Reconciliation, ops: Operations) -> str:
    if profit.empty:
        head = f"Daily report {day}: no executions recorded"
    else:
        t = profit.total
        head = (f"Daily report {day}: net {usd(t['net_usd'])} on {usd(t['gross_usd'])} gross "
                f"({pct(t['margin'])} margin), success {pct(t['success_rate'])}")
    missed = ops.nodes[~(ops.nodes["uptime_met"].astype(bool))]["node"].tolist() if not ops.nodes.empty else []
    return (f"{head}; {len(recon.mismatches)} reconciliation mismatches; {len(ops.recoveries)} recoveries, "
            f"{len(ops.incidents)} incidents, {len(ops.backups)} backups, {len(ops.drills)} drills"
            + (f"; uptime KPI missed by {', '.join(missed)}" if missed else ""))
