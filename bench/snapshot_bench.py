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

Every timed run (each side, direction and run) executes in a FRESH child
process (multiprocessing "spawn", never fork: paramiko and boto3 run
threads), as in production, where a Prefect worker starts one process per
flow run. The child imports the modules, opens its own SSH connection and
S3 client and makes one tiny untimed call (a HEAD or a one-key list), like
a warm worker; then it times the one operation and reports its wall
seconds, its own CPU seconds during it (getrusage), its RSS just before it
(VmRSS) and its peak RSS at the end (VmHWM). So the peak RSS is what ONE
backup or restore needs, not what earlier runs left in a long-lived
process. Ours' restore gets ours' backup's Manifest as JSON; the key goes
to the child through the pipe, never printed. Around each operation this
process measures the CPU of weed and of sshd and the commands it ran.

For each size and direction: wall time, MiB/s of datadir bytes,
ours/baseline and each side's peak RSS with its rise over the child's RSS
before the operation. Every restored tree, ours and the baseline's, is
checked file by file (sha256) against the source; a difference exits 1.
Servers are stopped by PID and the scratch directory removed at the end,
also on Ctrl-C / SIGTERM.

    uv run --frozen python bench/snapshot_bench.py --sizes 200,2048
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import pwd
import resource
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
from tasks import objectstore  # noqa: E402
from tasks.audit import AuditRecord  # noqa: E402
from tasks.backups.crypto import EncryptionKey  # noqa: E402
from tasks.backups.datadir import backup_datadir, restore_datadir  # noqa: E402
from tasks.backups.layout import layout_for  # noqa: E402
from tasks.backups.manifest import Manifest  # noqa: E402
from tasks.ssh import SshRunner  # noqa: E402
from tests.processes import stop_process  # noqa: E402
from tests.s3 import BUCKET, S3Server, start_weed  # noqa: E402
from tests.sshd import USER, start_sshd, stop_sshd  # noqa: E402

MiB = 1024 * 1024
GOAL_RATIO = 0.9
GOAL_RSS_MIB = 300
FLAT_MIB, FLAT_SHARE = 30, 0.10  # ours' peak RSS is flat when sizes differ by less than either
BASELINE_BACKUP = "tar -C {src} -cf - . | zstd -1 -T2 -q"
BASELINE_RESTORE = "mkdir -p {dst} && zstd -d -q | tar -x -C {dst}"


# ------------------------------------------------------------------ measuring


def status_mib(field: str) -> float:
    """VmRSS, VmHWM... of this process from /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all of this process's threads
    return usage.ru_utime + usage.ru_stime


def _proc_cpu(pid: int) -> float:
    """CPU seconds of one process (all its threads) and of its reaped children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


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
    """CPU seconds spent by weed and by sshd and the commands it ran (tar, zstd, cat...)."""

    def __init__(self, sshd_pid: int, weed_pid: int) -> None:
        self.sshd_pid, self.weed_pid = sshd_pid, weed_pid

    def read(self) -> dict[str, float]:
        return {"weed": _proc_cpu(self.weed_pid),
                "host": sum(_proc_cpu(p) for p in [self.sshd_pid, *_descendants(self.sshd_pid)])}


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
# backup(src) returns what restore(dst, made) needs: ours' Manifest as JSON, the baseline's object key.


