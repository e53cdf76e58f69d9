"""Safety guards: what keeps automation from making a bad night worse.

Real components: a real Prefect server for leases and the pause switch, real
anvil nodes as chain references, real audit files in a temporary directory.
All but one test are fast; the crashed-holder test waits for a real lease to
expire (~60 s plus one repossessor loop).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from inventory import Inventory, RestartBudget
from tasks import guards
from tasks.audit import AuditRecord, read_entries
from tasks.guards import LeaseBusy, Resource, chain_incident, leases, node_lease, restart_decision

ROOT = Path(__file__).resolve().parent.parent
# Synthetic node names, audit trails and pause variables of their own: nothing of the fleet's.
pytestmark = pytest.mark.beside_fleet


from tests.processes import free_port, stop_process  # noqa: E402

# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------

@pytest.fixture
def node(prefect_api):
    """A node name no other test (or a shared server's other users) uses; its limit is removed after."""
    name = f"gt-{uuid.uuid4().hex[:10]}"
    yield name
    httpx.delete(f"{prefect_api}/v2/concurrency_limits/{guards.node_limit_name(name)}", timeout=5)


@pytest.fixture
def pause_variable(prefect_api, monkeypatch):
    """The pause switch under a name of its own, so a shared server's real switch is never touched."""
    name = f"runbooks_paused_test_{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(guards.pause, "PAUSE_VARIABLE", name)
    yield name
    httpx.delete(f"{prefect_api}/variables/name/{name}", timeout=5)


# ---------------------------------------------------------------------------
# Per-node lease
# ---------------------------------------------------------------------------

def test_a_second_run_on_a_leased_node_is_refused_quickly(node, caplog):
    caplog.set_level("ERROR")
    with node_lease(node, wait_seconds=2) as held:
        assert held.names == (f"runbooks-node-{node}",) and held.lease_id
        started = time.monotonic()
        with pytest.raises(LeaseBusy) as busy:
            with node_lease(node, wait_seconds=2):
                pytest.fail("two runs held the same node's lease")
        refused_in = time.monotonic() - started
        assert busy.value.node == node and node in str(busy.value)
        # Bounded, not a hang (two loaded cores stretch the polls by a second or two).
        assert 2.0 <= refused_in < 6.0, (refused_in, str(busy.value))
        # Four refused polls, not four ERROR lines in the run's log.
        assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    # Released: the next automated run gets it at once, never refused (its wall time is the loaded server's
    # latency, seconds on a busy suite, and a 503 from it is retried: neither is another run holding it).
    started = time.monotonic()
    with node_lease(node, wait_seconds=2) as held:
        assert held.refused == 0, held
    print(f"\nrefused after {refused_in:.2f}s; free lease taken in {time.monotonic() - started:.3f}s")


def test_an_on_demand_run_waits_and_gets_the_lease_right_after_release(node):
    released: dict[str, float] = {}
    holding = threading.Event()

    def other_run():
        with node_lease(node, wait_seconds=2):
            holding.set()
            time.sleep(3)
            released["at"] = time.monotonic()

    t = threading.Thread(target=other_run)
    t.start()
    assert holding.wait(20)
    with node_lease(node, wait_seconds=30) as held:
        latency = time.monotonic() - released["at"]
    t.join(10)
    assert held.waited_s >= 2.0
    # Polling every 0.5 s: noticed well before the server's Retry-After (up to ~39 s) would have said,
    # with room for two loaded cores.
    assert latency < 3.5, latency
    print(f"\nwaited {held.waited_s:.2f}s; acquired {latency:.3f}s after the holder left its block")


def test_leases_are_per_node(node, prefect_api):
    other = f"{node}-b"
    try:
        with node_lease(node, wait_seconds=2), node_lease(other, wait_seconds=2):
            pass
    finally:
        httpx.delete(f"{prefect_api}/v2/concurrency_limits/{guards.node_limit_name(other)}", timeout=5)


def test_the_node_limit_is_created_once_even_by_concurrent_runs(node, prefect_api):
    errors: list[BaseException] = []

    def ensure():
        try:
            guards.ensure_node_limit(node)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ensure) for _ in range(4)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert not errors
    limit = httpx.get(f"{prefect_api}/v2/concurrency_limits/{guards.node_limit_name(node)}", timeout=5).json()
    assert limit["limit"] == 1 and limit["active"] is True


