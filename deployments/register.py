"""Make a Prefect server ready to run the runbooks.

Creates the process work pool, registers our block types, deploys every
deployment in prefect.yaml, checks that each trigger declared there became
an automation (a trigger the server refuses leaves the deployment without it
and `prefect deploy` does not fail, see REFERENCE), and rewrites every run
form from the inventory (deployments/forms.py): run it again after the
inventory changes.

    python -m deployments.register             # schedules and triggers as prefect.yaml says
    python -m deployments.register --paused    # every schedule and trigger registered off
    python -m deployments.register --forms-only

`--paused` is for a server whose fleet nothing may act on yet (a new
environment, a migration, the test suite while its first tests run): the
deployments, their schedules and triggers all exist, switched off; resume them
from the UI (or `prefect automation resume` and `prefect deployment schedule
resume`) when the fleet is ready.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client

from deployments import forms

ROOT = Path(__file__).resolve().parent.parent
WORK_POOL = "runbooks"


def _prefect(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"RUNBOOKS_HOME": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def _check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        raise SystemExit(f"{what} failed (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def _declared() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def _paused_copy(directory: Path) -> Path:
    """prefect.yaml with every schedule inactive and every trigger disabled, for `prefect deploy --prefect-file`
    (which creates them that way: nothing is ever on between deploying and switching it off)."""
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        for schedule in d.get("schedules") or []:
            schedule["active"] = False
        for trigger in d.get("triggers") or []:
            trigger["enabled"] = False
    copy = directory / "prefect.paused.yaml"
    copy.write_text(yaml.safe_dump(spec, sort_keys=False))
    return copy


def declared_deployments() -> list[str]:
    return [d["name"] for d in _declared()]


def declared_triggers() -> dict[str, int]:
    return {d["name"]: len(d.get("triggers") or []) for d in _declared()}


async def trigger_problems(paused: bool = False) -> list[str]:
    """Deployments whose declared triggers did not all become automations; with `paused`, also any of their
    automations or schedules that is on."""
    async with get_client() as client:
        automations = await client.read_automations()
        deployments = await client.read_deployments()
        problems = []
        for name, expected in declared_triggers().items():
            ids = {d.id for d in deployments if d.name == name}
            mine = [a for a in automations for action in a.actions if getattr(action, "deployment_id", None) in ids]
            if len(mine) < expected:
                problems.append(f"{name}: {len(mine)} of {expected} triggers present")
            if paused:
                problems += [f"{name}: trigger {a.name!r} is on" for a in mine if a.enabled]
                problems += [f"{name}: a schedule is on" for d in deployments if d.id in ids
                             for s in d.schedules if s.active]
        return problems


CRASH_DETECTION = "runbooks: mark runs that stopped heartbeating crashed"
# The runs' heartbeat period (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set for the workers' runs) and how long a
# run may stay silent: two heartbeats missed, so a slow one is not taken for a dead one.
HEARTBEAT_SECONDS, SILENT_SECONDS = 30, 60


async def ensure_crash_detection() -> None:
    """A run whose process died with its worker or host (nobody left to report it) stays Running in Prefect
    for ever, holding its node. Prefect's documented remedy: runs heartbeat, and this automation marks a
    run Crashed once its heartbeats stop; that Crashed starts reconcile (prefect.yaml), which releases the
    run's lease and hands its node on. Replaced on every registration, so its settings follow the code."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    automation = AutomationCore(
        name=CRASH_DETECTION,
        description=f"Runs heartbeat every {HEARTBEAT_SECONDS} s; {SILENT_SECONDS} s of silence means the run is gone.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed", "prefect.flow-run.Paused"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=SILENT_SECONDS)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {SILENT_SECONDS} s: its process is gone")],
    )
    async with get_client() as client:
        for existing in await client.read_automations_by_name(CRASH_DETECTION):
            await client.delete_automation(existing.id)
        await client.create_automation(automation)


def run_command() -> str:
    """Each run's process: deployments/prestart.py's client, which forks the run from a warm prestart
    server when the worker has one (RUNBOOKS_PRESTART_SOCKET) and starts `python -m prefect.engine`
    itself when it has not."""
    return shlex.join([sys.executable, str(ROOT / "deployments" / "prestart.py")])


async def set_run_command() -> None:
    from prefect.client.schemas.actions import WorkPoolUpdate

    async with get_client() as client:
        pool = await client.read_work_pool(WORK_POOL)
        template = pool.base_job_template
        template["variables"]["properties"]["command"]["default"] = run_command()
        await client.update_work_pool(WORK_POOL, WorkPoolUpdate(base_job_template=template))


def main(paused: bool = False) -> None:
    """Everything registered; with `paused`, every schedule and trigger off (see the module's docstring)."""
    import asyncio
    import tempfile

    # The forms (last step) read each flow's parameter descriptions, importing every flow: ~15 s of CPU here.
    # Done meanwhile, while the CLI calls below mostly wait on the server.
    imports = threading.Thread(target=lambda: [forms.type_descriptions(d["entrypoint"]) for d in _declared()],
                               name="import-flows", daemon=True)
    imports.start()
    if _prefect("work-pool", "inspect", WORK_POOL).returncode != 0:
        created = _prefect("work-pool", "create", WORK_POOL, "--type", "process")
        # A worker starting meanwhile creates it too (when its pool is missing): either one will do.
        if created.returncode != 0 and _prefect("work-pool", "inspect", WORK_POOL).returncode != 0:
            _check(created, "creating work pool")
    asyncio.run(set_run_command())
    _check(_prefect("block", "register", "-m", "blocks"), "registering block types")
    # `prefect deploy` mostly waits on the server, one deployment after another (~1 s each here): the
    # declared deployments in two halves, deployed at once, take about two thirds of the time.
    names = declared_deployments()
    halves = [[arg for name in names[i::2] for arg in ("-n", name)] for i in range(2)]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        spec = ["--prefect-file", str(_paused_copy(Path(tmp)))] if paused else []
        for deployed in pool.map(lambda half: _prefect("deploy", *spec, *half), halves):
            _check(deployed, "deploying prefect.yaml")
    asyncio.run(ensure_crash_detection())
    problems = asyncio.run(trigger_problems(paused))
    if problems:
        raise SystemExit("deployment triggers missing or on after deploy: " + "; ".join(problems))
    # `prefect deploy` just stored the flows' own schemas; make them operator forms again.
    imports.join()
    forms.apply(names)
    print(f"work pool {WORK_POOL!r}, blocks and {len(declared_triggers())} deployments registered"
          f"{' with every schedule and trigger off' if paused else ''}; triggers verified; forms set")


if __name__ == "__main__":
    if sys.argv[1:] == ["--forms-only"]:
        # After an inventory change: the deployments stand, only their forms' lists change.
        forms.apply(declared_deployments())
    elif sys.argv[1:] in ([], ["--paused"]):
        main(paused=sys.argv[1:] == ["--paused"])
    else:
        raise SystemExit("usage: python -m deployments.register [--paused | --forms-only]")
