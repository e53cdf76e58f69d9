"""`make demo`: a local fleet, a Prefect server and worker, every deployment,
a broken node fixed by the runbook with no human action, and the nightly
database backup run and proved restorable.

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
        print("starting the lab: 3 hosts (sshd + supervisord), 5 nodes, 2 references, HAProxy, Prefect server and worker")
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
    backup = demo_database_backup()
    ui = topology.PREFECT_API_URL.removesuffix("/api")
    print(f"""
{args.node}: {run.state.name} {fixed_after:.0f}s after the fault, no human action.

Where to look:
  Prefect UI      {ui}
  the run         {ui}/runs/flow-run/{run.id}
  audit record    uv run python -m tasks.audit --dir {paths.root / 'audit'} show {run.id}
  audit files     {paths.root / 'audit'}/audit-*.jsonl (append-only JSON lines)
  Slack messages  curl -s http://{topology.STUB_HOST}:{topology.STUB_PORT}/_records
  the fleet       uv run python -m lab status

  the backup      {ui}/runs/flow-run/{backup.id}

Stop everything with: make demo-down""")
    return 0 if run.state.is_completed() and backup.state.is_completed() else 1


def demo_database_backup():
    """The nightly database backup, run now through the worker: dump, encrypt, upload, restore-check."""
    from prefect.deployments import run_deployment

    print("\nrunning database-backup now (nightly at 01:30 UTC): pg_dump of the MEV database on h3 -> zstd -> "
          "AES-256-GCM -> SeaweedFS, then a scratch restore compared table by table")
    started = time.monotonic()
    run = run_deployment("database-backup/database-backup", parameters={"database": topology.DB_NAME}, timeout=300)
    from tasks.audit import read_entries

    outcome = [e["data"] for e in read_entries(run_id=str(run.id)) if e["kind"] == "outcome"]
    detail = outcome[-1].get("detail") if outcome else (run.state.message if run.state else "?")
    print(f"  {time.monotonic() - started:5.1f}s  database-backup {run.name}: {run.state.name if run.state else '?'}: {detail}")
    return run


if __name__ == "__main__":
    sys.exit(main())
