"""What may be deleted from a node host to free disk space, found, sized and removed safely.

The seeds ran `disk-cleaner.sh` from cron: find and rm, trusted because nobody looked. Here every
clean-up is a `Cleanup` the plan lists path by path with its size, so a dry run shows exactly what
a real run deletes, and the delete command is built only from that list, re-checked against the
rules below before it is sent:

- a path to delete lies inside one of the node's *clean-up directories* (its `logs/` and the
  client's disposable directories), never `..`, never a symlink (find's `-type f` only), and never
  a file the client's layout calls immutable (segments, tasks/backups/layout.py);
- old logs are only rotated, compressed or numbered files (`*.gz`, `*.log.1`...) older than the
  policy's `log_keep_days`, so the log a client is writing now is never touched;
- a client's disposable directories (Erigon's `temp`, `txpool`, `nodes`) are emptied only while
  the node is stopped: the runbook drains and stops it first (`needs_stop`).

Clients' facts are from their own docs and eth-docker (REFERENCE.md): the free-space floors below
are eth-docker's `prune` triggers. Host-level clean-ups (journald, container images) are run only
where the host has them and never with a flag that reaches volumes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tasks.backups.layout import layout_for
from tasks.errors import InvalidInput

GIB = 1024**3

# The client's directories that hold nothing the node cannot rebuild, removable only while it is
# stopped. Erigon: ETL scratch (up to ~100 GB, cleaned at start anyway), the txpool's database and
# the peer database. The lab's anvil keeps its fill-disk scratch in temp/ as Erigon does.
DISPOSABLE_DIRS: dict[str, tuple[str, ...]] = {
    "erigon": ("temp", "txpool", "nodes"),
    "anvil": ("temp",),
}
LOG_DIR = "logs"  # under the datadir: Erigon's --log.dir.path default; the lab's nodes as well
# Rotated or compressed logs: logrotate's numbered and compressed copies, never the live `*.log`.
OLD_LOG_NAMES = ("*.gz", "*.zst", "*.xz", "*.bz2", "*.log.[0-9]*", "*.[0-9]")

# eth-docker's free-space floors (GiB): below them a client must be pruned or resynced.
FREE_FLOOR_GIB: dict[str, float] = {"nethermind": 300, "geth": 100, "op-geth": 100, "bor": 100, "erigon": 50,
                                    "nitro": 50, "anvil": 0}
DEFAULT_FREE_FLOOR_GIB = 50.0

_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+@:=,-]*$")  # what we will put on an rm command line
RM_BATCH = 200  # paths per rm command: well under any ARG_MAX, few round trips


def free_floor_bytes(client: str, override_gib: float | None = None) -> int:
    gib = override_gib if override_gib is not None else FREE_FLOOR_GIB.get(client, DEFAULT_FREE_FLOOR_GIB)
    return int(gib * GIB)


@dataclass(frozen=True)
class Candidate:
    path: str
    size: int


@dataclass
class Cleanup:
    """One clean-up step: what it removes, how many bytes that should free, whether the node must be down."""

    name: str  # old-logs, disposable, journal, container-images
    host: str
    node: str | None  # None: a host-level step
    description: str
    needs_stop: bool = False
    paths: list[Candidate] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)  # host-level steps: argv lists
    expected_bytes: int | None = None  # None: unknown until run (journald, images)
    skipped: list[str] = field(default_factory=list)  # names refused as unsafe, kept out of `paths`
    heavy: HeavyPrune | None = None  # the client's own prune or resync (approval, backup first)

    @property
    def planned_bytes(self) -> int:
        return self.expected_bytes if self.expected_bytes is not None else sum(c.size for c in self.paths)

    def summary(self) -> str:
        where = self.node or self.host
        size = f"{self.planned_bytes / 1024**2:.1f} MiB" if self.expected_bytes is not None or self.paths else "unknown size"
        stop = ", node stopped (drained first)" if self.needs_stop else ""
        if self.heavy:
            frees = f"about {self.planned_bytes / 1024**2:.1f} MiB" if self.expected_bytes is not None else "frees an unknown size"
            return (f"{self.name} on {where}: {self.description}; {frees}; "
                    "a verified backup of the datadir first, node drained and stopped until it has resynced")
        return f"{self.name} on {where}: {self.description}; {len(self.paths)} files, {size}{stop}"


def cleanup_dirs(client: str, datadir: str) -> dict[str, str]:
    """step name -> the directory it empties or thins, for this client's datadir."""
    dirs = {"old-logs": f"{datadir.rstrip('/')}/{LOG_DIR}"}
    for d in DISPOSABLE_DIRS.get(client, ()):
        dirs[f"disposable:{d}"] = f"{datadir.rstrip('/')}/{d}"
    return dirs


def list_argv(directory: str, old_logs_days: int | None) -> list[str]:
    """A read-only listing of regular files (size, path; NUL-separated) under `directory` on its own
    filesystem; with `old_logs_days`, only rotated/compressed logs older than that many days.
    A missing directory lists nothing (find's error is silenced, the exit code kept at 0)."""
    _check_path(directory)
    names: list[str] = []
    if old_logs_days is not None:
        for pattern in OLD_LOG_NAMES:
            names += ["-o", "-name", pattern] if names else ["-name", pattern]
        names = ["(", *names, ")", "-mtime", f"+{int(old_logs_days)}"]
    find = ["find", directory, "-xdev", "-type", "f", *names, "-printf", "%s\\t%p\\0"]
    # `[ -d ]` first: a node without the directory has nothing to clean, not an error.
    return ["sh", "-c", '[ -d "$1" ] || exit 0; exec find "$@"', "sh", *find[1:]]


