"""The DR drills' records: one JSON object per drill under `drills/<chain>/<stamp>.json` in the backup store.

Written by the dr-drill runbook beside the backups it measured; read back by
the drill report (history, so a slower drill shows) and the daily report
(the day's drills and their RTO against the target).
"""

from __future__ import annotations

import io
import json
from datetime import datetime

from tasks import objectstore
from tasks.backups.manifest import stamp
from tasks.errors import RunbookError

RTO_TARGET_S = 30 * 60  # the seeds' target: any node restored in under 30 minutes


def drill_key(chain: str, at: datetime) -> str:
    return objectstore.check_key(f"drills/{chain}/{stamp(at)}.json")


def read_drills(store, prefix: str = "drills/", last: int | None = None) -> list[dict]:
    """Drill records under `prefix`, oldest first (keys sort by time); `last`: only the newest N."""
    keys = [o.key for o in objectstore.list_objects(store, prefix)]
    out = []
    for key in keys[-last:] if last else keys:
        try:
            body = io.BytesIO()
            objectstore.download(store, key, body)
            out.append(json.loads(body.getvalue()))
        except (ValueError, RunbookError):
            continue  # one unreadable record must not hide the rest
    return out
