"""Shared fixtures. `lab`: the running lab (up once per session), as `lab.status()`."""

from __future__ import annotations

import os

import pytest

import lab as lab_api


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
