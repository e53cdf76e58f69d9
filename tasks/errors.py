"""The one exception hierarchy of the building blocks.

Flows catch `RunbookError` to turn any failure of a building block into an
audited outcome; the subclasses let them decide (a host key problem needs a
human, a command timeout may be retried). Messages say what went wrong,
where, and what the operator can do about it.
"""

from __future__ import annotations

from typing import Protocol


class _CommandResult(Protocol):
    """What the SSH errors read of a `tasks.vocabulary.CommandResult`.

    A protocol rather than an import: this module is the ground every other
    one stands on, so it imports nothing from `tasks/`.
    """

    host: str
    command: str
    exit_code: int | None
    stdout: str
    stderr: str


class RunbookError(Exception):
    """Base class of every error raised by the runbook building blocks."""


class InvalidInput(RunbookError, ValueError):
    """An argument was refused before anything was sent anywhere."""


# --- SSH ---------------------------------------------------------------------


class SshError(RunbookError):
    """Connecting to a host or running a command on it failed."""

    def __init__(self, message: str, host: str | None = None) -> None:
        super().__init__(message)
        self.host = host


class HostKeyUnknown(SshError):
    """The host offered a key that the SSH identity's known_hosts does not list."""

    def __init__(self, host: str, offered: str = "") -> None:
        super().__init__(
            f"{host}: host key is not in the SSH identity's known_hosts{offered}. "
            "Nothing was run. Verify the key out of band (on the host: "
            "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) and add its line "
            "to the identity block's known_hosts.",
            host,
        )


class HostKeyChanged(SshError):
    """The host offered a key different from the one known_hosts records for it."""

    def __init__(self, host: str, offered: str = "", expected: str = "") -> None:
        detail = ""
        if offered or expected:
            detail = f" (offered {offered}, known_hosts has {expected})"
        super().__init__(
            f"{host}: HOST KEY CHANGED{detail}. Nothing was run. This is either a "
            "reinstalled host or someone in the middle: confirm with the host's "
            "owner before replacing the line in the identity block's known_hosts.",
            host,
        )


class CommandTimeout(SshError):
    """A remote command ran past its deadline; it was signalled and abandoned."""

    def __init__(self, result: _CommandResult, timeout: float) -> None:
        super().__init__(
            f"{result.host}: `{result.command}` did not finish within {timeout:g}s "
            "(the command was sent SIGTERM and its channel closed; check the host "
            "for a hung process)",
            result.host,
        )
        self.result = result
        self.timeout = timeout


class CommandFailed(SshError):
    """A remote command exited non-zero and the caller asked for check=True."""

    def __init__(self, result: _CommandResult) -> None:
        tail = (result.stderr or result.stdout).strip()[-500:]
        super().__init__(
            f"{result.host}: `{result.command}` exited {result.exit_code}"
            + (f": {tail}" if tail else ""),
            result.host,
        )
        self.result = result


# --- Service managers --------------------------------------------------------


class ServiceError(RunbookError):
    """A service manager's answer could not be understood or reported a failure."""


# --- HAProxy -----------------------------------------------------------------


class HAProxyError(RunbookError):
    """The HAProxy runtime API refused a command or could not be reached."""


# --- Notifications -----------------------------------------------------------


class NotificationError(RunbookError):
    """Slack or PagerDuty did not accept a notification.

    Callers usually log this and carry on: a runbook should not fail because
    the chat is down.
    """


# --- Audit -------------------------------------------------------------------


class AuditError(RunbookError):
    """The audit trail could not be written; runbooks must stop rather than act unaudited."""


# --- Object store and backups ------------------------------------------------


class ObjectStoreError(RunbookError):
    """The object store refused a request or could not be reached."""


class ChecksumMismatch(ObjectStoreError):
    """Bytes arrived (at the store, or back from it) with a different sha256 than was sent."""


class ObjectExists(ObjectStoreError):
    """A write that must not replace anything found the key already taken."""


class BackupIntegrityError(RunbookError):
    """An encrypted stream or a manifest failed authentication: tampered, truncated or the wrong key."""
