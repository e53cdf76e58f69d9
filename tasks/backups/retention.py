"""Which backups to keep: grandfather-father-son retention over backup manifests.

Pure functions over manifest metadata (no I/O, no clock): the caller lists the
manifests, passes `now`, and gets a plan saying which backups stay and why,
which go, and which stored objects nothing kept refers to any more.

The windows count the way `restic forget --keep-daily/--keep-weekly/--keep-monthly`
counts them, in UTC:

- Backups of one (kind, subject) are walked newest first. `keep_daily=N` keeps
  the newest complete backup of each of the last N distinct UTC days *that have
  one*: a day without a backup does not use up the window, so a fleet that
  missed a week of backups still keeps N daily restore points.
- Weekly buckets are ISO weeks (Monday-Sunday, ISO week-numbering year), and
  monthly buckets are calendar months, counted the same way.
- Each window is applied on its own: one backup can be the daily *and* the
  weekly *and* the monthly pick, and then it is kept for all three reasons.

Two rules restic does not have, because a backup here can be unfinished or unproven:

- Only complete backups count for the windows; an incomplete one (no
  `complete` marker) is a leftover of a run that died, deletable once it is
  older than `incomplete_grace` (younger ones may still be being written).
- The newest *verified* backup of every (kind, subject) is always kept, even
  when it is older than every window: if every later backup is unverified,
  it is the one restore point known to work.

Objects are shared between backups (an Erigon `.seg` file is uploaded once and
named by every later manifest), so an object may be deleted only when every
manifest naming it is deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum

from tasks.errors import InvalidInput


class KeepReason(str, Enum):
    """Why a backup is kept (a backup may have several)."""

    daily = "daily"
    weekly = "weekly"
    monthly = "monthly"
    newest_verified = "newest-verified"
    in_progress = "in-progress"  # incomplete, but young enough to still be being written


class DeleteReason(str, Enum):
    """Why a backup may be deleted."""

    expired = "expired"  # complete, but outside every window and not the newest verified
    incomplete = "incomplete"  # never completed, and older than the grace period


@dataclass(frozen=True)
class Backup:
    """What retention reads of one backup manifest."""

    id: str
    kind: str  # e.g. "datadir", "postgres"
    subject: str  # the node or host the backup is of
    created_at: datetime  # timezone-aware
    complete: bool
    verified: bool
    objects: frozenset[str] = frozenset()  # object keys this backup references

    def __post_init__(self) -> None:
        # A naive datetime is refused, not assumed to be UTC: a manifest
        # written in local time would shift day buckets by hours and keep the
        # wrong backup without anyone noticing.
        if self.created_at.tzinfo is None or self.created_at.utcoffset() is None:
            raise InvalidInput(f"backup {self.id!r}: created_at {self.created_at.isoformat()} has no timezone; "
                               "give it in UTC (e.g. datetime(..., tzinfo=timezone.utc))")
        if self.verified and not self.complete:
            raise InvalidInput(f"backup {self.id!r} is marked verified but not complete: "
                               "only a complete backup can have been verified; fix the manifest")
        # Accept any iterable of keys (a list from JSON) but hold a frozenset.
        object.__setattr__(self, "objects", frozenset(self.objects))


@dataclass(frozen=True)
class RetentionPolicy:
    """How many restore points to keep per (kind, subject)."""

    keep_daily: int = 30
    keep_weekly: int = 8
    keep_monthly: int = 12
    incomplete_grace: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        for name in ("keep_daily", "keep_weekly", "keep_monthly"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidInput(f"{name} must be a whole number >= 0, not {value!r}")
        if self.incomplete_grace < timedelta(0):
            raise InvalidInput(f"incomplete_grace must not be negative, not {self.incomplete_grace}")


@dataclass(frozen=True)
class RetentionPlan:
    """What to keep and what to delete; every collection is sorted, so equal inputs give equal plans."""

    kept: Mapping[str, tuple[KeepReason, ...]]  # backup id -> reasons, in KeepReason order
    deleted: Mapping[str, DeleteReason]  # backup id -> reason
    deletable_objects: tuple[str, ...]  # keys named only by deleted backups
    kept_objects: frozenset[str] = field(default=frozenset(), repr=False)  # keys any kept backup names

    @property
    def deleted_ids(self) -> tuple[str, ...]:
        return tuple(self.deleted)


# The bucket each window sorts a backup into. ISO weeks: (ISO year, week), so
# the last days of December can belong to week 1 of the next year, as in restic.
_Bucketer = Callable[[datetime], object]
_WINDOWS: tuple[tuple[KeepReason, str, _Bucketer], ...] = (
    (KeepReason.daily, "keep_daily", lambda t: t.date()),
    (KeepReason.weekly, "keep_weekly", lambda t: t.isocalendar()[:2]),
    (KeepReason.monthly, "keep_monthly", lambda t: (t.year, t.month)),
)
_REASON_ORDER = {reason: i for i, reason in enumerate(KeepReason)}


def _utc(t: datetime) -> datetime:
    return t.astimezone(timezone.utc)


def _newest_first(backups: Iterable[Backup]) -> list[Backup]:
    # Ties on created_at are broken by id, so the pick never depends on input order.
    return sorted(backups, key=lambda b: (_utc(b.created_at), b.id), reverse=True)


def window_picks(complete: list[Backup], policy: RetentionPolicy) -> dict[str, set[KeepReason]]:
    """The backups the daily/weekly/monthly windows keep, for one (kind, subject).

    `complete` must be newest first. For each window, the first backup met in
    a new bucket is that bucket's newest, and is kept while the window still has
    buckets left (restic's algorithm).
    """
    picks: dict[str, set[KeepReason]] = {}
    for reason, attr, bucket_of in _WINDOWS:
        left = getattr(policy, attr)
        last = object()  # matches no bucket
        for backup in complete:
            if left == 0:
                break
            bucket = bucket_of(_utc(backup.created_at))
            if bucket != last:
                picks.setdefault(backup.id, set()).add(reason)
                last = bucket
                left -= 1
    return picks


def plan_retention(backups: Iterable[Backup], now: datetime, policy: RetentionPolicy | None = None) -> RetentionPlan:
    """Decide, for every backup given, whether it is kept (and why) or deleted (and why).

    `now` (timezone-aware) only dates the incomplete backups' grace period; the
    windows count backwards from each (kind, subject)'s newest complete backup,
    so a fleet whose backups stopped a month ago does not age its last ones out.
    """
    policy = policy or RetentionPolicy()
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidInput(f"now ({now.isoformat()}) has no timezone; pass datetime.now(timezone.utc)")
    backups = list(backups)
    seen: set[str] = set()
    for b in backups:
        if b.id in seen:
            raise InvalidInput(f"backup id {b.id!r} appears twice in the manifests: ids must be unique")
        seen.add(b.id)

    groups: dict[tuple[str, str], list[Backup]] = {}
    for b in _newest_first(backups):
        groups.setdefault((b.kind, b.subject), []).append(b)

    keep: dict[str, set[KeepReason]] = {}
    delete: dict[str, DeleteReason] = {}
    for group in groups.values():
        complete = [b for b in group if b.complete]
        for backup_id, reasons in window_picks(complete, policy).items():
            keep.setdefault(backup_id, set()).update(reasons)
        newest_verified = next((b for b in group if b.verified), None)
        if newest_verified is not None:
            keep.setdefault(newest_verified.id, set()).add(KeepReason.newest_verified)
        for b in group:
            if b.complete:
                if b.id not in keep:
                    delete[b.id] = DeleteReason.expired
            elif _utc(now) - _utc(b.created_at) > policy.incomplete_grace:
                delete[b.id] = DeleteReason.incomplete
            else:
                # Its uploader may still be running: its objects must stay.
                keep.setdefault(b.id, set()).add(KeepReason.in_progress)

    by_id = {b.id: b for b in backups}
    kept_objects = frozenset().union(*(by_id[i].objects for i in keep))
    deleted_objects = frozenset().union(*(by_id[i].objects for i in delete))
    return RetentionPlan(
        kept={i: tuple(sorted(keep[i], key=_REASON_ORDER.__getitem__)) for i in sorted(keep)},
        deleted={i: delete[i] for i in sorted(delete)},
        deletable_objects=tuple(sorted(deleted_objects - kept_objects)),
        kept_objects=kept_objects,
    )

