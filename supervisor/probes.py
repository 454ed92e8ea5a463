"""Probes: what is being watched, and what the watching saw (pure).

Owns: probe specifications and their validation (every one may come from a
hostile command line or a system file), the registry of the probes on each
compartment, the flags each engine must run with (instrument.py's sites),
the router's hook on calls (`CallProbes`), turning what engines and the
router recorded into events, the built-in counts and histograms, and the
bounded queues of the sinks that read events (a trace session, an analysis
compartment holding a Probe capability).  No I/O, no clock of its own:
the runtime (runtime.py) asks engines and passes what they answer in.

A probe watches one *point* of one compartment:
  calls      calls the router delivers from or to the compartment
  hostcalls  the compartment's host calls (the wsuper ABI and WASI imports)
  functions  entry and exit of the functions `functions` selects
  blocks     block coverage inside those functions
  stores     memory stores inside those functions (address and size)
The last three need the sites compiled into the module (`instrument = [...]`
in system.toml).  With `events` off a probe only counts (in the module for
functions/blocks/stores: no host call at all); with it on, every hit is an
event with a time, for the trace and for analysis compartments.

Bounds: every queue has a length; what does not fit is dropped and counted,
never waited for.  The supervisor never stalls for a slow sink.
"""
from __future__ import annotations

import collections
import fnmatch
import functools
import re
import struct

import attrs

from compartments.instrument import COUNT, EVENTS, KINDS, Sites
from compartments.probing import BLOCK, ENTER, EVENT, EXIT, HOST_FUNCTIONS, HOSTCALL, STORE

#: HOST_FUNCTIONS from here on are WASI's (before: the wsuper ABI's)
WASI_FIRST = next(i for i, n in enumerate(HOST_FUNCTIONS) if n.startswith("wasi."))

POINTS = ("calls", "hostcalls", "functions", "blocks", "stores")
IN_MODULE = ("functions", "blocks", "stores")       # need sites compiled in
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")
MAX_PATTERNS = 64
MAX_PATTERN = 200
#: a function index pattern: "#" and ASCII digits (str.isdigit would take "#²", which int() refuses)
_INDEX = re.compile(r"#[0-9]{1,10}")
MAX_PROBES = 64                 # per compartment
MAX_OPEN_CALLS = 100_000        # calls the router hook follows at once
MAX_CALL_EVENTS = 100_000       # call events waiting to be taken
QUEUE = 100_000                 # events a sink holds before dropping
MAX_KEYS = 10_000               # distinct names counted per probe
_KIND_OF_SITE = {0: "functions", 1: "blocks", 2: "stores"}


class ProbeError(Exception):
    """A probe request that cannot be carried out; the text says why and what to do.
    `key`: the field of a declared probe it is about (point, functions, events), so
    that the system file's error names that key and its line, not the probe's table."""

    def __init__(self, text: str = "", key: str | None = None):
        super().__init__(text)
        self.key = key


@attrs.frozen
class ProbeSpec:
    name: str
    compartment: str
    point: str
    functions: tuple = ()        # name patterns (fnmatch) or "#INDEX"; () is every function
    events: bool = False
    declared: bool = False       # from system.toml: survives restarts


def spec(compartment: str, name, point, functions=(), events=False, declared=False,
         where: str = "") -> ProbeSpec:
    """A validated ProbeSpec; ProbeError names what is wrong."""
    at = f"{where}: " if where else ""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ProbeError(f"{at}probe name {str(name)[:80]!r} is not allowed (letters, digits, "
                         f"'_' and '-', starting with a letter or '_', at most 64)")
    if point not in POINTS:
        raise ProbeError(f"{at}unknown point {str(point)[:80]!r} (points: {', '.join(POINTS)})",
                         "point")
    if isinstance(functions, str):
        functions = [f for f in functions.split(",") if f]
    if not isinstance(functions, (list, tuple)) or len(functions) > MAX_PATTERNS or not all(
            isinstance(f, str) and 0 < len(f) <= MAX_PATTERN and f.isprintable()
            for f in functions):
        raise ProbeError(f"{at}functions: at most {MAX_PATTERNS} printable name patterns "
                         f"(such as \"store_*\") or indices (\"#12\"), each at most "
                         f"{MAX_PATTERN} characters", "functions")
    for f in functions:
        if f.startswith("#") and not _INDEX.fullmatch(f):
            raise ProbeError(f"{at}functions: {f!r}: an index is '#' and digits, like #12",
                             "functions")
    if functions and point not in IN_MODULE:
        raise ProbeError(f"{at}functions applies to the points {', '.join(IN_MODULE)}, "
                         f"not {point}", "functions")
    if not isinstance(events, bool):
        raise ProbeError(f"{at}events must be true or false", "events")
    return ProbeSpec(name, compartment, point, tuple(functions), events, declared)


