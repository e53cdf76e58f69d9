"""Where client upgrades come from: release tags, asset names, published checksums, the archive.

An upgrade installs an archive from the project's release page, and only one whose sha256 is the
one published beside it. This module knows how projects name releases (Erigon's asset names
changed at 3.0.0-alpha4), reads checksums files and GitHub's releases list, and streams an
archive while hashing it. It touches no host: the runbook streams the bytes over SSH and checks
the sum again there.

    source = ReleaseSource("erigon", "https://github.com/erigontech/erigon/releases/download/{tag}")
    with source.stream_archive("v3.0.4") as stream:
        for chunk in stream: ...                  # one chunk in memory at a time, hashed as read
    stream.verify(source.expected_sha256("v3.0.4"))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tasks.errors import InvalidInput, RunbookError
from tasks.probes.evm import parse_client_version, version_key


class ReleaseSourceError(RunbookError):
    """The release source could not be reached, or answered something that must not be installed."""


# Erigon's asset names carry a "v" from this release on (erigon_v3.0.4_linux_amd64.tar.gz) and
# none before (erigon_2.60.10_...), while its git tags always had one (v2.60.10). Its 2021-2022
# CalVer releases (2022.09.3) sort above 3.x by number but predate the change.
ERIGON_V_ASSETS_FROM = "3.0.0-alpha4"
TAGS_WITHOUT_V = frozenset({"nethermind"})  # NethermindEth tags its releases 1.29.0
ASSET_LAYOUT_CLIENTS = ("anvil", "erigon")  # assets named <client>_<version>_<os>_<arch>.tar.gz
CHECKSUMS_MAX_BYTES = 1 << 20
INDEX_MAX_BYTES = 8 << 20  # GitHub's list carries every release's notes: 100 Erigon releases ~ 2 MB

# An optional v, 2-4 numbers, one of the pre-release words clients use, then build information
# that is dropped: Geth's "-stable", commits ("-293a300d", "+2bf8a789"), dates ("-20250211").
# Anything else ("latest", a branch, "3.0.4-foo") is refused: an upgrade names what it installs.
_VERSION = re.compile(
    r"v?(?P<core>\d{1,9}(?:\.\d{1,9}){1,3})(?:-(?P<pre>(?:rc|alpha|beta|dev|pre|unstable)(?:\.?\d{1,9})?))?"
    r"(?:-stable)?(?:[-+][0-9a-f]{7,40})*", re.IGNORECASE)
_ASSET_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}_(?P<version>v?\d[0-9A-Za-z.+-]*)_"
                         r"(?:checksums\.txt|[a-z0-9]+_[a-z0-9]+\.(?:tar\.gz|tgz|zip)|[a-z0-9]+\.deb)")
_VERSION_CHAR = re.compile(r"[A-Za-z0-9._/+-]")
_CLIENT = re.compile(r"[a-z][a-z0-9-]{0,39}")
_PLATFORM = re.compile(r"[a-z0-9]+_[a-z0-9]+")
_CHECKSUM_LINE = re.compile(r"(?P<hex>[0-9A-Fa-f]+) [ *](?P<name>\S(?:.*\S)?)")
_SECRET_PARAM = re.compile(r"token|key|secret|passw|sig|credential|auth", re.IGNORECASE)
_VERSION_OUTPUT = re.compile(r"\bversion:?\s+(\S+)", re.IGNORECASE)


def normalize_version(text: str) -> str:
    """What an operator typed or pasted -> the bare version. "v2.60.10", " V3.0.4 ", asset names
    ("erigon_v3.0.4_linux_amd64.tar.gz"), web3_clientVersion ("erigon/3.0.4/linux-amd64/go1.23.4",
    "Geth/v1.14.12-stable-293a300d/...", "anvil/v1.7.1") -> "2.60.10", "3.0.4", "1.14.12", "1.7.1";
    pre-releases keep their word: "v3.0.0-alpha4" -> "3.0.0-alpha4"."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("a version is required (e.g. 3.0.4 or v3.0.4)")
    s = text.strip()
    odd = "".join(sorted({c for c in s[:200] if not _VERSION_CHAR.fullmatch(c)}))
    if odd or len(s) > 200:
        what = f"version {s[:80]!r} contains {odd!r}" if odd else f"version text of {len(s)} characters is too long"
        raise InvalidInput(f"{what}; give a version like 3.0.4, v3.0.4 or a web3_clientVersion string")
    if "/" in s:
        candidate = getattr(parse_client_version(s), "version", "")
    elif asset := _ASSET_NAME.fullmatch(s):
        candidate = asset["version"]
    else:
        candidate = s
    if (match := _VERSION.fullmatch(candidate)) is None:
        raise InvalidInput(f"{s!r} is not a release version: expected 3.0.4, v3.0.0-alpha4, an asset name or a "
                           "web3_clientVersion string (moving names like 'latest' are refused: name the version)")
    return match["core"] + (f"-{match['pre'].lower()}" if match["pre"] else "")


