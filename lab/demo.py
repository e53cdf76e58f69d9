"""`make demo`: a local fleet, a Prefect server and worker, every deployment,
a broken node fixed by the runbook with no human action, then the backup
runbooks doing real work through the worker: the nightly database backup
proved restorable, a node snapshot, the hosts' configuration, and a
disaster-recovery drill restoring that snapshot onto the standby host.

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
    args = parser.parse_args(argv)

    paths = topology.Paths(topology.lab_dir())
    # Runbooks in this process talk to the lab's Prefect server, inventory and audit trail.
    os.environ.update(services.runbook_env(paths))

    if not control.is_up():
        print("starting the lab: 4 hosts (sshd + supervisord; h4 the standby), 5 nodes, 2 references, HAProxy, Prometheus, "
              "Alertmanager, SeaweedFS, PostgreSQL, Prefect server and worker")
        control.up()
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
    run, seen = None, None
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        runs = [r for r in flow_runs("node-recovery", fault_at) if r.parameters.get("node") == args.node]
        if runs:
            run = runs[0]
            state = run.state.name if run.state else "?"
            if state != seen:
                print(f"  {time.time() - fault_at:5.1f}s  node-recovery {run.name}: {state}")
                seen = state
            if run.state and run.state.is_final():
                break
        time.sleep(1)
    else:
        print(f"no finished node-recovery run for {args.node} within {args.timeout:.0f}s; see the UI", file=sys.stderr)
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
    ui = topology.PREFECT_API_URL.removesuffix("/api")
    runs = "\n".join(f"  {r.name:16s}{ui}/runs/flow-run/{r.id}" for r in backups)
    print(f"""
{args.node}: {run.state.name} {fixed_after:.0f}s after the fault, no human action.

Where to look:
  Prefect UI      {ui}
  the run         {ui}/runs/flow-run/{run.id}
  audit record    uv run python -m tasks.audit --dir {paths.root / 'audit'} show {run.id}
  audit files     {paths.root / 'audit'}/audit-*.jsonl (append-only JSON lines)
  Slack messages  curl -s http://{topology.STUB_HOST}:{topology.STUB_PORT}/_records
  the fleet       uv run python -m lab status

The backups (each run's artifacts hold its audit record; the drill's its RTO/RPO report):
{runs}

Stop everything with: make demo-down""")
    return 0 if run.state.is_completed() and all(r.state.is_completed() for r in backups) else 1


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
