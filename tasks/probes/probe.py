"""Probing: one HTTP request per node (its head) plus, for clients that have one,
one request to the client's health endpoint, concurrently, each bounded by the
probe's timeouts.

Whatever a node does wrong ends up in `NodeProbe.error` with `ok=False`:
probing never raises for a node problem, only `ProbeError` for bad input,
before any request is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from tasks.probes.model import (
    DEFAULT_HEALTH,
    DEFAULT_TIMEOUTS,
    HealthOptions,
    NodeProbe,
    ProbeError,
    ProbeTarget,
    Timeouts,
)
from tasks.probes.evm import parse_client_version
from tasks.probes.parsing import batch_body, snippet
from tasks.probes.registry import HeadProtocol, probe_for
from tasks.probes.targets import checked_target
from tasks.probes.transport import JSON_HEADERS, bounded_health, request, transport_error, with_path


async def probe_many(
    targets: Sequence[ProbeTarget | tuple],
    concurrency: int = 64,
    timeout: Timeouts | float = DEFAULT_TIMEOUTS,
    health: HealthOptions = DEFAULT_HEALTH,
) -> list[NodeProbe]:
    """Probe every target concurrently through one shared connection pool.

    Returns one NodeProbe per target, in the order given. `timeout` is a
    `Timeouts`, or a number of seconds used as the read timeout (the connect
    timeout stays at its default unless that is longer).
    """
    checked = [checked_target(t) for t in targets]
    timeouts = _timeouts(timeout)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency <= 4096:
        raise ProbeError(f"concurrency must be an integer in [1, 4096], got {concurrency!r}")
    if not checked:
        return []
    gate = asyncio.Semaphore(concurrency)
    # A probe may have two requests in flight (RPC and health endpoint). No
    # keep-alive: a sweep asks each node once, and httpcore 1.0 scans every
    # pooled connection (a select() each) whenever a request starts or ends, so
    # a pool of idle connections made a 200-node sweep 3-4x slower (bench/README.md).
    limits = httpx.Limits(max_connections=2 * concurrency, max_keepalive_connections=0)
    # trust_env=False: probes talk to nodes directly, never through a proxy from the environment.
    async with httpx.AsyncClient(timeout=timeouts.for_httpx(), limits=limits, trust_env=False) as http:

        async def one(target: ProbeTarget) -> NodeProbe:
            async with gate:
                return await probe_node(http, target, timeouts, health)

        return list(await asyncio.gather(*(one(t) for t in checked)))


def probe_many_sync(
    targets: Sequence[ProbeTarget | tuple],
    concurrency: int = 64,
    timeout: Timeouts | float = DEFAULT_TIMEOUTS,
    health: HealthOptions = DEFAULT_HEALTH,
) -> list[NodeProbe]:
    """`probe_many` for synchronous callers, with or without a running event loop.

    Prefect may run a sync task inside a thread that already has a running
    loop; then the probe runs on a fresh loop in a helper thread.
    """
    coro = probe_many(targets, concurrency=concurrency, timeout=timeout, health=health)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe-loop") as pool:
        return pool.submit(asyncio.run, coro).result()


async def probe_node(
    http: httpx.AsyncClient,
    target: ProbeTarget | tuple,
    timeout: Timeouts | float = DEFAULT_TIMEOUTS,
    health: HealthOptions = DEFAULT_HEALTH,
) -> NodeProbe:
    """Probe one node with a caller's client: the head request and the client
    health request run concurrently, each bounded by the timeouts."""
    t = checked_target(target)
    timeouts = _timeouts(timeout)
    client = probe_for(t.client)
    head_part = _probe_head(http, client.head, t.url, timeouts, health)
    if client.health is None or not t.health_url:
        (fields, latency), fetched = await head_part, None
    else:
        health_part = bounded_health(client.health(http, t.health_url, health), timeouts)
        (fields, latency), fetched = await asyncio.gather(head_part, health_part)
    if isinstance(fields, str):
        return NodeProbe(name=t.name, url=t.url, ok=False, error=fields, latency_s=latency, health=fetched)
    # A head protocol that carries its own health (op-node, heimdall, solana)
    # fills it in; a separate health endpoint, when configured, wins.
    own_health = fields.pop("health", None)
    # Parsed here, once for every head protocol: each gives its version as
    # "name/version..." (op-node and solana prefix theirs), and only here is the
    # declared client known, which tells a Geth fork answering "Geth/..." apart.
    parsed = parse_client_version(fields.get("client_version"), declared=t.client)
    return NodeProbe(name=t.name, url=t.url, ok=True, latency_s=latency,
                     health=fetched if fetched is not None else own_health,
                     client=parsed.client if parsed else None, version=parsed.version if parsed else None, **fields)


def _timeouts(timeout: Timeouts | float) -> Timeouts:
    if isinstance(timeout, Timeouts):
        return timeout
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        return Timeouts(connect=min(DEFAULT_TIMEOUTS.connect, float(timeout)), read=float(timeout))
    raise ProbeError(f"timeout must be Timeouts or seconds, got {timeout!r}")


async def _probe_head(
    http: httpx.AsyncClient, protocol: HeadProtocol, url: str, timeouts: Timeouts, options: HealthOptions
) -> tuple[dict | str, float]:
    """(fields, latency) on an answer; (error, latency) otherwise. Never raises for the node."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeouts.deadline):
            if protocol.method == "POST":
                status, body = await request(http, "POST", url, content=batch_body(protocol.batch),
                                             headers=JSON_HEADERS)
            else:
                status, body = await request(http, "GET", with_path(url, protocol.path))
    except Exception as exc:  # noqa: BLE001 - every transport failure is a node answer
        return transport_error(exc, timeouts), time.monotonic() - started
    latency = time.monotonic() - started
    if not 200 <= status < 300:
        return f"HTTP {status}{snippet(body)}", latency
    return protocol.interpret(status, body, time.time(), options), latency
