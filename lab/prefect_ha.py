"""Prefect in the shape Prefect documents for self-hosting at scale ("How to scale self-hosted Prefect"):
several API servers (`prefect server start --no-services`) behind a load balancer, one background-services
process (`prefect server services start`), PostgreSQL for state, and Redis (through prefect-redis) for
messaging, the cache, causal event ordering, concurrency-lease storage and the docket. API authentication is
on (Prefect OSS has one shared basic-auth login); migrations run once, before any server starts.

This module says what to run and with which settings; whoever runs it (the tests, a lab) starts and stops
the processes. Secrets (the database password, the API login) reach processes through the environment only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

MIGRATE_TIMEOUT_S = 300


@dataclass(frozen=True)
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int | None = None  # an API server's: start the next one once this answers /api/health


@dataclass(frozen=True)
class HaPrefect:
    """One highly available Prefect: its database, Redis, API servers and their load balancer."""

    home: Path  # PREFECT_HOME of every process (its own, not the embedded lab's)
    database_url: str  # postgresql+asyncpg://user:password@host:port/db (PostgreSQL >= 14.9)
    redis_host: str
    redis_port: int
    api_ports: tuple[int, ...]
    lb_port: int
    auth_string: str  # "user:password": every API request must carry it
    redis_messaging_db: int = 0
    redis_docket_db: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}/api"

    def server_env(self) -> dict[str, str]:
        """Settings shared by the API servers, the services process and the migration."""
        return {
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": self.database_url,
            # Several servers start at once: none of them migrates (see migrate()).
            "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
            "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
            "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
            "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
            "PREFECT_REDIS_MESSAGING_HOST": self.redis_host,
            "PREFECT_REDIS_MESSAGING_PORT": str(self.redis_port),
            "PREFECT_REDIS_MESSAGING_DB": str(self.redis_messaging_db),
            # The default memory:// docket works for one server only.
            "PREFECT_SERVER_DOCKET_URL": f"redis://{self.redis_host}:{self.redis_port}/{self.redis_docket_db}",
            "PREFECT_SERVER_API_AUTH_STRING": self.auth_string,
            # The UI served by each server calls the API through the balancer, not its own port.
            "PREFECT_UI_API_URL": self.api_url,
            # Crashed runs' leases come back within seconds of expiring (as in the embedded lab).
            "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "2",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
            "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.5",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def client_env(self) -> dict[str, str]:
        """What a worker, a flow run or a test needs to use this Prefect."""
        return {"PREFECT_API_URL": self.api_url, "PREFECT_API_AUTH_STRING": self.auth_string}

    def migrate(self) -> None:
        """`prefect server database upgrade -y`, once, before any server starts."""
        done = subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                              env=os.environ | self.server_env(), capture_output=True, text=True,
                              timeout=MIGRATE_TIMEOUT_S)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-1500:].replace(self.auth_string, "***")
            raise RuntimeError(f"prefect database migration failed ({done.returncode}): {tail}")

    def processes(self) -> list[Process]:
        """The API servers and the one services process, to start in this order after migrate() (Redis and
        PostgreSQL first), each API server once the one before answers: every server registers Prefect's
        block types as it starts, and two starting at once collide on a unique key (uq_block_type__slug)."""
        env = self.server_env()
        servers = [Process(f"prefect-api-{i}",
                           [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                            "--port", str(port), "--no-services"], env, port)
                   for i, port in enumerate(self.api_ports, 1)]
        services = Process("prefect-services", [sys.executable, "-m", "prefect", "server", "services", "start"], env)
        return [*servers, services]

    def haproxy_config(self) -> str:
        """The balancer in front of the API servers: health-checked every 0.5 s, and a request whose server
        refused the connection is sent to another one (retries + redispatch)."""
        servers = "\n".join(
            f"    server api{i} 127.0.0.1:{port} check inter 500 fall 2 rise 2"
            for i, port in enumerate(self.api_ports, 1))
        return f"""global
    maxconn 512

defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    retries 3
    option redispatch

frontend prefect_api
    bind 127.0.0.1:{self.lb_port}
    default_backend prefect_api_servers

backend prefect_api_servers
    balance roundrobin
    option httpchk GET /api/health
    http-check expect status 200
{servers}
"""


def redis_argv(port: int, directory: Path) -> list[str]:
    """Debian's redis-server on loopback. Append-only file on: concurrency leases live in Redis, and a restart
    that forgot them would strand their slots in PostgreSQL for good (nothing left to expire)."""
    return ["/usr/bin/redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
            "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "yes"]
