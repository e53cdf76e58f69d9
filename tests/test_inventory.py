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
    # The line of the entry the field is missing from (erigon-1 is on line 12).
    assert f"{p}:12: node 'erigon-1', field datadir (nodes.erigon-1.datadir): Field required" in str(err.value)


def test_an_unknown_field_is_refused_rather_than_ignored(tmp_path):
    p = write(tmp_path, GOOD.replace("    datadir: /data/erigon\n", "    datadir: /data/erigon\n    data_dir: /typo\n"))
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    assert f"{p}:19: node 'erigon-1', field data_dir (nodes.erigon-1.data_dir): Extra inputs are not permitted" in str(err.value)


def test_references_to_undeclared_hosts_and_chains_are_refused(tmp_path):
    p = write(tmp_path, GOOD.replace("host: h1", "host: h9").replace("chain: eth-main", "chain: eth-test"))
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    assert f"{p}:15: node 'erigon-1', field host (nodes.erigon-1.host): unknown host 'h9' (known: h1)" in str(err.value)
    assert f"{p}:13: node 'erigon-1', field chain (nodes.erigon-1.chain): unknown chain 'eth-test' (known: eth-main)" in str(err.value)


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
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    assert f"{p}:8: host 'h1', field private_key (hosts.h1.private_key): Extra inputs are not permitted" in str(err.value)
    assert "abc" not in str(err.value)


# --- duplicated keys: YAML would keep the last one without a word ------------------


def test_a_copy_pasted_node_block_under_the_same_name_is_refused_naming_both_lines(tmp_path):
    # The operator copied erigon-1 to add a second node and forgot to rename it:
    # plain YAML would keep only the copy, and the first node would vanish.
    p = write(tmp_path, GOOD + textwrap.indent(textwrap.dedent("""\
        erigon-1:
          chain: eth-main
          client: erigon
          host: h1
          service: {manager: systemd, name: erigon-2}
          rpc_url: http://10.0.0.12:8545
          datadir: /data/erigon
        """), "  "))
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    assert (f"{p}:20: node 'erigon-1' (nodes.erigon-1): duplicate key 'erigon-1': "
            f"first at {p}:12, again at {p}:20") in str(err.value)


@pytest.mark.parametrize(
    "old,new,line,path",
    [
        # a host in flow style with its address twice
        ("h1: {address: 10.0.0.11,", "h1: {address: 10.0.0.11, address: 10.0.0.12,", 8, "host 'h1', field address (hosts.h1.address)"),
        # a nested field inside a node, edited in two places
        ("    datadir: /data/erigon\n", "    datadir: /data/erigon\n    rpc_url: http://10.0.0.99:8545\n", 19, "node 'erigon-1', field rpc_url (nodes.erigon-1.rpc_url)"),
        # a chain declared twice
        ("hosts:\n", "  eth-main:\n    family: ethereum\n    references: ['http://10.0.0.2:8545']\nhosts:\n", 7, "chain 'eth-main' (chains.eth-main)"),
        # a whole section twice: the second would silently drop every node above it
        ("load_balancers:\n", "nodes: {}\nload_balancers:\n", 12, "section nodes"),
    ],
)
def test_a_duplicated_key_in_any_mapping_is_refused(tmp_path, old, new, line, path):
    p = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    assert f"{p}:{line}: {path}: duplicate key" in str(err.value)
    assert f", again at {p}:{line};" in str(err.value)


def test_a_merge_key_override_is_not_a_duplicate(tmp_path):
    # Anchors and `<<:` are how operators share defaults; overriding one is intended.
    p = write(tmp_path, GOOD.replace("  erigon-1:\n    chain: eth-main\n", "  erigon-1:\n    <<: &eth {chain: eth-test}\n    chain: eth-main\n"))
    assert load_inventory(p).node("erigon-1").chain == "eth-main"


# --- systemd template units and IPv6 ---------------------------------------------


@pytest.mark.parametrize("unit", ["erigon@mainnet.service", "op-geth@base-mainnet", "bor@polygon-mainnet"])
def test_systemd_template_instances_are_accepted_as_written(tmp_path, unit):
    p = write(tmp_path, GOOD.replace("name: erigon}", f"name: {unit}}}"))
    assert load_inventory(p).node("erigon-1").service.name == unit


def test_a_bare_systemd_template_is_refused_with_an_instance_to_name(tmp_path):
    p = write(tmp_path, GOOD.replace("name: erigon}", "name: geth@.service}"))
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    assert f"{p}:16: node 'erigon-1', field service (nodes.erigon-1.service): systemd unit 'geth@.service' is a template" in str(err.value)
    assert "e.g. geth@mainnet" in str(err.value)


@pytest.mark.parametrize("unit", ["'erigon@mainnet;reboot'", "'erigon@$(reboot)'", "'op-geth@base mainnet'", "'-erigon@x'", "'erigon@`id`'"])
def test_a_template_unit_with_shell_syntax_is_still_refused(tmp_path, unit):
    p = write(tmp_path, GOOD.replace("name: erigon}", f"name: {unit}}}"))
    with pytest.raises(InventoryError, match=r"node 'erigon-1', field service\.name"):
        load_inventory(p)


