"""`make demo`: a local fleet, a Prefect server and worker, every deployment,
and a broken node fixed by the runbook with no human action.

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
    ui = topology.PREFECT_API_URL.removesuffix("/api")
    print(f"""
{args.node}: {run.state.name} {time.time() - fault_at:.0f}s after the fault, no human action.

Where to look:
  Prefect UI      {ui}
  the run         {ui}/runs/flow-run/{run.id}
  audit record    uv run python -m tasks.audit --dir {paths.root / 'audit'} show {run.id}
  audit files     {paths.root / 'audit'}/audit-*.jsonl (append-only JSON lines)
  Slack messages  curl -s http://{topology.STUB_HOST}:{topology.STUB_PORT}/_records
  the fleet       uv run python -m lab status

Stop everything with: make demo-down""")
    return 0 if run.state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
