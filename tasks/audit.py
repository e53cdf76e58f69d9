"""The one audit path: a durable, append-only record of every runbook run.

Prefect deletes events after 7 days and its logs are not a contract, so each
run also writes its story here: what triggered it, what it planned, every
command it ran where and with what result, the state before and after, and
how it ended.

Storage is deliberately boring: JSON Lines, one file per UTC day
(`audit-YYYY-MM-DD.jsonl`) in `$RUNBOOKS_AUDIT_DIR` (default `./audit`).
Each entry is one `write()` of one line to a file opened with O_APPEND,
under an exclusive `flock`, followed by `fsync`: concurrent writers from
several processes never interleave, a crash loses at most the entry being
written, and nothing is ever rewritten. Ship the directory to WORM storage
or a log pipeline as it is.

Every entry passes through `tasks.redaction.redact` before it is written.

Entry: {ts, seq, run_id, flow, node, kind, data}; kinds: started, plan,
action, state, note, guard, outcome.

CLI:
    python -m tasks.audit show RUN_ID      # markdown story of one run
    python -m tasks.audit tail [-n 20]     # the most recent entries
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, is_dataclass
from datetime import date, datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from tasks.errors import AuditError
from tasks.redaction import redact, redact_text

AUDIT_DIR_ENV = "RUNBOOKS_AUDIT_DIR"
DEFAULT_AUDIT_DIR = "audit"
FILE_PREFIX = "audit-"
FILE_SUFFIX = ".jsonl"

KINDS = ("started", "plan", "action", "state", "note", "guard", "outcome")
Kind = Literal["started", "plan", "action", "state", "note", "guard", "outcome"]
OUTCOMES = ("succeeded", "failed", "noop", "refused", "escalated")
Outcome = Literal["succeeded", "failed", "noop", "refused", "escalated"]

# Enough of a command's output to see why it failed, small enough that a
# chatty command cannot bloat the trail.
TAIL_CHARS = 2000

log = logging.getLogger(__name__)


def audit_dir(directory: str | os.PathLike | None = None) -> Path:
    """Where audit files live: the argument, else $RUNBOOKS_AUDIT_DIR, else ./audit."""
    return Path(directory or os.environ.get(AUDIT_DIR_ENV) or DEFAULT_AUDIT_DIR)


def day_file(day: date, directory: str | os.PathLike | None = None) -> Path:
    return audit_dir(directory) / f"{FILE_PREFIX}{day.isoformat()}{FILE_SUFFIX}"


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


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _json_default(obj: Any) -> Any:
    """Serialise what json cannot; anything turned into text is redacted again."""
    if isinstance(obj, datetime):
        return _as_utc(obj).isoformat()
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


def _append_line(path: Path, line: bytes) -> None:
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

    def __repr__(self) -> str:
        return f"AuditRecord(run_id={self.run_id!r}, flow={self.flow!r}, node={self.node!r})"

    # -- writing --------------------------------------------------------------

    def _next_seq(self, now: datetime) -> int:
        with _seq_lock:
            key = f"{self.directory.resolve()}::{self.run_id}"
            if key not in _seq:
                # Two day files cover a retry of a run that started yesterday.
                earlier = read_entries(
                    run_id=self.run_id, since=now - timedelta(days=1), directory=self.directory
                )
                _seq[key] = max((e.get("seq", 0) for e in earlier), default=0)
                _first_seen[key] = (
                    min(datetime.fromisoformat(e["ts"]) for e in earlier) if earlier else now
                )
            _seq[key] += 1
            return _seq[key]

    def write(self, kind: Kind, data: dict[str, Any]) -> dict[str, Any]:
        """Append one entry of `kind`; prefer the typed methods below."""
        if kind not in KINDS:
            raise ValueError(f"unknown audit entry kind {kind!r}; expected one of {', '.join(KINDS)}")
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
        try:
            line = json.dumps(entry, default=_json_default, ensure_ascii=False, separators=(",", ":"))
            _append_line(day_file(now.date(), self.directory), (line + "\n").encode("utf-8"))
        except (OSError, TypeError, ValueError) as exc:
            raise AuditError(
                f"could not write the audit entry ({kind}) for run {self.run_id} to {self.directory}: {exc}. "
                f"Fix the audit directory ({AUDIT_DIR_ENV}) before running runbooks."
            ) from exc
        return json.loads(line)

    def started(self, trigger: Any, parameters: dict[str, Any]) -> dict[str, Any]:
        """The run began: what started it (schedule, operator, alert) and with what."""
        return self.write("started", {"trigger": trigger, "parameters": parameters})

    def plan(self, steps: Iterable[Any]) -> dict[str, Any]:
        """What the run intends to do, before it does it (also what a dry run shows)."""
        return self.write("plan", {"steps": list(steps)})

    def action(
        self,
        host: str,
        command: str,
        exit_code: int | None,
        duration_s: float,
        stdout_tail: str | bytes = "",
        stderr_tail: str | bytes = "",
        **data: Any,
    ) -> dict[str, Any]:
        """One command run somewhere. exit_code None means it never finished."""
        return self.write(
            "action",
            _merge(
                {
                    "host": host,
                    "command": command,
                    "exit_code": exit_code,
                    "duration_s": round(float(duration_s), 4),
                    "stdout_tail": tail_text(stdout_tail),
                    "stderr_tail": tail_text(stderr_tail),
                },
                data,
            ),
        )

    def state(self, label: str, data: Any) -> dict[str, Any]:
        """A snapshot of what the run observed, labelled (before, after, ...)."""
        return self.write("state", {"label": label, "data": data})

    def note(self, text: str, /, **data: Any) -> dict[str, Any]:
        """Anything worth keeping that is not a command or a state (`text=` in data becomes `text_`)."""
        return self.write("note", _merge({"text": text}, data))

    def guard(self, name: str, reason: str, /, **data: Any) -> dict[str, Any]:
        """A safety guard decided something (lease held, budget exhausted, chain incident...)."""
        return self.write("guard", _merge({"name": name, "reason": reason}, data))

    def outcome(self, status: Outcome, detail: str) -> dict[str, Any]:
        """How the run ended; exactly one per run attempt."""
        if status not in OUTCOMES:
            raise ValueError(f"unknown outcome {status!r}; expected one of {', '.join(OUTCOMES)}")
        return self.write("outcome", {"status": status, "detail": detail})

    # -- reading --------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Every entry of this run written so far (including earlier attempts seen at start)."""
        key = f"{self.directory.resolve()}::{self.run_id}"
        since = _first_seen.get(key)
        return read_entries(run_id=self.run_id, since=since, directory=self.directory)


