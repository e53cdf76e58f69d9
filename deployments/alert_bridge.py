"""Alertmanager -> Prefect events: the bridge that lets alerts start runbooks.

Prefect OSS has no inbound webhooks, so Alertmanager posts its webhook
(payload version 4) here and every alert that names a node of the inventory
becomes one Prefect event, posted to `POST {PREFECT_API_URL}/events`:

    firing alert    -> runbooks.alert.firing
    resolved alert  -> runbooks.alert.resolved

on the node's resource (`runbooks.node.<name>`, the same resource fleet-health
uses, so deployment triggers match either source). Which node and which
runbook come from the routing table (deployments/alert_routing.py). An alert
that names no inventory node, or matches no route, or is malformed, starts
nothing: it is answered, logged, counted on /metrics and recorded as a
`runbooks.bridge.unroutable` event saying why. An alert may not invent a node.

What the caller gets back, and why:
    200  every alert was handled (routed or recorded as unroutable, per alert in the JSON body)
    400  not JSON, not a v4 envelope, or larger than the body limit (Alertmanager
         does not retry a 4xx: resending the same bad body cannot help)
    401  missing or wrong credentials
    503  Prefect could not be reached or refused the events (Alertmanager retries)
In every non-200 case nothing was emitted.

What each alert becomes, and why repeats are one event, is in
deployments/alert_events.py; which node and runbook, in
deployments/alert_routing.py. This module is the HTTP service around them.

Run:
    BRIDGE_BEARER_TOKEN=... PREFECT_API_URL=http://127.0.0.1:4200/api \\
    RUNBOOKS_INVENTORY=inventory.yaml python -m deployments.alert_bridge --host 127.0.0.1 --port 19200

Environment:
    PREFECT_API_URL            Prefect API base, e.g. http://127.0.0.1:4200/api (required)
    PREFECT_API_AUTH_STRING    user:password when the Prefect server has basic auth (optional)
    PREFECT_API_KEY            bearer key for Prefect Cloud (optional)
    RUNBOOKS_INVENTORY         inventory file; reloaded when it changes
    BRIDGE_ROUTES              alert routing table (default deployments/alert_routes.yaml); reloaded too
    BRIDGE_BEARER_TOKEN        accept `Authorization: Bearer <token>`
    BRIDGE_BASIC_USER, BRIDGE_BASIC_PASSWORD   accept HTTP basic auth
        (each of the three also as <NAME>_FILE: read from a file instead;
         at least one scheme must be configured or the bridge refuses to start)
    BRIDGE_MAX_BODY_BYTES      largest webhook body accepted (default 1 MiB)

Why FastAPI + uvicorn rather than http.server: both already ship with
Prefect; uvicorn is async, so a slow Prefect holds a coroutine rather than a
thread, and it brings HTTP parsing limits and keep-alive timeouts that a
stdlib server would need by hand. The request body is read as a stream so the
size limit is enforced while reading; FastAPI's own body parsing is not used.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import logging
import os
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import ValidationError

from deployments.alert_events import UNROUTABLE_EVENT, WebhookV4, route_alerts, short
from deployments.alert_routing import DEFAULT_ROUTES, ROUTES_ENV, RoutesError, load_routes, routes_path
from deployments.inventory_watch import WatchedFile, WatchedInventory
from inventory import InventoryError, inventory_path

log = logging.getLogger("runbooks.alert_bridge")

DEFAULT_MAX_BODY_BYTES = 1 << 20
WEBHOOK_PATH = "/alerts"


# What became of each alert, for Prometheus: an alert that starts nothing is
# counted, so "the bridge dropped it" is a graph and an alert, not a log grep.
METRICS = CollectorRegistry()
ALERTS = Counter("runbooks_bridge_alerts", "Alerts received, by what became of them "
                 "(routed: to a runbook or notify; unroutable: no node or no route; malformed)",
                 ["outcome", "runbook"], registry=METRICS)


class BridgeConfigError(SystemExit):
    """The bridge cannot start: the message says which setting to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(f"alert bridge: {message}")


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

def _secret_from_env(name: str, env: dict[str, str]) -> str | None:
    """NAME, or the content of the file NAME_FILE (one trailing newline dropped)."""
    value = env.get(name)
    path = env.get(f"{name}_FILE")
    if value and path:
        raise BridgeConfigError(f"set {name} or {name}_FILE, not both")
    if path:
        try:
            value = Path(path).read_text().removesuffix("\n")
        except OSError as exc:
            raise BridgeConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    return value or None


