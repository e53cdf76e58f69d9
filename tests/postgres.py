"""A throwaway PostgreSQL for tests: Debian's PostgreSQL 15, run as `postgres`
in a temporary directory, on 127.0.0.1 and a free port, with its unix socket
in that directory. Never the machine's own cluster, never the lab's.

Use the fixtures from a test module:

    from tests.postgres import postgres_server, database  # noqa: F401  (pytest fixtures)

`postgres_server` (one per session, ~1.5 s to start) yields a `PostgresServer`;
`database` yields the DSN of a fresh, empty database of the test's own.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.processes import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"  # initdb refuses root; the Debian package creates this user


@dataclass
class PostgresServer:
    dir: Path
    port: int

    def dsn(self, dbname: str = "postgres") -> str:
        # TCP on loopback, trust auth: the cluster lives only as long as the session.
        return f"host=127.0.0.1 port={self.port} user={PG_USER} dbname={dbname} connect_timeout=5"

    def create_database(self, name: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def bin(self, tool: str) -> str:
        return str(PG_BIN / tool)


def _as_postgres(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = list(argv) if os.geteuid() == pwd.getpwnam(PG_USER).pw_uid else ["runuser", "-u", PG_USER, "--", *argv]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)


def start_server() -> PostgresServer:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN}): apt-get install postgresql-15")
    root = Path(tempfile.mkdtemp(prefix="rb-pg-"))
    shutil.chown(root, PG_USER, PG_USER)
    data, port = root / "data", free_port()
    try:
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust",
                     "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")
        # fsync off and no full-page writes: a test cluster that a crash may lose.
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_wal_size=2GB")
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                     "-o", options, "-w", "-t", "30", "start")
    except BaseException:
        stop_server(PostgresServer(root, port))
        raise
    return PostgresServer(root, port)


def stop_server(server: PostgresServer) -> None:
    data = server.dir / "data"
    if (data / "postmaster.pid").exists():
        # pg_ctl stops the postmaster named in its own pid file: only ours.
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop")
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    server = start_server()
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def database(postgres_server) -> str:
    """The DSN of a new empty database (dropped afterwards)."""
    name = postgres_server.create_database()
    yield postgres_server.dsn(name)
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
