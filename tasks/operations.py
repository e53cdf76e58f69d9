"""A day of operations, from the sources that already hold it, against the seeds' KPIs.

- Prometheus (its HTTP API, the exporter's series): per node uptime (share
  of scrapes with `runbooks_node_up` 1), block lag p99 and max, probe (RPC)
  latency p50 and p99, over the day (or the part of today that is over).
- The audit trail: incidents (runs that escalated or failed), restarts,
  recoveries and their time to recover (run start -> the node back),
  upgrades and prunings, per run.
- The backup store: backups made that day (complete manifests) and whether
  each is verified, DR drills with their RTO and RPO.

KPIs (the seeds'): uptime 99.95%, RPC latency p99 under 50 ms, block lag
under 2 blocks, drills restored in under 30 minutes, every backup verified.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
import pandas as pd

from tasks.audit import read_entries
from tasks.backups.drills import RTO_TARGET_S, read_drills
from tasks.backups.manifest import list_manifests
from tasks.backups.restoring import is_verified
from tasks.errors import InvalidInput

UPTIME_KPI = 0.9995
LATENCY_P99_KPI_S = 0.050
LAG_KPI_BLOCKS = 2
PROMETHEUS_TIMEOUT_S = 15.0
RECOVERY_FLOW, UPGRADE_FLOW, PRUNE_FLOW = "node-recovery", "client-upgrade", "disk-prune"
NODE_COLUMNS = ["node", "chain", "region", "samples", "uptime", "lag_p99", "lag_max", "latency_p50_ms",
                "latency_p99_ms", "uptime_met", "latency_met", "lag_met"]


@dataclass
class Operations:
    nodes: pd.DataFrame  # NODE_COLUMNS, one row per node Prometheus knows that day
    runs: pd.DataFrame  # run_id, flow, node, started, ended, status, result, seconds
    recoveries: pd.DataFrame  # node, run_id, started, seconds: node-recovery runs that recovered the node
    restarts: dict[str, int] = field(default_factory=dict)  # node -> restarts and starts the runbooks did
    incidents: list[dict] = field(default_factory=list)  # runs that escalated or failed
    backups: list[dict] = field(default_factory=list)  # kind, node, key, created_at, verified
    drills: list[dict] = field(default_factory=list)  # the drill records, each with rto_met
    problems: list[str] = field(default_factory=list)  # sources that could not be read: said, not hidden


def day_window(day, now: datetime) -> tuple[datetime, datetime]:
    """[00:00 UTC, next 00:00 UTC), cut at `now` for today; InvalidInput for a day that has not begun."""
    start = datetime(day.year, day.month, day.day, tzinfo=now.tzinfo)
    end = min(start + timedelta(days=1), now)
    if end <= start:
        raise InvalidInput(f"{day} has not begun yet (now {now.isoformat(timespec='seconds')})")
    return start, end


# ------------------------------------------------------------------ Prometheus


def _vector(url: str, query: str, at: datetime) -> dict[str, tuple[dict, float]]:
    """node -> (labels, value) of an instant query."""
    r = httpx.get(f"{url.rstrip('/')}/api/v1/query", params={"query": query, "time": f"{at.timestamp():.3f}"},
                  timeout=PROMETHEUS_TIMEOUT_S, trust_env=False)
    r.raise_for_status()
    body = r.json()
    if body.get("status") != "success":
        raise ValueError(f"{query}: {body.get('error', body)}")
    return {s["metric"].get("node", ""): (s["metric"], float(s["value"][1])) for s in body["data"]["result"]}


def node_figures(url: str, start: datetime, end: datetime) -> pd.DataFrame:
    """Per node uptime, lag and latency over [start, end) from the exporter's series."""
    span = f"[{max(1, int((end - start).total_seconds()))}s]"
    q = {
        "samples": f"count_over_time(runbooks_node_up{span})",
        "uptime": f"avg_over_time(runbooks_node_up{span})",
        "lag_p99": f"quantile_over_time(0.99, runbooks_node_lag_blocks{span})",
        "lag_max": f"max_over_time(runbooks_node_lag_blocks{span})",
        "latency_p50_ms": f"1000 * quantile_over_time(0.5, runbooks_node_probe_latency_seconds{span})",
        "latency_p99_ms": f"1000 * quantile_over_time(0.99, runbooks_node_probe_latency_seconds{span})",
    }
    answers = {name: _vector(url, query, end) for name, query in q.items()}
    rows = []
    for node, (labels, samples) in sorted(answers["samples"].items()):
        row = {"node": node, "chain": labels.get("chain", ""), "region": labels.get("region", ""),
               "samples": int(samples)}
        row |= {name: answers[name].get(node, (None, float("nan")))[1] for name in q if name != "samples"}
        rows.append(row)
    df = pd.DataFrame(rows, columns=NODE_COLUMNS[:9])
    df["uptime_met"] = df["uptime"] >= UPTIME_KPI
    df["latency_met"] = df["latency_p99_ms"] < LATENCY_P99_KPI_S * 1000
    df["lag_met"] = df["lag_p99"] < LAG_KPI_BLOCKS
    return df


