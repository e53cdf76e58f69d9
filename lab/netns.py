"""The lab network: a bridge in the root namespace and one namespace per host.

    root ns: rbbr0 10.213.7.1/24 --+-- rbv-h1 <-> eth0 10.213.7.11 (netns rb-h1)
                                   +-- rbv-h2 <-> eth0 10.213.7.12 (netns rb-h2)
                                   +-- rbv-h3 <-> eth0 10.213.7.13 (netns rb-h3)

No default route anywhere: lab traffic cannot leave the bridge.
"""

from __future__ import annotations

import subprocess
import time

from . import topology as t


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def link_exists(name: str) -> bool:
    return ip("link", "show", "dev", name, check=False).returncode == 0


def namespaces() -> set[str]:
    out = ip("netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def leftovers() -> list[str]:
    """Lab network objects that exist right now."""
    found = [f"netns {h.namespace}" for h in t.HOSTS.values() if h.namespace in namespaces()]
    return found + [f"link {n}" for n in (t.BRIDGE, *(h.veth for h in t.HOSTS.values())) if link_exists(n)]


def owner() -> str | None:
    """The LAB_DIR whose lab built the network (kept as the bridge's alias), if any."""
    out = ip("link", "show", "dev", t.BRIDGE, check=False).stdout
    for line in out.splitlines():
        if line.strip().startswith("alias "):
            return line.strip()[len("alias "):]
    return None


def create(lab_dir: str) -> None:
    ip("link", "add", t.BRIDGE, "type", "bridge")
    ip("link", "set", t.BRIDGE, "alias", lab_dir)  # so `down` of another LAB_DIR leaves it alone
    ip("addr", "add", f"{t.BRIDGE_ADDRESS}/{t.PREFIX_LEN}", "dev", t.BRIDGE)
    ip("link", "set", t.BRIDGE, "up")
    for h in t.HOSTS.values():
        ip("netns", "add", h.namespace)
        ip("-n", h.namespace, "link", "set", "lo", "up")
        ip("link", "add", h.veth, "type", "veth", "peer", "name", h.peer)
        ip("link", "set", h.peer, "netns", h.namespace)
        ip("-n", h.namespace, "link", "set", h.peer, "name", "eth0")
        ip("-n", h.namespace, "addr", "add", f"{h.address}/{t.PREFIX_LEN}", "dev", "eth0")
        ip("-n", h.namespace, "link", "set", "eth0", "up")
        ip("link", "set", h.veth, "master", t.BRIDGE)
        ip("link", "set", h.veth, "up")


def destroy() -> list[str]:
    """Remove whatever exists of the lab network; returns what was removed."""
    removed = []
    for h in t.HOSTS.values():
        if h.namespace in namespaces():
            ip("netns", "del", h.namespace, check=False)
            removed.append(f"netns {h.namespace}")
    end = time.monotonic() + 1.0  # a veth goes with its peer's namespace, asynchronously
    while time.monotonic() < end and any(link_exists(h.veth) for h in t.HOSTS.values()):
        time.sleep(0.05)
    for h in t.HOSTS.values():
        if link_exists(h.veth):
            ip("link", "del", h.veth, check=False)
            removed.append(f"link {h.veth}")
    if link_exists(t.BRIDGE):
        ip("link", "del", t.BRIDGE, check=False)
        removed.append(f"link {t.BRIDGE}")
    return removed


def set_host_link(host: str, up: bool) -> None:
    """Partition (down) or reconnect (up) a whole host by its bridge-side veth."""
    ip("link", "set", t.HOSTS[host].veth, "up" if up else "down")


def host_link_up(host: str) -> bool:
    out = ip("-o", "link", "show", "dev", t.HOSTS[host].veth, check=False).stdout
    flags = out.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in out else []
    return "UP" in flags