@dataclass(frozen=True)
class Credentials:
    """What a caller must present. Compared in constant time; never printed."""

    bearer_token: bytes | None = None
    basic_user: bytes | None = None
    basic_password: bytes | None = None

    def __repr__(self) -> str:  # keep secrets out of tracebacks and debug logs
        bearer, basic = ("set" if v else "unset" for v in (self.bearer_token, self.basic_user))
        return f"Credentials(bearer={bearer}, basic={basic})"

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "Credentials":
        token = _secret_from_env("BRIDGE_BEARER_TOKEN", env)
        user = _secret_from_env("BRIDGE_BASIC_USER", env)
        password = _secret_from_env("BRIDGE_BASIC_PASSWORD", env)
        if bool(user) != bool(password):
            raise BridgeConfigError("basic auth needs both BRIDGE_BASIC_USER and BRIDGE_BASIC_PASSWORD")
        if not token and not user:
            raise BridgeConfigError(
                "no credentials configured: set BRIDGE_BEARER_TOKEN, or BRIDGE_BASIC_USER and "
                "BRIDGE_BASIC_PASSWORD (or their *_FILE variants). The bridge never runs unauthenticated."
            )
        return cls(
            bearer_token=token.encode() if token else None,
            basic_user=user.encode() if user else None,
            basic_password=password.encode() if password else None,
        )

    def accepts(self, authorization: str | None) -> bool:
        """True when the Authorization header carries a configured credential."""
        if not authorization:
            return False
        scheme, _, value = authorization.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.bearer_token:
            return hmac.compare_digest(value.encode("utf-8", "surrogateescape"), self.bearer_token)
        if scheme == "basic" and self.basic_user:
            try:
                decoded = base64.b64decode(value.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError, ValueError):
                return False
            user, sep, password = decoded.partition(b":")
            # Both comparisons always run: no early exit that times the user name.
            user_ok = hmac.compare_digest(user, self.basic_user)
            password_ok = hmac.compare_digest(password, self.basic_password or b"")
            return bool(sep) and user_ok and password_ok
        return False

    @property
    def challenge(self) -> str:
        return "Bearer" if self.bearer_token else 'Basic realm="runbooks-alert-bridge"'


