"""The one SSH runner: remote commands as argv lists, host keys pinned, every command audited.

Why it looks like this:

- argv lists only. The remote side always hands the command to the login
  user's shell, so the command string is `shlex.join(argv)`: every argument
  arrives as one literal word, whatever it contains. A `str` is refused
  (TypeError) because it would be shell text nobody quoted.
- Trust comes only from the SSH identity block's known_hosts. Nothing is
  read from ~/.ssh, no agent is used, unknown hosts are rejected
  (`HostKeyUnknown`) and a changed key is refused (`HostKeyChanged`).
- We connect the TCP socket ourselves with TCP_NODELAY: without it paramiko
  pays ~40 ms of Nagle/delayed-ACK per command, with it ~2 ms.
- Every wait is bounded: connect, banner, auth and channel opening by
  `connect_timeout`, each command by `command_timeout` (a deadline checked
  while reading; on expiry the remote process is sent SIGTERM and the
  channel closed). Output kept in memory is capped per stream; the rest is
  read and discarded so the command can finish.
- Every command, whatever its result, becomes an `action` audit entry.
- paramiko's own rekeying is off (sshd still rekeys): paramiko #822, a deadlock
  that failed backups past 512 MiB with "Key-exchange timed out".
"""

from __future__ import annotations

import io
import select
import shlex
import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

from tasks.errors import CommandFailed, CommandTimeout, HostKeyChanged, HostKeyUnknown, SshError
from tasks.redaction import register_secret
from tasks.vocabulary import ActionKind, CommandResult  # CommandResult re-exported: callers import it from here too

if TYPE_CHECKING:  # pragma: no cover - typing only; keeps this module free of Prefect at import
    from tasks.gate import Gate
    from blocks import SshIdentity
    from inventory import Host
    from tasks.audit import AuditRecord


def load_private_key(text: str) -> paramiko.PKey:
    """Parse an OpenSSH/PEM private key held in a string (ed25519, RSA or ECDSA)."""
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.RSAKey, paramiko.ECDSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(f"{cls.__name__}: {exc}")
    # Never echo the key itself.
    raise SshError("the SSH identity's private_key is not a readable unencrypted ed25519, RSA or ECDSA key ("
                   + "; ".join(errors) + ")")


def load_known_hosts(text: str, into: paramiko.HostKeys | None = None) -> paramiko.HostKeys:
    """known_hosts lines from a string (OpenSSH format, hashed names allowed).

    @cert-authority and @revoked lines are skipped: the first is not
    supported by paramiko, and skipping the second can only make a host
    unknown, never trusted.
    """
    keys = into if into is not None else paramiko.HostKeys()
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("@"):
            continue
        try:
            entry = HostKeyEntry.from_line(line, lineno)
        except (paramiko.SSHException, InvalidHostKey, ValueError) as exc:
            raise SshError(f"the SSH identity's known_hosts line {lineno} is not valid ({type(exc).__name__})") from None
        if entry is None or entry.key is None:
            continue  # a key type paramiko does not know; it cannot match anyway
        for name in entry.hostnames:
            keys.add(name, entry.key.get_name(), entry.key)
    return keys