def _bucket(ns: int) -> int:
    """Histogram bucket of a duration: b means [2^(b-1), 2^b) µs (0: under 1 µs)."""
    us = ns // 1000
    return us.bit_length()


def bucket_label(b: int) -> str:
    if b == 0:
        return "<1us"
    lo, hi = 1 << (b - 1), 1 << b
    unit = lambda v: f"{v}us" if v < 1000 else f"{v / 1000:g}ms" if v < 1_000_000 \
        else f"{v / 1_000_000:g}s"   # noqa: E731
    return f"{unit(lo)}-{unit(hi)}"


class Probe:
    """One probe and what it has seen."""

    def __init__(self, spec: ProbeSpec):
        self.spec = spec
        self.sites: tuple = ()          # the module's sites it covers
        # the engine's counters (one per site of the module, indexed by site) when the
        # probe came on; None until a collect the engine answered after applying the
        # flags that turned it on (push `on_after`).  Shared, never copied: a collect
        # must cost nothing per site of each probe (see Registry.counters)
        self.baseline: tuple | None = None
        self.on_after: int | None = None
        self.since = 0                  # ns (the engines' clock): it counts calls begun from then
        self.counters: tuple = ()       # the engine's counters, last read (shared, by site)
        self.counts: collections.Counter = collections.Counter()     # name -> events
        self.histograms: dict = {}      # name -> {bucket: n}
        self.failed: collections.Counter = collections.Counter()
        self.events = 0
        self.dropped = 0
        self.bytes = 0                  # stores: bytes written
        self.sizes: collections.Counter = collections.Counter()
        self.lowest: int | None = None
        self.highest: int | None = None
        # why it left the registry: "removed" (a request, audited) or "restart" (its
        # engine was replaced): a trace session adds again only what a restart took
        self.gone: str | None = None
        self._mask: tuple | None = None     # (key, site_mask, the sites it was made of)

    def site_mask(self, n: int) -> int:
        """Its sites (of a module of `n`) as a number whose byte `site` is 1."""
        key = (id(self.sites), n)
        if self._mask is None or self._mask[0] != key:
            mask = bytearray(n)
            for site in self.sites:
                if 0 <= site < n:
                    mask[site] = 1
            self._mask = (key, int.from_bytes(mask, "little"), self.sites)
        return self._mask[1]

    def count(self, key: str, ns: int | None = None, ok: bool = True):
        self.events += 1
        if key not in self.counts and len(self.counts) >= MAX_KEYS:
            key = "(other)"
        self.counts[key] += 1
        if not ok:
            self.failed[key] += 1
        if ns is not None:
            h = self.histograms.setdefault(key, {})
            b = _bucket(max(ns, 0))
            h[b] = h.get(b, 0) + 1

    def summary(self, sites: Sites | None, covered: dict | None = None) -> dict:
        """What `probe list` says of it.  `covered`: `coverage` of its sites, if
        already found (off the event loop: prober._summary)."""
        s = self.spec
        out = {"name": s.name, "compartment": s.compartment, "point": s.point,
               "functions": list(s.functions), "events": s.events, "declared": s.declared,
               "seen": self.events, "dropped": self.dropped}
        if s.point in IN_MODULE and sites is not None:
            out.update(covered if covered is not None else
                       coverage(sites, self.sites, self.counters, self.baseline))
        out["counts"] = dict(self.counts.most_common(200))
        if self.failed:
            out["failed"] = dict(self.failed.most_common(200))
        out["histograms"] = {k: {bucket_label(b): n for b, n in sorted(h.items())}
                             for k, h in list(self.histograms.items())[:200]}
        if s.point == "stores":
            out["bytes"] = self.bytes
            out["sizes"] = dict(sorted(self.sizes.items()))
            out["range"] = [self.lowest, self.highest] if self.lowest is not None else None
        return out


