"""The one audit path: a durable, append-only record of every runbook run.

Prefect deletes events after 7 days and its logs are not a contract, so each
run also writes its story here: what triggered it, what it planned, every
command it ran where and with what result (or, in a dry run, what it would
have done), the state before and after, and how it ended.

Storage is deliberately boring: JSON Lines, one file per UTC day
(`audit-YYYY-MM-DD.jsonl`) in `$RUNBOOKS_AUDIT_DIR` (default `./audit`),
only ever appended to. Ship the directory to WORM storage or a log pipeline
as it is. With `RUNBOOKS_AUDIT_DSN` set, the same records go to one
PostgreSQL table instead, shared by every worker (`postgres`). Either way
every record carries the hash of the one before (`chain`).

- `files`: where the trail lives (directory, day files).
- `record`: writing (`AuditRecord`, one per run).
- `query`: reading (`read_entries`, and the questions guards ask of it).
- `render`: the markdown story of one run.
- `chain`: the hash chain over every record, and `verify`.
- `postgres`: the trail in PostgreSQL for several workers (`RUNBOOKS_AUDIT_DSN`).
- `__main__`: `python -m tasks.audit show RUN_ID` / `tail` / `verify`.
"""

from tasks.audit.files import AUDIT_DIR_ENV, DEFAULT_AUDIT_DIR, audit_dir, day_file, day_files
from tasks.audit.query import (
    Entry,
    actions_of,
    entries_about,
    entry_time,
    guard_entries,
    is_about,
    read_entries,
)
from tasks.audit.record import TAIL_CHARS, AuditRecord, tail_text
from tasks.audit.render import render_markdown

__all__ = [
    "AUDIT_DIR_ENV",
    "DEFAULT_AUDIT_DIR",
    "TAIL_CHARS",
    "AuditRecord",
    "Entry",
    "actions_of",
    "audit_dir",
    "day_file",
    "day_files",
    "entries_about",
    "entry_time",
    "guard_entries",
    "is_about",
    "read_entries",
    "render_markdown",
    "tail_text",
]

