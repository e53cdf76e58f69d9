"""Slack notifications: what a runbook did, or why it needs a human.

`recovery_report` and `escalation` build Block Kit blocks; `post` sends
them with a plain-text fallback (what notifications and screen readers
show), and `post_with_files` also shares files (a report's charts) under the
message. Everything we post passes through `redact`, and
every piece of text that came from a node, a command or an alert is
escaped, so `<!channel>` in a log line cannot ping a whole channel and a
`<url|label>` in an error cannot disguise a link.

Slack being down must not fail a recovery: both raise `NotificationError`
and flows decide whether to carry on (they usually log and continue).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler

from tasks.errors import NotificationError
from tasks.redaction import redact, register_secret

if TYPE_CHECKING:  # pragma: no cover
    from blocks import SlackWorkspace

# Block Kit limits (https://api.slack.com/reference/block-kit/blocks).
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_FALLBACK_TEXT = 4000

OUTCOME_HEADLINES = {
    "succeeded": (":white_check_mark:", "recovered"),
    "recovered": (":white_check_mark:", "recovered"),
    "noop": (":information_source:", "needed nothing"),
    "refused": (":no_entry:", "runbook refused to act"),
    "failed": (":x:", "recovery failed"),
    "escalated": (":rotating_light:", "escalated to a human"),
}


def escape(text: Any) -> str:
    """Escape text for Slack mrkdwn: only &, < and > are special to Slack."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(text: str, limit: int = MAX_HEADER_TEXT) -> dict[str, Any]:
    return {"type": "plain_text", "text": _clip(redact(text), limit), "emoji": True}


def _mrkdwn(text: str, limit: int = MAX_SECTION_TEXT) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": _clip(text, limit)}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(text)}


def _fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {
        "type": "section",
        "fields": [_mrkdwn(f"*{escape(k)}*\n{escape(v)}", MAX_FIELD_TEXT) for k, v in pairs[:MAX_FIELDS]],
    }


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)


def _comparison(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A before -> after table in a code block, changed lines marked."""
    keys = list(dict.fromkeys([*before, *after]))
    if not keys:
        return ""
    width = min(max(len(str(k)) for k in keys), 24)
    rows = []
    for k in keys:
        b, a = _value(before.get(k, "—")), _value(after.get(k, "—"))
        mark = "*" if b != a else " "
        rows.append(f"{mark} {str(k):<{width}}  {_clip(b, 30):<30} → {_clip(a, 40)}")
    body = "\n".join(rows)
    return "```" + escape(_clip(body, MAX_SECTION_TEXT - 10)).replace("```", "'''") + "```"


def _bullets(details: list[str]) -> str:
    return "\n".join(f"• {escape(d)}" for d in details)


def _run_link(run_url: str | None) -> list[dict[str, Any]]:
    if not run_url:
        return []
    if not run_url.startswith(("http://", "https://")):
        return [{"type": "context", "elements": [_mrkdwn(f"run: {escape(run_url)}")]}]
    return [
        {
            "type": "actions",
            "elements": [
                {"type": "button", "text": _plain("Open the flow run"), "url": _clip(run_url, 3000), "action_id": "open_run"}
            ],
        }
    ]


def _finish(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return redact(blocks[:MAX_BLOCKS])


def recovery_report(
    node: str,
    outcome: str,
    before: dict[str, Any],
    after: dict[str, Any],
    run_url: str | None = None,
    details: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Blocks saying what a recovery runbook did to a node, with the state before and after.

    outcome: an audit outcome (succeeded, failed, noop, refused, escalated) or "recovered".
    """
    # Redact before escaping: a secret with & < > in it must still match.
    node, before, after, details = redact(node), redact(before or {}), redact(after or {}), redact(details or [])
    emoji, headline = OUTCOME_HEADLINES.get(outcome, (":grey_question:", outcome))
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(f"{emoji} {node}: {headline}")},
        _fields([("Node", node), ("Outcome", f"{outcome}")]),
    ]
    comparison = _comparison(before, after)
    if comparison:
        blocks.append(_section("*Before → after*\n" + comparison))
    if details:
        blocks.append(_section(_clip(_bullets(details), MAX_SECTION_TEXT)))
    blocks += _run_link(run_url)
    return _finish(blocks)


def escalation(
    node: str, reason: str, details: list[str] | None = None, run_url: str | None = None
) -> list[dict[str, Any]]:
    """Blocks saying a runbook stopped and needs a human: why, and what it saw."""
    node, reason, details = redact(node), redact(reason), redact(details or [])
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(f":rotating_light: Needs a human: {node}")},
        _section(f":rotating_light: *{escape(reason)}*"),
    ]
    if details:
        blocks.append(_section(_clip(_bullets(details), MAX_SECTION_TEXT)))
    blocks += _run_link(run_url)
    return _finish(blocks)


