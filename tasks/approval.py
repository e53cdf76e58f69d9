"""Approval: a run that needs a human's yes waits for it with its plan on screen.

The run pauses (Prefect `pause_flow_run` with a typed form, shown in the UI
on the paused run's page: "Resume"). The form's description is the plan in
markdown with its hash; the form itself asks for a decision, the approver's
name, a comment and the plan hash, prefilled with the hash shown. Approving
binds to that hash: after the resume the frame plans again from the live
fleet and acts only if the new plan has the same hash, so a plan approved
after the fleet changed is refused, never executed in its new form.

Rejection, or no answer within the timeout, ends the run with nothing
changed. Who approved, when and with what comment goes into the audit.
Prefect OSS has no user accounts: the approver types their name, as they
would sign a change request.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import Field

from tasks.vocabulary import OPERATOR_RE

# The paused run re-checks for a resume this often; Prefect's default is 10 s.
POLL_SECONDS = 2


@dataclass(frozen=True)
class Plan:
    """What a run intends to do, and the facts the intention rests on.

    `steps` are the operator's words; `facts` are what was observed (states,
    versions, peers in rotation) and belong in the hash: a changed fact is a
    changed plan, even when the words are the same.
    """

    steps: list[str]
    facts: dict[str, Any]

    @property
    def hash(self) -> str:
        canonical = json.dumps({"steps": self.steps, "facts": self.facts}, sort_keys=True, default=str,
                               separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def markdown(self, title: str) -> str:
        lines = [f"### {title}", "", f"Plan hash: `{self.hash}`", ""]
        lines += [f"{i}. {s}" for i, s in enumerate(self.steps, 1)]
        if self.facts:
            lines += ["", "Based on:", ""]
            lines += [f"- {k}: `{json.dumps(v, default=str)[:200]}`" for k, v in self.facts.items()]
        lines += ["", "Approve to run exactly this plan. If the fleet changes before the run acts, "
                  "the run stops and asks again rather than act on a different plan."]
        return "\n".join(lines)


def approval_form():
    """The form's model (built lazily: prefect.input is a heavy import)."""
    from prefect.input import RunInput

    class Approval(RunInput):
        approve: bool = Field(description="Approve this plan (tick) or reject it (leave unticked)")
        approver: str = Field(pattern=OPERATOR_RE, description="Who you are (user name or e-mail), for the audit")
        comment: str = Field("", max_length=1000, description="Why this is safe now, or why you reject it")
        plan_hash: str = Field(pattern=r"^[0-9a-f]{16}$", description="The hash of the plan you approve, as shown above")

    return Approval


@dataclass(frozen=True)
class Decision:
    approved: bool
    approver: str
    comment: str
    plan_hash: str
    at: str
    timed_out: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"approved": self.approved, "approver": self.approver, "comment": self.comment,
                "plan_hash": self.plan_hash, "at": self.at, "timed_out": self.timed_out}


def wait_for_approval(plan: Plan, title: str, timeout_s: int) -> Decision:
    """Pause the current flow run until someone answers the form, or the timeout passes."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    form = approval_form().with_initial_data(description=plan.markdown(title), plan_hash=plan.hash, approve=False)
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=POLL_SECONDS, key="approval")
    except FlowPauseTimeout:
        return Decision(False, "", "", "", _now(), timed_out=True)
    return Decision(bool(answer.approve), answer.approver, answer.comment, answer.plan_hash, _now())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
