"""The backup manifest: what one backup holds, where each byte of it is stored, and how to check it.

A backup is complete when, and only when, its manifest exists: the manifest
is written last (`write_manifest`), after every object it names has been
found in the store with the size it recorded, and it is written with a
conditional PUT so it never replaces another one. Objects without a manifest
are leftovers of a failed run, never a backup.

Manifests are plain JSON, readable with any S3 tool and checkable without the
encryption key: every stored object carries the sha256 of its stored bytes
(ciphertext) next to its plaintext sha256. They are never rewritten;
verifications are separate records beside them, so a manifest can sit under
object lock and still collect later checks.

Key layout (relative to the ObjectStore block's prefix):

    backups/<kind>/<node>/<YYYYMMDDTHHMMSSZ>/manifest.json     the manifest
    backups/<kind>/<node>/<YYYYMMDDTHHMMSSZ>/<archive name>    mutable parts (tar | zstd [| encrypt])
    backups/<kind>/<node>/<YYYYMMDDTHHMMSSZ>/verified/<YYYYMMDDTHHMMSS.ffffffZ>.json   verification records
    segments/<key id or plain>/sha256/<ab>/<sha256>.<token>    immutable files, by content + a random token

Immutable files (Erigon's snapshot segments) are stored once, by plaintext
sha256 and encryption key, and reused by every later backup that has a file
with the same path, size and sha256 (`reusable_segments`): the earlier
manifest's StoredRef is copied, so two uploads never share a key.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks import objectstore
from tasks.errors import BackupIntegrityError, ObjectStoreError

if TYPE_CHECKING:  # pragma: no cover
    from blocks import ObjectStore

Kind = Literal["snapshot", "config", "database"]
KINDS: tuple[str, ...] = ("snapshot", "config", "database")
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)]  # the inventory's names
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024  # a million files is ~250 MB of JSON; more is not a manifest


def stamp(moment: datetime) -> str:
    """A UTC time as it appears in keys: sortable, no ':' (which some tools mangle)."""
    return moment.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)  # a typo in a reader or writer fails loudly


class StoredRef(_Model):
    """One object in the store that holds (part of) a backup."""

    key: str
    size: int = Field(ge=0, description="bytes stored (ciphertext when encrypted)")
    sha256: Sha256 = Field(description="sha256 of the stored bytes: checkable without the key")
    encrypted_with: str | None = Field(None, pattern=r"^[0-9a-f]{16}$", description="key id, None if plaintext")
    plaintext_size: int | None = Field(None, ge=0)
    plaintext_sha256: Sha256 | None = None

    @field_validator("key")
    @classmethod
    def _safe_key(cls, key: str) -> str:
        return objectstore.check_key(key)


class Archive(_Model):
    """The mutable part of a backup as one stream (tar | zstd, then encrypted)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")
    format: str = Field("tar+zstd", description="what a restore pipes the plaintext through")
    object: StoredRef
    paths: list[str] = Field(default_factory=list, description="top-level paths inside, relative to the source")


class BackupFile(_Model):
    """One file of the backup: inside an archive, or stored as its own content-addressed object."""

    path: str = Field(description="relative to the datadir (or config root)")
    size: int = Field(ge=0)
    sha256: Sha256
    object: StoredRef | None = None
    archive: str | None = None
    reused: bool = Field(False, description="the object was stored by an earlier backup")

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        parts = path.split("/")
        if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in path:
            raise ValueError(f"file path {path!r} must be relative, without '.', '..' or empty parts")
        return path

    @model_validator(mode="after")
    def _stored_somewhere(self) -> BackupFile:
        if (self.object is None) == (self.archive is None):
            raise ValueError(f"{self.path}: a file is either in an archive or its own object, exactly one")
        return self


class Source(_Model):
    """What was backed up, as it was at backup time (each field optional: not every kind has it)."""

    datadir: str | None = None
    head_number: int | None = Field(None, ge=0)
    head_hash: str | None = Field(None, pattern=r"^0x[0-9a-fA-F]{64}$")
    service_stopped: bool | None = None
    database: str | None = None


class Totals(_Model):
    files: int
    file_bytes: int
    objects: int
    stored_bytes: int
    reused_bytes: int = Field(description="stored bytes this backup did not upload (segments of earlier ones)")


