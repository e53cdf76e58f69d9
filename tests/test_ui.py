"""The Prefect UI in a real browser: Debian's Chromium, driven by Playwright, against the lab's Prefect
server and worker, doing what an operator does there. Each test checks the outcome where it lands (the
fleet, the audit, the pause switch), not only what the page says. A screenshot of every step is kept under
test-artifacts/ui/<test>/ (NN-step.png), for a person to look at after a failure.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import lab
from inventory import load_inventory
from tasks import guards
from tasks.audit import read_entries
from tests import fleet

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "ui"
UI = "http://127.0.0.1:4200"
CHROMIUM = "/usr/bin/chromium"  # no browser downloads here: Playwright drives the system's
# As root on a closed network: no sandbox, and no background connections to Google's hosts.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000


class Operator:
    """One browser tab and the screenshots of what it did."""

    def __init__(self, page, shots: Path):
        self.page, self.shots, self.step = page, shots, 0

    def shot(self, what: str) -> None:
        self.step += 1
        self.page.screenshot(path=str(self.shots / f"{self.step:02d}-{what}.png"), full_page=True)

    def open(self, path: str) -> None:
        self.page.goto(f"{UI}{path}")

    def field(self, label: str, within=None):
        """A parameter or run-input field of a Prefect form, by the label the UI shows."""
        scope = within or self.page
        name = re.compile(rf"^{re.escape(label)}( \(Optional\))?$")
        return scope.locator(".schema-form-property").filter(
            has=self.page.locator(".schema-form-property__label", has_text=name))

    def choose(self, label: str, value: str) -> None:
        """Pick a value of a select (the inventory's node list)."""
        from playwright.sync_api import expect

        field = self.field(label)
        field.locator(".p-select-button__control").click()
        self.page.keyboard.press("ArrowDown")  # opens the option list
        self.page.get_by_role("option", name=value, exact=True).click()
        expect(field.locator(".p-select-button__value")).to_have_text(value)

    def switch(self, label: str, on: bool, within=None) -> None:
        """Set a switch (a bool field) on or off, whatever it showed."""
        from playwright.sync_api import expect

        switch = self.field(label, within).get_by_role("switch")
        if (switch.get_attribute("aria-checked") == "true") != on:
            switch.click()
        expect(switch).to_have_attribute("aria-checked", "true" if on else "false")

    def type(self, label: str, text: str, within=None) -> None:
        self.field(label, within).locator("textarea, input").first.fill(text)

    def run_deployment_form(self, deployment: str, fill) -> str:
        """Open the deployment's custom-run form, `fill(self)` it and submit; returns the new flow run's id
        (the one run of this deployment created since), with its page open."""
        from playwright.sync_api import expect

        from tasks import prefect_api

        with prefect_api.client(30) as client:
            deployment_id = client.read_deployment_by_name(deployment).id
        self.open(f"/deployments/deployment/{deployment_id}/run")
        self.page.wait_for_load_state("networkidle")  # the form's defaults are in before it is filled
        expect(self.page.get_by_text("Parameters", exact=True)).to_be_visible()
        fill(self)
        self.shot("form-filled")
        known = {str(r.id) for r in deployment_runs(deployment_id)}
        self.page.get_by_role("button", name="Submit").click()
        scheduled, failed = self.page.get_by_text("scheduled to start now").first, self.page.get_by_text(
            "Something went wrong").first
        expect(scheduled.or_(failed)).to_be_visible(timeout=TIMEOUT_MS)
        if failed.is_visible() and not [r for r in deployment_runs(deployment_id) if str(r.id) not in known]:
            # The UI does not retry a busy SQLite server's 503 (a CI run under load saw it); an operator
            # submits again, once, and only when no run was created.
            self.shot("submit-refused-by-a-busy-server")
            self.page.get_by_role("button", name="Submit").click()
            expect(scheduled).to_be_visible(timeout=TIMEOUT_MS)
        else:
            expect(scheduled).to_be_visible(timeout=TIMEOUT_MS)
        created = fleet.wait_for(lambda: [str(r.id) for r in deployment_runs(deployment_id) if str(r.id) not in known],
                                 30, what=f"the run the {deployment} form submitted")
        assert len(created) == 1, created
        self.open(f"/runs/flow-run/{created[0]}")
        self.shot("run-page")
        return created[0]

    def open_artifact(self, run_id: str, key: str) -> None:
        """The run's Artifacts tab, then the artifact named `key` on it."""
        self.open(f"/runs/flow-run/{run_id}")
        self.page.get_by_role("tab", name="Artifacts").or_(self.page.get_by_text("Artifacts", exact=True)).first.click()
        self.shot("artifacts-tab")
        self.page.get_by_text(key, exact=True).first.click()


@pytest.fixture(scope="module")
def browser(runbooks):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)  # a loaded 2-core machine renders slower than 5 s at times
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def operator(browser, request):
    shots = SHOTS / request.node.name
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    operator = Operator(context.new_page(), shots)
    yield operator
    operator.shot("last")  # where it stood when the test ended, passed or not
    context.close()


