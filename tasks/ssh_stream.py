"""Streaming remote commands: a host's stdout as a readable stream, or a readable stream into its stdin.

    with read_from(ssh, ["cat", "--", path]) as stream:    # the remote stdout, as it comes
        objectstore.upload(store, key, EncryptingReader(stream, key))
    write_to(ssh, ["tar", "-xf", "-", "-C", target], plain) # a readable into the remote stdin

Why it looks like this:

- Backups of node datadirs are far larger than the worker's memory and must
  not be staged on its disk, so the bytes flow through: SSH channel ->
  readers -> multipart upload (and back). Memory is bounded by the SSH
  window (paramiko stops granting window while its buffer is unread) and
  by the uploader's parts, not by the size of the stream.
- A command's failure must fail whatever consumes it: the exit status is
  collected when the stream ends and a non-zero one raises CommandFailed
  from the read that hit the end, so the upload reading it aborts its
  multipart upload and no object appears as if it were a backup.
- Every wait is bounded twice: an overall `timeout`, and `idle_timeout`
  (no byte moved for that long: a hung tar, a full disk on the host). On
  either, or when the consumer raises, the remote command is sent SIGTERM
  and its channel closed, so nothing keeps running on the host.
- The same rules as `SshRunner.run` (tasks/ssh.py), on its connection:
  argv lists only (`prepare_command`), the run's gate asked first (a dry run
  records the command and runs nothing), and one `action` audit entry per
  command with its exit code, duration, stderr tail and bytes streamed.
  stdout is the data here, so it is not kept in the audit.
"""

from __future__ import annotations

import contextlib
import io
import select
import socket
import time
from collections.abc import Iterator
from typing import IO, Any

import paramiko

from tasks.errors import CommandFailed, CommandTimeout, SshError
from tasks.ssh import SshRunner, _CappedBuffer, _signal, prepare_command
from tasks.vocabulary import ActionKind, CommandResult

STREAM_TIMEOUT = 6 * 3600.0  # a 2 TiB datadir at 100 MiB/s; the idle timeout catches hangs long before
IDLE_TIMEOUT = 60.0
RECV_CHUNK = 256 * 1024
SOURCE_CHUNK = 1024 * 1024
_CONNECTION_ERRORS = (paramiko.SSHException, OSError, EOFError)