class Manifest(_Model):
    format: Literal[1] = 1
    kind: Kind
    node: Name
    host: Name
    created_at: datetime
    client: str | None = None
    version: str | None = None
    source: Source = Field(default_factory=Source)
    archives: list[Archive] = Field(default_factory=list)
    files: list[BackupFile] = Field(default_factory=list)
    totals: Totals | None = None
    complete: bool = Field(False, description="set by write_manifest only, after every object was found")

    @field_validator("created_at")
    @classmethod
    def _utc(cls, moment: datetime) -> datetime:
        if moment.tzinfo is None:
            raise ValueError("created_at needs a time zone (UTC)")
        return moment.astimezone(timezone.utc)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [a.name for a in self.archives]
        if len(set(names)) != len(names):
            raise ValueError("archive names repeat")
        if missing := {f.archive for f in self.files if f.archive} - set(names):
            raise ValueError(f"files name archives that are not listed: {sorted(missing)}")
        computed = self.compute_totals()
        if self.totals is None:
            object.__setattr__(self, "totals", computed)  # frozen: set once, while validating
        elif self.totals != computed:
            raise ValueError(f"totals {self.totals} do not match the files and archives ({computed})")
        return self

    def stored_objects(self) -> list[StoredRef]:
        """Every distinct object this backup needs, archives first."""
        seen: dict[str, StoredRef] = {}
        for ref in [a.object for a in self.archives] + [f.object for f in self.files if f.object]:
            seen.setdefault(ref.key, ref)
        return list(seen.values())

    def compute_totals(self) -> Totals:
        reused = {f.object.key: f.object.size for f in self.files if f.object and f.reused}
        objects = self.stored_objects()
        return Totals(files=len(self.files), file_bytes=sum(f.size for f in self.files), objects=len(objects),
                      stored_bytes=sum(o.size for o in objects), reused_bytes=sum(reused.values()))

    @property
    def prefix(self) -> str:
        return backup_prefix(self.kind, self.node, self.created_at)

    @property
    def key(self) -> str:
        return f"{self.prefix}/{MANIFEST}"

    def archive_key(self, name: str) -> str:
        return objectstore.check_key(f"{self.prefix}/{name}")


class Verification(_Model):
    """One check of a backup, kept beside its manifest (manifests are never rewritten)."""

    manifest_key: str
    verified_at: datetime
    method: str = Field(description="e.g. stored-sha256 (objects re-read), decrypt, restore-drill")
    ok: bool
    objects_checked: list[str] = Field(default_factory=list, description="keys re-read and re-hashed")
    files_checked: int = Field(0, ge=0, description="files re-hashed after decrypting and unpacking")
    bytes_read: int = Field(0, ge=0)
    problems: list[str] = Field(default_factory=list)


# ------------------------------------------------------------------ key layout


def backup_prefix(kind: str, node: str, created_at: datetime) -> str:
    if kind not in KINDS:
        raise ValueError(f"backup kind {kind!r} is not one of {KINDS}")
    return objectstore.check_key(f"backups/{kind}/{node}/{stamp(created_at)}")


def segment_key(key_id: str | None, owner: str | None = None) -> str:
    """A new, unique key for one upload of an immutable file: `segments/<key id>/<owner>/<random token>`.

    Unique because two backups uploading the same file at once would
    otherwise write different ciphertexts (random salts) to one key, and the
    loser's manifest would record a sha256 the object no longer has. Reuse
    goes through earlier manifests' StoredRefs, never through key equality,
    so the name needs no content hash: the file is hashed as it streams, and
    naming it by its sha256 would mean reading it on the host once more first.
    `owner` (the node whose backup uploads it) is in the name so that node's
    next backup can find and abort its own half-written uploads.
    """
    return objectstore.check_key(f"segments/{key_id or 'plain'}/{owner or '_'}/{secrets.token_hex(8)}")


def verification_key(manifest_key: str, at: datetime) -> str:
    """Microseconds too: a backup's own read-back and verify-backups may check it within one second."""
    moment = f"{stamp(at).removesuffix('Z')}.{at.astimezone(timezone.utc).microsecond:06d}Z"
    return objectstore.check_key(f"{manifest_key.removesuffix('/' + MANIFEST)}/verified/{moment}.json")


