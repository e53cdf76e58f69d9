"""The fleet inventory: one YAML file that every runbook reads.

Validation is strict on purpose: names end up in shell commands, HAProxy
runtime commands and Prefect event resources, so they are restricted to a
safe alphabet here, before any runbook runs (quoting at the point of use is
the second line of defence, not the only one).
"""

from __future__ import annotations

import ipaddress
import os
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from inventory import yamlfile
from inventory.endpoints import Endpoint, EndpointError, SecretEndpoint, endpoint_url
from tasks.vocabulary import NODE_NAME_RE

# Names: what an operator would type, nothing a shell or HAProxy would interpret.
# Every name (node, host, chain, block...) follows the node-name rule, so a
# node name accepted by a flow's form is exactly one the inventory can hold.
Name = Annotated[str, Field(pattern=NODE_NAME_RE)]
# Absolute paths without whitespace or shell metacharacters.
SafePath = Annotated[str, Field(pattern=r"^/[A-Za-z0-9._/+-]*$", max_length=4096)]
# A manager's service name: systemd template instances (node@mainnet.service) and
# supervisor group:program names too; the same alphabet tasks/services.py accepts.
ServiceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9@._:-]{0,254}$")]
# A DNS name, IPv4 or IPv6 address. It reaches sockets (paramiko) and
# audit labels, never a shell; still, nothing option-like or with spaces.
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def _host_address(value: str) -> str:
    if value.startswith("[") and value.endswith("]"):
        raise ValueError(f"write the IPv6 address without brackets ({value[1:-1]}); the port goes in ssh_port")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    # fullmatch: `$` alone would let a trailing newline through. All digits
    # and dots is a mistyped IPv4 address (10.0.0.256), not a host name.
    if _HOSTNAME_RE.fullmatch(value) and not value.replace(".", "").isdigit():
        return value
    raise ValueError(f"{value!r} is not a host name, an IPv4 or an IPv6 address")


HostAddress = Annotated[str, Field(max_length=253), AfterValidator(_host_address)]

DEFAULT_INVENTORY = "inventory.yaml"
INVENTORY_ENV = "RUNBOOKS_INVENTORY"


class InventoryError(ValueError):
    """The inventory file is missing, unreadable or invalid; the message says where."""


class Strict(BaseModel):
    # hide_input_in_errors: a value a validator refuses may be a secret pasted
    # into the wrong field; str(ValidationError) would otherwise echo it.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class ChainFamily(str, Enum):
    ethereum = "ethereum"
    arbitrum = "arbitrum"
    optimism = "optimism"
    polygon = "polygon"
    solana = "solana"
    avalanche = "avalanche"


class Client(str, Enum):
    anvil = "anvil"  # the lab's stand-in for an execution client
    erigon = "erigon"
    geth = "geth"
    nethermind = "nethermind"
    nitro = "nitro"
    op_geth = "op-geth"
    op_node = "op-node"
    bor = "bor"
    heimdall = "heimdall"
    solana = "solana"
    avalanchego = "avalanchego"


class RestartBudget(Strict):
    """How often automation may restart one node before a human must look.

    The n-th automatic restart inside the window waits at least
    backoff_seconds[n-1] after the previous one (the last value repeats);
    past max_restarts the node's circuit opens until an operator closes it.
    """

    max_restarts: Annotated[int, Field(ge=0, le=100)] = 3
    window_seconds: Annotated[float, Field(gt=0)] = 3600.0
    backoff_seconds: list[Annotated[float, Field(ge=0)]] = [0.0, 60.0, 300.0]


