"""Reading the audit trail, the way every guard derives its state from it.

Guards never keep a second copy of what the trail says (restart counts,
open circuits, holds): each question is a read of the entries written
through `tasks.audit`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from tasks.audit import read_entries


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def ts(entry: dict[str, Any]) -> datetime | None:
    """When the entry was written, or None for a line without a readable time."""
    try:
        return datetime.fromisoformat(entry["ts"])
    except (KeyError, TypeError, ValueError):
        return None


def about(entry: dict[str, Any], node: str) -> bool:
    """The entry concerns `node`: it names the node in its data, else it is on that node's record."""
    data = entry.get("data")
    named = data.get("node") if isinstance(data, dict) else None
    return (named or entry.get("node")) == node


def scan(needle: str, kind: str, since: datetime | None = None) -> list[dict[str, Any]]:
    """Entries of `kind` whose raw line contains `needle`, over the whole trail (or from `since`).

    Circuit, incident and hold states can be weeks old, so these reads cannot
    be bounded by a window; the audit's byte pre-filter keeps a long trail cheap.
    """
    return read_entries(kind=kind, since=since, contains=needle)
