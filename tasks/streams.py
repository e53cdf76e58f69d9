"""Readable-stream adapters shared by the backup pipelines (database dumps, datadirs).

Backups are chains of readers (the host's output -> encryption -> the
uploader; the store -> decryption -> a host's input), so whatever must be
learnt about the bytes on the way (their sha256, how many went by) is
learnt by a reader in the chain, never by keeping them.
"""

from __future__ import annotations

import hashlib
import io
from typing import IO


class HashingReader(io.RawIOBase):
    """Passes a stream through, hashing what it read: e.g. a stored object's sha256, checked on the way."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source, self.sha256, self.size = source, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._source.read(len(b))
        self.sha256.update(data)
        self.size += len(data)
        b[:len(data)] = data
        return len(data)
