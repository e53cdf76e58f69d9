"""Runbook steps shared by every runbook, as Prefect tasks.

Each step does one thing to one system, through the clients the run's frame
hands out (tasks/runbook.py), so every change passes the run's gate: a dry
run records it instead. Each step marks its start in the audit record, so a
run that dies is reported by the step it died in. Flows decide which steps
to run; steps never decide for the flow.
"""

from __future__ import annotations

import functools
import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import guards, hostinfo
from tasks.haproxy import ServerState
from tasks.errors import RunbookError
from tasks.escalation import Kind
from tasks.probes.assessment import Assessment, Sweep, as_dict, assess_nodes, sweep  # noqa: F401 - re-exported
from tasks.runbook import Failed, Runbook
from tasks.services import service_manager_for
from tasks.ssh import SshRunner
from tasks.vocabulary import ActionKind


def step(name: str, **task_options):
    """A runbook step: a Prefect task (never cached: it takes live objects) that marks its start in the audit."""

    def decorate(fn):
        @functools.wraps(fn)
        def marked(rb: Runbook, *args, **kwargs):
            rb.step(name)
            return fn(rb, *args, **kwargs)

        return task(name=name, cache_policy=NO_CACHE, **task_options)(marked)

    return decorate


@step("assess-chain")
def assess_chain(rb: Runbook, chain: str) -> Sweep:
    """Every node of a chain and its references, in one sweep: the node's state
    and the evidence for telling a node problem from a chain incident."""
    return sweep(rb.inventory, sorted(rb.inventory.nodes_on_chain(chain)))


def rotation_state(rb: Runbook, node: str) -> ServerState | None:
    """The node's server in its load balancer, as HAProxy reports it (a read: no gate)."""
    lb = rb.node(node).lb
    if lb is None:
        return None
    return rb.balancer(lb.balancer).server_state(lb.backend, lb.server)


@step("check-disruption-budget")
def check_disruption_budget(rb: Runbook, node: str) -> list[str]:
    """The node's healthy, in-rotation peers; raises DisruptionBudgetExceeded if none."""
    lb = rb.node(node).lb
    if lb is None:
        return []
    states = rb.balancer(lb.balancer).server_states(lb.backend)
    return guards.disruption_budget(rb.inventory, node, states,
                                    lambda names: {n: a.healthy for n, a in assess_nodes(rb.inventory, names).items()})


@step("drain-from-rotation", retries=2, retry_delay_seconds=1)
def drain_from_rotation(rb: Runbook, node: str) -> bool:
    lb = rb.node(node).lb
    if lb is None:
        return False
    rb.balancer(lb.balancer).drain(lb.backend, lb.server)
    return True


@step("return-to-rotation", retries=2, retry_delay_seconds=1)
def return_to_rotation(rb: Runbook, node: str) -> bool:
    lb = rb.node(node).lb
    if lb is None:
        return False
    rb.balancer(lb.balancer).ready(lb.backend, lb.server)
    return True


@step("capture-diagnostics")
def capture_diagnostics(rb: Runbook, ssh: SshRunner, node: str) -> dict:
    """Service status, last log lines and disk usage, before anything changes.

    Diagnostics are best effort: a failing log or df command is recorded in
    the audit (by the runner) and does not stop the recovery.
    """
    n = rb.node(node)
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


def _service_action(rb: Runbook, ssh: SshRunner, node: str, action: ActionKind) -> bool:
    """Restart or start through the node's service manager; True when it then reports running.

    The action's audit entry is typed (action, automatic): the restart budget
    is counted from exactly these entries.
    """
    manager = service_manager_for(rb.node(node), rb.inventory.host_of(node))
    argv = manager.restart_argv() if action is ActionKind.restart else manager.start_argv()
    result = ssh.run(argv, action=action, audit_data={"step": action.value, "automatic": rb.trigger.automatic})
    rb.gate.verify(f"{manager.name} reports running after {action.value}")
    status = manager.status(ssh)
    if result.exit_code != 0 or not status.running:
        get_run_logger().error("%s of %s failed: exit %s, state %s", action.value, node, result.exit_code, status.state)
        return False
    return True


@step("kill-hung-service")
def kill_hung_service(rb: Runbook, ssh: SshRunner, node: str) -> None:
    """SIGKILL a node's service that runs but does not answer, once its diagnostics are captured: a restart
    would first wait out the service manager's stop timeout on a process that will never stop by itself.
    A kill that fails is in the audit with its exit code; the restart that follows still stops the node."""
    manager = service_manager_for(rb.node(node), rb.inventory.host_of(node))
    ssh.run(manager.kill_argv(), action=ActionKind.kill, audit_data={"step": "kill", "automatic": rb.trigger.automatic})


@step("stop-service")
def stop_service(rb: Runbook, ssh: SshRunner, node: str) -> bool:
    """Stop the node's service (a consistent datadir needs it stopped); True when it then reports stopped."""
    manager = service_manager_for(rb.node(node), rb.inventory.host_of(node))
    result = ssh.run(manager.stop_argv(), timeout=120, action=ActionKind.stop,
                     audit_data={"step": "stop", "automatic": rb.trigger.automatic})
    rb.gate.verify(f"{manager.name} reports stopped")
    status = manager.status(ssh)
    if status.running:
        get_run_logger().error("stop of %s failed: exit %s, state %s", node, result.exit_code, status.state)
    return not status.running


@step("restart-service")
def restart_service(rb: Runbook, ssh: SshRunner, node: str) -> bool:
    return _service_action(rb, ssh, node, ActionKind.restart)


@step("start-service")
def start_service(rb: Runbook, ssh: SshRunner, node: str) -> bool:
    return _service_action(rb, ssh, node, ActionKind.start)


@step("wait-until-synced")
def wait_until_synced(rb: Runbook, node: str, deadline_s: float, poll_s: float = 1.0) -> Assessment:
    """Wait until the head advances and the node is healthy, or the deadline passes."""
    rb.gate.verify(f"{node}'s head advances and it is healthy within {deadline_s:.0f}s")
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


START_ATTEMPTS = 3  # a dropped SSH connection must not leave the node stopped


def bring_back(rb: Runbook, node: str, drained: bool, after_what: str, deadline_s: float | None = None) -> Assessment:
    """After work on a stopped node: start it, wait until it is synced, return it to rotation.

    Started on a fresh connection, retried: the one the work used may be the one that dropped. A node
    that does not come back is escalated (`Failed`, not-recovered) and left out of rotation.
    """
    started, last_error = False, None
    for attempt in range(START_ATTEMPTS):
        try:
            with rb.ssh(node) as ssh:
                started = start_service(rb, ssh, node)
            if started:
                break
        except RunbookError as exc:
            last_error = exc
        time.sleep(2 * (attempt + 1))
    deadline_s = deadline_s or rb.inventory.chain_of(node).recovery_deadline_seconds
    after = wait_until_synced(rb, node, deadline_s) if started \
        else assess_nodes(rb.inventory, [node])[node]
    rb.audit.state("after", as_dict(after))
    if not (started and after.healthy):
        why = f"could not start it ({last_error})" if not started else f"still {after.status}: {after.reason}"
        raise Failed(Kind.NOT_RECOVERED, node, f"{node} did not come back after {after_what}: {why}; "
                     + ("left out of rotation" if drained else "rotation unchanged"),
                     {"after": f"{after.status}: {after.reason}"})
    if drained:
        return_to_rotation(rb, node)
    return after
