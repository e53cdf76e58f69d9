"""An endpoint given as a Secret block (provider URLs carry API keys) is probed
through the URL the block holds, read from the real Prefect server, and the
URL is masked wherever it could be echoed."""

from __future__ import annotations

import secrets

import yaml
from prefect.blocks.system import Secret

from inventory import inventory_path, load_inventory
from inventory.endpoints import forget_resolved
from tasks.probes.assessment import assess_nodes
from tasks.redaction import redact_text
from tests import fleet


def test_a_node_whose_rpc_url_is_in_a_secret_block_is_probed_through_it_and_never_shown(healthy_fleet, tmp_path):
    node = "eth-a"
    key = secrets.token_hex(16)
    url = f"{fleet.node(node)['rpc_url'].rstrip('/')}/?apikey={key}"  # anvil ignores the query, a provider would not
    block = f"test-rpc-{secrets.token_hex(4)}"
    Secret(value=url).save(block, overwrite=True)
    raw = yaml.safe_load(inventory_path().read_text())  # the lab's inventory
    raw["nodes"] = {node: raw["nodes"][node] | {"rpc_url": {"secret": block}}}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(raw))
    forget_resolved()

    inv = load_inventory(path)
    assert key not in repr(inv.nodes[node]) and block in str(inv.nodes[node].rpc_url)
    [assessment] = assess_nodes(inv, [node]).values()
    assert assessment.healthy, assessment  # it reached the node through the block's URL
    assert redact_text(f"probing {url}") == "probing ***"  # registered for masking once resolved
