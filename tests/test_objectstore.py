"""Backups reach the object store whole or not at all: a real SeaweedFS (`weed mini`), no lab."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from tasks import objectstore
from tasks.errors import ChecksumMismatch, InvalidInput, ObjectStoreError
from tests.s3 import SECRET_KEY, s3_server, store  # noqa: F401  (fixtures)

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part: keeps multi-part tests small


class Pipe(io.RawIOBase):
    """A non-seekable stream of unknown size (like tar | zstd over SSH): short reads, no seek, no len.

    Bytes are a fixed random block repeated with the offset mixed in, so
    nothing is held but one block; `fail_after` raises mid-stream.
    """

    def __init__(self, size: int, fail_after: int | None = None, exc: BaseException | None = None) -> None:
        self.size, self.pos, self.fail_after = size, 0, fail_after
        self.exc = exc or RuntimeError("the host's tar died")
        self.block = hashlib.sha256(b"seed").digest() * (MiB // 32)
        self.largest_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise self.exc
        n = min(len(b), self.size - self.pos, 256 * 1024)  # a pipe hands over at most 256 KiB at a time
        start = self.pos % MiB
        chunk = (self.block[start:] + self.block[:start])[:n]
        b[:n] = chunk
        self.pos += n
        self.largest_read = max(self.largest_read, len(b))
        return n


def pipe_bytes(size: int) -> bytes:
    return b"".join(iter(lambda p=Pipe(size): p.read(MiB), b""))


def expected_sha256(size: int) -> str:
    digest, p = hashlib.sha256(), Pipe(size)
    while chunk := p.read(MiB):
        digest.update(chunk)
    return digest.hexdigest()


def test_a_stream_of_three_parts_round_trips_with_its_sha256(store, s3_server):
    size = 2 * PART + 12345
    stored = objectstore.upload(store, "backups/a/archive.tar.zst", Pipe(size), part_size=PART)
    assert (stored.size, stored.sha256) == (size, expected_sha256(size))

    raw = s3_server.raw_client()
    full = f"{store.prefix}/backups/a/archive.tar.zst"
    head = raw.head_object(Bucket="test-backups", Key=full, ChecksumMode="ENABLED", PartNumber=1)
    assert head["PartsCount"] == 3, "three parts were sent, not one buffered PUT"
    # The store kept our per-part sha256: the composite is sha256 over the parts' digests.
    data = pipe_bytes(size)
    parts = [data[i:i + PART] for i in range(0, size, PART)]
    composite = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
    whole = raw.head_object(Bucket="test-backups", Key=full, ChecksumMode="ENABLED")
    assert whole["ChecksumSHA256"].split("-")[0] == base64.b64encode(composite).decode()

    out = io.BytesIO()
    got = objectstore.download(store, "backups/a/archive.tar.zst", out, expected_sha256=stored.sha256)
    assert got.size == size and hashlib.sha256(out.getvalue()).hexdigest() == stored.sha256
    assert [o.key for o in objectstore.list_objects(store, "backups")] == ["backups/a/archive.tar.zst"]
    assert objectstore.head(store, "backups/a/archive.tar.zst").size == size
    assert objectstore.list_open_multipart_uploads(store) == []


def test_a_small_stream_is_one_put_and_an_empty_one_is_stored_too(store, s3_server):
    stored = objectstore.upload(store, "cfg/small", io.BytesIO(b"hello"), part_size=PART)
    assert stored.sha256 == hashlib.sha256(b"hello").hexdigest()
    head = s3_server.raw_client().head_object(Bucket="test-backups", Key=f"{store.prefix}/cfg/small",
                                              ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(b"hello").digest()).decode()
    assert "PartsCount" not in head
    assert objectstore.upload(store, "cfg/empty", io.BytesIO(b"")).size == 0
    assert objectstore.head(store, "cfg/empty").size == 0


def test_a_download_that_does_not_match_the_expected_sha256_is_refused(store):
    objectstore.upload(store, "x/obj", io.BytesIO(b"payload"))
    with pytest.raises(ChecksumMismatch, match="not what was backed up"):
        objectstore.download(store, "x/obj", io.BytesIO(), expected_sha256="0" * 64)


def test_a_part_whose_checksum_does_not_match_is_refused_by_the_store(store, monkeypatch):
    real = objectstore._sha256_b64
    calls = []

    def corrupt_second_part(data):
        calls.append(len(data))
        digest = real(data)
        return real(b"not these bytes") if len(calls) == 2 else digest

    monkeypatch.setattr(objectstore, "_sha256_b64", corrupt_second_part)
    with pytest.raises(ChecksumMismatch, match="BadDigest|part 2"):
        objectstore.upload(store, "bad/archive", Pipe(3 * PART), part_size=PART)
    assert len(calls) >= 2
    assert objectstore.list_open_multipart_uploads(store) == []
    assert objectstore.head(store, "bad/archive") is None


def test_a_single_put_with_a_wrong_checksum_is_refused_by_the_store(store, monkeypatch):
    monkeypatch.setattr(objectstore, "_sha256_b64", lambda data: base64.b64encode(hashlib.sha256(b"x").digest()).decode())
    with pytest.raises(ChecksumMismatch):
        objectstore.upload(store, "bad/small", io.BytesIO(b"payload"))
    assert objectstore.head(store, "bad/small") is None


@pytest.mark.parametrize("exc", [RuntimeError("the host's tar died"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_an_upload_interrupted_mid_stream_leaves_no_upload_and_no_object(store, exc):
    source = Pipe(10 * PART, fail_after=2 * PART + 1000, exc=exc)
    with pytest.raises(type(exc)):
        objectstore.upload(store, "cut/archive", source, part_size=PART)
    assert source.pos > PART, "the upload was under way (parts sent) when the source failed"
    assert objectstore.list_open_multipart_uploads(store) == []
    assert objectstore.head(store, "cut/archive") is None
    assert objectstore.list_objects(store) == []


def test_an_open_multipart_upload_is_listed_and_can_be_aborted(store, s3_server):
    # What a crashed worker leaves behind, and what a cleanup finds.
    raw = s3_server.raw_client()
    raw.create_multipart_upload(Bucket="test-backups", Key=f"{store.prefix}/crashed/archive")
    [left] = objectstore.list_open_multipart_uploads(store, "crashed")
    assert left.key == "crashed/archive"
    objectstore.abort_multipart_upload(store, left)
    assert objectstore.list_open_multipart_uploads(store) == []


def test_a_wrong_secret_key_is_refused_and_the_error_does_not_show_it(s3_server, store):
    wrong = s3_server.store(prefix=store.prefix, secret_access_key="not-the-secret-key-000")
    with pytest.raises(ObjectStoreError, match="SignatureDoesNotMatch") as err:
        objectstore.upload(wrong, "denied/archive", Pipe(2 * PART), part_size=PART)
    assert "secret access key" in str(err.value)
    assert "not-the-secret-key-000" not in str(err.value) + repr(wrong)
    with pytest.raises(ObjectStoreError, match="SignatureDoesNotMatch"):
        objectstore.upload(wrong, "denied/small", io.BytesIO(b"x"))
    with pytest.raises(ObjectStoreError):
        objectstore.list_objects(wrong)
    assert objectstore.list_objects(store) == []
    assert SECRET_KEY not in repr(store) and SECRET_KEY not in str(store.model_dump())


def test_an_unreachable_store_fails_fast_with_a_clear_error(s3_server):
    from tests.s3 import _ports

    dead = s3_server.store(endpoint_url=f"http://127.0.0.1:{_ports(1)[0]}", max_attempts=1)
    started = time.monotonic()
    with pytest.raises(ObjectStoreError, match="is the store reachable"):
        objectstore.head(dead, "anything")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a/../b", "a//b", "a/", "sp ace", "a\nb", "é", "", "a/./b..c"])
def test_unsafe_keys_are_refused_before_anything_is_sent(store, key):
    with pytest.raises(InvalidInput):
        objectstore.upload(store, key, io.BytesIO(b"x"))


def test_safe_keys_pass():
    for key in ["backups/snapshot/erigon-1/20261204T142227Z/manifest.json", "segments/sha256/ab/abcd", "a=b+c_d-e.f"]:
        assert objectstore.check_key(key) == key


def test_streaming_200_mib_keeps_memory_bounded_by_the_part_size(store):
    part, size = 8 * MiB, 200 * MiB
    fields = {name: value.get_secret_value() if isinstance(value, SecretStr) else value
              for name, value in store.model_dump().items()}
    # A fresh interpreter: this worker's heap holds every earlier test's garbage.
    done = subprocess.run([sys.executable, "-m", "tests.stream_memory"], input=json.dumps(
        {"store": fields, "part": part, "size": size}, default=str), capture_output=True, text=True,
        timeout=120, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.splitlines()[-1])
    assert measured["size"] == size and measured["sha256"] == expected_sha256(size)
    # Two parts held (one sent, one read) plus the HTTP layer's buffers; a buffered
    # stream would add 200 MiB.
    growth_mib = measured["growth_mib"]
    assert growth_mib < 5 * part / MiB, f"peak RSS grew {growth_mib:.0f} MiB streaming {size // MiB} MiB"
    print(f"200 MiB in {measured['elapsed']:.1f}s ({size / MiB / measured['elapsed']:.0f} MiB/s), "
          f"peak RSS +{growth_mib:.0f} MiB")


def test_the_block_refuses_credentials_in_the_url_two_key_sources_and_odd_prefixes(s3_server):
    from pydantic import ValidationError

    for fields in ({"endpoint_url": "http://user:pass@127.0.0.1:8333"}, {"endpoint_url": "http://h:1/path"},
                   {"bucket": "Bad_Bucket"}, {"prefix": "../up"}, {"prefix": "/abs"},
                   {"encryption_key": "ab" * 32, "encryption_key_secret": "backup-key"}, {"part_size_mib": 4}):
        with pytest.raises(ValidationError):
            s3_server.store(**fields)
    block = s3_server.store(prefix="fleet-eu/", encryption_key="cd" * 32)
    assert block.encryption_key_text() == "cd" * 32 and "cd" * 32 not in repr(block)
    assert s3_server.store().encryption_key_text() is None


def test_parts_start_small_and_grow_so_ten_thousand_hold_nearly_what_fixed_parts_would():
    largest = 64 * MiB
    sizes = [objectstore.part_size_for(n, largest) for n in range(1, objectstore.MAX_PARTS + 1)]
    assert sizes[0] == sizes[249] == 8 * MiB and sizes[250] == 16 * MiB and sizes[500] == 32 * MiB
    assert set(sizes[750:]) == {largest}
    assert sum(sizes) == 606_000 * MiB  # 592 GiB, the largest object at 64 MiB parts (fixed parts: 625 GiB)
    assert objectstore.part_size_for(1, 5 * MiB) == 5 * MiB  # a block's smaller part size is the cap
