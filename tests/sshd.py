"""A real OpenSSH server for tests that need no lab, started by this module's fixture.

sshd runs on 127.0.0.1 on a free port with its own host key, key-only
logins for the unprivileged user `rbtest` (created here if missing), and is
stopped by PID at the end (`start_sshd` / `stop_sshd` outside pytest, e.g. in
bench/). Import the fixtures into a test module
(`from tests.sshd import audit, sshd`) and mark it `pytestmark = requires_sshd`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from inventory import Host
from tasks.audit import AuditRecord
from tasks.redaction import clear_secrets
from tasks.ssh import SshRunner
from tests.processes import stop_process

USER = "rbtest"
SSHD = "/usr/sbin/sshd"

requires_sshd = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SSHD), reason="needs root and Debian openssh-server"
)


def ensure_user(name: str) -> None:
    """An unprivileged login with a plain /bin/sh (no rc files), unlocked for key-only logins."""
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--system", "--shell", "/bin/sh", "--home-dir", f"/var/lib/{name}", "--create-home", name],
        check=True, timeout=30,
    )
    # UsePAM no refuses locked accounts ('!'); '*' has no password but is not locked.
    subprocess.run(["usermod", "-p", "*", name], check=True, timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, kind: str = "ed25519") -> tuple[str, str]:
    args = ["ssh-keygen", "-q", "-N", "", "-C", "", "-t", kind, "-f", str(path)]
    if kind == "rsa":
        args += ["-b", "2048"]
    subprocess.run(args, check=True, timeout=60)
    return path.read_text(), path.with_suffix(".pub").read_text()


@dataclass
class Sshd:
    dir: Path
    port: int
    pid: int
    host_pub: str  # "ssh-ed25519 AAAA..."
    client_key: str
    client_rsa_key: str
    proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    @property
    def known_hosts(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_pub}\n"

    def host(self) -> Host:
        return Host(address="127.0.0.1", ssh_port=self.port, ssh_user=USER, ssh_identity_block="lab-ssh")


def start_sshd(parent: str = "/tmp") -> Sshd:
    """Start sshd for USER on a free loopback port; a plain function (the fixture and bench/ use it).

    Stop it with `stop_sshd`. `parent` must let USER read the key files (not a 0700 tree).
    """
    ensure_user(USER)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    # Not under pytest's 0700 tmp tree: sshd reads authorized_keys as the user.
    d = Path(tempfile.mkdtemp(prefix="rb-sshd-", dir=parent))
    d.chmod(0o755)
    _, host_pub = keygen(d / "host_key")
    client_key, client_pub = keygen(d / "client_key")
    rsa_key, rsa_pub = keygen(d / "client_rsa", "rsa")
    (d / "authorized_keys").write_text(client_pub + rsa_pub)
    (d / "authorized_keys").chmod(0o644)
    proc = None
    for _attempt in range(3):
        port = free_port()
        (d / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
            f"AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin no\n"
            f"AllowUsers {USER}\nLogLevel INFO\nMaxStartups 50\n"
        )
        log = open(d / "sshd.log", "ab")
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log,
                                start_new_session=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        if proc.poll() is None:
            break
    if proc is None or proc.poll() is not None:
        text = (d / "sshd.log").read_text()
        shutil.rmtree(d, ignore_errors=True)
        raise RuntimeError(f"sshd did not start: {text}")
    return Sshd(d, port, proc.pid, " ".join(host_pub.split()[:2]), client_key, rsa_key, proc)


def stop_sshd(server: Sshd) -> None:
    """Stop the sshd `start_sshd` started, by PID (its own session), and remove its directory."""
    if server.proc is not None:
        stop_process(server.proc, grace=5)
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def sshd():
    server = start_sshd()
    yield server
    stop_sshd(server)


@pytest.fixture
def audit(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNBOOKS_AUDIT_DIR", str(tmp_path / "audit"))
    yield AuditRecord(f"ssh-{tmp_path.name}", "test_ssh", node="lab-node")
    clear_secrets()


def runner(sshd: Sshd, audit: AuditRecord, **kw) -> SshRunner:
    kw.setdefault("private_key", sshd.client_key)
    kw.setdefault("known_hosts", sshd.known_hosts)
    return SshRunner(sshd.host(), None, audit, **kw)


def actions(audit: AuditRecord) -> list[dict]:
    return [e["data"] for e in audit.entries() if e["kind"] == "action"]