class Ours:
    def __init__(self, ssh: SshRunner, store, key: EncryptionKey) -> None:
        self.ssh, self.store, self.key = ssh, store, key

    def warm_up(self) -> None:
        objectstore.head(self.store, "no-such-object")  # builds the store's cached client

    def backup(self, src: Path) -> str:
        created = datetime.now(timezone.utc)
        shell = Manifest(kind="snapshot", node="bench", host="bench", created_at=created)
        done = backup_datadir(self.ssh, self.store, self.key, str(src), layout_for("anvil"), shell.prefix, {})
        return Manifest(kind="snapshot", node="bench", host="bench", created_at=created,
                        archives=done.archives, files=done.files).model_dump_json()

    def restore(self, dst: Path, made: str) -> None:
        restore_datadir(self.ssh, self.store, self.key, Manifest.model_validate_json(made), str(dst))


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

    def warm_up(self) -> None:
        self.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{self.prefix}/", MaxKeys=1)

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

    def backup(self, src: Path) -> str:
        key = f"{self.prefix}/baseline-{uuid.uuid4().hex[:8]}.tar.zst"
        command = BASELINE_BACKUP.format(src=shlex.quote(str(src)))
        channel = self._channel(command)
        channel.shutdown_write()
        with channel.makefile("rb") as stdout:
            self.client.upload_fileobj(stdout, BUCKET, key, Config=self.config)
        self._finish(channel, command)
        return key

    def restore(self, dst: Path, made: str) -> None:
        command = BASELINE_RESTORE.format(dst=shlex.quote(str(dst)))
        channel = self._channel(command)
        self.client.download_fileobj(BUCKET, made, _ChannelWriter(channel), Config=self.config)
        channel.shutdown_write()
        self._finish(channel, command)


# ------------------------------------------------------------------ one run, in a fresh process


def child(conn) -> None:
    """A flow run's process: set up untimed (SSH connection, S3 client, one tiny call), say ready, wait for
    go, time the one operation, send its figures back."""
    job = conn.recv()
    audit = AuditRecord(f"snapshot-bench-{uuid.uuid4().hex[:8]}", "snapshot_bench", node="bench")
    ssh = SshRunner(job["host"], None, audit, private_key=Path(job["client_key_file"]).read_text(),
                    known_hosts=job["known_hosts"], command_timeout=3600)
    weed = S3Server(job["endpoint"], proc=None, dir=None)  # only its endpoint is used: the parent runs weed
    with ssh:
        if job["side"] == "ours":
            store = weed.store(prefix=job["prefix"], read_timeout_seconds=120, max_attempts=3)
            side = Ours(ssh, store, EncryptionKey(bytes.fromhex(job["key"])))
        else:
            side = Baseline(ssh, weed.raw_client(), job["prefix"])
        side.warm_up()
        transport = ssh._client.get_transport()  # noqa: SLF001
        conn.send({"cipher": transport.remote_cipher, "mac": transport.remote_mac})
        conn.recv()  # go
        start_rss, cpu = status_mib("VmRSS"), own_cpu_seconds()
        start = time.perf_counter()
        if job["op"] == "backup":
            made = side.backup(Path(job["path"]))
        else:
            made = side.restore(Path(job["path"]), job["made"])
        seconds = time.perf_counter() - start
        conn.send({"seconds": seconds, "cpu": own_cpu_seconds() - cpu, "start_rss_mib": start_rss,
                   "peak_rss_mib": status_mib("VmHWM"), "made": made})


class Runner:
    """Runs each operation in a fresh spawned process and measures weed's and the host's CPU around it."""

    def __init__(self, cpu: CpuMeter, common: dict) -> None:
        self.cpu, self.common = cpu, common
        self.ssh_text = ""

    def run(self, side: str, op: str, path: Path, made: str | None = None) -> dict:
        ctx = multiprocessing.get_context("spawn")  # never fork: paramiko and boto3 have threads
        conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=child, args=(child_conn,), name=f"{side}-{op}", daemon=True)
        proc.start()
        child_conn.close()
        try:
            conn.send(self.common | {"side": side, "op": op, "path": str(path), "made": made})
            ready = conn.recv()
            self.ssh_text = f"paramiko, cipher {ready['cipher']}, mac {ready['mac']}"
            before = self.cpu.read()
            conn.send("go")
            result = conn.recv()
            after = self.cpu.read()
        except EOFError:
            proc.join()
            raise RuntimeError(f"the {side} {op} process exited {proc.exitcode} (its traceback is above)") from None
        finally:
            conn.close()
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        result["cpu"] = {"worker": result["cpu"], **{k: after[k] - before[k] for k in after}}
        return result


# ------------------------------------------------------------------ one size


