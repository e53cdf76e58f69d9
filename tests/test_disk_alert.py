"""A lab disk filled for real: the exporter's disk facts show it and the shipped DiskFilling rule
fires for every node on that filesystem, and for no other."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import lab
from lab import topology as t
from tests import fleet

pytestmark = pytest.mark.lab
EXPORTER = f"http://127.0.0.1:{t.EXPORTER_PORT}/metrics"
PROMETHEUS_ALERTS = f"http://127.0.0.1:{t.PROMETHEUS_PORT}/api/v1/alerts"


def disk_ratio(node: str) -> float | None:
    values = {}
    for family in text_string_to_metric_families(httpx.get(EXPORTER, timeout=5).text):
        for s in family.samples:
            if s.labels.get("node") == node and s.name in ("runbooks_node_fs_used_bytes", "runbooks_node_fs_size_bytes"):
                values[s.name] = s.value
    if len(values) < 2:
        return None
    return values["runbooks_node_fs_used_bytes"] / values["runbooks_node_fs_size_bytes"]


def firing_disk_alerts() -> set[str]:
    alerts = httpx.get(PROMETHEUS_ALERTS, timeout=5).json()["data"]["alerts"]
    return {a["labels"]["node"] for a in alerts if a["labels"]["alertname"] == "DiskFilling" and a["state"] == "firing"}


def test_a_filled_disk_raises_disk_filling_for_the_nodes_on_that_filesystem_only(healthy_fleet):
    on_h1 = {name for name, n in t.NODES.items() if n.host == "h1"}
    assert "eth-a" in on_h1 and len(on_h1) < len(t.NODES)
    assert fleet.wait_for(lambda: disk_ratio("eth-a") is not None, 15, what="eth-a's disk facts")
    assert disk_ratio("eth-a") < 0.5 and not firing_disk_alerts()
    lab.fault("eth-a", "fill-disk", 85)
    try:
        fleet.wait_for(lambda: (disk_ratio("eth-a") or 0) >= 0.84, 15, what="the exporter to see 85%")
        fleet.wait_for(lambda: firing_disk_alerts() == on_h1, 90, what=f"DiskFilling for {sorted(on_h1)}")
    finally:
        lab.heal("eth-a")
    fleet.wait_for(lambda: (disk_ratio("eth-a") or 1) < 0.5, 15, what="the exporter to see the space freed")
    fleet.wait_for(lambda: not firing_disk_alerts(), 30, what="DiskFilling to resolve")
