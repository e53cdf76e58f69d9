"""Snapshot backup and restore: our engine against a naive tar | zstd | upload_fileobj, same data, same servers.

Starts its own sshd (tests/sshd.py's `start_sshd`, user rbtest) and its own
SeaweedFS (`weed mini`, tests/s3.py's `start_weed`) on 127.0.0.1, makes a
datadir per size with lab/datadir.py (a mutable state file, immutable 64 MiB
segments and their indexes) under /var/tmp, then times on the same SSH
connection and the same bucket:

  ours      backup_datadir (host lists every file and sha256s the mutable
            ones, tar | zstd of those and one `cat` per segment, segments
            hashed here as they stream, each AES-256-GCM encrypted here and
            uploaded multipart with per-part sha256) and restore_datadir
            (download, check, decrypt, tar -x / cat on the host, each segment
            checked before EOF, the archive's files re-hashed there);
  baseline  `tar -C DATADIR -cf - . | zstd -1 -T2` on a paramiko exec channel,
            its stdout straight into one boto3 `upload_fileobj` (default
            TransferConfig), and back: `download_fileobj` into the stdin of
            `zstd -d | tar -x -C TARGET`. No encryption, no hashing.

For each size and direction: wall time, MiB/s of datadir bytes, ours/baseline
and this process's peak RSS (VmHWM, reset through /proc/self/clear_refs
before each run; the engine and the baseline's transfers both run here).
Every restored tree, ours and the baseline's, is checked file by file
(sha256) against the source; a difference exits 1. Servers are stopped by
PID and the scratch directory removed at the end, also on Ctrl-C / SIGTERM.

    uv run --frozen python bench/snapshot_bench.py --sizes 200,2048
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from boto3.s3.transfer import TransferConfig  # noqa: E402

from lab.datadir import make_datadir  # noqa: E402
from tasks.audit import AuditRecord  # noqa: E402
from tasks.backups.crypto import EncryptionKey  # noqa: E402
from tasks.backups.datadir import backup_datadir, restore_datadir  # noqa: E402
from tasks.backups.layout import layout_for  # noqa: E402
from tasks.backups.manifest import Manifest  # noqa: E402
from tasks.ssh import SshRunner  # noqa: E402
from tests.processes import stop_process  # noqa: E402
from tests.s3 import BUCKET, start_weed  # noqa: E402
from tests.sshd import USER, start_sshd, stop_sshd  # noqa: E402

MiB = 1024 * 1024
GOAL_RATIO = 0.9
GOAL_RSS_MIB = 300
BASELINE_BACKUP = "tar -C {src} -cf - . | zstd -1 -T2 -q"
BASELINE_RESTORE = "mkdir -p {dst} && zstd -d -q | tar -x -C {dst}"


# ------------------------------------------------------------------ measuring


_LIBC = ctypes.CDLL("libc.so.6")


def reset_peak_rss() -> float:
    """Give back what earlier runs left in malloc's free lists (boto3's ten threads keep arenas), so one
    side's leftovers are not counted as the other's peak, then VmHWM := VmRSS; the RSS it starts from."""
    gc.collect()
    _LIBC.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return rss_mib()


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _proc_cpu(pid: int, children: bool = True) -> float:
    """CPU seconds of one process (all its threads), with its reaped children's when `children`."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(c) for t in Path(f"/proc/{p}/task").iterdir()
                    for c in (t / "children").read_text().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


class CpuMeter:
    """CPU seconds spent by this process, by weed and by sshd and the commands it ran (tar, zstd, cat...)."""

    def __init__(self, sshd_pid: int, weed_pid: int) -> None:
        self.sshd_pid, self.weed_pid = sshd_pid, weed_pid

    def read(self) -> dict[str, float]:
        return {"worker": _proc_cpu(os.getpid(), children=False), "weed": _proc_cpu(self.weed_pid),
                "host": sum(_proc_cpu(p) for p in [self.sshd_pid, *_descendants(self.sshd_pid)])}


CPU: CpuMeter | None = None
START_RSS = 0.0  # the worker's RSS as the last measured run started
IDLE_RSS = 0.0  # before any transfer


def measured(fn, *args) -> tuple[float, float, dict[str, float]]:
    """(seconds, peak RSS MiB of this process, CPU seconds by whom) of fn(*args)."""
    global START_RSS
    before = CPU.read() if CPU else {}
    START_RSS = reset_peak_rss()
    start = time.perf_counter()
    fn(*args)
    seconds, rss = time.perf_counter() - start, peak_rss_mib()
    after = CPU.read() if CPU else {}
    return seconds, rss, {k: after[k] - before.get(k, 0.0) for k in after}


