"""Old audit days copied to the object store for long retention, and read back from there.

A day (UTC) once over is written as one JSON Lines object,
`audit/YYYY/audit-YYYY-MM-DD.jsonl`, byte for byte the lines the trail holds
(a day file, or that day's rows of the PostgreSQL table), with If-None-Match
so an exported day is never replaced. Exporting a day again compares: the
same bytes are left alone; different bytes mean the trail changed after it
was exported, which is reported (and escalated by the runbook), never
overwritten. Every record keeps its `prev`, so `verify_exported` checks the
chain across the exported days as `verify` checks it on disk. The trail's own
copy is not deleted here: retention of the local days is the operator's.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from tasks import objectstore
from tasks.audit import postgres
from tasks.audit.chain import ChainReport, verify_records
from tasks.audit.files import day_file, day_files
from tasks.errors import ObjectExists

PREFIX = "audit"


def day_key(day: date) -> str:
    return f"{PREFIX}/{day.year}/audit-{day.isoformat()}.jsonl"


def day_lines(day: date, directory=None) -> bytes:
    """The day's records as stored, one line each (b"" for a day without records)."""
    if directory is None and postgres.dsn():
        start = datetime.combine(day, time(0), tzinfo=timezone.utc)
        lines = postgres.read_lines(None, None, start, start + timedelta(days=1) - timedelta(microseconds=1), [])
        return b"".join(line + b"\n" for line in lines)
    path = day_file(day, directory)
    return path.read_bytes() if path.exists() else b""


def days_with_records(before: date, directory=None) -> list[date]:
    """The days before `before` that hold records, oldest first."""
    if directory is None and postgres.dsn():
        return postgres.days_before(datetime.combine(before, time(0), tzinfo=timezone.utc))
    return [d for d in (date.fromisoformat(p.name[6:16]) for p in day_files(directory=directory)) if d < before]


@dataclass
class Exported:
    day: date
    key: str
    bytes: int
    sha256: str
    status: str  # "exported", "already exported", or "CHANGED since export"


def export_day(store, day: date, directory=None) -> Exported:
    data = day_lines(day, directory)
    digest, key = hashlib.sha256(data).hexdigest(), day_key(day)
    try:
        objectstore.put_bytes(store, key, data, if_absent=True, content_type="application/x-ndjson")
        return Exported(day, key, len(data), digest, "exported")
    except ObjectExists:
        body = io.BytesIO()
        stored = objectstore.download(store, key, body)
        same = stored.sha256 == digest
        return Exported(day, key, len(data), digest, "already exported" if same else "CHANGED since export")


def read_exported(store, day: date) -> list[dict]:
    """The records of an exported day, as `read_entries` gives them."""
    body = io.BytesIO()
    objectstore.download(store, day_key(day), body)
    return [json.loads(line) for line in body.getvalue().splitlines() if line.strip()]


def verify_exported(store) -> ChainReport:
    """The hash chain across every exported day, oldest first (no head: the trail holds the newest)."""
    def records():
        for o in objectstore.list_objects(store, f"{PREFIX}/"):
            body = io.BytesIO()
            objectstore.download(store, o.key, body)
            for n, line in enumerate(body.getvalue().splitlines(), 1):
                yield f"{o.key} line {n}", line

    return verify_records(records(), None, "the store", check_head=False)
