"""The words every layer shares: node names, audit entry kinds and outcomes, action and trigger kinds, command results.

This is the ground layer: it imports nothing from `tasks/` but the errors,
so every other module (systems, guards, the frame, flows, the inventory)
can stand on it without making a cycle.

The enums are `str`-valued: an entry written with `EntryKind.ACTION` is the
same JSON string `"action"` as before, and comparing a read entry's
`"outcome"` with `Outcome.SUCCEEDED` works either way round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Annotated

from pydantic import Field

from tasks.errors import InvalidInput

# One rule for every name in the inventory (nodes, hosts, chains, blocks...):
# safe in a shell word, a Prefect resource id, a concurrency-limit name and a
# file name, and short enough to be a DNS label.
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

NodeName = Annotated[str, Field(pattern=NODE_NAME_RE.pattern, description="Node name from the inventory")]


def check_node_name(value: object) -> str:
    """`value` if it is a node name, else InvalidInput (before anything is sent anywhere)."""
    # fullmatch: `$` alone would let a trailing newline through.
    if not isinstance(value, str) or not NODE_NAME_RE.fullmatch(value):
        raise InvalidInput(f"{value!r} is not a node name (letters, digits, . _ -; at most 63 characters)")
    return value


class EntryKind(str, Enum):
    """What one audit entry records."""

    STARTED = "started"  # what triggered the run, with which parameters
    PLAN = "plan"  # what it intends to do
    ACTION = "action"  # one mutating thing it did somewhere
    WOULD = "would"  # what a dry run would have done instead of an action
    STATE = "state"  # a labelled snapshot (before, after, ...)
    NOTE = "note"  # anything else worth keeping (notifications, decisions)
    GUARD = "guard"  # a safety guard decided something
    APPROVAL = "approval"  # someone approved (or refused) what the run asked for
    OUTCOME = "outcome"  # how the run attempt ended; exactly one per attempt

    def __str__(self) -> str:
        return self.value


class Outcome(str, Enum):
    """How a run attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOOP = "noop"  # nothing needed doing
    REFUSED = "refused"  # a guard or bad input stopped it before it acted
    ESCALATED = "escalated"  # handed to a human

    def __str__(self) -> str:
        return self.value


class ActionKind(str, Enum):
    """What a mutating action is, so guards can count them from the trail."""

    COMMAND = "command"  # any other remote command
    RESTART = "restart"
    START = "start"
    STOP = "stop"
    DRAIN = "drain"  # load balancer: no new connections
    READY = "ready"  # load balancer: back in rotation
    MAINT = "maint"  # load balancer: out completely
    SET_WEIGHT = "set-weight"
    UPLOAD = "upload"  # object storage
    DELETE = "delete"

    def __str__(self) -> str:
        return self.value


class TriggerKind(str, Enum):
    """How a run was started."""

    MANUAL = "manual"  # an operator, from the UI or the CLI
    SCHEDULE = "schedule"
    EVENT = "event"  # a Prefect event (e.g. fleet health found a sick node)
    ALERT = "alert"  # Alertmanager, through the bridge

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class CommandResult:
    """What one remote command did.

    exit_code is None when the command ran past its deadline, -1 when it
    ended without an exit status (killed by a signal).
    """

    host: str
    argv: list[str]
    command: str
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0
