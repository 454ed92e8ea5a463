"""The reference monitor's core: c-lists, translation and delivery (pure).

Bytes in, effects out.  `Router.receive(peer, data)` feeds one connection and
returns what the runtime must do (effects.py): send bytes, serve a call on a
host object, note that a compartment started or exited.  No trio, no
sockets, no files, no clock of its own: the runtime (runtime.py) performs
the effects, serves host calls (hostcaps.py) and reports back; the unit tests
drive this class directly.

Every call from a peer names a target in *that peer's* export table (its
c-list); the router resolves it to a capability object (caps.py), lets every
membrane it crosses admit it (membrane.py), and delivers it:
  Remote   an object hosted by a peer: forward the call to that peer
  Proxy    a compartment's main object: forward it to the compartment's engine,
           wait while it starts, fail once it is gone
  Host     an object the supervisor serves: a HostCall effect (the gateway of
           the external endpoint is answered here)
Capabilities in params and results are translated from the sender's tables to
the receiver's; content bytes are spliced, never interpreted.

Fail closed: nothing a peer sends can raise out of an entry point.  A peer
that breaks the protocol, or whose message trips an error in this code, gets
an Abort and is cut off; a call with bad parameters fails alone; nobody else
notices.  The engine control protocol (start, run) is in control.py.
"""
from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Iterable

import attrs

from capnp_schemas import hosted, protocol, wire
from capnp_schemas.payloads import DecodeError, build, read
from capnp_schemas.protocol import Content, RemoteRef
from capnp_schemas.text import printable
from capnp_schemas.text import bounded as _bounded, first_line as _first_line, listed
from compartments import abi
from compartments.limits import Limits

from . import control, effects as fx
from .caps import (Call, CallError, Cap, Denial, Host, Promised, Proxy, Remote, Wrapped,
                   describe)
from .membrane import AuditTrail, Membrane, Names
from .probes import callee_of

#: Header words a message may carry on top of its content (cap table, call header).
HEADER_WORDS = 8192
#: Calls to a peer fail ("overloaded") while this many bytes wait to be written to it.
QUEUE_SOFT_FACTOR = 2
#: Bytes past a peer's message_size that the segments of params or results may have
#: and still be measured as what they are (content_bytes): the header of the message
#: they came in (its Call or Return, cap table: an engine puts it after the content,
#: in the same segment), with room in HEADER_WORDS for the header they go on with.
HEADER_SLACK = HEADER_WORDS * 8 // 2


