"""Typed configuration and secrets as Prefect blocks, editable in the UI.

Register with `prefect block register -m blocks`. The inventory names these
blocks; secrets live only here.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from prefect.blocks.core import Block


class SshIdentity(Block):
    """The key runbooks log in with, and the host keys they trust.

    Unknown or changed host keys are refused: `known_hosts` is the only
    source of trust (OpenSSH format, `[host]:port` for non-22 ports).

    Example:
        SshIdentity(private_key="-----BEGIN OPENSSH PRIVATE KEY-----...",
                    known_hosts="10.0.0.11 ssh-ed25519 AAAA...").save("fleet-ssh")
    """

    _block_type_name = "SSH Identity"
    _block_type_slug = "ssh-identity"

    private_key: SecretStr = Field(description="OpenSSH private key (ed25519 or RSA)")
    known_hosts: str = Field(description="known_hosts lines for every host this identity may reach")


class SlackWorkspace(Block):
    """Where runbooks post: a bot token and a channel.

    Example:
        SlackWorkspace(token="xoxb-...", channel="#node-ops").save("ops-slack")
    """

    _block_type_name = "Slack Workspace"
    _block_type_slug = "slack-workspace"

    token: SecretStr = Field(description="Bot token (xoxb-...)")
    channel: str = Field(description="Channel name or ID")
    base_url: str = Field("https://slack.com/api/", description="Slack Web API base URL, ending in /")
    timeout_seconds: float = Field(10.0, gt=0, le=120)


class HAProxyAdmin(Block):
    """HAProxy's runtime API (stats socket at `level admin`).

    Example:
        HAProxyAdmin(address="unix:///run/haproxy/admin.sock").save("edge-lb")
        HAProxyAdmin(address="tcp://127.0.0.1:9999").save("edge-lb")
    """

    _block_type_name = "HAProxy Admin"
    _block_type_slug = "haproxy-admin"

    address: str = Field(pattern=r"^(unix://|tcp://).+", description="unix:///path or tcp://host:port")
    timeout_seconds: float = Field(5.0, gt=0, le=60)


class PagerDutyService(Block):
    """PagerDuty Events API v2 integration.

    Example:
        PagerDutyService(routing_key="R0...").save("ops-pagerduty")
    """

    _block_type_name = "PagerDuty Service"
    _block_type_slug = "pagerduty-service"

    routing_key: SecretStr = Field(description="Events API v2 integration (routing) key")
    events_url: str = Field("https://events.pagerduty.com/v2/enqueue")
    timeout_seconds: float = Field(10.0, gt=0, le=120)
