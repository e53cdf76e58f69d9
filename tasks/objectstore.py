"""The object store (S3 API): streamed uploads and downloads with sha256 end to end.

Backups stream from a host (tar | zstd over SSH, then encryption) straight
into a multipart upload, so the uploader takes any readable stream of
unknown size and never stages it on disk. Memory is bounded by the part
size: one part is read while up to IN_FLIGHT earlier ones are sent, whatever
the size of the stream. Parts start small (FIRST_PART) so reading from the
host and sending to the store overlap even for a single 64 MiB segment file,
and double every PARTS_PER_STEP parts up to the block's part size, so a
stream of hundreds of GB still fits in S3's 10,000 parts.

Every part goes with its sha256 (`x-amz-checksum-sha256`) and the store
refuses a part whose bytes do not match (BadDigest), so corruption on the way
is caught by the store, not by the next restore. Any failure, including
Ctrl-C, aborts the multipart upload: no half-written upload is left to be
billed and no object appears.

Clients are built inside these functions from the `ObjectStore` block, and
kept per store configuration (never passed as Prefect task arguments), with connect/read timeouts, a bounded number
of retries and path-style addressing (SeaweedFS and most self-hosted stores
do not serve bucket subdomains). Keys given to these functions are relative
to the block's prefix and checked by `check_key`.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tasks.errors import ChecksumMismatch, InvalidInput, ObjectExists, ObjectStoreError
from tasks.redaction import register_secret

if TYPE_CHECKING:  # pragma: no cover
    from blocks import ObjectStore

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
MAX_PARTS = 10_000  # S3's ceiling: the part size decides the largest object
FIRST_PART = 8 * MiB  # overlap starts after 8 MiB read, not after a whole 64 MiB part
PARTS_PER_STEP = 250  # then 16, 32, 64 MiB ... up to the block's part size (8 MiB parts for the first 2 GB)
IN_FLIGHT = 2  # parts sent at once while the next is read: the store's and SSH's work overlap
COPY_CHUNK = 1 * MiB  # download reads; small enough not to matter, large enough to be fast

# Keys are written by us, read by operators' shell tools and compared in
# manifests: a plain subset of printable ASCII keeps them safe everywhere.
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+/-]{0,1000}$")


@dataclass(frozen=True)
class StoredObject:
    """What an upload stored or what the store lists: the key is relative to the block's prefix."""

    key: str
    size: int
    sha256: str | None = None  # hex of the whole stream, when we computed it
    etag: str | None = None
    last_modified: datetime | None = None


@dataclass(frozen=True)
class OpenUpload:
    key: str
    upload_id: str
    initiated: datetime | None


def check_key(key: str) -> str:
    """Refuse keys that could escape a prefix or confuse a tool: '..', leading '/', '//', odd bytes."""
    if not isinstance(key, str) or not _KEY.match(key) or ".." in key or "//" in key or key.endswith("/"):
        raise InvalidInput(
            f"object key {key!r} is not allowed: use letters, digits and . _ = + - /, "
            "no '..', no leading, trailing or doubled '/', at most 1001 characters"
        )
    return key


def _full_key(store: ObjectStore, key: str) -> str:
    prefix = store.prefix.strip("/")
    return f"{prefix}/{check_key(key)}" if prefix else check_key(key)


def _full_prefix(store: ObjectStore, prefix: str) -> str:
    """A listing prefix: a folder under the block's prefix, ending in '/' (or '' for the whole bucket)."""
    return _full_key(store, prefix.rstrip("/")) + "/" if prefix else (store.prefix.strip("/") + "/").lstrip("/")


def _relative_key(store: ObjectStore, full: str) -> str:
    prefix = store.prefix.strip("/")
    return full[len(prefix) + 1 :] if prefix else full


