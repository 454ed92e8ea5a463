"""The engine: one compartment's wasm module, driven by Cap'n Proto RPC.

Owns: one wasmtime Store per instance of the compartment's module, linked only
against the `wsuper` ABI (and WASI, compartments/wasi.py); the guest's handle
table; the blocking loop that speaks Cap'n Proto RPC to the supervisor over
one socket; the per-call reset of instance = "per_call".

Must not: open files or sockets, import trio or the supervisor, or touch
wasmtime-py's private API (that is unchecked.py).  Everything it can reach
comes through the supervisor, which checks it again.

An engine is forked by the zygote (zygote.py), which hands `run()` a
validated `EngineSpec` (spec.py), the socket and the compiled module; `run()`
confines the process (confine.py) before it reads a single message.

* its bootstrap capability is the Engine control object (engine.capnp), which
  only the supervisor holds;
* a guest host call (`wsuper.call`) becomes an RPC Call; the engine then reads
  messages until its Return arrives, serving incoming calls re-entrantly
  meanwhile (a callback into this compartment while it waits);
* an incoming call on one of the guest's objects becomes a call of the guest's
  `wsuper_dispatch` export.

Guest handles index this engine's handle table; each entry is an import (a
capability held through the supervisor) or one of the guest's own objects.
The supervisor checks every import id against the compartment's c-list, so a
forged id in a taken-over engine reaches nothing it was not granted.

Nothing the supervisor sends crashes the engine: a call it cannot handle
fails with a clear reason, and a protocol violation is reported on stderr
and ends the engine with EXIT_PROTOCOL.
"""
from __future__ import annotations

import collections
import ctypes
import errno
import functools
import itertools
import mmap
import operator
import os
import re
import resource
import signal
import socket
import struct
import sys
import time

import wasmtime

from capnp_schemas import engine as engine_schema, payloads, protocol, wire
from capnp_schemas.protocol import Content, RemoteRef
from capnp_schemas.text import bounded, first_line as _first_line, printable

from . import abi, confine, probing, protect, unchecked, wasi, wasm, wasmbin
from .spec import EXIT_GUEST_OK, EngineSpec
from .unchecked import TypedFunc

ENGINE_INTERFACE = engine_schema.Engine.schema.node.id


UNLIMITED_FUEL = (1 << 63) - 1

# How an engine ends (its exit code); the supervisor prints the last stderr line.
EXIT_OK = 0
EXIT_CANNOT_LOAD = 3        # the module cannot be loaded or instantiated
EXIT_PROTOCOL = 4           # the supervisor broke the protocol
EXIT_CONFINE = 5            # the process could not be confined: it does not run
EXIT_GUEST = 6              # its guest called exit(N != 0) in a call it served, no program running
EXIT_INTERNAL = 70          # a fault of the engine's own (EX_SOFTWARE; zygote._leave_with's)
# EXIT_GUEST_OK (7, spec.py): the same with exit(0), which the supervisor tells apart

#: Linear memories a compartment's module may have: wasmtime applies limits.memory
#: to each, so a module with ten had ten times its limit (preflight refuses more).
MEMORIES = wasmbin.MAX_MEMORIES

#: Incoming calls served re-entrantly while the guest waits in its own calls
#: (A calls B, B calls A back, ...).  Deeper nesting fails the call: each level
#: costs native stack in this process.
MAX_NESTING = 32

#: Bytes of parameters the calls nested in this engine may hold together: a call
#: that would take them past it, while others wait in it, fails `overloaded`.  The
#: engine reads on while its guest waits (it must: the answer comes that way), so
#: what the supervisor holds back for it (its soft bound) does not bound what it
#: holds itself; calls of 7 MiB nested in a cycle of three compartments (each
#: forwarding its parameters) took their engines past their address space (the
#: heap's 512 MiB of it, confine()) in 1.5 s: MemoryError, the engine gone, and
#: every call in it with it.  A call that is not nested is never refused for it.
NESTED_BYTES = 128 << 20

#: Answers are written before the guest is entered, so that a long call never
#: keeps the answers to earlier ones waiting; except before a call to a method
#: known to be short: one that has been called before and whose every call so
#: far used under HOLD_FUEL wasm instructions and, while answers waited, under
#: HOLD_NS of this thread's CPU.  The answers of a batch of such calls go out
#: together, in one write, when the engine next waits for input, or before
#: the next call once HOLD_MESSAGES or HOLD_BYTES wait or the oldest has
#: waited HOLD_NS.  One long call marks its method for good (fuel is not
#: moved by a busy machine; the CPU time is read only when a held call took
#: HOLD_NS by the clock, so a preempted call is not taken for a long one).
#: At most METHODS methods are remembered; others always write first.  What
#: blocks without using CPU writes first: an outgoing call (and the answers
#: served while it waited go out when it returns), and a WASI sleep
#: (before_blocking).
HOLD_FUEL = 100_000
HOLD_NS = 2_000_000
HOLD_MESSAGES = 32
HOLD_BYTES = 256 << 10
METHODS = 1024

#: A call its caller finished before it was dispatched is not run: rpc.capnp makes
#: Finish before Return a cancellation, and the supervisor sends one when the caller
#: is gone; it is answered 'canceled'.  The Finishes that came while the guest ran
#: are read, without waiting, before the next call of a batch is dispatched, once
#: LOOK_AHEAD_NS have passed since the socket was last read (at most
#: LOOK_AHEAD_READS reads of 64 KiB each time); what they bring joins the batch.
LOOK_AHEAD_NS = 1_000_000
LOOK_AHEAD_READS = 16

#: A call whose Finish comes while its guest code runs (its caller cancelled it,
#: went, or was revoked) is past its time at once: its entry of Engine._until
#: becomes CANCELLED, so that its next host call that may call out or only
#: computes fails it (Engine._cut_off; natively, _fastcall.c past_deadline sends
#: such a host call to Python), and the call out it waits for is finished too
#: (Engine._finish_read), which cancels it at its callee, and so on down the chain.
CANCELLED = float("-inf")

#: Seconds a wait for an answer (a guest's host call) reads only what comes before it
#: also serves calls read before it began, when it is not the outermost wait of
#: guest code (see Engine._wait_for).
BACKLOG_GRACE = 0.5

#: Bytes of guest memory a host call may read or write for free, all its copies
#: together (every buffer of a WASI read or write, its iovecs, its path); past
#: them, the call's fuel is charged one unit per 8 bytes (Engine._charge), as
#: wasm's own bulk instructions are by their length.  (They were free per copy,
#: until an outside review, reviewer 204: one fd_write of 1024 iovecs of 4 KiB
#: moved 4 MiB for the 512 units of reading its iovecs, where one buffer of
#: 4 MiB cost 524,000, so a loop of them moved gigabytes on a full budget.)  Uncharged, a loop of params_read
#: with 4 MiB of params (12 instructions a round) used 0.33 ms of CPU a round:
#: ~7 hours to spend the default fuel_per_call, run on past call_time (no host
#: call that calls out), where a plain loop spends it in 0.29 s.
FREE_COPY = 4096

#: The wsuper host functions that never call out but fail a call past its
#: call_time too, as wsuper.call does (Engine._cut_off_first).  Uncharged but for
#: what they copy, a loop of one of them ran on for minutes after its caller had
#: been told it failed: params_read of 4 KiB (free) in the Python path (every
#: per_call compartment's) used 2.9 s of CPU per 10^7 fuel, ~290 s to spend the
#: default fuel_per_call, ~1000 times a plain loop (design.md said ~200).  Not
#: release and keep: they give back what a call holds, and an SDK that frees
#: its arena (wsuper_arena_free: a handle unlinked, then released) would lose
#: what one cut short was to let go of.
CUT_OFF_AT = frozenset({"params_read", "results_set", "reply_read", "fail", "lookup",
                        "object"})

#: Characters of a trap report's function name (the module's name section says
#: anything, of any length) and of its cause: the rest is counted, not sent.
TRAP_NAME_LIMIT = 200
TRAP_CAUSE_LIMIT = 500


class GuestFault(Exception):
    """The guest broke the ABI (bad pointer, bad length): it traps."""


def _naming(module: str, name: str, fn):
    """Host function `fn`, imported as module.name, whose GuestFault names it:
    'compartment app trapped: wasi_snapshot_preview1.fd_write: guest passed
    out-of-range memory [...]'.  The trap said only 'guest passed out-of-range
    memory [131070, 131070+8)', which of the program's host calls unsaid
    (fuzz/wasi.py found it)."""
    where = f"{module}.{name}: "

    def call(*args):
        try:
            return fn(*args)
        except GuestFault as e:
            if str(e).startswith(where):
                raise
            raise GuestFault(where + str(e)) from None
    call.__name__ = name
    return call


class EngineError(Exception):
    """The engine cannot start this module; the text says why."""


class LocalObject:
    """One of the guest's own objects, named by a guest-chosen integer tag."""
    __slots__ = ("tag",)

    def __init__(self, tag):
        self.tag = tag

    def __repr__(self):
        return f"LocalObject({self.tag})"


class HandleTable:
    """The guest's view of its c-list: small integers, a free list, 0 is never valid."""

    def __init__(self, limit: int = 65536):
        self._entries: dict[int, object] = {}
        self._free: list[int] = []
        self._next = 1
        self.limit = limit

    def add(self, entry) -> int:
        if len(self._entries) >= self.limit:
            raise OverflowError("handle table full")
        h = self._free.pop() if self._free else self._next
        if h == self._next:
            self._next += 1
        self._entries[h] = entry
        return h

    def get(self, h: int):
        return self._entries.get(h)

    def remove(self, h: int):
        entry = self._entries.pop(h)
        self._free.append(h)
        return entry

    def entries(self):
        return list(self._entries.values())

    def copy(self) -> "HandleTable":
        """The same handles, in a table of their own (instance = "per_call")."""
        other = HandleTable(self.limit)
        other._entries = dict(self._entries)
        other._free = list(self._free)
        other._next = self._next
        return other



class _Import:
    """A handle entry for a capability the supervisor hosts for us."""
    __slots__ = ("import_id",)

    def __init__(self, import_id):
        self.import_id = import_id

    def __eq__(self, other):
        return isinstance(other, _Import) and other.import_id == self.import_id

    def __hash__(self):
        return hash(self.import_id)


class _Frame:
    """One incoming call being dispatched to the guest.  `borrowed`: the handles
    made for its params that the guest has neither kept (`keep`) nor released:
    they are released once the call is answered (docs/guest-abi.md, "Handles").
    `held`: the imports its results name, each with a reference of the results'
    own until the answer is queued (the guest may release its handles first).
    What the guest may set later (results_set, fail) has its default on the
    class: every call makes a frame, and its __init__ set six slots, three of
    them to defaults most calls keep."""
    results = None
    error = None
    held: list[int] | tuple = ()          # a list of its own once results_set sets it
    #: the supervisor's refusal of the answer to the guest's last call out that had
    #: one (`_refusal`): what a bare failing status is answered with, past its number
    refused: str | None = None

    def __init__(self, params: bytes, handles: list, borrowed: set | None = None):
        self.params = params
        self.handles = handles
        self.borrowed = borrowed


#: The supervisor's refusals of an answer on its way to a call out (a per-message
#: limit the answer passed: protocol's "results refused", router._oversized,
#: router._check_size), exactly as it words them: numbers and a peer's name.
_REFUSALS = re.compile(
    r"results refused: (?:\d{1,10} capabilities in one message \(limit \d{1,10}, "
    r"MAX_CAPS_PER_MESSAGE\)|pipeline transform of \d{1,10} steps \(limit \d{1,10}\)"
    r"|more than \d{1,10} pipeline transform steps in one message \(limit \d{1,10}: "
    r"the target's and every capability's together\))"
    r"|results of \d{1,20} bytes from [\w.:#-]{1,64} are more than it may send "
    r"\(limit message_size = \d{1,20}\)"
    r"|a message of \d{1,20} bytes is more than [\w.:#-]{1,64} accepts "
    r"\(limit message_size = \d{1,20}\)")


def _refusal(reason: str) -> str | None:
    """`reason`, if it is one of the supervisor's refusals of an answer
    (_REFUSALS), else None.  A failed call out's other reasons are its callee's
    words, which the guest heard and chose not to pass on (it may fail its call
    saying them): its caller is not told them behind its back, but a refusal
    says only a limit, sizes and a name, and without it the caller heard
    "dispatch returned 5" of a limit its own callback's answer passed."""
    return reason if _REFUSALS.fullmatch(reason) else None


def _call_received(answer_id: int, target, interface_id: int, method_id: int,
                   content: Content) -> protocol.CallReceived:
    """The event _take would have made of a plain call that plain_calls read."""
    return protocol.CallReceived(answer_id, target, interface_id, method_id,
                                 protocol.Payload(content, ()))


def _native_results(segment: bytes):
    """frame.results for a message the native results_set checked (_guest_content's
    checks, one segment, no capabilities)."""
    return Content((segment,), (0, 0)), []


#: What belongs to one instance of the module; instance = "per_call" gives each
#: call a fresh set (Engine._fresh_instance) and puts the outer one back after.
_INSTANCE_STATE = ("store", "memory", "dispatch", "reply", "_reply_entries", "handles", "wasi",
                   "_wasi_fns", "_memory_base", "_stack_pointer", "_resting_sp")


#: instance = "per_call": instances the pool holds at once (pool_for); a call
#: served while another call's instance waits beneath it (a callback) gets one
#: of the default allocator, as every call's did before
POOL_INSTANCES = 1
#: ... and the bytes of its memory (and table) wiped in place when its slot is
#: used again, not given back to the kernel (unchecked.pooling): a call's first
#: touches of its memory faulted pages in again (~4 us of a call to calc)
POOL_KEEP_RESIDENT = 64 << 10


