"""Client-side encryption of backup streams: AES-256-GCM in framed chunks, as readable streams.

A backup leaves the worker encrypted, so the store (and whoever reaches it)
holds ciphertext only. The format is the STREAM construction that age and
Tink use, so a stream of any size is encrypted and checked chunk by chunk in
constant memory, and nothing unauthenticated is ever handed on:

    header   "RBKENC" | version (1 byte) | chunk size (4 bytes, big-endian)
             | key id (8 bytes) | salt (16 random bytes)            = 35 bytes
    chunks   AES-256-GCM(object key, nonce = chunk index (12 bytes),
                         plaintext chunk, aad = header | index (8 bytes) | final (1 byte))
             each chunk_size + 16 bytes, the last one 16..chunk_size + 16

The object key is HKDF-SHA256(backup key, salt): every object has its own
key, so counter nonces never repeat under one key and a chunk moved from
another object fails. The index in the AAD catches reordering and dropped
chunks; the final flag catches truncation at a chunk boundary (the last
chunk present was sealed as "not final") and data appended after the end.
The header is in every chunk's AAD, so a changed chunk size or salt fails too.
The key id (an HMAC of the key, not the key) tells "wrong key" apart from
"tampered" and is what manifests record.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import os
import re
import struct
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tasks.errors import BackupIntegrityError, InvalidInput
from tasks.redaction import register_secret

MAGIC = b"RBKENC"
VERSION = 1
HEADER = struct.Struct(">6sBI8s16s")  # magic, version, chunk size, key id, salt
TAG = 16
DEFAULT_CHUNK = 1024 * 1024
# A header chooses the chunk size the reader buffers: refuse absurd ones.
MIN_CHUNK, MAX_CHUNK = 4096, 16 * 1024 * 1024
_HKDF_INFO = b"node-runbooks backup stream v1"


class EncryptionKey:
    """The 32-byte backup key. Its repr and str show only its id, never the key."""

    __slots__ = ("_key", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise InvalidInput(f"the backup key must be 32 bytes (AES-256), not {len(key)}")
        self._key = key
        self.key_id = hmac.new(key, b"node-runbooks key id", hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_text(cls, text: str) -> EncryptionKey:
        """Read a key written as 64 hex digits or as base64 (e.g. `openssl rand -base64 32`)."""
        text = (text or "").strip()
        register_secret(text)
        if re.fullmatch(r"[0-9a-fA-F]{64}", text):
            return cls(bytes.fromhex(text))
        try:
            raw = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise InvalidInput(
                f"the backup key is not 32 bytes as 64 hex digits or base64 (got {len(text)} characters); "
                "make one with `openssl rand -hex 32`")
        return cls(raw)

    def object_key(self, salt: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_HKDF_INFO).derive(self._key)

    def __repr__(self) -> str:
        return f"EncryptionKey(id={self.key_id})"

    __str__ = __repr__

    def __reduce__(self):  # never pickled into a Prefect result or a cache
        raise TypeError("an EncryptionKey is not serialisable; pass the Secret block's name instead")


def _read_full(source: IO[bytes], size: int) -> bytes:
    """Up to `size` bytes; fewer only at the end of the stream (pipes and sockets return short reads)."""
    parts, got = [], 0
    while got < size:
        chunk = source.read(size - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


class _ChunkReader(io.RawIOBase):
    """A readable stream that hands out one transformed chunk at a time."""

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__()
        self._source = source
        self._out, self._pos, self._done = b"", 0, False
        self._plain = hashlib.sha256()
        self.plaintext_size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._pos >= len(self._out):
            if self._done:
                return 0
            self._out, self._pos = self._next_chunk(), 0
        n = min(len(b), len(self._out) - self._pos)
        b[:n] = memoryview(self._out)[self._pos : self._pos + n]  # no intermediate copy of the slice
        self._pos += n
        return n

    def _next_chunk(self) -> bytes:
        raise NotImplementedError

    @property
    def plaintext_sha256(self) -> str:
        """sha256 of the plaintext read so far: the whole of it once the stream is at its end."""
        return self._plain.hexdigest()


class EncryptingReader(_ChunkReader):
    """Reads `source` (plaintext) and yields the encrypted stream: header, then sealed chunks."""

    def __init__(self, source: IO[bytes], key: EncryptionKey, chunk_size: int = DEFAULT_CHUNK) -> None:
        super().__init__(source)
        if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
            raise InvalidInput(f"chunk size {chunk_size} is outside {MIN_CHUNK}..{MAX_CHUNK}")
        salt = os.urandom(16)
        self._chunk = chunk_size
        self._header = HEADER.pack(MAGIC, VERSION, chunk_size, bytes.fromhex(key.key_id), salt)
        self._aead = AESGCM(key.object_key(salt))
        self._index = 0
        self._ahead: bytes | None = None  # the next plaintext chunk, read to know whether this one is last
        self._out = self._header

    def _next_chunk(self) -> bytes:
        chunk = self._ahead if self._ahead is not None else _read_full(self._source, self._chunk)
        # A short chunk is the last; a full one is last only if nothing follows it.
        self._ahead = _read_full(self._source, self._chunk) if len(chunk) == self._chunk else b""
        final = not self._ahead
        self._plain.update(chunk)
        self.plaintext_size += len(chunk)
        sealed = self._aead.encrypt(_nonce(self._index), chunk, _aad(self._header, self._index, final))
        self._index += 1
        self._done = final
        return sealed


class DecryptingReader(_ChunkReader):
    """Reads an encrypted stream and yields its plaintext, chunk by authenticated chunk.

    Raises BackupIntegrityError at the first chunk that fails: nothing past the
    last authenticated chunk is ever returned.
    """

    def __init__(self, source: IO[bytes], key: EncryptionKey) -> None:
        super().__init__(source)
        self._key = key
        self._header: bytes | None = None
        self._index = 0
        self._ahead: bytes | None = None

    def _start(self) -> None:
        header = _read_full(self._source, HEADER.size)
        if len(header) < HEADER.size or header[:6] != MAGIC:
            raise BackupIntegrityError("not an encrypted backup stream (no RBKENC header): wrong object or truncated")
        _, version, chunk, key_id, salt = HEADER.unpack(header)
        if version != VERSION:
            raise BackupIntegrityError(f"encrypted stream format version {version} is not known to this code ({VERSION})")
        if key_id.hex() != self._key.key_id:
            raise BackupIntegrityError(
                f"this backup was encrypted with key {key_id.hex()}, the key given is {self._key.key_id}: "
                "load the key this backup was made with")
        if not MIN_CHUNK <= chunk <= MAX_CHUNK:
            raise BackupIntegrityError(f"encrypted stream header has an impossible chunk size {chunk}: tampered")
        self._header, self._wire = header, chunk + TAG
        self._aead = AESGCM(self._key.object_key(salt))

    def _next_chunk(self) -> bytes:
        if self._header is None:
            self._start()
        sealed = self._ahead if self._ahead is not None else _read_full(self._source, self._wire)
        self._ahead = _read_full(self._source, self._wire) if len(sealed) == self._wire else b""
        final = not self._ahead
        if len(sealed) < TAG:
            raise BackupIntegrityError(f"encrypted stream ends inside chunk {self._index}: truncated")
        try:
            chunk = self._aead.decrypt(_nonce(self._index), sealed, _aad(self._header, self._index, final))
        except InvalidTag:
            raise BackupIntegrityError(
                f"chunk {self._index} of the encrypted stream failed authentication: the object was altered, "
                "truncated, reordered or mixed with another one; do not restore from it") from None
        self._plain.update(chunk)
        self.plaintext_size += len(chunk)
        self._index += 1
        self._done = final
        return chunk


def encrypted_size(plaintext_size: int, chunk_size: int = DEFAULT_CHUNK) -> int:
    """The ciphertext size for a plaintext size (every stream has at least one, possibly empty, chunk)."""
    chunks = max(1, -(-plaintext_size // chunk_size))
    return HEADER.size + plaintext_size + chunks * TAG
