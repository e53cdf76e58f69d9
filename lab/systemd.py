"""A real systemd to drive the systemd adapter against, with sshd as one of its units.

PID 1 of this machine is not systemd and no Docker engine runs, but as root
we can give Debian's own systemd (252, package `systemd`) what a container
runtime would: it boots as PID 1 of new pid, mount, cgroup, UTS and IPC
namespaces, on an overlay of this machine's root whose writes land in a
tmpfs (so its boot - tmpfiles cleaning /tmp, utmp, the journal - never
touches the real filesystem), with its own /dev (a tmpfs holding binds of
null, zero, full, random, urandom and tty, and a private devpts: tmpfiles'
device permission rules never reach the real /dev), a fresh read-only /sys, a read-only
/proc/sys (so systemd-sysctl skips) and no CAP_SYS_MODULE (so module
loading skips): the host kernel's settings stay as they are. It runs in a
sub-cgroup of this machine's cgroup v2 tree, seen as its root through a
cgroup namespace, and is told `systemd.unified_cgroup_hierarchy=1` (in a
container systemd reads its kernel options from its own argv): in this
machine's hybrid layout it would otherwise create cgroups in the real v1
hierarchies (name=systemd, pids, devices, memory). It shares this
machine's network namespace and runs sshd on 127.0.0.1:<port>, so the real
SshRunner logs in as root and runs the adapter's argv, as on a node host.

The default target is our own `rblab.target` (journald + sshd), not the
machine's multi-user.target, so none of this machine's enabled services
(ssh on port 22, haproxy, prometheus) start inside it. Boot to "running"
takes about a second; shutdown (SIGRTMIN+4 = poweroff) about two.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SYSTEMD = "/lib/systemd/systemd"
SSHD = "/usr/sbin/sshd"
TOOLS = ("unshare", "nsenter", "setpriv", "mount", "pivot_root", "umount", "ssh-keygen")

# PID 1 of the new pid namespace until it execs systemd. Fixed text; the state
# directory arrives as $1, the cgroup directory as $2, systemd as $3 (never interpolated).
BOOT_SCRIPT = r"""
set -eu
d=$1 cg=$2 systemd=$3 r=$1/root
echo $$ > "$cg/cgroup.procs"
mount --make-rprivate /
mount -t tmpfs -o mode=755 tmpfs "$d/rw"
mkdir "$d/rw/upper" "$d/rw/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$d/rw/upper,workdir=$d/rw/work" "$r"
mount -t proc proc "$r/proc"
mount --bind "$r/proc/sys" "$r/proc/sys"
mount -o remount,bind,ro "$r/proc/sys"
mount -t sysfs -o ro sysfs "$r/sys"
mount -t tmpfs -o mode=755,nosuid tmpfs "$r/dev"
for n in null zero full random urandom tty; do
  touch "$r/dev/$n"; mount --bind "/dev/$n" "$r/dev/$n"
done
touch "$r/dev/console"; mount --bind "$d/console" "$r/dev/console"
mkdir "$r/dev/pts" "$r/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$r/dev/pts"
ln -s pts/ptmx "$r/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$r/dev/shm"
ln -s /proc/self/fd "$r/dev/fd"
ln -s /proc/self/fd/0 "$r/dev/stdin"; ln -s /proc/self/fd/1 "$r/dev/stdout"; ln -s /proc/self/fd/2 "$r/dev/stderr"
mount -t tmpfs -o mode=755 tmpfs "$r/run"
mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
cp -a "$d/seed/." "$r/"
mkdir -p "$r/oldroot"
cd "$r"
pivot_root . oldroot
umount -l /oldroot
exec unshare --cgroup -- setpriv --bounding-set -sys_module -- \
  env -i container=rblab "$systemd" --unit=rblab.target --log-target=journal systemd.unified_cgroup_hierarchy=1
