"""Alert-triggered recovery on the lab: how long each stage of the pipeline takes.

    fault -> Prometheus rule fires -> Alertmanager -> alert bridge -> Prefect event
          -> trigger (automation) -> worker starts node-recovery -> node healthy and in rotation

For each fault (default 5, rotating eth-a, eth-b, eth-c, op-a, op-b, so each
node is restarted once and no node's restart budget of 3 an hour is spent;
it refuses to start if its faults would leave any node without an automatic
restart in the budget's window, or find a circuit open or remediation paused):

  t0  fault injected            lab.fault(node, kind)
  t1  alert firing              Alertmanager GET /api/v2/alerts lists an active alert with node=<node> (polled every
                                0.2 s); t1 is the alert's updatedAt, Alertmanager's own time of receipt, when it lies
                                between t0 and the poll that saw it (else the poll's time; both are in the JSON)
  t2  event landed              `received` of the first runbooks.alert.firing event on runbooks.node.<node> since t0
  t3  recovery run started      start_time of the node-recovery flow run for <node> created since t0
  t4  recovered                 the node classifies healthy (tasks.steps.assess_nodes) and HAProxy has it in rotation
                                (polled every 0.5 s once the run has started)

If the fault is healed, or the automation switched off, by someone else
before the runbook acts (a pytest session's fixtures do both), the bench stops
and says so rather than report a timeout.

Between faults the fleet is healed and every node must be healthy with no
active alert. Automation is switched on for event triggers only (schedules
off, so the fleet-health schedule cannot start the run instead of the alert)
and switched off again at the end, whatever happens.

IT NEEDS THE LAB TO ITSELF: it switches the lab's automations on, injects
faults and heals the whole fleet. Never run it during `make test` or any
pytest run against the same lab; it refuses to start without --i-own-the-lab.

    uv run python bench/alert_to_recovery_bench.py --i-own-the-lab [--faults 5] [--kind stall|kill|freeze]

Exit 0 when every fault recovered within its deadline, 1 otherwise, 2 when it
refused to start.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_NODES = ["eth-a", "eth-b", "eth-c", "op-a", "op-b"]
ALERTMANAGER = "http://127.0.0.1:19093"
HAPROXY_ADMIN = "tcp://127.0.0.1:19999"
# event -> run start, split (from the run's own state history): the automation creating the run,
# the worker submitting it, the process worker's new Python process reaching Running.
PHASES = [
    ("event_to_run_created_s", "  trigger: run created"),
    ("run_created_to_pending_s", "  worker picks it up"),
    ("pending_to_running_s", "  process start -> Running"),
]
STAGES = [  # (key, label, from, to)
    ("fault_to_alert_s", "fault -> alert", "t0", "t1"),
    ("alert_to_event_s", "alert -> event", "t1", "t2"),
    ("event_to_run_start_s", "event -> run start", "t2", "t3"),
    ("run_start_to_recovered_s", "run start -> recovered", "t3", "t4"),
    ("fault_to_recovered_s", "fault -> recovered", "t0", "t4"),
]


def prefect_auth() -> tuple[str, str] | None:
    """The Prefect API's login when it has one (the HA shape, `lab up --ha`), for Prefect's URLs only."""
    login = os.environ.get("PREFECT_API_AUTH_STRING")
    return tuple(login.split(":", 1)) if login else None


def parse_ts(text: str | None) -> float | None:
    """RFC 3339 (Prefect or Alertmanager) -> epoch seconds; None for Go's zero time."""
    if not text or text.startswith("0001-"):
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