def deployment_runs(deployment_id) -> list:
    """The deployment's newest runs (the API's default order is by id, which is random)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    from tasks import prefect_api

    with prefect_api.client(30) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=20)


def final_run(run_id: str, timeout: float = 180):
    from tasks import prefect_api

    def read():
        with prefect_api.client(30) as client:
            run = client.read_flow_run(run_id)
        return run if run.state and run.state.is_final() else None

    return fleet.wait_for(read, timeout, interval=1, what=f"flow run {run_id} to finish")


def test_a_dry_run_started_from_the_recovery_form_shows_its_plan_and_touches_nothing(healthy_fleet, operator):
    from playwright.sync_api import expect

    node = "eth-b"
    lab.fault(node, "stall")
    fleet.wait_status(node, {"stalled"})
    spawns, pid = fleet.spawns(node), fleet.pid(node)

    def fill(op: Operator) -> None:
        op.choose("node", node)
        op.type("reason", "stalled, checking the plan first")
        op.switch("dry_run", True)

    run_id = operator.run_deployment_form("node-recovery/node-recovery", fill)
    run = final_run(run_id)
    assert run.state.is_completed(), run.state.message
    assert run.parameters["node"] == node and run.parameters["dry_run"] is True

    # The plan, as the operator reads it on the run's Artifacts tab.
    operator.open_artifact(run_id, f"node-recovery-{node}")
    lb = load_inventory().node(node).lb
    expect(operator.page.get_by_text(f"drain {node} from", exact=False).first).to_be_visible()
    expect(operator.page.get_by_text(f"{lb.backend}/{lb.server}", exact=False).first).to_be_visible()
    operator.shot("plan-artifact")

    entries = read_entries(run_id=run_id)
    assert [e for e in entries if e["kind"] == "plan"], "the dry run recorded no plan"
    assert "action" not in fleet.kinds(entries)
    assert fleet.spawns(node) == spawns and fleet.pid(node) == pid
    assert fleet.server(node).admin_state == "ready" and fleet.status_of(node) == "stalled"


def test_an_upgrade_waits_for_the_approval_given_in_its_ui_form_then_resumes_and_acts(healthy_fleet, operator):
    from playwright.sync_api import expect

    from flows.client_upgrade import client_upgrade
    from tests.test_upgrade import NEW, OLD, linked, reported, runs

    node = "eth-a"
    fleet.reset_fleet_version([node])
    known = {str(r.id) for r in runs("client-upgrade", set())}
    thread, box = fleet.start_in_thread(client_upgrade, version=f"v{NEW}", nodes=[node], soak_minutes=0)
    try:
        run = fleet.wait_for(lambda: next(iter(runs("client-upgrade", known, "PAUSED")), None), 120,
                             what="client-upgrade to pause for approval")
        run_id = str(run.id)
        plan_hash = [e for e in read_entries(run_id=run_id) if e["kind"] == "plan"][0]["data"]["hash"]
        assert linked(node) == OLD, "the upgrade acted before it was approved"

        operator.open(f"/runs/flow-run/{run_id}")
        expect(operator.page.get_by_text("Paused", exact=True).first).to_be_visible()
        operator.shot("paused")
        operator.page.get_by_role("button", name="Resume").click()
        modal = operator.page.locator(".p-modal")
        # The form shows the plan it approves, with its hash filled in.
        expect(modal.get_by_text(f"Plan hash: {plan_hash}", exact=False)).to_be_visible()
        expect(operator.field("Plan Hash", modal).locator("textarea")).to_have_value(plan_hash)
        operator.switch("Approve", True, modal)
        operator.type("Approver", "alice@example.org", modal)
        operator.type("Comment", "CR reviewed in the UI", modal)
        operator.shot("approval-filled")
        modal.get_by_role("button", name="Submit").click()
        thread.join(300)
        assert not thread.is_alive(), "the upgrade did not finish after its approval"
        state = box.get("state")
        assert state is not None and state.is_completed(), box

        operator.open(f"/runs/flow-run/{run_id}")
        expect(operator.page.get_by_text("Completed", exact=True).first).to_be_visible()
        operator.shot("completed")
        assert linked(node) == NEW and reported(node) == NEW
        approvals = [e["data"] for e in read_entries(run_id=run_id) if e["kind"] == "approval"]
        assert approvals[-1]["status"] == "approved" and approvals[-1]["approver"] == "alice@example.org", approvals
        assert approvals[-1]["comment"] == "CR reviewed in the UI"
    finally:
        thread.join(300)
        fleet.reset_fleet_version([node])


def test_remediation_is_paused_and_resumed_from_the_pause_remediation_form(runbooks, operator):
    from playwright.sync_api import expect

    assert not guards.pause_state().paused

    def fill(paused: bool, reason: str):
        def fill_form(op: Operator) -> None:
            op.switch("paused", paused)
            op.type("reason", reason)
            op.type("operator", "alice")
        return fill_form

    try:
        run_id = operator.run_deployment_form("pause-remediation/pause-remediation",
                                              fill(True, "maintenance window: disk swap on h2"))
        assert final_run(run_id).state.is_completed()
        state = guards.pause_state()
        assert state.paused and state.reason == "maintenance window: disk swap on h2" and state.by == "alice"
        operator.open("/variables")
        expect(operator.page.get_by_text(guards.pause.PAUSE_VARIABLE, exact=True).first).to_be_visible()
        operator.shot("variable-paused")

        run_id = operator.run_deployment_form("pause-remediation/pause-remediation", fill(False, "maintenance over"))
        assert final_run(run_id).state.is_completed()
        assert not guards.pause_state().paused
        outcome = fleet.outcome(read_entries(run_id=run_id))
        assert outcome["status"] == "succeeded", outcome
    finally:
        if guards.pause_state().paused:
            guards.set_pause(False, "UI test cleanup", "tests")
