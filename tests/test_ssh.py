"""The SSH runner against a real OpenSSH server (tests/sshd.py), no lab."""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from inventory import Host
from tasks.audit import read_entries
from tasks.errors import CommandFailed, CommandTimeout, HostKeyChanged, HostKeyUnknown, SshError
from tasks.ssh import SshRunner
from tasks.vocabulary import ActionKind
from tests import sshd as _sshd
from tests.sshd import USER, actions, free_port, keygen, requires_sshd, runner

pytestmark = requires_sshd
sshd, audit = _sshd.sshd, _sshd.audit  # the fixtures, by name


def test_a_command_returns_its_output_and_exit_code(sshd, audit):
    with runner(sshd, audit) as ssh:
        who = ssh.run(["id", "-un"])
        mixed = ssh.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert who.exit_code == 0 and who.stdout == f"{USER}\n" and who.ok
    assert (mixed.exit_code, mixed.stdout, mixed.stderr) == (3, "out\n", "err\n")
    assert mixed.command == "sh -c 'echo out; echo err >&2; exit 3'"
    assert not mixed.truncated and mixed.duration_s < 5


def test_rsa_keys_and_an_identity_block_work_too(sshd, audit):
    from blocks import SshIdentity

    identity = SshIdentity(private_key=sshd.client_rsa_key, known_hosts=sshd.known_hosts)
    with SshRunner(sshd.host(), identity, audit) as ssh:
        assert ssh.run(["echo", "rsa"]).stdout == "rsa\n"


def test_shell_metacharacters_in_arguments_arrive_as_literal_text(sshd, audit, tmp_path):
    target = Path(tempfile.mkdtemp(prefix="rb-inject-", dir="/tmp"))
    target.chmod(0o777)  # writable by rbtest, so an injection *could* create files here
    try:
        hostile = [
            f"$(touch {target}/dollar)",
            f"; touch {target}/semicolon",
            f"`touch {target}/backtick`",
            f"a\ntouch {target}/newline",
            f"| touch {target}/pipe && touch {target}/and",
            f"' ; touch {target}/quote ; '",
            "*",
            "$HOME",
        ]
        with runner(sshd, audit) as ssh:
            result = ssh.run(["printf", "[%s]", *hostile])
            # Control: the user can create files there when asked to.
            ssh.run(["touch", f"{target}/control"], check=True)
        assert result.exit_code == 0
        assert result.stdout == "".join(f"[{h}]" for h in hostile)
        assert sorted(p.name for p in target.iterdir()) == ["control"]
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_a_command_string_is_refused(sshd, audit):
    with runner(sshd, audit) as ssh:
        with pytest.raises(TypeError):
            ssh.run("echo hello")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            ssh.run([])


def test_an_unknown_host_key_is_refused(sshd, audit):
    other = "[10.9.9.9]:22 " + sshd.host_pub + "\n"
    with pytest.raises(HostKeyUnknown, match=r"not in the SSH identity's known_hosts.*ssh-ed25519 SHA256:") as info:
        with runner(sshd, audit, known_hosts=other):
            pass
    assert "Nothing was run" in str(info.value)
    assert actions(audit) == []


def test_a_changed_host_key_is_refused(sshd, audit, tmp_path):
    _, impostor_pub = keygen(tmp_path / "impostor")
    changed = f"[127.0.0.1]:{sshd.port} " + " ".join(impostor_pub.split()[:2]) + "\n"
    with pytest.raises(HostKeyChanged, match="HOST KEY CHANGED"):
        with runner(sshd, audit, known_hosts=changed):
            pass
    assert actions(audit) == []


def test_hashed_known_hosts_entries_are_trusted(sshd, audit, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts)
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(kh)], check=True, timeout=30, capture_output=True)
    hashed = kh.read_text()
    assert hashed.startswith("|1|")
    with runner(sshd, audit, known_hosts=hashed) as ssh:
        assert ssh.run(["true"]).ok


def test_a_command_past_its_deadline_is_stopped_and_recorded(sshd, audit):
    with runner(sshd, audit) as ssh:
        started = time.monotonic()
        with pytest.raises(CommandTimeout) as info:
            ssh.run(["sh", "-c", "echo begun; sleep 7.25; echo never"], timeout=0.5)
        assert time.monotonic() - started < 2
        assert info.value.result.exit_code is None and info.value.result.stdout == "begun\n"
        # The remote process was signalled, not left behind; the connection is still usable.
        time.sleep(0.2)
        leftover = ssh.run(["pgrep", "-u", USER, "-f", "[s]leep 7.25"])  # [s]: not matching its own sh -c
        assert leftover.exit_code == 1, leftover.stdout
    recorded = actions(audit)[0]
    assert recorded["exit_code"] is None and recorded["timeout_s"] == 0.5
    assert recorded["command"] == "sh -c 'echo begun; sleep 7.25; echo never'"


