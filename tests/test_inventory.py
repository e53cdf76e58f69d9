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
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    assert str(err.value).startswith(f"{p}: not valid YAML")
    assert f'in "{p}", line 2' in str(err.value)


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
    with pytest.raises(InventoryError) as err:
        inv.node("erigon-9")
    assert f"node 'erigon-9' is not in the inventory {tmp_path / 'inventory.yaml'} (known: erigon-1)" in str(err.value)


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
        ('"erigon-1.example\\n"', "is not a host name"),
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


# --- credentials in URLs: refused, and never echoed ------------------------------


@pytest.mark.parametrize(
    "old,new,line,where,shown,secret",
    [
        ("rpc_url: http://10.0.0.11:8545", "rpc_url: http://erigon:hunter2pass@10.0.0.11:8545",
         17, "node 'erigon-1', field rpc_url (nodes.erigon-1.rpc_url)", "http://***@10.0.0.11:8545", "hunter2pass"),
        ('"http://10.0.0.1:8545"', '"https://:tok3nSECRET@eth.provider.example/v2/KEYINPATH"',
         5, "chain 'eth-main', field references[0] (chains.eth-main.references[0])", "https://***@eth.provider.example", "tok3nSECRET"),
        ("    datadir: /data/erigon\n", "    datadir: /data/erigon\n    health_url: http://opsuser@[fd00::10]:8545/health\n",
         19, "node 'erigon-1', field health_url (nodes.erigon-1.health_url)", "http://***@[fd00::10]:8545", "opsuser"),
    ],
)
def test_a_url_with_credentials_is_refused_without_echoing_them(tmp_path, old, new, line, where, shown, secret):
    p = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    text = str(err.value)
    assert f"{p}:{line}: {where}: the URL {shown} carries credentials" in text
    assert "Prefect Secret block" in text and "{secret: " in text
    assert secret not in text and "KEYINPATH" not in text


def test_a_credential_url_is_refused_in_any_field_not_only_url_fields(tmp_path):
    p = write(tmp_path, GOOD.replace("region", "x").replace("ssh_identity_block: fleet-ssh}", "ssh_identity_block: fleet-ssh, region: 'http://a:b4dpass@x'}"))
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    assert f"{p}:8: host 'h1', field region (hosts.h1.region): the URL http://***@x carries credentials" in str(err.value)
    assert "b4dpass" not in str(err.value)


def test_models_built_in_code_refuse_credential_urls_without_echoing_them():
    from pydantic import ValidationError

    from inventory import Chain

    with pytest.raises(ValidationError) as err:
        Chain.model_validate({"family": "ethereum", "references": ["http://u:s3cretpw@10.0.0.1:8545"]})
    assert "carries credentials" in str(err.value) and "s3cretpw" not in str(err.value)


# --- endpoints kept in Prefect Secret blocks -------------------------------------

SECRET_RPC = GOOD.replace("rpc_url: http://10.0.0.11:8545", "rpc_url: {secret: erigon-1-rpc}").replace(
    'references: ["http://10.0.0.1:8545"]', "references: [{secret: alchemy-mainnet}, 'http://10.0.0.1:8545']"
)


@pytest.fixture
def secrets(monkeypatch):
    """Secret blocks as a dict, the names asked for in `loads`; no Prefect server."""
    from inventory import endpoints
    from tasks.redaction import clear_secrets

    blocks = {"erigon-1-rpc": "http://10.0.0.11:8545", "alchemy-mainnet": "https://eth-mainnet.example/v2/AbCdEf123456"}
    loads = []

    def load(name):
        loads.append(name)
        if name not in blocks:
            raise ValueError(f"Unable to find block document named {name} for block type secret")
        return blocks[name]

    endpoints.forget_resolved()
    monkeypatch.setattr(endpoints, "_load_secret", load)
    yield blocks, loads
    endpoints.forget_resolved()
    clear_secrets()


def test_an_endpoint_can_name_a_secret_block_and_loading_reads_no_block(tmp_path, secrets):
    from inventory import SecretEndpoint

    inv = load_inventory(write(tmp_path, SECRET_RPC))
    assert inv.node("erigon-1").rpc_url == SecretEndpoint(secret="erigon-1-rpc")
    assert str(inv.node("erigon-1").rpc_url) == "<Secret block erigon-1-rpc>"  # what a plan or log may show
    assert secrets[1] == []  # nothing asked of Prefect at load


def test_a_secret_endpoint_is_resolved_where_it_is_probed_and_redacted_from_then_on(tmp_path, secrets):
    from tasks.probes import node_target, reference_targets
    from tasks.redaction import redact_text

    inv = load_inventory(write(tmp_path, SECRET_RPC))
    assert node_target("erigon-1", inv.node("erigon-1")).url == "http://10.0.0.11:8545"
    refs = reference_targets("eth-main", inv.chains["eth-main"])
    assert [t.url for t in refs] == ["https://eth-mainnet.example/v2/AbCdEf123456", "http://10.0.0.1:8545/"]
    assert secrets[1] == ["erigon-1-rpc", "alchemy-mainnet"]
    assert redact_text("POST https://eth-mainnet.example/v2/AbCdEf123456 failed") == "POST *** failed"
    node_target("erigon-1", inv.node("erigon-1"))
    assert secrets[1] == ["erigon-1-rpc", "alchemy-mainnet"]  # reused for a while, not one API call per sweep


