"""Release sources: versions as operators paste them, the names projects publish, checksums, and
fetching from a real HTTP server (one started here on loopback, and the lab's release server
built from npm's anvil packages). No lab needed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import select
import socket
import subprocess
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lab.releases import (BROKEN_MARK, DEFAULT_CACHE, LAB_RELEASE_VERSIONS, build_broken_release,
                          build_releases, serve_argv)
from tasks.errors import InvalidInput
from tasks.releases import (Release, ReleaseAssets, ReleaseSource, ReleaseSourceError, asset_names,
                            binary_version, newest, normalize_version, parse_checksums,
                            parse_release_index, release_tag)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ names and versions

def test_erigon_assets_have_a_v_from_3_0_0_alpha4_on_and_tags_always_do():
    assert asset_names("erigon", "2.60.10") == ReleaseAssets(
        "2.60.10", "v2.60.10", "erigon_2.60.10_linux_amd64.tar.gz", "erigon_2.60.10_checksums.txt", None)
    assert asset_names("erigon", "3.0.0-alpha3").archive == "erigon_3.0.0-alpha3_linux_amd64.tar.gz"
    assert asset_names("erigon", "v3.0.0-alpha4") == ReleaseAssets(
        "3.0.0-alpha4", "v3.0.0-alpha4", "erigon_v3.0.0-alpha4_linux_amd64.tar.gz",
        "erigon_v3.0.0-alpha4_checksums.txt", "erigon_v3.0.0-alpha4_linux_amd64")
    assets = asset_names("erigon", "3.0.4")
    assert (assets.archive, assets.checksums, assets.top_dir, assets.tag) == (
        "erigon_v3.0.4_linux_amd64.tar.gz", "erigon_v3.0.4_checksums.txt", "erigon_v3.0.4_linux_amd64", "v3.0.4")
    assert assets.member("erigon") == "erigon_v3.0.4_linux_amd64/erigon"
    assert asset_names("erigon", "2.60.10").member("erigon") == "erigon"  # 2.x archives: files at the root
    assert asset_names("erigon", "3.0.4", "linux_arm64").archive == "erigon_v3.0.4_linux_arm64.tar.gz"


def test_release_tags_are_v_prefixed_except_nethermind():
    assert [release_tag("erigon", v) for v in ("2.60.10", "3.0.0-alpha3", "3.0.0-alpha4", "3.0.4")] == [
        "v2.60.10", "v3.0.0-alpha3", "v3.0.0-alpha4", "v3.0.4"]
    assert release_tag("anvil", "1.7.1") == "v1.7.1"
    assert release_tag("geth", "1.14.12") == "v1.14.12"
    assert release_tag("nethermind", "v1.29.0") == "1.29.0"


def test_anvil_assets_use_the_erigon_3_layout():
    assert asset_names("anvil", "1.7.1") == ReleaseAssets(
        "1.7.1", "v1.7.1", "anvil_v1.7.1_linux_amd64.tar.gz", "anvil_v1.7.1_checksums.txt", "anvil_v1.7.1_linux_amd64")


def test_asset_names_refuse_a_client_without_a_known_layout_and_odd_platforms():
    with pytest.raises(InvalidInput, match="no release asset layout is known for 'geth'"):
        asset_names("geth", "1.14.12")
    with pytest.raises(InvalidInput, match="platform"):
        asset_names("erigon", "3.0.4", "linux amd64")


@pytest.mark.parametrize("text,version", [
    ("v2.60.10", "2.60.10"), ("2.60.10", "2.60.10"), (" V3.0.4 ", "3.0.4"), ("v3.0.0-alpha4", "3.0.0-alpha4"),
    ("3.0.0-ALPHA4", "3.0.0-alpha4"), ("v3.10.1-rc.2", "3.10.1-rc.2"),
    ("erigon_v3.0.4_linux_amd64.tar.gz", "3.0.4"), ("erigon_2.60.10_linux_amd64.tar.gz", "2.60.10"),
    ("erigon_v3.0.4_checksums.txt", "3.0.4"), ("anvil_v1.7.1_linux_amd64.tar.gz", "1.7.1"),
    ("erigon/3.0.4/linux-amd64/go1.23.4", "3.0.4"), ("erigon/v2.60.10/linux-amd64/go1.21.5", "2.60.10"),
    ("Geth/v1.14.12-stable-293a300d/linux-amd64/go1.23.4", "1.14.12"), ("1.14.12-stable", "1.14.12"),
    ("1.14.12-stable-293a300d", "1.14.12"), ("1.14.13-unstable", "1.14.13-unstable"),
    ("Geth/v1.101411.8-rc.1-374d61f9-20250211/linux-amd64/go1.23.5", "1.101411.8-rc.1"),
    ("Nethermind/v1.25.4+2bf8a789/linux-x64/dotnet8.0.8", "1.25.4"), ("anvil/v1.7.1", "1.7.1"),
])
def test_normalize_version_accepts_what_operators_type_or_paste(text, version):
    assert normalize_version(text) == version


@pytest.mark.parametrize("text,message", [
    ("", "a version is required"), ("   ", "a version is required"), (None, "a version is required"),
    ("latest", "'latest' is not a release version"), ("main", "not a release version"),
    ("3.0.4; rm -rf /", "contains ' ;'"), ("$(reboot)", "contains '$()'"), ("`id`", "contains '`'"),
    ("3.0 .4", "contains ' '"), ("v3.0.4\nv3.0.5", "contains '\\n'"), ("3", "not a release version"),
    ("v3.0.4-foo", "not a release version"), ("erigon/latest/linux-amd64", "not a release version"),
    ("9" * 201, "too long"),
])
def test_normalize_version_refuses_anything_else_and_says_what_it_wanted(text, message):
    with pytest.raises(InvalidInput, match=re.escape(message)) as refused:
        normalize_version(text)
    assert "3.0.4" in str(refused.value)  # every refusal shows what a version looks like


@pytest.mark.parametrize("output,version", [
    ("anvil Version: 1.7.1\nCommit SHA: 4072e48705af9d93e3c0f6e29e93b5e9a40caed8\nBuild Profile: dist\n", "1.7.1"),
    ("anvil Version: 1.6.0-v1.7.0\nCommit SHA: 906020fe46757137e7ee23cec976a12e9dfacd1a\n", "1.7.0"),
    ("anvil Version: 1.6.0-v1.6.0-rc1\n", "1.6.0-rc1"),
    ("erigon version 3.0.15-1a610b3f\n", "3.0.15"),
    ("Geth\nVersion: 1.14.12-stable\nGit Commit: 293a300d64be3d9a1c2cc92c26fa5a0b6fc55b0c\n", "1.14.12"),
])
def test_binary_version_reads_what_version_flags_print(output, version):
    assert binary_version(output) == version


def test_binary_version_refuses_output_without_a_version():
    with pytest.raises(InvalidInput, match="no version in the --version output"):
        binary_version("anvil: error while loading shared libraries\n")


# ------------------------------------------------------------------ checksums and the index

ERIGON_304 = [f"erigon_v3.0.4_{p}.tar.gz" for p in ("darwin_amd64", "darwin_arm64", "linux_amd64", "linux_arm64")]
CHECKSUMS = (
    f"{sha(b'1')}  {ERIGON_304[0]}\n"
    f"{sha(b'2')}  {ERIGON_304[1]}\n"
    f"{sha(b'3').upper()}  {ERIGON_304[2]}\n"
    "\n"
    f"{sha(b'4')} *{ERIGON_304[3]}\r\n"
    f"{sha(b'5')}  erigon_3.0.4_amd64.deb\n"
)


def test_a_sha256sum_file_reads_into_names_and_lower_case_sums():
    sums = parse_checksums(CHECKSUMS)
    assert sums == {ERIGON_304[0]: sha(b"1"), ERIGON_304[1]: sha(b"2"), ERIGON_304[2]: sha(b"3"),
                    ERIGON_304[3]: sha(b"4"), "erigon_3.0.4_amd64.deb": sha(b"5")}


@pytest.mark.parametrize("text,message", [
    (f"{sha(b'1')}  a.tar.gz\nSHA256 (b.tar.gz) = {sha(b'2')}\n", "line 2 is not `<sha256>  <file>`"),
    (f"{sha(b'1')} a.tar.gz\n", "line 1 is not"),
    (f"{sha(b'1')}\n", "line 1 is not"),
    (f"\n{hashlib.md5(b'1').hexdigest()}  a.tar.gz\n", "line 2: 32 hex digits for a.tar.gz is not a sha256"),
    (f"{sha(b'1')}0  a.tar.gz\n", "line 1: 65 hex digits"),
    (f"{'g' * 64}  a.tar.gz\n", "line 1 is not"),
    (f"{sha(b'1')}  a.tar.gz\n{sha(b'2')}  b.tar.gz\n{sha(b'3')}  a.tar.gz\n", "line 3: a.tar.gz is listed twice"),
])
def test_malformed_checksums_are_refused_naming_the_line(text, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_checksums(text)


def test_a_name_listed_twice_with_the_same_sum_is_fine():
    assert parse_checksums(f"{sha(b'1')}  a\n{sha(b'1')} *a\n") == {"a": sha(b"1")}


GITHUB_INDEX = [
    {"tag_name": "v3.1.0-rc1", "name": "v3.1.0-rc1", "draft": False, "prerelease": False,
     "published_at": "2025-06-02T10:00:00Z"},
    {"tag_name": "v3.0.5", "draft": True, "prerelease": False, "published_at": None},
    {"tag_name": "v3.0.4", "draft": False, "prerelease": False, "published_at": "2025-05-20T09:12:33Z"},
    {"tag_name": "nightly", "draft": False, "prerelease": True, "published_at": "2025-05-21T00:00:00Z"},
    {"tag_name": "v3.0.0-alpha4", "draft": False, "prerelease": True, "published_at": "2024-09-20T12:00:00Z"},
    {"tag_name": "v2.60.10", "draft": False, "prerelease": False, "published_at": "2024-11-05T08:00:00Z"},
    {"tag_name": "v3.0.3", "draft": False, "prerelease": False, "published_at": "2025-04-30T11:00:00Z"},
]


def test_the_github_releases_list_reads_newest_first_without_drafts_or_moving_tags():
    releases = parse_release_index(json.dumps(GITHUB_INDEX))
    assert releases == [Release("3.1.0-rc1", "v3.1.0-rc1", True), Release("3.0.4", "v3.0.4", False),
                        Release("3.0.3", "v3.0.3", False), Release("3.0.0-alpha4", "v3.0.0-alpha4", True),
                        Release("2.60.10", "v2.60.10", False)]
    assert parse_release_index(GITHUB_INDEX) == releases  # an already parsed list too
    assert newest(releases) == Release("3.0.4", "v3.0.4", False)
    assert newest(releases, include_prereleases=True).version == "3.1.0-rc1"
    assert newest([]) is None


@pytest.mark.parametrize("data,message", [
    ("<html>rate limited</html>", "not JSON"), ('{"message": "Not Found"}', "not a list"),
    ([{"name": "v1"}], "entry 0 has no tag_name")])
def test_a_releases_index_of_another_shape_is_refused(data, message):
    with pytest.raises(InvalidInput, match=message):
        parse_release_index(data)


@pytest.mark.parametrize("kwargs,message", [
    ({"base_url": "https://github.com/erigontech/erigon/releases/download"}, "exactly once"),
    ({"base_url": "https://x.example/{tag}/{tag}"}, "exactly once"),
    ({"base_url": "ftp://x.example/{tag}"}, "http"),
    ({"base_url": "https://bot:hunter2@x.example/{tag}"}, "credentials"),
    ({"base_url": "https://x.example/{tag}?access_token=abc"}, "credentials"),
    ({"base_url": "https://x.example/{tag}/{version}"}, "placeholder"),
    ({"index_url": "https://api.github.com/repos/a/b/releases?token=abc"}, "credentials"),
    ({"client": "geth"}, "no release asset layout"),
    ({"timeout_s": 0}, "timeout_s"),
])
def test_a_release_source_refuses_bad_configuration_before_fetching(kwargs, message):
    args = {"client": "erigon", "base_url": "https://github.com/erigontech/erigon/releases/download/{tag}"} | kwargs
    with pytest.raises(InvalidInput, match=message):
        ReleaseSource(**args)


def test_release_urls_put_the_tag_and_the_asset_names_together():
    source = ReleaseSource("erigon", "https://github.com/erigontech/erigon/releases/download/{tag}/")
    assert source.archive_url("2.60.10") == (
        "https://github.com/erigontech/erigon/releases/download/v2.60.10/erigon_2.60.10_linux_amd64.tar.gz")
    assert source.checksums_url("v3.0.4") == (
        "https://github.com/erigontech/erigon/releases/download/v3.0.4/erigon_v3.0.4_checksums.txt")


# ------------------------------------------------------------------ a real HTTP server on loopback

ARCHIVE = os.urandom(3 * 1024 * 1024 + 12345)


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict, bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, headers, body = self.routes.get(self.path, (404, {}, b"not found"))
        headers = dict(headers)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if not headers.pop("X-Test-No-Length", None):  # without: the body ends when the connection does
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    """A local release page for erigon v3.0.4; yields (base URL, routes) for tests to change."""
    routes = {
        f"/v3.0.4/{ERIGON_304[2]}": (200, {}, ARCHIVE),
        "/v3.0.4/erigon_v3.0.4_checksums.txt": (200, {}, (
            f"{sha(b'x')}  {ERIGON_304[0]}\n{sha(ARCHIVE).upper()}  {ERIGON_304[2]}\n").encode()),
        "/moved/v3.0.3/erigon_v3.0.3_checksums.txt": (302, {"Location": "/v3.0.4/erigon_v3.0.4_checksums.txt"}, b""),
        "/releases": (200, {"Content-Type": "application/json"}, json.dumps(GITHUB_INDEX).encode()),
    }
    handler = type("Handler", (_Handler,), {"routes": routes})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", routes
    finally:
        httpd.shutdown()
        httpd.server_close()


def source_at(base: str, **kw) -> ReleaseSource:
    return ReleaseSource("erigon", base + "/{tag}", index_url=base + "/releases", timeout_s=kw.pop("timeout_s", 5), **kw)


def test_the_expected_sum_is_the_archives_line_of_the_published_checksums(server):
    base, _ = server
    assert source_at(base).expected_sha256("v3.0.4") == sha(ARCHIVE)


def test_redirects_are_followed_like_githubs_to_its_object_store(server):
    base, routes = server
    source = ReleaseSource("erigon", base + "/moved/{tag}")
    routes["/v3.0.4/erigon_v3.0.4_checksums.txt"] = (200, {}, f"{sha(ARCHIVE)}  erigon_v3.0.3_linux_amd64.tar.gz\n".encode())
    assert source.expected_sha256("3.0.3") == sha(ARCHIVE)


def test_a_checksums_file_without_the_archive_is_refused_naming_url_and_archive(server):
    base, routes = server
    routes["/v3.0.4/erigon_v3.0.4_checksums.txt"] = (200, {}, f"{sha(ARCHIVE)}  erigon_v3.0.4_linux_arm64.tar.gz\n".encode())
    with pytest.raises(ReleaseSourceError, match=rf"{base}/v3.0.4/erigon_v3.0.4_checksums.txt does not list "
                                                 r"erigon_v3.0.4_linux_amd64.tar.gz \(it lists erigon_v3.0.4_linux_arm64"):
        source_at(base).expected_sha256("3.0.4")


def test_a_missing_release_or_a_garbled_checksums_file_is_refused_with_the_url(server):
    base, routes = server
    with pytest.raises(ReleaseSourceError, match=rf"{base}/v3.0.5/erigon_v3.0.5_checksums.txt answered HTTP 404"):
        source_at(base).expected_sha256("3.0.5")
    routes["/v3.0.4/erigon_v3.0.4_checksums.txt"] = (200, {}, b"<html>maintenance</html>\n")
    with pytest.raises(ReleaseSourceError, match="is not a usable checksums file: checksums line 1"):
        source_at(base).expected_sha256("3.0.4")
    routes["/v3.0.4/erigon_v3.0.4_checksums.txt"] = (200, {}, b"0" * (1024 * 1024 + 1))
    with pytest.raises(ReleaseSourceError, match="larger than 1048576 bytes"):
        source_at(base).expected_sha256("3.0.4")


def test_the_stream_reads_as_a_file_does_with_the_same_bytes_and_hash(server):
    base, _ = server
    with source_at(base).stream_archive("3.0.4", chunk_size=10_000) as stream:
        pieces = [stream.read(4096)]
        while piece := stream.read(65536):
            assert len(piece) <= 65536
            pieces.append(piece)
    assert b"".join(pieces) == ARCHIVE and len(pieces[0]) == 4096
    assert stream.sha256 == sha(ARCHIVE) and stream.complete


def test_streaming_hashes_every_byte_in_bounded_chunks(server):
    base, _ = server
    source = source_at(base)
    received = hashlib.sha256()
    with source.stream_archive("3.0.4", chunk_size=10_000) as stream:
        sizes = [len(chunk) for chunk in stream if received.update(chunk) is None]
    assert stream.sha256 == received.hexdigest() == sha(ARCHIVE)
    assert stream.size == sum(sizes) == len(ARCHIVE)
    assert set(sizes[:-1]) == {10_000} and 0 < sizes[-1] <= 10_000  # one chunk_size piece in memory at a time
    assert stream.verify(source.expected_sha256("3.0.4")) == sha(ARCHIVE)
    with pytest.raises(ReleaseSourceError, match="is not the published .*do not install it"):
        stream.verify(sha(b"another archive"))


def test_a_stream_read_partly_has_no_sum_and_one_over_the_cap_is_refused(server):
    base, routes = server
    with source_at(base).stream_archive("3.0.4", chunk_size=1024) as stream:
        next(iter(stream))
        with pytest.raises(ReleaseSourceError, match="not read to its end"):
            stream.sha256
    with pytest.raises(ReleaseSourceError, match="over the 1048576 byte cap"):
        with source_at(base).stream_archive("3.0.4", max_bytes=1024 * 1024):
            pass
    # A server that does not say the size up front is stopped at the cap while streaming.
    routes[f"/v3.0.4/{ERIGON_304[2]}"] = (200, {"X-Test-No-Length": "1"}, ARCHIVE)
    with source_at(base).stream_archive("3.0.4", chunk_size=64 * 1024, max_bytes=1024 * 1024) as stream:
        with pytest.raises(ReleaseSourceError, match="the archive is over the 1048576 byte cap"):
            for _ in stream:
                pass
    assert 1024 * 1024 < stream.size <= 1024 * 1024 + 64 * 1024


def test_the_releases_list_comes_from_the_index_url(server):
    base, routes = server
    assert newest(source_at(base).releases()) == Release("3.0.4", "v3.0.4", False)
    routes["/releases"] = (403, {}, b'{"message": "API rate limit exceeded"}')
    with pytest.raises(ReleaseSourceError, match=rf"{base}/releases answered HTTP 403"):
        source_at(base).releases()
    with pytest.raises(InvalidInput, match="no index_url"):
        ReleaseSource("erigon", base + "/{tag}").releases()


@pytest.fixture
def silent_server():
    """Accepts connections (the kernel does, from the backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_server_that_never_answers_times_out_within_the_bound(silent_server):
    source = source_at(silent_server, timeout_s=0.5)
    for attempt in (lambda: source.expected_sha256("3.0.4"), lambda: source.stream_archive("3.0.4").__enter__()):
        started = time.monotonic()
        with pytest.raises(ReleaseSourceError, match=r"no answer within 0.5s \(ReadTimeout\)"):
            attempt()
        assert time.monotonic() - started < 2.0


# ------------------------------------------------------------------ the lab's release server

@contextlib.contextmanager
def serving(out_dir: Path):
    """serve_argv on an ephemeral loopback port; yields the base URL once it listens."""
    proc = subprocess.Popen(serve_argv(out_dir, "127.0.0.1", 0), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline() if ready else ""
        assert "port" in line, f"the release server did not start: {line!r}"
        port = int(line.split(" port ")[1].split()[0])
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def lab_releases(tmp_path_factory):
    out = tmp_path_factory.mktemp("releases")
    sums = build_releases(out, list(LAB_RELEASE_VERSIONS), DEFAULT_CACHE)
    broken = {kind: build_broken_release(out, version, kind)
              for version, kind in (("1.7.98", "exits-at-start"), ("1.7.99", "bad-checksum"))}
    with serving(out) as base:
        yield out, sums, broken, ReleaseSource("anvil", base + "/{tag}", index_url=base + "/releases.json")


def fetch_and_unpack(source: ReleaseSource, version: str, into: Path) -> tuple[str, Path]:
    """What the upgrade does, minus SSH: stream, check the sum, unpack, find the binary."""
    assets = source.assets(version)
    archive = into / assets.archive
    with source.stream_archive(version) as stream, archive.open("wb") as f:
        for chunk in stream:
            f.write(chunk)
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == [assets.top_dir, assets.member("anvil")]  # one directory named like the archive
        assert members[assets.member("anvil")].mode == 0o755
        tar.extractall(into, filter="data")
    return stream.sha256, into / assets.member("anvil")


def test_the_lab_release_server_lists_both_versions_and_newest_skips_broken_ones(lab_releases):
    _, _, _, source = lab_releases
    releases = source.releases()
    assert [(r.version, r.tag, r.prerelease) for r in releases] == [
        ("1.7.99", "v1.7.99", True), ("1.7.98", "v1.7.98", True), ("1.7.1", "v1.7.1", False), ("1.5.1", "v1.5.1", False)]
    assert newest(releases) == Release("1.7.1", "v1.7.1", False)
    listed = json.loads((lab_releases[0] / "releases.json").read_text())  # GitHub's order: newest first
    assert [r["tag_name"] for r in listed] == ["v1.7.99", "v1.7.98", "v1.7.1", "v1.5.1"]
    assert all(r["draft"] is False and r["published_at"].endswith("Z") for r in listed)


@pytest.mark.parametrize("version", LAB_RELEASE_VERSIONS)
def test_a_lab_release_verifies_and_its_anvil_reports_its_version(lab_releases, version, tmp_path):
    _, sums, _, source = lab_releases
    assert source.expected_sha256(version) == sums[version]
    streamed, binary = fetch_and_unpack(source, version, tmp_path)
    assert streamed == sums[version]
    # anvil 1.5.1 prints "anvil Version: 1.5.1-v1.5.1", 1.7.1 "1.7.1" (and npm's 1.7.0 "1.6.0-v1.7.0": not used).
    printed = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    assert printed.returncode == 0 and printed.stdout.startswith("anvil Version: ")
    assert binary_version(printed.stdout) == version


def test_a_second_build_reuses_the_cache_and_gives_the_same_bytes(lab_releases, tmp_path):
    _, sums, _, _ = lab_releases
    installed = {v: (DEFAULT_CACHE / v).stat().st_ino for v in LAB_RELEASE_VERSIONS}
    started = time.monotonic()
    assert build_releases(tmp_path, list(LAB_RELEASE_VERSIONS), DEFAULT_CACHE) == sums
    assert time.monotonic() - started < 10
    assert {v: (DEFAULT_CACHE / v).stat().st_ino for v in LAB_RELEASE_VERSIONS} == installed  # npm not asked again
    # Archives are reproducible: a broken release, built from scratch each time, has the same sum
    # twice, a second apart (gzip would otherwise stamp the time it was made).
    first = build_broken_release(tmp_path / "a", "1.7.98", "exits-at-start")
    time.sleep(1.1)
    assert build_broken_release(tmp_path / "b", "1.7.98", "exits-at-start") == first


def test_a_release_with_a_wrong_published_sum_is_caught_by_the_stream_check(lab_releases, tmp_path):
    out, _, broken, source = lab_releases
    assert (out / "v1.7.99" / BROKEN_MARK).read_text() == "bad-checksum\n"
    published = source.expected_sha256("1.7.99")
    assert published != broken["bad-checksum"]
    with source.stream_archive("1.7.99") as stream:
        for _ in stream:
            pass
    assert stream.sha256 == broken["bad-checksum"]
    with pytest.raises(ReleaseSourceError, match="is not the published"):
        stream.verify(published)


def test_a_release_that_exits_at_start_verifies_but_its_anvil_fails(lab_releases, tmp_path):
    _, _, broken, source = lab_releases
    assert source.expected_sha256("1.7.98") == broken["exits-at-start"]
    streamed, binary = fetch_and_unpack(source, "1.7.98", tmp_path)
    assert streamed == broken["exits-at-start"]
    ran = subprocess.run([str(binary), "--host", "127.0.0.1"], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 1 and "error" in ran.stderr and ran.stdout == ""


def test_broken_releases_refuse_unknown_kinds_and_good_release_directories(lab_releases, tmp_path):
    out, _, _, _ = lab_releases
    with pytest.raises(ValueError, match="not one of bad-checksum, exits-at-start"):
        build_broken_release(tmp_path, "1.7.97", "slow")
    with pytest.raises(ValueError, match="is a good release"):
        build_broken_release(out, "1.7.1", "bad-checksum")
