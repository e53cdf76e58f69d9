"""Shared fixtures: the lab (up once per session) and a Prefect server with every
deployment registered, shared by every test that needs them.

The environment is set at import time, before Prefect reads its settings, so
flows run in-process by tests talk to the lab's Prefect server and read the
lab's inventory and audit directory, exactly as flows run by the worker do.
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from pathlib import Path

import pytest

import lab as lab_api
from lab import services, topology

for _key, _value in services.runbook_env(topology.Paths(topology.lab_dir())).items():
    os.environ.setdefault(_key, _value)


# ---------------------------------------------------------------- a skip is a failure
# A test that skips proves nothing, and a suite that skips a third of its cases
# while exiting 0 claims what it never checked. Every component the suite needs
# is installed by `make setup` (`python -m lab install`), so a skip means a
# broken install (or not running as root): the session fails and says which
# tests did not run. RUNBOOKS_ALLOW_SKIPS=1 relaxes this for local work only.
ALLOW_SKIPS_ENV = "RUNBOOKS_ALLOW_SKIPS"
_skipped: dict[str, str] = {}  # nodeid -> skip reason


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _note_skip(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.setdefault(report.nodeid, _skip_reason(report))


def pytest_collectreport(report) -> None:  # a module-level skip
    _note_skip(report)


def pytest_runtest_logreport(report) -> None:
    _note_skip(report)


def skips_allowed() -> bool:
    return os.environ.get(ALLOW_SKIPS_ENV) == "1"


@pytest.hookimpl(trylast=True)  # after the session fixtures' own teardown
def pytest_sessionfinish(session, exitstatus) -> None:
    if _is_worker(session.config):
        _send_prefect_logs_and_events()  # before the worker says it is done and the controller takes the lab down
    _EARLY_LAB.finish()  # a lab started for tests that never asked for it (stopped early, -x) is not left up
    _AUTOGROUPS.restore()
    if _skipped and not skips_allowed() and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _skipped:
        return
    tr = terminalreporter
    if skips_allowed():
        tr.section(f"{len(_skipped)} skipped test(s) ({ALLOW_SKIPS_ENV}=1: not counted as a failure)", yellow=True)
    else:
        tr.section(f"FAILED: {len(_skipped)} test(s) skipped", red=True, bold=True)
        tr.write_line("A skipped test proves nothing: the suite needs every lab component, and a missing one is an")
        tr.write_line("install bug, not a reason to skip. Run `make setup` (or `uv run python -m lab install`) as root,")
        tr.write_line(f"then run the tests again as root. For local work only, {ALLOW_SKIPS_ENV}=1 lets skips pass.")
    for nodeid, reason in sorted(_skipped.items()):
        tr.write_line(f"  SKIPPED {nodeid}: {reason}")


# ---------------------------------------------------------------- two workers (`make test`)
# `pytest -n 2` (pytest-xdist): the tests that act on the fleet (nodes, balancer, alerts, stubs, automation)
# run in order on one worker, as one unit of work; the tests that need no lab and those marked
# `beside_fleet` (the lab's Prefect server or databases, nothing of the fleet's) run on the other worker
# meanwhile. The controller brings the lab up (it holds the session lock) and tells the workers through
# LAB_READY when it is up (its blocks saved) and again when every deployment is registered: the fleet's tests
# marked `no_deployments` come first and start at the first, the others wait for the second (registering took
# 44 s alone; in the suite it ended 69-95 s into the session, 28-48 s after the lab was up). Without -n, one process does all of it as before.
# (Not xdist's own `--dist loadgroup`: it renames node ids through `_nodeid`, which pytest 9 no longer reads.)
LAB_READY = Path("/var/tmp/rblab.session.ready")
SESSION_ENV = "RUNBOOKS_TEST_SESSION"  # the controller's pid, inherited by its workers


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def _is_controller(config) -> bool:
    return config.pluginmanager.hasplugin("dsession") and not _is_worker(config)


def _needs_lab(item) -> bool:
    return "lab" in getattr(item, "fixturenames", ())


def _acts_on_fleet(item) -> bool:
    return _needs_lab(item) and item.get_closest_marker("beside_fleet") is None


def _is_scale(item) -> bool:
    return item.get_closest_marker("scale") is not None


def _fleet_ids_file() -> Path:
    return Path(f"/var/tmp/rblab.session.{os.environ.get(SESSION_ENV, 'none')}.fleet.json")


def _only_fleet_left_file() -> Path:
    """Written by the controller's scheduler once every test but the fleet's and the `scale` ones has finished."""
    return Path(f"/var/tmp/rblab.session.{os.environ.get(SESSION_ENV, 'none')}.only-fleet-left")


def wait_until_only_the_fleet_runs(timeout: float = 1800) -> None:
    """Under `-n 2`, returns once every test of the session but the fleet's has finished (see FleetScheduling):
    the other worker is free. At once without xdist, where the `scale` tests are the session's last."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    deadline = time.monotonic() + timeout
    while not _only_fleet_left_file().exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other tests had not finished after {timeout:.0f} s")
        time.sleep(1)


