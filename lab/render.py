"""Files `up` writes from the topology: sshd configs, the inventory and lab.json."""

from __future__ import annotations

import time

from . import topology as t
from .topology import Paths


def sshd_config(paths: Paths, host: t.LabHost) -> str:
    return "\n".join(
        [
            "# written by `python -m lab up`; do not edit (regenerated each up)",
            f"ListenAddress {host.address}:22",
            f"HostKey {paths.host_key(host.name)}",
            f"PidFile {paths.sshd_pid(host.name)}",
            f"AuthorizedKeysFile {paths.authorized_keys}",
            # LAB_DIR sits under /var/tmp (mode 1777), which StrictModes rejects
            # as a parent of the authorized_keys file.
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin no",
            f"AllowUsers {t.SERVICE_USER}",
            "UsePAM no",
            "UseDNS no",
            "LogLevel VERBOSE",
            "PrintMotd no",
            "X11Forwarding no",
            "AllowAgentForwarding no",
            "PermitTunnel no",
            # runbooks may open many sessions at once
            "MaxStartups 100:30:200",
            "MaxSessions 50",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def inventory(paths: Paths) -> dict:
    chains = {
        c.name: {
            "family": c.family,
            "chain_id": c.chain_id,
            "references": [t.reference_url(c.name)],
            **t.CHAIN_THRESHOLDS,
            "pinned_versions": {"anvil": t.FLEET_ANVIL_VERSION},
        }
        for c in t.CHAINS.values()
    }
    hosts = {
        h.name: {
            "address": h.address,
            "ssh_port": 22,
            "ssh_user": t.SERVICE_USER,
            "ssh_identity_block": t.BLOCK_SSH,
            "region": h.region,
            "supervisor_config": str(paths.host_supervisord_conf(h.name)),
            **({"standby": {
                s.chain: {"service": {"manager": "supervisor", "name": s.name}, "datadir": str(paths.datadir(s)),
                          "rpc_url": t.rpc_url(s), "metrics_url": t.metrics_url(s)}
                for s in t.STANDBYS.values() if s.host == h.name}} if h.name == t.STANDBY_HOST else {}),
        }
        for h in t.HOSTS.values()
    }
    nodes = {
        n.name: {
            "chain": n.chain,
            "client": "anvil",
            "host": n.host,
            "service": {"manager": "supervisor", "name": n.name},
            "rpc_url": t.rpc_url(n),
            "metrics_url": t.metrics_url(n),
            "datadir": str(paths.datadir(n)),
            "lb": {"balancer": t.INVENTORY_LB, "backend": t.CHAINS[n.chain].backend, "server": n.name},
            "role": "rpc",
            "install_dir": str(paths.install_dir(n.host)),
        }
        for n in t.NODES.values()
    }
    return {
        "chains": chains,
        "hosts": hosts,
        # The lab's HAProxy runs in the root namespace; its config file is on the one filesystem
        # every lab host shares, so config-backup reads it over h1's SSH as it would on the LB host.
        "load_balancers": {t.INVENTORY_LB: {"kind": "haproxy", "admin_block": t.BLOCK_HAPROXY,
                                            "config": {"host": "h1", "path": str(paths.haproxy_cfg)}}},
        "nodes": nodes,
        "notifications": {"slack_block": t.BLOCK_SLACK, "pagerduty_block": t.BLOCK_PAGERDUTY},
        "backups": {"store_block": t.BLOCK_STORE, "databases": {t.DB_NAME: {"block": t.BLOCK_DB, "host": t.DB_HOST}}},
        "reports": {"database": t.DB_NAME, "prometheus_url": f"http://127.0.0.1:{t.PROMETHEUS_PORT}"},
        # The lab's release server publishes anvil as Erigon publishes Erigon (lab/releases.py).
        "releases": {"anvil": {"base_url": f"{t.RELEASES_URL}/{{tag}}", "index_url": f"{t.RELEASES_URL}/releases.json"}},
        "regions": {region: {"fallback": fallback, "fallback_after_seconds": t.FALLBACK_AFTER_SECONDS}
                    for region, fallback in t.REGION_FALLBACK.items()},
    }


def _node_record(paths: Paths, n: t.LabNode) -> dict:
    chain = t.CHAINS[n.chain]
    host = t.HOSTS[n.host] if n.host else None
    rec = {
        "name": n.name,
        "kind": "reference" if n.is_reference else "node",
        "chain": n.chain,
        "chain_id": chain.chain_id,
        "host": n.host,
        "namespace": host.namespace if host else None,
        "address": t.node_address(n),
        "port": chain.rpc_port,
        "rpc_url": t.rpc_url(n),
        "reference_url": t.reference_url(n.chain),
        "program": n.name,
        "supervisor_config": str(paths.supervisor_conf_of(n)),
        "supervisor_socket": str(paths.supervisor_sock_of(n)),
        "datadir": str(paths.datadir(n)),
        "state_file": str(paths.datadir(n) / "state.json"),
        "binary": str(paths.node_bin(n)),
        "log": str(paths.node_log(n)),
        "sshd_log": str(paths.sshd_log(n.host)) if n.host else None,
        "lb": None,
    }
    if not n.is_reference:
        rec["lb"] = {"balancer": t.INVENTORY_LB, "backend": chain.backend, "server": n.name,
                     "frontend_url": t.frontend_url(n.chain)}
    return rec


def lab_record(paths: Paths, programs: list[str]) -> dict:
    """lab.json: every address and path that status, tests and runbook setup need."""
    stub = f"http://{t.STUB_HOST}:{t.STUB_PORT}"
    haproxy_tcp = f"tcp://{t.HAPROXY_ADMIN_HOST}:{t.HAPROXY_ADMIN_PORT}"
    return {
        "schema": 1,
        "state": "starting",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "lab_dir": str(paths.root),
        "inventory": str(paths.inventory),
        "service_user": t.SERVICE_USER,
        "bridge": {"name": t.BRIDGE, "address": t.BRIDGE_ADDRESS, "prefix": t.PREFIX_LEN},
        "supervisor": {
            "config": str(paths.supervisord_conf),
            "socket": str(paths.supervisord_sock),
            "pidfile": str(paths.supervisord_pid),
            "log": str(paths.supervisord_log),
            "programs": programs,
        },
        "hosts": {
            h.name: {
                "name": h.name,
                "address": h.address,
                "namespace": h.namespace,
                "veth": h.veth,
                "region": h.region,
                "ssh_port": 22,
                "sshd_config": str(paths.sshd_config(h.name)),
                "sshd_log": str(paths.sshd_log(h.name)),
                "host_key_pub": str(paths.host_key(h.name)) + ".pub",
                "supervisor_config": str(paths.host_supervisord_conf(h.name)),
                "supervisor_socket": str(paths.host_supervisord_sock(h.name)),
                "supervisor_pidfile": str(paths.host_supervisord_pid(h.name)),
                "binary": str(paths.host(h.name) / "bin" / "anvil"),
                "install_dir": str(paths.install_dir(h.name)),
            }
            for h in t.HOSTS.values()
        },
        "nodes": {n.name: _node_record(paths, n) for n in t.NODES.values()},
        "references": {n.name: _node_record(paths, n) for n in t.REFERENCES.values()},
        "chains": {
            c.name: {
                "chain_id": c.chain_id,
                "family": c.family,
                "reference": c.reference,
                "reference_url": t.reference_url(c.name),
                "nodes": [n.name for n in t.NODES.values() if n.chain == c.name],
                "backend": c.backend,
                "frontend_url": t.frontend_url(c.name),
            }
            for c in t.CHAINS.values()
        },
        "haproxy": {
            "config": str(paths.haproxy_cfg),
            "admin_tcp": haproxy_tcp,
            "admin_unix": f"unix://{paths.haproxy_sock}",
            "server_state_file": str(paths.haproxy_state),
            "frontends": {c.backend: t.frontend_url(c.name) for c in t.CHAINS.values()},
        },
        "stubs": {
            "url": stub,
            "slack_base_url": f"{stub}/api/",
            "pagerduty_events_url": f"{stub}/v2/enqueue",
            "records_url": f"{stub}/_records",
            "records_file": str(paths.stub_records),
        },
        "ssh": {
            "user": t.SERVICE_USER,
            "private_key": str(paths.ssh_key),
            "public_key": str(paths.ssh_pub),
            "monitor_key": str(paths.monitor_key),
            "known_hosts": str(paths.known_hosts),
            "authorized_keys": str(paths.authorized_keys),
        },
        # Where the blocks named in the inventory point in the lab (no secrets:
        # lab/blocks.py makes those and saves the blocks).
        "blocks": {
            t.BLOCK_SSH: {"type": "ssh-identity", "private_key_file": str(paths.ssh_key),
                          "known_hosts_file": str(paths.known_hosts)},
            t.BLOCK_HAPROXY: {"type": "haproxy-admin", "address": haproxy_tcp},
            t.BLOCK_SLACK: {"type": "slack-workspace", "base_url": f"{stub}/api/"},
            t.BLOCK_PAGERDUTY: {"type": "pagerduty-service", "events_url": f"{stub}/v2/enqueue"},
        },
        "faults": {},
    }
