"""HAProxy runtime API: read server states, take servers in and out of rotation.

One command per connection (the API's non-interactive mode: HAProxy answers
and closes), so there is no session state to get wrong and a slow or dead
HAProxy costs at most one timeout per command.

The API is line based and `;` separates commands, so backend and server
names are checked against a strict alphabet before anything is sent.
HAProxy reports errors as plain text in an otherwise normal answer ("No
such server.", "Permission denied"); `set` commands answer nothing on
success, so any text back from them is an error, and a `show servers
state` answer that does not start with its format version is one too.

States come from `show servers state` (format 1), read by its header's
field names rather than positions, so new columns in later versions do not
shift what we read.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tasks.errors import HAProxyError, InvalidInput
from tasks.vocabulary import ActionKind

if TYPE_CHECKING:  # pragma: no cover
    from blocks import HAProxyAdmin
    from tasks.audit import AuditRecord
    from tasks.gate import Gate

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")

# A full `show stat`/`show servers state` of a big config is a few MiB at most.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024

# srv_op_state (enum srv_state): what the checks say.
OP_STATES = {0: "DOWN", 1: "STARTING", 2: "UP", 3: "STOPPING"}

# srv_admin_state bits (enum srv_admin): what operators (or config) said.
ADMF_FMAINT, ADMF_IMAINT, ADMF_CMAINT = 0x01, 0x02, 0x04
ADMF_FDRAIN, ADMF_IDRAIN = 0x08, 0x10
ADMF_RMAINT = 0x20
MAINT_MASK = ADMF_FMAINT | ADMF_IMAINT | ADMF_CMAINT | ADMF_RMAINT
DRAIN_MASK = ADMF_FDRAIN | ADMF_IDRAIN

# srv_check_status (enum healthcheck_status) -> the names `show stat` prints.
# Checked against HAProxy 2.6's `show stat` (see tests/test_haproxy.py).
CHECK_STATUSES = {
    0: "UNK", 1: "INI", 2: "START", 3: "CHECKED", 4: "HANA", 5: "SOCKERR",
    6: "L4OK", 7: "L4TOUT", 8: "L4CON", 9: "L6OK", 10: "L6TOUT", 11: "L6RSP",
    12: "L7TOUT", 13: "L7RSP", 14: "L57DATA", 15: "L7OK", 16: "L7OKC", 17: "L7STS",
    18: "PROCERR", 19: "PROCTOUT", 20: "PROCOK",
}  # fmt: skip

AdminState = Literal["ready", "drain", "maint"]

@dataclass(frozen=True)
class ServerState:
    """One server of one backend as HAProxy sees it.

    op_state: what the health checks concluded (UP, DOWN, STARTING, STOPPING).
    admin_state: what an operator set: ready, drain (no new connections,
    existing ones finish) or maint (no traffic, checks stopped).
    check_status: the last health check's result (L7OK, L4CON, ...), "" when
    the server has no check (kept in maint, where `show stat` hides it).
    """

    backend: str
    server: str
    address: str
    op_state: str
    admin_state: AdminState
    weight: int
    check_status: str
    admin_bits: int = 0

    @property
    def in_rotation(self) -> bool:
        """Receives new traffic: UP, ready and with a non-zero weight."""
        return self.op_state == "UP" and self.admin_state == "ready" and self.weight > 0


def admin_state_from_bits(bits: int) -> AdminState:
    if bits & MAINT_MASK:
        return "maint"
    if bits & DRAIN_MASK:
        return "drain"
    return "ready"


def check_name(kind: str, value: str) -> str:
    """Refuse anything the line-based runtime API could read as more than a name."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidInput(f"HAProxy {kind} name {value!r} must match {_NAME.pattern}")
    return value