# tryfirst: before xdist's own hook reports the collection to the controller, whose scheduler reads this file
# as soon as it has the report (a fresh machine's first run lost that race).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session) -> None:
    """A worker tells the controller's scheduler which of the tests it collected act on the fleet and which
    need the lab (every worker collects the same tests, so whichever writes last writes the same lists)."""
    if _is_worker(session.config):
        import json

        target = _fleet_ids_file()
        part = target.with_suffix(f".{os.getpid()}.part")
        part.write_text(json.dumps({"fleet": [item.nodeid for item in session.items if _acts_on_fleet(item)],
                                    "lab": [item.nodeid for item in session.items if _needs_lab(item)],
                                    "early": [item.nodeid for item in session.items
                                              if item.get_closest_marker("early") is not None],
                                    "scale": [item.nodeid for item in session.items if _is_scale(item)]}))
        part.replace(target)


def pytest_xdist_make_scheduler(config, log):
    import json

    from xdist.scheduler import LoadScopeScheduling

    class FleetScheduling(LoadScopeScheduling):
        """The fleet's tests as one unit of work, in collection order, on one worker; each `early` module one
        unit; every other test a unit of its own, spread over the workers. Until the lab is up (for the fleet's
        unit, first in the queue) or registered (for the other units that need it, and the `early` ones), they
        are handed out only when nothing else is left: both workers run the others meanwhile. The fleet's unit
        never goes to a worker still running an `early` module (_reschedule).
        The `scale` tests come last, and their worker waits until every test but the fleet's has finished
        (wait_until_only_the_fleet_runs): they run beside the fleet's last tests, on the worker left free."""

        ids: dict[str, set[str]] | None = None
        announced_only_fleet_left = False

        def __init__(self, config, log=None) -> None:
            super().__init__(config, log)
            self.waiting: set = set()  # workers refused the fleet's unit with nothing else to give them

        def _read_ids(self) -> dict[str, set[str]]:
            if self.ids is None:  # written by the workers before they report their collection
                self.ids = {k: set(v) for k, v in json.loads(_fleet_ids_file().read_text()).items()}
            return self.ids

        def _split_scope(self, nodeid: str) -> str:
            if nodeid in self._read_ids()["fleet"]:
                return "fleet"
            # An `early` module's tests share what they start (a module fixture: a whole Prefect stack): one
            # unit, so it is started once, on one worker, rather than once on each.
            return nodeid.split("::", 1)[0] if nodeid in self._read_ids()["early"] else nodeid

        def _assign_work_unit(self, node) -> None:
            if _EARLY_LAB.started_or_failed():  # in queue order: the `scale` tests are last (modifyitems)
                return super()._assign_work_unit(node)
            ids = self._read_ids()
            # The `early` modules (whole stacks of their own) wait with them, so as not to compete with the lab
            # coming up for the CPU. The fleet's unit goes as soon as the lab is up: its first tests need no
            # deployment (`no_deployments`), and the rest wait for them in pytest_runtest_setup.
            early = {nodeid.split("::", 1)[0] for nodeid in ids["early"]}
            lab_units = [scope for scope in self.workqueue
                         if (scope == "fleet" and not _EARLY_LAB.up_or_failed()) or scope in ids["lab"] or scope in early]
            scale = [scope for scope in self.workqueue if scope in ids["scale"]]
            if len(lab_units) + len(scale) == len(self.workqueue):
                return super()._assign_work_unit(node)
            held = {scope: self.workqueue.pop(scope) for scope in lab_units + scale}
            try:
                super()._assign_work_unit(node)
            finally:  # the held ones back at the front, in their order; the `scale` ones at the end
                for scope in reversed(lab_units):
                    self.workqueue[scope] = held[scope]
                    self.workqueue.move_to_end(scope, last=False)
                for scope in scale:
                    self.workqueue[scope] = held[scope]

        def _running_early(self, node) -> bool:
            early = self._read_ids()["early"]
            return any(nodeid in early and not done
                       for tests in self.assigned_work.get(node, {}).values() for nodeid, done in tests.items())

        def _reschedule(self, node) -> None:
            # xdist hands a worker its next unit while two of its tests are still to run (and a worker holds its
            # last test until it has another or is told to stop). The fleet's unit, handed to the worker running
            # an `early` module, would wait there behind it (the HA drills' services drill runs ~5 min): that
            # worker gets any other unit instead, or waits until the other worker has taken the fleet's.
            if (not node.shutting_down and "fleet" in self.workqueue and self._running_early(node)
                    and not all(self._running_early(n) for n in self.nodes)):
                others = [scope for scope in self.workqueue if scope != "fleet" and scope not in self._read_ids()["scale"]]
                if others and self._pending_of(self.assigned_work[node]) <= 2:
                    self.workqueue.move_to_end(others[0], last=False)
                    self._assign_work_unit(node)
                elif not others:
                    self.waiting.add(node)
                return
            super()._reschedule(node)
            if "fleet" not in self.workqueue:
                for waiting in self.waiting:
                    super()._reschedule(waiting)
                self.waiting.clear()

        def mark_test_complete(self, node, item_index: int, duration: float = 0) -> None:
            super().mark_test_complete(node, item_index, duration)
            scale = self._read_ids()["scale"]
            if scale and not self.announced_only_fleet_left and not any(
                    scope not in scale for scope in self.workqueue) and all(
                    done for work in self.assigned_work.values() for scope, tests in work.items()
                    if scope not in scale and scope != "fleet" for done in tests.values()):
                self.announced_only_fleet_left = True
                _only_fleet_left_file().touch()

    return FleetScheduling(config, log)


