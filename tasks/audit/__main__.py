"""Read the audit trail from a shell.

    python -m tasks.audit show RUN_ID      # markdown story of one run
    python -m tasks.audit tail [-n 20]     # the most recent entries
    python -m tasks.audit verify           # the hash chain: exit 1 naming any edited or removed record
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

from tasks.audit import postgres
from tasks.audit.chain import verify
from tasks.audit.files import AUDIT_DIR_ENV, DEFAULT_AUDIT_DIR, audit_dir
from tasks.audit.query import read_entries
from tasks.audit.render import render_markdown


def _format_entry(e: dict[str, Any]) -> str:
    d = e.get("data", {})
    if e.get("kind") == "action":
        summary = f"{d.get('host')} `{d.get('command')}` -> {d.get('exit_code')} ({d.get('duration_s')}s)"
    elif e.get("kind") == "would":
        summary = f"would: {d.get('system')} {d.get('target')}: {d.get('description')}"
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
    sub.add_parser("verify", help="check the hash chain of the whole trail; exit 1 naming what was changed")
    args = parser.parse_args(argv)

    if args.command == "verify":
        where = "the audit_records table" if postgres.dsn() and not args.dir else audit_dir(args.dir)
        report = postgres.verify() if postgres.dsn() and not args.dir else verify(audit_dir(args.dir))
        for line in report.notes:
            print(f"note: {line}")
        for line in report.problems:
            print(f"TAMPERED: {line}")
        print(f"{report.records} chained records checked in {where}"
              + (f", {report.unchained} from before chaining (not checkable)" if report.unchained else "")
              + (": the chain holds" if report.ok else f": {len(report.problems)} problem(s)"))
        return 0 if report.ok else 1

    if args.command == "show":
        since = datetime.now(timezone.utc) - timedelta(days=args.days) if args.days else None
        entries = read_entries(run_id=args.run_id, since=since, directory=args.dir)
        if not entries:
            print(f"no audit entries for run {args.run_id} in {audit_dir(args.dir)}", file=sys.stderr)
            return 1
        sys.stdout.write(render_markdown(entries))
        return 0

    since = datetime.now(timezone.utc) - timedelta(days=args.days)
    entries = read_entries(run_id=args.run_id, node=args.node, kind=args.kind, since=since, directory=args.dir)
    for e in entries[-args.n :] if args.n > 0 else []:
        print(_format_entry(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
