"""What the suite itself enforces, so that its green means what it says.

Each case runs a small pytest session in a subprocess, with tests/conftest.py
loaded as a plugin, and reads its exit status and summary. None needs the lab.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_pytest(tmp_path: Path, test_source: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(textwrap.dedent(test_source))
    env = {k: v for k, v in os.environ.items() if k != "RUNBOOKS_ALLOW_SKIPS"} | (env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q",
         "--rootdir", str(tmp_path), str(test_file)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


SKIPPING = """
    import pytest

    def test_runs():
        pass

    def test_needs_a_missing_binary():
        pytest.skip("frobnicator is not installed")
"""


def test_a_skipped_test_fails_the_session_and_is_named(tmp_path):
    done = run_pytest(tmp_path, SKIPPING)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED: 1 test(s) skipped" in done.stdout
    assert "test_inner.py::test_needs_a_missing_binary: frobnicator is not installed" in done.stdout
    assert "make setup" in done.stdout and "python -m lab install" in done.stdout


def test_a_module_level_skip_fails_the_session_too(tmp_path):
    done = run_pytest(tmp_path, """
        import pytest
        pytestmark = pytest.mark.skipif(True, reason="needs haproxy")

        def test_x():
            pass
    """)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SKIPPED" in done.stdout and "needs haproxy" in done.stdout


def test_skips_pass_only_when_allowed_for_local_work(tmp_path):
    done = run_pytest(tmp_path, SKIPPING, {"RUNBOOKS_ALLOW_SKIPS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not counted as a failure" in done.stdout


def test_a_session_with_no_skip_passes(tmp_path):
    done = run_pytest(tmp_path, "def test_runs():\n    pass\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped" not in done.stdout


# ---------------------------------------------------------------- a lab from another checkout


def fake_lab(tmp_path: Path, monkeypatch, record: dict | None) -> Path:
    """A LAB_DIR holding only a lab.json, as `up` writes it: no process, nothing shared touched."""
    from lab import control, topology

    root = tmp_path / "lab"
    monkeypatch.setenv(topology.LAB_DIR_ENV, str(root))
    paths = control._paths()
    root.mkdir(parents=True)
    paths.marker.write_text("rblab test\n")
    if record is not None:
        control._write_record(paths, {"schema": 1, "state": "up", "lab_dir": str(root)} | record)
    return root


def test_a_checkout_is_the_same_only_by_its_resolved_path(tmp_path):
    from lab.control import CHECKOUT, same_checkout

    assert CHECKOUT == REPO
    assert same_checkout(str(REPO), REPO)
    assert same_checkout(f"{REPO}/tests/..", REPO)
    (tmp_path / "link").symlink_to(REPO)
    assert same_checkout(str(tmp_path / "link"), REPO)
    assert not same_checkout(str(tmp_path), REPO)
    assert not same_checkout(None, REPO) and not same_checkout("", REPO)


def test_the_recorded_checkout_round_trips_through_lab_json(tmp_path, monkeypatch):
    import lab

    fake_lab(tmp_path, monkeypatch, {"checkout": str(REPO)})
    assert lab.foreign_lab() is None  # ours: reused
    fake_lab(tmp_path / "b", monkeypatch, {"checkout": "/srv/other-clone"})
    why = lab.foreign_lab()
    assert why and "/srv/other-clone" in why and "`cd /srv/other-clone && python -m lab down`" in why
    fake_lab(tmp_path / "c", monkeypatch, {})  # written by code that did not record its checkout
    assert "unknown checkout" in lab.foreign_lab()
    fake_lab(tmp_path / "d", monkeypatch, None)  # no lab.json: no lab, nothing to refuse
    assert lab.foreign_lab() is None


# Loaded by the inner session: were the refusal broken, its fixture would go on
# to start or stop a lab; this makes that a loud error that touches nothing.
NO_LAB_ACTIONS = """
import lab

def _refused(*args, **kwargs):
    raise RuntimeError("the lab fixture went on to start or stop a lab")

lab.up = lab.down = _refused
"""


def test_a_session_on_a_lab_from_another_checkout_fails_at_once(tmp_path, monkeypatch):
    root = fake_lab(tmp_path, monkeypatch, {"checkout": "/srv/other-clone"})
    (tmp_path / "conftest.py").write_text(NO_LAB_ACTIONS)
    done = run_pytest(tmp_path, "def test_uses_the_lab(lab):\n    pass\n", {"LAB_DIR": str(root)})
    assert done.returncode != 0, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "refusing the running lab" in out and "/srv/other-clone" in out and "python -m lab down" in out
    assert "1 passed" not in out
    assert sorted(p.name for p in root.iterdir()) == [".rblab", "lab.json"]  # left as it was