def coverage(sites: Sites, probe_sites: tuple, now: tuple, base: tuple | None) -> dict:
    """An in-module probe's coverage, from the counters of the collect it started
    from (`base`, None: none yet) to the last (`now`): its sites, those hit, the
    hits, and a row per function.  Time in the number of the probe's sites (0.4 s
    for 500,000): the prober finds it in a worker thread (every argument is
    immutable), so that `probe list` of a module with many sites does not hold
    the event loop."""
    base = base if base is not None else now
    hits = {site: (now[site] - base[site] if site < len(now) and site < len(base) else 0)
            for site in probe_sites}
    by_function: dict = {}
    label = functools.lru_cache(maxsize=None)(_labels(sites))   # once per function
    for site, n in hits.items():
        f = label(sites.functions[site])
        total, covered, count = by_function.get(f, (0, 0, 0))
        by_function[f] = (total + 1, covered + (n > 0), count + max(n, 0))
    return {"sites": len(probe_sites), "covered": sum(1 for n in hits.values() if n > 0),
            "functions_hit": {f: {"sites": t, "covered": c, "count": n}
                              for f, (t, c, n) in sorted(by_function.items())},
            "count": sum(max(n, 0) for n in hits.values())}


def _size_key(size: int) -> int:
    """A store's row in a `stores` probe's sizes: its size up to 16 bytes (every
    store instruction's), else the power of two at or above it (bulk writes come
    in any length: one row each would grow without bound)."""
    return size if size <= 16 else 1 << (size - 1).bit_length()


def _labels(sites: Sites):
    """function index -> its row in `probe list`: its name, or with its index when
    the name does not tell it apart (two static functions of one name; a name such
    as '#7' that is another function's index).  Rows are keyed by these: by name,
    functions of one name were added up in one row, and '#7' was two functions.
    A name written as such a row ('dup (#3)' beside two functions named 'dup') gets
    its index too: only a name that is neither shared, nor starts with '#', nor
    ends as a row with an index does is shown alone, and rows with an index end
    in their own function's, so no two functions share a row."""
    shared = collections.Counter(sites.name(f) for f in set(sites.functions))

    def label(f: int) -> str:
        name = sites.name(f)
        if name != f"#{f}" and (shared[name] > 1 or name.startswith("#")
                                or _INDEXED.search(name)):
            return f"{name} (#{f})"
        return name
    return label


#: How a row's label ends when it carries its function's index
_INDEXED = re.compile(r" \(#[0-9]+\)\Z")


class Subscriber:
    """A sink's bounded queue of events (a trace session, an analysis compartment)."""

    def __init__(self, compartments=None, limit: int = QUEUE, label: str = ""):
        self.compartments = set(compartments) if compartments is not None else None
        self.queue: collections.deque = collections.deque()
        self.limit = limit
        self.dropped = 0
        self.label = label
        #: the reads waiting for events (trio.Event, prober._read_later): each is set
        #: when events arrive
        self.waiters: set = set()

    def wants(self, compartment: str) -> bool:
        return self.compartments is None or compartment in self.compartments

    def wake(self):
        for w in self.waiters:
            w.set()

    def put(self, event: dict):
        if len(self.queue) >= self.limit:
            self.dropped += 1
            return
        self.queue.append(event)

    def take(self, n: int) -> tuple[list, int]:
        n = min(n, len(self.queue))
        out = [self.queue.popleft() for _ in range(n)]
        dropped, self.dropped = self.dropped, 0
        return out, dropped


