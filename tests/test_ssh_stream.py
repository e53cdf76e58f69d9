"""Streaming remote commands (tasks/ssh_stream.py) against a real sshd and a real SeaweedFS, no lab."""

from __future__ import annotations

import hashlib
import io
import os
import pwd
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tasks import objectstore
from tasks.backups.crypto import EncryptingReader, EncryptionKey
from tasks.errors import BackupIntegrityError, CommandFailed, CommandTimeout
from tasks.gate import Gate
from tasks.ssh import SshRunner
from tasks.ssh_stream import read_from, write_to
from tests import s3 as _s3
from tests import sshd as _sshd
from tests.sshd import USER, actions, requires_sshd, runner

pytestmark = requires_sshd
sshd, audit, s3_server, store = _sshd.sshd, _sshd.audit, _s3.s3_server, _s3.store  # the fixtures, by name

MiB = 1024 * 1024
KEY = EncryptionKey(bytes(range(32)))


@pytest.fixture
def host_dir():
    """A directory on the 'host' (this machine) owned by the sshd fixture's user."""
    d = Path(tempfile.mkdtemp(prefix="rb-stream-", dir="/tmp"))
    user = pwd.getpwnam(USER)
    os.chown(d, user.pw_uid, user.pw_gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Failing(io.RawIOBase):
    """A source that breaks after `after` bytes, like a decryption that finds a tampered chunk."""

    def __init__(self, after: int) -> None:
        self.left = after

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.left <= 0:
            raise BackupIntegrityError("chunk 3 failed authentication")
        n = min(len(b), self.left)
        b[:n] = b"x" * n
        self.left -= n
        return n


def no_process(ssh: SshRunner, marker: str) -> bool:
    time.sleep(0.3)
    return ssh.run(["pgrep", "-u", USER, "-f", marker]).exit_code == 1


def test_a_remote_file_streams_byte_identical_and_is_audited_with_its_bytes(sshd, audit, host_dir):
    data = os.urandom(6 * MiB + 123)
    (host_dir / "blob").write_bytes(data)
    with runner(sshd, audit) as ssh:
        with read_from(ssh, ["cat", "--", str(host_dir / "blob")], audit_data={"step": "backup"}) as stream:
            got = stream.read()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    [entry] = actions(audit)
    assert entry["exit_code"] == 0 and entry["bytes_streamed"] == len(data) and entry["step"] == "backup"
    assert entry["command"] == f"cat -- {host_dir}/blob" and entry["stdout_tail"] == "" and entry["action"] == "command"


def test_stdin_is_fed_while_the_output_is_read(sshd, audit):
    data = os.urandom(5 * MiB)
    with runner(sshd, audit) as ssh:
        with read_from(ssh, ["sh", "-c", "cat; echo done >&2"], stdin=data) as stream:
            got = stream.read()
    assert got == data and actions(audit)[0]["stderr_tail"] == "done\n"


def test_a_failing_command_fails_the_upload_and_leaves_nothing_in_the_store(sshd, audit, store):
    with runner(sshd, audit) as ssh:
        # Past one part: the multipart upload has started and must be aborted.
        with pytest.raises(CommandFailed, match="exited 3: disk gone"):
            with read_from(ssh, ["sh", "-c", "head -c 12582912 /dev/urandom; echo disk gone >&2; exit 3"]) as s:
                objectstore.upload(store, "big", EncryptingReader(s, KEY), part_size=5 * MiB)
        # At once: nothing was ever sent.
        with pytest.raises(CommandFailed, match="exited 2"):
            with read_from(ssh, ["tar", "-C", "/nonexistent-rb", "-cf", "-", "."]) as s:
                objectstore.upload(store, "small", EncryptingReader(s, KEY))
    assert objectstore.list_open_multipart_uploads(store) == []
    assert objectstore.head(store, "big") is None and objectstore.head(store, "small") is None
    assert [a["exit_code"] for a in actions(audit)] == [3, 2]
    assert actions(audit)[0]["bytes_streamed"] >= 5 * MiB


def test_an_idle_command_times_out_and_is_stopped(sshd, audit):
    with runner(sshd, audit) as ssh:
        started = time.monotonic()
        with pytest.raises(CommandTimeout) as info:
            with read_from(ssh, ["sh", "-c", "echo begun; sleep 31.25"], idle_timeout=0.5) as stream:
                assert stream.read(100) == b"begun\n"
                stream.read(100)
        assert time.monotonic() - started < 3
        assert "idle timeout" in "".join(info.value.__notes__)
        assert no_process(ssh, "[s]leep 31.25")
    assert actions(audit)[0]["idle_timeout_s"] == 0.5 and actions(audit)[0]["exit_code"] is None


def test_a_consumer_that_raises_stops_the_remote_command(sshd, audit):
    with runner(sshd, audit) as ssh:
        with pytest.raises(RuntimeError):
            with read_from(ssh, ["yes", "rb-stream-marker"]) as stream:
                stream.read(1000)
                raise RuntimeError("the store went away")
        assert no_process(ssh, "[r]b-stream-marker")
        assert ssh.run(["true"]).ok  # the connection is still usable
    first = actions(audit)[0]
    assert first["exit_code"] is None and "the store went away" in first["error"]


def test_a_source_streams_into_a_remote_command(sshd, audit, host_dir):
    data = os.urandom(20 * MiB + 7)
    target = host_dir / "restored"
    with runner(sshd, audit) as ssh:
        result = write_to(ssh, ["sh", "-c", 'cat > "$1"', "sh", str(target)], io.BytesIO(data))
    assert result.ok and not result.dry_run
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert actions(audit)[0]["bytes_streamed"] == len(data)


def test_a_command_that_stops_reading_fails_with_its_exit_code(sshd, audit):
    with runner(sshd, audit) as ssh:
        with pytest.raises(CommandFailed, match="exited 5: nope"):
            write_to(ssh, ["sh", "-c", "head -c 100 >/dev/null; echo nope >&2; exit 5"],
                     io.BytesIO(os.urandom(20 * MiB)), idle_timeout=10)
    assert actions(audit)[0]["exit_code"] == 5


def test_a_source_that_fails_stops_the_command_without_an_eof(sshd, audit, host_dir):
    target = host_dir / "partial"
    with runner(sshd, audit) as ssh:
        with pytest.raises(BackupIntegrityError):
            write_to(ssh, ["sh", "-c", 'cat > "$1" && touch "$1.done"', "sh", str(target)], Failing(3 * MiB))
        assert no_process(ssh, f"[c]at > {target}")
    assert not (host_dir / "partial.done").exists()
    assert actions(audit)[0]["exit_code"] is None


def test_a_dry_run_runs_nothing_and_reads_nothing(sshd, audit):
    gate = Gate(audit, dry_run=True)
    with SshRunner(sshd.host(), None, private_key=sshd.client_key, known_hosts=sshd.known_hosts, gate=gate) as ssh:
        with read_from(ssh, ["cat", "/etc/hostname"]) as stream:
            assert stream.read() == b""
        result = write_to(ssh, ["tee", "/tmp/never"], Failing(0))
        assert ssh._client is None  # never connected
    assert result.dry_run and result.ok
    assert actions(audit) == []
    assert [e["data"]["description"] for e in audit.entries() if e["kind"] == "would"] == [
        "cat /etc/hostname", "tee /tmp/never"]


def test_shell_text_is_refused(sshd, audit):
    with runner(sshd, audit) as ssh:
        with pytest.raises(TypeError):
            with read_from(ssh, "cat /etc/passwd"):  # type: ignore[arg-type]
                pass
        with pytest.raises(TypeError):
            write_to(ssh, "cat > /tmp/x", io.BytesIO(b""))  # type: ignore[arg-type]
    assert actions(audit) == []


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_memory_stays_bounded_while_300_mib_stream_to_the_store(sshd, audit, store):
    """VmHWM (peak RSS) is reset through /proc/self/clear_refs, then compared with the RSS before:
    buffering the stream would raise the peak by 300 MiB."""
    size = 300 * MiB
    with runner(sshd, audit) as ssh:
        ssh.run(["true"])
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
        before = _kib("VmRSS")
        with read_from(ssh, ["head", "-c", str(size), "/dev/urandom"]) as stream:
            encrypted = EncryptingReader(stream, KEY)
            stored = objectstore.upload(store, "big", encrypted, part_size=8 * MiB)
        growth_mib = (_kib("VmHWM") - before) / 1024
    print(f"peak RSS growth streaming {size // MiB} MiB: {growth_mib:.0f} MiB")
    assert encrypted.plaintext_size == size and objectstore.head(store, "big").size == stored.size
    assert actions(audit)[-1]["bytes_streamed"] == size
    assert growth_mib < 150
