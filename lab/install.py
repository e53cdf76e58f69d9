"""Install what the lab needs on a fresh Debian machine. Idempotent and quiet when nothing is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from . import topology as t

# systemd: tests boot it as PID 1 of its own namespaces (lab/systemd.py) to drive the systemd adapter.
APT_PACKAGES = ["openssh-server", "supervisor", "haproxy", "prometheus", "prometheus-alertmanager", "iproute2", "systemd",
                # backups: the MEV database server and its client tools, and zstd for the archives
                "postgresql-15", "postgresql-client-15", "zstd",
                # the UI tests' browser (Playwright drives the system Chromium: no browser downloads here)
                "chromium",
                # the highly available Prefect shape: messaging, event ordering and lease storage (lab/prefect_ha.py)
                "redis-server"]
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def _run(argv: list[str], timeout: float = 900, env: dict | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr.strip()[-2000:]}")
    return done.stdout


def _dpkg_installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip().endswith(" installed")


def apt_packages(log=print) -> list[str]:
    """apt-get install the missing packages (and npm when there is none); returns what it installed."""
    missing = [p for p in APT_PACKAGES if not _dpkg_installed(p)]
    if not shutil.which("npm"):
        missing.append("npm")
    if not missing:
        return []
    log(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Package scripts must not start system-wide sshd/haproxy/prometheus: the
    # lab runs its own. policy-rc.d 101 = "action forbidden"; only added
    # (and removed again) when the machine has none of its own.
    added_policy = False
    if not POLICY_RC_D.exists():
        POLICY_RC_D.write_text("#!/bin/sh\n# temporary, written by `python -m lab install`\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
        added_policy = True
    try:
        _run(["apt-get", "update"], env=env)
        _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)
    finally:
        if added_policy:
            POLICY_RC_D.unlink(missing_ok=True)
    return missing


def anvil(log=print) -> bool:
    if t.ANVIL_BIN.is_file() and os.access(t.ANVIL_BIN, os.X_OK):
        return False
    log(f"installing anvil {t.ANVIL_VERSION} from npm into {t.NPM_PREFIX}")
    t.NPM_PREFIX.mkdir(parents=True, exist_ok=True)
    for d in (t.NPM_PREFIX.parent, t.NPM_PREFIX):  # the service user runs the binary
        d.chmod(0o755)
    _run(["npm", "install", "--prefix", str(t.NPM_PREFIX), "--no-audit", "--no-fund",
          f"{t.ANVIL_PACKAGE}@{t.ANVIL_VERSION}"])
    if not t.ANVIL_BIN.is_file():
        raise RuntimeError(f"npm installed {t.ANVIL_PACKAGE} but {t.ANVIL_BIN} is not there")
    return True


def release_binaries(log=print) -> None:
    """The anvil versions the lab's release server publishes, fetched from npm once into their cache."""
    from .releases import LAB_RELEASE_VERSIONS, npm_anvil

    for version in LAB_RELEASE_VERSIONS:
        npm_anvil(version)


def service_user(log=print) -> bool:
    """The unprivileged user nodes run as and runbooks log in as (plain /bin/sh, key-only)."""
    changed = False
    if subprocess.run(["id", "-u", t.SERVICE_USER], capture_output=True).returncode != 0:
        log(f"creating system user {t.SERVICE_USER}")
        _run(["useradd", "--system", "--shell", "/bin/sh", "--home-dir", t.SERVICE_HOME, "--create-home",
              t.SERVICE_USER])
        changed = True
    shadow = _run(["getent", "shadow", t.SERVICE_USER]).split(":")
    if len(shadow) > 1 and shadow[1] != "*":
        # A locked account ('!') is refused by sshd when UsePAM is off; '*' is
        # "no password, not locked": key login only.
        _run(["usermod", "-p", "*", t.SERVICE_USER])
        changed = True
    return changed


def install(log=print) -> None:
    if os.geteuid() != 0:
        raise RuntimeError("the lab needs root (network namespaces, supervisord, sshd)")
    apt_packages(log)
    anvil(log)
    release_binaries(log)
    service_user(log)
