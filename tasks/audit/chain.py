"""The audit trail's hash chain: an edited, removed or reordered record is found and named.

Every record carries `prev`, the sha256 of the record written before it
(its exact line, across day files; the first record `GENESIS`), and the
directory's `.chain` file holds the sha256 of the newest record. Both are
written under one exclusive lock on `.chain`, so writers in several
processes form one chain. `verify` walks every day file in order:

- a record whose successor's `prev` is not its hash was changed (or the
  record between them removed), and is named by file, line, run and seq;
- the newest record must hash to `.chain`'s value, so the last one is
  covered too, and records cut off the end are found;
- a successor whose `prev` is the hash of the record *before* its
  predecessor means a writer died between its two writes (the record
  landed, `.chain` did not move): reported as a note naming that record,
  not as tampering. A record inserted by hand looks the same, so a note
  deserves a look.

What it cannot see: someone who rewrites a record and every hash after it,
`.chain` included. Ship the files elsewhere (WORM storage, the object
store) for that; the chain tells a changed copy from the original.
Records written before chaining began (no `prev`) are counted, not checked.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tasks.audit.files import append_line, day_files

CHAIN_FILE = ".chain"
GENESIS = "0" * 64


def line_hash(line: bytes) -> str:
    """The hash a record is chained by: sha256 of its line, without the newline."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def append_chained(directory: Path, path: Path, make_line) -> bytes:
    """Append `make_line(prev)` (one JSON line) to `path`, chained after the newest record; returns the line.

    The day file gets its own O_APPEND write and fsync (`append_line`); `.chain` moves after it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / CHAIN_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            head = os.pread(fd, 64, 0).decode("ascii", "replace")
            line = make_line(head if len(head) == 64 else GENESIS)
            append_line(path, line)
            os.pwrite(fd, line_hash(line).encode(), 0)
            os.fsync(fd)
            return line
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@dataclass
class ChainReport:
    records: int = 0  # chained records checked
    unchained: int = 0  # records from before chaining began
    problems: list[str] = field(default_factory=list)  # tampering: verify fails
    notes: list[str] = field(default_factory=list)  # e.g. a writer that died between its two writes

    @property
    def ok(self) -> bool:
        return not self.problems


def describe(place: str, line: bytes) -> str:
    """`place` (file and line, or table row) with the record's run, seq, kind and time, for a report."""
    try:
        e = json.loads(line)
        who = f" (run {e.get('run_id')} seq {e.get('seq')}, {e.get('kind')} at {e.get('ts')})"
    except ValueError:
        who = " (not JSON)"
    return f"{place}{who}"


def verify_records(records: Iterable[tuple[str, bytes]], head: str | None, head_name: str = CHAIN_FILE,
                   check_head: bool = True) -> ChainReport:
    """Walk (place, exact line) pairs, oldest first, and the stored head; see the module docstring.

    `check_head=False`: a copy whose newest record has no head to match (the exported days: the
    trail's next record vouches for it)."""
    report = ChainReport()
    before_prev = prev = None  # hashes of the two records before the current one
    prev_where = ""
    for place, raw in records:
        if not raw.strip():
            continue
        here = describe(place, raw)
        try:
            claimed = json.loads(raw).get("prev")
        except (ValueError, AttributeError):
            claimed = None
            report.problems.append(f"{here} is not a JSON record: it was changed or cut short")
        if claimed is None and prev is None:
            report.unchained += 1
            continue
        report.records += 1
        expected = prev or GENESIS
        if claimed == expected:
            pass
        elif claimed is not None and claimed == before_prev:
            report.notes.append(f"{here} follows the record before {prev_where}: a writer died after "
                                f"writing {prev_where} and before recording it in {head_name}")
        else:
            report.problems.append(
                f"{prev_where or 'the start of the chain'} was changed, or a record after it removed: "
                f"{here} records the hash {str(claimed)[:12]}..., it hashes to {expected[:12]}...")
        before_prev, prev, prev_where = prev, line_hash(raw), here
    if not check_head or prev is None:
        return report
    if head is not None and head != prev:
        report.problems.append(f"the newest record, {prev_where}, is not the one last written ({head_name} "
                               f"holds {head[:12]}..., it hashes to {prev[:12]}...): it was changed, or records "
                               "after it were removed")
    elif head is None:
        report.problems.append(f"{head_name} is missing: the newest record, {prev_where}, cannot be checked")
    return report


def verify(directory: Path) -> ChainReport:
    """The chain over every day file in `directory` and its `.chain` head."""
    def records() -> Iterator[tuple[str, bytes]]:
        for path in day_files(directory=directory):
            with path.open("rb") as f:
                for lineno, raw in enumerate(f, 1):
                    yield f"{path.name} line {lineno}", raw

    head_file = directory / CHAIN_FILE
    return verify_records(records(), head_file.read_text().strip() if head_file.exists() else None)
