"""The bridge's routing table: which node an alert is about and which runbook it starts.

Pure functions over the shipped table (deployments/alert_routes.yaml) and
hand-written inventories; the bridge and the whole alert path are tested in
test_alert_bridge.py and test_alert_remediation.py.
"""

from __future__ import annotations

import textwrap

import pytest

from deployments.alert_routing import Matcher, RoutesError, find_node, fingerprint, load_routes
from inventory import Inventory

SHIPPED = load_routes()


def inventory(**nodes: dict) -> Inventory:
    base = {"chain": "eth", "client": "geth", "host": "h1", "service": {"manager": "systemd", "name": "geth"},
            "rpc_url": "http://10.0.0.1:8545", "datadir": "/var/lib/geth"}
    return Inventory.model_validate({
        "chains": {"eth": {"family": "ethereum", "references": ["http://127.0.0.1:9/"]}},
        "hosts": {"h1": {"address": "10.0.0.1", "ssh_user": "ops", "ssh_identity_block": "k"},
                  "h2": {"address": "fd00::2", "ssh_user": "ops", "ssh_identity_block": "k"},
                  "h3": {"address": "10.0.0.3", "ssh_user": "ops", "ssh_identity_block": "k"}},
        "nodes": {name: base | fields for name, fields in nodes.items()},
    })


FLEET = inventory(
    **{"geth-1": {"metrics_url": "http://10.0.0.1:6060/debug/metrics/prometheus"},
       "erigon-1": {"client": "erigon", "rpc_url": "http://10.0.0.1:8546", "health_url": "http://10.0.0.1:8546/health"},
       "nethermind-v6": {"client": "nethermind", "host": "h2", "rpc_url": "http://[fd00::2]:8545"},
       "reth-3": {"host": "h3", "rpc_url": "http://10.0.0.3:8545"}}
)


# ---------------------------------------------------------------- which node

@pytest.mark.parametrize("labels, node", [
    ({"node": "reth-3", "instance": "10.0.0.1:6060"}, "reth-3"),  # our own label first
    ({"instance": "10.0.0.1:6060"}, "geth-1"),  # Geth's metrics port
    ({"instance": "10.0.0.1:8546"}, "erigon-1"),  # an RPC port
    ({"instance": "http://10.0.0.1:8546/health"}, "erigon-1"),  # blackbox-style URL target
    ({"instance": "10.0.0.3:9100"}, "reth-3"),  # node_exporter on a host with one node
    ({"instance": "10.0.0.3"}, "reth-3"),
    ({"instance": "[fd00::2]:9545"}, "nethermind-v6"),  # IPv6, Nethermind's metrics port
    ({"instance": "[FD00:0:0::2]:9100"}, "nethermind-v6"),  # another spelling of the same address
    ({"instance": "fd00::2"}, "nethermind-v6"),
    ({"node": "not-ours", "instance": "10.0.0.3:9100"}, "reth-3"),  # someone else's node label
])
def test_the_node_is_found_from_its_label_or_its_instance(labels, node):
    assert find_node(labels, SHIPPED, FLEET).node == node


@pytest.mark.parametrize("labels, why", [
    ({"instance": "10.0.0.1:9100"}, "ambiguous: instance 10.0.0.1:9100 matches no endpoint and its host runs erigon-1, geth-1 "
                                   "(name the node in node_aliases)"),
    ({"instance": "10.9.9.9:6060"}, "instance='10.9.9.9:6060' matches no node's endpoint or host"),
    ({"instance": "execution:6060"}, "instance='execution:6060' matches no node's endpoint or host"),
    ({"instance": "10.0.0.1:port"}, "instance='10.0.0.1:port' is not host:port"),
    ({"node": "geth-l"}, "node='geth-l' is not an inventory node"),  # a typo is not a near match
    ({"job": "geth"}, "no node: none of the labels node, instance is set"),
])
def test_an_alert_that_names_no_node_or_several_says_why(labels, why):
    match = find_node(labels, SHIPPED, FLEET)
    assert match.node is None and match.how == why


def test_an_operator_names_nodes_by_their_own_labels_and_aliases(tmp_path):
    # eth-docker: `instance` is the same service name on every host; its labels tell hosts apart.
    table = tmp_path / "routes.yaml"
    table.write_text(textwrap.dedent("""
        node_labels: [node, nodename]
        node_aliases:
          - matchers: ['project="mainnet-a"', 'instance=~"execution(:.*)?"']
            node: geth-1
          - matchers: ['project="mainnet-b"']
            node: gone-node
        routes:
          - matchers: ['alertname="NodeDown"']
            runbook: node-recovery
            reason: down
    """))
    routes = load_routes(table)
    assert find_node({"nodename": "reth-3"}, routes, FLEET).node == "reth-3"
    assert find_node({"project": "mainnet-a", "instance": "execution:6060"}, routes, FLEET).node == "geth-1"
    assert find_node({"project": "mainnet-a", "instance": "consensus:5054"}, routes, FLEET).node is None
    gone = find_node({"project": "mainnet-b"}, routes, FLEET)
    assert gone.node is None and "gone-node" in gone.how


# ---------------------------------------------------------------- which runbook

