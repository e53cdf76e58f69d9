"""Shared fixtures: the lab (up once per session) and a Prefect server with every
deployment registered, shared by every test that needs them.

The environment is set at import time, before Prefect reads its settings, so
flows run in-process by tests talk to the lab's Prefect server and read the
lab's inventory and audit directory, exactly as flows run by the worker do.
"""

from __future__ import annotations

import os

import pytest

import lab as lab_api
from lab import services, topology

for _key, _value in services.runbook_env(topology.Paths(topology.lab_dir())).items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def lab() -> dict:
    """The lab's status dict. Reuses a lab that is already up (and leaves it up);
    otherwise brings one up for the session and takes it down at the end."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, supervisord, sshd)")
    was_up = lab_api.is_up()
    if not was_up:
        try:
            lab_api.up(log=lambda *_: None)
        except Exception:
            lab_api.down(log=lambda *_: None)
            raise
    try:
        yield lab_api.status()
    finally:
        if not was_up:
            lab_api.down(log=lambda *_: None)


@pytest.fixture(scope="session")
def prefect_api(runbooks) -> str:
    """The lab's Prefect server API URL (ends in /api)."""
    return os.environ["PREFECT_API_URL"].rstrip("/")


@pytest.fixture(scope="session")
def runbooks(lab) -> dict:
    """The lab plus its Prefect server ready to run runbooks: blocks saved,
    every deployment registered, and automation switched off so that only the
    test at hand acts on the fleet (the end-to-end tests switch it on)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from deployments import register
    from lab.blocks import save_lab_blocks
    from tests import fleet

    save_lab_blocks(lab_api.lab_dir())
    register.main()
    fleet.set_automation(False)
    # Sync flow runs wait ~1 s for their heartbeat thread; no env var turns it off.
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield lab


@pytest.fixture
def healthy_fleet(runbooks):
    """Every node healthy and in rotation before and after the test."""
    from tests import fleet

    fleet.restore_fleet()
    lab_api.clear_stub_records()
    yield runbooks
    fleet.restore_fleet()


@pytest.fixture
def audit_dir(tmp_path, monkeypatch):
    """An audit trail of the test's own: what guards count from starts empty."""
    d = tmp_path / "audit"
    monkeypatch.setenv("RUNBOOKS_AUDIT_DIR", str(d))
    return d


@pytest.fixture
def anvils(tmp_path):
    """`anvils(*args, block_time=None)` starts a real anvil node on a loopback
    port (not the lab's); every one started is stopped by PID afterwards."""
    from tests.processes import Anvil

    started: list[Anvil] = []

    def start(*args: str, block_time: int | None = None) -> Anvil:
        started.append(Anvil(f"anvil-{len(started)}", tmp_path, *args, block_time=block_time))
        return started[-1]

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def stubs(tmp_path):
    """The lab's Slack and PagerDuty stand-ins (lab/stubs.py), in-process on a
    free loopback port and recording to a file of the test's own; tests set
    its fault knobs (slack_errors, pagerduty_failures, delay_seconds)."""
    from lab.stubs import Stubs
    from tasks.redaction import clear_secrets

    server = Stubs.start(tmp_path / "stub-records.jsonl")
    yield server
    server.stop()
    clear_secrets()  # the blocks under test registered their tokens as secrets