def test_an_operator_can_block_a_node_by_setting_its_limit_to_zero(node, prefect_api):
    guards.ensure_node_limit(node)
    httpx.patch(f"{prefect_api}/v2/concurrency_limits/{guards.node_limit_name(node)}", json={"limit": 0}, timeout=5).raise_for_status()
    with pytest.raises(guards.LeaseError, match="limit 0") as refused:
        with node_lease(node, wait_seconds=2):
            pytest.fail("acted on a blocked node")
    assert not isinstance(refused.value, LeaseBusy)


def test_bad_lease_arguments_are_refused_before_any_call():
    from tasks.errors import InvalidInput

    for kwargs in ({"wait_seconds": -1}, {"wait_seconds": 2, "lease_seconds": 30}, {"wait_seconds": float("nan")}):
        with pytest.raises(InvalidInput):
            with node_lease("eth-a", **kwargs):
                pass
    with pytest.raises(InvalidInput):
        with node_lease("eth a; rm -rf /", wait_seconds=1):
            pass


CRASHING_RUN = textwrap.dedent(
    """
    import sys, time
    from tasks.guards import node_lease
    with node_lease(sys.argv[1], wait_seconds=10, lease_seconds=60):
        print(f"acquired {time.time()}", flush=True)
        time.sleep(600)
    """
)


