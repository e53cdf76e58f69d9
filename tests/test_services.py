"""Service managers: the commands we build, how we read their answers, and a real supervisord.

systemd and docker do not run here (PID 1 is not systemd, no docker
daemon), so their adapters are tested on argv and on outputs copied from
real hosts; supervisor is driven for real.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from inventory import Host, Node
from tasks.errors import CommandFailed, InvalidInput, ServiceError
from tasks.hostinfo import disk_usage, disk_usage_argv, parse_df
from tasks.services import Docker, ServiceStatus, Supervisor, Systemd, service_manager_for
from tasks.ssh import CommandResult
from tests.fleet import wait_for
from tests.processes import stop_process


class LocalRunner:
    """Runs argv on this machine, like SshRunner does on a host (no shell involved)."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def run(self, argv: list[str], timeout: float | None = None, check: bool = False) -> CommandResult:
        self.commands.append(argv)
        started = time.monotonic()
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout or 30)
        r = CommandResult("local", argv, shlex.join(argv), p.returncode, p.stdout, p.stderr, time.monotonic() - started)
        if check and p.returncode != 0:
            raise CommandFailed(r)
        return r


# -- argv ---------------------------------------------------------------------


def test_systemd_commands():
    m = Systemd("erigon", sudo=True)
    assert m.status_argv() == ["systemctl", "show", "-p", "LoadState,ActiveState,SubState,MainPID", "--", "erigon"]
    assert m.is_active_argv() == ["systemctl", "is-active", "--", "erigon"]
    assert m.restart_argv() == ["sudo", "-n", "systemctl", "restart", "--", "erigon"]
    assert m.start_argv() == ["sudo", "-n", "systemctl", "start", "--", "erigon"]
    assert m.stop_argv() == ["sudo", "-n", "systemctl", "stop", "--", "erigon"]
    assert m.kill_argv() == ["sudo", "-n", "systemctl", "kill", "--signal=SIGKILL", "--", "erigon"]
    assert m.logs_argv(200) == ["sudo", "-n", "journalctl", "-u", "erigon", "-n", "200", "--no-pager", "-o", "short-iso"]
    assert Systemd("erigon").restart_argv() == ["systemctl", "restart", "--", "erigon"]


def test_docker_commands_quote_the_go_template_as_one_word():
    m = Docker("op-geth")
    status = m.status_argv()
    assert status == ["docker", "inspect", "--type", "container", "--format", "{{.State.Status}} {{.State.Pid}}", "--", "op-geth"]
    assert shlex.join(status) == "docker inspect --type container --format '{{.State.Status}} {{.State.Pid}}' -- op-geth"
    assert m.restart_argv() == ["docker", "restart", "-t", "30", "--", "op-geth"]
    assert m.stop_argv() == ["docker", "stop", "-t", "30", "--", "op-geth"]
    assert m.kill_argv() == ["docker", "kill", "--signal", "KILL", "--", "op-geth"]
    assert m.logs_argv(50) == ["docker", "logs", "--tail", "50", "--", "op-geth"]
    assert Docker("op-geth", sudo=True).start_argv() == ["sudo", "-n", "docker", "start", "--", "op-geth"]


def test_supervisor_commands_pass_the_config_and_tail_in_bytes():
    m = Supervisor("anvil-a", config="/etc/lab/supervisord.conf")
    assert m.status_argv() == ["supervisorctl", "-c", "/etc/lab/supervisord.conf", "status", "anvil-a"]
    assert m.restart_argv() == ["supervisorctl", "-c", "/etc/lab/supervisord.conf", "restart", "anvil-a"]
    assert m.kill_argv() == ["supervisorctl", "-c", "/etc/lab/supervisord.conf", "signal", "KILL", "anvil-a"]
    assert m.logs_argv(10) == ["supervisorctl", "-c", "/etc/lab/supervisord.conf", "tail", "-2000", "anvil-a", "stdout"]
    assert m.logs_argv(10, "stderr")[-1] == "stderr"
    assert Supervisor("anvil-a").start_argv() == ["supervisorctl", "start", "anvil-a"]


@pytest.mark.parametrize("bad", ["-rf", "a b", "x;reboot", "$(id)", "n\nx", "", "../etc"])
def test_names_that_a_shell_or_option_parser_would_interpret_are_refused(bad):
    for cls in (Systemd, Docker, Supervisor):
        with pytest.raises(InvalidInput):
            cls(bad)


