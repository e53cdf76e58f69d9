"""The systemd adapter against a real systemd, over real SSH.

lab/systemd.py boots Debian's systemd as PID 1 of its own namespaces (on a
throwaway overlay of this machine's root) with sshd as one of its units;
the adapter runs its argv through the real SshRunner logged in as root, as
a runbook does on a node host (root: no sudo). Units are installed the way
an operator does (a file in /etc/systemd/system, then daemon-reload),
including a template, `node@.service`, driven as `node@mainnet`.

A systemd that cannot boot fails the session fixture (an install bug, not
a reason to skip).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from inventory import Host, Node
from lab import systemd as labsystemd
from tasks.audit import AuditRecord
from tasks.errors import CommandFailed, InvalidInput
from tasks.services import Systemd, service_manager_for
from tasks.ssh import SshRunner

# The node: logs its start, a line a second, and its shutdown (on SIGTERM).
NODE_SCRIPT = """#!/bin/sh
echo "rb-node $1 started as pid $$"
trap 'echo "rb-node $1 stopping"; exit 0' TERM
while :; do sleep 0.2; done
"""

TEMPLATE_UNIT = """[Unit]
Description=chain node %i
After=network.target

[Service]
ExecStart=/usr/local/bin/rb-node %i
Restart=on-failure
RestartSec=0.2

