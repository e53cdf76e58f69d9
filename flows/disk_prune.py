"""Runbook: free disk space on a node host before the disk fills, with the safe clean-ups first.

The seeds' `disk-cleaner.sh` ran from cron at 02:00 to keep disks under 60%. This runbook runs
daily at 02:00 over every host (`disk-prunes`) and on `DiskFilling` for the node it names:

1. plan: the usage of the filesystem holding each datadir (`df`) against the host's disk policy
   (inventory `hosts.<h>.disk`: target 60%, act 70%, critical 90%, the client's free-space floor).
   Under target: nothing to do. Over: the clean-ups, cheapest first, each listed path by path with
   its size (tasks/pruning.py): journald vacuum and old container images where the host has them,
   rotated and compressed logs older than the policy's days, then the client's disposable
   directories (Erigon's temp, txpool, nodes), which need the node stopped, only as far as the
   bytes still needed. The list is a table artifact, so a dry run shows every path and deletes none;
2. act: each clean-up in turn, skipped once the disk is under target; a clean-up that needs the
   node stopped drains it (never breaching the disruption budget: skipped otherwise), stops it,
   deletes exactly the planned files, starts it, waits until synced and returns it to rotation,
   whatever happened to the delete. Bytes freed are measured by `df` around each step;
3. report: what each step freed; still over target after the safe steps, a human is told (P3; P2
   past critical) that heavy client pruning (geth `snapshot prune-state`, Nitro's offline prune, an
   Erigon resync) or more disk is needed: those are not run by this runbook.

Nothing under a datadir's database or segments is ever a candidate: the delete command is built
only from files found inside the clean-up directories, re-checked against the client's layout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated

from prefect import flow
from prefect.artifacts import create_table_artifact
from pydantic import Field

from inventory import InventoryError, load_inventory
from tasks import guards, pruning, runbook, trigger
from tasks.approval import Plan
from tasks.errors import RunbookError
from tasks.escalation import Kind
from tasks.gate import DryRunComplete
from tasks.guards import Resource
from tasks.backups.snapshot import SnapshotTarget, stream_datadir, write_verified_manifest
from tasks.chainstate import block_at
from tasks.hostinfo import DiskUsage, disk_usage_argv, parse_df
from tasks.runbook import Done, Failed, Runbook
from tasks.steps import bring_back, check_disruption_budget, drain_from_rotation, step, stop_service
from tasks.vocabulary import AUTOMATION_ONLY, ActionKind, HostName, NodeName, Outcome

MIB = 1024**2
HEAVY_TIMEOUT_S = 24 * 3600  # geth's offline prune-state can exceed 12 h
HEAVY_RESYNC_DEADLINE_S = 8 * 3600  # an Erigon resync from its segments: 6-8 h


@dataclass
class Disk:
    """One filesystem holding datadirs, and what the policy asks of it."""

    mount: str
    nodes: list[str]
    usage: DiskUsage
    target_percent: float
    critical_percent: float
    floor_bytes: int

    def needed_bytes(self, usage: DiskUsage | None = None) -> int:
        """Bytes to free so usage is under target and free space above the floor (0: none)."""
        u = usage or self.usage
        capacity = (u.used_kib + u.avail_kib) * 1024  # df's percent: used / (used + available)
        over_target = u.used_kib * 1024 - int(capacity * self.target_percent / 100)
        under_floor = self.floor_bytes - u.avail_bytes
        return max(0, over_target, under_floor)

    def describe(self, usage: DiskUsage | None = None) -> str:
        u = usage or self.usage
        return (f"{self.mount} {u.percent:.1f}% used, {u.avail_bytes / MIB:.0f} MiB free "
                f"(target {self.target_percent:g}%, floor {self.floor_bytes / MIB:.0f} MiB)")


def host_disks(rb: Runbook, host: str, nodes: list[str]) -> dict[str, Disk]:
    """mount -> Disk, for the filesystems holding these nodes' datadirs (read-only, also in a dry run)."""
    policy = rb.inventory.hosts[host].disk
    disks: dict[str, Disk] = {}
    with rb.inspect(host) as ssh:
        for node in nodes:
            n = rb.node(node)
            usage = parse_df(ssh.run(disk_usage_argv(n.datadir), check=True).stdout)
            floor = pruning.free_floor_bytes(n.client.value, policy.min_free_gib)
            disk = disks.setdefault(usage.mount, Disk(usage.mount, [], usage, policy.target_percent,
                                                      policy.critical_percent, floor))
            disk.nodes.append(node)
            disk.floor_bytes = max(disk.floor_bytes, floor)
    return disks