class _Session:
    """One remote command on its own channel: timing, stderr, the audit entry (exactly one)."""

    def __init__(self, ssh: SshRunner, argv: list[str], command: str, data: dict, timeout: float,
                 idle_timeout: float, stdin: bytes | None = b"") -> None:
        """`stdin`: bytes to feed while stdout is read (b"": EOF at once), or None: the caller sends it."""
        self.ssh, self.argv, self.command, self.data = ssh, argv, command, data
        self.timeout, self.idle_timeout = float(timeout), float(idle_timeout)
        self.out, self.err = _CappedBuffer(ssh.max_output_bytes), _CappedBuffer(ssh.max_output_bytes)
        self.bytes = 0  # streamed through stdout (read_from) or stdin (write_to)
        self.recorded = False
        self.started = self.last_activity = time.monotonic()
        self._stdin, self._stdin_sent = stdin or b"", 0
        ssh.connect()
        try:
            self.channel = ssh._client.get_transport().open_session(timeout=min(ssh.connect_timeout, self.timeout))
        except _CONNECTION_ERRORS as exc:
            self.record(None, error=f"open channel: {exc}")
            ssh.close()
            raise SshError(f"{ssh.label}: could not open a session for `{command}`: {exc}", ssh.label) from exc
        try:
            self.channel.exec_command(command)
            self.fd = self.channel.fileno()
        except _CONNECTION_ERRORS as exc:
            self.lost(exc)
        if stdin == b"":
            self.channel.shutdown_write()  # read_from's command gets EOF at once, like run()'s

    # -- time ------------------------------------------------------------------

    def time_left(self) -> float:
        now = time.monotonic()
        return min(self.started + self.timeout, self.last_activity + self.idle_timeout) - now

    def check_time(self) -> None:
        """Past the deadline or idle too long: signal the command, record, raise CommandTimeout."""
        if self.time_left() > 0:
            return
        idle = time.monotonic() < self.started + self.timeout
        limit = self.idle_timeout if idle else self.timeout
        self.abandon(**({"idle_timeout_s": limit} if idle else {"timeout_s": limit}))
        exc = CommandTimeout(self.result(None), limit)
        if idle:
            exc.add_note(f"no byte moved for {limit:g}s (idle timeout)")
        raise exc

    def wait(self) -> None:
        # While stdin is still to be sent, wake often: window space has no file descriptor to wait on.
        limit = 0.05 if self.stdin_pending else self.time_left()
        select.select([self.fd], [], [], max(0.0, limit))

    # -- bytes -----------------------------------------------------------------

    def drain(self, stdout: bool = True) -> None:
        """Take what stderr (and, unless it is the data, stdout) holds, so the command never blocks on it."""
        while self.channel.recv_stderr_ready():
            self.err.feed(self.channel.recv_stderr(RECV_CHUNK))
            self.last_activity = time.monotonic()
        while stdout and self.channel.recv_ready():
            self.out.feed(self.channel.recv(RECV_CHUNK))
            self.last_activity = time.monotonic()

    @property
    def stdin_pending(self) -> bool:
        return self._stdin_sent < len(self._stdin)

    def feed_stdin(self) -> None:
        """Send what the window allows of read_from's stdin without blocking; EOF after the last byte."""
        if not self.stdin_pending or not self.channel.send_ready():
            return
        try:
            n = self.channel.send(self._stdin[self._stdin_sent:self._stdin_sent + RECV_CHUNK])
        except OSError:
            n = 0
        if n == 0:  # the command closed its input: its exit status will say whether that was wrong
            self._stdin_sent = len(self._stdin)
        self._stdin_sent += n
        self.last_activity = time.monotonic()
        if not self.stdin_pending:
            self.channel.shutdown_write()

    def send(self, chunk: bytes) -> bool:
        """Send all of `chunk` as the window allows (SSH flow control); False if the command stopped reading."""
        offset = 0
        while offset < len(chunk):
            self.drain()
            self.check_time()
            self.channel.settimeout(max(0.01, min(1.0, self.time_left())))
            try:
                n = self.channel.send(chunk[offset:offset + RECV_CHUNK])
            except socket.timeout:
                continue  # no window yet: drain, check the clock, try again
            except OSError:
                return False
            if n == 0:
                return False
            offset += n
            self.bytes += n
            self.last_activity = time.monotonic()
        return True

    # -- the end ---------------------------------------------------------------

    def finish(self) -> CommandResult:
        """Wait for the exit status (bounded), record it; a non-zero exit raises CommandFailed."""
        try:
            while not self.channel.exit_status_ready():
                self.check_time()
                if self.channel.eof_received or self.channel.closed:
                    # After EOF the channel's pipe stays readable: wait on the status itself.
                    self.channel.status_event.wait(max(0.0, min(0.5, self.time_left())))
                else:
                    self.wait()
                    self.drain()
            self.drain()
        except _CONNECTION_ERRORS as exc:
            self.lost(exc)
        code = self.channel.exit_status  # -1: ended by a signal, no exit status
        self.record(code)
        self.close()
        result = self.result(code)
        if code != 0:
            raise CommandFailed(result)
        return result

    def abandon(self, **extra: Any) -> None:
        """Stop the command (SIGTERM, close the channel) and record it as unfinished; no-op once it ended."""
        if self.recorded:
            self.close()
            return
        # Never to a closed channel: sshd may already have given its number to the next one.
        if not self.channel.closed:
            with contextlib.suppress(Exception):  # best effort: the channel is closed next anyway
                _signal(self.channel, "TERM")
        self.close()
        self.record(None, **extra)

    def lost(self, exc: BaseException) -> None:
        self.abandon(error=str(exc))
        self.ssh.close()
        raise SshError(f"{self.ssh.label}: connection lost while streaming `{self.command}`: {exc}",
                       self.ssh.label) from exc

    def close(self) -> None:
        self.channel.close()

    def result(self, exit_code: int | None) -> CommandResult:
        return CommandResult(host=self.ssh.label, argv=self.argv, command=self.command, exit_code=exit_code,
                             stdout=self.out.text(), stderr=self.err.text(),
                             duration_s=time.monotonic() - self.started,
                             truncated=bool(self.out.dropped or self.err.dropped))

    def record(self, exit_code: int | None, **extra: Any) -> None:
        if self.recorded:
            return
        self.recorded = True
        if self.out.dropped or self.err.dropped:
            extra["dropped_bytes"] = {"stdout": self.out.dropped, "stderr": self.err.dropped}
        self.ssh._record(self.command, exit_code, time.monotonic() - self.started, self.out, self.err,
                         bytes_streamed=self.bytes, **self.data, **extra)


