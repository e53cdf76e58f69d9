"""What the lab is made of: hosts, chains, nodes, references, ports and paths.

Everything else in `lab/` derives from these tables, so adding a node is one
line in NODES (and the inventory, supervisord configs, HAProxy backends and
status follow).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LAB_DIR_ENV = "LAB_DIR"
DEFAULT_LAB_DIR = "/var/tmp/rblab"

SERVICE_USER = "rbsvc"
SERVICE_HOME = "/var/lib/rbsvc"

NPM_PREFIX = Path("/opt/rblab/npm")
ANVIL_PACKAGE = "@foundry-rs/anvil-linux-amd64"
ANVIL_VERSION = "1.7.1"
ANVIL_BIN = NPM_PREFIX / "node_modules" / ANVIL_PACKAGE / "bin" / "anvil"
# The fleet's hosts run this release (npm's 1.7.0 build reports 1.6.0, so not that one) from their own install dir (<host>/opt/anvil/<version>, `current`
# the one in use), one behind the newest the lab's release server publishes, so client-upgrade has a
# real upgrade to make. References and everything else run ANVIL_BIN.
FLEET_ANVIL_VERSION = "1.5.1"
RELEASES_HOST, RELEASES_PORT = "127.0.0.1", 19500
# Published beside the good ones, as pre-releases, for client-upgrade's failure tests.
BROKEN_RELEASES = {"1.7.98": "exits-at-start", "1.7.99": "bad-checksum"}
RELEASES_URL = f"http://{RELEASES_HOST}:{RELEASES_PORT}"
SYSTEM_PYTHON = "/usr/bin/python3"  # runs labnode.py as the service user (stdlib only)

BRIDGE = "rbbr0"
BRIDGE_ADDRESS = "10.213.7.1"
PREFIX_LEN = 24

# Root-namespace endpoints (loopback only).
STUB_HOST, STUB_PORT = "127.0.0.1", 18080
HAPROXY_ADMIN_HOST, HAPROXY_ADMIN_PORT = "127.0.0.1", 19999
PREFECT_PORT = 4200
PREFECT_API_URL = f"http://127.0.0.1:{PREFECT_PORT}/api"
# `lab up --ha` (lab/prefect_ha.py): the balancer takes PREFECT_PORT, so every client's URL is the same in
# both shapes; the API servers, Redis and Prefect's own database sit behind it.
PREFECT_HA_API_PORTS = (4201, 4202)
REDIS_PORT = 16379
PREFECT_DB_NAME = "prefect"
AUDIT_DB_NAME = "runbooks_audit"  # the HA shape's audit trail, shared by every region's worker
HA_MARKER = "prefect-ha"  # in LAB_DIR while the lab runs the HA shape
WORK_POOL = "runbooks"
EXPORTER_PORT, BRIDGE_PORT = 19100, 19200
PROMETHEUS_PORT, ALERTMANAGER_PORT = 19090, 19093

# The object store backups go to: SeaweedFS `weed mini` on loopback (its gRPC
# ports are these + 10000). SeaweedFS rather than moto or s3rver: it checks
# signatures and stored checksums and has versioning and object lock (REFERENCE).
OBJECT_STORE_PORTS = {"master": 19331, "volume": 19332, "filer": 19334, "s3": 19335}
OBJECT_STORE_URL = f"http://127.0.0.1:{OBJECT_STORE_PORTS['s3']}"
BACKUP_BUCKET = "rblab-backups"
# The MEV database: PostgreSQL on a lab host, as a separate database server would be.
DB_HOST, DB_PORT, DB_NAME, DB_USER = "h3", 5432, "mev", "mev"
DB_EXECUTIONS, DB_SEED = 20_000, 1  # one day of the bot's records, the same in every lab
PG_BIN = Path("/usr/lib/postgresql/15/bin")

INVENTORY_LB = "lab-lb"
BLOCK_SSH = "lab-ssh"
BLOCK_HAPROXY = "lab-haproxy"
BLOCK_SLACK = "lab-slack"
BLOCK_PAGERDUTY = "lab-pagerduty"
BLOCK_STORE = "lab-store"
BLOCK_BACKUP_KEY = "lab-backup-key"
BLOCK_DB = "lab-mevdb"


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str
    region: str

    @property
    def namespace(self) -> str:
        return f"rb-{self.name}"

    @property
    def veth(self) -> str:  # root-namespace end, attached to the bridge
        return f"rbv-{self.name}"

    @property
    def peer(self) -> str:  # created under this name, renamed eth0 inside the namespace
        return f"rbp-{self.name}"


@dataclass(frozen=True)
class LabChain:
    name: str
    family: str
    chain_id: int
    rpc_port: int
    reference: str  # name of the reference node
    backend: str  # HAProxy backend
    frontend_port: int  # HAProxy frontend on 127.0.0.1
    metrics_port: int  # the node's client-style metrics (Geth's :6060); two chains share a host


@dataclass(frozen=True)
class LabNode:
    name: str
    chain: str
    host: str | None  # None: a reference node in the root namespace

    @property
    def is_reference(self) -> bool:
        return self.host is None


HOSTS: dict[str, LabHost] = {
    h.name: h
    for h in (
        LabHost("h1", "10.213.7.11", "lab-a"),
        LabHost("h2", "10.213.7.12", "lab-b"),
        LabHost("h3", "10.213.7.13", "lab-c"),
        # The standby: sshd and supervisord, no node running. Restores and DR
        # drills bring a chain's node up here (STANDBYS), then tear it down.
        # In h3's region: one worker per region (on h3) serves both, as one region's hosts share a worker.
        LabHost("h4", "10.213.7.14", "lab-c"),
    )
}
STANDBY_HOST = "h4"

CHAINS: dict[str, LabChain] = {
    c.name: c
    for c in (
        LabChain("lab-eth", "ethereum", 31337, 8545, "ref-eth", "eth_rpc", 18545, 6060),
        LabChain("lab-op", "optimism", 31338, 9545, "ref-op", "op_rpc", 19545, 6061),
    )
}

REFERENCES: dict[str, LabNode] = {
    n.name: n for n in (LabNode("ref-eth", "lab-eth", None), LabNode("ref-op", "lab-op", None))
}

NODES: dict[str, LabNode] = {
    n.name: n
    for n in (
        LabNode("eth-a", "lab-eth", "h1"),
        LabNode("eth-b", "lab-eth", "h2"),
        LabNode("eth-c", "lab-eth", "h3"),
        LabNode("op-a", "lab-op", "h1"),
        LabNode("op-b", "lab-op", "h2"),
    )
}

# One standby slot per chain on the standby host: a node program that is not
# started with the lab (autostart off) and an empty datadir, for restore-node
# and dr-drill to fill. Not fleet nodes: no load balancer, not probed.
STANDBYS: dict[str, LabNode] = {
    c: LabNode(f"standby-{c}", c, STANDBY_HOST) for c in ("lab-eth", "lab-op")
}

# The immutable part of every fleet node's datadir, as Erigon's `snapshots/`
# holds it: segment files written once and never changed (anvil ignores them).
# Nodes of one chain hold the same segments, as real ones do. Small in the lab
# so the suite stays fast; the benchmarks build 200 MiB and 2 GiB datadirs.
SEGMENT_FILES, SEGMENT_BYTES = 8, 3 * 1024 * 1024

# Thresholds written into the inventory for both chains.
CHAIN_THRESHOLDS = {
    "max_lag_blocks": 5,
    # 5x the block time: a healthy follower's head is 0-2 s old (it mines
    # what it lacks every 0.5 s, stamped to the second), so jitter does not
    # cross 5 s, and the stall rule alerts ~7 s after a stall.
    "max_head_age_seconds": 5,
    "recovery_deadline_seconds": 60,
    # The default budget (3 an hour), with back-offs short enough for tests to watch them.
    "restart_budget": {"max_restarts": 3, "window_seconds": 3600, "backoff_seconds": [0, 5, 10]},
}


# One Prefect worker per region, in the namespace of the region's (first) host, as a worker would run on
# a host of that region (deployments/regional_worker.py). A run waiting longer than this for its region's
# worker is taken by the fallback's: short in the lab so tests can watch it (60 s suits real fleets).
REGION_FALLBACK = {"lab-a": "lab-b", "lab-b": "lab-c", "lab-c": "lab-a"}
FALLBACK_AFTER_SECONDS = 10


def worker_hosts() -> dict[str, LabHost]:
    """region -> the host its worker runs on."""
    out: dict[str, LabHost] = {}
    for h in HOSTS.values():
        out.setdefault(h.region, h)
    return out


GATEWAY_BRIDGE_BASE = 17600  # the gateway's ports on the bridge's address: one per gateway_ports() entry


def gateway_ports() -> tuple[int, ...]:
    """The root namespace's loopback services that runs need (Prefect, the Slack/PagerDuty stubs, the
    balancer's admin and frontends, releases, the object store, Prometheus, Alertmanager): a run in a host's
    namespace reaches them at the same 127.0.0.1 URLs through the lab's gateway (lab/services.py)."""
    return (PREFECT_PORT, STUB_PORT, HAPROXY_ADMIN_PORT, RELEASES_PORT, OBJECT_STORE_PORTS["s3"],
            PROMETHEUS_PORT, ALERTMANAGER_PORT, *(c.frontend_port for c in CHAINS.values()))