class _Pool:
    """instance = "per_call": the engine of wasmtime's pooling allocator that a
    call's instance comes from, the module loaded in it, the address space its
    pool reserved (Engine.confine), its linker, its InstancePre (instantiate),
    and whether its one slot is taken."""
    def __init__(self, engine: wasmtime.Engine, module: wasmtime.Module, reserved: int,
                 linker: wasmtime.Linker):
        self.engine, self.module, self.reserved, self.linker = engine, module, reserved, linker
        self.pre: wasmtime.InstancePre | None = None
        self.busy = False


def pool_for(spec: EngineSpec, probed: bool, load) -> tuple | bool:
    """(engine, module, address space reserved) for a per_call compartment's
    calls' instances: a wasmtime engine of wasm.engine_config(`probed`) that
    allocates them from a pool of POOL_INSTANCES slots sized by the
    compartment's own limits, and its module, `load(engine)`.  A fresh
    instance costs less there (docs/performance.md).  False for none: not
    per_call, a memory limit above the memory reservation (a slot would have to
    be as large), a module that does not fit the slot (tables, memories,
    instance size), WSUPER_POOL=0."""
    limits = spec.limits
    if not spec.per_call or limits.memory > \
            wasm.MEMORY_RESERVATION or os.environ.get("WSUPER_POOL", "1") == "0":
        return False
    if not _address_space_for(2 * POOL_INSTANCES * (MEMORIES + probed) *
                              wasm.MEMORY_RESERVATION):
        # under a tight RLIMIT_AS (`ulimit -v`) wasmtime could not map the pool, and
        # it aborts the process then (a Rust panic), where without a pool it ran
        return False
    config = wasm.engine_config(probed)
    unchecked.pooling(config, instances=POOL_INSTANCES, memories=MEMORIES + probed,
                      memory=limits.memory, reservation=wasm.MEMORY_RESERVATION,
                      table_elements=limits.table_elements, keep_resident=POOL_KEEP_RESIDENT)
    before = _vm_size()
    wasm_engine = wasmtime.Engine(config)
    reserved = _vm_size() - before
    try:
        module = load(wasm_engine)
    except (wasmtime.WasmtimeError, OSError, ValueError):
        return False                # does not fit: its instances are made as before
    return wasm_engine, module, max(reserved, 0)


def _address_space_for(size: int) -> bool:
    """Whether `size` bytes of address space can be reserved now (a mapping that
    is made and given back, no memory behind it)."""
    try:
        mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                  prot=0).close()          # PROT_NONE
    except (OSError, ValueError):
        return False
    return True


def _vm_size() -> int:
    return int(confine.proc_read("statm").split()[0]) * resource.getpagesize()


_instance_state = operator.itemgetter(*_INSTANCE_STATE)


