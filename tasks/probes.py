"""Node probes: ask every node where its head is, and judge the answer.

One probe path for the whole product. A probe is one HTTP request per node
(a JSON-RPC batch) plus, for clients that have one, one request to the
client's own health endpoint, both bounded by explicit timeouts. Whatever a
node does wrong (refuses the connection, freezes, answers HTTP 502, answers
garbage) ends up in `NodeProbe.error` with `ok=False`: probing never raises
for a node problem. It raises `ProbeError` only for bad input, before any
request is sent.

`classify` is the one place where a probe becomes a verdict (healthy,
lagging, stalled, down, unknown), against the thresholds of the node's chain
in the inventory.

    probes = probe_many_sync([("eth-a", "http://10.0.0.5:8545", "erigon", None), ...])
    verdict = classify(probes[0], reference_head(reference_probes), chain)

Every parser of a client response takes the raw answer (status code, body)
and never raises on garbage; the response shapes come from the clients' own
code and docs (see tests/fixtures/health/README.md).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

import httpx
from pydantic import BaseModel, ConfigDict

from inventory import Chain, ChainFamily, Client, Node

try:  # the product's one exception hierarchy: refused input is InvalidInput (a RunbookError)
    from tasks.errors import InvalidInput as _InputError
except ImportError:  # pragma: no cover - tasks/errors.py not there
    _InputError = ValueError


class ProbeError(_InputError):
    """Bad probe input (a malformed URL, an unknown client, a bad option).

    Node problems are never raised: they are reported in `NodeProbe.error`.
    """


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Timeouts:
    """How long to wait for a node. Every request of a probe gets these.

    A probe as a whole never takes longer than `deadline` (connect + read):
    httpx's read timeout applies per read, so a node that drips bytes could
    otherwise hold a probe for much longer.
    """

    connect: float = 2.0
    read: float = 3.0

    def __post_init__(self) -> None:
        for name in ("connect", "read"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 300:
                raise ProbeError(f"timeout {name} must be a number of seconds in (0, 300], got {value!r}")

    @property
    def deadline(self) -> float:
        return self.connect + self.read

    def for_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.read, pool=self.deadline)


DEFAULT_TIMEOUTS = Timeouts()

ERIGON_CHECK = re.compile(r"synced|min_peer_count\d{1,6}|check_block\d{1,12}|max_seconds_behind\d{1,9}")


@dataclass(frozen=True)
class HealthOptions:
    """What the client health checks ask for and tolerate."""

    # X-ERIGON-HEALTHCHECK values; each is one header. e.g. ("synced", "min_peer_count3").
    erigon_checks: tuple[str, ...] = ("synced",)
    # op-node: the safe head trails the unsafe head by the batcher's submission
    # interval; a gap beyond this many L2 blocks means batches are not landing.
    op_node_max_unsafe_safe_gap: int = 1800
    # op-node: the unsafe head must be newer than this (P2P gossip or sequencing stopped).
    op_node_max_unsafe_age_s: float = 60.0
    # Avalanche: the chain whose info.isBootstrapped is asked.
    avalanche_chain: str = "C"

    def __post_init__(self) -> None:
        bad = [c for c in self.erigon_checks if not isinstance(c, str) or not ERIGON_CHECK.fullmatch(c)]
        if bad:
            raise ProbeError(
                f"unknown Erigon health check(s) {bad}: use synced, min_peer_count<N>, "
                "check_block<N> or max_seconds_behind<S>"
            )
        if not isinstance(self.avalanche_chain, str) or not re.fullmatch(r"[A-Za-z0-9]{1,64}", self.avalanche_chain):
            raise ProbeError(f"avalanche_chain must be a chain alias or ID, got {self.avalanche_chain!r}")


DEFAULT_HEALTH = HealthOptions()

MAX_BODY_BYTES = 1 << 20  # a head probe answer is a few KiB; refuse to buffer more than this
ERROR_MAX_CHARS = 200


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------

class ClientHealth(BaseModel):
    """A client's own opinion of its health.

    healthy: True / False as the client reports it; None when the check was
    asked for but gave no usable answer (endpoint unreachable, unparseable,
    the client itself cannot tell yet).
    """

    model_config = ConfigDict(frozen=True)

    healthy: bool | None
    detail: str
    data: dict[str, Any] = {}


class NodeProbe(BaseModel):
    """What one node answered, at one moment."""

    model_config = ConfigDict(frozen=True)

    name: str
    url: str
    ok: bool
    error: str | None = None
    head: int | None = None
    head_timestamp: int | None = None
    head_age_s: float | None = None
    syncing: bool | dict | None = None
    peers: int | None = None
    client_version: str | None = None
    latency_s: float
    health: ClientHealth | None = None


Status = Literal["healthy", "lagging", "stalled", "down", "unknown"]


class Verdict(NamedTuple):
    status: Status
    reason: str
    lag: int | None


class ProbeTarget(NamedTuple):
    """One endpoint to probe. Plain 4-tuples in this order work too."""

    name: str
    url: str
    client: Client | str | None = None  # None or "reference": a plain Ethereum JSON-RPC endpoint
    health_url: str | None = None


class ClientVersion(NamedTuple):
    client: str  # lower case: erigon, geth, nethermind, nitro, op-geth, bor, anvil, ...
    version: str  # without the leading "v" and build suffixes: "3.0.4", "1.14.8", "3.10.1-rc.2"


# ---------------------------------------------------------------------------
# Classification: the one place it happens
# ---------------------------------------------------------------------------

def reference_head(probes: Iterable[NodeProbe]) -> int | None:
    """The best head among the references that answered, or None if none did."""
    heads = [p.head for p in probes if p.ok and p.head is not None]
    return max(heads) if heads else None


def classify(probe: NodeProbe, reference_head: int | None, chain: Chain) -> Verdict:
    """Judge one probe against its chain's thresholds. First matching row wins."""
    age = probe.head_age_s
    lag = reference_head - probe.head if reference_head is not None and probe.head is not None else None
    health = probe.health
    client_says = f"client health: {health.detail}" if health else ""

    table: list[tuple[bool, Status, Any]] = [
        # condition                                              status     reason
        (not probe.ok,                                           "down",    lambda: f"no usable answer: {probe.error}"),
        (age is not None and age > chain.max_head_age_seconds,   "stalled", lambda: f"head {probe.head} is {age:.0f}s old (max {chain.max_head_age_seconds:g}s)"),
        (bool(probe.syncing),                                    "lagging", lambda: f"node reports it is syncing{_sync_progress(probe.syncing)}"),
        (lag is not None and lag > chain.max_lag_blocks,         "lagging", lambda: f"{lag} blocks behind the references (head {probe.head}, reference {reference_head}, max {chain.max_lag_blocks})"),
        (health is not None and health.healthy is False,         "lagging", lambda: client_says),
        (reference_head is None,                                 "unknown", lambda: f"no reference answered, cannot judge lag (head {probe.head})"),
        (health is not None and health.healthy is None,          "unknown", lambda: f"{client_says} (inconclusive)"),
    ]
    for matches, status, reason in table:
        if matches:
            return Verdict(status, reason(), lag)
    age_text = f", head {age:.0f}s old" if age is not None else ""
    return Verdict("healthy", f"head {probe.head}, {lag} behind the references{age_text}", lag)


