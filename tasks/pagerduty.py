"""PagerDuty Events API v2: open (trigger) and close (resolve) incidents.

One POST to the service's events URL per call, with explicit timeouts and a
bounded retry on what PagerDuty documents as transient (HTTP 429, 5xx, a
dropped connection). Events with the same `dedup_key` update one incident;
a `resolve` with that key closes it.

The routing key is a secret: it is registered with the redactor before any
request, never logged, never returned, and errors never include the request
body. Everything else we send (summary, custom details) is redacted too.

    trigger(service, "runbooks/eth-a/<run>", "eth-a did not recover", "error", "eth-a",
            {"status": "stalled"})
    resolve(service, "runbooks/eth-a/<run>")
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx

from tasks.errors import InvalidInput, NotificationError
from tasks.redaction import redact, redact_text, register_secret

if TYPE_CHECKING:  # pragma: no cover
    from blocks import PagerDutyService
    from inventory import Inventory

Severity = Literal["critical", "error", "warning", "info"]
SEVERITIES: tuple[str, ...] = ("critical", "error", "warning", "info")

# Events API v2 limits.
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
MAX_SOURCE = 255

MAX_ATTEMPTS = 3
RETRY_DELAYS_S = (0.5, 1.5)  # between attempts; bounded like everything else


@dataclass(frozen=True)
class PagerDutyResult:
    """What PagerDuty answered: the action, the incident's dedup key, its status line."""

    action: str
    dedup_key: str
    status_code: int
    status: str
    message: str
    attempts: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action, "dedup_key": self.dedup_key, "status_code": self.status_code,
            "status": self.status, "message": self.message, "attempts": self.attempts,
        }


def load_pagerduty(inventory: "Inventory") -> "PagerDutyService | None":
    """The PagerDuty block the inventory names, with its routing key registered as a secret."""
    from blocks import PagerDutyService

    name = inventory.notifications.pagerduty_block
    if not name:
        return None
    service = PagerDutyService.load(name)
    register_secret(service.routing_key)
    return service


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_dedup_key(dedup_key: str) -> str:
    if not isinstance(dedup_key, str) or not dedup_key.strip() or len(dedup_key) > MAX_DEDUP_KEY:
        raise InvalidInput(f"a PagerDuty dedup_key is 1 to {MAX_DEDUP_KEY} characters, got {dedup_key!r}")
    return dedup_key


def trigger(
    service: "PagerDutyService",
    dedup_key: str,
    summary: str,
    severity: Severity,
    source: str,
    custom_details: dict[str, Any] | None = None,
    *,
    component: str | None = None,
    group: str | None = None,
    event_class: str | None = None,
    links: list[dict[str, str]] | None = None,
) -> PagerDutyResult:
    """Open an incident, or update the open one with the same dedup_key."""
    # First: everything below is redacted, and must already know the key.
    register_secret(service.routing_key)
    _check_dedup_key(dedup_key)
    if severity not in SEVERITIES:
        raise InvalidInput(f"PagerDuty severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    if not summary or not source:
        raise InvalidInput("a PagerDuty trigger needs a summary and a source")
    payload: dict[str, Any] = {
        "summary": _clip(redact_text(summary), MAX_SUMMARY),
        "source": _clip(redact_text(source), MAX_SOURCE),
        "severity": severity,
        "custom_details": redact(custom_details or {}),
    }
    for key, value in (("component", component), ("group", group), ("class", event_class)):
        if value:
            payload[key] = redact_text(value)
    body: dict[str, Any] = {"event_action": "trigger", "dedup_key": dedup_key, "payload": payload, "client": "node-runbooks"}
    if links:
        body["links"] = [
            {"href": link["href"], "text": link.get("text", link["href"])}
            for link in links
            if str(link.get("href", "")).startswith(("http://", "https://"))
        ]
    return _send(service, body)


def resolve(service: "PagerDutyService", dedup_key: str) -> PagerDutyResult:
    """Close the incident with this dedup_key (PagerDuty accepts it even if none is open)."""
    register_secret(service.routing_key)
    return _send(service, {"event_action": "resolve", "dedup_key": _check_dedup_key(dedup_key)})


def _send(service: "PagerDutyService", body: dict[str, Any]) -> PagerDutyResult:
    routing_key = service.routing_key.get_secret_value()
    register_secret(routing_key)
    url = service.events_url
    if not url.startswith(("https://", "http://")):
        raise InvalidInput(f"PagerDuty events_url must be an http(s) URL, got {redact_text(url)!r}")
    t = float(service.timeout_seconds)
    timeout = httpx.Timeout(connect=min(5.0, t), read=t, write=t, pool=t)
    action = body["event_action"]
    last_problem = ""
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = client.post(url, json={"routing_key": routing_key, **body})
            except httpx.HTTPError as exc:
                # The exception text names the URL at most, never the body.
                last_problem = f"{type(exc).__name__}: {redact_text(str(exc))}"
            else:
                answer = _json(response)
                if response.status_code in (200, 201, 202):
                    return PagerDutyResult(
                        action=action,
                        dedup_key=str(answer.get("dedup_key") or body.get("dedup_key")),
                        status_code=response.status_code,
                        status=str(answer.get("status", "")),
                        message=str(answer.get("message", "")),
                        attempts=attempt,
                    )
                detail = "; ".join(map(str, answer.get("errors") or [])) or str(answer.get("message") or response.reason_phrase)
                last_problem = f"HTTP {response.status_code}: {redact_text(detail)[:300]}"
                if response.status_code != 429 and response.status_code < 500:
                    raise NotificationError(
                        f"PagerDuty refused the {action} for {body.get('dedup_key')}: {last_problem} "
                        "(check the PagerDuty block's routing key and the event fields)"
                    )
            if attempt < MAX_ATTEMPTS:
                time.sleep(RETRY_DELAYS_S[min(attempt - 1, len(RETRY_DELAYS_S) - 1)])
    raise NotificationError(
        f"PagerDuty did not accept the {action} for {body.get('dedup_key')} after {MAX_ATTEMPTS} attempts "
        f"({redact_text(url)}): {last_problem}"
    )


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
