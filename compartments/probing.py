"""The engine's half of the probes: flags, counters, events, host-call timing.

Owns: the probe memory of the running instance (flags and counters, layout in
instrument.py), the hooks a rewritten module calls, the timing of host calls,
and a bounded buffer of events until the supervisor collects them.  Must not:
decide which probes are on (the supervisor sends the flags), talk to the
supervisor itself (the engine answers Engine.describe/probe/collect with what
this returns), or import the supervisor or trio.

Events are fixed 32-byte records, `EVENT` below: kind, site (or import
number), time (CLOCK_MONOTONIC ns, the same clock as the supervisor's
`time.perf_counter_ns`), and two values whose meaning depends on the kind.

The consistency rule: an exit is reported only for an activation whose entry
was reported.  A probe turned on while the function runs (it waits in a host
call, which is when the engine serves the supervisor) would otherwise see its
exit alone; activations are LIFO, so one count of open entries per site tells
which exits to drop.  A trap unwinds: the activations opened inside the
guest call that trapped get an exit with `unwound` = 1.
"""
from __future__ import annotations

import ctypes
import struct
import time

from . import abi
from .instrument import COUNT, EVENTS, EXPORT_ON, EXPORT_PROBES, HOOKS, PROBE_MODULE, Sites

#: kind, site (or import number), time ns, a, b
EVENT = struct.Struct("<IIqqq")
ENTER, EXIT, BLOCK, STORE, HOSTCALL = 1, 2, 3, 4, 5
#: A HOSTCALL record's result when the host call trapped its guest (raised) instead
#: of returning: no i32 a host function returns
TRAPPED = -(1 << 32)
#: Events kept between two collects; more are dropped (and counted).
MAX_EVENTS = 1 << 16
#: host calls by number: the wsuper ABI, then WASI (as the supervisor names them)
HOST_FUNCTIONS = tuple(f"{abi.MODULE}.{n}" for n in abi.IMPORTS) + \
    tuple(f"wasi.{n}" for n in abi.WASI_IMPORTS)
_NUMBER = {name: i for i, name in enumerate(HOST_FUNCTIONS)}
_now = time.perf_counter_ns