def _sync_progress(syncing: Any) -> str:
    if not isinstance(syncing, dict):
        return ""
    current, highest = _int(syncing.get("currentBlock")), _int(syncing.get("highestBlock"))
    if current is not None and highest is not None:
        return f" (block {current} of {highest})"
    return ""


# ---------------------------------------------------------------------------
# Probing
# ---------------------------------------------------------------------------

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
    checked = [_checked_target(t) for t in targets]
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
    t = _checked_target(target)
    timeouts = _timeouts(timeout)
    protocol = _protocol_for(t.client)
    health_fetch = _health_fetcher(t.client, t.health_url, health)
    head_part = _probe_head(http, protocol, t.url, timeouts, health)
    if health_fetch is None:
        (fields, latency), fetched = await head_part, None
    else:
        (fields, latency), fetched = await asyncio.gather(head_part, _bounded_health(health_fetch(http), timeouts))
    if isinstance(fields, str):
        return NodeProbe(name=t.name, url=t.url, ok=False, error=fields, latency_s=latency, health=fetched)
    # A head-protocol that carries its own health (op-node, heimdall, solana)
    # fills it in; a separate health endpoint, when configured, wins.
    own_health = fields.pop("health", None)
    return NodeProbe(name=t.name, url=t.url, ok=True, latency_s=latency,
                     health=fetched if fetched is not None else own_health, **fields)


# --- targets and options ----------------------------------------------------

def _timeouts(timeout: Timeouts | float) -> Timeouts:
    if isinstance(timeout, Timeouts):
        return timeout
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        return Timeouts(connect=min(DEFAULT_TIMEOUTS.connect, float(timeout)), read=float(timeout))
    raise ProbeError(f"timeout must be Timeouts or seconds, got {timeout!r}")