class Pipeline:
    """Read-only looks at each stage of the pipeline, for one node at a time."""

    def __init__(self, inventory, http, lab_json: Path) -> None:
        from tasks.haproxy import HAProxyRuntime

        self.inventory = inventory
        self.http = http
        self.lab_json = lab_json
        self.haproxy = HAProxyRuntime(HAPROXY_ADMIN, timeout=3)

    def fault_recorded(self, node: str) -> bool:
        """The lab still records our fault (a restart leaves the record; only `heal` removes it)."""
        return node in (json.loads(self.lab_json.read_text()).get("faults") or {})

    def triggers_enabled(self) -> bool:
        """The node-recovery automation is on (another client, e.g. a pytest session, may switch it off)."""
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return any(a.enabled for a in client.read_automations() if "node-recovery" in a.name)

    def active_alerts(self, node: str | None = None) -> list[dict]:
        """Alertmanager's active (not silenced, not inhibited, not resolved) alerts, for one node or any fleet node."""
        r = self.http.get(f"{ALERTMANAGER}/api/v2/alerts",
                          params={"active": "true", "silenced": "false", "inhibited": "false"}, timeout=3)
        r.raise_for_status()
        now = time.time()
        out = []
        for a in r.json():
            name = (a.get("labels") or {}).get("node")
            ends = parse_ts(a.get("endsAt"))
            if (a.get("status") or {}).get("state") != "active" or (ends is not None and ends <= now):
                continue
            if (node is None and name in self.inventory.nodes) or name == node:
                out.append(a)
        return out

    def firing_events(self, node: str, since: float) -> list[dict]:
        """runbooks.alert.firing events on the node's resource since `since`, oldest first."""
        from tasks.events import ALERT_FIRING

        r = self.http.post(f"{os.environ['PREFECT_API_URL'].rstrip('/')}/events/filter", auth=prefect_auth(), json={
            "filter": {"event": {"name": [ALERT_FIRING]}, "resource": {"id": [f"runbooks.node.{node}"]},
                       "occurred": {"since": iso(since)}, "order": "ASC"},
            "limit": 20,
        }, timeout=5)
        r.raise_for_status()
        return r.json().get("events", [])

    def runs(self, node: str, since: float) -> list:
        """node-recovery runs for the node created since `since`, oldest first."""
        from lab.runs import flow_runs

        return sorted((r for r in flow_runs("node-recovery", since) if (r.parameters or {}).get("node") == node),
                      key=lambda r: r.created)

    def recovered(self, node: str) -> tuple[bool, str]:
        """Healthy by our own classification, and in rotation at HAProxy; with what was seen."""
        from tasks.probes.assessment import assess_nodes

        a = assess_nodes(self.inventory, [node])[node]
        lb = self.inventory.node(node).lb
        s = self.haproxy.server_state(lb.backend, lb.server)
        seen = f"{a.status} ({a.reason}); haproxy {lb.backend}/{lb.server} {s.op_state}/{s.admin_state}"
        return a.healthy and s.in_rotation, seen

    def fleet_healthy(self) -> bool:
        from tasks.probes.assessment import assess_nodes

        return all(a.healthy for a in assess_nodes(self.inventory, sorted(self.inventory.nodes)).values())


class NotOurLab(RuntimeError):
    """Someone else acted on the lab during a measurement: the figures would mean nothing."""


def run_phases(run, t2: float | None) -> dict:
    """Where event -> run start goes: the automation creating the run, the worker picking it up,
    and the process worker's new Python process reaching Running."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        states = sorted(client.read_flow_run_states(run.id), key=lambda s: s.timestamp)
    pending = next((s.timestamp.timestamp() for s in states if s.type.value == "PENDING"), None)
    running = next((s.timestamp.timestamp() for s in states if s.type.value == "RUNNING"), None)
    created = run.created.timestamp()
    return {
        "event_to_run_created_s": round(created - t2, 2) if t2 is not None else None,
        "run_created_to_pending_s": round(pending - created, 2) if pending else None,
        "pending_to_running_s": round(running - pending, 2) if pending and running else None,
    }


def run_outcome(run_id) -> str | None:
    """The audit record's outcome status of a run (succeeded, noop, refused, escalated), if written yet."""
    from tasks.audit import read_entries

    outcomes = [e for e in read_entries(run_id=str(run_id)) if e["kind"] == "outcome"]
    return (outcomes[-1].get("data") or {}).get("status") if outcomes else None


