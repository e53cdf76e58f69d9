"""What gets probed: inventory nodes and chain references as ProbeTargets, checked
before any request is sent."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx

from inventory import Chain, EndpointError, Node, endpoint_url
from tasks.probes.model import NodeProbe, ProbeError, ProbeTarget
from tasks.probes.registry import client_name, reference_client

REFERENCE_PREFIX = "ref:"  # node names cannot contain ':', so a reference's name never collides with one


def _url(endpoint: Any, where: str) -> str:
    # An endpoint kept in a Secret block is read here, just before it is used.
    # A block that cannot be read fails the sweep (ProbeError) rather than
    # making the node look down: "down" would start a recovery of a healthy node.
    try:
        return endpoint_url(endpoint)
    except EndpointError as exc:
        raise ProbeError(f"{where}: {exc}") from None


def node_target(name: str, node: Node) -> ProbeTarget:
    """How an inventory node is probed."""
    health_url = _url(node.health_url, f"node {name!r}, field health_url") if node.health_url else None
    return ProbeTarget(name, _url(node.rpc_url, f"node {name!r}, field rpc_url"), node.client.value, health_url)


def reference_targets(chain_name: str, chain: Chain) -> list[ProbeTarget]:
    """How a chain's references are probed; their names mark them as the chain's."""
    client = reference_client(chain.family)
    return [
        ProbeTarget(f"{REFERENCE_PREFIX}{chain_name}:{i}", _url(url, f"chain {chain_name!r}, field references[{i}]"), client)
        for i, url in enumerate(chain.references)
    ]


def references_of(results: Iterable[NodeProbe], chain_name: str) -> list[NodeProbe]:
    """The probes of one chain's references among a sweep's results."""
    return [p for p in results if p.name.startswith(f"{REFERENCE_PREFIX}{chain_name}:")]


def checked_target(target: ProbeTarget | tuple) -> ProbeTarget:
    """The target with its client resolved; ProbeError for anything malformed."""
    if not isinstance(target, tuple) or not 2 <= len(target) <= 4:
        raise ProbeError(f"a probe target is (name, url, client, health_url), got {target!r}")
    t = ProbeTarget(*target)
    if not isinstance(t.name, str) or not t.name:
        raise ProbeError(f"probe target name must be a non-empty string, got {t.name!r}")
    url = _checked_url(t.url, f"{t.name}: url")
    health_url = _checked_url(t.health_url, f"{t.name}: health_url") if t.health_url else None
    return ProbeTarget(t.name, url, client_name(t.client, t.name), health_url)


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
