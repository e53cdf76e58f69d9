"""Save the lab's block documents: SSH identity, Slack, PagerDuty, HAProxy admin, object store, database,
with the lab's secrets (lab/credentials.py)."""

from __future__ import annotations

from pathlib import Path

from prefect.blocks.system import Secret

from blocks import (
    Database,
    HAProxyAdmin,
    ObjectStore,
    PagerDutyService,
    SlackWorkspace,
    SshIdentity,
)
from lab import topology as t
from lab.credentials import lab_secrets, write_secret_file

STUB_URL = "http://127.0.0.1:18080"
HAPROXY_ADMIN = "tcp://127.0.0.1:19999"


def write_bridge_token(lab_dir: Path, path: Path) -> None:
    """The bridge's bearer token in a mode-600 file, read by the bridge and Alertmanager."""
    write_secret_file(path, lab_secrets(lab_dir)["bridge_token"])


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
    # Backups: the bucket, its encryption key in a Secret block of its own, the MEV database.
    Secret(value=values["backup_key"]).save(t.BLOCK_BACKUP_KEY, overwrite=True)
    ObjectStore(endpoint_url=t.OBJECT_STORE_URL, bucket=t.BACKUP_BUCKET, access_key_id=values["store_access_key"],
                secret_access_key=values["store_secret_key"], encryption_key_secret=t.BLOCK_BACKUP_KEY,
                part_size_mib=8).save(t.BLOCK_STORE, overwrite=True)
    Database(host=t.HOSTS[t.DB_HOST].address, port=t.DB_PORT, database=t.DB_NAME, user=t.DB_USER,
             password=values["db_password"]).save(t.BLOCK_DB, overwrite=True)