def all_nodes() -> dict[str, LabNode]:
    """Fleet nodes and references, by name."""
    return {**NODES, **REFERENCES}


def node_address(node: LabNode) -> str:
    return BRIDGE_ADDRESS if node.host is None else HOSTS[node.host].address


def rpc_url(node: LabNode) -> str:
    return f"http://{node_address(node)}:{CHAINS[node.chain].rpc_port}"


def metrics_url(node: LabNode) -> str:
    return f"http://{node_address(node)}:{CHAINS[node.chain].metrics_port}/debug/metrics/prometheus"


def reference_url(chain: str) -> str:
    return rpc_url(REFERENCES[CHAINS[chain].reference])


def frontend_url(chain: str) -> str:
    return f"http://127.0.0.1:{CHAINS[chain].frontend_port}"


def lab_dir() -> Path:
    return Path(os.environ.get(LAB_DIR_ENV) or DEFAULT_LAB_DIR)


@dataclass(frozen=True)
class Paths:
    """Every file the lab writes, under one LAB_DIR."""

    root: Path

    # lab-wide
    @property
    def marker(self) -> Path:  # proves the directory is ours before `down` removes it
        return self.root / ".rblab"

    @property
    def lab_json(self) -> Path:
        return self.root / "lab.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lab.lock"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.yaml"

    @property
    def labnode(self) -> Path:
        return self.root / "labnode.py"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    # root-namespace supervisord
    @property
    def supervisord_conf(self) -> Path:
        return self.root / "supervisord.conf"

    @property
    def supervisord_sock(self) -> Path:
        return self.root / "supervisord.sock"

    @property
    def supervisord_pid(self) -> Path:
        return self.root / "supervisord.pid"

    @property
    def supervisord_log(self) -> Path:
        return self.logs / "supervisord.log"

    # ssh
    @property
    def ssh(self) -> Path:
        return self.root / "ssh"

    @property
    def ssh_key(self) -> Path:
        return self.ssh / "id_ed25519"

    @property
    def ssh_pub(self) -> Path:
        return self.ssh / "id_ed25519.pub"

    @property
    def monitor_key(self) -> Path:
        """The exporter's own read-only identity: revocable apart from the runbooks', and told apart in sshd's log."""
        return self.ssh / "monitor_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh / "known_hosts"

    @property
    def authorized_keys(self) -> Path:
        return self.ssh / "authorized_keys"

    # haproxy
    @property
    def haproxy(self) -> Path:
        return self.root / "haproxy"

    @property
    def haproxy_cfg(self) -> Path:
        return self.haproxy / "haproxy.cfg"

    @property
    def haproxy_sock(self) -> Path:
        return self.haproxy / "admin.sock"

    @property
    def haproxy_state(self) -> Path:
        return self.haproxy / "server-state"

    # stubs
    @property
    def object_store(self) -> Path:
        return self.root / "objectstore"

    def pgdata(self, host: str) -> Path:
        return self.host(host) / "pgdata"

    @property
    def stub_records(self) -> Path:
        return self.root / "stubs" / "records.jsonl"

    # references (root namespace)
    @property
    def refs(self) -> Path:
        return self.root / "refs"

    # per host
    def host(self, host: str) -> Path:
        return self.root / "hosts" / host

    def host_supervisord_conf(self, host: str) -> Path:
        return self.host(host) / "supervisord.conf"

    def host_supervisord_sock(self, host: str) -> Path:
        return self.host(host) / "supervisord.sock"

    def host_supervisord_pid(self, host: str) -> Path:
        return self.host(host) / "supervisord.pid"

    def host_supervisord_log(self, host: str) -> Path:
        return self.host(host) / "logs" / "supervisord.log"

    def sshd_config(self, host: str) -> Path:
        return self.host(host) / "sshd_config"

    def sshd_log(self, host: str) -> Path:
        return self.host(host) / "sshd.log"

    def sshd_pid(self, host: str) -> Path:
        return self.host(host) / "sshd.pid"

    def host_key(self, host: str) -> Path:
        return self.host(host) / "ssh_host_ed25519_key"

    # per node (fleet node or reference)
    def node_base(self, node: LabNode) -> Path:
        return self.refs if node.host is None else self.host(node.host)

    def install_dir(self, host: str) -> Path:
        """Where the host's anvil versions live side by side (tasks/install.py's layout)."""
        return self.host(host) / "opt" / "anvil"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    def node_bin(self, node: LabNode) -> Path:
        """The anvil path the node's supervisord command uses (a symlink; delete it to break the node)."""
        return self.node_base(node) / "bin" / "anvil"

    def datadir(self, node: LabNode) -> Path:
        return self.node_base(node) / "data" / node.name

    def node_log(self, node: LabNode) -> Path:
        return (self.logs if node.host is None else self.host(node.host) / "logs") / f"{node.name}.log"

    def supervisor_conf_of(self, node: LabNode) -> Path:
        return self.supervisord_conf if node.host is None else self.host_supervisord_conf(node.host)

    def supervisor_sock_of(self, node: LabNode) -> Path:
        return self.supervisord_sock if node.host is None else self.host_supervisord_sock(node.host)
