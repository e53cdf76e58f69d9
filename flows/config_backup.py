"""Runbook: each host's node configuration, service definitions and load-balancer configuration, daily.

What a rebuilt host needs besides the chain data, and what the seeds' 02:00
cron copied: per host

- the files the inventory names: each node's `config_paths` (erigon.toml,
  jwt secret...), the host's supervisord config when it runs nodes under
  supervisor, and a load balancer's config file on the host it lives on;
- each systemd unit as systemd runs it (`systemctl cat`: the unit and its
  drop-ins, wherever they are) and each docker container's definition
  (`docker inspect`).

Files go as one `tar --zstd` stream read over SSH, unit dumps as small
objects; everything encrypted on the worker, the manifest written last, then
read back and re-hashed before the backup counts as verified. Nothing on a
host changes, so no lease; a host that cannot be read fails alone, the
others are still backed up, and the run escalates naming it.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated

from prefect import flow
from pydantic import Field

from inventory import ServiceManagerKind, load_inventory
from tasks import objectstore, runbook, trigger
from tasks.approval import Plan
from tasks.backups.crypto import EncryptingReader
from tasks.backups.manifest import Archive, BackupFile, Manifest, StoredRef, backup_prefix, record_verification, write_manifest
from tasks.backups.store import open_store
from tasks.backups.verify import read_back
from tasks.errors import InvalidInput, RunbookError
from tasks.escalation import Kind
from tasks.guards import Resource
from tasks.runbook import Done, Failed, Runbook
from tasks.ssh import SshRunner
from tasks.ssh_stream import read_from
from tasks.vocabulary import AUTOMATION_ONLY, ActionKind, NodeName, Outcome

ARCHIVE = "config.tar.zst"


@dataclass
class HostConfig:
    """What config-backup reads from one host."""

    files: list[str] = field(default_factory=list)  # absolute paths
    units: dict[str, list[str]] = field(default_factory=dict)  # stored name -> argv that prints it


def host_configs(inventory, hosts: list[str]) -> dict[str, HostConfig]:
    out = {h: HostConfig() for h in hosts}
    services = [(n.host, n.service) for n in inventory.nodes.values()]
    services += [(h, slot.service) for h, host in inventory.hosts.items() for slot in host.standby.values()]
    for node in inventory.nodes.values():
        if node.host in out:
            out[node.host].files += node.config_paths
    for host_name, service in services:
        if host_name not in out:
            continue
        cfg, host = out[host_name], inventory.hosts[host_name]
        if service.manager is ServiceManagerKind.systemd:
            cfg.units[f"{service.name}.unit"] = ["systemctl", "cat", "--no-pager", "--", service.name]
        elif service.manager is ServiceManagerKind.docker:
            cfg.units[f"{service.name}.docker.json"] = ["docker", "inspect", "--", service.name]
        elif host.supervisor_config:
            cfg.files.append(host.supervisor_config)
    for lb in inventory.load_balancers.values():
        if lb.config and lb.config.host in out:
            out[lb.config.host].files.append(lb.config.path)
    for cfg in out.values():
        cfg.files = sorted(set(cfg.files))
    return out


def _encrypted_put(store, key, data: bytes, enc) -> StoredRef:
    reader = EncryptingReader(io.BytesIO(data), enc)
    stored = objectstore.upload(store, key, reader, metadata={"kind": "config"})
    return StoredRef(key=key, size=stored.size, sha256=stored.sha256, encrypted_with=enc.key_id,
                     plaintext_size=reader.plaintext_size, plaintext_sha256=reader.plaintext_sha256)


@dataclass
class ConfigBackup:
    hosts: list[str]
    flow = "config-backup"
    needs_approval = False

    def parameters(self) -> dict:
        return {"hosts": self.hosts}

    def resources(self) -> list[Resource]:
        return []

    def plan(self, rb: Runbook) -> Plan:
        self.store, self.key = open_store(rb.inventory)
        self.configs = host_configs(rb.inventory, self.hosts)
        return Plan([f"{h}: {len(c.files)} files ({', '.join(c.files) or 'none'}) and {len(c.units)} service "
                     f"definitions, encrypted (key {self.key.key_id}) into {self.store.bucket}/backups/config/{h}/"
                     for h, c in self.configs.items()] + ["write each host's manifest last, read it back and re-hash it"],
                    {"hosts": self.hosts})

    def act(self, rb: Runbook, plan: Plan) -> dict:
        done, failed = {}, {}
        for host_name, cfg in self.configs.items():
            rb.step(f"config-{host_name}")
            host = rb.inventory.hosts[host_name]
            try:
                with SshRunner(host, rb.ssh_identity(host.ssh_identity_block), gate=rb.gate) as ssh:
                    done[host_name] = self._one(rb, ssh, host_name, cfg)
            except RunbookError as exc:
                failed[host_name] = str(exc)[:300]
        if failed:
            raise Failed(Kind.BACKUP_FAILED, "config-backup", "config backup failed for "
                         + "; ".join(f"{h}: {why}" for h, why in failed.items()),
                         {"backed up": ", ".join(done) or "none"}, manifests=done)
        detail = f"configuration of {len(done)} hosts backed up and verified"
        raise Done(Outcome.succeeded, "verified", detail, manifests=done)

    def _one(self, rb: Runbook, ssh, host_name: str, cfg: HostConfig) -> str:
        created = datetime.now(timezone.utc)
        prefix = backup_prefix("config", host_name, created)
        if not rb.gate.allows("s3", self.store.bucket, f"upload {prefix}/", action=ActionKind.upload):
            rb.gate.verify(f"{host_name}'s configuration reads back as written")
        files, archives = [], []
        if cfg.files:
            sums = ssh.run(["sha256sum", "--", *cfg.files], check=False)
            sizes = ssh.run(["stat", "-c", "%s %n", "--", *cfg.files], check=False)
            hashed = dict(reversed(line.split(None, 1)) for line in sums.stdout.splitlines() if line.strip())
            sized = {p: int(n) for n, p in (line.split(" ", 1) for line in sizes.stdout.splitlines() if line.strip())}
            missing = [p for p in cfg.files if p not in hashed or p not in sized]
            if missing:
                raise RunbookError(f"cannot read {', '.join(missing)} ({(sums.stderr or sizes.stderr).strip()[:200]})")
            started = time.monotonic()
            with read_from(ssh, ["tar", "-C", "/", "--zstd", "-cf", "-", "--", *(p.lstrip("/") for p in cfg.files)],
                           audit_data={"step": "config-archive"}) as stream:
                reader = EncryptingReader(stream, self.key)
                stored = objectstore.upload(self.store, f"{prefix}/{ARCHIVE}", reader, metadata={"kind": "config"})
            rb.audit.action(f"s3:{self.store.bucket}", f"upload {stored.key}", 0, time.monotonic() - started,
                            action=ActionKind.upload, bytes=stored.size)
            archives.append(Archive(name=ARCHIVE, format="tar+zstd", paths=cfg.files, object=StoredRef(
                key=stored.key, size=stored.size, sha256=stored.sha256, encrypted_with=self.key.key_id,
                plaintext_size=reader.plaintext_size, plaintext_sha256=reader.plaintext_sha256)))
            files += [BackupFile(path=p.lstrip("/"), size=sized[p], sha256=hashed[p], archive=ARCHIVE) for p in cfg.files]
        for name, argv in sorted(cfg.units.items()):
            out = ssh.run(argv, check=True, audit_data={"step": "config-unit"})
            data = out.stdout.encode()
            ref = _encrypted_put(self.store, f"{prefix}/units/{name}", data, self.key)
            files.append(BackupFile(path=f"units/{name}", size=len(data), sha256=ref.plaintext_sha256, object=ref))
        manifest = Manifest(kind="config", node=host_name, host=host_name, created_at=created,
                            archives=archives, files=files)
        key = write_manifest(self.store, manifest)
        verification = read_back(self.store, manifest, {o.key for o in manifest.stored_objects()})  # all new
        record_verification(self.store, verification)
        if not verification.ok:
            raise RunbookError(f"{key} does not read back as written: {'; '.join(verification.problems)[:200]}")
        return key


@flow(name="config-backup", log_prints=True)
def config_backup(
    hosts: Annotated[list[NodeName] | None, Field(max_length=2000, description="The hosts to back up; empty: every host")] = None,
    dry_run: Annotated[bool, Field(description="Show what would be read and uploaded; upload nothing")] = False,
    trigger_event_id: AUTOMATION_ONLY = None,
) -> dict:
    """Back up each host's node configuration, service definitions and load-balancer configuration."""
    known = load_inventory().hosts
    if unknown := sorted(set(hosts or ()) - set(known)):
        raise InvalidInput(f"unknown hosts {unknown} (known: {', '.join(sorted(known))})")
    return runbook.run(ConfigBackup(sorted(hosts or known)), trigger.describe("config-backup", trigger_event_id),
                       dry_run=dry_run)