def binary_version(output: str) -> str:
    """What `<client> --version` printed -> the bare version: Erigon's "erigon version
    3.0.15-1a610b3f", Geth's "Version: 1.14.12-stable", anvil's "anvil Version: 1.7.1". Foundry
    builds print <crate version>-<tag> and the tag is the release: "1.6.0-v1.7.0" is anvil 1.7.0
    (whose crate was not bumped: it answers web3_clientVersion with "anvil/v1.6.0")."""
    if (match := _VERSION_OUTPUT.search(output or "")) is None:
        raise InvalidInput(f"no version in the --version output {(output or '').strip()[:200]!r}")
    tagged = re.fullmatch(r"[\d.]+-(v\d\S*)", match[1])
    return normalize_version(tagged[1] if tagged else match[1])


def _client(client: str) -> str:
    if not isinstance(client, str) or not _CLIENT.fullmatch(client):
        raise InvalidInput(f"client {client!r} is not a client name (lower case, e.g. erigon, anvil)")
    return client


def release_tag(client: str, version: str) -> str:
    """The git tag a release is published under (the {tag} of download URLs): "v" + version
    (v2.60.10, v3.0.4, v1.7.1), except Nethermind's. Asset names differ: see `asset_version`."""
    version = normalize_version(version)
    return version if _client(client) in TAGS_WITHOUT_V else f"v{version}"


def asset_version(client: str, version: str) -> str:
    """The version as asset names write it: Erigon's has no "v" before 3.0.0-alpha4."""
    version = normalize_version(version)
    key = version_key(version)
    if _client(client) == "erigon" and (key[0][0] >= 2000 or key < version_key(ERIGON_V_ASSETS_FROM)):
        return version
    return f"v{version}"


@dataclass(frozen=True)
class ReleaseAssets:
    version: str  # bare: 3.0.4
    tag: str  # the git tag: v3.0.4
    archive: str  # erigon_v3.0.4_linux_amd64.tar.gz
    checksums: str  # erigon_v3.0.4_checksums.txt
    # The one directory the archive wraps, named like it; None when the files sit at its root
    # (Erigon 2.x: `tar xzf erigon_2.60.10_linux_amd64.tar.gz` gives ./erigon).
    top_dir: str | None

    def member(self, binary: str) -> str:
        """The path of `binary` inside the archive."""
        return f"{self.top_dir}/{binary}" if self.top_dir else binary


def _check_layout(client: str, platform: str) -> None:
    if _client(client) not in ASSET_LAYOUT_CLIENTS:
        raise InvalidInput(f"no release asset layout is known for {client!r} (known: "
                           f"{', '.join(ASSET_LAYOUT_CLIENTS)})")
    if not isinstance(platform, str) or not _PLATFORM.fullmatch(platform):
        raise InvalidInput(f"platform {platform!r} is not <os>_<arch> (e.g. linux_amd64)")


def asset_names(client: str, version: str, platform: str = "linux_amd64") -> ReleaseAssets:
    _check_layout(client, platform)
    bare, named = normalize_version(version), asset_version(client, version)
    stem = f"{client}_{named}_{platform}"
    wrapped = client != "erigon" or named.startswith("v")
    return ReleaseAssets(bare, release_tag(client, bare), f"{stem}.tar.gz", f"{client}_{named}_checksums.txt",
                         stem if wrapped else None)


def parse_checksums(text: str) -> dict[str, str]:
    """sha256sum output (`<hex>  <file>`, or `<hex> *<file>` in binary mode) -> {file: hex}."""
    sums: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if (match := _CHECKSUM_LINE.fullmatch(line.rstrip())) is None:
            raise InvalidInput(f"checksums line {lineno} is not `<sha256>  <file>` (sha256sum format): {line[:120]!r}")
        digest, name = match["hex"].lower(), match["name"]
        if len(digest) != 64:
            raise InvalidInput(f"checksums line {lineno}: {len(digest)} hex digits for {name} is not a sha256 (64)")
        if sums.setdefault(name, digest) != digest:
            raise InvalidInput(f"checksums line {lineno}: {name} is listed twice with different sums")
    return sums


