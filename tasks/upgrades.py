"""The steps of a client upgrade on one node, and the record that makes it resumable.

Every node's upgrade writes an `upgrade-stage` note at each point of no return (installed, drained,
stopped, backed-up, switched, verifying, done; rolling-back, rolled-back). A run that dies between
`drained` and `done` leaves its last stage in the audit trail; `half_done` finds it, with the
version to return to and the datadir backup to restore, so the next run (client-upgrade, or
client-upgrade-resume that the reconciler starts for a crashed upgrade) rolls it back. A node is
therefore on its old version or its new, verified one, never on one nobody checked.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from tasks import install
from tasks.audit import read_entries
from tasks.backups.manifest import list_manifests
from tasks.backups.datadir import remove_dir
from tasks.backups.restoring import now, sibling, stage_restore, swap_in
from tasks.backups.store import open_store
from tasks.errors import InvalidInput
from tasks.escalation import Kind
from tasks.releases import ReleaseSource, normalize_version
from tasks.runbook import Failed, Runbook
from tasks.services import service_manager_for
from tasks.ssh_stream import write_to
from tasks.steps import assess_nodes, bring_back, step, stop_service, wait_until_synced
from tasks.vocabulary import ActionKind, EntryKind

STAGE = "upgrade-stage"
# Stages after which the node is no longer as it was before the change: a crash there needs a rollback.
IN_FLIGHT = ("drained", "stopped", "backed-up", "switched", "verifying", "rolling-back")
# A node serving on the new version must answer fast and stay close to the tip (the seeds' CR).
MAX_LAG_BLOCKS, MAX_RPC_S = 100, 0.100
LOG_ERROR = re.compile(r"\b(error|eror|crit|fatal|panic)\b", re.IGNORECASE)
LOG_LINES = 200
MIN_OBSERVE_S = 3.0  # a soak of 0 still watches the node and its log this long


def record_stage(rb: Runbook, node: str, stage: str, change: "Change") -> None:
    """One point of no return of the node's change, with what a resume needs to undo it (none in a dry run:
    nothing happened, so nothing must be undone)."""
    rb.step(f"{stage} {node}")
    if rb.dry_run:
        return
    rb.audit.note(STAGE, node=node, stage=stage, from_version=change.from_version, to_version=change.to_version,
                  manifest=change.manifest, switched=change.switched)


@dataclass
class Change:
    """One node's change: from which version to which, the datadir backup taken before the switch (its
    manifest key) and whether the new version was switched in (so may have touched the datadir)."""

    node: str
    from_version: str | None
    to_version: str
    manifest: str | None = None
    switched: bool = False
    run_id: str = ""
    stage: str = ""

    def describe(self) -> str:
        return (f"{self.node}: run {self.run_id} stopped at '{self.stage}' upgrading {self.from_version} -> "
                f"{self.to_version}; roll back to {self.from_version}"
                + (f" and restore {self.manifest}" if self.manifest and self.switched else ""))


def half_done(nodes: list[str], since_days: float = 30) -> dict[str, Change]:
    """node -> the change an earlier run left between `drained` and `done` (the newest stage note decides)."""
    since = datetime.fromtimestamp(time.time() - since_days * 86400, timezone.utc)
    last: dict[str, dict] = {}
    for e in read_entries(kind=EntryKind.note, since=since, contains=STAGE):
        data = e.get("data") if isinstance(e.get("data"), dict) else {}
        if data.get("text") == STAGE and data.get("node") in nodes:
            last[data["node"]] = {**data, "run_id": e.get("run_id", "")}
    return {node: Change(node, d.get("from_version"), d.get("to_version") or "?", d.get("manifest"),
                         bool(d.get("switched")), d["run_id"], d["stage"])
            for node, d in last.items() if d.get("stage") in IN_FLIGHT}


def current_version(rb: Runbook, node: str) -> str | None:
    """The version the node's `current` link points at (a read, also in a dry run)."""
    n = rb.node(node)
    with rb.inspect(n.host) as ssh:
        return install.parse_current(ssh.run(install.current_argv(n.install_dir), check=True).stdout)


def release_source(rb: Runbook, client: str) -> ReleaseSource:
    spec = rb.inventory.releases.get(client)
    if spec is None:
        raise InvalidInput(f"the inventory names no release source for {client}: add `releases.{client}: "
                           "{base_url: ..., index_url: ...}`")
    return ReleaseSource(client, spec.base_url, spec.index_url)