def parse_servers_state(text: str) -> list[ServerState]:
    """Parse `show servers state` (format version 1) into ServerStates."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0].strip() != "1":
        raise HAProxyError(f"unexpected `show servers state` answer: {text.strip()[:300]!r}")
    header = next((ln for ln in lines if ln.startswith("#")), None)
    if header is None:
        raise HAProxyError("`show servers state` answer has no header line")
    names = header.lstrip("#").split()
    needed = {"be_name", "srv_name", "srv_addr", "srv_op_state", "srv_admin_state", "srv_uweight", "srv_check_status"}
    missing = needed - set(names)
    if missing:
        raise HAProxyError(f"`show servers state` lacks fields {sorted(missing)}")
    idx = {n: i for i, n in enumerate(names)}
    states = []
    for ln in lines[1:]:
        if ln.startswith("#"):
            continue
        f = ln.split()
        if len(f) < len(names):
            raise HAProxyError(f"short `show servers state` line: {ln!r}")
        bits = int(f[idx["srv_admin_state"]])
        address = f[idx["srv_addr"]]
        if "srv_port" in idx and f[idx["srv_port"]] not in ("0", "-"):
            address = f"{address}:{f[idx['srv_port']]}"
        check_code = int(f[idx["srv_check_status"]])
        op = int(f[idx["srv_op_state"]])
        states.append(
            ServerState(
                backend=f[idx["be_name"]],
                server=f[idx["srv_name"]],
                address=address,
                op_state=OP_STATES.get(op, f"STATE{op}"),
                admin_state=admin_state_from_bits(bits),
                weight=int(f[idx["srv_uweight"]]),
                # INI: never checked (no `check`, or checks stopped in maint).
                check_status="" if check_code in (0, 1) else CHECK_STATUSES.get(check_code, f"code {check_code}"),
                admin_bits=bits,
            )
        )
    return states


class HAProxyRuntime:
    """Client of one HAProxy's runtime API (stats socket at level admin).

    address: `unix:///path/to/admin.sock` or `tcp://host:port`.
    Mutating commands are recorded as audit actions when `audit` is given.
    """

    def __init__(self, address: str, timeout: float = 5.0, audit: "AuditRecord | None" = None,
                 gate: "Gate | None" = None) -> None:
        if address.startswith("unix://"):
            self._family, self._target = socket.AF_UNIX, address[len("unix://") :]
        elif address.startswith("tcp://"):
            hostport = address[len("tcp://") :]
            host, sep, port = hostport.rpartition(":")
            if not sep or not port.isdigit():
                raise InvalidInput(f"HAProxy address {address!r} must be tcp://host:port")
            self._family, self._target = socket.AF_INET, (host.strip("[]"), int(port))
        else:
            raise InvalidInput(f"HAProxy address {address!r} must start with unix:// or tcp://")
        self.address = address
        self.timeout = float(timeout)
        # A runbook's client carries the run's gate (tasks/gate.py): in a dry run every
        # change is recorded as "would" and never sent. Reads always go through.
        self.gate = gate
        self.audit = gate.audit if gate is not None else audit

    @classmethod
    def from_block(cls, block: "HAProxyAdmin", audit: "AuditRecord | None" = None,
                   gate: "Gate | None" = None) -> "HAProxyRuntime":
        return cls(block.address, timeout=block.timeout_seconds, audit=audit, gate=gate)

    def __repr__(self) -> str:
        return f"HAProxyRuntime({self.address!r})"

    # -- transport ---------------------------------------------------------------

    def command(self, line: str) -> str:
        """Send one command, return HAProxy's whole answer (bounded by timeout and size)."""
        if "\n" in line or "\r" in line or ";" in line:
            raise InvalidInput("one HAProxy command at a time: no newline or ';'")
        deadline = time.monotonic() + self.timeout
        try:
            if self._family == socket.AF_UNIX:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(self._target)
            else:
                sock = socket.create_connection(self._target, timeout=self.timeout)
        except OSError as exc:
            raise HAProxyError(
                f"cannot reach HAProxy's runtime API at {self.address}: {exc} "
                "(is HAProxy running with that stats socket?)"
            ) from exc
        chunks, size = [], 0
        try:
            sock.sendall(line.encode("ascii") + b"\n")
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout()
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise HAProxyError(f"{self.address}: answer to `{line}` exceeds {MAX_RESPONSE_BYTES} bytes")
                chunks.append(chunk)
        except socket.timeout:
            raise HAProxyError(f"{self.address}: no complete answer to `{line}` within {self.timeout:g}s") from None
        except OSError as exc:
            raise HAProxyError(f"{self.address}: `{line}` failed: {exc}") from exc
        finally:
            sock.close()
        return b"".join(chunks).decode("utf-8", "replace")

    def _set(self, line: str, action: ActionKind) -> None:
        """Run a mutating command; its only successful answer is an empty one."""
        if self.gate is not None and not self.gate.allows("haproxy", self.address, line, action=action):
            return
        started = time.monotonic()
        answer = ""
        error: str | None = None
        try:
            answer = self.command(line)
            if answer.strip():
                # "No such server.", "No such backend.", "Permission denied", ...
                raise HAProxyError(f"HAProxy at {self.address} refused `{line}`: {answer.strip()[:300]}")
        except HAProxyError as exc:
            error = str(exc)
            raise
        finally:
            if self.audit is not None:
                self.audit.action(
                    host=f"haproxy:{self.address}",
                    command=line,
                    exit_code=0 if error is None else 1,
                    duration_s=time.monotonic() - started,
                    stdout_tail=answer,
                    stderr_tail=error or "",
                    action=action,
                )

    # -- reading -----------------------------------------------------------------

    def server_states(self, backend: str | None = None) -> list[ServerState]:
        """Every server's state, or one backend's; HAProxyError for an unknown backend."""
        line = "show servers state" + (f" {check_name('backend', backend)}" if backend else "")
        answer = self.command(line)
        if answer.lstrip().split("\n", 1)[0].strip() != "1":
            # "Can't find backend.", "Permission denied", ...
            raise HAProxyError(f"HAProxy at {self.address} refused `{line}`: {answer.strip()[:300]}")
        return parse_servers_state(answer)

    def server_state(self, backend: str, server: str) -> ServerState:
        check_name("server", server)
        for s in self.server_states(backend):
            if s.server == server:
                return s
        raise HAProxyError(f"HAProxy at {self.address}: backend {backend} has no server {server}")

    # -- changing ----------------------------------------------------------------

    def _set_state(self, backend: str, server: str, state: AdminState) -> None:
        self._set(f"set server {check_name('backend', backend)}/{check_name('server', server)} state {state}",
                  ActionKind(state))

    def drain(self, backend: str, server: str) -> None:
        """Stop sending new connections to the server; existing ones finish."""
        self._set_state(backend, server, "drain")

    def ready(self, backend: str, server: str) -> None:
        """Put the server back in rotation (clears drain and maint)."""
        self._set_state(backend, server, "ready")

    def maint(self, backend: str, server: str) -> None:
        """Take the server out completely: no traffic, health checks stopped."""
        self._set_state(backend, server, "maint")

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        """Set the server's absolute weight (0-256); 0 stops new traffic without a drain."""
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 256:
            raise InvalidInput(f"HAProxy weight must be an int from 0 to 256, got {weight!r}")
        self._set(f"set weight {check_name('backend', backend)}/{check_name('server', server)} {weight}",
                  ActionKind.set_weight)