@pytest.hookimpl(tryfirst=True)  # before xdist starts the workers, which inherit SESSION_ENV
def pytest_sessionstart(session) -> None:
    if _is_controller(session.config) and os.geteuid() == 0:
        os.environ[SESSION_ENV] = str(os.getpid())
        _AUTOGROUPS.off()
        _EARLY_LAB.start(announce=True)
    elif _is_worker(session.config) and os.geteuid() == 0:
        # A worker's collection (every test module imported: ~30 s of CPU each) runs while the lab comes up,
        # below it; pytest_runtest_setup sets each test's priority.
        os.setpriority(os.PRIO_PROCESS, 0, OTHER_LANE_NICENESS)


# CPU priority on these 2 cores, by who waits on whom. The fleet's tests are the suite's critical path, and
# many of them time what the lab's services do; the other worker's tests have minutes to spare.
# - The lab a session brings up runs above normal priority, as does registering its deployments: bringing it
#   up starts the critical path. Its services, and the runs its workers fork, inherit it.
# - Under `-n 2` the other worker's tests, and every process they start, run below normal priority: when both
#   sides want the CPU, the fleet's side gets it first.
# Niceness is per thread on Linux (tests run on a worker's main thread) and inherited; root may lower it back.
LAB_NICENESS = -5
OTHER_LANE_NICENESS = 5


class _Autogroups:
    """Linux's autogroups put each session (every setsid: supervisord, each run the prestart server forks, the
    stacks tests start) in a scheduling group of its own, and share the CPU equally between groups whatever
    their processes' niceness: the priorities above held only inside one session, and the lab's Prefect server
    took 75 s to answer beside the HA drills' stacks (~30 s alone). Off for the session, as before it after."""

    SYSCTL = Path("/proc/sys/kernel/sched_autogroup_enabled")

    def __init__(self) -> None:
        self.was: str | None = None

    def off(self) -> None:
        try:
            self.was = self.SYSCTL.read_text().strip()
            self.SYSCTL.write_text("0")
        except OSError:  # no such kernel feature, or a read-only /proc: the priorities hold as far as they can
            self.was = None

    def restore(self) -> None:
        if self.was is not None:
            self.SYSCTL.write_text(self.was)
            self.was = None


