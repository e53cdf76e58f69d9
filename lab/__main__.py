"""python -m lab up [--ha] | down | status [--json] | fault NODE stall|freeze|kill|partition|lag|fill-disk [PERCENT] | heal NODE | install"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from . import control, topology
from .install import install


def _print_status(st: dict) -> None:
    if st["state"] != "up":
        print(f"WARNING: `up` did not finish (state {st['state']!r}): run `python -m lab down`, then `up`")
    print(f"lab up at {st['lab_dir']}  (started {st['started_at']})")
    print(f"checkout   {st.get('checkout') or '(unknown: not recorded)'}")
    print(f"prefect    {st.get('prefect_shape', 'embedded')} at {topology.PREFECT_API_URL}")
    print(f"inventory  {st['inventory']}")
    print()
    rows = [("NODE", "CHAIN", "HOST", "NAMESPACE", "RPC", "STATE", "PID", "HEAD", "FAULT")]
    for n in [*st["references"].values(), *st["nodes"].values()]:
        rows.append((
            n["name"], n["chain"], n["host"] or "-", n["namespace"] or "(root)", n["rpc_url"], n["state"],
            str(n["pid"] or "-"), "-" if n["head"] is None else str(n["head"]), n["fault"] or "-",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print()
    print("HOST  ADDRESS       NAMESPACE  LINK  SSHD     SUPERVISOR CONFIG")
    for h in st["hosts"].values():
        print(f"{h['name']:<5} {h['address']:<13} {h['namespace']:<10} {'up' if h['link_up'] else 'DOWN':<5} "
              f"{h['sshd_state']:<8} {h['supervisor_config']}")
    print()
    print("root services: " + ", ".join(f"{k} {v['state']} (pid {v['pid'] or '-'})" for k, v in st["services"].items()))
    servers = st["haproxy"].get("servers", {})
    print("haproxy servers: " + ", ".join(f"{k}={v}" for k, v in servers.items()))
    print(f"haproxy admin: {st['haproxy']['admin_tcp']}  {st['haproxy']['admin_unix']}")
    print("haproxy frontends: " + ", ".join(f"{k} {v}" for k, v in st["haproxy"]["frontends"].items()))
    print(f"stubs: {st['stubs']['url']}  (slack {st['stubs']['slack_base_url']}, "
          f"pagerduty {st['stubs']['pagerduty_events_url']})")
    print(f"ssh: user {st['ssh']['user']}, key {st['ssh']['private_key']}, known_hosts {st['ssh']['known_hosts']}")
    print()
    print("files per node:")
    for n in [*st["references"].values(), *st["nodes"].values()]:
        print(f"  {n['name']}: datadir {n['datadir']}  log {n['log']}  binary {n['binary']}")
        print(f"  {' ' * len(n['name'])}  supervisor {n['supervisor_config']}" +
              (f"  sshd log {n['sshd_log']}" if n["sshd_log"] else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab", description=f"The runbook lab (LAB_DIR={topology.lab_dir()}).")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="install what the lab needs (idempotent)")
    u = sub.add_parser("up", help="build and start the lab")
    u.add_argument("--ha", action="store_true",
                   help="Prefect highly available: 2 API servers behind HAProxy, a services process, PostgreSQL, Redis")
    sub.add_parser("down", help="stop everything and remove LAB_DIR")
    s = sub.add_parser("status", help="show the lab")
    s.add_argument("--json", action="store_true")
    f = sub.add_parser("fault", help="inject a fault")
    f.add_argument("node", choices=list(topology.all_nodes()))
    f.add_argument("kind", choices=control.FAULT_KINDS)
    f.add_argument("percent", nargs="?", type=float, help="fill-disk only: how full the node's filesystem ends")
    h = sub.add_parser("heal", help="undo the fault recorded for a node")
    h.add_argument("node", choices=list(topology.all_nodes()))
    a = p.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `status | head` is not an error
    try:
        if a.cmd == "install":
            install()
        elif a.cmd == "up":
            control.up(ha=a.ha)
        elif a.cmd == "down":
            control.down()
        elif a.cmd == "status":
            st = control.status()
            print(json.dumps(st, indent=2)) if a.json else _print_status(st)
        elif a.cmd == "fault":
            entry = control.fault(a.node, a.kind, a.percent)
            print(f"{a.node}: {a.kind} injected" + (f" (host {entry['host']} partitioned)" if a.kind == "partition" else ""))
        elif a.cmd == "heal":
            entry = control.heal(a.node)
            print(f"{a.node}: healed {entry['kind']}" if entry else f"{a.node}: no fault recorded")
    except control.LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
