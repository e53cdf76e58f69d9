"""Service managers (systemd, docker, supervisor) behind one small interface.

A runbook says "restart the node's service"; which command that is depends
on how the host runs it. Each adapter builds argv lists (never strings: the
SSH runner quotes every word) and parses its manager's answer into a
`ServiceStatus`, so flows compare states without knowing the manager.

Adapters run their commands through any `CommandRunner` (normally
`tasks.ssh.SshRunner`), which audits them.

Privileges: `sudo=True` prefixes the commands that need root with
`sudo -n` (never prompt: a password prompt would hang until the command
deadline). `service_manager_for` uses sudo for systemd when the SSH user is
not root; docker and supervisor access is granted through their sockets
(docker group, supervisord's `chown=`), so they default to no sudo.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from inventory import systemd_template_problem
from tasks.errors import InvalidInput, ServiceError

if TYPE_CHECKING:  # pragma: no cover
    from inventory import Host, Node
    from tasks.vocabulary import CommandResult

# Same alphabet as inventory names; a leading '-' would read as an option.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._:-]{0,254}$")
_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*$")

# Bounds for log fetches: enough to diagnose, never a memory problem.
MAX_LOG_LINES = 10_000
# supervisorctl tails in bytes, not lines; assume long-ish node log lines.
SUPERVISOR_BYTES_PER_LINE = 200


class CommandRunner(Protocol):
    """What the adapters need from a runner (SshRunner fits)."""

    def run(self, argv: list[str], timeout: float | None = None, check: bool = False) -> "CommandResult": ...


@dataclass(frozen=True)
class ServiceStatus:
    """A service's state in the manager's own words, plus what runbooks need.

    state: the manager's state (systemd ActiveState/SubState e.g.
    "active/running", docker "running"/"exited", supervisor "RUNNING"/"FATAL"),
    or "not-found" when the manager does not know the service.
    """

    state: str
    running: bool
    pid: int | None
    raw: str


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(f"service name {name!r} is not a plain name (letters, digits, @._:-)")
    return name


def _check_lines(lines: int) -> int:
    if not isinstance(lines, int) or isinstance(lines, bool) or not 1 <= lines <= MAX_LOG_LINES:
        raise InvalidInput(f"log lines must be an int from 1 to {MAX_LOG_LINES}, got {lines!r}")
    return lines


def _last_lines(text: str, lines: int) -> str:
    # supervisorctl tail ends with an extra newline; blank trailing lines are noise.
    parts = text.rstrip("\n").splitlines()[-lines:]
    return "\n".join(parts) + ("\n" if parts else "")


class ServiceManager(ABC):
    """One service under one manager on one host."""

    kind: ClassVar[str]

    def __init__(self, name: str, sudo: bool = False) -> None:
        self.name = _check_name(name)
        self.sudo = sudo

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, sudo={self.sudo})"

    def _priv(self, argv: list[str]) -> list[str]:
        return ["sudo", "-n", *argv] if self.sudo else argv

    # -- argv builders ----------------------------------------------------------

    @abstractmethod
    def status_argv(self) -> list[str]: ...

    @abstractmethod
    def start_argv(self) -> list[str]: ...

    @abstractmethod
    def stop_argv(self) -> list[str]: ...

    @abstractmethod
    def restart_argv(self) -> list[str]: ...

    @abstractmethod
    def kill_argv(self) -> list[str]:
        """SIGKILL the service's processes: for one that is hung, where a stop would wait out its timeout."""

    @abstractmethod
    def logs_argv(self, lines: int) -> list[str]: ...

    @abstractmethod
    def parse_status(self, stdout: str, exit_code: int | None, stderr: str = "") -> ServiceStatus:
        """Turn the status command's answer into a ServiceStatus; ServiceError if it makes no sense."""

    # -- running ------------------------------------------------------------------

    def status(self, runner: CommandRunner, timeout: float | None = None) -> ServiceStatus:
        r = runner.run(self.status_argv(), timeout=timeout)
        if r.dry_run:
            return ServiceStatus("unknown (dry run)", False, None, "")
        return self.parse_status(r.stdout, r.exit_code, r.stderr)

    def start(self, runner: CommandRunner, timeout: float | None = None) -> "CommandResult":
        return runner.run(self.start_argv(), timeout=timeout, check=True)

    def stop(self, runner: CommandRunner, timeout: float | None = None) -> "CommandResult":
        return runner.run(self.stop_argv(), timeout=timeout, check=True)

    def restart(self, runner: CommandRunner, timeout: float | None = None) -> "CommandResult":
        return runner.run(self.restart_argv(), timeout=timeout, check=True)

    def logs(self, runner: CommandRunner, lines: int = 200, timeout: float | None = None) -> str:
        """The last `lines` lines of the service's log (stdout and stderr of the log command)."""
        r = runner.run(self.logs_argv(lines), timeout=timeout, check=True)
        return _last_lines(r.stdout + r.stderr, lines)