def parse_listing(output: str) -> tuple[list[Candidate], list[str]]:
    """(candidates, names refused as unsafe to put on a command line) from list_argv's output."""
    found, refused = [], []
    for entry in output.split("\0"):
        if not entry.strip():
            continue
        size, _, path = entry.partition("\t")
        if not size.isdigit() or not _SAFE_PATH.match(path) or "/../" in path or path.endswith("/.."):
            refused.append(path or entry)
            continue
        found.append(Candidate(path, int(size)))
    return sorted(found, key=lambda c: c.path), refused


def allowed(client: str, datadir: str, path: str) -> bool:
    """May this path be deleted? Inside a clean-up directory of the datadir and not an immutable file."""
    root = datadir.rstrip("/") + "/"
    if not path.startswith(root) or not _SAFE_PATH.match(path) or "/.." in path:
        return False
    relative = path[len(root):]
    top = relative.split("/", 1)[0]
    if top not in (LOG_DIR, *DISPOSABLE_DIRS.get(client, ())) or "/" not in relative:
        return False
    return not layout_for(client).is_immutable(relative)


def delete_argvs(client: str, datadir: str, paths: list[Candidate]) -> list[list[str]]:
    """`rm -f --` commands for exactly these paths, in batches; refuses any path `allowed` refuses."""
    bad = [c.path for c in paths if not allowed(client, datadir, c.path)]
    if bad:
        raise InvalidInput(f"refusing to delete {len(bad)} path(s) outside {datadir}'s clean-up directories or "
                           f"immutable: {', '.join(bad[:5])}")
    names = [c.path for c in paths]
    return [["rm", "-f", "--", *names[i:i + RM_BATCH]] for i in range(0, len(names), RM_BATCH)]


# -- heavy pruning: the client's own offline prune, or its database resynced ---------------------

@dataclass(frozen=True)
class HeavyPrune:
    """What frees a client's database itself. Hours of downtime on a real node (geth's prune-state can
    exceed 12 h; an Erigon resync from its segments 6-8 h), so disk-prune runs it only when asked
    (`heavy`), with approval, one node at a time, after a fresh verified backup of the datadir."""

    description: str
    remove: tuple[str, ...] = ()  # datadir-relative paths the client rebuilds (its database)
    command: tuple[str, ...] = ()  # an offline prune command; "{datadir}" is the node's datadir

    def argv(self, datadir: str) -> list[str]:
        _check_path(datadir)
        if self.command:
            return [a.replace("{datadir}", datadir) for a in self.command]
        targets = [f"{datadir.rstrip('/')}/{r}" for r in self.remove]
        return ["rm", "-rf", "--", *targets]


HEAVY: dict[str, HeavyPrune] = {
    "geth": HeavyPrune("geth snapshot prune-state (offline; hash scheme, needs ~40 GB free)",
                       command=("geth", "snapshot", "prune-state", "--datadir", "{datadir}")),
    "op-geth": HeavyPrune("geth snapshot prune-state (offline)",
                          command=("geth", "snapshot", "prune-state", "--datadir", "{datadir}")),
    # Erigon rebuilds chaindata from its immutable segments (kept: snapshots/) and its peers.
    "erigon": HeavyPrune("resync: chaindata removed, rebuilt from the segment files", remove=("chaindata",)),
    # The lab's client: its state re-synced from the chain, as Erigon's chaindata is.
    "anvil": HeavyPrune("resync: the state removed, rebuilt from the chain", remove=("state.json",)),
}


# -- host-level clean-ups: only where the host has the tool ------------------------------------

# Reports which of journald and docker the host runs (one line each, "yes"/"no").
PROBE_ARGV = ["sh", "-c", '[ -d /run/systemd/system ] && command -v journalctl >/dev/null && echo journal=yes '
              '|| echo journal=no; command -v docker >/dev/null && docker info >/dev/null 2>&1 && echo docker=yes '
              '|| echo docker=no']


def parse_probe(output: str) -> dict[str, bool]:
    return {k: v == "yes" for k, _, v in (line.partition("=") for line in output.split()) if k}


def journal_argvs(keep_days: int) -> list[list[str]]:
    """Rotate the active journal files, then drop archived ones older than `keep_days`."""
    return [["journalctl", "--rotate"], ["journalctl", f"--vacuum-time={int(keep_days)}d"]]


def container_argvs(keep_days: int) -> list[list[str]]:
    """Dangling images and build cache older than `keep_days`. Never `--volumes` (a stopped node's volume
    counts as unused) and never `-a` (a stopped client's image would go)."""
    until = f"until={int(keep_days) * 24}h"
    return [["docker", "image", "prune", "-f", "--filter", until], ["docker", "builder", "prune", "-f", "--filter", until]]


def _check_path(path: str) -> None:
    if not _SAFE_PATH.match(path) or "/.." in path:
        raise InvalidInput(f"path {path!r} is not a plain absolute path")