def _checked_url(url: Any, what: str) -> str:
    if not isinstance(url, str):
        url = str(url) if url is not None else ""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ProbeError(f"{what} {url!r} is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ProbeError(f"{what} {url!r} must be an http(s) URL with a host")
    return url


def _checked_target(target: ProbeTarget | tuple) -> ProbeTarget:
    if not isinstance(target, tuple) or not 2 <= len(target) <= 4:
        raise ProbeError(f"a probe target is (name, url, client, health_url), got {target!r}")
    t = ProbeTarget(*target)
    if not isinstance(t.name, str) or not t.name:
        raise ProbeError(f"probe target name must be a non-empty string, got {t.name!r}")
    url = _checked_url(t.url, f"{t.name}: url")
    health_url = _checked_url(t.health_url, f"{t.name}: health_url") if t.health_url else None
    return ProbeTarget(t.name, url, _client_name(t.client, t.name), health_url)


GENERIC_EVM = "reference"
# References speak their chain's protocol: Ethereum JSON-RPC unless said here.
_REFERENCE_CLIENT = {ChainFamily.solana: Client.solana.value}


def node_target(name: str, node: Node) -> ProbeTarget:
    """How an inventory node is probed."""
    return ProbeTarget(name, str(node.rpc_url), node.client.value, str(node.health_url) if node.health_url else None)


def reference_targets(chain_name: str, chain: Chain) -> list[ProbeTarget]:
    """How a chain's references are probed; their names mark them as the chain's."""
    client = _REFERENCE_CLIENT.get(chain.family, GENERIC_EVM)
    return [ProbeTarget(f"ref:{chain_name}:{i}", str(url), client) for i, url in enumerate(chain.references)]


def references_of(results: Iterable[NodeProbe], chain_name: str) -> list[NodeProbe]:
    """The probes of one chain's references among a sweep's results."""
    return [p for p in results if p.name.startswith(f"ref:{chain_name}:")]


def _client_name(client: Client | str | None, name: str) -> str:
    if client is None or client == GENERIC_EVM:
        return GENERIC_EVM
    value = client.value if isinstance(client, Client) else client
    try:
        return Client(value).value
    except ValueError:
        known = ", ".join(c.value for c in Client)
        raise ProbeError(f"{name}: unknown client {client!r} (known: {known}, or 'reference')") from None


# --- the head request, per protocol -------------------------------------------

EVM_BATCH = (
    ("eth_getBlockByNumber", ["latest", False]),  # number and timestamp in one call
    ("eth_syncing", []),
    ("net_peerCount", []),
    ("web3_clientVersion", []),
)
SOLANA_BATCH = (("getSlot", []), ("getHealth", []), ("getVersion", []))
OP_NODE_BATCH = (("optimism_syncStatus", []), ("optimism_version", []))


@dataclass(frozen=True)
class _Protocol:
    """How to ask one kind of node for its head, and how to read the answer."""

    method: Literal["POST", "GET"]
    batch: tuple = ()
    path: str = ""  # appended to the node URL (heimdall: /status)
    interpret: Any = None  # (status, body, received_at, health options) -> fields dict | error str


def _protocol_for(client: str) -> _Protocol:
    if client == Client.solana.value:
        return _Protocol("POST", SOLANA_BATCH, interpret=_interpret_solana)
    if client == Client.op_node.value:
        return _Protocol("POST", OP_NODE_BATCH, interpret=_interpret_op_node)
    if client == Client.heimdall.value:
        return _Protocol("GET", path="/status", interpret=_interpret_heimdall)
    return _Protocol("POST", EVM_BATCH, interpret=_interpret_evm)


def _batch_body(batch: tuple) -> bytes:
    return json.dumps(
        [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(batch, 1)]
    ).encode()


async def _probe_head(
    http: httpx.AsyncClient, protocol: _Protocol, url: str, timeouts: Timeouts, options: HealthOptions
) -> tuple[dict | str, float]:
    """(fields, latency) on an answer; (error, latency) otherwise. Never raises for the node."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeouts.deadline):
            if protocol.method == "POST":
                status, body = await _request(http, "POST", url, content=_batch_body(protocol.batch),
                                              headers={"content-type": "application/json"})
            else:
                status, body = await _request(http, "GET", _with_path(url, protocol.path))
    except Exception as exc:  # noqa: BLE001 - every transport failure is a node answer
        return _transport_error(exc, timeouts), time.monotonic() - started
    latency = time.monotonic() - started
    if not 200 <= status < 300:
        return f"HTTP {status}{_snippet(body)}", latency
    return protocol.interpret(status, body, time.time(), options), latency


async def _request(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> tuple[int, bytes]:
    """One request, body capped at MAX_BODY_BYTES."""
    async with http.stream(method, url, **kwargs) as response:
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _TooLarge(f"response larger than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return response.status_code, b"".join(chunks)


class _TooLarge(Exception):
    pass


def _transport_error(exc: BaseException, timeouts: Timeouts) -> str:
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
    elif isinstance(exc, _TooLarge):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return _short(text)


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


def _with_path(url: str, suffix: str) -> str:
    """url with suffix as its path's end, unless it already ends with it."""
    if not suffix:
        return url
    parsed = httpx.URL(url)
    path = parsed.path.rstrip("/")
    if path.endswith(suffix):
        return url
    return str(parsed.copy_with(path=path + suffix))


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 3] + "..."