def test_bad_log_sizes_and_config_paths_are_refused():
    with pytest.raises(InvalidInput):
        Systemd("x").logs_argv(0)
    with pytest.raises(InvalidInput):
        Docker("x").logs_argv(10**6)
    with pytest.raises(InvalidInput):
        Supervisor("x", config="relative.conf")
    with pytest.raises(InvalidInput):
        Supervisor("x", config="/etc/x.conf; reboot")


def _node(manager: str, name: str = "erigon") -> Node:
    return Node.model_validate({
        "chain": "eth", "client": "erigon", "host": "h1", "service": {"manager": manager, "name": name},
        "rpc_url": "http://10.0.0.5:8545", "datadir": "/data/erigon",
    })


def test_the_adapter_follows_the_inventory():
    root = Host(address="10.0.0.5", ssh_user="root", ssh_identity_block="fleet")
    ops = Host(address="10.0.0.5", ssh_user="ops", ssh_identity_block="fleet", supervisor_config="/etc/sv.conf")
    assert isinstance(service_manager_for(_node("systemd"), root), Systemd)
    assert service_manager_for(_node("systemd"), root).sudo is False
    assert service_manager_for(_node("systemd"), ops).sudo is True
    assert service_manager_for(_node("systemd"), ops, sudo=False).sudo is False
    d = service_manager_for(_node("docker", "op-geth"), ops)
    assert isinstance(d, Docker) and d.name == "op-geth" and not d.sudo
    s = service_manager_for(_node("supervisor"), ops)
    assert isinstance(s, Supervisor) and s.config == "/etc/sv.conf"


# -- parsing ----------------------------------------------------------------------


def test_systemd_show_output():
    m = Systemd("erigon")
    running = m.parse_status("LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=81231\n", 0)
    assert running == ServiceStatus("active/running", True, 81231, running.raw)
    failed = m.parse_status("MainPID=0\nLoadState=loaded\nActiveState=failed\nSubState=failed\n", 0)
    assert (failed.state, failed.running, failed.pid) == ("failed/failed", False, None)
    restarting = m.parse_status("LoadState=loaded\nActiveState=activating\nSubState=auto-restart\nMainPID=0\n", 0)
    assert (restarting.state, restarting.running) == ("activating/auto-restart", False)
    missing = m.parse_status("LoadState=not-found\nActiveState=inactive\nSubState=dead\nMainPID=0\n", 0)
    assert (missing.state, missing.running) == ("not-found", False)
    with pytest.raises(ServiceError, match="no ActiveState"):
        m.parse_status("", 1, "System has not been booted with systemd as init system (PID 1). Can't operate.\n")


def test_docker_inspect_output():
    m = Docker("op-geth")
    assert m.parse_status("running 4242\n", 0) == ServiceStatus("running", True, 4242, "running 4242\n")
    exited = m.parse_status("exited 0\n", 0)
    assert (exited.state, exited.running, exited.pid) == ("exited", False, None)
    assert m.parse_status("restarting 0\n", 0).running is False
    missing = m.parse_status("", 1, "Error: No such container: op-geth\n")
    assert missing.state == "not-found"
    with pytest.raises(ServiceError, match="Cannot connect"):
        m.parse_status("", 1, "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\n")


def test_supervisor_status_output():
    m = Supervisor("anvil-a")
    r = m.parse_status("anvil-a                          RUNNING   pid 5123, uptime 1:02:03\n", 0)
    assert (r.state, r.running, r.pid) == ("RUNNING", True, 5123)
    stopped = m.parse_status("anvil-a                          STOPPED   Nov 21 08:50 AM\n", 3)
    assert (stopped.state, stopped.running, stopped.pid) == ("STOPPED", False, None)
    fatal = m.parse_status("anvil-a                          FATAL     Exited too quickly (process log may have details)\n", 3)
    assert fatal.state == "FATAL"
    grouped = m.parse_status("lab:anvil-a                      BACKOFF   Exited too quickly\n", 3)
    assert grouped.state == "BACKOFF"
    assert m.parse_status("anvil-a: ERROR (no such process)\n", 4).state == "not-found"
    with pytest.raises(ServiceError, match="is supervisord running"):
        m.parse_status("unix:///tmp/nope.sock no such file\n", 4)


