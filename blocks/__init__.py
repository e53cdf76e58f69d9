"""Typed configuration and secrets as Prefect blocks, editable in the UI.

Register with `prefect block register -m blocks`. The inventory names these
blocks; secrets live only here.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
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


class ObjectStore(Block):
    """An S3-compatible bucket that backups go to (AWS S3, SeaweedFS, Ceph, MinIO...).

    Our own block rather than prefect-aws's `S3Bucket`: prefect-aws is not a
    dependency and would bring its own pinned boto3/botocore and extras for a
    few fields; what backups need (path-style addressing, bounded timeouts
    and retries, per-part sha256) lives in `tasks.objectstore` either way.

    The backup encryption key (client-side AES-256, 32 bytes as 64 hex digits
    or base64) is either `encryption_key` here or, better, a Prefect Secret
    block named by `encryption_key_secret`: kept apart from the store's
    credentials it can be shared by a second (off-site) store and guarded by
    other people. Losing it loses every encrypted backup.

    Example:
        ObjectStore(endpoint_url="http://10.0.0.5:8333", bucket="node-backups",
                    access_key_id="...", secret_access_key="...",
                    prefix="fleet-eu", encryption_key_secret="backup-key").save("backups")
    """

    _block_type_name = "Object Store"
    _block_type_slug = "object-store"

    endpoint_url: str = Field(
        pattern=r"^https?://[A-Za-z0-9.\-\[\]:]+(/)?$",
        description="http(s)://host:port of the S3 API, no path and no credentials",
    )
    # S3's bucket naming rule (lowercase, digits, dots, hyphens).
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    region: str = Field("us-east-1", pattern=r"^[a-z0-9-]{1,32}$")
    access_key_id: SecretStr
    secret_access_key: SecretStr
    prefix: str = Field(
        "", pattern=r"^([A-Za-z0-9][A-Za-z0-9._=+-]*(/[A-Za-z0-9][A-Za-z0-9._=+-]*)*/?)?$",
        description="Every key this store writes starts with this folder (e.g. fleet-eu)",
    )
    encryption_key: SecretStr | None = Field(None, description="32-byte backup key, hex or base64")
    encryption_key_secret: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9-]*$", description="Name of a Prefect Secret block holding the backup key"
    )
    part_size_mib: int = Field(
        64, ge=5, le=5120,
        description="Multipart part size: a stream may have 10,000 parts, so 64 MiB caps one archive at 625 GiB",
    )
    connect_timeout_seconds: float = Field(5.0, gt=0, le=60)
    read_timeout_seconds: float = Field(60.0, gt=0, le=600)
    max_attempts: int = Field(3, ge=1, le=10, description="Tries per request, the first one included")

    @model_validator(mode="after")
    def _one_key_source(self) -> "ObjectStore":
        if self.encryption_key is not None and self.encryption_key_secret:
            raise ValueError("give encryption_key or encryption_key_secret, not both")
        if ".." in self.prefix:
            raise ValueError("prefix must not contain '..'")
        return self

    def encryption_key_text(self) -> str | None:
        """The backup key's text (hex or base64), or None when backups here are not encrypted."""
        if self.encryption_key is not None:
            return self.encryption_key.get_secret_value()
        if self.encryption_key_secret:
            from prefect.blocks.system import Secret  # needs the Prefect API: only when asked

            return str(Secret.load(self.encryption_key_secret).get())
        return None


class Database(Block):
    """A PostgreSQL database (the MEV bot's records): what database-backup dumps
    and the daily report reads.

    The password is a secret field; the DSN is never built as one string that
    could be logged: `conninfo()` gives psycopg its keyword arguments, and
    `pg_env()` gives pg_dump/pg_restore the password through PGPASSWORD, never argv.

    Example:
        Database(host="10.0.0.7", database="mev", user="backup", password="...").save("mev-db")
    """

    _block_type_name = "Database"
    _block_type_slug = "database"

    host: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.:-]*$", description="Host name or address of the server")
    port: int = Field(5432, ge=1, le=65535)
    database: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    user: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    password: SecretStr
    sslmode: str = Field("prefer", pattern=r"^(disable|allow|prefer|require|verify-ca|verify-full)$")
    connect_timeout_seconds: int = Field(5, ge=1, le=60)

    def conninfo(self, database: str | None = None) -> dict:
        """psycopg.connect(**conninfo): keyword arguments, the password among them."""
        return {"host": self.host, "port": self.port, "dbname": database or self.database, "user": self.user,
                "password": self.password.get_secret_value(), "sslmode": self.sslmode,
                "connect_timeout": self.connect_timeout_seconds}

    def pg_env(self) -> dict[str, str]:
        """Environment for pg_dump/pg_restore/psql: the password never reaches argv (or `ps`)."""
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
                "PGPASSWORD": self.password.get_secret_value(), "PGSSLMODE": self.sslmode,
                "PGCONNECT_TIMEOUT": str(self.connect_timeout_seconds)}
