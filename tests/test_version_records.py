"""Client versions in the records: the fleet assessment and node-recovery's
before/after state carry the parsed client and version beside the raw string,
so an upgrade runbook can compare them. No lab: the nodes are a local HTTP
stub answering the head batch, the inventory is built here."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from inventory import Inventory
from tasks.probes.assessment import RECORD_FIELDS, as_dict, sweep
from tasks.runbook import Done
from tests.test_probes import StubServer, batch_answering

OP_GETH = "Geth/v1.101411.4-stable-efa05b1b/linux-amd64/go1.22.7"
NITRO = "nitro/v3.6.7-a7c9f1e/linux-amd64/go1.23.1"


@pytest.fixture
def fleet():
    stub = StubServer()
    stub.routes["/base-a"] = (200, batch_answering(OP_GETH, head=7))
    stub.routes["/ref"] = (200, batch_answering(NITRO, head=7))
    inventory = Inventory.model_validate({
        "chains": {"base": {"family": "ethereum", "references": [stub.url + "/ref"], "max_lag_blocks": 8,
                            "max_head_age_seconds": 30}},
        "hosts": {"h1": {"address": "127.0.0.1", "ssh_user": "ops", "ssh_identity_block": "fleet-ssh"}},
        "nodes": {"base-a": {"chain": "base", "client": "op-geth", "host": "h1",
                             "service": {"manager": "systemd", "name": "op-geth"},
                             "rpc_url": stub.url + "/base-a", "datadir": "/data/op-geth"}},
    })
    yield inventory
    stub.close()


def test_the_assessment_record_carries_client_and_version(fleet):
    a = sweep(fleet, ["base-a"]).nodes["base-a"]
    assert {"client_version", "client", "version"} <= set(RECORD_FIELDS)
    record = as_dict(a)
    assert record["client_version"] == OP_GETH
    assert (record["client"], record["version"]) == ("op-geth", "1.101411.4")


def test_node_recovery_records_the_version_in_its_before_state(fleet, monkeypatch):
    """The state node-recovery writes to the audit (here the healthy no-op's
    'before'; 'after' is the same as_dict of the assessment after the restart)."""
    from flows import node_recovery
    from flows.node_recovery import RecoverNode

    # The step's plain function, not the Prefect task: a task run would talk to
    # a Prefect server, and this test needs none.
    monkeypatch.setattr(node_recovery, "assess_chain", node_recovery.assess_chain.fn)
    states = []
    rb = SimpleNamespace(inventory=fleet, trigger=SimpleNamespace(event=None, automatic=False),
                         step=lambda name: None,
                         audit=SimpleNamespace(state=lambda label, data: states.append((label, data))))
    with pytest.raises(Done) as done:
        RecoverNode("base-a", "test").plan(rb)
    ((label, before),) = states
    assert label == "before" and before["status"] == "healthy"
    assert (before["client"], before["version"]) == ("op-geth", "1.101411.4")
    assert done.value.data["before"] == before  # the flow's result carries it too
