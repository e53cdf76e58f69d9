"""The run forms an operator sees in the Prefect UI, read back from the lab's
Prefect server as the UI reads them: nodes offered from the inventory (and
kept current when it changes), every field described and bounded, fields
only automation sets left out, and a run for a node outside the list refused
by the server before it exists, while automation's runs still start."""

from __future__ import annotations

import importlib
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import yaml

from deployments import forms, register
from inventory import inventory_path, load_inventory
from tasks.vocabulary import AUTOMATION_MARKER
from tests import fleet

TIMEOUT = httpx.Timeout(10.0)
CHOICES = {"node": "nodes", "nodes": "nodes", "host": "hosts", "hosts": "hosts", "chain": "chains", "chains": "chains"}


def declared() -> list[dict]:
    return yaml.safe_load((register.ROOT / "prefect.yaml").read_text())["deployments"]


def flow_of(entrypoint: str):
    path, func = entrypoint.rsplit(":", 1)
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)


def deployment(api: str, entrypoint: str, name: str) -> dict:
    r = httpx.get(f"{api}/deployments/name/{flow_of(entrypoint).name}/{name}", timeout=TIMEOUT)
    r.raise_for_status()
    return r.json()


def forms_on_server(api: str) -> dict[str, dict]:
    return {d["name"]: deployment(api, d["entrypoint"], d["name"]) for d in declared()}


def listed(prop: dict) -> list | None:
    """The names a property offers (array items, or an Optional's string branch), or None."""
    if prop.get("type") == "array":
        return listed(prop.get("items") or {})
    if "enum" in prop:
        return prop["enum"]
    for branch in prop.get("anyOf") or []:
        if (found := listed(branch)) is not None:
            return found
    return None


def bounded(prop: dict) -> bool:
    """A value the form cannot make arbitrarily long or large."""
    if "anyOf" in prop:
        return all(bounded(b) for b in prop["anyOf"])
    kind = prop.get("type")
    if kind in ("boolean", "null") or "enum" in prop:
        return True
    if kind == "string":  # a date is parsed as one, never kept as the text given
        return "maxLength" in prop or "pattern" in prop or prop.get("format") in ("date", "date-time")
    if kind in ("integer", "number"):
        return ("minimum" in prop or "exclusiveMinimum" in prop) and ("maximum" in prop or "exclusiveMaximum" in prop)
    if kind == "array":
        return "maxItems" in prop and bounded(prop.get("items") or {})
    return False


def test_every_form_offers_the_inventory_describes_and_bounds_its_fields_and_leaves_out_automations(prefect_api):
    inventory = load_inventory()
    names = {"nodes": sorted(inventory.nodes), "hosts": sorted(inventory.hosts), "chains": sorted(inventory.chains)}
    on_server = forms_on_server(prefect_api)
    for spec in declared():
        d = on_server[spec["name"]]
        props = d["parameter_openapi_schema"]["properties"]
        assert d["enforce_parameter_schema"] is True, spec["name"]
        for field, prop in props.items():
            where = f"{spec['name']}.{field}"
            assert prop.get("description"), f"{where} has no description"
            assert bounded(prop), f"{where} is not bounded: {prop}"
            if field in CHOICES:
                assert listed(prop) == names[CHOICES[field]], f"{where} does not offer the inventory's {CHOICES[field]}"
        own = flow_of(spec["entrypoint"]).parameters.model_dump_for_openapi()
        automation = [f for f, p in own["properties"].items() if p.get(AUTOMATION_MARKER)]
        assert not set(automation) & set(props), f"{spec['name']} offers automation-only fields"
        assert not set(automation) & set(d["parameter_openapi_schema"].get("required") or [])
    # The forms the issue names: an operator picks the node from a list, and
    # the trigger's event id is not in their way.
    for name in ("node-recovery", "close-circuit"):
        assert listed(on_server[name]["parameter_openapi_schema"]["properties"]["node"]) == names["nodes"]
    assert "trigger_event_id" not in on_server["node-recovery"]["parameter_openapi_schema"]["properties"]


