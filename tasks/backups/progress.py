"""Progress of a long transfer as a Prefect progress artifact: bytes done, rate and ETA.

A 2 TB datadir takes hours to move; the operator watching the run wants to
know how far it is and when it ends. The engine calls `progress(done, total)`
often; the artifact is updated at most every `every_s` seconds, so a fast
transfer does not flood the API. Outside a flow run (tests, benchmarks) it
only keeps the numbers.
"""

from __future__ import annotations

import re
import time
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext

MiB = 1024 * 1024


class TransferProgress:
    def __init__(self, what: str, key: str, every_s: float = 2.0) -> None:
        self.what, self.every_s = what, every_s
        self.key = re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-")
        self.started = time.monotonic()
        self.done = self.total = 0
        self._last = 0.0
        self._artifact: UUID | None = None

    def describe(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 and self.total > self.done else 0.0
        return (f"{self.what}: {self.done / MiB:.0f} of {self.total / MiB:.0f} MiB, "
                f"{rate / MiB:.1f} MiB/s, ETA {eta:.0f} s")

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, max(total, done)
        now = time.monotonic()
        if now - self._last >= self.every_s or done >= total:
            self._last = now
            self._publish()

    def _publish(self) -> None:
        if FlowRunContext.get() is None:
            return
        percent = 100.0 * self.done / self.total if self.total else 100.0
        try:
            if self._artifact is None:
                self._artifact = create_progress_artifact(percent, key=self.key, description=self.describe())
            else:
                update_progress_artifact(self._artifact, percent, description=self.describe())
        except Exception:  # noqa: BLE001 - progress is for people; it must never fail a transfer
            pass
