"""verify-backups without the lab: the rotation's promise, simulated run by run over a real store
(`weed mini`), and the checks that find what a store loses or rots. The flow against the lab's
Prefect server is tests/test_verify_backups_lab.py."""

from __future__ import annotations

import hashlib
import os
import random
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from flows import verify_backups as flow_module
from tasks import objectstore
from tasks.audit import AuditRecord
from tasks.backups import manifest as mf
from tasks.backups import verify
from tasks.gate import DryRunComplete, Gate
from tasks.runbook import Done, Failed
from tests import s3

s3_server, store = s3.s3_server, s3.store  # the fixtures, assigned (not imported) so linters see them used

T0 = datetime(2026, 12, 4, 5, 30, tzinfo=timezone.utc)


def ref(key: str, size: int = 100) -> mf.StoredRef:
    return mf.StoredRef(key=key, size=size, sha256=hashlib.sha256(key.encode()).hexdigest())


def put(store, key: str, data: bytes) -> mf.StoredRef:
    objectstore.put_bytes(store, key, data)
    return mf.StoredRef(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())


# One key per segment content, as a later backup reuses the StoredRef of the first upload
# (segment_key is unique per upload).
SEGMENT_KEYS: dict[str, str] = {}


def backup(store, node: str, created: datetime, segments: dict[str, bytes] = {}) -> mf.Manifest:  # noqa: B006
    """A complete backup: an archive of its own and, optionally, segment files stored by content (shared)."""
    shell = mf.Manifest(kind="database", node=node, host="h3", created_at=created)
    archive = mf.Archive(name="dump.pgc.zst", object=put(store, shell.archive_key("dump.pgc.zst"), os.urandom(300)))
    files = []
    for path, data in segments.items():
        digest = hashlib.sha256(data).hexdigest()
        files.append(mf.BackupFile(path=path, size=len(data), sha256=digest,
                                   object=put(store, SEGMENT_KEYS.setdefault(digest, mf.segment_key(None)), data)))
    manifest = mf.Manifest(kind="database", node=node, host="h3", created_at=created, archives=[archive], files=files)
    mf.write_manifest(store, manifest)
    return mf.read_manifest(store, manifest.key)