def usage_of(rb: Runbook, host: str, node: str) -> DiskUsage:
    with rb.inspect(host) as ssh:
        return parse_df(ssh.run(disk_usage_argv(rb.node(node).datadir), check=True).stdout)


def survey(rb: Runbook, host: str, disk: Disk, heavy: bool = False) -> list[pruning.Cleanup]:
    """The clean-ups for one filesystem, cheapest first, disposable directories and (when asked) the clients'
    heavy pruning only as far as needed."""
    policy = rb.inventory.hosts[host].disk
    cleanups: list[pruning.Cleanup] = []
    with rb.inspect(host) as ssh:
        tools = pruning.parse_probe(ssh.run(pruning.PROBE_ARGV, check=True).stdout)
        if tools.get("journal"):
            cleanups.append(pruning.Cleanup("journal", host, None, f"rotate, drop archives older than "
                                            f"{policy.log_keep_days} days", commands=pruning.journal_argvs(policy.log_keep_days)))
        for node in disk.nodes:
            n = rb.node(node)
            found, refused = _listing(ssh, pruning.cleanup_dirs(n.client.value, n.datadir)["old-logs"],
                                      policy.log_keep_days)
            if found or refused:
                cleanups.append(pruning.Cleanup("old-logs", host, node, f"rotated or compressed logs older than "
                                                f"{policy.log_keep_days} days in {n.datadir}/logs", paths=found,
                                                skipped=refused))
        if tools.get("docker"):
            cleanups.append(pruning.Cleanup("container-images", host, None, "dangling images and build cache "
                                            f"older than {policy.log_keep_days} days (never volumes)",
                                            commands=pruning.container_argvs(policy.log_keep_days)))
        still = disk.needed_bytes() - sum(c.planned_bytes for c in cleanups)
        for node in disk.nodes:
            if still <= 0:
                break
            n = rb.node(node)
            dirs = {k: v for k, v in pruning.cleanup_dirs(n.client.value, n.datadir).items() if k != "old-logs"}
            paths, refused = [], []
            for directory in dirs.values():
                found, bad = _listing(ssh, directory, None)
                paths += found
                refused += bad
            if paths:
                cleanups.append(pruning.Cleanup("disposable", host, node, f"empty {', '.join(sorted(dirs.values()))} "
                                                "(rebuilt by the client)", needs_stop=True, paths=paths, skipped=refused))
                still -= sum(c.size for c in paths)
        for node in disk.nodes if heavy else ():
            heavy_prune = pruning.HEAVY.get(rb.node(node).client.value)
            if still <= 0 or heavy_prune is None:
                continue
            expected = _bytes_under(ssh, rb.node(node).datadir, heavy_prune.remove) if heavy_prune.remove else None
            cleanups.append(pruning.Cleanup("heavy", host, node, heavy_prune.description, needs_stop=True,
                                            expected_bytes=expected, heavy=heavy_prune))
            still -= expected or 0
    return cleanups


def _bytes_under(ssh, datadir: str, relative: tuple[str, ...]) -> int:
    """What `du` counts under the given datadir-relative paths (0 for what is not there)."""
    paths = [f"{datadir.rstrip('/')}/{r}" for r in relative]
    out = ssh.run(["sh", "-c", 'for p; do [ -e "$p" ] && du -s -B1 -- "$p"; done; exit 0', "sh", *paths],
                  check=True).stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if line.split() and line.split()[0].isdigit())


