"""No secret (SSH key, Slack token, PagerDuty routing key, bridge token, the object store's
credentials, the backup encryption key, the database password the daily report reads with) appears in any log, artifact,
event, audit record, object name or plaintext record in the backup store.

The test first drives every path that handles a secret (an escalating
recovery: SSH, Slack, PagerDuty; the bridge with right and wrong tokens),
then scans what the whole suite has left so far: Prefect's logs, artifacts
and events through its API, the audit trail, and every log and config file
the lab's services wrote.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx

import lab
from blocks import ObjectStore
from flows.daily_report import daily_report
from flows.node_recovery import node_recovery
from flows.snapshot_backup import snapshot_backup
from lab import topology
from lab.credentials import lab_secrets
from tasks import objectstore
from tests import fleet

# The secret stores themselves, and the stubs standing in for Slack and
# PagerDuty (receiving the token and routing key is their job).
NOT_SCANNED = {"secrets.json", "id_ed25519", "bridge_token", "credentials.env", "records.jsonl"}


def secret_values(lab_dir: Path) -> dict[str, str]:
    values = dict(lab_secrets(lab_dir))
    key = (lab_dir / "ssh" / "id_ed25519").read_text()
    values["ssh_private_key"] = key
    # A key leaks just as badly one line at a time.
    for i, line in enumerate(key.splitlines()):
        if len(line) >= 20 and "PRIVATE KEY" not in line:
            values[f"ssh_private_key_line_{i}"] = line
    return values


def find_leaks(text: str, secrets: dict[str, str], where: str) -> list[str]:
    return [f"{name} in {where}" for name, value in secrets.items() if value and value in text]


def lab_files(lab_dir: Path) -> list[Path]:
    """Text the lab's processes wrote: logs, configs, the audit trail, lab.json."""
    out = []
    for pattern in ("**/*.log", "**/*.out", "audit/*.jsonl", "alerting/*.yml", "**/*.conf", "lab.json"):
        out += [p for p in lab_dir.glob(pattern) if p.is_file() and p.name not in NOT_SCANNED]
    return sorted(set(out))


def prefect_pages(api: str, path: str, key: str) -> list[dict]:
    """Every record of a Prefect filter endpoint (logs, artifacts), page by page."""
    items, offset = [], 0
    while True:
        r = httpx.post(f"{api}{path}", json={"limit": 200, "offset": offset}, timeout=30)
        r.raise_for_status()
        page = r.json() if key is None else r.json()[key]
        items += page
        if len(page) < 200:
            return items
        offset += 200


def prefect_events(api: str) -> list[dict]:
    r = httpx.post(f"{api}/events/filter", json={"filter": {"occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 50},
                   timeout=30)
    r.raise_for_status()
    body = r.json()
    events = list(body["events"])
    while body.get("next_page"):
        r = httpx.get(body["next_page"], timeout=30)
        r.raise_for_status()
        body = r.json()
        events += body["events"]
    return events


def test_the_scanner_finds_a_planted_secret(tmp_path):
    secrets = {"token": "xoxb-canary-0123456789"}
    assert find_leaks("...Bearer xoxb-canary-0123456789...", secrets, "x") == ["token in x"]
    assert find_leaks("nothing here", secrets, "x") == []


def test_no_secret_reaches_any_log_artifact_event_or_audit_record(healthy_fleet, prefect_api):
    lab_dir = lab.lab_dir()
    secrets = secret_values(lab_dir)

    # Drive the paths that handle secrets: SSH (key), Slack (token), PagerDuty
    # (routing key) through an escalating recovery...
    node = "eth-a"
    binary = Path(fleet.node(node)["binary"])
    binary.unlink()
    lab.fault(node, "kill")
    fleet.wait_status(node, {"down"})
    assert node_recovery(node=node, reason="down", return_state=True).is_failed()
    fleet.restore_fleet()
    # ... and the bridge, with the right token and a wrong one carrying a secret.
    bridge = "http://127.0.0.1:19200/alerts"
    ok = httpx.post(bridge, json={"version": "4", "alerts": []},
                    headers={"Authorization": f"Bearer {secrets['bridge_token']}"}, timeout=10)
    assert ok.status_code in (200, 400)
    wrong = httpx.post(bridge, json={"version": "4", "alerts": []},
                       headers={"Authorization": f"Bearer {secrets['slack_token']}"}, timeout=10)
    assert wrong.status_code == 401
    assert secrets["slack_token"] not in wrong.text

    # ... and a backup: the store's credentials and the encryption key (the database password is driven
    # by database-backup, whose manifests are scanned below with every other object name and record).
    assert snapshot_backup("op-a")["status"] == "succeeded"
    # ... and the daily report: the database password, Slack with files, the store.
    assert daily_report()["status"] == "succeeded"

    leaks = []
    store = ObjectStore.load(topology.BLOCK_STORE)
    objects = objectstore.list_objects(store)
    assert any(o.key.endswith("/manifest.json") for o in objects)
    leaks += find_leaks("\n".join(o.key for o in objects), secrets, "object names")
    for o in objects:
        if o.key.endswith((".json", ".md")):  # manifests, verification and drill records, reports: plaintext by design
            body = io.BytesIO()
            objectstore.download(store, o.key, body)
            leaks += find_leaks(body.getvalue().decode(errors="replace"), secrets, o.key)
    files = lab_files(lab_dir)
    assert any(p.parent.name == "audit" for p in files) and any(p.suffix == ".log" for p in files)
    for path in files:
        leaks += find_leaks(path.read_text(errors="replace"), secrets, str(path.relative_to(lab_dir)))
    logs = prefect_pages(prefect_api, "/logs/filter", None)
    assert logs, "Prefect has no logs: the scan would prove nothing"
    leaks += find_leaks("\n".join(str(entry.get("message")) for entry in logs), secrets, "Prefect logs")
    artifacts = prefect_pages(prefect_api, "/artifacts/filter", None)
    assert artifacts
    leaks += find_leaks("\n".join(str(a.get("data")) + str(a.get("description")) for a in artifacts), secrets,
                        "Prefect artifacts")
    events = prefect_events(prefect_api)
    assert events
    leaks += find_leaks("\n".join(str(e) for e in events), secrets, "Prefect events")
    assert not leaks, leaks
