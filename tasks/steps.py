"""Runbook steps shared by every runbook, as Prefect tasks.

Each step does one thing to one system through the building blocks in this
package and records what it did in the run's audit record. Flows decide which
steps to run; steps never decide for the flow.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import partial

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from inventory import Inventory
from tasks import guards, haproxy, hostinfo, probes
from tasks.runbook import Runbook
from tasks.services import service_manager_for
from tasks.ssh import SshRunner

# Steps take live objects (the Runbook, an SSH session): never cache them.
step = partial(task, cache_policy=NO_CACHE)


@dataclass
class Assessment:
    node: str
    status: str
    reason: str
    head: int | None
    reference_head: int | None
    lag: int | None
    head_age_s: float | None
    client_version: str | None

    @property
    def healthy(self) -> bool:
        return self.status == "healthy"


@dataclass
class Sweep:
    """One concurrent probe of some nodes and their chains' references."""

    nodes: dict[str, Assessment]
    references: dict[str, list[probes.NodeProbe]]  # chain -> its references' probes


def sweep(inventory: Inventory, names: list[str]) -> Sweep:
    """Probe nodes and their chains' references together; classify each node."""
    chains = sorted({inventory.nodes[n].chain for n in names})
    targets = [probes.node_target(n, inventory.nodes[n]) for n in names]
    targets += [t for c in chains for t in probes.reference_targets(c, inventory.chains[c])]
    results = {p.name: p for p in probes.probe_many_sync(targets)}
    references = {c: probes.references_of(results.values(), c) for c in chains}
    out = {}
    for n in names:
        chain_name = inventory.nodes[n].chain
        ref_head = probes.reference_head(references[chain_name])
        probe = results[n]
        verdict = probes.classify(probe, ref_head, inventory.chains[chain_name])
        out[n] = Assessment(
            node=n, status=verdict.status, reason=verdict.reason, head=probe.head,
            reference_head=ref_head, lag=verdict.lag, head_age_s=probe.head_age_s,
            client_version=probe.client_version,
        )
    return Sweep(out, references)


def assess_nodes(inventory: Inventory, names: list[str]) -> dict[str, Assessment]:
    return sweep(inventory, names).nodes


@step(name="assess-chain")
def assess_chain(rb: Runbook, chain: str) -> Sweep:
    """Every node of a chain and its references, in one sweep: the node's state
    and the evidence for telling a node problem from a chain incident."""
    return sweep(rb.inventory, sorted(rb.inventory.nodes_on_chain(chain)))


def _rotation(rb: Runbook, node: str):
    """The node's load-balancer entry and a runtime client that audits what it changes."""
    lb = rb.inventory.node(node).lb
    if lb is None:
        return None, None
    return lb, haproxy.HAProxyRuntime.from_block(rb.haproxy(lb.balancer), audit=rb.audit)


@step(name="check-disruption-budget")
def check_disruption_budget(rb: Runbook, node: str) -> list[str]:
    """The node's healthy, in-rotation peers; raises DisruptionBudgetExceeded if none."""
    lb, runtime = _rotation(rb, node)
    if lb is None:
        return []
    return guards.disruption_budget(rb.inventory, node, runtime.server_states(lb.backend),
                                    lambda names: {n: a.healthy for n, a in assess_nodes(rb.inventory, names).items()})


@step(name="drain-from-rotation", retries=2, retry_delay_seconds=1)
def drain_from_rotation(rb: Runbook, node: str) -> bool:
    lb, runtime = _rotation(rb, node)
    if lb is None:
        return False
    runtime.drain(lb.backend, lb.server)
    return True


@step(name="return-to-rotation", retries=2, retry_delay_seconds=1)
def return_to_rotation(rb: Runbook, node: str) -> bool:
    lb, runtime = _rotation(rb, node)
    if lb is None:
        return False
    runtime.ready(lb.backend, lb.server)
    return True


def open_ssh(rb: Runbook, node: str) -> SshRunner:
    host = rb.inventory.host_of(node)
    return SshRunner(host, rb.ssh_identity(host.ssh_identity_block), audit=rb.audit)


@step(name="capture-diagnostics")
def capture_diagnostics(rb: Runbook, ssh: SshRunner, node: str) -> dict:
    """Service status, last log lines and disk usage, before anything changes.

    Diagnostics are best effort: a failing log or df command is recorded in
    the audit (by the runner) and does not stop the recovery.
    """
    n = rb.inventory.node(node)
    manager = service_manager_for(n, rb.inventory.host_of(node))
    status = manager.status(ssh)
    logs = ssh.run(manager.logs_argv(50))
    disk = ssh.run(hostinfo.disk_usage_argv(n.datadir))
    diagnostics = {
        "service": {"state": status.state, "running": status.running, "pid": status.pid},
        "log_tail": (logs.stdout + logs.stderr)[-4000:],
        "disk": disk.stdout.strip() if disk.exit_code == 0 else f"df failed: {disk.stderr.strip()}",
    }
    rb.audit.state("diagnostics", diagnostics)
    return diagnostics


@step(name="restart-service")
def restart_service(rb: Runbook, ssh: SshRunner, node: str, automatic: bool) -> bool:
    """Restart through the node's service manager; True when it then reports running.

    The restart's audit entry is tagged (step, automatic): the restart budget
    is counted from exactly these entries.
    """
    manager = service_manager_for(rb.inventory.node(node), rb.inventory.host_of(node))
    result = ssh.run(manager.restart_argv(), audit_data={"step": "restart", "automatic": automatic})
    status = manager.status(ssh)
    if result.exit_code != 0 or not status.running:
        get_run_logger().error("restart of %s failed: exit %s, state %s", node, result.exit_code, status.state)
        return False
    return True


@step(name="wait-until-synced")
def wait_until_synced(rb: Runbook, node: str, deadline_s: float, poll_s: float = 1.0) -> Assessment:
    """Wait until the head advances and the node is healthy, or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    first_head = None
    latest = assess_nodes(rb.inventory, [node])[node]
    while True:
        if latest.head is not None:
            if first_head is None:
                first_head = latest.head
            elif latest.head > first_head and latest.healthy:
                return latest
        if time.monotonic() >= deadline:
            return latest
        time.sleep(poll_s)
        latest = assess_nodes(rb.inventory, [node])[node]


def as_dict(a: Assessment) -> dict:
    return asdict(a)
