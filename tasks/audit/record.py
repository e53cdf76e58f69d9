"""Writing the audit trail: one `AuditRecord` per run, one durable line per entry.

Each entry is one `write()` of one line to the UTC day's file opened with
O_APPEND, under an exclusive `flock`, followed by `fsync`: concurrent
writers from several processes never interleave, a crash loses at most the
entry being written, and nothing is ever rewritten. Every entry passes
through `tasks.redaction.redact` before it is written, and carries the
hash of the entry before it (tasks/audit/chain.py), so `python -m
tasks.audit verify` finds an edited or removed one.

Entry: {ts, seq, run_id, flow, node, kind, data, prev}; kinds and outcomes
are the `tasks.vocabulary` enums, written as their string values.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, is_dataclass
from datetime import date, datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import psycopg

from tasks.audit import postgres
from tasks.audit.chain import append_chained
from tasks.audit.files import AUDIT_DIR_ENV, as_utc, audit_dir, day_file
from tasks.audit.query import read_entries
from tasks.errors import AuditError
from tasks.redaction import redact, redact_text
from tasks.vocabulary import ActionKind, EntryKind, Outcome

# Enough of a command's output to see why it failed, small enough that a
# chatty command cannot bloat the trail.
TAIL_CHARS = 2000


def tail_text(text: str | bytes | None, limit: int = TAIL_CHARS) -> str:
    """The last `limit` characters of a command's output, as text."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text if len(text) <= limit else "…" + text[-limit:]


def _merge(fields: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """fields plus extra; an extra key that collides gets a trailing underscore."""
    out = dict(fields)
    for k, v in extra.items():
        while k in out:
            k = f"{k}_"
        out[k] = v
    return out


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _json_default(obj: Any) -> Any:
    """Serialise what json cannot; anything turned into text is redacted again."""
    if isinstance(obj, datetime):
        return as_utc(obj).isoformat()
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, timedelta):
        return obj.total_seconds()
    if is_dataclass(obj) and not isinstance(obj, type):
        return redact(asdict(obj))
    if isinstance(obj, Path):
        return str(obj)
    return redact_text(str(obj))


def _typed(enum: type[Enum], value: Any, what: str) -> str:
    """The string value of `value` as a member of `enum`; ValueError naming the choices otherwise."""
    try:
        return enum(value).value
    except ValueError:
        choices = ", ".join(m.value for m in enum)  # type: ignore[attr-defined]
        raise ValueError(f"unknown {what} {value!r}; expected one of {choices}") from None


# seq is per run and increases across every AuditRecord of that run in this
# process (tasks run in threads); a run continued in a new process (a retry,
# a resume after approval) continues after the highest seq found on disk.
_seq_lock = threading.Lock()
_seq: dict[str, int] = {}
_first_seen: dict[str, datetime] = {}


