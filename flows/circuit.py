"""Runbooks an operator runs from the Prefect UI to take back control of automation.

close-circuit: a node's restart budget was spent, its circuit opened and
automation stopped restarting it. Once a human has looked (and fixed what
restarts could not), they close the circuit here; automatic restarts then
count afresh. Refused, as a recorded no-op, when the circuit is not open.

pause-remediation: stop (or resume) every alert-triggered and scheduled
remediation at once, e.g. during a chain-wide incident or maintenance.
On-demand runs are not affected: an operator starting one has decided.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks import guards
from tasks.errors import RunbookError
from tasks import trigger
from tasks.guards import Resource
from tasks.runbook import Runbook
from tasks.vocabulary import NodeName, Operator

Note = Annotated[str, Field(min_length=3, max_length=1000, description="What you checked or fixed, and why automatic restarts are safe again")]
Reason = Annotated[str, Field(min_length=3, max_length=500, description="Why remediation is paused or resumed (the incident, the maintenance)")]
Paused = Annotated[bool, Field(description="On: pause every alert-triggered and scheduled remediation. Off: resume it. Runs started by hand are never paused")]


@flow(name="close-circuit", log_prints=True)
def close_circuit(node: NodeName, operator: Operator, note: Note) -> dict:
    """Close a node's open circuit so automation may restart it again."""
    rb = Runbook.open(
        "close-circuit", {"node": node, "operator": operator, "note": note},
        trigger.describe(note, operator=operator), [Resource("node", node)],
    )
    state = guards.circuit_state(node)
    rb.audit.state("before", {"circuit": state})
    if state != "open":
        rb.audit.guard("circuit-not-open", f"{node}: the circuit is {state}; nothing to close", node=node)
        rb.finish("noop", "noop", f"{node}: the circuit is not open; nothing was changed")
        return {"outcome": "noop", "node": node, "circuit": state}
    guards.close_circuit(node, operator, note, audit=rb.audit)
    rb.audit.state("after", {"circuit": guards.circuit_state(node)})
    rb.finish("succeeded", "closed", f"{node}: circuit closed by {operator}; automatic restarts count afresh from now")
    return {"outcome": "closed", "node": node, "circuit": "closed"}


@flow(name="pause-remediation", log_prints=True)
def pause_remediation(paused: Paused = True, *, reason: Reason, operator: Operator) -> dict:
    """Pause (or resume) alert-triggered and scheduled remediation across the fleet."""
    # `paused` defaults to on: the UI form then shows the switch on and sends it whatever the operator
    # touches (a required switch left untouched was sent as nothing and the run was refused), and a form
    # submitted as it opens pauses, the safe side.
    rb = Runbook.open(
        "pause-remediation", {"paused": paused, "reason": reason, "operator": operator},
        trigger.describe(reason, operator=operator),
    )
    before = guards.pause_state()
    rb.audit.state("before", {"paused": before.paused, "reason": before.reason, "by": before.by})
    try:
        after = guards.set_pause(paused, reason, operator)
    except RunbookError as exc:
        rb.finish("failed", "error", f"the pause switch was not changed: {exc}")
        raise
    rb.audit.guard("remediation-paused" if paused else "remediation-resumed", reason, by=operator)
    rb.audit.state("after", {"paused": after.paused, "reason": after.reason, "by": after.by})
    verb = "paused" if paused else "resumed"
    rb.finish("succeeded", verb, f"automatic remediation {verb} by {operator}: {reason}")
    return {"outcome": verb, "paused": after.paused, "reason": after.reason, "by": after.by}
