"""The lab's made-up secrets: created once per lab (random, so a test can scan every log, artifact, event and
audit record for them), kept in $LAB_DIR/secrets.json, mode 600.

Standard library only: runbook_env() reads the HA shape's API login from here, and a caller sets that
environment before it imports Prefect (whose settings are read once, at import).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def _new_secrets() -> dict[str, str]:
    return {
        "slack_token": "xoxb-lab-" + secrets.token_hex(16),
        "pagerduty_routing_key": "R0LAB" + secrets.token_hex(14),
        "bridge_token": "brg-" + secrets.token_hex(20),
        "store_access_key": "AKLAB" + secrets.token_hex(8).upper(),
        "store_secret_key": "sk-lab-" + secrets.token_hex(20),
        "backup_key": secrets.token_hex(32),  # AES-256, 64 hex digits
        "db_password": "pw-lab-" + secrets.token_hex(16),
        "prefect_api_password": "pf-lab-" + secrets.token_hex(16),  # the HA shape's API login (user runbooks)
    }


def lab_secrets(lab_dir: Path) -> dict[str, str]:
    path = lab_dir / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    values = _new_secrets()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(values, f)
    return values


def write_secret_file(path: Path, text: str) -> None:
    """A mode-600 file holding a secret, for a program that reads it at start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