class Chain(Strict):
    """Per-chain facts and thresholds: the one place thresholds live."""

    family: ChainFamily
    chain_id: int | None = None
    references: list[Endpoint] = Field(
        min_length=1, description="RPC endpoints that stand for the chain tip (URL or {secret: block-name})"
    )
    max_lag_blocks: Annotated[int, Field(ge=0)] = 8
    max_head_age_seconds: Annotated[float, Field(gt=0)] = 30.0
    # Recovery: how long to wait for a restarted node to catch up.
    recovery_deadline_seconds: Annotated[float, Field(gt=0, le=7200)] = 120.0
    # Fleet short-circuit: more than this share of the chain's nodes unhealthy
    # at once is a chain incident, not a node one.
    max_unhealthy_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    restart_budget: RestartBudget = RestartBudget()
    # The version each client of this chain should run (client-versions reports drift from it).
    pinned_versions: dict["Client", Annotated[str, Field(pattern=r"^v?[0-9][0-9A-Za-z.+-]{0,63}$")]] = {}


class DiskPolicy(Strict):
    """When the filesystem holding a host's datadirs is pruned (disk-prune) and alerted on (DiskFilling).

    The seeds' disks sat at 70% and their 02:00 cleaner kept them under 60%: DiskSpaceWarning tells
    Slack past `warn_percent`, DiskFilling (disk-prune) fires past `act_percent` and DiskCritical
    (disk-prune, and it pages) past `critical_percent`; disk-prune cleans until usage is under
    `target_percent` (the daily run prunes any disk above it), and a disk still past
    `critical_percent` after the safe clean-ups pages (P2). A
    node also counts as over when its free space is under its client's floor (eth-docker's: Nethermind
    300 GiB, Geth 100 GiB, others 50 GiB; `min_free_gib` overrides it for every node of the host).
    """

    target_percent: Annotated[float, Field(gt=0, lt=100)] = 60.0
    warn_percent: Annotated[float, Field(gt=0, lt=100)] = 65.0  # DiskSpaceWarning: Slack, nothing runs
    act_percent: Annotated[float, Field(gt=0, lt=100)] = 70.0
    critical_percent: Annotated[float, Field(gt=0, le=100)] = 90.0
    min_free_gib: Annotated[float, Field(ge=0)] | None = None
    log_keep_days: Annotated[int, Field(ge=1, le=3650)] = 7

    @model_validator(mode="after")
    def _ordered(self) -> "DiskPolicy":
        if not self.target_percent < self.warn_percent <= self.act_percent <= self.critical_percent:
            raise ValueError(f"disk thresholds must rise: target {self.target_percent}% < warn {self.warn_percent}% "
                             f"<= act {self.act_percent}% <= critical {self.critical_percent}%")
        return self


class Host(Strict):
    address: HostAddress
    ssh_port: Annotated[int, Field(ge=1, le=65535)] = 22
    ssh_user: Name
    ssh_identity_block: Name = Field(description="Name of the SshIdentity block holding key and known_hosts")
    region: Name | None = None
    # supervisorctl needs the config of the supervisord it talks to when it
    # is not the system default.
    supervisor_config: SafePath | None = None
    standby: dict[Name, "StandbySlot"] = Field(
        {}, description="chain -> where this host runs a restored node of that chain (restores, DR drills)")
    disk: DiskPolicy = DiskPolicy()


class ServiceManagerKind(str, Enum):
    systemd = "systemd"
    docker = "docker"
    supervisor = "supervisor"


def systemd_template_problem(name: str) -> str | None:
    """Why a systemd unit name cannot be started, or None. systemctl refuses a
    bare template (node@.service): only its instances run. The systemd adapter
    (tasks/services.py) asks the same question, so the two cannot disagree."""
    if "@" in name and re.fullmatch(r"(\.[a-z]+)?", name.partition("@")[2]):
        return f"systemd unit {name!r} is a template: name an instance, e.g. {name.partition('@')[0]}@mainnet"
    return None


class Service(Strict):
    manager: ServiceManagerKind
    name: ServiceName

    @model_validator(mode="after")
    def _runnable(self) -> "Service":
        # The adapter's own checks, at load time: a bare systemd template
        # (geth@.service) is refused here rather than halfway through a recovery.
        if self.manager is ServiceManagerKind.systemd and (problem := systemd_template_problem(self.name)):
            raise ValueError(problem)
        return self