@pytest.mark.parametrize("alertname, runbook, reason", [
    ("NodeDown", "node-recovery", "down"),  # our own rules, unchanged
    ("NodeStalled", "node-recovery", "stalled"),
    ("NodeLagging", "node-recovery", "lagging"),
    ("DiskFilling", "disk-prune", "disk"),
    ("DiskCritical", "disk-prune", "disk"),
    ("DiskSpaceWarning", "notify", "disk"),
    ("PrometheusTargetMissing", "node-recovery", "down"),
    ("ClientSyncStatusExecution", "node-recovery", "stalled"),
    ("BesuChainStalled", "node-recovery", "stalled"),
    ("SolanaNodeUnhealthy", "node-recovery", "down"),
    ("SolanaNodeSlotsBehind", "node-recovery", "lagging"),
    ("HostOutOfDiskSpace", "disk-prune", "disk"),
    ("HostDiskWillFillIn24Hours", "disk-prune", "disk"),  # the old name of HostDiskMayFillIn24Hours
    ("HostDiskMayFillIn24Hours", "disk-prune", "disk"),
    ("Disk Space low", "disk-prune", "disk"),  # eth-docker's Grafana titles
    ("Disk Space critically low", "disk-prune", "disk"),
    ("LowDiskSpaceCritical", "disk-prune", "disk"),  # Rocket Pool
    ("HostOutOfInodes", "notify", "disk"),  # inodes are not bytes: old logs may not help, a human looks
    ("HostOutOfMemory", "notify", None),
])
def test_the_shipped_table_routes_our_rules_and_the_common_community_names(alertname, runbook, reason):
    route = SHIPPED.route({"alertname": alertname, "instance": "10.0.0.3:9100"})
    assert route is not None and (route.runbook, route.reason) == (runbook, reason)


def test_an_unknown_alert_name_matches_no_route_unless_it_says_what_is_wrong():
    assert SHIPPED.route({"alertname": "CertificateExpiresSoon"}) is None
    assert SHIPPED.route({"alertname": "MyOwnStall", "reason": "stalled"}).runbook == "node-recovery"
    assert SHIPPED.route({"alertname": "MyOwnDisk", "reason": "disk"}) is None


@pytest.mark.parametrize("text, labels, matches", [
    ('alertname="Disk Space low"', {"alertname": "Disk Space low"}, True),
    ('alertname = "Disk Space low"', {"alertname": "Disk Space"}, False),
    ('alertname=~"Host.*Disk.*"', {"alertname": "HostOutOfDiskSpace"}, True),
    ('alertname=~"Disk"', {"alertname": "HostOutOfDiskSpace"}, False),  # anchored, as in Alertmanager
    ('job!="test"', {"job": "geth"}, True),
    ('job!="test"', {}, True),
    ('severity!~"info|none"', {"severity": "info"}, False),
    ('team=""', {}, True),  # a missing label matches as empty, as in Alertmanager
    ("job=geth", {"job": "geth"}, True),  # unquoted values, as amtool accepts
    (r'summary="say \"hi\""', {"summary": 'say "hi"'}, True),
])
def test_matchers_mean_what_they_mean_in_alertmanager(text, labels, matches):
    assert Matcher.parse(text).matches(labels) is matches


@pytest.mark.parametrize("table, message", [
    ("routes:\n  - matchers: ['alertname=\"X\"']\n    runbook: node-recovry\n",
     "routes.0.runbook"),  # a typo in the runbook
    ("routes:\n  - matchers: ['alertname=\"X\"']\n    runbook: node-recovery\n    reason: disk\n",
     "node-recovery handles reasons ['down', 'lagging', 'stalled'], not 'disk'"),
    ("routes:\n  - matchers: ['alertname=~\"(\"']\n    runbook: notify\n", "bad regex"),
    ("routes:\n  - matchers: ['alertname']\n    runbook: notify\n", "is not a matcher"),
    ("routes:\n  - matchers: []\n    runbook: notify\n", "would match every alert"),
    ("routes:\n  - matchers: ['a=\"b\"']\n    runbok: notify\n", "routes.0.runbok"),  # a typo in a field
    ("node_labels: [node]\n", "routes"),
    ("routes: [oops\n", "not valid YAML"),
])
def test_a_broken_table_is_refused_naming_the_file_and_the_entry(tmp_path, table, message):
    path = tmp_path / "routes.yaml"
    path.write_text(table)
    with pytest.raises(RoutesError) as refused:
        load_routes(path)
    assert str(path) in str(refused.value) and message in str(refused.value)


# ---------------------------------------------------------------- fingerprints

def test_the_fingerprint_is_alertmanagers():
    # The lab's running Alertmanager is asked for its own in test_alert_remediation.
    assert fingerprint({}) == "cbf29ce484222325"  # FNV-1a 64 offset basis: Go's emptyLabelSignature
    assert fingerprint({"b": "2", "a": "1"}) == fingerprint({"a": "1", "b": "2"})
    assert fingerprint({"a": "1"}) != fingerprint({"a": "1", "b": ""})
    assert len(fingerprint({"alertname": "Disk Space low", "instance": "[fd00::2]:9100"})) == 16
