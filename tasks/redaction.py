"""One process-wide redactor for everything that leaves a runbook as text.

Secrets reach runbooks only through blocks; whoever loads a block registers
its secret values here (`register_secret`), and every writer of durable or
shared text (the audit trail, logs, artifacts, Slack) passes what it writes
through `redact`. Two rules apply:

- value rule: any registered secret inside any string becomes `***`, however
  deeply it is nested (a token pasted into a command line, an error message
  that echoes a URL with a key in it);
- key rule: the value of a mapping key that names a secret (token, password,
  secret, private_key, routing_key, authorization, ...) becomes `***` even if
  nobody registered it.

Credentials in URLs (`scheme://user:password@host`) are masked too, because
connection strings are the most common way secrets end up in error messages.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

MASK = "***"

# Shorter values would mask ordinary words and numbers all over the output;
# a real credential is never this short.
MIN_SECRET_LENGTH = 6

SENSITIVE_KEY_PARTS = (
    "token",
    "password",
    "passphrase",
    "secret",
    "private_key",
    "privatekey",
    "routing_key",
    "api_key",
    "apikey",
    "authorization",
)

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]*):(?P<pw>[^/\s@]+)@")

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # longest first, so a secret containing another is masked whole


def register_secret(value: str | SecretStr | SecretBytes | bytes | None) -> None:
    """Mask `value` in everything redacted from now on (process-wide).

    Empty and very short values are ignored: see MIN_SECRET_LENGTH. Multi-line
    values (PEM keys) are registered whole and line by line, so a fragment
    echoed by a tool is masked as well.
    """
    global _secrets
    if value is None:
        return
    if isinstance(value, (SecretStr, SecretBytes)):
        value = value.get_secret_value()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    candidates = {value.strip()}
    if "\n" in value.strip():
        # PEM armour lines ("-----BEGIN ... KEY-----") are not secret.
        candidates.update(ln.strip() for ln in value.splitlines() if not ln.strip().startswith("-----"))
    new = {c for c in candidates if len(c) >= MIN_SECRET_LENGTH}
    if not new:
        return
    with _lock:
        merged = set(_secrets) | new
        _secrets = tuple(sorted(merged, key=len, reverse=True))


def clear_secrets() -> None:
    """Forget every registered secret (tests only)."""
    global _secrets
    with _lock:
        _secrets = ()


def is_sensitive_key(key: object) -> bool:
    """True when a mapping key names a secret (case and separator insensitive)."""
    if not isinstance(key, str):
        return False
    k = key.lower().replace("-", "_")
    return any(part in k for part in SENSITIVE_KEY_PARTS)


def redact_text(text: str) -> str:
    """Mask registered secrets and URL passwords in one string."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return text


def redact(obj: Any) -> Any:
    """A copy of `obj` with secrets masked; containers are walked recursively.

    Strings, mappings, lists, tuples and sets are rebuilt; pydantic models are
    dumped to plain data first (their SecretStr fields become `***`); bytes are
    decoded. Other values (numbers, None, datetimes...) are returned as they
    are, since they cannot hold a secret as text.
    """
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, (SecretStr, SecretBytes)):
        return MASK
    if isinstance(obj, Mapping):
        return {
            k: (MASK if is_sensitive_key(k) and v not in (None, "") else redact(v)) for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact(v) for v in obj)
    if isinstance(obj, (set, frozenset)):
        return [redact(v) for v in obj]
    if isinstance(obj, bytes):
        return redact_text(obj.decode("utf-8", "replace"))
    if isinstance(obj, BaseModel):
        return redact(obj.model_dump())
    return obj
