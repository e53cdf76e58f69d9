"""Switching the lab's automation on and off, and finding the runs it started.

Tests switch automation off so only the test at hand acts on the fleet; the
demo and the end-to-end tests switch it on.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.sorting import FlowRunSort


def set_automation(enabled: bool, schedules: bool | None = None) -> None:
    """Every automation (event triggers) on or off, and every deployment
    schedule too unless `schedules` says otherwise."""
    asyncio.run(_set_automation(enabled, enabled if schedules is None else schedules))


async def _set_automation(triggers: bool, schedules: bool) -> None:
    async with get_client() as client:
        for d in await client.read_deployments():
            for s in d.schedules:
                await client.update_deployment_schedule(d.id, s.id, active=schedules)
        for a in await client.read_automations():
            await (client.resume_automation(a.id) if triggers else client.pause_automation(a.id))


def flow_runs(deployment: str, since: float) -> list:
    """Runs of a deployment created after `since` (epoch seconds), newest first."""
    return asyncio.run(_flow_runs(deployment, since))


async def _flow_runs(deployment: str, since: float) -> list:
    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=50,
        )
    cutoff = datetime.fromtimestamp(since, timezone.utc)
    return [r for r in runs if r.created and r.created >= cutoff]