class AuditRecord:
    """The audit trail of one runbook run.

    Create one per run (`run_id` is the Prefect flow-run id) and pass it to
    the building blocks; each method appends one entry and returns it.
    A failure to write raises `AuditError`: a runbook must not act unaudited.
    """

    def __init__(
        self,
        run_id: str,
        flow: str,
        node: str | None = None,
        directory: str | os.PathLike | None = None,
    ) -> None:
        if not run_id or not flow:
            raise ValueError("AuditRecord needs a run_id and a flow name")
        self.run_id = str(run_id)
        self.flow = flow
        self.node = node
        self.directory = audit_dir(directory)
        self.explicit_directory = directory is not None  # a directory given wins over RUNBOOKS_AUDIT_DSN

    def __repr__(self) -> str:
        return f"AuditRecord(run_id={self.run_id!r}, flow={self.flow!r}, node={self.node!r})"

    @property
    def _reads_from(self) -> Path | None:
        """Where this record's own entries are read back from: its directory if one was given, else the default
        store (RUNBOOKS_AUDIT_DSN's table when set, else the directory)."""
        return self.directory if self.explicit_directory or not postgres.dsn() else None

    @property
    def _key(self) -> str:
        return f"{self.directory.resolve()}::{self.run_id}"

    def _next_seq(self, now: datetime) -> int:
        with _seq_lock:
            key = self._key
            if key not in _seq:
                # Two day files cover a retry of a run that started yesterday.
                earlier = read_entries(
                    run_id=self.run_id, since=now - timedelta(days=1), directory=self._reads_from
                )
                _seq[key] = max((e.get("seq", 0) for e in earlier), default=0)
                _first_seen[key] = (
                    min(datetime.fromisoformat(e["ts"]) for e in earlier) if earlier else now
                )
            _seq[key] += 1
            return _seq[key]

    def write(self, kind: EntryKind | str, data: dict[str, Any]) -> dict[str, Any]:
        """Append one entry of `kind`; prefer the typed methods below."""
        kind = _typed(EntryKind, kind, "audit entry kind")
        now = _utcnow()
        entry = {
            "ts": now.isoformat(timespec="microseconds"),
            "seq": self._next_seq(now),
            "run_id": self.run_id,
            "flow": self.flow,
            "node": self.node,
            "kind": kind,
            "data": redact(data),
        }
        def make_line(prev: str) -> bytes:
            text = json.dumps({**entry, "prev": prev}, default=_json_default, ensure_ascii=False, separators=(",", ":"))
            return (text + "\n").encode("utf-8")

        try:
            if self._reads_from is None:
                line = postgres.append_chained(make_line)
            else:
                line = append_chained(self.directory, day_file(now.date(), self.directory), make_line)
        except (OSError, TypeError, ValueError, psycopg.Error) as exc:
            raise AuditError(
                f"could not write the audit entry ({kind}) for run {self.run_id} to {self.directory}: {exc}. "
                f"Fix the audit directory ({AUDIT_DIR_ENV}) or database ({postgres.AUDIT_DSN_ENV}) before running runbooks."
            ) from exc
        return json.loads(line)

    def started(self, trigger: Any, parameters: dict[str, Any], **data: Any) -> dict[str, Any]:
        """The run began: what started it (schedule, operator, alert), with what, touching what, where."""
        return self.write(EntryKind.started, _merge({"trigger": trigger, "parameters": parameters}, data))

    def plan(self, steps: Iterable[Any], **data: Any) -> dict[str, Any]:
        """What the run intends to do, before it does it (also what a dry run shows); its hash and facts."""
        return self.write(EntryKind.plan, _merge({"steps": list(steps)}, data))

    def action(
        self,
        host: str,
        command: str,
        exit_code: int | None,
        duration_s: float,
        stdout_tail: str | bytes = "",
        stderr_tail: str | bytes = "",
        *,
        action: ActionKind | str | None = None,
        **data: Any,
    ) -> dict[str, Any]:
        """One command run somewhere. exit_code None means it never finished.

        `action` says what the command was (restart, drain...) so guards can
        count typed actions; it is left out when not given.
        """
        fields: dict[str, Any] = {
            "host": host,
            "command": command,
            "exit_code": exit_code,
            "duration_s": round(float(duration_s), 4),
            "stdout_tail": tail_text(stdout_tail),
            "stderr_tail": tail_text(stderr_tail),
        }
        if action is not None:
            fields["action"] = _typed(ActionKind, action, "action kind")
        return self.write(EntryKind.action, _merge(fields, data))

    def would(
        self, system: str, target: str, description: str, /, *, action: ActionKind | str | None = None, **data: Any
    ) -> dict[str, Any]:
        """What a dry run would have done (`system` to `target`), instead of doing it."""
        fields: dict[str, Any] = {"system": system, "target": target, "description": description}
        if action is not None:
            fields["action"] = _typed(ActionKind, action, "action kind")
        return self.write(EntryKind.would, _merge(fields, data))

    def state(self, label: str, data: Any) -> dict[str, Any]:
        """A snapshot of what the run observed, labelled (before, after, ...)."""
        return self.write(EntryKind.state, {"label": label, "data": data})

    def note(self, text: str, /, **data: Any) -> dict[str, Any]:
        """Anything worth keeping that is not a command or a state (`text=` in data becomes `text_`)."""
        return self.write(EntryKind.note, _merge({"text": text}, data))

    def guard(self, name: str, reason: str, /, **data: Any) -> dict[str, Any]:
        """A safety guard decided something (lease held, budget exhausted, chain incident...)."""
        return self.write(EntryKind.guard, _merge({"name": name, "reason": reason}, data))

    def approval(self, **data: Any) -> dict[str, Any]:
        """Someone approved or refused what the run asked for (who, when, what, comment)."""
        return self.write(EntryKind.approval, data)

    def outcome(self, status: Outcome | str, detail: str, **data: Any) -> dict[str, Any]:
        """How the run ended; exactly one per run attempt (`result`: the runbook's own word for it)."""
        return self.write(EntryKind.outcome, _merge({"status": _typed(Outcome, status, "outcome"), "detail": detail}, data))

    # -- reading --------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Every entry of this run written so far (including earlier attempts seen at start)."""
        since = _first_seen.get(self._key)
        return read_entries(run_id=self.run_id, since=since, directory=self._reads_from)
