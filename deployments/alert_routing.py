"""Which node an alert is about, and which runbook it starts: the bridge's routing table.

Operators' alerts rarely carry our `node` label. Public rule sets name a
node by the exporter's `instance` (`host:port`, usually a metrics port, not
the RPC port), eth-docker by a service name that is the same on every host
plus labels of its own, and they call their alerts their own names
(`PrometheusTargetMissing`, `HostOutOfDiskSpace`, `Disk Space low`). So the
bridge reads an operator-edited table (deployments/alert_routes.yaml, or
BRIDGE_ROUTES) that says:

    node_labels:     labels whose value is an inventory node name, tried in order
    node_aliases:    label matchers -> node, for names no label carries
    instance_labels: labels holding `host:port` (or a URL, or a host), matched
                     against every node's rpc, health and metrics endpoints,
                     then against its host's address
    routes:          label matchers -> runbook, reason, severity; first match wins

Matchers are written as in Alertmanager (`alertname="NodeDown"`,
`alertname=~"Host.*Disk.*"`, `job!="test"`, `severity!~"info|none"`); a
regex must match the whole value, as Alertmanager's do.

A route's runbook is one alerts may start (`node-recovery` or `disk-prune`, with a reason it
handles) or `notify`: the alert is recorded on the node's event stream and
starts nothing. `disk-prune` takes the reason `disk`.
A route without a reason takes the alert's own `reason` label.

An alert that names no node, names one ambiguously, or matches no route is
never dropped: the bridge answers, counts, logs and records it (see
deployments/alert_bridge.py).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from inventory import Inventory, Node
from inventory.endpoints import SecretEndpoint
from tasks.events import ALERT_RUNBOOKS

ROUTES_ENV = "BRIDGE_ROUTES"
DEFAULT_ROUTES = Path(__file__).resolve().parent / "alert_routes.yaml"
NOTIFY = "notify"


class RoutesError(ValueError):
    """The routing table cannot be used; the message names the file and the entry."""


# ---------------------------------------------------------------------------
# Alertmanager's fingerprint, for alerts sent without one
# ---------------------------------------------------------------------------

_FNV_OFFSET, _FNV_PRIME, _MASK = 14695981039346656037, 1099511628211, (1 << 64) - 1


def fingerprint(labels: dict[str, str]) -> str:
    """The fingerprint Alertmanager gives this label set (prometheus/common
    model.labelSetToFingerprint): FNV-1a 64 over the sorted names, each
    followed by 0xff, its value and 0xff, printed as 16 hex digits."""
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name.encode(), b"\xff", labels[name].encode(), b"\xff"):
            for byte in part:
                h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return f"{h:016x}"


# ---------------------------------------------------------------------------
# Matchers, as Alertmanager writes them
# ---------------------------------------------------------------------------

_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$', re.S)


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str

    @classmethod
    def parse(cls, text: str) -> "Matcher":
        m = _MATCHER.match(text) if isinstance(text, str) else None
        if not m:
            raise ValueError(f"{text!r} is not a matcher like name=\"value\", name=~\"regex\", name!=\"value\"")
        name, op, value = m.groups()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{text!r}: bad regex: {exc}") from None
        return cls(name, op, value)

    def matches(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.name, "")  # a missing label matches as "", as in Alertmanager
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        found = re.fullmatch(self.value, value) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'


def _matchers(value: list[str]) -> tuple[Matcher, ...]:
    if not value:
        raise ValueError("at least one matcher is needed (an empty list would match every alert)")
    return tuple(Matcher.parse(m) for m in value)


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


LabelName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class Route(_Strict):
    matchers: tuple[Matcher, ...]
    runbook: str
    reason: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,39}$")] | None = None
    severity: Literal["critical", "warning", "info"] | None = None

    _parse = field_validator("matchers", mode="before")(lambda v: _matchers(v))

    @field_validator("runbook")
    @classmethod
    def _known_runbook(cls, runbook: str) -> str:
        if runbook != NOTIFY and runbook not in ALERT_RUNBOOKS:
            raise ValueError(f"{runbook!r} is not a runbook alerts can start "
                             f"(known: {', '.join(sorted([*ALERT_RUNBOOKS, NOTIFY]))})")
        return runbook

    @field_validator("reason")
    @classmethod
    def _runbook_takes_the_reason(cls, reason: str | None, info: ValidationInfo) -> str | None:
        reasons = ALERT_RUNBOOKS.get(info.data.get("runbook", ""))
        if reasons and reason is not None and reason not in reasons:
            raise ValueError(f"{info.data['runbook']} handles reasons {sorted(reasons)}, not {reason!r}")
        return reason

    def matches(self, labels: dict[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def describe(self) -> str:
        return ", ".join(map(str, self.matchers))


class NodeAlias(_Strict):
    matchers: tuple[Matcher, ...]
    node: str

    _parse = field_validator("matchers", mode="before")(lambda v: _matchers(v))


class RouteTable(_Strict):
    node_labels: tuple[LabelName, ...] = ("node",)
    node_aliases: tuple[NodeAlias, ...] = ()
    instance_labels: tuple[LabelName, ...] = ("instance",)
    routes: tuple[Route, ...]

    def route(self, labels: dict[str, str]) -> Route | None:
        return next((r for r in self.routes if r.matches(labels)), None)


def routes_path(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get(ROUTES_ENV) or DEFAULT_ROUTES)


def load_routes(path: str | os.PathLike | None = None) -> RouteTable:
    """Read and validate the routing table; errors name the file, the entry and the field."""
    p = routes_path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise RoutesError(f"{p}: cannot read the alert routes: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RoutesError(f"{p}: not valid YAML: {exc}") from None
    try:
        return RouteTable.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(f"  {'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors())
        raise RoutesError(f"{p}: invalid alert routes:\n{lines}") from None


# ---------------------------------------------------------------------------
# Which node
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeMatch:
    node: str | None
    how: str  # how it was found, or why none was


def _host_port(text: str) -> tuple[str, int | None] | None:
    """`host:port`, `[v6]:port`, a bare host or v6 address, or a URL -> (host, port)."""
    text = text.strip()
    if not text:
        return None
    if "://" in text:
        try:
            u = urlsplit(text)
            port = u.port or {"http": 80, "https": 443}.get(u.scheme)
        except ValueError:
            return None
        return (_norm(u.hostname), port) if u.hostname else None
    try:
        ipaddress.IPv6Address(text.strip("[]"))
        return _norm(text), None  # a bare v6 address: its colons are not a port
    except ValueError:
        pass
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, ""
    if sep and not port.isdigit():
        return None
    return _norm(host), int(port) if port else None


def _norm(host: str) -> str:
    host = host.strip().strip("[]").rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(host))  # one spelling per address (::1 vs 0:0::1)
    except ValueError:
        return host


def _endpoints(node: Node) -> set[tuple[str, int | None]]:
    """(host, port) of the node's rpc, health and metrics URLs. An endpoint kept in a
    Secret block is not read here (the bridge holds no secrets): its host still matches."""
    out = set()
    for url in (node.rpc_url, node.health_url, node.metrics_url):
        if url is not None and not isinstance(url, SecretEndpoint) and (hp := _host_port(str(url))):
            out.add(hp)
    return out


def find_node(labels: dict[str, str], table: RouteTable, inventory: Inventory) -> NodeMatch:
    """The one inventory node an alert is about, or why there is none."""
    unknown = []
    for label in table.node_labels:
        value = labels.get(label)
        if value in inventory.nodes:
            return NodeMatch(value, f"label {label}")
        if value:
            unknown.append(f"{label}={value!r} is not an inventory node")
    for i, alias in enumerate(table.node_aliases):
        if all(m.matches(labels) for m in alias.matchers):
            if alias.node in inventory.nodes:
                return NodeMatch(alias.node, f"node_aliases[{i}]")
            unknown.append(f"node_aliases[{i}] names {alias.node!r}, which is not in the inventory")
    for label in table.instance_labels:
        value = labels.get(label)
        if not value:
            continue
        hp = _host_port(value)
        if hp is None:
            unknown.append(f"{label}={value!r} is not host:port")
            continue
        host, port = hp
        by_endpoint = sorted(n for n, node in inventory.nodes.items()
                             if port is not None and (host, port) in _endpoints(node))
        if len(by_endpoint) == 1:
            return NodeMatch(by_endpoint[0], f"{label} {value} is an endpoint of the node")
        if len(by_endpoint) > 1:
            return NodeMatch(None, f"ambiguous: {label} {value} is an endpoint of {', '.join(by_endpoint)}")
        on_host = sorted(n for n, node in inventory.nodes.items()
                         if _norm(inventory.hosts[node.host].address) == host
                         or host in {h for h, _ in _endpoints(node)})
        if len(on_host) == 1:
            return NodeMatch(on_host[0], f"{label} {value} is on the node's host")
        if len(on_host) > 1:
            return NodeMatch(None, f"ambiguous: {label} {value} matches no endpoint and its host "
                                   f"runs {', '.join(on_host)} (name the node in node_aliases)")
        unknown.append(f"{label}={value!r} matches no node's endpoint or host")
    return NodeMatch(None, "; ".join(unknown) or
                     f"no node: none of the labels {', '.join([*table.node_labels, *table.instance_labels])} is set")