_AUTOGROUPS = _Autogroups()


@pytest.hookimpl(tryfirst=True)  # before the test's fixtures start anything
def pytest_runtest_setup(item) -> None:
    if _is_worker(item.config) and os.geteuid() == 0:
        # The `scale` tests run beside the fleet's last tests at the same priority, below the lab's.
        first = _acts_on_fleet(item) or _is_scale(item)
        os.setpriority(os.PRIO_PROCESS, 0, 0 if first else OTHER_LANE_NICENESS)
        if _needs_lab(item) and item.get_closest_marker("no_deployments") is None:
            _wait_for_the_controllers_lab("registered")


_LAB_PHASES = ("up", "registered")  # what LAB_READY says, in order


def _wait_for_the_controllers_lab(phase: str, timeout: float = 900) -> None:
    """A worker's lab: the one its controller brings up, once it is `phase` or further (see LAB_READY)."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            said = json.loads(LAB_READY.read_text())
        except (OSError, ValueError):
            said = {}
        if said.get("session") == os.environ.get(SESSION_ENV):
            if said.get("error"):
                raise RuntimeError(f"the test session could not bring the lab up: {said['error']}")
            if _LAB_PHASES.index(said["phase"]) >= _LAB_PHASES.index(phase):
                return
        time.sleep(0.5)
    raise RuntimeError(f"the lab was not {phase} after {timeout:.0f}s ({LAB_READY} never said so)")


# The lab is one instance per machine (fixed ports, one LAB_DIR): two sessions
# queue for it. Not /tmp/rblab-tests.lock: people run `flock /tmp/rblab-tests.lock
# pytest ...`, and that flock already holds that file for this very process tree.
SESSION_LOCK = Path("/var/tmp/rblab.session.lock")
SESSION_LOCK_QUIET_SECONDS = 3.0


def _say(text: str) -> None:
    """A line on the terminal now, past pytest's output capture."""
    print(f"\n[lab] {text}", file=sys.__stderr__, flush=True)


def _take_session_lock():
    """The lab for this session alone (an exclusive flock, held until `_EarlyLab.finish`); returns the file."""
    f = open(SESSION_LOCK, "a+")
    waited_since, told = time.monotonic(), False
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (fcntl.LOCK_NB if not told else 0))
            break
        except BlockingIOError:
            if time.monotonic() - waited_since < SESSION_LOCK_QUIET_SECONDS:
                time.sleep(0.2)
                continue
            f.seek(0)
            _say(f"another test session holds the lab ({SESSION_LOCK}, held by pid {f.read().strip() or '?'}): "
                 "waiting for it")
            told = True
    if told:
        _say(f"got the lab after {time.monotonic() - waited_since:.0f}s")
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