def _snippet(body: bytes) -> str:
    text = body[:120].decode("utf-8", "replace").strip()
    return f": {_short(text)}" if text else ""


# --- reading JSON-RPC answers -------------------------------------------------

_INVALID = object()


def _json(body: str | bytes) -> Any:
    """Parsed JSON, or _INVALID. Never raises."""
    try:
        return json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return _INVALID


def _obj(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    """A JSON-RPC quantity ("0x1b4"), a decimal string ("26083") or an int; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and 0 < len(value) <= 80:
        try:
            value = int(value[2:], 16) if value[:2].lower() == "0x" else int(value, 10)
        except ValueError:
            return None
    if isinstance(value, int) and abs(value) < 2**256:  # a block number, a timestamp, a count
        return value
    return None


class _Call(NamedTuple):
    result: Any
    error: str | None  # "code message" when the call failed
    raw: dict  # the call's whole answer (some errors carry data)


def _rpc_error_text(error: Any) -> str:
    e = _obj(error)
    code, message = e.get("code"), e.get("message")
    text = " ".join(str(x) for x in (code, message) if x is not None) or _short(json.dumps(error, default=str))
    return _short(text)


def _split_batch(body: bytes, batch: tuple) -> dict[str, _Call] | str:
    """Map each method of the batch to its call result, or an error for the whole answer."""
    doc = _json(body)
    if doc is _INVALID:
        return f"malformed JSON{_snippet(body)}"
    if isinstance(doc, dict) and "error" in doc:
        return f"batch refused: {_rpc_error_text(doc['error'])}"
    if not isinstance(doc, list):
        return "not a JSON-RPC batch answer"
    by_id = {}
    for item in doc:
        if isinstance(item, dict) and isinstance(item.get("id"), (int, str)) and not isinstance(item.get("id"), bool):
            by_id[str(item["id"])] = item
    calls = {}
    for i, (method, _) in enumerate(batch, 1):
        item = by_id.get(str(i))
        if item is None:
            calls[method] = _Call(None, "no answer in batch", {})
        elif item.get("error") is not None:
            calls[method] = _Call(None, _rpc_error_text(item["error"]), item)
        else:
            calls[method] = _Call(item.get("result"), None, item)
    return calls


def _age(timestamp: int | None, now: float) -> float | None:
    if timestamp is None:
        return None
    return max(0.0, now - timestamp)


def _interpret_evm(status: int, body: bytes, now: float, options: HealthOptions) -> dict | str:
    calls = _split_batch(body, EVM_BATCH)
    if isinstance(calls, str):
        return calls
    block = calls["eth_getBlockByNumber"]
    if block.error:
        # A node that cannot name its latest block is not serving: not just a missing field.
        return f"eth_getBlockByNumber failed: {block.error}"
    head = _int(_obj(block.result).get("number"))
    if head is None:
        return "eth_getBlockByNumber gave no latest block"
    head_ts = _int(_obj(block.result).get("timestamp"))
    sync = calls["eth_syncing"]
    syncing = sync.result if sync.error is None and isinstance(sync.result, (bool, dict)) else None
    version = calls["web3_clientVersion"]
    return {
        "head": head,
        "head_timestamp": head_ts,
        "head_age_s": _age(head_ts, now),
        "syncing": syncing,
        "peers": _int(calls["net_peerCount"].result) if calls["net_peerCount"].error is None else None,
        "client_version": _short(version.result) if version.error is None and isinstance(version.result, str) else None,
    }


def _interpret_solana(status: int, body: bytes, now: float, options: HealthOptions) -> dict | str:
    calls = _split_batch(body, SOLANA_BATCH)
    if isinstance(calls, str):
        return calls
    slot = calls["getSlot"]
    if slot.error or _int(slot.result) is None:
        return f"getSlot failed: {slot.error or 'no slot'}"
    health = _solana_rpc_health(calls["getHealth"].raw)
    version = _obj(calls["getVersion"].result).get("solana-core")
    return {
        "head": _int(slot.result),
        "head_timestamp": None,  # a slot's time needs a second round trip (getBlockTime)
        "head_age_s": None,
        "syncing": None,
        "peers": None,
        "client_version": f"solana-core/{version}" if isinstance(version, str) else None,
        "health": health,
    }


def _interpret_op_node(status: int, body: bytes, now: float, options: HealthOptions) -> dict | str:
    calls = _split_batch(body, OP_NODE_BATCH)
    if isinstance(calls, str):
        return calls
    sync = calls["optimism_syncStatus"]
    if sync.error:
        return f"optimism_syncStatus failed: {sync.error}"
    health = _op_node_health(_obj(sync.result), now, options.op_node_max_unsafe_safe_gap, options.op_node_max_unsafe_age_s)
    unsafe = _obj(_obj(sync.result).get("unsafe_l2"))
    head, head_ts = _int(unsafe.get("number")), _int(unsafe.get("timestamp"))
    if head is None:
        return "optimism_syncStatus gave no unsafe_l2 head"
    version = calls["optimism_version"]
    return {
        "head": head,
        "head_timestamp": head_ts,
        "head_age_s": _age(head_ts, now),
        "syncing": None,
        "peers": None,
        "client_version": f"op-node/{version.result}" if version.error is None and isinstance(version.result, str) else None,
        "health": health,
    }


def _interpret_heimdall(status: int, body: bytes, now: float, options: HealthOptions) -> dict | str:
    health = parse_heimdall_status(status, body)
    head = health.data.get("latest_block_height")
    if head is None:
        return f"heimdall /status unusable: {health.detail}"
    head_ts = health.data.get("latest_block_unix")
    return {
        "head": head,
        "head_timestamp": head_ts,
        "head_age_s": _age(head_ts, now),
        "syncing": health.data.get("catching_up"),
        "peers": None,
        "client_version": None,
        "health": health,
    }


# ---------------------------------------------------------------------------
# Client versions
# ---------------------------------------------------------------------------

_VERSION = re.compile(r"^v*(\d+(?:\.\d+)*(?:-(?:rc|alpha|beta|dev|pre)[0-9A-Za-z.]*)?)")


def parse_client_version(raw: Any) -> ClientVersion | None:
    """web3_clientVersion -> (client, version); None when it does not look like one.

    erigon/3.0.4/linux-amd64/go1.23.1 and erigon/v2.60.10/... -> ("erigon", "3.0.4"/"2.60.10")
    Geth/v1.14.8-stable-a9523b64/linux-amd64/go1.22.6     -> ("geth", "1.14.8")
    Nethermind/v1.25.4+2bf8a789/linux-x64/dotnet8.0.8     -> ("nethermind", "1.25.4")
    nitro/v3.10.1-rc.2-d7f07be/linux-amd64/go1.25.10      -> ("nitro", "3.10.1-rc.2")
    anvil/v1.7.1                                          -> ("anvil", "1.7.1")
    """
    if not isinstance(raw, str) or not raw or len(raw) > 500:
        return None
    name, _, rest = raw.strip().partition("/")
    name = name.strip().lower()
    if not re.match(r"^[a-z][a-z0-9_.-]{0,39}$", name):
        return None
    match = _VERSION.match(rest.split("/", 1)[0].strip())
    if not match:
        return None
    return ClientVersion(name, match.group(1))


# ---------------------------------------------------------------------------
# Client health: parsers (raw answer -> ClientHealth) and fetchers
# ---------------------------------------------------------------------------

def _text(body: str | bytes) -> str:
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace")
    return body if isinstance(body, str) else ""


# --- Erigon: GET /health with X-ERIGON-HEALTHCHECK headers -----------------------

# Errors that say our request was wrong, not that the node is (strconv parse
# errors, "bad header value"): the check did not run.
_ERIGON_CHECK_DID_NOT_RUN = re.compile(r"strconv\.|bad header value|invalid syntax", re.I)


def parse_erigon_health(status_code: int, body: str | bytes) -> ClientHealth:
    """Erigon rpcdaemon /health: a JSON map check -> HEALTHY | DISABLED | "ERROR: ...";
    200 when every requested check passes, 500 otherwise. Older rpcdaemons answer
    a header request with one plain-text HEALTHY or "ERROR: ..." instead."""
    doc = _json(body)
    if isinstance(doc, dict):
        checks = {str(k): v for k, v in doc.items() if _is_erigon_check_value(v)}
    else:
        text = _text(body).strip()
        checks = {"healthcheck": text} if doc is _INVALID and _is_erigon_check_value(text) else {}
    if not checks:
        return ClientHealth(healthy=None, detail=f"unexpected /health answer (HTTP {status_code}){_snippet(_raw(body))}")
    errors = {k: v for k, v in checks.items() if v.startswith("ERROR")}
    data = {"status_code": status_code, "checks": checks}
    if errors:
        detail = "; ".join(f"{k}: {v[len('ERROR:'):].strip() or v}" for k, v in sorted(errors.items()))
        ran = {k: v for k, v in errors.items() if not _ERIGON_CHECK_DID_NOT_RUN.search(v)}
        return ClientHealth(healthy=False if ran else None, detail=_short(detail), data=data)
    if status_code != 200:
        return ClientHealth(healthy=False, detail=f"HTTP {status_code} without a failing check", data=data)
    passed = sorted(k for k, v in checks.items() if v == "HEALTHY")
    return ClientHealth(healthy=True, detail="passed: " + (", ".join(passed) or "no check enabled"), data=data)


def _is_erigon_check_value(value: Any) -> bool:
    return isinstance(value, str) and (value in ("HEALTHY", "DISABLED") or value.startswith("ERROR"))


def _raw(body: str | bytes) -> bytes:
    return body if isinstance(body, bytes) else _text(body).encode("utf-8", "replace")


async def fetch_erigon_health(
    http: httpx.AsyncClient, url: str, checks: Sequence[str] = DEFAULT_HEALTH.erigon_checks
) -> ClientHealth:
    """GET <url>/health with one X-ERIGON-HEALTHCHECK header per check."""
    HealthOptions(erigon_checks=tuple(checks))  # validates
    headers = [("X-ERIGON-HEALTHCHECK", c) for c in checks]
    return await _fetch(http, "GET", _with_path(url, "/health"), parse_erigon_health, headers=headers)


# --- op-node: optimism_syncStatus ------------------------------------------------

def parse_op_node_sync_status(
    status_code: int,
    body: str | bytes,
    *,
    now: float | None = None,
    max_unsafe_safe_gap: int = DEFAULT_HEALTH.op_node_max_unsafe_safe_gap,
    max_unsafe_age_s: float = DEFAULT_HEALTH.op_node_max_unsafe_age_s,
) -> ClientHealth:
    """op-node's JSON-RPC answer to optimism_syncStatus (eth.SyncStatus).

    Unhealthy when the safe head trails the unsafe head by more than
    max_unsafe_safe_gap blocks or the unsafe head is older than max_unsafe_age_s.
    """
    doc = _json(body)
    if not isinstance(doc, dict):
        return ClientHealth(healthy=None, detail=f"unexpected optimism_syncStatus answer (HTTP {status_code})")
    if doc.get("error") is not None:
        return ClientHealth(healthy=None, detail=f"optimism_syncStatus failed: {_rpc_error_text(doc['error'])}")
    return _op_node_health(_obj(doc.get("result")), time.time() if now is None else now, max_unsafe_safe_gap, max_unsafe_age_s)


def _op_node_health(result: dict, now: float, max_gap: int, max_age: float) -> ClientHealth:
    def ref(key: str) -> dict:
        r = _obj(result.get(key))
        return {"number": _int(r.get("number")), "timestamp": _int(r.get("timestamp"))}

    unsafe, safe, finalized = ref("unsafe_l2"), ref("safe_l2"), ref("finalized_l2")
    current_l1, head_l1 = ref("current_l1"), ref("head_l1")
    data: dict[str, Any] = {"unsafe_l2": unsafe, "safe_l2": safe, "finalized_l2": finalized,
                            "current_l1": current_l1, "head_l1": head_l1}
    if unsafe["number"] is None or safe["number"] is None:
        return ClientHealth(healthy=None, detail="optimism_syncStatus without unsafe_l2/safe_l2 numbers", data=data)
    if unsafe["number"] == 0:
        # "Values may be zeroed if not yet initialized."
        return ClientHealth(healthy=None, detail="op-node sync status not initialized yet (unsafe_l2 is 0)", data=data)
    gap = unsafe["number"] - safe["number"]
    age = _age(unsafe["timestamp"], now)
    data |= {"unsafe_safe_gap": gap, "unsafe_age_s": age}
    if current_l1["number"] is not None and head_l1["number"] is not None:
        data["l1_derivation_lag"] = head_l1["number"] - current_l1["number"]
    problems = []
    if gap > max_gap:
        problems.append(f"safe head {gap} blocks behind unsafe (max {max_gap})")
    if age is not None and age > max_age:
        problems.append(f"unsafe head {age:.0f}s old (max {max_age:g}s)")
    summary = f"unsafe {unsafe['number']}, safe {safe['number']}, finalized {finalized['number']}"
    if problems:
        return ClientHealth(healthy=False, detail=_short("; ".join(problems) + f" ({summary})"), data=data)
    return ClientHealth(healthy=True, detail=summary, data=data)


async def fetch_op_node_sync_status(
    http: httpx.AsyncClient,
    url: str,
    max_unsafe_safe_gap: int = DEFAULT_HEALTH.op_node_max_unsafe_safe_gap,
    max_unsafe_age_s: float = DEFAULT_HEALTH.op_node_max_unsafe_age_s,
) -> ClientHealth:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "optimism_syncStatus", "params": []}).encode()

    def parse(status: int, raw: bytes) -> ClientHealth:
        return parse_op_node_sync_status(status, raw, max_unsafe_safe_gap=max_unsafe_safe_gap,
                                         max_unsafe_age_s=max_unsafe_age_s)

    return await _fetch(http, "POST", url, parse, content=body, headers={"content-type": "application/json"})


# --- Heimdall (Tendermint/CometBFT): GET :26657/status ---------------------------

def parse_heimdall_status(status_code: int, body: str | bytes) -> ClientHealth:
    """Tendermint /status: healthy when .result.sync_info.catching_up is false."""
    doc = _json(body)
    result = _obj(doc.get("result")) if isinstance(doc, dict) and "result" in doc else _obj(doc)
    if isinstance(doc, dict) and doc.get("error") is not None:
        return ClientHealth(healthy=None, detail=f"/status failed: {_rpc_error_text(doc['error'])}")
    sync = _obj(result.get("sync_info"))
    catching_up = sync.get("catching_up")
    height = _int(sync.get("latest_block_height"))
    if not isinstance(catching_up, bool) or height is None:
        return ClientHealth(healthy=None, detail=f"unexpected /status answer (HTTP {status_code}){_snippet(_raw(body))}")
    block_time = sync.get("latest_block_time")
    node_info = _obj(result.get("node_info"))
    data = {
        "latest_block_height": height,
        "latest_block_time": block_time if isinstance(block_time, str) else None,
        "latest_block_unix": _rfc3339_unix(block_time),
        "catching_up": catching_up,
        "network": node_info.get("network") if isinstance(node_info.get("network"), str) else None,
        "version": node_info.get("version") if isinstance(node_info.get("version"), str) else None,
    }
    if catching_up:
        return ClientHealth(healthy=False, detail=f"catching up (height {height})", data=data)
    return ClientHealth(healthy=True, detail=f"in sync (height {height})", data=data)


def _rfc3339_unix(value: Any) -> int | None:
    """Tendermint block times carry nanoseconds ("2024-06-11T14:07:57.12519517Z")."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    m = re.match(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})$", value.strip())
    if not m:
        return None
    try:
        zone = "+00:00" if m.group(2) == "Z" else m.group(2)
        return int(datetime.fromisoformat(m.group(1) + zone).timestamp())
    except ValueError:
        return None