def _listing(ssh, directory: str, old_logs_days: int | None) -> tuple[list[pruning.Candidate], list[str]]:
    result = ssh.run(pruning.list_argv(directory, old_logs_days), check=True, timeout=300)
    if result.truncated:
        raise RunbookError(f"the listing of {directory} was too long to read whole: nothing deleted; "
                           "clean it by hand or raise the read cap")
    return pruning.parse_listing(result.stdout)


@step("delete-files")
def delete_files(rb: Runbook, ssh, node: str, cleanup: pruning.Cleanup) -> None:
    n = rb.node(node)
    for argv in pruning.delete_argvs(n.client.value, n.datadir, cleanup.paths):
        ssh.run(argv, check=True, action=ActionKind.delete, audit_data={"step": cleanup.name})


@step("heavy-prune")
def heavy_prune(rb: Runbook, ssh, node: str, how: pruning.HeavyPrune, head) -> None:
    """A verified backup of the stopped node's datadir first (the way back), then the client's own prune or
    the removal of the database it rebuilds."""
    target = SnapshotTarget.open(rb, node)
    backup = stream_datadir(rb, ssh, target)
    manifest = write_verified_manifest(rb, target, backup, None, head)  # Failed (nothing pruned) if unreadable
    rb.audit.note("heavy-prune backup", node=node, manifest=manifest.key)
    ssh.run(how.argv(rb.node(node).datadir), check=True, timeout=HEAVY_TIMEOUT_S, action=ActionKind.delete,
            audit_data={"step": "heavy-prune", "backup": manifest.key})


