"""The words every layer shares: node names, audit entry kinds and outcomes, action and trigger kinds, command results.

This is the ground layer: it imports nothing from `tasks/` but the errors,
so every other module (systems, guards, the frame, flows, the inventory)
can stand on it without making a cycle.

The enums are `str`-valued: an entry written with `EntryKind.action` is the
same JSON string `"action"` as before, and comparing a read entry's
`"outcome"` with `Outcome.succeeded` works either way round.
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
# Patterns are strings (not compiled) because pydantic's Field(pattern=...)
# and the Prefect UI's JSON schema take them as they are.
NODE_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
# Who an operator is, for approvals and circuit closing: a user name or an e-mail.
OPERATOR_RE = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$"

NodeName = Annotated[str, Field(pattern=NODE_NAME_RE, description="Node name from the inventory")]
HostName = Annotated[str, Field(pattern=NODE_NAME_RE, description="Host name from the inventory")]
Operator = Annotated[str, Field(pattern=OPERATOR_RE, description="Who you are (user name or e-mail)")]
# A flow parameter only automation sets (e.g. the id of the event that started
# the run): deployments/forms.py leaves every parameter whose schema carries
# AUTOMATION_MARKER out of the operator's run form. Another type: mark it with
# `Field(json_schema_extra={AUTOMATION_MARKER: True})`; it needs a default.
AUTOMATION_MARKER = "x-runbooks-automation"
AUTOMATION_ONLY = Annotated[str | None, Field(
    max_length=100, json_schema_extra={AUTOMATION_MARKER: True},
    description="Set by automation (the id of the event that started the run); not for operators",
)]


def check_node_name(value: object) -> str:
    """`value` if it is a node name, else InvalidInput (before anything is sent anywhere)."""
    # fullmatch: `$` alone would let a trailing newline through.
    if not isinstance(value, str) or not re.fullmatch(NODE_NAME_RE, value):
        raise InvalidInput(f"{value!r} is not a node name (letters, digits, . _ -; at most 63 characters)")
    return value


class EntryKind(str, Enum):
    """What one audit entry records."""

    started = "started"  # what triggered the run, with which parameters
    plan = "plan"  # what it intends to do
    action = "action"  # one mutating thing it did somewhere
    would = "would"  # what a dry run would have done instead of an action
    state = "state"  # a labelled snapshot (before, after, ...)
    note = "note"  # anything else worth keeping (notifications, decisions)
    guard = "guard"  # a safety guard decided something
    approval = "approval"  # someone approved (or refused) what the run asked for
    outcome = "outcome"  # how the run attempt ended; exactly one per attempt

    def __str__(self) -> str:
        return self.value


class Outcome(str, Enum):
    """How a run attempt ended."""

    succeeded = "succeeded"
    failed = "failed"
    noop = "noop"  # nothing needed doing
    refused = "refused"  # a guard or bad input stopped it before it acted
    escalated = "escalated"  # handed to a human

    def __str__(self) -> str:
        return self.value


class ActionKind(str, Enum):
    """What a mutating action is, so guards can count them from the trail."""

    command = "command"  # any other remote command
    restart = "restart"
    start = "start"
    stop = "stop"
    kill = "kill"  # SIGKILL: a hung process, once its diagnostics are captured
    drain = "drain"  # load balancer: no new connections
    ready = "ready"  # load balancer: back in rotation
    maint = "maint"  # load balancer: out completely
    set_weight = "set-weight"
    upload = "upload"  # object storage
    delete = "delete"

    def __str__(self) -> str:
        return self.value


class TriggerKind(str, Enum):
    """How a run was started."""

    manual = "manual"  # an operator, from the UI or the CLI
    schedule = "schedule"
    event = "event"  # a Prefect event (e.g. fleet health found a sick node)
    alert = "alert"  # Alertmanager, through the bridge

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
    dry_run: bool = False  # a dry run's stand-in: the command was recorded, not run


    @property
    def ok(self) -> bool:
        return self.exit_code == 0


# The environment variable a regional worker hands every run it starts: the region the run executes in
# (deployments/regional_worker.py); the frame audits it beside the region the run belongs in.
REGION_ENV = "RUNBOOKS_REGION"
