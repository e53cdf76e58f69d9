"""HTTP for probes: bounded requests, and transport failures turned into short text.

Every request a probe makes goes through `request` (body capped at
MAX_BODY_BYTES) under the probe's `Timeouts`. A node that refuses, freezes,
drops the connection or floods us is a node answer, never an exception:
`transport_error` says which in one short line, `fetch_health` turns it into
an inconclusive `ClientHealth`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tasks.probes.model import DEFAULT_TIMEOUTS, ClientHealth, ProbeError, Timeouts
from tasks.probes.parsing import short

MAX_BODY_BYTES = 1 << 20  # a head probe answer is a few KiB; refuse to buffer more than this

JSON_HEADERS = {"content-type": "application/json"}

# (status code, body) -> ClientHealth: every client health parser has this shape.
HealthParser = Callable[[int, bytes], ClientHealth]


class TooLarge(Exception):
    """The answer was longer than MAX_BODY_BYTES."""


async def request(http: httpx.AsyncClient, method: str, url: str, *, max_bytes: int = MAX_BODY_BYTES,
                  **kwargs: Any) -> tuple[int, bytes]:
    """One request, body capped at `max_bytes` (a head probe's MAX_BODY_BYTES unless the caller expects more)."""
    async with http.stream(method, url, **kwargs) as response:
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"response larger than {max_bytes} bytes")
            chunks.append(chunk)
        return response.status_code, b"".join(chunks)


def transport_error(exc: BaseException, timeouts: Timeouts) -> str:
    """What went wrong on the wire, in one short line an operator can act on."""
    if isinstance(exc, httpx.ConnectTimeout):
        text = f"connect timeout after {timeouts.connect:g}s"
    elif isinstance(exc, httpx.ReadTimeout):
        text = f"read timeout after {timeouts.read:g}s"
    elif isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        text = f"timeout: no complete answer within {timeouts.deadline:g}s"
    elif isinstance(exc, httpx.ConnectError):
        cause = _root_cause(exc)
        text = "connection refused" if isinstance(cause, ConnectionRefusedError) else f"cannot connect: {cause}"
    elif isinstance(exc, httpx.RemoteProtocolError):
        text = f"connection dropped: {exc}"
    elif isinstance(exc, (httpx.ReadError, httpx.WriteError)):
        # Reset while the request was on the wire, e.g. the node killed under it (httpx's own text is empty).
        cause = _root_cause(exc)
        text = "connection lost mid-request" + (f": {cause}" if str(cause) else "")
    elif isinstance(exc, TooLarge):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return short(text)


def _root_cause(exc: BaseException) -> BaseException:
    """The OS-level reason under httpx's wrapper (ConnectionRefusedError, DNS failure...)."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen and len(chain) < 10:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    os_errors = [e for e in chain if isinstance(e, OSError)]
    refused = [e for e in os_errors if isinstance(e, ConnectionRefusedError)]
    return (refused or os_errors[-1:] or chain)[0]


def with_path(url: str, suffix: str) -> str:
    """url with suffix as its path's end, unless it already ends with it."""
    if not suffix:
        return url
    parsed = httpx.URL(url)
    path = parsed.path.rstrip("/")
    if path.endswith(suffix):
        return url
    return str(parsed.copy_with(path=path + suffix))


# --- client health requests ----------------------------------------------------------

async def fetch_health(
    http: httpx.AsyncClient, method: str, url: str, parse: HealthParser, **kwargs: Any
) -> ClientHealth:
    """One health request; transport failures become healthy=None, never an exception."""
    try:
        status, body = await request(http, method, url, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any transport failure is an inconclusive check
        return ClientHealth(healthy=None, detail=f"health endpoint unreachable: {transport_error(exc, _pool_timeouts(http))}")
    return parse(status, body)


def _pool_timeouts(http: httpx.AsyncClient) -> Timeouts:
    t = http.timeout
    try:
        return Timeouts(connect=t.connect or DEFAULT_TIMEOUTS.connect, read=t.read or DEFAULT_TIMEOUTS.read)
    except ProbeError:
        return DEFAULT_TIMEOUTS


async def bounded_health(pending: Awaitable[ClientHealth], timeouts: Timeouts) -> ClientHealth:
    """A health check cut at the probe's deadline, like the head request."""
    try:
        async with asyncio.timeout(timeouts.deadline):
            return await pending
    except TimeoutError:
        return ClientHealth(healthy=None, detail=f"health endpoint unreachable: no answer within {timeouts.deadline:g}s")