[Install]
WantedBy=multi-user.target
"""

PLAIN_UNIT = TEMPLATE_UNIT.replace("%i", "erigon")
FAILING_UNIT = "[Service]\nExecStart=/bin/sh -c 'echo giving up; exit 3'\n"
BAD_UNIT = "[Service]\nExecStart=relative/path\n"
CRASH_LOOP_UNIT = "[Service]\nExecStart=/bin/sh -c 'echo crashed; exit 1'\nRestart=always\nRestartSec=5\n"


@pytest.fixture(scope="session")
def systemd_host(tmp_path_factory) -> Iterator[tuple[labsystemd.SystemdHost, SshRunner]]:
    started = time.monotonic()
    host = labsystemd.boot()
    audit = AuditRecord("systemd-real", "test_systemd_real", node="eth-mainnet",
                        directory=tmp_path_factory.mktemp("audit"))
    inv_host = Host(address="127.0.0.1", ssh_port=host.ssh_port, ssh_user="root", ssh_identity_block="lab-ssh")
    runner = SshRunner(inv_host, None, audit, private_key=host.client_key, known_hosts=host.known_hosts,
                       command_timeout=20)
    try:
        state = runner.run(["systemctl", "is-system-running", "--wait"], timeout=15)
        assert state.stdout.strip() == "running", (state.stdout, state.stderr, host.console())
        (host.root / "usr/local/bin/rb-node").write_text(NODE_SCRIPT)
        (host.root / "usr/local/bin/rb-node").chmod(0o755)
        host.install_unit("node@.service", TEMPLATE_UNIT)
        host.install_unit("erigon.service", PLAIN_UNIT)
        host.install_unit("giveup.service", FAILING_UNIT)
        host.install_unit("broken.service", BAD_UNIT)
        host.install_unit("crashloop.service", CRASH_LOOP_UNIT)
        runner.run(["systemctl", "daemon-reload"], check=True)
        print(f"systemd up in {time.monotonic() - started:.2f} s")
        yield host, runner
    finally:
        runner.close()
        host.stop()


def _node(name: str) -> Node:
    return Node.model_validate({
        "chain": "eth", "client": "erigon", "host": "h1", "service": {"manager": "systemd", "name": name},
        "rpc_url": "http://127.0.0.1:8545", "datadir": "/data/erigon",
    })


def _adapter(runner: SshRunner, name: str) -> Systemd:
    m = service_manager_for(_node(name), runner.host)
    assert isinstance(m, Systemd) and m.sudo is False  # root on the host: no sudo
    return m


def _wait_state(m: Systemd, runner: SshRunner, want: str, timeout: float = 5.0):
    end = time.monotonic() + timeout
    while True:
        s = m.status(runner)
        if s.state == want or time.monotonic() > end:
            return s
        time.sleep(0.05)


def _proc_cmdline(runner: SshRunner, pid: int) -> str:
    return runner.run(["cat", f"/proc/{pid}/cmdline"], check=True).stdout.replace("\0", " ").strip()


# A template instance named both ways operators write it, and a plain unit.
@pytest.mark.parametrize(("unit", "instance"), [
    ("node@mainnet", "mainnet"), ("node@sepolia.service", "sepolia"), ("erigon", "erigon")])
def test_start_restart_stop_and_logs_of_a_real_unit(systemd_host, unit, instance):
    _, runner = systemd_host
    m = _adapter(runner, unit)

    before = m.status(runner)
    assert (before.state, before.running, before.pid) == ("inactive/dead", False, None)

    m.start(runner)
    up = m.status(runner)
    assert (up.state, up.running) == ("active/running", True) and up.pid
    assert _proc_cmdline(runner, up.pid) == f"/bin/sh /usr/local/bin/rb-node {instance}"
    assert runner.run(m.is_active_argv()).stdout == "active\n"

    m.restart(runner)
    again = m.status(runner)
    assert again.running and again.pid and again.pid != up.pid  # a new main process
    assert _proc_cmdline(runner, again.pid) == f"/bin/sh /usr/local/bin/rb-node {instance}"

    m.stop(runner)
    down = m.status(runner)
    assert (down.state, down.running, down.pid) == ("inactive/dead", False, None)
    assert runner.run(m.is_active_argv()).stdout == "inactive\n"

    logs = m.logs(runner, 50)
    # The node's own lines, in order (systemd's lines about the unit interleave with them).
    messages = [line.split(": ", 1)[1] for line in logs.splitlines() if ": " in line]
    ours = [text for text in messages if text.startswith("rb-node ")]
    assert ours == [
        f"rb-node {instance} started as pid {up.pid}",
        f"rb-node {instance} stopping",
        f"rb-node {instance} started as pid {again.pid}",
        f"rb-node {instance} stopping",
    ], logs
    # systemd's own lines about the unit are in its journal too, as on a real host
    full = m.name if m.name.endswith(".service") else f"{m.name}.service"
    assert f"systemd[1]: Stopped {full} - chain node {instance}." in logs
    assert len(m.logs(runner, 2).splitlines()) == 2


def test_a_killed_node_is_restarted_by_systemd_under_a_new_pid(systemd_host):
    _, runner = systemd_host
    m = _adapter(runner, "node@killme")
    m.start(runner)
    first = m.status(runner)
    try:
        runner.run(["kill", "-9", str(first.pid)], check=True)
        end = time.monotonic() + 5
        while True:
            s = m.status(runner)
            if (s.running and s.pid != first.pid) or time.monotonic() > end:
                break
            time.sleep(0.05)
        assert s.running and s.pid and s.pid != first.pid, s.raw
    finally:
        m.stop(runner)


def test_what_systemd_says_about_units_that_cannot_run(systemd_host):
    _, runner = systemd_host
    assert _adapter(runner, "no-such-node").status(runner).state == "not-found"
    with pytest.raises(CommandFailed) as info:
        _adapter(runner, "no-such-node").start(runner)
    assert info.value.result.exit_code == 5 and "not found" in info.value.result.stderr

    broken = _adapter(runner, "broken")
    assert (broken.status(runner).state, broken.status(runner).running) == ("bad-setting", False)
    with pytest.raises(CommandFailed, match="bad unit file setting"):
        broken.start(runner)

    runner.run(["systemctl", "mask", "--", "node@masked.service"], check=True)
    try:
        masked = _adapter(runner, "node@masked")
        assert masked.status(runner).state == "masked"
        with pytest.raises(CommandFailed, match="masked"):
            masked.start(runner)
    finally:
        runner.run(["systemctl", "unmask", "--", "node@masked.service"], check=True)

    giveup = _adapter(runner, "giveup")
    giveup.start(runner)  # Type=simple: start succeeds once the process runs
    failed = _wait_state(giveup, runner, "failed/failed")
    assert (failed.state, failed.running, failed.pid) == ("failed/failed", False, None)
    assert "giving up" in giveup.logs(runner, 20)

    loop = _adapter(runner, "crashloop")
    loop.start(runner)
    try:
        waiting = _wait_state(loop, runner, "activating/auto-restart")
        assert (waiting.state, waiting.running, waiting.pid) == ("activating/auto-restart", False, None)
    finally:
        loop.stop(runner)


def test_a_bare_template_is_refused_before_anything_runs(systemd_host):
    _, runner = systemd_host
    for name in ("node@", "node@.service"):
        with pytest.raises(InvalidInput, match="template"):
            Systemd(name)
    # What systemctl itself says to the name we now refuse:
    r = runner.run(["systemctl", "show", "-p", Systemd.PROPERTIES, "--", "node@.service"])
    assert r.exit_code == 1 and "valid" in r.stderr


def test_every_command_went_through_the_audited_ssh_runner(systemd_host):
    _, runner = systemd_host
    _adapter(runner, "node@mainnet").status(runner)
    commands = [e["data"].get("command") for e in runner.audit.entries() if e["kind"] == "action"]
    assert "systemctl show -p LoadState,ActiveState,SubState,MainPID -- node@mainnet" in commands
