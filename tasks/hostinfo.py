"""Facts about a host that runbooks decide on (today: disk usage of a datadir).

`df -P` (POSIX format) is used because its columns are fixed and one
filesystem is always one line, whatever the device name's length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.errors import InvalidInput, ServiceError

if TYPE_CHECKING:  # pragma: no cover
    from tasks.services import CommandRunner

_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*$")


@dataclass(frozen=True)
class DiskUsage:
    """Usage of the filesystem holding a path, in KiB.

    percent is used / (used + available), as df computes it: space reserved
    for root does not count as available to a node running as a user.
    """

    filesystem: str
    total_kib: int
    used_kib: int
    avail_kib: int
    percent: float
    mount: str

    @property
    def avail_bytes(self) -> int:
        return self.avail_kib * 1024


def disk_usage_argv(path: str) -> list[str]:
    if not isinstance(path, str) or not _PATH.match(path):
        raise InvalidInput(f"path {path!r} is not a plain absolute path")
    return ["df", "-P", "-k", "--", path]


def parse_df(output: str) -> DiskUsage:
    """Parse `df -P -k PATH` output (a header line and one filesystem line)."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    if len(lines) < 2 or not lines[0].startswith("Filesystem"):
        raise ServiceError(f"unexpected df output: {output.strip()[:300]!r}")
    fields = lines[1].split()
    # Find the capacity column ("47%") from the left of the numbers: the
    # filesystem and mount point may contain spaces, the numbers cannot.
    for i in range(3, len(fields)):
        if fields[i].endswith("%") and all(f.isdigit() for f in fields[i - 3 : i]):
            total, used, avail = (int(f) for f in fields[i - 3 : i])
            filesystem = " ".join(fields[: i - 3])
            mount = " ".join(fields[i + 1 :])
            break
    else:
        raise ServiceError(f"unexpected df line: {lines[1]!r}")
    denominator = used + avail
    percent = round(100.0 * used / denominator, 2) if denominator else 0.0
    return DiskUsage(filesystem, total, used, avail, percent, mount)


def disk_usage(runner: "CommandRunner", path: str, timeout: float | None = 30.0) -> DiskUsage:
    """Disk usage of the filesystem holding `path` on the runner's host."""
    r = runner.run(disk_usage_argv(path), timeout=timeout, check=True)
    return parse_df(r.stdout)