@dataclass(frozen=True)
class BridgeConfig:
    prefect_api_url: str
    credentials: Credentials
    inventory_path: Path
    routes_path: Path = field(default_factory=routes_path)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    prefect_auth_header: str | None = None  # never logged
    # Prefect is local or near: a slow answer is an outage, and Alertmanager retries.
    prefect_timeout: httpx.Timeout = field(
        default_factory=lambda: httpx.Timeout(connect=2.0, read=5.0, write=5.0, pool=2.0))

    def __repr__(self) -> str:
        return (f"BridgeConfig(prefect_api_url={self.prefect_api_url!r}, inventory={str(self.inventory_path)!r}, "
                f"routes={str(self.routes_path)!r}, max_body_bytes={self.max_body_bytes}, {self.credentials!r})")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, inventory: str | None = None,
                 routes: str | None = None) -> "BridgeConfig":
        env = dict(os.environ if env is None else env)
        api = (env.get("PREFECT_API_URL") or "").rstrip("/")
        if not api:
            raise BridgeConfigError("PREFECT_API_URL is not set (e.g. http://127.0.0.1:4200/api)")
        try:
            url = httpx.URL(api)
        except httpx.InvalidURL as exc:
            raise BridgeConfigError(f"PREFECT_API_URL is not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise BridgeConfigError("PREFECT_API_URL must be an http(s) URL with a host")
        raw_limit = env.get("BRIDGE_MAX_BODY_BYTES") or str(DEFAULT_MAX_BODY_BYTES)
        if not raw_limit.isdigit() or not 1024 <= int(raw_limit) <= 64 << 20:
            raise BridgeConfigError(f"BRIDGE_MAX_BODY_BYTES must be a byte count in [1024, 64 MiB], got {raw_limit!r}")
        auth_header = None
        if env.get("PREFECT_API_AUTH_STRING"):  # OSS server basic auth ("user:password")
            auth_header = "Basic " + base64.b64encode(env["PREFECT_API_AUTH_STRING"].encode()).decode()
        elif env.get("PREFECT_API_KEY"):  # Prefect Cloud
            auth_header = "Bearer " + env["PREFECT_API_KEY"]
        return cls(
            prefect_api_url=api,
            credentials=Credentials.from_env(env),
            inventory_path=inventory_path(inventory),
            routes_path=Path(routes or env.get(ROUTES_ENV) or DEFAULT_ROUTES),
            max_body_bytes=int(raw_limit),
            prefect_auth_header=auth_header,
        )


# ---------------------------------------------------------------------------
# Prefect
# ---------------------------------------------------------------------------

class PrefectUnavailable(Exception):
    """Prefect could not be reached or did not accept the events."""


class PrefectEvents:
    def __init__(self, config: BridgeConfig) -> None:
        headers = {"Authorization": config.prefect_auth_header} if config.prefect_auth_header else {}
        # trust_env=False: the bridge talks to its Prefect server directly, never
        # through a proxy picked up from the environment.
        self.http = httpx.AsyncClient(base_url=config.prefect_api_url, timeout=config.prefect_timeout,
                                      headers=headers, trust_env=False)

    async def emit(self, events: list[dict]) -> None:
        """All the webhook's events in one request: they land together or not at all."""
        try:
            response = await self.http.post("/events", json=events)
        except httpx.HTTPError as exc:
            raise PrefectUnavailable(f"cannot reach Prefect: {type(exc).__name__}: {exc}") from None
        if not response.is_success:
            raise PrefectUnavailable(f"Prefect answered HTTP {response.status_code}: {response.text[:300]}")

    async def health(self) -> str | None:
        """None when Prefect's /health answers, else what went wrong."""
        try:
            response = await self.http.get("/health")
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if response.is_success else f"HTTP {response.status_code}"

    async def close(self) -> None:
        await self.http.aclose()


# ---------------------------------------------------------------------------
# The HTTP service
# ---------------------------------------------------------------------------

class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes `limit` bytes.

    A declared Content-Length over the limit is refused before reading; a
    body without one (chunked) or lying about it is counted as it arrives.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(config: BridgeConfig) -> FastAPI:
    inventory = WatchedInventory(config.inventory_path)
    routes = WatchedFile(config.routes_path, load_routes, RoutesError, "alert routes")
    prefect = PrefectEvents(config)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await prefect.close()

    # No docs/openapi routes: the bridge exposes two endpoints and nothing else.
    app = FastAPI(title="runbooks alert bridge", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)

    def refuse(status: int, error: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error": error, "emitted": 0}, status_code=status, headers=headers)

    @app.post(WEBHOOK_PATH)
    async def receive_alerts(request: Request):
        client = request.client.host if request.client else "?"
        if not config.credentials.accepts(request.headers.get("authorization")):
            log.warning("refused a webhook from %s: missing or wrong credentials", client)
            return refuse(401, "missing or wrong credentials", **{"WWW-Authenticate": config.credentials.challenge})
        try:
            body = await read_body(request, config.max_body_bytes)
        except BodyTooLarge:
            log.warning("refused a webhook from %s: body larger than %d bytes", client, config.max_body_bytes)
            return refuse(400, f"body larger than {config.max_body_bytes} bytes", Connection="close")
        try:
            document = json.loads(body)
            # "\ud800" is valid JSON but no valid text: it could not be sent on to Prefect.
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError/EncodeError are ValueErrors
            log.warning("refused a webhook from %s: not JSON (%s)", client, short(str(exc)))
            return refuse(400, "body is not JSON (or holds text that is not valid Unicode)")
        try:
            webhook = WebhookV4.model_validate(document)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
            log.warning("refused a webhook from %s: not an Alertmanager v4 webhook: %s", client, short(problems, 300))
            return refuse(400, f"not an Alertmanager v4 webhook: {problems}")
        if webhook.truncatedAlerts:
            log.warning("Alertmanager truncated %d alerts of group %s (max_alerts)",
                        webhook.truncatedAlerts, short(webhook.groupKey))
        routed = route_alerts(webhook, inventory.current(), routes.current())
        if routed.events:
            try:
                await prefect.emit(routed.events)
            except PrefectUnavailable as exc:
                log.error("%d events not delivered, answering 503 so Alertmanager retries: %s",
                          len(routed.events), exc)
                return refuse(503, "Prefect unavailable, retry later", **{"Retry-After": "5"})
        for outcome, runbook in routed.counts:  # counted once delivered: a retried webhook is not counted twice
            ALERTS.labels(outcome=outcome, runbook=runbook).inc()
        for event in routed.events:
            if event["event"] != UNROUTABLE_EVENT:
                log.info("emitted %s for %s (alert %s, %s, reason %s)", event["event"],
                         event["resource"]["runbooks.node"], event["payload"]["fingerprint"],
                         event["payload"]["runbook"], short(event["payload"]["reason"]))
        emitted = sum(o["outcome"] == "emitted" for o in routed.outcomes)
        return {"received": len(webhook.alerts), "emitted": emitted,
                "unroutable": len(routed.outcomes) - emitted, "alerts": routed.outcomes}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(METRICS), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz():
        problem = await prefect.health()
        body = {"status": "ok" if problem is None else "degraded",
                "prefect": "ok" if problem is None else f"unreachable: {short(problem, 200)}",
                "inventory_nodes": len(inventory.current().nodes)}
        return JSONResponse(body, status_code=200 if problem is None else 503)

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.alert_bridge", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=19200)
    parser.add_argument("--inventory", help="inventory file (default: $RUNBOOKS_INVENTORY or inventory.yaml)")
    parser.add_argument("--routes", help=f"alert routing table (default: ${ROUTES_ENV} or {DEFAULT_ROUTES.name})")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    # Our own handler: importing Prefect has already configured the root logger.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("runbooks")
    ours.handlers[:] = [handler]
    ours.setLevel(args.log_level.upper())
    ours.propagate = False

    config = BridgeConfig.from_env(inventory=args.inventory, routes=args.routes)
    try:
        app = create_app(config)
    except (InventoryError, RoutesError) as exc:
        raise BridgeConfigError(str(exc)) from None

    import uvicorn

    log.info("alert bridge on http://%s:%d%s -> %s/events (inventory %s, body limit %d bytes)",
             args.host, args.port, WEBHOOK_PATH, config.prefect_api_url, config.inventory_path, config.max_body_bytes)
    # No access log: a misconfigured sender may put a token in the query string.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                server_header=False, timeout_keep_alive=5, limit_concurrency=256)


if __name__ == "__main__":
    main()
