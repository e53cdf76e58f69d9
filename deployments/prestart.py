"""Flow-run processes forked from a warm parent instead of started cold.

A process worker starts each flow run as a new `python -m prefect.engine`: on
these machines 5-7 s of importing Prefect, web3, pandas and our flows before
the run's first step. The prestart server imports all of that once and forks a
child per run (tens of milliseconds); the worker still starts one process per
run, this module's small client, which hands the child its environment,
working directory and stdio, forwards signals to it and exits as it exits, so
the worker sees what it would have seen:

    worker -> python deployments/prestart.py          (the run's command: stdlib only)
                 | Unix socket: argv, env, cwd + fds 0-2
              prestart server (warm) -- fork --> child: refresh Prefect settings, run prefect.engine

- The child exits with the client: a client killed (SIGKILL included) closes
  its socket and the child kills itself, so killing the worker's process kills
  the run as before; SIGTERM/SIGINT/SIGHUP sent to the client reach the child
  (Prefect's cancellation).
- The client exits with the child's code, or dies of the child's signal: a run
  SIGKILLed shows the worker -9 and is marked crashed as before.
- No server (socket missing, refused, stale) and the client execs
  `python -m prefect.engine` itself: slower, never broken.
- The server answers "stale" and exits once its children are done when a
  source file it imported has changed since it started, so a deploy of new
  code never runs old code; its process manager starts it again.

    python -m deployments.prestart serve --socket PATH    # the server (the lab runs it under supervisord)
    python deployments/prestart.py [flow-run-id]          # the client (the work pool's run command)

The client must stay stdlib-only and import nothing from this project: it runs
from the worker's temporary working directory before anything else is loaded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

SOCKET_ENV = "RUNBOOKS_PRESTART_SOCKET"
CONNECT_TIMEOUT_S = 2.0
REQUEST_TIMEOUT_S = 5.0  # the server reads a client's request within this, or drops it
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
MAX_REQUEST = 1 << 20
ENGINE_ARGV = ["-m", "prefect.engine"]


# ---------------------------------------------------------------- the client (stdlib only)
def _exec_engine() -> None:
    os.execv(sys.executable, [sys.executable, *ENGINE_ARGV, *sys.argv[1:]])


def _connect() -> socket.socket | None:
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def _lines(sock: socket.socket):
    buf = b""
    while True:
        try:
            data = sock.recv(4096)
        except InterruptedError:
            continue
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()


def client() -> None:
    sock = _connect()
    if sock is None:
        _exec_engine()
    request = json.dumps({"argv": ["prefect.engine", *sys.argv[1:]], "env": dict(os.environ),
                          "cwd": os.getcwd()}).encode()
    try:
        socket.send_fds(sock, [struct.pack("!I", len(request)) + request], [0, 1, 2])
        sock.settimeout(REQUEST_TIMEOUT_S)
        lines = _lines(sock)
        first = next(lines, "")
    except OSError:
        first = ""
    if not first.startswith("pid "):  # "stale", or a server going away: start cold
        sock.close()
        _exec_engine()
    sock.settimeout(None)
    print(f"prestart: run process {first.split()[1]} forked by the prestart server", file=sys.stderr, flush=True)

    def forward(signum, _frame):
        try:
            sock.sendall(f"sig {signum}\n".encode())
        except OSError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    for line in lines:
        if line.startswith("exit "):
            code = int(line.split()[1])
            if code < 0:  # died of a signal: so does this process, for the worker to see
                if -code in FORWARDED:
                    signal.signal(-code, signal.SIG_DFL)
                os.kill(os.getpid(), -code)
            sys.exit(code)
    sys.exit(1)  # the server and the child both went away without a word: a crash


# ---------------------------------------------------------------- the server
def _project_files() -> dict[str, float]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.startswith(root + os.sep) and os.path.exists(path):
            files[path] = os.stat(path).st_mtime
    return files


def _changed(files: dict[str, float]) -> str | None:
    for path, mtime in files.items():
        try:
            if os.stat(path).st_mtime != mtime:
                return path
        except OSError:
            return path
    return None


def preload() -> None:
    """Everything a run imports, imported once in the server."""
    import importlib
    import pkgutil

    import prefect.deployments.steps  # noqa: F401 - the pull step
    import prefect.engine  # noqa: F401
    import prefect.flow_engine  # noqa: F401

    import flows

    for module in pkgutil.iter_modules(flows.__path__):
        importlib.import_module(f"flows.{module.name}")


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(REQUEST_TIMEOUT_S)
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    if not data and not fds:
        raise EOFError  # connected and gone (a readiness probe): nothing to say
    try:
        if len(fds) != 3 or len(data) < 4:
            raise ValueError("a request is a length, a JSON body and three file descriptors")
        (size,) = struct.unpack("!I", data[:4])
        if size > MAX_REQUEST:
            raise ValueError(f"request of {size} bytes")
        body = data[4:]
        while len(body) < size:
            chunk = conn.recv(min(65536, size - len(body)))
            if not chunk:
                raise ValueError("request cut short")
            body += chunk
        request = json.loads(body)
        if not (isinstance(request.get("argv"), list) and isinstance(request.get("env"), dict)
                and isinstance(request.get("cwd"), str)):
            raise ValueError("request without argv, env and cwd")
        return request, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _hung_up(conn: socket.socket) -> bool:
    conn.setblocking(False)
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        conn.setblocking(True)


def _watch_client(conn: socket.socket) -> None:
    """In the child: a signal the client forwards is raised here; the client gone, so is the run."""
    for line in _lines(conn):
        if line.startswith("sig "):
            os.kill(os.getpid(), int(line.split()[1]))
    os.kill(os.getpid(), signal.SIGKILL)


def _child(listener: socket.socket, conn: socket.socket, request: dict, fds: list[int]) -> None:
    """Never returns: becomes the run's engine process, then exits."""
    code = 1
    try:
        import runpy
        import threading
        import warnings

        listener.close()
        os.setsid()  # a signal to the server's process group never reaches a run
        for signum in (*FORWARDED, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = list(request["argv"])
        conn.settimeout(None)
        threading.Thread(target=_watch_client, args=(conn,), name="prestart-client", daemon=True).start()

        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()  # this run's PREFECT_* settings, not the server's
        # runpy warns that prefect.engine is already imported: preloading it is the point.
        warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package",
                                category=RuntimeWarning)
        try:
            runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported on the run's stderr, then a non-zero exit
        import traceback

        traceback.print_exc()
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()  # Prefect's log and event flushers, as at a normal exit
            sys.stdout.flush()
            sys.stderr.flush()
            conn.sendall(f"exit {code}\n".encode())
        finally:
            os._exit(code)