class EngineProbes:
    """The probes of one engine.  `sites` is None for a module without sites."""

    def __init__(self, sites: Sites | None):
        self.sites = sites
        self.flags = b""                    # one byte a site, as last set
        self.hostcalls = False
        self.memory = None                  # the current instance's probe memory
        self._store = None                  # ... and its store
        self._on = None                     # ... and its `wsuper:on` global
        self.events: list[bytes] = []
        self.dropped = 0
        self.totals: list[int] = [0] * len(sites) if sites else []   # per_call instances
        self._open = [0] * len(sites) if sites else []
        #: function sites of reported entries, innermost last; never replaced (the
        #: engine reads its length around each entry into guest code: Engine._guest)
        self.stack: list[int] = []

    # ------------------------------------------------------------ the module's hooks

    def hit(self, site: int, what: int):
        if not 0 <= site < len(self._open):
            return
        kind = self.sites.kinds[site]
        if kind == 0:                       # a function
            if what == 0:
                self._open[site] += 1
                self.stack.append(site)
                self._record(ENTER, site, 0, 0)
            elif self._open[site]:          # never an exit without its entry
                self._open[site] -= 1
                if self.stack and self.stack[-1] == site:
                    self.stack.pop()
                self._record(EXIT, site, 0, 1 if what == 2 else 0)   # 2: an exception
        else:
            self._record(BLOCK, site, 0, 0)

    def store(self, site: int, address: int, size: int):
        # an i32 comes signed: a bulk write of 2 GiB or more is no negative size
        self._record(STORE, site, address, size & 0xFFFFFFFF)

    def _record(self, kind, site, a, b, t=None):
        if len(self.events) >= MAX_EVENTS:
            self.dropped += 1
            return
        self.events.append(EVENT.pack(kind, site, _now() if t is None else t, a, b))

    def unwind(self, depth: int):
        """The guest call entered at `depth` ended (a trap, an exit, or function
        events turned off meanwhile) with activations open: close them, each with
        an exit marked unwound (b = 1)."""
        while len(self.stack) > depth:
            site = self.stack.pop()
            if self._open[site]:
                self._open[site] -= 1
                if self.flags and self.flags[site] & EVENTS:
                    self._record(EXIT, site, 0, 1)

    # ------------------------------------------------------------ host calls

    def timed(self, name: str, fn):
        """`fn`, timed while host-call probes are on (one test of a flag otherwise)."""
        number = _NUMBER[name]
        record = self._record
        ends = name == "wasi.proc_exit"     # it never returns, and has not failed

        def call(*args):
            if not self.hostcalls:
                return fn(*args)
            t0 = _now()
            result = None
            returned = False
            try:
                result = fn(*args)
                returned = True
                return result
            finally:      # a: how long it took; b: what it returned, or TRAPPED
                record(HOSTCALL, number, _now() - t0, result if isinstance(result, int) else
                       0 if returned or ends else TRAPPED, t0)
        return call

    # ------------------------------------------------------------ instances and control

    def exports(self) -> tuple:
        """The names of the exports `attach` looks up."""
        return () if self.sites is None else (EXPORT_PROBES, EXPORT_ON)

    def attach(self, exports, store):
        """The probe memory of a new instance; the flags are written into it."""
        if self.sites is None:
            return None
        memory = exports.get(EXPORT_PROBES)
        previous = self.memory, self._store, self._on
        self.memory, self._store, self._on = memory, store, exports.get(EXPORT_ON)
        if self.flags:
            self._write_flags()
        return previous

    def detach(self, previous):
        """Back to the outer instance (instance = "per_call"): the inner one's
        counters are added to the totals first."""
        if self.sites is None:
            return
        if any(self.flags):
            for i, v in enumerate(self._counters_of(self.memory, self._store)):
                if v:
                    self.totals[i] += v
        self.memory, self._store, self._on = previous
        if self.memory is not None and self.flags:   # set meanwhile: written in the inner one
            self._write_flags()

    def _span(self, memory, store):
        ptr = memory.data_ptr(store)
        return ctypes.addressof(ptr.contents), memory.data_len(store)

    def _write_flags(self):
        """Each site's flag, each function's divert byte (1: some site of it is on,
        so it runs its probed clone), and `wsuper:on`."""
        base, size = self._span(self.memory, self._store)
        sites = self.sites
        at = sites.flags_at
        if at + len(self.flags) > size:
            return
        divert = bytearray(at)
        for s, f in enumerate(self.flags):
            if f:
                k = sites.functions[s] - sites.imported
                if 0 <= k < at:
                    divert[k] = 1
        ctypes.memmove(base, bytes(divert), at)
        ctypes.memmove(base + at, self.flags, len(self.flags))
        if self._on is not None:
            # (imported here: the supervisor reads a system file's probes with this
            # module's names, and `wsuper status` has no use for wasmtime)
            import wasmtime
            self._on.set_value(self._store, wasmtime.Val.i32(1 if any(self.flags) else 0))

    def _counters_of(self, memory, store) -> list[int]:
        if memory is None:
            return [0] * len(self.sites)
        base, size = self._span(memory, store)
        n = len(self.sites)
        start = self.sites.counters
        if start + 8 * n > size:
            return [0] * n
        return list(struct.unpack_from(f"<{n}q", ctypes.string_at(base + start, 8 * n)))

    def set(self, flags: bytes, hostcalls: bool):
        """Engine.probe: every site's flag (COUNT | EVENTS), and host-call timing."""
        n = len(self.sites) if self.sites else 0
        if flags and len(flags) != n:
            raise ValueError(f"{len(flags)} flags for {n} probe sites")
        if any(f & ~(COUNT | EVENTS) for f in flags):
            raise ValueError("unknown flag bits")
        self.flags = bytes(flags) if flags else bytes(n)
        self.hostcalls = bool(hostcalls)
        if self.memory is not None:
            self._write_flags()

    def describe(self) -> str:
        import json
        return json.dumps(self.sites.to_json(), separators=(",", ":")) if self.sites else ""

    def collect(self) -> tuple[bytes, bytes, int]:
        """(counters, events, dropped) since the last collect."""
        counters = b""
        if self.sites is not None:
            current = self._counters_of(self.memory, self._store)
            counters = struct.pack(f"<{len(current)}q",
                                   *(c + t for c, t in zip(current, self.totals)))
        events, self.events = b"".join(self.events), []
        dropped, self.dropped = self.dropped, 0
        return counters, events, dropped


