"""Per-compartment limits: one definition, used by the policy, the router and the engine.

The supervisor parses them from the system file (supervisor/policy.py), the
router enforces the ones about calls and messages, and each engine receives
the ones it enforces itself (memory, tables, fuel, handles, message size).
Defaults are safe for untrusted code; docs/policy-reference.md says what
each bounds and what happens at the limit.
"""
from __future__ import annotations

import attrs

#: bytes of a module file (it is read whole, and compiled): the one bound, which
#: `wsuper check` and `up` hold the system file's modules to, and every read of
#: one (compartments/wasm.py)
MAX_MODULE_BYTES = 256 << 20


@attrs.frozen
class Limits:
    memory: int = 64 << 20              # bytes of linear memory
    table_elements: int = 10_000        # elements of each of the module's tables
    fuel_per_call: int = 1_000_000_000  # wasm fuel (about instructions) per incoming call
    handles: int = 1024                 # capabilities the compartment may hold
    in_flight: int = 64                 # calls from it the supervisor holds unanswered
    message_size: int = 8 << 20         # bytes in one message to or from it
    call_time: float = 30.0             # seconds a call into it may take
    log_rate: float = 100.0             # lines per second it may write to its logs
    start_time: float = 30.0            # seconds it may take to start (be ready for calls)
    run_time: float | None = None       # seconds its program (_start) may run; None: no limit
    run_cpu: float | None = None        # CPU seconds its engine may use while the program runs

    #: key -> (minimum, maximum, is a size)
    RANGES = {
        "memory": (64 << 10, 4 << 30, True),
        "table_elements": (0, 10_000_000, False),
        "fuel_per_call": (1_000, 1 << 62, False),
        "handles": (1, 1 << 20, False),
        "in_flight": (1, 1 << 16, False),
        "message_size": (1 << 10, 256 << 20, True),
        "call_time": (0.01, 86_400, False),
        "log_rate": (0.01, 1_000_000, False),
        "start_time": (0.1, 3600, False),
        "run_time": (0.01, 1e9, False),
        "run_cpu": (0.01, 1e9, False),
    }

    #: limits given in seconds or per second: any number, not only a whole one
    REAL = frozenset({"call_time", "log_rate", "start_time", "run_time", "run_cpu"})


DEFAULT = Limits()
