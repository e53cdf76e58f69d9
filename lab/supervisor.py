"""supervisord: render a config from `Program`s, start it, talk to it over its unix socket."""

from __future__ import annotations

import http.client
import shlex
import socket
import subprocess
import time
import xmlrpc.client
from pathlib import Path

from .services import Program


def _q(value: str) -> str:
    """supervisord expands %(name)s in values: escape literal percent signs."""
    return value.replace("%", "%%")


def render_config(
    programs: list[Program],
    *,
    socket_path: Path,
    pidfile: Path,
    logfile: Path,
    default_log_dir: Path,
    identifier: str,
    socket_owner: str | None = None,
) -> str:
    owner = f"chown={socket_owner}:{socket_owner}\n" if socket_owner else ""
    out = [
        "; written by `python -m lab up`; do not edit (regenerated each up)",
        "[unix_http_server]",
        f"file={_q(str(socket_path))}",
        "chmod=0700",
        owner.rstrip("\n"),
        "",
        "[supervisord]",
        f"logfile={_q(str(logfile))}",
        "logfile_maxbytes=5MB",
        "logfile_backups=1",
        "loglevel=info",
        f"pidfile={_q(str(pidfile))}",
        f"childlogdir={_q(str(default_log_dir))}",
        f"identifier={identifier}",
        "nodaemon=false",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_q(str(socket_path))}",
        "",
    ]
    for p in programs:
        log = p.log or str(default_log_dir / f"{p.name}.log")
        out += [
            f"[program:{p.name}]",
            f"command={_q(shlex.join(p.argv))}",
            f"priority={p.priority}",
            f"autostart={'true' if p.autostart else 'false'}",
            f"autorestart={'true' if p.autorestart else 'false'}",
            f"startsecs={p.startsecs}",
            f"startretries={p.startretries}",
            f"stopsignal={p.stopsignal}",
            f"stopwaitsecs={p.stopwaitsecs}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_q(log)}",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=1",
        ]
        if p.user:
            out.append(f"user={p.user}")
        if p.cwd:
            out.append(f"directory={_q(p.cwd)}")
        if p.env:
            env = ",".join(f'{k}="{_q(v)}"' for k, v in p.env.items())
            out.append(f"environment={env}")
        out.append("")
    return "\n".join(out)


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: Path, timeout: float):
        super().__init__()
        self._path, self._timeout = str(path), timeout

    def make_connection(self, host):
        conn = http.client.HTTPConnection("localhost", timeout=self._timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        sock.connect(self._path)
        conn.sock = sock
        return conn


def client(socket_path: Path, timeout: float = 5.0) -> xmlrpc.client.ServerProxy:
    """XML-RPC proxy to a supervisord (works across network namespaces: it is a unix socket)."""
    return xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(socket_path, timeout))


def process_infos(socket_path: Path, timeout: float = 2.0) -> dict[str, dict]:
    """name -> getProcessInfo dict (statename, pid, ...); {} when supervisord does not answer."""
    try:
        return {i["name"]: i for i in client(socket_path, timeout).supervisor.getAllProcessInfo()}
    except (OSError, xmlrpc.client.Error):
        return {}


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def start(conf: Path, pidfile: Path, socket_path: Path, netns: str | None = None, deadline: float = 10.0) -> int:
    """Start a daemonizing supervisord (inside `netns` if given) and wait for its socket; return its PID."""
    argv = ["supervisord", "-c", str(conf)]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=deadline)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        pid = read_pid(pidfile)
        if pid and socket_path.exists():
            try:
                client(socket_path, 1.0).supervisor.getState()
                return pid
            except (OSError, xmlrpc.client.Error):
                pass
        time.sleep(0.05)
    raise RuntimeError(f"supervisord ({conf}) did not open {socket_path} within {deadline:.0f}s")