def bench_size(size_mib: int, runs: int, scratch: Path, runner: Runner) -> dict:
    src = scratch / f"data-{size_mib}"
    t0 = time.monotonic()
    make_datadir(src, size_mib * MiB, seed=f"snapshot-bench-{size_mib}")
    source = tree(src)
    total = sum((src / p).stat().st_size for p in source)
    print(f"\n{size_mib} MiB: datadir of {len(source)} files, {total / MiB:.0f} MiB, "
          f"made and hashed in {time.monotonic() - t0:.1f}s")
    restores = scratch / "restore"
    figures = {side: {d: [] for d in ("backup", "restore")} for side in ("ours", "baseline")}
    problems: list[str] = []
    for run in range(runs):
        order = ["ours", "baseline"] if run % 2 == 0 else ["baseline", "ours"]
        made = {}
        for name in order:
            r = runner.run(name, "backup", src)
            made[name] = r["made"]
            figures[name]["backup"].append(r)
            print(f"  run {run + 1} {name:8} backup  {r['seconds']:7.2f}s {total / MiB / r['seconds']:7.1f} MiB/s  "
                  f"peak RSS {r['peak_rss_mib']:6.1f} MiB (from {r['start_rss_mib']:.0f})  {cpu_text(r['cpu'])}")
        for name in order:
            dst = restores / f"{name}-{size_mib}-{run}"
            r = runner.run(name, "restore", dst, made[name])
            figures[name]["restore"].append(r)
            found = check_tree(source, dst, f"{name} restore of {size_mib} MiB")
            problems += found
            print(f"  run {run + 1} {name:8} restore {r['seconds']:7.2f}s {total / MiB / r['seconds']:7.1f} MiB/s  "
                  f"peak RSS {r['peak_rss_mib']:6.1f} MiB (from {r['start_rss_mib']:.0f})  {cpu_text(r['cpu'])}  "
                  f"sha256 of {len(source)} files: " + ("identical" if not found else f"{len(found)} DIFFER"))
            shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    out = {"size_mib": size_mib, "bytes": total, "files": len(source), "runs": runs, "problems": problems}
    for name in ("ours", "baseline"):
        out[name] = {}
        for d, rs in figures[name].items():
            seconds = [r["seconds"] for r in rs]
            out[name][d] = {"seconds": statistics.median(seconds), "mib_s": total / MiB / statistics.median(seconds),
                            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs), "all_seconds": seconds,
                            "cpu_seconds": [r["cpu"] for r in rs],
                            "rss_rise_mib": max(r["peak_rss_mib"] - r["start_rss_mib"] for r in rs),
                            "all_peak_rss_mib": [r["peak_rss_mib"] for r in rs],
                            "all_start_rss_mib": [r["start_rss_mib"] for r in rs]}
    for d in ("backup", "restore"):
        out[f"{d}_ratio"] = out["ours"][d]["mib_s"] / out["baseline"][d]["mib_s"]
    return out


def warm_up(scratch: Path, runner: Runner) -> None:
    """One untimed round trip of a small datadir each way: the first writes to a fresh weed are slow
    (volumes are created), and whichever side went first would pay for it."""
    src = make_datadir(scratch / "warm-up", 16 * MiB, seed="snapshot-bench-warm-up")
    source = tree(src)
    for name in ("ours", "baseline"):
        made = runner.run(name, "backup", src)["made"]
        dst = scratch / "restore" / f"warm-up-{name}"
        runner.run(name, "restore", dst, made)
        if problems := check_tree(source, dst, f"{name} warm-up restore"):
            raise RuntimeError("; ".join(problems))
        shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)


