"""Global pause switch: has an operator paused automatic remediation?

A Prefect Variable (`runbooks_paused`), editable in the UI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tasks.errors import InvalidInput, RunbookError
from tasks.prefect_api import client
from tasks.guards._trail import utcnow
from tasks.redaction import redact_text

PAUSE_VARIABLE = "runbooks_paused"
# Prefect variables hold at most a few KB; a reason is a sentence.
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class PauseState:
    paused: bool
    reason: str
    by: str


def pause_state(timeout: float = 5.0) -> PauseState:
    """Is automatic remediation paused? Read from the Prefect Variable `runbooks_paused`.

    Absent, or {"paused": false}: not paused. Fails closed: when the switch
    cannot be read (API down, garbage value) remediation counts as paused,
    with the reason saying why, because acting blind is worse than waiting.
    """
    try:
        with client(timeout) as api:
            variable = api.read_variable_by_name(PAUSE_VARIABLE)
    except Exception as exc:  # noqa: BLE001 - any failure to read means "do not act"
        return PauseState(True, f"the pause switch ({PAUSE_VARIABLE}) could not be read: {redact_text(str(exc))[:200]}", "runbooks (fail-safe)")
    if variable is None:
        return PauseState(False, "", "")
    value = variable.value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, bool):
        return PauseState(value, "", "")
    if isinstance(value, dict) and isinstance(value.get("paused"), bool):
        return PauseState(value["paused"], str(value.get("reason") or ""), str(value.get("by") or ""))
    return PauseState(True, f"the pause switch ({PAUSE_VARIABLE}) holds an unreadable value {str(value)[:100]!r}", "runbooks (fail-safe)")


def set_pause(paused: bool, reason: str, by: str, timeout: float = 5.0) -> PauseState:
    """Set the pause switch (creating the variable on first use); returns the new state."""
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    if not isinstance(paused, bool):
        raise InvalidInput(f"paused must be true or false, got {paused!r}")
    if not by or not reason:
        raise InvalidInput("setting the pause switch needs who (by) and why (reason)")
    value = {"paused": paused, "reason": reason[:MAX_REASON_CHARS], "by": by[:100], "at": utcnow().isoformat(timespec="seconds")}
    try:
        # Client retries stay on: setting the switch is an operator's deliberate act, not a hot path.
        with client(timeout, retries=True) as api:
            if api.read_variable_by_name(PAUSE_VARIABLE) is None:
                try:
                    api.create_variable(VariableCreate(name=PAUSE_VARIABLE, value=value, tags=["runbooks"]))
                    return PauseState(paused, value["reason"], value["by"])
                except ObjectAlreadyExists:
                    pass
            api.update_variable(VariableUpdate(name=PAUSE_VARIABLE, value=value))
    except Exception as exc:  # noqa: BLE001
        raise RunbookError(f"could not set the pause switch ({PAUSE_VARIABLE}): {redact_text(str(exc))}") from exc
    return PauseState(paused, value["reason"], value["by"])