def serve(path: str) -> None:
    import selectors
    import time

    preload()
    files = _project_files()
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is the owner's alone: a request runs code as this user
    try:
        listener.bind(path)
    finally:
        os.umask(old_umask)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    accepting = True
    print(f"prestart: serving {path} (preloaded {len(sys.modules)} modules)", flush=True)
    while accepting or children:
        for _key, _events in selector.select(timeout=0.2):
            conn, _ = listener.accept()
            stale = _changed(files)
            if stale:
                print(f"prestart: {stale} changed since start: cold starts until restarted", flush=True)
                conn.sendall(b"stale\n")
                conn.close()
                selector.unregister(listener)
                listener.close()
                os.unlink(path)
                accepting = False
                break
            try:
                request, fds = _read_request(conn)
            except EOFError:
                conn.close()
                continue
            except (OSError, ValueError) as exc:
                print(f"prestart: refused a request: {exc}", flush=True)
                conn.close()
                continue
            if _hung_up(conn):  # it gave up waiting and started cold: one run, one process
                for fd in fds:
                    os.close(fd)
                conn.close()
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(listener, conn, request, fds)
            for fd in fds:
                os.close(fd)
            run_id = request["env"].get("PREFECT__FLOW_RUN_ID", "?")
            print(f"prestart: forked {pid} for flow run {run_id}", flush=True)
            try:
                conn.sendall(f"pid {pid}\n".encode())
            except OSError:
                pass
            children[pid] = conn
        while children:  # reap: a child that died of a signal cannot say so itself
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
                except OSError:
                    pass
                conn.close()
        if not accepting:
            time.sleep(0.2)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        import argparse

        parser = argparse.ArgumentParser(prog="python -m deployments.prestart serve")
        parser.add_argument("serve")
        parser.add_argument("--socket", required=True)
        serve(parser.parse_args().socket)
    else:
        client()