@step("install-release")
def install_release(rb: Runbook, ssh, node: str, source: ReleaseSource, version: str, sha256: str) -> bool:
    """The release beside the running one, its sha256 checked on the host; False if it was already there."""
    n = rb.node(node)
    binary = install.binary_of(n.client.value)
    with rb.inspect(n.host) as reader:
        if reader.run(install.installed_argv(n.install_dir, version, sha256, binary)).exit_code == 0:
            return False
    receive, incoming = install.receive_argv(n.install_dir, version)
    with source.stream_archive(version) as stream:
        write_to(ssh, receive, stream, action=ActionKind.command, audit_data={"step": "install-release"})
    # The host checks the archive against the published sum before unpacking it, and removes it either way.
    wrapped = source.assets(version).top_dir is not None
    ssh.run(install.unpack_argv(n.install_dir, version, sha256, binary, incoming, wrapped), check=True, timeout=600,
            audit_data={"step": "install-release"})
    return True


@step("switch-version")
def switch_version(rb: Runbook, ssh, node: str, version: str) -> None:
    ssh.run(install.switch_argv(rb.node(node).install_dir, version), check=True, audit_data={"step": "switch-version"})


def log_tail(rb: Runbook, ssh, node: str) -> list[str]:
    manager = service_manager_for(rb.node(node), rb.inventory.host_of(node))
    result = ssh.run(manager.logs_argv(LOG_LINES))
    return (result.stdout + result.stderr).splitlines()


@step("verify-upgrade")
def verify_node(rb: Runbook, node: str, version: str) -> tuple[list[str], list[str]]:
    """The seeds' success criteria once the node has caught up: (what failed, the log tail at that moment,
    from which `soak` counts new error lines: the start's own noise is the client's business)."""
    a = wait_until_synced(rb, node, rb.inventory.chain_of(node).recovery_deadline_seconds)
    problems = []
    if not a.healthy:
        problems.append(f"{a.status}: {a.reason}")
    if a.lag is not None and a.lag >= MAX_LAG_BLOCKS:
        problems.append(f"{a.lag} blocks behind (criterion: under {MAX_LAG_BLOCKS})")
    if a.up and a.latency_s >= MAX_RPC_S:
        problems.append(f"RPC answered in {a.latency_s * 1000:.0f} ms (criterion: under {MAX_RPC_S * 1000:.0f} ms)")
    reported = _version_of(a)
    if reported != version:
        problems.append(f"reports version {reported or a.client_version or 'none'}, not {version}")
    with rb.ssh(node) as ssh:
        return problems, log_tail(rb, ssh, node)


def _version_of(a) -> str | None:
    try:
        return normalize_version(a.version) if a.version else None
    except Exception:  # noqa: BLE001 - an unparsable version is not the one we installed
        return a.version


@step("soak")
def soak(rb: Runbook, node: str, version: str, minutes: float, logs_synced: list[str], poll_s: float = 5.0) -> list[str]:
    """Stay healthy on the new version for `minutes` (at least MIN_OBSERVE_S), with no new error line in the
    log; what went wrong, if anything."""
    deadline = time.monotonic() + max(minutes * 60, MIN_OBSERVE_S)
    while time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        a = assess_nodes(rb.inventory, [node])[node]
        if not a.healthy or _version_of(a) != version:
            return [f"during the soak: {a.status} ({a.reason}), version {a.version}"]
    with rb.ssh(node) as ssh:
        seen = set(logs_synced)
        errors = [line for line in log_tail(rb, ssh, node) if line not in seen and LOG_ERROR.search(line)]
    return [f"{len(errors)} error line(s) in the log during the soak: {errors[-1][:200]}"] if errors else []


@step("roll-back")
def roll_back(rb: Runbook, change: Change) -> str:
    """Stop, switch back, restore the datadir taken before the change if the new version may have touched it,
    start, wait until synced, back in rotation. Failed (not-recovered, node left drained) if it does not come back."""
    node, n = change.node, rb.node(change.node)
    record_stage(rb, node, "rolling-back", change)
    restored = ""
    with rb.ssh(node) as ssh:
        stop_service(rb, ssh, node)
        if change.from_version:
            switch_version(rb, ssh, node, change.from_version)
        aside = None
        if change.switched and change.manifest:
            store, key = open_store(rb.inventory)
            manifest = next((m for m in list_manifests(store, "snapshot", node) if m.key == change.manifest), None)
            if manifest is None:
                raise Failed(Kind.NOT_RECOVERED, node, f"rollback of {node}: its pre-change backup {change.manifest} "
                             "is gone from the store; the node is stopped and drained on the old version")
            at = now()
            staging = stage_restore(rb, ssh, store, key, manifest, n.datadir, at, node)
            aside = sibling(n.datadir, "failed-upgrade", at)
            swap_in(rb, ssh, n.datadir, staging, aside)
            restored = f", datadir restored from {change.manifest}"
        bring_back(rb, node, True, "its rollback")
        if aside:  # proved healthy on the old datadir: the one the failed version wrote goes
            remove_dir(ssh, aside, parent=n.datadir.rstrip("/").rsplit("/", 1)[0])
    record_stage(rb, node, "rolled-back", change)
    return f"rolled back to {change.from_version}{restored}"