@dataclass
class DiskPrune:
    node: str | None = None
    host: str | None = None
    heavy: bool = False
    flow = "disk-prune"
    freed: list[dict] = field(default_factory=list)

    @property
    def needs_approval(self) -> bool:
        """Heavy pruning takes a node down for hours and its database with it: a human approves the plan."""
        return self.heavy

    def parameters(self) -> dict:
        return {"node": self.node, "host": self.host, "heavy": self.heavy}

    def resources(self) -> list[Resource]:
        """Every node on the host: datadirs share filesystems, so DiskFilling fires for each node on a full
        one, and only one run at a time may clean it (the others find it busy, then under target)."""
        if (self.node is None) == (self.host is None):
            raise InventoryError("disk-prune takes a node or a host, exactly one")
        inventory = load_inventory()
        host = inventory.node(self.node).host if self.node else self.host
        if host not in inventory.hosts:
            raise InventoryError(f"unknown host {host!r} (known: {', '.join(sorted(inventory.hosts))})")
        return [Resource("node", n) for n, spec in sorted(inventory.nodes.items()) if spec.host == host]

    @property
    def target(self) -> str:
        return self.node or self.host

    def plan(self, rb: Runbook) -> Plan:
        self.host_name = self.host or rb.node(self.node).host
        nodes = rb.nodes()
        self.disks = host_disks(rb, self.host_name, nodes) if nodes else {}
        if self.node:  # the filesystem holding the node's datadir, with every node on it
            self.disks = {m: d for m, d in self.disks.items() if self.node in d.nodes}
        over = {m: d for m, d in self.disks.items() if d.needed_bytes()}
        rb.audit.state("before", {m: d.describe() for m, d in self.disks.items()})
        if not over:
            raise Done(Outcome.noop, "under-target", "nothing to prune: " + "; ".join(
                d.describe() for d in self.disks.values()) if self.disks else f"{self.target} holds no datadir")
        if getattr(self, "first_plan", None) is not None:
            # Made again under the leases after approval: still over target, so the approved list stands
            # (its byte counts move with every write the nodes make; a new survey would never hash the same).
            return self.first_plan
        self.cleanups = [c for d in over.values() for c in survey(rb, self.host_name, d, self.heavy)]
        rows = [{"step": c.name, "node": c.node or "-", "path": p.path, "bytes": p.size}
                for c in self.cleanups for p in c.paths]
        create_table_artifact(rows or [{"step": "-", "node": "-", "path": "(no files)", "bytes": 0}],
                              key=runbook._artifact_key("disk-prune", self.target, "paths"),
                              description=f"disk-prune {self.target}: every path it {'would delete' if rb.dry_run else 'deletes'}")
        steps = [f"{d.describe()}: free at least {d.needed_bytes() / MIB:.1f} MiB" for d in over.values()]
        steps += [c.summary() for c in self.cleanups]
        steps.append("after each step, measure what it freed and stop once under target; still over target: "
                     + ("escalate (more disk is a human's call)" if self.heavy else
                        "escalate (heavy client pruning, `heavy: true` with approval, or more disk is a human's call)"))
        facts = {"host": self.host_name, "needed_bytes": {m: d.needed_bytes() for m, d in over.items()},
                 "cleanups": [{"step": c.name, "node": c.node, "files": len(c.paths), "planned_bytes": c.planned_bytes,
                               "refused": c.skipped[:20]} for c in self.cleanups]}
        self.first_plan = Plan(steps, facts)
        return self.first_plan

    def act(self, rb: Runbook, plan: Plan) -> dict:
        for cleanup in self.cleanups:
            disk = self._disk_of(cleanup)
            before = usage_of(rb, self.host_name, disk.nodes[0])
            if not disk.needed_bytes(before) and not rb.dry_run:
                self.freed.append({"step": cleanup.name, "node": cleanup.node, "skipped": "under target already"})
                continue
            started = time.monotonic()
            skipped = self._run_cleanup(rb, cleanup)
            after = usage_of(rb, self.host_name, disk.nodes[0])
            freed = (before.used_kib - after.used_kib) * 1024
            self.freed.append({"step": cleanup.name, "node": cleanup.node, "freed_bytes": freed,
                               "planned_bytes": cleanup.planned_bytes, "seconds": round(time.monotonic() - started, 2),
                               **({"skipped": skipped} if skipped else {})})
            rb.audit.note("cleanup", **self.freed[-1])
        if rb.dry_run:
            raise DryRunComplete("every clean-up listed")
        return self._report(rb)

    def _disk_of(self, cleanup: pruning.Cleanup) -> Disk:
        if cleanup.node is None:
            return next(iter(self.disks.values()))
        return next(d for d in self.disks.values() if cleanup.node in d.nodes)

    def _run_cleanup(self, rb: Runbook, cleanup: pruning.Cleanup) -> str | None:
        """Run one clean-up; returns why it was skipped, if it was."""
        if cleanup.commands:
            with rb.ssh_to_host(self.host_name) as ssh:
                for argv in cleanup.commands:
                    result = ssh.run(argv, timeout=600, action=ActionKind.delete, audit_data={"step": cleanup.name})
                    if result.exit_code != 0 and not result.dry_run:  # None: it ran past its deadline
                        return f"{argv[0]} exited {result.exit_code}: {result.stderr.strip()[:200]}"
            return None
        if not cleanup.needs_stop:
            with rb.ssh(cleanup.node) as ssh:
                delete_files(rb, ssh, cleanup.node, cleanup)
            return None
        node = cleanup.node
        try:
            check_disruption_budget(rb, node)
        except guards.DisruptionBudgetExceeded as exc:
            return f"not stopped: {exc}"
        drained = drain_from_rotation(rb, node)
        failure = None
        try:
            with rb.ssh(node) as ssh:
                head = block_at(rb.node(node).rpc_url) if cleanup.heavy else None
                if not stop_service(rb, ssh, node):
                    raise RunbookError(f"{node} did not stop: its datadir was left alone")
                if cleanup.heavy:
                    heavy_prune(rb, ssh, node, cleanup.heavy, head)
                else:
                    delete_files(rb, ssh, node, cleanup)
        except DryRunComplete:
            raise
        except Exception as exc:  # noqa: BLE001 - the node is started again first, whatever went wrong
            failure = exc
        bring_back(rb, node, drained, "its disk clean-up",
                   HEAVY_RESYNC_DEADLINE_S if cleanup.heavy and failure is None else None)
        if failure is not None:
            raise failure
        return None

    def _report(self, rb: Runbook) -> dict:
        after = {m: usage_of(rb, self.host_name, d.nodes[0]) for m, d in self.disks.items()}
        rb.audit.state("after", {m: self.disks[m].describe(u) for m, u in after.items()})
        total = sum(f.get("freed_bytes", 0) for f in self.freed)
        lines = [f"{f['step']} {f['node'] or self.host_name}: " + (f"freed {f['freed_bytes'] / MIB:.1f} MiB "
                 f"in {f['seconds']} s" if "freed_bytes" in f else "") + (f" (skipped: {f['skipped']})" if f.get("skipped") else "")
                 for f in self.freed]
        still = {m: d for m, d in self.disks.items() if d.needed_bytes(after[m])}
        detail = f"{self.target}: freed {total / MIB:.1f} MiB; " + "; ".join(
            self.disks[m].describe(u) for m, u in after.items())
        if still:
            critical = any(after[m].percent >= d.critical_percent for m, d in still.items())
            raise Failed(Kind.DISK_FULL if critical else Kind.DISK_OVER_TARGET, self.target,
                         f"{detail}: still over target after the safe clean-ups; heavy client pruning (geth snapshot "
                         "prune-state, Nitro --init.prune, an Erigon resync from a snapshot) or a bigger disk is needed",
                         {"steps": "; ".join(lines)}, freed=self.freed)
        rb.notify(f"disk-prune {detail}", [])
        raise Done(Outcome.succeeded, "under-target", detail + " (" + "; ".join(lines) + ")", freed=self.freed,
                   freed_bytes=total)


