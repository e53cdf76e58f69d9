"""What disk-prune may delete, found by the real `find` it sends to hosts (run here on a scratch
directory), and the rules that keep every delete inside the clean-up directories. No lab needed."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from flows.disk_prune import Disk
from inventory import DiskPolicy
from tasks import pruning
from tasks.errors import InvalidInput
from tasks.hostinfo import DiskUsage

DAY = 86400


def write(path, size: int, age_days: float = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    if age_days:
        when = time.time() - age_days * DAY
        os.utime(path, (when, when))
    return str(path)


def listing(directory, days):
    out = subprocess.run(pruning.list_argv(str(directory), days), capture_output=True, text=True, check=True, timeout=30)
    return pruning.parse_listing(out.stdout)


def test_old_logs_are_only_rotated_or_compressed_files_older_than_the_policy(tmp_path):
    logs = tmp_path / "datadir" / "logs"
    old = {write(logs / "erigon.log.1", 10, 9), write(logs / "erigon.log.2.gz", 20, 9),
           write(logs / "rpc" / "access.log.3.zst", 30, 30), write(logs / "erigon-2026-11-01.log.gz", 40, 20)}
    write(logs / "erigon.log", 50, 30)  # the live log, however old its mtime
    write(logs / "erigon.log.1.gz", 60, 2)  # rotated, but recent
    write(logs / "notes.txt", 70, 30)
    found, refused = listing(logs, 7)
    assert {c.path for c in found} == old and not refused
    assert {c.path: c.size for c in found}[str(logs / "erigon.log.2.gz")] == 20


def test_a_missing_directory_lists_nothing_instead_of_failing(tmp_path):
    assert listing(tmp_path / "nope" / "logs", 7) == ([], [])


def test_a_disposable_directory_lists_every_file_at_any_depth_and_no_symlink(tmp_path):
    temp = tmp_path / "datadir" / "temp"
    files = {write(temp / "etl-1.tmp", 5), write(temp / "sub" / "etl-2.tmp", 6)}
    (temp / "link-to-db").symlink_to(tmp_path / "datadir" / "chaindata")
    found, _ = listing(temp, None)
    assert {c.path for c in found} == files


def test_a_name_that_cannot_go_safely_on_a_command_line_is_refused_and_listed(tmp_path):
    temp = tmp_path / "datadir" / "temp"
    write(temp / "ok.tmp", 1)
    write(temp / "we ird;rm -rf ~.tmp", 1)
    found, refused = listing(temp, None)
    assert [c.path for c in found] == [str(temp / "ok.tmp")]
    assert refused == [str(temp / "we ird;rm -rf ~.tmp")]


@pytest.mark.parametrize("path, ok", [
    ("/data/erigon/logs/erigon.log.1.gz", True),
    ("/data/erigon/temp/etl/1.tmp", True),
    ("/data/erigon/txpool/mdbx.dat", True),
    ("/data/erigon/nodes/eth68/mdbx.dat", True),
    ("/data/erigon/chaindata/mdbx.dat", False),  # the database
    ("/data/erigon/snapshots/v1-000000-000500-headers.seg", False),  # a segment
    ("/data/erigon/logs", False),  # the directory itself
    ("/data/erigon/temp/../chaindata/mdbx.dat", False),
    ("/data/erigon-other/temp/x", False),  # a sibling datadir sharing the prefix
    ("/etc/passwd", False),
])
def test_only_files_inside_the_clean_up_directories_may_be_deleted(path, ok):
    assert pruning.allowed("erigon", "/data/erigon", path) is ok


def test_the_lab_client_may_lose_temp_but_never_its_state_or_segments():
    assert pruning.allowed("anvil", "/d/eth-a", "/d/eth-a/temp/rblab-fill-etl-1.tmp")
    assert not pruning.allowed("anvil", "/d/eth-a", "/d/eth-a/state.json")
    assert not pruning.allowed("anvil", "/d/eth-a", "/d/eth-a/snapshots/000001.seg")
    assert not pruning.allowed("geth", "/d/geth", "/d/geth/temp/x")  # geth has no disposable temp/


def test_a_delete_is_built_only_from_allowed_paths_in_batches():
    paths = [pruning.Candidate(f"/d/e/logs/x.log.{i}.gz", 1) for i in range(450)]
    argvs = pruning.delete_argvs("erigon", "/d/e", paths)
    assert [len(a) - 3 for a in argvs] == [200, 200, 50]
    assert all(a[:3] == ["rm", "-f", "--"] for a in argvs)
    with pytest.raises(InvalidInput, match="chaindata"):
        pruning.delete_argvs("erigon", "/d/e", paths + [pruning.Candidate("/d/e/chaindata/mdbx.dat", 1)])


def test_container_clean_up_never_reaches_volumes_or_a_stopped_clients_image():
    words = [w for argv in pruning.container_argvs(7) for w in argv]
    assert "--volumes" not in words and "-a" not in words and "--all" not in words and "system" not in words
    assert ["docker", "image", "prune", "-f", "--filter", "until=168h"] in pruning.container_argvs(7)


def test_the_host_probe_reports_journald_and_docker_only_when_they_run():
    out = subprocess.run(pruning.PROBE_ARGV, capture_output=True, text=True, check=True, timeout=30).stdout
    tools = pruning.parse_probe(out)
    assert set(tools) == {"journal", "docker"}
    assert tools["journal"] is os.path.isdir("/run/systemd/system")  # no systemd here: False


def usage(used_mib: int, avail_mib: int) -> DiskUsage:
    return DiskUsage("/dev/x", (used_mib + avail_mib) * 1024, used_mib * 1024, avail_mib * 1024,
                     round(100 * used_mib / (used_mib + avail_mib), 2), "/data")


def test_bytes_needed_bring_a_disk_under_target_and_above_its_clients_floor():
    mib = 1024**2
    disk = Disk("/data", ["eth-a"], usage(850, 150), 60, 90, 0)
    assert disk.needed_bytes() == 250 * mib  # 85% of 1000 MiB -> 60%
    assert disk.needed_bytes(usage(590, 410)) == 0
    floored = Disk("/data", ["eth-a"], usage(500, 500), 60, 90, 700 * mib)
    assert floored.needed_bytes() == 200 * mib  # under target, but under the floor


def test_the_clients_free_space_floors_are_eth_dockers():
    assert pruning.free_floor_bytes("nethermind") == 300 * pruning.GIB
    assert pruning.free_floor_bytes("geth") == 100 * pruning.GIB
    assert pruning.free_floor_bytes("reth") == 50 * pruning.GIB  # any other client
    assert pruning.free_floor_bytes("geth", 20) == 20 * pruning.GIB  # the host's policy overrides


def test_a_disk_policy_whose_thresholds_do_not_rise_is_refused():
    assert DiskPolicy().target_percent == 60 and DiskPolicy().act_percent == 70
    with pytest.raises(ValueError, match="must rise"):
        DiskPolicy(target_percent=75, act_percent=70)