def cpu_text(cpu: dict[str, float]) -> str:
    return "CPU " + " ".join(f"{k} {v:.1f}s" for k, v in cpu.items())


def tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                out[str(p.relative_to(root))] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


def check_tree(source: dict[str, str], target: Path, what: str) -> list[str]:
    got = tree(target)
    problems = [f"{what}: {p} missing" for p in sorted(source.keys() - got.keys())]
    problems += [f"{what}: {p} extra" for p in sorted(got.keys() - source.keys())]
    problems += [f"{what}: {p} differs" for p in sorted(source.keys() & got.keys()) if source[p] != got[p]]
    return problems


# ------------------------------------------------------------------ the two sides


class Ours:
    def __init__(self, ssh: SshRunner, store, key: EncryptionKey) -> None:
        self.ssh, self.store, self.key = ssh, store, key
        self.manifest: Manifest | None = None

    def backup(self, src: Path) -> None:
        created = datetime.now(timezone.utc)
        shell = Manifest(kind="snapshot", node="bench", host="bench", created_at=created)
        done = backup_datadir(self.ssh, self.store, self.key, str(src), layout_for("anvil"), shell.prefix, {})
        self.manifest = Manifest(kind="snapshot", node="bench", host="bench", created_at=created,
                                 archives=done.archives, files=done.files)

    def restore(self, dst: Path) -> None:
        restore_datadir(self.ssh, self.store, self.key, self.manifest, str(dst))


class _ChannelWriter:
    """download_fileobj's target: a non-seekable writer into the remote command's stdin."""

    def __init__(self, channel) -> None:
        self._channel = channel

    def write(self, data) -> int:
        self._channel.sendall(data)
        return len(data)

    def seekable(self) -> bool:
        return False


class Baseline:
    """tar | zstd on the same SSH transport, one boto3 managed transfer each way; no encryption, no hashes."""

    def __init__(self, ssh: SshRunner, client, prefix: str) -> None:
        self.ssh, self.client, self.prefix = ssh, client, prefix
        self.config = TransferConfig()  # the defaults: 8 MiB parts, 10 threads
        self.key = ""

    def _channel(self, command: str):
        self.ssh.connect()
        channel = self.ssh._client.get_transport().open_session()  # noqa: SLF001 - the very same connection
        channel.exec_command(command)
        return channel

    @staticmethod
    def _finish(channel, command: str) -> None:
        status = channel.recv_exit_status()
        err = channel.recv_stderr(65536).decode(errors="replace") if channel.recv_stderr_ready() else ""
        channel.close()
        if status != 0:
            raise RuntimeError(f"baseline `{command}` exited {status}: {err}")

    def backup(self, src: Path) -> None:
        self.key = f"{self.prefix}/baseline-{uuid.uuid4().hex[:8]}.tar.zst"
        command = BASELINE_BACKUP.format(src=shlex.quote(str(src)))
        channel = self._channel(command)
        channel.shutdown_write()
        with channel.makefile("rb") as stdout:
            self.client.upload_fileobj(stdout, BUCKET, self.key, Config=self.config)
        self._finish(channel, command)

    def restore(self, dst: Path) -> None:
        command = BASELINE_RESTORE.format(dst=shlex.quote(str(dst)))
        channel = self._channel(command)
        self.client.download_fileobj(BUCKET, self.key, _ChannelWriter(channel), Config=self.config)
        channel.shutdown_write()
        self._finish(channel, command)


# ------------------------------------------------------------------ one size


