"""Side-by-side installs and the atomic switch, run here with the same argv the hosts get. No lab."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile

import pytest

from tasks import install
from tasks.errors import InvalidInput


def archive(top: str, files: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sh(argv, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=30)


def put(tmp_path, version: str, data: bytes, sha: str | None = None, wrapped: bool = True) -> subprocess.CompletedProcess:
    root = str(tmp_path / "opt" / "erigon")
    receive, incoming = install.receive_argv(root, version)
    assert sh(receive, data).returncode == 0
    return sh(install.unpack_argv(root, version, sha or hashlib.sha256(data).hexdigest(), "erigon", incoming, wrapped))


BINARY = b"#!/bin/sh\necho erigon 3.0.4\n"


def test_a_release_is_unpacked_beside_the_others_and_current_switches_atomically(tmp_path):
    root = str(tmp_path / "opt" / "erigon")
    for version in ("3.0.3", "3.0.4"):
        data = archive(f"erigon_v{version}_linux_amd64", {"erigon": (BINARY, 0o755), "README.md": (b"x", 0o644)})
        assert put(tmp_path, version, data).returncode == 0
        sha = hashlib.sha256(data).hexdigest()
        assert sh(install.installed_argv(root, version, sha, "erigon")).returncode == 0
    assert not list((tmp_path / "opt" / "erigon").glob(".incoming-*"))
    assert sh(install.switch_argv(root, "3.0.3")).returncode == 0
    assert install.parse_current(sh(install.current_argv(root)).stdout.decode()) == "3.0.3"
    assert sh(install.switch_argv(root, "3.0.4")).returncode == 0
    assert os.readlink(f"{root}/current") == "3.0.4"
    assert sh([f"{root}/current/erigon"]).stdout == b"erigon 3.0.4\n"


def flat_archive(files: dict[str, tuple[bytes, int]]) -> bytes:
    """Erigon 2.x's layout: the binary at the archive's root, no directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_an_erigon_2_archive_with_the_binary_at_its_root_installs_unstripped(tmp_path):
    root = tmp_path / "opt" / "erigon"
    assert put(tmp_path, "2.60.10", flat_archive({"erigon": (BINARY, 0o755)}), wrapped=False).returncode == 0
    assert (root / "2.60.10" / "erigon").is_file()
    # Stripping it as if wrapped finds no binary and installs nothing.
    assert put(tmp_path, "2.60.9", flat_archive({"erigon": (BINARY, 0o755)})).returncode == 4
    assert not (root / "2.60.9").exists()


def test_a_checksum_mismatch_is_refused_on_the_host_and_leaves_nothing_behind(tmp_path):
    data = archive("erigon_v3.0.4_linux_amd64", {"erigon": (BINARY, 0o755)})
    done = put(tmp_path, "3.0.4", data, sha="0" * 64)
    assert done.returncode == 3 and b"sha256" in done.stderr
    assert sorted(os.listdir(tmp_path / "opt" / "erigon")) == []


def test_an_archive_without_the_executable_is_refused(tmp_path):
    done = put(tmp_path, "3.0.4", archive("erigon_v3.0.4_linux_amd64", {"erigon": (BINARY, 0o644)}))
    assert done.returncode == 4 and b"no executable erigon" in done.stderr
    assert sorted(os.listdir(tmp_path / "opt" / "erigon")) == []


def test_switching_to_a_version_that_is_not_installed_is_refused_and_current_stays(tmp_path):
    root = str(tmp_path / "opt" / "erigon")
    assert put(tmp_path, "3.0.3", archive("erigon_v3.0.3_linux_amd64", {"erigon": (BINARY, 0o755)})).returncode == 0
    assert sh(install.switch_argv(root, "3.0.3")).returncode == 0
    assert sh(install.switch_argv(root, "3.0.9")).returncode == 2
    assert os.readlink(f"{root}/current") == "3.0.3"


def test_a_missing_link_reads_as_no_version(tmp_path):
    assert install.parse_current(sh(install.current_argv(str(tmp_path))).stdout.decode()) is None


@pytest.mark.parametrize("version", ["", "latest", "3.0.4; rm -rf /", "../3.0.4", "v 3"])
def test_a_version_that_is_not_plain_never_reaches_a_command(version):
    with pytest.raises(InvalidInput):
        install.switch_argv("/opt/erigon", version)
