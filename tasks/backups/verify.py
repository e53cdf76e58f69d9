"""Checking the backup store: everything cheaply every day, every byte once per period.

Reading every byte of every backup every day costs as much as storing them
(store I/O, egress); reading none means bit rot is found at restore time,
the worst moment. So, as restic's `check --read-data-subset`, each run:

- checks everything cheaply: every manifest read and validated, every object
  it names found with a HEAD at the size it records. A deleted or truncated
  object is seen the day it happens;
- re-reads a rotating subset in full (`rehash`) and compares the sha256 of
  the stored bytes with the manifest's: no key is needed, and corruption that
  keeps the size is seen within `period_days`.

The rotation keeps no state of its own: when an object was last re-read is
taken from the verification records beside the manifests, whatever wrote
them (a database backup's scratch restore reads its dump back too). An
object shared by several manifests (a segment) is one object: read once,
counted checked when any record lists it. The records this module's flow
writes list in `objects_checked` only objects that matched; one that did
not is named in `problems`, so it earns no credit and stays early in the
queue.

`due_objects` is the whole policy. Objects are ordered never-checked first,
then oldest-checked, then by key (deterministic: two runs over the same
store choose the same objects). Each run takes the first ceil(n / period) of
that order: a round robin, so n objects are all read within `period` daily
runs. New objects go to the front and could push old ones back, so every
object that would be older than the period at the next daily run is taken
too, whatever the quota. The share is counted in objects, not bytes: a byte
share wraps round to an object read yesterday whenever one object is most
of the store, and reads it daily; by count each object is read once a turn.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from tasks import objectstore
from tasks.backups.manifest import Manifest, StoredRef, Verification, manifest_keys, read_manifest, read_verifications
from tasks.errors import BackupIntegrityError

METHOD = "read-data-subset"  # the records' method: proves the stored bytes, not that they restore
RUN_EVERY = timedelta(days=1)  # the deployment's schedule; see the "due" rule above


@dataclass
class Survey:
    """What the store holds, read without reading any backup's data."""

    manifests: dict[str, Manifest] = field(default_factory=dict)  # manifest key -> manifest
    unreadable: dict[str, str] = field(default_factory=dict)  # manifest key -> why it is not a backup
    objects: dict[str, StoredRef] = field(default_factory=dict)  # each distinct object once
    named_by: dict[str, list[str]] = field(default_factory=dict)  # object key -> manifest keys naming it
    conflicts: dict[str, str] = field(default_factory=dict)  # object key -> manifests disagree about it
    last_checked: dict[str, datetime] = field(default_factory=dict)
    unreadable_records: dict[str, str] = field(default_factory=dict)  # manifest key -> error (no credit given)


