"""AvalancheGo: GET /ext/health and info.isBootstrapped, combined into one opinion.

Its head comes from the C-chain's Ethereum JSON-RPC batch (evm.py).
"""

from __future__ import annotations

import asyncio

import httpx

from tasks.probes.model import ClientHealth, HealthOptions
from tasks.probes.parsing import obj, parse_json, rpc_body, rpc_error_text, short, snippet
from tasks.probes.transport import JSON_HEADERS, fetch_health, with_path


def parse_avalanche_health(status_code: int, body: str | bytes) -> ClientHealth:
    """AvalancheGo /ext/health: {"checks": {name: {message, error?, ...}}, "healthy": bool};
    HTTP 200 when healthy, 503 when not. Also accepts the health.health JSON-RPC form."""
    doc = parse_json(body)
    reply = obj(doc.get("result")) if isinstance(doc, dict) and "result" in doc else obj(doc)
    healthy = reply.get("healthy")
    if not isinstance(healthy, bool):
        return ClientHealth(healthy=None, detail=f"unexpected /ext/health answer (HTTP {status_code}){snippet(body)}")
    checks = obj(reply.get("checks"))
    failing = {name: str(obj(c).get("error"))[:200] for name, c in checks.items() if obj(c).get("error") is not None}
    data = {"status_code": status_code, "healthy": healthy, "failing": failing, "checks": sorted(map(str, checks))}
    if healthy and status_code == 200:
        return ClientHealth(healthy=True, detail=f"{len(checks)} checks passing", data=data)
    detail = "; ".join(f"{k}: {v}" for k, v in sorted(failing.items())) or f"unhealthy (HTTP {status_code})"
    return ClientHealth(healthy=False, detail=short(detail), data=data)


def parse_avalanche_is_bootstrapped(status_code: int, body: str | bytes) -> ClientHealth:
    """info.isBootstrapped: {"result": {"isBootstrapped": bool}}."""
    doc = parse_json(body)
    if isinstance(doc, dict) and doc.get("error") is not None:
        return ClientHealth(healthy=None, detail=f"info.isBootstrapped failed: {rpc_error_text(doc['error'])}")
    value = obj(obj(doc).get("result")).get("isBootstrapped")
    if not isinstance(value, bool):
        return ClientHealth(healthy=None, detail=f"unexpected info.isBootstrapped answer (HTTP {status_code})")
    return ClientHealth(healthy=value, detail="bootstrapped" if value else "not bootstrapped yet",
                        data={"isBootstrapped": value})


async def fetch_avalanche_health(http: httpx.AsyncClient, url: str, chain: str = "C") -> ClientHealth:
    """GET /ext/health and info.isBootstrapped(chain) on the same node, combined."""
    HealthOptions(avalanche_chain=chain)  # validates
    health_url = with_path(url, "/ext/health")
    parsed = httpx.URL(health_url)
    info_url = str(parsed.copy_with(path=parsed.path.rstrip("/")[: -len("/ext/health")] + "/ext/info"))
    health, booted = await asyncio.gather(
        fetch_health(http, "GET", health_url, parse_avalanche_health),
        fetch_health(http, "POST", info_url, parse_avalanche_is_bootstrapped,
                     content=rpc_body("info.isBootstrapped", {"chain": chain}), headers=JSON_HEADERS),
    )
    verdicts = (health.healthy, booted.healthy)
    combined = False if False in verdicts else None if None in verdicts else True
    return ClientHealth(healthy=combined, detail=f"{health.detail}; {chain}-chain {booted.detail}",
                        data={"health": health.data, "is_bootstrapped": booted.data.get("isBootstrapped")})
