"""The one gate every mutating action passes through.

A runbook never holds a raw client: the frame (tasks/runbook.py) hands it an
SSH runner, a load-balancer client or an object-store client built with the
run's `Gate`, and those systems ask the gate before they change anything.
In a real run the gate says yes and the system acts and audits the result;
in a dry run the gate records what would have been done (an audit entry of
kind `would`) and says no, so the system returns without connecting. A dry
run therefore touches no host, balancer or bucket by construction, whatever
the runbook's own code does, instead of relying on one `if` in a flow.

Reads that change nothing (probes, `show servers state`, the audit trail)
do not pass through the gate: a dry run still sees the real fleet, which is
what makes its plan worth reading.

A step that waits for the effect of an action (the node catching up after
a restart) cannot be meaningful when the action did not happen: it calls
`gate.verify(...)`, which in a dry run records what would be verified and
ends the run's acting part with `DryRunComplete`. The frame turns that into
a "dry run" outcome listing everything that would have been done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.vocabulary import ActionKind

if TYPE_CHECKING:  # pragma: no cover
    from tasks.audit import AuditRecord


class DryRunComplete(Exception):
    """A dry run reached a step that needs a real action's effect; nothing more can be shown."""


@dataclass
class Gate:
    audit: "AuditRecord"
    dry_run: bool = False
    # What a dry run would have done, in order (also in the audit as `would` entries).
    would_do: list[str] = field(default_factory=list)

    def allows(self, system: str, target: str, description: str, action: ActionKind | str = ActionKind.command,
               **data: Any) -> bool:
        """May `system` do `description` to `target` now? False in a dry run, which records it instead.

        system: "ssh", "haproxy", "s3", "slack", "pagerduty"...; target: the
        host, backend/server or bucket. The caller acts only when this is True
        and then audits the real result itself.
        """
        if not self.dry_run:
            return True
        action = ActionKind(action).value
        self.audit.would(system, target, description, action=action, **data)
        self.would_do.append(f"{system} {target}: {description}")
        return False

    def verify(self, what: str) -> None:
        """About to wait for an action's effect: in a dry run, stop here (DryRunComplete)."""
        if self.dry_run:
            self.audit.would("verify", "-", what, action=ActionKind.command.value)
            self.would_do.append(f"then verify: {what}")
            raise DryRunComplete(what)
