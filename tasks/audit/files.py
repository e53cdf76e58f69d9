"""Where the audit trail lives: one JSON Lines file per UTC day in one directory.

The one place that knows the directory rule and the file names, so writing
and reading cannot disagree about them.
"""

from __future__ import annotations

import fcntl
import os
from datetime import date, datetime, timezone
from pathlib import Path

AUDIT_DIR_ENV = "RUNBOOKS_AUDIT_DIR"
DEFAULT_AUDIT_DIR = "audit"
FILE_PREFIX = "audit-"
FILE_SUFFIX = ".jsonl"


def audit_dir(directory: str | os.PathLike | None = None) -> Path:
    """Where audit files live: the argument, else $RUNBOOKS_AUDIT_DIR, else ./audit."""
    return Path(directory or os.environ.get(AUDIT_DIR_ENV) or DEFAULT_AUDIT_DIR)


def day_file(day: date, directory: str | os.PathLike | None = None) -> Path:
    return audit_dir(directory) / f"{FILE_PREFIX}{day.isoformat()}{FILE_SUFFIX}"


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive datetime is taken to be UTC already."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _day_of(path: Path) -> date | None:
    stem = path.name[len(FILE_PREFIX) : -len(FILE_SUFFIX)]
    try:
        return date.fromisoformat(stem)
    except ValueError:
        return None


def day_files(since: datetime | None = None, directory: str | os.PathLike | None = None) -> list[Path]:
    """The day files that can hold entries at or after `since`, oldest first."""
    d = audit_dir(directory)
    if not d.is_dir():
        return []
    first_day = as_utc(since).date() if since else None
    files = []
    for p in d.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"):
        day = _day_of(p)
        if day is not None and (first_day is None or day >= first_day):
            files.append((day, p))
    return [p for _, p in sorted(files)]


def append_line(path: Path, line: bytes) -> None:
    """Append one line durably: O_APPEND + flock + a single write + fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            written = os.write(fd, line)
            # A regular file takes the whole line in one write(); looping
            # only guards against a short write (disk full is an error).
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    if created:
        # Make the new file's directory entry durable too.
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
