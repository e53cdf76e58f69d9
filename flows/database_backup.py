"""Runbook: back up a database, and prove the backup restores to the same data.

The seeds' cron line was `pg_dump | gzip` to S3 with 30-day retention, never
restored. Here, nightly (prefect.yaml):

1. dump: `pg_dump -Fc` in an exported snapshot, zstd, AES-256-GCM (the key
   from the store's Secret block), streamed into one object; the source's
   row counts and checksums taken in the same snapshot;
2. manifest: written last, after the object is found as recorded, so an
   interrupted run leaves no backup that looks complete;
3. verify: the object read back (its sha256 checked, every chunk
   authenticated), restored into a scratch database on the same server, its
   fingerprints compared table by table with the source's; the scratch
   database dropped; the verification recorded beside the manifest. A backup
   counts as verified only after this.

Nothing on a node changes, so no lease: the deployment runs one at a time
(prefect.yaml). Uploads pass through the run's gate, so a dry run reads the
database's size and writes nothing to the bucket.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated

from prefect import flow
from pydantic import Field

from blocks import Database
from inventory import load_inventory
from tasks import runbook, trigger
from tasks.approval import Plan
from tasks.backups.manifest import Archive, Manifest, StoredRef, Verification, record_verification, write_manifest
from tasks.backups.store import open_store
from tasks.database import as_records, dump_to_store, restore_fingerprints
from tasks.errors import InvalidInput
from tasks.escalation import Kind
from tasks.guards import Resource
from tasks.redaction import register_secret
from tasks.runbook import Done, Failed, Runbook
from tasks.vocabulary import AUTOMATION_ONLY, ActionKind, Outcome

DatabaseName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
                                    description="A database of the inventory's `backups.databases`")]


@dataclass
class DatabaseBackup:
    database: str
    flow = "database-backup"
    needs_approval = False

    def parameters(self) -> dict:
        return {"database": self.database}

    def resources(self) -> list[Resource]:
        return []

    def _block(self, rb: Runbook) -> Database:
        ref = rb.inventory.backups.databases[self.database]  # known: checked before the run opened
        db = Database.load(ref.block)
        register_secret(db.password.get_secret_value())
        self.host = ref.host or "db"
        return db

    def plan(self, rb: Runbook) -> Plan:
        self.db = self._block(rb)
        self.store, self.key = open_store(rb.inventory)
        self.created = datetime.now(timezone.utc)
        self.manifest_key = Manifest(kind="database", node=self.database, host=self.host, created_at=self.created).key
        where = f"{self.store.bucket}/{self.manifest_key.rsplit('/', 1)[0]}"
        return Plan([
            f"dump {self.db.database} on {self.db.host}:{self.db.port} (pg_dump -Fc, one exported snapshot), "
            f"compress and encrypt it (key {self.key.key_id}) into {where}",
            "write the manifest once the object is stored as recorded",
            "restore it into a scratch database, compare every table's rows and checksum with the source, drop it",
            "record the verification beside the manifest",
        ], {"database": f"{self.db.host}:{self.db.port}/{self.db.database}", "store": where})

    def act(self, rb: Runbook, plan: Plan) -> dict:
        archive_key = f"{self.manifest_key.rsplit('/', 1)[0]}/dump.pgc.zst"
        rb.step("dump")
        if not rb.gate.allows("s3", self.store.bucket, f"upload {archive_key}", action=ActionKind.upload):
            rb.gate.verify("the restore of the dump equals the source")
        started = time.monotonic()
        dump = dump_to_store(self.db, self.store, archive_key, self.key)
        rb.audit.action(f"s3:{self.store.bucket}", f"upload {archive_key}", 0, time.monotonic() - started,
                        action=ActionKind.upload, bytes=dump.object.size, sha256=dump.object.sha256)
        rb.audit.state("source", {"snapshot": dump.snapshot, "tables": as_records(dump.fingerprints)})

        rb.step("manifest")
        manifest = Manifest(
            kind="database", node=self.database, host=self.host, created_at=self.created,
            source={"database": self.db.database},
            archives=[Archive(name="dump.pgc.zst", format="pg_dump-custom+zstd", object=StoredRef(
                key=archive_key, size=dump.object.size, sha256=dump.object.sha256, encrypted_with=self.key.key_id,
                plaintext_size=dump.plaintext_size, plaintext_sha256=dump.plaintext_sha256))],
        )
        rb.gate.allows("s3", self.store.bucket, f"upload {manifest.key}", action=ActionKind.upload)
        started = time.monotonic()
        key = write_manifest(self.store, manifest)
        rb.audit.action(f"s3:{self.store.bucket}", f"upload {key}", 0, time.monotonic() - started,
                        action=ActionKind.upload)

        rb.step("verify")
        restored, read = restore_fingerprints(self.db, self.store, archive_key, self.key, dump.object.sha256)
        problems = [f"{table}: source {f}, restored {restored.get(table, 'missing')}"
                    for table, f in dump.fingerprints.items() if restored.get(table) != f]
        problems += [f"{table}: in the restore, not in the source" for table in set(restored) - set(dump.fingerprints)]
        verification = Verification(manifest_key=key, verified_at=datetime.now(timezone.utc), method="restore-scratch",
                                    ok=not problems, objects_checked=[archive_key], bytes_read=read, problems=problems)
        if rb.gate.allows("s3", self.store.bucket, f"record the verification of {key}", action=ActionKind.upload):
            record_verification(self.store, verification)
        rb.audit.state("restored", {"tables": as_records(restored)})
        rows = sum(f.rows for f in dump.fingerprints.values())
        if problems:
            raise Failed(Kind.BACKUP_FAILED, self.database,
                         f"backup of {self.database} does not restore to the same data: {'; '.join(problems)[:400]}",
                         {"manifest": key}, manifest=key)
        detail = (f"{self.database}: {len(dump.fingerprints)} tables, {rows} rows, {dump.object.size} bytes stored, "
                  f"restored and verified ({key})")
        rb.notify(f"database backup verified: {detail}", [])
        raise Done(Outcome.succeeded, "verified", detail, manifest=key, bytes=dump.object.size, rows=rows)


@flow(name="database-backup", log_prints=True)
def database_backup(
    database: DatabaseName = "mev",
    dry_run: Annotated[bool, Field(description="Plan and show what would be uploaded; write nothing")] = False,
    trigger_event_id: AUTOMATION_ONLY = None,
) -> dict:
    """Dump a database to the backup store and prove the dump restores to the same data."""
    known = load_inventory().backups.databases
    if database not in known:  # a typo is refused before anything runs, not escalated as a failure
        raise InvalidInput(f"database {database!r} is not in the inventory's backups.databases "
                           f"(known: {', '.join(sorted(known)) or 'none'})")
    return runbook.run(DatabaseBackup(database), trigger.describe("database-backup", trigger_event_id), dry_run=dry_run)