# -- reading ------------------------------------------------------------------


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
    first_day = _as_utc(since).date() if since else None
    files = []
    for p in d.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"):
        day = _day_of(p)
        if day is not None and (first_day is None or day >= first_day):
            files.append((day, p))
    return [p for _, p in sorted(files)]


def _iter_file(path: Path, must_contain: bytes | None = None) -> Iterator[dict[str, Any]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            # Cheap pre-filter: a busy day file holds many runs, and parsing
            # every line to find one run is what makes reading slow.
            if must_contain is not None and must_contain not in raw:
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


def read_entries(
    run_id: str | None = None,
    node: str | None = None,
    kind: str | Iterable[str] | None = None,
    since: datetime | None = None,
    directory: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Entries matching every given filter, in the order they were written.

    Only the day files from `since`'s UTC day on are opened. A naive `since`
    is taken as UTC.
    """
    kinds = {kind} if isinstance(kind, str) else (set(kind) if kind is not None else None)
    since_utc = _as_utc(since) if since else None
    out = []
    needle = json.dumps(run_id, ensure_ascii=False).encode("utf-8") if run_id is not None else None
    for path in day_files(since_utc, directory):
        for e in _iter_file(path, needle):
            if run_id is not None and e.get("run_id") != run_id:
                continue
            if node is not None and e.get("node") != node:
                continue
            if kinds is not None and e.get("kind") not in kinds:
                continue
            if since_utc is not None:
                try:
                    if datetime.fromisoformat(e["ts"]) < since_utc:
                        continue
                except (KeyError, TypeError, ValueError):
                    continue
            out.append(e)
    return out


# -- rendering ----------------------------------------------------------------


def _cell(value: Any, limit: int = 120) -> str:
    """Text safe inside a markdown table cell."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "'")


def _code_block(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, default=str, ensure_ascii=False)
    return "```\n" + text.replace("```", "'''") + "\n```"


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def render_markdown(entries: list[dict[str, Any]]) -> str:
    """A readable story of one run: trigger, parameters, plan, actions, state, outcome.

    Meant for Prefect markdown artifacts and for `python -m tasks.audit show`.
    """
    if not entries:
        return "_No audit entries._\n"
    entries = sorted(entries, key=lambda e: (e.get("ts", ""), e.get("seq", 0)))
    first = entries[0]
    by_kind: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for e in entries:
        by_kind.setdefault(e.get("kind", ""), []).append(e)

    title = f"# {first.get('flow', '?')}"
    if first.get("node"):
        title += f" on `{_cell(first['node'])}`"
    lines = [title, "", f"- run: `{_cell(first.get('run_id'))}`", f"- first entry: {first.get('ts')}"]
    run_ids = {e.get("run_id") for e in entries}
    if len(run_ids) > 1:
        lines.append(f"- note: {len(run_ids)} runs are mixed in these entries")

    for e in by_kind["outcome"][-1:]:
        d = e.get("data", {})
        lines += [f"- **outcome: {str(d.get('status', '?')).upper()}** — {_cell(d.get('detail', ''), 500)}"]

    for e in by_kind["started"][:1]:
        d = e.get("data", {})
        lines += ["", "## Trigger", "", _code_block(d.get("trigger"))]
        params = d.get("parameters") or {}
        lines += ["", "## Parameters", ""]
        if isinstance(params, dict) and params:
            lines += ["| parameter | value |", "| --- | --- |"]
            lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in params.items()]
        else:
            lines.append("_none_")

    if by_kind["plan"]:
        lines += ["", "## Plan", ""]
        for i, step in enumerate(by_kind["plan"][-1].get("data", {}).get("steps", []), 1):
            lines.append(f"{i}. {_cell(step, 300)}")

    if by_kind["guard"]:
        lines += ["", "## Guards", ""]
        for e in by_kind["guard"]:
            d = e.get("data", {})
            lines.append(f"- **{_cell(d.get('name'))}**: {_cell(d.get('reason'), 300)}")

    if by_kind["action"]:
        lines += [
            "",
            "## Actions",
            "",
            "| # | time (UTC) | host | command | exit | seconds | output |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for i, e in enumerate(by_kind["action"], 1):
            d = e.get("data", {})
            code = d.get("exit_code")
            exit_text = "timeout" if code is None else str(code)
            out = d.get("stderr_tail") if code not in (0, None) and d.get("stderr_tail") else d.get("stdout_tail")
            lines.append(
                f"| {i} | {str(e.get('ts', ''))[11:23]} | {_cell(d.get('host'))} | `{_cell(d.get('command'), 160)}` "
                f"| {exit_text} | {d.get('duration_s', '')} | {_cell(out or '', 80)} |"
            )

    states = by_kind["state"]
    if states:
        lines += ["", "## State", ""]
        labels = {e["data"].get("label"): e["data"].get("data") for e in states if isinstance(e.get("data"), dict)}
        before, after = labels.get("before"), labels.get("after")
        if isinstance(before, dict) and isinstance(after, dict):
            fb, fa = _flat(before), _flat(after)
            lines += ["| field | before | after |", "| --- | --- | --- |"]
            for k in list(dict.fromkeys([*fb, *fa])):
                mark = "" if fb.get(k) == fa.get(k) else " **≠**"
                lines.append(f"| {_cell(k)} | {_cell(fb.get(k, '—'))} | {_cell(fa.get(k, '—'))}{mark} |")
            others = [e for e in states if e["data"].get("label") not in ("before", "after")]
        else:
            others = states
        for e in others:
            lines += ["", f"**{_cell(e['data'].get('label'))}** ({e.get('ts', '')[11:19]})", "", _code_block(e["data"].get("data"))]

    if by_kind["note"]:
        lines += ["", "## Notes", ""]
        for e in by_kind["note"]:
            d = dict(e.get("data", {}))
            text = d.pop("text", "")
            extra = f" `{_cell(d, 200)}`" if d else ""
            lines.append(f"- {str(e.get('ts', ''))[11:19]} {_cell(text, 300)}{extra}")

    return "\n".join(lines) + "\n"


# -- CLI ----------------------------------------------------------------------


def _format_entry(e: dict[str, Any]) -> str:
    d = e.get("data", {})
    if e.get("kind") == "action":
        summary = f"{d.get('host')} `{d.get('command')}` -> {d.get('exit_code')} ({d.get('duration_s')}s)"
    elif e.get("kind") == "outcome":
        summary = f"{d.get('status')}: {d.get('detail')}"
    else:
        summary = json.dumps(d, default=str, ensure_ascii=False)
    if len(summary) > 200:
        summary = summary[:199] + "…"
    node = f" [{e['node']}]" if e.get("node") else ""
    return f"{e.get('ts', '')[:23]} {e.get('run_id')} #{e.get('seq')} {e.get('flow')}{node} {e.get('kind')}: {summary}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.audit", description="Read the runbook audit trail.")
    parser.add_argument("--dir", help=f"audit directory (default ${AUDIT_DIR_ENV} or ./{DEFAULT_AUDIT_DIR})")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print one run as markdown")
    show.add_argument("run_id")
    show.add_argument("--days", type=int, default=None, help="only look at the last N days of files")
    tail = sub.add_parser("tail", help="print the most recent entries")
    tail.add_argument("-n", type=int, default=20)
    tail.add_argument("--run", dest="run_id")
    tail.add_argument("--node")
    tail.add_argument("--kind")
    tail.add_argument("--days", type=int, default=2, help="how many days of files to scan (default 2)")
    args = parser.parse_args(argv)

    if args.command == "show":
        since = _utcnow() - timedelta(days=args.days) if args.days else None
        entries = read_entries(run_id=args.run_id, since=since, directory=args.dir)
        if not entries:
            print(f"no audit entries for run {args.run_id} in {audit_dir(args.dir)}", file=sys.stderr)
            return 1
        sys.stdout.write(render_markdown(entries))
        return 0

    since = _utcnow() - timedelta(days=args.days)
    entries = read_entries(run_id=args.run_id, node=args.node, kind=args.kind, since=since, directory=args.dir)
    for e in entries[-args.n :] if args.n > 0 else []:
        print(_format_entry(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