async def fetch_heimdall_status(http: httpx.AsyncClient, url: str) -> ClientHealth:
    return await _fetch(http, "GET", _with_path(url, "/status"), parse_heimdall_status)


# --- Solana: GET /health and getHealth --------------------------------------------

SOLANA_NODE_UNHEALTHY = -32005


def parse_solana_health(status_code: int, body: str | bytes) -> ClientHealth:
    """Solana RPC GET /health: plain text ok | behind | unknown (newer: "transaction status behind")."""
    text = _text(body).strip().lower()
    data = {"status_code": status_code, "status": text[:40]}
    if text == "ok":
        return ClientHealth(healthy=True, detail="ok", data=data)
    if text in ("behind", "transaction status behind"):
        return ClientHealth(healthy=False, detail=text, data=data)
    if text == "unknown":
        return ClientHealth(healthy=None, detail="node cannot tell whether it is behind (unknown)", data=data)
    return ClientHealth(healthy=None, detail=f"unexpected /health answer (HTTP {status_code}){_snippet(_raw(body))}", data=data)


def parse_solana_get_health(status_code: int, body: str | bytes) -> ClientHealth:
    """Solana JSON-RPC getHealth: "ok", or error -32005 with data.numSlotsBehind (null: unknown)."""
    doc = _json(body)
    if not isinstance(doc, dict):
        return ClientHealth(healthy=None, detail=f"unexpected getHealth answer (HTTP {status_code})")
    return _solana_rpc_health(doc)


