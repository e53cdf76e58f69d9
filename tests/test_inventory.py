"""The inventory refuses bad input with errors that name the file, entry and field."""

import textwrap

import pytest

from inventory import InventoryError, load_inventory

GOOD = """
chains:
  eth-main:
    family: ethereum
    references: ["http://10.0.0.1:8545"]
    max_lag_blocks: 5
hosts:
  h1: {address: 10.0.0.11, ssh_user: ops, ssh_identity_block: fleet-ssh}
load_balancers:
  edge: {admin_block: edge-haproxy}
nodes:
  erigon-1:
    chain: eth-main
    client: erigon
    host: h1
    service: {manager: systemd, name: erigon}
    rpc_url: http://10.0.0.11:8545
    datadir: /data/erigon
    lb: {balancer: edge, backend: eth_rpc, server: erigon-1}
"""


def write(tmp_path, text):
    p = tmp_path / "inventory.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_a_valid_inventory_loads_with_defaults(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    assert inv.node("erigon-1").service.name == "erigon"
    assert inv.chain_of("erigon-1").max_lag_blocks == 5
    assert inv.chain_of("erigon-1").max_head_age_seconds == 30.0
    assert list(inv.nodes_in_backend("edge", "eth_rpc")) == ["erigon-1"]


def test_the_inventory_path_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNBOOKS_INVENTORY", str(write(tmp_path, GOOD)))
    assert "erigon-1" in load_inventory().nodes


def test_malformed_yaml_names_the_file(tmp_path):
    p = write(tmp_path, "chains: [unclosed\n")
    with pytest.raises(InventoryError, match=r"inventory\.yaml: not valid YAML"):
        load_inventory(p)


def test_a_missing_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(InventoryError, match="RUNBOOKS_INVENTORY"):
        load_inventory(tmp_path / "nope.yaml")


def test_a_missing_field_names_the_entry_and_field(tmp_path):
    p = write(tmp_path, GOOD.replace("    datadir: /data/erigon\n", ""))
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    assert str(p) in str(err.value)
    assert "nodes.erigon-1.datadir: Field required" in str(err.value)


def test_an_unknown_field_is_refused_rather_than_ignored(tmp_path):
    p = write(tmp_path, GOOD.replace("    datadir: /data/erigon\n", "    datadir: /data/erigon\n    data_dir: /typo\n"))
    with pytest.raises(InventoryError, match="nodes.erigon-1.data_dir: Extra inputs are not permitted"):
        load_inventory(p)


def test_references_to_undeclared_hosts_and_chains_are_refused(tmp_path):
    p = write(tmp_path, GOOD.replace("host: h1", "host: h9").replace("chain: eth-main", "chain: eth-test"))
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    assert "nodes.erigon-1.host: unknown host 'h9'" in str(err.value)
    assert "nodes.erigon-1.chain: unknown chain 'eth-test'" in str(err.value)


@pytest.mark.parametrize(
    "old,new,field",
    [
        ("name: erigon}", "name: 'erigon; rm -rf /'}", "nodes.erigon-1.service.name"),
        ("datadir: /data/erigon", "datadir: '/data/$(reboot)'", "nodes.erigon-1.datadir"),
        ("server: erigon-1}", "server: 'erigon-1\\nshutdown sessions'}", "nodes.erigon-1.lb.server"),
        ("ssh_user: ops", "ssh_user: 'ops`id`'", "hosts.h1.ssh_user"),
    ],
)
def test_shell_and_runtime_api_metacharacters_are_refused(tmp_path, old, new, field):
    p = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(InventoryError, match=field.replace(".", r"\.")):
        load_inventory(p)


def test_an_unknown_node_is_refused_with_the_known_ones(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    with pytest.raises(InventoryError, match=r"node 'erigon-9' is not in the inventory \(known: erigon-1\)"):
        inv.node("erigon-9")


def test_secrets_cannot_be_inlined(tmp_path):
    p = write(tmp_path, GOOD.replace("ssh_identity_block: fleet-ssh", "ssh_identity_block: fleet-ssh, private_key: abc"))
    with pytest.raises(InventoryError, match="hosts.h1.private_key: Extra inputs are not permitted"):
        load_inventory(p)
