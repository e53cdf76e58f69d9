"""Runbook: how is the fleet right now?

Probe every node and every chain's references concurrently, classify each node
as healthy, lagging, stalled, down or unknown against its chain's thresholds,
emit one event per unhealthy node (deployment triggers start node-recovery
from these), report a healthy node that its load balancer keeps out of
rotation as `out-of-rotation` (with its hold, if an operator placed one),
and leave a table artifact of the whole fleet. Read-only: it
changes nothing, so it keeps no audit record.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event
from pydantic import Field

from prefect.cache_policies import NO_CACHE

from blocks import HAProxyAdmin
from inventory import Inventory, load_inventory
from tasks import guards
from tasks.errors import RunbookError
from tasks.events import NODE_OUT_OF_ROTATION, NODE_UNHEALTHY, node_resource
from tasks.haproxy import HAProxyRuntime
from tasks.probes.assessment import as_dict, assess_nodes

# A node that answers well but takes no traffic: fine for the chain, a lost server for the
# backend. After a crashed run or a healed partition this is what nobody else would notice.
OUT_OF_ROTATION = "out-of-rotation"


def rotation(inventory: Inventory) -> dict[str, str]:
    """Each balanced node's admin state in its load balancer (ready, drain, maint), or "unknown"."""
    out: dict[str, str] = {}
    for name, balancer in inventory.load_balancers.items():
        try:
            runtime = HAProxyRuntime.from_block(HAProxyAdmin.load(balancer.admin_block))
            states = {(s.backend, s.server): s.admin_state for s in runtime.server_states()}
        except (RunbookError, ValueError) as exc:
            get_run_logger().warning("could not read load balancer %s: %s", name, exc)
            states = {}
        for node, n in inventory.nodes.items():
            if n.lb and n.lb.balancer == name:
                out[node] = states.get((n.lb.backend, n.lb.server), "unknown")
    return out


@task(name="probe-fleet", cache_policy=NO_CACHE)
def probe_fleet() -> list[dict]:
    inventory = load_inventory()
    admin, holds = rotation(inventory), guards.holds()
    rows = []
    for n, a in assess_nodes(inventory, sorted(inventory.nodes)).items():
        row = as_dict(a) | {"chain": inventory.nodes[n].chain, "rotation": admin.get(n, "-"),
                            "hold": holds[n].describe() if n in holds else ""}
        if a.healthy and row["rotation"] in ("drain", "maint"):
            row["status"] = OUT_OF_ROTATION
            row["reason"] = (f"healthy but {row['rotation']} in its load balancer"
                             + ("; on hold" if n in holds else "; no hold: the reconciler returns it after the soak period"))
        rows.append(row)
    return rows


@flow(name="fleet-health", log_prints=True)
def fleet_health(
    emit_events: Annotated[bool, Field(description="Emit one event per unhealthy node (it starts node-recovery when automation is on). Off: only report")] = True,
) -> list[dict]:
    """Probe and classify every node; one event per unhealthy node."""
    logger = get_run_logger()
    rows = probe_fleet()
    create_table_artifact(key="fleet-health", table=rows, description="Fleet health: one row per node")
    unhealthy = [r for r in rows if r["status"] != "healthy"]
    for row in unhealthy:
        logger.warning("%s is %s: %s", row["node"], row["status"], row["reason"])
        if emit_events:
            emit_event(
                event=NODE_OUT_OF_ROTATION if row["status"] == OUT_OF_ROTATION else NODE_UNHEALTHY,
                resource=node_resource(row["node"], row["chain"], problem=row["status"]),
                payload={"problem": row["status"]}
                | {k: row[k] for k in ("status", "reason", "head", "reference_head", "lag", "head_age_s")},
            )
    logger.info("%d nodes, %d unhealthy", len(rows), len(unhealthy))
    return rows


if __name__ == "__main__":
    fleet_health()