def _solana_rpc_health(doc: dict) -> ClientHealth:
    if doc.get("result") == "ok":
        return ClientHealth(healthy=True, detail="ok")
    error = _obj(doc.get("error"))
    if error.get("code") == SOLANA_NODE_UNHEALTHY:
        behind = _int(_obj(error.get("data")).get("numSlotsBehind"))
        if behind is None:  # older nodes only say so in the message
            m = re.search(r"behind by (\d{1,12}) slots", str(error.get("message", "")))
            behind = int(m.group(1)) if m else None
        if behind is None:
            return ClientHealth(healthy=None, detail="node unhealthy, distance unknown", data={"numSlotsBehind": None})
        return ClientHealth(healthy=False, detail=f"behind by {behind} slots", data={"numSlotsBehind": behind})
    if doc.get("error") is not None:
        return ClientHealth(healthy=None, detail=f"getHealth failed: {_rpc_error_text(doc['error'])}")
    return ClientHealth(healthy=None, detail="unexpected getHealth answer")


async def fetch_solana_health(http: httpx.AsyncClient, url: str) -> ClientHealth:
    return await _fetch(http, "GET", _with_path(url, "/health"), parse_solana_health)


# --- Avalanche: GET /ext/health and info.isBootstrapped ----------------------------

def parse_avalanche_health(status_code: int, body: str | bytes) -> ClientHealth:
    """AvalancheGo /ext/health: {"checks": {name: {message, error?, ...}}, "healthy": bool};
    HTTP 200 when healthy, 503 when not. Also accepts the health.health JSON-RPC form."""
    doc = _json(body)
    reply = _obj(doc.get("result")) if isinstance(doc, dict) and "result" in doc else _obj(doc)
    healthy = reply.get("healthy")
    if not isinstance(healthy, bool):
        return ClientHealth(healthy=None, detail=f"unexpected /ext/health answer (HTTP {status_code}){_snippet(_raw(body))}")
    checks = _obj(reply.get("checks"))
    failing = {name: str(_obj(c).get("error"))[:200] for name, c in checks.items() if _obj(c).get("error") is not None}
    data = {"status_code": status_code, "healthy": healthy, "failing": failing, "checks": sorted(map(str, checks))}
    if healthy and status_code == 200:
        return ClientHealth(healthy=True, detail=f"{len(checks)} checks passing", data=data)
    detail = "; ".join(f"{k}: {v}" for k, v in sorted(failing.items())) or f"unhealthy (HTTP {status_code})"
    return ClientHealth(healthy=False, detail=_short(detail), data=data)