"""

TARGET = """[Unit]
Description=Runbook tests: journald and sshd only
Wants=systemd-journald.socket systemd-journald.service rb-sshd.service
"""

SSHD_UNIT = """[Unit]
Description=OpenSSH for the runbook tests
[Service]
ExecStart=/usr/sbin/sshd -D -e -f /etc/rblab/sshd_config
RuntimeDirectory=sshd
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cgroup2_root() -> Path:
    """Where this machine mounts cgroup v2 (unified, or the hybrid layout's /unified)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2" and fields[1] in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
            return Path(fields[1])
    raise RuntimeError("no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified: systemd cannot track services")


def missing_components() -> list[str]:
    """What this machine lacks to boot the systemd (empty when it can)."""
    missing = [p for p in (SYSTEMD, SSHD) if not os.access(p, os.X_OK)]
    missing += [t for t in TOOLS if shutil.which(t) is None]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


@dataclass
class SystemdHost:
    """A booted systemd: its state directory, PIDs, and how to log in to it."""

    dir: Path
    cgroup: Path
    proc: subprocess.Popen  # `unshare --fork`, parent of systemd
    systemd_pid: int  # systemd's PID as this machine sees it
    ssh_port: int
    host_pub: str  # "ssh-ed25519 AAAA..."
    client_key: str  # private key whose public half root's authorized_keys holds

    @property
    def known_hosts(self) -> str:
        return f"[127.0.0.1]:{self.ssh_port} {self.host_pub}\n"

    @property
    def root(self) -> Path:
        """systemd's root filesystem, seen from this machine."""
        return Path(f"/proc/{self.systemd_pid}/root")

    def install_unit(self, name: str, text: str) -> Path:
        """Write a unit file into /etc/systemd/system (the caller then runs `systemctl daemon-reload`)."""
        path = self.root / "etc/systemd/system" / name
        path.write_text(text)
        return path

    def console(self) -> str:
        return (self.dir / "console").read_text(errors="replace")

    def stop(self, grace: float = 10.0) -> None:
        """Power systemd off (SIGRTMIN+4), then SIGKILL it (ending its pid namespace) if it lingers."""
        if self.proc.poll() is None:
            try:
                os.kill(self.systemd_pid, signal.SIGRTMIN + 4)
                self.proc.wait(grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                if self.proc.poll() is None:
                    os.kill(self.systemd_pid, signal.SIGKILL)
                    self.proc.wait(5)
        _remove_cgroup(self.cgroup)
        shutil.rmtree(self.dir, ignore_errors=True)


def _remove_cgroup(cg: Path) -> None:
    # Deepest first; a cgroup directory goes away with rmdir once it is empty.
    if not cg.exists():
        return
    for sub in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        cg.rmdir()
    except OSError:
        pass


def _journal_tail(host: SystemdHost | None) -> str:
    if host is None:
        return "(systemd never started)"
    done = subprocess.run(["nsenter", "-t", str(host.systemd_pid), "-m", "-p", "--", "journalctl", "-n", "40",
                           "--no-pager"], capture_output=True, text=True, timeout=5)
    return (done.stdout + done.stderr)[-4000:]


def _keygen(path: Path) -> tuple[str, str]:
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-C", "", "-t", "ed25519", "-f", str(path)],
                   check=True, timeout=30, capture_output=True)
    return path.read_text(), path.with_suffix(".pub").read_text()


def _seed(seed: Path, port: int) -> tuple[str, str]:
    """Files copied over the overlay before boot: units, sshd config and keys, a /bin/sh root."""
    (seed / "etc/systemd/system").mkdir(parents=True)
    (seed / "etc/systemd/system/rblab.target").write_text(TARGET)
    (seed / "etc/systemd/system/rb-sshd.service").write_text(SSHD_UNIT)
    ssh = seed / "etc/rblab"
    ssh.mkdir(parents=True)
    _, host_pub = _keygen(ssh / "host_key")
    client_key, client_pub = _keygen(ssh / "client_key")
    (ssh / "client_key").unlink()  # the caller holds it; the host needs only the public half
    (ssh / "authorized_keys").write_text(client_pub)
    (ssh / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey /etc/rblab/host_key\nPidFile /run/sshd/rb-sshd.pid\n"
        "AuthorizedKeysFile /etc/rblab/authorized_keys\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "AllowUsers root\nLogLevel INFO\n"
    )
    # Root's login shell here is bash, whose rc files cost ~100 ms a command;
    # the overlay's copy of /etc/passwd gives root /bin/sh inside only.
    lines = []
    for line in Path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "root":
            fields[-1] = "/bin/sh"
        lines.append(":".join(fields))
    (seed / "etc/passwd").write_text("\n".join(lines) + "\n")
    return " ".join(host_pub.split()[:2]), client_key


def boot(deadline: float = 20.0) -> SystemdHost:
    """Boot a systemd (see the module docstring) and wait until its sshd accepts connections."""
    missing = missing_components()
    if missing:
        raise RuntimeError(f"cannot boot systemd, missing: {', '.join(missing)} (run `python -m lab install` as root)")
    d = Path(tempfile.mkdtemp(prefix="rb-systemd-", dir="/var/tmp"))
    for sub in ("rw", "root", "seed"):
        (d / sub).mkdir()
    (d / "console").touch()
    cg = _cgroup2_root() / d.name
    cg.mkdir()
    port = _free_port()
    host_pub, client_key = _seed(d / "seed", port)
    log = open(d / "unshare.log", "ab")
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--kill-child",
         "--", "/bin/sh", "-c", BOOT_SCRIPT, "rb-systemd-boot", str(d), str(cg), SYSTEMD],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )
    log.close()
    host = None
    try:
        end = time.monotonic() + deadline
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"systemd exited ({proc.returncode}) while booting:\n"
                    f"{(d / 'unshare.log').read_text(errors='replace')[-2000:]}\n{(d / 'console').read_text(errors='replace')[-2000:]}"
                )
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            if children and host is None:
                host = SystemdHost(d, cg, proc, int(children[0]), port, host_pub, client_key)
            if host is not None:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    return host
                except OSError:
                    pass
            if time.monotonic() > end:
                raise RuntimeError(
                    f"systemd's sshd did not listen on 127.0.0.1:{port} within {deadline:.0f} s; its journal:\n"
                    f"{_journal_tail(host)}"
                )
            time.sleep(0.05)
    except BaseException:
        if host is not None:
            host.stop()
        else:
            if proc.poll() is None:
                proc.kill()  # --kill-child takes the namespace with it
                proc.wait(5)
            _remove_cgroup(cg)
            shutil.rmtree(d, ignore_errors=True)
        raise
