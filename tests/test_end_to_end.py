"""The whole loop with no human action: a stalled node is found by the scheduled
fleet-health run, its event triggers node-recovery through the worker, and the
node is back in rotation with its head advancing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lab
from tasks.audit import read_entries
from tests import fleet

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "end_to_end.json"


def test_a_stalled_node_is_found_on_schedule_and_fixed_by_the_triggered_runbook(healthy_fleet):
    node = "eth-c"
    fleet.fresh_restart_budget(node)
    fault_at = time.time()
    lab.fault(node, "stall")
    # Until its head is older than the chain allows, a node that stopped moving only lags: the first sweep
    # (due right after automation is on) must see the stall itself.
    fleet.wait_status(node, {"stalled"})
    # Prometheus would alert on the stall first; this test is about the schedule, whose next slot is moved close
    # (its interval unchanged): otherwise the test waits up to a minute for it.
    with fleet.alerts_silenced(node), fleet.schedule_due_soon("fleet-health/fleet-health"), fleet.automation_on():
        run = fleet.wait_for(
            lambda: next((r for r in fleet.flow_runs("node-recovery", fault_at)
                          if r.parameters.get("node") == node and r.state and r.state.is_final()), None),
            timeout=240, interval=1, what=f"a finished node-recovery run for {node}",
        )
        assert run.state.is_completed(), run.state.message
        assert fleet.outcome(read_entries(run_id=str(run.id)))["status"] == "succeeded", read_entries(run_id=str(run.id))
        fleet.wait_for(lambda: fleet.status_of(node) == "healthy" and fleet.server(node).in_rotation, 30,
                       what=f"{node} healthy and in rotation")
        recovered_at = time.time()
    assert fleet.head_advances(node)

    # Started by the trigger from fleet-health's event, not by hand.
    assert run.parameters["reason"] == "stalled" and run.parameters["trigger_event_id"]
    detected = [r for r in fleet.flow_runs("fleet-health", fault_at) if r.state and r.state.is_completed()]
    assert detected, "no fleet-health run completed after the fault"
    entries = read_entries(run_id=str(run.id))
    started = [e for e in entries if e["kind"] == "started"][0]["data"]
    assert started["trigger"]["kind"] == "event"
    assert started["trigger"]["event"] == "runbooks.node.unhealthy"
    assert started["trigger"]["event_id"] == run.parameters["trigger_event_id"]
    assert [e for e in entries if e["kind"] == "outcome"][-1]["data"]["status"] == "succeeded"
    assert any(node in r["body"]["text"] for r in lab.stub_records("slack") if r["path"] == "/api/chat.postMessage")

    timings = {
        "fault_to_recovered_s": round(recovered_at - fault_at, 1),
        "fault_to_run_start_s": round(run.start_time.timestamp() - fault_at, 1),
        "run_duration_s": round(run.total_run_time.total_seconds(), 1),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(timings, indent=2))
    print(f"\nend to end: {timings}")
