"""Prefect in the shape Prefect documents for self-hosting at scale ("How to scale self-hosted Prefect"):
several API servers (`prefect server start --no-services`) behind a load balancer, one background-services
process (`prefect server services start`), PostgreSQL for state, and Redis (through prefect-redis) for
messaging, the cache, causal event ordering, concurrency-lease storage and the docket. API authentication is
on (Prefect OSS has one shared basic-auth login); migrations run once, before any server starts.

HaPrefect says what to run and with which settings; LocalStack runs it all on loopback for the tests and
the orchestration bench. Secrets (the database password, the API login) reach processes through the environment only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

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
            db_password = urlsplit(self.database_url).password
            if db_password:
                tail = tail.replace(db_password, "***").replace(unquote(db_password), "***")
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


HAPROXY = "/usr/sbin/haproxy"


def api_healthy(url: str, timeout: float = 2) -> bool:
    """GET {url}/health answers 200 (an API server's, or the balancer's in front of them)."""
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def redis_ready(port: int) -> bool:
    done = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, timeout=5)
    return done.stdout.strip() == "PONG"


def wait_until(check, seconds: float, what: str, interval: float = 0.3) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {seconds:.0f}s")
        time.sleep(interval)


class LocalStack:
    """The HA shape's processes on loopback, started by this process and stopped by PID (tests, benches).

    Each runs in a session of its own, so a stop reaches its whole group and nothing else."""

    def __init__(self, ha: HaPrefect, root: Path, redis_port: int):
        self.ha, self.root, self.redis_port = ha, root, redis_port
        self.procs: dict[str, subprocess.Popen] = {}
        self.argv: dict[str, tuple[list[str], dict[str, str]]] = {}
        (root / "redis").mkdir(parents=True, exist_ok=True)
        self.argv["redis"] = (redis_argv(redis_port, root / "redis"), {})
        for p in ha.processes():
            self.argv[p.name] = (p.argv, p.env)
        (root / "haproxy.cfg").write_text(ha.haproxy_config())
        self.argv["haproxy"] = ([HAPROXY, "-db", "-f", str(root / "haproxy.cfg")], {})

    def start(self, name: str) -> None:
        argv, env = self.argv[name]
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(argv, env=os.environ | env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root)

    def start_all(self) -> LocalStack:
        """Redis, the migration, the API servers one at a time, the services process, then the balancer."""
        self.start("redis")
        wait_until(lambda: redis_ready(self.redis_port), 20, "redis")
        self.ha.migrate()
        for p in self.ha.processes():  # one at a time (see HaPrefect.processes)
            self.start(p.name)
            if p.port:
                self.wait_api(p.port, p.name)
        self.start("haproxy")
        wait_until(lambda: api_healthy(self.ha.api_url), 30, "the balancer")
        return self

    def wait_api(self, port: int, what: str, seconds: float = 90) -> None:
        wait_until(lambda: api_healthy(f"http://127.0.0.1:{port}/api"), seconds, f"{what} on {port}")

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self, name: str, grace: float = 10) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.root.glob("*.log"))
