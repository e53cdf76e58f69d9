"""Which files of a client's datadir never change once written (stored once, reused by later
backups) and which are not backed up at all: the client's `Layout`, matched by datadir-relative globs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

RESTORE_SUFFIX = ".rb-restore-part"  # a file being restored; renamed into place once whole


def _glob(pattern: str) -> re.Pattern:
    """A glob relative to the datadir: `*` stays in one name, `**/` spans directories, a pattern
    without '/' matches a name at any depth, a trailing '/' only directories; a match covers
    everything below it too."""
    dir_only, body = pattern.endswith("/"), pattern.rstrip("/")
    out, i = "" if "/" in body else "(?:.*/)?", 0
    while i < len(body):
        if body.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif body.startswith("**", i):
            out, i = out + ".*", i + 2
        elif body[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif body[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(body[i]), i + 1
    return re.compile(out + ("/.*" if dir_only else "(?:/.*)?"), re.S)


@dataclass(frozen=True)
class Layout:
    """Which files of a client's datadir never change once written, and which are not backed up."""

    immutable: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    _immutable: tuple[re.Pattern, ...] = field(init=False, repr=False, compare=False)
    _exclude: tuple[re.Pattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_immutable", tuple(map(_glob, self.immutable)))
        # Our own restore leftovers are never part of a datadir, whatever the layout says.
        object.__setattr__(self, "_exclude", tuple(map(_glob, self.exclude + (f"*{RESTORE_SUFFIX}",))))

    def excludes(self, path: str) -> bool:
        return any(p.fullmatch(path) for p in self._exclude)

    def is_immutable(self, path: str) -> bool:
        return any(p.fullmatch(path) for p in self._immutable)


_ERIGON_SEGMENTS = tuple(f"snapshots/**/*.{ext}" for ext in ("seg", "idx", "kv", "kvi", "v", "vi", "ef", "efi", "bt"))
LAYOUTS: dict[str, Layout] = {
    # Erigon writes segments under a temporary name and renames them, so a *.seg is final;
    # temp/ is its ETL scratch, logs/ its log files (--log.dir.path defaults there) and mdbx.lck
    # a lock file mdbx rebuilds.
    "erigon": Layout(_ERIGON_SEGMENTS, ("*.tmp", "temp/", "logs/", "*.lck")),
    # The lab's client: segments and their indexes as Erigon keeps them (lab/datadir.py);
    # home/ is anvil's scratch history, sync-held a lab fault marker; logs/ and temp/ as Erigon's
    # (what `lab fault NODE fill-disk` writes).
    "anvil": Layout(("snapshots/*.seg", "snapshots/*.idx"), ("home/**", "sync-held", "logs/", "temp/")),
}
DEFAULT_LAYOUT = Layout()  # every file mutable: correct for any client, just without reuse


def layout_for(client: str) -> Layout:
    return LAYOUTS.get(str(getattr(client, "value", client)), DEFAULT_LAYOUT)