def bench_size(size_mib: int, runs: int, scratch: Path, ours: Ours, baseline: Baseline) -> dict:
    src = scratch / f"data-{size_mib}"
    t0 = time.monotonic()
    make_datadir(src, size_mib * MiB, seed=f"snapshot-bench-{size_mib}")
    source = tree(src)
    total = sum((src / p).stat().st_size for p in source)
    print(f"\n{size_mib} MiB: datadir of {len(source)} files, {total / MiB:.0f} MiB, "
          f"made and hashed in {time.monotonic() - t0:.1f}s")
    restores = scratch / "restore"
    figures = {side: {k: [] for k in ("backup", "restore", "rss_backup", "rss_restore", "cpu_backup", "cpu_restore",
                                     "start_backup", "start_restore")}
               for side in ("ours", "baseline")}
    problems: list[str] = []
    sides = [("ours", ours), ("baseline", baseline)]
    for run in range(runs):
        order = sides if run % 2 == 0 else sides[::-1]
        for name, side in order:
            seconds, rss, cpu = measured(side.backup, src)
            figures[name]["backup"].append(seconds)
            figures[name]["rss_backup"].append(rss)
            figures[name]["cpu_backup"].append(cpu)
            figures[name]["start_backup"].append(START_RSS)
            print(f"  run {run + 1} {name:8} backup  {seconds:7.2f}s {total / MiB / seconds:7.1f} MiB/s  "
                  f"peak RSS {rss:6.1f} MiB (from {START_RSS:.0f})  {cpu_text(cpu)}")
        for name, side in order:
            dst = restores / f"{name}-{size_mib}-{run}"
            seconds, rss, cpu = measured(side.restore, dst)
            figures[name]["restore"].append(seconds)
            figures[name]["rss_restore"].append(rss)
            figures[name]["cpu_restore"].append(cpu)
            figures[name]["start_restore"].append(START_RSS)
            found = check_tree(source, dst, f"{name} restore of {size_mib} MiB")
            problems += found
            print(f"  run {run + 1} {name:8} restore {seconds:7.2f}s {total / MiB / seconds:7.1f} MiB/s  "
                  f"peak RSS {rss:6.1f} MiB (from {START_RSS:.0f})  {cpu_text(cpu)}  sha256 of {len(source)} files: "
                  + ("identical" if not found else f"{len(found)} DIFFER"))
            shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    out = {"size_mib": size_mib, "bytes": total, "files": len(source), "runs": runs, "problems": problems}
    for name in ("ours", "baseline"):
        f = figures[name]
        out[name] = {d: {"seconds": statistics.median(f[d]), "mib_s": total / MiB / statistics.median(f[d]),
                         "peak_rss_mib": max(f[f"rss_{d}"]), "all_seconds": f[d], "cpu_seconds": f[f"cpu_{d}"],
                         "rss_rise_mib": max(r - b for r, b in zip(f[f"rss_{d}"], f[f"start_{d}"]))}
                     for d in ("backup", "restore")}
    for d in ("backup", "restore"):
        out[f"{d}_ratio"] = out["ours"][d]["mib_s"] / out["baseline"][d]["mib_s"]
    return out


def warm_up(scratch: Path, ours: Ours, baseline: Baseline) -> None:
    """One untimed round trip of a small datadir each way: the first writes to a fresh weed are slow
    (volumes are created), and whichever side went first would pay for it."""
    src = make_datadir(scratch / "warm-up", 16 * MiB, seed="snapshot-bench-warm-up")
    source = tree(src)
    for name, side in (("ours", ours), ("baseline", baseline)):
        side.backup(src)
        dst = scratch / "restore" / f"warm-up-{name}"
        side.restore(dst)
        if problems := check_tree(source, dst, f"{name} warm-up restore"):
            raise RuntimeError("; ".join(problems))
        shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)


