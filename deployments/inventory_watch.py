"""The inventory for long-running services: reloaded when its file changes.

The bridge and the exporter run for days while the inventory is edited in
git and rolled out; they pick up a new file on their next request or sweep,
without a restart. An edit that does not validate is logged and the last good
inventory kept: a typo must not make every node "unknown" at once.
"""

from __future__ import annotations

import logging
import os
import threading

from inventory import Inventory, InventoryError, inventory_path, load_inventory

log = logging.getLogger("runbooks.inventory")


class WatchedInventory:
    """`current()` is the last good inventory, reloaded when the file changed.

    Loading at construction raises InventoryError: a service must not start
    without a valid inventory.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = inventory_path(path)
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._inventory: Inventory = load_inventory(self.path)

    def _file_stamp(self) -> tuple | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        # The inode too: `mv new inventory.yaml` within one mtime tick is still a change.
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> Inventory:
        stamp = self._file_stamp()
        with self._lock:
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._inventory = load_inventory(self.path)
                    log.info("inventory reloaded from %s: %d nodes", self.path, len(self._inventory.nodes))
                except InventoryError as exc:
                    log.error("inventory changed but is invalid; keeping the previous one: %s", exc)
            return self._inventory


__all__ = ["WatchedInventory", "InventoryError"]