# ------------------------------------------------------------------ Engine.describe/probe/collect

DESCRIBE, PROBE, COLLECT = 2, 3, 4
CONTROL = (DESCRIBE, PROBE, COLLECT)
_MAX_WORDS = 1 << 22


def _structs():
    from capnp_schemas import engine as engine_schema
    from capnp_schemas.payloads import method_structs
    return {m: method_structs(engine_schema.Engine, name)
            for m, name in ((DESCRIBE, "describe"), (PROBE, "probe"), (COLLECT, "collect"))}


_STRUCTS = None


class TooLarge(Exception):
    """An answer to describe or collect that would not fit in one message the
    supervisor accepts from this engine (str says what, and what to change)."""


#: bytes of an answer's message besides the text or data it carries (its struct,
#: pointers, padding)
_ANSWER_OVERHEAD = 256


def control(probes: EngineProbes, method: int, content, max_bytes: int | None = None):
    """Answer Engine.describe/probe/collect (engine.capnp) -> results Content.
    `max_bytes`: the most the answer's message may weigh (what the supervisor
    takes of a message of the engine, limits.message_size and most of the 64 KiB
    of headers: one larger cut the engine off as a protocol error).  Past it, describe
    and collect raise TooLarge (collect first leaves out the events that do not
    fit, counted as dropped: only counters that alone do not fit raise)."""
    global _STRUCTS
    from capnp_schemas.payloads import read
    from capnp_schemas.protocol import Content
    if _STRUCTS is None:
        _STRUCTS = _structs()
    params, results = _STRUCTS[method]
    room = None if max_bytes is None else max_bytes - _ANSWER_OVERHEAD
    if method == DESCRIBE:
        text = probes.describe()
        if room is not None and len(text.encode()) > room:
            raise TooLarge(f"its {len(probes.sites or ())} probe sites take {len(text):,} bytes "
                           f"to describe, more than one message carries (limits.message_size "
                           f"and its headers: {max_bytes:,}): raise limits.message_size or "
                           f"instrument fewer points")
        msg = results.new_message(sites=text)
    elif method == PROBE:
        p = read(params, content, _MAX_WORDS)
        probes.set(p["flags"], p["hostcalls"])
        msg = results.new_message()
    else:
        counters, events, dropped = probes.collect()
        if room is not None and len(counters) + len(events) > room:
            if len(counters) > room:
                raise TooLarge(f"the counters of its {len(counters) // 8:,} probe sites take "
                               f"{len(counters):,} bytes, more than one message carries "
                               f"(limits.message_size and its headers: {max_bytes:,}): raise "
                               f"limits.message_size or instrument fewer points")
            keep = (room - len(counters)) // EVENT.size
            dropped += len(events) // EVENT.size - keep
            events = events[:keep * EVENT.size]
        msg = results.new_message(counters=counters, events=events, dropped=dropped)
    return Content.standalone(msg.to_segments())


__all__ = ["EngineProbes", "EVENT", "HOST_FUNCTIONS", "ENTER", "EXIT", "BLOCK", "STORE",
           "HOSTCALL", "TRAPPED"]
