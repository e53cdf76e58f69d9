"""Old audit days in the object store: copied once, never replaced, read back, their chain checked, and a day
changed after its export found. Against both stores of the trail (day files, PostgreSQL) and a real SeaweedFS;
the runbook itself through the frame on the lab (its last test)."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from tasks import objectstore
from tasks.audit import AuditRecord, read_entries
from tasks.audit.export import day_key, days_with_records, export_day, read_exported, verify_exported
from tasks.vocabulary import ActionKind, Outcome
from tests.postgres import postgres_server  # noqa: F401  (pytest fixture)
from tests.s3 import s3_server, store  # noqa: F401  (pytest fixtures)
from tests.test_audit import trail  # noqa: F401  (pytest fixture: both stores)

DAYS = (date(2026, 12, 4), date(2026, 12, 5))


def write_days() -> None:
    for day in DAYS:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("tasks.audit.record._utcnow", lambda day=day: datetime(day.year, day.month, day.day, 12,
                                                                               tzinfo=timezone.utc))
            a = AuditRecord(f"run-{day}", "node-recovery", node="eth-a")
            a.started(trigger={"kind": "alert"}, parameters={"node": "eth-a"})
            a.action("h1", "supervisorctl restart eth-a", 0, 0.4, action=ActionKind.restart)
            a.outcome(Outcome.succeeded, "recovered")


def test_finished_days_are_exported_once_and_read_back_as_written(trail, store):  # noqa: F811
    write_days()
    AuditRecord("today", "f").note("today is not over: not exported")
    today = datetime.now(timezone.utc).date()
    assert days_with_records(today) == list(DAYS)
    first = [export_day(store, d) for d in DAYS]
    assert [e.status for e in first] == ["exported", "exported"]
    for day in DAYS:
        since = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        assert read_exported(store, day) == read_entries(since=since, until=since.replace(hour=23, minute=59))
    assert [e.status for e in (export_day(store, d) for d in DAYS)] == ["already exported"] * 2
    report = verify_exported(store)
    assert report.ok and report.records == 6, report


def test_a_day_changed_after_its_export_is_reported_and_the_copy_kept(trail, store):  # noqa: F811
    write_days()
    exported = export_day(store, DAYS[0])
    trail.rewrite(1, trail.lines()[1].replace(b'"exit_code":0', b'"exit_code":1'))  # the restart "failed"
    again = export_day(store, DAYS[0])
    assert again.status == "CHANGED since export" and again.sha256 != exported.sha256
    assert read_exported(store, DAYS[0])[1]["data"]["exit_code"] == 0  # the store still holds what was written


def test_an_exported_day_edited_in_the_store_fails_the_chain_naming_it(trail, store):  # noqa: F811
    write_days()
    for d in DAYS:
        export_day(store, d)
    key = day_key(DAYS[0])
    lines = objectstore_lines(store, key)
    lines[1] = lines[1].replace(b'"exit_code":0', b'"exit_code":1')
    objectstore.put_bytes(store, key, b"".join(line + b"\n" for line in lines))
    report = verify_exported(store)
    assert not report.ok and any(f"{key} line 2 (run run-{DAYS[0]} seq 2" in p for p in report.problems), report


def objectstore_lines(store, key: str) -> list[bytes]:  # noqa: F811
    import io

    body = io.BytesIO()
    objectstore.download(store, key, body)
    return body.getvalue().splitlines()


@pytest.mark.lab
def test_the_daily_export_runs_through_the_frame_and_copies_yesterday(runbooks, tmp_path, monkeypatch):
    from blocks import ObjectStore
    from flows.audit_export import audit_export
    from lab import topology

    # A trail of its own that began yesterday (records are only ever appended in time order), the lab's store.
    monkeypatch.setenv("RUNBOOKS_AUDIT_DIR", str(tmp_path / "audit"))
    lab_store = ObjectStore.load(topology.BLOCK_STORE)
    yesterday = date.fromordinal(datetime.now(timezone.utc).date().toordinal() - 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tasks.audit.record._utcnow", lambda: datetime(yesterday.year, yesterday.month, yesterday.day,
                                                                  23, tzinfo=timezone.utc))
        AuditRecord("run-yesterday", "node-recovery", node="eth-b").note("late last night")
    for o in objectstore.list_objects(lab_store, day_key(yesterday)):  # an earlier session's copy of its day
        objectstore.delete(lab_store, o.key)
    dry = audit_export(dry_run=True)
    assert dry["outcome"] == "dry-run" and day_key(yesterday) in dry["detail"]
    assert audit_export()["status"] == "succeeded"
    assert any(e["run_id"] == "run-yesterday" for e in read_exported(lab_store, yesterday))
    again = audit_export()
    assert again["status"] == "succeeded" and f"{yesterday}: already exported" in again["detail"], again
