"""The runbook frame, through a toy runbook that has no code of its own for it:
lease, pause, holds, plan, dry run, approval and audit, against the real lab."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from prefect.events import emit_event

from tasks import guards
from tasks.audit import AuditRecord, read_entries
from tasks.events import NODE_UNHEALTHY, node_resource
from tests import fleet
from tests.toy_runbook import ACTED, toy_overlap, toy_restart

NODE = "eth-a"


def _toy_runs(state_type: str | None = None) -> list:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterStateType

    from tasks import prefect_api

    with prefect_api.client() as client:
        kwargs = {}
        if state_type:
            kwargs["flow_run_filter"] = FlowRunFilter(state=dict(type=FlowRunFilterStateType(any_=[state_type])))
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["toy-restart"])), **kwargs)


def _start_in_thread(**params) -> tuple[threading.Thread, dict]:
    return fleet.start_in_thread(toy_restart, **params)


def _wait_paused(known: set[str], timeout: float = 60):
    def paused():
        runs = [r for r in _toy_runs("PAUSED") if str(r.id) not in known]
        return runs[0] if runs else None

    return fleet.wait_for(paused, timeout, what="the toy run to pause for approval")


def _resume(run_id, **answer):
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(run_id, run_input=answer)


def _untouched():
    return (fleet.pid(NODE), fleet.server(NODE).admin_state, fleet.sshd_sessions())


def test_the_toy_runbook_does_its_steps_with_lease_plan_and_audit_from_the_frame(healthy_fleet):
    before_pid = fleet.pid(NODE)
    state = toy_restart(node=NODE, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["status"] == "succeeded"
    assert fleet.pid(NODE) not in (None, before_pid)
    fleet.wait_for(lambda: fleet.server(NODE).in_rotation, 10, what="back in rotation")
    entries = fleet.run_entries(state)
    kinds = fleet.kinds(entries)
    assert kinds[0] == "started" and kinds[-1] == "outcome"
    lease = [e for e in entries if e["kind"] == "guard" and e["data"]["name"] == "lease-taken"]
    assert lease and lease[0]["data"]["names"] == [f"runbooks-node-{NODE}"]
    assert kinds.index("plan") < kinds.index("action")
    assert [e for e in entries if e["kind"] == "plan"][0]["data"]["hash"]
    commands = [e["data"]["command"] for e in entries if e["kind"] == "action"]
    assert any("state drain" in c for c in commands) and any(" restart " in c for c in commands)


def test_the_toy_runbooks_dry_run_touches_no_host_and_no_balancer(healthy_fleet):
    before = _untouched()
    state = toy_restart(node=NODE, dry_run=True, return_state=True)
    assert state.is_completed(), state.message
    assert _untouched() == before  # same process, same rotation, no SSH login anywhere
    entries = fleet.run_entries(state)
    assert "action" not in fleet.kinds(entries)
    would = [e["data"] for e in entries if e["kind"] == "would"]
    assert any("state drain" in w["description"] for w in would), would
    assert any("restart" in w["description"] for w in would), would
    result = state.result()
    assert result["outcome"] == "dry-run" and "drain" in result["detail"]


def test_an_automatic_toy_run_respects_the_pause_switch(healthy_fleet):
    before = _untouched()
    guards.set_pause(True, "tests: maintenance window", "tests")
    try:
        # The event that started it, as fleet-health would emit it.
        event = emit_event(event=NODE_UNHEALTHY, resource=node_resource(NODE, "lab-eth", "stalled"),
                           payload={"problem": "stalled"})
        state = toy_restart(node=NODE, trigger_event_id=str(event.id), return_state=True)
    finally:
        guards.set_pause(False, "tests: done", "tests")
    assert state.result()["outcome"] == "paused"
    assert _untouched() == before
    assert fleet.outcome(fleet.run_entries(state))["status"] == "refused"


def test_a_held_node_is_left_alone_by_every_runbook(healthy_fleet, tmp_path):
    before = _untouched()
    audit = AuditRecord(run_id=f"tests-{uuid.uuid4()}", flow="tests")
    guards.place_hold(audit, NODE, "tests", "disk swap", None)
    try:
        state = toy_restart(node=NODE, return_state=True)
    finally:
        guards.release_hold(audit, NODE, "tests", "done")
    assert state.result()["outcome"] == "on-hold"
    assert "disk swap" in state.result()["detail"]
    assert _untouched() == before


def test_an_approved_run_waits_paused_with_its_plan_then_acts_and_names_the_approver(healthy_fleet):
    from tasks import prefect_api

    known = {str(r.id) for r in _toy_runs()}
    before_pid = fleet.pid(NODE)
    thread, box = _start_in_thread(node=NODE, approval=True)
    run = _wait_paused(known)
    assert fleet.pid(NODE) == before_pid and fleet.server(NODE).admin_state == "ready"  # nothing yet
    with prefect_api.client() as client:
        description = client.read_flow_run_input(run.id, "paused-approval-description")
    plan = [e for e in read_entries(run_id=str(run.id)) if e["kind"] == "plan"][0]["data"]
    assert plan["hash"] in description and f"drain {NODE}" in description
    _resume(run.id, approve=True, approver="alice@example.org", comment="change CR-7 approved", plan_hash=plan["hash"])
    thread.join(120)
    assert box["state"].is_completed(), box
    assert fleet.pid(NODE) not in (None, before_pid)
    approvals = [e["data"] for e in read_entries(run_id=str(run.id)) if e["kind"] == "approval"]
    assert approvals[-1]["status"] == "approved" and approvals[-1]["approver"] == "alice@example.org"
    assert approvals[-1]["comment"] == "change CR-7 approved" and approvals[-1]["at"]


@pytest.mark.parametrize("how", ["rejected", "timed-out", "stale-plan"])
def test_a_run_not_approved_for_its_current_plan_changes_nothing(healthy_fleet, how):
    known = {str(r.id) for r in _toy_runs()}
    params = {"node": NODE, "approval": True}
    if how == "timed-out":
        params["approval_timeout_seconds"] = 3
    thread, box = _start_in_thread(**params)
    if how != "timed-out":
        run = _wait_paused(known)
        plan = [e for e in read_entries(run_id=str(run.id)) if e["kind"] == "plan"][0]["data"]
        if how == "stale-plan":
            # The fleet changes after the plan was made: the node leaves rotation.
            lb = fleet.node(NODE)["lb"]
            fleet.HAPROXY.maint(lb["backend"], lb["server"])
        before = (fleet.pid(NODE), fleet.server(NODE).admin_state, fleet.sshd_sessions())
        _resume(run.id, approve=how == "stale-plan", approver="bob", comment="no", plan_hash=plan["hash"])
    else:
        before = _untouched()
    thread.join(120)
    state = box["state"]
    if how == "timed-out":
        # Prefect's own rule: a run whose pause timed out can only end Failed, whatever it returns; on two
        # loaded cores the frame's own deadline may see it first and end the run refused. Either way
        # nothing was done, and the audit says why with the frame's outcome.
        assert ((state.is_failed() and "never resumed" in state.message)
                or (state.is_completed() and state.result()["outcome"] == "timed-out")), box
    else:
        assert state.is_completed(), box
        assert state.result()["outcome"] == how
    assert (fleet.pid(NODE), fleet.server(NODE).admin_state, fleet.sshd_sessions()) == before
    entries = fleet.run_entries(state)
    assert "action" not in fleet.kinds(entries)
    assert fleet.outcome(entries)["status"] == "refused"
    assert fleet.outcome(entries)["result"] == how


def test_a_node_run_and_its_chains_wave_never_act_at_once_and_never_deadlock(runbooks):
    for _ in range(8):
        ACTED.clear()
        results: list = []
        threads = [threading.Thread(target=lambda k=k, n=n: results.append(toy_overlap(kind=k, name=n)))
                   for k, n in (("chain", "lab-eth"), ("node", NODE))]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads), "deadlock: a run never finished"
        assert time.monotonic() - started < 90
        assert sorted(r["status"] for r in results) == ["succeeded", "succeeded"], results
        (a, a0, a1), (b, b0, b1) = sorted(ACTED, key=lambda x: x[1])
        assert a1 <= b0, f"{a} and {b} acted at the same time: {ACTED}"
