"""The inventory's backup store and its encryption key, as every backup runbook opens them."""

from __future__ import annotations

from blocks import ObjectStore
from inventory import Inventory
from tasks.backups.crypto import EncryptionKey
from tasks.errors import InvalidInput
from tasks.redaction import register_secret


def open_store(inventory: Inventory) -> tuple[ObjectStore, EncryptionKey]:
    """The ObjectStore block `backups.store_block` names and its key, both registered for redaction.

    Backups are always encrypted: a store without a key is refused.
    """
    name = inventory.backups.store_block
    if not name:
        raise InvalidInput("the inventory has no backups.store_block: name the ObjectStore block backups go to")
    store = ObjectStore.load(name)
    register_secret(store.secret_access_key.get_secret_value())
    text = store.encryption_key_text()
    if not text:
        raise InvalidInput(f"object store block {name!r} has no encryption key: backups are always encrypted")
    register_secret(text)
    return store, EncryptionKey.from_text(text)