def _client(workspace: "SlackWorkspace") -> WebClient:
    token = workspace.token.get_secret_value() if hasattr(workspace.token, "get_secret_value") else str(workspace.token)
    register_secret(token)
    return WebClient(
        token=token,
        base_url=workspace.base_url,
        timeout=workspace.timeout_seconds,  # type: ignore[arg-type] # urllib takes a float
        # One retry on a dropped connection; no waiting out rate limits here.
        retry_handlers=[ConnectionErrorRetryHandler(max_retry_count=1)],
    )


def _call(workspace: "SlackWorkspace", what: str, call: Callable[[], Any]) -> dict[str, Any]:
    """Run one Slack call; any failure (API error, timeout, no network) becomes a NotificationError about `what`."""
    try:
        response = call()
    except SlackApiError as exc:
        error = exc.response.get("error") if exc.response is not None else None
        raise NotificationError(
            f"Slack refused {what} to {workspace.channel}: {error or exc}"
            + (" (is the bot invited to the channel?)" if error in ("not_in_channel", "channel_not_found") else "")
        ) from None
    except (SlackClientError, OSError, ValueError) as exc:
        raise NotificationError(
            f"could not reach Slack at {workspace.base_url} for {what}: {redact(str(exc))}"
        ) from None
    return dict(response.data) if isinstance(response.data, dict) else {"raw": response.data}


def post(workspace: "SlackWorkspace", text: str, blocks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Post to the workspace's channel; returns Slack's answer (channel, ts).

    Raises NotificationError on any failure (API error, timeout, no network).
    """
    client = _client(workspace)
    # The fallback text is parsed like mrkdwn too: escape it so "<!channel>" stays text.
    payload: dict[str, Any] = {"channel": workspace.channel, "text": _clip(escape(redact(text)), MAX_FALLBACK_TEXT)}
    if blocks:
        payload["blocks"] = redact(blocks[:MAX_BLOCKS])
    return _call(workspace, "the message", lambda: client.chat_postMessage(**payload))


def post_with_files(
    workspace: "SlackWorkspace", text: str, blocks: list[dict[str, Any]] | None, files: list[tuple[str, bytes, str]]
) -> dict[str, Any]:
    """Post the message, then share `files` (filename, content, title) in its thread.

    Returns Slack's answer to the message (channel, ts) with `files`: what
    files.completeUploadExternal answered (id, title per file). Names and
    titles are redacted like the message; contents are sent as given (charts
    and data files we made, not text from nodes). Raises NotificationError on
    any failure; when only the files failed, it says the message was posted
    (and its ts), so nobody posts the report again to get its files.
    """
    message = post(workspace, text, blocks)
    if not files:
        return message | {"files": []}
    # files.completeUploadExternal takes only a channel ID, and the block may hold a
    # name (#node-ops). chat.postMessage takes either and answers with the ID, so the
    # message we post anyway resolves it: no conversations.list walk (which needs the
    # channels:read and groups:read scopes, pages through every channel of a large
    # workspace under a tight rate limit and misses a private channel without
    # groups:read). The files go in the message's thread (thread_ts), which keeps
    # them with the report they belong to; the message carries the text and blocks,
    # so there is no initial_comment (which cannot carry blocks) to repeat it.
    uploads = [{"filename": redact(name), "content": content, "title": redact(title)} for name, content, title in files]
    client = _client(workspace)
    completed = _call(
        workspace,
        f"the files of the message it posted (ts {message['ts']})",
        lambda: client.files_upload_v2(channel=message["channel"], thread_ts=message["ts"], file_uploads=uploads),
    )
    return message | {"files": completed.get("files", [])}


def delete_message(workspace: "SlackWorkspace", channel: str, ts: str, file_ids: list[str]) -> None:
    """Delete a message we posted and the files we shared with it (a report being replaced).

    A message or file already gone (deleted by hand) is what we wanted: not an error."""
    client = _client(workspace)
    gone = ("message_not_found", "file_not_found", "file_deleted")
    for what, call in [(f"deleting message {ts}", lambda: client.chat_delete(channel=channel, ts=ts))] + [
            (f"deleting file {f}", lambda f=f: client.files_delete(file=f)) for f in file_ids]:
        try:
            _call(workspace, what, call)
        except NotificationError as exc:
            if not any(code in str(exc) for code in gone):
                raise
