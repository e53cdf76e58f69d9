"""Backup retention: which restore points an operator keeps after a year of nightly backups.

No lab: retention is pure functions over manifest metadata.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.backups.retention import Backup, DeleteReason, KeepReason, RetentionPolicy, plan_retention
from tasks.errors import InvalidInput

UTC = timezone.utc
NOW = datetime(2026, 12, 31, 15, 0, tzinfo=UTC)


def days(first: str, last: str) -> list[date]:
    d, end = date.fromisoformat(first), date.fromisoformat(last)
    out = []
    while d <= end:
        out.append(d)
        d += timedelta(days=1)
    return out


def nightly_id(d: date) -> str:
    return f"datadir-erigon-1-{d.isoformat()}"


# Segment files as Erigon makes them: a small file per day, merged into one
# file per month at the month's end. A backup names its own chaindata copy,
# every earlier month's merged file, and this month's day files so far: so
# the day files of a month are shared by every backup of that month.
def objects_of(d: date) -> set[str]:
    keys = {f"chaindata/{d.isoformat()}"}
    keys |= {f"seg/month/{d.year}-{m:02d}" for m in range(1, d.month)}
    keys |= {f"seg/day/{x.isoformat()}" for x in days(d.replace(day=1).isoformat(), d.isoformat())}
    return keys


def a_year_of_backups() -> list[Backup]:
    """Nightly (02:00 UTC) datadir backups of erigon-1 through 2026, as an operator's bucket would hold them:

    - June is missing (the backup host was down for the month), and so are 20-24 December;
    - verification ran on Sundays until it broke after 1 November: nothing later is verified;
    - 30 December has a second, later backup (a manual one before an upgrade);
    - two runs died without completing: one on 10 December (a leftover) and one
      that is still uploading at 14:00 today.
    """
    missing = set(days("2026-06-01", "2026-06-30")) | set(days("2026-12-20", "2026-12-24"))
    backups = []
    for d in days("2026-01-01", "2026-12-31"):
        if d in missing:
            continue
        backups.append(Backup(
            id=nightly_id(d), kind="datadir", subject="erigon-1",
            created_at=datetime(d.year, d.month, d.day, 2, 0, tzinfo=UTC), complete=True,
            verified=d.weekday() == 6 and d <= date(2026, 11, 1), objects=frozenset(objects_of(d)),
        ))
    backups.append(Backup("datadir-erigon-1-2026-12-30-manual", "datadir", "erigon-1",
                          datetime(2026, 12, 30, 14, 0, tzinfo=UTC), True, False,
                          frozenset(objects_of(date(2026, 12, 30)) | {"chaindata/2026-12-30-manual"})))
    backups.append(Backup("datadir-erigon-1-2026-12-10-partial", "datadir", "erigon-1",
                          datetime(2026, 12, 10, 12, 0, tzinfo=UTC), False, False,
                          frozenset({"partial/2026-12-10", "seg/month/2026-11"})))
    backups.append(Backup("datadir-erigon-1-2026-12-31-uploading", "datadir", "erigon-1",
                          datetime(2026, 12, 31, 14, 0, tzinfo=UTC), False, False,
                          frozenset({"partial/2026-12-31", "seg/day/2026-12-31"})))
    return backups


def test_a_year_of_nightly_backups_keeps_exactly_the_gfs_restore_points():
    plan = plan_retention(a_year_of_backups(), NOW)

    # Daily: the last 30 days that have a backup, counting back over the 20-24 December gap.
    daily_days = days("2026-11-27", "2026-12-19") + days("2026-12-25", "2026-12-31")
    assert len(daily_days) == 30
    daily = {("datadir-erigon-1-2026-12-30-manual" if d == date(2026, 12, 30) else nightly_id(d)) for d in daily_days}
    # Weekly: the newest of each of the last 8 ISO weeks (the week of 20-24 December ends on Saturday the 19th).
    weekly = {nightly_id(date.fromisoformat(d)) for d in
              ["2026-12-31", "2026-12-27", "2026-12-19", "2026-12-13", "2026-12-06", "2026-11-29", "2026-11-22", "2026-11-15"]}
    # Monthly: each month's last backup; June has none, and there is no 13th month of history, so 11.
    monthly = {nightly_id(date.fromisoformat(d)) for d in
               ["2026-12-31", "2026-11-30", "2026-10-31", "2026-09-30", "2026-08-31", "2026-07-31",
                "2026-05-31", "2026-04-30", "2026-03-31", "2026-02-28", "2026-01-31"]}
    verified = nightly_id(date(2026, 11, 1))  # a Sunday outside every window: the last restore point known to work
    uploading = "datadir-erigon-1-2026-12-31-uploading"

    assert set(plan.kept) == daily | weekly | monthly | {verified, uploading}
    assert len(plan.kept) == 30 + 2 + 9 + 1 + 1
    for backup_id, reasons in plan.kept.items():
        expected = tuple(r for r, picked in [(KeepReason.daily, backup_id in daily), (KeepReason.weekly, backup_id in weekly),
                                             (KeepReason.monthly, backup_id in monthly),
                                             (KeepReason.newest_verified, backup_id == verified),
                                             (KeepReason.in_progress, backup_id == uploading)] if picked)
        assert reasons == expected, backup_id
    assert plan.kept[nightly_id(date(2026, 12, 31))] == (KeepReason.daily, KeepReason.weekly, KeepReason.monthly)

    # Everything else goes: the earlier backup of 30 December, the rest of the year, the dead run.
    assert nightly_id(date(2026, 12, 30)) in plan.deleted
    assert plan.deleted["datadir-erigon-1-2026-12-10-partial"] is DeleteReason.incomplete
    assert len(plan.deleted) == len(a_year_of_backups()) - len(plan.kept)
    assert set(plan.deleted.values()) == {DeleteReason.expired, DeleteReason.incomplete}
    assert not set(plan.deleted) & set(plan.kept)

    # Objects: each deleted backup's own chaindata copy and the dead run's partial upload go;
    # segment files stay, because the kept month-end backups name every one of them. The
    # deleted nightly of 30 December's copy stays too: the kept manual backup of that day
    # was made on top of it and names it.
    deleted_days = {b.removeprefix("datadir-erigon-1-") for b in plan.deleted} - {"2026-12-10-partial"}
    assert set(plan.deletable_objects) == (
        {f"chaindata/{d}" for d in deleted_days} - {"chaindata/2026-12-30"} | {"partial/2026-12-10"})
    assert "chaindata/2026-12-30" in plan.kept_objects
    assert not [k for k in plan.deletable_objects if k.startswith("seg/")]
    assert "partial/2026-12-31" not in plan.deletable_objects  # still being written


def test_segment_files_go_only_when_no_kept_backup_names_them():
    # Keep three months: backups of February survive only in no window, so the
    # day files of February go, but February's merged file stays (every later
    # backup names it) and so do the day files of the months still kept.
    plan = plan_retention(a_year_of_backups(), NOW, RetentionPolicy(keep_daily=7, keep_weekly=0, keep_monthly=3))
    deletable = set(plan.deletable_objects)
    assert "seg/day/2026-02-10" in deletable
    assert "seg/month/2026-02" not in deletable
    assert "seg/day/2026-10-10" not in deletable  # named by 31 October, a monthly pick
    assert not deletable & plan.kept_objects
    # The newest verified backup (1 November) still keeps its day files of November.
    assert "seg/day/2026-11-01" not in deletable
    assert KeepReason.newest_verified in plan.kept[nightly_id(date(2026, 11, 1))]


def test_the_newest_verified_backup_is_kept_when_every_window_is_zero():
    backups = a_year_of_backups()
    plan = plan_retention(backups, NOW, RetentionPolicy(keep_daily=0, keep_weekly=0, keep_monthly=0))
    assert plan.kept == {nightly_id(date(2026, 11, 1)): (KeepReason.newest_verified,),
                         "datadir-erigon-1-2026-12-31-uploading": (KeepReason.in_progress,)}


def test_the_windows_count_per_kind_and_subject():
    def backup(i: str, kind: str, subject: str, day: int, verified: bool = False) -> Backup:
        return Backup(i, kind, subject, datetime(2026, 3, day, 3, tzinfo=UTC), True, verified, frozenset({f"{i}.tar"}))

    backups = [backup("a1", "datadir", "eth-a", 1), backup("a2", "datadir", "eth-a", 2),
               backup("b1", "datadir", "eth-b", 1, verified=True), backup("b2", "datadir", "eth-b", 2),
               backup("p1", "postgres", "eth-a", 1), backup("p2", "postgres", "eth-a", 2)]
    plan = plan_retention(backups, NOW, RetentionPolicy(keep_daily=1, keep_weekly=0, keep_monthly=0))
    assert plan.kept == {"a2": (KeepReason.daily,), "b1": (KeepReason.newest_verified,),
                         "b2": (KeepReason.daily,), "p2": (KeepReason.daily,)}
    assert plan.deleted == {"a1": DeleteReason.expired, "p1": DeleteReason.expired}
    assert plan.deletable_objects == ("a1.tar", "p1.tar")


def test_days_are_utc_days_whatever_offset_the_manifest_was_written_in():
    cest = timezone(timedelta(hours=2))
    # 01:00 on 1 March in +02:00 is 23:00 on 28 February UTC: the same UTC day as the other one.
    early = Backup("x1", "datadir", "eth-a", datetime(2026, 2, 28, 20, 0, tzinfo=UTC), True, False)
    late = Backup("x2", "datadir", "eth-a", datetime(2026, 3, 1, 1, 0, tzinfo=cest), True, False)
    plan = plan_retention([early, late], NOW, RetentionPolicy(keep_daily=2, keep_weekly=0, keep_monthly=2))
    assert plan.kept == {"x2": (KeepReason.daily, KeepReason.monthly)}
    assert plan.deleted == {"x1": DeleteReason.expired}


def test_iso_weeks_cross_the_new_year():
    # Tuesday 29 December 2026 and Friday 1 January 2027 are both in ISO week 2026-W53.
    backups = [Backup("dec29", "datadir", "eth-a", datetime(2026, 12, 29, tzinfo=UTC), True, False),
               Backup("jan01", "datadir", "eth-a", datetime(2027, 1, 1, tzinfo=UTC), True, False)]
    plan = plan_retention(backups, NOW, RetentionPolicy(keep_daily=0, keep_weekly=2, keep_monthly=0))
    assert plan.kept == {"jan01": (KeepReason.weekly,)}


def test_the_plan_does_not_depend_on_the_order_of_the_manifests():
    backups = a_year_of_backups()
    first = plan_retention(backups, NOW)
    for seed in range(3):
        shuffled = backups[:]
        random.Random(seed).shuffle(shuffled)
        assert plan_retention(shuffled, NOW) == first
    # Two backups at the same second: the pick is decided by id, not by input order.
    same = [Backup(i, "datadir", "eth-a", datetime(2026, 5, 5, tzinfo=UTC), True, False) for i in ("m", "n")]
    assert plan_retention(same, NOW).kept == plan_retention(same[::-1], NOW).kept == {
        "n": (KeepReason.daily, KeepReason.weekly, KeepReason.monthly)}


def test_bad_manifests_are_refused_before_anything_is_decided():
    with pytest.raises(InvalidInput, match="has no timezone"):
        Backup("x", "datadir", "eth-a", datetime(2026, 1, 1, 2, 0), True, False)
    with pytest.raises(InvalidInput, match="verified but not complete"):
        Backup("x", "datadir", "eth-a", datetime(2026, 1, 1, tzinfo=UTC), False, True)
    ok = Backup("x", "datadir", "eth-a", datetime(2026, 1, 1, tzinfo=UTC), True, False)
    with pytest.raises(InvalidInput, match="now .* has no timezone"):
        plan_retention([ok], datetime(2026, 12, 31))
    with pytest.raises(InvalidInput, match="appears twice"):
        plan_retention([ok, ok], NOW)
    with pytest.raises(InvalidInput, match="keep_daily"):
        RetentionPolicy(keep_daily=-1)


# ------------------------------------------------------------------ invariants on arbitrary histories
_KEYS = [f"k{i}" for i in range(12)]
_backup = st.builds(
    lambda i, subject, hours, complete, verified, objects: Backup(
        f"b{i}", "datadir", subject, datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=hours),
        complete, verified and complete, frozenset(objects)),
    st.integers(0, 10**6), st.sampled_from(["eth-a", "eth-b"]), st.integers(0, 24 * 400),
    st.booleans(), st.booleans(), st.sets(st.sampled_from(_KEYS), max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_backup, max_size=40, unique_by=lambda b: b.id),
       st.integers(0, 5), st.integers(0, 3), st.integers(0, 3))
def test_no_kept_backup_ever_loses_an_object(backups, daily, weekly, monthly):
    now = datetime(2027, 3, 1, tzinfo=UTC)
    plan = plan_retention(backups, now, RetentionPolicy(keep_daily=daily, keep_weekly=weekly, keep_monthly=monthly))
    by_id = {b.id: b for b in backups}
    assert set(plan.kept) | set(plan.deleted) == set(by_id)
    assert not set(plan.kept) & set(plan.deleted)
    kept_keys = set().union(*(by_id[i].objects for i in plan.kept))
    deleted_keys = set().union(*(by_id[i].objects for i in plan.deleted))
    assert set(plan.deletable_objects) == deleted_keys - kept_keys
    for subject in ("eth-a", "eth-b"):
        verified = [b for b in backups if b.subject == subject and b.verified]
        if verified:
            newest = max(verified, key=lambda b: (b.created_at, b.id))
            assert KeepReason.newest_verified in plan.kept[newest.id]
