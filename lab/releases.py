"""The lab's release server: anvil releases laid out the way GitHub serves Erigon's.

    OUT/releases.json                               GitHub's "list releases" shape, newest first
    OUT/v1.7.1/anvil_v1.7.1_linux_amd64.tar.gz      one directory anvil_v1.7.1_linux_amd64/ holding anvil (0755)
    OUT/v1.7.1/anvil_v1.7.1_checksums.txt           sha256sum format

so `tasks.releases.ReleaseSource("anvil", "http://HOST:PORT/{tag}", "http://HOST:PORT/releases.json")`
reads it exactly as it reads a real project's page. Binaries come from npm (the package the lab
already installs anvil from), each version fetched once into a cache; archives are built
reproducibly (fixed owners and mtimes, gzip without a timestamp), so a rebuild gives the same
bytes and sums, and a second build only copies.

Broken releases for failure tests (`build_broken_release`) are listed as pre-releases: "upgrade to
the newest" never picks one, a runbook asked for one by version finds it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tasks.probes.evm import version_key
from tasks.releases import asset_names, normalize_version

from . import topology as t

LAB_RELEASE_VERSIONS = ("1.5.1", "1.7.1")  # 1.7.0 from npm reports itself as 1.6.0: not a clean upgrade source
BROKEN_KINDS = ("bad-checksum", "exits-at-start")
DEFAULT_CACHE = Path("/var/tmp/rblab-release-cache")
NPM_TIMEOUT_S = 900
ARCHIVE_MTIME = 1767225600  # 2026-01-01, every member: reproducible archives (and no files dated 1970)
BROKEN_MARK = "BROKEN"  # a file in a release's directory, naming its kind


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time per cache entry (two test sessions may build at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _exact_version(version: str) -> str:
    if normalize_version(version) != version:
        raise ValueError(f"lab release version {version!r} must be a bare version like 1.7.1")
    return version


def npm_anvil(version: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The anvil binary of `version` from npm, installed once under cache_dir/version."""
    with _locked(cache_dir / f"{_exact_version(version)}.lock"):
        return _npm_install(version, cache_dir)


def _npm_install(version: str, cache_dir: Path) -> Path:
    prefix = cache_dir / version
    binary = prefix / "node_modules" / t.ANVIL_PACKAGE / "bin" / "anvil"
    if binary.is_file():
        return binary
    # Installed beside and renamed into place: a present prefix is always a complete one.
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=cache_dir))
    try:
        done = subprocess.run(["npm", "install", "--prefix", str(staging), "--no-save", "--no-audit", "--no-fund",
                               f"{t.ANVIL_PACKAGE}@{version}"], capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"npm install {t.ANVIL_PACKAGE}@{version} failed ({done.returncode}):\n"
                               f"{done.stderr.strip()[-2000:]}")
        if not (staging / binary.relative_to(prefix)).is_file():
            raise RuntimeError(f"npm installed {t.ANVIL_PACKAGE}@{version} but it has no bin/anvil")
        staging.chmod(0o755)
        shutil.rmtree(prefix, ignore_errors=True)
        staging.rename(prefix)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return binary


def _cached_archive(version: str, cache_dir: Path) -> bytes:
    """The release archive of `version`, built once and kept beside its npm install."""
    assets = asset_names("anvil", version)
    cached = cache_dir / version / assets.archive
    with _locked(cache_dir / f"{version}.lock"):
        if not cached.is_file():
            _write(cached, _tar_gz(assets.top_dir or "", _npm_install(version, cache_dir).read_bytes()))
        return cached.read_bytes()