class _EarlyLab:
    """Brings the lab up, saves its blocks and registers every deployment in a thread started at collection,
    while the tests that need no lab run first; the first test that needs it waits here (under -n, a worker
    waits for LAB_READY instead). A lab this checkout already started is reused and left up; a lab
    from another checkout is refused; a lab this session started is taken down at its end."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.foreign: str | None = None
        self.was_up = True
        self.lock_file = None
        self.finished = False
        self.announce = False  # tell xdist workers through LAB_READY
        self.started_at = 0.0
        self.up = threading.Event()  # the lab is up and its blocks saved (its deployments may not be yet)

    def start(self, announce: bool = False) -> None:
        if self.thread is None:
            self.announce = announce
            if announce:
                LAB_READY.unlink(missing_ok=True)
            self.started_at = time.monotonic()
            self.thread = threading.Thread(target=self._run, name="lab-start", daemon=True)
            self.thread.start()

    def started_or_failed(self) -> bool:
        """The lab is up and its deployments registered, or bringing it up failed (or it was not asked for)."""
        return self.thread is None or not self.thread.is_alive()

    def up_or_failed(self) -> bool:
        """The lab is up and its blocks saved, its deployments perhaps still being registered; or as above."""
        return self.up.is_set() or self.started_or_failed()

    def _tell_workers(self, phase: str) -> None:
        if self.announce:
            import json

            why = self.foreign and f"refusing the running lab: {self.foreign}"
            error = why or (self.error is not None and f"{type(self.error).__name__}: {self.error}") or None
            part = LAB_READY.with_suffix(".part")  # whole or not at all: the workers poll it
            part.write_text(json.dumps({"session": str(os.getpid()), "phase": phase, "error": error}))
            part.replace(LAB_READY)

    def _run(self) -> None:
        try:
            if (why := lab_api.foreign_lab()):  # at once, rather than after queueing for it
                self.foreign = why
                return
            self.lock_file = _take_session_lock()
            if (why := lab_api.foreign_lab()):
                self.foreign = why
                return
            self.was_up = lab_api.is_up()
            if self.was_up:
                _register(self.up.set)
            else:
                if os.geteuid() == 0:  # this thread, and every process and thread it starts from here on
                    os.setpriority(os.PRIO_PROCESS, 0, LAB_NICENESS)
                # Registering needs only the Prefect server: it starts once that answers, while the rest
                # of the lab is still coming up (~30 s sooner than after it).
                registering = _Registration(self.started_at)
                try:
                    lab_api.up(log=lambda *_: None)
                except Exception:
                    registering.cancel()
                    lab_api.down(log=lambda *_: None)
                    raise
                up_s = time.monotonic() - self.started_at
                registering.wait_for_blocks()
                self.up.set()
                self._tell_workers("up")  # the fleet's `no_deployments` tests start
                registering.result()
                # The critical path's first stretch: the fleet's tests wait for it (see README, "make test").
                _say(f"lab up {up_s:.0f} s, its Prefect answering {registering.answered_s:.0f} s and every "
                     f"deployment registered {time.monotonic() - self.started_at:.0f} s into the session")
        except BaseException as exc:  # noqa: BLE001 - raised in the session by `wait`
            self.error = exc
        finally:
            self._tell_workers("registered")

    def wait(self) -> None:
        self.start()
        self.thread.join()
        if self.foreign:
            pytest.exit(f"refusing the running lab: {self.foreign}", returncode=pytest.ExitCode.TESTS_FAILED)
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Take down a lab this session brought up and release the lock; once, whoever calls first."""
        if self.thread is None or self.finished:
            return
        self.finished = True
        self.thread.join()
        try:
            if self.announce:
                LAB_READY.unlink(missing_ok=True)
                _fleet_ids_file().unlink(missing_ok=True)
                _only_fleet_left_file().unlink(missing_ok=True)
            if not self.was_up:
                _send_prefect_logs_and_events()
                lab_api.down(log=lambda *_: None)
        finally:
            if self.lock_file is not None:
                fcntl.flock(self.lock_file, fcntl.LOCK_UN)
                self.lock_file.close()


def _send_prefect_logs_and_events() -> None:
    """Send what in-process flow runs still queue for the lab's Prefect server while it is up: at exit,
    with the server gone, Prefect retried them for about a minute ("All connection attempts failed")."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=15, at_exit=False)
        except Exception:  # noqa: BLE001 - a log not sent must not fail the suite
            pass


def _register(blocks_saved=lambda: None) -> None:
    """The lab's blocks saved (then `blocks_saved()`), and every deployment registered with its schedules and
    triggers off (`register --paused`) until a test wants them: the fleet's first tests run meanwhile."""
    from deployments import register
    from lab.blocks import save_lab_blocks

    save_lab_blocks(lab_api.lab_dir())
    blocks_saved()
    register.main(paused=True)


