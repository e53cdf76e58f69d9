"""The audit trail: what an operator reads after a runbook ran.

Real files, real processes: concurrent writers are separate Python
processes appending to the same day file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from tasks import audit as audit_mod
from tasks.audit import (
    AuditRecord,
    actions_of,
    entries_about,
    entry_time,
    guard_entries,
    is_about,
    read_entries,
    render_markdown,
)
from tasks.audit import postgres
from tasks.audit.chain import verify
from tests.postgres import postgres_server  # noqa: F401  (pytest fixture)
from tasks.errors import AuditError
from tasks.redaction import clear_secrets, redact, register_secret
from tasks.vocabulary import ActionKind, EntryKind, Outcome

ROOT = Path(__file__).resolve().parents[1]


class Trail:
    """Where a test's records went: the day files (the default) or PostgreSQL (RUNBOOKS_AUDIT_DSN), read and
    tampered with directly, beneath the code under test."""

    def __init__(self, directory: Path, dsn: str | None) -> None:
        self.dir, self.dsn = directory, dsn

    def _rows(self) -> list[tuple[int, bytes]]:
        with psycopg.connect(self.dsn) as conn:
            return [(i, line.encode()) for i, line in conn.execute("SELECT id, line FROM audit_records ORDER BY id")]

    def lines(self) -> list[bytes]:
        """Every stored record, oldest first, exactly as stored (no newline)."""
        if self.dsn:
            return [line for _, line in self._rows()]
        return [ln for f in sorted(self.dir.glob("audit-*.jsonl")) for ln in f.read_bytes().splitlines()]

    def text(self) -> str:
        return "\n".join(ln.decode() for ln in self.lines())

    def place(self, index: int) -> str:
        """How verify names the record at `index` (its file and line, or its row)."""
        if self.dsn:
            return f"audit_records id {self._rows()[index][0]}"
        for f in sorted(self.dir.glob("audit-*.jsonl")):
            n = len(f.read_bytes().splitlines())
            if index < n:
                return f"{f.name} line {index + 1}"
            index -= n
        raise IndexError(index)

    def rewrite(self, index: int, line: bytes | None) -> None:
        """Replace the record at `index` with `line`, or remove it (None)."""
        if self.dsn:
            row = self._rows()[index][0]
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                if line is None:
                    conn.execute("DELETE FROM audit_records WHERE id = %s", (row,))
                else:
                    conn.execute("UPDATE audit_records SET line = %s WHERE id = %s", (line.decode(), row))
            return
        for f in sorted(self.dir.glob("audit-*.jsonl")):
            lines = f.read_bytes().splitlines(keepends=True)
            if index < len(lines):
                lines[index:index + 1] = [] if line is None else [line.rstrip(b"\n") + b"\n"]
                f.write_bytes(b"".join(lines))
                return
            index -= len(lines)
        raise IndexError(index)

    def set_head(self, value: str) -> None:
        if self.dsn:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute("UPDATE audit_chain SET head = %s", (value,))
        else:
            (self.dir / ".chain").write_text(value)

    def verify(self):
        return postgres.verify() if self.dsn else verify(self.dir)


@pytest.fixture(params=["files", "postgres"])
def trail(request, tmp_path, monkeypatch):
    """Each test runs against both stores: the day files, and PostgreSQL as several workers share it."""
    d = tmp_path / "audit"
    monkeypatch.setenv("RUNBOOKS_AUDIT_DIR", str(d))
    dsn = None
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        dsn = server.dsn(server.create_database())
        monkeypatch.setenv(postgres.AUDIT_DSN_ENV, dsn)
    else:
        monkeypatch.delenv(postgres.AUDIT_DSN_ENV, raising=False)
    yield Trail(d, dsn)
    clear_secrets()


@pytest.fixture
def audit_dir(tmp_path, monkeypatch):
    """The day files' own tests (which files are opened, a line broken by a crash): the default store only."""
    d = tmp_path / "audit"
    monkeypatch.setenv("RUNBOOKS_AUDIT_DIR", str(d))
    monkeypatch.delenv(postgres.AUDIT_DSN_ENV, raising=False)
    yield d
    clear_secrets()