@dataclass(frozen=True)
class Release:
    version: str
    tag: str  # as the project published it
    prerelease: bool


def parse_release_index(data: str | bytes | list[Any]) -> list[Release]:
    """GitHub's "list releases" answer -> releases, newest first. Drafts are skipped, and so are
    moving tags that name no version (foundry's "nightly"); a version with a pre-release word
    (3.0.0-rc1) counts as a pre-release even when GitHub does not flag it."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise InvalidInput(f"the releases index is not JSON ({exc})") from None
    if not isinstance(data, list):
        raise InvalidInput("the releases index is not a list (expected GitHub's GET /repos/OWNER/REPO/releases)")
    found: dict[str, Release] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("tag_name"), str):
            raise InvalidInput(f"releases index entry {i} has no tag_name")
        if entry.get("draft"):
            continue
        with contextlib.suppress(InvalidInput):
            version = normalize_version(entry["tag_name"])
            prerelease = bool(entry.get("prerelease")) or "-" in version
            found.setdefault(version, Release(version, entry["tag_name"], prerelease))
    return sorted(found.values(), key=lambda r: version_key(r.version), reverse=True)


def newest(releases: list[Release], include_prereleases: bool = False) -> Release | None:
    candidates = [r for r in releases if include_prereleases or not r.prerelease]
    return max(candidates, key=lambda r: version_key(r.version), default=None)


def _check_url(url: str, what: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{what} must be an http(s) URL with a host, not {url[:100]!r}")
    if "@" in parts.netloc or any(_SECRET_PARAM.search(k) for k, _ in urllib.parse.parse_qsl(parts.query, True)):
        raise InvalidInput(f"{what} must not carry credentials (user:password@ or a token parameter): keep "
                           "secrets in a block")
    if "{" in url or "}" in url:
        raise InvalidInput(f"{what} has a placeholder other than one {{tag}}: {url[:100]!r}")


def _source_error(url: str, exc: httpx.HTTPError, timeout_s: float) -> ReleaseSourceError:
    if isinstance(exc, httpx.TimeoutException):
        return ReleaseSourceError(f"{url}: no answer within {timeout_s:g}s ({type(exc).__name__}); is the release "
                                  "source reachable from the worker?")
    return ReleaseSourceError(f"{url}: {type(exc).__name__}: {exc}")


def _check_status(response: httpx.Response, url: str) -> None:
    if response.status_code != 200:
        hint = " (is that version released under this tag?)" if response.status_code == 404 else ""
        raise ReleaseSourceError(f"{url} answered HTTP {response.status_code}{hint}")


class ArchiveStream:
    """The archive's bytes as they arrive (iterate once), hashed on the way; `sha256` once read to the end."""

    def __init__(self, url: str, chunks: Iterator[bytes], max_bytes: int, timeout_s: float) -> None:
        self.url, self._chunks, self.max_bytes, self._timeout_s = url, chunks, max_bytes, timeout_s
        self._hash, self.size, self.complete = hashlib.sha256(), 0, False
        self._reader: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._chunks:
                self.size += len(chunk)
                if self.size > self.max_bytes:
                    raise ReleaseSourceError(f"{self.url}: the archive is over the {self.max_bytes} byte cap; refused")
                self._hash.update(chunk)
                yield chunk
        except httpx.HTTPError as exc:
            raise _source_error(self.url, exc, self._timeout_s) from None
        self.complete = True

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all that is left for n < 0), as a file is read: what the SSH stream reads
        when the archive goes to a host. The same cap and hash as iterating."""
        if self._reader is None:
            self._reader, self._buffer = iter(self), b""
        while n < 0 or len(self._buffer) < n:
            chunk = next(self._reader, None)
            if chunk is None:
                break
            self._buffer += chunk
        out, self._buffer = (self._buffer, b"") if n < 0 else (self._buffer[:n], self._buffer[n:])
        return out

    @property
    def sha256(self) -> str:
        if not self.complete:
            raise ReleaseSourceError(f"{self.url}: the archive was not read to its end ({self.size} bytes so far), "
                                     "so it has no sha256 yet")
        return self._hash.hexdigest()

    def verify(self, expected: str) -> str:
        """The streamed sha256 if it is `expected`; otherwise refuse: nothing may be installed."""
        if self.sha256 != expected.strip().lower():
            raise ReleaseSourceError(f"{self.url}: sha256 {self.sha256} is not the published {expected}: the download "
                                     "is corrupt or the release was replaced; do not install it")
        return self.sha256


@dataclass(frozen=True)
class ReleaseSource:
    """One client's releases. `base_url` is where a release's assets are, `{tag}` standing for its
    tag (https://github.com/erigontech/erigon/releases/download/{tag}); `index_url` lists releases
    (https://api.github.com/repos/erigontech/erigon/releases?per_page=100). `timeout_s` bounds
    every connect and every read."""

    client: str
    base_url: str
    index_url: str | None = None
    timeout_s: float = 30.0
    platform: str = "linux_amd64"

    def __post_init__(self) -> None:
        _check_layout(self.client, self.platform)
        if not isinstance(self.base_url, str) or self.base_url.count("{tag}") != 1:
            raise InvalidInput(f"base_url must contain {{tag}} exactly once: {str(self.base_url)[:100]!r}")
        _check_url(self.base_url.replace("{tag}", "TAG"), "base_url")
        if self.index_url is not None:
            _check_url(self.index_url, "index_url")
        if not 0 < self.timeout_s <= 600:
            raise InvalidInput(f"timeout_s must be in (0, 600], not {self.timeout_s}")

    def assets(self, version: str) -> ReleaseAssets:
        return asset_names(self.client, version, self.platform)

    def _url(self, tag: str, name: str) -> str:
        return self.base_url.replace("{tag}", urllib.parse.quote(tag, safe="")).rstrip("/") + "/" + name

    def archive_url(self, version: str) -> str:
        assets = self.assets(version)
        return self._url(assets.tag, assets.archive)

    def checksums_url(self, version: str) -> str:
        assets = self.assets(version)
        return self._url(assets.tag, assets.checksums)

    def _http(self) -> httpx.Client:
        return httpx.Client(timeout=httpx.Timeout(self.timeout_s), follow_redirects=True,
                            headers={"User-Agent": "node-runbooks", "Accept": "application/vnd.github+json, */*"})

    def _fetch(self, url: str, limit: int) -> bytes:
        """A small document, whole, within `timeout_s` per wait and about `timeout_s` overall."""
        deadline, body = time.monotonic() + self.timeout_s, bytearray()
        try:
            with self._http() as client, client.stream("GET", url) as response:
                _check_status(response, url)
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise ReleaseSourceError(f"{url}: answer larger than {limit} bytes; refused")
                    if time.monotonic() > deadline:
                        raise ReleaseSourceError(f"{url}: still answering after {self.timeout_s:g}s; abandoned")
        except httpx.HTTPError as exc:
            raise _source_error(url, exc, self.timeout_s) from None
        return bytes(body)

    def expected_sha256(self, version: str) -> str:
        """The archive's sha256 as the release's checksums file publishes it."""
        assets, url = self.assets(version), self.checksums_url(version)
        try:
            sums = parse_checksums(self._fetch(url, CHECKSUMS_MAX_BYTES).decode("utf-8"))
        except (InvalidInput, UnicodeDecodeError) as exc:
            raise ReleaseSourceError(f"{url} is not a usable checksums file: {exc}") from None
        if assets.archive not in sums:
            listed = ", ".join(sorted(sums)[:5]) or "nothing"
            raise ReleaseSourceError(f"{url} does not list {assets.archive} (it lists {listed}); the release may not "
                                     f"publish {self.platform}, or its asset names changed")
        return sums[assets.archive]

    def releases(self) -> list[Release]:
        """The releases `index_url` lists, newest first."""
        if self.index_url is None:
            raise InvalidInput(f"the {self.client} release source has no index_url to list releases from")
        try:
            return parse_release_index(self._fetch(self.index_url, INDEX_MAX_BYTES))
        except InvalidInput as exc:
            raise ReleaseSourceError(f"{self.index_url}: {exc}") from None

    @contextlib.contextmanager
    def stream_archive(self, version: str, chunk_size: int = 1 << 20,
                       max_bytes: int = 2 << 30) -> Iterator[ArchiveStream]:
        """The archive as an `ArchiveStream` of chunks, refused past `max_bytes`."""
        url = self.archive_url(version)
        try:
            with self._http() as client, client.stream("GET", url) as response:
                _check_status(response, url)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise ReleaseSourceError(f"{url}: {declared} bytes is over the {max_bytes} byte cap; refused")
                yield ArchiveStream(url, response.iter_bytes(chunk_size), max_bytes, self.timeout_s)
        except httpx.HTTPError as exc:
            raise _source_error(url, exc, self.timeout_s) from None