class Systemd(ServiceManager):
    """A systemd unit. Status needs no privileges; changes and the journal do."""

    kind = "systemd"
    PROPERTIES = "LoadState,ActiveState,SubState,MainPID"

    def __init__(self, name: str, sudo: bool = False) -> None:
        super().__init__(name, sudo)
        if problem := systemd_template_problem(name):
            raise InvalidInput(problem)

    def status_argv(self) -> list[str]:
        # `show` answers with exit 0 for any unit (even unknown ones: LoadState=not-found),
        # unlike `is-active`, whose exit code mixes "inactive" and "unknown".
        return ["systemctl", "show", "-p", self.PROPERTIES, "--", self.name]

    def is_active_argv(self) -> list[str]:
        return ["systemctl", "is-active", "--", self.name]

    def start_argv(self) -> list[str]:
        return self._priv(["systemctl", "start", "--", self.name])

    def stop_argv(self) -> list[str]:
        return self._priv(["systemctl", "stop", "--", self.name])

    def restart_argv(self) -> list[str]:
        return self._priv(["systemctl", "restart", "--", self.name])

    def kill_argv(self) -> list[str]:
        # Every process of the unit's cgroup, not only the main one.
        return self._priv(["systemctl", "kill", "--signal=SIGKILL", "--", self.name])

    def logs_argv(self, lines: int) -> list[str]:
        return self._priv(["journalctl", "-u", self.name, "-n", str(_check_lines(lines)), "--no-pager", "-o", "short-iso"])

    def parse_status(self, stdout: str, exit_code: int | None, stderr: str = "") -> ServiceStatus:
        props = {}
        for line in stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props[key.strip()] = value.strip()
        if exit_code != 0 or "ActiveState" not in props:
            raise ServiceError(
                f"systemctl show {self.name} gave no ActiveState (exit {exit_code}): {(stderr or stdout).strip()[:300]}"
            )
        load = props.get("LoadState", "loaded")
        if load == "not-found":
            return ServiceStatus("not-found", False, None, stdout)
        active, sub = props["ActiveState"], props.get("SubState", "")
        if load != "loaded" and active in ("inactive", "failed"):
            # masked / bad-setting / error: `start` will refuse, so "inactive/dead"
            # would send a runbook into a start that cannot work. (A unit masked
            # while it runs still runs: it falls through to its real state.)
            return ServiceStatus(load, False, None, stdout)
        pid = int(props["MainPID"]) if props.get("MainPID", "0").isdigit() and props.get("MainPID") != "0" else None
        running = active == "active" and sub in ("running", "")
        return ServiceStatus(f"{active}/{sub}" if sub else active, running, pid, stdout)


class Docker(ServiceManager):
    """A docker container, addressed by name."""

    kind = "docker"
    STOP_GRACE_SECONDS = 30  # node clients need time to flush their database

    def status_argv(self) -> list[str]:
        return self._priv(
            ["docker", "inspect", "--type", "container", "--format", "{{.State.Status}} {{.State.Pid}}", "--", self.name]
        )

    def start_argv(self) -> list[str]:
        return self._priv(["docker", "start", "--", self.name])

    def stop_argv(self) -> list[str]:
        # -t works across docker versions (--time was renamed --timeout in 25).
        return self._priv(["docker", "stop", "-t", str(self.STOP_GRACE_SECONDS), "--", self.name])

    def restart_argv(self) -> list[str]:
        return self._priv(["docker", "restart", "-t", str(self.STOP_GRACE_SECONDS), "--", self.name])

    def kill_argv(self) -> list[str]:
        return self._priv(["docker", "kill", "--signal", "KILL", "--", self.name])

    def logs_argv(self, lines: int) -> list[str]:
        return self._priv(["docker", "logs", "--tail", str(_check_lines(lines)), "--", self.name])

    def parse_status(self, stdout: str, exit_code: int | None, stderr: str = "") -> ServiceStatus:
        if exit_code != 0:
            if "no such" in (stderr + stdout).lower():
                return ServiceStatus("not-found", False, None, stderr or stdout)
            raise ServiceError(f"docker inspect {self.name} failed (exit {exit_code}): {(stderr or stdout).strip()[:300]}")
        fields = stdout.split()
        if not fields:
            raise ServiceError(f"docker inspect {self.name} printed nothing")
        state = fields[0]
        pid = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() and fields[1] != "0" else None
        return ServiceStatus(state, state == "running", pid, stdout)