def test_resolving_asks_prefect_for_the_named_secret_block(monkeypatch):
    # The real call site, with Prefect's Secret.load replaced: no server needed.
    # (A live resolution against a Prefect server belongs in the lab suite.)
    from prefect.blocks.system import Secret

    from inventory import endpoints

    asked = []

    class Loaded:
        def get(self):
            return "https://op.example/rpc/KeyKeyKey99"

    def fake_load(name, **kwargs):
        asked.append((name, kwargs))
        return Loaded()

    endpoints.forget_resolved()
    monkeypatch.setattr(Secret, "load", fake_load)
    try:
        assert endpoints.endpoint_url(endpoints.SecretEndpoint(secret="base-rpc")) == "https://op.example/rpc/KeyKeyKey99"
    finally:
        endpoints.forget_resolved()
    assert asked == [("base-rpc", {"_sync": True})]


@pytest.mark.parametrize(
    "value,says",
    [
        ("{secret: Mainnet_RPC}", "field rpc_url.secret (nodes.erigon-1.rpc_url.secret): String should match pattern"),
        ("{secrets: mainnet-rpc}", "field rpc_url.secrets (nodes.erigon-1.rpc_url.secrets): Extra inputs are not permitted"),
        ("{secret: mainnet-rpc, url: 'http://x'}", "field rpc_url.url (nodes.erigon-1.rpc_url.url): Extra inputs are not permitted"),
        ("mainnet-rpc", "field rpc_url (nodes.erigon-1.rpc_url): Input should be a valid URL"),
    ],
)
def test_a_malformed_secret_endpoint_is_refused_at_load(tmp_path, value, says):
    p = write(tmp_path, GOOD.replace("rpc_url: http://10.0.0.11:8545", f"rpc_url: {value}"))
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    assert f"{p}:17: node 'erigon-1', {says}" in str(err.value)


def test_a_secret_block_that_is_missing_or_not_a_url_fails_the_probe_without_showing_its_value(tmp_path, secrets):
    from tasks.probes import ProbeError, node_target

    inv = load_inventory(write(tmp_path, SECRET_RPC))
    del secrets[0]["erigon-1-rpc"]
    with pytest.raises(ProbeError, match=r"node 'erigon-1', field rpc_url: Secret block 'erigon-1-rpc' could not be loaded"):
        node_target("erigon-1", inv.node("erigon-1"))
    secrets[0]["erigon-1-rpc"] = "not a url: tok-ABCDEF123"
    with pytest.raises(ProbeError) as err:
        node_target("erigon-1", inv.node("erigon-1"))
    assert "does not hold an http(s) URL" in str(err.value) and "ABCDEF" not in str(err.value)


def test_every_problem_line_names_the_file_line_entry_and_field(tmp_path):
    # A hand edit with several slips at once: each gets its own located line.
    p = write(tmp_path, GOOD.replace("max_lag_blocks: 5", "max_lag_blocks: five")
              .replace("ssh_user: ops", "ssh_user: 'o ps'")
              .replace("{admin_block: edge-haproxy}", "{admin_blok: edge-haproxy}")
              .replace("client: erigon", "client: erigon3")
              + "notifications: {slack_block: 'ops slack'}\n")
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    header, *problems = str(err.value).splitlines()
    assert header == f"{p}: invalid inventory:"
    located = [line.split(": ", 2)[:2] for line in problems]
    assert located == [
        [f"  {p}:6", "chain 'eth-main', field max_lag_blocks (chains.eth-main.max_lag_blocks)"],
        [f"  {p}:8", "host 'h1', field ssh_user (hosts.h1.ssh_user)"],
        [f"  {p}:10", "load balancer 'edge', field admin_block (load_balancers.edge.admin_block)"],
        [f"  {p}:10", "load balancer 'edge', field admin_blok (load_balancers.edge.admin_blok)"],
        [f"  {p}:14", "node 'erigon-1', field client (nodes.erigon-1.client)"],
        [f"  {p}:20", "notifications, field slack_block (notifications.slack_block)"],
    ]


def test_a_badly_named_entry_is_refused_naming_its_section(tmp_path):
    p = write(tmp_path, GOOD.replace("  erigon-1:\n    chain", "  erigon 1:\n    chain"))
    with pytest.raises(InventoryError) as err:
        load_inventory(p)
    assert f"{p}:12: node 'erigon 1', its name (nodes): String should match pattern" in str(err.value)