def a_full_run(run_id: str = "run-1") -> AuditRecord:
    a = AuditRecord(run_id, "restart_stalled_node", node="eth-a")
    a.started({"kind": "alert", "alert": "NodeStalled"}, {"node": "eth-a", "dry_run": False})
    a.plan(["drain eth-a from be_rpc", "restart erigon", "wait until synced", "put back in rotation"])
    a.state("before", {"head": 100, "lag": 42, "service": {"state": "RUNNING"}})
    a.guard("lease", "acquired lease on eth-a", holder="run-1")
    a.action("rbtest@10.0.0.5:22", "supervisorctl restart erigon", 0, 1.234, "erigon: stopped\nerigon: started\n", "")
    a.action("rbtest@10.0.0.5:22", "false", 1, 0.01, "", "boom | with pipe\n")
    a.state("after", {"head": 142, "lag": 0, "service": {"state": "RUNNING"}})
    a.note("back in rotation", backend="be_rpc")
    a.outcome("succeeded", "eth-a caught up in 12 s and is back in rotation")
    return a


def test_a_run_is_written_as_one_json_line_per_entry_in_todays_file(trail):
    a = a_full_run()
    lines = trail.lines()
    entries = [json.loads(ln) for ln in lines]
    assert [e["kind"] for e in entries] == [
        "started", "plan", "state", "guard", "action", "action", "state", "note", "outcome",
    ]
    assert [e["seq"] for e in entries] == list(range(1, 10))
    first = entries[0]
    assert set(first) == {"ts", "seq", "run_id", "flow", "node", "kind", "data", "prev"}
    assert first["run_id"] == "run-1" and first["flow"] == "restart_stalled_node" and first["node"] == "eth-a"
    assert datetime.fromisoformat(first["ts"]).tzinfo is not None
    action = entries[4]["data"]
    assert action["command"] == "supervisorctl restart erigon"
    assert action["exit_code"] == 0 and action["duration_s"] == 1.234
    assert a.entries() == entries


def test_entries_are_only_ever_appended(trail):
    a = AuditRecord("run-append", "f")
    a.note("one")
    a.note("two")
    before = trail.lines()
    a.note("three")
    after = trail.lines()
    assert after[:2] == before and len(after) == 3


