"""The lab: a small fleet of real anvil nodes on three network-namespace
"hosts" (sshd + supervisord each), reference nodes for the chain tip, HAProxy
in front, and Slack/PagerDuty stubs. Runbooks and tests run against it.

    python -m lab up | down | status [--json] | fault NODE KIND | heal NODE | install

Python API (for tests):

    import lab
    lab.up(); st = lab.status(); lab.fault("eth-b", "stall"); lab.heal("eth-b"); lab.down()
    lab.stub_records("slack"); lab.clear_stub_records()
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

from . import topology
from .control import FAULT_KINDS, LabError, LabNotUp, down, fault, foreign_lab, heal, is_up, status, up
from .install import install

__all__ = [
    "FAULT_KINDS",
    "LabError",
    "LabNotUp",
    "clear_stub_records",
    "down",
    "fault",
    "foreign_lab",
    "heal",
    "install",
    "is_up",
    "lab_dir",
    "status",
    "stub_records",
    "up",
]

_STUB = f"http://{topology.STUB_HOST}:{topology.STUB_PORT}"


def lab_dir() -> Path:
    """LAB_DIR (env), default /var/tmp/rblab."""
    return topology.lab_dir()


def stub_records(service: str | None = None) -> list[dict]:
    """Requests the Slack/PagerDuty stub has recorded, oldest first; service: 'slack' or 'pagerduty'."""
    url = f"{_STUB}/_records" + (f"?{urllib.parse.urlencode({'service': service})}" if service else "")
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def clear_stub_records() -> None:
    req = urllib.request.Request(f"{_STUB}/_records", method="DELETE")
    with urllib.request.urlopen(req, timeout=5):
        pass
