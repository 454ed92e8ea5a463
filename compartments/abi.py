"""The guest ABI, as data: what a module may import and export, and error codes.

docs/guest-abi.md is the prose version of this file; keep them together.
"""
from __future__ import annotations

MODULE = "wsuper"

#: Bytes of a message to a compartment that a Random.bytes answer takes beside its
#: data: a struct of one Data and nothing else, its root pointer and the Data's
#: pointer, 16 bytes (padded to a word).  The file answers keep their own room
#: (supervisor/hostfs.py, RESULT_SLACK and each listed entry's).  A blanket 1 KiB
#: kept for every answer (RESULT_HEADROOM, gone) left message_size = "1KiB" (the
#: least it may be) room for no byte: every Random.bytes and File.read, and every
#: WASI random_get and read, failed.
RANDOM_HEADROOM = 16


def random_most(message_size: int) -> int:
    """The most bytes one Random.bytes answer to a compartment of that message_size
    carries (before the host's own bound, hostcaps.RANDOM_MAX_BYTES): whole words,
    so that the answer's padding fits too."""
    return max(0, (message_size - RANDOM_HEADROOM) // 8 * 8)

I32, I64 = "i32", "i64"

#: Host functions in the `wsuper` import module: name -> (params, results).
IMPORTS = {
    "lookup": ((I32, I32), (I32,)),
    "call": ((I32, I64, I32, I32, I32, I32, I32, I32), (I32,)),
    "reply_read": ((I32, I32), (I32,)),
    "release": ((I32,), (I32,)),
    "keep": ((I32,), (I32,)),
    "object": ((I32,), (I32,)),
    "params_read": ((I32, I32), (I32,)),
    "results_set": ((I32, I32, I32, I32), (I32,)),
    "fail": ((I32, I32), (I32,)),
}

#: WASI preview 1 (docs/guest-abi.md, "WASI programs"): every function of
#: wasi_snapshot_preview1, implemented by compartments/wasi.py on the grants.
WASI_MODULE = "wasi_snapshot_preview1"
_P = {"i": I32, "I": I64}
WASI_IMPORTS = {name: (tuple(_P[c] for c in params), (I32,) if name != "proc_exit" else ())
                for name, params in {
    "args_get": "ii", "args_sizes_get": "ii", "environ_get": "ii", "environ_sizes_get": "ii",
    "clock_res_get": "ii", "clock_time_get": "iIi", "fd_advise": "iIIi", "fd_allocate": "iII",
    "fd_close": "i", "fd_datasync": "i", "fd_fdstat_get": "ii", "fd_fdstat_set_flags": "ii",
    "fd_fdstat_set_rights": "iII", "fd_filestat_get": "ii", "fd_filestat_set_size": "iI",
    "fd_filestat_set_times": "iIIi", "fd_pread": "iiiIi", "fd_prestat_get": "ii",
    "fd_prestat_dir_name": "iii", "fd_pwrite": "iiiIi", "fd_read": "iiii",
    "fd_readdir": "iiiIi", "fd_renumber": "ii", "fd_seek": "iIii", "fd_sync": "i",
    "fd_tell": "ii", "fd_write": "iiii", "path_create_directory": "iii",
    "path_filestat_get": "iiiii", "path_filestat_set_times": "iiiiIIi", "path_link": "iiiiiii",
    "path_open": "iiiiiIIii", "path_readlink": "iiiiii", "path_remove_directory": "iii",
    "path_rename": "iiiiii", "path_symlink": "iiiii", "path_unlink_file": "iii",
    "poll_oneoff": "iiii", "proc_exit": "i", "proc_raise": "i", "sched_yield": "",
    "random_get": "ii", "sock_accept": "iii", "sock_recv": "iiiiii", "sock_send": "iiiii",
    "sock_shutdown": "ii"}.items()}

#: Exports the engine looks for.
EXPORT_MEMORY = "memory"
EXPORT_START = "_start"
EXPORT_INITIALIZE = "_initialize"    # a WASI reactor's set-up, run once at start
EXPORT_DISPATCH = "wsuper_dispatch"   # (object, interface_id, method_id, params_len, caps) -> i32
#: a mutable i32 or i64 global: the C stack's pointer (wasm-ld's), which the engine
#: puts back after guest code that trapped or ran out of fuel (Engine._guest)
EXPORT_STACK_POINTER = "__stack_pointer"
DISPATCH_TYPE = ((I32, I64, I32, I32, I32), (I32,))

# Error codes returned (as negative i32) by the host functions.
OK = 0
E_BADHANDLE = -1       # the handle is not in this compartment's c-list
E_FAILED = -2          # the callee raised an exception; reply holds the reason
E_DISCONNECTED = -3    # the callee's compartment is gone
E_OVERLOADED = -4      # the callee (or a limit) refused the call for now
E_UNIMPLEMENTED = -5   # the callee does not implement that interface/method
E_MESSAGE = -6         # params/results are not a valid Cap'n Proto message, or too large
E_NOTFOUND = -7        # lookup: no capability granted under that name
E_STATE = -8           # no reply pending / not inside a dispatch / results already set
E_TOOMANY = -9         # too many capabilities in one message
E_DENIED = -10         # refused by attenuation: an allow-list, a revoked, used-up or expired
                       # grant (the reply says which); a rate limit is E_OVERLOADED

ERROR_NAMES = {v: k for k, v in globals().items() if k.startswith("E_")}

#: Exception type (rpc.capnp Exception.Type) -> error code.
EXCEPTION_CODES = {
    "failed": E_FAILED,
    "disconnected": E_DISCONNECTED,
    "overloaded": E_OVERLOADED,
    "unimplemented": E_UNIMPLEMENTED,
}

#: rpc.capnp's Exception has no room for "refused by attenuation": the supervisor
#: starts such a reason with this, and the engine makes it E_DENIED.
DENIED_PREFIX = "denied: "


def error_code(type: str, reason: str) -> int:
    """The guest's error code for a call that failed with this exception."""
    if reason.startswith(DENIED_PREFIX):
        return E_DENIED
    return EXCEPTION_CODES.get(type, E_FAILED)


#: A status `wsuper_dispatch` returns -> the exception type its caller gets.
DISPATCH_TYPES = {E_UNIMPLEMENTED: "unimplemented", E_OVERLOADED: "overloaded",
                  E_DISCONNECTED: "disconnected"}

MAX_CAPS = 256


#: The functions an engine calls, if a module exports them: their one type each.
ENTRY_TYPES = {EXPORT_START: ((), ()), EXPORT_INITIALIZE: ((), ()),
               EXPORT_DISPATCH: DISPATCH_TYPE}


#: check_entries' word for an exported memory
MEMORY_KIND = "memory"


def check_entries(exports: dict) -> str | None:
    """Error text for the first entry point (ENTRY_TYPES) a module exports as
    something else, or `memory` that it exports as something other than a
    memory, else None (the engine refuses the same at its start).  `exports`:
    name -> (params, results) of a function, MEMORY_KIND for a memory, or None
    for another kind."""
    if EXPORT_MEMORY in exports and exports[EXPORT_MEMORY] != MEMORY_KIND:
        return (f"exports {EXPORT_MEMORY}, but not as a memory (every pointer the host "
                f"functions take is into the memory of that name)")
    for name, want in ENTRY_TYPES.items():
        if name not in exports:
            continue
        found = exports[name]
        if found is None or found == MEMORY_KIND:
            return f"exports {name}, but not as a function"
        if found != want:
            return (f"exports {name} with the wrong type: expected func {list(want[0])} -> "
                    f"{list(want[1])}, found {list(found[0])} -> {list(found[1])}")
    return None


def check_imports(imports) -> str | None:
    """Error text for the first import a module may not have, else None.

    `imports` yields (module, name, kind, (params, results) or None).
    """
    for module, name, kind, sig in imports:
        table = IMPORTS if module == MODULE else WASI_IMPORTS if module == WASI_MODULE else {}
        if name not in table:
            return (f"imports {module}.{name}, which is not granted "
                    f"(only the {MODULE} ABI and {WASI_MODULE} functions can be linked)")
        if kind != "func" or sig != table[name]:
            want = table[name]
            return (f"imports {module}.{name} with the wrong type "
                    f"(expected func {list(want[0])} -> {list(want[1])})")
    return None
