"""Peak memory of one streamed upload, measured in a fresh interpreter.

A pytest worker's heap carries every earlier test's allocations and
fragmentation, so its peak RSS says as much about them as about the upload
(CI once saw +42 MiB there where a clean process shows +30 MiB). Run as
`python -m tests.stream_memory` with the store's fields as JSON on stdin;
prints {"growth_mib", "size", "sha256", "elapsed"} as JSON.
"""

from __future__ import annotations

import json
import sys
import time

from blocks import ObjectStore
from tasks import objectstore
from tests.test_objectstore import MiB, Pipe


def _hwm_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/self/status")


def main() -> None:
    request = json.load(sys.stdin)
    store, part, size = ObjectStore(**request["store"]), request["part"], request["size"]
    objectstore.upload(store, "warm/up", Pipe(part + 1), part_size=part)  # imports, client, connections
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    before = _hwm_kib()
    started = time.monotonic()
    stored = objectstore.upload(store, "big/archive", Pipe(size), part_size=part)
    print(json.dumps({"growth_mib": (_hwm_kib() - before) / 1024, "size": stored.size,
                      "sha256": stored.sha256, "elapsed": time.monotonic() - started, "part_mib": part / MiB}))


if __name__ == "__main__":
    main()
