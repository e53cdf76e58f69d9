"""Datadir backups (tasks/backups/datadir.py): a real sshd for the host, a real SeaweedFS for the store, no lab."""

from __future__ import annotations

import hashlib
import io
import os
import pwd
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tasks import objectstore
from tasks.backups import datadir as dd
from tasks.backups import layout
from tasks.backups.crypto import EncryptingReader, EncryptionKey
from tasks.backups.manifest import Manifest, reusable_segments, write_manifest
from tasks.errors import BackupIntegrityError, CommandFailed, InvalidInput
from tasks.gate import Gate
from tasks.ssh import SshRunner
from tests import s3 as _s3
from tests import sshd as _sshd
from tests.sshd import USER, actions, requires_sshd, runner

pytestmark = requires_sshd
sshd, audit, s3_server, store = _sshd.sshd, _sshd.audit, _s3.s3_server, _s3.store  # the fixtures, by name

MiB = 1024 * 1024
KEY = EncryptionKey(bytes(range(32)))
LAYOUT = layout.LAYOUTS["anvil"]
NASTY = ["with space.json", "quote's \"both\".txt", "new\nline", "-starts-with-dash", "nested/deeper/back\\slash"]


@pytest.fixture
def lab_dir():
    """A directory under /tmp owned by the sshd fixture's user: the 'host' side of every test."""
    d = Path(tempfile.mkdtemp(prefix="rb-datadir-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def chown_tree(root: Path) -> None:
    user = pwd.getpwnam(USER)
    for path in [root, *root.rglob("*")]:
        os.lchown(path, user.pw_uid, user.pw_gid)


def make_datadir(root: Path) -> Path:
    data = root / "node"
    (data / "snapshots").mkdir(parents=True)
    (data / "state.json").write_text('{"head": 1234}')
    for i in range(3):
        (data / "snapshots" / f"v1-{i:06d}-{i + 1:06d}-headers.seg").write_bytes(os.urandom((2 + i) * MiB))
    for name in NASTY:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(os.urandom(3000) + name.encode())
    (data / "home" / "scratch").mkdir(parents=True)
    (data / "home" / "scratch" / "history.json").write_text("excluded")
    (data / "sync-held").write_text("excluded")
    chown_tree(root)
    return data


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def backup(ssh, store, data: Path, earlier: list[Manifest] = (), at: int = 0):
    created = datetime(2026, 12, 4, 14, 0, at, tzinfo=timezone.utc)
    shell = Manifest(kind="snapshot", node="anvil-1", host="h1", created_at=created)
    done = dd.backup_datadir(ssh, store, KEY, str(data), LAYOUT, shell.prefix, reusable_segments(earlier, KEY.key_id))
    manifest = Manifest(kind="snapshot", node="anvil-1", host="h1", created_at=created, client="anvil",
                        archives=done.archives, files=done.files)
    write_manifest(store, manifest)
    return done, Manifest.model_validate(manifest.model_dump() | {"complete": True})


def expected_tree(data: Path) -> dict[str, str]:
    return {p: d for p, d in tree(data).items() if not p.startswith("home/") and p != "sync-held"}


def test_a_datadir_round_trips_byte_identical_and_unchanged_segments_are_reused(sshd, audit, store, lab_dir):
    data = make_datadir(lab_dir)
    seen = []
    with runner(sshd, audit) as ssh:
        first, m1 = backup(ssh, store, data)
        assert {f.path for f in first.files} == set(expected_tree(data))
        assert [f.reused for f in first.files if f.object] == [False] * 3 and first.reused_bytes == 0
        # A week later, nothing changed: only the small mutable archive moves.
        second, m2 = backup(ssh, store, data, [m1], at=1)
        assert second.uploaded_bytes < 0.05 * first.uploaded_bytes
        assert second.reused_bytes == sum(f.object.size for f in first.files if f.object)
        target = lab_dir / "restore"
        result = dd.restore_datadir(ssh, store, KEY, m2, str(target), progress=lambda d, t: seen.append((d, t)))
    assert tree(target) == expected_tree(data)
    assert result.files_checked == len(m2.files) and result.bytes_read > 9 * MiB
    assert seen[-1][0] == seen[-1][1] == sum(f.size for f in m2.files)
    # One audit entry per streamed command, each with the bytes it moved.
    streamed = [a for a in actions(audit) if a["host"] == ssh.label and "bytes_streamed" in a]
    # The first backup: list, hash, then the archive and the segments, two at a time in any order.
    first_six = [(a["command"].split()[0], a["bytes_streamed"]) for a in streamed[:6]]
    assert [c for c, _ in first_six[:2]] == ["find", "sh"]
    assert sorted(c for c, _ in first_six[2:]) == ["cat", "cat", "cat", "tar"]
    assert all(a["exit_code"] == 0 for a in streamed)
    assert sorted(n for c, n in first_six if c == "cat") == [2 * MiB, 3 * MiB, 4 * MiB]
    assert all(n > 0 for c, n in first_six if c == "tar")
    uploads = [a for a in actions(audit) if a["action"] == "upload"]
    assert len(uploads) == 5 and all(a["bytes"] > 0 for a in uploads)  # 1+3 first, 1 second


def test_a_changed_or_deleted_segment_is_uploaded_again(sshd, audit, store, lab_dir):
    data = make_datadir(lab_dir)
    with runner(sshd, audit) as ssh:
        first, m1 = backup(ssh, store, data)
        changed = data / "snapshots" / "v1-000000-000001-headers.seg"
        changed.write_bytes(os.urandom(2 * MiB))
        gone = next(f for f in first.files if f.path.endswith("000001-000002-headers.seg"))
        objectstore.delete(store, gone.object.key)
        second, m2 = backup(ssh, store, data, [m1], at=1)
        target = lab_dir / "restore"
        dd.restore_datadir(ssh, store, KEY, m2, str(target))
    fresh = {f.path for f in second.files if f.object and not f.reused}
    assert fresh == {"snapshots/v1-000000-000001-headers.seg", "snapshots/v1-000001-000002-headers.seg"}
    assert tree(target) == expected_tree(data)


def test_a_failing_host_command_leaves_no_object_and_no_open_upload(sshd, audit, store, lab_dir):
    with runner(sshd, audit) as ssh:
        with pytest.raises(CommandFailed, match="No such file"):
            dd.backup_datadir(ssh, store, KEY, str(lab_dir / "missing"), LAYOUT, "backups/snapshot/n/x", {})
        # tar fails mid-stream (a file vanished after the listing): the upload reading it aborts.
        data = make_datadir(lab_dir)
        with pytest.raises(CommandFailed, match="tar"):
            with dd.read_from(ssh, ["tar", "-I", dd.ZSTD, "-C", str(data), "-cf", "-", "state.json", "gone"]) as s:
                objectstore.upload(store, "backups/x/data.tar.zst", EncryptingReader(s, KEY))
    assert objectstore.list_objects(store) == [] and objectstore.list_open_multipart_uploads(store) == []


def test_symlinks_are_refused_by_name(sshd, audit, store, lab_dir):
    data = make_datadir(lab_dir)
    (data / "snapshots" / "elsewhere").symlink_to("/var/tmp")
    with runner(sshd, audit) as ssh, pytest.raises(InvalidInput, match=r"'snapshots/elsewhere' \(symlink\)"):
        dd.backup_datadir(ssh, store, KEY, str(data), LAYOUT, "backups/snapshot/n/x", {})
    assert objectstore.list_objects(store) == []


@pytest.mark.parametrize("corruption", ["garbage", "another-valid-encryption"])
def test_a_corrupted_object_fails_the_restore(sshd, audit, store, lab_dir, corruption):
    data = make_datadir(lab_dir)
    with runner(sshd, audit) as ssh:
        first, m1 = backup(ssh, store, data)
        seg = next(f for f in first.files if f.object)
        source = (data / seg.path).read_bytes()
        if corruption == "garbage":
            objectstore.put_bytes(store, seg.object.key, os.urandom(seg.object.size))
        else:  # authentic under the key, but not the object the manifest recorded
            objectstore.upload(store, seg.object.key, EncryptingReader(io.BytesIO(source), KEY))
        with pytest.raises(BackupIntegrityError):
            dd.restore_datadir(ssh, store, KEY, m1, str(lab_dir / "restore"))
        dd.remove_dir(ssh, str(lab_dir / "restore"), parent=str(lab_dir))
    assert not (lab_dir / "restore").exists()


def test_a_restored_tree_that_differs_from_the_manifest_is_refused(sshd, audit, store, lab_dir):
    data = make_datadir(lab_dir)
    with runner(sshd, audit) as ssh:
        _, m1 = backup(ssh, store, data)
        lying = Manifest.model_validate(m1.model_dump() | {"files": [
            f.model_dump() | ({"sha256": "0" * 64} if f.path == "state.json" else {}) for f in m1.files]})
        with pytest.raises(BackupIntegrityError, match="'state.json' has 14 bytes"):
            dd.restore_datadir(ssh, store, KEY, lying, str(lab_dir / "restore"))


def test_a_segment_that_differs_from_its_record_is_never_renamed_into_place(sshd, audit, store, lab_dir):
    data = make_datadir(lab_dir)
    with runner(sshd, audit) as ssh:
        _, m1 = backup(ssh, store, data)
        seg = next(f for f in m1.files if f.object)
        lying = Manifest.model_validate(m1.model_dump() | {"files": [
            f.model_dump() | ({"sha256": "0" * 64} if f.path == seg.path else {}) for f in m1.files]})
        with pytest.raises(BackupIntegrityError, match=f"the manifest says {seg.path} has"):
            dd.restore_datadir(ssh, store, KEY, lying, str(lab_dir / "restore"))
    # The checked-as-it-streams segment stopped its command before EOF: no file under its own name.
    assert not (lab_dir / "restore" / seg.path).exists()


def test_a_segment_that_grows_during_the_backup_fails_it(sshd, audit, store, lab_dir):
    data = make_datadir(lab_dir)
    seg = data / "snapshots" / "v1-000000-000001-headers.seg"
    listed = dd._list

    def list_then_append(ssh, root):  # the file grows between the listing and its `cat`
        entries = listed(ssh, root)
        with seg.open("ab") as f:
            f.write(b"more")
        return entries

    with runner(sshd, audit) as ssh, pytest.MonkeyPatch.context() as mp:
        mp.setattr(dd, "_list", list_then_append)
        with pytest.raises(BackupIntegrityError, match="changed during the backup"):
            dd.backup_datadir(ssh, store, KEY, str(data), LAYOUT, "backups/snapshot/n/x", {})
    assert [o.key for o in objectstore.list_objects(store, "segments/")] == []


def test_restore_refuses_a_non_empty_target_and_remove_dir_stays_inside_its_parent(sshd, audit, store, lab_dir):
    data = make_datadir(lab_dir)
    before = tree(data)
    with runner(sshd, audit) as ssh:
        _, m1 = backup(ssh, store, data)
        with pytest.raises(InvalidInput, match="not an empty directory"):
            dd.restore_datadir(ssh, store, KEY, m1, str(data))
        for bad in ("/", "", str(lab_dir), f"{lab_dir}/../etc", "/etc", "relative/dir"):
            with pytest.raises(InvalidInput):
                dd.remove_dir(ssh, bad, parent=str(lab_dir))
    assert tree(data) == before


def test_a_dry_run_runs_nothing_and_uploads_nothing(sshd, audit, store, lab_dir):
    data = make_datadir(lab_dir)
    gate = Gate(audit, dry_run=True)
    with SshRunner(sshd.host(), None, private_key=sshd.client_key, known_hosts=sshd.known_hosts, gate=gate) as ssh:
        done = dd.backup_datadir(ssh, store, KEY, str(data), LAYOUT, "backups/snapshot/n/x", {})
    assert done.files == [] and done.archives == [] and done.uploaded_bytes == 0
    assert actions(audit) == [] and objectstore.list_objects(store) == []
    assert gate.would_do and all(w.startswith("ssh ") for w in gate.would_do)


def test_layout_patterns():
    erigon = layout.LAYOUTS["erigon"]
    assert erigon.is_immutable("snapshots/v1-000000-000500-headers.seg")
    assert erigon.is_immutable("snapshots/domain/v1-accounts.0-32.kv")
    assert not erigon.is_immutable("chaindata/mdbx.dat") and not erigon.is_immutable("snapshots/salt-state.txt")
    assert erigon.excludes("temp/etl-1/x") and erigon.excludes("snapshots/v1-x.seg.tmp")
    assert not erigon.excludes("chaindata/mdbx.dat")
    assert LAYOUT.excludes("home/a/b.json") and LAYOUT.excludes("sync-held") and not LAYOUT.excludes("state.json")
    assert layout.DEFAULT_LAYOUT.excludes("a/b" + layout.RESTORE_SUFFIX) and not layout.DEFAULT_LAYOUT.is_immutable("x.seg")
    assert layout.layout_for("geth") is layout.DEFAULT_LAYOUT and layout.layout_for("erigon") is erigon
