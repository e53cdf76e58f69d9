"""`make test`'s scheduler (FleetScheduling in tests/conftest.py) driven by simulated workers: no lab.

Workers behave as xdist's do: each runs the tests sent to it in order, and holds its last one until it is sent
another or told to stop (pytest needs the next item to tear down). Time is simulated; the lab comes up at a
given moment, as _EarlyLab brings it up beside the first tests, and its deployments are registered
REGISTERING_S later.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests import conftest

FLEET = [f"tests/test_fleet.py::test_{i}" for i in range(100)]  # the critical path: longer than the rest
NO_DEPLOYMENTS = FLEET[:12]  # the fleet's first: they start once the lab is up, before the registration
REGISTERING_S = 100
EARLY = [f"tests/test_early.py::test_{i}" for i in range(6)]  # one unit: a module with a stack of its own
QUICK = [f"tests/test_quick.py::test_{i}" for i in range(150)]  # more than the early module lasts
BESIDE = ["tests/test_beside.py::test_needs_the_lab"]  # the lab's Prefect, nothing of the fleet
STORM = ["tests/test_storm.py::test_beside_the_fleet"]
# As the workers order them (pytest_collection_modifyitems): the fleet first, `early` first of the others.
COLLECTION = FLEET + EARLY + QUICK + BESIDE + STORM
# Roughly the HA drills' (tests/test_prefect_ha.py): the services drill, fifth, waits ~5 min.
SECONDS = {**dict.fromkeys(FLEET, 10), **dict(zip(EARLY, (75, 40, 17, 14, 280, 10))), **dict.fromkeys(QUICK, 3),
           **dict.fromkeys(BESIDE, 5), **dict.fromkeys(STORM, 60)}


class Worker:
    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.sent: list[int] = []
        self.started = 0

    def send_runtest_some(self, indices) -> None:
        self.sent.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True

    def next_runnable(self) -> int | None:
        unrun = self.sent[self.started:]
        if len(unrun) >= 2 or (unrun and self.shutting_down):
            self.started += 1
            return unrun[0]
        return None


class Lab:
    up = registered = False

    def started_or_failed(self) -> bool:
        return self.registered

    def up_or_failed(self) -> bool:
        return self.up


@pytest.fixture
def scheduler(monkeypatch, tmp_path):
    monkeypatch.setenv(conftest.SESSION_ENV, f"scheduling-test-{tmp_path.name}")
    ids = conftest._fleet_ids_file()
    ids.write_text(json.dumps({"fleet": FLEET, "lab": FLEET + BESIDE, "early": EARLY, "scale": STORM}))
    lab = Lab()
    monkeypatch.setattr(conftest, "_EARLY_LAB", lab)
    config = SimpleNamespace(getvalue=lambda name: ["2*popen"], option=SimpleNamespace(loadscopereorder=True))
    yield conftest.pytest_xdist_make_scheduler(config, None), lab
    ids.unlink(missing_ok=True)
    conftest._only_fleet_left_file().unlink(missing_ok=True)


def run(sched, lab: Lab, lab_up_at: float) -> dict[str, tuple[str, float, float]]:
    """Every test's worker, start and end, in simulated seconds."""
    workers = [Worker("gw0"), Worker("gw1")]
    for w in workers:
        sched.add_node(w)
        sched.add_node_collection(w, COLLECTION)
    sched.schedule()
    now, running, ran = 0.0, {}, {}
    registered_at = lab_up_at + REGISTERING_S

    def at(moment: float) -> None:
        lab.up, lab.registered = moment >= lab_up_at, moment >= registered_at

    while True:
        at(now)
        for w in workers:
            if w not in running and (index := w.next_runnable()) is not None:
                nodeid = COLLECTION[index]
                # Its `lab` fixture waits for the lab to be up, pytest_runtest_setup for the registration.
                starts = (max(now, lab_up_at) if nodeid in NO_DEPLOYMENTS
                          else max(now, registered_at) if nodeid in FLEET + BESIDE else now)
                running[w] = (starts + SECONDS[nodeid], index, starts)
        for w, (_end, index, _starts) in running.items():  # the storm's fixture waits for the fleet alone
            if COLLECTION[index] in STORM and not conftest._only_fleet_left_file().exists():
                running[w] = (float("inf"), index, float("inf"))
            elif COLLECTION[index] in STORM and _starts == float("inf"):
                running[w] = (now + SECONDS[COLLECTION[index]], index, now)
        if not running:
            return ran
        worker, (now, index, started) = min(running.items(), key=lambda item: item[1][0])
        assert now < float("inf"), "deadlock: the storm waits for tests that never run"
        del running[worker]
        ran[COLLECTION[index]] = (worker.gateway.id, started, now)
        at(now)
        sched.mark_test_complete(worker, index)


# Every moment before the early module's end (436 s): who asks for work right after the lab is up is a race.
@pytest.mark.parametrize("lab_up_at", range(0, 300, 5))
def test_the_fleet_never_waits_behind_an_early_module_and_every_test_runs_once(scheduler, lab_up_at):
    sched, lab = scheduler
    ran = run(sched, lab, lab_up_at)
    assert sorted(ran) == sorted(COLLECTION), "a test never ran: the scheduler left a worker waiting"
    fleet_workers = {ran[t][0] for t in FLEET}
    early_workers = {ran[t][0] for t in EARLY}
    assert len(fleet_workers) == 1 and len(early_workers) == 1 and fleet_workers != early_workers
    # The fleet's first test starts once the lab is up (not registered) and the other worker's current test is
    # done, not after the early module's 280-second test; the early module waits for the registration.
    assert ran[FLEET[0]][1] <= lab_up_at + 10 < ran[EARLY[-1]][2]
    assert ran[EARLY[0]][1] >= min(lab_up_at + REGISTERING_S, max(ran[q][1] for q in QUICK))  # or nothing else left
    # The storm comes once every test but the fleet's has finished, on the other worker, beside the fleet.
    assert ran[STORM[0]][1] >= max(end for test, (_w, _s, end) in ran.items() if test not in STORM + FLEET)
    assert ran[STORM[0]][0] not in fleet_workers and ran[STORM[0]][1] < ran[FLEET[-1]][2]