def report(results: list[dict]) -> None:
    print("\nours: sha256 of every file (mutable on the host, segments as they stream), AES-256-GCM, per-part sha256;")
    print("baseline: tar | zstd -1 -T2, boto3 upload_fileobj/download_fileobj defaults, no encryption, no hashes.")
    print("Each run in a fresh process, as a flow run: peak RSS is its VmHWM, the rise is over its RSS just before "
          "the operation (imports, SSH connection and S3 client done).")
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
    peaks = []
    for r in results:
        peak = max(r["ours"]["backup"]["peak_rss_mib"], r["ours"]["restore"]["peak_rss_mib"])
        rise = max(r["ours"]["backup"]["rss_rise_mib"], r["ours"]["restore"]["rss_rise_mib"])
        peaks.append(peak)
        print(f"{r['size_mib']} MiB: backup {r['backup_ratio']:.2f}x (ours {r['ours']['backup']['mib_s']:.0f} MiB/s, "
              f"baseline {r['baseline']['backup']['mib_s']:.0f} MiB/s), restore {r['restore_ratio']:.2f}x "
              f"(ours {r['ours']['restore']['mib_s']:.0f} MiB/s, baseline {r['baseline']['restore']['mib_s']:.0f} "
              f"MiB/s), ours' peak RSS {peak:.0f} MiB (+{rise:.0f} MiB over its process's start)")
    ratios = [r[f"{d}_ratio"] for r in results for d in ("backup", "restore")]
    print(f"goal throughput ours/baseline >= {GOAL_RATIO}: {'MET' if min(ratios) >= GOAL_RATIO else 'MISSED'} "
          f"(lowest {min(ratios):.2f}x)")
    print(f"goal peak RSS < {GOAL_RSS_MIB} MiB: {'MET' if max(peaks) < GOAL_RSS_MIB else 'MISSED'} "
          f"(ours' fresh process per run, per size: {', '.join(f'{p:.0f}' for p in peaks)} MiB)")
    spread = max(peaks) - min(peaks)
    share = spread / min(peaks)
    within = [f"< {FLAT_MIB} MiB"] * (spread < FLAT_MIB) + [f"< {FLAT_SHARE:.0%}"] * (share < FLAT_SHARE)
    verdict = ("n/a (one size)" if len(peaks) < 2 else
               f"{'MET, ' + ' and '.join(within) if within else 'MISSED'} (differs by {spread:.0f} MiB, {share:.0%})")
    print(f"goal ours' peak RSS flat across sizes (differs by < {FLAT_MIB} MiB or < {FLAT_SHARE:.0%}): {verdict}")
    bad = [p for r in results for p in r["problems"]]
    print("restores checked: every restored file's sha256 against the source's, ours and baseline: "
          + ("all identical" if not bad else f"{len(bad)} PROBLEMS: " + "; ".join(bad[:10])))


def main() -> int:
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
    os.environ["RUNBOOKS_AUDIT_DIR"] = str(scratch / "audit")  # the children inherit it
    sshd = weed = None
    try:
        fs = subprocess.run(["df", "--output=fstype", str(scratch)], capture_output=True, text=True).stdout.split()
        sshd = start_sshd(str(scratch))
        weed = start_weed(scratch / "weed")
        user = pwd.getpwnam(USER)
        (scratch / "restore").mkdir()
        os.chown(scratch / "restore", user.pw_uid, user.pw_gid)
        prefix = f"snapshot-bench-{uuid.uuid4().hex[:8]}"
        part_size = weed.store(prefix=prefix).part_size_mib
        # What every child needs to reach the same sshd and bucket; the key goes through the pipe only.
        common = {"host": sshd.host(), "client_key_file": str(sshd.dir / "client_key"),
                  "known_hosts": sshd.known_hosts, "endpoint": weed.endpoint, "prefix": prefix,
                  "key": os.urandom(32).hex()}
        runner = Runner(CpuMeter(sshd.pid, weed.proc.pid), common)
        print(f"scratch {scratch} ({fs[-1] if fs else '?'}), sshd 127.0.0.1:{sshd.port} as {USER}, "
              f"weed S3 {weed.endpoint} bucket {BUCKET}, cpus {os.cpu_count()}, "
              f"object-store part size {part_size} MiB")
        t0 = time.monotonic()
        warm_up(scratch, runner)
        print(f"ssh: {runner.ssh_text}")
        print(f"warm-up (one small datadir each way, untimed, a process per operation): "
              f"{time.monotonic() - t0:.1f}s; load average {os.getloadavg()[0]:.1f}")
        results = [bench_size(size, args.runs, scratch, runner) for size in sizes]
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
