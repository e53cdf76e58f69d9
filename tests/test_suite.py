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