def run_steps(run_id) -> dict[str, float]:
    """Seconds the run spent in each of its steps, from its own audit records: what each guard costs.

    A step lasts from its marker to the next one; "start" is the run's first record up to its lease,
    "lease" the lease up to the first step, and the last step ends at the outcome."""
    from tasks.audit import entry_time, read_entries

    marks = []
    for e in read_entries(run_id=str(run_id)):
        data = e.get("data") or {}
        if e["kind"] == "started":
            marks.append(("start", entry_time(e)))
        elif e["kind"] == "guard" and data.get("name") == "lease-taken":
            marks.append(("lease", entry_time(e)))
        elif e["kind"] == "note" and data.get("text") == "step":
            marks.append((data["step"], entry_time(e)))
        elif e["kind"] == "outcome":
            marks.append(("outcome", entry_time(e)))
    return {name: round((marks[i + 1][1] - at).total_seconds(), 2)
            for i, (name, at) in enumerate(marks[:-1]) if at and marks[i + 1][1]}


def kill_api_server(after_s: float) -> threading.Timer:
    """`lab up --ha` only: SIGKILL the lab's first Prefect API server `after_s` seconds from now, under the
    recovery; supervisord starts it again (autorestart), the balancer sends requests to the other."""
    from lab import topology

    conf = str(topology.Paths(topology.lab_dir()).supervisord_conf)
    timer = threading.Timer(after_s, subprocess.run, (["supervisorctl", "-c", conf, "signal", "KILL", "prefect-api-1"],),
                            {"capture_output": True, "timeout": 10, "check": True})
    timer.daemon = True
    timer.start()
    return timer