class Supervisor(ServiceManager):
    """A supervisord program; `config` selects the supervisord (supervisorctl -c)."""

    kind = "supervisor"
    # supervisorctl status exits 3 (LSB "not running") for a stopped program
    # and 4 for an unknown one; the text is still the answer.
    _STATUS_LINE = re.compile(r"^(?P<name>\S+)\s+(?P<state>[A-Z]+)\s*(?P<rest>.*)$")
    _RUNNING = frozenset({"RUNNING"})

    def __init__(self, name: str, sudo: bool = False, config: str | None = None) -> None:
        super().__init__(name, sudo)
        if config is not None and not _PATH.match(config):
            raise InvalidInput(f"supervisor config path {config!r} is not a plain absolute path")
        self.config = config

    def _ctl(self, *args: str) -> list[str]:
        base = ["supervisorctl"] + (["-c", self.config] if self.config else [])
        return self._priv([*base, *args])

    def status_argv(self) -> list[str]:
        return self._ctl("status", self.name)

    def start_argv(self) -> list[str]:
        return self._ctl("start", self.name)

    def stop_argv(self) -> list[str]:
        return self._ctl("stop", self.name)

    def restart_argv(self) -> list[str]:
        return self._ctl("restart", self.name)

    def kill_argv(self) -> list[str]:
        # The program's own process; a program that forks its node must have the child die with it.
        return self._ctl("signal", "KILL", self.name)

    def logs_argv(self, lines: int, stream: str = "stdout") -> list[str]:
        """supervisorctl tails bytes (`tail -BYTES name [stdout|stderr]`), not lines."""
        if stream not in ("stdout", "stderr"):
            raise InvalidInput(f"stream must be stdout or stderr, got {stream!r}")
        nbytes = _check_lines(lines) * SUPERVISOR_BYTES_PER_LINE
        return self._ctl("tail", f"-{nbytes}", self.name, stream)

    def parse_status(self, stdout: str, exit_code: int | None, stderr: str = "") -> ServiceStatus:
        text = stdout.strip()
        if "no such process" in text.lower() or "no such group" in text.lower():
            return ServiceStatus("not-found", False, None, stdout)
        for line in text.splitlines():
            m = self._STATUS_LINE.match(line.strip())
            # programs in a group are shown as group:name
            if m and (m["name"] == self.name or m["name"].endswith(f":{self.name}")):
                pid_match = re.search(r"\bpid (\d+)", m["rest"])
                state = m["state"]
                return ServiceStatus(state, state in self._RUNNING, int(pid_match[1]) if pid_match else None, stdout)
        raise ServiceError(
            f"supervisorctl status {self.name} gave no status line (exit {exit_code}): "
            f"{(text or stderr).strip()[:300]} — is supervisord running and the -c config right?"
        )


def service_manager_for(node: "Node", host: "Host", sudo: bool | None = None) -> ServiceManager:
    """The adapter for a node's service on its host.

    sudo=None chooses: systemd changes need root, so sudo unless the SSH user
    is root; docker and supervisor use socket permissions, so no sudo.
    """
    kind = node.service.manager.value if hasattr(node.service.manager, "value") else str(node.service.manager)
    name = node.service.name
    if kind == "systemd":
        return Systemd(name, sudo=(host.ssh_user != "root") if sudo is None else sudo)
    if kind == "docker":
        return Docker(name, sudo=bool(sudo))
    if kind == "supervisor":
        return Supervisor(name, sudo=bool(sudo), config=host.supervisor_config)
    raise InvalidInput(f"unknown service manager {kind!r} for service {name!r}")