class _RemoteStdout(io.RawIOBase):
    """The command's stdout; the read that finds its end collects the exit status (CommandFailed if non-zero)."""

    def __init__(self, session: _Session) -> None:
        self._s, self._ended = session, False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        s = self._s
        if self._ended:
            return 0
        try:
            while True:
                s.drain(stdout=False)
                s.feed_stdin()
                if s.channel.recv_ready():
                    data = s.channel.recv(min(len(b), RECV_CHUNK))
                    b[:len(data)] = data
                    s.bytes += len(data)
                    s.last_activity = time.monotonic()
                    return len(data)
                if s.channel.eof_received or s.channel.closed:
                    break
                s.check_time()
                s.wait()
        except _CONNECTION_ERRORS as exc:
            s.lost(exc)
        self._ended = True
        s.finish()
        return 0


def _refused(ssh: SshRunner, command: str, data: dict) -> bool:
    """True in a dry run: the gate recorded the command, which must not run."""
    return ssh.gate is not None and not ssh.gate.allows("ssh", ssh.label, command, **data)


@contextlib.contextmanager
def read_from(ssh: SshRunner, argv: list[str], *, action: ActionKind | str = ActionKind.command,
              audit_data: dict | None = None, timeout: float = STREAM_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT,
              stdin: bytes = b"") -> Iterator[IO[bytes]]:
    """The remote command's stdout as a readable stream (stderr kept, capped, for the audit and errors).

    `stdin` (small: a list of file names) is fed to the command while its
    output is read, so neither side can block the other. Leaving the block
    normally before the end reads the rest, so the exit status is the
    command's own; leaving it with an exception stops the command.
    In a dry run the stream is empty.
    """
    argv, command, data = prepare_command(argv, action, audit_data)
    if _refused(ssh, command, data):
        yield io.BytesIO()
        return
    session = _Session(ssh, argv, command, data, timeout, idle_timeout, stdin)
    stream = _RemoteStdout(session)
    try:
        yield stream
        while stream.read(RECV_CHUNK):
            pass
    except BaseException as exc:
        session.abandon(error=f"the reader stopped: {type(exc).__name__}: {exc}")
        raise
    finally:
        session.close()


def write_to(ssh: SshRunner, argv: list[str], source: IO[bytes], *, action: ActionKind | str = ActionKind.command,
             audit_data: dict | None = None, timeout: float = STREAM_TIMEOUT,
             idle_timeout: float = IDLE_TIMEOUT) -> CommandResult:
    """Feed `source` to the remote command's stdin, then EOF; its result (CommandFailed if non-zero).

    A source that raises (a decryption failure) stops the command without
    EOF, so it never takes a truncated stream for a whole one. In a dry run
    the source is not read.
    """
    argv, command, data = prepare_command(argv, action, audit_data)
    if _refused(ssh, command, data):
        return CommandResult(host=ssh.label, argv=argv, command=command, exit_code=0, stdout="", stderr="",
                             duration_s=0.0, dry_run=True)
    session = _Session(ssh, argv, command, data, timeout, idle_timeout, stdin=None)
    try:
        while chunk := source.read(SOURCE_CHUNK):
            if not session.send(chunk):
                break  # the command stopped reading: its exit status says whether that was wrong
        session.channel.shutdown_write()
        return session.finish()
    except BaseException as exc:
        session.abandon(error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        session.close()