def parse_avalanche_is_bootstrapped(status_code: int, body: str | bytes) -> ClientHealth:
    """info.isBootstrapped: {"result": {"isBootstrapped": bool}}."""
    doc = _json(body)
    if isinstance(doc, dict) and doc.get("error") is not None:
        return ClientHealth(healthy=None, detail=f"info.isBootstrapped failed: {_rpc_error_text(doc['error'])}")
    value = _obj(_obj(doc).get("result")).get("isBootstrapped")
    if not isinstance(value, bool):
        return ClientHealth(healthy=None, detail=f"unexpected info.isBootstrapped answer (HTTP {status_code})")
    return ClientHealth(healthy=value, detail="bootstrapped" if value else "not bootstrapped yet",
                        data={"isBootstrapped": value})


async def fetch_avalanche_health(http: httpx.AsyncClient, url: str, chain: str = "C") -> ClientHealth:
    """GET /ext/health and info.isBootstrapped(chain) on the same node, combined."""
    HealthOptions(avalanche_chain=chain)  # validates
    health_url = _with_path(url, "/ext/health")
    parsed = httpx.URL(health_url)
    info_url = str(parsed.copy_with(path=parsed.path.rstrip("/")[: -len("/ext/health")] + "/ext/info"))
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "info.isBootstrapped", "params": {"chain": chain}}).encode()
    health, booted = await asyncio.gather(
        _fetch(http, "GET", health_url, parse_avalanche_health),
        _fetch(http, "POST", info_url, parse_avalanche_is_bootstrapped, content=body,
               headers={"content-type": "application/json"}),
    )
    verdicts = (health.healthy, booted.healthy)
    combined = False if False in verdicts else None if None in verdicts else True
    return ClientHealth(healthy=combined, detail=f"{health.detail}; {chain}-chain {booted.detail}",
                        data={"health": health.data, "is_bootstrapped": booted.data.get("isBootstrapped")})


