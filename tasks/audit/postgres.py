"""The audit trail in PostgreSQL, for several workers: one table every worker appends to and reads.

Chosen by `RUNBOOKS_AUDIT_DSN` (a libpq connection string or URL; the
password belongs in a .pgpass or the URL of a secret-managed environment,
and is registered for redaction): with it set, `AuditRecord.write` and
`read_entries` use this table instead of the day files, so the restart
budget, circuits, chain incidents and leases' histories that guards derive
from the trail are the same for every worker in every region. Without it,
the files stay the default (one machine, the embedded demo).

The records are the same: `line` holds each exactly as a day file would
(the JSON the chain hashes), with its `prev`; `audit_chain` holds the head.
A record is appended in one transaction under an advisory lock, so writers
anywhere form one chain; `verify` walks it by id and names a changed row
by its id, run and seq.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from datetime import datetime

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tasks.audit.chain import GENESIS, ChainReport, line_hash, verify_records
from tasks.redaction import register_secret

AUDIT_DSN_ENV = "RUNBOOKS_AUDIT_DSN"
CHAIN_LOCK = 0x61756474  # pg_advisory_xact_lock key: "audt"
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    id      bigserial PRIMARY KEY,
    ts      timestamptz NOT NULL,
    run_id  text NOT NULL,
    node    text,
    kind    text NOT NULL,
    line    text NOT NULL,      -- the record as a day file holds it: what the chain hashes
    prev    text NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_records_ts ON audit_records (ts);
CREATE INDEX IF NOT EXISTS audit_records_run ON audit_records (run_id);
CREATE TABLE IF NOT EXISTS audit_chain (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    head     text NOT NULL      -- sha256 of the newest record's line
);
"""

_local = threading.local()  # one connection per thread: tasks write from threads, a transaction is not shared


def dsn() -> str | None:
    return os.environ.get(AUDIT_DSN_ENV) or None


def _conn() -> psycopg.Connection:
    target = dsn()
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or getattr(_local, "dsn", None) != target:
        register_secret(conninfo_to_dict(target).get("password") or "")
        conn = psycopg.connect(target, autocommit=True, connect_timeout=5)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))  # two first writers racing to create
            conn.execute(SCHEMA)
        _local.conn, _local.dsn = conn, target
    return conn


def append_chained(make_line) -> bytes:
    """Insert `make_line(prev)` after the newest record, in one transaction under the chain's lock."""
    conn = _conn()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))
        row = conn.execute("SELECT head FROM audit_chain").fetchone()
        line = make_line(row[0] if row else GENESIS)
        e = json.loads(line)
        conn.execute("INSERT INTO audit_records (ts, run_id, node, kind, line, prev) VALUES (%s, %s, %s, %s, %s, %s)",
                     (e["ts"], e["run_id"], e.get("node"), e["kind"], line.decode().rstrip("\n"), e["prev"]))
        conn.execute("INSERT INTO audit_chain (head) VALUES (%s) ON CONFLICT (only_row) DO UPDATE SET head = excluded.head",
                     (line_hash(line),))
    return line


def read_lines(run_id: str | None, kinds: set[str] | None, since: datetime | None, until: datetime | None,
               needles: Iterable[bytes]) -> list[bytes]:
    """The lines matching the filters the table can apply, oldest first (the caller applies the rest)."""
    where, args = [], []
    for column, value in (("run_id = %s", run_id), ("ts >= %s", since), ("ts <= %s", until)):
        if value is not None:
            where.append(column)
            args.append(value)
    if kinds is not None:
        where.append("kind = ANY(%s)")
        args.append(sorted(kinds))
    for needle in needles:  # the files' byte pre-filter, as a substring of the stored line
        where.append("strpos(line, %s) > 0")
        args.append(needle.decode("utf-8"))
    sql = "SELECT line FROM audit_records" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
    return [row[0].encode() for row in _conn().execute(sql, args)]


def days_before(before: datetime) -> list:
    """The UTC days before `before` that hold records, oldest first."""
    rows = _conn().execute("SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM audit_records WHERE ts < %s ORDER BY 1",
                           (before,)).fetchall()
    return [r[0] for r in rows]


def verify() -> ChainReport:
    conn = _conn()
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")  # one consistent walk
        head = conn.execute("SELECT head FROM audit_chain").fetchone()
        rows = conn.execute("SELECT id, line FROM audit_records ORDER BY id").fetchall()
    return verify_records(((f"audit_records id {i}", line.encode()) for i, line in rows), head[0] if head else None,
                          "audit_chain")
