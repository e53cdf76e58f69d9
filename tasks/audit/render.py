"""The markdown story of one run, for Prefect artifacts and `python -m tasks.audit show`."""

from __future__ import annotations

import json
from typing import Any

from tasks.vocabulary import EntryKind


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
    by_kind: dict[str, list[dict[str, Any]]] = {k.value: [] for k in EntryKind}
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

    if by_kind["approval"]:
        lines += ["", "## Approvals", ""]
        for e in by_kind["approval"]:
            lines.append(f"- {str(e.get('ts', ''))[11:19]} `{_cell(e.get('data', {}), 300)}`")

    if by_kind["would"]:
        # A dry run's story: what it would have done, in order, nothing of it done.
        lines += [
            "",
            "## Dry run: would do",
            "",
            "| # | time (UTC) | system | target | would | action |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for i, e in enumerate(by_kind["would"], 1):
            d = e.get("data", {})
            lines.append(
                f"| {i} | {str(e.get('ts', ''))[11:23]} | {_cell(d.get('system'))} | {_cell(d.get('target'))} "
                f"| {_cell(d.get('description'), 200)} | {_cell(d.get('action') or '')} |"
            )

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