# ------------------------------------------------------------------ store


def write_manifest(store: ObjectStore, manifest: Manifest) -> str:
    """The last step of a backup: check every object it names is stored as recorded, then write it complete.

    Raises ObjectStoreError naming what is missing (nothing is written then),
    and ObjectExists if a manifest is already at this key.
    """
    problems = []
    for ref in manifest.stored_objects():
        found = objectstore.head(store, ref.key)
        if found is None:
            problems.append(f"{ref.key} is missing")
        elif found.size != ref.size:
            problems.append(f"{ref.key} holds {found.size} bytes, the manifest records {ref.size}")
    if problems:
        raise ObjectStoreError(f"backup {manifest.key} is not complete, so no manifest was written: "
                               + "; ".join(problems))
    done = Manifest.model_validate(manifest.model_dump() | {"complete": True})
    body = done.model_dump_json(indent=1).encode()
    objectstore.put_bytes(store, done.key, body, if_absent=True)
    return done.key


def _read_json(store: ObjectStore, key: str) -> bytes:
    found = objectstore.head(store, key)
    if found is None:
        raise ObjectStoreError(f"{key} does not exist in bucket {store.bucket}")
    if found.size > MAX_MANIFEST_BYTES:
        raise BackupIntegrityError(f"{key} is {found.size} bytes: too large to be a manifest or record")
    out = io.BytesIO()
    objectstore.download(store, key, out)
    return out.getvalue()


def read_manifest(store: ObjectStore, key: str) -> Manifest:
    try:
        return Manifest.model_validate_json(_read_json(store, key))
    except ValidationError as exc:
        raise BackupIntegrityError(f"{key} is not a valid manifest: {exc}") from exc


def manifest_keys(store: ObjectStore, kind: str | None = None, node: str | None = None) -> list[str]:
    """Keys of the manifests of one kind and/or node, oldest first per (kind, node), without reading them."""
    if node is not None and kind is None:
        return [k for each in KINDS for k in manifest_keys(store, each, node)]
    if kind is not None and kind not in KINDS:
        raise ValueError(f"backup kind {kind!r} is not one of {KINDS}")
    where = "/".join(["backups"] + ([kind] if kind else []) + ([node] if node else []))
    return [o.key for o in objectstore.list_objects(store, where)
            if o.key.endswith("/" + MANIFEST) and o.key.count("/") == 4]


def list_manifests(store: ObjectStore, kind: str | None = None, node: str | None = None,
                   *, complete_only: bool = True) -> list[Manifest]:
    """Manifests of one kind and/or node, oldest first (keys sort by time)."""
    manifests = [read_manifest(store, k) for k in manifest_keys(store, kind, node)]
    return [m for m in manifests if m.complete or not complete_only]


def reusable_segments(manifests: Iterable[Manifest], key_id: str | None) -> dict[tuple[str, int, str], StoredRef]:
    """Objects of earlier complete backups, by (path, size, sha256), that a new backup may point to.

    Only objects encrypted with `key_id` (None: plaintext) qualify, so a
    key rotation re-uploads rather than mixing keys in one backup. Callers
    should still `head` a candidate: a cleanup may have removed it.
    """
    found: dict[tuple[str, int, str], StoredRef] = {}
    for manifest in manifests:
        if not manifest.complete:
            continue
        for f in manifest.files:
            if f.object is not None and f.object.encrypted_with == key_id:
                found[(f.path, f.size, f.sha256)] = f.object
    return found


def record_verification(store: ObjectStore, verification: Verification) -> str:
    key = verification_key(verification.manifest_key, verification.verified_at)
    objectstore.put_bytes(store, key, verification.model_dump_json(indent=1).encode(), if_absent=True)
    return key


def read_verifications(store: ObjectStore, manifest_key: str) -> list[Verification]:
    """Every recorded check of one backup, oldest first."""
    folder = manifest_key.removesuffix("/" + MANIFEST) + "/verified"
    return [Verification.model_validate_json(_read_json(store, o.key))
            for o in objectstore.list_objects(store, folder) if o.key.endswith(".json")]
