"""Disk facts for the exporter: per node, its datadir's filesystem (size, used, free), the datadir's
own size, and how fast the filesystem fills, read over SSH from each host on a slow loop.

Why SSH and not node_exporter: the fleet's hosts already trust the runbooks' SSH identity and
nothing else is installed on them; one command per host per interval (`df` and `du` of each of its
datadirs) is cheap next to a node's own disk traffic. `du` walks the datadir, so the interval is
long (60 s by default); a node's datadir is a few thousand files even on an Erigon archive node.

Growth is the slope of the filesystem's used bytes over the last `GROWTH_WINDOW_S` of samples
(bytes per second, negative while something is being cleaned up): what the DiskFilling rule
extrapolates, without Prometheus needing a long range over a sparse series.

The commands are read-only and audited like every SSH command, in the exporter's own audit
record (one per process), so they never crowd the runbooks' trail in the reconciler's reads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from inventory import Inventory
from tasks.hostinfo import disk_usage_argv, parse_df

log = logging.getLogger("runbooks.exporter.disk")

GROWTH_WINDOW_S = 15 * 60


def policy_ratios(inventory: Inventory, node: str) -> dict[str, float]:
    """warn / act / critical as used/size ratios (the node's host's disk policy), published so the rules
    and disk-prune read one source."""
    policy = inventory.host_of(node).disk
    return {"warn": policy.warn_percent / 100, "act": policy.act_percent / 100, "critical": policy.critical_percent / 100}


FIELD = "\x1f"  # separates one datadir's df output from its du figure (never in df's text)


@dataclass(frozen=True)
class DiskSample:
    node: str
    at: float
    size_bytes: int
    used_bytes: int
    avail_bytes: int
    datadir_bytes: int | None  # None when du could not read all of it


def host_command(datadirs: list[str]) -> list[str]:
    """One argv for a host: for each datadir, `df -P -k` then `du -s -B1 -x` (paths validated, passed as $@)."""
    for d in datadirs:
        disk_usage_argv(d)  # refuses anything but a plain absolute path
    script = ('for d in "$@"; do df -P -k -- "$d" || exit 1; '
              f'printf \'{FIELD}\'; du -s -B1 -x -- "$d" 2>/dev/null | cut -f1; printf \'{FIELD}\\n\'; done')
    return ["sh", "-c", script, "sh", *datadirs]


def parse_host_output(nodes: list[str], output: str, at: float) -> list[DiskSample]:
    chunks = output.split(FIELD + "\n")
    samples = []
    for node, chunk in zip(nodes, chunks):
        df_text, _, du_text = chunk.partition(FIELD)
        usage = parse_df(df_text)
        du = du_text.strip()
        samples.append(DiskSample(node, at, usage.total_kib * 1024, usage.used_kib * 1024, usage.avail_bytes,
                                  int(du) if du.isdigit() else None))
    if len(samples) != len(nodes):
        raise ValueError(f"expected disk facts for {len(nodes)} datadirs, got {len(samples)}")
    return samples


class DiskFacts:
    """The last disk sample per node and its growth rate; fed by `sample_forever`, read by a scrape."""

    def __init__(self) -> None:
        self._history: dict[str, deque[DiskSample]] = {}
        self._lock = threading.Lock()

    def add(self, samples: list[DiskSample]) -> None:
        with self._lock:
            for s in samples:
                h = self._history.setdefault(s.node, deque())
                h.append(s)
                while h and h[0].at < s.at - GROWTH_WINDOW_S:
                    h.popleft()

    def latest(self) -> dict[str, tuple[DiskSample, float | None]]:
        """node -> (its last sample, bytes/s the filesystem's used space grew over the window, if 2+ samples)."""
        with self._lock:
            out = {}
            for node, h in self._history.items():
                first, last = h[0], h[-1]
                rate = (last.used_bytes - first.used_bytes) / (last.at - first.at) if last.at > first.at else None
                out[node] = (last, rate)
            return out

    def forget_except(self, nodes: set[str]) -> None:
        with self._lock:
            for gone in set(self._history) - nodes:
                del self._history[gone]


def sample_once(inventory: Inventory, run_on_host: Callable[[str, list[str]], str]) -> list[DiskSample]:
    """One sample of every node with a datadir, one command per host; a host that fails is logged and skipped."""
    by_host: dict[str, list[str]] = {}
    for name, node in sorted(inventory.nodes.items()):
        if node.datadir:
            by_host.setdefault(node.host, []).append(name)
    samples = []
    for host, names in sorted(by_host.items()):
        try:
            argv = host_command([inventory.nodes[n].datadir for n in names])
            samples += parse_host_output(names, run_on_host(host, argv), time.time())
        except Exception as exc:  # noqa: BLE001 - one unreadable host must not hide the others' disks
            log.warning("disk facts of host %s: %s", host, exc)
    return samples


def ssh_host_runner(inventory: Inventory, private_key: str, known_hosts: str, audit) -> Callable[[str, list[str]], str]:
    """run_on_host over the runbooks' SSH runner (a fresh connection per sample: the loop is slow)."""
    from tasks.ssh import SshRunner

    def run(host: str, argv: list[str]) -> str:
        with SshRunner(inventory.hosts[host], audit=audit, private_key=private_key, known_hosts=known_hosts,
                       connect_timeout=5, command_timeout=30) as ssh:
            return ssh.run(argv, check=True).stdout

    return run
