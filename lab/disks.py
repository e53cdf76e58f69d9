"""Each lab host's node storage as a real, size-limited filesystem, and the fault that fills it.

A host's `data/` (the parent of its nodes' datadirs, as /var/lib/<client> is on a real host) is
an ext4 filesystem in a sparse image file, loop-mounted before any process starts: `df` on the
host, the exporter's disk facts, the DiskFilling alert and disk-prune all meet a disk that really
fills up and really refuses writes when full, not a directory on the machine's big disk.

`fill(datadir, percent)` writes what fills a real node's disk and is safe to clean: rotated,
compressed logs in the datadir's `logs/` (Erigon writes its logs there), backdated so they count
as old, and ETL scratch in `temp/` (Erigon's disposable directory). Contents are random, so
nothing compresses them away. It never writes into the database or the segments.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

HOST_DISK_MIB = 512  # the fleet's datadirs are ~30 MiB each; a restore stages a second copy beside one
FILL_PREFIX = "rblab-fill"  # names of what fill() writes, so heal() removes exactly those
CHUNK = 4 * 1024 * 1024
OLD_LOG_DAYS = 10  # older than any sane "keep N days of logs" setting


def image(root: Path, host: str) -> Path:
    return root / "disks" / f"{host}.img"


def create(root: Path, host: str, mount_point: Path, size_mib: int = HOST_DISK_MIB) -> None:
    """A fresh ext4 of `size_mib` mounted at `mount_point` (no reserved blocks: df's use% is the truth)."""
    img = image(root, host)
    img.parent.mkdir(parents=True, exist_ok=True)
    mount_point.mkdir(parents=True, exist_ok=True)
    with open(img, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-L", f"rblab-{host}", str(img)])
    # -o loop picks a free loop device and detaches it again on umount (autoclear).
    _run(["mount", "-o", "loop,noatime", str(img), str(mount_point)])
    # A fresh ext4 has lost+found; nothing of the lab's lives there.


def mounted_under(root: Path) -> list[str]:
    """Mount points below `root`, deepest first (the order to unmount them in)."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_all(root: Path) -> list[str]:
    """Unmount every lab filesystem under `root` (after its processes are gone); returns what was unmounted."""
    done = []
    for point in mounted_under(root):
        if subprocess.run(["umount", point], capture_output=True, timeout=30).returncode != 0:
            # Something still holds it open: detach it now, the kernel frees it when the last user goes.
            _run(["umount", "-l", point])
        done.append(point)
    return done


def usage(path: Path) -> tuple[int, int]:
    """(used, size) bytes of the filesystem holding `path`, as df counts them."""
    st = os.statvfs(path)
    size = st.f_blocks * st.f_frsize
    return size - st.f_bfree * st.f_frsize, size


def fill(datadir: Path, percent: float, owner: tuple[int, int] | None = None) -> list[str]:
    """Write old compressed logs and ETL scratch into `datadir` until its filesystem is `percent` full.

    Returns the paths written. Refuses a percent the filesystem is already past, or one that would
    leave no room for the node to write at all (over 99%).
    """
    if not 0 < percent <= 99:
        raise ValueError(f"fill-disk percent must be in (0, 99], got {percent}")
    used, size = usage(datadir)
    want = int(size * percent / 100) - used
    if want <= 0:
        raise ValueError(f"{datadir}'s filesystem is already {100 * used / size:.0f}% full (asked {percent}%)")
    logs, temp = datadir / "logs", datadir / "temp"
    written: list[str] = []
    # Two thirds old logs (safe at any time), one third temp/ (safe only with the node stopped).
    parts = [(logs / f"{FILL_PREFIX}.{i}.log.gz", want // 6) for i in range(1, 5)]
    parts += [(temp / f"{FILL_PREFIX}-etl-{i}.tmp", want // 6) for i in range(1, 3)]
    parts[-1] = (parts[-1][0], want - sum(n for _, n in parts[:-1]))
    old = time.time() - OLD_LOG_DAYS * 86400
    for path, n in parts:
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as out:
            left = n
            while left > 0:
                chunk = min(CHUNK, left)
                out.write(os.urandom(chunk))
                left -= chunk
        if path.parent == logs:
            os.utime(path, (old, old))
        if owner:
            os.chown(path, *owner)
            os.chown(path.parent, *owner)
        written.append(str(path))
    return written


def unfill(datadir: Path) -> int:
    """Remove what fill() wrote that is still there; returns how many files."""
    removed = 0
    for folder in (datadir / "logs", datadir / "temp"):
        for path in folder.glob(f"{FILL_PREFIX}*") if folder.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
