"""Runbook: upgrade a client on a chain's nodes as a change request, canary first, with automatic rollback.

The seeds wrote CR-2024-001 by hand ("Upgrade Erigon to v2.60.0", risk Medium, rollback 30 min) and
ticked its checklist from memory. Here:

1. plan: the release (the version as operators write it, `v3.0.4` or a pasted web3_clientVersion),
   its published sha256, each node's installed version (its `current` link) and the change request
   (tasks/change_request.py): risk, rollback plan and time, and a checklist the runbook checks
   itself (newer version, published checksum, every node of the chain healthy, the disruption
   budget, a datadir backup for a jump that may migrate, no half-done change). A failed item
   refuses the change before anyone is asked; the run then waits for approval of this exact plan;
2. per node, canary first, one at a time: install the new version beside the old one (checksum
   checked on the host) while the node still serves; drain (never breaching the budget); stop;
   back the datadir up to the store when the jump may migrate it (Erigon's migrations are one-way);
   switch `current` atomically; start; verify the seeds' success criteria (synced, within 100
   blocks, RPC under 100 ms, no new errors in the log, reporting the new version); soak; return to
   rotation;
3. a node that fails is rolled back (old version, and the pre-change datadir if the new version
   ran on it), ends healthy and in rotation, and is escalated; a failing canary, or failures past
   `max_failures`, stop the wave: the nodes after it are not touched.

Each point of no return is an `upgrade-stage` note (tasks/upgrades.py). A run that dies mid-way is
rolled back by the next client-upgrade of those nodes, or by client-upgrade-resume, which the
reconciler starts for a crashed upgrade.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Annotated

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from inventory import InventoryError, load_inventory
from tasks import guards, runbook, trigger
from tasks.approval import Plan
from tasks.backups.manifest import list_manifests
from tasks.backups.restoring import is_verified
from tasks.backups.snapshot import SnapshotTarget, stream_datadir, write_verified_manifest
from tasks.backups.store import open_store
from tasks.change_request import Check, ChangeRequest, NodeChange, is_newer, may_migrate
from tasks.chainstate import block_at
from tasks.errors import InvalidInput
from tasks.escalation import Kind
from tasks.gate import DryRunComplete
from tasks.guards import Resource
from tasks.releases import ReleaseSourceError, normalize_version
from tasks.runbook import Done, Failed, Runbook
from tasks.steps import assess_nodes, check_disruption_budget, drain_from_rotation, return_to_rotation, start_service, stop_service
from tasks.upgrades import (
    Change,
    current_version,
    half_done,
    install_release,
    record_stage,
    release_source,
    roll_back,
    soak,
    switch_version,
    verify_node,
)
from tasks.vocabulary import AUTOMATION_ONLY, NODE_NAME_RE, NodeName, Outcome

BACKUP_MAX_AGE = timedelta(hours=24)  # a verified snapshot younger than this counts as the pre-change backup


class NodeFailed(Exception):
    def __init__(self, node: str, why: str, rolled_back: str | None) -> None:
        super().__init__(why)
        self.node, self.why, self.rolled_back = node, why, rolled_back


def order_of(nodes: list[str] | None, chain: str | None) -> list[str]:
    """The nodes in the order they are upgraded (the canaries first), validated against the inventory."""
    inventory = load_inventory()
    if bool(nodes) == bool(chain):
        raise InventoryError("client-upgrade takes nodes or a chain, exactly one")
    if chain:
        if chain not in inventory.chains:
            raise InventoryError(f"unknown chain {chain!r} (known: {', '.join(sorted(inventory.chains))})")
        return sorted(inventory.nodes_on_chain(chain))
    for n in nodes:
        inventory.node(n)
    return list(dict.fromkeys(nodes))


@dataclass
class ClientUpgrade:
    nodes: list[str] | None
    chain: str | None
    version: str
    canary: int = 1
    soak_minutes: float = 5.0
    max_failures: int = 0
    flow = "client-upgrade"
    needs_approval = True
    results: dict = field(default_factory=dict)

    def parameters(self) -> dict:
        return {"nodes": self.nodes, "chain": self.chain, "version": self.version, "canary": self.canary,
                "soak_minutes": self.soak_minutes, "max_failures": self.max_failures}

    def resources(self) -> list[Resource]:
        self.order = order_of(self.nodes, self.chain)
        return [Resource("node", n) for n in self.order]

    def plan(self, rb: Runbook) -> Plan:
        self.to = normalize_version(self.version)
        clients = {rb.node(n).client.value for n in self.order}
        if len(clients) != 1:
            raise InvalidInput(f"one client per change: {', '.join(sorted(clients))} (upgrade each on its own)")
        self.client = clients.pop()
        missing = [n for n in self.order if not rb.node(n).install_dir]
        if missing:
            raise InvalidInput(f"{', '.join(missing)} have no install_dir in the inventory: client-upgrade installs "
                               "versions side by side there (<dir>/<version>, <dir>/current)")
        self.source = release_source(rb, self.client)
        self.pending = half_done(self.order)
        self.current = {n: self.pending[n].from_version if n in self.pending else current_version(rb, n)
                        for n in self.order}
        try:
            self.sha256, sha_problem = self.source.expected_sha256(self.to), None
        except (ReleaseSourceError, InvalidInput) as exc:
            self.sha256, sha_problem = "", str(exc)
        checks = self._checklist(rb, sha_problem)
        cr = ChangeRequest(client=self.client, to_version=self.to, target=self.chain or ", ".join(self.order),
                           nodes=[NodeChange(n, self.current[n]) for n in self.order], canary=self.canary,
                           soak_minutes=self.soak_minutes, max_failures=self.max_failures, sha256=self.sha256,
                           checks=checks)
        self.cr = cr
        create_markdown_artifact(key=runbook._artifact_key("change-request", self.chain or self.order[0]),
                                 markdown=cr.markdown(), description=f"{cr.cr_id()}: {self.client} {self.to}")
        rb.audit.state("change-request", {"id": cr.cr_id(), "risk": cr.risk, "rollback_minutes": cr.rollback_minutes,
                                          "checks": {c.item: [c.ok, c.detail] for c in checks}})
        if not cr.ready:
            failed = "; ".join(f"{c.item}: {c.detail}" for c in checks if not c.ok)
            raise Done(Outcome.refused, "checklist", f"{cr.cr_id()} refused before approval: {failed}", cr=cr.cr_id())
        plan = cr.plan()
        if self.pending:
            plan.steps.insert(0, "first roll back what an earlier run left half done: "
                              + "; ".join(c.describe() for c in self.pending.values()))
        return plan

    def _checklist(self, rb: Runbook, sha_problem: str | None) -> list[Check]:
        inv, to, olds = rb.inventory, self.to, self.current
        stale = [f"{n} ({v})" for n, v in olds.items() if not is_newer(v, to)]
        chain_nodes = sorted({m for n in self.order for m in inv.nodes_on_chain(rb.node(n).chain)})
        health = assess_nodes(inv, chain_nodes)
        sick = [f"{n} {a.status}" for n, a in health.items() if not a.healthy]
        thin = []
        for n in self.order:
            lb = rb.node(n).lb
            if lb:
                peers = [m for m in chain_nodes if m != n and rb.node(m).lb and rb.node(m).lb.backend == lb.backend
                         and health[m].healthy]
                if not peers:
                    thin.append(n)
        backups_ok, backups = self._backups(rb)
        unlinked = [n for n, v in olds.items() if v is None]
        return [
            Check("each node runs a version from its install_dir (the one a rollback returns to)", not unlinked,
                  f"no `current` link under the install_dir of {', '.join(unlinked)}" if unlinked
                  else ", ".join(f"{n} {v}" for n, v in olds.items())),
            Check("the version is newer than every node's", not stale,
                  f"{to} over {', '.join(f'{n} {v}' for n, v in olds.items())}" if not stale else f"not newer than {', '.join(stale)}"),
            Check("the release's checksum is published", bool(self.sha256),
                  f"sha256 {self.sha256[:16]}... from {self.source.checksums_url(to)}" if self.sha256 else str(sha_problem)[:300]),
            Check("every node of the chain is healthy (nothing alerting)", not sick, ", ".join(sick) or "all healthy"),
            Check("the disruption budget holds, one node at a time", not thin,
                  f"no healthy peer behind {', '.join(thin)}" if thin else "each node has a healthy peer in its backend"),
            Check("a datadir backup before a change that may migrate", backups_ok, backups),
            Check("no half-done change on these nodes", True,
                  "; ".join(c.describe() for c in self.pending.values()) or "none"),
        ]

    def _backups(self, rb: Runbook) -> tuple[bool, str]:
        """(can the pre-change backups be taken, what the CR says about them)."""
        if not any(may_migrate(self.current[n], self.to) for n in self.order):
            return True, f"not needed: {self.to} is a patch release over every node's version"
        try:
            store, _ = open_store(rb.inventory)
        except Exception as exc:  # noqa: BLE001 - no store, no way back from a migration: refuse the change
            return False, f"the backup store cannot be opened ({type(exc).__name__}: {str(exc)[:200]})"
        fresh = datetime.now(timezone.utc) - BACKUP_MAX_AGE
        notes = []
        for n in self.order:
            if may_migrate(self.current[n], self.to):
                recent = [m for m in list_manifests(store, "snapshot", n) if m.created_at >= fresh and is_verified(store, m)]
                notes.append(f"{n}: " + (f"verified snapshot {recent[-1].key}; " if recent else "")
                             + "a new one is taken while it is stopped, before the switch")
        return True, "; ".join(notes)

    def act(self, rb: Runbook, plan: Plan) -> dict:
        for change in self.pending.values():
            rb.gate.verify(f"roll back {change.describe()}")
            self.results[change.node] = roll_back(rb, change)
            self.current[change.node] = change.from_version
        failures, stopped_at = [], None
        for i, node in enumerate(self.order):
            canary = i < self.canary
            try:
                self.results[node] = self._upgrade(rb, node)
            except NodeFailed as failed:
                failures.append(failed)
                self.results[node] = f"failed: {failed.why}; {failed.rolled_back or 'not rolled back'}"
                if canary or len(failures) > self.max_failures:
                    stopped_at = node
                    break
        lines = [f"{n}: {r}" for n, r in self.results.items()]
        untouched = self.order[self.order.index(stopped_at) + 1:] if stopped_at else []
        if failures:
            why = "the canary failed" if stopped_at and self.order.index(stopped_at) < self.canary else \
                f"{len(failures)} failure(s), more than max_failures={self.max_failures}" if stopped_at else \
                f"{len(failures)} failure(s) within max_failures={self.max_failures}"
            raise Failed(Kind.UPGRADE_FAILED, self.chain or ",".join(self.order),
                         f"{self.cr.cr_id()}: upgrade of {self.client} to {self.to}: {why}"
                         + (f"; wave stopped, not touched: {', '.join(untouched)}" if untouched else "")
                         + "; " + "; ".join(lines)[:600], {"nodes": "; ".join(lines)[:1500]}, results=self.results)
        detail = f"{self.cr.cr_id()}: {self.client} {self.to} on {', '.join(self.order)}, each verified; " + "; ".join(lines)
        rb.notify(detail, [])
        raise Done(Outcome.succeeded, "upgraded", detail, cr=self.cr.cr_id(), results=self.results)

    def _upgrade(self, rb: Runbook, node: str) -> str:
        change = Change(node, self.current[node], self.to)
        if self.current[node] == self.to:
            return "already on it"
        try:
            with rb.ssh(node) as ssh:
                install_release(rb, ssh, node, self.source, self.to, self.sha256)
        except DryRunComplete:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing changed on the node yet: a failure, no rollback
            raise NodeFailed(node, f"install failed ({type(exc).__name__}: {str(exc)[:300]}); the node was not "
                             "touched", None) from exc
        try:
            check_disruption_budget(rb, node)
        except guards.DisruptionBudgetExceeded as exc:
            raise NodeFailed(node, f"not started: {exc}", None) from exc
        try:
            with rb.ssh(node) as ssh:
                drain_from_rotation(rb, node)
                record_stage(rb, node, "drained", change)
                head = block_at(rb.node(node).rpc_url)
                if not stop_service(rb, ssh, node):
                    raise RuntimeError(f"{node} did not stop")
                record_stage(rb, node, "stopped", change)
                if may_migrate(change.from_version, self.to):
                    target = SnapshotTarget.open(rb, node)
                    backup = stream_datadir(rb, ssh, target)
                    change.manifest = write_verified_manifest(rb, target, backup, change.from_version, head).key
                    record_stage(rb, node, "backed-up", change)
                change.switched = True
                record_stage(rb, node, "switched", change)
                switch_version(rb, ssh, node, self.to)
                if not start_service(rb, ssh, node):
                    raise RuntimeError(f"{node} did not start on {self.to}")
            record_stage(rb, node, "verifying", change)
            problems, logs_synced = verify_node(rb, node, self.to)
            problems = problems or soak(rb, node, self.to, self.soak_minutes, logs_synced)
            if problems:
                raise RuntimeError("; ".join(problems))
            return_to_rotation(rb, node)
            record_stage(rb, node, "done", change)
            return f"{change.from_version} -> {self.to}, verified"
        except DryRunComplete:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever failed, the node goes back to what it was
            why = f"{type(exc).__name__}: {str(exc)[:300]}" if not isinstance(exc, RuntimeError) else str(exc)[:300]
            rolled = roll_back(rb, change)  # Failed (not-recovered, escalated by the frame) if it cannot
            raise NodeFailed(node, why, rolled) from exc


@flow(name="client-upgrade", log_prints=True)
def client_upgrade(
    version: Annotated[str, Field(min_length=1, max_length=200, description="The version to install, as published: 3.0.4, v3.0.4")],
    nodes: Annotated[list[NodeName] | None, Field(max_length=200, description="The nodes, in order (the first ones are the canaries); or leave empty and name a chain")] = None,
    chain: Annotated[str | None, Field(pattern=NODE_NAME_RE, description="Every node of this chain")] = None,
    dry_run: Annotated[bool, Field(description="Render the change request and plan; install, stop and switch nothing")] = False,
    canary: Annotated[int, Field(ge=1, le=10, description="How many nodes go first, alone; a failing canary stops the wave")] = 1,
    soak_minutes: Annotated[float, Field(ge=0, le=1440, description="How long each node must stay healthy on the new version before the next one")] = 5,
    max_failures: Annotated[int, Field(ge=0, le=100, description="Failures (each rolled back) the wave tolerates before it stops")] = 0,
    approval_timeout_seconds: Annotated[int, Field(ge=10, le=604800, description="How long to wait for approval")] = 3600,
    lease_wait_seconds: Annotated[float, Field(ge=0, le=3600, description="How long to wait for other runs on these nodes")] = 300,
) -> dict:
    """Upgrade a client as a change request: checklist, approval, canary, one node at a time, automatic rollback."""
    return runbook.run(ClientUpgrade(nodes, chain, version, canary, soak_minutes, max_failures),
                       trigger.describe("client-upgrade"), dry_run=dry_run, lease_wait_seconds=lease_wait_seconds,
                       approval_timeout_seconds=approval_timeout_seconds)


@dataclass
class ResumeUpgrade:
    """Roll back the change a dead run left on one node (no approval: it returns the node to what was approved before)."""

    node: str
    flow = "client-upgrade-resume"
    needs_approval = False

    def parameters(self) -> dict:
        return {"node": self.node}

    def resources(self) -> list[Resource]:
        return [Resource("node", self.node)]

    def plan(self, rb: Runbook) -> Plan:
        self.change = half_done([self.node]).get(self.node)
        if self.change is None:
            raise Done(Outcome.noop, "nothing-half-done", f"{self.node} has no half-done upgrade in the audit trail")
        return Plan([f"roll back {self.change.describe()}"], {"change": self.change.__dict__})

    def act(self, rb: Runbook, plan: Plan) -> dict:
        rb.gate.verify(f"roll back {self.change.describe()}")
        detail = roll_back(rb, self.change)
        raise Done(Outcome.succeeded, "rolled-back", f"{self.node}: {detail}")


@flow(name="client-upgrade-resume", log_prints=True)
def client_upgrade_resume(
    node: NodeName,
    dry_run: Annotated[bool, Field(description="Show what would be rolled back; change nothing")] = False,
    trigger_event_id: AUTOMATION_ONLY = None,
) -> dict:
    """Find a node's half-done upgrade in the audit trail and roll it back to the version it ran before."""
    return runbook.run(ResumeUpgrade(node), trigger.describe("client-upgrade-resume", trigger_event_id), dry_run=dry_run)