class Engine:
    def __init__(self, sock: socket.socket, spec: EngineSpec, module: wasmtime.Module = None,
                 wasm_engine: wasmtime.Engine = None, description: wasm.Description = None,
                 instantiate: bool = True, pool=None):
        """`module`: the compartment's module, compiled for `wasm_engine` with
        wasm.engine_config() (the zygote's), and its `description`, its imports
        already checked; None: compile and check `spec.module` here.
        `instantiate`: False leaves that to `instantiate()`, which runs the
        module's start function, guest code: `run` confines the process first.
        `pool`: instance = "per_call": what pool_for made (its module loaded
        from the zygote's memfd), False for none; None: pool_for is asked here."""
        self.sock = sock
        self.spec = spec
        self.name = spec.name
        self.exports_main = spec.exports
        self.per_call = spec.per_call         # a fresh instance for every incoming call
        self.limits = spec.limits
        self.max_message_bytes = self.limits.message_size
        # what the supervisor forwards carries its own headers: allow for them
        self.conn = protocol.Connection(
            f"supervisor->{self.name}", max_message_words=(self.limits.message_size >> 3) + 8192)
        self.handles = HandleTable(self.limits.handles)
        #: name -> (handle, its entry) of each grant, from Engine.start; the handle
        #: names the grant only while that entry is still there (_host_lookup)
        self.grants: dict[str, tuple[int, object]] = {}
        self.objects: dict[int, LocalObject] = {}
        #: question id -> the list its Return goes into, bound when the Return is read
        #: (the id may be reused at once: a Return without Finish frees it, and a
        #: call served before the Return is handled may ask a new question)
        self._waiting: dict[int, list] = {}
        self.reply: tuple | None = None      # (bytes, handles) for reply_read
        # the handles of the last reply and what they held: released at the next call
        # if the guest never read it (reply_read sets reply to None, on either path)
        self._reply_entries: list = []
        # the calls being dispatched, innermost last; None: guest code that is not a
        # dispatch runs above them (_outside), and they are not its own
        self.frames: list[_Frame | None] = []
        # when the call whose code runs now is out of time (time.monotonic(): its
        # dispatch plus call_time), innermost last; None: code of no call (_start,
        # a start function, _initialize at start), which run_time and start_time bound
        self._until: list[float | None] = []
        #: the calls whose guest code is running (or waits in a call out): answer id
        #: -> its index in _until; and the call out each such index waits for:
        #: [question id, finished by us before its Return] (_finish_read)
        self._serving_at: dict[int, int] = {}
        self._asking: dict[int, list] = {}
        self.memory: wasmtime.Memory | None = None      # none until instantiated
        #: the store of each guest code running now, innermost last (_guest); its
        #: length is how deep (nested: > 1)
        self._running: list = []
        #: guest code running now that a deadline may stop (_timed), innermost last:
        #: (its store, the index in _until of its deadline, or None for none)
        self._timed: list = []
        #: whether code past its deadline is stopped in wasm too (run(): an engine
        #: process, with the native module; _fastcall.c "deadlines")
        self._deadlines = False
        self._run_answer = None              # the answer id of run() while _start runs
        #: run() that came while a call was being dispatched (waiting in a call out):
        #: started once the engine is back at its top level (_run_deferred)
        self._deferred_run: protocol.CallReceived | None = None
        #: incoming calls on the guest's objects being answered now (nested: > 1),
        #: from before their code runs until their answer is queued
        self._serving = 0
        self._exited = None                  # its one instance's exit code, once it exited
        # (read sequence, event) received and not handled yet (_pump)
        self._backlog: collections.deque = collections.deque()
        self._read_seq = 0                   # reads of the socket so far
        self.control = object()
        self._outgoing: list[bytes] = []
        self._outgoing_bytes = 0
        self._held_since = 0                    # perf_counter_ns when the oldest was queued
        self._held_cpu: int | None = None       # thread CPU when the first call was held
        self._read_at = 0                       # perf_counter_ns of the last read
        self._short: dict[tuple, bool] = {}     # (object, interface, method) -> short so far
        self._fuel_used = 0                     # by the last guest entry
        #: bytes of guest memory the host call running now has copied (_span),
        #: FREE_COPY of them free; reset as each host call begins (host_call_begins)
        self._copied = 0
        self._import_refs: dict[int, int] = {}   # import id -> handles naming it
        #: import id -> references in messages read but not yet taken (a call of the
        #: batch not dispatched yet, a return not yet read): not ours to release
        self._unread_refs: dict[int, int] = {}
        self._started = False
        self._main_served = False               # start's answer has the main object
        self._instantiated = False              # Engine.start is answered only after
        self._early: list = []                  # read with the early bootstrap (serve)
        self._granted: list = []                 # (name, kind, mount, import id), at start
        self._grant_handles: HandleTable | None = None   # per_call: each call starts here
        #: per_call: the calls' instances made and not yet let go (their stores are
        #: closed after their answers): nested calls each hold one, with its memory
        self._instances = 0
        self._wasi_fns: dict = {}
        self.call_times: list[int] | None = [] if spec.stats else None  # ns per outgoing call
        self.regions: protect.Regions | None = None     # memory protection: see _protect
        self._memory_base = None
        #: the instance's exported C stack pointer (abi.EXPORT_STACK_POINTER), or None;
        #: its value while no guest code runs, read before the first entry (_guest)
        self._stack_pointer: wasmtime.Global | None = None
        self._resting_sp = None
        #: instance = "per_call": the pooled engine its calls' instances come from
        #: (_Pool), or None
        self._pool: _Pool | None = None
        self._load(module, wasm_engine, description, pool)
        if instantiate:
            self.instantiate()

    # ------------------------------------------------------------ wasm

    def _load(self, module, wasm_engine, description, pool):
        path = self.spec.module
        sites = layout = binary = None
        if module is None:
            # probe sites: their clones' frames need more stack (wasm.wasm_stack)
            wasm_engine = wasmtime.Engine(wasm.engine_config(probed=bool(self.spec.instrument)))
            try:       # probe sites first, then protection's checks (wasm.compile_for)
                module, sites, layout, binary = wasm.compile_binary_for(
                    wasm_engine, path, self.spec.instrument, self.spec.protect,
                    self.limits.memory)
            except (OSError, UnicodeDecodeError, wasmtime.WasmtimeError) as e:
                raise EngineError(f"cannot load module {path}: {_first_line(e)}") from None
            except Exception as e:  # noqa: BLE001 - instrument.InstrumentError
                raise EngineError(f"cannot instrument module {path}: {_first_line(e)}") \
                    from None
            description = None
        self.wasm_engine = wasm_engine
        if description is None:
            problem, description = wasm.describe(module, sites, layout, binary)
            if problem:
                raise EngineError(f"module {path} {problem}")
        self.probes = probing.EngineProbes(
            probing.Sites.from_json(description.sites) if description.sites else None)
        sites = self.probes.sites
        # limits.memory bounds each memory of the store, the probe memory too
        # (preflight refuses a system where it cannot hold it, with the same words)
        too_big = sites.memory_problem(self.limits.memory) if sites is not None else None
        if too_big:
            raise EngineError(f"module {path}: {too_big}")
        self._wasi_names = list(description.wasi)
        # a WASI program: its descriptors, clocks, ... come from the grants at start
        self.wasi = self._new_wasi()
        self.store = self._new_store(UNLIMITED_FUEL)     # start-up code (the start function)
        # params_read, results_set, reply_read of a plain call, without Python (instantiate)
        self._native = unchecked.guest(self, self.frames, self.probes, self.max_message_bytes,
                                       _native_results)
        # reads of plain calls served without the general path's layers (_serve_plain,
        # _plain); fuzz/hostmem.py and fuzz/callout.py turn it off in the engine they
        # compare with
        self._plain_serving = wire._native is not None
        linker = self._linker_for(self.wasm_engine)
        if self.per_call:
            if pool is None:
                pool = pool_for(self.spec, self.probes.sites is not None, lambda e:
                                wasmtime.Module.deserialize(e, module.serialize()))
            if pool:
                self._pool = _Pool(*pool, self._linker_for(pool[0]))
        self._linker, self._module, self._description = linker, module, description

    def _linker_for(self, wasm_engine: wasmtime.Engine) -> wasmtime.Linker:
        """A linker of `wasm_engine` with the host functions the module imports."""
        linker = wasmtime.Linker(wasm_engine)
        timed = self.probes.timed          # host-call probes: one flag test while off
        for name, (params, results) in abi.IMPORTS.items():
            kind = unchecked.NATIVE.get(name) if self._native is not None else None
            fn = getattr(self, "_host_" + name)
            if name in CUT_OFF_AT:
                fn = self._cut_off_first(fn)
            unchecked.define(linker, abi.MODULE, name, params, results,
                             timed(f"{abi.MODULE}.{name}", _naming(abi.MODULE, name, fn)),
                             wasm_engine, native=kind and (kind, self._native))
        for name in self._wasi_names:
            # per_call: each call has a WASI state of its own, so look it up at each call
            fn = self._wasi_entry(name) if self.per_call else self.wasi.function(name)
            unchecked.define(linker, abi.WASI_MODULE, name, *abi.WASI_IMPORTS[name],
                             timed(f"wasi.{name}", _naming(abi.WASI_MODULE, name, fn)),
                             wasm_engine)
        if self.probes.sites is not None:  # the hooks of a rewritten module (instrument.py)
            for name, (params, results) in probing.HOOKS.items():
                unchecked.define(linker, probing.PROBE_MODULE, name, params, results,
                                 getattr(self.probes, name), wasm_engine)
        return linker

    def instantiate(self):
        """The module's first instance: its start function runs here (guest code, so
        `run` calls this only once the process is confined)."""
        path = self.spec.module
        linker, module, description = self._linker, self._module, self._description
        export_types = description.exports
        try:
            self.instance = linker.instantiate(self.store, module)
            self.instance_pre = linker.instantiate_pre(module) if self.per_call else None
            if self._pool is not None:
                self._pool.pre = self._pool.linker.instantiate_pre(self._pool.module)
        except (wasmtime.WasmtimeError, wasmtime.Trap, GuestFault, wasi.WasiExit) as e:
            why = _why_not(e, self._planned_regions(description), self.probes.sites)
            raise EngineError(f"cannot instantiate {path}: {why}") from None
        exports = self.instance.exports(self.store)
        memory = exports.get(abi.EXPORT_MEMORY)
        if memory is not None and not isinstance(memory, wasmtime.Memory):
            raise EngineError(f"module {path} exports {abi.EXPORT_MEMORY}, but not as a "
                              f"memory")
        self.memory = memory
        self._stack_pointer = _stack_pointer(exports, self.store)
        #: per_call: what each call's instance looks up of its exports (_start_instance)
        self._sp_exported = self._stack_pointer is not None
        self._instance_exports = tuple(n.encode() for n in (
            abi.EXPORT_MEMORY, abi.EXPORT_DISPATCH, abi.EXPORT_INITIALIZE,
            abi.EXPORT_STACK_POINTER, *self.probes.exports()))
        self.probes.attach(exports, self.store)
        if self.spec.protect is not None:
            self._protect(description.protect)
        typed = lambda name, sig: self._typed(exports, name, sig, export_types)  # noqa: E731
        self.start_func = typed(abi.EXPORT_START, ((), ()))
        self.initialize = typed(abi.EXPORT_INITIALIZE, ((), ()))
        self.dispatch = typed(abi.EXPORT_DISPATCH, abi.DISPATCH_TYPE)
        self._dispatch_type = self.dispatch
        if self._native is not None and self.memory is not None and self.regions is None \
                and not self.per_call:
            # One memory for good: protected memory (its checks are Python's) and a
            # new instance per call (a memory each) stay with the Python functions.
            self._native.memory = self.memory._memory
            if wire._native is not None and isinstance(self.sock, socket.socket):
                # wsuper.call too, when plain (_fastcall.c, native_call_out)
                self._native.call_out = (self.sock.fileno(), _Import, wire._native.copy,
                                         self._call_continued)
        if self.exports_main and self.dispatch is None:
            raise EngineError(f"module {path} must export function {abi.EXPORT_DISPATCH} "
                              f"to serve an interface")
        self._instantiated = True

    def start_deadlines(self):
        """In an engine process (run): guest code past its call's deadline is
        stopped in wasm too (_deadlines), in the stores of both engines."""
        self._deadlines = unchecked.start_deadlines(
            self.wasm_engine, self._pool.engine if self._pool is not None else None)

    def _planned_regions(self, description) -> protect.Regions | None:
        """The regions the module's checks were compiled against, to explain a trap
        in its start function (which runs before `_protect`); None if there are
        none or they cannot be read (`_protect` says why, when it runs)."""
        if self.spec.protect is None or description is None or description.protect is None:
            return None
        try:
            return protect.regions_of(protect.Layout.from_json(description.protect))
        except Exception:  # noqa: BLE001 - an explanation is a nicety; _protect decides
            return None

    def _protect(self, layout):
        """Memory protection (compartments/protect.py): the regions resolved where the
        module was compiled for this compartment, enforced on this first instance."""
        path = self.spec.module
        try:
            if layout is None:          # not compiled for protection: refuse, never guess
                raise protect.ProtectError("protect", "the module was not prepared for it")
            self.regions = protect.regions_of(protect.Layout.from_json(layout))
            if self.regions is not None:
                self._memory_base = protect.enforce(self.regions, self.store, self.memory)
        except protect.ProtectError as e:
            raise EngineError(f"module {path}: {e.key}: {e}") from None
        except (ValueError, OSError) as e:
            raise EngineError(f"cannot protect the memory of {path}: {e}") from None

    def _new_store(self, fuel: int, wasm_engine: wasmtime.Engine | None = None) -> wasmtime.Store:
        # memory_size bounds each linear memory: the module's one memory, and the
        # probe memory of a rewritten module (instrument.py), and no more; its code
        # runs until a deadline is set (wasm.new_store)
        return unchecked.new_store(wasm_engine or self.wasm_engine, fuel, wasm.NO_DEADLINE,
                                   memory_size=self.limits.memory,
                                   table_elements=self.limits.table_elements,
                                   memories=MEMORIES + (self.probes.sites is not None))

    def _new_wasi(self):
        if not self._wasi_names:
            return None
        return wasi.Wasi(self, self.name, max_io=min(wasi.MAX_IO, self.max_message_bytes // 2),
                         max_answer=self.max_message_bytes)

    def _wasi_entry(self, name):
        """A WASI function that runs in whichever WASI state is current."""
        def call(*args):
            fn = self._wasi_fns.get(name)
            if fn is None:
                fn = self._wasi_fns[name] = self.wasi.function(name)
            return fn(*args)
        return call

    def _typed(self, exports, name, sig, export_types):
        func = exports.get(name)
        if func is None:
            return None
        if not isinstance(func, wasmtime.Func):
            raise EngineError(f"module {self.spec.module} exports {name}, but not as a function")
        try:
            return TypedFunc(self.store, func, *sig, actual=export_types.get(name))
        except TypeError as e:
            raise EngineError(f"module {self.spec.module} exports {name} with the wrong "
                              f"type: {e}") from None

    def confine(self, user=None, parent: int = 0) -> list[str]:
        """Confine this process for good (see confine.py); returns what was unavailable.
        `user`: (uid, gid) to run as if this process runs as root; `parent`: die with it."""
        keep = [self.sock.fileno()]
        for fd in confine.proc_listdir("fd"):     # wasmtime's memory images stay open
            try:
                if confine.proc_readlink(f"fd/{fd}").startswith("/memfd:"):
                    keep.append(int(fd))
            except OSError:
                pass
        vm = int(confine.proc_read("statm").split()[0]) * resource.getpagesize()  # VmSize
        if self._pool is not None:
            # the pool's slot is the memory of a call's instance, which the room
            # below held before: an escaped engine that unmaps it may map no more
            vm -= self._pool.reserved
        # room for the guest's memory to grow to its limit, and for our own heap
        return confine.confine(keep, vm + 2 * self.limits.memory + (512 << 20), user=user,
                               parent=parent)

    # ------------------------------------------------------------ guest memory

    def _span(self, ptr, length, write=False) -> int:
        """Address of guest memory [ptr, ptr+length), after checking it is inside,
        and that memory protection lets the host read it (write: write it)."""
        if self.memory is None:
            raise GuestFault(f"no memory to use: the module exports none named "
                             f"'{abi.EXPORT_MEMORY}', or its start function is running")
        base, size = unchecked.memory_span(self.memory)
        # wasmtime hands high i32 pointers to the host as negative ints.
        if ptr < 0 or length < 0 or ptr + length > size:
            raise GuestFault(f"guest passed out-of-range memory [{ptr}, {ptr}+{length}) "
                             f"(memory is {size} bytes)")
        if self.regions is not None:
            why = self.regions.check(ptr, length, write) if base == self._memory_base else \
                "its memory moved, and lost its protection"
            if why:
                raise protect.Fault(f"a host call was given protected memory: {why}")
        if self._running:
            before = self._copied
            self._copied = before + length
            if self._copied > FREE_COPY:
                self._charge(before, self._copied)
        return base + ptr

    def _charge(self, before: int, after: int):
        """The guest code running now pays for the bytes its host call has copied
        for it, `after` of them now, `before` before this copy (FREE_COPY): one unit
        of fuel per 8 bytes past the first FREE_COPY of the host call (all of them,
        4097 bytes cost 512 units where 4096 cost none, until an outside review,
        reviewer 196; the docs said past), however many copies it takes.  Fuel it
        does not have is spent to 0: this copy is done, and the code traps out of
        fuel at its next instruction (the call fails overloaded, as for any fuel
        spent)."""
        cost = ((after - FREE_COPY) >> 3) - ((max(before, FREE_COPY) - FREE_COPY) >> 3)
        if cost <= 0:
            return
        store = self._running[-1]
        left = unchecked.refuel(store, -1)
        unchecked.refuel(store, max(0, left - cost))

    def _read(self, ptr, length) -> bytes:
        if length == 0:                  # touches nothing: no need to ask where memory is
            return b""
        return ctypes.string_at(self._span(ptr, length), length)

    def _write(self, ptr, data: bytes):
        if data:
            ctypes.memmove(self._span(ptr, len(data), True), data, len(data))

    # the WASI layer's view of guest memory
    read, write = _read, _write

    def _read_handles(self, ptr, count) -> list[int]:
        """The handles a guest passes; more than one message carries is E_TOOMANY
        for that call (_GuestError), as params past message_size are E_MESSAGE: it
        trapped the guest (a program's _start ended for it), where a peer's such
        call fails alone.  A negative count is a broken argument: a trap."""
        if count < 0:
            raise GuestFault(f"capability count {count} is negative")
        if count > abi.MAX_CAPS:
            raise _GuestError(abi.E_TOOMANY, f"{count} capabilities in one message (limit "
                                             f"{abi.MAX_CAPS})")
        raw = self._read(ptr, 4 * count)
        return list(struct.unpack(f"<{count}i", raw))

    def _write_handles(self, ptr, handles):
        self._write(ptr, struct.pack(f"<{len(handles)}i", *handles))

    # ------------------------------------------------------------ host functions

    def _host_lookup(self, ptr, length):
        name = self._read(ptr, length).decode("utf-8", "replace")
        handle, entry = self.grants.get(name, (abi.E_NOTFOUND, None))
        # released, the number may name something else since (an object, a reply's
        # capability): the grant is gone from this table, never another in its place
        if entry is None or self.handles.get(handle) is not entry:
            return abi.E_NOTFOUND
        return handle

    def _host_call(self, handle, interface_id, method_id, p_ptr, p_len, c_ptr, c_count,
                   out_ptr):
        self.host_call_begins()
        self._span(out_ptr, 8, True)
        self._drop_unread_reply()
        raw = self._read(p_ptr, p_len)
        try:
            handles = self._read_handles(c_ptr, c_count)
        except _GuestError as e:
            return self._set_error(out_ptr, e.code, str(e))
        entry = self.handles.get(handle)
        if entry is None:
            return self._set_error(out_ptr, abi.E_BADHANDLE, _not_in_clist(handle))
        try:
            content = self._guest_content(raw)
            caps = self._caps_from_handles(handles)
        except _GuestError as e:
            return self._set_error(out_ptr, e.code, str(e))
        if isinstance(entry, LocalObject):
            return self._set_error(out_ptr, abi.E_UNIMPLEMENTED,
                                   "calling your own object through a handle is not supported")
        if not 0 <= method_id <= 0xFFFF:    # Cap'n Proto's are UInt16: never another one
            return self._set_error(out_ptr, abi.E_UNIMPLEMENTED,
                                   f"method id {method_id} is out of range 0..65535")
        try:
            payload = self.invoke(entry.import_id, interface_id & ((1 << 64) - 1),
                                  method_id, content, caps)
        except wasi.HostCallFailed as e:
            self._note_refusal(interface_id, method_id, e.reason)
            return self._set_error(out_ptr, abi.error_code(e.type, e.reason), e.reason)
        return self._reply_to_guest(payload, out_ptr)

    def _note_refusal(self, interface_id: int | None, method_id: int | None, reason: str):
        """A call out of the call being served failed: if the supervisor refused its
        answer for a limit (`_refusal`), the call remembers where and why, for its
        caller to hear should the guest fail it without saying why."""
        frame = self.frames[-1] if self.frames else None
        if frame is None:
            return
        refusal = _refusal(reason)
        if refusal is not None:
            where = "" if interface_id is None else \
                f" to method {method_id} of interface {interface_id & ((1 << 64) - 1):#x}"
            frame.refused = f"its call out{where} failed: {refusal}"

    def _call_continued(self, qid: int, data: bytes, t0: int, out_ptr: int,
                        copied: int, interface_id: int | None = None,
                        method_id: int | None = None) -> int:
        """The rest of a wsuper.call that the native path began (_fastcall.c,
        native_call_out): it sent question `qid` at `t0` (perf_counter_ns) and read
        `data`, which was not that question's plain answer alone.  From here on the
        call is Python's, as if _host_call had made it: the question goes into the
        protocol core's tables, `data` is what its first read brought; `copied`:
        the bytes of guest memory it has paid for (_span) so far; the method it
        called, for a refusal of its answer (_note_refusal)."""
        self._copied = copied
        self.conn.adopt_question(qid)
        try:
            payload = self._await_answer(qid, t0, data)
        except wasi.HostCallFailed as e:
            self._note_refusal(interface_id, method_id, e.reason)
            return self._set_error(out_ptr, abi.error_code(e.type, e.reason), e.reason)
        return self._reply_to_guest(payload, out_ptr)

    def _reply_to_guest(self, payload: protocol.Payload, out_ptr: int) -> int:
        """A call out's answer becomes the reply its guest reads (reply_read)."""
        try:
            data = self._for_guest(payload.content)
        except _CallError as e:
            self._let_go(payload.caps)
            return self._set_error(out_ptr, abi.E_MESSAGE, e.reason)
        try:
            new = self._handles_for(payload.caps)
        except _GuestError as e:
            return self._set_error(out_ptr, e.code, str(e))
        self._new_reply(data, new)
        self._write(out_ptr, len(data).to_bytes(4, "little") + len(new).to_bytes(4, "little"))
        return abi.OK

    def _new_reply(self, data: bytes, handles: list[int]):
        """The reply `reply_read` copies from now on, an answer's or a failure's.
        A call served meanwhile (nested) may have left a reply its guest never
        read: its handles go now, whatever this reply is (a failure's too: the
        guest reads that one, and would never learn the handles it replaces)."""
        if self._reply_entries:
            self._drop_unread_reply()
        self.reply = (data, handles)
        if handles:
            self._reply_entries = [(h, self.handles.get(h)) for h in handles if h]

    def invoke(self, import_id, interface_id, method_id, content, caps=()) -> protocol.Payload:
        """Call a capability we import and wait for its answer (serving calls meanwhile)."""
        t0 = time.perf_counter_ns()
        try:
            qid, data = self.conn.send_call(import_id, interface_id, method_id, content,
                                            list(caps))
        except KeyError:
            raise wasi.HostCallFailed("disconnected", "that capability was released") from None
        self._send(data)
        return self._await_answer(qid, t0)

    def _await_answer(self, qid: int, t0: int, first: bytes | None = None) -> protocol.Payload:
        """The answer to question `qid`, sent (or queued) at `t0`, serving what comes
        meanwhile; `first`: what the first read after it brought, read already."""
        slot = self._waiting[qid] = []
        # the call out of the guest code running now (the innermost entry of
        # _until): finished at once if that code's call is cancelled meanwhile
        at = len(self._until) - 1
        asked = [qid, False]
        if at >= 0:
            self._asking[at] = asked
        try:
            ret = self._wait_for(slot, first)
        finally:
            if at >= 0 and self._asking.get(at) is asked:
                del self._asking[at]
        if self.call_times is not None:
            self.call_times.append(time.perf_counter_ns() - t0)
        if ret.finish_needed and not asked[1]:
            self._send(self.conn.send_finish(qid))
        self._flush()       # answers to calls served while it waited: the guest runs on
        if ret.payload is None:
            raise wasi.HostCallFailed(ret.error_type, ret.error)
        return ret.payload

    def adopt(self, cap) -> int | None:
        """Keep a capability received outside the handle table (the WASI layer's files)."""
        if not isinstance(cap, protocol.Imported):
            return None
        self._take_ref(cap.import_id)
        return cap.import_id

    def hold(self, import_id: int) -> int:
        """One more reference to an import we already hold (the WASI layer's own)."""
        self._import_refs[import_id] = self._import_refs.get(import_id, 0) + 1
        return import_id

    def can_hold(self, n: int) -> bool:
        """Whether `n` more capabilities fit this compartment's c-list (`handles`), as
        the router counts it (what the supervisor has given it and it still holds):
        the WASI layer asks before an open that creates or truncates, which the
        router could refuse to hand over only after it had run."""
        return len(self.conn.imports) + n <= self.limits.handles

    def drop(self, import_id: int | None):
        if import_id is not None:
            self._unref_import(import_id)

    def _drop_unread_reply(self):
        """A new call: the last reply's handles are released if it was never read
        (the guest was told to read it before its next call, and cannot know them
        otherwise).  A callee, or a client hosting a callback, cannot fill the
        table with capabilities in replies the guest ignores."""
        entries, self._reply_entries = self._reply_entries, []
        if self.reply is None:
            return                                  # read: the handles are the guest's
        # no longer pending either: its handle numbers may name something else soon
        # (a call that traps after this leaves no reply for a later reply_read)
        self.reply = None
        for h, entry in entries:
            if entry is not None and self.handles.get(h) is entry:
                self.handles.remove(h)
                if isinstance(entry, _Import):
                    self._unref_import(entry.import_id)

    def _set_error(self, out_ptr, code, text):
        data = (text or "").encode()
        self._new_reply(data, [])
        self._write(out_ptr, len(data).to_bytes(4, "little") + bytes(4))
        return code

    def _host_reply_read(self, buf_ptr, caps_ptr):
        if self.reply is None:
            return abi.E_STATE
        data, handles = self.reply
        self._write(buf_ptr, data)
        self._write_handles(caps_ptr, handles)
        self.reply = None
        return abi.OK

    def _host_release(self, handle):
        entry = self.handles.get(handle)
        if entry is None:
            return abi.E_BADHANDLE
        self._unborrow(handle)
        self.handles.remove(handle)
        if isinstance(entry, _Import):
            self._unref_import(entry.import_id)
        return abi.OK

    def _host_keep(self, handle):
        """A handle from the params of a call being served stays after the call."""
        if self.handles.get(handle) is None:
            return abi.E_BADHANDLE
        self._unborrow(handle)
        return abi.OK

    def _unborrow(self, handle):
        """`handle` is no longer a call's to release (kept, or released already)."""
        for frame in self.frames:
            if frame is not None and frame.borrowed:
                frame.borrowed.discard(handle)

    def _host_object(self, tag):
        if tag == 0 and self.exports_main and not self._main_served:
            # the main object is the proxy's, which has it only with start's answer:
            # handed on before (a start function, _initialize), calls on it would
            # reach it unchecked (the interface, a sealed one's: Router._deliver)
            return abi.E_STATE
        try:
            return self.handles.add(self._local(tag))
        except OverflowError:
            return abi.E_TOOMANY

    def _host_params_read(self, buf_ptr, caps_ptr):
        frame = self.frames[-1] if self.frames else None
        if frame is None:                  # not inside wsuper_dispatch
            return abi.E_STATE
        self._write(buf_ptr, frame.params)
        self._write_handles(caps_ptr, frame.handles)
        return abi.OK

    def _host_results_set(self, ptr, length, c_ptr, c_count):
        frame = self.frames[-1] if self.frames else None
        if frame is None or frame.results is not None:
            return abi.E_STATE
        raw = self._read(ptr, length)
        try:
            handles = self._read_handles(c_ptr, c_count)
            frame.results = (self._guest_content(raw), self._caps_from_handles(handles))
        except _GuestError as e:
            return e.code
        # the answer names these imports: released through their handles before it
        # goes (the guest may release them now), the supervisor would read it as a
        # reference to an import we gave up, and end this engine's connection
        frame.held = [self.hold(cap.import_id) for cap in frame.results[1]
                      if isinstance(cap, RemoteRef)]
        return abi.OK

    def _host_fail(self, ptr, length):
        frame = self.frames[-1] if self.frames else None
        if frame is None:
            return abi.E_STATE
        frame.error = self._read(ptr, length).decode("utf-8", "replace")
        return abi.OK

    # ------------------------------------------------------------ translation

    def _guest_content(self, raw: bytes) -> Content:
        if not raw:
            return protocol.EMPTY
        if len(raw) > self.max_message_bytes:
            raise _GuestError(abi.E_MESSAGE, f"message of {len(raw)} bytes exceeds the limit")
        try:
            segs = wire.unframe(raw, max_words=self.max_message_bytes // 8)
            root = wire.resolve(segs, (0, 0))
        except wire.WireError as e:
            raise _GuestError(abi.E_MESSAGE, f"not a Cap'n Proto message: {e}") from None
        if root is not None and root[0] == wire.OTHER and root[3] & 0xFFFFFFFC:
            # what the supervisor's protocol core refuses in any payload (and ends
            # the connection for): sent, it cut this engine off, every call in it
            raise _GuestError(abi.E_MESSAGE, "not a Cap'n Proto message: its root is an "
                              "'other' pointer that is not a capability")
        return Content.standalone(segs)

    def _for_guest(self, content: Content) -> bytes:
        """Content as the guest receives it: one segment, root struct at word 1."""
        try:
            return content.single_segment_copy(self.max_message_bytes // 8)
        except wire.WireError as e:
            raise _CallError("failed", f"{self.name}: message rejected: {e}") from None

    def _caps_from_handles(self, handles):
        caps = []
        for h in handles:
            if h == 0:
                caps.append(None)
                continue
            entry = self.handles.get(h)
            if entry is None:
                raise _GuestError(abi.E_BADHANDLE, _not_in_clist(h))
            caps.append(RemoteRef(entry.import_id) if isinstance(entry, _Import) else entry)
        return caps

    def _handles_for(self, caps) -> list[int]:
        """New handles for capabilities received; all or none (E_TOOMANY)."""
        added = []
        try:
            for cap in caps:
                added.append(self._handle_for(cap))
        except OverflowError:
            for h in added:
                if h:
                    entry = self.handles.remove(h)
                    if isinstance(entry, _Import):
                        self._unref_import(entry.import_id)
            self._let_go(caps[len(added):])
            raise _GuestError(abi.E_TOOMANY, f"compartment {self.name} holds too many "
                              f"handles (limit {self.handles.limit}); release some") from None
        return added

    def _handle_for(self, cap) -> int:
        if cap is None:
            return 0
        if isinstance(cap, protocol.Imported):
            h = self.handles.add(_Import(cap.import_id))
            self._take_ref(cap.import_id)
            return h
        if isinstance(cap, protocol.Exported) and isinstance(cap.obj, LocalObject):
            return self.handles.add(cap.obj)
        return 0  # a promise or our control object: never handed to the guest

    def _unref_import(self, import_id):
        n = self._import_refs.get(import_id, 0) - 1
        if n > 0:
            self._import_refs[import_id] = n
            return
        self._import_refs.pop(import_id, None)
        held = self.conn.imports.get(import_id, 0) - self._unread_refs.get(import_id, 0)
        if held > 0:
            # only ours: a message read but not yet dispatched may bring it again
            self._send(self.conn.send_release(import_id, held))

    def _local(self, tag) -> LocalObject:
        obj = self.objects.get(tag)
        if obj is None:
            obj = self.objects[tag] = LocalObject(tag)
        return obj

    # ------------------------------------------------------------ the loop

    def _send(self, data: bytes):
        """Queue a message; it goes out with the others before we next block."""
        if not self._outgoing:
            self._held_since = time.perf_counter_ns()
        self._outgoing.append(data)
        self._outgoing_bytes += len(data)

    def before_blocking(self, seconds: float):
        """A host function is about to wait `seconds` without using fuel (a WASI
        sleep): the answers waiting to go out go now.  In a call, a wait that would
        end past the call's call_time fails the call at once (_cut_off)."""
        self._cut_off(seconds, f"asked to sleep {seconds:g} s in a call, past")
        self._flush()

    def host_call_begins(self):
        """A host call of guest code that may call out (wsuper.call, every WASI
        function but proc_exit), before it does anything: one of a call that has
        run past its call_time fails the call (_cut_off).  Its copies of guest
        memory begin here too: FREE_COPY bytes of them free (_span)."""
        self._cut_off(0, "made a host call in a call that has run past")
        self._copied = 0

    def _cut_off_first(self, fn):
        """`fn`, a host function that only computes (CUT_OFF_AT), which fails a
        call that has run past its call_time before it does anything, as
        host_call_begins does for one that may call out (the native path leaves
        such a call to it: _fastcall.c past_deadline)."""
        def host(*args):
            self.host_call_begins()
            return fn(*args)
        return host

    def _cut_off(self, seconds: float, what: str):
        """Fail the call whose guest code runs now (a _CallError out of the host
        function, which unwinds it as a trap does: the compartment serves on) if
        what it is about to do, waiting `seconds` without fuel, would end past its
        call_time.  Fuel bounds the instructions a call runs, not its waits: a
        sleep of 2^63 ns held its engine for good (its status 'ready', every later
        call of every caller failing 'did not answer within'), and a loop of calls
        out, a few instructions each, ran for hours after its caller had been told
        it failed, spending the supervisor's CPU and its callee's.  Its caller gets
        no answer from it anyway.  Code of no call (_start) waits as it asks:
        run_time bounds it."""
        until = self._until[-1] if self._until else None
        if until == CANCELLED:
            raise _CallError("failed", (
                f"compartment {self.name} was sent Finish for this call while it ran "
                f"(its caller cancelled it or went, a grant on its way was revoked, "
                f"or it ran past its call_time): it makes no more host calls"))
        if until is not None and time.monotonic() + seconds > until:
            raise _CallError("overloaded", (
                f"compartment {self.name} {what} the {self.limits.call_time:g} s it "
                f"may take (limit call_time)"))

    def _flush(self):
        if self._outgoing:
            data = b"".join(self._outgoing)
            self._outgoing.clear()
            self._outgoing_bytes = 0
            self._held_cpu = None
            self.sock.sendall(data)

    def answer_bootstrap(self):
        """Answer the supervisor's bootstrap now if it has come, before the module is
        instantiated: no guest code has run, so the answer cannot be the guest's, and
        the supervisor's Engine.start is on its way while this process confines itself
        and runs the start function (start is answered only after that: _control).
        What came with the bootstrap waits for serve(), in order."""
        if self._early:
            return
        try:
            data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        if not data:
            return                              # gone: serve() sees it too
        events = self._received(data)
        for i, ev in enumerate(events):
            if not isinstance(ev, protocol.BootstrapRequested):
                self._early = events[i:]
                break
            self._on_event(ev)
        self._flush()

    def serve(self):
        """Serve until the supervisor closes the connection."""
        early, self._early = self._early, []
        self._backlog.extend((0, ev) for ev in early)
        while self._pump():
            pass

    def _wait_for(self, slot: list, first: bytes | None = None) -> protocol.ReturnReceived:
        """Serve what comes until `slot` has the answer a guest waits for.

        Events read while it waits are handled here, one at a time, so that the
        guest runs on as soon as its answer is in.  Events read before it began
        (the backlog of an outer read: calls that came with this one, or with
        run()) are taken here only by the outermost wait of guest code (run()'s
        program, or a call served by the top-level loop), or once this wait has
        lasted BACKLOG_GRACE with nothing to read (its answer may depend on one of
        them); the outermost wait also serves what came up to its answer before the
        guest runs on.  Taken by every wait as they came, a read of n calls whose guests
        each made a host call nested n deep: each wait took the next call before
        its own question had even gone out (sent only before a read blocks), and
        from the 33rd on calls failed 'nested deeper than 32 (a call cycle?)'.

        `first`: the bytes of the first read, done already (by the native call out,
        which begins only with nothing kept back)."""
        if first is not None or not self._backlog:
            # the usual case: nothing kept back, and the next read brings the answer
            # alone; what the general loop below would do, without its rounds
            if first is None:
                self._flush()
                data = self.sock.recv(1 << 16)
            else:
                data = first
            if not data:
                raise SystemExit(EXIT_OK)
            events = self._received_seq(data)
            if slot and len(events) == 1:
                self._on_event(events[0])
                return slot[0]
            seq = self._read_seq
            self._backlog.extend([(seq, ev) for ev in events])
            since = seq
        else:
            since = self._read_seq + 1
        began = time.monotonic()
        while not slot:
            if not self._pump(since, began):
                raise SystemExit(EXIT_OK)
        if len(self._running) <= 1 and self._backlog:
            # the outermost wait serves what came up to its answer before the guest
            # runs on (a program may not wait again for long; what comes later, a
            # steady stream, does not hold it back); a deeper one leaves it to the
            # waits it is in
            until = self._read_seq
            while self._take_new(since, until):
                pass
        return slot[0]

    def _take_new(self, since: int, until: int | None = None) -> bool:
        """Handle the first event of the backlog read from read `since` on (up to
        read `until`); False if there is none."""
        backlog = self._backlog
        for i, (seq, ev) in enumerate(backlog):
            if seq >= since:
                if until is not None and seq > until:
                    return False
                del backlog[i]
                self._on_event(ev)
                return True
        return False

    def _pump(self, since: int | None = None, began: float = 0.0) -> bool:
        """Handle what has come (the events not handled yet first, else what the
        socket brings).  Each event leaves the backlog before it is handled, so that
        one whose handling waits (run(): the whole program; a call whose guest makes
        a host call) does not hold back those that came with it: a call that came
        in the same read as run() used to wait until the program ended (its caller
        timed out), although the engine served calls all the while.

        `since` (a wait, _wait_for): handle at most one event, preferring those read
        since the wait began (read sequence >= `since`), and read the socket rather
        than take an older one, unless the wait may (see _wait_for)."""
        backlog = self._backlog
        if since is not None:
            return self._pump_waiting(since, began)
        if self._deferred_run is not None:
            self._run_deferred()
            return True
        if not backlog:
            self._flush()
            data = self.sock.recv(1 << 16)
            if not data:
                return False
            if not (self._plain_serving and self._serve_plain(data)):
                self._take_events(data)         # plain_calls read it already: not that
        # _look_ahead may add to the backlog; a run() deferred by a call of it starts
        # as soon as that call has returned, before what came after it
        while backlog or self._deferred_run is not None:
            if self._deferred_run is not None:
                self._run_deferred()
                continue
            _seq, ev = backlog.popleft()
            if type(ev) is protocol.CallReceived:
                if time.perf_counter_ns() - self._read_at > LOOK_AHEAD_NS:
                    self._look_ahead()
                if self._plain_serving and self._plain(ev):
                    self._serve_call(ev.answer_id, ev.target, ev.interface_id, ev.method_id,
                                     ev.payload.content)
                    continue
            self._on_event(ev)
        return True

    def _plain(self, ev: protocol.CallReceived) -> bool:
        """Whether the top-level loop may serve `ev` by _serve_call: a call to a
        guest object, passing no capabilities, its results for the caller, not
        finished, and the engine between calls (nothing running or waiting,
        nothing deferred, a dispatch, not exited, not per_call): _on_call's path
        for it is _serve_call's."""
        if type(ev.target) is not LocalObject or ev.payload.caps or ev.elsewhere \
                or ev.over is not None or ev.unsupported is not None \
                or ev.overloaded is not None \
                or not self._between_calls():
            return False
        a = self.conn.answers.get(ev.answer_id)
        return a is not None and not a.finished

    def _serve_plain(self, data: bytes) -> bool:
        """A read of plain calls to guest objects, at the top level with nothing
        kept back or waiting (a server's usual read: issue 14), taken in as _take
        takes it without framing or events: the protocol core reads the calls
        (Connection.plain_calls, the native decoder's reading) and opens their
        answers, all of them first, as receive() does.  One call alone is served
        at once without the general path's layers (_serve_call), unless it was
        read LOOK_AHEAD_NS ago by then (the loop looks ahead first); several go onto
        the backlog as the events _take would have put there (while a call waits
        in a call out, the outermost wait serves those behind it: they must be on
        the backlog), and the loop serves each by _serve_call too while it is
        plain (_plain).  With anything kept back or waiting, they go onto the
        backlog as _take puts them there.  False: not such a read, nothing changed
        (the general decoding takes it: _take_events)."""
        calls = self._plain_calls(data)
        if calls is None:
            return False
        if len(calls) == 1 and self._instantiated and not self._backlog \
                and self._between_calls() \
                and time.perf_counter_ns() - self._read_at <= LOOK_AHEAD_NS:
            self._serve_call(*calls[0])
        else:
            # the loop serves them, by _serve_call while they stay plain (_plain); a
            # call read LOOK_AHEAD_NS ago (the engine was preempted) after it has
            # looked ahead (_look_ahead), as it would: a Finish come meanwhile
            # cancels it (served at once, it ran for nobody)
            self._put_back_calls(calls)
        return True

    def _plain_calls(self, data: bytes) -> list | None:
        """The plain calls to guest objects that one read is (Connection.plain_calls:
        read, counted and their answers opened as receive() would), the read counted
        as _received_seq counts it; None: not such a read, nothing changed."""
        read_at = time.perf_counter_ns()                # _received_seq's, before reading
        try:
            calls = self.conn.plain_calls(data, LocalObject)
        except Exception as e:  # noqa: BLE001 - as _received: out of memory, or a bug
            self._receive_failed(e)
        if calls is not None:
            self._read_at = read_at
            self._read_seq += 1
        return calls

    def _put_back_calls(self, calls: list):
        """Calls _plain_calls read, onto the end of the backlog as the events _take
        would have made of them (without a generator's frame resumed for each: zip
        and starmap)."""
        self._backlog.extend(zip(itertools.repeat(self._read_seq),
                                 itertools.starmap(_call_received, calls)))

    def _between_calls(self) -> bool:
        """No guest code runs or waits, no run() is deferred, and the compartment
        serves, from one instance (_serve_plain, _plain)."""
        return not (self.frames or self._until or self._running
                    or self._deferred_run is not None or self._exited is not None
                    or self.dispatch is None or self.per_call)

    def _serve_call(self, answer_id: int, target: LocalObject, interface_id: int,
                    method_id: int, content: Content):
        """A plain call, the engine between calls (a read's one call, _serve_plain;
        one of a batch on the backlog, _plain): served as _on_event, _on_call,
        _answer_call, _dispatch and _dispatch_until serve it, every branch they
        would take for it taken in their order, and every other one known not to
        be (no capabilities, not the control object, not per_call, not finished,
        nothing nested, a dispatch, not exited); _may_hold, _guest, _judge,
        _outcome and _answer_failed are theirs.  Not _on_call's None on _until
        first: it hides the deadline of a call that waits beneath from what is
        done for this one outside its guest code, and at the top level, where
        this runs, none waits (the indexes into _until, _serving_at's and
        _asking's, are its length as they are there).  The references its
        results held go after the answer is queued, as _dispatch_until's
        `after` has them go, when it holds any."""
        self._serving += 1                              # _on_call
        frame = None
        try:
            try:                                        # _answer_call -> _dispatch_until
                until = time.monotonic() + self.limits.call_time
                frame = _Frame(self._for_guest(content), [], None)
                self.frames.append(frame)
                method = (target.tag, interface_id, method_id)
                hold = self._may_hold(method)
                self._fuel_used = 0
                t0 = time.perf_counter_ns()
                at = self._serving_at[answer_id] = len(self._until)
                self._until.append(until)
                try:
                    status = self._guest(self.dispatch, target.tag, _signed64(interface_id),
                                         method_id, len(frame.params), 0,
                                         fuel=self.limits.fuel_per_call, flush=not hold)
                finally:
                    if self._serving_at.get(answer_id) == at:
                        del self._serving_at[answer_id]
                    self._until.pop()
                    self.frames.pop()
                    self._judge(method, hold, time.perf_counter_ns() - t0)
                content, caps = self._outcome(status, frame)
            except (Exception, wasi.WasiExit) as e:  # noqa: BLE001 - each kind: _answer_failed
                self._answer_failed(answer_id, e)
            else:
                self._send(self.conn.send_return(answer_id, content, caps, no_finish=True))
            finally:
                if frame is not None and frame.held:
                    self._let_results_go(frame)
        finally:
            self._serving -= 1

    def _run_deferred(self):
        """The run() deferred while calls were dispatched (_answer_call), at the top
        level, where none is."""
        ev, self._deferred_run = self._deferred_run, None
        self._on_call(ev)

    def _pump_waiting(self, since: int, began: float) -> bool:
        backlog = self._backlog
        if backlog and self._take_new(since):   # read while this wait went on: handled now
            return True
        self._flush()                       # this wait's question goes out first
        if backlog:
            if len(self._running) <= 1:     # the outermost wait: it serves them
                _seq, ev = backlog.popleft()
                self._on_event(ev)
                return True
            # a wait within a wait: what comes, for BACKLOG_GRACE (no poll(2) in
            # the engine's system calls: reads that do not wait, and short sleeps)
            pause = 0.0001
            while time.monotonic() - began < BACKLOG_GRACE:
                try:
                    data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    time.sleep(pause)
                    pause = min(2 * pause, 0.01)
                    continue
                if not data:
                    return False
                self._take(data)
                return True
            if len(self.frames) < MAX_NESTING:
                _seq, ev = backlog.popleft()
                self._on_event(ev)
                return True
        data = self.sock.recv(1 << 16)
        if not data:
            return False
        self._take(data)
        return True

    def _take(self, data: bytes):
        """What one read brought, onto the end of the backlog with its sequence number.
        A read of plain calls alone (what a look ahead or a wait reads from a busy
        caller) is read as _serve_plain reads one, into the events the general
        decoding would have made (its events add nothing to count or hand over:
        no capabilities, no Finish, no Return)."""
        if self._plain_serving:
            calls = self._plain_calls(data)
            if calls is not None:
                self._put_back_calls(calls)
                return
        self._take_events(data)

    def _take_events(self, data: bytes):
        """_take by the general decoding: the events of the read, in order."""
        events = self._received_seq(data)
        seq = self._read_seq
        self._backlog.extend([(seq, ev) for ev in events])

    def _received_seq(self, data: bytes) -> list:
        """The events of one read, which is counted (_read_seq)."""
        self._read_at = time.perf_counter_ns()
        self._read_seq += 1
        return self._received(data)

    def _look_ahead(self):
        """Read what came while the guest ran, without waiting, onto the end of the
        backlog (in order): a Finish among it cancels a call of this batch that has
        not been dispatched (_on_call)."""
        for _ in range(LOOK_AHEAD_READS):
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not data:
                break                       # gone: the next blocking read says so
            self._take(data)
        self._read_at = time.perf_counter_ns()

    def _received(self, data: bytes) -> list:
        """The events `data` from the supervisor completes; bytes the protocol core
        refuses end the engine (_protocol_violation).  The capabilities they bring
        are counted as unread until a handle (or the WASI layer) takes them."""
        try:
            events = self.conn.receive(data)
        except Exception as e:  # noqa: BLE001 - ProtocolError, or bytes the core choked on
            self._receive_failed(e)
        for ev in events:
            payload = getattr(ev, "payload", None)
            if payload is not None and payload.caps:
                unread = self._unread_refs
                for cap in payload.caps:
                    if type(cap) is protocol.Imported:
                        unread[cap.import_id] = unread.get(cap.import_id, 0) + 1
            if type(ev) is protocol.FinishReceived:
                self._finish_read(ev.answer_id)
            elif type(ev) is protocol.ReturnReceived:
                # to the question's waiter now: by the time the event is handled, a
                # call served before it may have asked a new question with the same id
                slot = self._waiting.pop(ev.question_id, None)
                if slot is not None:
                    slot.append(ev)
                elif payload is not None:
                    self._let_go(payload.caps)      # nobody asked: nothing takes them
        return events

    def _receive_failed(self, e: Exception):
        """Taking in what the supervisor sent raised `e`: the engine ends, saying
        whether it ran out of memory (_out_of_memory) or the bytes broke the
        protocol (_protocol_violation)."""
        if isinstance(e, MemoryError) or isinstance(e.__context__, MemoryError):
            self._out_of_memory()
        self._protocol_violation(e)

    def _finish_read(self, answer_id: int):
        """The supervisor finished `answer_id` (a cancellation: the caller cancelled
        it, went, its grant was revoked, or it ran past call_time).  If that call's
        guest code is running, or waits in a call out, it is cut off at its next
        host call (CANCELLED), and the call out it waits for is finished now, so
        that its callee does not run it (or cuts it off in turn): acted on when
        read, not when the event's turn comes.  Before, a cancelled call ran on
        to its end, and every call it made meanwhile ran at its callees (and
        theirs) for nobody."""
        at = self._serving_at.get(answer_id)
        if at is None or at >= len(self._until):
            return
        self._until[at] = CANCELLED
        if self._deadlines and self._timed and self._timed[-1][1] == at:
            # its code runs now (in the host call that read this): stopped in wasm
            # too, where it goes on, not only at its next host call (code above it
            # gets this as it returns: _timed_leave)
            unchecked.deadline(self._timed[-1][0], CANCELLED)
        asked = self._asking.get(at)
        if asked is not None and not asked[1]:
            q = self.conn.questions.get(asked[0])
            if q is not None and not q.finished and not q.returned:
                asked[1] = True
                self._send(self.conn.send_finish(asked[0]))

    def _let_go(self, caps):
        """The capabilities a message brought that nothing takes: released."""
        for cap in caps:
            if type(cap) is protocol.Imported:
                self._take_ref(cap.import_id)
                self._unref_import(cap.import_id)

    def _take_ref(self, import_id: int):
        """A reference received in a message is ours now (a handle, the WASI layer)."""
        self._import_refs[import_id] = self._import_refs.get(import_id, 0) + 1
        n = self._unread_refs.get(import_id, 0)
        if n > 1:
            self._unread_refs[import_id] = n - 1
        elif n:
            del self._unread_refs[import_id]

    def _protocol_violation(self, e: Exception):
        """The supervisor broke the protocol: say so, tell it, and end (EXIT_PROTOCOL)."""
        reason = _first_line(e)
        print(f"wsuper engine {self.name}: protocol error from supervisor: {reason}",
              file=sys.stderr, flush=True)
        try:
            self._send(self.conn.send_abort(reason))
            self._flush()
        except Exception:  # noqa: BLE001 - it is going away anyway
            pass
        raise SystemExit(EXIT_PROTOCOL)

    def _out_of_memory(self):
        """The engine ran out of memory taking in what the supervisor sent (the protocol
        core calls it bad framing): its own bound (its address space), no fault of the
        supervisor's.  Said as that, it ends as a protocol error does (EXIT_PROTOCOL):
        it was said 'protocol error from supervisor: bad framing: MemoryError', and its
        callers were told it 'aborted the connection: bad framing'."""
        reason = (f"out of memory while receiving a message (the engine's memory is "
                  f"bounded by its address space, and {self.name} held too much)")
        print(f"wsuper engine {self.name}: {reason}", file=sys.stderr, flush=True)
        try:
            self._send(self.conn.send_abort(reason))
            self._flush()
        except Exception:  # noqa: BLE001 - it is going away anyway
            pass
        raise SystemExit(EXIT_PROTOCOL)

    def _on_event(self, ev):
        if isinstance(ev, protocol.CallReceived):
            self._on_call(ev)
            return
        try:
            if isinstance(ev, protocol.BootstrapRequested) and ev.overloaded is not None:
                self._send(self.conn.send_exception(ev.answer_id, ev.overloaded, "overloaded",
                                                    no_finish=True))
            elif isinstance(ev, protocol.BootstrapRequested):
                self._send(self.conn.send_return(ev.answer_id, Content.capability(0),
                                                 [self.control]))
            elif isinstance(ev, protocol.Unhandled):
                self._send(ev.reply)
            elif isinstance(ev, protocol.RefsReleased):
                self._send(ev.data)
            elif isinstance(ev, protocol.AbortReceived):
                raise SystemExit(EXIT_OK)
            # FinishReceived, ExportReleased: nothing to do (the guest is not told);
            # ReturnReceived went to its question's waiter when it was read (_received).
        except Exception as e:  # noqa: BLE001 - an event we cannot act on is a violation
            self._protocol_violation(e)

    def _on_call(self, ev: protocol.CallReceived):
        """Answer one incoming call.  Whatever goes wrong fails this call only.
        What the engine does for it outside guest code (a per_call instance's
        output lines at its end, a program's once it ended) is bounded by no call's
        deadline, though it may be served on top of guest code of a call that
        waits: None hides that one's (_cut_off)."""
        self._until.append(None)
        serving = ev.target is not self.control
        self._serving += serving
        try:
            self._answer_call(ev)
        finally:
            self._serving -= serving
            self._until.pop()

    def _answer_call(self, ev: protocol.CallReceived):
        after = []      # what must happen once the answer is queued (per_call clean-up)
        a = self.conn.answers.get(ev.answer_id)
        if a is not None and a.finished:    # cancelled before it began: not run
            self._cancelled(ev)
            return
        if ev.unsupported is not None:      # sendResultsTo.thirdParty: this call fails
            self._send(self.conn.send_exception(ev.answer_id, ev.unsupported,
                                                "unimplemented", no_finish=True))
            return
        if ev.over is not None:             # past a per-message limit: this call fails
            self._send(self.conn.send_exception(ev.answer_id, f"params refused: {ev.over}",
                                                "failed", no_finish=True))
            return
        if ev.overloaded is not None:          # too many answers unfinished: this one fails
            self._send(self.conn.send_exception(ev.answer_id, ev.overloaded, "overloaded",
                                                no_finish=True))
            return
        if ev.target is self.control and ev.method_id == 1 \
                and ev.interface_id == ENGINE_INTERFACE and self._deferred_run is None \
                and (self._serving or self._running):
            # run() while a call waits in a call out: the program would run above it
            # on the engine's one stack, and the call could return only once _start
            # had (a program that serves for ever held it for good, its caller told
            # 'did not answer within', its frame taken); it starts once the calls
            # being dispatched have returned, at most their call_time (_cut_off).
            # Any guest code running now is a call's (run() comes only once start
            # has been answered): a per_call instance's _initialize too, which has
            # no dispatch frame yet, and under which _start ran in that instance's
            # store, memory and handles (wasmtime aborted the engine: every call
            # in it lost, an outside review, reviewer 191); and any call being
            # answered, its code done: a per_call instance's last output lines go
            # out (Log.write, a call out) before its answer, which came only once
            # _start had returned
            self._deferred_run = ev
            return
        try:
            if ev.target is self.control:
                if ev.interface_id != ENGINE_INTERFACE:
                    self._let_go(ev.payload.caps)
                    raise _CallError("unimplemented", "not an Engine method")
                content, caps = self._control(ev)
            elif isinstance(ev.target, LocalObject):
                content, caps = self._dispatch(ev, after)
            else:
                self._let_go(ev.payload.caps)
                raise _CallError("unimplemented", "promise pipelining into an engine")
        except (Exception, wasi.WasiExit) as e:  # noqa: BLE001 - each kind: _answer_failed
            self._answer_failed(ev.answer_id, e)
        else:
            # The supervisor never pipelines on an engine's answers.
            self._send(self.conn.send_return(ev.answer_id, content, caps, no_finish=True))
        finally:
            for f in after:
                f()

    def _answer_failed(self, answer_id: int, e: BaseException):
        """The answer to a call whose serving raised `e` (_answer_call, _serve_plain):
        a failed call's exception, or the end of an instance that called proc_exit."""
        if isinstance(e, _CallError):
            self._send(self.conn.send_exception(answer_id, e.reason, e.type, no_finish=True))
        elif isinstance(e, wasi.WasiExit):     # proc_exit while serving a call: this instance is done
            # and no guest code runs again: the calls served while the flush's Log.write
            # waits are refused as this one is (they ran the program that had exited)
            self._exited = _status(e)
            if self.wasi is not None:
                self.wasi.flush_all()
            self._send(self.conn.send_exception(
                answer_id, f"compartment {self.name} exited (code {_status(e)})", "disconnected",
                no_finish=True))
            held, self._deferred_run = self._deferred_run, None
            run_answer = self._run_answer if held is None else held.answer_id
            if run_answer is not None:
                # served while its program runs (a callback): the program ends with
                # this status, as if _start had called it; so does a program whose
                # run() was held while this call was being answered (it can never
                # run now: left unanswered, the engine's end was taken for the
                # program's failure, an outside review, reviewer 191)
                code = _status(e)
                self._send(self.conn.send_return(
                    run_answer, Content.standalone(
                        _RunResults.new_message(exitCode=code).to_segments()), [],
                    no_finish=True))
                self._flush()
                raise SystemExit(EXIT_OK) from None
            # no run() to answer (a server, or a program that has ended): the engine's
            # end is the only word of it the supervisor gets; it said only what the
            # socket saw ('engine exited', 'Connection reset by peer'), not the exit
            self._flush()
            print(f"wsuper engine {self.name}: exit({_status(e)}) in a call it served",
                  file=sys.stderr, flush=True)
            # exit(0) its own code: the supervisor could not tell it from exit(3), and
            # restarted (or left 'stopped', exit code 1) a program that had ended with
            # exit 0 and then ended well (an outside review)
            raise SystemExit(EXIT_GUEST_OK if _status(e) == 0 else EXIT_GUEST) from None
        else:  # input we could not handle: fail this call
            self._send(self.conn.send_exception(
                answer_id, f"compartment {self.name}: the engine could not handle this call "
                f"({type(e).__name__}: {_first_line(e)})", "failed", no_finish=True))

    def _cancelled(self, ev: protocol.CallReceived):
        """Answer a call its caller finished before it was dispatched ('canceled', as
        rpc.capnp asks: its question id is free once both Return and Finish are
        sent), and let go of the capabilities it brought."""
        self._let_go(ev.payload.caps)
        self._send(self.conn.send_canceled(ev.answer_id))

    def _control(self, ev):
        if ev.method_id == 0:     # start(grants) -> (main, program)
            if self._started:
                raise _CallError("failed", "start called twice")
            if not self._instantiated:    # asked during the start function: no grants yet
                raise _CallError("failed", "start called before the module was instantiated")
            grants = payloads.read_grants(ev.payload.content)   # all of it, or the call fails
            self._started = True
            granted = []
            for name, index, kind, mount in grants:
                cap = ev.payload.caps[index] if index is not None and index < len(ev.payload.caps) \
                    else None
                if isinstance(cap, protocol.Imported):
                    h = self._handle_for(cap)
                    self.grants[name] = (h, self.handles.get(h))
                    granted.append((name, kind, mount, cap.import_id))
            self._granted = granted
            if self.per_call:       # every call starts from the grants, with references of its own
                self._grant_handles = self._holding(self.handles.copy())
            if self.wasi is not None:
                self.wasi.grant(granted)
            if self.initialize is not None:         # a WASI reactor's constructors
                try:
                    self._outside(self._guest, self.initialize, fuel=self.limits.fuel_per_call)
                except wasi.WasiExit as e:
                    raise _CallError("failed", f"{self.name}: _initialize called "
                                     f"exit({_status(e)})") from None
            results = payloads.StartResults.new_message(program=self.start_func is not None)
            if self.exports_main:
                self._main_served = True        # from now on the proxy's (_host_object)
                return payloads.with_capability(results), [self._local(0)]
            return Content.standalone(results.to_segments()), []
        if ev.method_id == 1:     # run() -> (exitCode)
            if self.start_func is None:
                raise _CallError("failed", "module has no _start")
            code = 0
            self._run_answer = ev.answer_id
            try:
                self._outside(self._guest, self.start_func, fuel=UNLIMITED_FUEL)
            except wasi.WasiExit as e:               # proc_exit
                code = _status(e)
                # the program is done (a C program's _start ends in exit(): its atexit
                # handlers and stdio's exit flush ran): no call, during the exit flush
                # below or after run() is answered, runs it again (_dispatch); per_call
                # calls run instances of their own, not the program's
                if not self.per_call:
                    self._exited = code
            except BaseException:
                self._run_answer = None      # (a trap: not ended by a call served below)
                raise
            finally:
                try:
                    # still run()'s while its last lines are sent: an exit in a call
                    # served meanwhile (a program that returned) is the program's end,
                    # and answers run() (_on_call), as one served while _start runs
                    if self.wasi is not None:
                        self.wasi.flush_all()
                finally:
                    self._run_answer = None
                if self.call_times:
                    self._report_call_times()
            results = _RunResults.new_message(exitCode=code)
            return Content.standalone(results.to_segments()), []
        if ev.method_id in probing.CONTROL:     # describe, probe, collect
            try:    # within what the supervisor takes of this engine: past it, it cut
                # the engine off as a protocol error (a module's long function names)
                # (the supervisor takes message_size and 64 KiB of headers of an
                # engine: the Return around the content needs far less than 4 KiB)
                return probing.control(self.probes, ev.method_id, ev.payload.content,
                                       self.max_message_bytes + (60 << 10)), []
            except probing.TooLarge as e:
                raise _CallError("failed", f"compartment {self.name}: {e}") from None
        raise _CallError("unimplemented", f"Engine method {ev.method_id}")

    def _report_call_times(self):
        """One stderr line: the distribution of this program's outgoing call times."""
        t = sorted(self.call_times)
        self.call_times = []
        pick = lambda q: t[min(len(t) - 1, int(q * len(t)))] / 1000   # noqa: E731
        print(f"call-stats n={len(t)} mean_us={sum(t) / len(t) / 1000:.1f} "
              f"p50_us={pick(0.5):.1f} p99_us={pick(0.99):.1f} max_us={t[-1] / 1000:.1f}",
              file=sys.stderr, flush=True)

    def _dispatch(self, ev, after: list):
        """Call the guest's wsuper_dispatch.  `after`: clean-ups to run once the
        answer is queued (per_call: the instance's own handles are released then,
        after the answer that may carry some of them)."""
        if len(self.frames) >= MAX_NESTING:
            self._let_go(ev.payload.caps)       # not taken: released
            raise _CallError("overloaded", f"compartment {self.name}: calls nested deeper than "
                             f"{MAX_NESTING} (a call cycle between compartments?)")
        if self.frames:
            # a None frame is code that is no dispatch (a program's _start, a start
            # function, _initialize: _outside), waiting in a call of its own: it
            # holds no params (counted as if it did, every call served while such
            # code waited failed "AttributeError: 'NoneType' object has no
            # attribute 'params'")
            held = sum(len(f.params) for f in self.frames if f is not None)
            size = ev.payload.content.size()
            if held + size > NESTED_BYTES:
                self._let_go(ev.payload.caps)
                raise _CallError("overloaded", f"compartment {self.name}: the {len(self.frames)} "
                                 f"calls nested in it hold {held} bytes of parameters, and "
                                 f"this one's {size} would take them past {NESTED_BYTES}")
        if self.dispatch is None:
            self._let_go(ev.payload.caps)
            raise _CallError("unimplemented", f"compartment {self.name} serves no calls")
        if self._exited is not None:
            self._let_go(ev.payload.caps)
            raise _CallError("disconnected", f"compartment {self.name} exited "
                             f"(code {self._exited})")
        return self._dispatch_until(ev, after, time.monotonic() + self.limits.call_time)

    def _dispatch_until(self, ev, after: list, until: float):
        """_dispatch, its guest code bounded by `until` (self._until while it runs)."""
        try:
            outer = self._fresh_instance(until, ev.answer_id) if self.per_call else None
        except BaseException:
            # the call's instance could not be had (its start function or _initialize
            # failed, ran out of fuel, exited): the capabilities it brought were never
            # taken, and stayed imported for good, a reference to each caller's object
            self._let_go(ev.payload.caps)
            raise
        if outer is not None:
            a = self.conn.answers.get(ev.answer_id)
            if a is not None and a.finished:
                # finished while its instance was made: its code is past its time
                # at once, as if the Finish had come as it ran (_finish_read)
                until = CANCELLED
        try:
            try:
                handles = self._handles_for(ev.payload.caps)
            except _GuestError as e:
                raise _CallError("overloaded", str(e)) from None
            borrowed = None
            if outer is None and handles:    # per_call: the instance's table goes anyway
                borrowed = {h for h in handles if h}
                after.append(functools.partial(self._release_borrowed, borrowed))
            frame = _Frame(self._for_guest(ev.payload.content), handles, borrowed)
            after.append(functools.partial(self._let_results_go, frame))
            self.frames.append(frame)
            method = (ev.target.tag, ev.interface_id, ev.method_id)
            hold = self._may_hold(method)
            self._fuel_used = 0
            t0 = time.perf_counter_ns()
            # per_call: the instance's start function and _initialize were this call's
            # too, and spent of its one budget
            fuel = self.limits.fuel_per_call if outer is None else unchecked.refuel(
                self.store, -1)
            at = self._serving_at[ev.answer_id] = len(self._until)
            self._until.append(until)
            try:
                status = self._guest(self.dispatch, ev.target.tag, _signed64(ev.interface_id),
                                     ev.method_id, len(frame.params), len(frame.handles),
                                     fuel=fuel, flush=not hold)
            except wasi.WasiExit as e:
                if outer is None:       # the compartment's one instance: it is done
                    raise
                # per_call: the call's own instance ended, and only it: the compartment
                # serves on (the next call's instance is new anyway)
                raise _CallError("failed", f"compartment {self.name} exited (code {_status(e)}) "
                                 f"in this call's instance") from None
            finally:
                if self._serving_at.get(ev.answer_id) == at:
                    del self._serving_at[ev.answer_id]
                self._until.pop()
                self.frames.pop()
                self._judge(method, hold, time.perf_counter_ns() - t0)
        finally:
            if outer is not None:
                after.append(self._leave_instance(outer))
        return self._outcome(status, frame)

    def _outcome(self, status: int, frame: _Frame):
        """What a dispatch that returned `status` answers: its results, or its error."""
        if status != 0 or frame.error is not None:
            said = frame.error
            if not said:                          # (an empty fail() text too, as before)
                said = f"dispatch returned {status}"
                if frame.refused is not None:     # the supervisor's words, not a peer's
                    said += f"; {frame.refused}"
            reason = f"{self.name}: {said}"
            if status == abi.E_DENIED:
                reason = abi.DENIED_PREFIX + reason
            raise _CallError(abi.DISPATCH_TYPES.get(status, "failed"), reason)
        if frame.results is None:
            return protocol.EMPTY, []
        return frame.results

    def _let_results_go(self, frame: _Frame):
        """After a call's answer is queued (or its results were dropped): the
        references its results held (_host_results_set)."""
        held, frame.held = frame.held, []
        for import_id in held:
            self._unref_import(import_id)

    def _release_borrowed(self, borrowed: set):
        """After a call's answer is queued (it may carry them): release the handles
        made for its params that the guest did not keep.  A client cannot fill the
        handle table by sending capabilities a method does not take."""
        for h in borrowed:
            if self.handles.get(h) is None:
                continue
            entry = self.handles.remove(h)
            if isinstance(entry, _Import):
                self._unref_import(entry.import_id)
        borrowed.clear()

    def _may_hold(self, method) -> bool:
        """Whether the answers waiting may stay queued while `method` runs (HOLD_FUEL)."""
        if not self._outgoing:
            return True                 # nothing waits
        if not self._short.get(method) or len(self._outgoing) >= HOLD_MESSAGES \
                or self._outgoing_bytes >= HOLD_BYTES \
                or time.perf_counter_ns() - self._held_since >= HOLD_NS:
            return False
        if self._held_cpu is None:
            self._held_cpu = time.thread_time_ns()
        return True

    def _judge(self, method, held: bool, ns: int):
        """Record whether `method`'s call that just ended (`ns` by the clock) was short."""
        long = self._fuel_used >= HOLD_FUEL or (
            held and ns >= HOLD_NS and self._held_cpu is not None
            and time.thread_time_ns() - self._held_cpu >= HOLD_NS)
        seen = self._short.get(method)
        if seen is None and len(self._short) >= METHODS:
            return                      # no room: it writes first, as an unknown one
        self._short[method] = not long and seen is not False

    def _swap(self, state: dict) -> dict:
        # plain attributes (no property among them): the instance dict at once,
        # not a getattr and a setattr each (~3 us of every per_call call)
        d = self.__dict__
        outer = dict(zip(_INSTANCE_STATE, _instance_state(d)))
        d.update(state)
        return outer

    def _holding(self, table: HandleTable) -> HandleTable:
        """`table`, with a reference of its own to every import in it."""
        for entry in table.entries():
            if isinstance(entry, _Import):
                self.hold(entry.import_id)
        return table

    def _fresh_instance(self, until: float, answer_id: int) -> dict:
        """Switch to a new instance for this one call (instance = "per_call"): a new
        store, memory and tables, no pending reply, the handle table and WASI state
        as they were right after start (the grants).  Returns what to switch back
        to with _leave_instance.  Nothing the guest does survives the call.

        The new state is current before any of the instance's code runs (its start
        function, then _initialize), and outside any dispatch (_outside): their host
        calls reach this instance only, never the outer one (its handles, or its
        memory, which is another store's: wasmtime would abort the process) nor a
        call that waits below (its params and results).  It has no memory until
        it is instantiated.  `until`: the call's deadline, which bounds that code;
        the call's Finish (`answer_id`'s) read meanwhile cuts it off as it would
        the call's dispatch (_finish_read: its _until entry is the call's while
        that code runs; before, a cancelled call's _initialize and then its
        dispatch ran on, whole, for nobody)."""
        pool = self._pool
        pooled = pool is not None and not pool.busy      # nested calls: as before
        store = self._new_store(self.limits.fuel_per_call, pool.engine if pooled else None)
        fresh_wasi = self._new_wasi()
        if fresh_wasi is not None:
            fresh_wasi.grant(self._granted)
        grants = self._grant_handles if self._grant_handles is not None else HandleTable(
            self.limits.handles)
        outer = self._swap({
            "store": store, "memory": None, "dispatch": None, "reply": None,
            "_reply_entries": [],
            "handles": self._holding(grants.copy()), "wasi": fresh_wasi, "_wasi_fns": {},
            "_memory_base": None, "_stack_pointer": None, "_resting_sp": None})
        if self._native is not None:
            # the native host functions use the memory of the instance that runs:
            # none until this one has its own (wasmtime aborts the process given
            # another store's memory), the outer one's again once it is left
            outer["_native_memory"] = self._native.memory
            self._native.memory = None
        if pooled:
            pool.busy = True            # until its store is closed (_leave_instance's release)
        self._instances += 1            # until its release (_leave_instance)
        at = self._serving_at[answer_id] = len(self._until)     # _outside's entry
        try:
            self._outside(self._start_instance, store, outer,
                          pool.pre if pooled else self.instance_pre, _until=until)
        except BaseException:
            self._leave_instance(outer)()
            raise
        finally:
            if self._serving_at.get(answer_id) == at:
                del self._serving_at[answer_id]
        return outer

    def _start_instance(self, store, outer: dict, pre: wasmtime.InstancePre):
        """_fresh_instance's instance, of `pre`: made, protected, its probes
        attached, its _initialize run; `outer` gets what to detach."""
        self._timed_enter(store)        # its start function is the call's code
        try:
            exports = unchecked.instantiate(pre, store, self._instance_exports)
        except (wasmtime.WasmtimeError, wasmtime.Trap, GuestFault, wasi.WasiExit) as e:
            if isinstance(e, wasmtime.Trap) and e.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
                raise self._out_of_fuel() from None
            if isinstance(e, wasmtime.Trap) and e.trap_code == wasmtime.TrapCode.INTERRUPT:
                raise self._ran_past() from None
            if self._instances > 1 and isinstance(e, wasmtime.WasmtimeError) \
                    and not isinstance(e, wasmtime.Trap) \
                    and f"(os error {errno.ENOMEM})" in str(e):
                # no room in the engine's address space (confine: its RLIMIT_AS) for
                # one more memory beside those of the calls served beneath, which
                # wait (on callbacks to their callers): a passing overload, as
                # MAX_NESTING is, not a module that cannot be instantiated
                raise _CallError("overloaded", (
                    f"compartment {self.name} has no room for another instance: "
                    f"{self._instances - 1} calls are being served in instances of their "
                    f"own (instance = \"per_call\"), each with its own memory, while they "
                    f"wait for calls they made; try again once they have returned")) from None
            raise _CallError("failed", f"{self.name}: cannot instantiate: "
                             f"{_why_not(e, self.regions, self.probes.sites)}") from None
        finally:
            self._timed_leave(store)
        memory = exports.get(abi.EXPORT_MEMORY)
        # before enforce: what it protected is lifted from it (_leave_instance)
        self.memory = memory if isinstance(memory, wasmtime.Memory) else None
        if self.regions is not None:            # the same protection as the first instance
            try:
                self._memory_base = protect.enforce(self.regions, store, memory)
            except (OSError, AttributeError) as e:
                raise _CallError("failed", f"{self.name}: cannot protect memory: {e}") from None
        elif self._native is not None and self.memory is not None:
            # params_read, results_set and reply_read of this instance's plain calls
            # without Python (protected memory's checks are Python's)
            self._native.memory = self.memory._memory
        outer["_probes_outer"] = self.probes.attach(exports, store)
        # the first instance's, of the same module: its type is known to fit
        self._stack_pointer = exports.get(abi.EXPORT_STACK_POINTER) if self._sp_exported \
            else None
        self.dispatch = self._dispatch_type.bind(store, exports[abi.EXPORT_DISPATCH])
        if self.initialize is not None:          # a reactor's constructors, every time
            try:       # what the start function left of the call's budget
                self._guest(self.initialize.bind(store, exports[abi.EXPORT_INITIALIZE]),
                            fuel=unchecked.refuel(store, -1))
            except _CallError as e:
                if e.type == "overloaded":      # out of fuel: the call's budget is spent
                    raise
                raise _CallError("failed", f"{self.name}: _initialize failed: {e}") from None
            except wasi.WasiExit as e:      # as at start (_control)
                raise _CallError("failed", f"{self.name}: _initialize called exit({_status(e)})") \
                    from None

    def _out_of_fuel(self) -> "_CallError":
        return _CallError("overloaded", f"compartment {self.name} used up its CPU budget "
                          f"for this call (fuel_per_call = {self.limits.fuel_per_call})")

    def _outside(self, run, *args, _until: float | None = None, **kw):
        """`run(*args, **kw)`, which runs guest code that is not a dispatch (a start
        function, _initialize, _start), above the calls being dispatched: that code
        may run while one of them waits in wsuper.call (the supervisor's `run` then,
        a per_call instance for a call that comes meanwhile), and their params,
        results and failure are not its own.  A None frame hides them: params_read,
        results_set and fail say E_STATE, as at the top level.  `_until`: the
        deadline of the call the code is part of (its per_call instance's start
        function and _initialize), which bounds its waits; None for code of no call
        (_start, a start function, _initialize at start): run_time and start_time
        bound those (_cut_off)."""
        self.frames.append(None)
        self._until.append(_until)
        try:
            return run(*args, **kw)
        finally:
            self._until.pop()
            self.frames.pop()

    def _leave_instance(self, outer: dict):
        """Back to `outer`.  The instance's unfinished output lines are written now;
        returns the clean-up that drops its references, to run after the answer."""
        attached = "_probes_outer" in outer     # not when the instance never started
        probes_outer = outer.pop("_probes_outer", None)
        if "_native_memory" in outer:
            self._native.memory = outer.pop("_native_memory")
        inner = self._swap(outer)
        if attached:
            self.probes.detach(probes_outer)
        if inner["wasi"] is not None:
            inner["wasi"].flush_all()

        def release():
            self._instances -= 1
            if inner["wasi"] is not None:
                inner["wasi"].close_all()
            for entry in inner["handles"].entries():
                if isinstance(entry, _Import):
                    self._unref_import(entry.import_id)
            # its memories' address space, now: a trap's traceback can keep the store
            # alive until a garbage collection, and the engine's RLIMIT_AS has room
            # for only a few instances (each memory reserves 64 MiB)
            pooled = self._pool is not None and inner["store"].engine is self._pool.engine
            if pooled and self.regions is not None and inner["memory"] is not None:
                # memory protection's mprotect would outlive the instance in its
                # slot, which wasmtime wipes but does not protect again: the next
                # call's start function would meet it before _start_instance's
                # enforce, and wasmtime's own writes of data segments too
                protect.lift(self.regions, inner["store"], inner["memory"])
            inner["store"].close()
            if pooled:
                self._pool.busy = False     # its slot is free (and wiped) now
        return release

    def _guest(self, func, *args, fuel: int, flush: bool = True):
        """Enter the guest with a fresh CPU budget.  A re-entrant call (a callback
        while the guest waits) gets its own budget; the outer one resumes with
        what it had left.  `flush`: write the answers waiting to go out first (the
        guest may run for long); False only for a call expected to be short (see
        HOLD_FUEL)."""
        if flush:
            self._flush()
        store = self.store
        # only guest code that is running (we are inside one of its host calls)
        # has a budget to resume with, and only in its own store: at the top level
        # there is none to keep, and a per_call instance's store is not the one of
        # the code that waits below it (restoring the new store's fuel as it was
        # before would give back what this run spent: its _initialize, nested, cost
        # the call nothing)
        left = unchecked.refuel(store, fuel)
        outer = left if self._running and self._running[-1] is store else None
        # guest code that waits below (in wsuper.call, or in a WASI call that went to
        # the supervisor) may have a reply pending that it has yet to read: this run
        # has a reply of its own, and leaves the waiting code's as it found it (a
        # call made here took it, and the code below read this run's reply instead)
        waiting_reply = (self.reply, self._reply_entries) if self._running else None
        if waiting_reply is not None:
            self.reply, self._reply_entries = None, []
        # The C stack's pointer where this run begins: below the frames of the code
        # that waits beneath it, if any, else where it rests between calls.  Code
        # that traps, runs out of fuel or exits never gets to move it back up, and
        # its frames stayed taken for good: a few such calls of 8 KiB frames took a
        # C plugin's whole 64 KiB stack, and every later call of every caller failed
        # "out of stack" (a review of per_call and shared instances)
        sp, sp_at = self._stack_pointer, None
        if sp is not None:
            try:
                if self._running:
                    sp_at = sp.value(store)
                else:
                    if self._resting_sp is None:
                        self._resting_sp = sp.value(store)
                    sp_at = self._resting_sp
            except Exception:  # noqa: BLE001 - without it, as for a module without one
                sp = None
        self._running.append(store)
        self._timed_enter(store)
        copied = self._copied           # the waiting host call's, which goes on after
        depth = len(self.probes.stack)  # function entries open now
        try:
            try:
                return func(*args)
            except BaseException:
                if sp is not None:
                    _put_back(sp, store, sp_at)
                raise
            finally:     # a trap or an exit ended activations that report no exit
                if len(self.probes.stack) > depth:
                    self.probes.unwind(depth)
        except (GuestFault, protect.Fault) as e:
            raise _CallError("failed", f"compartment {self.name} trapped: {e}") from None
        except wasmtime.Trap as e:
            if e.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
                raise self._out_of_fuel() from None
            if e.trap_code == wasmtime.TrapCode.INTERRUPT:
                raise self._ran_past() from None
            raise _CallError("failed", f"compartment {self.name} trapped: "
                             f"{_trap_reason(e, self.regions, self.probes.sites)}") from None
        except wasmtime.WasmtimeError as e:
            raise _CallError("failed", f"compartment {self.name} failed: {_error_reason(e)}") \
                from None
        finally:
            self._running.pop()
            self._timed_leave(store)
            self._copied = copied
            if waiting_reply is not None:
                self._drop_unread_reply()       # this run's, never read: its handles go
                self.reply, self._reply_entries = waiting_reply
            self._fuel_used = fuel - unchecked.refuel(store, -1 if outer is None else outer)

    def _timed_enter(self, store):
        """Guest code in `store` runs now (its entry, or a start function as its
        instance is made), bounded by the deadline of the call it is part of,
        self._until[-1] (None: code of no call): past it, its code traps where it
        is, in wasm too (_fastcall.c, "deadlines"), not only at a host call.  Every
        way into guest code of a call comes here: a per_call instance's start
        function ran with no deadline (on to fuel_per_call, hours), though it is
        the call's code as its _initialize is."""
        at = len(self._until) - 1 if self._until else None
        self._timed.append((store, at))
        if self._deadlines:
            unchecked.deadline(store, None if at is None else self._until[at])

    def _timed_leave(self, store):
        """The guest code of the last _timed_enter, in `store`, is done: the code
        beneath goes on, bounded by its own deadline."""
        self._timed.pop()
        if self._deadlines:
            if self._timed:
                beneath, at = self._timed[-1]
                unchecked.deadline(beneath, None if at is None else self._until[at])
            else:
                unchecked.deadline(store, None)

    def _ran_past(self) -> "_CallError":
        """The error of a call whose code was stopped at its deadline (INTERRUPT),
        while its _timed entry is still the innermost."""
        at = self._timed[-1][1] if self._timed else None
        if at is not None and self._until[at] == CANCELLED:
            return _CallError("failed", (
                f"compartment {self.name} was sent Finish for this call while it ran "
                f"(its caller cancelled it or went, a grant on its way was revoked, "
                f"or it ran past its call_time), and its code was stopped"))
        return _CallError("overloaded", (
            f"compartment {self.name} ran past the {self.limits.call_time:g} s "
            f"a call may take (limit call_time), and its code was stopped"))


def _stack_pointer(exports, store) -> wasmtime.Global | None:
    """The instance's exported C stack pointer, if it exports one as a mutable i32 or
    i64 global (abi.EXPORT_STACK_POINTER), else None."""
    g = exports.get(abi.EXPORT_STACK_POINTER)
    if not isinstance(g, wasmtime.Global):
        return None
    ty = g.type(store)
    if not ty.mutable or ty.content not in (wasmtime.ValType.i32(), wasmtime.ValType.i64()):
        return None
    return g


def _put_back(sp: wasmtime.Global, store, value):
    """Set the stack pointer back to `value` after guest code that did not return."""
    try:
        sp.set_value(store, value)
    except Exception:  # noqa: BLE001 - what the code failed with is what matters
        pass


def _not_in_clist(handle: int) -> str:
    """Why `handle` names nothing.  A negative one is an error code a guest took for
    a handle, most often lookup's E_NOTFOUND for a grant name it misspelt: "handle -7
    is not in this compartment's c-list" said neither."""
    if handle == abi.E_NOTFOUND:
        return (f"handle {handle} is not a handle: it is E_NOTFOUND, what lookup returns "
                f"when nothing is granted under the name it was given (check that name "
                f"against the compartment's grants in the system file)")
    if handle < 0:
        return (f"handle {handle} is not a handle: it is an error code (a handle is "
                f"positive)")
    return f"handle {handle} is not in this compartment's c-list"


class _GuestError(Exception):
    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


class _CallError(Exception):
    def __init__(self, type, reason):
        super().__init__(reason)
        self.type = type
        self.reason = reason


_RunResults = payloads.method_structs(engine_schema.Engine, "run")[1]


def _status(e: wasi.WasiExit) -> int:
    """proc_exit's code as run() reports it (`finished NAME exit=-1`): signed, so that
    what callers and the log are told is the same number (exit(-1) was 'exited
    (code 4294967295)' to the caller of the call that made it)."""
    return e.code - (1 << 32) if e.code >= 1 << 31 else e.code


def _why_not(e, regions: protect.Regions | None = None, sites=None) -> str:
    """Why instantiation failed: a trap in the module's start function says where
    (`regions`: those its protection checks were compiled against, if any;
    `sites`: the module's probe sites, if it was rewritten for them)."""
    if isinstance(e, wasmtime.Trap):
        try:
            ran, code = bool(e.frames), e.trap_code
        except Exception:  # noqa: BLE001 - a backtrace is a nicety
            ran, code = True, None
        if not ran:     # no code of its own ran: its memory and tables were being set
            # up (a module without a start function was said to have one that trapped)
            what = {wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS:
                    "one of its data segments lies past the end of its memory",
                    wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS:
                    "one of its element segments lies past the end of its table"}.get(
                code, "setting up its memory, tables and globals failed")
            return f"{what}: {_trap_reason(e, regions, sites)}"
        return f"its start function trapped: {_trap_reason(e, regions, sites)}"
    if isinstance(e, GuestFault):         # a host call it made broke the ABI
        return f"its start function trapped: {_first_line(e)}"
    if isinstance(e, wasi.WasiExit):      # proc_exit: a start function has no exit code
        return f"its start function called exit({_status(e)})"
    if isinstance(e, wasmtime.WasmtimeError) and _first_line(e).startswith(
            "error while executing at wasm backtrace"):
        # guest code failed, not a trap: an exception its start function threw and
        # nothing caught ("thrown Wasm exception"), its GC heap out of memory; said
        # as if instantiation itself had failed, never naming the start function
        return f"its start function failed: {_error_reason(e)}"
    return _error_reason(e)


def _error_reason(e: Exception) -> str:
    """Why wasmtime failed, in one bounded line: an error raised while guest code
    ran ("GC heap out of memory: ...") comes after a backtrace, whose first line
    ("error while executing at wasm backtrace:") says nothing and whose frames
    carry names the module chose: only the last "Caused by:" section is read,
    its innermost cause."""
    text = str(e)
    if "\nCaused by:\n" not in text:
        return bounded(_first_line(e), TRAP_CAUSE_LIMIT)
    lines = [l.strip() for l in text.rsplit("\nCaused by:\n", 1)[-1].splitlines() if l.strip()]
    cause = re.sub(r"^\d+: ", "", lines[-1]) if lines else _first_line(e)
    return bounded(cause, TRAP_CAUSE_LIMIT)


def _trap_reason(trap: wasmtime.Trap, regions: protect.Regions | None = None,
                 sites=None) -> str:
    """'wasm `unreachable` instruction executed (in _start)', not wasmtime's first line;
    a protected page: 'write to read-only memory at 0x1004 (...) (in main)'."""
    # wasmtime's own words come after its backtrace, whose frames carry names the
    # module chose (any text at all): only the last "Caused by:" section is read
    text = str(trap.message).rsplit("\nCaused by:\n", 1)[-1]
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    cause = bounded(protect.explain(text, regions) or _unprotected_check(trap, regions) or next(
        (l.split("wasm trap:", 1)[1].strip() for l in lines if "wasm trap:" in l),
        lines[-1] if lines else "trap"), TRAP_CAUSE_LIMIT)
    try:      # the function that did it, not a check inserted for protection
        # by index: names are the module's own text (a check left unnamed by a name
        # section that cannot be extended was "function #1"; a function of its own
        # named like a check was passed over)
        # nor a probe site's helper (instrument.Sites.is_helper): the function whose
        # site called it ("call stack exhausted (in wsuper~0.st)" named neither)
        frames = [f for f in trap.frames if not protect.is_check_frame(f.func_index, regions)
                  and not (sites is not None and sites.is_helper(f.func_index))] \
            or trap.frames
        where = frames[0].func_name or f"function #{frames[0].func_index}" if frames else None
    except Exception:  # noqa: BLE001 - a backtrace is a nicety; never fail over it
        where = None
    return f"{cause} (in {bounded(where, TRAP_NAME_LIMIT)})" if where else cause


def _unprotected_check(trap: wasmtime.Trap, regions: protect.Regions | None) -> str | None:
    """The cause of a trap at a check's own `unreachable`: its bulk-memory
    instruction reached protected memory whose pages were not protected yet (a
    start function runs before the engine protects them), so the check's 1-byte
    access passed and it stopped the instruction itself (never the guest's own
    `unreachable`: the frame is told apart by index).  None otherwise."""
    try:
        if regions is None or trap.trap_code != wasmtime.TrapCode.UNREACHABLE or \
                not trap.frames or not protect.is_check_frame(trap.frames[0].func_index, regions):
            return None
    except Exception:  # noqa: BLE001 - a backtrace is a nicety; never fail over it
        return None
    where = [regions.describe(0)] if regions.no_access_end else []
    if regions.read_only_end > regions.read_only_start:
        where.append(regions.describe(regions.read_only_start))
    return f"a bulk-memory instruction (memory.fill, memory.copy or memory.init) reached " \
           f"protected memory ({' or '.join(where)}) before its pages were protected"


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def run(spec: EngineSpec, sock_fd: int, module: wasmtime.Module | None = None,
        wasm_engine: wasmtime.Engine | None = None, description: wasm.Description = None,
        parent: int = 0, pool=None) -> int:
    """Run one engine in this process (forked by the zygote); returns its exit code.

    Loads the module, confines the process for good (confine.py), then serves
    the supervisor on `sock_fd` until it closes the connection.  `parent`: die
    with that process (the zygote)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the supervisor decides when we stop
    sock = socket.socket(fileno=sock_fd)
    try:
        engine = Engine(sock, spec, module, wasm_engine, description, instantiate=False,
                        pool=pool)
        engine.start_deadlines()
    except EngineError as e:
        # one line, whatever the module named (its name section: a trap's function,
        # an import's or export's name in wasmtime's words): the supervisor reads
        # the last line as the reason, and a name with a newline made its own
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return EXIT_CANNOT_LOAD
    try:            # the supervisor gone: EXIT_OK; a protocol error: its SystemExit
        engine.answer_bootstrap()   # the supervisor's first question, if here: no guest code yet
        try:
            engine.confine(spec.user, parent)
        except OSError as e:                # ConfinementError, or a layer that failed
            print(f"error: cannot confine the engine: {printable(str(e))}", file=sys.stderr)
            return EXIT_CONFINE
        engine.answer_bootstrap()           # (if it came only now)
        try:               # the module's start function is guest code: confined first
            engine.instantiate()
        except EngineError as e:
            print(f"error: {printable(str(e))}", file=sys.stderr)     # one line (above)
            return EXIT_CANNOT_LOAD
        engine.serve()
    except (BrokenPipeError, ConnectionResetError):
        pass
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_PROTOCOL
    except Exception as e:  # noqa: BLE001 - a fault of the engine's own: it ends, saying so
        # its traceback (for whoever fixes it), then one line: the supervisor takes
        # an engine's last line as why it ended (its restart line, its callers' errors),
        # and that was the traceback's last, the exception's module path and all
        import traceback
        traceback.print_exc()
        print(f"error: internal error in the engine ({type(e).__name__}: "
              f"{printable(_first_line(e))})", file=sys.stderr, flush=True)
        return EXIT_INTERNAL
    return EXIT_OK
