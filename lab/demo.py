"""`make demo`: a local fleet, a Prefect server and its regional workers, every deployment,
a broken node fixed by the runbook with no human action, then the backup
runbooks doing real work through the worker: the nightly database backup
proved restorable, a node snapshot, the hosts' configuration, and a
disaster-recovery drill restoring that snapshot onto the standby host; and
a disk filled past its mark, alerted on and cleaned by disk-prune; and the
lab-eth chain's client upgraded through its approval, canary first; and the
day's profit and operations report, with the lab's MEV bot's transactions
reconciled against the chain.

    python -m lab.demo [--node eth-b] [--fault stall]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from lab import control, services, topology


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", default="eth-b")
    parser.add_argument("--fault", default="stall", choices=["stall", "freeze", "kill"])
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--ha", action="store_true", help="start the lab with Prefect in the HA shape (`lab up --ha`)")
    args = parser.parse_args(argv)

    paths = topology.Paths(topology.lab_dir())
    # Runbooks in this process talk to the lab's Prefect server, inventory and audit trail.
    os.environ.update(services.runbook_env(paths))

    if not control.is_up():
        print("starting the lab: 4 hosts (sshd + supervisord; h4 the standby), 5 nodes, 2 references, HAProxy, Prometheus, "
              "Alertmanager, SeaweedFS, PostgreSQL, a Prefect server and one worker per region in its host's namespace")
        control.up(ha=args.ha)
        if "prefect" in sys.modules:
            # Bringing the lab up imported Prefect, which reads its settings once, at import: without the HA
            # shape's API login, which exists only now, every call would be refused (401). Start again, on
            # the lab that is up now, with the login in the environment before Prefect is imported.
            os.execv(sys.executable, [sys.executable, "-m", "lab.demo", *(sys.argv[1:] if argv is None else argv)])
        os.environ.update(services.runbook_env(paths))  # the HA shape's API login, now that it exists
    from deployments import register
    from lab.blocks import save_lab_blocks
    from lab.runs import flow_runs, set_automation

    print("saving blocks and deploying every flow in prefect.yaml")
    save_lab_blocks(paths.root)
    register.main()
    set_automation(True)

    fault_at = time.time()
    control.fault(args.node, args.fault)
    print(f"\nbroke {args.node}: {args.fault} at {time.strftime('%H:%M:%S')}; waiting for Prometheus to alert "
          "(or the every-minute fleet-health run to notice) and the trigger to start node-recovery")
    run = wait_for_triggered_run(flow_runs, "node-recovery", args.node, fault_at, args.timeout)
    if run is None:
        return 1

    from tasks.audit import read_entries

    started = [e for e in read_entries(run_id=str(run.id)) if e["kind"] == "started"]
    trigger = started[0]["data"]["trigger"] if started else {}
    print(f"  started by: {trigger.get('event', trigger.get('kind', '?'))}"
          + (f" (alert {trigger['alert']['alertname']}, fingerprint {trigger['alert']['fingerprint']})"
             if trigger.get("alert") else ""))
    fixed_after = time.time() - fault_at
    backups = [
        demo_run("database-backup", {"database": topology.DB_NAME},
                 "nightly at 01:30 UTC: pg_dump of the MEV database on h3 -> zstd -> AES-256-GCM -> SeaweedFS, "
                 "then a scratch restore compared table by table"),
        demo_run("snapshot-backup", {"node": "eth-a"},
                 "weekly, Sunday 03:00 UTC: eth-a drained and stopped, its datadir streamed (tar | zstd on the host, "
                 "segments deduplicated) into the store, started, back in rotation, read back"),
        demo_run("config-backup", {}, "daily at 02:00 UTC: every host's node and service configuration, and HAProxy's"),
        demo_run("dr-drill", {"target": "lab-eth", "standby_host": topology.STANDBY_HOST},
                 f"monthly: the newest verified lab-eth snapshot restored onto the standby {topology.STANDBY_HOST}, "
                 "proved on the same chain and caught up, RTO and RPO measured, torn down"),
    ]
    fill_at = time.time()
    control.fault("eth-a", "fill-disk", 85)
    print(f"\nfilled eth-a's disk (h1) to 85% at {time.strftime('%H:%M:%S')} with old logs and ETL scratch; "
          "waiting for DiskFilling (past the 70% act mark) to start disk-prune")
    prune = wait_for_triggered_run(flow_runs, "disk-prune", None, fill_at, args.timeout)
    if prune is None:
        control.heal("eth-a")
        return 1
    # Every node on h1's filesystem alerts (eth-a and op-a): one run cleans, the other finds it busy or done.
    time.sleep(5)
    for r in flow_runs("disk-prune", fill_at):
        outcome = [e["data"] for e in read_entries(run_id=str(r.id)) if e["kind"] == "outcome"]
        if outcome:
            print(f"  disk-prune {r.name} ({r.parameters.get('node')}): {outcome[-1]['status']}: {outcome[-1]['detail']}")
            if outcome[-1]["status"] != "noop":
                prune = r
    control.heal("eth-a")  # whatever disk-prune left (the ETL scratch it did not need to delete)
    prune.name = "disk-prune"
    backups.append(prune)
    backups.append(demo_upgrade())
    backups.append(demo_report())
    ui = topology.PREFECT_API_URL.removesuffix("/api")
    runs = "\n".join(f"  {r.name:16s}{ui}/runs/flow-run/{r.id}" for r in backups)
    if os.environ.get("RUNBOOKS_AUDIT_DSN"):  # the HA shape: every region's worker writes one trail there
        audit = ("  audit record    in the run's artifacts, and in the lab's PostgreSQL (table audit_records; "
                 "`python -m tasks.audit show` with runbook_env's RUNBOOKS_AUDIT_DSN)")
    else:
        audit = (f"  audit record    uv run python -m tasks.audit --dir {paths.root / 'audit'} show {run.id}\n"
                 f"  audit files     {paths.root / 'audit'}/audit-*.jsonl (append-only JSON lines)")
    print(f"""
{args.node}: {run.state.name} {fixed_after:.0f}s after the fault, no human action.

