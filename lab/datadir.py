"""A node datadir with the shape of a real client's, for the lab and the benchmarks.

Erigon keeps its history in `snapshots/`: segment files (`.seg`) and their
indexes, written once and never changed, next to a small mutable database.
The lab's anvil keeps its mutable state in `state.json`; this adds the
immutable part so backups meet both kinds:

    DATADIR/state.json                                  anvil's (mutable)
    DATADIR/snapshots/v1-000000-000500-headers.seg      immutable, padded
    DATADIR/snapshots/v1-000000-000500-headers.idx      ...

Contents are pseudo-random from a seed (incompressible, as compressed
segments are) and the same for the same (seed, index): two nodes of one chain
hold identical segments, as real ones do. Writing is streamed in 16 MiB
chunks, so a 2 GiB datadir costs no memory.

    python -m lab.datadir DIR --total-mib 200 --seed lab-eth   (the benchmarks)
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

KINDS = ("headers", "bodies", "transactions", "receipts")
CHUNK = 16 * 1024 * 1024
BLOCKS_PER_SEGMENT = 500


def segment_names(count: int) -> list[str]:
    """Erigon's naming: v1-<from>-<to>-<kind>.seg, from/to in thousands of blocks."""
    names = []
    for i in range(count):
        span, kind = divmod(i, len(KINDS))
        start = span * BLOCKS_PER_SEGMENT
        names.append(f"v1-{start:06d}-{start + BLOCKS_PER_SEGMENT:06d}-{KINDS[kind]}.seg")
    return names


def _write_random(path: Path, size: int, seed: str) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as out:
        left = size
        while left > 0:
            n = min(CHUNK, left)
            out.write(rng.randbytes(n))
            left -= n


def write_segments(datadir: Path, count: int, size: int, seed: str) -> list[Path]:
    """`count` immutable segment files of `size` bytes each (plus a small index for each) under DATADIR/snapshots.

    Files already there with the right size are left alone: they are immutable.
    """
    folder = datadir / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in segment_names(count):
        for path, n in ((folder / name, size), (folder / name.replace(".seg", ".idx"), max(4096, size // 64))):
            if not (path.exists() and path.stat().st_size == n):
                _write_random(path, n, f"{seed}/{path.name}")
            written.append(path)
    return written


def make_datadir(datadir: Path, total_bytes: int, seed: str, state_bytes: int = 4 * 1024 * 1024,
                 segment_bytes: int = 64 * 1024 * 1024) -> Path:
    """A datadir of about `total_bytes`: a mutable state file and enough segments to fill the rest."""
    datadir.mkdir(parents=True, exist_ok=True)
    _write_random(datadir / "state.json", state_bytes, f"{seed}/state")
    rest = max(0, total_bytes - state_bytes)
    per_segment = segment_bytes + max(4096, segment_bytes // 64)
    count = max(1, round(rest / per_segment))
    write_segments(datadir, count, segment_bytes, seed)
    return datadir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datadir", type=Path)
    p.add_argument("--total-mib", type=int, required=True)
    p.add_argument("--seed", default="bench")
    args = p.parse_args(argv)
    make_datadir(args.datadir, args.total_mib * 1024 * 1024, args.seed)
    size = sum(f.stat().st_size for f in args.datadir.rglob("*") if f.is_file())
    print(f"{args.datadir}: {size / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