def measure(p: Pipeline, node: str, kind: str, deadline_s: float, kill_api_after: float | None = None) -> dict:
    """Inject one fault and time every stage until the node is back, or the deadline passes; with
    `kill_api_after`, an HA lab's API server is killed that many seconds after the fault."""
    import lab

    rec: dict = {"node": node, "kind": kind, "t0": None, "t1": None, "t1_polled": None, "t2": None, "t3": None,
                 "t4": None, "alert": None, "event_id": None, "event_seen_s": None, "run_id": None, "runs": 0,
                 "run_trigger_event_id": None, "run_reason": None, "run_state": None, "run_outcome": None,
                 "run_duration_s": None, "ok": False, "error": None}
    t0 = time.time()
    lab.fault(node, kind)
    rec["t0"] = t0
    if kill_api_after is not None:
        kill_api_server(kill_api_after)
        rec["api_server_killed_at_s"] = kill_api_after
    end = time.monotonic() + deadline_s
    next_events = next_runs = next_recovery = next_fault = next_triggers = 0.0
    run = None
    final_at = None  # when the run was first seen in a final state
    last_seen = ""
    problems: list[str] = []  # transient look-up errors, reported if it ends badly

    while True:
        mono = time.monotonic()
        try:
            # Alertmanager every pass (~0.2 s); the slower Prefect look-ups on their own cadence so
            # they do not blur the alert's time.
            if rec["t1"] is None:
                alerts = p.active_alerts(node)
                if alerts:
                    polled = time.time()
                    a = alerts[0]
                    # Alertmanager stamps updatedAt when it receives the alert from Prometheus (Prometheus
                    # re-sends only after a minute): a server-side time, finer than our polling.
                    received = parse_ts(a.get("updatedAt"))
                    rec["t1_polled"] = polled
                    rec["t1"] = received if received is not None and t0 <= received <= polled else polled
                    rec["alert"] = {"alertname": a["labels"].get("alertname"), "startsAt": a.get("startsAt"),
                                    "updatedAt": a.get("updatedAt"), "fingerprint": a.get("fingerprint")}
            if rec["t2"] is None and mono >= next_events:
                next_events = mono + 0.5
                events = p.firing_events(node, t0)
                if events:
                    ev = events[0]
                    rec["t2"] = parse_ts(ev.get("received")) or time.time()
                    rec["event_seen_s"] = round(time.time() - t0, 2)
                    rec["event_id"] = ev["id"]
                    rec["event_alertname"] = (ev.get("payload") or {}).get("alertname")
            if mono >= next_runs and (run is None or not (run.state and run.state.is_final())):
                next_runs = mono + (1.0 if rec["t1"] or rec["t2"] else 5.0)
                runs = p.runs(node, t0)
                rec["runs"] = len(runs)
                if runs:
                    # The run this alert started; else the first run for the node since the fault.
                    mine = [r for r in runs if rec["event_id"] and r.parameters.get("trigger_event_id") == rec["event_id"]]
                    run = (mine or runs)[0]
                    rec["run_id"] = str(run.id)
                    rec["run_trigger_event_id"] = run.parameters.get("trigger_event_id")
                    rec["run_reason"] = run.parameters.get("reason")
                    rec["run_state"] = run.state.name if run.state else None
                    if run.start_time and rec["t3"] is None:
                        rec["t3"] = run.start_time.timestamp()
                    if run.state and run.state.is_final():
                        final_at = final_at or mono
                        rec["run_duration_s"] = round(run.total_run_time.total_seconds(), 2)
                        if run.state.message and not run.state.is_completed():
                            rec["run_message"] = run.state.message[:300]
            if rec["t3"] is not None and rec["t4"] is None and mono >= next_recovery:
                next_recovery = mono + 0.5
                ok, last_seen = p.recovered(node)
                if ok:
                    rec["t4"] = time.time()
            # Until the runbook acts, nobody else may: our fault healed, or automation switched off,
            # means another user of the lab (a pytest session's fixtures do both).
            if rec["t3"] is None and mono >= next_fault:
                next_fault = mono + 1.0
                if not p.fault_recorded(node):
                    raise NotOurLab(f"the {kind} fault on {node} was healed by someone else "
                                    f"{time.time() - t0:.0f}s after injection, before any recovery run started")
            if rec["t3"] is None and mono >= next_triggers:
                next_triggers = mono + 3.0
                if not p.triggers_enabled():
                    raise NotOurLab(f"the node-recovery automation was switched off by someone else "
                                    f"{time.time() - t0:.0f}s after the fault on {node}")
        except NotOurLab:
            raise
        except Exception as exc:  # noqa: BLE001 - a look-up failing once is retried; reported if it ends badly
            problems.append(f"{type(exc).__name__}: {exc}"[:200])

        if rec["t4"] is not None and final_at is not None:
            break
        if final_at is not None and rec["t4"] is None and mono - final_at > 15:
            rec["error"] = (f"run {rec['run_id']} ended {rec['run_state']} but {node} is not healthy and in rotation "
                            f"15 s later: {last_seen}")
            break
        if mono > end:
            rec["error"] = f"TIMEOUT after {deadline_s:g}s: " + stuck_at(rec, last_seen)
            break
        time.sleep(0.2)

    if rec["run_id"]:
        rec["run_outcome"] = run_outcome(rec["run_id"])
        rec["run_steps"] = run_steps(rec["run_id"])
        try:
            rec.update(run_phases(run, rec["t2"]))
        except Exception as exc:  # noqa: BLE001 - a detail; the stages above stand without it
            rec["run_phases_error"] = str(exc)[:200]
    if rec["t2"] is not None and rec["run_trigger_event_id"] and rec["run_trigger_event_id"] != rec["event_id"]:
        note = f"the run was started by event {rec['run_trigger_event_id']}, not the alert's event {rec['event_id']}"
        rec["error"] = f"{rec['error']}; {note}" if rec["error"] else note
    if rec["error"] and problems:
        rec["lookup_errors"] = problems[-5:]
    for key, _, a, b in STAGES:
        rec[key] = round(rec[b] - rec[a], 2) if rec[a] is not None and rec[b] is not None else None
    if rec["t4"] is not None and rec["run_outcome"] != "succeeded" and not rec["error"]:
        rec["error"] = f"{node} is back but the run's outcome is {rec['run_outcome']!r}, not 'succeeded'"
    rec["ok"] = rec["error"] is None and rec["t4"] is not None
    if rec["alert"]:
        fired = parse_ts(rec["alert"].get("startsAt"))
        rec["prometheus_fired_s"] = round(fired - t0, 2) if fired else None  # the rule's own firing time
        rec["alert_polled_s"] = round(rec["t1_polled"] - t0, 2)
    return rec


