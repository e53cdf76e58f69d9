"""The exporter's disk facts: one SSH command per host reads each datadir's filesystem and size."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from deployments.disk_facts import DiskFacts, DiskSample, host_command, parse_host_output
from tasks.errors import InvalidInput
from tests import sshd as _sshd
from tests.sshd import requires_sshd, runner

sshd, audit = _sshd.sshd, _sshd.audit  # the fixtures, by name
MiB = 1024 * 1024


@pytest.fixture
def datadirs():
    root = Path(tempfile.mkdtemp(prefix="rb-diskfacts-", dir="/tmp"))
    root.chmod(0o755)
    dirs = []
    for name, size in (("a", 3 * MiB), ("b", 1 * MiB)):
        d = root / name
        (d / "snapshots").mkdir(parents=True)
        (d / "snapshots" / "x.seg").write_bytes(os.urandom(size))
        os.chmod(d, 0o755)
        dirs.append(str(d))
    yield dirs
    shutil.rmtree(root, ignore_errors=True)


@requires_sshd
def test_one_command_per_host_gives_each_datadirs_filesystem_and_size(sshd, audit, datadirs):
    with runner(sshd, audit) as ssh:
        out = ssh.run(host_command(datadirs), check=True).stdout
    a, b = parse_host_output(["a", "b"], out, at=1.0)
    st = os.statvfs(datadirs[0])
    assert a.size_bytes == st.f_blocks * st.f_frsize
    assert abs(a.avail_bytes - st.f_bavail * st.f_frsize) < 64 * MiB  # the machine's disk moves meanwhile
    assert a.used_bytes + a.avail_bytes <= a.size_bytes
    assert 3 * MiB <= a.datadir_bytes < 4 * MiB and MiB <= b.datadir_bytes < 2 * MiB
    assert (a.node, b.node) == ("a", "b")


@requires_sshd
def test_a_datadir_that_is_gone_fails_the_hosts_sample(sshd, audit, datadirs):
    with runner(sshd, audit) as ssh:
        done = ssh.run(host_command([datadirs[0], datadirs[0] + "-gone"]))
    assert done.exit_code != 0


def test_paths_that_are_not_plain_absolute_paths_are_refused_before_anything_runs():
    for bad in ("relative/dir", "/var/lib/$(reboot)", "/a b"):
        with pytest.raises(InvalidInput):
            host_command(["/ok", bad])


def test_growth_is_the_slope_of_used_bytes_over_the_window_and_old_samples_age_out():
    facts = DiskFacts()
    facts.add([DiskSample("n", 0.0, 1000, 100, 900, 50)])
    assert facts.latest()["n"][1] is None  # one sample: no rate yet
    facts.add([DiskSample("n", 10.0, 1000, 200, 800, 60)])
    assert facts.latest()["n"][1] == pytest.approx(10.0)
    facts.add([DiskSample("n", 2000.0, 1000, 150, 850, 60)])  # the first two are past the 15 min window
    last, rate = facts.latest()["n"]
    assert last.used_bytes == 150 and rate is None
    facts.forget_except(set())
    assert facts.latest() == {}