def test_df_output():
    out = (
        "Filesystem     1024-blocks     Used Available Capacity Mounted on\n"
        "/dev/nvme0n1p2  1921802520 1537442016 286690616      85% /data\n"
    )
    d = parse_df(out)
    assert (d.filesystem, d.total_kib, d.used_kib, d.avail_kib, d.mount) == (
        "/dev/nvme0n1p2", 1921802520, 1537442016, 286690616, "/data")
    assert d.percent == pytest.approx(84.28, abs=0.01)
    spaced = parse_df("Filesystem 1024-blocks Used Available Capacity Mounted on\n"
                      "my fs  100 40 60 40% /mnt/with space\n")
    assert (spaced.filesystem, spaced.mount, spaced.percent) == ("my fs", "/mnt/with space", 40.0)
    assert disk_usage_argv("/data/erigon") == ["df", "-P", "-k", "--", "/data/erigon"]
    with pytest.raises(InvalidInput):
        disk_usage_argv("/data; rm -rf /")
    with pytest.raises(ServiceError):
        parse_df("df: /nope: No such file or directory\n")


def test_disk_usage_of_a_real_path():
    d = disk_usage(LocalRunner(), "/tmp")
    assert d.total_kib > 0 and 0 <= d.percent <= 100 and d.mount.startswith("/")


# -- a real supervisord --------------------------------------------------------------


@pytest.fixture(scope="module")
def supervisord():
    if not shutil.which("supervisord") or os.geteuid() != 0:
        pytest.skip("needs supervisord and root")
    d = Path(tempfile.mkdtemp(prefix="rb-sv-"))
    conf = d / "supervisord.conf"
    conf.write_text(f"""
[unix_http_server]
file={d}/supervisor.sock
chmod=0700

[supervisord]
nodaemon=true
logfile={d}/supervisord.log
pidfile={d}/supervisord.pid
childlogdir={d}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{d}/supervisor.sock

[program:sleeper]
command=sleep 1000
startsecs=0
stopwaitsecs=2
autorestart=false

[program:talker]
command=sh -c 'i=1; while [ $i -le 500 ]; do echo "line $i"; i=$((i+1)); done; exec sleep 1000'
startsecs=0
stopwaitsecs=2
stdout_logfile={d}/talker.log
""")
    proc = subprocess.Popen(["supervisord", "-n", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            p = subprocess.run(["supervisorctl", "-c", str(conf), "status", "sleeper"], capture_output=True, text=True)
            if "RUNNING" in p.stdout:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"supervisord did not start: {(d / 'supervisord.log').read_text()}")
        yield str(conf)
    finally:
        stop_process(proc)  # supervisord stops its programs on SIGTERM
        shutil.rmtree(d, ignore_errors=True)


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_a_supervised_program_is_stopped_started_and_restarted(supervisord):
    run = LocalRunner()
    m = Supervisor("sleeper", config=supervisord)
    first = m.status(run)
    assert first.running and first.state == "RUNNING" and "sleep 1000" in _cmdline(first.pid)

    m.stop(run)
    stopped = m.status(run)
    assert (stopped.state, stopped.running, stopped.pid) == ("STOPPED", False, None)
    m.stop(run)  # stopping a stopped program is not an error

    m.start(run)
    started = m.status(run)
    assert started.running and started.pid != first.pid

    m.restart(run)
    restarted = m.status(run)
    assert restarted.running and restarted.pid != started.pid

    os.kill(restarted.pid, signal.SIGSTOP)  # hung: a stop would wait out its timeout
    run.run(m.kill_argv(), check=True)
    wait_for(lambda: not m.status(run).running, 5, interval=0.1, what="the hung program killed")
    assert not Path(f"/proc/{restarted.pid}").exists() or "Z" in Path(f"/proc/{restarted.pid}/stat").read_text().split()[2]
    assert all(cmd[:3] == ["supervisorctl", "-c", supervisord] for cmd in run.commands)


def test_an_unknown_program_is_reported_as_not_found(supervisord):
    status = Supervisor("ghost", config=supervisord).status(LocalRunner())
    assert (status.state, status.running) == ("not-found", False)
    with pytest.raises(CommandFailed, match="no such process"):
        Supervisor("ghost", config=supervisord).start(LocalRunner())


def test_the_last_log_lines_of_a_supervised_program(supervisord):
    m = Supervisor("talker", config=supervisord)
    deadline = time.monotonic() + 5
    while "line 500" not in m.logs(LocalRunner(), lines=5) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m.logs(LocalRunner(), lines=5) == "line 496\nline 497\nline 498\nline 499\nline 500\n"


def test_a_dead_supervisord_is_an_error_not_a_state(tmp_path):
    if not shutil.which("supervisorctl"):
        pytest.skip("needs supervisorctl")
    conf = tmp_path / "sv.conf"
    conf.write_text(f"[supervisorctl]\nserverurl=unix://{tmp_path}/gone.sock\n")
    with pytest.raises(ServiceError, match="is supervisord running"):
        Supervisor("sleeper", config=str(conf)).status(LocalRunner())