@pytest.mark.parametrize("address", ["'::1'", "fd00::10", "2001:db8::1", "erigon-1.eu.example.net"])
def test_ipv6_and_dns_host_addresses_are_accepted_as_written(tmp_path, address):
    p = write(tmp_path, GOOD.replace("address: 10.0.0.11", f"address: {address}"))
    assert load_inventory(p).hosts["h1"].address == address.strip("'")


@pytest.mark.parametrize(
    "address,says",
    [
        ("'[fd00::10]'", "write the IPv6 address without brackets (fd00::10)"),
        ("'-oProxyCommand'", "is not a host name"),
        ("'10.0.0.11 ; reboot'", "is not a host name"),
        ("'fd00:::10'", "is not a host name"),
        ("10.0.0.256", "is not a host name"),
    ],
)
def test_malformed_host_addresses_are_refused(tmp_path, address, says):
    p = write(tmp_path, GOOD.replace("address: 10.0.0.11", f"address: {address}"))
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    assert f"{p}:8: host 'h1', field address (hosts.h1.address): " in str(err.value)
    assert says in str(err.value)


def test_ipv6_urls_are_accepted_for_nodes_and_references(tmp_path):
    from tasks.probes import node_target, reference_targets

    p = write(tmp_path, GOOD.replace('"http://10.0.0.1:8545"', '"http://[2001:db8::1]:8545"')
              .replace("rpc_url: http://10.0.0.11:8545", "rpc_url: 'http://[fd00::10]:8545'\n    health_url: http://[fd00::10]:8545/health"))
    inv = load_inventory(p)
    target = node_target("erigon-1", inv.node("erigon-1"))
    assert (target.url, target.health_url) == ("http://[fd00::10]:8545/", "http://[fd00::10]:8545/health")
    assert reference_targets("eth-main", inv.chains["eth-main"])[0].url == "http://[2001:db8::1]:8545/"


def test_a_template_unit_and_an_ipv6_host_reach_ssh_as_quoted_argv_words(tmp_path):
    # What the remote shell receives is shlex.join(argv) (tasks/ssh.py); each
    # inventory value must come back out of it as exactly one word, unchanged.
    import shlex

    from tasks.services import service_manager_for

    p = write(tmp_path, GOOD.replace("name: erigon}", "name: op-geth@base-mainnet}").replace("address: 10.0.0.11", "address: fd00::10"))
    inv = load_inventory(p)
    manager = service_manager_for(inv.node("erigon-1"), inv.host_of("erigon-1"))
    for argv in (manager.restart_argv(), manager.status_argv(), manager.logs_argv(50)):
        assert shlex.split(shlex.join(argv)) == argv
        assert "op-geth@base-mainnet" in argv
    assert shlex.join(manager.restart_argv()) == "sudo -n systemctl restart -- op-geth@base-mainnet"


def _ssh_runner(host, gate=None):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tasks.ssh import SshRunner

    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()

    class Audit:  # what a dry-run gate writes to
        def __init__(self):
            self.would_entries = []

        def would(self, *args, **data):
            self.would_entries.append(args)

    if gate is None:
        from tasks.gate import Gate
        gate = Gate(Audit(), dry_run=False)
    return SshRunner(host, private_key=key, known_hosts="", gate=gate, connect_timeout=2)


def test_an_ipv6_host_is_labelled_and_commanded_unambiguously(tmp_path):
    from tasks.gate import Gate

    p = write(tmp_path, GOOD.replace("name: erigon}", "name: op-geth@base-mainnet}").replace("address: 10.0.0.11", "address: fd00::10"))
    inv = load_inventory(p)
    runner = _ssh_runner(inv.hosts["h1"])
    gate = Gate(runner.audit, dry_run=True)
    runner.gate = gate  # a dry run: nothing connects, the command is recorded as it would be sent
    result = runner.run(["systemctl", "restart", "--", inv.node("erigon-1").service.name])
    assert runner.label == "ops@[fd00::10]:22"
    assert result.command == "systemctl restart -- op-geth@base-mainnet"
    assert gate.would_do == ["ssh ops@[fd00::10]:22: systemctl restart -- op-geth@base-mainnet"]


def test_an_ipv6_host_address_is_dialled_as_ipv6(tmp_path):
    # A listener on the IPv6 loopback that hangs up at once: reaching it proves
    # the address went to the socket as written (the SSH handshake then fails).
    import socket
    import threading

    from tasks.errors import SshError

    server = socket.socket(socket.AF_INET6)
    server.bind(("::1", 0))
    server.listen(1)
    accepted = []

    def accept_once():
        conn, peer = server.accept()
        accepted.append(peer[0])
        conn.close()

    threading.Thread(target=accept_once, daemon=True).start()
    port = server.getsockname()[1]
    p = write(tmp_path, GOOD.replace("address: 10.0.0.11,", f"address: '::1', ssh_port: {port},"))
    runner = _ssh_runner(load_inventory(p).hosts["h1"])
    try:
        with pytest.raises(SshError, match=r"ops@\[::1\]:"):
            runner.connect()
    finally:
        runner.close()
        server.close()
    assert accepted == ["::1"]