def test_a_node_added_to_the_inventory_is_offered_once_registered_again(prefect_api, tmp_path, monkeypatch):
    real = inventory_path()
    raw = yaml.safe_load(real.read_text())
    template = next(iter(raw["nodes"].values()))
    raw["nodes"]["eth-added"] = template | {"rpc_url": "http://127.0.0.1:1/"}
    changed = tmp_path / "inventory.yaml"
    changed.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("RUNBOOKS_INVENTORY", str(changed))
    # The two deployments looked at, not all 23 (`register --forms-only` applies the same code to each; all of
    # them took ~16 s a pass on the loaded suite's server).
    looked_at = ["node-recovery", "close-circuit"]
    try:
        forms.apply(looked_at)
        on_server = forms_on_server(prefect_api)
        for name in looked_at:
            offered = listed(on_server[name]["parameter_openapi_schema"]["properties"]["node"])
            assert "eth-added" in offered and offered == sorted(raw["nodes"]), name
    finally:
        forms.apply(looked_at, load_inventory(real))
    restored = forms_on_server(prefect_api)
    assert "eth-added" not in listed(restored["close-circuit"]["parameter_openapi_schema"]["properties"]["node"])


def runs_of(api: str, deployment_id: str) -> int:
    r = httpx.post(f"{api}/flow_runs/count", json={"deployments": {"id": {"any_": [deployment_id]}}}, timeout=TIMEOUT)
    r.raise_for_status()
    return r.json()


@pytest.mark.parametrize("name, parameters", [
    ("close-circuit", {"operator": "tests", "note": "checked by the test"}),
    ("node-recovery", {"reason": "tests", "dry_run": True}),
])
def test_a_run_for_a_node_not_in_the_list_is_refused_before_it_exists(prefect_api, name, parameters):
    spec = next(d for d in declared() if d["name"] == name)
    d = deployment(prefect_api, spec["entrypoint"], name)
    before = runs_of(prefect_api, d["id"])
    # A well-formed name (the flow's own pattern would accept it), just not a node we have.
    r = httpx.post(f"{prefect_api}/deployments/{d['id']}/create_flow_run",
                   json={"parameters": {"node": "eth-nowhere", **parameters}}, timeout=TIMEOUT)
    assert r.status_code == 409, r.text
    assert "node" in r.json()["detail"] and "is not one of" in r.json()["detail"]
    assert runs_of(prefect_api, d["id"]) == before


def test_a_triggered_run_carries_the_field_left_out_of_the_form(healthy_fleet, prefect_api):
    """The deployment trigger passes trigger_event_id, which the form leaves
    out: the server still creates the run and the worker runs it."""
    node = "eth-a"
    props = deployment(prefect_api, "flows/node_recovery.py:node_recovery", "node-recovery")["parameter_openapi_schema"]["properties"]
    assert "trigger_event_id" not in props
    event_id = str(uuid.uuid4())
    chain = load_inventory().node(node).chain
    sent_at = time.time()
    with fleet.automation_on(schedules=False):
        r = httpx.post(f"{prefect_api}/events", timeout=TIMEOUT, json=[{
            "id": event_id, "occurred": datetime.now(timezone.utc).isoformat(),
            "event": "runbooks.node.unhealthy",
            "resource": {"prefect.resource.id": f"runbooks.node.{node}", "runbooks.node": node,
                         "runbooks.chain": chain, "runbooks.remediation": "node-recovery"},
            "payload": {"problem": "stalled"},
        }])
        r.raise_for_status()
        run = fleet.wait_for(
            lambda: next((r for r in fleet.flow_runs("node-recovery", sent_at)
                          if r.parameters.get("trigger_event_id") == event_id and r.state and r.state.is_final()), None),
            timeout=120, interval=1, what="the triggered node-recovery run, finished",
        )
    assert run.parameters["node"] == node
    # The node is healthy: the run confirms that and does nothing, successfully.
    assert run.state.is_completed(), run.state.message