# ------------------------------------------------------------------ the audit trail


def audit_figures(start: datetime, end: datetime, directory=None) -> tuple[pd.DataFrame, dict[str, int], list[dict]]:
    """(runs, restarts per node, incidents) from the audit entries written in [start, end)."""
    runs: dict[str, dict] = {}
    restarts: dict[str, int] = defaultdict(int)
    for e in read_entries(since=start, until=end, directory=directory):
        run = runs.setdefault(e["run_id"], {"run_id": e["run_id"], "flow": e.get("flow"), "node": e.get("node"),
                                            "started": None, "ended": None, "status": None, "result": None})
        kind, data = e.get("kind"), e.get("data") or {}
        if kind == "started" and run["started"] is None:
            run["started"] = e["ts"]
        elif kind == "outcome":  # a retried run has one per attempt: the last one stands
            run.update(ended=e["ts"], status=data.get("status"), result=data.get("result"), detail=data.get("detail"))
        elif kind == "action" and data.get("action") in ("restart", "start") and data.get("exit_code") == 0:
            restarts[e.get("node") or "?"] += 1
    df = pd.DataFrame(list(runs.values()), columns=["run_id", "flow", "node", "started", "ended", "status", "result",
                                                    "detail"])
    for col in ("started", "ended"):
        df[col] = pd.to_datetime(df[col], utc=True, format="ISO8601")
    df["seconds"] = (df["ended"] - df["started"]).dt.total_seconds()
    incidents = df[df["status"].isin(["escalated", "failed"])][["run_id", "flow", "node", "status", "result",
                                                                "detail"]].to_dict("records")
    return df.drop(columns=["detail"]), dict(restarts), incidents


# ------------------------------------------------------------------ the backup store


def store_figures(store, start: datetime, end: datetime) -> tuple[list[dict], list[dict]]:
    """(backups made in [start, end) with whether each is verified, the drills run then)."""
    backups = [{"kind": m.kind, "node": m.node, "key": m.key, "created_at": m.created_at.isoformat(),
                "verified": is_verified(store, m)}
               for m in list_manifests(store) if start <= m.created_at < end]
    drills = [dict(d, rto_met=d.get("rto_s") is not None and d["rto_s"] <= RTO_TARGET_S)
              for d in read_drills(store) if start.isoformat() <= d.get("started_at", "") < end.isoformat()]
    return backups, drills


def day_operations(prometheus_url: str | None, store, start: datetime, end: datetime, audit_dir=None) -> Operations:
    """Everything above for [start, end); a source that cannot be read is named in `problems`."""
    problems = []
    nodes = pd.DataFrame(columns=NODE_COLUMNS)
    if prometheus_url:
        try:
            nodes = node_figures(prometheus_url, start, end)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            problems.append(f"Prometheus at {prometheus_url}: {type(exc).__name__}: {exc}")
    else:
        problems.append("no reports.prometheus_url in the inventory: uptime, lag and latency not reported")
    runs, restarts, incidents = audit_figures(start, end, audit_dir)
    recovered = runs[(runs["flow"] == RECOVERY_FLOW) & (runs["result"] == "recovered")]
    backups, drills = [], []
    if store is not None:
        try:
            backups, drills = store_figures(store, start, end)
        except Exception as exc:  # noqa: BLE001 - the report stands without the store's part, and says so
            problems.append(f"backup store: {type(exc).__name__}: {exc}")
    else:
        problems.append("no backup store in the inventory: backups and drills not reported")
    return Operations(nodes=nodes, runs=runs, recoveries=recovered[["node", "run_id", "started", "seconds"]],
                      restarts=restarts, incidents=incidents, backups=backups, drills=drills, problems=problems)
