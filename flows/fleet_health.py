"""Runbook: how is the fleet right now?

Probe every node and every chain's references concurrently, classify each node
as healthy, lagging, stalled, down or unknown against its chain's thresholds,
emit one event per unhealthy node (deployment triggers start node-recovery
from these), and leave a table artifact of the whole fleet. Read-only: it
changes nothing, so it keeps no audit record.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event
from pydantic import Field

from inventory import load_inventory
from tasks.events import NODE_UNHEALTHY, node_resource
from tasks.probes.assessment import as_dict, assess_nodes
from tasks.steps import step

@step(name="probe-fleet")
def probe_fleet() -> list[dict]:
    inventory = load_inventory()
    return [as_dict(a) | {"chain": inventory.nodes[n].chain}
            for n, a in assess_nodes(inventory, sorted(inventory.nodes)).items()]


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
                event=NODE_UNHEALTHY,
                resource=node_resource(row["node"], row["chain"], problem=row["status"]),
                payload={"problem": row["status"]}
                | {k: row[k] for k in ("status", "reason", "head", "reference_head", "lag", "head_age_s")},
            )
    logger.info("%d nodes, %d unhealthy", len(rows), len(unhealthy))
    return rows


if __name__ == "__main__":
    fleet_health()
