"""Reading the audit trail: entries by run, node, kind, time and content.

Guards and escalation derive their state (restart counts, open circuits,
open incidents) from these reads instead of keeping second copies, so the
questions they ask are answered here, once: `entries_about` a node,
`actions_of` one kind, `guard_entries` of one guard.

Circuit and incident states can be weeks old, so some reads cannot be
bounded by a time window; `contains=` is a byte pre-filter on the raw line
(the one used for run ids) that keeps a long trail cheap to scan: a busy day
file holds many runs, and parsing every line is what makes reading slow.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from tasks.audit import postgres
from tasks.audit.files import as_utc, day_files
from tasks.vocabulary import ActionKind, EntryKind

log = logging.getLogger(__name__)

Entry = dict[str, Any]


def entry_time(entry: Entry) -> datetime | None:
    """When the entry was written (UTC), or None for an entry without a readable ts."""
    try:
        return datetime.fromisoformat(entry["ts"])
    except (KeyError, TypeError, ValueError):
        return None


def is_about(entry: Entry, node: str) -> bool:
    """The entry concerns `node`: it names the node in its data, else it is on that node's record."""
    data = entry.get("data")
    named = data.get("node") if isinstance(data, dict) else None
    return (named or entry.get("node")) == node


def _needle(text: str) -> bytes:
    """How `text` appears in a written line, as a JSON string (quotes included)."""
    return json.dumps(text, ensure_ascii=False).encode("utf-8")


def _iter_file(path: Path, needles: tuple[bytes, ...] = ()) -> Iterator[Entry]:
    """The entries of one day file whose raw line contains every needle."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip() or not all(n in raw for n in needles):
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                # Only a crash in the middle of a write leaves a broken line;
                # say so and keep reading the rest of the trail.
                log.warning("%s:%d: skipping a malformed audit line", path, lineno)
                continue
            if isinstance(entry, dict):
                yield entry


def _kinds(kind: str | Iterable[str] | None) -> set[str] | None:
    if kind is None:
        return None
    # EntryKind(...) refuses a misspelt kind instead of silently matching nothing.
    return {EntryKind(k).value for k in ([kind] if isinstance(kind, str) else kind)}


def read_entries(
    run_id: str | None = None,
    node: str | None = None,
    kind: EntryKind | str | Iterable[EntryKind | str] | None = None,
    since: datetime | None = None,
    directory: str | os.PathLike | None = None,
    *,
    until: datetime | None = None,
    contains: str | bytes | Iterable[str | bytes] | None = None,
) -> list[Entry]:
    """Entries matching every given filter, in the order they were written.

    node matches the entry's own node (the run's); use `entries_about` for
    "anything concerning this node". contains: the raw JSON line must
    contain this text (or every one of these texts); a pre-filter, so check
    the parsed entry for what you mean (a JSON string is `'"name"'`). Only the
    day files from `since`'s UTC day on are opened; naive datetimes are UTC.
    """
    kinds = _kinds(kind)
    since_utc = as_utc(since) if since else None
    until_utc = as_utc(until) if until else None
    needles: list[bytes] = []
    if run_id is not None:
        needles.append(_needle(run_id))
    if contains is not None:
        for text in [contains] if isinstance(contains, (str, bytes)) else contains:
            needles.append(text if isinstance(text, bytes) else text.encode("utf-8"))
    if directory is None and postgres.dsn():
        lines = postgres.read_lines(run_id, kinds, since_utc, until_utc, needles)
        found: Iterable[Entry] = (e for e in map(json.loads, lines) if isinstance(e, dict))
    else:
        found = (e for path in day_files(since_utc, directory) for e in _iter_file(path, tuple(needles)))
    out = []
    for e in found:
        if run_id is not None and e.get("run_id") != run_id:
            continue
        if node is not None and e.get("node") != node:
            continue
        if kinds is not None and e.get("kind") not in kinds:
            continue
        if since_utc is not None or until_utc is not None:
            t = entry_time(e)
            if t is None or (since_utc and t < since_utc) or (until_utc and t > until_utc):
                continue
        out.append(e)
    return out


def entries_about(
    node: str,
    kind: EntryKind | str | Iterable[EntryKind | str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    directory: str | os.PathLike | None = None,
) -> list[Entry]:
    """Entries concerning `node` (see `is_about`), from any run, oldest first."""
    # The node's name is in the line either way (entry node or data.node).
    found = read_entries(kind=kind, since=since, until=until, contains=_needle(node), directory=directory)
    return [e for e in found if is_about(e, node)]


def actions_of(
    action: ActionKind | str,
    node: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    directory: str | os.PathLike | None = None,
) -> list[Entry]:
    """Action entries of one typed kind (`data.action`), about `node` if given, oldest first."""
    value = ActionKind(action).value
    needles = [_needle(value)] + ([_needle(node)] if node is not None else [])
    found = read_entries(kind=EntryKind.action, since=since, until=until, contains=needles, directory=directory)
    return [
        e for e in found
        if isinstance(e.get("data"), dict) and e["data"].get("action") == value and (node is None or is_about(e, node))
    ]


def guard_entries(
    name: str,
    node: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    directory: str | os.PathLike | None = None,
) -> list[Entry]:
    """Guard decisions named `name` (circuit-open, chain-incident...), about `node` if given, oldest first."""
    needles = [_needle(name)] + ([_needle(node)] if node is not None else [])
    found = read_entries(kind=EntryKind.guard, since=since, until=until, contains=needles, directory=directory)
    return [
        e for e in found
        if isinstance(e.get("data"), dict) and e["data"].get("name") == name and (node is None or is_about(e, node))
    ]
