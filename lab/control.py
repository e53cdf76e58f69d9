"""Bring the lab up and down, report on it, inject and heal faults."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from tasks.releases import asset_names

from . import datadir, disks, haproxy, netns, render, services, supervisor
from . import releases as lab_releases
from . import topology as t
from .install import install
from .labnode import SYNC_HELD, rpc
from .services import Program
from .topology import Paths

UP_DEADLINE_SECONDS = 120.0  # the Prefect server takes ~20 s to start on 2 busy cores
SUPERVISORD_STOP_SECONDS = 15.0
FAULT_KINDS = ("stall", "freeze", "kill", "partition", "lag", "fill-disk")
PERSISTENT_FAULTS = ("partition", "lag", "fill-disk")  # in force until healed: a restart does not clear them
SAFE_DIR = re.compile(r"^/[A-Za-z0-9._/+-]*$")  # what the inventory accepts as a path


class LabError(RuntimeError):
    """Something about the lab is wrong; the message says what and what to do."""


class LabNotUp(LabError):
    pass


def _paths() -> Paths:
    root = t.lab_dir()
    if not root.is_absolute() or not SAFE_DIR.match(str(root)) or root == Path("/"):
        raise LabError(f"{t.LAB_DIR_ENV}={root}: must be an absolute path of letters, digits and ._/+- (not /)")
    if str(root).startswith("/root"):
        raise LabError(f"{t.LAB_DIR_ENV}={root}: /root is not traversable by {t.SERVICE_USER}; use e.g. /var/tmp/rblab")
    return Paths(root)


# ---------------------------------------------------------------- process helpers


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, pgrp) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _is_lab_process(pid: int, root: Path) -> bool:
    prefix = str(root) + "/"
    return any(prefix in arg for arg in _cmdline(pid))  # sshd rewrites its argv into one string


def _supervisord_alive(pidfile: Path, conf: Path) -> int | None:
    pid = supervisor.read_pid(pidfile)
    if pid and str(conf) in _cmdline(pid) and any("supervisord" in a for a in _cmdline(pid)):
        return pid
    return None


def _process_parents() -> dict[int, int]:
    parents = {}
    for pid in _all_pids():
        st = _stat(pid)
        if st:
            parents[pid] = st[0]
    return parents


def _descendants(seeds: set[int], parents: dict[int, int]) -> set[int]:
    found = set(seeds)
    grew = True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in found and pid not in found}
        found |= new
        grew = bool(new)
    return found


def _lab_processes(root: Path) -> set[int]:
    """Every process the lab started, by PID.

    Seeds: our supervisords (their argv names a config under LAB_DIR), and
    orphans (reparented to init) whose argv names LAB_DIR, e.g. what a
    SIGKILLed supervisord left behind. Then all their descendants. A user's
    `tail -f LAB_DIR/...` is neither, so it is left alone.
    """
    me = os.getpid()
    parents = _process_parents()
    matched = {pid for pid in parents if pid != me and _is_lab_process(pid, root)}
    seeds = {
        pid
        for pid in matched
        if any("supervisord" in a for a in _cmdline(pid)[:4]) or parents[pid] in (0, 1) or parents[pid] in matched
    }
    return _descendants(seeds, parents) - {me}


# ---------------------------------------------------------------- lab.json


@contextlib.contextmanager
def _locked(paths: Paths):
    if not paths.marker.exists():
        raise LabNotUp(f"the lab is not up: {paths.root} holds no lab (run `python -m lab up`)")
    with open(paths.lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_record(paths: Paths) -> dict:
    try:
        return json.loads(paths.lab_json.read_text())
    except FileNotFoundError:
        raise LabNotUp(f"the lab is not up: no {paths.lab_json} (run `python -m lab up`)") from None


def _write_record(paths: Paths, record: dict) -> None:
    tmp = paths.lab_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(paths.lab_json)


# ---------------------------------------------------------------- which checkout started it
# The lab runs the bridge, exporter, worker and rules of the checkout that ran
# `up` (their cwd is that checkout). Tests from another checkout must not
# certify that code, so `up` records it and the suite refuses a lab from elsewhere.
CHECKOUT = services.REPO_ROOT


def same_checkout(recorded: str | None, here: Path = CHECKOUT) -> bool:
    """Was a lab recorded as started from `recorded` started from this checkout?
    A record without one (older code, or hand-made) is of unknown origin: not ours."""
    return bool(recorded) and Path(recorded).resolve() == Path(here).resolve()


def foreign_lab(here: Path = CHECKOUT) -> str | None:
    """Why the lab in LAB_DIR is not ours to use, or None (no lab there, or ours).
    Any lab.json counts, up or not: one still starting must not be taken down by us."""
    paths = _paths()
    try:
        record = json.loads(paths.lab_json.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"{paths.lab_json} is unreadable ({exc}): run `python -m lab down`, then run the tests again"
    recorded = record.get("checkout")
    if same_checkout(recorded, here):
        return None
    origin = f"checkout {recorded}" if recorded else "an unknown checkout (its lab.json names none)"
    where = f"`cd {recorded} && python -m lab down`" if recorded else "`python -m lab down`"
    return (f"the lab at {paths.root} (state {record.get('state')!r}) was started from {origin}, not from {here}: "
            f"it runs that checkout's bridge, exporter, worker and rules, so tests here would certify someone "
            f"else's code. Run {where} once nobody uses it, then run the tests again.")


def is_up() -> bool:
    """Did `up` finish, and is the lab supervisord still running?"""
    paths = _paths()
    try:
        state = json.loads(paths.lab_json.read_text()).get("state")
    except (OSError, ValueError):
        return False
    return state == "up" and _supervisord_alive(paths.supervisord_pid, paths.supervisord_conf) is not None


# ---------------------------------------------------------------- up


def _chown_service_user(path: Path) -> None:
    """The path and everything under it (a datadir and its segments) to the service user."""
    pw = pwd.getpwnam(t.SERVICE_USER)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), pw.pw_uid, pw.pw_gid)


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
    return Path(f"{path}.pub").read_text().strip()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _install_fleet_anvil(paths: Paths, host: str) -> None:
    """The host's anvil as client-upgrade finds a real client: the fleet's release unpacked from the lab's
    release server's archive into <host>/opt/anvil/<version> (with its sha256), `current` pointing at it,
    and the nodes' binary path a link through `current` (tasks/install.py's layout)."""
    assets = asset_names("anvil", t.FLEET_ANVIL_VERSION)
    archive = paths.releases / assets.tag / assets.archive
    install_dir = paths.install_dir(host)
    target = install_dir / t.FLEET_ANVIL_VERSION
    target.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        member = tar.getmember(f"{assets.top_dir}/anvil")
        with tar.extractfile(member) as src, open(target / "anvil", "wb") as dst:
            shutil.copyfileobj(src, dst)
    (target / "anvil").chmod(0o755)
    (target / ".sha256").write_text(hashlib.sha256(archive.read_bytes()).hexdigest())
    (install_dir / "current").symlink_to(t.FLEET_ANVIL_VERSION)
    _chown_service_user(install_dir.parent)
    pw = pwd.getpwnam(t.SERVICE_USER)
    os.lchown(install_dir / "current", pw.pw_uid, pw.pw_gid)  # the link itself (chown follows it)
    (paths.host(host) / "bin" / "anvil").symlink_to(install_dir / "current" / "anvil")


def _write_files(paths: Paths, root_programs: list[Program]) -> dict[str, list[Program]]:
    """Everything on disk before any process starts; returns host -> its programs."""
    root = paths.root
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    paths.marker.write_text("rblab: `python -m lab down` removes this directory\n")
    # The release server's content: the lab's anvil releases and two that must fail an upgrade.
    lab_releases.build_releases(paths.releases)
    for version, kind in t.BROKEN_RELEASES.items():
        lab_releases.build_broken_release(paths.releases, version, kind)
    for d in (paths.logs, paths.ssh, paths.haproxy, paths.stub_records.parent, paths.refs / "bin", paths.refs / "data"):
        d.mkdir(parents=True, exist_ok=True)
    for program in root_programs:
        if program.prepare is not None:
            program.prepare()
    shutil.copyfile(Path(__file__).with_name("labnode.py"), paths.labnode)
    paths.labnode.chmod(0o644)

    # SSH: the runbooks' identity, the exporter's monitoring identity (no forwarding, no pty), one
    # host key per host, known_hosts
    pub = _keygen(paths.ssh_key, "rblab")
    monitor_pub = _keygen(paths.monitor_key, "rblab-monitor")
    paths.authorized_keys.write_text(f"{pub}\nrestrict {monitor_pub}\n")
    known = []
    for h in t.HOSTS.values():
        hd = paths.host(h.name)
        for d in (hd, hd / "bin", hd / "logs"):
            d.mkdir(parents=True, exist_ok=True)
        disks.create(root, h.name, hd / "data")  # a real, size-limited filesystem (lab/disks.py)
        # The service user owns the datadirs' parent, as /var/lib/<client> is the client's: a restore
        # stages beside the datadir and swaps it in with a rename.
        _chown_service_user(hd / "data")
        key = _keygen(paths.host_key(h.name), f"rblab-{h.name}").split()
        known.append(f"{h.address} {key[0]} {key[1]}")
        paths.sshd_config(h.name).write_text(render.sshd_config(paths, h))
        _install_fleet_anvil(paths, h.name)
    paths.known_hosts.write_text("\n".join(known) + "\n")
    paths.refs.joinpath("bin", "anvil").symlink_to(t.ANVIL_BIN)

    for node in (*t.all_nodes().values(), *t.STANDBYS.values()):
        dd = paths.datadir(node)
        dd.mkdir(parents=True, exist_ok=True)
        if node.name in t.NODES:  # fleet nodes hold a client's immutable segments too; references need none
            datadir.write_segments(dd, t.SEGMENT_FILES, t.SEGMENT_BYTES, seed=node.chain)
        _chown_service_user(dd)

    # HAProxy, checked before it is started
    paths.haproxy_cfg.write_text(haproxy.render_config(paths))
    paths.haproxy_state.write_text("1\n")  # a valid, empty server-state file (version line only)
    check = subprocess.run(["haproxy", "-c", "-q", "-f", str(paths.haproxy_cfg)], capture_output=True, text=True)
    if check.returncode != 0:
        raise LabError(f"haproxy rejects {paths.haproxy_cfg}:\n{check.stderr.strip()}")

    # supervisord configs
    by_host = {h.name: services.host_programs(paths, h) for h in t.HOSTS.values()}
    for program in (p for programs in by_host.values() for p in programs):
        if program.prepare is not None:
            program.prepare()
    for h in t.HOSTS.values():
        paths.host_supervisord_conf(h.name).write_text(
            supervisor.render_config(
                by_host[h.name],
                socket_path=paths.host_supervisord_sock(h.name),
                pidfile=paths.host_supervisord_pid(h.name),
                logfile=paths.host_supervisord_log(h.name),
                default_log_dir=paths.host(h.name) / "logs",
                identifier=f"rblab-{h.name}",
                socket_owner=t.SERVICE_USER,
            )
        )
    paths.supervisord_conf.touch(mode=0o600)  # programs' environments hold secrets (the HA shape's logins)
    paths.supervisord_conf.write_text(
        supervisor.render_config(
            root_programs,
            socket_path=paths.supervisord_sock,
            pidfile=paths.supervisord_pid,
            logfile=paths.supervisord_log,
            default_log_dir=paths.logs,
            identifier="rblab-root",
        )
    )

    # inventory, validated with the model the runbooks use
    paths.inventory.write_text(
        "# written by `python -m lab up`: the lab fleet\n" + yaml.safe_dump(render.inventory(paths), sort_keys=False)
    )
    from inventory import load_inventory

    load_inventory(paths.inventory)
    return by_host


def _tail(path: str | Path | None, lines: int = 3) -> str:
    if not path:
        return ""
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text)


# Ready only once Prefect answers: in the HA shape, checked after _start_prefect_ha.
NEEDS_PREFECT = ("alert-bridge",)


def _wait_ready(paths: Paths, root_programs: list[Program], by_host: dict[str, list[Program]], log,
                later: tuple[str, ...] = ()) -> None:
    """Until every program is RUNNING and passes its readiness check, or the deadline; `later` not yet."""
    pending: dict[str, tuple[Path, Program]] = {}
    for p in root_programs:
        # The HA shape's Prefect is started later, in order (_start_prefect_ha).
        if p.autostart and p.name not in later:
            pending[p.name] = (paths.supervisord_sock, p)
    for host, progs in by_host.items():
        for p in progs:
            if not p.autostart:
                continue  # left stopped on purpose (the standby's slots)
            pending[f"{host}/{p.name}"] = (paths.host_supervisord_sock(host), p)
    reasons: dict[str, str] = {}
    end = time.monotonic() + UP_DEADLINE_SECONDS
    while pending and time.monotonic() < end:
        infos = {sock: supervisor.process_infos(sock) for sock in {s for s, _ in pending.values()}}
        for label, (sock, prog) in list(pending.items()):
            state = infos[sock].get(prog.name, {}).get("statename", "unknown")
            if state in ("FATAL", "EXITED"):
                raise LabError(
                    f"{label} is {state} (log {prog.log or paths.logs / (prog.name + '.log')}: "
                    f"{_tail(prog.log or paths.logs / (prog.name + '.log'))}); run `python -m lab down` to clean up"
                )
            why = None if state == "RUNNING" else f"supervisor state {state}"
            if why is None and prog.ready is not None:
                why = prog.ready.check()
            if why is None:
                del pending[label]
            else:
                reasons[label] = why
        if pending:
            time.sleep(0.2)
    if pending:
        lines = [f"  {label}: {reasons.get(label, '?')}" for label in pending]
        raise LabError(
            f"not up within {UP_DEADLINE_SECONDS:.0f}s:\n" + "\n".join(lines)
            + f"\nlogs under {paths.root}; run `python -m lab down` to clean up"
        )


def _start_prefect_ha(paths: Paths, root_programs: list[Program], log) -> None:
    """The HA shape's Prefect, in the order it needs: its database, the migration (once, before any
    server), each API server once the one before answers, the services process, the balancer, then the
    prestart servers and the regional workers that use it."""
    ha = services.lab_ha(paths)
    services.create_ha_databases(paths)
    started = time.monotonic()
    ha.migrate()
    log(f"prefect database migrated in {time.monotonic() - started:.1f}s")
    by_name = {p.name: p for p in root_programs}
    rpc = supervisor.client(paths.supervisord_sock, timeout=60)
    regional = [f"{kind}-{region}" for kind in ("prestart", "worker") for region in t.worker_hosts()]
    for name in [*(p.name for p in ha.processes()), "prefect-lb", *regional, *NEEDS_PREFECT]:
        program = by_name[name]
        if name not in NEEDS_PREFECT:  # those run already, waiting for Prefect
            rpc.supervisor.startProcess(name, True)
        end = time.monotonic() + UP_DEADLINE_SECONDS
        while (why := program.ready.check() if program.ready else None) is not None:
            if time.monotonic() > end:
                raise LabError(f"{name} not ready within {UP_DEADLINE_SECONDS:.0f}s: {why} "
                               f"(log {paths.logs / (name + '.log')}: {_tail(paths.logs / (name + '.log'))})")
            time.sleep(0.3)


def up(log=print, ha: bool = False) -> dict:
    """Build and start the whole lab; returns status(). Refuses if it is already up.

    `ha`: Prefect in the highly available shape (lab/prefect_ha.py) instead of one SQLite server."""
    paths = _paths()
    if is_up():
        raise LabError(f"the lab is already up at {paths.root} (run `python -m lab down` first)")
    install(log)
    for parent in paths.root.parents:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise LabError(f"{parent} is not traversable by other users, so {t.SERVICE_USER} could not reach "
                           f"{paths.root}: choose another {t.LAB_DIR_ENV}")
    owner = netns.owner()
    if owner and owner != str(paths.root):
        raise LabError(f"the lab network ({t.BRIDGE}, rb-h*) belongs to the lab at {owner}: "
                       f"run `LAB_DIR={owner} python -m lab down` first")
    if paths.root.exists() and not paths.marker.exists() and any(paths.root.iterdir()):
        raise LabError(f"{paths.root} exists, is not empty and is not a lab directory: choose another {t.LAB_DIR_ENV}")
    if paths.root.exists() or netns.leftovers():
        log(f"cleaning up what a previous lab at {paths.root} left")
        down(log=lambda *_: None)
    busy = [f"127.0.0.1:{p}" for p in (*(c.frontend_port for c in t.CHAINS.values()), t.HAPROXY_ADMIN_PORT, t.STUB_PORT, t.PREFECT_PORT,
                                 t.EXPORTER_PORT, t.BRIDGE_PORT, t.PROMETHEUS_PORT, t.ALERTMANAGER_PORT, t.RELEASES_PORT,
                                 *t.OBJECT_STORE_PORTS.values(), *(p + 10000 for p in t.OBJECT_STORE_PORTS.values()),
                                 *t.PREFECT_HA_API_PORTS, t.REDIS_PORT)
            if not _port_free("127.0.0.1", p)]
    if busy:
        raise LabError(f"ports already in use: {', '.join(busy)} (another lab or service?)")

    started = time.monotonic()
    if ha:  # before any program is defined: runbook_env and prefect_programs read it
        paths.root.mkdir(parents=True, exist_ok=True)
        (paths.root / t.HA_MARKER).write_text("`python -m lab up --ha`: Prefect on PostgreSQL and Redis\n")
    root_programs = services.root_programs(paths)
    try:
        by_host = _write_files(paths, root_programs)
        record = render.lab_record(paths, [p.name for p in root_programs])
        record["checkout"] = str(CHECKOUT)
        record["prefect_shape"] = "ha" if ha else "embedded"
        _write_record(paths, record)
        netns.create(str(paths.root))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        starts = [(paths.host_supervisord_conf(h.name), paths.host_supervisord_pid(h.name),
                   paths.host_supervisord_sock(h.name), h.namespace) for h in t.HOSTS.values()]
        starts.append((paths.supervisord_conf, paths.supervisord_pid, paths.supervisord_sock, None))
        with ThreadPoolExecutor(max_workers=len(starts)) as pool:
            for started_one in [pool.submit(supervisor.start, *args) for args in starts]:
                started_one.result()
        _wait_ready(paths, root_programs, by_host, log, later=NEEDS_PREFECT if ha else ())
        services.fill_database(paths)
        if ha:
            _start_prefect_ha(paths, root_programs, log)
    except LabError:
        raise
    except Exception as exc:
        raise LabError(f"up failed: {type(exc).__name__}: {exc}; run `python -m lab down` to clean up") from exc
    with _locked(paths):
        record = _read_record(paths)
        record["state"] = "up"
        record["up_seconds"] = round(time.monotonic() - started, 2)
        _write_record(paths, record)
    log(f"lab up at {paths.root} in {time.monotonic() - started:.1f}s (inventory {paths.inventory})")
    return status()


# ---------------------------------------------------------------- down


def _signal_pids(pids, sig) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pids, seconds: float) -> set[int]:
    end = time.monotonic() + seconds
    alive = set(pids)
    while alive and time.monotonic() < end:
        alive = {p for p in alive if _stat(p) is not None and not _is_zombie(p)}
        if alive:
            time.sleep(0.05)
    return alive


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def down(log=print) -> None:
    """Stop everything, remove the network and LAB_DIR. Safe after a failed up, and twice."""
    paths = _paths()
    procs = _lab_processes(paths.root)
    # Frozen process groups cannot exit: thaw everything first.
    _signal_pids(procs, signal.SIGCONT)
    socks = [paths.supervisord_sock, *(paths.host_supervisord_sock(h) for h in t.HOSTS)]
    pidfiles = [(paths.supervisord_pid, paths.supervisord_conf),
                *((paths.host_supervisord_pid(h), paths.host_supervisord_conf(h)) for h in t.HOSTS)]
    supervisords = {pid for pid in (_supervisord_alive(pf, conf) for pf, conf in pidfiles) if pid}
    # supervisord's own shutdown stops one priority level per ~1 s tick: ask
    # every supervisord to signal all its programs at once (no wait) instead,
    # and stop ourselves what a dead supervisord left behind.
    for sock in socks:
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            if sock.exists():
                supervisor.client(sock, timeout=2).supervisor.stopAllProcesses(False)
    managed = _descendants(supervisords, _process_parents())
    _signal_pids(procs - managed, signal.SIGTERM)
    _wait_gone(procs - supervisords, 6)
    # An XML-RPC shutdown is acted on at once; SIGTERM waits for the next tick.
    for sock in socks:
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            if sock.exists():
                supervisor.client(sock, timeout=2).supervisor.shutdown()
    if _wait_gone(supervisords, 1.5):
        _signal_pids(supervisords, signal.SIGTERM)
    stuck = _wait_gone(supervisords, SUPERVISORD_STOP_SECONDS)
    leftover = _wait_gone(procs | _lab_processes(paths.root), 0.5 if not stuck else 0)
    if leftover:
        log(f"killing {len(leftover)} lab process(es) that outlived supervisord: {sorted(leftover)}")
        _signal_pids(leftover, signal.SIGKILL)
        _wait_gone(leftover, 5)
    owner = netns.owner()
    if owner and owner != str(paths.root):
        removed = []
        log(f"leaving the lab network alone: it belongs to the lab at {owner}")
    else:
        removed = netns.destroy()
    if paths.root.exists():
        if paths.marker.exists():
            disks.unmount_all(paths.root)
            shutil.rmtree(paths.root)
        elif any(paths.root.iterdir()):
            log(f"not removing {paths.root}: it holds no lab marker")
        else:
            paths.root.rmdir()
    log(f"lab down ({len(supervisords)} supervisord stopped, removed {', '.join(removed) or 'no network'})")


# ---------------------------------------------------------------- status


def _lab_node(name: str) -> t.LabNode:
    nodes = t.all_nodes()
    if name not in nodes:
        raise LabError(f"unknown node {name!r} (known: {', '.join(nodes)})")
    return nodes[name]


def _head(url: str) -> int | None:
    try:
        return int(rpc(url, "eth_blockNumber", timeout=0.5), 16)
    except Exception:  # noqa: BLE001 - any failure means "no head right now"
        return None


def _effective(fault: dict | None, info: dict) -> bool:
    """Is a recorded fault still in force? A restart clears stall/freeze/kill, as in real life."""
    if not fault:
        return False
    kind = fault["kind"]
    if kind in PERSISTENT_FAULTS:
        return True
    if kind == "kill":
        return info.get("statename") != "RUNNING"
    return info.get("pid") == fault.get("pid")


def status() -> dict:
    """lab.json plus live state: supervisor state, pid, head and fault of every node and reference."""
    paths = _paths()
    record = _read_record(paths)
    if not _supervisord_alive(paths.supervisord_pid, paths.supervisord_conf):
        raise LabNotUp(f"the lab at {paths.root} is not up: its supervisord is not running "
                       "(run `python -m lab down` then `up`)")
    infos = {str(paths.supervisord_sock): supervisor.process_infos(paths.supervisord_sock)}
    for h in t.HOSTS:
        sock = paths.host_supervisord_sock(h)
        infos[str(sock)] = supervisor.process_infos(sock)
    every = {**record["nodes"], **record["references"]}
    with ThreadPoolExecutor(max_workers=len(every)) as pool:
        heads = dict(zip(every, pool.map(lambda n: _head(every[n]["rpc_url"]), every)))
    faults = record.get("faults", {})
    partitioned = {f["host"]: name for name, f in faults.items() if f["kind"] == "partition"}
    for name, node in every.items():
        info = infos[node["supervisor_socket"]].get(name, {})
        node["state"] = info.get("statename", "UNKNOWN")
        node["pid"] = info.get("pid") or None
        node["head"] = heads[name]
        own = faults.get(name)
        if _effective(own, info):
            node["fault"] = own["kind"]
        elif node["host"] in partitioned:
            node["fault"] = f"partition (host {node['host']})"
        else:
            node["fault"] = None
    for name, f in faults.items():
        f["effective"] = _effective(f, infos[every[name]["supervisor_socket"]].get(name, {}))
    for h, host in record["hosts"].items():
        sock_infos = infos[host["supervisor_socket"]]
        host["supervisord_pid"] = supervisor.read_pid(Path(host["supervisor_pidfile"]))
        host["sshd_state"] = sock_infos.get("sshd", {}).get("statename", "UNKNOWN")
        host["link_up"] = netns.host_link_up(h)
    root_infos = infos[str(paths.supervisord_sock)]
    record["supervisor"]["pid"] = supervisor.read_pid(paths.supervisord_pid)
    record["services"] = {
        name: {"state": root_infos.get(name, {}).get("statename", "UNKNOWN"), "pid": root_infos.get(name, {}).get("pid") or None}
        for name in record["supervisor"]["programs"]
    }
    try:
        record["haproxy"]["servers"] = {f"{b}/{s}": st for (b, s), st in haproxy.server_status(timeout=1.0).items()}
    except OSError as exc:
        record["haproxy"]["servers"] = {"error": str(exc)}
    record["up"] = True
    return record


# ---------------------------------------------------------------- faults


def _process_info(paths: Paths, node: t.LabNode) -> dict:
    try:
        return supervisor.client(paths.supervisor_sock_of(node)).supervisor.getProcessInfo(node.name)
    except (OSError, xmlrpc.client.Error) as exc:
        raise LabError(f"cannot ask supervisord about {node.name}: {exc}") from exc


def _group_alive(pgid: int, root: Path) -> bool:
    return any((st := _stat(pid)) and st[1] == pgid and _is_lab_process(pid, root) for pid in _all_pids())


def fault(node_name: str, kind: str, percent: float | None = None) -> dict:
    """Inject a fault into a node or reference; returns the fault record.

    fill-disk fills the node's host filesystem to `percent` with old logs and ETL scratch in its datadir.
    """
    paths = _paths()
    node = _lab_node(node_name)
    if kind not in FAULT_KINDS:
        raise LabError(f"unknown fault {kind!r} (one of {', '.join(FAULT_KINDS)})")
    if (kind == "fill-disk") != (percent is not None):
        raise LabError("fill-disk needs a percent (`lab fault NODE fill-disk 85`), and only fill-disk takes one")
    if kind in ("partition", "fill-disk") and node.is_reference:
        raise LabError(f"{node.name} is a reference in the root namespace: {kind} applies to a host's nodes")
    if kind == "lag" and node.is_reference:
        raise LabError(f"{node.name} is a reference: it follows nothing, so it cannot be held behind")
    if kind not in PERSISTENT_FAULTS:
        # Just restarted, supervisord says STARTING for its startsecs: moments from RUNNING.
        end = time.monotonic() + 10
        while _process_info(paths, node)["statename"] == "STARTING" and time.monotonic() < end:
            time.sleep(0.1)
    with _locked(paths):
        record = _read_record(paths)
        faults = record.setdefault("faults", {})
        info = _process_info(paths, node)
        if _effective(faults.get(node.name), info):
            raise LabError(f"{node.name} already has fault {faults[node.name]['kind']!r}: heal it first")
        if kind == "partition":
            for other, f in faults.items():
                if f["kind"] == "partition" and f["host"] == node.host:
                    raise LabError(f"host {node.host} is already partitioned (via {other}): heal {other} first")
        entry = {"kind": kind, "at": time.time(), "host": node.host, "pid": info.get("pid") or None, "pgid": None}
        if kind == "partition":
            netns.set_host_link(node.host, up=False)
        elif kind == "lag":
            (paths.datadir(node) / SYNC_HELD).write_text("held by `python -m lab fault NODE lag`; `lab heal` removes it\n")
        elif kind == "fill-disk":
            pw = pwd.getpwnam(t.SERVICE_USER)
            try:
                entry["files"] = disks.fill(paths.datadir(node), percent, owner=(pw.pw_uid, pw.pw_gid))
            except (ValueError, OSError) as exc:
                disks.unfill(paths.datadir(node))
                raise LabError(f"{node.name}: {exc}") from exc
            entry["percent"] = percent
        else:
            if info["statename"] != "RUNNING" or not info["pid"]:
                raise LabError(f"{node.name} is {info['statename']}, not running: nothing to {kind}")
            pid = info["pid"]
            if kind == "stall":
                os.kill(pid, signal.SIGUSR1)
            else:
                pgid = os.getpgid(pid)
                entry["pgid"] = pgid
                os.killpg(pgid, signal.SIGSTOP if kind == "freeze" else signal.SIGKILL)
        faults[node.name] = entry
        _write_record(paths, record)
    if kind == "kill":  # return once supervisord has noticed, so callers see the node down
        end = time.monotonic() + 5
        while time.monotonic() < end and _process_info(paths, node)["statename"] == "RUNNING":
            time.sleep(0.05)
    return entry


def heal(node_name: str) -> dict | None:
    """Undo the fault recorded for a node; returns the record healed (None if there was none)."""
    paths = _paths()
    node = _lab_node(node_name)
    with _locked(paths):
        record = _read_record(paths)
        entry = record.get("faults", {}).get(node.name)
        if not entry:
            return None
        info = _process_info(paths, node)
        kind = entry["kind"]
        if kind == "partition":
            netns.set_host_link(node.host, up=True)
        elif kind == "lag":
            (paths.datadir(node) / SYNC_HELD).unlink(missing_ok=True)
        elif kind == "fill-disk":
            disks.unfill(paths.datadir(node))  # what disk-prune has not already removed
        elif kind == "stall":
            if info.get("pid") == entry["pid"] and info["statename"] == "RUNNING":
                os.kill(entry["pid"], signal.SIGUSR2)
        elif kind == "freeze":
            if entry.get("pgid") and _group_alive(entry["pgid"], paths.root):
                os.killpg(entry["pgid"], signal.SIGCONT)
        elif kind == "kill":
            if info["statename"] not in ("RUNNING", "STARTING"):
                try:
                    supervisor.client(paths.supervisor_sock_of(node), timeout=30).supervisor.startProcess(node.name, True)
                except xmlrpc.client.Fault as exc:
                    if "ALREADY_STARTED" not in exc.faultString:  # else supervisord is retrying it (BACKOFF)
                        raise LabError(f"could not start {node.name}: {exc.faultString} (log {paths.node_log(node)}: "
                                       f"{_tail(paths.node_log(node))})") from exc
        del record["faults"][node.name]
        _write_record(paths, record)
    return entry
