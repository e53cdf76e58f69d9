"""A client upgrade as a change request: what it changes, how risky it is, how to undo it, and a
checklist the runbook checked itself, rendered for the approver and bound into the plan's hash.

The seeds write these by hand (CR-2024-001, "Upgrade Erigon to v2.60.0", risk Medium, rollback
30 minutes, a pre-change checklist ticked from memory). Here every checklist item is a fact the
run observed (a backup's age, the alerts firing, the budget, the checksum), so an approval signs
exactly what was true when the plan was made; a failed item refuses the change before anyone is
asked to approve it.

    request = ChangeRequest(client=..., to_version=..., nodes=[NodeChange(...)], checks=[...], ...)
    request.risk, request.may_migrate, request.rollback_minutes
    request.plan() -> tasks.approval.Plan   (its hash names the CR: CR-<yyyymmdd>-<hash[:6]>)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from tasks.approval import Plan
from tasks.probes.evm import version_key

# Minutes each step takes on a typical node, for the CR's estimates (the seeds' own CR-2024-001
# figures for Erigon); the datadir backup and restore are estimated from the datadir's size.
STEP_MINUTES = {"drain": 5, "stop": 1, "install": 5, "start": 1, "verify": 10, "undrain": 5}
# Measured restore throughput of the snapshot engine (bench/snapshot_bench.py: 140-160 MiB/s in
# the lab), halved for a real network between the store and the host.
RESTORE_BYTES_PER_MINUTE = 70 * 1024 * 1024 * 60


def _release(version: str) -> tuple[int, ...]:
    return version_key(version)[0]


def may_migrate(old: str | None, new: str) -> bool:
    """Whether going from `old` to `new` may rewrite the datadir in a way the old version cannot read.

    Erigon migrates its database on minor releases (and Erigon 3 is a new format altogether);
    anvil's state file does not load across 1.4 and 1.7. A patch release within one minor is
    assumed not to migrate; an unknown old version is assumed to.
    """
    if old is None:
        return True
    return _release(old)[:2] != _release(new)[:2]


def is_newer(old: str | None, new: str) -> bool:
    return old is None or version_key(new) > version_key(old)


@dataclass(frozen=True)
class Check:
    """One pre-change checklist item, checked by the runbook: `ok` is what it found, not a promise."""

    item: str
    ok: bool
    detail: str

    def markdown(self) -> str:
        return f"- [{'x' if self.ok else ' '}] {self.item}: {self.detail}"


@dataclass(frozen=True)
class NodeChange:
    node: str
    current: str | None  # the version the node reports now (None: unknown)
    datadir_bytes: int = 0

    def backup_needed(self, to_version: str) -> bool:
        return may_migrate(self.current, to_version)


@dataclass(frozen=True)
class ChangeRequest:
    client: str
    to_version: str
    target: str  # the chain or the node list, as the operator asked
    nodes: list[NodeChange]  # in order: the canary(ies) first
    canary: int
    soak_minutes: float
    max_failures: int
    sha256: str  # of the release archive, from its checksums file
    checks: list[Check] = field(default_factory=list)

    @property
    def may_migrate(self) -> bool:
        return any(n.backup_needed(self.to_version) for n in self.nodes)

    @property
    def risk(self) -> str:
        """Low: a patch release. Medium: a minor release (may migrate; rollback restores the datadir).
        High: a major release or a node on an unknown version."""
        olds = [n.current for n in self.nodes]
        if any(o is None for o in olds) or any(_release(o)[:1] != _release(self.to_version)[:1] for o in olds):
            return "High"
        return "Medium" if self.may_migrate else "Low"

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def rollback_minutes(self) -> int:
        """One node's rollback, the slowest: stop, switch back, restore the datadir if it may have
        changed, start, verify, return to rotation."""
        base = STEP_MINUTES["stop"] + STEP_MINUTES["start"] + STEP_MINUTES["verify"] + STEP_MINUTES["undrain"]
        restore = max((-(-n.datadir_bytes // RESTORE_BYTES_PER_MINUTE) for n in self.nodes
                       if n.backup_needed(self.to_version)), default=0)
        return base + restore

    def node_steps(self, n: NodeChange) -> list[str]:
        backup = (["back up the datadir (the new version may migrate it; the rollback restores it)"]
                  if n.backup_needed(self.to_version) else [])
        return (["drain from the load balancer (disruption budget)", "stop"] + backup
                + [f"install {self.client} {self.to_version} side by side, sha256 {self.sha256[:12]}... checked on the host",
                   "switch the current link atomically", "start",
                   "verify: lag < 100 blocks, RPC < 100 ms, no errors in the log tail, reports the new version",
                   f"soak {self.soak_minutes:g} min", "return to rotation"])

    def plan(self) -> Plan:
        order = [n.node for n in self.nodes]
        steps = [f"{self.client} {self.to_version} on {', '.join(order)}, one node at a time; "
                 f"canary: {', '.join(order[:self.canary])}; the wave stops after {self.max_failures} failure(s)"]
        for i, n in enumerate(self.nodes):
            role = "canary" if i < self.canary else "wave"
            steps.append(f"{n.node} ({role}, {n.current or 'unknown version'} -> {self.to_version}): "
                         + "; ".join(self.node_steps(n)))
        steps.append("a node that fails verification is rolled back to its previous version"
                     " and, if the datadir may have changed, to the datadir backed up before the change")
        facts = {"client": self.client, "to_version": self.to_version, "sha256": self.sha256,
                 "versions": {n.node: n.current for n in self.nodes}, "canary": self.canary,
                 "soak_minutes": self.soak_minutes, "max_failures": self.max_failures,
                 "checks": {c.item: c.ok for c in self.checks}}
        return Plan(steps, facts)

    def cr_id(self, today: date | None = None) -> str:
        return f"CR-{(today or date.today()).strftime('%Y%m%d')}-{self.plan().hash[:6]}"

    def markdown(self, today: date | None = None) -> str:
        """The change request as the approver reads it, above the plan's own markdown."""
        estimate = sum(STEP_MINUTES.values()) * len(self.nodes) + self.soak_minutes * len(self.nodes)
        lines = [f"## {self.cr_id(today)}: upgrade {self.client} to {self.to_version} on {self.target}", "",
                 f"- Risk: **{self.risk}**" + (" (the new version may migrate the datadir)" if self.may_migrate else ""),
                 f"- Rollback: previous version{' and the datadir backed up before the change' if self.may_migrate else ''}"
                 f", about {self.rollback_minutes} min per node, automatic on a failed verification",
                 f"- Estimated duration: about {estimate:g} min",
                 "", "### Pre-change checklist (checked by the runbook)", ""]
        lines += [c.markdown() for c in self.checks]
        return "\n".join(lines)