class _Registration:
    """_register() in a thread of its own, once the lab's Prefect server being brought up answers."""

    def __init__(self, started_at: float) -> None:
        self.started_at, self.answered_s = started_at, float("nan")
        self.cancelled, self.blocks_saved = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="lab-register", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from lab.services import HttpOk

        health = HttpOk(f"{topology.PREFECT_API_URL}/health", timeout=2.0)
        try:
            while health.check() is not None:
                if self.cancelled.wait(0.5):
                    return
            self.answered_s = time.monotonic() - self.started_at
            _register(self.blocks_saved.set)
        except BaseException as exc:  # noqa: BLE001 - raised by result()
            self.error = exc

    def cancel(self) -> None:
        self.cancelled.set()
        self.thread.join(120)

    def wait_for_blocks(self) -> None:
        """Returns once the lab's blocks are saved; raises what stopped that."""
        while not self.blocks_saved.wait(0.2):
            if not self.thread.is_alive():
                self.result()
                raise RuntimeError("the registration ended before saving the lab's blocks")

    def result(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


_EARLY_LAB = _EarlyLab()


@pytest.hookimpl(trylast=True)  # after -k/-m have deselected: start the lab only for tests that will run
def pytest_collection_modifyitems(session, config, items) -> None:
    """Tests that need no lab first (each group in its own order), and the lab started behind them."""
    needs_lab = [item for item in items if _needs_lab(item)]
    # `last`: the daily report of the suite's own day, after the tests whose runs it reports.
    needs_lab.sort(key=lambda item: item.get_closest_marker("last") is not None)
    if _is_worker(config):
        # The fleet's tests first in the queue: the scheduler hands them to one worker as soon as the lab
        # is up (FleetScheduling), while the other worker runs the rest.
        # Heavy tests of their own processes (`early`) next: handed out as soon as the lab is up, on the other
        # worker, so that they are done long before the fleet's tests are.
        # The `scale` tests last of all (they run beside the fleet's last tests, after everything else).
        # The fleet's own first: those that need no deployment (they start while they are being registered).
        others = sorted((i for i in items if not _acts_on_fleet(i)),
                        key=lambda i: (_is_scale(i), i.get_closest_marker("early") is None))
        fleet_first = sorted((i for i in needs_lab if _acts_on_fleet(i)),
                             key=lambda i: i.get_closest_marker("no_deployments") is None)
        items[:] = fleet_first + others
    elif needs_lab and os.geteuid() == 0:
        items[:] = ([item for item in items if not _needs_lab(item) and not _is_scale(item)] + needs_lab
                    + [item for item in items if _is_scale(item)])
        _EARLY_LAB.start()


@pytest.fixture(scope="session")
def lab(request) -> dict:
    """The lab's status dict, held by this session alone (an exclusive lock), with its blocks saved and
    every deployment registered (see _EarlyLab; under -n, a `no_deployments` test may start before they are)."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, supervisord, sshd): run the suite as root")
    if _is_worker(request.config):
        _wait_for_the_controllers_lab("up")
        yield lab_api.status()
        return
    try:
        _EARLY_LAB.wait()
        yield lab_api.status()
    finally:
        _EARLY_LAB.finish()


@pytest.fixture(scope="session")
def prefect_api(runbooks) -> str:
    """The lab's Prefect server API URL (ends in /api)."""
    return os.environ["PREFECT_API_URL"].rstrip("/")


@pytest.fixture(scope="session")
def runbooks(lab) -> dict:
    """The lab plus its Prefect server ready to run runbooks: blocks saved, every deployment registered
    and automation switched off (by _EarlyLab), so that only the test at hand acts on the fleet (the
    end-to-end tests switch it on)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    # Sync flow runs wait ~1 s for their heartbeat thread; no env var turns it off.
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield lab


@pytest.fixture
def healthy_fleet(runbooks):
    """Every node healthy and in rotation before and after the test."""
    from tests import fleet

    fleet.restore_fleet()
    lab_api.clear_stub_records()
    yield runbooks
    fleet.restore_fleet()


@pytest.fixture
def audit_dir(tmp_path, monkeypatch):
    """An audit trail of the test's own: what guards count from starts empty."""
    d = tmp_path / "audit"
    monkeypatch.setenv("RUNBOOKS_AUDIT_DIR", str(d))
    return d


@pytest.fixture
def anvils(tmp_path):
    """`anvils(*args, block_time=None)` starts a real anvil node on a loopback
    port (not the lab's); every one started is stopped by PID afterwards."""
    from tests.processes import Anvil

    started: list[Anvil] = []

    def start(*args: str, block_time: int | None = None) -> Anvil:
        started.append(Anvil(f"anvil-{len(started)}", tmp_path, *args, block_time=block_time))
        return started[-1]

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def stubs(tmp_path):
    """The lab's Slack and PagerDuty stand-ins (lab/stubs.py), in-process on a
    free loopback port and recording to a file of the test's own; tests set
    its fault knobs (slack_errors, pagerduty_failures, delay_seconds)."""
    from lab.stubs import Stubs
    from tasks.redaction import clear_secrets

    server = Stubs.start(tmp_path / "stub-records.jsonl")
    yield server
    server.stop()
    clear_secrets()  # the blocks under test registered their tokens as secrets