class ReaderWatch:
    """Whether a sink's reader takes anything (pure), from what its socket says is
    queued unread (SIOCOUTQ) at each look: any fall of it, or nothing queued, is the
    reader taking something; what the sink itself writes rises it, and a look right
    after each write makes that the new level.  A trace client that read nothing was
    found out only once the socket's buffer (~200 KiB) was full: on a quiet system,
    its heartbeat of 14 bytes a second took many minutes to fill it, and four such
    clients held every place of MAX_TRACES, and their calls probes on every
    compartment (the fast lane's routes down), for the hour they asked for."""

    def __init__(self, now: float):
        self.level = 0
        self.since = now             # when the reader was last seen taking something

    def look(self, now: float, queued: int | None):
        """What is queued now, before any write of ours (None: cannot tell, as if
        taken)."""
        if queued is None or queued == 0 or queued < self.level:
            self.since = now
        if queued is not None:
            self.level = queued

    def wrote(self, queued: int | None):
        """What is queued right after a write of ours."""
        if queued is not None:
            self.level = queued

    def stalled(self, now: float, timeout: float) -> bool:
        return now - self.since >= timeout


class CallProbes:
    """The router's hook on calls: it opens a record when a call is delivered and
    closes it when the call ends, for calls from or to a watched compartment.
    Pure and bounded; `clock()` is nanoseconds on the engines' clock."""

    def __init__(self, clock):
        self.clock = clock
        self.watch: set = set()          # compartments with a calls probe
        # called with (compartment, on) when its calls probe comes or goes: the
        # router takes the fast lane's routes to and from it down (see Router.watch)
        self.on_watch = None
        self._open: dict = {}            # reply key -> record
        self._ids = 0
        self.done: list = []
        self.dropped = 0

    def __bool__(self):
        return bool(self.watch)

    def open(self, key, caller: str, grant: str, callee: str, method: str):
        if caller not in self.watch and callee not in self.watch:
            return
        if key in self._open:
            return
        if len(self._open) >= MAX_OPEN_CALLS:
            self.dropped += 1
            return
        self._ids += 1
        self._open[key] = {"kind": "call", "id": self._ids, "caller": caller,
                           "callee": callee, "grant": grant, "name": method,
                           "ts_ns": self.clock()}

    def resumed(self, key, caller: str, grant: str, callee: str, method: str):
        """A call that waited (on a promised capability, or for its compartment to
        start) goes on to `callee`: its record (opened when it was delivered, with
        the callee then known) names it, or is opened now if `callee` is watched
        (a call on a promise was "?" when delivered, seen by no probe on the side
        it reached)."""
        record = self._open.get(key)
        if record is not None:
            record["callee"] = callee
        else:
            self.open(key, caller, grant, callee, method)

    def close(self, key, outcome: str, reason: str | None = None):
        record = self._open.pop(key, None)
        if record is None:
            return
        record["dur_ns"] = self.clock() - record["ts_ns"]
        record["outcome"] = outcome
        if reason:
            record["reason"] = reason[:200]
        if len(self.done) >= MAX_CALL_EVENTS:
            self.dropped += 1
            return
        self.done.append(record)

    def take(self) -> tuple[list, int]:
        done, self.done = self.done, []
        dropped, self.dropped = self.dropped, 0
        return done, dropped


def callee_of(cap) -> str:
    """Who a call on `cap` reaches: a compartment, "external", or "host:KIND"; "?"
    while that is a promised capability whose answer has not come (a call on it
    is told again where it went when it goes on: CallProbes.resumed)."""
    from .caps import Host, Promised, Proxy, Remote, Wrapped
    for _ in range(1000):       # a promise that resolves to itself: the router fails it
        if isinstance(cap, Wrapped):
            cap = cap.target
        elif isinstance(cap, Promised) and cap.target is not None:
            # what a promised capability (receiverAnswer) resolved to: named "?",
            # its callee's calls probe never saw a call on it
            cap = cap.target
        else:
            break
    if isinstance(cap, Proxy):
        return cap.compartment
    if isinstance(cap, Remote):
        return cap.peer.name
    if isinstance(cap, Host):
        return f"host:{cap.kind}"
    return "?"