def test_the_lease_of_a_killed_run_expires_and_is_reclaimed(node, prefect_api):
    """SIGKILL the holder: nothing releases its lease; the server expires it
    (60 s after its last renewal) and the repossessor frees the slot."""
    env = os.environ | {"PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN, node], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("acquired"), f"the holder did not take the lease: {line!r}"
        acquired_at = float(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        killed_at = time.time()

        with pytest.raises(LeaseBusy):
            with node_lease(node, wait_seconds=1):
                pass
        # lease 60 s + the repossessor loop (2 s here; 15 s by default) + margin.
        with node_lease(node, wait_seconds=120) as held:
            reclaimed_at = time.time()
    finally:
        stop_process(proc, grace=1)
    since_acquired = reclaimed_at - acquired_at
    print(f"\nreclaimed {since_acquired:.1f}s after the crashed run took it, "
          f"{reclaimed_at - killed_at:.1f}s after SIGKILL (waited {held.waited_s:.1f}s)")
    assert 59 <= since_acquired <= 100, since_acquired


# ---------------------------------------------------------------------------
# Leases over several resources: nodes, hosts, chains
# ---------------------------------------------------------------------------

def two_host_fleet(prefix: str = "") -> Inventory:
    """Chain <p>chain over three nodes: a and b on host <p>h1, c on host <p>h2; d on another chain."""
    def node(chain: str, host: str) -> dict:
        return {"chain": chain, "client": "anvil", "host": host, "rpc_url": "http://127.0.0.1:9/",
                "service": {"manager": "supervisor", "name": "svc"}, "datadir": "/var/tmp/x"}

    host = {"address": "127.0.0.1", "ssh_user": "ops", "ssh_identity_block": "lab-ssh"}
    return Inventory.model_validate({
        "chains": {f"{prefix}chain": {"family": "ethereum", "references": ["http://127.0.0.1:9/"]},
                   f"{prefix}other": {"family": "ethereum", "references": ["http://127.0.0.1:9/"]}},
        "hosts": {f"{prefix}h1": host, f"{prefix}h2": host},
        "nodes": {f"{prefix}a": node(f"{prefix}chain", f"{prefix}h1"), f"{prefix}b": node(f"{prefix}chain", f"{prefix}h1"),
                  f"{prefix}c": node(f"{prefix}chain", f"{prefix}h2"), f"{prefix}d": node(f"{prefix}other", f"{prefix}h2")},
    })


def test_a_host_or_chain_lease_takes_every_node_on_it_in_one_fixed_order():
    inv = two_host_fleet()
    assert guards.lock_names(inv, [Resource("node", "b")]) == ["runbooks-node-b"]
    assert guards.lock_names(inv, [Resource("host", "h1")]) == ["runbooks-host-h1", "runbooks-node-a", "runbooks-node-b"]
    assert guards.lock_names(inv, [Resource("chain", "chain")]) == [
        "runbooks-chain-chain", "runbooks-node-a", "runbooks-node-b", "runbooks-node-c"]
    # Overlaps collapse, and the order does not depend on how the run listed them.
    both = guards.lock_names(inv, [Resource("node", "c"), Resource("host", "h2"), Resource("node", "a")])
    assert both == guards.lock_names(inv, [Resource("node", "a"), Resource("host", "h2"), Resource("node", "c")])
    assert both == ["runbooks-host-h2", "runbooks-node-a", "runbooks-node-c", "runbooks-node-d"]
    # A single node needs no inventory; a host or chain does.
    assert guards.lock_names(None, [Resource("node", "zz")]) == ["runbooks-node-zz"]
    # A read-only runbook leases nothing, without asking Prefect anything.
    assert guards.lock_names(inv, []) == []
    with leases(inv, [], wait_seconds=0) as held:
        assert held.names == () and held.lease_id is None


def test_bad_resources_are_refused_before_any_call():
    from tasks.errors import InvalidInput

    inv = two_host_fleet()
    for bad in (lambda: Resource("rack", "r1"), lambda: Resource("node", "a b"), lambda: Resource("host", "")):
        with pytest.raises(InvalidInput):
            bad()
    for resources, words in (([Resource("host", "h9")], "unknown host 'h9'"), ([Resource("chain", "nope")], "unknown chain"),
                             ([Resource("node", "zz")], "not in the inventory")):
        with pytest.raises(InvalidInput, match=words):
            guards.lock_names(inv, resources)
    with pytest.raises(InvalidInput, match="needs the inventory"):
        guards.lock_names(None, [Resource("chain", "chain")])


@pytest.fixture
def fleet_limits(prefect_api):
    """A fleet whose names no other test (or a shared server's other users) uses; its limits are removed after."""
    inv = two_host_fleet(f"gt{uuid.uuid4().hex[:8]}-")
    yield inv
    names = guards.lock_names(inv, [Resource("chain", c) for c in inv.chains] + [Resource("host", h) for h in inv.hosts])
    for name in names:
        httpx.delete(f"{prefect_api}/v2/concurrency_limits/{name}", timeout=5)


def test_a_node_run_and_its_chain_wave_never_overlap_nor_deadlock(fleet_limits):
    inv = fleet_limits
    node_a = next(n for n in inv.nodes if n.endswith("-a"))
    chain = next(c for c in inv.chains if c.endswith("-chain"))
    inside: list[tuple[str, float, float]] = []
    errors: list[BaseException] = []

    def run(name: str, resources: list, start: threading.Barrier) -> None:
        try:
            start.wait(10)
            with leases(inv, resources, wait_seconds=20, poll_seconds=0.1):
                entered = time.monotonic()
                time.sleep(0.05)
                inside.append((name, entered, time.monotonic()))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    started = time.monotonic()
    for _ in range(20):
        start = threading.Barrier(2)
        threads = [threading.Thread(target=run, args=("node", [Resource("node", node_a)], start)),
                   threading.Thread(target=run, args=("chain", [Resource("chain", chain)], start))]
        [t.start() for t in threads]
        [t.join(30) for t in threads]
        assert not any(t.is_alive() for t in threads), "a run never finished: deadlock"
    assert not errors, errors
    assert len(inside) == 40
    spans = sorted(inside, key=lambda s: s[1])
    for (n1, _, left), (n2, entered, _) in zip(spans, spans[1:]):
        assert entered >= left, f"{n1} and {n2} were inside at once"
    print(f"\n20 races of node vs chain in {time.monotonic() - started:.1f}s")


def test_a_host_lease_blocks_its_nodes_but_not_a_node_elsewhere(fleet_limits):
    inv = fleet_limits
    h1 = next(h for h in inv.hosts if h.endswith("-h1"))
    a, d = (next(n for n in inv.nodes if n.endswith(s)) for s in ("-a", "-d"))
    with leases(inv, [Resource("host", h1)], wait_seconds=2) as held:
        assert len(held.names) == 3
        with pytest.raises(LeaseBusy, match=f"runbooks-node-{a}"):
            with leases(inv, [Resource("node", a), Resource("node", d)], wait_seconds=0.5):
                pytest.fail("a node of a leased host was taken")
        # All or nothing: the refused run did not keep d either.
        with node_lease(d, wait_seconds=0.5):
            pass


HOLDING_RUN = textwrap.dedent(
    """
    import sys, time
    from tasks.guards import node_lease
    with node_lease(sys.argv[1], wait_seconds=10, lease_seconds=60) as held:
        print(f"acquired {held.lease_id}", flush=True)
        time.sleep(600)
    """
)


def test_a_crashed_holders_lease_released_by_id_lets_the_next_run_in_at_once(node, prefect_api):
    env = os.environ | {"PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDING_RUN, node], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("acquired"), f"the holder did not take the lease: {line!r}"
        lease_id = line.split()[1]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        with pytest.raises(LeaseBusy):
            with node_lease(node, wait_seconds=0.5):
                pass
        guards.release_lease(lease_id)
        guards.release_lease(lease_id)  # already gone: fine
        started = time.monotonic()
        # Held, the lease would refuse this for its whole 60 s (LeaseBusy after 1 s). Released, it is taken
        # at once, or after a few seconds when a loaded SQLite server answers 503 and the call retries
        # (a CI run under load saw 3.0 s).
        with node_lease(node, wait_seconds=1) as held:
            assert held.waited_s < 5
        assert time.monotonic() - started < 6
    finally:
        stop_process(proc, grace=1)


def test_releasing_a_lease_needs_a_lease_id():
    from tasks.errors import InvalidInput

    with pytest.raises(InvalidInput):
        guards.release_lease("not-a-uuid")


# ---------------------------------------------------------------------------
# Restart budget and circuit breaker (derived from the audit trail)
# ---------------------------------------------------------------------------

BUDGET = RestartBudget(max_restarts=3, window_seconds=3600, backoff_seconds=[0, 60, 300])


def restarted(node: str, run: str, automatic: bool = True) -> datetime:
    """Record an automatic restart the way node-recovery does; returns its time."""
    audit = AuditRecord(run, "node-recovery", node=node)
    entry = audit.action(host="ops@10.0.0.5:22", command="supervisorctl restart eth", exit_code=0,
                         duration_s=1.2, step="restart", automatic=automatic)
    return datetime.fromisoformat(entry["ts"])


def test_three_restarts_with_back_off_then_the_circuit_opens_once_and_stays_open(audit_dir):
    node = "eth-a"
    decisions = []

    def decide(at: datetime) -> guards.RestartDecision:
        d = restart_decision(node, BUDGET, now=at)
        decisions.append(d)
        return d

    first = decide(datetime.now(timezone.utc))
    assert first.allowed and first.restarts_in_window == 0 and not first.circuit_open
    t1 = restarted(node, "run-1")

    backing_off = decide(t1 + timedelta(seconds=10))
    assert not backing_off.allowed and not backing_off.escalate and not backing_off.circuit_open
    assert backing_off.next_allowed_at == t1 + timedelta(seconds=60)
    assert "backing off" in backing_off.reason
    assert decide(t1 + timedelta(seconds=61)).allowed
    t2 = restarted(node, "run-2")

    assert not decide(t2 + timedelta(seconds=299)).allowed
    third = decide(t2 + timedelta(seconds=301))
    assert third.allowed and third.restarts_in_window == 2
    t3 = restarted(node, "run-3")
    # Neither a manual restart nor another node's restart counts.
    restarted(node, "run-manual", automatic=False)
    restarted("eth-b", "run-b")

    later = t3 + timedelta(seconds=600)
    opening = decide(later)
    assert not opening.allowed and opening.circuit_open and opening.escalate
    assert opening.restarts_in_window == 3 and "budget exhausted" in opening.reason
    audit = AuditRecord("run-4", "node-recovery", node=node)
    entry = guards.record_circuit_open(audit, node, opening)
    assert entry["data"]["name"] == "circuit-open" and entry["data"]["node"] == node
    assert guards.record_circuit_open(audit, node, opening) is None  # recorded once
    assert guards.circuit_state(node) == "open"
    assert guards.circuit_state("eth-b") == "closed"

    for _ in range(3):
        stays = decide(later + timedelta(seconds=5))
        assert not stays.allowed and stays.circuit_open and not stays.escalate
    # Open until an operator closes it, even after the restarts left the window.
    assert decide(datetime.now(timezone.utc) + timedelta(days=2)).circuit_open
    assert sum(d.escalate for d in decisions) == 1


def test_closing_the_circuit_counts_restarts_afresh(audit_dir):
    node = "eth-a"
    for i in range(3):
        restarted(node, f"run-{i}")
    opening = restart_decision(node, BUDGET)
    guards.record_circuit_open(AuditRecord("run-x", "node-recovery", node=node), node, opening)
    assert guards.circuit_state(node) == "open"

    entry = guards.close_circuit(node, "alice", "replaced the failing disk")
    assert entry["flow"] == "close-circuit" and entry["data"]["name"] == "circuit-closed"
    assert entry["data"]["operator"] == "alice"
    assert guards.circuit_state(node) == "closed"
    after = restart_decision(node, BUDGET)
    assert after.allowed and after.restarts_in_window == 0 and not after.circuit_open
    restarted(node, "run-after")
    assert restart_decision(node, BUDGET, now=datetime.now(timezone.utc) + timedelta(seconds=61)).restarts_in_window == 1
    with pytest.raises(guards.CircuitNotOpen):
        guards.close_circuit(node, "alice", "again")


def test_restarts_leave_the_window_and_the_last_back_off_repeats(audit_dir):
    node = "eth-c"
    budget = RestartBudget(max_restarts=5, window_seconds=600, backoff_seconds=[0, 10])
    t = [restarted(node, f"run-{i}") for i in range(3)]
    d = restart_decision(node, budget, now=t[-1] + timedelta(seconds=5))
    assert not d.allowed and d.next_allowed_at == t[-1] + timedelta(seconds=10)  # 4th needs backoff[-1]
    assert restart_decision(node, budget, now=t[-1] + timedelta(seconds=11)).restarts_in_window == 3
    gone = restart_decision(node, budget, now=t[-1] + timedelta(seconds=601))
    assert gone.allowed and gone.restarts_in_window == 0


def test_a_zero_budget_escalates_at_the_first_need(audit_dir):
    d = restart_decision("eth-z", RestartBudget(max_restarts=0))
    assert not d.allowed and d.escalate and d.circuit_open


def test_typed_restart_actions_count_and_old_step_entries_still_do(audit_dir):
    node = "eth-t"
    old = AuditRecord("run-old", "node-recovery", node=node)
    old.action(host="h", command="supervisorctl restart eth", exit_code=0, duration_s=1, step="restart", automatic=True)
    new = AuditRecord("run-new", "node-recovery", node=node)
    new.action(host="h", command="supervisorctl restart eth", exit_code=0, duration_s=1, action="restart",
               step="restart-node", automatic=True)
    # Not restarts, or not automatic: not counted.
    new.action(host="h", command="haproxy drain", exit_code=0, duration_s=1, action="drain", automatic=True)
    new.action(host="h", command="supervisorctl restart eth", exit_code=0, duration_s=1, action="restart", automatic=False)
    since = datetime.now(timezone.utc) - timedelta(minutes=5)
    assert len(guards.automatic_restarts(node, since)) == 2


# ---------------------------------------------------------------------------
# The close-circuit and pause-remediation flows (in-process, real server)
# ---------------------------------------------------------------------------

INVENTORY = """
chains:
  lab-eth:
    family: ethereum
    references: ["http://127.0.0.1:9/"]
hosts:
  h1: {address: 127.0.0.1, ssh_user: ops, ssh_identity_block: lab-ssh}
nodes:
  eth-a:
    chain: lab-eth
    client: anvil
    host: h1
    service: {manager: supervisor, name: eth-a}
    rpc_url: http://127.0.0.1:9/
    datadir: /var/tmp/eth-a
"""


@pytest.fixture
def inventory_file(tmp_path, monkeypatch):
    p = tmp_path / "inventory.yaml"
    p.write_text(INVENTORY)
    monkeypatch.setenv("RUNBOOKS_INVENTORY", str(p))
    return p


def test_an_operator_closes_an_open_circuit_from_the_ui(prefect_api, audit_dir, inventory_file):
    from flows.circuit import close_circuit

    noop = close_circuit("eth-a", "alice", "nothing to close yet")
    assert noop["outcome"] == "noop"
    outcomes = [e for e in read_entries(kind="outcome") if e["flow"] == "close-circuit"]
    assert outcomes[-1]["data"]["status"] == "noop"

    for i in range(3):
        restarted("eth-a", f"run-{i}")
    guards.record_circuit_open(AuditRecord("run-x", "node-recovery", node="eth-a"), "eth-a",
                               restart_decision("eth-a", BUDGET))
    closed = close_circuit("eth-a", "alice@example.org", "disk replaced, node resynced")
    assert closed["outcome"] == "closed" and guards.circuit_state("eth-a") == "closed"
    run_entries = [e for e in read_entries() if e["flow"] == "close-circuit" and e["run_id"] != outcomes[-1]["run_id"]]
    kinds = [e["kind"] for e in run_entries]
    assert kinds[0] == "started" and kinds[-1] == "outcome" and "guard" in kinds
    assert any(e["data"].get("name") == "circuit-closed" for e in run_entries if e["kind"] == "guard")


def test_closing_a_circuit_of_an_unknown_node_is_refused_before_anything(prefect_api, audit_dir, inventory_file):
    from flows.circuit import close_circuit
    from inventory import InventoryError

    with pytest.raises(InventoryError):
        close_circuit("eth-nope", "alice", "typo")
    assert not [e for e in read_entries() if e["kind"] == "guard"]


def test_the_pause_switch_round_trip(prefect_api, pause_variable):
    assert guards.pause_state() == guards.PauseState(False, "", "")
    on = guards.set_pause(True, "chain halt on lab-eth", "alice")
    assert on.paused
    assert guards.pause_state() == guards.PauseState(True, "chain halt on lab-eth", "alice")
    value = httpx.get(f"{prefect_api}/variables/name/{pause_variable}", timeout=5).json()["value"]
    assert value["paused"] is True and value["by"] == "alice"
    guards.set_pause(False, "chain moving again", "bob")
    assert guards.pause_state() == guards.PauseState(False, "chain moving again", "bob")


def test_the_pause_flow_sets_the_switch_and_audits_it(prefect_api, pause_variable, audit_dir, inventory_file):
    from flows.circuit import pause_remediation

    result = pause_remediation(True, reason="maintenance window", operator="alice")
    assert result["paused"] is True and guards.pause_state().paused
    guard = [e for e in read_entries(kind="guard") if e["flow"] == "pause-remediation"]
    assert guard[-1]["data"]["name"] == "remediation-paused" and guard[-1]["data"]["by"] == "alice"
    pause_remediation(False, reason="maintenance over", operator="alice")
    assert not guards.pause_state().paused


def test_an_unreadable_pause_switch_counts_as_paused(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        started = time.monotonic()
        state = guards.pause_state(timeout=2)
    assert state.paused and "could not be read" in state.reason
    assert time.monotonic() - started < 5


def test_a_garbage_pause_value_counts_as_paused(prefect_api, pause_variable):
    httpx.post(f"{prefect_api}/variables/", json={"name": pause_variable, "value": "maybe"}, timeout=5).raise_for_status()
    state = guards.pause_state()
    assert state.paused and "unreadable value" in state.reason


# ---------------------------------------------------------------------------
# Fleet short-circuit, with real anvil nodes as references
# ---------------------------------------------------------------------------

@pytest.fixture
def anvil_url(anvils):
    """`anvil_url(*args)`: start a real anvil node, return its RPC URL."""
    return lambda *args: anvils(*args).url


def fleet(refs: list[str], nodes: dict[str, str]) -> Inventory:
    return Inventory.model_validate({
        "chains": {"lab-eth": {"family": "ethereum", "references": refs, "max_head_age_seconds": 60,
                               "max_unhealthy_share": 0.5}},
        "hosts": {"h1": {"address": "127.0.0.1", "ssh_user": "ops", "ssh_identity_block": "lab-ssh"}},
        "nodes": {n: {"chain": "lab-eth", "client": "anvil", "host": "h1", "rpc_url": url,
                      "service": {"manager": "supervisor", "name": n}, "datadir": f"/var/tmp/{n}"}
                  for n, url in nodes.items()},
    })


def sweep(inv: Inventory) -> tuple[dict, list]:
    """The chain's nodes and references in one sweep, as node-recovery sees them."""
    from tasks import steps

    result = steps.sweep(inv, sorted(inv.nodes_on_chain("lab-eth")))
    return result.nodes, result.references["lab-eth"]


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_a_single_sick_node_is_a_node_problem(anvil_url):
    ref, a, b = anvil_url(), anvil_url(), anvil_url()
    inv = fleet([ref], {"eth-a": a, "eth-b": b, "eth-c": closed_port_url()})
    assessments, refs = sweep(inv)
    assert [n for n, x in assessments.items() if not x.healthy] == ["eth-c"]
    assert chain_incident(inv, "lab-eth", assessments, refs) is None


def test_a_single_sick_node_on_a_one_node_chain_is_still_a_node_problem(anvil_url):
    inv = fleet([anvil_url()], {"eth-a": closed_port_url()})
    assert chain_incident(inv, "lab-eth", *sweep(inv)) is None


def test_most_of_the_chain_sick_at_once_is_a_chain_incident(anvil_url):
    ref, a = anvil_url(), anvil_url()
    inv = fleet([ref], {"eth-a": a, "eth-b": closed_port_url(), "eth-c": closed_port_url()})
    reason = chain_incident(inv, "lab-eth", *sweep(inv))
    assert reason and "2 of 3 nodes unhealthy" in reason and "eth-b" in reason


def test_stalled_references_are_a_chain_incident(anvil_url):
    hour_ago = str(int(time.time()) - 3600)
    stale = [anvil_url("--timestamp", hour_ago), anvil_url("--timestamp", hour_ago)]
    inv = fleet(stale, {"eth-a": anvil_url(), "eth-b": anvil_url()})
    reason = chain_incident(inv, "lab-eth", *sweep(inv))
    assert reason and "every reference head is stale" in reason


def test_one_fresh_reference_is_enough(anvil_url):
    inv = fleet([anvil_url("--timestamp", str(int(time.time()) - 3600)), anvil_url()], {"eth-a": anvil_url()})
    assert chain_incident(inv, "lab-eth", *sweep(inv)) is None


def test_no_reference_answering_is_a_chain_incident(anvil_url):
    inv = fleet([closed_port_url(), closed_port_url()], {"eth-a": anvil_url()})
    reason = chain_incident(inv, "lab-eth", *sweep(inv))
    assert reason and "no reference answered" in reason


def test_partial_assessments_are_refused(anvil_url):
    from tasks.errors import InvalidInput

    inv = fleet([anvil_url()], {"eth-a": anvil_url(), "eth-b": closed_port_url()})
    assessments, refs = sweep(inv)
    with pytest.raises(InvalidInput, match="eth-b"):
        chain_incident(inv, "lab-eth", {"eth-a": assessments["eth-a"]}, refs)


def test_a_chain_incident_is_escalated_once_per_window(audit_dir):
    assert guards.should_escalate_chain_incident("lab-eth")
    guards.record_chain_incident(AuditRecord("run-1", "node-recovery", node="eth-a"), "lab-eth", "refs stalled", escalated=True)
    guards.record_chain_incident(AuditRecord("run-2", "node-recovery", node="eth-b"), "lab-eth", "refs stalled", escalated=False)
    assert not guards.should_escalate_chain_incident("lab-eth")
    assert guards.should_escalate_chain_incident("other-chain")
    later = datetime.now(timezone.utc) + timedelta(seconds=3601)
    assert guards.should_escalate_chain_incident("lab-eth", now=later)


# ---------------------------------------------------------------------------
# Disruption budget
# ---------------------------------------------------------------------------

def backend_fleet() -> Inventory:
    return Inventory.model_validate({
        "chains": {"lab-eth": {"family": "ethereum", "references": ["http://127.0.0.1:1"]}},
        "hosts": {"h1": {"address": "127.0.0.1", "ssh_user": "ops", "ssh_identity_block": "lab-ssh"}},
        "load_balancers": {"lb": {"admin_block": "lab-haproxy"}},
        "nodes": {n: {"chain": "lab-eth", "client": "anvil", "host": "h1", "rpc_url": "http://127.0.0.1:1",
                      "service": {"manager": "supervisor", "name": n}, "datadir": f"/var/tmp/{n}",
                      "lb": {"balancer": "lb", "backend": "rpc", "server": n}}
                  for n in ("a", "b", "c")},
    })


def server(name: str, op_state: str = "UP", admin_state: str = "ready", weight: int = 1):
    from tasks.haproxy import ServerState

    return ServerState("rpc", name, "127.0.0.1:1", op_state, admin_state, weight, "L7OK")


@pytest.mark.parametrize("states, healthy, serving", [
    # A healthy peer in rotation keeps the backend serving.
    ([server("a"), server("b"), server("c")], {"b": True, "c": False}, ["b"]),
    # Peers HAProxy has UP but our probe says are sick (a stalled chain still answers) do not count.
    ([server("a"), server("b"), server("c")], {"b": False, "c": False}, None),
    # Healthy peers out of rotation (drained, in maintenance, weight 0, DOWN) do not count.
    ([server("a"), server("b", admin_state="drain"), server("c", admin_state="maint")], {"b": True, "c": True}, None),
    ([server("a"), server("b", weight=0), server("c", op_state="DOWN")], {"b": True, "c": True}, None),
])
def test_the_last_healthy_server_of_a_backend_is_never_taken_out(states, healthy, serving):
    inv = backend_fleet()
    asked = []

    def probe(names):
        asked.append(sorted(names))
        return {n: healthy[n] for n in names}

    if serving is None:
        with pytest.raises(guards.DisruptionBudgetExceeded, match="last healthy server of backend rpc"):
            guards.disruption_budget(inv, "a", states, probe)
    else:
        assert guards.disruption_budget(inv, "a", states, probe) == serving
    assert all("a" not in names for names in asked)  # the node itself never counts as its own peer


# ---------------------------------------------------------------------------
# Operator holds (derived from the audit trail)
# ---------------------------------------------------------------------------

def test_an_operator_holds_a_node_and_releases_it(audit_dir):
    audit = AuditRecord("run-h1", "hold-node", node="eth-a")
    assert guards.active_hold("eth-a") is None
    hold = guards.place_hold(audit, "eth-a", "alice@example.org", "disk swap", None)
    assert hold.node == "eth-a" and hold.operator == "alice@example.org" and hold.expires_at is None
    assert guards.active_hold("eth-a") == hold
    assert "disk swap" in hold.describe()
    assert guards.active_hold("eth-b") is None
    # Before it was placed, it was not active.
    assert guards.active_hold("eth-a", now=hold.placed_at - timedelta(seconds=1)) is None

    entry = guards.release_hold(audit, "eth-a", "bob", "disk swapped, resynced")
    assert entry["data"]["name"] == "hold-released"
    assert guards.active_hold("eth-a") is None
    with pytest.raises(guards.NotOnHold, match="not on hold"):
        guards.release_hold(audit, "eth-a", "bob", "again")
    # The trail holds both entries: state is derived, not stored.
    names = [e["data"]["name"] for e in read_entries(kind="guard")]
    assert names == ["hold-placed", "hold-released"]


def test_an_expired_hold_is_not_active(audit_dir):
    audit = AuditRecord("run-h2", "hold-node", node="eth-a")
    expires = datetime.now(timezone.utc) + timedelta(hours=2)
    hold = guards.place_hold(audit, "eth-a", "alice", "kernel upgrade", expires)
    assert hold.expires_at == expires
    assert guards.active_hold("eth-a", now=expires - timedelta(seconds=1)) == hold
    assert guards.active_hold("eth-a", now=expires) is None
    assert guards.active_hold("eth-a", now=expires + timedelta(days=1)) is None


def test_a_new_hold_replaces_the_old_one(audit_dir):
    audit = AuditRecord("run-h3", "hold-node", node="eth-a")
    soon = datetime.now(timezone.utc) + timedelta(minutes=10)
    guards.place_hold(audit, "eth-a", "alice", "short job", soon)
    longer = guards.place_hold(audit, "eth-a", "alice", "job runs long", soon + timedelta(hours=3))
    assert guards.active_hold("eth-a", now=soon + timedelta(minutes=1)) == longer


def test_every_hold_at_once(audit_dir):
    now = datetime.now(timezone.utc)
    audit = AuditRecord("run-h4", "hold-node")
    guards.place_hold(audit, "eth-a", "alice", "disk", None)
    guards.place_hold(audit, "eth-b", "alice", "short", now + timedelta(minutes=5))
    guards.place_hold(audit, "eth-c", "bob", "released soon", None)
    guards.release_hold(audit, "eth-c", "bob", "done")
    assert sorted(guards.holds()) == ["eth-a", "eth-b"]
    assert sorted(guards.holds(now=now + timedelta(minutes=6))) == ["eth-a"]


def test_bad_holds_are_refused_before_anything_is_written(audit_dir):
    from tasks.errors import InvalidInput

    audit = AuditRecord("run-h5", "hold-node")
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    for args in (("eth a", "alice", "x", None), ("eth-a", "", "x", None), ("eth-a", "alice", " ", None),
                 ("eth-a", "alice", "x", past), ("eth-a", "alice", "x", datetime.now() + timedelta(hours=1))):
        with pytest.raises(InvalidInput):
            guards.place_hold(audit, *args)
    with pytest.raises(InvalidInput):
        guards.release_hold(audit, "eth-a", "alice", "")
    assert read_entries() == []