@flow(name="disk-prune", log_prints=True)
def disk_prune(
    node: Annotated[NodeName | None, Field(description="A node: the filesystem holding its datadir")] = None,
    host: Annotated[HostName | None, Field(description="Or a host: the filesystems of every node on it")] = None,
    dry_run: Annotated[bool, Field(description="List every path it would delete, with its size; delete nothing")] = False,
    heavy: Annotated[bool, Field(description="If the safe steps are not enough: the client's own prune or a resync "
                                             "of its database (hours per node, one at a time, a backup first); needs approval")] = False,
    lease_wait_seconds: Annotated[float, Field(ge=0, le=3600, description="How long to wait for another run on these nodes")] = 300,
    approval_timeout_seconds: Annotated[int, Field(ge=10, le=604800, description="How long a heavy prune waits for approval")] = 3600,
    trigger_event_id: AUTOMATION_ONLY = None,
) -> dict:
    """Bring a node's (or a host's) datadir disk under its target with the safe clean-ups, each measured; with
    `heavy`, then the client's own pruning, approved."""
    return runbook.run(DiskPrune(node, host, heavy), trigger.describe("disk-prune", trigger_event_id),
                       dry_run=dry_run, lease_wait_seconds=lease_wait_seconds,
                       approval_timeout_seconds=approval_timeout_seconds)


@flow(name="disk-prunes", log_prints=True)
def disk_prunes(
    hosts: Annotated[list[HostName] | None, Field(max_length=2000, description="The hosts to prune; empty: every host")] = None,
    dry_run: Annotated[bool, Field(description="List what each host would lose; delete nothing")] = False,
) -> dict:
    """The daily 02:00 pass: every host in turn, each as its own disk-prune run (own leases, audit and outcome);
    a host that fails is escalated by its own run and does not stop the others."""
    names = hosts or sorted(load_inventory().hosts)
    return runbook.each_in_turn(names, lambda name: disk_prune(host=name, dry_run=dry_run), "disk-prune")
