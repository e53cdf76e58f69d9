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

from inventory import Inventory, Node
from tasks import haproxy, probes
from tasks.errors import RunbookError
from tasks.runbook import Runbook
from tasks.services import service_manager_for
from tasks.ssh import SshRunner

# Steps take live objects (the Runbook, an SSH session): never cache them.
step = partial(task, cache_policy=NO_CACHE)


class DisruptionBudgetExceeded(RunbookError):
    """Taking this server out would leave its backend without a healthy server."""


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


def _target(name: str, node: Node) -> tuple:
    return (name, str(node.rpc_url), node.client.value, str(node.health_url) if node.health_url else None)


def assess_nodes(inventory: Inventory, names: list[str]) -> dict[str, Assessment]:
    """Probe nodes and their chains' references in one concurrent sweep; classify each node."""
    chains = {inventory.nodes[n].chain for n in names}
    refs = [(f"ref:{c}:{i}", str(url), "reference", None)
            for c in sorted(chains) for i, url in enumerate(inventory.chains[c].references)]
    results = {p.name: p for p in probes.probe_many_sync([_target(n, inventory.nodes[n]) for n in names] + refs)}
    out = {}
    for n in names:
        chain_name = inventory.nodes[n].chain
        chain = inventory.chains[chain_name]
        ref_head = probes.reference_head([p for k, p in results.items() if k.startswith(f"ref:{chain_name}:")])
        probe = results[n]
        verdict = probes.classify(probe, ref_head, chain)
        out[n] = Assessment(
            node=n, status=verdict.status, reason=verdict.reason, head=probe.head,
            reference_head=ref_head, lag=verdict.lag, head_age_s=probe.head_age_s,
            client_version=probe.client_version,
        )
    return out


@step(name="assess-node")
def assess_node(rb: Runbook, node: str) -> Assessment:
    return assess_nodes(rb.inventory, [node])[node]


def _server_of(rb: Runbook, node: str):
    lb = rb.inventory.node(node).lb
    return lb, rb.haproxy(lb.balancer) if lb else None


def _haproxy_action(rb: Runbook, admin, command: str, do) -> None:
    start = time.monotonic()
    try:
        do()
        rb.audit.action(host=f"haproxy:{admin.address}", command=command, exit_code=0,
                        duration_s=time.monotonic() - start)
    except Exception as exc:
        rb.audit.action(host=f"haproxy:{admin.address}", command=command, exit_code=1,
                        duration_s=time.monotonic() - start, stderr_tail=str(exc))
        raise


@step(name="check-disruption-budget")
def check_disruption_budget(rb: Runbook, node: str) -> list[str]:
    """Healthy, in-rotation peers of the node in its backend; raises if none.

    HAProxy's health check only sees that a node answers (a stalled chain stays
    UP), so a peer counts only if HAProxy has it UP and ready *and* our probe
    says it is healthy.
    """
    lb, admin = _server_of(rb, node)
    if lb is None:
        return []
    states = {s.server: s for s in haproxy.server_states(admin, lb.backend)}
    peers = {n: p for n, p in rb.inventory.nodes_in_backend(lb.balancer, lb.backend).items() if n != node}
    in_rotation = [n for n, p in peers.items()
                   if (s := states.get(p.lb.server)) and s.op_state == "UP" and s.admin_state == "ready"]
    healthy = [n for n, a in assess_nodes(rb.inventory, in_rotation).items() if a.healthy] if in_rotation else []
    if not healthy:
        raise DisruptionBudgetExceeded(
            f"{node} is the last healthy server of backend {lb.backend} on {lb.balancer}: "
            f"taking it out would leave no healthy server in rotation (in rotation: {in_rotation or 'none'})"
        )
    return healthy


@step(name="drain-from-rotation", retries=2, retry_delay_seconds=1)
def drain_from_rotation(rb: Runbook, node: str) -> bool:
    lb, admin = _server_of(rb, node)
    if lb is None:
        return False
    _haproxy_action(rb, admin, f"set server {lb.backend}/{lb.server} state drain",
                    lambda: haproxy.drain(admin, lb.backend, lb.server))
    return True


@step(name="return-to-rotation", retries=2, retry_delay_seconds=1)
def return_to_rotation(rb: Runbook, node: str) -> bool:
    lb, admin = _server_of(rb, node)
    if lb is None:
        return False
    _haproxy_action(rb, admin, f"set server {lb.backend}/{lb.server} state ready",
                    lambda: haproxy.ready(admin, lb.backend, lb.server))
    return True


def open_ssh(rb: Runbook, node: str) -> SshRunner:
    host = rb.inventory.host_of(node)
    return SshRunner(host, rb.ssh_identity(host.ssh_identity_block), audit=rb.audit)


@step(name="capture-diagnostics")
def capture_diagnostics(rb: Runbook, ssh: SshRunner, node: str) -> dict:
    """Service status, last log lines and disk usage, before anything changes."""
    n = rb.inventory.node(node)
    manager = service_manager_for(n, rb.inventory.host_of(node))
    status = ssh.run(manager.status_argv())
    logs = ssh.run(manager.logs_argv(4000))
    disk = ssh.run(["df", "-P", "-k", n.datadir])
    diagnostics = {
        "service": manager.parse_status(status.stdout, status.exit_code).__dict__,
        "log_tail": logs.stdout[-4000:],
        "disk": disk.stdout.strip(),
    }
    rb.audit.state("diagnostics", diagnostics)
    return diagnostics


@step(name="restart-service")
def restart_service(rb: Runbook, ssh: SshRunner, node: str) -> bool:
    """Restart through the node's service manager; True when it reports running."""
    n = rb.inventory.node(node)
    manager = service_manager_for(n, rb.inventory.host_of(node))
    result = ssh.run(manager.restart_argv())
    status = manager.parse_status(*_stdout_and_code(ssh.run(manager.status_argv())))
    if result.exit_code != 0 or not status.running:
        get_run_logger().error("restart of %s failed: exit %s, state %s", node, result.exit_code, status.state)
        return False
    return True


def _stdout_and_code(result):
    return result.stdout, result.exit_code


@step(name="wait-until-synced")
def wait_until_synced(rb: Runbook, node: str, deadline_s: float, poll_s: float = 1.0) -> Assessment:
    """Wait until the head advances and the node is healthy, or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    first_head = None
    latest = assess_node.fn(rb, node)
    while True:
        if latest.head is not None:
            if first_head is None:
                first_head = latest.head
            elif latest.head > first_head and latest.healthy:
                return latest
        if time.monotonic() >= deadline:
            return latest
        time.sleep(poll_s)
        latest = assess_node.fn(rb, node)


def as_dict(a: Assessment) -> dict:
    return asdict(a)