# --- fetch plumbing ---------------------------------------------------------------

async def _fetch(http: httpx.AsyncClient, method: str, url: str, parse: Any, **kwargs: Any) -> ClientHealth:
    """One health request; transport failures become healthy=None, never an exception."""
    try:
        status, body = await _request(http, method, url, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any transport failure is an inconclusive check
        return ClientHealth(healthy=None, detail=f"health endpoint unreachable: {_transport_error(exc, _pool_timeouts(http))}")
    return parse(status, body)


def _pool_timeouts(http: httpx.AsyncClient) -> Timeouts:
    t = http.timeout
    try:
        return Timeouts(connect=t.connect or DEFAULT_TIMEOUTS.connect, read=t.read or DEFAULT_TIMEOUTS.read)
    except ProbeError:
        return DEFAULT_TIMEOUTS


async def _bounded_health(coro: Any, timeouts: Timeouts) -> ClientHealth:
    try:
        async with asyncio.timeout(timeouts.deadline):
            return await coro
    except TimeoutError:
        return ClientHealth(healthy=None, detail=f"health endpoint unreachable: no answer within {timeouts.deadline:g}s")


def _health_fetcher(client: str, health_url: str | None, options: HealthOptions):
    """The health request for this client, or None (geth, nethermind, nitro, anvil:
    no health endpoint we use; op-node, heimdall and solana carry theirs in the head probe)."""
    if not health_url:
        return None
    fetchers = {
        Client.erigon.value: lambda http: fetch_erigon_health(http, health_url, options.erigon_checks),
        # op-geth's health is its op-node's view: health_url is the op-node RPC.
        Client.op_geth.value: lambda http: fetch_op_node_sync_status(
            http, health_url, options.op_node_max_unsafe_safe_gap, options.op_node_max_unsafe_age_s),
        # Bor is trusted only while its Heimdall is in sync: health_url is Heimdall's RPC.
        Client.bor.value: lambda http: fetch_heimdall_status(http, health_url),
        Client.solana.value: lambda http: fetch_solana_health(http, health_url),
        Client.avalanchego.value: lambda http: fetch_avalanche_health(http, health_url, options.avalanche_chain),
    }
    return fetchers.get(client)