Where to look:
  Prefect UI      {ui}
  the run         {ui}/runs/flow-run/{run.id}
{audit}
  Slack messages  curl -s http://{topology.STUB_HOST}:{topology.STUB_PORT}/_records
  the fleet       uv run python -m lab status

The backups, the disk clean-up, the upgrade and the report (each run's artifacts hold its audit
record; the drill's its RTO/RPO report; disk-prune's every path it deleted, with its size;
client-upgrade's its change request; daily-report's the report and its tables):
{runs}

Stop everything with: make demo-down""")
    return 0 if run.state.is_completed() and all(r.state.is_completed() for r in backups) else 1


def wait_for_triggered_run(flow_runs, deployment: str, node: str | None, since: float, timeout: float):
    """The first run of `deployment` (for `node`, if given) started since `since`, followed to its end."""
    run, seen = None, None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in flow_runs(deployment, since) if node is None or r.parameters.get("node") == node]
        if runs:
            run = runs[-1]  # newest first: the earliest is the one the alert started
            state = run.state.name if run.state else "?"
            if state != seen:
                print(f"  {time.time() - since:5.1f}s  {deployment} {run.name}: {state}")
                seen = state
            if run.state and run.state.is_final():
                return run
        time.sleep(1)
    print(f"no finished {deployment} run{' for ' + node if node else ''} within {timeout:.0f}s; see the UI", file=sys.stderr)
    return None


def demo_upgrade():
    """client-upgrade of lab-eth through the worker, approved as an operator would from the UI's form."""
    from prefect.deployments import run_deployment
    from prefect.flow_runs import resume_flow_run

    from tasks import prefect_api
    from tasks.audit import read_entries

    to = "1.7.1"
    print(f"\nrunning client-upgrade now: anvil {topology.FLEET_ANVIL_VERSION} -> v{to} on lab-eth as a change request "
          "(checklist, approval, canary eth-a first, each node backed up, switched, verified, soaked)")
    started = time.monotonic()
    run = run_deployment("client-upgrade/client-upgrade", timeout=0,
                         parameters={"version": f"v{to}", "chain": "lab-eth", "soak_minutes": 0.1})
    while True:
        with prefect_api.client() as client:
            run = client.read_flow_run(run.id)
        if run.state and run.state.is_paused():
            plan = [e["data"] for e in read_entries(run_id=str(run.id)) if e["kind"] == "plan"][0]
            print(f"  {time.monotonic() - started:5.1f}s  paused for approval of plan {plan['hash'][:12]}; approving as "
                  "demo-operator (in the UI: the run's page, Resume, the form)")
            resume_flow_run(run.id, run_input={"approve": True, "approver": "demo-operator", "comment": "demo",
                                               "plan_hash": plan["hash"]})
            time.sleep(2)
        elif run.state and run.state.is_final():
            break
        time.sleep(1)
    outcome = [e["data"] for e in read_entries(run_id=str(run.id)) if e["kind"] == "outcome"]
    print(f"  {time.monotonic() - started:5.1f}s  client-upgrade {run.name}: {run.state.name}: "
          f"{outcome[-1]['detail'] if outcome else run.state.message}")
    run.name = "client-upgrade"
    return run


def demo_report():
    """The MEV bot's real transactions on lab-eth today, then the day's report through the worker."""
    from datetime import datetime, timezone

    import psycopg

    from blocks import Database
    from lab import mevbot

    with psycopg.connect(**Database.load(topology.BLOCK_DB).conninfo(), autocommit=True) as conn:
        bot = mevbot.run(conn, topology.reference_url("lab-eth"), "lab-eth", topology.CHAINS["lab-eth"].chain_id,
                         executions=12, seed=int(time.time()), mismatches=2)
    print(f"\nthe lab's MEV bot sent {len(bot.executions)} transactions to lab-eth (coinbase transfers, reverts) and "
          f"recorded them; {len(bot.seeded)} records made wrong on purpose: "
          + ", ".join(f"{s['execution_id']} {s['field']}" for s in bot.seeded))
    today = datetime.now(timezone.utc).date().isoformat()
    run = demo_run("daily-report", {"day": today},
                   f"daily at 00:15 UTC for yesterday, here for today: profit by chain and strategy from PostgreSQL, "
                   f"receipts reconciled, uptime/latency from Prometheus, recoveries/backups/drills; charts to Slack, "
                   f"report and Parquet to the store under reports/daily/{today}/")
    return run


def demo_run(deployment: str, parameters: dict, what: str):
    """Run a deployment now through the worker and print its outcome from its audit record."""
    from prefect.deployments import run_deployment

    from tasks.audit import read_entries

    print(f"\nrunning {deployment} now ({what})")
    started = time.monotonic()
    run = run_deployment(f"{deployment}/{deployment}", parameters=parameters, timeout=600)
    outcome = [e["data"] for e in read_entries(run_id=str(run.id)) if e["kind"] == "outcome"]
    detail = outcome[-1].get("detail") if outcome else (run.state.message if run.state else "?")
    print(f"  {time.monotonic() - started:5.1f}s  {deployment} {run.name}: {run.state.name if run.state else '?'}: {detail}")
    run.name = deployment  # labels the run in the summary
    return run


if __name__ == "__main__":
    sys.exit(main())
