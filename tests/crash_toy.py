"""A test-only flow that holds a node lease until it is killed (tests/test_crash_detection.py)."""

from __future__ import annotations

import time

from prefect import flow

from tasks.guards import Resource, leases


@flow(name="crash-detection-toy")
def hold(name: str, seconds: float = 600) -> None:
    with leases(None, [Resource("node", name)], wait_seconds=5):
        time.sleep(seconds)