def _tar_gz(top_dir: str, binary: bytes) -> bytes:
    """A tar.gz wrapping one directory that holds `anvil`, the same bytes every time."""
    def entry(name: str, kind: bytes, size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.size, info.mtime = kind, 0o755, size, ARCHIVE_MTIME
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(entry(top_dir, tarfile.DIRTYPE))
            tar.addfile(entry(f"{top_dir}/anvil", tarfile.REGTYPE, len(binary)), io.BytesIO(binary))
    return out.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _publish(out_dir: Path, version: str, archive: bytes, listed_sha256: str | None = None) -> str:
    """Writes a release's archive and checksums file; returns the archive's real sha256."""
    assets = asset_names("anvil", version)
    sha256 = hashlib.sha256(archive).hexdigest()
    _write(out_dir / assets.tag / assets.archive, archive)
    _write(out_dir / assets.tag / assets.checksums, f"{listed_sha256 or sha256}  {assets.archive}\n".encode())
    return sha256


def _write_index(out_dir: Path) -> None:
    """releases.json from what is on disk, so it always lists exactly what the server serves."""
    releases = []
    for release_dir in out_dir.glob("v*/"):
        with contextlib.suppress(ValueError):
            version = normalize_version(release_dir.name)
            assets = asset_names("anvil", version)
            archive = release_dir / assets.archive
            if archive.is_file() and (release_dir / assets.checksums).is_file():
                published = datetime.datetime.fromtimestamp(archive.stat().st_mtime, datetime.timezone.utc)
                releases.append({
                    "tag_name": assets.tag, "name": f"anvil {assets.tag}", "draft": False,
                    "prerelease": (release_dir / BROKEN_MARK).exists() or "-" in version,
                    "published_at": published.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "assets": [{"name": p.name, "size": p.stat().st_size}
                               for p in (archive, release_dir / assets.checksums)],
                })
    releases.sort(key=lambda r: version_key(normalize_version(r["tag_name"])), reverse=True)
    _write(out_dir / "releases.json", json.dumps(releases, indent=1).encode())


def build_releases(out_dir: Path, versions: list[str] | tuple[str, ...] = LAB_RELEASE_VERSIONS,
                   cache_dir: Path = DEFAULT_CACHE) -> dict[str, str]:
    """Each anvil version as a release under out_dir, plus releases.json; returns {version: archive sha256}.

    Idempotent: npm is asked once per version, and the archive built once, both kept in cache_dir.
    """
    sums = {}
    for version in versions:
        assets = asset_names("anvil", _exact_version(version))
        if (out_dir / assets.tag / BROKEN_MARK).exists():
            raise ValueError(f"{out_dir / assets.tag} holds a broken test release; build good releases elsewhere")
        sums[version] = _publish(out_dir, version, _cached_archive(version, cache_dir))
    _write_index(out_dir)
    return sums


def build_broken_release(out_dir: Path, version: str = "1.7.99", kind: str = "bad-checksum") -> str:
    """A release that must fail an upgrade, listed as a pre-release; returns its archive's real sha256.

    bad-checksum: the checksums file lists a wrong sum (the archive's `anvil` answers --version
    like a real one, so only the sum check can refuse it). exits-at-start: the sums are right, and
    `anvil` prints an error to stderr and exits 1 whatever it is asked.
    """
    if kind not in BROKEN_KINDS:
        raise ValueError(f"broken release kind {kind!r} is not one of {', '.join(BROKEN_KINDS)}")
    assets = asset_names("anvil", _exact_version(version))
    release_dir = out_dir / assets.tag
    if release_dir.exists() and not (release_dir / BROKEN_MARK).exists():
        raise ValueError(f"{release_dir} is a good release; pick an unused version for a broken one")
    if kind == "bad-checksum":
        script = (f'#!/bin/sh\nif [ "$1" = --version ]; then echo "anvil Version: {version}"; exit 0; fi\n'
                  'echo "anvil: this binary comes from a release whose checksum is wrong; it must never run" >&2\n'
                  "exit 1\n")
    else:
        script = f'#!/bin/sh\necho "anvil: error: lab release {version} exits at start (a failure test)" >&2\nexit 1\n'
    archive = _tar_gz(assets.top_dir or "", script.encode())
    wrong = hashlib.sha256(b"not " + archive).hexdigest() if kind == "bad-checksum" else None
    sha256 = _publish(out_dir, version, archive, wrong)
    _write(release_dir / BROKEN_MARK, f"{kind}\n".encode())
    _write_index(out_dir)
    return sha256


def serve_argv(out_dir: Path, host: str, port: int) -> list[str]:
    """A static file server for out_dir (Python's http.server: GET with Content-Length, no writes)."""
    return [sys.executable, "-m", "http.server", "--bind", host, "--directory", str(out_dir), str(int(port))]
