"""What started a run: an operator, a schedule, an event, or an alert.

Automatic runs (schedule, event, alert) honour the pause switch and give up
quickly when another run holds what they need; an operator's run does
neither, because a human has decided. The trigger is recorded first in
every run's audit record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks import events
from tasks.vocabulary import TriggerKind


@dataclass(frozen=True)
class Trigger:
    kind: TriggerKind
    reason: str
    event_id: str | None = None
    event: dict | None = None  # the Prefect event, when one started the run
    operator: str | None = None
    parent_run: str | None = None  # the run that started this one (the reconciler, for its repairs)

    @property
    def automatic(self) -> bool:
        return self.kind is not TriggerKind.manual

    @property
    def alert(self) -> dict | None:
        """The alert behind an alert-started run (name, fingerprint, startsAt, severity)."""
        if self.kind is not TriggerKind.alert or not self.event:
            return None
        payload = self.event.get("payload") or {}
        return {k: payload.get(k) for k in ("alertname", "fingerprint", "startsAt", "severity")}

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value, "reason": self.reason}
        if self.event_id:
            out["event_id"] = self.event_id
            out["event"] = self.event["event"] if self.event else "(not found)"
        if self.alert:
            out["alert"] = self.alert
        if self.operator:
            out["operator"] = self.operator
        if self.parent_run:
            out["parent_run"] = self.parent_run
        return out


def describe(reason: str, trigger_event_id: str | None = None, operator: str | None = None) -> Trigger:
    """The trigger of the current run, from its parameters and the run itself."""
    if trigger_event_id:
        event = events.read_event(trigger_event_id)
        kind = TriggerKind.alert if event and event.get("event") == events.ALERT_FIRING else TriggerKind.event
        return Trigger(kind, reason, trigger_event_id, event)
    parent = _parent_trigger()
    if parent is not None:
        return parent(reason)
    if _scheduled():
        return Trigger(TriggerKind.schedule, reason)
    return Trigger(TriggerKind.manual, reason, operator=operator)


def _parent_trigger():
    """A run started by another run (a subflow) was started the way its parent was, as the parent's audit says."""
    from prefect.runtime import flow_run

    from tasks.audit import read_entries

    parent_id = flow_run.get_parent_flow_run_id()
    if not parent_id:
        return None
    started = read_entries(run_id=str(parent_id), kind="started")
    parent = (started[0]["data"].get("trigger") or {}) if started else {}
    try:
        kind = TriggerKind(parent.get("kind"))
    except ValueError:
        kind = TriggerKind.event  # a parent we cannot read is automation, not an operator who decided
    return lambda reason: Trigger(kind, reason, parent.get("event_id"), None, parent.get("operator"),
                                  parent_run=str(parent_id))


def _scheduled() -> bool:
    """Did the deployment's schedule create this run? (Prefect marks those runs auto_scheduled.)"""
    from prefect.runtime import flow_run

    from tasks import prefect_api

    run_id = flow_run.get_id()
    if not run_id or not flow_run.get_scheduled_start_time():
        return False
    try:
        with prefect_api.client() as client:
            return bool(client.read_flow_run(run_id).auto_scheduled)
    except Exception:  # noqa: BLE001 - unknown counts as manual: never pauses an operator's run by mistake
        return False