class Registry:
    """Every probe of a running system, and the sinks reading their events."""

    def __init__(self, clock, instrumented: dict | None = None):
        self.clock = clock
        self.calls = CallProbes(clock)
        self.instrumented = dict(instrumented or {})   # compartment -> points compiled in
        self.probes: dict[str, dict[str, Probe]] = {}
        self.sites: dict[str, Sites | None] = {}        # from the current engine
        self.subscribers: list[Subscriber] = []
        self.hostcalls_on: set = set()
        self.pushes: dict[str, int] = {}     # compartment -> flag changes sent to its engines
        self._site_maps: dict = {}           # compartment -> (probes' key, site -> probes, probes)
        self._labels: dict = {}              # compartment -> (its Sites, function -> row)
        # compartment -> (n, engine pid) of its engine now: its nth since the system
        # began (restarted).  Every event a sink gets names it (`incarnation`,
        # `engine_pid`): a trace across a restart mixed two engines' events in one
        # track, and the functions the killed engine was in stayed open in it for
        # good, the new engine's nested inside them (trace.chrome)
        self.incarnations: dict[str, tuple[int, int | None]] = {}

    # ------------------------------------------------------------ probes

    def add(self, s: ProbeSpec, sites: Sites | None = None, selected=None) -> Probe:
        """Add probe `s`; for an in-module point `sites` is the engine's table
        (`selected`: its sites that `s` covers, if already found with `select`)."""
        mine = self.probes.setdefault(s.compartment, {})
        if s.name in mine:
            raise ProbeError(f"{s.compartment} has a probe named {s.name} already "
                             f"(remove it first)")
        if len(mine) >= MAX_PROBES:
            raise ProbeError(f"{s.compartment} has {MAX_PROBES} probes already")
        probe = Probe(s)
        probe.since = self.clock()
        if s.point in IN_MODULE:
            if s.point not in self.instrumented.get(s.compartment, ()) or sites is None:
                raise ProbeError(
                    f"{s.compartment} was not loaded with {s.point} probe sites: add "
                    f"\"{s.point}\" to instrument = [...] under [compartments."
                    f"{s.compartment}] in the system file and restart it (compiled-in sites "
                    f"cost nothing while off, see docs/instrumentation.md)")
            probe.sites = selected if selected is not None else self.select(sites, s)
            if not probe.sites:
                raise ProbeError(f"no function of {s.compartment} matches "
                                 f"{', '.join(s.functions)}")
        mine[s.name] = probe
        self._changed(s.compartment)
        return probe

    def remove(self, compartment: str, name: str) -> Probe:
        probe = self.probes.get(compartment, {}).pop(name, None)
        if probe is None:
            names = ", ".join(self.probes.get(compartment, {})) or "none"
            raise ProbeError(f"{compartment} has no probe named {name!r} (probes: {names})")
        probe.gone = "removed"
        self._changed(compartment)
        return probe

    def restarted(self, compartment: str, pid: int | None = None) -> list[ProbeSpec]:
        """Its engine was replaced (or started: `pid`, the new engine's): probes added
        at run time are gone; the declared ones (returned) must be added again on the
        new engine.  The calls that ended before it (the one that crashed the old
        engine among them) are the old probes' events: taken first, they were counted
        by none (the declared ones come back counting from now) and reached no sink;
        they name the old incarnation, what comes from here the new one."""
        self.take_calls()
        n = self.incarnations.get(compartment, (0, None))[0]
        self.incarnations[compartment] = (n + 1, pid)
        self.sites.pop(compartment, None)
        self._labels.pop(compartment, None)
        mine = self.probes.pop(compartment, {})
        for p in mine.values():
            p.gone = "restart"
        self._changed(compartment)
        return [p.spec for p in mine.values() if p.spec.declared]

    def _changed(self, compartment: str):
        self._site_maps.pop(compartment, None)
        mine = self.probes.get(compartment, {}).values()
        was = compartment in self.calls.watch
        if any(p.spec.point == "calls" for p in mine):
            self.calls.watch.add(compartment)
        else:
            self.calls.watch.discard(compartment)
            if not self.calls.watch:
                self.calls._open.clear()
        now = compartment in self.calls.watch
        if now != was and self.calls.on_watch is not None:
            self.calls.on_watch(compartment, now)
        if any(p.spec.point == "hostcalls" for p in mine):
            self.hostcalls_on.add(compartment)
        else:
            self.hostcalls_on.discard(compartment)

    @staticmethod
    def select(sites: Sites, s: ProbeSpec) -> tuple:
        kind = KINDS.index({"functions": "function", "blocks": "block",
                            "stores": "store"}[s.point])
        chosen = set()
        indices = {int(p[1:]) for p in s.functions if p.startswith("#")}
        patterns = [re.compile(fnmatch.translate(p)) for p in s.functions
                    if not p.startswith("#")]
        for f in set(sites.functions):
            if not s.functions or f in indices or any(
                    p.match(sites.name(f)) for p in patterns):
                chosen.add(f)
        return tuple(i for i, (k, f) in enumerate(zip(sites.kinds, sites.functions))
                     if k == kind and f in chosen)

    def flags(self, compartment: str) -> tuple[bytes, bool]:
        """(flag byte per site, host calls timed) the compartment's engine must have."""
        sites = self.sites.get(compartment)
        n = len(sites) if sites else 0
        # each probe's sites as a number with byte `site` set to 1 (made once a probe):
        # set site by site at every push, 64 probes on a module of 500,000 sites took
        # 1.6 s of the event loop at each add or remove
        flags = 0
        for p in self.probes.get(compartment, {}).values():
            bit = COUNT | (EVENTS if p.spec.events else 0)
            flags |= p.site_mask(n) * bit          # each byte 0 or 1: no carry
        return flags.to_bytes(n, "little"), compartment in self.hostcalls_on

    def pushed(self, compartment: str) -> int:
        """The flags of `compartment` (`flags`) are being sent to its engine: the number
        of that change.  Each probe added since the last one comes on with it: its
        baseline is the first counters read by a collect sent after it (`counters`)."""
        seq = self.pushes[compartment] = self.pushes.get(compartment, 0) + 1
        for p in self.probes.get(compartment, {}).values():
            if p.on_after is None:
                p.on_after = seq
        return seq

    def engine_points(self, compartment: str) -> bool:
        """Whether its engine has anything on (events to collect)."""
        return any(p.spec.point in IN_MODULE + ("hostcalls",)
                   for p in self.probes.get(compartment, {}).values())

    def list(self, compartment: str) -> list[dict]:
        sites = self.sites.get(compartment)
        return [p.summary(sites) for p in self.probes.get(compartment, {}).values()]

    # ------------------------------------------------------------ events in

    def counters(self, compartment: str, data: bytes, sent_after: int = 0):
        """The engine's counters (8 bytes a site), read by a collect sent when
        `sent_after` flag changes had been sent (`pushed`).  The engine serves its
        supervisor in order, so those changes were applied when it read them: a probe
        that came on with one of them takes these counters as its baseline (what
        earlier probes on the same sites counted is not its).  A collect sent before
        its flags (one in flight when it was added, or when its change had to wait
        for a busy guest) is no baseline: counted from it, the new probe would show
        the hits of every probe before it."""
        sites = self.sites.get(compartment)
        if sites is None or len(data) != 8 * len(sites):
            return
        values = struct.unpack(f"<{len(sites)}q", data)
        # one tuple for every probe, read by site when a probe is listed: copied per
        # site of each probe, a collect (every POLL, in the event loop) of a module
        # of 500,000 sites with 64 probes took seconds, again and again
        for p in self.probes.get(compartment, {}).values():
            if not p.sites:
                continue
            if p.baseline is None and p.on_after is not None and sent_after >= p.on_after:
                p.baseline = values
            p.counters = values

    def _by_site(self, compartment: str, mine: list) -> dict:
        """site -> the probes of `compartment` on it, made again only when its probes
        (or their sites) are not those it was made of: made for each slice of events
        (and each collect), it walked every site of every probe, in the event loop,
        at every poll (0.36 s a slice for 8 probes on a module of 500,000 sites)."""
        key = tuple((id(p), id(p.sites)) for p in mine)
        cached = self._site_maps.get(compartment)
        if cached is not None and cached[0] == key:
            return cached[1]
        by_site: dict = {}
        for p in mine:
            for s in p.sites:
                by_site.setdefault(s, []).append(p)
        # the probes and their sites kept with it: no id in `key` is another's meanwhile
        self._site_maps[compartment] = (key, by_site, mine, [p.sites for p in mine])
        return by_site

    def _label(self, compartment: str, sites: Sites | None):
        """`_labels` of the compartment's current sites, each function's found once:
        its events and counts named as `probe list`'s coverage rows name it.  By
        name alone, a guest's function named '#7' was counted, and traced, as
        function 7, and two static functions of one name as one."""
        if sites is None:
            return None
        cached = self._labels.get(compartment)
        if cached is None or cached[0] is not sites:
            cached = (sites, functools.lru_cache(maxsize=None)(_labels(sites)))
            self._labels[compartment] = cached
        return cached[1]

    def engine_events(self, compartment: str, data: bytes, dropped: int = 0,
                      until: int | None = None):
        """Events an engine recorded (probing.EVENT records); anything malformed in
        them is skipped (the engine is not trusted).  A record is a probe's only if
        timed from when the probe came (its `since`, as a call) up to `until` (when
        the collect that brought it was answered): a hit recorded for an older
        probe on its site, or a host call begun, before it came was counted as its
        own and sent as its event; and a hostile engine's record timed at 0 (or
        negative, or past its collect) set a trace's time origin (or end), putting
        every other compartment's events days or centuries from it."""
        sites = self.sites.get(compartment)
        mine = list(self.probes.get(compartment, {}).values())
        if dropped:
            for p in mine:
                if p.spec.events or p.spec.point == "hostcalls":
                    p.dropped += dropped
        if len(data) % EVENT.size:
            data = data[:len(data) - len(data) % EVENT.size]
        if not data:
            return
        by_site = self._by_site(compartment, mine)
        label = self._label(compartment, sites)
        hostcall_probes = [p for p in mine if p.spec.point == "hostcalls"]
        for kind, site, t, a, b in EVENT.iter_unpack(data):
            if until is not None and t > until:
                continue
            if kind == HOSTCALL:
                if not 0 <= site < len(HOST_FUNCTIONS) or not hostcall_probes:
                    continue
                hps = [p for p in hostcall_probes if t >= p.since]
                if not hps:
                    continue
                name = HOST_FUNCTIONS[site]
                ev = {"kind": "hostcall", "compartment": compartment, "name": name,
                      "ts_ns": t, "dur_ns": max(a, 0), "result": b}
                # failed: a WASI import's errno (any but 0; a wsuper one's are negative),
                # or a trap (probing.TRAPPED); every WASI failure was counted a success
                ok = b == 0 if site >= WASI_FIRST else b >= 0
                for p in hps:
                    p.count(name, max(a, 0), ok=ok)
                # an event only of the probes that record events (--events): one that
                # counts gave every sink (an analysis granted a Probe on this
                # compartment) each host call the guest made, its result and duration
                recording = [p.spec.name for p in hps if p.spec.events]
                if recording:
                    self._fan(ev, recording)
                continue
            if sites is None or not 0 <= site < len(sites):
                continue
            probes = [p for p in by_site.get(site, ()) if t >= p.since]
            if not probes:
                continue
            function = sites.functions[site]
            name = label(function)
            if kind in (ENTER, EXIT):
                ev = {"kind": "enter" if kind == ENTER else "exit",
                      "compartment": compartment, "name": name, "function": function,
                      "ts_ns": t}
                if kind == EXIT and b == 1:
                    ev["unwound"] = True
                if kind == ENTER:
                    for p in probes:
                        p.count(name)
            elif kind == BLOCK:
                ev = {"kind": "block", "compartment": compartment, "name": name,
                      "function": function, "site": site, "ts_ns": t}
                for p in probes:
                    p.count(name)
            elif kind == STORE:
                # a bulk write (memory.fill, memory.copy, memory.init) is as long as
                # its length, up to 4 GiB - 1 (the engine's module says so at most);
                # a store of more than 16 bytes was taken for a malformed event and
                # dropped, so memset and memcpy never reached a `stores` probe
                if not 0 < b < 1 << 32:
                    continue
                # an address is unsigned (memory64's go up to 2^64 - 1), the record's
                # field signed: one at 2^63 or past was told as negative (and as
                # address 0 to an analysis: prober)
                a &= (1 << 64) - 1
                ev = {"kind": "store", "compartment": compartment, "name": name,
                      "function": function, "address": a, "size": b, "ts_ns": t}
                for p in probes:
                    p.count(name)
                    p.bytes += b
                    p.sizes[_size_key(b)] += 1
                    p.lowest = a if p.lowest is None else min(p.lowest, a)
                    p.highest = a + b if p.highest is None else max(p.highest, a + b)
            else:
                continue
            # an event only of the probes on the site that record events, as a host
            # call: the engine records them while an --events probe's flags are on,
            # and ones collected after it went (or while its removal waited for a
            # busy guest) were sent to every sink as a counts-only probe's
            recording = [p.spec.name for p in probes if p.spec.events]
            if recording:
                self._fan(ev, recording)

    def take_calls(self):
        """Move the router's finished call records into the probes and the sinks."""
        done, dropped = self.calls.take()
        if dropped:
            for c in self.calls.watch:
                for p in self.probes.get(c, {}).values():
                    if p.spec.point == "calls":
                        p.dropped += dropped
        for ev in done:
            # a call is an event of each side that has a calls probe which saw it,
            # and of no other side: fanned out as an event of both, an analysis
            # granted a Probe on a side without one read the other side's calls, its
            # grants' names, failure reasons and probe names
            sides: dict = {}
            for c in dict.fromkeys((ev["caller"], ev["callee"])):
                for p in self.probes.get(c, {}).values():
                    # a call begun before the probe came is not its own: one that had
                    # ended (or been failed by a restart) before the records were
                    # taken was counted by a probe added after it, on the new engine
                    if p.spec.point == "calls" and ev["ts_ns"] >= p.since:
                        direction = "out" if c == ev["caller"] else "in"
                        peer = ev["callee"] if direction == "out" else ev["caller"]
                        p.count(f"{direction} {peer} {ev['name']}", ev["dur_ns"],
                                ok=ev["outcome"] == "returned")
                        sides.setdefault(c, []).append(p.spec.name)
            for sub in self.subscribers:
                # once per sink, with the probes of the sides it watches
                seen = [c for c in sides if sub.wants(c)]
                if not seen:
                    continue
                sub.put(self._stamp({**ev, "compartment": seen[0],
                                     "probes": [n for c in seen for n in sides[c]]}))
                if sub.waiters:
                    sub.wake()

    def _stamp(self, ev: dict) -> dict:
        """`ev` naming the incarnation of its compartment's engine it came from."""
        got = self.incarnations.get(ev["compartment"])
        if got is not None:
            ev["incarnation"], ev["engine_pid"] = got
        return ev

    def _fan(self, ev: dict, probe_names: list):
        ev["probes"] = probe_names
        self._stamp(ev)
        for sub in self.subscribers:
            if sub.wants(ev["compartment"]):
                sub.put(ev)
                if sub.waiters:
                    sub.wake()

    def subscribe(self, sub: Subscriber) -> Subscriber:
        self.subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscriber):
        if sub in self.subscribers:
            self.subscribers.remove(sub)


def parse_sites(text: str, limit: int = 8 << 20) -> Sites | None:
    """An engine's answer to Engine.describe, checked (the engine is not trusted)."""
    import json
    if not text:
        return None
    if len(text) > limit:
        raise ProbeError("the engine described more probe sites than allowed")
    try:
        sites = Sites.from_json(json.loads(text))
    except Exception as e:  # noqa: BLE001 - whatever an engine's JSON makes raise (nesting:
        # RecursionError) is a malformed answer
        raise ProbeError(f"the engine's probe sites are malformed: "
                         f"{type(e).__name__}: {str(e)[:200]}") from None
    if len(sites.kinds) != len(sites.functions) or any(k not in (0, 1, 2) for k in sites.kinds) \
            or not all(isinstance(f, int) and f >= 0 for f in sites.functions) \
            or not all(isinstance(v, str) for v in sites.names.values()):
        raise ProbeError("the engine's probe sites are malformed")
    return attrs.evolve(sites, names={k: v[:200] for k, v in list(sites.names.items())[:1 << 20]})
