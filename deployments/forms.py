"""The run forms operators see in the Prefect UI, made from the inventory.

`prefect deploy` stores each flow's parameter schema as Prefect derives it
from the signature: a node is free text, every parameter is shown, and the
descriptions given in `Annotated[..., Field(description=...)]` are dropped
(Prefect 3.9.1 takes them only from the docstring's `Args:` or a default
`= Field(...)`, which loses the bounds: prefect/_internal/pydantic/v2_schema.py,
process_v2_params). After each deploy, `apply()` rewrites every deployment's
schema on the server:

- a property named `node` (array `nodes`: its items) gets `enum` = the
  inventory's node names, sorted; `host`/`hosts` the host names, `chain`/
  `chains` the chain names, `database` the inventory's backed-up databases,
  `standby_host`/`target_host` the hosts with standby slots, `target` nodes and chains. The UI renders a string `enum` as a select and an
  array of enums as a multi-select. With `enforce_parameter_schema` (set here
  too) the server refuses, before any run exists, a run whose node is not in
  the list. The flow's own type (its pattern) still checks every value when
  the run starts: the last line of defence if a list is stale.
- a property without a description gets the one from its `Annotated` type,
  so bounds and description stay together in one place, the type.
- a property whose schema carries AUTOMATION_MARKER (tasks/vocabulary.py) is
  removed from the form. The UI renders every property in `properties`
  (there is no hidden flag), so leaving it out is the only way to keep it out
  of an operator's way. Runs automation creates with it still work: Prefect's
  schemas have no `additionalProperties: false`, so the server's check accepts
  a parameter the schema does not list, and the flow validates it against
  its own signature when it starts.

Rerun after the inventory changes (`python -m deployments.register`, or
`python -m deployments.register --forms-only` for this step alone) to keep the lists current.
"""

from __future__ import annotations

import copy
import importlib
import typing
from typing import Any

from prefect.client.schemas.actions import DeploymentUpdate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from pydantic.fields import FieldInfo

from inventory import Inventory, load_inventory
from tasks import prefect_api
from tasks.vocabulary import AUTOMATION_MARKER

# Registering is not urgent: a generous bound per request, with the client's retries.
TIMEOUT_S = 30.0


def choices(inventory: Inventory) -> dict[str, list[str]]:
    """Property name -> the inventory names an operator picks from."""
    nodes, hosts, chains = sorted(inventory.nodes), sorted(inventory.hosts), sorted(inventory.chains)
    databases = sorted(inventory.backups.databases)
    standby_hosts = sorted(h for h, host in inventory.hosts.items() if host.standby)
    return {"node": nodes, "nodes": nodes, "host": hosts, "hosts": hosts, "chain": chains, "chains": chains,
            "target": sorted(nodes + chains),  # dr-drill: a node or a chain
            **({"database": databases} if databases else {}),
            **({"standby_host": standby_hosts, "target_host": standby_hosts} if standby_hosts else {})}


def automation_fields(schema: dict) -> list[str]:
    """The properties of a parameter schema that only automation sets."""
    return [name for name, prop in (schema.get("properties") or {}).items() if prop.get(AUTOMATION_MARKER)]


def _offer(prop: dict, names: list[str]) -> None:
    """Restrict a string property (or an array's items, or each string branch
    of an Optional's anyOf) to `names`."""
    if prop.get("type") == "array" and isinstance(prop.get("items"), dict):
        _offer(prop["items"], names)
    elif prop.get("type") == "string":
        prop["enum"] = list(names)
    for branch in prop.get("anyOf") or []:
        if branch.get("type") in ("string", "array"):
            _offer(branch, names)


def type_descriptions(entrypoint: str) -> dict[str, str]:
    """Parameter -> the description in its `Annotated` type, for the flow at
    `entrypoint` ("flows/x.py:func", relative to the checkout, as in prefect.yaml)."""
    path, func = entrypoint.rsplit(":", 1)
    fn = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
    fn = getattr(fn, "fn", fn)  # a Flow object wraps the function
    found = {}
    for name, hint in typing.get_type_hints(fn, include_extras=True).items():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, FieldInfo) and meta.description:
                found[name] = meta.description
    return found


def operator_form(schema: dict, inventory: Inventory, descriptions: dict[str, str] | None = None) -> tuple[dict, dict[str, Any]]:
    """The schema an operator's form is made from, and what was changed (for the log)."""
    form = copy.deepcopy(schema)
    props = form.setdefault("properties", {})
    for name, text in (descriptions or {}).items():
        if name in props and not props[name].get("description"):
            props[name]["description"] = text
    hidden = automation_fields(form)
    for name in hidden:
        del props[name]
    if form.get("required"):
        form["required"] = [r for r in form["required"] if r not in hidden]
    offered = {}
    for name, names in choices(inventory).items():
        if name in props and names:
            _offer(props[name], names)
            offered[name] = names
    return form, {"offered": offered, "hidden": hidden}


def apply_forms(names: list[str], inventory: Inventory) -> dict[str, dict]:
    """Rewrite the named deployments' parameter schemas on the server; what was set, per deployment."""
    changes = {}
    with prefect_api.client(TIMEOUT_S, retries=True) as client:
        deployments = client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names)),
        )
        missing = set(names) - {d.name for d in deployments}
        if missing:
            raise RuntimeError(f"deployments not on the server: {', '.join(sorted(missing))}")
        for d in deployments:
            descriptions = type_descriptions(d.entrypoint) if d.entrypoint else {}
            form, change = operator_form(d.parameter_openapi_schema or {}, inventory, descriptions)
            client.update_deployment(
                d.id, DeploymentUpdate(parameter_openapi_schema=form, enforce_parameter_schema=True),
            )
            changes[d.name] = change
    return changes


def describe(changes: dict[str, dict]) -> list[str]:
    lines = []
    for name, change in sorted(changes.items()):
        offered = "; ".join(f"{field} from {len(v)} ({', '.join(v)})" for field, v in change["offered"].items())
        hidden = ", ".join(change["hidden"])
        lines.append(f"form {name}: " + (f"lists {offered}" if offered else "no inventory lists")
                     + (f"; automation only, not in the form: {hidden}" if hidden else ""))
    return lines


def apply(names: list[str], inventory: Inventory | None = None) -> list[str]:
    """Rewrite the named deployments' forms from the inventory; returns the log lines (also printed)."""
    lines = describe(apply_forms(names, inventory or load_inventory()))
    for line in lines:
        print(line)
    return lines

