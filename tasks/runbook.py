"""The frame every runbook run shares: inventory, blocks, audit and report.

A flow opens a `Runbook` first thing. Opening validates the inventory and
the target node before anything runs, starts the run's audit record, and
loads blocks so their secret values are registered with the redactor before
any of them could reach a log line, an artifact or the audit trail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from blocks import HAProxyAdmin, PagerDutyService, SlackWorkspace, SshIdentity
from inventory import Inventory, Node, load_inventory
from tasks import escalation, slack
from tasks.pagerduty import load_pagerduty
from tasks.audit import AuditRecord, render_markdown
from tasks.redaction import redact, register_secret


def _artifact_key(*parts: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def run_url() -> str | None:
    """Link to this run in the Prefect UI, when there is one."""
    return flow_run.get_flow_run_ui_url()


@dataclass
class Runbook:
    flow: str
    inventory: Inventory
    audit: AuditRecord
    node_name: str | None = None
    _ssh: dict[str, SshIdentity] = field(default_factory=dict)

    @classmethod
    def open(cls, flow: str, parameters: dict, node: str | None = None, trigger: dict | None = None) -> "Runbook":
        """Validate inventory and target, then start the audit record.

        An unknown node raises InventoryError here, before any host is touched.
        """
        inventory = load_inventory()
        if node is not None:
            inventory.node(node)
        run_id = str(flow_run.get_id() or "local")
        audit = AuditRecord(run_id=run_id, flow=flow, node=node)
        audit.started(trigger=trigger or {"kind": "manual"}, parameters=parameters)
        return cls(flow=flow, inventory=inventory, audit=audit, node_name=node)

    @property
    def node(self) -> Node:
        assert self.node_name is not None
        return self.inventory.node(self.node_name)

    # Blocks: loaded lazily, secrets registered with the redactor on load.
    def ssh_identity(self, block_name: str) -> SshIdentity:
        if block_name not in self._ssh:
            identity = SshIdentity.load(block_name)
            register_secret(identity.private_key.get_secret_value())
            self._ssh[block_name] = identity
        return self._ssh[block_name]

    @cached_property
    def slack(self) -> SlackWorkspace | None:
        name = self.inventory.notifications.slack_block
        if not name:
            return None
        workspace = SlackWorkspace.load(name)
        register_secret(workspace.token.get_secret_value())
        return workspace

    @cached_property
    def pagerduty(self) -> PagerDutyService | None:
        return load_pagerduty(self.inventory)

    def escalate(self, target: str, kind: str, summary: str, details: dict, severity: str | None = None) -> dict:
        """Tell humans at the priority the matrix gives (tasks/escalation.py): Slack, and PagerDuty for P1/P2."""
        return escalation.escalate(
            self.audit, self.slack, self.pagerduty, target, escalation.priority_for(kind, severity),
            summary, details, run_url(),
        )

    def resolve_incident(self, target: str) -> None:
        """The problem is gone: resolve the target's open PagerDuty incident, if any."""
        escalation.resolve_incident(self.audit, self.pagerduty, target)

    def haproxy(self, balancer: str) -> HAProxyAdmin:
        return HAProxyAdmin.load(self.inventory.load_balancers[balancer].admin_block)

    def notify(self, text: str, blocks: list[dict]) -> None:
        """Post to Slack; a Slack outage is logged and audited, never fatal."""
        if self.slack is None:
            return
        try:
            slack.post(self.slack, text=text, blocks=blocks)
            self.audit.note("slack message posted", channel=self.slack.channel, text=text)
        except Exception as exc:  # noqa: BLE001 - notification must not mask the outcome
            get_run_logger().warning("Slack notification failed: %s", redact(str(exc)))
            self.audit.note("slack message failed", error=str(exc))

    def finish(self, status: str, detail: str) -> str:
        """Close the audit record and attach its readable copy to the run."""
        self.audit.outcome(status=status, detail=detail)
        markdown = render_markdown(self.audit.entries())
        create_markdown_artifact(
            key=_artifact_key(self.flow, self.node_name or "fleet"),
            markdown=markdown,
            description=f"{self.flow} audit record ({status})",
        )
        get_run_logger().info("%s: %s (%s)", self.flow, status, redact(detail))
        return markdown