def stuck_at(rec: dict, last_seen: str) -> str:
    """Which stage the pipeline stopped at, in words."""
    if rec["t1"] is None and rec["t2"] is None:
        return "no active alert for the node in Alertmanager (Prometheus rule, exporter or Alertmanager)"
    if rec["t2"] is None:
        return "the alert fired but no runbooks.alert.firing event landed in Prefect (Alertmanager webhook or bridge)"
    if rec["run_id"] is None:
        return "the event landed but no node-recovery run was created (automation paused, trigger not matching, or not deployed)"
    if rec["t3"] is None:
        return f"run {rec['run_id']} was created but never started ({rec['run_state']}): is the worker polling?"
    return f"run {rec['run_id']} ({rec['run_state']}) started but the node is not healthy and in rotation: {last_seen}"


def settle(p: Pipeline, timeout: float) -> None:
    """Heal every fault, every node healthy and in rotation, and no active alert left for a fleet node."""
    from tests.fleet import restore_fleet, wait_for

    restore_fleet(timeout=timeout)
    wait_for(lambda: not p.active_alerts(), timeout, interval=0.5, what="every fleet alert to resolve in Alertmanager")


def preflight(p: Pipeline, plan: list[str], http) -> list[str]:
    """Reasons not to start: missing pieces, a paused switch, restart budgets that would run out."""
    from prefect.client.orchestration import get_client

    from tasks import guards

    why = []
    api = os.environ["PREFECT_API_URL"].rstrip("/")
    try:
        workers = http.post(f"{api}/work_pools/runbooks/workers/filter", json={"limit": 10}, timeout=5,
                            auth=prefect_auth()).json()
        if not any(w.get("status") == "ONLINE" for w in workers):
            why.append("no ONLINE worker in work pool 'runbooks'")
    except Exception as exc:  # noqa: BLE001
        why.append(f"cannot read the work pool's workers: {exc}")
    with get_client(sync_client=True) as client:
        names = [a.name for a in client.read_automations()]
    if not any("node-recovery" in n for n in names):
        why.append(f"no node-recovery automation on the server (have {names}): run `python -m deployments.register`")
    pause = guards.pause_state()
    if pause.paused:
        why.append(f"automatic remediation is paused ({pause.by}: {pause.reason}): alert runs would be refused")
    for node in sorted(set(plan)):
        if node not in p.inventory.nodes:
            why.append(f"{node} is not in the inventory")
            continue
        budget = p.inventory.chain_of(node).restart_budget
        d = guards.restart_decision(node, budget)
        wanted = plan.count(node)
        if d.circuit_open and not d.allowed:
            why.append(d.reason)
        elif d.restarts_in_window + wanted >= budget.max_restarts:
            # Never spend a node's budget: the next real fault (or the next test) would open its circuit.
            why.append(f"{node}: {d.restarts_in_window} automatic restarts in the last {budget.window_seconds:g}s; "
                       f"{wanted} more would leave none of its budget of {budget.max_restarts} "
                       "(wait for older restarts to leave the window, or rotate through other nodes with --nodes)")
    return why


