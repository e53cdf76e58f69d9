"""Alertmanager's webhook (payload version 4) -> the Prefect events the bridge emits.

Pure: no HTTP, no Prefect. Every alert of a webhook becomes one event: on its
node (`runbooks.alert.firing` / `.resolved`) when the routing table
(deployments/alert_routing.py) finds a node and a route, else a
`runbooks.bridge.unroutable` record that says why. Alerts are validated one
by one, so a malformed alert costs only itself.

Event ids are derived from the alert (fingerprint, status, startsAt), not
random: Prefect drops an event whose id it has already seen (storage and
triggers both), so Alertmanager's retries, its repeat notifications and a
second Alertmanager replica cannot start a second recovery for one incident.
A new incident has a new startsAt and so a new id.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from deployments.alert_routing import NOTIFY, Route, RouteTable, find_node
from deployments.alert_routing import fingerprint as fingerprint_of
from inventory import Inventory
from tasks.events import ALERT_FIRING, ALERT_RESOLVED, ALERT_RUNBOOKS, ALERT_UNROUTABLE, node_resource

log = logging.getLogger("runbooks.alert_bridge")

FIRING_EVENT = ALERT_FIRING
RESOLVED_EVENT = ALERT_RESOLVED
UNROUTABLE_EVENT = ALERT_UNROUTABLE
# A fixed namespace: the same alert state maps to the same event id in every
# bridge replica and across restarts.
EVENT_ID_NAMESPACE = uuid.UUID("6f0f5a4e-1c2b-4d8e-9a57-3c1e0b7d2a90")


# ---------------------------------------------------------------------------
# The webhook, as Alertmanager sends it (payload version 4)
# ---------------------------------------------------------------------------

def _rfc3339(value: str) -> str:
    """Validate an RFC 3339 timestamp and keep Alertmanager's text as it is."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise ValueError("timestamp has no time zone")
    return value


Timestamp = Annotated[str, Field(max_length=64), AfterValidator(_rfc3339)]
Labels = dict[Annotated[str, Field(max_length=1024)], str]


class WebhookAlert(BaseModel):
    # Unknown fields are ignored: newer Alertmanagers may add some.
    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: Labels = {}
    startsAt: Timestamp
    endsAt: Timestamp | None = None
    generatorURL: str = ""
    # Senders other than Alertmanager (amtool, scripts, other bridges) often
    # leave it out: it is then computed from the labels as Alertmanager does.
    fingerprint: str = Field("", pattern=r"^([A-Za-z0-9._:-]{1,128})?$")

    @model_validator(mode="after")
    def _fingerprint_from_labels(self) -> "WebhookAlert":
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint_of(self.labels))
        return self


class WebhookV4(BaseModel):
    """The envelope. Its alerts are validated one by one (`parse_alert`): one
    malformed alert in a group must not cost the others their runbook."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    alerts: list[Any]
    receiver: str = ""
    groupKey: str = ""
    truncatedAlerts: Annotated[int, Field(ge=0)] = 0
    groupLabels: Labels = {}
    commonLabels: Labels = {}
    commonAnnotations: Labels = {}
    externalURL: str = ""


def parse_alert(raw: Any) -> tuple[WebhookAlert | None, str]:
    """(the alert, "") or (None, what is wrong with it)."""
    try:
        return WebhookAlert.model_validate(raw), ""
    except ValidationError as exc:
        return None, "; ".join(f"{'.'.join(map(str, e['loc'])) or 'alert'}: {e['msg']}" for e in exc.errors()[:5])


def short(text: str, limit: int = 80) -> str:
    """Untrusted text made safe for one log line."""
    text = repr(text)[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------
# Alerts -> events
# ---------------------------------------------------------------------------

def event_id(alert: WebhookAlert, kind: str = "") -> str:
    """The same alert state always gets the same id, so Prefect drops repeats."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{kind}{alert.fingerprint}|{alert.status}|{alert.startsAt}"))


def _alert_fields(alert: WebhookAlert) -> dict[str, Any]:
    return {"alertname": alert.labels.get("alertname", ""), "fingerprint": alert.fingerprint, "status": alert.status,
            "startsAt": alert.startsAt, "endsAt": alert.endsAt, "labels": dict(alert.labels),
            "annotations": dict(alert.annotations)}