def survey(store, kinds: Iterable[str] | None = None) -> Survey:
    """Every manifest of `kinds` (None: all), validated, with its objects and when each was last re-read."""
    found = Survey()
    keys = [k for kind in kinds for k in manifest_keys(store, kind)] if kinds else manifest_keys(store)
    for key in sorted(set(keys)):
        try:
            manifest = read_manifest(store, key)
        except BackupIntegrityError as exc:
            found.unreadable[key] = str(exc)
            continue
        if manifest.key != key:  # a manifest copied or moved: its prefix and archives disagree
            found.unreadable[key] = f"{key} describes the backup at {manifest.key}"
            continue
        if not manifest.complete:  # write_manifest writes complete manifests only
            found.unreadable[key] = f"{key} is not marked complete: not written by a finished backup"
            continue
        found.manifests[key] = manifest
        for ref in manifest.stored_objects():
            known = found.objects.setdefault(ref.key, ref)
            if (known.size, known.sha256) != (ref.size, ref.sha256):
                found.conflicts[ref.key] = f"manifests record different size or sha256 for {ref.key}"
            found.named_by.setdefault(ref.key, []).append(key)
        try:
            records = read_verifications(store, key)
        except (BackupIntegrityError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            found.unreadable_records[key] = str(exc)[:300]
            records = []
        for obj, at in checked_times(records).items():
            found.last_checked[obj] = max(at, found.last_checked.get(obj, at))
    return found


def checked_times(records: Iterable[Verification]) -> dict[str, datetime]:
    """Object key -> the latest time any of these records says it was re-read."""
    out: dict[str, datetime] = {}
    for record in records:
        for key in record.objects_checked:
            out[key] = max(record.verified_at, out.get(key, record.verified_at))
    return out


def due_objects(objects: Iterable[StoredRef], now: datetime, period_days: int,
                last_checked: Mapping[str, datetime], budget_bytes: int | None = None) -> list[StoredRef]:
    """The objects to re-read this run, in reading order (see the module's docstring for why).

    `budget_bytes` lets a run read ahead of the rotation while its bytes stay
    within it; the rotation's own share is read whatever the budget, since a
    budget too small to finish within the period would quietly break the promise.
    """
    if period_days < 1:
        raise ValueError(f"period_days must be at least 1, not {period_days}")
    distinct = {ref.key: ref for ref in objects}
    # Never-checked ones by key: the store does not say which came first. Only a store
    # growing by its whole size every period could keep one waiting past the period.
    order = sorted(distinct.values(), key=lambda r: (r.key in last_checked, last_checked.get(r.key, now), r.key))
    quota = math.ceil(len(order) / period_days)
    # Older than the period by the next run: its last chance is this run.
    deadline = now - timedelta(days=period_days) + RUN_EVERY
    chosen, read = [], 0
    for ref in order:
        checked = last_checked.get(ref.key)
        share = len(chosen) < quota
        overdue = checked is not None and checked < deadline
        extra = budget_bytes is not None and read + ref.size <= budget_bytes
        if share or overdue or extra:
            chosen.append(ref)
            read += ref.size
    return chosen


def covered(objects: Iterable[str], now: datetime, period_days: int, last_checked: Mapping[str, datetime]) -> int:
    """How many of these objects were re-read within the last `period_days`: the rotation's progress."""
    since = now - timedelta(days=period_days)
    return sum(1 for key in set(objects) if key in last_checked and last_checked[key] > since)


def check_present(store, refs: Iterable[StoredRef]) -> dict[str, str]:
    """HEAD every object: key -> problem, for the missing ones and those of the wrong size."""
    problems = {}
    for ref in refs:
        found = objectstore.head(store, ref.key)
        if found is None:
            problems[ref.key] = "missing"
        elif found.size != ref.size:
            problems[ref.key] = f"corrupt: holds {found.size} bytes, the manifest records {ref.size}"
    return problems


class _Discard:
    """A sink for `download`: the bytes are only hashed, never kept (memory stays one chunk)."""

    def write(self, data: bytes) -> int:
        return len(data)


def rehash(store, ref: StoredRef) -> str | None:
    """Re-read the object in full and compare it with the manifest: None, "missing" or "corrupt: ...".

    A store that cannot be reached raises ObjectStoreError: that is not a
    finding about the backup, and must not be reported as one.
    """
    found = objectstore.head(store, ref.key)
    if found is None:
        return "missing"
    if found.size != ref.size:
        return f"corrupt: holds {found.size} bytes, the manifest records {ref.size}"
    read = objectstore.download(store, ref.key, _Discard())
    if read.size != ref.size:
        return f"corrupt: read {read.size} bytes, the manifest records {ref.size}"
    if read.sha256 != ref.sha256:
        return f"corrupt: sha256 {read.sha256}, the manifest records {ref.sha256}"
    return None


def still_there(store, manifest_keys: Iterable[str]) -> list[str]:
    """The manifests that still exist: one pruned while this run read it is not a broken backup."""
    return [key for key in manifest_keys if objectstore.head(store, key) is not None]


def read_back(store, manifest: Manifest, uploaded: set[str]) -> Verification:
    """The check that makes a fresh backup "verified": every object it uploaded re-read and re-hashed,
    every object it reused from earlier backups still present with its size."""
    problems = [f"{ref.key}: {problem}" for ref in manifest.stored_objects() if ref.key in uploaded
                and (problem := rehash(store, ref))]
    problems += [f"{key}: reused, {why}" for key, why in
                 check_present(store, [r for r in manifest.stored_objects() if r.key not in uploaded]).items()]
    read = sum(r.size for r in manifest.stored_objects() if r.key in uploaded)
    return Verification(manifest_key=manifest.key, verified_at=datetime.now(timezone.utc), method="read-back",
                        ok=not problems, objects_checked=sorted(uploaded), bytes_read=read, problems=problems)