def wait_backoff(p: Pipeline, node: str, limit: float = 60) -> None:
    """A node restarted moments ago (by an earlier fault) may be inside its back-off: wait it out."""
    from tasks import guards

    d = guards.restart_decision(node, p.inventory.chain_of(node).restart_budget)
    if not d.allowed and d.next_allowed_at and not d.circuit_open:
        wait = d.next_allowed_at.timestamp() - time.time() + 0.5
        if 0 < wait <= limit:
            print(f"  {node}: waiting {wait:.1f}s for its restart back-off")
            time.sleep(wait)


def fmt(v: float | None) -> str:
    return f"{v:6.2f}" if v is not None else "     -"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--i-own-the-lab", action="store_true",
                        help="required: the bench switches automation on and breaks nodes; never during `make test`")
    parser.add_argument("--faults", type=int, default=5)
    parser.add_argument("--kind", choices=["stall", "kill", "freeze"], default="stall")
    parser.add_argument("--nodes", default=",".join(DEFAULT_NODES), help="nodes to rotate through, comma-separated")
    parser.add_argument("--deadline", type=float, default=180, help="seconds per fault, from injection to recovered")
    parser.add_argument("--settle", type=float, default=120, help="seconds to heal the fleet and clear alerts between faults")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "alert_to_recovery.json")
    parser.add_argument("--kill-api-server-after", type=float, metavar="SECONDS",
                        help="`lab up --ha` only: SIGKILL the Prefect API server prefect-api-1 this long after each fault")
    args = parser.parse_args()
    if not args.i_own_the_lab:
        print("refusing to start: this bench switches the lab's automation on, breaks nodes and heals the whole "
              "fleet, so it needs the lab to itself (never during `make test` or another pytest run on this lab). "
              "Pass --i-own-the-lab when nothing else uses the lab.", file=sys.stderr)
        return 2
    if args.faults < 1:
        parser.error("--faults must be at least 1")
    nodes = [n for n in args.nodes.split(",") if n]
    plan = [nodes[i % len(nodes)] for i in range(args.faults)]

    # The lab's environment before Prefect is imported: its API, inventory, audit directory.
    from lab import services, topology

    os.environ.update(services.runbook_env(topology.Paths(topology.lab_dir())))

    import httpx

    import lab
    from inventory import load_inventory
    from lab.runs import set_automation

    if not lab.is_up():
        print("the lab is not up: `uv run python -m lab up`", file=sys.stderr)
        return 2
    if args.kill_api_server_after is not None and not services.is_ha(topology.Paths(topology.lab_dir())):
        print("--kill-api-server-after needs the HA lab (`python -m lab up --ha`): the embedded lab has one server",
              file=sys.stderr)
        return 2
    http = httpx.Client()
    p = Pipeline(load_inventory(), http, topology.Paths(topology.lab_dir()).lab_json)
    refusals = preflight(p, plan, http)
    if refusals:
        print("refusing to start:\n  " + "\n  ".join(refusals), file=sys.stderr)
        return 2

    # SIGTERM unwinds like Ctrl-C, so the finally below switches automation off again.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: list[dict] = []
    started_at = time.time()
    injected: str | None = None
    interference: str | None = None
    try:
        print(f"settling the fleet (heal, every node healthy, no active alerts; up to {args.settle:g}s) ...")
        settle(p, args.settle)
        set_automation(True, schedules=False)
        print(f"automation on: event triggers only, schedules off; {args.faults} x {args.kind}, "
              f"deadline {args.deadline:g}s per fault")
        for i, node in enumerate(plan, 1):
            wait_backoff(p, node)
            print(f"[{i}/{args.faults}] {args.kind} {node} ...", flush=True)
            injected = node
            try:
                rec = measure(p, node, args.kind, args.deadline, args.kill_api_server_after)
            except NotOurLab as exc:
                interference = str(exc)
                print(f"  STOPPED: {exc}. The lab is not ours: is a pytest session running against it?",
                      file=sys.stderr)
                break
            results.append(rec)
            print(f"  fault->alert {fmt(rec['fault_to_alert_s'])}s  alert->event {fmt(rec['alert_to_event_s'])}s  "
                  f"event->run {fmt(rec['event_to_run_start_s'])}s  run->recovered {fmt(rec['run_start_to_recovered_s'])}s  "
                  f"total {fmt(rec['fault_to_recovered_s'])}s  run {rec['run_state']}/{rec['run_outcome']}")
            if rec.get("pending_to_running_s") is not None:
                print(f"  (event->run: trigger {fmt(rec['event_to_run_created_s']).strip()}s, worker "
                      f"{fmt(rec['run_created_to_pending_s']).strip()}s, process start "
                      f"{fmt(rec['pending_to_running_s']).strip()}s)")
            if rec["error"]:
                print(f"  FAILED: {rec['error']}")
            try:
                settle(p, args.settle)
                injected = None
            except AssertionError as exc:
                print(f"  could not settle the fleet after this fault ({exc}); stopping here", file=sys.stderr)
                break
    finally:
        try:
            set_automation(False)
            print("automation off (triggers and schedules)")
        except Exception as exc:  # noqa: BLE001
            print(f"WARNING: could not switch automation off: {exc}; do it by hand "
                  "(python -c 'from lab.runs import set_automation; set_automation(False)')", file=sys.stderr)
        if injected:
            print(f"WARNING: {injected} may still carry the {args.kind} fault: `uv run python -m lab heal {injected}`",
                  file=sys.stderr)
        http.close()

    all_ok = interference is None and len(results) == args.faults and all(r["ok"] for r in results)
    medians = {}
    for key in [k for k, *_ in STAGES] + [k for k, _ in PHASES]:
        values = [r[key] for r in results if r["ok"] and r.get(key) is not None]
        medians[key] = round(statistics.median(values), 2) if values else None

    print()
    print(f"{'#':>2} {'node':6} {'kind':5} {'fault>alert':>11} {'alert>event':>11} {'event>run':>9} "
          f"{'run>recov':>9} {'total':>6} {'run':>5}  outcome")
    for i, r in enumerate(results, 1):
        print(f"{i:>2} {r['node']:6} {r['kind']:5} {fmt(r['fault_to_alert_s']):>11} {fmt(r['alert_to_event_s']):>11} "
              f"{fmt(r['event_to_run_start_s']):>9} {fmt(r['run_start_to_recovered_s']):>9} "
              f"{fmt(r['fault_to_recovered_s']):>6} {fmt(r['run_duration_s']):>5}  "
              f"{r['run_outcome'] or '-'}{'' if r['ok'] else '  FAILED'}")
    ok_count = sum(r["ok"] for r in results)
    print()
    print(f"medians over {ok_count} recovered faults of {args.faults} ({args.kind}), cpus {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f}:")
    for key, label, _, _ in STAGES:
        print(f"  {label:26} {fmt(medians[key])} s")
        if key == "event_to_run_start_s":
            for sub, sub_label in PHASES:
                print(f"  {sub_label:26} {fmt(medians[sub])} s")
    steps = [name for r in results if r["ok"] for name in r.get("run_steps", {})]
    step_medians = {name: round(statistics.median(r["run_steps"][name] for r in results
                                                  if r["ok"] and name in r.get("run_steps", {})), 2)
                    for name in dict.fromkeys(steps)}
    print("  inside the run, by step (median; the guards are start, lease, assess-chain, check-disruption-budget):")
    for name, seconds in step_medians.items():
        print(f"    {name:24} {fmt(seconds)} s")
    medians["run_steps"] = step_medians
    for r in results:
        if r["error"]:
            print(f"{r['node']}: {r['error']}")
    if interference:
        print(f"stopped early, another user of the lab: {interference}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "kind": args.kind, "faults": args.faults, "recovered": ok_count, "all_recovered": all_ok,
        "deadline_s": args.deadline, "started_at": iso(started_at), "cpus": os.cpu_count(),
        "interference": interference,
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "median": medians, "per_fault": results,
    }, indent=2, default=str))
    print(f"wrote {args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