class StandbySlot(Strict):
    """A prepared place for one chain's node on a standby host: the client is installed
    and its service defined but stopped, its datadir empty until a restore fills it."""

    service: Service
    datadir: SafePath
    rpc_url: Endpoint
    metrics_url: Endpoint | None = None


class LoadBalancerRef(Strict):
    balancer: Name
    backend: Name
    server: Name


class ConfigFile(Strict):
    host: Name = Field(description="The inventory host the file is read from")
    path: SafePath


class LoadBalancer(Strict):
    kind: Literal["haproxy"] = "haproxy"
    admin_block: Name = Field(description="Name of the HAProxyAdmin block")
    config: ConfigFile | None = Field(None, description="Its configuration file, for config-backup")


class Role(str, Enum):
    rpc = "rpc"
    archive = "archive"
    validator = "validator"
    sequencer = "sequencer"
    standby = "standby"


class Node(Strict):
    chain: Name
    client: Client
    host: Name
    service: Service
    rpc_url: Endpoint = Field(description="JSON-RPC URL, or {secret: block-name} of a Secret block holding it")
    health_url: Endpoint | None = Field(None, description="Client health endpoint (Erigon /health, op-node RPC, ...)")
    # Where Prometheus scrapes the client (Geth/Erigon :6060, Nethermind :9545, ...):
    # operators' alerts name a node by this `instance`, so the bridge matches it.
    metrics_url: Endpoint | None = Field(None, description="Client metrics endpoint")
    datadir: SafePath
    lb: LoadBalancerRef | None = None
    role: Role = Role.rpc
    region: Name | None = None
    config_paths: list[SafePath] = Field([], description="The client's configuration files (config-backup)")
    install_dir: SafePath | None = Field(
        None, description="Where the client's versions live side by side (<dir>/<version>, <dir>/current is the one "
                          "the service runs): needed by client-upgrade")


class ReleaseSourceRef(Strict):
    """Where a client's releases are published, laid out as the project publishes them (tasks/releases.py):
    `base_url` holds `{tag}` (Erigon: https://github.com/erigontech/erigon/releases/download/{tag}); `index_url`
    lists releases in GitHub's shape (https://api.github.com/repos/erigontech/erigon/releases)."""

    base_url: Annotated[str, Field(pattern=r"^https?://[^\s@]+\{tag\}[^\s@]*$", max_length=2000)]
    index_url: Annotated[str, Field(pattern=r"^https?://[^\s@{}]+$", max_length=2000)] | None = None


class Notifications(Strict):
    slack_block: Name | None = None
    pagerduty_block: Name | None = None


class DatabaseRef(Strict):
    block: Name = Field(description="Name of the Database block (host, database, user, password)")
    host: Name | None = Field(None, description="The inventory host the server runs on, when it is one of ours")


class Backups(Strict):
    """Where backups go and what else is backed up: one place per installation."""

    store_block: Name | None = Field(None, description="Name of the ObjectStore block backups are written to")
    databases: dict[Name, DatabaseRef] = {}


class Reports(Strict):
    """The daily profit and operations report (flows/daily_report.py): where its figures come from.
    It posts to notifications.slack_block and stores into backups.store_block."""

    database: Name | None = Field(None, description="Key of backups.databases: the MEV database the report reads")
    prometheus_url: Annotated[str, Field(pattern=r"^https?://[^\s@]+$", max_length=2000)] | None = Field(
        None, description="Prometheus base URL (its HTTP API): per node uptime, lag and RPC latency")
    reconcile_sample: Annotated[int, Field(ge=0, le=2000)] = Field(
        200, description="Landed executions per chain checked against the chain's receipts each day")


class Region(Strict):
    """Where a region's runs go when its worker is gone (deployments/regional_worker.py): each region's worker
    takes the runs for its own nodes and hosts; a run still waiting after `fallback_after_seconds` is taken by
    the worker of the `fallback` region, and its audit record says so."""

    fallback: Name | None = Field(None, description="The region whose worker takes this region's waiting runs")
    fallback_after_seconds: Annotated[float, Field(ge=1, le=3600)] = Field(
        60.0, description="How long a run waits for its own region's worker before the fallback takes it")


