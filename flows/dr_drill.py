"""Runbook: a disaster-recovery drill. Prove the newest verified backup brings a node back, and how fast.

Monthly (prefect.yaml), or on demand: restore the node's (or, for a chain,
its freshest-backed-up node's) newest verified snapshot onto the chain's
standby slot on `standby_host`, start it there, prove it serves RPC on the
backed-up chain (the recorded head's hash at its number) and catches up with
the chain's references, then tear the standby down again. Nothing in
rotation is touched.

Measured, as the seeds' targets are stated:
- RTO: drill start -> the standby synced (target 30 minutes);
- RPO: the restored backup's age at drill start, and how many blocks behind
  the chain's references its head was.

Each drill's figures are kept in the store (`drills/<chain>/<stamp>.json`,
beside the backups they measure), and the report compares today's with the
previous ones, so a drill that gets slower shows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from inventory import Host, load_inventory
from tasks import objectstore, runbook, trigger
from tasks.approval import Plan
from tasks.backups.datadir import remove_dir
from tasks.backups.drills import RTO_TARGET_S, drill_key, read_drills
from tasks.backups.manifest import list_manifests
from tasks.backups.restoring import check_backup, choose_backup, is_verified, now, same_chain, sibling, stage_restore, swap_in
from tasks.backups.store import open_store
from tasks.errors import InvalidInput
from tasks.escalation import Kind
from tasks.guards import Resource
from tasks.probes.assessment import reference_head, sweep
from tasks.runbook import Done, Failed, Runbook
from tasks.steps import as_dict, start_service, step, stop_service, wait_until_synced
from tasks.vocabulary import AUTOMATION_ONLY, ActionKind, Outcome

HISTORY = 10  # drills shown in the report


def drill_history(store, chain: str) -> list[dict]:
    return read_drills(store, f"drills/{chain}/", last=HISTORY)


@step("tear-down-standby")
def tear_down(rb: Runbook, name: str) -> None:
    """Stop the standby and leave its slot empty, as it was before the drill."""
    t = rb.node(name)
    with rb.ssh(name) as ssh:
        stop_service(rb, ssh, name)
        remove_dir(ssh, t.datadir, parent=t.datadir.rstrip("/").rsplit("/", 1)[0])
        ssh.run(["mkdir", "-p", "--", t.datadir], check=True, action=ActionKind.command,
                audit_data={"step": "tear-down-standby"})


@dataclass
class DrDrill:
    target: str  # a node or a chain
    standby_host: str
    flow = "dr-drill"
    needs_approval = False

    def parameters(self) -> dict:
        return {"target": self.target, "standby_host": self.standby_host}

    def resources(self) -> list[Resource]:
        return [Resource("host", self.standby_host)]

    def plan(self, rb: Runbook) -> Plan:
        inv = rb.inventory
        self.store, self.key = open_store(inv)
        if self.target in inv.nodes:
            self.node = self.target
            self.manifest = choose_backup(self.store, self.node)
        else:  # a chain: the node whose newest verified snapshot is the freshest
            candidates = [m for n in inv.nodes_on_chain(self.target) for m in list_manifests(self.store, "snapshot", n)]
            verified = sorted((m for m in candidates if is_verified(self.store, m)), key=lambda m: m.created_at)
            if not verified:
                raise Done(Outcome.refused, "no-backup", f"no verified snapshot of any {self.target} node to drill with")
            self.manifest, self.node = verified[-1], verified[-1].node
        self.chain = inv.node(self.node).chain
        self.standby, node = inv.standby_node(self.node, self.standby_host)
        rb.inventory = inv.including(self.standby, node)
        m = self.manifest
        return Plan([
            f"check {m.key} (from {m.created_at:%Y-%m-%d %H:%M} UTC, head {m.source.head_number})",
            f"restore it onto {self.standby_host}'s {self.chain} standby slot ({node.datadir}), every file's hash checked",
            f"start {node.service.name} there; prove it answers the backed-up head's hash and catches up",
            "record RTO (drill start -> standby synced) and RPO (backup age, blocks behind the chain)",
            f"stop the standby and empty its slot; report against the {RTO_TARGET_S // 60}-minute target",
        ], {"backup": m.key, "standby": self.standby})

    def act(self, rb: Runbook, plan: Plan) -> dict:
        m, name, t = self.manifest, self.standby, rb.node(self.standby)
        started_at, started = now(), time.monotonic()
        refs = sweep(rb.inventory, [], chains=[self.chain]).references[self.chain]
        chain_head = reference_head(refs)
        rpo_blocks = chain_head - m.source.head_number if chain_head is not None and m.source.head_number is not None else None
        rpo_s = (started_at - m.created_at).total_seconds()
        check_backup(rb, self.store, m, name)
        if not rb.gate.allows("ssh", t.host, f"restore {m.key} onto {name}"):
            rb.gate.verify(f"{name} serves {self.chain} and catches up")
        try:
            with rb.ssh(name) as ssh:
                stop_service(rb, ssh, name)  # a drill left running by a dead run
                staging = stage_restore(rb, ssh, self.store, self.key, m, t.datadir, started_at, name)
                swap_in(rb, ssh, t.datadir, staging, sibling(t.datadir, "drill-leftover", started_at))
                remove_dir(ssh, sibling(t.datadir, "drill-leftover", started_at),
                           parent=t.datadir.rstrip("/").rsplit("/", 1)[0])
                restored_s = time.monotonic() - started
                up = start_service(rb, ssh, name)
            after = wait_until_synced(rb, name, rb.inventory.chain_of(self.node).recovery_deadline_seconds)
            rto_s = time.monotonic() - started
            rb.audit.state("standby", as_dict(after))
            wrong = same_chain(t.rpc_url, m) if up else "the standby did not start"
        finally:
            tear_down(rb, name)
        ok = up and after.healthy and not wrong
        record = {"chain": self.chain, "node": self.node, "standby_host": self.standby_host, "backup": m.key,
                  "started_at": started_at.isoformat(), "ok": ok, "rto_s": round(rto_s, 1),
                  "restore_s": round(restored_s, 1), "rpo_s": round(rpo_s), "rpo_blocks": rpo_blocks,
                  "bytes": m.totals.file_bytes, "problem": wrong or (None if after.healthy else after.reason)}
        history = drill_history(self.store, self.chain)
        if rb.gate.allows("s3", self.store.bucket, f"record the drill {drill_key(self.chain, started_at)}",
                          action=ActionKind.upload):
            objectstore.put_bytes(self.store, drill_key(self.chain, started_at), json.dumps(record, indent=1).encode())
        report = drill_report(record, history)
        create_markdown_artifact(key=f"dr-drill-{self.chain}".lower(), markdown=report,
                                 description=f"DR drill of {self.chain}: RTO {rto_s:.0f}s")
        if not ok:
            raise Failed(Kind.BACKUP_FAILED, self.node, f"DR drill of {self.node} from {m.key} failed: {record['problem']}",
                         {"rto_s": record["rto_s"], "backup": m.key}, **record)
        summary = (f"DR drill {self.chain}: {self.node}'s backup restored onto {self.standby_host} and synced in "
                   f"{rto_s:.0f}s (target {RTO_TARGET_S // 60} min: {'met' if rto_s <= RTO_TARGET_S else 'MISSED'}); "
                   f"RPO {rpo_s / 3600:.1f} h, {rpo_blocks} blocks")
        rb.notify(summary, [{"type": "section", "text": {"type": "mrkdwn", "text": report[:2900]}}])
        raise Done(Outcome.succeeded, "drilled", summary, **record)


def drill_report(record: dict, history: list[dict]) -> str:
    met = record["rto_s"] <= RTO_TARGET_S
    lines = [f"## DR drill: {record['chain']}", "",
             f"- backup: `{record['backup']}` ({record['bytes'] / 2**20:.1f} MiB)",
             f"- **RTO {record['rto_s']:.0f} s** ({'met' if met else 'MISSED'}: target {RTO_TARGET_S // 60} min); "
             f"of it, restore {record['restore_s']:.0f} s",
             f"- **RPO** {record['rpo_s'] / 3600:.1f} h, {record['rpo_blocks']} blocks behind the chain",
             f"- result: {'passed' if record['ok'] else 'FAILED: ' + str(record['problem'])}", "",
             "| drill | node | RTO s | RPO h | ok |", "|---|---|---|---|---|"]
    for r in [*history, record][-HISTORY:]:
        lines.append(f"| {r['started_at'][:16]} | {r['node']} | {r['rto_s']:.0f} | {r['rpo_s'] / 3600:.1f} | {r['ok']} |")
    if history:
        previous = history[-1]["rto_s"]
        if record["rto_s"] > 1.5 * previous and record["rto_s"] - previous > 30:
            lines += ["", f"**Slower than the last drill** ({previous:.0f} s before)."]
    return "\n".join(lines)


@flow(name="dr-drill", log_prints=True)
def dr_drill(
    target: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
                                 description="A node, or a chain (its freshest verified backup)")],
    standby_host: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
                                       description="A host with a standby slot for the chain")],
    dry_run: Annotated[bool, Field(description="Check the backup and show the plan; touch no host")] = False,
    trigger_event_id: AUTOMATION_ONLY = None,
) -> dict:
    """Restore the newest verified backup onto a standby, prove it works, measure RTO and RPO, tear it down."""
    inv = load_inventory()
    if target not in inv.nodes and target not in inv.chains:
        raise InvalidInput(f"{target!r} is neither a node nor a chain of the inventory "
                           f"(nodes: {', '.join(sorted(inv.nodes))}; chains: {', '.join(sorted(inv.chains))})")
    chain = inv.node(target).chain if target in inv.nodes else target
    if chain not in inv.hosts.get(standby_host, Host.model_construct(standby={})).standby:
        raise InvalidInput(f"host {standby_host!r} has no standby slot for chain {chain!r}: "
                           f"hosts with one: {', '.join(h for h, v in inv.hosts.items() if chain in v.standby) or 'none'}")
    return runbook.run(DrDrill(target, standby_host), trigger.describe("dr-drill", trigger_event_id), dry_run=dry_run)