def _client(store: ObjectStore) -> Any:
    secret = store.secret_access_key.get_secret_value()
    register_secret(secret)
    return _cached_client(store.endpoint_url.rstrip("/"), store.region, store.access_key_id.get_secret_value(), secret,
                          store.connect_timeout_seconds, store.read_timeout_seconds, store.max_attempts)


@functools.lru_cache(maxsize=16)
def _cached_client(endpoint: str, region: str, access_key: str, secret: str, connect_timeout: float,
                   read_timeout: float, max_attempts: int) -> Any:
    # Building a client costs ~130 ms (botocore loads the S3 model); clients are
    # thread-safe once built, so one per store configuration serves every call.
    with _client_lock:
        return boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=access_key,
            aws_secret_access_key=secret,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
                s3={"addressing_style": "path"},
                # We send our own sha256 per request; do not add CRC32 on top.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


_client_lock = threading.Lock()


def _sha256_b64(data: bytes | bytearray | memoryview) -> str:
    """The `x-amz-checksum-sha256` value of one request body."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _error(exc: Exception, what: str, store: ObjectStore, key: str = "") -> ObjectStoreError:
    """One error type for callers, saying what failed where and what to check."""
    where = f"s3 {store.endpoint_url} bucket {store.bucket}" + (f" key {key}" if key else "")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "?")
        message = exc.response.get("Error", {}).get("Message", "")
        hint = {
            "BadDigest": "the bytes the store received do not match their sha256 (corrupted on the way); retry",
            "SignatureDoesNotMatch": "the secret access key in the object-store block is wrong",
            "InvalidAccessKeyId": "the access key id in the object-store block is unknown to the store",
            "AccessDenied": "the store's credentials lack permission for this bucket or key",
            "NoSuchBucket": "create the bucket or fix the block's bucket name",
        }.get(code, "")
        cls = ChecksumMismatch if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch") else ObjectStoreError
        return cls(f"{what} failed at {where}: {code} {message}" + (f" ({hint})" if hint else ""))
    return ObjectStoreError(f"{what} failed at {where}: {type(exc).__name__}: {exc} (is the store reachable?)")


def _read_part(stream: IO[bytes], size: int) -> bytearray:
    """Read up to `size` bytes: less only at the end of the stream (pipes return short reads)."""
    buf = bytearray()
    while len(buf) < size:
        chunk = stream.read(min(size - len(buf), 8 * MiB))
        if not chunk:
            break
        buf += chunk
    return buf


def upload(store: ObjectStore, key: str, stream: IO[bytes], *, part_size: int | None = None,
           metadata: dict[str, str] | None = None) -> StoredObject:
    """Store everything `stream` yields at `key`; return its size and sha256 as streamed.

    `part_size` (default: the block's) is the largest part (`part_size_for`);
    it must suit the largest stream this key may get. A stream shorter than
    the first part is one PUT.
    """
    part_size = part_size or store.part_size_mib * MiB
    if part_size < MIN_PART_SIZE:
        raise InvalidInput(f"part_size {part_size} is below S3's 5 MiB minimum")
    full = _full_key(store, key)
    client = _client(store)
    whole = hashlib.sha256()
    first = _read_part(stream, part_size_for(1, part_size))
    whole.update(first)
    if len(first) < part_size_for(1, part_size):  # the whole stream fits in one request
        return _put(store, client, key, first, metadata or {}, if_absent=False)
    return _multipart(store, client, full, key, stream, first, whole, part_size, metadata or {})


def part_size_for(number: int, largest: int) -> int:
    """The size of part `number` (from 1): FIRST_PART, doubling every PARTS_PER_STEP parts, at most `largest`.

    With 64 MiB parts at most, 10,000 parts hold 592 GiB (fixed 64 MiB parts: 625 GiB)."""
    return min(largest, FIRST_PART << min((number - 1) // PARTS_PER_STEP, 16))


def put_bytes(store: ObjectStore, key: str, data: bytes, *, if_absent: bool = False,
              content_type: str | None = None) -> StoredObject:
    """Store a small object (a manifest, a record) in one request.

    `if_absent` makes the write conditional (If-None-Match: *): an existing
    object is never replaced and ObjectExists is raised instead.
    `content_type` is what the store answers downloads with (a browser shows
    an image/png report chart instead of saving it); S3's default is
    binary/octet-stream.
    """
    return _put(store, _client(store), key, data, {}, if_absent=if_absent, content_type=content_type)


def _put(store: ObjectStore, client: Any, key: str, data: bytes | bytearray, metadata: dict[str, str],
         *, if_absent: bool, content_type: str | None = None) -> StoredObject:
    full = _full_key(store, key)
    extra: dict[str, str] = {"IfNoneMatch": "*"} if if_absent else {}
    if content_type:
        extra["ContentType"] = content_type
    try:
        response = client.put_object(Bucket=store.bucket, Key=full, Body=data, ChecksumSHA256=_sha256_b64(data),
                                     Metadata=metadata, **extra)
    except ClientError as exc:
        if if_absent and exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            raise ObjectExists(f"{full} already exists in bucket {store.bucket}; it was left as it is") from exc
        raise _error(exc, "upload", store, full) from exc
    except BotoCoreError as exc:
        raise _error(exc, "upload", store, full) from exc
    return StoredObject(key, len(data), hashlib.sha256(data).hexdigest(), response.get("ETag"))


def _multipart(store: ObjectStore, client: Any, full: str, key: str, stream: IO[bytes], first: bytearray,
               whole: Any, part_size: int, metadata: dict[str, str]) -> StoredObject:
    try:
        upload_id = client.create_multipart_upload(Bucket=store.bucket, Key=full, ChecksumAlgorithm="SHA256",
                                                   Metadata=metadata)["UploadId"]
    except (ClientError, BotoCoreError) as exc:
        raise _error(exc, "starting a multipart upload", store, full) from exc

    def send(number: int, data: bytearray) -> dict[str, Any]:
        # Hashing here, in the sending thread, overlaps it with reading the next part.
        checksum = _sha256_b64(data)
        try:
            r = client.upload_part(Bucket=store.bucket, Key=full, UploadId=upload_id, PartNumber=number,
                                   Body=data, ChecksumSHA256=checksum)
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, f"uploading part {number}", store, full) from exc
        return {"PartNumber": number, "ETag": r["ETag"], "ChecksumSHA256": checksum}

    parts: list[dict[str, Any]] = []
    pending: list[Future] = []
    size = len(first)
    try:
        with ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="s3-part") as sender:
            try:
                data, number = first, 1
                while data:
                    if number > MAX_PARTS:
                        raise ObjectStoreError(
                            f"{full}: the stream is larger than {MAX_PARTS} parts of at most {part_size // MiB} MiB; "
                            "raise the part size (object-store block part_size_mib) for this backup")
                    if len(pending) == IN_FLIGHT:
                        parts.append(pending.pop(0).result())  # in order: complete wants them sorted
                    pending.append(sender.submit(send, number, data))
                    number += 1
                    data = _read_part(stream, part_size_for(number, part_size))
                    whole.update(data)
                    size += len(data)
                while pending:
                    parts.append(pending.pop(0).result())
            finally:
                # On an error or Ctrl-C let the parts in flight finish first: a part that
                # lands after the abort would leave the upload open again.
                wait([f for f in pending if not f.cancel()])
        response = client.complete_multipart_upload(Bucket=store.bucket, Key=full, UploadId=upload_id,
                                                    MultipartUpload={"Parts": parts})
    except BaseException as exc:
        _abort(store, client, full, upload_id, exc)
        if isinstance(exc, (ClientError, BotoCoreError)):
            raise _error(exc, "completing the multipart upload", store, full) from exc
        raise
    return StoredObject(key, size, whole.hexdigest(), response.get("ETag"))


def _abort(store: ObjectStore, client: Any, full: str, upload_id: str, cause: BaseException) -> None:
    try:
        client.abort_multipart_upload(Bucket=store.bucket, Key=full, UploadId=upload_id)
    except Exception as exc:  # the original error matters more; say what is left behind
        cause.add_note(f"and aborting multipart upload {upload_id} of {full} failed too ({exc}); "
                       "it is listed by list_open_multipart_uploads and must be aborted by hand")


@contextlib.contextmanager
def open_object(store: ObjectStore, key: str) -> Iterator[IO[bytes]]:
    """The object's bytes as a readable stream (for a decrypting or decompressing reader on top)."""
    full = _full_key(store, key)
    try:
        body = _client(store).get_object(Bucket=store.bucket, Key=full)["Body"]
    except (ClientError, BotoCoreError) as exc:
        raise _error(exc, "download", store, full) from exc
    try:
        yield body
    finally:
        body.close()


def download(store: ObjectStore, key: str, out: IO[bytes], *, expected_sha256: str | None = None) -> StoredObject:
    """Write the object to `out`, hashing on the way; raise ChecksumMismatch if it is not `expected_sha256`."""
    digest, size = hashlib.sha256(), 0
    with open_object(store, key) as body:
        try:
            while chunk := body.read(COPY_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        except BotoCoreError as exc:
            raise _error(exc, "download", store, key) from exc
    if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
        raise ChecksumMismatch(f"{key}: downloaded {size} bytes with sha256 {digest.hexdigest()}, "
                               f"expected {expected_sha256}: the stored object is not what was backed up")
    return StoredObject(key, size, digest.hexdigest())


def head(store: ObjectStore, key: str) -> StoredObject | None:
    """The object's size and etag, or None when there is no such object."""
    full = _full_key(store, key)
    try:
        r = _client(store).head_object(Bucket=store.bucket, Key=full)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise _error(exc, "head", store, full) from exc
    except BotoCoreError as exc:
        raise _error(exc, "head", store, full) from exc
    return StoredObject(key, r["ContentLength"], None, r.get("ETag"), r.get("LastModified"))


def list_objects(store: ObjectStore, prefix: str = "") -> list[StoredObject]:
    """Every object under `prefix` (relative to the block's prefix), in key order."""
    full = _full_prefix(store, prefix)
    found = []
    try:
        for page in _client(store).get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=full):
            for o in page.get("Contents", []):
                found.append(StoredObject(_relative_key(store, o["Key"]), o["Size"], None, o.get("ETag"),
                                          o.get("LastModified")))
    except (ClientError, BotoCoreError) as exc:
        raise _error(exc, "list", store, full) from exc
    return sorted(found, key=lambda o: o.key)


def delete(store: ObjectStore, key: str) -> None:
    full = _full_key(store, key)
    try:
        _client(store).delete_object(Bucket=store.bucket, Key=full)
    except (ClientError, BotoCoreError) as exc:
        raise _error(exc, "delete", store, full) from exc


def list_open_multipart_uploads(store: ObjectStore, prefix: str = "") -> list[OpenUpload]:
    """Multipart uploads started and neither completed nor aborted (a crashed worker leaves these)."""
    full = _full_prefix(store, prefix)
    found = []
    try:
        for page in _client(store).get_paginator("list_multipart_uploads").paginate(Bucket=store.bucket, Prefix=full):
            for u in page.get("Uploads", []):
                found.append(OpenUpload(_relative_key(store, u["Key"]), u["UploadId"], u.get("Initiated")))
    except (ClientError, BotoCoreError) as exc:
        raise _error(exc, "listing multipart uploads", store, full) from exc
    return found


def abort_multipart_upload(store: ObjectStore, upload: OpenUpload) -> None:
    full = _full_key(store, upload.key)
    try:
        _client(store).abort_multipart_upload(Bucket=store.bucket, Key=full, UploadId=upload.upload_id)
    except (ClientError, BotoCoreError) as exc:
        raise _error(exc, "aborting a multipart upload", store, full) from exc