class Inventory(Strict):
    chains: dict[Name, Chain]
    hosts: dict[Name, Host]
    load_balancers: dict[Name, LoadBalancer] = {}
    nodes: dict[Name, Node]
    notifications: Notifications = Notifications()
    backups: Backups = Backups()
    reports: Reports = Reports()
    releases: dict[Client, ReleaseSourceRef] = Field({}, description="client -> where client-upgrade gets its releases")
    regions: dict[Name, Region] = Field({}, description="region -> its fallback, for the regional workers")

    @model_validator(mode="after")
    def _references_resolve(self) -> "Inventory":
        problems = []

        def unknown(loc: tuple, what: str, value: str, known) -> None:
            # One located error per reference, so each names its own node and line.
            text = f"unknown {what} {value!r} (known: {', '.join(sorted(known)) or 'none'})"
            problems.append(InitErrorDetails(
                type=PydanticCustomError("unknown_reference", "{text}", {"text": text}), loc=loc, input=value,
            ))

        for name, node in self.nodes.items():
            if node.chain not in self.chains:
                unknown(("nodes", name, "chain"), "chain", node.chain, self.chains)
            if node.host not in self.hosts:
                unknown(("nodes", name, "host"), "host", node.host, self.hosts)
            if node.lb and node.lb.balancer not in self.load_balancers:
                unknown(("nodes", name, "lb", "balancer"), "load balancer", node.lb.balancer, self.load_balancers)
        for lb_name, lb in self.load_balancers.items():
            if lb.config and lb.config.host not in self.hosts:
                unknown(("load_balancers", lb_name, "config", "host"), "host", lb.config.host, self.hosts)
        for host_name, host in self.hosts.items():
            for chain_name in host.standby:
                if chain_name not in self.chains:
                    unknown(("hosts", host_name, "standby", chain_name), "chain", chain_name, self.chains)
        for name, ref in self.backups.databases.items():
            if ref.host is not None and ref.host not in self.hosts:
                unknown(("backups", "databases", name, "host"), "host", ref.host, self.hosts)
        if self.reports.database is not None and self.reports.database not in self.backups.databases:
            unknown(("reports", "database"), "database (a key of backups.databases)", self.reports.database,
                    self.backups.databases)
        # A region is one some host or node is in: a misspelt key or fallback would otherwise do nothing, silently.
        used = {h.region for h in self.hosts.values()} | {n.region for n in self.nodes.values()}
        used.discard(None)
        for name, region in self.regions.items():
            if name not in used:
                unknown(("regions", name), "region (no host or node is in it)", name, used)
            if region.fallback is not None and region.fallback not in used:
                unknown(("regions", name, "fallback"), "region (no host or node is in it)", region.fallback, used)
            elif region.fallback == name:
                problems.append(InitErrorDetails(
                    type=PydanticCustomError("self_fallback", "a region cannot fall back to itself"),
                    loc=("regions", name, "fallback"), input=region.fallback))
        if problems:
            raise ValidationError.from_exception_data("Inventory", problems)
        return self

    # The file it was loaded from, for errors about it ("" when built in code).
    _source: str = PrivateAttr("")

    def node(self, name: str) -> Node:
        """The named node, or a clear error listing what exists."""
        try:
            return self.nodes[name]
        except KeyError:
            where = f" {self._source}" if self._source else ""
            raise InventoryError(
                f"node {name!r} is not in the inventory{where} (known: {', '.join(sorted(self.nodes))})"
            ) from None

    def host_of(self, node_name: str) -> Host:
        return self.hosts[self.node(node_name).host]

    def chain_of(self, node_name: str) -> Chain:
        return self.chains[self.node(node_name).chain]

    def region_of(self, node_name: str) -> str | None:
        node = self.node(node_name)
        return node.region or self.hosts[node.host].region

    def run_region(self, parameters: dict) -> str | None:
        """The region a run belongs in, from its parameters: the host it works on (a restore's or drill's
        target, a prune's host), else its node's; None for a fleet-wide run (any region may take it) or a name
        the inventory does not know (the run itself refuses it, with the error)."""
        for key in ("target_host", "standby_host", "host"):
            host = self.hosts.get(parameters.get(key)) if isinstance(parameters.get(key), str) else None
            if host is not None:
                return host.region
        node = parameters.get("node")
        return self.region_of(node) if isinstance(node, str) and node in self.nodes else None

    def nodes_on_chain(self, chain: str) -> dict[str, Node]:
        return {n: node for n, node in self.nodes.items() if node.chain == chain}

    def standby_node(self, node_name: str, host_name: str) -> tuple[str, Node]:
        """The node `node_name` would be on standby host `host_name`: its name and its inventory entry.

        The same chain and client, in the host's slot for that chain (service,
        datadir, RPC), with no load balancer. A host without a slot for the
        chain is a clear error, before anything runs.
        """
        node = self.node(node_name)
        host = self.hosts.get(host_name)
        if host is None:
            raise InventoryError(f"host {host_name!r} is not in the inventory (known: {', '.join(sorted(self.hosts))})")
        slot = host.standby.get(node.chain)
        if slot is None:
            raise InventoryError(f"host {host_name!r} has no standby slot for chain {node.chain!r} "
                                 f"(it has: {', '.join(sorted(host.standby)) or 'none'}): add hosts.{host_name}.standby.{node.chain}")
        name = f"standby-{host_name}-{node.chain}"[:63]
        return name, node.model_copy(update={"host": host_name, "service": slot.service, "datadir": slot.datadir,
                                             "rpc_url": slot.rpc_url, "metrics_url": slot.metrics_url, "health_url": None,
                                             "lb": None, "role": Role.standby, "region": None})

    def including(self, name: str, node: Node) -> "Inventory":
        """This inventory with one more node (a standby a restore brings up), for probes and steps."""
        out = self.model_copy(update={"nodes": {**self.nodes, name: node}})
        out._source = self._source
        return out

    def nodes_in_backend(self, balancer: str, backend: str) -> dict[str, Node]:
        return {
            n: node
            for n, node in self.nodes.items()
            if node.lb and node.lb.balancer == balancer and node.lb.backend == backend
        }