def report(results: list[dict]) -> None:
    print("\nours: sha256 of every file (mutable on the host, segments as they stream), AES-256-GCM, per-part sha256;")
    print("baseline: tar | zstd -1 -T2, boto3 upload_fileobj/download_fileobj defaults, no encryption, no hashes.")
    print("\n| size | direction | ours s | ours MiB/s | baseline s | baseline MiB/s | ours/baseline "
          "| peak RSS ours (rise) | peak RSS baseline (rise) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        for d in ("backup", "restore"):
            o, b = r["ours"][d], r["baseline"][d]
            print(f"| {r['size_mib']} MiB | {d} | {o['seconds']:.2f} | {o['mib_s']:.0f} | {b['seconds']:.2f} "
                  f"| {b['mib_s']:.0f} | {r[f'{d}_ratio']:.2f}x | {o['peak_rss_mib']:.0f} MiB (+{o['rss_rise_mib']:.0f}) "
                  f"| {b['peak_rss_mib']:.0f} MiB (+{b['rss_rise_mib']:.0f}) |")
    print()
    peaks, rises = [], []
    for r in results:
        peak = max(r["ours"]["backup"]["peak_rss_mib"], r["ours"]["restore"]["peak_rss_mib"])
        rise = max(r["ours"]["backup"]["rss_rise_mib"], r["ours"]["restore"]["rss_rise_mib"])
        peaks.append(peak)
        rises.append(rise)
        print(f"{r['size_mib']} MiB: backup {r['backup_ratio']:.2f}x (ours {r['ours']['backup']['mib_s']:.0f} MiB/s, "
              f"baseline {r['baseline']['backup']['mib_s']:.0f} MiB/s), restore {r['restore_ratio']:.2f}x "
              f"(ours {r['ours']['restore']['mib_s']:.0f} MiB/s, baseline {r['baseline']['restore']['mib_s']:.0f} "
              f"MiB/s), peak RSS {peak:.0f} MiB (+{rise:.0f} MiB over the run's start)")
    ratios = [r[f"{d}_ratio"] for r in results for d in ("backup", "restore")]
    print(f"goal throughput ours/baseline >= {GOAL_RATIO}: {'MET' if min(ratios) >= GOAL_RATIO else 'MISSED'} "
          f"(lowest {min(ratios):.2f}x)")
    flat = max(rises) - min(rises) <= 16
    print(f"goal peak RSS < {GOAL_RSS_MIB} MiB: {'MET' if max(peaks) < GOAL_RSS_MIB else 'MISSED'} "
          f"({', '.join(f'{p:.0f}' for p in peaks)} MiB; the worker held {IDLE_RSS:.0f} MiB before any transfer "
          "and more after each, malloc_trim notwithstanding: see the rise)")
    print(f"goal ours' RSS flat across sizes: {'MET' if flat else 'MISSED'} "
          f"(rise over each run's start {', '.join(f'{p:.0f}' for p in rises)} MiB)")
    bad = [p for r in results for p in r["problems"]]
    print("restores checked: every restored file's sha256 against the source's, ours and baseline: "
          + ("all identical" if not bad else f"{len(bad)} PROBLEMS: " + "; ".join(bad[:10])))


def main() -> int:
    global CPU, IDLE_RSS
    IDLE_RSS = rss_mib()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="200,2048", help="datadir sizes in MiB, comma separated")
    parser.add_argument("--runs", type=int, default=1, help="runs per size (medians; the order alternates)")
    parser.add_argument("--scratch", default="/var/tmp", help="parent of the scratch directory (not a tmpfs)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if os.geteuid() != 0:
        print("needs root: it starts sshd and creates the user rbtest", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scratch = Path(tempfile.mkdtemp(prefix="snapshot-bench-", dir=args.scratch))
    scratch.chmod(0o755)  # rbtest reads the datadirs and its sshd keys below it
    os.environ["RUNBOOKS_AUDIT_DIR"] = str(scratch / "audit")
    sshd = weed = None
    try:
        fs = subprocess.run(["df", "--output=fstype", str(scratch)], capture_output=True, text=True).stdout.split()
        sshd = start_sshd(str(scratch))
        weed = start_weed(scratch / "weed")
        user = pwd.getpwnam(USER)
        (scratch / "restore").mkdir()
        os.chown(scratch / "restore", user.pw_uid, user.pw_gid)
        prefix = f"snapshot-bench-{uuid.uuid4().hex[:8]}"
        store = weed.store(prefix=prefix, read_timeout_seconds=120, max_attempts=3)
        key = EncryptionKey(os.urandom(32))
        audit = AuditRecord(f"snapshot-bench-{uuid.uuid4().hex[:8]}", "snapshot_bench", node="bench")
        ssh = SshRunner(sshd.host(), None, audit, private_key=sshd.client_key, known_hosts=sshd.known_hosts,
                        command_timeout=3600)
        print(f"scratch {scratch} ({fs[-1] if fs else '?'}), sshd 127.0.0.1:{sshd.port} as {USER}, "
              f"weed S3 {weed.endpoint} bucket {BUCKET}, cpus {os.cpu_count()}, "
              f"object-store part size {store.part_size_mib} MiB")
        with ssh:
            ours, baseline = Ours(ssh, store, key), Baseline(ssh, weed.raw_client(), prefix)
            print(f"ssh: paramiko, cipher {ssh._client.get_transport().remote_cipher}, "  # noqa: SLF001
                  f"mac {ssh._client.get_transport().remote_mac}")  # noqa: SLF001
            CPU = CpuMeter(sshd.pid, weed.proc.pid)
            t0 = time.monotonic()
            warm_up(scratch, ours, baseline)
            print(f"warm-up (one small datadir each way, untimed): {time.monotonic() - t0:.1f}s; "
                  f"worker RSS now {rss_mib():.0f} MiB; load average {os.getloadavg()[0]:.1f}")
            results = [bench_size(size, args.runs, scratch, ours, baseline) for size in sizes]
            print(f"\nload average at the end {os.getloadavg()[0]:.1f} (other work on the machine counts)")
        report(results)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"cpus": os.cpu_count(), "results": results}, indent=2))
        return 1 if any(r["problems"] for r in results) else 0
    finally:
        if weed is not None:
            stop_process(weed.proc)
        if sshd is not None:
            stop_sshd(sshd)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
