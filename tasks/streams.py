"""Readable-stream adapters shared by the backup pipelines (database dumps, datadirs).

Backups are chains of readers (the host's output -> encryption -> the
uploader; the store -> decryption -> a host's input), so whatever must be
learnt about the bytes on the way (their sha256, how many went by) is
learnt by a reader in the chain, never by keeping them.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
import time
from collections.abc import Callable
from typing import IO

PROGRESS_EVERY = 1.0  # seconds between progress reports of a long transfer


class Meter:
    """Bytes done of the total, told to `progress` at most once a second (from any thread)."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self.done, self.total, self._progress, self._last = 0, total, progress, 0.0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self._progress is None or now - self._last < PROGRESS_EVERY:
                return
            self._last = now
        self._progress(self.done, self.total)

    def reader(self, source: IO[bytes]) -> IO[bytes]:
        return _Counted(source, self.add)


class _Counted(io.RawIOBase):
    def __init__(self, source: IO[bytes], on_read: Callable[[int], None]) -> None:
        self._source, self._on_read = source, on_read

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._source.read(len(b))
        b[:len(data)] = data
        self._on_read(len(data))
        return len(data)


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


class ReadAhead(io.RawIOBase):
    """Reads `source` on a thread, up to `depth` chunks ahead of the reader: e.g. a download that
    keeps arriving while the previous megabytes are decrypted and sent to a host.

    Whatever the source raises is raised to the reader. Closing (or leaving the `with`) stops the
    thread after its current read; the source's own timeouts bound that read.
    """

    def __init__(self, source: IO[bytes], chunk: int = 1024 * 1024, depth: int = 8) -> None:
        super().__init__()
        self._source, self._chunk = source, chunk
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._buf, self._pos, self._eof = b"", 0, False
        self._thread = threading.Thread(target=self._fill, name="read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        try:
            while self._put(data := self._source.read(self._chunk)) and data:
                pass
        except BaseException as exc:  # handed to the reader, which raises it
            self._put(exc)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._pos >= len(self._buf):
            if self._eof:
                return 0
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            self._buf, self._pos, self._eof = item, 0, not item
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = memoryview(self._buf)[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        super().close()
