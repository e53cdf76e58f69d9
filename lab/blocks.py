"""Save the lab's block documents: the SSH identity, Slack and HAProxy admin.

Secrets for the lab are made up here once per lab (random, so a test can scan
every log, artifact, event and audit record for them) and kept in
$LAB_DIR/secrets.json, mode 600.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from blocks import HAProxyAdmin, PagerDutyService, SlackWorkspace, SshIdentity

STUB_URL = "http://127.0.0.1:18080"
HAPROXY_ADMIN = "tcp://127.0.0.1:19999"


def lab_secrets(lab_dir: Path) -> dict[str, str]:
    path = lab_dir / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    values = {
        "slack_token": "xoxb-lab-" + secrets.token_hex(16),
        "pagerduty_routing_key": "R0LAB" + secrets.token_hex(14),
        "bridge_token": "brg-" + secrets.token_hex(20),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(values, f)
    return values


def write_bridge_token(lab_dir: Path, path: Path) -> None:
    """The bridge's bearer token in a mode-600 file, read by the bridge and Alertmanager."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(lab_secrets(lab_dir)["bridge_token"])


def save_lab_blocks(lab_dir: Path) -> None:
    values = lab_secrets(lab_dir)
    SshIdentity(
        private_key=(lab_dir / "ssh" / "id_ed25519").read_text(),
        known_hosts=(lab_dir / "ssh" / "known_hosts").read_text(),
    ).save("lab-ssh", overwrite=True)
    SlackWorkspace(token=values["slack_token"], channel="#node-ops", base_url=f"{STUB_URL}/api/").save(
        "lab-slack", overwrite=True
    )
    HAProxyAdmin(address=HAPROXY_ADMIN).save("lab-haproxy", overwrite=True)
    PagerDutyService(routing_key=values["pagerduty_routing_key"], events_url=f"{STUB_URL}/v2/enqueue").save(
        "lab-pagerduty", overwrite=True
    )