def inventory_path(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get(INVENTORY_ENV) or DEFAULT_INVENTORY)


def _describe(source: str, lines: dict, error: dict) -> str:
    """One error as `file:line: entry, field (path): message`."""
    # Drop the endpoint union's tags ("(url)", "(secret block)") from the location.
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("(")))
    line = yamlfile.line_of(lines, loc)
    msg = error["msg"].removeprefix("Value error, ")
    return f"  {source}:{line or 1}: {yamlfile.where(loc)}: {msg}"


def load_inventory(path: str | os.PathLike | None = None) -> Inventory:
    """Read and validate the inventory; errors name the file and line, the entry and the field.

    Needs no Prefect server: endpoints kept in Secret blocks are resolved
    only when used (`endpoint_url`).
    """
    p = inventory_path(path)
    try:
        raw, lines, problems = yamlfile.read(p.read_text(), str(p))
    except FileNotFoundError:
        raise InventoryError(f"{p}: inventory file not found (set {INVENTORY_ENV} or pass a path)") from None
    except yaml.YAMLError as exc:
        raise InventoryError(f"{p}: not valid YAML: {exc}") from None
    if problems:
        # Duplicates and credentials first: validating a file that lost a
        # block to a duplicate would only produce misleading errors.
        raise InventoryError(f"{p}: invalid inventory:\n" + "\n".join(f"  {x}" for x in problems))
    if not isinstance(raw, dict):
        raise InventoryError(f"{p}: expected a mapping with chains, hosts and nodes, got {type(raw).__name__}")
    try:
        inventory = Inventory.model_validate(raw)
    except ValidationError as exc:
        text = "\n".join(_describe(str(p), lines, e) for e in exc.errors())
        raise InventoryError(f"{p}: invalid inventory:\n{text}") from None
    inventory._source = str(p)
    return inventory

