"""PostgreSQL: what a database backup is made of and how it is proved restorable.

    dump_to_store(db, store, key, enc)   pg_dump -Fc | zstd | encrypt -> one object,
                                         plus the source's fingerprints in the SAME snapshot
    restore_fingerprints(db, store, ...) the object -> decrypt | zstd -d | pg_restore into a
                                         scratch database -> its fingerprints, then drop it

Consistency: the backup's fingerprints are computed in the snapshot pg_dump
dumps (`pg_export_snapshot()` in a transaction held open while it runs, and
`pg_dump --snapshot`), so "the restore equals the source" is exact even
while the bot keeps writing.

Streaming: nothing is staged on disk or held whole in memory; a process that
fails (pg_dump exits non-zero) fails the stream at its end, so the upload
aborts and no object is stored as if it were a dump. Passwords reach the
tools through PGPASSWORD, never argv.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import psycopg
from psycopg import sql

from blocks import Database, ObjectStore
from tasks import objectstore
from tasks.backups.crypto import DecryptingReader, EncryptingReader, EncryptionKey
from tasks.errors import BackupIntegrityError
from tasks.streams import HashingReader

# zstd -1 on two threads: ~1 GiB/s here (REFERENCE), far above what pg_dump produces.
ZSTD = ["zstd", "-1", "-T2", "-q", "-c"]
UNZSTD = ["zstd", "-d", "-q", "-c"]
PIPE_CHUNK = 1 << 20


@dataclass(frozen=True)
class Fingerprint:
    rows: int
    md5: str  # md5 over the md5 of every row's text, in primary-key order


def fingerprints(conn: psycopg.Connection, schema: str = "public", snapshot: str | None = None) -> dict[str, Fingerprint]:
    """Row count and content checksum of every table in `schema`, computed in the server.

    Equal fingerprints mean equal contents: how a restored dump is checked
    against its source. One REPEATABLE READ snapshot covers every table (the
    exported one given, if any); the text form of a row depends on session
    settings (a timestamptz prints in the session's time zone), so they are
    pinned here rather than inherited. Tables without a primary key are
    ordered by their whole row text.
    """
    out: dict[str, Fingerprint] = {}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if snapshot:
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        for setting, value in (("TimeZone", "UTC"), ("DateStyle", "ISO, YMD"), ("IntervalStyle", "postgres"),
                               ("extra_float_digits", "1"), ("bytea_output", "hex")):
            conn.execute("SELECT set_config(%s, %s, true)", (setting, value))
        tables = conn.execute(
            """SELECT c.relname, array_remove(array_agg(a.attname ORDER BY k.ord), NULL)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
                 LEFT JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
                 LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
                GROUP BY c.relname ORDER BY c.relname""", (schema,)).fetchall()
        for table, key in tables:
            order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in key) if key else sql.SQL("t::text")
            rows, digest = conn.execute(sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(md5(t::text), '' ORDER BY {}), '')) FROM {}.{} t"
            ).format(order, sql.Identifier(schema), sql.Identifier(table))).fetchone()
            out[table] = Fingerprint(rows, digest)
    return out


def as_records(prints: dict[str, Fingerprint]) -> list[dict]:
    """One record per table. A list, not a map by table name: the audit masks values under
    keys that look secret, and a table may well be called `tokens`."""
    return [{"table": t, "rows": f.rows, "md5": f.md5} for t, f in sorted(prints.items())]


# --------------------------------------------------------------------------- pipes


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (Debian: postgresql-client, zstd)")
    return path


class _ProcessOutput(io.RawIOBase):
    """The last process's stdout; at its end, every process of the pipe must have exited 0."""

    def __init__(self, procs: list[subprocess.Popen], what: str) -> None:
        self._procs, self._what, self._out = procs, what, procs[-1].stdout

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._out.readinto(b)
        if n == 0:
            for p in self._procs:
                if p.wait(timeout=600) != 0:
                    err = p.stderr.read().decode(errors="replace")[-500:] if p.stderr else ""
                    raise BackupIntegrityError(f"{self._what}: {os.path.basename(p.args[0])} exited {p.returncode}: {err}")
        return n


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@dataclass(frozen=True)
class Dump:
    object: objectstore.StoredObject  # ciphertext as stored
    plaintext_size: int  # the compressed dump
    plaintext_sha256: str
    fingerprints: dict[str, Fingerprint]
    snapshot: str


def dump_to_store(db: Database, store: ObjectStore, key: str, enc: EncryptionKey) -> Dump:
    """pg_dump in custom format, compressed and encrypted, streamed to `key`."""
    env = dict(os.environ, **db.pg_env())
    with psycopg.connect(**db.conninfo()) as holder, psycopg.connect(**db.conninfo()) as reader:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = holder.execute("SELECT pg_export_snapshot()").fetchone()[0]
        prints = fingerprints(reader, snapshot=snapshot)
        dump = subprocess.Popen([_tool("pg_dump"), "-Fc", "-Z0", f"--snapshot={snapshot}", "--no-password",
                                 f"--dbname={db.database}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        zstd = subprocess.Popen(ZSTD, stdin=dump.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        dump.stdout.close()  # zstd owns it now: pg_dump gets SIGPIPE if zstd dies
        procs = [dump, zstd]
        try:
            encrypted = EncryptingReader(io.BufferedReader(_ProcessOutput(procs, "pg_dump"), PIPE_CHUNK), enc)
            stored = objectstore.upload(store, key, encrypted, metadata={"kind": "database"})
        finally:
            _kill(procs)
        holder.rollback()  # the snapshot may go now
    return Dump(stored, encrypted.plaintext_size, encrypted.plaintext_sha256, prints, snapshot)


def scratch_name(database: str) -> str:
    """A database name that cannot be the source: where a dump is restored to be checked."""
    return f"{database[:40]}_verify_{datetime.now(timezone.utc):%Y%m%d%H%M%S}_{secrets.token_hex(3)}"


def restore_fingerprints(db: Database, store: ObjectStore, key: str, enc: EncryptionKey,
                         expected_sha256: str) -> tuple[dict[str, Fingerprint], int]:
    """Restore the dump at `key` into a scratch database on the same server; its fingerprints and bytes read.

    The stored object's sha256 is checked as it streams, and every encrypted
    chunk is authenticated before pg_restore sees it; the scratch database is
    dropped whatever happens.
    """
    scratch = scratch_name(db.database)
    if not re.fullmatch(r"[A-Za-z0-9_]+", scratch):
        raise ValueError(f"bad scratch database name {scratch!r}")
    with psycopg.connect(**db.conninfo(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
        try:
            read = _restore_into(db, store, key, enc, expected_sha256, scratch)
            with psycopg.connect(**db.conninfo(scratch)) as conn:
                return fingerprints(conn), read
        finally:
            _drop_scratch(admin, scratch)


def _drop_scratch(admin: psycopg.Connection, scratch: str, patience_s: float = 30) -> None:
    """Drop the scratch database once nothing uses it.

    Not WITH (FORCE): it would also try to terminate the autovacuum worker a
    fresh restore attracts, which a role without pg_signal_backend may not do
    (PostgreSQL refuses the whole drop). A plain DROP cancels autovacuum by
    itself; our own connections are closed by now, so only a worker that has
    not quit yet can be in the way.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(scratch)))
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _restore_into(db: Database, store: ObjectStore, key: str, enc: EncryptionKey, expected_sha256: str,
                  scratch: str) -> int:
    env = dict(os.environ, **db.pg_env())
    unzstd = subprocess.Popen(UNZSTD, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    restore = subprocess.Popen([_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
                                "--no-password", f"--dbname={scratch}"], stdin=unzstd.stdout,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    unzstd.stdout.close()
    procs = [unzstd, restore]
    try:
        with objectstore.open_object(store, key) as body:
            hashed = HashingReader(body)
            plain = DecryptingReader(io.BufferedReader(hashed, PIPE_CHUNK), enc)
            try:
                while chunk := plain.read(PIPE_CHUNK):
                    unzstd.stdin.write(chunk)
            except BrokenPipeError:
                pass  # a tool died: its exit code says why, below
            finally:
                unzstd.stdin.close()
        if hashed.sha256.hexdigest() != expected_sha256:
            raise BackupIntegrityError(f"{key}: read back with sha256 {hashed.sha256.hexdigest()}, "
                                       f"the manifest says {expected_sha256}")
        for p in procs:
            if p.wait(timeout=600) != 0:
                err = p.stderr.read().decode(errors="replace")[-500:]
                raise BackupIntegrityError(f"restoring {key}: {os.path.basename(p.args[0])} exited {p.returncode}: {err}")
        return hashed.size
    finally:
        _kill(procs)