def alert_event(alert: WebhookAlert, node: str, chain: str, route: Route, reason: str, found_by: str,
                occurred: datetime) -> dict[str, Any]:
    """The alert on the node's resource. Only a route to a runbook names it as
    the remediation (the label its trigger matches); a `notify` route does not."""
    alertname = alert.labels.get("alertname", "")
    runbook = None if route.runbook == NOTIFY else route.runbook
    resource = node_resource(node, chain, problem=reason if runbook else None)
    return {
        "id": event_id(alert),
        "occurred": occurred.isoformat(),
        "event": FIRING_EVENT if alert.status == "firing" else RESOLVED_EVENT,
        "resource": resource,
        "related": [{
            "prefect.resource.id": f"runbooks.alert.{alert.fingerprint}",
            "prefect.resource.role": "alert",
            "prefect.resource.name": alertname[:200] or alert.fingerprint,
        }],
        "payload": {
            **_alert_fields(alert),
            "severity": route.severity or alert.labels.get("severity"),
            "reason": reason,
            "problem": reason,
            "runbook": route.runbook,
            "route": route.describe(),
            "node_found_by": found_by,
        },
    }


def unroutable_event(why: str, occurred: datetime, alert: WebhookAlert | None = None, raw: Any = None,
                     node: str | None = None) -> dict[str, Any]:
    """A record of an alert that starts nothing, where an operator finds it:
    `runbooks.bridge.unroutable` in the event feed, on the alert's resource."""
    if alert is not None:
        ident, name, fields = event_id(alert, "unroutable|"), alert.labels.get("alertname", ""), _alert_fields(alert)
        resource_id = f"runbooks.alert.{alert.fingerprint}"
    else:  # malformed: no fingerprint to trust, so the id comes from what was sent
        text = json.dumps(raw, sort_keys=True, ensure_ascii=False, default=str)
        ident = str(uuid.uuid5(EVENT_ID_NAMESPACE, f"malformed|{text}"))
        name, fields, resource_id = "", {"alert": text[:1000]}, "runbooks.alert.malformed"
    event = {
        "id": ident,
        "occurred": occurred.isoformat(),
        "event": UNROUTABLE_EVENT,
        "resource": {"prefect.resource.id": resource_id, "prefect.resource.name": name[:200] or resource_id},
        "payload": {"why": why, **fields},
    }
    if node:
        event["related"] = [{"prefect.resource.id": f"runbooks.node.{node}", "prefect.resource.role": "node"}]
    return event


@dataclass
class Routed:
    """What became of one webhook: the events to send, and per alert what happened."""

    events: list[dict] = field(default_factory=list)
    outcomes: list[dict] = field(default_factory=list)
    counts: list[tuple[str, str]] = field(default_factory=list)  # (outcome, runbook) for the metric


def route_alerts(webhook: WebhookV4, inventory: Inventory, table: RouteTable) -> Routed:
    """Every alert becomes an event: on its node when a route and a node are
    found, else a `runbooks.bridge.unroutable` record saying why."""
    now = datetime.now(timezone.utc)
    out = Routed()
    for raw in webhook.alerts:
        alert, problem = parse_alert(raw)
        if alert is None:
            event = unroutable_event(f"malformed alert: {problem}", now, raw=raw)
            out.events.append(event)
            out.outcomes.append({"outcome": "rejected", "why": problem, "event_id": event["id"]})
            out.counts.append(("malformed", ""))
            log.warning("rejected a malformed alert: %s", short(problem, 300))
            continue
        alertname = alert.labels.get("alertname", "")
        outcome = {"fingerprint": alert.fingerprint, "alertname": alertname, "status": alert.status}
        match = find_node(alert.labels, table, inventory)
        route = table.route(alert.labels)
        reason = ((route.reason if route else None) or alert.labels.get("reason") or alertname)
        why = None
        if match.node is None:
            why = match.how
        elif route is None:
            why = "no route matches the alert (add one to the routing table)"
        elif route.runbook in ALERT_RUNBOOKS and reason not in ALERT_RUNBOOKS[route.runbook]:
            why = (f"the route ({route.describe()}) starts {route.runbook}, which handles "
                   f"{', '.join(sorted(ALERT_RUNBOOKS[route.runbook]))}, and the alert's reason is {reason!r}")
        outcome["node"] = match.node
        if why is None:
            chain = inventory.nodes[match.node].chain
            if alert.labels.get("chain") not in (None, chain):
                log.warning("alert %s names chain %s for %s, the inventory says %s; using the inventory",
                            alert.fingerprint, short(alert.labels["chain"]), match.node, chain)
            event = alert_event(alert, match.node, chain, route, reason, match.how, now)
            outcome.update(outcome="emitted", runbook=route.runbook, reason=reason, found_by=match.how)
            out.counts.append(("routed", route.runbook))
        else:
            event = unroutable_event(why, now, alert=alert, node=match.node)
            outcome.update(outcome="unroutable", why=why)
            out.counts.append(("unroutable", ""))
            log.warning("alert %s (%s, %s) starts nothing: %s", alert.fingerprint, short(alertname),
                        alert.status, short(why, 300))
        outcome.update(event=event["event"], event_id=event["id"])
        out.events.append(event)
        out.outcomes.append(outcome)
    return out
