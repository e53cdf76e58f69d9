"""Encrypted backups read back only as they were written, with the right key: tampering, truncation,
reordering and mixing objects all fail. Plus one trip through a real store (`weed mini`)."""

from __future__ import annotations

import hashlib
import io
import os
import time

import pytest

from tasks import objectstore
from tasks.backups.crypto import (HEADER, TAG, DecryptingReader, EncryptingReader, EncryptionKey,
                                  encrypted_size)
from tasks.errors import BackupIntegrityError, InvalidInput
from tasks.redaction import redact
from tests.s3 import s3_server, store  # noqa: F401  (fixtures)

CHUNK = 4096
KEY_HEX = "9f" * 16 + "0123456789abcdef" * 2
KEY = EncryptionKey.from_text(KEY_HEX)


def encrypt(data: bytes, key: EncryptionKey = KEY, chunk: int = CHUNK) -> bytes:
    return EncryptingReader(io.BytesIO(data), key, chunk).read()


def decrypt(blob: bytes, key: EncryptionKey = KEY) -> bytes:
    out = io.BytesIO()
    reader = DecryptingReader(io.BytesIO(blob), key)
    while chunk := reader.read(1000):  # small reads: the reader must carry partial chunks across calls
        out.write(chunk)
    return out.getvalue()


def chunks_of(blob: bytes, chunk: int = CHUNK) -> tuple[bytes, list[bytes]]:
    body = blob[HEADER.size:]
    return blob[:HEADER.size], [body[i:i + chunk + TAG] for i in range(0, len(body), chunk + TAG)]


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK, 3 * CHUNK + 17])
def test_encryption_round_trips_any_size(size):
    data = os.urandom(size)
    blob = encrypt(data)
    assert len(blob) == encrypted_size(size, CHUNK)
    assert size < 16 or data not in blob  # a byte or two may turn up in random ciphertext by chance
    assert decrypt(blob) == data


def test_the_readers_report_the_plaintext_size_and_sha256():
    data = os.urandom(5 * CHUNK + 3)
    enc = EncryptingReader(io.BytesIO(data), KEY, CHUNK)
    blob = enc.read()
    dec = DecryptingReader(io.BytesIO(blob), KEY)
    assert dec.read() == data
    for reader in (enc, dec):
        assert (reader.plaintext_size, reader.plaintext_sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_two_encryptions_of_the_same_data_differ():
    data = b"same" * 5000
    assert encrypt(data) != encrypt(data)  # a fresh salt, so a fresh object key, each time


def test_a_flipped_bit_anywhere_is_detected():
    blob = bytearray(encrypt(os.urandom(3 * CHUNK)))
    for where in (HEADER.size - 1, HEADER.size + 5, HEADER.size + CHUNK + TAG + 100, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[where] ^= 0x01
        with pytest.raises(BackupIntegrityError):
            decrypt(bytes(tampered))


def test_a_tampered_chunk_size_in_the_header_is_detected():
    header, chunks = chunks_of(encrypt(os.urandom(4 * CHUNK)))
    forged = header[:7] + (2 * CHUNK).to_bytes(4, "big") + header[11:]
    with pytest.raises(BackupIntegrityError):
        decrypt(forged + b"".join(chunks))


def test_truncation_at_a_chunk_boundary_is_detected():
    header, chunks = chunks_of(encrypt(os.urandom(3 * CHUNK + 10)))
    assert len(chunks) == 4
    for keep in (0, 1, 3):
        with pytest.raises(BackupIntegrityError, match="truncated|authentication"):
            decrypt(header + b"".join(chunks[:keep]))
    with pytest.raises(BackupIntegrityError):
        decrypt(header[:20])


def test_truncation_inside_a_chunk_and_bytes_appended_after_the_end_are_detected():
    blob = encrypt(os.urandom(2 * CHUNK))
    with pytest.raises(BackupIntegrityError):
        decrypt(blob[:-5])
    with pytest.raises(BackupIntegrityError):
        decrypt(blob + b"more")
    header, chunks = chunks_of(blob)
    with pytest.raises(BackupIntegrityError):
        decrypt(blob + chunks[-1])  # a valid final chunk repeated


def test_reordered_or_dropped_chunks_are_detected():
    header, chunks = chunks_of(encrypt(os.urandom(4 * CHUNK)))
    with pytest.raises(BackupIntegrityError, match="chunk 1 "):
        decrypt(header + chunks[0] + chunks[2] + chunks[1] + chunks[3])
    with pytest.raises(BackupIntegrityError, match="chunk 1 "):
        decrypt(header + chunks[0] + chunks[2] + chunks[3])


def test_a_chunk_swapped_in_from_another_object_is_detected():
    data = os.urandom(3 * CHUNK)
    header_a, a = chunks_of(encrypt(data))
    header_b, b = chunks_of(encrypt(data))  # same key, same plaintext, other object
    with pytest.raises(BackupIntegrityError, match="chunk 1 "):
        decrypt(header_a + a[0] + b[1] + a[2])
    with pytest.raises(BackupIntegrityError, match="chunk 0 "):
        decrypt(header_b + b"".join(a))  # another object's header on these chunks


def test_the_wrong_key_is_named_as_such():
    other = EncryptionKey(os.urandom(32))
    with pytest.raises(BackupIntegrityError, match=f"encrypted with key {KEY.key_id}, the key given is {other.key_id}"):
        decrypt(encrypt(b"data"), other)


def test_a_stream_that_is_not_encrypted_is_refused():
    with pytest.raises(BackupIntegrityError, match="not an encrypted backup stream"):
        decrypt(b"plain tar bytes" * 10)


def test_keys_are_read_from_hex_or_base64_and_never_shown():
    raw = bytes(range(32))
    import base64

    for text in (raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
                 "  " + raw.hex() + "\n"):
        assert EncryptionKey.from_text(text).key_id == EncryptionKey(raw).key_id
    key = EncryptionKey.from_text(KEY_HEX)
    assert KEY_HEX not in repr(key) + str(key) and key.key_id in repr(key)
    assert redact(f"key was {KEY_HEX}") == "key was ***"  # loading registered it for redaction
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(key)


@pytest.mark.parametrize("text", ["", "abcd", "zz" * 32, "ab" * 31, "ab" * 33, "QUJD", "not base64 at all!!"])
def test_keys_of_the_wrong_length_or_form_are_refused_without_echoing_them(text):
    with pytest.raises(InvalidInput, match="32 bytes") as err:
        EncryptionKey.from_text(text)
    assert not text or text not in str(err.value)


def test_an_encrypted_stream_goes_through_the_store_and_back(store):
    # The composition the backups use: source -> EncryptingReader -> multipart upload,
    # then object -> DecryptingReader, each in constant memory.
    part, size = 5 * 1024 * 1024, 11 * 1024 * 1024 + 7
    data = os.urandom(size)
    enc = EncryptingReader(io.BytesIO(data), KEY)
    started = time.monotonic()
    stored = objectstore.upload(store, "enc/archive.tar.zst.enc", enc, part_size=part)
    assert stored.size == encrypted_size(size)
    assert enc.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    with objectstore.open_object(store, "enc/archive.tar.zst.enc") as body:
        dec = DecryptingReader(body, KEY)
        out = b"".join(iter(lambda: dec.read(1 << 20), b""))
    assert out == data and dec.plaintext_sha256 == enc.plaintext_sha256
    assert time.monotonic() - started < 10
