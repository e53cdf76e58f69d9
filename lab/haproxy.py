"""The lab's HAProxy: config and a minimal runtime-API client for readiness and status."""

from __future__ import annotations

import csv
import io
import json
import socket

from . import topology as t
from .topology import Paths

HEALTH_BODY = json.dumps({"jsonrpc": "2.0", "method": "eth_blockNumber", "params": [], "id": 1}, separators=(",", ":"))


def render_config(paths: Paths) -> str:
    lines = [
        "# written by `python -m lab up`; do not edit (regenerated each up)",
        "global",
        "    log stdout format raw local0 info",
        f"    stats socket ipv4@{t.HAPROXY_ADMIN_HOST}:{t.HAPROXY_ADMIN_PORT} level admin",
        f"    stats socket {paths.haproxy_sock} mode 600 level admin",
        "    stats timeout 30s",
        # Admin states (drain/maint/weights) survive a reload only through this
        # file: dump `show servers state` into it before reloading.
        f"    server-state-file {paths.haproxy_state}",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option dontlog-normal",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout check 2s",
        "    load-server-state-from-file global",
        "",
    ]
    for chain in t.CHAINS.values():
        lines += [
            f"frontend {chain.backend}_in",
            f"    bind 127.0.0.1:{chain.frontend_port}",
            f"    default_backend {chain.backend}",
            "",
            f"backend {chain.backend}",
            "    balance roundrobin",
            "    option httpchk",
            f"    http-check send meth POST uri / hdr Content-Type application/json body '{HEALTH_BODY}'",
            "    http-check expect status 200",
            "    default-server inter 1s fall 2 rise 2",
        ]
        for node in t.NODES.values():
            if node.chain == chain.name:
                lines.append(f"    server {node.name} {t.node_address(node)}:{chain.rpc_port} check")
        lines.append("")
    return "\n".join(lines)


def command(cmd: str, timeout: float = 2.0) -> str:
    """One runtime-API command over the TCP stats socket."""
    with socket.create_connection((t.HAPROXY_ADMIN_HOST, t.HAPROXY_ADMIN_PORT), timeout=timeout) as s:
        s.sendall(cmd.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def server_status(timeout: float = 2.0) -> dict[tuple[str, str], str]:
    """(backend, server) -> status as `show stat` reports it (UP, DOWN, MAINT, DRAIN, 'UP 1/2', ...)."""
    text = command("show stat", timeout).lstrip("# ")
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("svname") not in ("FRONTEND", "BACKEND", None):
            out[(row["pxname"], row["svname"])] = row["status"]
    return out


def not_all_up(paths: Paths) -> str | None:
    """None when every lab server is UP, else which are not."""
    try:
        status = server_status()
    except OSError as exc:
        return f"runtime API {t.HAPROXY_ADMIN_HOST}:{t.HAPROXY_ADMIN_PORT}: {exc}"
    bad = []
    for node in t.NODES.values():
        key = (t.CHAINS[node.chain].backend, node.name)
        if status.get(key) != "UP":
            bad.append(f"{key[0]}/{key[1]}={status.get(key, 'missing')}")
    return f"servers not UP: {', '.join(bad)}" if bad else None


def save_server_state(paths: Paths) -> None:
    """Write `show servers state` to the server-state file, so admin states
    (drain, maint, weights) survive the next HAProxy restart or reload."""
    paths.haproxy_state.write_text(command("show servers state"))