def _describe_key(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


class _RejectUnknownHost(paramiko.RejectPolicy):
    """RejectPolicy that says which key was offered, as our typed error."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyUnknown(hostname, f" (it offered {_describe_key(key)})")


def _signal(channel: paramiko.Channel, name: str) -> None:
    """Ask sshd to signal the remote command (RFC 4254 6.9; OpenSSH >= 7.9).

    paramiko has no API for it, so the request is sent by hand; a server
    that does not support it ignores it (want_reply is false).
    """
    m = paramiko.Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(channel.remote_chanid)
    m.add_string("signal")
    m.add_boolean(False)
    m.add_string(name)
    channel.transport._send_user_message(m)  # noqa: SLF001 - no public API for this request


class _CappedBuffer:
    """Keeps the last `limit` bytes, counts what it dropped.

    The end of an output is what runbooks need: the latest log lines, the
    error a tool printed before exiting.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.dropped += excess

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def prepare_command(argv: list[str], action: ActionKind | str, audit_data: dict | None) -> tuple[list[str], str, dict]:
    """Check an argv list and build its command line and audit data; refuses before anything runs.

    Shared by `SshRunner.run` and the streaming commands (tasks/ssh_stream.py).
    """
    if isinstance(argv, (str, bytes)):
        raise TypeError("SSH commands are argv lists, not strings: shell text is never built by hand")
    argv = list(argv)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise TypeError("argv must be a non-empty list of str")
    if any("\x00" in a for a in argv):
        raise ValueError("an argument contains a NUL byte")
    audit_data = dict(audit_data or {})
    audit_data["action"] = ActionKind(audit_data.pop("action", action))
    return argv, shlex.join(argv), audit_data


class SshRunner:
    """One SSH connection to one host, for running argv commands.

    One runner per task; only its streams (tasks/ssh_stream.py) may share it between threads.
    Use as a context manager:

        with SshRunner(host, identity, audit) as ssh:
            ssh.run(["systemctl", "is-active", "erigon"])

    `identity` is an SshIdentity block (or anything with `private_key` and
    `known_hosts`); alternatively pass `private_key=` and `known_hosts=`
    strings. `name` labels the host in audit entries (default user@address:port).
    """

    def __init__(
        self,
        host: "Host",
        identity: "SshIdentity | None" = None,
        audit: "AuditRecord | None" = None,
        connect_timeout: float = 5.0,
        command_timeout: float = 60.0,
        max_output_bytes: int = 65536,
        *,
        private_key: str | None = None,
        known_hosts: str | None = None,
        name: str | None = None,
        gate: "Gate | None" = None,
    ) -> None:
        if identity is not None:
            pk = identity.private_key
            private_key = pk.get_secret_value() if hasattr(pk, "get_secret_value") else str(pk)
            known_hosts = identity.known_hosts
        if not private_key or known_hosts is None:
            raise ValueError("SshRunner needs an SshIdentity or private_key and known_hosts")
        if gate is not None:
            audit = gate.audit
        if audit is None:
            raise ValueError("SshRunner needs an AuditRecord (or a Gate): every remote command is audited")
        register_secret(private_key)
        self.host = host
        self.audit = audit
        # The run's gate (tasks/gate.py): in a dry run it records each command and nothing connects.
        self.gate = gate
        self.connect_timeout = float(connect_timeout)
        self.command_timeout = float(command_timeout)
        self.max_output_bytes = int(max_output_bytes)
        # [fd00::10]:22, as OpenSSH writes it: "fd00::10:22" would not say where the port starts.
        address = f"[{host.address}]" if ":" in host.address else host.address
        self.label = name or f"{host.ssh_user}@{address}:{host.ssh_port}"
        self._pkey = load_private_key(private_key)
        self._known_hosts = known_hosts
        self._client: paramiko.SSHClient | None = None
        self._connect_lock = threading.Lock()  # streams on threads (a datadir's files) open one connection

    # -- connection -----------------------------------------------------------

    def __enter__(self) -> "SshRunner":
        if not self._dry:
            self.connect()
        return self

    @property
    def _dry(self) -> bool:
        return self.gate is not None and self.gate.dry_run

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def connect(self) -> None:
        """Open the connection (idempotent, thread-safe). Raises HostKeyUnknown/HostKeyChanged/SshError."""
        with self._connect_lock:
            self._connect()

    def _connect(self) -> None:
        if self._client is not None and self._client.get_transport() is not None and self._client.get_transport().is_active():
            return
        self.close()
        host = self.host
        client = paramiko.SSHClient()
        load_known_hosts(self._known_hosts, client.get_host_keys())
        client.set_missing_host_key_policy(_RejectUnknownHost())
        try:
            sock = socket.create_connection((host.address, host.ssh_port), timeout=self.connect_timeout)
        except OSError as exc:
            raise SshError(
                f"{self.label}: cannot reach the SSH port: {exc} (is the host up and sshd listening?)",
                self.label,
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client.connect(
                host.address,
                port=host.ssh_port,
                username=host.ssh_user,
                pkey=self._pkey,
                sock=sock,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                channel_timeout=self.connect_timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except HostKeyUnknown:
            client.close()
            sock.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            sock.close()
            raise HostKeyChanged(self.label, _describe_key(exc.key), _describe_key(exc.expected_key)) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            sock.close()
            raise SshError(
                f"{self.label}: the SSH identity's key was refused for user {host.ssh_user} ({exc}); "
                "check the user's authorized_keys",
                self.label,
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            sock.close()
            raise SshError(f"{self.label}: SSH connection failed: {exc}", self.label) from exc
        # Rekeying is sshd's (every 1-4 GB): paramiko's own, at 512 MiB, deadlocks when a channel closes meanwhile
        client.get_transport().packetizer.REKEY_BYTES = client.get_transport().packetizer.REKEY_PACKETS = 2**62
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- commands -------------------------------------------------------------

    def run(
        self,
        argv: list[str],
        timeout: float | None = None,
        check: bool = False,
        audit_data: dict | None = None,
        action: ActionKind | str = ActionKind.command,
    ) -> CommandResult:
        """Run one command; returns its result, audited whatever happened.

        `action` (restart, stop...) and `audit_data` (e.g. which runbook step
        it was) are stored with the command's audit entry, so guards can
        count typed actions from the audit trail.

        Raises CommandTimeout past the deadline, CommandFailed on a non-zero
        exit when check=True, SshError when the connection fails.
        """
        argv, command, audit_data = prepare_command(argv, action, audit_data)
        limit = self.command_timeout if timeout is None else float(timeout)
        if self.gate is not None and not self.gate.allows("ssh", self.label, command, **audit_data):
            # A dry run: recorded as "would run"; nothing connected, nothing ran.
            return CommandResult(host=self.label, argv=argv, command=command, exit_code=0, stdout="", stderr="",
                                 duration_s=0.0, dry_run=True)

        self.connect()
        assert self._client is not None
        transport = self._client.get_transport()
        started = time.monotonic()
        deadline = started + limit
        out, err = _CappedBuffer(self.max_output_bytes), _CappedBuffer(self.max_output_bytes)
        exit_code: int | None = None
        timed_out = False
        try:
            channel = transport.open_session(timeout=min(self.connect_timeout, limit))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._record(command, None, time.monotonic() - started, out, err, error=f"open channel: {exc}",
                         **audit_data)
            self.close()
            raise SshError(f"{self.label}: could not open a session for `{command}`: {exc}", self.label) from exc
        try:
            channel.settimeout(limit)
            channel.exec_command(command)
            channel.shutdown_write()  # no stdin: a command waiting for input gets EOF, not our deadline
            fd = channel.fileno()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                got = False
                if channel.recv_ready():
                    out.feed(channel.recv(32768))
                    got = True
                if channel.recv_stderr_ready():
                    err.feed(channel.recv_stderr(32768))
                    got = True
                if got:
                    continue
                if channel.eof_received or channel.closed:
                    if channel.status_event.wait(remaining):
                        # -1: no exit status (killed by a signal, or sshd gave none)
                        exit_code = channel.exit_status
                        break
                    timed_out = True
                    break
                else:
                    select.select([fd], [], [], remaining)
            if timed_out:
                try:
                    _signal(channel, "TERM")
                except Exception:  # noqa: BLE001 - best effort; the channel is closed next anyway
                    pass
        except (paramiko.SSHException, OSError, EOFError) as exc:
            duration = time.monotonic() - started
            self._record(command, None, duration, out, err, error=str(exc), **audit_data)
            self.close()
            raise SshError(f"{self.label}: connection lost while running `{command}`: {exc}", self.label) from exc
        finally:
            channel.close()

        duration = time.monotonic() - started
        result = CommandResult(
            host=self.label,
            argv=argv,
            command=command,
            exit_code=exit_code,
            stdout=out.text(),
            stderr=err.text(),
            duration_s=duration,
            truncated=bool(out.dropped or err.dropped),
        )
        extra: dict[str, Any] = {}
        if result.truncated:
            extra["dropped_bytes"] = {"stdout": out.dropped, "stderr": err.dropped}
        if timed_out:
            extra["timeout_s"] = limit
        self._record(command, exit_code, duration, out, err, **audit_data, **extra)
        if timed_out:
            raise CommandTimeout(result, limit)
        if check and exit_code != 0:
            raise CommandFailed(result)
        return result

    def _record(
        self, command: str, exit_code: int | None, duration: float, out: _CappedBuffer, err: _CappedBuffer, **extra: Any
    ) -> None:
        self.audit.action(
            host=self.label,
            command=command,
            exit_code=exit_code,
            duration_s=duration,
            stdout_tail=out.text(),
            stderr_tail=err.text(),
            **extra,
        )
