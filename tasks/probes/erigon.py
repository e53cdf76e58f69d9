"""Erigon's rpcdaemon health endpoint: GET /health with X-ERIGON-HEALTHCHECK headers.

Erigon's head comes from the Ethereum JSON-RPC batch (evm.py); this is the
client's own opinion, asked alongside it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import httpx

from tasks.probes.model import DEFAULT_HEALTH, ClientHealth, HealthOptions
from tasks.probes.parsing import INVALID, as_text, parse_json, short, snippet
from tasks.probes.transport import fetch_health, with_path

# Errors that say our request was wrong, not that the node is (strconv parse
# errors, "bad header value"): the check did not run.
_CHECK_DID_NOT_RUN = re.compile(r"strconv\.|bad header value|invalid syntax", re.I)


def parse_erigon_health(status_code: int, body: str | bytes) -> ClientHealth:
    """Erigon rpcdaemon /health: a JSON map check -> HEALTHY | DISABLED | "ERROR: ...";
    200 when every requested check passes, 500 otherwise. Older rpcdaemons answer
    a header request with one plain-text HEALTHY or "ERROR: ..." instead."""
    doc = parse_json(body)
    if isinstance(doc, dict):
        checks = {str(k): v for k, v in doc.items() if _is_check_value(v)}
    else:
        text = as_text(body).strip()
        checks = {"healthcheck": text} if doc is INVALID and _is_check_value(text) else {}
    if not checks:
        return ClientHealth(healthy=None, detail=f"unexpected /health answer (HTTP {status_code}){snippet(body)}")
    errors = {k: v for k, v in checks.items() if v.startswith("ERROR")}
    data = {"status_code": status_code, "checks": checks}
    if errors:
        detail = "; ".join(f"{k}: {v[len('ERROR:'):].strip() or v}" for k, v in sorted(errors.items()))
        ran = {k: v for k, v in errors.items() if not _CHECK_DID_NOT_RUN.search(v)}
        return ClientHealth(healthy=False if ran else None, detail=short(detail), data=data)
    if status_code != 200:
        return ClientHealth(healthy=False, detail=f"HTTP {status_code} without a failing check", data=data)
    passed = sorted(k for k, v in checks.items() if v == "HEALTHY")
    return ClientHealth(healthy=True, detail="passed: " + (", ".join(passed) or "no check enabled"), data=data)


def _is_check_value(value: Any) -> bool:
    return isinstance(value, str) and (value in ("HEALTHY", "DISABLED") or value.startswith("ERROR"))


async def fetch_erigon_health(
    http: httpx.AsyncClient, url: str, checks: Sequence[str] = DEFAULT_HEALTH.erigon_checks
) -> ClientHealth:
    """GET <url>/health with one X-ERIGON-HEALTHCHECK header per check."""
    HealthOptions(erigon_checks=tuple(checks))  # validates
    headers = [("X-ERIGON-HEALTHCHECK", c) for c in checks]
    return await fetch_health(http, "GET", with_path(url, "/health"), parse_erigon_health, headers=headers)
