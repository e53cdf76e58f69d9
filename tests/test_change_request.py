"""The upgrade's change request: risk, migration, rollback estimate and a checklist bound into the plan's hash."""

from __future__ import annotations

from datetime import date

import pytest

from tasks.change_request import Check, ChangeRequest, NodeChange, is_newer, may_migrate

GIB = 1024 ** 3


def request(currents, to="1.7.1", checks=None, sizes=None, **kw) -> ChangeRequest:
    nodes = [NodeChange(f"n{i}", v, (sizes or {}).get(i, 0)) for i, v in enumerate(currents)]
    return ChangeRequest(client="anvil", to_version=to, target="chain lab", nodes=nodes, canary=1,
                         soak_minutes=kw.pop("soak", 2), max_failures=0, sha256="ab" * 32,
                         checks=checks if checks is not None else [Check("backup", True, "2 h old")], **kw)


@pytest.mark.parametrize("old,new,migrates", [
    ("2.60.9", "2.60.10", False), ("2.59.3", "2.60.0", True), ("2.60.10", "3.0.0-alpha4", True),
    ("3.0.0-alpha4", "3.0.0", False), ("1.4.4", "1.7.1", True), (None, "1.7.1", True)])
def test_a_minor_or_major_jump_may_migrate_the_datadir_a_patch_does_not(old, new, migrates):
    assert may_migrate(old, new) is migrates


@pytest.mark.parametrize("old,new,newer", [
    ("2.60.9", "2.60.10", True), ("2.60.10", "2.60.9", False), ("3.0.0-alpha4", "3.0.0", True),
    ("3.0.0", "3.0.0-rc2", False), ("1.7.1", "1.7.1", False), (None, "1.4.4", True)])
def test_newer_orders_versions_numerically_with_pre_releases_first(old, new, newer):
    assert is_newer(old, new) is newer


def test_risk_follows_the_largest_jump_of_any_node():
    assert request(["1.7.0", "1.7.0"]).risk == "Low"
    assert request(["1.7.0", "1.4.4"]).risk == "Medium"
    assert request(["0.3.0", "1.7.0"]).risk == "High"
    assert request(["1.7.0", None]).risk == "High"


def test_the_rollback_time_includes_restoring_the_largest_datadir_that_may_migrate():
    patch = request(["1.7.0"], sizes={0: 500 * GIB})
    minor = request(["1.4.4"], sizes={0: 500 * GIB})
    assert minor.rollback_minutes > patch.rollback_minutes + 60  # 500 GiB at 70 MiB/s is ~2 h
    assert "back up the datadir" in " ".join(minor.node_steps(minor.nodes[0]))
    assert "back up the datadir" not in " ".join(patch.node_steps(patch.nodes[0]))


def test_the_plan_hash_changes_with_any_fact_the_approval_signs():
    base = request(["1.4.4", "1.4.4"])
    assert base.plan().hash == request(["1.4.4", "1.4.4"]).plan().hash
    assert base.plan().hash != request(["1.4.4", "1.7.0"]).plan().hash  # a node's version changed
    assert base.plan().hash != request(["1.4.4", "1.4.4"], checks=[Check("backup", False, "none")]).plan().hash
    assert base.plan().hash != request(["1.4.4", "1.4.4"], soak=5).plan().hash


def test_the_markdown_names_the_cr_risk_rollback_and_every_check_as_found():
    cr = request(["1.4.4"], checks=[Check("verified backup younger than 24 h", True, "3 h old"),
                                    Check("no alert firing for the chain", False, "NodeStalled on n0")])
    text = cr.markdown(date(2026, 12, 5))
    assert text.startswith(f"## CR-20261205-{cr.plan().hash[:6]}: upgrade anvil to 1.7.1")
    assert "Risk: **Medium**" in text and "datadir backed up before the change" in text
    assert "- [x] verified backup younger than 24 h: 3 h old" in text
    assert "- [ ] no alert firing for the chain: NodeStalled on n0" in text
    assert not cr.ready and request(["1.4.4"]).ready
