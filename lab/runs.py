"""Switching the lab's automation on and off, and finding the runs it started.

Tests switch automation off so only the test at hand acts on the fleet; the
demo and the end-to-end tests switch it on.
"""

from __future__ import annotations

from datetime import datetime, timezone

from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
)
from prefect.client.schemas.sorting import FlowRunSort

from deployments.register import CRASH_DETECTION
from tasks import prefect_api

# The lab's server is local; 30 s covers a busy one, and the client's own
# retries ride out its restart (tests would otherwise fail on a blip).
TIMEOUT_S = 30.0


def set_automation(enabled: bool, schedules: bool | None = None) -> None:
    """Every automation (event triggers) on or off, and every deployment
    schedule too unless `schedules` says otherwise. Crash detection stays on."""
    schedules = enabled if schedules is None else schedules
    with prefect_api.client(TIMEOUT_S, retries=True) as client:
        for d in client.read_deployments():
            for s in d.schedules:
                # Prefect 3.9's server clears a schedule's parameters on a PATCH that omits
                # them: send them back, or dr-drill's schedule would run with none.
                client.update_deployment_schedule(d.id, s.id, active=schedules, parameters=s.parameters or {})
        for a in client.read_automations():
            if a.name == CRASH_DETECTION:
                continue  # part of the orchestration, like Prefect's own services: it never acts on the fleet
            (client.resume_automation if enabled else client.pause_automation)(a.id)


def flow_runs(deployment: str, since: float) -> list:
    """Runs of a deployment due to start between `since` (epoch seconds) and now,
    newest first. By expected start, not creation: the scheduler creates a
    schedule's runs long before they are due, and future ones are left out so
    they cannot crowd out the ones that ran."""
    now = datetime.now(timezone.utc)
    with prefect_api.client(TIMEOUT_S, retries=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
            flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(
                after_=datetime.fromtimestamp(since, timezone.utc), before_=now)),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=50,
        )