def test_output_beyond_the_cap_is_dropped_and_marked(sshd, audit):
    with runner(sshd, audit, max_output_bytes=1000) as ssh:
        r = ssh.run(["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' a; head -c 5000 /dev/zero >&2; echo end"])
    assert r.exit_code == 0 and r.truncated
    # The end is kept: that is where the latest log lines and the final error are.
    assert r.stdout == "a" * 996 + "end\n" and r.stderr == "\0" * 1000
    assert actions(audit)[-1]["dropped_bytes"] == {"stdout": 300004 - 1000, "stderr": 4000}


def test_check_raises_with_the_exit_code_and_stderr(sshd, audit):
    with runner(sshd, audit) as ssh:
        with pytest.raises(CommandFailed, match=r"exited 4: no such thing") as info:
            ssh.run(["sh", "-c", "echo no such thing >&2; exit 4"], check=True)
    assert info.value.result.exit_code == 4


def test_every_command_is_in_the_audit_trail(sshd, audit, tmp_path):
    commands = [["true"], ["false"], ["echo", "it's here"]]
    with runner(sshd, audit) as ssh:
        for argv in commands:
            ssh.run(argv)
        with pytest.raises(CommandTimeout):
            ssh.run(["sleep", "5"], timeout=0.2)
    day = datetime.now(timezone.utc).date().isoformat()
    lines = [json.loads(ln) for ln in (tmp_path / "audit" / f"audit-{day}.jsonl").read_text().splitlines()]
    recorded = [(e["data"]["command"], e["data"]["exit_code"]) for e in lines if e["kind"] == "action"]
    assert recorded == [("true", 0), ("false", 1), ("echo 'it'\"'\"'s here'", 0), ("sleep 5", None)]
    assert all(e["data"]["host"] == f"{USER}@127.0.0.1:{sshd.port}" for e in lines)
    assert read_entries(run_id=audit.run_id, kind="action")[2]["data"]["stdout_tail"] == "it's here\n"
    assert {e["data"]["action"] for e in lines if e["kind"] == "action"} == {"command"}


def test_a_commands_action_kind_and_step_tags_are_audited(sshd, audit):
    with runner(sshd, audit) as ssh:
        ssh.run(["true"], action=ActionKind.restart, audit_data={"step": "restart", "automatic": True})
        ssh.run(["true"], audit_data={"action": "stop"})
        with pytest.raises(ValueError):
            ssh.run(["true"], action="reboot")  # refused before it runs
    assert [(a["action"], a.get("step"), a.get("automatic")) for a in actions(audit)] == [
        ("restart", "restart", True), ("stop", None, None),
    ]


def test_the_private_key_never_reaches_the_audit_trail(sshd, audit, tmp_path):
    key_line = sshd.client_key.splitlines()[1]
    with runner(sshd, audit) as ssh:
        ssh.run(["echo", key_line])
    assert key_line not in (tmp_path / "audit").joinpath(
        f"audit-{datetime.now(timezone.utc).date().isoformat()}.jsonl").read_text()


def test_an_unreachable_port_fails_fast_with_a_clear_error(sshd, audit):
    host = Host(address="127.0.0.1", ssh_port=free_port(), ssh_user=USER, ssh_identity_block="x")
    started = time.monotonic()
    with pytest.raises(SshError, match="cannot reach the SSH port"):
        SshRunner(host, None, audit, private_key=sshd.client_key, known_hosts=sshd.known_hosts).connect()
    assert time.monotonic() - started < 2


def test_commands_on_one_connection_take_milliseconds(sshd, audit, record_property):
    with runner(sshd, audit) as ssh:
        sock = ssh._client.get_transport().sock  # noqa: SLF001
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        ssh.run(["true"])
        samples = []
        for _ in range(30):
            t = time.perf_counter()
            ssh.run(["true"])
            samples.append(time.perf_counter() - t)
    median_ms = statistics.median(samples) * 1000
    record_property("ssh_command_median_ms", round(median_ms, 2))
    print(f"ssh per-command median {median_ms:.1f} ms")
    # ~5 ms here with TCP_NODELAY, ~48 ms without (Nagle + delayed ACK); the
    # sockopt check above is the real guard, this bound only catches a
    # pathological slowdown without flaking on a busy machine.
    assert median_ms < 250
