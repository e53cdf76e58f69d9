"""Safety guards shared by every mutating runbook, one module per question asked before touching a node:

- `lease`: is another mutating run already working on this node (or its host, or its chain)?
  Prefect global concurrency limits taken with a renewed lease.
- `budget`: may automation restart this node again, now? Restart budget and circuit breaker.
- `chain`: is the chain, not the node, the problem? Then restarting nodes would not help.
- `disruption`: would taking the node out of rotation leave its backend without a healthy server?
- `pause`: has an operator paused automatic remediation? A Prefect Variable, editable in the UI.
- `hold`: has an operator held this node out of automation on purpose (maintenance)?

Guards decide and record; flows act on the decision. Every state a guard
reports (restarts, circuits, incidents, holds) is derived from audit
entries written through `tasks.audit`, never from a second copy. Guards
stand on the systems layer (audit, Prefect) and never import the steps or
the frame above them.
"""

from tasks.guards.budget import (
    CIRCUIT_CLOSED,
    CIRCUIT_OPEN,
    CircuitNotOpen,
    RestartDecision,
    automatic_restarts,
    circuit_state,
    close_circuit,
    record_circuit_open,
    restart_decision,
)
from tasks.guards.chain import (
    CHAIN_INCIDENT,
    chain_incident,
    chain_target,
    record_chain_incident,
    should_escalate_chain_incident,
)
from tasks.guards.disruption import DisruptionBudgetExceeded, disruption_budget
from tasks.guards.hold import HOLD_PLACED, HOLD_RELEASED, Hold, NotOnHold, active_hold, holds, place_hold, release_hold
from tasks.guards.lease import (
    API_TIMEOUT_S,
    LEASE_PREFIX,
    MAX_LEASE_SECONDS,
    MIN_LEASE_SECONDS,
    HeldLeases,
    LeaseBusy,
    LeaseError,
    Resource,
    ensure_node_limit,
    leases,
    limit_name,
    lock_names,
    node_lease,
    node_limit_name,
    release_lease,
)
from tasks.guards.pause import PauseState, pause_state, set_pause

__all__ = [
    "API_TIMEOUT_S", "CHAIN_INCIDENT", "CIRCUIT_CLOSED", "CIRCUIT_OPEN", "HOLD_PLACED", "HOLD_RELEASED",
    "LEASE_PREFIX", "MAX_LEASE_SECONDS", "MIN_LEASE_SECONDS",
    "CircuitNotOpen", "DisruptionBudgetExceeded", "HeldLeases", "Hold", "LeaseBusy", "LeaseError", "NotOnHold",
    "PauseState", "Resource", "RestartDecision",
    "active_hold", "automatic_restarts", "chain_incident", "chain_target", "circuit_state", "close_circuit",
    "disruption_budget", "ensure_node_limit", "holds", "leases", "limit_name", "lock_names", "node_lease",
    "node_limit_name", "pause_state", "place_hold", "record_chain_incident", "record_circuit_open",
    "release_hold", "release_lease", "restart_decision", "set_pause", "should_escalate_chain_incident",
]
