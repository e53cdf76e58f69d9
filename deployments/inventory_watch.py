"""Files for long-running services (the inventory, the alert routes): reloaded when they change.

The bridge and the exporter run for days while the inventory is edited in
git and rolled out; they pick up a new file on their next request or sweep,
without a restart. An edit that does not validate is logged and the last good
inventory kept: a typo must not make every node "unknown" at once.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, TypeVar

from inventory import Inventory, InventoryError, inventory_path, load_inventory

log = logging.getLogger("runbooks.inventory")
T = TypeVar("T")


class WatchedFile:
    """`current()` is the last good load of a file, reloaded when the file changed.

    Loading at construction raises `error`: a service must not start without
    a valid file. Later, an edit that does not validate is logged and the last
    good version kept.
    """

    def __init__(self, path: str | os.PathLike, load: Callable[[Path], T], error: type[Exception], what: str) -> None:
        self.path, self._load, self._error, self._what = Path(path), load, error, what
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._value: T = load(self.path)

    def _file_stamp(self) -> tuple | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        # The inode too: `mv new inventory.yaml` within one mtime tick is still a change.
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> T:
        stamp = self._file_stamp()
        with self._lock:
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._value = self._load(self.path)
                    log.info("%s reloaded from %s", self._what, self.path)
                except self._error as exc:
                    log.error("%s changed but is invalid; keeping the previous one: %s", self._what, exc)
            return self._value


class WatchedInventory(WatchedFile):
    def __init__(self, path: str | os.PathLike | None = None) -> None:
        super().__init__(inventory_path(path), load_inventory, InventoryError, "inventory")


__all__ = ["WatchedFile", "WatchedInventory", "InventoryError"]