def simulate(refs: list[mf.StoredRef], days: int, period: int, arrivals=lambda day: []) -> dict[str, list[int]]:
    """Run due_objects once a day (with a few minutes' jitter), crediting what it chose; key -> days it was read."""
    rng, checked, reads = random.Random(7), {}, {}
    objects = list(refs)
    for day in range(days):
        objects += arrivals(day)
        now = T0 + timedelta(days=day, seconds=rng.randint(-300, 300))
        due = verify.due_objects(objects, now, period, checked)
        assert due == verify.due_objects(list(reversed(objects)), now, period, dict(checked))  # deterministic
        assert len(due) >= -(-len({r.key for r in objects}) // period)
        for r in due:
            checked[r.key] = now
            reads.setdefault(r.key, []).append(day)
    return reads


def longest_gap(days_read: list[int], first: int, last: int) -> int:
    marks = [first - 1] + days_read + [last + 1]
    return max(b - a for a, b in zip(marks, marks[1:])) - 1


def test_the_rotation_reads_every_object_within_the_period_and_spreads_the_work():
    refs = [ref(f"backups/database/n/{i:03d}/dump", size=100 + 37 * i) for i in range(50)]
    reads = simulate(refs, days=28, period=7)
    assert set(reads) == {r.key for r in refs}
    assert max(len(days) for days in reads.values()) <= 28 // 7 + 1  # once a turn, large or small
    for key, days in reads.items():
        assert days[0] < 7, key  # the first rotation ends on day 6
        assert longest_gap(days, days[0], 27) < 7, (key, days)  # never 7 days without a re-read
    per_day = [sum(1 for d in reads.values() if day in d) for day in range(28)]
    assert max(per_day) <= 2 * -(-50 // 7) + 2, per_day  # a share per day, not the whole store on one


def test_new_objects_go_first_without_pushing_old_ones_past_the_period():
    refs = [ref(f"old/{i:02d}") for i in range(14)]
    # Every day three new objects that sort before every old one: never-checked comes first.
    reads = simulate(refs, days=21, period=7, arrivals=lambda day: [ref(f"a-new/{day:02d}/{j}") for j in range(3)])
    for day in range(21):
        for j in range(3):
            assert reads[f"a-new/{day:02d}/{j}"][0] == day  # read the day it appeared
    for r in refs:
        assert longest_gap(reads[r.key], reads[r.key][0], 20) < 7, (r.key, reads[r.key])


def test_never_checked_first_then_oldest_then_by_key_and_the_budget_only_adds():
    objects = [ref("c"), ref("a"), ref("b"), ref("d"), ref("e"), ref("f"), ref("g")]
    checked = {"c": T0 - timedelta(days=1), "d": T0 - timedelta(days=3), "e": T0 - timedelta(days=2),
               "f": T0 - timedelta(days=3), "g": T0 - timedelta(hours=1)}
    due = verify.due_objects(objects, T0, 7, checked)
    assert [r.key for r in due] == ["a"]  # ceil(7/7)
    # period 2: a share of 4, plus every object that would be more than 2 days old at the next run.
    assert [r.key for r in verify.due_objects(objects, T0, 2, checked)] == ["a", "b", "d", "f", "e"]
    assert [r.key for r in verify.due_objects(objects, T0, 7, checked, budget_bytes=350)] == ["a", "b", "d"]
    assert [r.key for r in verify.due_objects(objects, T0, 1, checked)] == ["a", "b", "d", "f", "e", "c", "g"]
    with pytest.raises(ValueError):
        verify.due_objects(objects, T0, 0, checked)


def test_the_rotation_over_a_real_store_credits_recorded_checks_and_counts_a_shared_segment_once(store):
    segment = os.urandom(500)
    made = [backup(store, f"n{i}", T0 - timedelta(days=10 - i), {"seg/0001.seg": segment}) for i in range(6)]
    found = verify.survey(store)
    segment_key = SEGMENT_KEYS[hashlib.sha256(segment).hexdigest()]
    assert set(found.manifests) == {m.key for m in made} and not found.unreadable and not found.conflicts
    assert len(found.objects) == 7 and sorted(found.named_by[segment_key]) == sorted(m.key for m in made)
    period, seen = 3, {}
    for day in range(2 * period):
        now = T0 + timedelta(days=day)
        found = verify.survey(store)
        due = verify.due_objects(found.objects.values(), now, period, found.last_checked)
        if day == 0:
            assert not found.last_checked  # nothing was ever checked: the first share is all never-checked
        assert all(verify.rehash(store, r) is None for r in due)
        for m in made:  # what the flow records: beside each manifest, its objects re-read this run
            mine = [r.key for r in m.stored_objects() if r in due]
            if mine:
                mf.record_verification(store, mf.Verification(manifest_key=m.key, verified_at=now,
                                                              method=verify.METHOD, ok=True, objects_checked=mine))
        for r in due:
            seen.setdefault(r.key, []).append(day)
    assert set(seen) == set(found.objects)
    assert all(longest_gap(days, days[0], 2 * period - 1) < period and days[0] < period for days in seen.values())
    # The segment is one object, credited by any manifest's record, read once per turn: not six times.
    assert len(seen[segment_key]) <= 3
    latest = verify.survey(store)
    assert verify.covered(latest.objects, T0 + timedelta(days=2 * period - 1), period, latest.last_checked) == 7


def test_rehash_finds_a_corrupted_and_a_deleted_object_and_head_finds_only_what_changed_size(store):
    m = backup(store, "n1", T0, {"seg/a.seg": os.urandom(200), "seg/b.seg": os.urandom(200)})
    archive, seg_a, seg_b = m.stored_objects()
    assert [verify.rehash(store, r) for r in (archive, seg_a, seg_b)] == [None, None, None]
    with objectstore.open_object(store, archive.key) as body:
        data = bytearray(body.read())
    data[len(data) // 2] ^= 0x01  # one bit, same size
    objectstore.put_bytes(store, archive.key, bytes(data))
    objectstore.delete(store, seg_a.key)
    objectstore.put_bytes(store, seg_b.key, b"truncated")
    assert verify.rehash(store, archive).startswith("corrupt: sha256 ")
    assert verify.rehash(store, seg_a) == "missing"
    assert verify.rehash(store, seg_b) == "corrupt: holds 9 bytes, the manifest records 200"
    present = verify.check_present(store, m.stored_objects())
    assert present == {seg_a.key: "missing", seg_b.key: "corrupt: holds 9 bytes, the manifest records 200"}


def test_a_manifest_that_is_not_valid_or_not_where_it_says_is_reported_not_skipped(store):
    good = backup(store, "n1", T0)
    broken_key = mf.Manifest(kind="database", node="n2", host="h3", created_at=T0).key
    objectstore.put_bytes(store, broken_key, b'{"format": 1, "kind": "database"')
    moved_key = mf.Manifest(kind="database", node="n3", host="h3", created_at=T0).key
    objectstore.put_bytes(store, moved_key, objectstore_bytes(store, good.key))
    found = verify.survey(store)
    assert set(found.manifests) == {good.key}
    assert "is not a valid manifest" in found.unreadable[broken_key]
    assert f"describes the backup at {good.key}" in found.unreadable[moved_key]
    assert verify.survey(store, ["config"]).manifests == {}  # only the kinds asked for
    assert verify.still_there(store, [good.key, "backups/database/gone/20260101T000000Z/manifest.json"]) == [good.key]


def objectstore_bytes(store, key: str) -> bytes:
    with objectstore.open_object(store, key) as body:
        return body.read()


def procedure(store, tmp_path, monkeypatch, dry_run: bool = False, period_days: int = 1):
    """The flow's procedure with the frame's real gate and audit record, outside Prefect."""
    monkeypatch.setattr(flow_module, "open_store", lambda inventory: (store, None))
    monkeypatch.setattr(flow_module, "create_table_artifact", lambda **kw: None)
    audit = AuditRecord(run_id=f"test-{os.urandom(4).hex()}", flow="verify-backups", directory=tmp_path)
    rb = SimpleNamespace(inventory=None, audit=audit, gate=Gate(audit, dry_run), step=lambda name: None)
    p = flow_module.VerifyBackups(period_days, None)
    return p, rb, p.plan(rb)


def test_the_procedure_records_checks_fails_on_a_corrupt_object_and_writes_nothing_in_a_dry_run(store, tmp_path,
                                                                                                 monkeypatch):
    shared = os.urandom(300)
    one, two = (backup(store, f"n{i}", T0 + timedelta(hours=i), {"seg/x.seg": shared}) for i in (1, 2))
    p, rb, plan = procedure(store, tmp_path, monkeypatch)
    with pytest.raises(Done) as done:
        p.act(rb, plan)
    assert done.value.status.value == "succeeded" and done.value.data["objects"] == 3
    assert done.value.data["objects_read"] == 3 and done.value.data["covered"] == 3
    [record] = mf.read_verifications(store, one.key)
    assert record.ok and record.method == verify.METHOD and len(record.objects_checked) == 2

    archive = two.archives[0].object
    data = bytearray(objectstore_bytes(store, archive.key))
    data[0] ^= 0xFF
    objectstore.put_bytes(store, archive.key, bytes(data))
    before = objectstore.list_objects(store, "backups/")
    p, rb, plan = procedure(store, tmp_path, monkeypatch, dry_run=True)
    with pytest.raises(DryRunComplete):
        p.act(rb, plan)
    assert objectstore.list_objects(store, "backups/") == before  # read everything, wrote nothing
    assert any(two.key in w and "1 problems" in w for w in rb.gate.would_do), rb.gate.would_do

    p, rb, plan = procedure(store, tmp_path, monkeypatch)
    p.now += timedelta(seconds=1)  # a record per manifest per second: the records above are this second's
    with pytest.raises(Failed) as failed:
        p.act(rb, plan)
    assert failed.value.kind == "backup-failed"
    assert failed.value.data["manifests"] == [two.key] and archive.key in failed.value.data["objects"]
    bad = [v for v in mf.read_verifications(store, two.key) if not v.ok]
    assert len(bad) == 1 and archive.key not in bad[0].objects_checked and archive.key in bad[0].problems[0]
    assert all(v.ok for v in mf.read_verifications(store, one.key))  # the shared segment is fine
