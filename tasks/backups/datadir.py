"""A node's datadir, backed up from its host into the store and restored back, file by checked file.

    backup_datadir(ssh, store, key, datadir, layout, prefix, reusable) -> DatadirBackup
    restore_datadir(ssh, store, key, manifest, target_dir)           -> RestoreResult

A datadir is two kinds of bytes. Mutable files (the database, the node
key, small state) go as ONE stream: `tar` of exactly the listed files,
compressed by zstd on the host, encrypted on the worker, into one object.
Immutable files (Erigon's snapshot segments, written once and never
changed) go one object each, so the next backup refers to the object an
earlier one stored instead of uploading it again: the second backup of an
unchanged Erigon node moves a few hundred MB of mutable state, not the
terabytes of segments. Which files are which is the client's `Layout`.

Nothing is staged on the worker's disk or held whole in its memory: every
object streams host -> SSH -> encryption -> multipart upload (and back),
through tasks/ssh_stream.py, so every remote command is gated by the run's
gate and audited like `SshRunner.run`, and a failing command aborts the
upload that reads it. Objects move FILES_AT_ONCE at a time, the largest
first, each on its own SSH channel (one connection): on two cores one
stream alone left a core idle while it waited on the store or the host,
0.8x of tar | zstd | upload_fileobj, against ~1.0x with two. A backup that
fails deletes the segment objects it stored (no manifest will name them).

Integrity is checked at both ends. The host lists the files (`find`, NUL
separated, so any name works) and hashes the mutable ones (`sha256sum -z`)
before tar reads them, so a node that writes while it is backed up gives a
backup that fails its restore check: the snapshot runbook stops the node
first. An immutable file is hashed on the worker as it streams (the bytes
`cat` sent, carried by SSH's MAC) and recorded with that sha256; it is
hashed on the host beforehand only when an earlier backup holds a file of
its path and size, to decide reuse. Hashing every segment on the host
first would read the whole datadir twice, serially: a fifth of the
backup's time in bench/snapshot_bench.py. A file whose size differs from
the listing changed during the backup and fails it.

A restore checks each object's stored sha256 as it streams and each
chunk's AES-GCM tag before the host sees it; a segment file's plaintext
must have the manifest's size and sha256 before its command gets EOF, so
a wrong file is never renamed into place. The archive's files are
re-hashed on the host after tar wrote them, and the whole tree is listed
and compared with the manifest: a missing, extra or different file fails
the restore.

Symlinks, sockets and other special files are refused (listed by name)
rather than recorded: a symlinked `snapshots/` on another disk would
otherwise be backed up as a link to data that is not in the backup.
Exclude them in the layout if they are expected. Empty directories are
not kept; the clients recreate them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from tasks import objectstore
from tasks.backups.crypto import DecryptingReader, EncryptingReader, EncryptionKey
from tasks.backups.layout import RESTORE_SUFFIX, Layout
from tasks.backups.manifest import Archive, BackupFile, Manifest, StoredRef, segment_key
from tasks.errors import BackupIntegrityError, CommandFailed, InvalidInput
from tasks.ssh_stream import IDLE_TIMEOUT, read_from, write_to
from tasks.streams import HashingReader, Meter, ReadAhead
from tasks.vocabulary import ActionKind

if TYPE_CHECKING:  # pragma: no cover
    from blocks import ObjectStore
    from tasks.ssh import SshRunner

ARCHIVE = "data.tar.zst"
# tar runs zstd itself (-I), so tar's exit status covers the compressor too: dash has no pipefail.
# zstd -1 on two threads: ~1 GiB/s (REFERENCE), far above what SSH carries.
ZSTD, UNZSTD = "zstd -1 -T2 -q", "zstd -d -q"
HASH_RATE = 50 * 1024 * 1024  # bytes/s sha256sum surely manages (0.29 GB/s measured): one big file's silence
FILES_AT_ONCE = 2  # memory per file: the uploader's parts in flight (tasks/objectstore.py)
_KIND_NAMES = {"l": "symlink", "s": "socket", "p": "fifo", "b": "block device", "c": "character device"}
T = TypeVar("T")


# ------------------------------------------------------------------ the host's side


def _absolute(path: str) -> str:
    if not isinstance(path, str) or not posixpath.isabs(path) or "\x00" in path or posixpath.normpath(path) == "/":
        raise InvalidInput(f"{path!r} must be an absolute directory path below '/'")
    return posixpath.normpath(path)


def _decode(name: bytes) -> str:
    try:
        return name.decode()
    except UnicodeDecodeError:
        raise InvalidInput(f"file name {name!r} is not UTF-8: rename it (manifests are JSON)") from None


def _list(ssh: SshRunner, root: str) -> list[tuple[str, str, int]]:
    """(type letter as find's %y, path relative to root, size) of everything under root, in one command."""
    with read_from(ssh, ["find", "-H", root, "-mindepth", "1", "-printf", r"%y\0%P\0%s\0"]) as stream:
        fields = stream.read().split(b"\0")[:-1]  # ~80 bytes a file: a million files is 80 MB
    entries = [(fields[i].decode(), _decode(fields[i + 1]), int(fields[i + 2])) for i in range(0, len(fields), 3)]
    return sorted(entries, key=lambda e: e[1])  # by path: manifests of the same tree read the same


def _hash(ssh: SshRunner, root: str, paths: list[str], largest: int) -> dict[str, str]:
    """sha256 of each path (relative to root), computed on the host; names go in on stdin, NUL separated."""
    if not paths:
        return {}
    names = b"".join(p.encode() + b"\0" for p in paths)
    # sha256sum is silent while it reads one file: allow the largest one its time.
    with read_from(ssh, ["sh", "-c", 'cd -- "$1" && exec xargs -0 -r sha256sum -z --', "sh", root], stdin=names,
                   idle_timeout=IDLE_TIMEOUT + largest / HASH_RATE) as stream:
        records = stream.read().split(b"\0")[:-1]
    return {_decode(r[66:]): r[:64].decode() for r in records}  # "<64 hex>  <name>"


def _each_at_once(jobs: list[tuple[Callable[[], T], int]]) -> list[T]:
    """Run (job, its size in bytes) pairs FILES_AT_ONCE at a time, the largest first; results in the jobs' order.

    Largest first keeps both streams busy to the end instead of leaving one
    big file alone at the tail. The first failure cancels what has not
    started and is raised once the running ones have ended (each aborts or
    completes its own upload)."""
    with ThreadPoolExecutor(max_workers=FILES_AT_ONCE, thread_name_prefix="datadir-file") as pool:
        futures = {i: pool.submit(jobs[i][0]) for i in sorted(range(len(jobs)), key=lambda i: -jobs[i][1])}
        try:
            return [futures[i].result() for i in range(len(jobs))]
        except BaseException:
            for f in futures.values():
                f.cancel()
            raise


# ------------------------------------------------------------------ the store's side


def _store_allows(ssh: SshRunner, store: ObjectStore, what: str, action: ActionKind) -> bool:
    return ssh.gate is None or ssh.gate.allows("s3", store.bucket, what, action=action)


def _upload(ssh: SshRunner, store: ObjectStore, key: str, stream: EncryptingReader) -> objectstore.StoredObject | None:
    """Upload through the gate (None in a dry run), audited like the database backup's uploads."""
    if not _store_allows(ssh, store, f"upload {key}", ActionKind.upload):
        return None
    started = time.monotonic()
    stored = objectstore.upload(store, key, stream, metadata={"kind": "snapshot"})
    ssh.audit.action(f"s3:{store.bucket}", f"upload {key}", 0, time.monotonic() - started,
                     action=ActionKind.upload, bytes=stored.size, sha256=stored.sha256)
    return stored


def _ref(stored: objectstore.StoredObject, enc: EncryptingReader, key: EncryptionKey) -> StoredRef:
    return StoredRef(key=stored.key, size=stored.size, sha256=stored.sha256, encrypted_with=key.key_id,
                     plaintext_size=enc.plaintext_size, plaintext_sha256=enc.plaintext_sha256)


# ------------------------------------------------------------------ backup


@dataclass
class DatadirBackup:
    archives: list[Archive] = field(default_factory=list)
    files: list[BackupFile] = field(default_factory=list)
    uploaded_bytes: int = 0  # stored bytes this backup sent
    reused_bytes: int = 0  # stored bytes it points to in earlier backups' objects


def backup_datadir(ssh: SshRunner, store: ObjectStore, key: EncryptionKey, datadir: str, layout: Layout,
                   prefix: str, reusable: dict[tuple[str, int, str], StoredRef],
                   progress: Callable[[int, int], None] | None = None, owner: str | None = None) -> DatadirBackup:
    """Back up `datadir` on ssh's host under `prefix` (the backup's key prefix); the manifest is the caller's.

    `reusable` is `manifest.reusable_segments(earlier, key.key_id)`; `owner`
    (the node) goes into new segment objects' names (`segment_key`). Raises
    InvalidInput for special files, CommandFailed when a host command
    fails, BackupIntegrityError when an immutable file changed meanwhile.
    """
    datadir = _absolute(datadir)
    mutable, immutable, refused = [], [], []
    for kind, path, size in _list(ssh, datadir):
        if layout.excludes(path) or kind == "d":
            continue
        if kind != "f":
            refused.append(f"{path!r} ({_KIND_NAMES.get(kind, 'find type ' + kind)})")
        else:
            (immutable if layout.is_immutable(path) else mutable).append((path, size))
    if refused:
        raise InvalidInput(f"{ssh.label}: {datadir} holds files a backup cannot restore faithfully: "
                           + ", ".join(refused) + "; remove them or exclude them in the client's layout")
    listed = mutable + immutable
    candidates = {(path, size) for path, size, _ in reusable}
    to_hash = mutable + [(p, s) for p, s in immutable if (p, s) in candidates]
    sums = _hash(ssh, datadir, [p for p, _ in to_hash], max((s for _, s in to_hash), default=0))
    meter = Meter(sum(s for _, s in listed), progress)

    def archive() -> DatadirBackup:
        """The mutable files as one tar+zstd stream, in one object."""
        done = DatadirBackup()
        archive_key = objectstore.check_key(f"{prefix}/{ARCHIVE}")
        names = b"".join(p.encode() + b"\0" for p, _ in mutable)
        argv = ["tar", "-I", ZSTD, "-C", datadir, "--null", "--no-recursion", "--verbatim-files-from", "-T", "-",
                "-cf", "-"]
        with read_from(ssh, argv, stdin=names) as stream:
            enc = EncryptingReader(meter.reader(stream), key)
            stored = _upload(ssh, store, archive_key, enc)
        if stored is not None:
            done.archives.append(Archive(name=ARCHIVE, format="tar+zstd", object=_ref(stored, enc, key),
                                         paths=sorted({p.split("/")[0] for p, _ in mutable})))
            done.files += [BackupFile(path=p, size=s, sha256=sums[p], archive=ARCHIVE) for p, s in mutable]
            done.uploaded_bytes += stored.size
        return done

    new_objects: list[str] = []  # segment objects this backup stored: unique to it (segment_key)

    def segment(path: str, size: int) -> DatadirBackup:
        """One immutable file: a reference to an earlier backup's object, or its own new object."""
        ref = reusable.get((path, size, sums.get(path, "")))
        found = objectstore.head(store, ref.key) if ref is not None else None
        if ref is not None and found is not None and found.size == ref.size:
            meter.add(size)
            return DatadirBackup(files=[BackupFile(path=path, size=size, sha256=sums[path], object=ref, reused=True)],
                                 reused_bytes=ref.size)
        object_key = segment_key(key.key_id, owner)
        with read_from(ssh, ["cat", "--", posixpath.join(datadir, path)]) as stream:
            enc = EncryptingReader(meter.reader(stream), key)
            stored = _upload(ssh, store, object_key, enc)
        if stored is None:
            return DatadirBackup()
        new_objects.append(object_key)
        if enc.plaintext_size != size or sums.get(path, enc.plaintext_sha256) != enc.plaintext_sha256:
            raise BackupIntegrityError(
                f"{ssh.label}: {datadir}/{path} changed during the backup (listed {size} bytes"
                + (f" sha256 {sums[path]}" if path in sums else "")
                + f", read {enc.plaintext_size} bytes sha256 {enc.plaintext_sha256}): stop the node and back up again")
        return DatadirBackup(files=[BackupFile(path=path, size=size, sha256=enc.plaintext_sha256,
                                               object=_ref(stored, enc, key))], uploaded_bytes=stored.size)

    jobs = ([(archive, sum(s for _, s in mutable))] if mutable else []) \
        + [(functools.partial(segment, p, s), s) for p, s in immutable]
    try:
        outcomes = _each_at_once(jobs)
    except BaseException:
        # A failed backup leaves nothing behind: no manifest will ever name these objects.
        for object_key in new_objects:
            if _store_allows(ssh, store, f"delete {object_key}", ActionKind.delete):
                with contextlib.suppress(Exception):  # the backup's own error matters more; prune-backups sweeps orphans
                    objectstore.delete(store, object_key)
        raise
    result = DatadirBackup()
    for done in outcomes:
        result.archives += done.archives
        result.files += done.files
        result.uploaded_bytes += done.uploaded_bytes
        result.reused_bytes += done.reused_bytes
    if progress is not None:
        progress(meter.total, meter.total)
    return result


# ------------------------------------------------------------------ restore


@dataclass(frozen=True)
class RestoreResult:
    files_checked: int
    bytes_read: int  # stored (ciphertext) bytes read from the store


_EMPTY_OR_ABSENT = ('if [ -e "$1" ] || [ -L "$1" ]; then [ -d "$1" ] && [ ! -L "$1" ] && [ -z "$(ls -A -- "$1")" ]'
                    ' || exit 3; fi; mkdir -p -- "$1"')
_PLACE_FILE = 'mkdir -p -- "$1" && cat > "$2" && mv -f -- "$2" "$3"'


def restore_datadir(ssh: SshRunner, store: ObjectStore, key: EncryptionKey, manifest: Manifest, target_dir: str,
                    progress: Callable[[int, int], None] | None = None) -> RestoreResult:
    """Restore the backup into `target_dir` on ssh's host (absent or empty) and check every file there.

    Raises BackupIntegrityError (a tampered or corrupted object, a file that
    differs, is missing or is extra) and InvalidInput (target not empty).
    On failure the caller removes the target (`remove_dir`).
    """
    target = _absolute(target_dir)
    made = ssh.run(["sh", "-c", _EMPTY_OR_ABSENT, "sh", target])
    if made.exit_code == 3:
        raise InvalidInput(f"{ssh.label}: {target} exists and is not an empty directory: restore refused, "
                           "nothing was changed")
    if not made.ok:
        raise CommandFailed(made)
    meter = Meter(sum(f.size for f in manifest.files), progress)
    for archive in manifest.archives:
        if archive.format != "tar+zstd":
            raise InvalidInput(f"archive {archive.name} is {archive.format!r}, not a datadir's tar+zstd")

    def unpack(archive: Archive) -> int:
        return _restore_object(ssh, store, key, archive.object, ["tar", "-I", UNZSTD, "-xf", "-", "-C", target],
                               meter, made.dry_run)

    def place(f: BackupFile) -> int:
        final = posixpath.join(target, f.path)
        return _restore_object(ssh, store, key, f.object, ["sh", "-c", _PLACE_FILE, "sh", posixpath.dirname(final),
                                                           final + RESTORE_SUFFIX, final], meter, made.dry_run,
                               expect=f)

    # The archive's files and the segment files are disjoint, so they may land in any order.
    read = sum(_each_at_once([(functools.partial(unpack, a), a.object.plaintext_size or 0) for a in manifest.archives]
                             + [(functools.partial(place, f), f.size) for f in manifest.files if f.object is not None]))
    if made.dry_run:
        return RestoreResult(0, 0)
    if problems := _compare(ssh, target, manifest.files):
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise BackupIntegrityError(f"{ssh.label}: the restore into {target} does not match backup {manifest.key}: "
                                   + "; ".join(shown))
    if progress is not None:
        progress(meter.total, meter.total)
    return RestoreResult(len(manifest.files), read)


def _restore_object(ssh: SshRunner, store: ObjectStore, key: EncryptionKey, ref: StoredRef, argv: list[str],
                    meter: Meter, dry_run: bool, expect: BackupFile | None = None) -> int:
    """Stream one object, checked and decrypted, into argv on the host; the stored bytes read.

    With `expect` (the file the object holds) the plaintext must have its size and sha256
    before the command sees EOF: a source that raises stops it first (ssh_stream.write_to)."""
    if ref.encrypted_with != key.key_id:
        raise BackupIntegrityError(f"{ref.key} was encrypted with key {ref.encrypted_with}, the key given is "
                                   f"{key.key_id}: load the key this backup was made with")
    if dry_run:
        write_to(ssh, argv, io.BytesIO())  # recorded by the gate; the store is not read
        return 0
    with objectstore.open_object(store, ref.key) as body:
        hashed = HashingReader(body)
        # The download (and its hashing) runs ahead on a thread while chunks are decrypted and sent.
        with ReadAhead(hashed) as ahead:
            plain = DecryptingReader(io.BufferedReader(ahead, 1 << 20), key)
            write_to(ssh, argv, meter.reader(plain if expect is None else _Expected(plain, expect, ref.key)))
    if (hashed.size, hashed.sha256.hexdigest()) != (ref.size, ref.sha256):
        raise BackupIntegrityError(f"{ref.key}: read back {hashed.size} bytes with sha256 {hashed.sha256.hexdigest()}, "
                                   f"the manifest records {ref.size} bytes with sha256 {ref.sha256}")
    return hashed.size


class _Expected(io.RawIOBase):
    """Passes a decrypted file on; at its end raises BackupIntegrityError unless it had the file's size and sha256."""

    def __init__(self, plain: DecryptingReader, file: BackupFile, object_key: str) -> None:
        self._plain, self._file, self._object_key = plain, file, object_key

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._plain.read(len(b))
        if not data and (self._plain.plaintext_size, self._plain.plaintext_sha256) != (self._file.size,
                                                                                      self._file.sha256):
            raise BackupIntegrityError(
                f"{self._object_key} holds {self._plain.plaintext_size} bytes sha256 {self._plain.plaintext_sha256}, "
                f"the manifest says {self._file.path} has {self._file.size} bytes sha256 {self._file.sha256}")
        b[:len(data)] = data
        return len(data)


def _compare(ssh: SshRunner, target: str, files: list[BackupFile]) -> list[str]:
    """What differs between the tree on the host and the manifest's files.

    Sizes of all, sha256 re-read on the host of the archive's files; a segment file's sha256
    was checked as it streamed (`_Expected`), and only a checked one was renamed into place."""
    entries = _list(ssh, target)
    found = {p: s for kind, p, s in entries if kind == "f"}
    archived = sorted(f.path for f in files if f.object is None and f.path in found)
    sums = _hash(ssh, target, archived, max((found[p] for p in archived), default=0))
    sums |= {f.path: f.sha256 for f in files if f.object is not None and f.path in found}
    expected = {f.path: f for f in files}
    problems = [f"{p!r} is missing" for p in sorted(expected.keys() - found.keys())]
    problems += [f"{p!r} is not in the backup" for p in sorted(found.keys() - expected.keys())]
    problems += [f"{p!r} is not a regular file or directory" for kind, p, _ in entries if kind not in "fd"]
    for p in sorted(expected.keys() & found.keys()):
        f = expected[p]
        if (found[p], sums.get(p)) != (f.size, f.sha256):
            problems.append(f"{p!r} has {found[p]} bytes sha256 {sums.get(p)}, the backup {f.size} bytes sha256 {f.sha256}")
    return problems


def remove_dir(ssh: SshRunner, path: str, *, parent: str) -> None:
    """`rm -rf` a restore's staging directory, only strictly inside `parent` (never '/', '' or elsewhere)."""
    p, top = _absolute(path), _absolute(parent)
    if ".." in path.split("/") or p == top or posixpath.commonpath([p, top]) != top:
        raise InvalidInput(f"refusing to remove {path!r}: only a directory strictly inside {parent!r} may be removed")
    ssh.run(["rm", "-rf", "--", p], check=True, timeout=3600)