def test_a_run_continued_in_another_process_continues_its_sequence(trail):
    a = AuditRecord("run-retry", "f")
    a.started("manual", {})
    a.note("attempt 1")
    code = (
        "from tasks.audit import AuditRecord\n"
        "a = AuditRecord('run-retry', 'f')\n"
        "a.note('attempt 2')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=30, env=os.environ.copy())
    assert [e["seq"] for e in read_entries(run_id="run-retry")] == [1, 2, 3]


WRITER = """
import sys
from tasks.audit import AuditRecord
rid, n = sys.argv[1], int(sys.argv[2])
a = AuditRecord(rid, "concurrency")
blob = rid * 2000  # ~10 KB per line: far beyond PIPE_BUF, so only the lock keeps lines whole
for i in range(n):
    a.note("entry", i=i, blob=blob)
"""


def test_concurrent_writers_in_several_processes_produce_intact_lines(trail):
    writers, per_writer = 4, 150
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, f"w{k}", str(per_writer)], cwd=ROOT, env=os.environ.copy())
        for k in range(writers)
    ]
    try:
        for p in procs:
            assert p.wait(timeout=60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    raw = trail.lines()
    assert len(raw) == writers * per_writer
    entries = [json.loads(ln) for ln in raw]  # every line parses: nothing interleaved
    for k in range(writers):
        mine = [e for e in entries if e["run_id"] == f"w{k}"]
        assert [e["data"]["i"] for e in mine] == list(range(per_writer))
        assert [e["seq"] for e in mine] == list(range(1, per_writer + 1))
        assert all(e["data"]["blob"] == f"w{k}" * 2000 for e in mine)
    # Four processes, one chain: every record follows the one written before it.
    report = trail.verify()
    assert report.ok and report.records == writers * per_writer and not report.notes, report


def chained_trail(trail: Trail) -> list[bytes]:
    """Two days of a few runs' records, written as runbooks write them; the stored lines."""
    for day, run in ((datetime(2026, 12, 5, 23, 59, tzinfo=timezone.utc), "r1"),
                     (datetime(2026, 12, 6, 0, 1, tzinfo=timezone.utc), "r2")):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("tasks.audit.record._utcnow", lambda day=day: day)
            a = AuditRecord(run, "node-recovery", node="eth-a")
            a.started(trigger={"kind": "manual"}, parameters={"node": "eth-a"})
            a.action("h1", "supervisorctl restart eth-a", 0, 0.4, action=ActionKind.restart)
            a.outcome(Outcome.succeeded, "recovered")
    return trail.lines()


def verify_cli() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tasks.audit", "verify"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=os.environ.copy())


def test_the_chain_holds_across_days_and_the_cli_says_so(trail):
    lines = chained_trail(trail)
    report = trail.verify()
    assert report.ok and report.records == 6 and report.unchained == 0, report
    assert json.loads(lines[0])["prev"] == "0" * 64  # the chain starts here
    # Each record carries the hash of the one before, across the day boundary (files: two day files).
    assert all(json.loads(b)["prev"] == hashlib.sha256(a).hexdigest() for a, b in zip(lines, lines[1:]))
    if not trail.dsn:
        assert len(list(trail.dir.glob("audit-*.jsonl"))) == 2
    done = verify_cli()
    assert done.returncode == 0 and "6 chained records checked" in done.stdout, done.stdout


@pytest.mark.parametrize("index", range(6))
def test_editing_any_byte_of_any_record_fails_verify_naming_it(trail, index):
    lines = chained_trail(trail)
    victim = json.loads(lines[index])
    # One byte: an exit code, the kind of edit that hides a failure; else a space no parser minds.
    changed = lines[index].replace(b'"exit_code":0', b'"exit_code":1') if b'"exit_code":0' in lines[index] \
        else lines[index].replace(b'"seq":', b'"seq": ', 1)
    assert changed != lines[index] and len(changed) - len(lines[index]) <= 1
    place = trail.place(index)
    trail.rewrite(index, changed)
    report = trail.verify()
    named = f"{place} (run {victim['run_id']} seq {victim['seq']}"
    assert not report.ok and any(named in p for p in report.problems), report.problems
    done = verify_cli()
    assert done.returncode == 1 and named in done.stdout


def test_a_removed_record_and_a_cut_off_end_are_found(trail):
    lines = chained_trail(trail)
    first = trail.place(0)
    trail.rewrite(1, None)  # the restart is gone
    assert any(f"{first} (run r1 seq 1" in p for p in trail.verify().problems)
    trail.rewrite(len(lines) - 2, None)  # and the newest outcome cut off
    assert any("is not the one last written" in p for p in trail.verify().problems)


def test_a_writer_that_died_between_its_two_writes_is_a_note_not_tampering(trail):
    lines = chained_trail(trail)
    trail.set_head(hashlib.sha256(lines[-2]).hexdigest())  # as if the head never moved to the last record
    AuditRecord("r3", "node-recovery").note("the next run")
    report = trail.verify()
    assert report.ok and len(report.notes) == 1 and "a writer died" in report.notes[0], report


def test_reading_filters_by_run_node_kind_and_time(audit_dir):
    a_full_run("run-1")
    other = AuditRecord("run-2", "prune", node="eth-b")
    other.started("schedule", {})
    other.outcome("noop", "nothing to prune")
    # An old day file (and a line broken by a crash) must not disturb reading.
    audit_dir.joinpath("audit-2020-01-01.jsonl").write_text(
        json.dumps({"ts": "2020-01-01T00:00:00+00:00", "seq": 1, "run_id": "old", "flow": "f",
                    "node": "eth-a", "kind": "note", "data": {"text": "old"}}) + "\n{\"ts\": \"2020-01-0"
    )
    assert {e["run_id"] for e in read_entries()} == {"run-1", "run-2", "old"}
    assert {e["run_id"] for e in read_entries(node="eth-a")} == {"run-1", "old"}
    assert [e["kind"] for e in read_entries(run_id="run-2")] == ["started", "outcome"]
    assert len(read_entries(kind="action")) == 2
    assert len(read_entries(kind=["started", "outcome"])) == 4
    recent = read_entries(since=datetime.now(timezone.utc) - timedelta(hours=1))
    assert "old" not in {e["run_id"] for e in recent} and len(recent) == 11
    assert read_entries(since=datetime.now(timezone.utc) + timedelta(minutes=1)) == []
    # naive datetimes are UTC
    assert len(read_entries(since=datetime(2019, 12, 31))) == 12


def test_day_files_before_since_are_not_even_opened(audit_dir):
    audit_dir.mkdir(parents=True)
    audit_dir.joinpath("audit-2020-01-01.jsonl").write_text("")
    audit_dir.joinpath("audit-2020-01-02.jsonl").write_text("")
    audit_dir.joinpath("notes.txt").write_text("")
    files = audit_mod.day_files(since=datetime(2020, 1, 2, 12, tzinfo=timezone.utc))
    assert [f.name for f in files] == ["audit-2020-01-02.jsonl"]


def test_registered_secrets_and_secret_named_fields_never_reach_the_file(trail):
    register_secret("xoxb-1111-2222-abcdefSECRET")
    register_secret("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAE\n-----END OPENSSH PRIVATE KEY-----\n")
    a = AuditRecord("run-secret", "f")
    a.started(
        {"by": "alert", "headers": {"Authorization": "Bearer abc.def.ghi"}},
        {"slack_token": "plain-token-value", "Password": "pw-value-123", "nested": [{"private_key": "k" * 40}],
         "url": "https://admin:hunter2hunter2@lb.internal:8404/stats", "routing-key": "R0UTING"},
    )
    a.action("h", "curl -H 'x: xoxb-1111-2222-abcdefSECRET' https://x", 0, 0.1,
             "token echoed: xoxb-1111-2222-abcdefSECRET", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAE")
    a.note("the key is xoxb-1111-2222-abcdefSECRET", extra=("xoxb-1111-2222-abcdefSECRET",))
    raw = trail.text()
    for leaked in ("xoxb-1111-2222-abcdefSECRET", "abc.def.ghi", "plain-token-value", "pw-value-123", "kkkk",
                   "hunter2hunter2", "R0UTING", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAE"):
        assert leaked not in raw
    started = read_entries(run_id="run-secret", kind="started")[0]["data"]
    assert started["parameters"]["slack_token"] == "***"
    assert started["parameters"]["nested"] == [{"private_key": "***"}]
    assert started["parameters"]["url"] == "https://admin:***@lb.internal:8404/stats"
    assert started["trigger"]["headers"]["Authorization"] == "***"
    action = read_entries(run_id="run-secret", kind="action")[0]["data"]
    assert action["command"] == "curl -H 'x: ***' https://x"
    assert action["stdout_tail"] == "token echoed: ***"


def test_redact_is_usable_on_its_own(trail):
    register_secret("abcdef123456")
    assert redact({"msg": "x abcdef123456 y", "api_key": None, "list": ["abcdef123456"]}) == {
        "msg": "x *** y", "api_key": None, "list": ["***"],
    }
    register_secret("abc")  # too short to mask safely: ignored
    assert redact("abc") == "abc"


def test_markdown_tells_the_story_of_one_run(trail):
    md = render_markdown(a_full_run().entries())
    assert md.startswith("# restart_stalled_node on `eth-a`")
    assert "**outcome: SUCCEEDED**" in md
    assert "NodeStalled" in md  # trigger
    assert "| dry_run | false |" in md
    assert "1. drain eth-a from be_rpc" in md and "4. put back in rotation" in md
    assert "`supervisorctl restart erigon` | 0 | 1.234 |" in md
    assert "boom \\| with pipe" in md  # stderr of the failed command, table-safe
    assert "| head | 100 | 142 **≠** |" in md
    assert "| service.state | RUNNING | RUNNING |" in md
    assert "**lease**: acquired lease on eth-a" in md
    assert render_markdown([]) == "_No audit entries._\n"


def test_cli_shows_a_run_and_tails_the_trail(trail):
    a_full_run("run-cli")
    env = os.environ.copy()
    show = subprocess.run([sys.executable, "-m", "tasks.audit", "show", "run-cli"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert show.returncode == 0, show.stderr
    assert "# restart_stalled_node" in show.stdout and "## Actions" in show.stdout
    tail = subprocess.run([sys.executable, "-m", "tasks.audit", "tail", "-n", "3"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert len(lines) == 3 and "outcome: succeeded" in lines[-1]
    missing = subprocess.run([sys.executable, "-m", "tasks.audit", "show", "nope"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "no audit entries" in missing.stderr


def test_bad_input_and_unwritable_trail_are_refused(trail, tmp_path):
    a = AuditRecord("run-x", "f")
    with pytest.raises(ValueError, match="expected one of succeeded, failed"):
        a.outcome("done", "not a status")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown audit entry kind"):
        a.write("actoin", {})
    with pytest.raises(ValueError, match="unknown action kind"):
        a.action("h", "reboot", 0, 0.1, action="reboot")
    with pytest.raises(ValueError):
        read_entries(kind="actoin")  # a misspelt kind is refused, not silently empty
    assert read_entries(run_id="run-x") == []  # nothing refused was written
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    broken = AuditRecord("run-y", "f", directory=blocker / "audit")
    with pytest.raises(AuditError, match="could not write the audit entry"):
        broken.note("hello")


def test_kinds_and_outcomes_are_written_as_their_plain_strings(trail):
    a = AuditRecord("run-typed", "node-recovery", node="eth-a")
    a.write(EntryKind.note, {"text": "typed"})
    a.action("h", "supervisorctl restart erigon", 0, 0.5, action=ActionKind.restart, step="restart", automatic=True)
    a.action("haproxy:127.0.0.1:1", "set weight be/s 7", 0, 0.01, action="set-weight")
    a.action("h", "uptime", 0, 0.01)
    a.outcome(Outcome.succeeded, "done")
    raw = [json.loads(ln) for ln in trail.lines()]
    assert [e["kind"] for e in raw] == ["note", "action", "action", "action", "outcome"]
    restart = raw[1]["data"]
    # The typed kind and the step tags are both there: the restart budget reads either.
    assert (restart["action"], restart["step"], restart["automatic"]) == ("restart", "restart", True)
    assert raw[2]["data"]["action"] == "set-weight"
    assert "action" not in raw[3]["data"]
    assert raw[4]["data"]["status"] == "succeeded" and type(raw[4]["data"]["status"]) is str


def test_a_dry_run_tells_what_it_would_have_done(trail):
    a = AuditRecord("run-dry", "node-recovery", node="eth-a")
    a.started({"kind": "manual"}, {"node": "eth-a", "dry_run": True})
    a.plan(["drain eth-a", "restart erigon"])
    a.would("haproxy", "be_rpc/eth-a", "set server be_rpc/eth-a state drain", action=ActionKind.drain)
    a.would("ssh", "rbtest@10.0.0.5:22", "supervisorctl restart erigon", action="restart", step="restart")
    a.approval(approver="alice", approved=True, comment="go")
    a.outcome("noop", "dry run: nothing was done")
    would = read_entries(run_id="run-dry", kind=EntryKind.would)
    assert [e["data"]["action"] for e in would] == ["drain", "restart"]
    assert would[1]["data"] == {"system": "ssh", "target": "rbtest@10.0.0.5:22",
                                "description": "supervisorctl restart erigon", "action": "restart", "step": "restart"}
    assert read_entries(run_id="run-dry", kind="approval")[0]["data"]["approver"] == "alice"
    md = render_markdown(a.entries())
    assert "## Dry run: would do" in md and "## Actions" not in md
    assert "| 1 |" in md and "| haproxy | be_rpc/eth-a | set server be_rpc/eth-a state drain | drain |" in md
    assert "| ssh | rbtest@10.0.0.5:22 | supervisorctl restart erigon | restart |" in md
    assert "## Approvals" in md and "alice" in md


def test_guards_questions_are_answered_from_the_whole_trail(trail):
    old = datetime(2020, 1, 1, tzinfo=timezone.utc)
    # Weeks-old circuit state (an old day file, old rows); a contains= read still finds it.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tasks.audit.record._utcnow", lambda: old)
        AuditRecord("r0", "node-recovery", node="eth-a").guard("circuit-open", "budget spent")
    fleet = AuditRecord("run-fleet", "fleet-health")  # a run about no single node
    fleet.guard("circuit-open", "spent", node="eth-b")
    fleet.guard("chain-incident", "whole chain stalled", chain="eth")
    rec = AuditRecord("run-rec", "node-recovery", node="eth-a")
    rec.action("h", "supervisorctl restart erigon", 0, 0.5, action="restart", automatic=True)
    rec.action("h", "supervisorctl restart erigon-b", 0, 0.5, action="restart", node="eth-b")
    rec.action("h", "uptime", 0, 0.01, action="command")
    rec.note("eth-b mentioned only in text")

    assert [e["run_id"] for e in read_entries(contains='"circuit-')] == ["r0", "run-fleet"]
    assert read_entries(contains=['"circuit-', '"eth-b"'])[0]["run_id"] == "run-fleet"
    assert read_entries(contains="no such text") == []
    assert [e["data"]["name"] for e in guard_entries("circuit-open", node="eth-a")] == ["circuit-open"]
    assert guard_entries("circuit-open", node="eth-b")[0]["run_id"] == "run-fleet"
    assert guard_entries("circuit-open", node="eth-a", since=old + timedelta(days=1)) == []
    assert [e["data"]["command"] for e in actions_of(ActionKind.restart, node="eth-a")] == ["supervisorctl restart erigon"]
    assert [e["data"]["command"] for e in actions_of("restart", node="eth-b")] == ["supervisorctl restart erigon-b"]
    assert len(actions_of("restart")) == 2
    # data.node names the node an entry is about, even on another node's run.
    about_b = entries_about("eth-b")
    assert [e["kind"] for e in about_b] == ["guard", "action"]
    assert all(is_about(e, "eth-b") for e in about_b)
    assert [e["kind"] for e in entries_about("eth-a", kind="action")] == ["action", "action"]
    assert entry_time(about_b[0]) is not None and entry_time({"ts": "garbage"}) is None
    until = entry_time(about_b[0])
    assert [e["run_id"] for e in read_entries(contains='"circuit-', until=until)] == ["r0", "run-fleet"]
    assert [e["run_id"] for e in read_entries(contains='"circuit-', until=until - timedelta(seconds=1))] == ["r0"]
