"""Runbook: rebuild a node from its snapshot backup, in place or on a standby host.

The seed's "failover and rebuild", for a node a restart cannot fix (corrupt
database, lost disk): node-recovery's escalation names this runbook.

1. plan: the backup (newest verified by default) and the target: the node
   itself, or the standby slot of the node's chain on `target_host`
   (inventory `hosts.<host>.standby`). Restoring over a node that is in
   rotation needs an operator's approval of this exact plan;
2. check the backup (tasks/backups/restoring.py): every object present as
   recorded, its last check not failed; else refuse, target untouched;
3. stage: stream it into a directory beside the datadir, every file's
   sha256 checked there; a corrupt object ends here, target untouched;
4. drain (disruption budget), stop, swap the staged copy in (the old datadir
   moved aside), start, wait until synced, and check the node answers the
   backed-up head's hash at its number;
5. healthy and the same chain: return to rotation, delete the old datadir.
   Otherwise: undo the swap, start the old datadir again, escalate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from prefect import flow
from pydantic import Field

from blocks import HAProxyAdmin
from inventory import load_inventory
from tasks import guards, runbook, trigger
from tasks.approval import Plan
from tasks.backups.datadir import remove_dir
from tasks.backups.restoring import (
    LATEST_VERIFIED,
    check_backup,
    choose_backup,
    now,
    same_chain,
    sibling,
    stage_restore,
    swap_in,
    undo_swap,
)
from tasks.backups.store import open_store
from tasks.escalation import Kind
from tasks.guards import Resource
from tasks.haproxy import HAProxyRuntime
from tasks.runbook import Done, Failed, Runbook
from tasks.steps import (
    as_dict,
    check_disruption_budget,
    drain_from_rotation,
    return_to_rotation,
    start_service,
    stop_service,
    wait_until_synced,
)
from tasks.vocabulary import AUTOMATION_ONLY, NodeName, Outcome

BackupChoice = Annotated[str, Field(
    pattern=r"^(latest-verified|latest|[0-9]{8}T[0-9]{6}Z|backups/snapshot/[A-Za-z0-9._/-]+)$",
    description="latest-verified, latest, a backup's time stamp (20261204T031500Z) or its manifest key")]


def serves_traffic(node: str) -> bool:
    """Is the node a server in rotation (ready and UP) right now? Then restoring over it needs approval."""
    inv = load_inventory()
    lb = inv.node(node).lb
    if lb is None:
        return False
    balancer = HAProxyRuntime.from_block(HAProxyAdmin.load(inv.load_balancers[lb.balancer].admin_block))
    state = balancer.server_state(lb.backend, lb.server)
    return state is not None and state.admin_state == "ready" and state.op_state == "UP"


@dataclass
class RestoreNode:
    node: str
    backup: str
    target_host: str | None
    needs_approval: bool
    flow = "restore-node"

    def parameters(self) -> dict:
        return {"node": self.node, "backup": self.backup, "target_host": self.target_host}

    def resources(self) -> list[Resource]:
        if self.target_host is None:
            return [Resource("node", self.node)]
        return [Resource("host", self.target_host)]  # the source node is only read from the store

    def plan(self, rb: Runbook) -> Plan:
        inv = rb.inventory
        if self.target_host is None or self.target_host == inv.node(self.node).host:
            self.target = self.node
        else:
            self.target, standby = inv.standby_node(self.node, self.target_host)
            rb.inventory = inv.including(self.target, standby)  # so probes and steps know the standby by name
        t = rb.node(self.target)
        self.store, self.key = open_store(rb.inventory)
        self.manifest = choose_backup(self.store, self.node, self.backup)
        lb = f"{t.lb.balancer} {t.lb.backend}/{t.lb.server}" if t.lb else None
        m = self.manifest
        return Plan([
            f"check every object of {m.key} is stored as recorded and its last check passed",
            f"stream it into a staging directory beside {t.datadir} on {t.host}, every file's sha256 checked there",
            f"drain {self.target} from {lb} (never emptying the backend)" if lb else "not behind a load balancer",
            f"stop {t.service.name}, move {t.datadir} aside, swap the staged copy in, start it",
            f"wait until synced and answering block {m.source.head_number}'s hash {m.source.head_hash}",
            (f"return {self.target} to rotation, " if lb else "") + "delete the old datadir; "
            "if it does not come back, put the old datadir back and escalate",
        ], {"backup": m.key, "created_at": m.created_at.isoformat(), "target": self.target,
            "target_host": t.host, "in_rotation": self.needs_approval})

    def act(self, rb: Runbook, plan: Plan) -> dict:
        target, t, m = self.target, rb.node(self.target), self.manifest
        at = now()
        check_backup(rb, self.store, m, target)
        if not rb.gate.allows("ssh", t.host, f"stream {m.key} into {sibling(t.datadir, 'restore', at)}"):
            rb.gate.verify(f"every restored file's sha256 equals {m.key}'s")
        with rb.ssh(target) as ssh:
            staging = stage_restore(rb, ssh, self.store, self.key, m, t.datadir, at, target)
        drained = False
        if t.lb:
            try:
                check_disruption_budget(rb, target)
            except guards.DisruptionBudgetExceeded as exc:
                with rb.ssh(target) as ssh:
                    remove_dir(ssh, staging, parent=t.datadir.rstrip("/").rsplit("/", 1)[0])
                raise Done(Outcome.refused, "disruption-budget", f"{target} not restored: {exc}") from None
            drained = drain_from_rotation(rb, target)
        aside = sibling(t.datadir, "pre-restore", at)
        with rb.ssh(target) as ssh:
            stop_service(rb, ssh, target)
            swap_in(rb, ssh, t.datadir, staging, aside)
            started = start_service(rb, ssh, target)
        after = wait_until_synced(rb, target, rb.inventory.chain_of(target).recovery_deadline_seconds)
        rb.audit.state("after", as_dict(after))
        wrong = same_chain(t.rpc_url, m) if started and after.healthy else None
        if not (started and after.healthy) or wrong:
            why = wrong or f"{after.status}: {after.reason}"
            with rb.ssh(target) as ssh:
                stop_service(rb, ssh, target)
                undo_swap(rb, ssh, t.datadir, aside, sibling(t.datadir, "failed-restore", at))
                start_service(rb, ssh, target)
            raise Failed(Kind.NOT_RECOVERED, target, f"{target} restored from {m.key} did not come back ({why}); "
                         "its old datadir is back in place" + (", left out of rotation" if drained else ""),
                         {"backup": m.key, "after": f"{after.status}: {after.reason}"})
        if drained:
            return_to_rotation(rb, target)
        with rb.ssh(target) as ssh:
            remove_dir(ssh, aside, parent=t.datadir.rstrip("/").rsplit("/", 1)[0])
        detail = (f"{target} restored from {m.key} (head {m.source.head_number} at backup time), "
                  f"now healthy at head {after.head}")
        rb.notify(f"restore: {detail}", [])
        raise Done(Outcome.succeeded, "restored", detail, backup=m.key, target=target, after=as_dict(after))


@flow(name="restore-node", log_prints=True)
def restore_node(
    node: NodeName,
    backup: BackupChoice = LATEST_VERIFIED,
    target_host: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
                                             description="Restore onto this host's standby slot; empty: in place")] = None,
    dry_run: Annotated[bool, Field(description="Check the backup and show the plan; touch no host")] = False,
    lease_wait_seconds: Annotated[float, Field(ge=0, le=3600, description="How long to wait for another run on the target")] = 300,
    trigger_event_id: AUTOMATION_ONLY = None,
) -> dict:
    """Restore a node's datadir from a verified snapshot: staged, hash-checked, swapped in, proved, reversible."""
    in_place = target_host is None or target_host == load_inventory().node(node).host
    procedure = RestoreNode(node, backup, None if in_place else target_host,
                            needs_approval=in_place and serves_traffic(node))
    return runbook.run(procedure, trigger.describe("restore-node", trigger_event_id),
                       dry_run=dry_run, lease_wait_seconds=lease_wait_seconds)