def content_bytes(content: Content, limit: int) -> int:
    """The bytes of params or results as message_size counts them: their root
    pointer and every object they reach, laid out in one segment (what the guest
    that sent them framed, but for its 8-byte segment table, and what the guest
    that gets them reads).  Segments of at most `limit` bytes are taken for that
    at once; segments longer than `limit` + HEADER_SLACK are more than the
    receiver's framing takes with a header of its own, whatever they hold; in
    between, the content is measured (the native copy, in as many segments as it
    lies in, bounded by `limit`: never Python's, whose walk of a hostile megabyte
    would hold this loop; without the native module, the segments' measure).
    The segments were measured:
    they hold the message's header too, and params a guest may send (1016 bytes
    at message_size = "1KiB") were refused as 1112 to a peer of the same
    message_size (an outside review, reviewer 204)."""
    size = content.size()
    measure = getattr(wire._native, "copy_segments", None)     # (a stale build has none)
    if size <= limit or size > limit + HEADER_SLACK or measure is None or not content.loc:
        return size
    # in as many segments as it lies in: an external client's pycapnp (Cap'n Proto's
    # C++) puts params or results too large for the segment of the message's header
    # in a segment of their own, reached by a far pointer from their struct beside
    # the header; measured only in one segment, 65,520 bytes of params from `wsuper
    # call` were refused as 65,624 at message_size = "64KiB" (an outside review,
    # reviewer 207)
    copied = measure(content.segments, content.loc[0], content.loc[1], limit // 8 + 1)
    # refused: more than `limit` (or malformed: the receiver's to say), as measured
    return len(copied) - 8 if isinstance(copied, bytes) else size


#: Bytes of the calls a peer has pipelined on answers not yet returned (each holds
#: its whole message until then): at least this much, and twice its message_size.
#: This much of each peer's is its own: other peers' calls cannot take it.
PIPELINED_PEER_BYTES = 1 << 20
#: ... and what peers hold beyond their own PIPELINED_PEER_BYTES, all together: a
#: shared pool, so that a few connections with a large message_size cannot leave
#: the others without room for a pipelined call of their own.
PIPELINED_TOTAL_BYTES = 64 << 20

#: Calls forwarded for external clients that are gone, cancelled (Finish sent) and
#: not answered yet by their callees, all together: past this many times the
#: external `in_flight`, new calls from external clients fail "overloaded".  A
#: client cannot multiply its in_flight by reconnecting; one that crashed with its
#: calls in flight does not stop the others.
ORPHANS_PER_IN_FLIGHT = 2

#: Calls to one peer that the supervisor cancelled there (Finish: past call_time, or
#: their caller gave them up or went) and that it has not returned yet: past this
#: many, new calls to it fail "overloaded" until it answers some.  Each stays on the
#: books (its question, and on the lane its reserved id) until its Return comes, so
#: a peer that reads its calls and never answers them grew the supervisor for every
#: call_time its callers spent on it (an outside review, r269).  An engine answers a
#: cancelled call at once, or within its call_time once it runs.
OVERDUE_LIMIT = 1024


def overdue_refusal(limit: int, compartments: int, total: int, pool, mine: int):
    """Whether a caller whose share is `pool` (_pool: every external client's
    together, one compartment's, or None) may call a peer at which `total` calls
    cancelled there are not answered yet, `mine` of them its pool's (pure).

    The bound of `limit` is the callee's, shared by its callers: one for all of
    them, a local client that sent a busy compartment 1,024 calls and cancelled
    them (16 connections of 64) had every other caller's calls to it refused,
    compartments' too, for as long as its one long call ran (r276).  So whoever
    fills it is the one refused: external clients together at most half of it;
    each compartment always its own `overdue_own(limit, compartments)`, and beyond
    that only while all of them together are under `limit` (so a callee holds at
    most twice `limit`, and the calls in flight: external clients half of it, the
    compartments' own parts half, and what went beyond them while under it).
    None: allowed; else ("external", their limit) or ("callee", its own share)."""
    if pool is not None and pool[0] == "external":
        half = max(1, limit // 2)
        return None if mine < half else ("external", half)
    own = overdue_own(limit, compartments) if pool is not None else 0
    return None if total < limit or mine < own else ("callee", own)


def overdue_own(limit: int, compartments: int) -> int:
    """What of a callee's overdue bound each compartment calling it has to itself:
    an even part of the half external clients cannot take, at least one (pure)."""
    return max(1, limit // (2 * max(1, compartments)))


#: Resolved promises a call may pass on its way to its target (a promise can
#: resolve to a capability that leads back to it; membranes alone cannot loop).
MAX_HOPS = 64


def _broken_promise(reason: str) -> str:
    """What a call on a capability promised by a call that failed (or whose
    result holds none there) is told, whenever that answer came."""
    return f"capability promised by a failed call: {reason}"


def pipelined_limit(limits: Limits) -> int:
    """Bytes of pipelined calls one peer may have waiting on unreturned answers."""
    return max(2 * limits.message_size, PIPELINED_PEER_BYTES)


def pooled(pipelined: int) -> int:
    """What of a peer's pipelined bytes comes from the shared pool: all beyond the
    PIPELINED_PEER_BYTES every peer has to itself."""
    return max(0, pipelined - PIPELINED_PEER_BYTES)


def queue_soft_limit(limits: Limits) -> int:
    """Bytes waiting to be written to a peer beyond which calls to it are refused
    and, for an external client, the supervisor stops reading from it
    (backpressure; an engine, which writes blocking, is read on)."""
    return max(QUEUE_SOFT_FACTOR * limits.message_size, 1 << 20)


def queue_hard_limit(limits: Limits) -> int:
    """Bytes waiting for a peer beyond which it is cut off: it does not read."""
    return 4 * queue_soft_limit(limits) + (16 << 20)


def external_queue_pool(limits: Limits) -> int:
    """Bytes that may wait for external clients beyond each one's own soft bound, all
    of them together (their `limits`): twice what one of them may hold there, so
    that one local client's many connections cannot each hold their hard bound
    (max_connections x 80 MiB at the default message_size)."""
    return 2 * (queue_hard_limit(limits) - queue_soft_limit(limits))


#: Bytes of results kept for pipelining (answers returned with capabilities, not
#: finished yet: protocol.MAX_KEPT_BYTES a connection) each connection has to
#: itself; what connections hold beyond it comes from one pool for each kind of
#: peer (engines, external clients), twice what one of them may hold there.  Each
#: was bounded alone: N taken-over compartments that called a colluding one
#: returning 4 MiB with a capability, and never sent Finish, made the supervisor
#: hold N x 60 MiB (4: RSS 47 to 307 MB), and max_connections clients up to 32 x
#: 64 MiB by the bounds' arithmetic (r258).
KEPT_OWN_BYTES = 8 << 20
KEPT_POOL_BYTES = 2 * (protocol.MAX_KEPT_BYTES - KEPT_OWN_BYTES)


def calls_past_soft(limits: Limits) -> int:
    """The most that calls to a peer may add to what waits for it past its soft bound:
    calls go on up to twice it (each caller a quarter there, `_not_reading`), and the
    last one admitted below that may be a whole message.  Bytes its callers sent,
    bounded and refused past that where they were admitted, not bytes it left unread
    of its own making: no peer's share of its kind's pool (`Router.forwarded_bytes`,
    runtime._QueuePool).  Counted as the peer's, a few callers filling that room in
    eight compartments busy in a long call (8 x 20 MiB, past the engines' 128 MiB
    pool) had an honest one cut off "it does not read its messages" (r261)."""
    return queue_soft_limit(limits) + limits.message_size


def engine_queue_pool(limits: Iterable[Limits]) -> int:
    """Bytes that may wait for compartments' engines beyond each one's own soft bound,
    all of them together (`limits`: every compartment's): twice the most one of them
    may hold there, as for external clients.  Each engine was bounded alone, by its
    hard bound: N compartments whose engines call as fast as they can and read
    nothing (taken over, or a plugin that stopped reading) held N x 80 MiB of the
    supervisor's memory, charged to no compartment (r258).  One engine can still
    reach its own hard bound; an honest one meets neither, as calls to an engine past
    its soft bound are refused ("overloaded")."""
    return 2 * max((queue_hard_limit(lim) - queue_soft_limit(lim) for lim in limits),
                   default=queue_hard_limit(Limits()) - queue_soft_limit(Limits()))


def pool_shed(beyond: int, held: Iterable[tuple[int, object]], pool: int) -> list | None:
    """Whom to cut off so that a peer may have `beyond` bytes waiting for it past its
    own soft bound, out of a pool of `pool` bytes the others (`held`: (their bytes
    past their own, key)) share with it: [] if it fits as it is; else the keys of
    those holding the most, biggest first, as many as it takes, each holding more
    than `beyond`; None if that is not enough (the writer would hold the most: it
    is the one refused).  Cutting off the writer always (as it was) let peers that
    filled the pool and then stopped keep it, and the next peer with a little
    waiting, however briefly, was cut off instead (an outside review, reviewer
    206).  Pure: the runtime measures the queues and cuts off whom this names."""
    if beyond <= 0:
        return []
    holders = [(b, key) for b, key in held if b > 0]
    total = beyond + sum(b for b, _ in holders)
    if total <= pool:
        return []
    holders.sort(key=lambda h: h[0], reverse=True)
    shed = []
    for b, key in holders:
        if total <= pool or b <= beyond:
            break
        shed.append(key)
        total -= b
    return shed if total <= pool else None


class UnknownGrant(KeyError):
    """`revoke` of a label that names no revocable grant: the operator's error (a
    KeyError of a fault inside `revoke` is not, and is not answered as one)."""


class Peer:
    """One connection: an engine (a compartment) or an external client."""

    def __init__(self, pid: int, name: str, kind: str, limits: Limits):
        self.id = pid
        self.name = name
        self.kind = kind                 # "engine" | "external"
        self.limits = limits
        self.laned = False               # its socket is the fast lane's (fastlane.py)
        self.pipelined = 0               # bytes of its calls waiting on unreturned answers
        #: bytes of results it keeps beyond KEPT_OWN_BYTES counted in the router's
        #: bound of its kind (Router._kept_upper)
        self.kept_counted = 0
        #: when it last did useful work through the router (router.clock): a call or
        #: bootstrap it made, a return it gave or got; Release, Finish and the like
        #: are not (the runtime evicts idle external connections by it)
        self.useful = 0.0
        self.conn = protocol.Connection(
            name, max_message_words=(limits.message_size >> 3) + HEADER_WORDS)
        self.remotes: dict[int, Remote] = {}
        #: answer id -> its own capabilities we returned to it in that answer: held
        #: until its Finish, since it may pipeline on them until then (the
        #: answer's result names them by import id only)
        self.kept: dict[int, list] = {}
        #: capabilities the router holds for it in the results of its tail calls
        #: (sendResultsTo.yourself) that it has neither taken nor finished yet
        #: (Router._tails): counted against its `handles` with its c-list
        self.tail_caps = 0
        self.alive = True
        self.control: Remote | None = None
        #: entries of its c-list (our exports to it) that another peer's calls
        #: passed it, until it releases them: id(object) -> that caller's id, and
        #: how many each caller has there (Router._check_handles: one caller may
        #: not fill the table all callers and the compartment itself share)
        self.passed: dict[int, int] = {}
        self.passed_by: dict[int, int] = {}
        #: the callers of `passed_by` that are gone since -> their pool (_pool: the
        #: external clients, or a compartment's instances), and how many entries
        #: each pool has there: a pool counts to the share of every caller in it
        #: (a client connecting again, a compartment restarted, has no share anew)
        self.gone_by: dict[int, tuple] = {}
        self.passed_gone: dict[tuple, int] = {}

    def __repr__(self):
        return f"Peer({self.name})"


def _no_clock() -> float:
    return 0.0


class _Route:
    """A route the router installed in the fast lane: calls from `caller` on its
    export `export_id` (the capability `cap`) with `interface_id` go natively to
    `callee`'s import `import_id`, through `membranes` (none with a quota) and
    `proxy` (or none).  The fast lane hands it back with each call it gives up."""
    __slots__ = ("caller", "export_id", "cap", "callee", "import_id", "interface_id",
                 "membranes", "proxy", "desc")

    def __init__(self, caller, export_id, cap, callee, import_id, interface_id, membranes,
                 proxy):
        self.caller, self.export_id, self.cap = caller, export_id, cap
        self.callee, self.import_id, self.interface_id = callee, import_id, interface_id
        self.membranes, self.proxy, self.desc = membranes, proxy, describe(cap)


class _Waiting:
    """A call waiting in the router on a promised capability (`where`: a Promised)
    or on a compartment's start (a Proxy), in `where.queue` and in the deadline
    heap `_queued`.  `first`, `chain`: the capability it was made on and the
    membranes it crossed before it had to wait (it goes on from `where` with them).
    `call` is None once it left the queue (went on, failed, its caller went): the
    heap's entry then holds nothing of it."""
    __slots__ = ("call", "where", "first", "chain")

    def __init__(self, call, where, first, chain):
        self.call, self.where, self.first, self.chain = call, where, first, chain


@attrs.define
class _Outcome:
    """How a tail call ended, kept for the question the peer will answer with it:
    results (content and capabilities, which it holds) or an error."""
    content: object
    caps: tuple
    error: CallError | None
    #: how many of `caps` count against its peer's `handles` while it is kept
    held: int = 0


class _Pending(dict):
    """The router's questions, (peer id, question id) -> handler, that also keeps
    the bytes of the calls it forwarded (control.Forward with a size) per (callee
    id, caller id): what `_not_reading` asks of every call past a callee's soft
    bound.  It summed them over every question of the whole router each time, so
    that one client's calls refused there (each answered at once, so in_flight
    does not bound them) cost the supervisor's loop O(all calls in flight): 1,985
    calls open at a stuck compartment (31 connections x 64 in_flight) made each
    refused 40-byte call cost 4 times a plain one, 7,681 of them 24 times (an
    outside review).  It keeps too how many questions each peer has open
    (`at`: the peers serving a call of ours, `Router.serving`, which walked
    every question each time a client connected while the connections were all
    taken: another review).  Every change goes through here, so the sums cannot
    drift.  And which question forwards each caller's call (`of_reply`: (caller id,
    its answer id) -> key), so that the caller's Finish of a call it cancels
    reaches the callee without a walk of every question (_finished)."""

    def __init__(self):
        super().__init__()
        self.forwarded: dict[tuple, int] = {}      # (callee id, caller id) -> bytes
        self.forwarded_in: dict[int, int] = {}     # callee id -> bytes, all callers'
        self.at: dict[int, int] = {}               # peer id -> its questions here
        self.of_reply: dict[tuple, tuple] = {}     # (caller id, answer id) -> key

    def _count(self, key, handler, sign: int):
        if type(handler) is control.Forward:
            r = (handler.reply[0].id, handler.reply[1])
            if sign > 0:
                self.of_reply[r] = key
            elif self.of_reply.get(r) == key:
                del self.of_reply[r]
        if type(handler) is control.Forward and handler.size:
            k = (key[0], handler.reply[0].id)
            n = self.forwarded.get(k, 0) + sign * handler.size
            if n:
                self.forwarded[k] = n
            else:
                del self.forwarded[k]
            n = self.forwarded_in.get(key[0], 0) + sign * handler.size
            if n:
                self.forwarded_in[key[0]] = n
            else:
                del self.forwarded_in[key[0]]

    def _one_less(self, pid):
        n = self.at.pop(pid) - 1
        if n:
            self.at[pid] = n

    def __setitem__(self, key, handler):
        if key in self:
            self._count(key, dict.__getitem__(self, key), -1)
        else:
            self.at[key[0]] = self.at.get(key[0], 0) + 1
        dict.__setitem__(self, key, handler)
        self._count(key, handler, 1)

    def __delitem__(self, key):
        handler = dict.__getitem__(self, key)
        dict.__delitem__(self, key)
        self._one_less(key[0])
        self._count(key, handler, -1)

    _none = object()

    def pop(self, key, default=_none):
        if key not in self:
            if default is _Pending._none:
                raise KeyError(key)
            return default
        handler = dict.pop(self, key)
        self._one_less(key[0])
        self._count(key, handler, -1)
        return handler

    def _refuse(self, *_args, **_kw):
        raise TypeError("_Pending changes only by [key] = ..., del and pop")

    setdefault = update = popitem = clear = __ior__ = _refuse


@attrs.frozen
class _Gone:
    """A caller that is gone, to whose share what it passed still counts; `pool`:
    whose shares count it since (_pool)."""
    id: int
    pool: tuple | None = None

    @property
    def name(self) -> str:
        return f"a caller gone since (peer {self.id})"


def _pool(peer) -> tuple | None:
    """Whose share of a callee's c-list what a gone caller passed counts to
    (Router._check_handles): every external client's, or the later instances of
    the same compartment's; None for a caller that is neither."""
    if isinstance(peer, _Gone):
        return peer.pool
    kind = getattr(peer, "kind", None)
    if kind == "external":
        return ("external",)
    if kind == "engine":
        return ("compartment", peer.name)
    return None


def _tally(counts: dict, key, n: int) -> int:
    """counts[key] += n, the key gone once it is 0 (a count of what a peer holds,
    per caller or pool); the new count.  Taking from a count that is not there is
    a KeyError: the counts have drifted."""
    left = (counts[key] if n < 0 else counts.get(key, 0)) + n
    if left:
        counts[key] = left
    else:
        del counts[key]
    return left


def _pool_name(pool: tuple) -> str:
    return "external clients that are gone" if pool == ("external",) else \
        f"earlier instances of {pool[1]}"


class Router:
    def __init__(self, compartments: dict, external: tuple = (), limits: dict | None = None,
                 external_limits: Limits = Limits(), clock=_no_clock, wall=_no_clock,
                 names: dict | None = None, audit: bool = False, backlog=None,
                 pipelined_total: int = PIPELINED_TOTAL_BYTES, orphans_limit: int | None = None,
                 revocable: tuple = (), extends: dict | None = None, sealed=(),
                 overdue_limit: int = OVERDUE_LIMIT):
        """`compartments`: name -> interface id of its main object (None: exports nothing).
        `limits`: name -> Limits.  `clock`: monotonic seconds (deadlines, quotas,
        durations); `wall`: seconds since the epoch (audit times).  `names`: interface
        id -> (name, {method id: name}).  `backlog(peer id)`: bytes waiting to be
        written to that peer (backpressure).  `pipelined_total`: bytes of calls
        pipelined on unreturned answers that all peers together may have waiting beyond
        the PIPELINED_PEER_BYTES each has to itself.  `orphans_limit`: calls of gone
        external clients to one compartment, cancelled and not answered yet, past
        which external calls to that compartment are refused (ORPHANS_PER_IN_FLIGHT
        times the external in_flight unless set).  `revocable`: the labels of the
        revocable grants ("compartment.grant"): each may be revoked before its holder
        first starts (its membrane is made then).  `extends`: interface id -> the ids
        of every interface it extends (preflight.Plan.extends): a compartment's main
        object is called with those too (an inherited method carries its declarer's
        id), and with no other.  `sealed`: the ids of the interfaces whose schema (with
        what they extend) has no capability anywhere in a method's params or
        results (authority.sealed): a main object of one takes none and answers
        none, from any caller (a cap table is the sender's, whatever the schema
        says; `wsuper check --reach` counts on this)."""
        self.limits = limits or {}
        self.external_limits = external_limits
        self.clock, self.wall = clock, wall
        self.names = Names(names)
        self.audit = AuditTrail(self.names, audit)
        self.ended = False               # end_audit: the system stops, no call is taken
        #: the stop's reason, once the system stops (the runtime sets it before it ends
        #: the engines): what ends the calls in flight of an engine lost from then on,
        #: which the stop ended, whether it was their callee or their caller
        self.stopping: str | None = None
        self.backlog = backlog or (lambda pid: 0)
        self.membranes: dict[str, Membrane] = {}      # grant label -> its membrane
        self.revocable = frozenset(revocable)
        self._revoked_early: set[str] = set()          # revoked before their membrane was made
        #: (expires_at, n, membrane) of each host grant with expires_after whose
        #: objects are not let go of yet: expire() lets go of them at its expiry
        self._host_expiries: list = []
        self._expiry_ids = itertools.count()
        self._through: dict[tuple, list] = {}          # reply key -> [(membrane, label)]
        # label -> the membranes (a grant's and its reverse) of a grant `wsuper revoke`
        # is revoking: no host job through them begins (host_call_live) while the
        # revocation waits for those begun before it (revoking)
        self._revoking: dict[str, tuple] = {}
        # reply key -> the membranes whose quotas (max_uses, calls_per_second) a call
        # spent and that has not reached its callee yet: it gets them back if it ends
        # before it does (_close_call), and keeps them spent once it has (_reached)
        self._spent: dict[tuple, list] = {}
        self._deadlines: list = []                     # heap: (deadline, peer id, question id)
        self._queued: list = []                        # heap: (deadline, n, _Waiting)
        self._waiting: dict[tuple, _Waiting] = {}     # reply key -> the call waiting
        self._later: collections.deque = collections.deque()   # _soon's work list
        self._draining = False
        self.peers: dict[int, Peer] = {}
        self.engines: dict[str, Peer] = {}
        sealed = frozenset(sealed)
        self.proxies = {name: Proxy(name, iid, (extends or {}).get(iid, ()), iid in sealed)
                        for name, iid in compartments.items() if iid is not None}
        # reply key -> what was called, of each call on a sealed main object
        self._sealed: dict = {}
        self.external = tuple(external)
        # what Gateway.get looks a name up in, and what its refusal names: made once
        # (a refusal joined every exported name, and each get scanned the tuple)
        self._exported = frozenset(self.external)
        self._exported_text = listed(self.external) or "none"
        self._exported_list = None      # Gateway.list's answer, once built (_gateway)
        self.gateway = Host("gateway", "external", label="the gateway")
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._pending = _Pending()                     # (peer id, question id) -> handler
        self._pipelined: dict[tuple, list] = {}        # (peer id, answer id) -> [(transform, Call)]
        self.pipelined_total = pipelined_total
        self.pipelined_bytes = 0                       # what every peer's waiting calls hold
        self.pipelined_pooled = 0                      # ... beyond each one's own share
        self.pipelined_external = 0                    # ... of it, external clients'
        # (peer id, answer id) -> {Promised: None}, in the order they came: a dict, not
        # a list, so that letting go of one is not a search among all the others (a
        # peer could keep thousands waiting on one answer, and make each of its calls
        # of 256 such capabilities compare millions)
        self._promises: dict[tuple, dict] = {}
        # Tail calls (sendResultsTo.yourself), (peer id, answer id) -> either
        # (question id, handler) of the question the peer answered with it
        # (takeFromOtherQuestion) while the call runs (the handler stays in
        # _pending, under its deadline, and the question is finished only when
        # it is answered: its id cannot be reused meanwhile), or, once the call
        # ended first, its _Outcome, held until the peer takes it or finishes it
        self._tails: dict[tuple, object] = {}
        self._host_calls: dict[int, tuple] = {}        # token -> (Call, Host)
        self._host_of: dict[tuple, int] = {}           # reply key -> its host call's token
        # (callee id, question id) -> deadline, of calls forwarded for an external
        # client that is gone: cancelled (Finish sent), not answered yet (_cancel)
        self._orphans: dict[tuple, float] = {}
        self._orphans_at: dict[int, int] = {}          # callee id -> how many of them
        # of those, the ones a client still connected cancelled (Finish): caller id,
        # and how many each such caller has.  They count to its own in_flight, not to
        # orphans_limit, while it stays (_finished); to orphans_limit once it is gone
        self._cancelled_by: dict[tuple, int] = {}      # (callee id, question id) -> caller id
        self._cancelled_of: dict[int, int] = {}        # caller id -> how many of them
        self._orphan_bytes: dict[tuple, int] = {}      # their params' bytes (Python's)
        self._orphan_bytes_at: dict[int, int] = {}     # callee id -> their sum
        self.orphans_limit = orphans_limit if orphans_limit is not None \
            else ORPHANS_PER_IN_FLIGHT * external_limits.in_flight
        self.overdue_limit = overdue_limit
        self._compartment_count = len(compartments)
        self._overdue_floor = max(1, overdue_limit // 2)   # no share refuses below it
        # calls to a peer cancelled there (Finish) that it has not returned, per
        # callee id: question id -> whose share it counts to (_pool), and each
        # share's count (overdue_refusal; Connection.overdue is their total)
        self._overdue_by: dict[int, dict[int, tuple | None]] = {}
        self._overdue_of: dict[int, dict[tuple, int]] = {}
        self._orphans_full = False
        self.answered: dict[str, list] = {}            # compartment -> [served, failed]
        self._out: list = []
        self._sweeping: collections.deque | None = None   # sweep's work list, while it runs
        # bytes of calls in `_out` to each peer (id -> bytes): sent by the router, not
        # handed to the runtime yet, so not in `backlog` (call_peer counts them)
        self._unsent: dict[int, int] = {}
        #: peers answered past their own KEPT_OWN_BYTES of kept results: the pool of
        #: their kind is looked at once the entry point's work is done (_kept_shed)
        self._kept_over: list = []
        #: per kind of peer, at least what they all keep beyond their own (as
        #: runtime._QueuePool.upper): each answer past a peer's own adds its growth
        #: (Peer.kept_counted), Finish and a peer's end only take from the truth.
        #: Every peer is looked at only once an answer would take this past the
        #: pool: looked at for every answer past a peer's own, an abuser that never
        #: finished made each of its answers cost O(peers)
        self._kept_upper = {"engine": 0, "external": 0}
        self.native = None                             # the fast lane (fastlane.Lane), if any
        # the audit's room at the last native_tick(), and the records the router made
        # while it had none, each with the number of lane records that go before it
        # (_record): the lane's are drained only with room
        self._audit_room = True
        # how many more records the audit takes before it is full (native_tick's
        # `audit_left`; None: no bound): a drain takes at most that many of the lane's
        self._audit_left: int | None = None
        self._lane_records = 0                         # lane records drained so far
        self._held_records: list[tuple[int, dict]] = []
        self._routes: dict[tuple, _Route] = {}         # (caller id, export id) -> its route
        self._route_of: dict[tuple, int] = {}          # (caller id, id(cap)) -> export id
        # the keys of the routes to each (callee id, import id), and from or to each
        # peer id: releasing a capability, or losing a peer, takes its routes down
        # without walking every route (a client could make thousands, each release
        # then cost milliseconds)
        self._routes_to: dict[tuple, set] = {}
        self._routes_at: dict[int, set] = {}
        # Call probes (probes.CallProbes): calls from or to a compartment in
        # `call_watch` are recorded; while the set is empty this costs one test.
        self.call_watch: set = set()
        self.call_probes = None

    # ------------------------------------------------------------ entry points

    def add_engine(self, name: str, grants, hosts: dict | None = None) -> tuple[int, list]:
        """A new engine connection for compartment `name`; starts its bootstrap.

        `grants`: the compartment's policy.Grant list (allow-lists resolved to
        `methods`); `hosts`: grant name -> the host layer's object for host grants."""
        peer = self._new_peer(name, "engine", self.limits.get(name, Limits()))
        self.engines[name] = peer
        proxy = self.proxies.get(name)
        if proxy is not None:          # a (re)start: calls wait for it, then go to it
            proxy.target, proxy.error = None, None
        qid, data = peer.conn.send_bootstrap()
        self._pending[(peer.id, qid)] = control.Bootstrap(list(grants), dict(hosts or {}))
        self.emit(fx.Send(peer.id, data))
        return peer.id, self._flush()

    def lane_peer(self, pid: int):
        """Peer `pid`'s socket is the fast lane's: plain calls between such peers may
        be forwarded natively along routes this router installs."""
        from .fastlane import NativeSide
        peer = self.peers[pid]
        peer.laned = True
        peer.conn.native = NativeSide(self.native, pid, self,
                                      peer.limits.handles + protocol.MAX_CAPS_PER_MESSAGE)
        if peer.kind == "external" and self._orphans_full:
            peer.conn.native.router_ok(False)

    def add_external(self, label: str = "external") -> int:
        return self._new_peer(label, "external", self.external_limits).id

    def engine_call(self, name: str, method_id: int, content, handler) -> list:
        """Call the compartment's Engine (engine.capnp) method `method_id`; `handler`
        gets the answer (control.py's protocol: returned / lost)."""
        peer = self.engines.get(name)
        if peer is None or not peer.alive or peer.control is None:
            handler.lost(self, peer, "its engine is not running")
            return self._flush()
        return self._guarded(peer, lambda: self.call_peer(
            peer, peer.control.import_id, control.ENGINE_ID, method_id, content, (), handler))

    def run(self, name: str) -> list:
        """Run the compartment's program (Engine.run)."""
        peer = self.engines.get(name)
        if peer is None or not peer.alive or peer.control is None:
            self.emit(fx.Exited(name, None, "its engine is not running",
                                 peer.id if peer is not None else 0))
            return self._flush()
        return self._guarded(peer, lambda: self.call_peer(
            peer, peer.control.import_id, control.ENGINE_ID, control.RUN, protocol.EMPTY, (),
            control.Run()))

    def receive(self, pid: int, data: bytes) -> list:
        """Bytes from peer `pid`.  Total: whatever they hold, this returns effects."""
        peer = self.peers.get(pid)
        if peer is None or not peer.alive:
            return []
        return self._guarded(peer, self._receive, peer, data)

    def _receive(self, peer: Peer, data: bytes):
        for ev in peer.conn.receive_iter(data):
            self._event(peer, ev)
            if not peer.alive:
                break

    def host_calls_through(self, label: str) -> list[int]:
        """The tokens of the host calls under way through grant `label`'s membrane (or
        its reverse): what a revocation of it may have to wait for."""
        m = self.membranes.get(label)
        if m is None:
            return []
        return [token for key, token in self._host_of.items()
                if any(x is m or x is m.reverse for x, _method in self._through.get(key, ()))]

    def host_call_live(self, token: int) -> bool:
        """Whether host call `token` is still wanted: not failed meanwhile (revoked),
        its caller not gone and not cancelling it (Finish), no grant on its way being
        revoked.  A job that waited its turn checks this before it runs (from a worker
        thread: reads only)."""
        entry = self._host_calls.get(token)
        if entry is None or self.ended:   # the audit said it failed (end_audit): not run
            return False
        peer, answer_id = entry[0].reply
        return peer.alive and not peer.conn.gave_up(answer_id) \
            and self._expired_on_way(entry[0].reply) is None \
            and self._revoking_on_way(entry[0].reply) is None

    def revoking(self, label: str) -> list[int]:
        """`wsuper revoke` of grant `label` begins: from now no host job through it
        begins (host_call_live); returns the tokens of its host calls under way, whose
        jobs a worker thread may have begun (they cannot be stopped).  The runtime
        lets those end and be answered as they ended, and then revokes (`revoke`
        ends this): revoked first, a write the kernel had under way landed in the
        file while its call was failed "revoked while this call was in flight", the
        program told it had not happened and the audit saying the same."""
        m = self.membranes.get(label)
        if m is None or not m.revocable or m.revoked is not None:
            return []
        self._revoking[label] = (m, m.reverse)
        return self.host_calls_through(label)

    def not_revoking(self, label: str):
        """A revocation that `revoking` began was given up before `revoke` (its request
        cancelled: the system stopping): its grant's jobs may run again."""
        self._revoking.pop(label, None)

    def host_call_revoking(self, token: int) -> bool:
        """Whether host call `token` crossed a grant being revoked (`revoking`): its
        job was not run, and the call is left to the revocation, which fails it
        after its record (answered now, its denial came before "grant revoked")."""
        entry = self._host_calls.get(token)
        return entry is not None and self._revoking_on_way(entry[0].reply) is not None

    def host_call_open(self, token: int) -> bool:
        """Whether host call `token` is not answered yet."""
        return token in self._host_calls

    def _revoking_on_way(self, reply):
        """The label of a grant being revoked (`revoking`) that call `reply` crossed."""
        through = self._through.get(reply) if self._revoking else None
        if not through:
            return None
        for label, ms in list(self._revoking.items()):
            if any(x is m for x, _l in through for m in ms if m is not None):
                return label
        return None

    def host_call_expired(self, token: int) -> str | None:
        """Why host call `token` may not run any more because a grant it crossed has
        expired while it waited its turn (host_call_live said so), else None.  The
        runtime fails it with this (host_failed, type "denied"), as a new call would
        be denied: it was still run (an outside review, reviewer 184)."""
        entry = self._host_calls.get(token)
        if entry is None:
            return None
        m = self._expired_on_way(entry[0].reply)
        return f"{m.label} has expired (expires_after)" if m is not None else None

    def _expired_on_way(self, reply):
        """The first membrane the call `reply` crossed that has expired since it was
        admitted, or None (reads only: asked from worker threads too)."""
        through = self._through.get(reply)
        if through:
            now = self.clock()
            for m, _label in through:
                if m.expired(now):
                    return m
        return None

    def host_returned(self, token: int, content: Content, objects=()) -> list:
        """A host call ended well: `objects` are (kind, served) pairs for the
        capabilities in `content` (its cap table, in order)."""
        entry = self._host_calls.pop(token, None)
        if entry is None:
            return self._released_all(objects)
        call, host = entry
        self._host_of.pop(call.reply, None)
        caps = tuple(Host(kind, host.owner, served,
                          f"{host.label}>{self._method(call)}" if host.label else None)
                     for kind, served in objects) if objects else ()
        return self._guarded(call.reply[0], self._answer, call.reply, content, caps)

    def host_failed(self, token: int, reason: str, type: str = "failed") -> list:
        """A host call failed; `type` "denied": refused by a grant it crossed
        (host_call_expired), E_DENIED and shown as a denial, as when refused at once."""
        entry = self._host_calls.pop(token, None)
        if entry is None:
            return []
        call, _host = entry
        self._host_of.pop(call.reply, None)
        if type == "denied":
            error = Denial(reason, "failed")
            self.emit(fx.Denied(f"denied: {call.reply[0].name} -> {reason}",
                                call.reply[0].name))
        else:
            error = CallError(reason, type)
        return self._guarded(call.reply[0], lambda: self.fail(call.reply, error))

    def expire(self) -> list:
        """Fail forwarded calls older than their callee's call_time (call this often).
        Host grants that have expired (expires_after) let go of what the host serves
        for them, as a revocation does (_release_host_objects): no call goes through
        them any more, yet a directory grant's descriptors (and those of the files
        opened through it) stayed open, and a probe grant's queue took a copy of every
        event of the compartment it watches, as long as the holder lived (an outside
        review, reviewer 191)."""
        now = self.clock()
        while self._host_expiries and self._host_expiries[0][0] <= now:
            self._release_host_objects(heapq.heappop(self._host_expiries)[2])
        while self._deadlines and self._deadlines[0][0] <= now:
            _deadline, pid, qid = heapq.heappop(self._deadlines)
            handler = self._pending.get((pid, qid))
            peer = self.peers.get(pid)
            if not isinstance(handler, control.Forward) or peer is None \
                    or handler.deadline != _deadline:
                if handler is None and self._orphans.get((pid, qid)) == _deadline:
                    self._unorphan((pid, qid))       # cancelled, and not answered in time
                    self._orphans_changed()
                continue     # answered in time, the peer is gone, or the question id was
                #              reused by a later call (whose own deadline is in the heap)
            del self._pending[(pid, qid)]

            def timed_out(peer=peer, qid=qid, handler=handler):
                self.count(peer, False)
                self._finish_overdue(peer, qid, handler.reply[0])
                self.fail(handler.reply, CallError(
                    f"compartment {peer.name} did not answer within "
                    f"{peer.limits.call_time:g} s (limit call_time)", "overloaded"))
            self._guarded(peer, timed_out, flush=False)
        if len(self._deadlines) > 64 and len(self._deadlines) > 2 * len(self._pending):
            self._deadlines = [d for d in self._deadlines if (d[1], d[2]) in self._pending
                               or (d[1], d[2]) in self._orphans]
            heapq.heapify(self._deadlines)
        while self._queued and self._queued[0][0] <= now:
            w = heapq.heappop(self._queued)[2]
            if w.call is None:                           # went on, or failed, meanwhile
                continue
            where = w.where
            where.queue.remove(w)
            call = self._unwait(w)
            why = f"{describe(where)} did not resolve within " \
                  f"{call.reply[0].limits.call_time:g} s of this call" \
                if isinstance(where, Promised) else \
                f"compartment {where.compartment} did not start within " \
                f"{self.limits.get(where.compartment, Limits()).call_time:g} s of this call"
            self._guarded(call.reply[0], self._fail_waiting, call, why + " (limit call_time)",
                          flush=False)
        return self._flush()

    def _fail_waiting(self, call, reason, type="overloaded"):
        self.fail(call.reply, CallError(reason, type))
        self.sweep(call.caps)

    def count(self, peer: Peer, served: bool):
        """One call into `peer` ended: served (it returned results) or failed."""
        if peer.kind == "engine":
            self.answered.setdefault(peer.name, [0, 0])[0 if served else 1] += 1

    def forwarded_bytes(self, pid: int) -> int:
        """Bytes of the calls (params) forwarded to peer `pid` through the router and
        not answered yet, every caller's (runtime._QueuePool: calls_past_soft; read
        from the lane's worker too, in its turn)."""
        return self._pending.forwarded_in.get(pid, 0)

    def forwarded_to(self) -> dict:
        """peer id -> the calls forwarded to it and not yet answered, in one pass
        over the questions (status(..., forwarded=) for every compartment)."""
        out: dict[int, int] = {}
        for (pid, _q), h in self._pending.items():
            if isinstance(h, control.Forward):
                out[pid] = out.get(pid, 0) + 1
        return out

    def status(self, name: str, forwarded: dict | None = None) -> dict:
        """What the router knows of a compartment now (for `wsuper status`).
        `calls_to` counts the calls waiting for its start or restart too (on its
        proxy, each up to its call_time): they are calls to it, in flight, and a
        compartment starting or restarting said '0 in' however many waited.
        `forwarded`: forwarded_to(), taken once for a status of every compartment
        (each walked every question of the router: a status of a system of C
        compartments with P calls in flight cost the loop C x P, ~1 s at 1,000
        compartments with 64 calls each, for every `wsuper status`)."""
        served, failed = self.answered.get(name, (0, 0))
        proxy = self.proxies.get(name)
        waiting = len(proxy.queue) if proxy is not None else 0
        peer = self.engines.get(name)
        alive = peer is not None and peer.alive
        native_from = native_to = 0
        if alive and peer.laned:
            native_from, native_to, native_served = self.native.counts(peer.id)
            served += native_served
        return {"served": served, "failed": failed,
                "handles": len(peer.conn.exports) if alive else 0,
                "calls_from": peer.conn.unanswered + native_from if alive else 0,
                "calls_to": waiting + native_to + (0 if not alive else (
                    forwarded if forwarded is not None else self.forwarded_to()).get(
                        peer.id, 0))}

    def serving(self) -> set:
        """Ids of the peers serving a call of ours now: we wait for their answer (a
        compartment's call on a capability an external client hosts, not past its
        call_time).  Such a client is busy, whether or not it has a call of its
        own in flight: closing it fails the call it serves."""
        return set(self._pending.at)          # (kept as questions come and go: _Pending)

    def next_deadline(self) -> float | None:
        times = [h[0][0] for h in (self._deadlines, self._queued, self._host_expiries) if h]
        return min(times) if times else None

    def grant_ended(self, label: str) -> bool:
        """Whether grant `label` lets no call through any more, for good: revoked,
        or expired (expires_after).  What the host opens for a host grant is not
        opened again at its holder's restart then (Supervisor._open_grants)."""
        if self.revoked_already(label):
            return True
        m = self.membranes.get(label)
        return m is not None and self._expired(m)

    def _expired(self, m: Membrane) -> bool:
        return m.expired(self.clock())

    def revoked_already(self, label: str) -> bool:
        """Whether grant `label` is revoked already: `wsuper revoke` of it again changes
        nothing, and said "revoked" again, with a second audit record of a revocation
        at a time it did not happen (and the same line on the terminal twice)."""
        m = self.membranes.get(label)
        if m is None:
            return label in self._revoked_early
        return m.revocable and m.revoked is not None

    def revoke(self, label: str, event: dict | None = None) -> list:
        """Revoke grant `label` ("compartment.grant"): it, everything obtained through
        it, and every call in flight through any of them fail from now on.  A grant
        revoked already is left as it is (`revoked_already`).  `event`: the audit's
        record of the revocation (`wsuper revoke`'s "grant revoked"), written here,
        after the records of the calls that ended before it (the lane's among them)
        and before those of the calls it fails: written by the runtime, it came
        before records the failures drained from the lane into these effects
        (_record), and the audit said calls the lane had returned before the
        revocation returned after it (an outside review)."""
        self._revoking.pop(label, None)
        if self.revoked_already(label):
            return self._flush()
        m = self.membranes.get(label)
        if m is None and label in self.revocable:
            # its holder has not started yet (a system starting up, or a first start
            # that keeps failing): its membrane is made revoked (attenuate).  Refused
            # as "no revocable grant", the holder then started with it (an outside review)
            self._revoked_early.add(label)
            if event is not None and self.audit.enabled:
                self._record({**event, "time": self.wall()})
            self.emit(fx.Notice(f"revoked {label}"))
            return self._flush()
        if m is None or not m.revocable:
            revocable = sorted(self.revocable | {p for p, x in self.membranes.items()
                                                 if x.revocable})
            raise UnknownGrant(f"no revocable grant {label!r} "
                           f"(revocable: {', '.join(revocable) or 'none'})")
        # the fast lane first: once this returns, no call goes natively through m,
        # and its calls in flight are the router's (so that they fail below)
        self._unroute(lambda r: m in r.membranes or m.reverse in r.membranes,
                      take_calls=True)       # its reverse too: the calls back through it
        if event is not None and self.audit.enabled:
            # once no call goes natively through it: what the lane returned until now
            # came before it, and is recorded first (_record)
            self._record({**event, "time": self.wall()})
        keys = m.revoke()
        self._release_host_objects(m)
        if keys or m.revoked:
            # and at their callees: a call forwarded but not run yet (queued in a busy
            # engine) is cancelled with Finish, which an engine honours by not running
            # it; the late answer of one running goes nowhere
            wanted = set(keys)
            forwarded = [(k, h.reply[0]) for k, h in self._pending.items()
                         if isinstance(h, control.Forward) and h.reply in wanted] \
                if wanted else ()
            for key in keys:
                self._guarded(key[0], lambda key=key: self.fail(key, Denial(
                    f"{label} was revoked while this call was in flight", "failed")),
                    flush=False)
            for k, caller in forwarded:          # (_cancel skips one answered meanwhile)
                self._cancel(k, caller, orphan=not caller.alive)
            self._orphans_changed()
            self.emit(fx.Notice(f"revoked {label}"))
        return self._flush()

    def stop_engine(self, name: str, reason: str) -> list:
        """The runtime is taking compartment `name`'s engine down (to restart it, or
        to fail it for good: `fail_compartment` follows).  What that engine had fails,
        naming why (calls it ran, calls waiting for a start that failed); calls made
        from now on wait for its next incarnation, each at most its call_time, as
        calls to a starting compartment do.  They failed at once, 'compartment ...
        is gone', for the whole restart delay (up to 10 s), though the docs said they
        wait; and a program run once another's first start failed made its first
        call to it in just that window (an outside review)."""
        peer = self.engines.get(name)
        out = self.disconnected(peer.id, reason) if peer is not None else []
        proxy = self.proxies.get(name)
        if proxy is not None:
            proxy.ending = None                 # decided: its calls wait (or fail below)
        if proxy is not None and proxy.error is not None and proxy.error_type != "failed":
            # broken as its engine went (_lose, start_failed), whichever came first;
            # a compartment failed for good stays failed.  (_break_proxy let go of
            # its target and its queue.)
            proxy.error = None
        return out

    def fail_compartment(self, name: str, reason: str, said: str | None = "failed") -> list:
        """The compartment will not come back: calls through its grants fail from now on
        ('compartment NAME failed: REASON', or with `said` None 'compartment NAME
        REASON')."""
        proxy = self.proxies.get(name)
        if proxy is not None:
            text = f"compartment {name} {said}: {reason}" if said else \
                f"compartment {name} {reason}"
            self._break_proxy(proxy, text, "failed")
        return self._flush()

    def engine_closed(self, pid: int) -> list:
        """Engine `pid` closed its connection; how its process ended is not known yet
        (the runtime waits for it, and for its last words, up to a second or two).
        Calls to its compartment made from now on wait, as during a restart, rather
        than go to it: they were forwarded to the engine that had gone and failed
        with it, "compartment NAME is gone: engine exited ...", though it was to be
        restarted at once (an outside review: a caller's next call after one that
        made its callee exit, one time in two).  Calls already forwarded to it fail
        when it is lost (disconnected); then its compartment's proxy waits for the
        decision (stop_engine, fail_compartment, or else engine_ended)."""
        peer = self.peers.get(pid)
        if peer is None or not peer.alive or peer.kind != "engine" \
                or self.engines.get(peer.name) is not peer:
            return []
        proxy = self.proxies.get(peer.name)
        if proxy is None or proxy.target is None or proxy.error is not None \
                or proxy.target.peer is not peer:
            return []
        if self._routes:
            self._unroute(lambda r: r.proxy is proxy)
        proxy.holding, proxy.target = proxy.target, None
        return self._flush()

    def engine_ended(self, pid: int) -> list:
        """The runtime has acted on the end of engine `pid` (a restart, a failure, a
        stop: each says what its compartment's calls do).  If none of them did, they
        fail as they did when the engine was lost: it is gone."""
        for proxy in self.proxies.values():
            if proxy.ending is not None and proxy.ending[0].id == pid:
                text = proxy.ending[1]
                proxy.ending = None
                self._break_proxy(proxy, text)
        return self._flush()

    def disconnected(self, pid: int, reason: str) -> list:
        """The peer's connection closed or its process died."""
        peer = self.peers.get(pid)
        if peer is not None and peer.alive:
            self._guarded(peer, self._lose, peer, reason, flush=False)
        return self._flush()

    # ------------------------------------------------------------ the choke point

    def _guarded(self, peer: Peer, work, *args, flush: bool = True) -> list:
        """Run `work(*args)` on behalf of `peer`.  A ProtocolError aborts that peer; any
        other exception is a fault in handling its input, and aborts it too (fail
        closed)."""
        try:
            work(*args)
        except protocol.ProtocolError as e:
            self._abort(peer, f"protocol error: {e}", "protocol error")
        except Exception as e:  # noqa: BLE001 - the one place no peer's input gets past
            self._abort(peer, f"internal error while handling its message "
                              f"({type(e).__name__}: {_first_line(e)})", "internal error")
        return self._flush() if flush else []

    def _aborted_by(self, peer: Peer, reason: str):
        """An engine's Abort: said to the operator, naming its compartment, and audited
        (its reason is the engine's text: one line, at most 300 characters, shown as
        any text a guest controls)."""
        self.emit(fx.Notice(f"{peer.name}: the engine aborted the connection: {reason}",
                            peer=peer.name))
        if self.audit.enabled:
            self._record({"time": self.wall(), "peer": peer.name,
                          "event": "connection aborted by the engine", "reason": reason})

    def _abort(self, peer: Peer, reason: str, what: str):
        if not peer.alive:                 # a fault while it was being lost: said, not hidden
            self.emit(fx.Notice(f"{peer.name}: {what} after it was lost: {reason}",
                                peer=peer.name))
            self.peers.pop(peer.id, None)
            return
        try:
            data = peer.conn.send_abort(reason)          # cut at REASON_LIMIT there
        except Exception:  # noqa: BLE001 - the connection may be in any state
            data = None
        if data is not None:
            self.emit(fx.Send(peer.id, data))
        self.emit(fx.Notice(f"{peer.name}: {what}, connection aborted: {reason}",
                            peer=peer.name))
        if self.audit.enabled:
            # after the calls the lane returned before it (their records wait there)
            self._record({"time": self.wall(), "peer": peer.name,
                          "event": "connection aborted", "reason": reason})
        self.emit(fx.Close(peer.id, reason))
        try:
            self._lose(peer, f"{peer.name}: connection aborted: {reason}")
        except Exception as e:  # noqa: BLE001 - never leave a half-lost peer behind
            peer.alive = False
            self.peers.pop(peer.id, None)
            self.emit(fx.Notice(f"{peer.name}: internal error while cutting it off "
                                f"({type(e).__name__}: {_first_line(e)})"))

    def emit(self, effect):
        self._out.append(effect)

    def _kept_past_own(self, peer: Peer):
        """`peer` was just answered with results it must finish: past its own
        KEPT_OWN_BYTES, its kind's pool is looked at (_kept_shed), once the work
        at hand is done (not in the middle of it: cutting peers off changes what
        it may be walking)."""
        beyond = peer.conn.kept - KEPT_OWN_BYTES
        if beyond <= 0 or peer in self._kept_over:
            return
        upper = self._kept_upper[peer.kind] + max(0, beyond - peer.kept_counted)
        if upper <= KEPT_POOL_BYTES:
            self._kept_upper[peer.kind] = upper
            peer.kept_counted = max(peer.kept_counted, beyond)
        else:
            self._kept_over.append(peer)

    def _kept_shed(self):
        """Results kept for pipelining beyond each connection's own KEPT_OWN_BYTES
        come from one pool per kind of peer (KEPT_POOL_BYTES): past it, the peers
        holding the most of it are cut off, each holding more than the one just
        answered would, or that one if it holds the most (pool_shed)."""
        while self._kept_over:
            peer = self._kept_over.pop(0)
            beyond = peer.conn.kept - KEPT_OWN_BYTES
            if not peer.alive or beyond <= 0:
                continue
            held = [(p.conn.kept - KEPT_OWN_BYTES, p) for p in tuple(self.peers.values())
                    if p is not peer and p.alive and p.kind == peer.kind]
            shed = pool_shed(beyond, held, KEPT_POOL_BYTES)
            kinds = "compartments" if peer.kind == "engine" else "external clients"
            for p in ([peer] if shed is None else shed):
                kind = "compartment" if p.kind == "engine" else "external client"
                self._abort(p, f"protocol error: answers it has not finished hold "
                               f"{p.conn.kept} bytes ({p.conn.kept - KEPT_OWN_BYTES} beyond "
                               f"its own {KEPT_OWN_BYTES}, the most of any {kind}; {kinds} "
                               f"together may hold at most {KEPT_POOL_BYTES} beyond their "
                               f"own): send Finish for them", "protocol error")
            # measured: what the ones left keep is the bound from here on
            upper = 0
            for p in tuple(self.peers.values()):
                if p.alive and p.kind == peer.kind:
                    p.kept_counted = max(0, p.conn.kept - KEPT_OWN_BYTES)
                    upper += p.kept_counted
            self._kept_upper[peer.kind] = upper

    def _flush(self) -> list:
        if self._kept_over:
            self._kept_shed()
        out, self._out = self._out, []
        if self._unsent:
            self._unsent = {}
        return out

    def _new_peer(self, name, kind, limits) -> Peer:
        peer = Peer(next(self._ids), name, kind, limits)
        peer.useful = self.clock()
        self.peers[peer.id] = peer
        return peer

    # ------------------------------------------------------------ events

    def _event(self, peer: Peer, ev):
        if isinstance(ev, protocol.CallReceived):
            peer.useful = self.clock()
            self._on_call(peer, ev)
        elif isinstance(ev, protocol.ReturnReceived):
            peer.useful = self.clock()
            self._on_return(peer, ev)
        elif isinstance(ev, protocol.BootstrapRequested):
            peer.useful = self.clock()
            if ev.overloaded is not None:
                self.emit(fx.Send(peer.id, peer.conn.send_exception(
                    ev.answer_id, ev.overloaded, "overloaded")))
            elif ev.named:
                # rpc.capnp: deprecatedObjectId names which of several bootstrap
                # objects to return; we have one, and it is not what was named
                self.emit(fx.Send(peer.id, peer.conn.send_exception(
                    ev.answer_id, "named bootstrap objects (Bootstrap.deprecatedObjectId) "
                    "are not supported: bootstrap without one to get the Gateway, and "
                    "ask it for a compartment with get(name)", "unimplemented")))
            elif peer.kind == "external":
                self._answer((peer, ev.answer_id), Content.capability(0), (self.gateway,))
            else:
                self.emit(fx.Send(peer.id, peer.conn.send_exception(
                    ev.answer_id, "compartments get their capabilities from their grants")))
        elif isinstance(ev, protocol.ExportReleased):
            if peer.passed:
                self._unpassed(peer, ev.obj)
            if peer.laned:
                eid = self._route_of.get((peer.id, id(ev.obj)))
                if eid is not None:
                    self._unroute_key((peer.id, eid))
            self._drop(ev.obj)
        elif isinstance(ev, protocol.FinishReceived):
            if peer.conn.gave_up(ev.answer_id):
                self._finished(peer, ev.answer_id)
            # calls pipelined on it are still delivered when it returns
            kept = peer.kept.pop(ev.answer_id, None) if peer.kept else None
            for cap in kept or ():
                self._drop(cap)
            if self._tails and isinstance(self._tails.get((peer.id, ev.answer_id)), _Outcome):
                # a tail call's outcome the peer never took: nobody will
                self._let_go_outcome(self._pop_tail(peer, ev.answer_id))
        elif isinstance(ev, protocol.ReturnTaken):
            peer.useful = self.clock()
            self._on_taken(peer, ev)
        elif isinstance(ev, protocol.DisembargoReceived):
            self._disembargo(peer, ev)
        elif isinstance(ev, protocol.Unhandled):
            self.emit(fx.Send(peer.id, ev.reply))
        elif isinstance(ev, protocol.RefsReleased):
            self.emit(fx.Send(peer.id, ev.data))
        elif isinstance(ev, protocol.AbortReceived):
            if peer.kind == "engine":
                # an engine ends its connection so only when it says why on its stderr
                # first (a protocol error of ours, out of memory); one that does not was
                # taken over, and the operator heard only "engine killed by SIGKILL"
                self._aborted_by(peer, _first_line(ev.reason))
            self.emit(fx.Close(peer.id, f"it aborted the connection: {_first_line(ev.reason)}"))
            self._lose(peer, f"{peer.name} aborted the connection: {_first_line(ev.reason)}")

    def _disembargo(self, peer: Peer, ev: protocol.DisembargoReceived):
        """A peer that got back, through a promise, a capability it hosts itself
        embargoes its calls on it until the calls it sent on the promise are
        delivered: they are (a call on a promise goes on when its answer returns,
        and every message to the peer is written in order), so the embargo is
        reflected at once, on the peer's own object.  A target that is not such a
        promise is a protocol error (rpc.capnp): the peer is cut off."""
        target = ev.target
        cap = None
        if isinstance(target, protocol.PromisedAnswer) and target.result is not None:
            try:
                cap = self._resolve_pipeline(peer, target.result, target.transform)
            except CallError:
                cap = None
        if not self.is_remote_of(cap, peer):
            raise protocol.ProtocolError("Disembargo (senderLoopback) on a target that is "
                                         "not a promise resolved to the sender's own object")
        self.emit(fx.Send(peer.id, peer.conn.send_disembargo(cap.import_id, ev.embargo_id)))

    def _on_call(self, peer: Peer, ev: protocol.CallReceived):
        reply = (peer, ev.answer_id)
        refused = None
        native = peer.conn.native
        if self.ended:       # the run's audit has ended (end_audit): no call goes unrecorded
            refused = CallError("the system is stopping", "disconnected")
        elif ev.over is not None:
            # a per-message limit (the protocol core released what it brought): this
            # call fails, and the peer's other calls and capabilities go on
            refused = CallError(f"params refused: {ev.over}", "failed")
        elif ev.overloaded is not None:
            # it holds too many answers unfinished (the protocol core released what
            # the call brought): this call fails, its connection goes on
            refused = CallError(ev.overloaded, "overloaded")
        elif ev.unsupported is not None:       # sendResultsTo.thirdParty: the same way
            refused = CallError(ev.unsupported, "unimplemented")
        elif peer.conn.unanswered + (native.in_flight() if native is not None else 0) \
                + self._cancelled_of.get(peer.id, 0) > peer.limits.in_flight:
            cancelled = self._cancelled_of.get(peer.id, 0)
            refused = CallError(f"{peer.name} has {peer.limits.in_flight} calls in flight "
                                f"already ("
                                + (f"{cancelled} of them it cancelled, not answered by "
                                   f"their callee yet; " if cancelled else "")
                                + f"limit in_flight = {peer.limits.in_flight})",
                                "overloaded")
        elif peer.conn.own_imports > peer.limits.handles + protocol.MAX_CAPS_PER_MESSAGE:
            # (what it returned in answers is its callers', bounded by their c-lists:
            # counted here, callers keeping what an object factory handed them got its
            # own calls refused, Connection.own_imports)
            refused = CallError(f"{peer.name} has passed the supervisor more than "
                                f"{peer.limits.handles} capabilities it still holds "
                                f"(limit handles)", "overloaded")
        else:
            refused = self._oversized(peer, ev.payload.content, "params")
        if refused is not None:
            self._refuse(ev, reply, refused)
            self._drop_imported(peer, ev.payload)
            return
        try:
            caps = self._import_caps(peer, ev.payload) if ev.payload.caps else ()
        except CallError as e:
            self._refuse(ev, reply, e)
            return
        call = Call(ev.interface_id, ev.method_id, ev.payload.content, caps, reply)
        target = ev.target
        if isinstance(target, protocol.PromisedAnswer):
            if target.error is not None:
                self._refuse(ev, reply, CallError(
                    f"pipelined call on a failed call: {target.error}", target.error_type))
                self.sweep(caps)
                return
            if target.result is None:
                refused = self._hold_call(call)
                if refused is not None:
                    self._refuse(ev, reply, refused)
                    self.sweep(caps)
                    return
                self._pipelined.setdefault((peer.id, target.answer_id), []).append(
                    (target.transform, call))
                return
            try:
                target = self._resolve_pipeline(peer, target.result, target.transform)
            except CallError as e:
                self._refuse(ev, reply, e)
                self.sweep(caps)
                return
        if peer.passed:
            # what it calls a caller passed it (or an answer to a call on such a
            # thing brought it): the capabilities the answer brings are that
            # caller's, not what it asked for itself (Router._check_handles)
            call.charged = self._charged(peer, target)
        if peer.laned and not caps and not isinstance(ev.target, protocol.PromisedAnswer):
            # may be routed natively from now on
            self._deliver(target, call, (peer, peer.conn.export_id(target)))
            return
        self._deliver(target, call)

    def _refuse(self, ev: protocol.CallReceived, reply, e: CallError):
        """A call refused on arrival, before it was delivered (in_flight, handles, a
        pipelined call with nothing to reach): see _refuse_call."""
        target = ev.target
        if isinstance(target, protocol.PromisedAnswer):
            target = target.answer_id
        self._refuse_call(reply, target, ev.interface_id, ev.method_id, e)

    def _refuse_call(self, reply, target, interface_id: int, method_id: int,
                     e: CallError):
        """A call refused before it was delivered, on arrival or while it waited in
        the router (pipelined on an answer that then failed, went elsewhere or held
        no capability there): it fails, and the audit records it as every call is
        recorded, naming what it was made on (`target`: a capability, or the id of
        the caller's answer it was pipelined on).  The one place such a refusal is
        audited: calls refused when their answer came left no record."""
        self._audit_refused(reply, target, interface_id, method_id)
        self.fail(reply, e)

    def _audit_refused(self, reply, target, interface_id: int, method_id: int):
        """Open the audit record of a call refused before delivery (see _refuse_call);
        whoever ends the call closes it (_close_call)."""
        if self.audit.enabled:
            if isinstance(target, int):
                target = f"the answer to {reply[0].name}'s call #{target}"
            self.audit.open(reply, target, Call(interface_id, method_id,
                                                protocol.EMPTY, (), reply),
                            self.clock(), self.wall())

    def _on_return(self, peer: Peer, ev: protocol.ReturnReceived):
        handler = self._pending.pop((peer.id, ev.question_id), None)
        if handler is None:
            # A late answer to a call that timed out or was cancelled (we already
            # sent Finish): nobody wants what it carries.
            if ev.payload is not None:
                self._drop_imported(peer, ev.payload)
            self._answered_late(peer, ev.question_id)
            return
        if ev.finish_needed:
            self.emit(fx.Send(peer.id, peer.conn.send_finish(ev.question_id)))
        if ev.payload is not None:
            refused = self._oversized(peer, ev.payload.content, "results")
            if refused is not None:          # the call fails, and says why
                self._drop_imported(peer, ev.payload)
                ev.payload, ev.error, ev.error_type = None, refused.args[0], refused.type
        handler.returned(self, peer, ev)
        if ev.payload is not None and ev.payload.caps:
            # what the handler did not keep of the answer's capabilities is released
            # at the peer: Engine.run's, describe's or collect's answer (or
            # bootstrap's past the first) imported up to 256 each that no handler
            # took, and a taken-over engine grew our c-list of it without bound
            self._drop_imported(peer, ev.payload)

    def _on_taken(self, peer: Peer, ev: protocol.ReturnTaken):
        """The peer answered our question with the outcome of its tail call to us
        (takeFromOtherQuestion): whoever asked gets that call's outcome, now if it
        ended already, else when it does (_tail_ended)."""
        if (peer.id, ev.question_id) not in self._pending:
            self._answered_late(peer, ev.question_id)      # its id is free from now on
        key = (peer.id, ev.answer_id)
        outcome = self._pop_tail(peer, ev.answer_id)
        handler = self._pending.get((peer.id, ev.question_id))  # None: timed out, cancelled
        if outcome is None:
            # it waits for the call, at most until its own deadline (expire)
            if handler is not None:
                self._tails[key] = (ev.question_id, handler)
            return
        # (held since the call ended: _tail_taken lets go of it)
        self._soon(self._tail_taken, peer, ev.question_id, handler, outcome)

    def _pop_tail(self, peer: Peer, answer_id: int):
        """What `_tails` keeps for `peer`'s tail call `answer_id` (an outcome, or the
        question waiting for it), no longer kept; None if nothing is."""
        t = self._tails.pop((peer.id, answer_id), None)
        if type(t) is _Outcome and t.held:
            peer.tail_caps -= t.held
        return t

    def _tail_taken(self, peer: Peer, question_id: int, handler, outcome):
        """Work list (_soon): `outcome`, held (_hold_outcome), goes to our question
        `question_id` if `handler` still waits for it.  Not a direct call: handing
        it on may end another peer's tail call taken for a question of ours on
        behalf of that call, and so on, as far as the peers chain them (an outside
        review: 400 tail calls across two clients, each taken for the question the
        other's made, ended in RecursionError while the supervisor handled the last
        answer, cutting off whoever sent it, a compartment)."""
        self._let_go_outcome(outcome, hold=False)
        waiting = self._take_waiting(peer, question_id, handler) if handler is not None \
            else None                      # (its id may be another call's by now)
        self._hand_outcome(waiting, peer, question_id, outcome)

    def _answered_late(self, peer: Peer, question_id: int):
        """The peer returned our question `question_id` after we finished it (it timed
        out, or was cancelled), with results, an exception or takeFromOtherQuestion:
        the protocol core has let go of the question, whose id the next call may
        take, so nothing of ours may stay keyed by it (an orphan's count, the
        overdue share it counted to)."""
        by = self._overdue_by.get(peer.id)
        if by is not None and question_id in by:
            pool = by.pop(question_id)
            if pool is not None:
                _tally(self._overdue_of[peer.id], pool, -1)
            if not by:
                del self._overdue_by[peer.id]
                self._overdue_of.pop(peer.id, None)
        if self._unorphan((peer.id, question_id)):
            self._orphans_changed()

    def _take_waiting(self, peer: Peer, question_id: int, handler=None):
        """The handler of our question `question_id` to `peer`, answered by a tail
        call: out of _pending, and the question finished.  With `handler`: only if
        that is still the one waiting (it may have timed out, and the id been
        reused by another question since); else None."""
        key = (peer.id, question_id)
        waiting = self._pending.get(key)
        if waiting is None or (handler is not None and waiting is not handler):
            return None
        del self._pending[key]
        self._finish_overdue(peer, question_id, getattr(waiting, "reply", (None,))[0])
        return waiting

    def _tail_ended(self, peer: Peer, answer_id: int, content=None, caps=(),
                    error: CallError | None = None, close: bool = False):
        """The peer's tail call `answer_id` (sendResultsTo.yourself) ended: the peer
        is told its results went elsewhere, and they go to the question it answered
        with them, or wait for it until the peer finishes the call."""
        a = peer.conn.answers[answer_id]
        key = (peer.id, answer_id)
        wait = not a.taken and not a.finished
        held = 0
        if wait and caps:
            # kept for the peer until it takes them or finishes the call: each
            # reference counts against its `handles` with its c-list (_check_handles),
            # whether or not its c-list has the object too (it may release that entry
            # and keep the reference here); they were held past it, up to
            # max_unfinished answers of 256 each (an outside review).  Its own objects
            # are not: they are its imports, bounded as such
            held = sum(1 for c in caps if c is not None and not self.is_remote_of(c, peer))
            limit = peer.limits.handles
            if held and len(peer.conn.exports) + peer.tail_caps + held > limit:
                self.sweep(caps)
                content, caps, held = None, (), 0
                error = CallError(
                    f"{peer.name} would hold more than {limit} capabilities (limit "
                    f"handles), counting those of the results of its tail calls "
                    f"(sendResultsTo.yourself) held until it takes or finishes them",
                    "overloaded")
        if close:         # its results (_answer): as the question taking them gets them
            self._close_call((peer, answer_id), "returned" if error is None else "failed",
                             None if error is None else error.reason)
        size = content.size() if wait and content is not None else 0
        self.emit(fx.Send(peer.id, peer.conn.send_elsewhere(answer_id, kept=size)))
        if size:
            self._kept_past_own(peer)
        why = CallError("pipelined on a call whose results were sent elsewhere "
                        "(sendResultsTo.yourself)")
        calls = self._take_pipelined(peer, answer_id)
        if calls:
            self._soon(self._fail_pipelined, calls, why, answer_id)
        if self._promises:
            self._settle(peer, answer_id, error=why)
        outcome = _Outcome(content, tuple(caps), error, held)
        if wait:
            self._hold_outcome(outcome)
            self._tails[key] = outcome
            peer.tail_caps += held
        elif key in self._tails:
            qid, handler = self._tails.pop(key)
            self._hold_outcome(outcome)      # whoever gave us `caps` may let go on return
            self._soon(self._tail_taken, peer, qid, handler, outcome)
        else:                                # finished without being taken: nobody wants it
            self.sweep(outcome.caps)

    def _hand_outcome(self, handler, peer: Peer, question_id, outcome: _Outcome):
        """Give the outcome of `peer`'s tail call to `handler` (the question it
        answered with it), as if `peer` had returned it; None: nobody waits."""
        if handler is not None:
            if outcome.error is not None:
                ev = protocol.ReturnReceived(question_id, None, outcome.error.reason,
                                             outcome.error.type)
            else:
                ev = protocol.ReturnReceived(question_id, protocol.Payload(
                    outcome.content if outcome.content is not None else protocol.EMPTY,
                    tuple(None if c is None else protocol.Exported(c)
                          for c in outcome.caps)))
            handler.returned(self, peer, ev)
        self.sweep(outcome.caps)

    @staticmethod
    def _hold_outcome(outcome: _Outcome):
        for c in outcome.caps:
            if c is not None:
                c.refs += 1

    def _let_go_outcome(self, outcome, hold: bool = True):
        """A kept tail call's outcome is no longer held here (and, unless it goes on
        to its question now, let go of)."""
        if not isinstance(outcome, _Outcome):
            return
        for c in outcome.caps:
            if c is not None:
                c.refs -= 1
        if hold:
            self.sweep(outcome.caps)

    def _drop_imported(self, peer: Peer, payload):
        """Let go of the capabilities a payload brought that nobody will take."""
        self.sweep([self.remote(peer, c.import_id) for c in payload.caps
                    if isinstance(c, protocol.Imported)])

    def forward_returned(self, peer: Peer, ev, reply, charged=None):
        """The answer to a call we forwarded to `peer`: on to whoever made it
        (`charged`: as Call.charged)."""
        self.count(peer, ev.payload is not None)
        if ev.payload is None:
            self.fail(reply, CallError(ev.error, ev.error_type))
            return
        try:
            caps = self._import_caps(peer, ev.payload)
        except CallError as e:
            self.fail(reply, e)
            return
        self._answer(reply, ev.payload.content, caps, charged)
        self.sweep(caps)

    def _resolve_pipeline(self, peer, result, transform) -> Cap:
        content, caps = result
        try:
            index = content.cap_index(transform)
        except wire.WireError as e:
            raise CallError(f"pipelined call: {e}") from None
        if index is None or index >= len(caps) or caps[index] is None:
            raise CallError("pipelined call on a field that holds no capability")
        cap = caps[index]
        if isinstance(cap, RemoteRef):
            # its own object: held while the answer is open (Peer.kept), so this
            # fails only for an answer it has finished, which the protocol refuses
            if cap.import_id not in peer.conn.imports:
                raise CallError("pipelined call on a capability that was released")
            return self.remote(peer, cap.import_id)
        if not self._held(cap):
            # let go of since the answer was returned (its holder released its import,
            # and nothing else held it): its host may have given its id to another
            # object since, which this one would now name
            raise CallError("pipelined call on a capability that was released")
        return cap

    # ------------------------------------------------------------ delivery

    def _deliver(self, cap, call: Call, route=None, resumed=None):
        """Deliver `call` on `cap`.  `route`: (caller, export id) when the call came
        plainly from a laned peer: once it is forwarded, later calls like it may go
        natively (a route), if every membrane it crossed is free of quotas.
        `resumed`: (first cap, membranes crossed) of a call that waited on a
        promised capability, now resolved to `cap`."""
        try:
            if self.ended:     # after end_audit: no call is carried out, none unrecorded
                raise CallError("the system is stopping", "disconnected")
            if resumed is None:
                if self.call_watch:
                    self.call_probes.open(call.reply, call.reply[0].name, describe(cap),
                                          callee_of(cap), self._method(call))
                if self.audit.enabled:
                    self.audit.open(call.reply, cap, call, self.clock(), self.wall())
                first, chain = cap, []
            else:
                first, chain = resumed
                route = None
                now = self.clock()
                for m in chain:
                    # it waited (for a start, a promise) since these admitted it: one
                    # that expired meanwhile lets it go no further, as it would not let
                    # a new call through.  Admitted once, a call made a moment before
                    # its grant expired reached its callee up to call_time after it
                    # (an outside review, reviewer 184).  A revocation fails waiting
                    # calls itself, at once (revoke, _stop_waiting)
                    if m.expired(now):
                        raise Denial(f"{m.label} has expired (expires_after)", "failed")
                if self.call_watch:      # where a call that waited on a promise goes
                    self.call_probes.resumed(call.reply, call.reply[0].name, describe(first),
                                             callee_of(cap), self._method(call))
            proxy, hops = None, 0
            while isinstance(cap, (Wrapped, Promised)):
                if isinstance(cap, Promised):
                    hops += 1
                    if hops > MAX_HOPS:
                        raise CallError(f"a capability that resolves to itself (more than "
                                        f"{MAX_HOPS} promises on the way)")
                    route = None
                    if cap.error is not None:
                        raise CallError(cap.error, cap.error_type)
                    if cap.target is None:      # waits for the answer, at most call_time
                        self._wait(cap, call, first, chain, call.reply[0].limits.call_time)
                        return
                    cap = cap.target
                    continue
                m = cap.membrane
                if m in chain:
                    # crossed already on its way: _wrap wraps a capability in a
                    # membrane once, but cannot see past a promise not resolved yet
                    # (a grant's wrapper around a promise that resolved to that
                    # grant's wrapper again): admitted again, each call spent a
                    # quota once for every time the grant lay on its way
                    cap = cap.target
                    continue
                m.admit(cap, call, self.clock(), self.names)
                if m.counts:
                    self._spent.setdefault(call.reply, []).append(m)
                if m.counts or m.expires is not None:
                    route = None             # a quota counts every call: Python's (an
                    #                          expiry, its reverse's callbacks too)
                m.inflight.add(call.reply)
                self._through.setdefault(call.reply, []).append((m, self._method(call)))
                if call.caps:
                    # params cross the grant too: the holder's into its reverse, and
                    # the other side's (a call back on what the holder passed) into
                    # the grant's own membrane, as results are: obtained through it
                    if m.forward is None:       # (named for the audit: whose, and how)
                        call = attrs.evolve(call, caps=tuple(
                            self._wrap(c, m.reverse, f"{describe(c)} (passed through "
                                                     f"{m.label})") for c in call.caps))
                    else:
                        label = f"{m.forward.label}>{self._method(call)}"
                        call = attrs.evolve(call, caps=tuple(
                            self._wrap(c, m.forward, label) for c in call.caps))
                chain.append(m)
                cap = cap.target
            if isinstance(cap, Remote) and cap.peer.kind == "engine":
                main = self.proxies.get(cap.peer.name)
                if main is not None and main.target is cap:
                    # a compartment's main object, however the caller holds it (handed
                    # on by that compartment, wsuper.object(0), even from its
                    # _initialize, before the proxy had it): called as its proxy, with
                    # its checks (the interface, a sealed one's), not around them
                    cap = main
            if isinstance(cap, Proxy):
                if cap.interface_id is not None and call.interface_id not in cap.interface_ids:
                    raise CallError(f"compartment {cap.compartment} does not implement "
                                    f"interface {call.interface_id:#x}", "unimplemented")
                if cap.error is not None:
                    raise CallError(cap.error, cap.error_type)
                if cap.sealed:
                    if call.caps:
                        raise Denial(f"{describe(first)}: {self._method(call)} passes "
                                     f"{len(call.caps)} capabilities, but "
                                     f"{self.names.interface(cap.interface_id)} carries "
                                     f"none (its schema has no capability)", "failed")
                    self._sealed[call.reply] = (f"{describe(first)}: {self._method(call)}",
                                                self.names.interface(cap.interface_id))
                if cap.target is None:          # starting: it waits, at most call_time
                    self._wait(cap, call, first, chain,
                               self.limits.get(cap.compartment, Limits()).call_time)
                    return
                proxy = cap
                cap = cap.target
            if isinstance(cap, Remote):
                if not cap.peer.alive:
                    raise CallError(f"compartment {cap.peer.name} is gone", "disconnected")
                if self._orphans_full and call.reply[0].kind == "external":
                    left = self._orphans_at.get(cap.peer.id, 0)
                    if left >= self.orphans_limit:
                        raise CallError(
                            f"{left} calls of external clients that are gone (or that "
                            f"cancelled them) are cancelled at {cap.peer.name} and not "
                            f"answered yet (limit "
                            f"{self.orphans_limit} a compartment: {ORPHANS_PER_IN_FLIGHT} x "
                            f"the external in_flight); try again", "overloaded")
                refused = None if cap.peer.conn.overdue < self._overdue_floor \
                    else self._overdue_refused(cap.peer, call.reply[0])
                if refused is not None:
                    raise CallError(self._overdue_text(cap.peer, call.reply[0], *refused),
                                    "overloaded")
                if cap.peer.remotes.get(cap.import_id) is not cap \
                        or cap.import_id not in cap.peer.conn.imports:
                    # a capability released meanwhile (should not happen: held ones are
                    # counted; _resolve_pipeline refuses what an answer no longer holds);
                    # its id may name another object of that peer's by now, which this
                    # call must not reach.  The call fails, not the connection whose
                    # message it was.
                    raise CallError(f"a capability of {cap.peer.name} that was released")
                self.call_peer(cap.peer, cap.import_id, call.interface_id, call.method_id,
                               call.content, call.caps,
                               control.Forward(call.reply, charged=call.charged))
                self._reached(call.reply)
                if route is not None and route[1] is not None and cap.peer.laned \
                        and cap.peer.kind == "engine" and not (self.call_watch and (
                            route[0].name in self.call_watch
                            or cap.peer.name in self.call_watch)):
                    self._route(route, first, chain, proxy, cap, call.interface_id)
            elif isinstance(cap, Host):
                self._host_call(cap, call)
            else:
                raise CallError("not a capability")
        except CallError as e:
            if isinstance(e, Denial):
                self.emit(fx.Denied(f"denied: {call.reply[0].name} -> {e.reason}",
                                    call.reply[0].name))
            self.fail(call.reply, e)
            self.sweep(call.caps)

    def _soon(self, work, *args):
        """Do `work(*args)` now or, while such work is being done, right after it.
        Settling a promise delivers the calls that waited on it; one that fails settles
        the promises in its own answer, and so on: as recursion a chain of a few
        hundred ended in RecursionError (an outside review), so it is a work list."""
        self._later.append((work, args))
        if self._draining:
            return
        self._draining = True
        fault = None
        try:
            while self._later:            # all of it, even past a fault: nothing is left
                work, args = self._later.popleft()     # for an unrelated drain later
                try:
                    work(*args)
                except Exception as e:  # noqa: BLE001 - raised below, once the list is done
                    fault = fault or e
        finally:
            self._draining = False
        if fault is not None:
            raise fault

    def _settle(self, peer: Peer, answer_id: int, result=None, error: CallError | None = None):
        """The answer `answer_id` to `peer` returned `result` ((content, caps) as sent)
        or failed with `error`: the capabilities promised in it resolve, or fail, and
        the calls that waited on them go on (_soon)."""
        self._soon(self._settle_now, peer, answer_id, result, error)

    def _settle_now(self, peer: Peer, answer_id: int, result, error: CallError | None):
        # one text for all the promises an error fails (a call can pass hundreds)
        failed = _broken_promise(error.reason) if error else None
        for promised in self._promises.pop((peer.id, answer_id), ()):
            why = error
            if why is None:
                try:
                    target = self._past_settled(
                        self._resolve_pipeline(peer, result, promised.transform))
                except CallError as e:
                    why = e
                else:
                    if target is promised:
                        why = CallError("the promised capability is itself")
                    else:
                        promised.target = target
                        target.refs += 1
                        if isinstance(target, Promised) and target.target is None \
                                and target.error is None:
                            target.followers.append(promised)
            if why is not None:
                promised.error = failed if why is error else _broken_promise(why.reason)
                promised.error_type = why.type
            self._run_queue(promised)
            if promised.followers:
                self._settle_followers(promised)
            self._settled(promised)

    def _settle_followers(self, promised: Promised):
        """`promised` settled: the promises that settled on it before (its followers,
        each holding it) settle on what it settled on, and let go of it.  A promise
        settled on one not resolved yet kept it as its target for good: a client
        whose calls' answers came last first (on objects it hosts itself, which it
        answers in any order) made a chain of them, held link by link, as long as
        it liked while it held one capability (_past_settled frees the links only
        of promises resolved when their answer came).  One that failed keeps its
        followers: calls on them fail as on it."""
        followers, promised.followers = promised.followers, []
        if promised.target is None:
            return
        target = self._past_settled(promised.target)
        for f in followers:
            if f.target is not promised or target is f:   # let go of meanwhile; a loop
                continue
            f.target = target
            target.refs += 1
            if isinstance(target, Promised) and target.target is None \
                    and target.error is None:
                target.followers.append(f)
            self._drop(promised)

    @staticmethod
    def _past_settled(cap):
        """What `cap` is, past the promises on its way that have resolved (at most
        MAX_HOPS of them): a promise settles on that.  It settled on the promise
        itself, which held the one before, and so on: a client whose every call
        passed the capability promised in the answer to its call before (echo.hold,
        which returns it) made a chain of promises as long as it liked while it held
        one capability (the newest; each link kept the one before), ~230 bytes a
        link without bound (40,000 links in 13 s from one connection), and calls on
        it failed past 64 links ("more than 64 promises on the way")."""
        hops = 0
        while isinstance(cap, Promised) and cap.target is not None and hops < MAX_HOPS:
            cap = cap.target
            hops += 1
        return cap

    def _run_queue(self, where):
        """The calls that waited on `where` (a Promised now settled, or a Proxy whose
        compartment is up) go on from it, as they were when they began to wait; not
        those whose caller no longer waits for them (revoked, cancelled, timed out,
        gone): nothing of those reaches the callee."""
        taken = self._take_all(where)
        held = self._hold_until_done(call for call, _f, _c in taken)
        try:
            for call, first, chain in taken:
                caller, answer_id = call.reply
                if not caller.alive or not caller.conn.awaiting_return(answer_id):
                    self._close_call(call.reply, "failed", self._caller_gone())
                    self.sweep(call.caps)
                elif caller.conn.gave_up(answer_id):
                    self._fail_waiting(call, "cancelled by its caller (Finish) before it "
                                             "could be delivered", "failed")
                else:
                    self._deliver(where, call, resumed=(first, chain))
        finally:
            self._done_holding(held)

    def _hold_until_done(self, calls) -> list:
        """The capabilities of calls taken out of a queue together (_take_all,
        _take_pipelined: no longer held by their calls) are held until all of them
        are handled: one call failing (cancelled, its caller gone, refused) swept
        what it passed before the next call that passed it too went on, the router
        released it at its peer, and the next passed on a capability released (an
        outside review).  What nobody holds is let go of after (_done_holding)."""
        held = [c for call in calls for c in call.caps if c is not None]
        for c in held:
            c.refs += 1
        return held

    def _done_holding(self, held: list):
        for c in held:
            c.refs -= 1
        self.sweep(held)

    def _take_all(self, where) -> list:
        """Every call waiting on `where`, out of its queue and no longer held, before
        any goes on: (call, first, chain) each.  (A ticket still holding its call is
        always in its queue, whatever raises while the calls go on.)"""
        queue, where.queue = where.queue, []
        return [(self._unwait(w), w.first, w.chain) for w in queue]

    def _wait(self, where, call: Call, first, chain, time_limit: float):
        """`call` waits on `where` (a Promised or a Proxy), at most `time_limit`; its
        bytes and capabilities are held meanwhile (_hold_call).  CallError if its
        caller holds too much waiting already."""
        refused = self._hold_call(call)
        if refused is not None:
            raise refused
        w = _Waiting(call, where, first, chain)
        where.queue.append(w)
        self._waiting[call.reply] = w
        if len(self._queued) > 64 and len(self._queued) > 2 * len(self._waiting):
            self._queued = [e for e in self._queued if e[2].call is not None]
            heapq.heapify(self._queued)
        heapq.heappush(self._queued, (self.clock() + time_limit, next(self._tokens), w))

    def _unwait(self, w: _Waiting) -> Call:
        """`w` left its queue (taken out by the caller of this): its call, no longer held."""
        call, w.call = w.call, None
        del self._waiting[call.reply]
        self._let_go_call(call)
        return call

    def _stop_waiting(self, key):
        """The call `key` ends while it waits (revoked): it leaves its queue and never
        goes on.  Left there, it went on once its callee was up or its promise
        resolved, and since its caller's id is free once answered, a new call's
        (an outside review): the revoked call reached the callee and its answer
        went to the new call."""
        w = self._waiting[key]
        w.where.queue.remove(w)
        self.sweep(self._unwait(w).caps)

    def _settled(self, promised: Promised):
        """`promised` settled and its calls went on: if nobody holds it, let go of
        what it resolved to."""
        if promised.refs <= 0 and promised.target is not None:
            self._let_go_promise(promised)                      # nobody holds it now

    # ------------------------------------------------------------ the fast lane

    def _route(self, route, cap, chain, proxy, remote: Remote, interface_id: int):
        """Install the route that later calls like this one take natively.  The
        lane checks only what is written here: the interface, the methods every
        membrane on the way allows, and the callee's limits."""
        caller, export_id = route
        key = (caller.id, export_id)
        old = self._routes.get(key)
        if old is not None and old.cap is cap and old.interface_id == interface_id \
                and old.callee is remote.peer and old.import_id == remote.import_id:
            return                                   # installed already
        every = all(m.allow is None or interface_id not in m.restricted for m in chain)
        mask = 0
        if not every:
            for j in range(64):
                if all(m.allows(interface_id, j) for m in chain):
                    mask |= 1 << j
        r = _Route(caller, export_id, cap, remote.peer, remote.import_id, interface_id,
                   tuple(chain), proxy)
        if old is not None:                          # its calls in flight become ours
            self._unroute_key(key)
        self._routes[key] = r
        self._routes_to.setdefault((r.callee.id, r.import_id), set()).add(key)
        self._routes_at.setdefault(caller.id, set()).add(key)
        self._routes_at.setdefault(r.callee.id, set()).add(key)
        self._route_of[(caller.id, id(cap))] = export_id
        self.native.install(caller.id, export_id, remote.peer.id, remote.import_id,
                            interface_id, mask, every, self.audit.enabled,
                            remote.peer.limits.call_time, r)

    def _unindex(self, key, r: _Route):
        for index, at in ((self._routes_to, (r.callee.id, r.import_id)),
                          (self._routes_at, r.caller.id), (self._routes_at, r.callee.id)):
            keys = index.get(at)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[at]

    def _unroute_keys(self, keys, take_calls: bool = True):
        for key in list(keys or ()):
            self._unroute_key(key, take_calls)

    def _unroute_key(self, key, take_calls: bool = True):
        """Take the route `key` down, synchronously.  Its calls in flight become the
        router's (adopt), exactly as if it had delivered them: whatever happens to
        them from now on (a revocation of a membrane they crossed, their callee's
        call_time, their caller going) finds them on its books.  Left in the lane
        on a route that was gone, they were nobody's: a later revocation of their
        grant neither failed them nor cancelled them at their callee, and their
        answers reached their caller after it (an outside review).  Only `_lose`
        leaves them (`take_calls` False), to the lane's `drop_peer` right after."""
        r = self._routes.pop(key, None)
        if r is None:
            return
        self._unindex(key, r)
        if self._route_of.get((key[0], id(r.cap))) == key[1]:
            del self._route_of[(key[0], id(r.cap))]
        for rec in self.native.uninstall(key[0], key[1], take_calls):
            self.adopt(rec)

    def watch(self, compartment: str, on: bool):
        """A calls probe came to `compartment` (on) or left it.  While one is on,
        every call from or to it must pass _deliver and _close_call, where the
        probe sees it: the routes from and to it come down now, synchronously
        (calls already forwarded natively become the router's, unseen by the
        probe, which never sees an exit without its entry), and none is installed while it
        lasts (_deliver).  When it goes, the next call through Python installs
        the route again."""
        if on and self._routes:
            self._unroute(lambda r: compartment in (r.caller.name, r.callee.name))

    def _finish_overdue(self, peer: Peer, question_id: int, caller) -> bool:
        """Send `peer` Finish for our question `question_id`, which `caller` made
        (through us) and gave up, or which timed out: one it has not returned yet is
        overdue (Connection.overdue), and counts to the caller's share of the bound
        (overdue_refusal) until its Return comes (_answered_late) or the peer goes.
        Whether the peer had returned it (takeFromOtherQuestion) already."""
        returned = peer.conn.question_returned(question_id)
        self.emit(fx.Send(peer.id, peer.conn.send_finish(question_id)))
        if not returned:
            pool = _pool(caller)
            self._overdue_by.setdefault(peer.id, {})[question_id] = pool
            if pool is not None:
                _tally(self._overdue_of.setdefault(peer.id, {}), pool, 1)
            self._overdue(peer)
        return returned

    def _overdue_refused(self, callee: Peer, caller):
        """overdue_refusal for a call of `caller` to `callee`: None, or (which
        bound, its limit, what the caller's share holds)."""
        total = callee.conn.overdue
        if total < self._overdue_floor:
            return None
        pool = _pool(caller)
        mine = self._overdue_of.get(callee.id, {}).get(pool, 0) if pool is not None else 0
        refused = overdue_refusal(self.overdue_limit, self._compartment_count, total,
                                  pool, mine)
        return None if refused is None else (*refused, mine)

    def _overdue_text(self, callee: Peer, caller, bound: str, limit: int,
                      mine: int) -> str:
        """Why overdue_refusal refused `caller`'s call to `callee`: which share,
        whose, and its limit."""
        who = f"{'compartment ' if callee.kind == 'engine' else ''}{callee.name}"
        bound_pool, caller = _pool(caller), getattr(caller, "name", "its caller")
        why = "past call_time, or given up by their callers"
        if bound == "external":
            return (f"{who} has not answered {mine} calls of external clients cancelled "
                    f"there ({why}; limit {limit} for all external clients together, "
                    f"half of {self.overdue_limit}): no more calls of external clients "
                    f"to it until it answers some; try again")
        share = "" if bound_pool is None else \
            f"; {mine} of them {caller}'s, past its own {limit}"
        return (f"{who} has not answered {callee.conn.overdue} calls cancelled there "
                f"({why}; limit {self.overdue_limit}{share}): no more calls from "
                f"{caller} to it until it answers some; try again")

    def _overdue(self, peer: Peer):
        """A Finish went to `peer` for a call it has not returned: the routes to it
        of each caller that overdue_refusal refuses now come down, so that their
        calls come to Python, which refuses them (_deliver) until it answers some;
        the next call through Python after that installs them again.  The other
        callers' routes stay: the bound refuses whoever filled it."""
        keys = self._routes_at.get(peer.id)
        if not keys or peer.conn.overdue < self._overdue_floor:
            return
        self._unroute_keys([k for k in keys if self._routes[k].callee is peer
                            and self._overdue_refused(peer, self._routes[k].caller)])

    def _unroute(self, which, take_calls: bool = True):
        """Take down every route `which(route)` is true of, synchronously."""
        for key in [k for k, r in self._routes.items() if which(r)]:
            self._unroute_key(key, take_calls)

    def adopt(self, rec, gone: str | None = None):
        """A call the fast lane forwarded becomes the router's, exactly as if it had
        delivered it: its answer on the caller's connection, its question on the
        callee's (with a deadline), the membranes it crossed, its audit record.
        `gone`: the callee was lost for this reason (the call fails).  Its params'
        bytes count to its caller's share of what waits for the callee, and once
        its caller is gone to the gone clients' (_not_reading), as a call the router
        forwarded: counted as 0, the calls a client sent natively and left there
        when it closed its connection were nobody's, and connecting again it had a
        quarter anew (an outside review: 21 MiB left by one connection, and the next
        one's call of 3.9 MiB went through where it is refused now)."""
        r, caller_id, aid, callee_id, qid, iface, method, age, wall0, orphan, size = rec
        caller, callee = self.peers.get(caller_id), self.peers.get(callee_id)
        start = self.clock() - age
        if caller is None or not caller.alive:
            orphan = True
            caller = caller or r.caller
        reply = (caller, aid)
        # its record is opened whoever waits for it: a call forwarded for a caller
        # that is gone (an orphan, cancelled at its callee) reached that callee, and
        # is recorded as the calls Python forwarded are ("the caller is gone")
        if self.audit.enabled:
            self.audit.open(reply, r.cap, Call(iface, method, protocol.EMPTY, (), reply),
                            start, wall0)
        if not orphan:
            caller.conn.adopt_answer(aid)
            if r.proxy is not None and r.proxy.sealed:
                self._sealed[reply] = (f"{r.desc}: {self.names.call(iface, method)}",
                                       self.names.interface(r.proxy.interface_id))
            name = self.names.call(iface, method)
            for m in r.membranes:
                m.inflight.add(reply)
                self._through.setdefault(reply, []).append((m, name))
        if callee is not None and callee.alive and gone is None:
            callee.conn.adopt_question(qid)
            deadline = start + callee.limits.call_time
            # what it called a caller passed it: the answer's capabilities are that
            # caller's (Call.charged), as when the router delivered the call
            charged = self._charged(caller, r.cap) if caller.passed else None
            self._pending[(callee.id, qid)] = control.Forward(reply, deadline, size,
                                                              charged=charged)
            heapq.heappush(self._deadlines, (deadline, callee.id, qid))
        elif not orphan:
            self.count(r.callee, False)
            self.fail(reply, CallError(f"compartment {r.callee.name} is gone"
                                       + (f": {gone}" if gone else ""), "disconnected"))
        else:                 # neither its caller nor its callee is left: it ends here
            self._close_call(reply, "failed", self._caller_gone())

    def native_tick(self, audit_room: bool = True, audit_left: int | None = None) -> list:
        """Native calls past their callee's call_time become the router's (expire()
        fails them next); the audit records of natively forwarded calls, unless the
        audit has no room for them (`audit_room` False: they stay in the lane, whose
        buffer, once full, sends audited calls to Python, which waits for room), and
        at most `audit_left` of them (None: all), the records the audit takes before
        it is full: the lane holds up to 65,536, and a drain of all of them at once
        filled the audit far past its backlog, and every peer's input waited for the
        writer to write all of that (0.4-0.7 s), while the calls on the lane went on."""
        if self.native is None:
            return []
        for rec in self.native.expired():
            self._guarded(rec[0].caller, lambda rec=rec: self.adopt(rec), flush=False)
        self._audit_room = audit_room
        self._audit_left = audit_left
        if self.audit.enabled and audit_room:
            self._drain_native_audit(bounded=True)
        return self._flush()

    def _drain_native_audit(self, bounded: bool = False) -> bool:
        """The records of the calls the lane returned, since the last drain, and among
        them, each where it belongs, those the router held meanwhile (_record).
        The lane's first: taken from the router before a drain that failed (the
        lane out of memory), the held records were lost with it (an outside review).
        `bounded`: at most what the audit takes now (`_audit_left`); the rest stay
        in the lane, as records the lane could not build do."""
        left = self._audit_left if bounded else None
        if left is None:
            drained = self.native.drain_audit()
        else:
            drained = self.native.drain_audit(max(left, 0))
            self._audit_left = max(left - len(drained), 0)
        # True: cut at the bound, with records left in the lane (_record holds its own)
        cut = left is not None and len(drained) >= left and \
            self.native.stats()["audit_pending"] > 0
        held = self._held_records
        self._held_records = []
        at = 0
        for r, iface, method, wall0, seconds in drained:
            while at < len(held) and held[at][0] <= self._lane_records:
                self.emit(fx.Audit(held[at][1]))
                at += 1
            self._lane_records += 1
            self.emit(fx.Audit({"time": wall0, "caller": r.caller.name,
                                "capability": r.desc,
                                "interface": self.names.interface(iface),
                                "method": self.names.method(iface, method),
                                "outcome": "returned",
                                "duration_ms": round(seconds * 1000, 3)}))
        rest = held[at:]
        if rest and rest[-1][0] > self._lane_records and self.native.stats()["audit_pending"]:
            # the lane built fewer than it has (no memory for the rest): those after
            # records still there wait for them
            while rest and rest[0][0] <= self._lane_records:
                self.emit(fx.Audit(rest.pop(0)[1]))
            self._held_records = rest
            return cut
        for _n, record in rest:
            self.emit(fx.Audit(record))
        return cut

    def _record(self, record: dict):
        """The one way a record of the router's goes to the audit: after the records
        of the calls the lane returned before it.  Those wait in the lane until
        drained, and a call that ended in Python (a denial, a failure, a capability
        returned) was recorded at once, ahead of the calls the lane had returned
        before it: the audit's order was not the calls' order with the lane on (an
        outside review).  While the audit has no room (native_tick(False)), the lane's
        records stay there (its bound is native traffic's), and so does this one, in
        the router, with the number of lane records that go before it."""
        if self.native is None:
            self.emit(fx.Audit(record))
        else:
            if self._audit_room and not self._held_records:
                if not self._drain_native_audit(bounded=True):
                    self.emit(fx.Audit(record))
                    return
            # the lane's records before it (more than the audit took now) go first
            self._held_records.append(
                (self._lane_records + self.native.stats()["audit_pending"], record))

    def _reached(self, key):
        """The call `key` reached its callee (forwarded, or run by the host layer): the
        quotas it spent on its way stay spent, whatever its answer."""
        if self._spent:
            for m in self._spent.pop(key, ()):
                m.kept()

    def end_audit(self, reason: str) -> list:
        """The system stops: every call not ended yet (waiting for its callee, its
        answer, its turn; forwarded by the lane and not returned) gets its record
        now, `failed` with `reason`, and the audit takes no more: the records of
        calls in flight when the engines were stopped came after `run stopped`,
        or never (an engine whose loss was not handled yet left its calls open).
        Call it after native_tick() has taken the lane's finished calls.

        Calls waiting (for their callee to start, on a promise) fail now, audit or
        not: they were recorded failed, but nothing told their callers, who got the
        end of their connection instead of an answer (an outside review)."""
        self.ended = True                # from now on every call is refused (_on_call)
        for w in [w for w in self._waiting.values() if w.call is not None]:
            w.where.queue.remove(w)
            call = self._unwait(w)
            self._guarded(call.reply[0], self._fail_waiting, call, reason, "disconnected",
                          flush=False)
        if not self.audit.enabled:
            return self._flush()
        if self.native is not None:      # the lane's calls in flight become the router's
            for peer in list(self.peers.values()):
                if peer.laned:
                    for rec in self.native.drop_peer(peer.id):
                        self._guarded(rec[0].caller, lambda rec=rec: self.adopt(rec),
                                      flush=False)
            # and what it returned until then is recorded: its thread still reads what
            # the engines wrote before they ended, and a return it forwarded after the
            # caller's last native_tick() left its record in the lane for good (the
            # call answered, and no record of it at all; an outside review)
            self._drain_native_audit()
        # calls forwarded to a callee fail now, as at their deadline (an answer read
        # after this, the engines' last, went to a caller whose record said failed)
        stopped = CallError(reason, "disconnected")
        for (pid, qid), handler in list(self._pending.items()):
            peer = self.peers.get(pid)
            if not isinstance(handler, control.Forward) or peer is None:
                continue
            del self._pending[(pid, qid)]

            def ended(peer=peer, qid=qid, handler=handler):
                if peer.alive:
                    self.emit(fx.Send(peer.id, peer.conn.send_finish(qid)))
                self.fail(handler.reply, stopped)
            self._guarded(peer, ended, flush=False)
        # calls pipelined on an answer not come yet have no record until they are
        # delivered: refused now, recorded (they were delivered after the end, unrecorded)
        for (pid, answer_id) in list(self._pipelined):
            peer = self.peers.get(pid)
            if peer is None:
                continue
            calls = self._take_pipelined(peer, answer_id)
            for _t, call in calls:
                self._guarded(call.reply[0], lambda call=call, on=answer_id: self._refuse_call(
                    call.reply, on, call.interface_id, call.method_id, stopped), flush=False)
            self.sweep([c for _t, call in calls for c in call.caps])
        # records still held for lane records a drain could not build (no memory):
        # written now, not lost with the audit's end
        held, self._held_records = self._held_records, []
        for _n, record in held:
            self.emit(fx.Audit(record))
        for record in self.audit.close_all("failed", self.clock(), reason):
            self.emit(fx.Audit(record))
        self.audit.enabled = False
        return self._flush()

    def _host_call(self, cap: Host, call: Call):
        if cap.kind == "gateway":
            content, caps = self._gateway(call)
            self._reached(call.reply)
            self._answer(call.reply, content, caps)
            self.sweep(call.caps)
            return
        if call.caps:
            raise CallError(f"{describe(cap)}: host objects take no capabilities in params")
        if cap.released:
            raise CallError(f"{describe(cap)} is closed", "disconnected")
        token = next(self._tokens)
        self._host_calls[token] = (call, cap)
        self._host_of[call.reply] = token
        caller = call.reply[0]
        self.emit(fx.HostCall(token, cap.kind, cap.owner, cap.served, call.interface_id,
                              call.method_id, call.content, caller.limits.message_size,
                              caller.name))
        self._reached(call.reply)

    def _gateway(self, call: Call):
        gateway = hosted.GATEWAY
        if call.interface_id != gateway.id or call.method_id >= len(gateway.methods):
            raise CallError("the gateway implements Gateway.get and Gateway.list only",
                            "unimplemented")
        method = gateway.methods[call.method_id]
        if method.name == "list":
            # built once: it never changes, and built for each call, 20,000 exported
            # compartments cost ~2.9 ms of this loop a call (an outside review)
            if self._exported_list is None:
                self._exported_list = build(method.results, {"names": list(self.external)})
            return self._exported_list
        try:
            # the budget of a host object's params (hostcaps.serve): the message they
            # came in, which the caller's message_size bounds; a fixed 64 KiB called
            # a well-formed long name 'malformed params'
            name = read(method.params, call.content, call.content.size() // 8 + 1024)["name"]
        except DecodeError as e:
            raise CallError(f"Gateway.get: malformed params: {e}") from None
        if name not in self._exported:
            raise CallError(f"no compartment named {_bounded(name, 100)!r} is "
                            f"exported to the outside (exported: {self._exported_text})")
        return build(method.results, {"cap": self.proxies[name]})

    def call_peer(self, peer, import_id, interface_id, method_id, content, caps, handler):
        """Call `import_id` on `peer` (an object it hosts); `handler` gets the answer."""
        self._check_size(peer, content)
        if isinstance(handler, control.Forward):
            handler.size = content.size()
            # what waits to be written to it, and what this answer of the router's
            # sends it before: calls that waited for its start (or a promise) go in
            # one answer, and each saw the backlog as it was before all of them (30
            # MiB of them sent at once to a compartment whose hard bound was 24 MiB
            # cut the engine just started off: an outside review)
            waiting = self.backlog(peer.id) + self._unsent.get(peer.id, 0)
            if waiting > queue_soft_limit(peer.limits):
                self._not_reading(peer, handler, waiting)
        caller = handler.reply[0] if isinstance(handler, control.Forward) else None
        new = self._check_handles(peer, caps, caller if caller is not peer else None)
        out_caps = [self._export_cap(peer, c) for c in caps]
        qid, data = peer.conn.send_call(import_id, interface_id, method_id, content, out_caps)
        self._unsent[peer.id] = self._unsent.get(peer.id, 0) + len(data)
        if new and caller is not None and caller is not peer:
            self._passed(peer, caller, caps, new)
        self._retain_new(caps, new)
        self._pending[(peer.id, qid)] = handler
        if isinstance(handler, control.Forward):
            handler.deadline = self.clock() + peer.limits.call_time
            heapq.heappush(self._deadlines, (handler.deadline, peer.id, qid))
        self.emit(fx.Send(peer.id, data))

    def _not_reading(self, peer: Peer, handler, waiting: int):
        """`peer` has more than its soft limit of bytes waiting to be written to it:
        refuse the call `handler` forwards, unless its caller holds little of what
        waits.  The bound is the callee's, one for all its callers: an engine reads
        nothing while a call runs, and one caller's large calls queued behind a long
        one had every other caller's calls refused (an outside review).  Up to twice
        the soft limit (far below the hard one, 4x + 16 MiB, that cuts the peer off),
        a caller whose own calls waiting there hold at most a quarter of the soft
        limit still gets through; past it, or beyond twice, the call is refused.

        An external caller's share includes the calls of external clients that are
        gone, cancelled there and not answered yet: their bytes still wait, and a
        client that filled its quarter, closed its connection and connected again
        had a quarter anew, filling twice the limit (every caller refused) with one
        connection at a time (an outside review).  The compartments' calls go on."""
        soft = queue_soft_limit(peer.limits)
        caller = handler.reply[0]
        if waiting <= 2 * soft:
            # (sums kept as they change: summed here over every call in flight,
            # each refused call cost O(all of them), _Pending)
            mine = handler.size + self._pending.forwarded.get((peer.id, caller.id), 0)
            if caller.laned and self.native is not None:
                # and those the fast lane forwarded for it (while the callee's backlog
                # was below its soft bound): not counted, a connection holding 21 MiB
                # there still had a quarter of its own (an outside review)
                mine += self.native.sent(caller.id, peer.id)
            gone = self._orphan_bytes_at.get(peer.id, 0) if caller.kind == "external" else 0
            if mine + gone <= soft // 4:
                return
            also = f", {gone} those of external clients that are gone" if gone else ""
            raise CallError(f"compartment {peer.name} is not reading its messages "
                            f"({waiting} bytes are waiting for it, {mine} of them "
                            f"{caller.name}'s calls not answered yet{also})", "overloaded")
        raise CallError(f"compartment {peer.name} is not reading its messages "
                        f"({waiting} bytes are waiting for it)", "overloaded")

    def _answer(self, reply, content: Content, caps, charged=None):
        """Return results to whoever made the call `reply` names.  `charged`: the
        peer (or _Gone) that passed it what it called (Call.charged): the
        capabilities count to that one's share of its c-list, as if passed in a
        call."""
        peer, answer_id = reply
        if caps and reply in self._sealed:
            # a sealed main object's answer: its schema has no capability to carry
            what, iface = self._sealed[reply]
            self.fail(reply, CallError(
                f"{what} answered with {len(caps)} capabilities, but {iface} carries none "
                f"(its schema has no capability)"))
            self.sweep(caps)
            return
        # the membranes it crossed; the call is closed (audit, calls probe) as its
        # caller is told: closed `returned` first, an answer the checks below then
        # refused (too large for the caller, past its `handles`) failed at the
        # caller and was recorded returned, with no reason (an outside review)
        crossed = self._through.get(reply, [])
        if not peer.alive or not peer.conn.awaiting_return(answer_id):
            self._close_call(reply, "returned")
            self.sweep(caps)
            if self._promises:
                self._settle(peer, answer_id, error=CallError("its answer was not sent"))
            return
        for m, label in reversed(crossed):   # innermost membrane first
            # a call back through a grant's reverse: what the holder answers it with
            # is its own, passed through the grant, and named so (as in _deliver),
            # not as the grant's ("app.calc (passed through)>Observer.step")
            caps = tuple(self._wrap(c, m, f"{m.label}>{label}" if m.forward is None else
                                    f"{describe(c)} (passed through {m.forward.label})")
                         for c in caps)
        if peer.conn.sends_elsewhere(answer_id):
            self._tail_ended(peer, answer_id, content, caps, close=True)
            return
        if caps and peer.conn.discards_results(answer_id):
            self._close_call(reply, "returned")
            # The peer gave up the call (Finish with releaseResultCaps before this
            # return): it ignores the capabilities of a return, and would never
            # release them.  Exported, they stayed in its c-list (and what they are
            # held) until it disconnected.  It gets `canceled`; calls it pipelined
            # on the answer before giving up, and promises on it, still go to what
            # the answer holds.
            self.emit(fx.Send(peer.id, peer.conn.send_canceled(answer_id)))
            out_caps = [self._export_cap(peer, c) for c in caps]
            self._after_return(peer, answer_id, content, out_caps)
            self.sweep(caps)
            return
        if caps:
            caps = self._own_past_promises(peer, caps)
        passer = None
        if caps and charged is not None and charged.id != peer.id:
            passer = charged
        try:
            self._check_size(peer, content)
            new = self._check_handles(peer, caps, passer, answer=True)
        except CallError as e:
            self.fail(reply, e)
            self.sweep(caps)
            return
        self._close_call(reply, "returned")
        out_caps = [self._export_cap(peer, c) for c in caps] if caps else []
        peer.useful = self.clock()
        # Engines never pipeline: spare them the Finish when nothing needs releasing.
        data = peer.conn.send_return(answer_id, content, out_caps,
                                     no_finish=peer.kind == "engine")
        if new and passer is not None:
            self._passed(peer, passer, caps, new)
        if caps:
            self._retain_new(caps, new)
            self._keep_own(peer, answer_id, caps)
            self._kept_past_own(peer)
        # The calls pipelined on the answer go on *before* the Return is sent: once
        # the caller reads it, it calls what the answer holds directly (rpc.capnp's
        # E-order, Disembargo: no embargo where the promise resolves to an object of
        # the vat it pointed at, "because the pipelined calls are delivered over the
        # same path as the later direct calls"), and the fast lane forwards those at
        # once.  Sent after the Return, the held calls were overtaken by the later
        # ones whenever the caller, woken by the Return, ran before the next write.
        self._after_return(peer, answer_id, content, out_caps,
                           then=fx.Send(peer.id, data))

    def _after_return(self, peer: Peer, answer_id: int, content: Content, out_caps,
                      then=None):
        """Answer `answer_id` to `peer` returned (content, out_caps): the calls pipelined
        on it go on, `then` (the Return) is sent, and the capabilities promised in it
        resolve."""
        taken = self._take_pipelined(peer, answer_id)
        if taken:           # nearly always nothing: no holding, no sweep of nothing
            self._pipelined_go_on(peer, answer_id, content, out_caps, taken)
        if then is not None:
            self.emit(then)
        if self._promises:
            self._settle(peer, answer_id, (content, out_caps))

    def _pipelined_go_on(self, peer: Peer, answer_id: int, content: Content, out_caps,
                         taken):
        """The calls `taken` were pipelined on answer `answer_id` to `peer`, which
        returned (content, out_caps): each goes on to what it names in it."""
        held = self._hold_until_done(call for _t, call in taken)
        try:
            for transform, call in taken:
                caller, their_id = call.reply
                if not caller.alive or not caller.conn.awaiting_return(their_id):
                    self.sweep(call.caps)
                    continue
                why = None
                if caller.conn.gave_up(their_id):     # as _run_queue: cancelled (Finish)
                    why = CallError("cancelled by its caller (Finish) before it could be "
                                    "delivered", "failed")
                else:
                    try:
                        target = self._resolve_pipeline(peer, (content, out_caps), transform)
                    except CallError as e:
                        why = e
                if why is not None:
                    self._refuse_call(call.reply, answer_id, call.interface_id,
                                      call.method_id, why)
                    self.sweep(call.caps)
                    continue
                self._deliver(target, call)
        finally:
            self._done_holding(held)

    def fail(self, reply, e: CallError):
        """The call `reply` names fails with `e`."""
        peer, answer_id = reply
        self._close_call(reply, "denied" if isinstance(e, Denial) else "failed", e.reason)
        if not peer.alive or not peer.conn.awaiting_return(answer_id):
            if self._promises:
                self._settle(peer, answer_id, error=e)
            return
        if peer.conn.sends_elsewhere(answer_id):
            self._tail_ended(peer, answer_id, error=e)
            return
        # a refusal for good is E_DENIED to a guest; a rate limit stays E_OVERLOADED
        reason = abi.DENIED_PREFIX + e.reason if isinstance(e, Denial) and e.type == "failed" \
            else e.reason
        if peer.kind == "external":
            # a guest's reason as the supervisor shows guest text (escaped): a client
            # reading Text as a C string (pycapnp's exception: `wsuper call`) cut it at
            # its first NUL, and every control character reached its terminal (r268)
            reason = printable(reason)
        self.emit(fx.Send(peer.id, peer.conn.send_exception(     # cut at REASON_LIMIT there
            answer_id, reason, e.type, no_finish=peer.kind == "engine")))
        calls = self._take_pipelined(peer, answer_id)
        if calls:                       # each may have calls pipelined on it: _soon
            self._soon(self._fail_pipelined, calls, e, answer_id)
        if self._promises:
            self._settle(peer, answer_id, error=e)

    def _fail_pipelined(self, calls, e: CallError, answer_id: int):
        """Calls pipelined on the answer `answer_id`, which failed: refused."""
        for _transform, call in calls:
            self._refuse_call(call.reply, answer_id, call.interface_id, call.method_id,
                              CallError(f"pipelined on a failed call: {e.reason}", e.type))
            self.sweep(call.caps)

    def _hold(self, peer: Peer, size: int) -> CallError | None:
        """Count `size` bytes of a call that waits in the router (pipelined on an
        answer not returned yet, made on a capability promised in one, or made on a
        compartment that is starting) against `peer`'s share and the shared pool;
        the refusal if either would be passed."""
        mine = peer.pipelined + size > pipelined_limit(peer.limits)
        more = pooled(peer.pipelined + size) - pooled(peer.pipelined)
        # external clients, all together, take at most half of the pool: it was
        # first come first served, and five connections of one local client could
        # take all of it (default message_size: 15 MiB each beyond their own), every compartment's waiting calls refused past their own
        # PIPELINED_PEER_BYTES (an outside review)
        external = peer.kind == "external"
        if more and external and not mine \
                and self.pipelined_external + more > self.pipelined_total // 2:
            return CallError(
                f"{peer.name} has calls of {peer.pipelined} bytes waiting (on answers "
                f"not returned yet, or on a compartment's start); this one of {size} "
                f"bytes would pass the limit of external clients' calls waiting: "
                f"they hold {self.pipelined_external} bytes in all beyond the "
                f"{PIPELINED_PEER_BYTES} bytes each connection has to itself, and may "
                f"hold half of the supervisor's {self.pipelined_total}", "overloaded")
        if mine or self.pipelined_pooled + more > self.pipelined_total:
            return CallError(
                f"{peer.name} has calls of {peer.pipelined} bytes waiting (on answers "
                f"not returned yet, or on a compartment's start); this one of {size} "
                f"bytes would pass the "
                f"limit of {pipelined_limit(peer.limits)} bytes per connection "
                f"(twice message_size, at least {PIPELINED_PEER_BYTES})" if mine else
                f"calls waiting on answers not returned yet, or on a compartment's "
                f"start, hold "
                f"{self.pipelined_pooled} bytes in all beyond the "
                f"{PIPELINED_PEER_BYTES} bytes each connection has to itself; this "
                f"one of {size} bytes would pass the supervisor's limit of "
                f"{self.pipelined_total} bytes",
                "overloaded")
        peer.pipelined += size
        self.pipelined_bytes += size
        self.pipelined_pooled += more
        if external:
            self.pipelined_external += more
        return None

    def _unhold(self, peer: Peer, size: int):
        """`size` bytes _hold counted for `peer` no longer wait."""
        less = pooled(peer.pipelined) - pooled(peer.pipelined - size)
        self.pipelined_pooled -= less
        if peer.kind == "external":
            self.pipelined_external -= less
        peer.pipelined -= size
        self.pipelined_bytes -= size

    def _hold_call(self, call: Call) -> CallError | None:
        """A call waits in the router (pipelined on an answer, on a promise, on a
        compartment's start): its bytes count against its caller (_hold), and its
        capabilities are held while it waits: another holder letting go of one must
        not release it at its peer, whose count of references includes this call's.
        The refusal if the bytes would pass a limit (nothing is held then)."""
        refused = self._hold(call.reply[0], call.content.size())
        if refused is None:
            for c in call.caps:
                if c is not None:
                    c.refs += 1
        return refused

    def _let_go_call(self, call: Call):
        """A waiting call goes on (or fails): what _hold_call held is left to the
        call's own handling, which exports the capabilities or sweeps them."""
        self._unhold(call.reply[0], call.content.size())
        for c in call.caps:
            if c is not None:
                c.refs -= 1

    def _take_pipelined(self, peer: Peer, answer_id: int) -> list:
        """The calls `peer` pipelined on its answer `answer_id`, no longer waiting."""
        calls = self._pipelined.pop((peer.id, answer_id), None)
        if not calls:
            return ()
        for _t, call in calls:
            self._let_go_call(call)
        return calls

    def _close_call(self, key, outcome: str, reason: str | None = None) -> list:
        if key in self._waiting:
            self._stop_waiting(key)
        if key in self._host_of:        # a host call that ended without its answer (revoked):
            del self._host_calls[self._host_of.pop(key)]     # its answer goes nowhere
        self._sealed.pop(key, None)
        if self._spent:
            # it ends before it reached its callee (refused by another membrane on its
            # way or by the router, or failed while it waited): a refused call spends
            # no use and no rate token of the grants it crossed (docs/policy-reference.md)
            for m in self._spent.pop(key, ()):
                m.refund()
        crossed = self._through.pop(key, [])
        for m, _label in crossed:
            m.inflight.discard(key)
        if self.call_watch:
            self.call_probes.close(key, outcome, reason)
        if self.audit.enabled:
            record = self.audit.close(key, outcome, self.clock(), reason)
            if record is not None:
                self._record(record)
        return crossed

    @staticmethod
    def _oversized(peer: Peer, content: Content, what: str) -> CallError | None:
        """An external client's params or results larger than its message_size: the
        framing admits a message up to HEADER_WORDS more (its header), and what lay
        between went on to the compartment (params of 56 KB from a client whose
        message_size was 1 KiB).  A compartment's own are its engine's to refuse
        (E_MESSAGE)."""
        if peer.kind != "external":
            return None
        size = content_bytes(content, peer.limits.message_size)
        if size <= peer.limits.message_size:
            return None
        return CallError(f"{what} of {size} bytes from {peer.name} are more than it may "
                         f"send (limit message_size = {peer.limits.message_size})", "failed")

    @staticmethod
    def _check_size(peer: Peer, content: Content):
        size = content_bytes(content, peer.limits.message_size)
        if size > peer.limits.message_size:
            raise CallError(f"a message of {size} bytes is more than {peer.name} accepts "
                            f"(limit message_size = {peer.limits.message_size})", "failed")

    def _method(self, call: Call) -> str:
        return self.names.call(call.interface_id, call.method_id)

    # ------------------------------------------------------------ membranes

    def attenuate(self, cap, label: str, grant, interface_id: int):
        """`cap` seen through the membrane of grant `label`, made on first use and
        kept across the holder's restarts: a revoked grant stays revoked (a holder
        cannot undo a revocation by crashing), and quotas keep counting."""
        membrane = self.membranes.get(label)
        if membrane is None:
            membrane = self.membranes[label] = Membrane.for_grant(label, grant, interface_id,
                                                                  self.clock())
            if label in self._revoked_early:
                membrane.revoke()                 # nothing is in flight through it yet
            if membrane.host_grant and membrane.expires_at is not None:
                heapq.heappush(self._host_expiries,
                               (membrane.expires_at, next(self._expiry_ids), membrane))
        wrapped = self._wrap(cap, membrane, label)
        if membrane.revoked or membrane.host_grant and self._expired(membrane):
            # revoked after its holder's start opened it, before the engine was up to
            # be handed it (a start takes as long as an engine to come up): released
            # now, as revoke does, or it stayed open for this incarnation's life
            self._release_host_objects(membrane)
        return wrapped

    def _wrap(self, cap, membrane: Membrane, label: str):
        """`cap` seen through `membrane`: itself if the membrane is already on its way
        (a capability passed back and forth across a grant is wrapped once, not once
        a crossing: the same membrane twice admits the same calls, and would count a
        quota twice a call), else its one wrapper there."""
        if cap is None:
            return cap
        inner = cap
        while type(inner) is Wrapped:
            if inner.membrane is membrane:
                return cap
            inner = inner.target
        w = membrane.wrappers.get(id(cap))
        if w is None:
            w = membrane.wrappers[id(cap)] = Wrapped(cap, membrane, label)
            cap.refs += 1
            if type(cap) is Host and membrane.host_grant \
                    and (membrane.revoked or self._expired(membrane)):
                # opened by a call that was under way as its grant expired (which
                # runs on): no call reaches it, and it is let go of at once too
                self._release_host_objects(membrane)
        return w

    # ------------------------------------------------------------ capability tables

    def remote(self, peer: Peer, import_id: int) -> Remote:
        r = peer.remotes.get(import_id)
        if r is None:
            r = peer.remotes[import_id] = Remote(peer, import_id)
        return r

    @staticmethod
    def _held(cap) -> bool:
        """Whether `cap` (taken from an answer's result) is still a capability the
        supervisor holds.  A Remote let go of (swept: its import released at its
        host) is not, and its import id is its host's to give to another object:
        client a, which released its import of a counter and pipelined on the
        unfinished answer that returned it, reached client b's new counter, to
        which calc had given the id (an outside review).  A Wrapped is held while
        its membrane holds it (Membrane.wrappers), and what it wraps is: one let go
        of dropped what it held of its target, and reached, it passed on a
        capability holding nothing (another review: it failed, 'released', at
        whoever it was passed to once the target's other holders let it go)."""
        while type(cap) is Wrapped:
            if cap.membrane.wrappers.get(id(cap.target)) is not cap:
                return False
            cap = cap.target
        if isinstance(cap, Remote):
            return cap.peer.remotes.get(cap.import_id) is cap
        if isinstance(cap, Promised):
            # let go of: out of the promises its answer settles (or what it resolved
            # to let go of too); reached, a call on it waited until its call_time
            return not cap.released
        return True

    @staticmethod
    def is_remote_of(cap, peer: Peer) -> bool:
        return isinstance(cap, Remote) and cap.peer is peer

    def import_cap(self, peer: Peer, c):
        """Our capability object for an incoming capability descriptor."""
        if c is None:
            return None
        if isinstance(c, protocol.Imported):
            return self.remote(peer, c.import_id)
        if isinstance(c, protocol.Exported):
            return c.obj
        # receiverAnswer: a capability inside the result of a call the peer made to us
        promised = Promised(peer, c.answer_id, c.transform)
        if c.error is not None:
            # a broken promise is a broken capability, not a broken call: what it is
            # passed in goes on, and calls on it fail as on one whose answer failed
            # after it was passed (_settle_now).  The call failed here ("capability
            # from a failed call") when the answer had failed before the call came,
            # and went on when it failed later: one client program, two outcomes,
            # by timing (Cap'n Proto delivers the call either way)
            promised.error = _broken_promise(c.error)
            promised.error_type = c.error_type
            return promised
        if c.result is None:            # not returned yet: calls on it wait for it
            self._promises.setdefault((peer.id, c.answer_id), {})[promised] = None
            return promised
        try:
            return self._resolve_pipeline(peer, c.result, c.transform)
        except CallError as e:          # no capability there: broken, as above
            promised.error, promised.error_type = _broken_promise(e.reason), e.type
            return promised

    def _import_caps(self, peer: Peer, payload) -> tuple:
        """Our capability objects for a payload's capabilities; if one cannot be had,
        the CallError, and the others are let go of: the peer's own objects it passed
        in the same message stayed imported, nobody referring to them, until it
        disconnected.  (A promise on a failed call, or on a field that holds none,
        is had: a broken capability, import_cap.)"""
        caps = []
        try:
            for c in payload.caps:
                caps.append(self.import_cap(peer, c))
        except CallError:
            self.sweep(caps)
            self._drop_imported(peer, payload)
            raise
        return tuple(caps)

    @staticmethod
    def _check_handles(peer: Peer, caps, caller: Peer | None = None,
                       answer: bool = False) -> set:
        """Refuse to grow a peer's c-list past its `handles` limit; the entries the
        capabilities `caps` would add (their ids).

        With `caller` (another peer, whose call passes `caps` to this one): the
        table is shared by every caller and by the compartment itself, and was one
        for all, first come first served: an external client passing 1,024 objects
        of its own in calls the compartment had not answered yet (its engine busy)
        filled it, and until they were answered every other caller's call passing
        it a capability (a callback) failed, and so did the compartment's own calls
        whose answers brought it one (a File it opened), "would hold more than
        1024" (an outside review).  What callers' calls passed it and it has not
        released yet may fill at most three quarters of the table (the rest is for
        what it asks for itself), and past half of it a caller that has more than
        a quarter of the table there is refused (as `_not_reading` shares the bytes
        waiting for a callee).

        `answer`: `caps` come in the answer to a call the peer made on something
        `caller` passed it (a callback: Call.charged), and count to that caller as
        what it passed does.  Counted as the peer's own, a client that passed calc
        an observer answered each of calc's calls on it with 256 objects of its
        own and filled calc's whole table in four answers, past its share of
        params, every other caller refused again (an outside review)."""
        conn = peer.conn
        new = {id(c) for c in caps if c is not None
               and not (isinstance(c, Remote) and c.peer is peer)
               and conn.export_id(c) is None} if caps else set()
        limit = peer.limits.handles
        if len(conn.exports) + peer.tail_caps + len(new) > limit:
            raise CallError(f"{peer.name} would hold more than {limit} "
                            f"capabilities (limit handles); it must release some", "overloaded")
        if caller is not None and new:
            passed = len(peer.passed) + len(new)
            own = peer.passed_by.get(caller.id, 0)
            # a caller's share counts what the gone callers of its pool passed and
            # the peer still holds (external clients gone, or earlier instances of
            # the same compartment): what a client passed stays after it closes its
            # connection, and connecting again (or restarted) it had a share anew,
            # one connection at a time filling the three quarters, every caller
            # refused (an outside review; as _not_reading counts gone clients' bytes)
            was = peer.gone_by.get(caller.id) if peer.gone_by else None
            pool = was or (_pool(caller) if peer.passed_gone else None)
            gone = peer.passed_gone.get(pool, 0) if pool is not None else 0
            mine = (gone if was else own + gone) + len(new)
            if passed > limit - limit // 4 or (passed > limit // 2
                                                and mine > max(1, limit // 4)):
                also = f", {gone} those of {_pool_name(pool)}" if gone and not was else ""
                raise CallError(
                    f"{peer.name} holds {len(peer.passed)} capabilities that callers "
                    f"passed it, {own} of them passed by {caller.name} (in "
                    f"its calls, or in answers to calls on what it passed){also}; this "
                    f"{'answer' if answer else 'call'}'s {len(new)} more would pass "
                    f"its share (limit "
                    f"handles = {limit}: callers' capabilities may fill three quarters "
                    f"of it, and past half a caller may have a quarter); try again once "
                    f"it has released some", "overloaded")
        return new

    def _charged(self, peer: Peer, obj):
        """Who passed `peer` the entry `obj` of its c-list (a peer, or _Gone with its
        pool), to whose share the answer to its call on it counts (Call.charged);
        None: its own."""
        who = peer.passed.get(id(obj))
        if who is None:
            return None
        return self.peers.get(who) or _Gone(who, peer.gone_by.get(who))

    @staticmethod
    def _passed(peer: Peer, caller: Peer, caps, new: set):
        """`caller`'s call passed `peer` the capabilities `new` names, new entries of
        its c-list: counted to `caller` until `peer` releases them (_unpassed).  A
        caller gone since (an answer to a call on what it passed came after it
        went) counts to its pool: as _Gone, counted to the id alone, its entries
        there after `peer` had let go of all its others counted to nobody's share
        (an outside review)."""
        if not getattr(caller, "alive", False) and caller.id not in peer.gone_by \
                and _pool(caller) is not None \
                and any(c is not None and id(c) in new and id(c) not in peer.passed
                        for c in caps):
            peer.gone_by[caller.id] = _pool(caller)
        for c in caps:
            if c is not None and id(c) in new and id(c) not in peer.passed:
                peer.passed[id(c)] = caller.id
                _tally(peer.passed_by, caller.id, 1)
                if caller.id in peer.gone_by:
                    _tally(peer.passed_gone, peer.gone_by[caller.id], 1)

    @staticmethod
    def _unpassed(peer: Peer, obj):
        """`peer` released its last reference to `obj`: no longer counted to whoever
        passed it."""
        who = peer.passed.pop(id(obj), None)
        if who is not None:
            pool = peer.gone_by.get(who) if peer.gone_by else None
            if pool is not None:
                _tally(peer.passed_gone, pool, -1)
            if not _tally(peer.passed_by, who, -1) and pool is not None:
                del peer.gone_by[who]

    def _own_past_promises(self, peer: Peer, caps) -> tuple:
        """`caps` for an answer to `peer`, each promise that has resolved to an object
        `peer` hosts itself (past the promises on its way, never past a membrane)
        replaced by that object, which the answer then names as the peer's own
        (receiverHosted), as Cap'n Proto's RPC writes a resolved promise's
        descriptor.  Exported as the promise, it reached the peer as a new import
        of the supervisor's, and every call the peer made on its own object went
        through the supervisor and back (a pycapnp client's
        echo.hold(cap=echo.hold(cap=mine).cap): 300 calls 0.34 s, against 0.02 s
        for its own object).  A promise not resolved yet is still exported as
        itself: the supervisor sends no Resolve (docs/design.md, Known limits)."""
        out = []
        for c in caps:
            if type(c) is Promised:
                t = self._past_settled(c)
                if isinstance(t, Remote) and t.peer is peer:
                    c = t
            out.append(c)
        return tuple(out)

    @staticmethod
    def _export_cap(peer: Peer, cap):
        if isinstance(cap, Remote) and cap.peer is peer:
            return RemoteRef(cap.import_id)
        return cap

    @staticmethod
    def _keep_own(peer: Peer, answer_id: int, caps):
        """Hold `peer`'s own objects returned to it in answer `answer_id` until its
        Finish: the answer names them only by import id, and a call pipelined on it
        (or a promise on it passed in a call) must find them still imported."""
        a = peer.conn.answers.get(answer_id)
        if a is None or a.finished:
            return
        own = [c for c in caps if isinstance(c, Remote) and c.peer is peer]
        if own:
            for c in own:
                c.refs += 1
            peer.kept.setdefault(answer_id, []).extend(own)

    @staticmethod
    def _retain_new(caps, new: set):
        """Count one reference per export-table entry a capability has: one for each
        entry the message just sent made (`new`: their ids, _check_handles).  Told
        by the entry's refcount being 1, a capability named twice in the message
        that made its entry (refcount 2: `caps=[x, x]`, a list of the same object)
        was never counted, and when that peer released it (or went) the reference
        it dropped was another holder's: the capability was let go of under them,
        released at its host, which could give its id to another object of its,
        and a holder passing it on handed its host a reference to that one (r256,
        fuzz/attenuation_scenarios.py)."""
        if new:
            for cap in caps:
                if cap is not None and id(cap) in new:
                    new = new - {id(cap)}
                    cap.refs += 1

    def _drop(self, cap):
        """One reference to `cap` less: let go of it if that was the last (sweep)."""
        cap.refs -= 1
        self.sweep((cap,))

    def sweep(self, caps):
        """Let go of capabilities nobody in the supervisor refers to any more: release
        a peer's import, close a host object; and, in turn, of what one let go of held
        (a wrapper what it wraps, a resolved promise what it resolved to).  That is a
        work list, one for the outermost sweep: as recursion, three frames a link, a
        chain of promises each resolved to the one before (which a client makes as
        long as it likes: each call passing the capability promised in the answer to
        the call before, 600 of them) ended in RecursionError as it was let go of,
        halfway, when the client disconnected ("internal error after it was lost"),
        and what the loss had not reached yet stayed."""
        work = self._sweeping
        if work is not None:                   # within a sweep: it takes them in turn
            work.extend(caps)
            return
        self._sweeping = work = collections.deque(caps)
        try:
            while work:
                self._sweep_one(work.popleft())
        finally:
            self._sweeping = None

    def _sweep_one(self, cap):
        """One capability of a sweep's work list (see sweep)."""
        if cap is None or cap.refs > 0:
            return
        if isinstance(cap, Remote) and cap.peer.alive \
                and cap.peer.remotes.get(cap.import_id) is cap:
            del cap.peer.remotes[cap.import_id]
            if cap.peer.laned:
                self._unroute_keys(self._routes_to.get((cap.peer.id, cap.import_id)))
            if cap.import_id in cap.peer.conn.imports:
                self.emit(fx.Send(cap.peer.id, cap.peer.conn.send_release(cap.import_id)))
        elif isinstance(cap, Host) and not cap.released and cap.kind != "gateway":
            cap.released = True
            if cap.served is not None:
                self.emit(fx.HostRelease(cap.kind, cap.served))
        elif isinstance(cap, Wrapped) and cap.membrane.wrappers.get(id(cap.target)) is cap:
            del cap.membrane.wrappers[id(cap.target)]
            self._drop(cap.target)
        elif isinstance(cap, Promised):
            if cap.target is not None:              # resolved: let go of what it is
                self._let_go_promise(cap)
            elif cap.error is None and not cap.queue:   # no one will call it
                waiting = self._promises.get((cap.peer.id, cap.answer_id))
                if waiting and cap in waiting:
                    del waiting[cap]
                    if not waiting:
                        del self._promises[(cap.peer.id, cap.answer_id)]
                # out of the promises its answer settles: reached again (through
                # an open answer that returned it, _held), a call on it waited
                # for a settling that never came, until its call_time
                self._let_go_promise(cap)

    def _let_go_promise(self, promised: Promised):
        """`promised` is let go of (nobody holds it): what it resolved to too, and it
        fails whatever reaches it after (_held refuses it in an answer's result)."""
        promised.released = True
        promised.error = "the promised capability was released"
        promised.error_type = "failed"
        target, promised.target = promised.target, None
        if target is not None:
            self._drop(target)

    def _release_host_objects(self, m):
        """Grant `m` is revoked: the host objects it wraps (a directory or file grant,
        and what was opened through it) are released now, not when their holder lets
        go of them, which a compartment that keeps them never does: their descriptors
        kept a revoked directory busy (an unmount failed) and counted to the
        holder's.  No call reaches them again (m refuses it); the holder's handles
        stay until it releases them, and release nothing more then.  Only a host
        grant's, whose objects the host made for it: what a compartment grant's
        other side hands back (in an answer, or in the params of a call back) is
        its own, whether its grant has a membrane or not, and stays open.  Released
        by type alone, a callee's plain directory grant (and what it opened
        through it) handed to the holder was closed under the callee, which had
        revoked nothing (an outside review).  A probe grant's queue of events too: the
        prober copied every event of the compartment it watches into it (10,000 kept)
        for as long as its holder kept the handle, though nothing could read it
        (an outside review, reviewer 184)."""
        if not m.host_grant:
            return
        for w in list(m.wrappers.values()):
            t = w.target
            if type(t) is Host and t.kind in ("directory", "file", "probe") \
                    and not t.released and t.served is not None:
                t.released = True
                self.emit(fx.HostRelease(t.kind, t.served))

    def _released_all(self, objects) -> list:
        for kind, served in objects:
            self.emit(fx.HostRelease(kind, served))
        return self._flush()

    # ------------------------------------------------------------ compartments

    def connect_proxy(self, proxy: Proxy, main: Remote):
        """The compartment's engine is up: its main object serves the proxy, and the
        calls that waited go to it."""
        main.refs += 1
        if self._routes:
            self._unroute(lambda r: r.proxy is proxy)
        self._let_go_held(proxy)
        proxy.target = main
        self._run_queue(proxy)

    def _let_go_held(self, proxy: Proxy):
        """What engine_closed held of the proxy's last engine, and its pending end."""
        proxy.ending = None
        if proxy.holding is not None:
            held, proxy.holding = proxy.holding, None
            held.refs -= 1
            self.sweep((held,))

    def start_failed(self, peer: Peer, reason: str):
        self.emit(fx.StartFailed(peer.name, reason, peer.id))
        proxy = self.proxies.get(peer.name)
        if proxy is not None:
            self._break_proxy(proxy, f"compartment {peer.name} failed to start: {reason}")

    def _caller_gone(self) -> str:
        """Why a call whose caller went is recorded failed: the stop's reason once the
        system stops (its callers are the engines it ends: "the caller is gone" said
        of a call in flight at the stop, as if its caller had died on its own)."""
        return self.stopping or "the caller is gone"

    def _lose(self, peer: Peer, reason: str):
        """Take every entry out of the peer's tables first, then fail what depended on it."""
        peer.alive = False
        # what it passed others and they still hold counts from now on to the share
        # of their c-lists of every caller in its pool (Router._check_handles)
        pool = _pool(peer)
        for other in self.peers.values() if pool is not None else ():
            n = other.passed_by.get(peer.id) if other.passed_by else None
            if n and peer.id not in other.gone_by:
                other.gone_by[peer.id] = pool
                _tally(other.passed_gone, pool, n)
        if self.stopping is not None and peer.kind == "engine":
            # the stop ended it: its callers were told "engine killed by SIGTERM", as
            # if it had crashed, not that the system stopped (an outside review)
            reason = f"{self.stopping} ({reason})"
        if peer.laned:        # its routes go; native calls to it fail, calls from it are
            self._unroute_keys(self._routes_at.get(peer.id), take_calls=False)  # orphans,
            #                                                   cancelled below
            if peer.kind == "engine":
                # what it served natively is its compartment's, as what Python forwarded
                # (counted by name): the lane's count goes with its record of the peer,
                # and `wsuper status` showed SERVED go down at a restart (an outside review)
                served = self.native.counts(peer.id)[2]
                if served:
                    self.answered.setdefault(peer.name, [0, 0])[0] += served
            for rec in self.native.drop_peer(peer.id):
                self.adopt(rec, gone=reason if rec[3] == peer.id else None)
        exported = peer.conn.drop_all()
        self._overdue_by.pop(peer.id, None)        # (its count, Connection.overdue, is 0)
        self._overdue_of.pop(peer.id, None)
        pending, orphaned = [], []     # calls it was asked; calls forwarded for it
        for k, h in self._pending.items():
            if k[0] == peer.id:
                pending.append((k, h))
            elif isinstance(h, control.Forward) and h.reply[0] is peer:
                orphaned.append(k)
        for k, _ in pending:
            del self._pending[k]
        if self._tails:                # its tail calls: questions waiting on them, outcomes
            for k in [k for k in self._tails if k[0] == peer.id]:
                t = self._pop_tail(peer, k[1])   # (its questions are in `pending` already)
                if isinstance(t, _Outcome):
                    self._let_go_outcome(t)
        if self._orphans:              # its own calls' cancellations: it will not answer
            for k in [k for k in self._orphans if k[0] == peer.id]:
                self._unorphan(k)
        if self._cancelled_of:         # what it cancelled: orphans_limit's from now on
            self._gone_cancelled(peer)
        for k in orphaned:
            self._cancel(k, peer)
        self._orphans_changed()
        waiting = [(k[1], self._take_pipelined(peer, k[1])) for k in list(self._pipelined)
                   if k[0] == peer.id]
        for obj in exported:
            self._drop(obj)
        for on, calls in waiting:
            for _t, call in calls:       # made, never delivered: recorded as refused
                self._audit_refused(call.reply, on, call.interface_id, call.method_id)
                self._close_call(call.reply, "failed", self._caller_gone())
            self.sweep([c for _t, call in calls for c in call.caps])
        if self._promises:
            for key in [k for k in self._promises if k[0] == peer.id]:
                self._settle(peer, key[1], error=CallError(f"{peer.name} is gone: {reason}",
                                                           "disconnected"))
        # its calls waiting (on a promise, on a start): out of their queues first, then
        # ended (sweeping their capabilities may drop promises: not while iterating)
        mine = [w for key, w in self._waiting.items() if key[0] is peer]
        for w in mine:
            w.where.queue.remove(w)
        for call in [self._unwait(w) for w in mine]:
            self._close_call(call.reply, "failed", self._caller_gone())
            self.sweep(call.caps)
        for key in [k for k in self._host_of if k[0] is peer]:   # its host calls: not run
            self._close_call(key, "failed", self._caller_gone())
        # its calls still on the books with neither a callee nor a wait: ones a fault
        # cut off while they were delivered (_guarded), after a membrane admitted
        # them and before they reached a callee: what they spent comes back, and no
        # membrane counts them in flight
        for key in [k for k in (*self._spent, *self._through) if k[0] is peer]:
            if key in self._spent or key in self._through:
                self._close_call(key, "failed", self._caller_gone())
        for _key, handler in pending:
            handler.lost(self, peer, reason)
        proxy = self.proxies.get(peer.name)
        if peer.kind == "engine" and proxy is not None and self.engines.get(peer.name) is peer:
            if proxy.holding is not None and proxy.holding.peer is peer:
                # closed its connection first (engine_closed): its calls wait on for
                # the runtime's decision, made before anything else runs
                self._let_go_held(proxy)
                proxy.ending = (peer, f"compartment {peer.name} is gone: {reason}")
            else:
                self._break_proxy(proxy, f"compartment {peer.name} is gone: {reason}")
        self.peers.pop(peer.id, None)

    def _cancel(self, key, caller: Peer, orphan: bool = True, reason: str | None = None,
                live: bool = False):
        """The call forwarded as `key` (callee id, question id) for `caller`, which is
        gone: nobody wants its answer.  The callee is sent Finish before its Return,
        which rpc.capnp makes a cancellation (an engine does not run a call finished
        before it began), and its late answer goes nowhere (_on_return), as after
        call_time.  Until it comes, or the callee's call_time from now passes, an
        external caller's call counts against orphans_limit (if `orphan`: its caller
        is gone, not merely refused it).  `live`: its caller is still connected and
        cancelled it (_finished): it counts to that caller's in_flight instead, until
        its callee answers or the caller goes."""
        handler = self._pending.pop(key, None)
        if handler is None:                  # gone meanwhile (its callee was cut off)
            return
        self._close_call(handler.reply, "failed", reason or self._caller_gone())
        callee = self.peers.get(key[0])
        if callee is None or not callee.alive:
            return

        def cancel():
            self.count(callee, False)
            # its Return may have come already: takeFromOtherQuestion, naming a tail
            # call still running (_on_taken).  Then this Finish ends the question (its
            # id free for the next call) and no answer is to come: nothing to count
            returned = self._finish_overdue(callee, key[1], caller)
            if orphan and caller.kind == "external" and not returned:
                deadline = self._orphans[key] = self.clock() + callee.limits.call_time
                if live and caller.alive:
                    self._cancelled_by[key] = caller.id
                    self._cancelled_of[caller.id] = self._cancelled_of.get(caller.id, 0) + 1
                    self._native_ok(caller)
                else:
                    self._orphans_at[key[0]] = self._orphans_at.get(key[0], 0) + 1
                if type(handler) is control.Forward and handler.size:
                    self._orphan_bytes[key] = handler.size      # (_not_reading)
                    self._orphan_bytes_at[key[0]] = \
                        self._orphan_bytes_at.get(key[0], 0) + handler.size
                heapq.heappush(self._deadlines, (deadline, key[0], key[1]))
        self._guarded(callee, cancel, flush=False)

    def _finished(self, caller: Peer, answer_id: int):
        """`caller` sent Finish for its call `answer_id` before it was answered: it
        cancelled it (rpc.capnp).  A call forwarded for it is cancelled at its callee
        as a lost caller's is (_cancel: Finish, which an engine honours by not
        running a call it has not begun, and by failing the next host call of one it
        is running, so that what that call would cause down the chain is not done
        either), and the caller gets its Return now, `canceled`.  It was ignored: the
        callee ran the call to its end, and every call it made for it, for nobody.
        An answer the caller pipelined calls on, or promised a capability of in a
        call, or a tail call, is left to run: what it holds is still wanted."""
        key = self._pending.of_reply.get((caller.id, answer_id))
        if key is None:
            return
        handler = self._pending.get(key)
        if type(handler) is not control.Forward or handler.reply[0] is not caller \
                or handler.reply[1] != answer_id:
            return
        mine = (caller.id, answer_id)
        if mine in self._pipelined or mine in self._promises \
                or caller.conn.sends_elsewhere(answer_id):
            return
        # an external client's counts against its own in_flight until its callee
        # answers (as if it still waited), and against orphans_limit once it is gone,
        # as a gone client's calls do: its Return frees its place of in_flight now, and
        # calling and cancelling again and again would queue work without bound.  It
        # counted against orphans_limit at once, which all clients share: one client
        # calling and cancelling filled it, and every other client's calls to that
        # compartment were refused until it answered them (an outside review)
        self._cancel(key, caller, orphan=True, live=True,
                     reason=f"{caller.name} cancelled this call (Finish) before it "
                            f"was answered")
        self._orphans_changed()
        self.emit(fx.Send(caller.id, caller.conn.send_canceled(answer_id)))

    def _unorphan(self, key) -> bool:
        """The cancelled call `key` is answered, or past its time: it counts no more."""
        if self._orphans.pop(key, None) is None:
            return False
        size = self._orphan_bytes.pop(key, 0)
        if size:
            left = self._orphan_bytes_at.pop(key[0]) - size
            if left:
                self._orphan_bytes_at[key[0]] = left
        by = self._cancelled_by.pop(key, None) if self._cancelled_by else None
        if by is not None:                   # its live caller's, not orphans_limit's
            n = self._cancelled_of.pop(by) - 1
            if n:
                self._cancelled_of[by] = n
            peer = self.peers.get(by)
            if peer is not None:
                self._native_ok(peer)
            return True
        n = self._orphans_at.pop(key[0]) - 1
        if n:
            self._orphans_at[key[0]] = n
        return True

    def _gone_cancelled(self, peer: Peer):
        """`peer`, gone, had calls it cancelled that their callees have not answered:
        from now on they count against orphans_limit, as a gone client's do."""
        if not self._cancelled_of.pop(peer.id, None):
            return
        for key in [k for k, by in self._cancelled_by.items() if by == peer.id]:
            del self._cancelled_by[key]
            self._orphans_at[key[0]] = self._orphans_at.get(key[0], 0) + 1
        self._orphans_changed()

    def _native_ok(self, peer: Peer):
        """The router's say to the fast lane on an external client's new calls: to
        Python (which judges them) while any compartment is past orphans_limit, or
        while calls it cancelled count to its in_flight (the lane counts only its
        own calls in flight)."""
        if peer.kind == "external" and peer.conn.native is not None:
            peer.conn.native.router_ok(not self._orphans_full
                                       and not self._cancelled_of.get(peer.id))

    def _orphans_changed(self):
        """A compartment past orphans_limit (or none any more): external clients'
        calls go to Python, which refuses those to that compartment (or they may go
        natively again).  The bound is per compartment: the calls one client left at
        one compartment must not keep every client from every other."""
        full = any(n >= self.orphans_limit for n in self._orphans_at.values())
        if full == self._orphans_full:
            return
        self._orphans_full = full
        for p in self.peers.values():
            self._native_ok(p)

    def _break_proxy(self, proxy: Proxy, reason: str, type: str = "disconnected"):
        if self._routes:
            self._unroute(lambda r: r.proxy is proxy)
        self._let_go_held(proxy)
        proxy.error = reason
        proxy.error_type = type
        if proxy.target is not None:
            proxy.target.refs -= 1
            self.sweep((proxy.target,))
        proxy.target = None
        for call, _first, _chain in self._take_all(proxy):
            self.fail(call.reply, CallError(reason, type))
            self.sweep(call.caps)
