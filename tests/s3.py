"""A real S3 server for tests that need no lab: our own `weed mini` (SeaweedFS) on loopback.

Import the fixtures into a test module (`from tests.s3 import s3_server, store`).
One server serves the whole session: the first module that asks starts it,
the last one to finish stops it, by PID. Every test gets its own prefix in
the one bucket, so tests never see each other's objects.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from blocks import ObjectStore
from tests.processes import stop_process

WEED = Path(sys.executable).parent / "weed"
BUCKET = "test-backups"
ACCESS_KEY = "rbtest-access"
SECRET_KEY = "rbtest-secret-0123456789"


def _port_pair_free(port: int) -> bool:
    # weed listens on every HTTP port and on port + 10000 for gRPC.
    for p in (port, port + 10000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def _ports(n: int) -> list[int]:
    chosen: list[int] = []
    while len(chosen) < n:
        p = random.randint(20000, 45000)
        if p not in chosen and _port_pair_free(p):
            chosen.append(p)
    return chosen


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen
    dir: Path

    def store(self, prefix: str = "", **fields) -> ObjectStore:
        values = dict(endpoint_url=self.endpoint, bucket=BUCKET, access_key_id=ACCESS_KEY,
                      secret_access_key=SECRET_KEY, prefix=prefix, connect_timeout_seconds=2,
                      read_timeout_seconds=30, max_attempts=2)
        return ObjectStore(**(values | fields))

    def raw_client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, config=Config(s3={"addressing_style": "path"}))


def start_weed(directory: Path, attempts: int = 3) -> S3Server:
    """Start weed mini; a port taken between our check and its bind (other tests run here too) means new ports."""
    for attempt in range(1, attempts + 1):
        try:
            return _start_weed(directory / f"try{attempt}")
        except _ExitedEarly as exc:
            if attempt == attempts:
                raise RuntimeError(str(exc)) from exc
    raise AssertionError("unreachable")


class _ExitedEarly(Exception):
    pass


def _start_weed(directory: Path, deadline_seconds: float = 30) -> S3Server:
    directory.mkdir(parents=True)
    master, volume, filer, s3 = _ports(4)
    log = open(directory / "weed.log", "wb")
    proc = subprocess.Popen(
        [str(WEED), "mini", f"-dir={directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
         f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3}",
         "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", f"-bucket={BUCKET}"],
        cwd=directory, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # weed mini makes the AWS_* variables its admin identity: the only credentials it accepts.
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(directory),
             "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
    )
    server = S3Server(f"http://127.0.0.1:{s3}", proc, directory)
    client = server.raw_client()
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            client.list_objects_v2(Bucket=BUCKET, MaxKeys=1)  # the bucket exists and credentials work
            return server
        except Exception as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                exited = proc.poll() is not None
                stop_process(proc)
                tail = (directory / "weed.log").read_text(errors="replace")[-2000:]
                message = f"weed mini did not serve S3 on {server.endpoint}: {exc}\n{tail}"
                raise (_ExitedEarly if exited else RuntimeError)(message) from exc
            time.sleep(0.1)


_server: S3Server | None = None
_users = 0


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    # Imported into several modules, this fixture may be set up once per module:
    # share one server and stop it when the last user is done.
    global _server, _users
    if _server is None or _server.proc.poll() is not None:
        _server = start_weed(tmp_path_factory.mktemp("weed"))
    _users += 1
    yield _server
    _users -= 1
    if _users == 0:
        stop_process(_server.proc)
        _server = None


@pytest.fixture
def store(s3_server) -> ObjectStore:
    """An ObjectStore block on the test server, under a prefix of this test's own."""
    return s3_server.store(prefix=f"t-{uuid.uuid4().hex[:12]}")
