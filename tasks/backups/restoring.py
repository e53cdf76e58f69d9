"""The steps every restore shares (restore-node, dr-drill): pick a backup, prove it whole, stage, swap.

Why a restore looks like this:

- The backup is checked before the target is touched: every object it names
  must be in the store with its recorded size, and its newest verification
  must not have found it corrupt.
- The backup is streamed into a staging directory beside the datadir (same
  filesystem), and every file's sha256 is checked there against the
  manifest. Only a staging directory that passed is swapped in, by two
  renames, while the node is stopped: its downtime is the swap, not the
  transfer, and a corrupt object ends the run with the node as it was.
- The old datadir is moved aside, not deleted, until the restored node is
  proved healthy and on the backed-up chain (`same_chain`); if it is not,
  the swap is undone.
"""

from __future__ import annotations

import posixpath
from datetime import datetime, timezone

from tasks import objectstore
from tasks.backups.datadir import remove_dir, restore_datadir
from tasks.backups.manifest import Manifest, list_manifests, read_verifications, stamp
from tasks.backups.progress import TransferProgress
from tasks.chainstate import block_at
from tasks.errors import BackupIntegrityError, InvalidInput
from tasks.escalation import Kind
from tasks.runbook import Failed, Runbook
from tasks.steps import step
from tasks.vocabulary import ActionKind

LATEST_VERIFIED, LATEST = "latest-verified", "latest"


def is_verified(store, manifest: Manifest) -> bool:
    """Verified: its newest recorded check passed."""
    checks = read_verifications(store, manifest.key)
    return bool(checks) and checks[-1].ok


def choose_backup(store, node: str, which: str = LATEST_VERIFIED) -> Manifest:
    """The snapshot of `node` to restore: the newest verified, the newest, or one named by its time stamp or key."""
    manifests = list_manifests(store, "snapshot", node)
    if which == LATEST:
        chosen = manifests[-1:]
    elif which == LATEST_VERIFIED:
        chosen = [m for m in reversed(manifests) if is_verified(store, m)][:1]
    else:
        chosen = [m for m in manifests if which in (m.key, stamp(m.created_at), m.prefix)]
    if not chosen:
        known = ", ".join(stamp(m.created_at) for m in manifests[-5:]) or "none"
        raise InvalidInput(f"no {which!r} snapshot of {node} in bucket {store.bucket} (newest: {known})")
    return chosen[0]


@step("check-backup")
def check_backup(rb: Runbook, store, manifest: Manifest, target: str) -> None:
    """Every object present with its recorded size, and no failed newest check: else refuse, target untouched."""
    problems = []
    for ref in manifest.stored_objects():
        found = objectstore.head(store, ref.key)
        if found is None:
            problems.append(f"{ref.key} is missing")
        elif found.size != ref.size:
            problems.append(f"{ref.key} holds {found.size} bytes, the manifest records {ref.size}")
    checks = read_verifications(store, manifest.key)
    if checks and not checks[-1].ok:
        problems.append(f"its last check ({checks[-1].method}, {checks[-1].verified_at:%Y-%m-%d %H:%M}) failed: "
                        + "; ".join(checks[-1].problems)[:300])
    if problems:
        raise Failed(Kind.BACKUP_FAILED, target, f"restore of {manifest.key} refused before touching {target}: "
                     + "; ".join(problems)[:400], {"backup": manifest.key})


def sibling(datadir: str, label: str, at: datetime) -> str:
    """A directory beside the datadir: same filesystem, so swapping is a rename."""
    return f"{datadir.rstrip('/')}.{label}-{stamp(at)}"


@step("stage-restore")
def stage_restore(rb: Runbook, ssh, store, key, manifest: Manifest, datadir: str, at: datetime, target: str) -> str:
    """Stream the backup into a staging directory beside `datadir`, every file's hash checked there."""
    staging = sibling(datadir, "restore", at)
    progress = TransferProgress(f"restore of {manifest.node} to {target}", f"restore-{target}-progress")
    try:
        result = restore_datadir(ssh, store, key, manifest, staging, progress=progress)
    except BackupIntegrityError as exc:
        remove_dir(ssh, staging, parent=posixpath.dirname(datadir.rstrip("/")))
        raise Failed(Kind.BACKUP_FAILED, target, f"restore of {manifest.key} refused: {str(exc)[:300]}; "
                     f"{target} untouched, the staging copy removed", {"backup": manifest.key}) from None
    rb.audit.state("staged", {"dir": staging, "files_checked": result.files_checked, "bytes_read": result.bytes_read})
    return staging


@step("swap-datadir")
def swap_in(rb: Runbook, ssh, datadir: str, staging: str, aside: str) -> None:
    """Move the datadir aside (if there is one) and the staged copy into its place: two renames."""
    ssh.run(["sh", "-c", 'if [ -e "$1" ]; then mv -T -- "$1" "$3"; fi && mv -T -- "$2" "$1"', "sh",
             datadir, staging, aside], check=True, action=ActionKind.command, audit_data={"step": "swap-datadir"})


@step("undo-swap")
def undo_swap(rb: Runbook, ssh, datadir: str, aside: str, failed: str) -> None:
    """Put the old datadir back, keeping the failed restore beside it for a look."""
    ssh.run(["sh", "-c", 'mv -T -- "$1" "$3" && if [ -e "$2" ]; then mv -T -- "$2" "$1"; fi', "sh",
             datadir, aside, failed], check=True, action=ActionKind.command, audit_data={"step": "undo-swap"})


def same_chain(rpc_url, manifest: Manifest) -> str | None:
    """None when the node answers the backed-up head's hash at its number; else why not."""
    number, expected = manifest.source.head_number, manifest.source.head_hash
    if number is None or expected is None:
        return None  # a backup without a recorded head (taken from a node that did not answer) proves nothing here
    try:
        block = block_at(rpc_url, number)
    except Exception as exc:  # noqa: BLE001 - a node that cannot answer is not proved
        return f"block {number} could not be read: {type(exc).__name__}: {exc}"
    if block is None:
        return f"the node has no block {number}: it is not the backed-up chain"
    if block.hash != expected:
        return f"block {number} is {block.hash}, the backup recorded {expected}"
    return None


def now() -> datetime:
    return datetime.now(timezone.utc)
