"""A client's releases on a host: installed side by side, checked on the host, switched atomically.

Layout under the node's `install_dir` (inventory), as operators keep /opt/erigon:

    <install_dir>/<version>/          one release, unpacked (the archive's one directory, stripped)
    <install_dir>/<version>/.sha256   the archive's sha256, as checked on the host when it was installed
    <install_dir>/current -> <version>  what the service runs: its unit or program starts
                                        <install_dir>/current/<binary>

Why this shape: an upgrade installs the new version while the old one still serves, so the node's
downtime is a stop, a rename and a start; `current` is switched with `ln -s` to a temporary name and
`mv -T` over it, and rename(2) is atomic, so a crash leaves it on one version or the other, never
neither; a rollback is the same switch back to a version that is still there. The archive is
streamed from the worker over the one SSH runner (hosts need no route to the release server) and
its sha256 is checked on the host by `sha256sum -c` before it is unpacked.
"""

from __future__ import annotations

import posixpath
import re

from tasks.errors import InvalidInput

CURRENT = "current"
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The binary each client's archive holds, where it differs from the client's name.
BINARIES = {"op-geth": "geth", "nitro": "nitro", "avalanchego": "avalanchego"}


def binary_of(client: str) -> str:
    return BINARIES.get(client, client)


def _version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.match(version):
        raise InvalidInput(f"version {version!r} is not a plain version (digits, letters, . + -)")
    return version


def version_dir(install_dir: str, version: str) -> str:
    return posixpath.join(install_dir, _version(version))


def current_argv(install_dir: str) -> list[str]:
    """Prints the version `current` points at (empty when there is no link)."""
    return ["sh", "-c", 'readlink -- "$1/current" || true', "sh", install_dir]


def parse_current(output: str) -> str | None:
    target = output.strip().rstrip("/")
    return posixpath.basename(target) or None


def installed_argv(install_dir: str, version: str, sha256: str, binary: str) -> list[str]:
    """Exit 0 when `version` is installed from an archive with this sha256 and its binary is executable."""
    final = version_dir(install_dir, version)
    return ["sh", "-c", '[ -x "$1/$3" ] && [ "$(cat "$1/.sha256" 2>/dev/null)" = "$2" ]', "sh", final, _sha(sha256),
            binary]


def receive_argv(install_dir: str, version: str) -> tuple[list[str], str]:
    """(argv that writes stdin to the incoming archive, the archive's path on the host)."""
    incoming = posixpath.join(install_dir, f".incoming-{_version(version)}.tar.gz")
    return ["sh", "-c", 'umask 022 && mkdir -p -- "$1" && cat > "$2"', "sh", install_dir, incoming], incoming


def unpack_argv(install_dir: str, version: str, sha256: str, binary: str, incoming: str, wrapped: bool = True) -> list[str]:
    """Check the incoming archive's sha256 on the host, unpack it beside the others, move it into place.

    `wrapped`: the archive holds one directory named like it (Erigon 3, the lab's anvil), stripped; Erigon
    2.x archives hold the binary at their root. Fails (and leaves no half-unpacked version) when the sum
    differs, the archive does not unpack, or it holds no executable `binary`.
    """
    final = version_dir(install_dir, version)
    script = (
        'set -e; trap \'rm -rf -- "$4"; rm -f -- "$2"\' EXIT; '
        'printf "%s  %s\\n" "$3" "$2" | sha256sum -c --quiet - || { echo "sha256 of $2 is not $3" >&2; exit 3; }; '
        'rm -rf -- "$4"; mkdir -- "$4"; tar -xzf "$2" -C "$4" --strip-components="$6" --no-same-owner; '
        '[ -x "$4/$5" ] || { echo "the archive holds no executable $5" >&2; exit 4; }; '
        'printf "%s" "$3" > "$4/.sha256"; rm -rf -- "$1"; mv -T -- "$4" "$1"'
    )
    return ["sh", "-c", script, "sh", final, incoming, _sha(sha256), f"{final}.unpacking", binary, "1" if wrapped else "0"]


def switch_argv(install_dir: str, version: str) -> list[str]:
    """Point `current` at `version` atomically (a relative link, so the tree can move)."""
    _version(version)
    return ["sh", "-c", '[ -d "$1/$2" ] || { echo "$1/$2 is not installed" >&2; exit 2; }; '
            'ln -sfn -- "$2" "$1/.current.new" && mv -T -- "$1/.current.new" "$1/current"', "sh", install_dir, version]


def _sha(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise InvalidInput(f"{sha256!r} is not a lower-case sha256")
    return sha256
