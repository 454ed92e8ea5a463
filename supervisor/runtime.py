"""The trio side: engine processes, sockets, worker threads, the operator's terminal.

Nothing here decides.  The router (router.py) decides what each message
means, the lifecycle (supervision.py) what happens when compartments start
and stop, the host layer (hostcaps.py) what a host call answers; this module
moves bytes between sockets and the router, runs file operations in worker
threads under deadlines, and performs the effects and actions it is given.

It never lets a peer stop it: reading from an external client pauses while too
much waits to be written to it (backpressure), and from any peer while too much
waits for the audit log (an engine, which writes blocking, is read on whatever
waits for it: _may_read); a peer that
sends part of a message and then stalls, or does not read what is sent to it,
is cut off; a file operation that hangs fails its call; running out of file
descriptors refuses a connection or delays a restart, never ends the system.
"""
from __future__ import annotations

import collections
import datetime
import errno
import functools
import fcntl
import gc
import json
import math
import os
import re
import resource
import select
import signal
import socket as pysocket
import struct
import sys
import threading
import time

import trio

from capnp_schemas import hosted, wire
from capnp_schemas.text import first_line, printable, quoted
from compartments import confine
from compartments.limits import Limits
from compartments.spec import EXIT_GUEST_OK, EngineSpec

from . import auditshare, authority, effects as fx, endpoint, fastlane, hostcaps, output, \
    policy, process, router as R, startsignals, stderr, supervision as S, threads
from .prober import Prober
from .preflight import Plan
from .process import Launched, Zygote, raise_fd_limit
from .turns import Turns

GRACE_SECONDS = 2.0
EXPIRY_TICK = 0.05          # call_time is enforced to within this
SLICE = 4096                # bytes of a read fed to the router at a time
_TABLE_ONE = struct.Struct("<II")   # a one-segment message's segment table (_whole_message)
TURN = 0.002                # seconds one peer may hold the event loop before it yields
CLOSE_FLUSH = 1.0           # seconds what is queued for a closed external connection may take
LINGERING = 8               # connections we ended read to their end at a time (_linger)
LINGER_BYTES = 1 << 20      # ... and at most this much of each (and of what is still
                            # to be written to one: more, and it is closed at once)
ABORT_BYTES = 4096          # past LINGERING, what is still to be written to a
                            # connection is, if no more than this (its Abort), then closed
IDLE_EVICT = 1.0            # an external connection without useful work this long may make
                            # room for another (see idlest)
WRITE_PIECE = 1 << 20       # bytes a peer's writer task sends at a time (_Link.writer)
AUDIT_BACKLOG = 10_000      # audit records waiting to be written before peers pause
AUDIT_SLICE = 1_000         # records the audit's writer writes at a time (_Audit.flush)
AUDIT_LAST_WRITE = 5.0      # seconds the last audit write may take at stop
#: seconds an admin request being answered as the system stops has to finish its answer
ADMIN_LAST_ANSWER = 2.0
SOCKET_CHECK = 1.0          # seconds between two looks that the sockets are still at their paths
#: why a call still in flight when the system stops failed (its record's reason, what
#: its caller is told): ended by the audit's end, or by the stop of its callee's or
#: its caller's engine (Router.stopping)
STOPPED = "the system stopped before it was answered"
FD_RESERVE_BASE = 64        # descriptors kept free for restarts and connections
FD_RESERVE_PER_ENGINE = 4
#: Host file descriptors each compartment keeps for itself, whatever the others
#: hold (at most: the budget shared out, half of it kept for anyone)
FD_EACH = 16
IO_LIMITERS_KEPT = 256       # worker-thread limiters (owner, caller) kept before idle ones go
#: seconds a host objects' worker thread stays for another job after its last (holding
#: one of its compartment's 2 tokens: a grant's opening waits at most this for one)
IO_LINGER = 0.05


#: descriptors the supervisor opens as it starts, beside those open when it plans
#: (fd_plan): its sockets, the fast lane's, the log files' directory
FD_START_MARGIN = 16


class FdShortage(Exception):
    """The descriptor limit cannot hold a system's reserves (fd_plan)."""


def fd_plan(limit: int, compartments: int, max_connections: int,
            open_now: int = 0) -> tuple[int, int]:
    """How the soft RLIMIT_NOFILE `limit` is shared out for a system of `compartments`
    (pure): (external connections at once, descriptors host files may hold).  Beside
    FD_RESERVE_BASE and FD_RESERVE_PER_ENGINE for each engine, external connections
    take a descriptor each: as many as max_connections allows, but never more than
    half of what is left (or FD_RESERVE_BASE, where half is fewer), the rest being the
    host files' (a max_connections above the descriptors let clients take every one:
    no engine restarted, no grant opened), and never so many that the host files have
    fewer than one for each compartment (the one FD_EACH keeps for it at least).
    Connections had that floor whatever was left, and the host files' budget came
    out below zero without a word: a system of 50 compartments under `ulimit -n 300`
    refused every directory grant "the supervisor has no file descriptors to spare"
    with ~110 free, and its compartment failed for good.

    Raises FdShortage when the limit cannot hold the engines themselves: `open_now`
    (open already) and FD_RESERVE_PER_ENGINE for each engine (its socket, its stderr
    pipe, its log file, a restart's) and FD_START_MARGIN for what the supervisor opens
    as it starts (its sockets, the fast lane's).  Under 128, 50 engines were started:
    45 ran, the rest failed "cannot start its engine: Too many open files", then
    "cannot make its socket", and failed for good, none of it naming the limit."""
    if limit == resource.RLIM_INFINITY:
        limit = 1 << 62
    engines = FD_RESERVE_PER_ENGINE * compartments
    need = open_now + engines + FD_START_MARGIN
    if limit < need:
        raise FdShortage(
            f"this process may open only {limit} file descriptors (RLIMIT_NOFILE, its "
            f"hard limit included), and a system of {compartments} compartments needs "
            f"at least {need}: the {open_now} open already, {FD_RESERVE_PER_ENGINE} "
            f"for each compartment's engine and {FD_START_MARGIN} for the supervisor's "
            f"sockets: raise the limit (ulimit -n) or run fewer compartments")
    spare = limit - FD_RESERVE_BASE - engines
    external = max(1, min(max_connections, max(FD_RESERVE_BASE, spare // 2),
                          spare - compartments))
    return external, max(compartments, spare - external)


def _open_descriptors(limit: int) -> int:
    """Descriptors this process has open (0, 1 and 2 included), below `limit`."""
    from .launch import _inherited_descriptors
    return _inherited_descriptors(limit)[1] + 3


class _QueuePool:
    """What waits to be written to one kind of peer, all of them together: up to its
    soft bound each one's own, and beyond it from one pool for all (`pool` bytes):
    external clients (router.external_queue_pool) and compartments' engines
    (router.engine_queue_pool), each kind its own pool, so that neither can take
    the other's.  Each peer was bounded alone, by its hard bound: one local client
    that opened max_connections connections and left their answers unread held
    32 x 80 MiB of the supervisor's memory (an outside review), and N taken-over
    engines that flooded calls and read nothing N x 80 MiB (r258).  A write that
    would take the pool past its size cuts off the peers that hold the most of it
    (beyond their own), as many as it takes, if each holds more than the writer
    would; else the writer is refused and cut off (router.pool_shed decides)."""

    def __init__(self, pool: int, kind: str = "external client",
                 kinds: str = "external clients", excused=None):
        self.pool = pool
        self.kind, self.kinds = kind, kinds
        #: peer id -> bytes of the calls forwarded to it and not answered yet: what of
        #: those waits for it past its soft bound (at most its link's `calls_room`,
        #: router.calls_past_soft) is its callers', bounded where the router admits
        #: calls, not its share of this pool (None: all of it is)
        self.excused = excused
        self.links: dict = {}           # link -> its peer id
        #: (peer id, reason) of the peers shed to make room, to be cut off by the
        #: supervisor once the write that shed them is done (Supervisor._shed)
        self.owed: list = []
        #: at least what they all hold beyond their own: past a peer's soft bound
        #: only the writes asked here add to it (the fast lane forwards within the
        #: soft bound alone), and what drains, or goes with a peer, only takes from
        #: it.  Every peer is measured again only once a write would take this past
        #: `pool`: measured at each write past a soft bound, a write cost O(peers),
        #: 0.42 ms with 1000 compartments, for each answer to an engine that floods
        self.upper = 0
        self._lock = threading.Lock()       # written from the lane's worker too

    def room(self, link, after: int, adding: int | None = None) -> bool:
        """Whether `link` may have `after` bytes waiting for it, `adding` of them
        new (None: not known; others may be shed for it: `owed`)."""
        beyond = after - link.soft
        if beyond <= 0:
            return True
        with self._lock:
            if adding is not None and self.upper + adding <= self.pool:
                self.upper += adding
                return True
            return self._measured(link, after, beyond)

    def _past_own(self, link, raw: int) -> int:
        """What of `raw` bytes waiting for `link` past its soft bound is beyond its
        own: less the calls its callers sent it there (`excused`)."""
        if raw > 0 and self.excused is not None and link.calls_room:
            pid = self.links.get(link)
            if pid is not None:
                return raw - min(self.excused(pid), link.calls_room)
        return raw

    def _measured(self, link, after: int, beyond: int) -> bool:
        # `upper` is made exact on what waits past the soft bounds, calls to them or
        # not: what is excused may end (its calls answered) without a write here
        raw = [(other.queued - other.soft, other) for other in tuple(self.links)
               if other is not link and other.shed is None]
        held = [(self._past_own(other, r), other) for r, other in raw]
        upper = sum(r for r, _ in raw if r > 0)
        own = self._past_own(link, beyond)
        if own <= 0:        # calls to it, bounded where admitted (router.calls_past_soft)
            self.upper = upper + beyond
            return True
        shed = R.pool_shed(own, held, self.pool)
        if shed is None:
            # the writer holds the most: it goes (its writer cuts it off), and counts
            # no more meanwhile: counted, the next write shed it too, and it was cut
            # off twice, the second time as "peer 9" with the other reason
            link.shed = self.refused(link, after)
            self.upper = upper
            return False
        beyond_of = {id(other): b for b, other in held}
        raw_of = {id(other): r for r, other in raw}
        self.upper = beyond + upper - sum(max(raw_of[id(other)], 0) for other in shed)
        calls = " and the calls sent to it" if self.excused is not None else ""
        for other in shed:
            b = beyond_of[id(other)]
            other.shed = (f"it does not read its messages ({b} bytes wait for it beyond "
                          f"its own {other.soft}{calls}, the most of any {self.kind}, and "
                          f"{self.kinds} together may have at most {self.pool} bytes "
                          f"waiting beyond their own)")
            pid = self.links.get(other)
            if pid is not None:
                self.owed.append((pid, other.shed))
        return True

    def refused(self, link, after: int) -> str:
        return (f"it does not read its messages ({after} bytes would wait for it, and "
                f"{self.kinds} together may have at most {self.pool} bytes waiting "
                f"beyond their own {link.soft})")


def _not_reading(link) -> str:
    """Why `link`'s write was refused: the reason its peer is cut off."""
    return link.why or f"it does not read its messages (more than {link.hard} bytes " \
                       f"are waiting for it)"


class _Link:
    native = False
    calls_room = 0              # router.calls_past_soft of its peer's (an engine's)
    shared: _QueuePool | None = None          # its kind's pool (external, engines)
    why: str | None = None                     # why a write was refused, if not `hard`
    external = False            # an external client's (the clients' turn: _client_turn)
    shed: str | None = None                    # why the pool shed it (to be cut off)
    cut = False                 # closed by us, not by its peer (a client: _linger)
    cut_reason: str | None = None   # why (an engine's end says it: _read_engine)
    detached = None             # (the lane's: _NativeLink)
    """A peer's socket.  Writes go straight to the (non-blocking) socket; only what
    the kernel does not take at once is queued, in order, for a writer task.
    `queued` counts the bytes waiting; `drained` is set whenever none wait."""

    def __init__(self, stream: trio.SocketStream, limits: Limits, engine: bool = False):
        self.stream = stream
        self.fd = stream.socket.fileno()
        # an engine is read whatever waits for it (_may_read): it writes blocking
        self.engine = engine
        self.external = not engine
        self.send, self.recv = trio.open_memory_channel(math.inf)
        self.soft = R.queue_soft_limit(limits)
        self.hard = R.queue_hard_limit(limits)
        self.queued = 0
        self.drained = trio.Event()
        self.drained.set()
        self.closed = False
        self.partial: int | None = None          # the message half received, if any
        self.partial_since: float | None = None  # ... since when
        self.turn = 0.0                          # when it last let others run
        self._reads = 0
        # backpressure (_may_read): when it last took bytes of what waits for it, and
        # since when it has not been read for what waits (time.monotonic; None: read)
        self.wrote_at = 0.0
        self.held_since: float | None = None
        self._token = trio.lowlevel.current_trio_token()
        self._waiting: trio.CancelScope | None = None    # its reader's wait to read

    def write(self, data: bytes) -> bool:
        """Queue `data`; False if the peer has more waiting than it may (cut it off)."""
        if self.closed or self.shed is not None:    # shed: cut off next, as if closed
            return True
        if not self.queued:
            try:
                n = os.write(self.fd, data)
            except BlockingIOError:
                n = 0
            except OSError:          # the peer is gone (or reads no more): its reader
                self.close()         # is woken, and its task reports it
                return True
            if n:
                self.wrote_at = time.monotonic()
            if n == len(data):
                return True
            data = data[n:]
        if self.queued + len(data) > self.hard:
            return False
        if self.shared is not None and not self.shared.room(self, self.queued + len(data),
                                                            len(data)):
            self.why = self.shared.refused(self, self.queued + len(data))
            return False
        self.queued += len(data)
        self.drained = trio.Event() if self.drained.is_set() else self.drained
        try:
            self.send.send_nowait(data)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.closed = True
        return True

    def close(self):
        """Closed: cut off, evicted, or a write to it failed (it is gone, or shut
        its reading side)."""
        self.closed = True
        self.send.close()
        self.drained.set()
        # its reader, waiting for it to send (wait_readable), is woken now: it sees
        # it closed (receive) and its task ends, freeing its descriptor and its
        # place.  A client evicted while silent kept its task waiting to read it for
        # ever, and evicting its own silent connections one after another heaped up
        # descriptors without bound; so did a client that shut its reading side,
        # was written an answer (the write failed, which only marked it closed) and
        # then sent nothing: four of them kept every other client out for good, as
        # no eviction takes a closed connection.  The socket still writes what is
        # queued for it (CLOSE_FLUSH).
        if self.engine:
            # an engine writes blocking: shut our reading side, and a write of its
            # that nobody reads fails (EPIPE) rather than waits for its kill
            try:
                self.stream.socket.shutdown(pysocket.SHUT_RD)
            except OSError:          # closed already, or not connected any more
                pass
            return
        # a client's reader is woken by cancelling its wait, not by shutting our
        # reading side: on a Unix socket that failed the client's next write at once
        # (EPIPE), and one that wrote before it read heard "Broken pipe", not the
        # Abort saying why it was cut off (Supervisor._linger reads what it sends
        # after that).  The host worker (turns.py) may close a link too: a cancel
        # is trio's thread's to make, so it is asked of it
        try:
            trio.lowlevel.current_task()
        except RuntimeError:                 # not trio's thread: the host worker
            self._token.run_sync_soon(self._stop_waiting)
        else:
            self._stop_waiting()

    def _stop_waiting(self):
        if self._waiting is not None:
            self._waiting.cancel()

    async def receive(self) -> bytes:
        """The next bytes from the peer (b"" at its end), read straight from the
        non-blocking socket.  trio's SocketStream yields to the scheduler once more
        after every successful read, which cost more per message than routing it;
        here a task parks only when there is nothing to read, and every 16th
        read yields anyway (and _pump lets go every TURN seconds), so a peer that
        never stops sending starves nobody."""
        self._reads += 1
        if self._reads % 16 == 0:
            await trio.lowlevel.checkpoint()
            self.turn = time.perf_counter()
        while True:
            if self.closed or self.stream.socket.fileno() != self.fd:
                return b""       # closed meanwhile: the number may belong to another socket
            try:
                return os.read(self.fd, 1 << 16)
            except BlockingIOError:
                self._waiting = trio.CancelScope()
                with self._waiting:
                    await trio.lowlevel.wait_readable(self.fd)
                self._waiting = None
                self.turn = time.perf_counter()
            except OSError as e:           # said as the lane says it: "Connection reset by peer"
                raise trio.BrokenResourceError(e.strerror or str(e)) from None

    async def aclose(self):
        await self.send.aclose()

    async def writer(self):
        async with self.recv:
            async for data in self.recv:
                try:
                    # in pieces, each noted (wrote_at): a peer that reads, however
                    # slowly, is told from one that reads nothing (_may_read)
                    view = memoryview(data)
                    for at in range(0, len(view), WRITE_PIECE):
                        await self.stream.send_all(view[at:at + WRITE_PIECE])
                        self.wrote_at = time.monotonic()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    self.close()
                    return
                self.queued -= len(data)
                if not self.queued:
                    self.drained.set()


class _EngineEnd:
    """How far an engine's reader got in acting on its end (Supervisor._end_engine)."""
    __slots__ = ("acted",)

    def __init__(self):
        self.acted = False       # its callers told and its restart policy asked


class _AdminConn:
    """An admin connection being served: since when, whether its request line is
    still being read (then it may be closed to make room: endpoint.admin_evictee),
    and the scope of that read."""
    __slots__ = ("since", "reading", "evicted", "scope", "answering")

    def __init__(self, since: float):
        self.since = since
        self.reading = True
        self.evicted = False
        self.scope = trio.CancelScope()
        self.answering = False      # its request is being answered (not a trace session)


_OPEN = object()     # a fast-lane link whose stream has not ended


class _NativeLink:
    """An engine's socket as the fast lane owns it (fastlane.py): the lane's thread
    reads it, forwards what it can, and queues the rest for Python; every write
    goes through the lane's queue, so the router's writes and the lane's own never
    interleave.  Backpressure is the lane's: it stops reading an external client
    while more than `soft` bytes wait for it (never an engine: _may_read), or any
    peer while Python has not taken what it queued.

    What the lane queues is handed to the router by the task that watches the
    lane (Supervisor._lane_events) at once, within one TURN; what is left after
    that (a flood) goes to this peer's own task (`pending`, `busy`), which lets
    the others run every TURN.  `end`: why the stream ended (None: it closed)."""
    native = True
    calls_room = 0              # router.calls_past_soft of its peer's (an engine's)
    shared: _QueuePool | None = None
    why: str | None = None
    external = False            # an external client's (the clients' turn: _client_turn)
    shed: str | None = None
    cut = False                 # closed by us, not by its peer (a client: _linger)
    cut_reason: str | None = None   # why (an engine's end says it: _read_engine)
    detached: tuple | None = None   # (its descriptor, what was not written) from the lane

    def __init__(self, lane, pid: int, limits: Limits, external: bool = False):
        self.lane = lane
        self.pid = pid
        self.external = external
        self.soft = R.queue_soft_limit(limits)
        self.hard = R.queue_hard_limit(limits)
        self.closed = False
        self.wake = trio.Event()
        self.pending: list = []
        self.busy = False
        self.end = _OPEN

    @property
    def queued(self) -> int:
        return self.lane.queued(self.pid)

    def write(self, data: bytes) -> bool:
        if self.closed or self.shed is not None:    # shed: cut off next, as if closed
            return True
        shared = self.shared
        if shared is not None:
            # within its soft bound (nearly always: every host call's answer to an
            # engine comes here) the pool is not asked: room() would say yes at once,
            # and asking it was 16 of the 61 opcodes r258 added to each host call
            # (benchmarks/hostpath.py --opcodes; r260)
            after = self.lane.queued(self.pid) + len(data)
            if after > self.soft and not shared.room(self, after, len(data)):
                self.why = shared.refused(self, after)
                return False
        return self.lane.write(self.pid, data)

    def close(self):
        self.closed = True
        self.lane.close(self.pid)
        self.finish(None)

    def finish(self, reason):
        if self.end is _OPEN:
            self.end = reason
        self.wake.set()

    async def writer(self):
        pass

    async def aclose(self):
        self.closed = True
        if self.cut and self.external:       # told why: its descriptor is lingered on
            self.detached = self.lane.detach(self.pid)
        else:
            self.lane.remove(self.pid)


_SKIPPED = object()          # a host job not run: its call ended while it waited
#: (kind, interface id, method id) of the host methods whose answer is an object
#: holding a descriptor (Directory.open, create, subdir): counted before they run
_OPENS = frozenset((kind, iface.id, i) for kind, iface in hosted.BY_KIND.items()
                   if kind in ("directory", "file") for i, m in enumerate(iface.methods)
                   if any(str(f.proto.slot.type.which) == "interface"
                          for f in m.results.schema.fields_list))
_NO_FDS = "EMFILE: the supervisor has no file descriptors to spare; close some files"


class _IoEntry:
    """A host call's Job, queued on its host object; `deadline`: trio's clock at
    which its call fails ETIMEDOUT, run or not; `answered`: its call was (by the
    job's outcome or its deadline; trio's side only); `pool`: the _IoPool of its
    call (Supervisor._io_key), whose threads run it and whose task fails it at its
    deadline, whichever pool ran the job before it on the same object; `key`: its
    host object (Supervisor._job_key)."""
    __slots__ = ("call", "job", "deadline", "answered", "blame", "pool", "key")

    def __init__(self, call, job, deadline: float, blame=None, pool=None, key=None):
        self.call, self.job, self.deadline, self.answered = call, job, deadline, False
        self.blame = blame      # the lane's peer whose input made the call (Turns.blame)
        self.pool, self.key = pool, key


class _IoPool:
    """The worker threads (at most 2) of one compartment's host objects, or of a
    caller's calls on those it was handed (Supervisor._io_key), and their work.
    Guarded by the supervisor's `_io_lock` (`cond` is on it): `ready`, the host
    objects with a job queued and none running, in the order they became ready;
    `threads`, worker threads wanted or running; `waiting`, those of them idle in
    `cond.wait` and not notified; `wakes`, notifies not yet taken (_io_notify);
    `done`, (entry, outcome) for trio's side.  Trio's side only:
    `pending`, every entry not yet answered (and those answered behind one), in
    the order of their deadlines;
    `started`, tasks running a worker thread; `wake`, what the pool's task waits on."""
    __slots__ = ("key", "owner", "caller", "cond", "ready", "threads", "waiting", "wakes",
                 "done", "pending", "started", "wake", "running")

    def __init__(self, key, owner: str, caller: str, lock: threading.Lock):
        self.key, self.owner, self.caller = key, owner, caller
        self.cond = threading.Condition(lock)
        self.ready: collections.deque = collections.deque()
        self.threads = self.waiting = self.wakes = self.started = 0
        self.done: list = []
        self.pending: collections.deque = collections.deque()
        self.wake = trio.Event()
        self.running = False            # its task (Supervisor._io_pool) is started


def _ends_a_line(fd: int, size: int) -> bool:
    """Whether the file of the descriptor `fd` (open for writing only), of `size`
    bytes, ends with a newline; True when that cannot be told (read through another
    descriptor of the same file: one that may not be read is left as it is)."""
    try:
        r = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return True
    try:
        return os.pread(r, 1, size - 1) in (b"\n", b"")
    except OSError:
        return True
    finally:
        os.close(r)


class _Audit:
    """The audit log, written by a worker thread in batches; JSON lines with
    wall-clock RFC 3339 times, a run id, and a record when a run starts and ends.
    `set_event`: how `add` wakes the writer (the supervisor's, from either thread)."""
    set_event = staticmethod(trio.Event.set)

    def __init__(self, path: str, run_id: str, max_size: int = 0, keep: int = 1,
                 share: float = 1.0):
        self.path = path
        self.run_id = run_id
        self.max_size = max_size          # rotated before it would pass this; 0: never
        self.keep = keep
        # each caller's share of a file, and the summaries past it (the writer's
        # thread alone uses it, under _lock; `due` is read by writer())
        shares = auditshare.AuditShares(max_size, share)
        self.shares = shares if shares.limit is not None else None
        self._size = 0
        self._dir = None                  # its directory, opened once (rotation renames)
        self.pending: list[dict] = []
        self.wake = trio.Event()
        self.room = trio.Event()
        self.room.set()
        self.failed: str | None = None
        self.ended = False                # `run stopped` was added: nothing comes after it
        self._file = None
        self._flushing = trio.Lock()
        # held by the thread that writes (_write); close() takes it only if free: a
        # write a hung disk holds is abandoned at stop, never waited for
        self._lock = threading.Lock()
        self._closed = False
        self._writing: list | tuple = ()  # the batch a write under way has
        self._done = 0                    # records of that batch written (_write_now)
        self.on_note = lambda text: None  # told what the operator should know (say)
        self._note: str | None = None     # ... from the writer's thread, for flush
        self.lost = 0                     # records not written since the audit failed

    def add(self, record: dict):
        if self.ended:                  # `run stopped` is the run's last record
            return
        if self.failed:                 # counted (unwritten), never written
            self.lost += 1
            return
        if record.get("time") is None:
            record = {**record, "time": _wall()}
        self.pending.append(record)
        self.set_event(self.wake)
        if len(self.pending) >= AUDIT_BACKLOG and self.room.is_set():
            self.room = trio.Event()

    async def writer(self, on_error):
        while True:
            due = self.shares.due if self.shares is not None else None
            if due is None:
                await self.wake.wait()
            else:                       # summaries wait: written by then, records or not
                with trio.move_on_after(max(due - _wall(), 0.0)):
                    await self.wake.wait()
            self.wake = trio.Event()
            await self.flush(on_error)
            await trio.sleep(output.BATCH_SECONDS)   # let records gather: one write for many

    async def flush(self, on_error):
        """Write what is pending.  One flush at a time: records stay in order, and the
        last flush waits for a batch the writer is still writing."""
        async with self._flushing:
            left = len(self.pending)
            if self.failed or not (left or self._summaries_due()):
                self.pending = []
                self.room.set()
                return
            first = True                # one write, of summaries alone if no record waits
            # What waits now, AUDIT_SLICE records at a time, and the peers read again
            # (room) as soon as fewer than AUDIT_BACKLOG wait: the whole backlog was
            # one write, and every peer's input waited for all of it (10,000-14,000
            # records, 0.16-0.57 s with a client flooding audited calls; meanwhile
            # its calls on the fast lane went on, its records held there)
            while (left > 0 or first) and not self.failed:
                first = False
                n = min(left, AUDIT_SLICE)
                left -= n
                batch, self.pending = self.pending[:n], self.pending[n:]
                self._writing = batch
                try:
                    # abandoned when cancelled: a disk that held a write (a hung network
                    # file system) held the stop with it, for as long as it held the
                    # write, past AUDIT_LAST_WRITE, `wsuper stop` and SIGTERM included
                    await threads.run_sync(self._write, batch, abandon_on_cancel=True)
                except trio.Cancelled:
                    # the stop's deadline came before the write began, or before it
                    # ended: kept, so that unwritten() counts them (they were gone
                    # without a word)
                    self.pending[:0] = batch
                    raise
                except (endpoint.EndpointError, OSError) as e:
                    # the file found there after a rotation (EndpointError), or a write
                    # that failed (a full disk: ENOSPC): what the batch did not write,
                    # and every record after it, is counted (unwritten), for the stop
                    # to say; they were dropped without a count
                    self.failed = str(e) if isinstance(e, endpoint.EndpointError) else \
                        f"{self.path}: {e.strerror or e}"
                    self.lost += len(batch) - self._done + len(self.pending)
                    self.pending = []
                    on_error(self.failed)
                finally:
                    self._writing = ()
                    note, self._note = self._note, None
                    if note:
                        self.on_note(note)
                if len(self.pending) < AUDIT_BACKLOG:
                    self.room.set()
            self.room.set()

    def _summaries_due(self) -> bool:
        due = self.shares.due if self.shares is not None else None
        return due is not None and due <= _wall()

    def unwritten(self) -> int:
        """Records added and not written: waiting, or in a write that has not ended (the
        writer's, which a disk may hold past the stop: it is not waited for), or
        lost to the write that failed and since (`lost`); and the calls counted
        into summaries not written (auditshare: `waiting`)."""
        return len(self.pending) + len(self._writing) + self.lost + (
            self.shares.waiting if self.shares is not None else 0)

    def open(self):
        """Open the file now, before anything runs: never through a link, and a
        regular file only.  A FIFO there (opened for writing, it waits for a
        reader) held the writer thread for good: records piled up, peers were
        paused at AUDIT_BACKLOG, and stopping waited for that write forever."""
        import stat
        try:
            if self.max_size and self._dir is None:    # where it is rotated, for good
                self._dir = os.open(os.path.dirname(self.path), os.O_RDONLY | os.O_DIRECTORY
                                    | os.O_CLOEXEC)
            fd = os.open(self.path if self._dir is None else os.path.basename(self.path),
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                         | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600, dir_fd=self._dir)
        except OSError as e:
            what = output.enxio_kind(
                self.path if self._dir is None else os.path.basename(self.path),
                self._dir, "a FIFO (named pipe) no one reads") if e.errno == errno.ENXIO else \
                e.strerror or str(e)
            # the hint only where the file is what is wrong (a FIFO, a link): a
            # read-only file system or a full one is no matter of the file's kind
            hint = "; the audit must be a regular file" \
                if e.errno in (errno.ENXIO, errno.ELOOP) else ""
            raise endpoint.EndpointError(f"cannot open the audit file {self.path}: "
                                         f"{what}{hint}") from None
        st = os.fstat(fd)
        mode = st.st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" \
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" \
                if stat.S_ISSOCK(mode) else "not a regular file"
            raise endpoint.EndpointError(f"the audit file {self.path} is {kind}: the audit "
                                         f"must be a regular file")
        try:
            # this run's, while it runs: another system given the same file (a second
            # system file) interleaved its records and rotated the file from under this
            # one, whose writes then went into a rotation, deleted at the next
            endpoint.lock_exclusive(fd, f"the audit file {self.path}")
        except endpoint.LockHeld:
            os.close(fd)
            raise endpoint.EndpointError(f"the audit file {self.path} is being written by "
                                         f"another running system: give each system its "
                                         f"own") from None
        except endpoint.EndpointError:
            os.close(fd)                # a file system that cannot lock: said so
            raise
        # after the lock: a running system's rotation links AUDIT.1 to the file for
        # a moment (_rotate), and a second system is told of that system, not of links
        if st.st_nlink > 1:
            os.close(fd)
            raise endpoint.EndpointError(policy.audit_links_problem(self.path, st.st_nlink))
        # and still the file at its name: locked after the system before us let go of
        # it at its rotation (opened before its rename, locked after), this run wrote
        # into that system's AUDIT.1 while it wrote the new file
        try:
            now = os.stat(self.path if self._dir is None else os.path.basename(self.path),
                          dir_fd=self._dir, follow_symlinks=False)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise endpoint.EndpointError(f"the audit file {self.path} is being rotated by "
                                         f"another running system: give each system its "
                                         f"own")
        size = st.st_size
        if size and not _ends_a_line(fd, size):
            # its last record cut short (a full disk, a file size limit, a machine
            # that lost power mid-write): this run's first record was appended to
            # it, one line that is no JSON, and lost to every reader of the audit
            try:
                os.write(fd, b"\n")
            except OSError as e:
                os.close(fd)
                raise endpoint.EndpointError(f"cannot write the audit file {self.path}: "
                                             f"{e.strerror or e}") from None
            size += 1
        os.set_blocking(fd, True)
        self._size = size
        self._file = open(fd, "ab")
        if self.shares is not None:
            self.shares.full = self._window_full()

    def _window_full(self) -> bool:
        """Whether the next rotation deletes a file (AUDIT.keep is there): only then
        can one caller's records push another's out, and shares are kept
        (auditshare).  Not known (any error but its absence): taken as full."""
        try:
            os.stat(f"{os.path.basename(self.path)}.{self.keep}", dir_fd=self._dir,
                    follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError:
            return True
        return True

    def _write(self, batch: list):
        with self._lock:
            if not self._closed:        # an abandoned write that begins after close()
                self._write_now(batch)

    def _write_now(self, batch: list):
        import json
        self._done = 0
        if self._file is not None and self._gone():
            # removed or moved away (space freed, a logrotate without copytruncate):
            # written on through its descriptor, into a file no name reached, every
            # later record of the run was lost, without a word.  A new one there,
            # opened as at start (regular, locked, one name; else the audit fails)
            old, self._file = self._file, None
            try:
                if self._dir_left() or not os.path.lexists(os.path.dirname(self.path)):
                    # its directory too (an `rm -rf` of the log directory it lies in,
                    # which the system makes again): the new file was opened in the
                    # removed directory (ENOENT, the audit failed, the system
                    # stopped), or in the moved one.  Made again at its path as at
                    # start (ours, closed to others; else the audit fails)
                    endpoint.own_dir(os.path.dirname(self.path), "audit directory ")
                    if self._dir is not None:
                        gone, self._dir = self._dir, None
                        os.close(gone)
                self.open()
            finally:
                old.close()
            self._note = (f"note: the audit file {self.path} was removed or moved while "
                          f"the system ran: a new one is made there (the records before "
                          f"are in the file moved, if it was)")
        if self._file is None:          # never through a link someone planted
            self.open()
        chunk: list[bytes] = []
        shares = self.shares
        admit = shares.admit if shares is not None else None
        now = _wall()
        n = 0                           # records of the batch in chunk (or summarized)
        summed: list[dict] = []         # summary records in chunk
        run = self.run_id

        def encode(r):
            return (json.dumps({**r, "time": _rfc3339(r["time"]), "run": run},
                               separators=(",", ":")) + "\n").encode()
        for part, of_batch in self._parts(batch, now):
            for r in part:
                line = admit(r, now, encode) if of_batch and admit is not None else encode(r)
                if line is None:
                    n += 1              # counted into its caller's summary
                    continue
                if self.max_size and self._size and self._size + len(line) > self.max_size:
                    self._append(chunk, n, summed)
                    chunk, n, summed = [], 0, []
                    self._rotate()
                    if shares is not None:
                        shares.rotated(self._window_full())
                chunk.append(line)
                self._size += len(line)
                if of_batch:
                    n += 1
                else:
                    summed.append(r)
        self._append(chunk, n, summed)

    def _parts(self, batch: list, now: float):
        """What a write writes, in parts: (records, of the batch?).  The batch, after
        the summaries due; and every summary waiting just before `run stopped` (the
        run's last record, the last of its batch: `add` takes none after it)."""
        shares = self.shares
        if shares is None:
            yield batch, True
            return
        yield [self._summary(s) for s in shares.summaries(now)], False
        if batch and batch[-1].get("event") == "run stopped":
            yield batch[:-1], True
            yield [self._summary(s) for s in shares.summaries(now, all=True)], False
            yield batch[-1:], True
        else:
            yield batch, True

    @staticmethod
    def _summary(record: dict) -> dict:
        return {**record, "first": _rfc3339(record["first"]), "last": _rfc3339(record["last"])}

    def _dir_left(self) -> bool:
        """Whether the directory the audit was opened in (its rotations' `_dir`) is
        no longer the one at its path: removed, or moved away."""
        return self._dir is not None and output.not_at(self._dir, os.path.dirname(self.path))

    def _gone(self) -> bool:
        """Whether the open file is no longer the one the audit's path names."""
        return self._dir_left() or output.not_at(
            self._file.fileno(),
            self.path if self._dir is None else os.path.basename(self.path), self._dir)

    def _append(self, chunk: list, n: int | None = None, summed=()):
        """Whole records or nothing: a write that fails (a full disk, the file size
        limit) is cut back to where it began.  Left, the file's last record was cut
        short, a line that is no JSON for every reader of the audit."""
        if not chunk:
            self._done += n or 0
            return
        fd = self._file.fileno()        # its buffer is always empty: written here only
        at = os.fstat(fd).st_size       # this run's alone: the file is locked
        data = memoryview(b"".join(chunk))
        try:
            while data:                 # a short write is followed by its error
                data = data[os.write(fd, data):]
        except OSError:
            try:
                os.ftruncate(fd, at)    # a file made shorter needs no room
            except OSError:
                pass
            raise
        self._done += len(chunk) if n is None else n
        if summed:
            self.shares.written(summed)

    def _rotate(self):
        """AUDIT -> AUDIT.1 -> ... -> AUDIT.keep (the oldest goes), and a new AUDIT
        in its place, locked before it takes the name: at no moment is AUDIT
        missing, nor a file this system has not locked.  The file stays open, and
        so locked, until the new one is (closed first, a second system starting
        meanwhile locked it, and wrote into AUDIT.1); and the new one was made after
        the renames, opened by its name: a second system (a service manager
        starting it again and again) that made and locked AUDIT in between ran,
        and this one, refused its own new file, stopped."""
        old, self._file = self._file, None
        try:
            name = os.path.basename(self.path)
            fd = self._successor(name)
            try:
                output.rotate(self._dir, name, self.keep, keep_current=True)
                os.replace(self._next_name(name), name, src_dir_fd=self._dir,
                           dst_dir_fd=self._dir)
                now = os.stat(name, dir_fd=self._dir, follow_symlinks=False)
                own = os.fstat(fd)
                if (now.st_dev, now.st_ino) != (own.st_dev, own.st_ino):
                    raise endpoint.EndpointError(f"the audit file {self.path} was replaced "
                                                 f"while it was rotated")
            except BaseException:
                try:
                    os.unlink(self._next_name(name), dir_fd=self._dir)
                except OSError:
                    pass
                os.close(fd)
                raise
            os.set_blocking(fd, True)
            self._size = 0
            self._file = open(fd, "ab")
        finally:
            old.close()

    @staticmethod
    def _next_name(name: str) -> str:
        """The successor's name while it is made (hidden, beside the audit); an
        audit whose name is near NAME_MAX gets a short one (made from its hash)."""
        return policy.audit_successor_name(name)

    def _successor(self, name: str) -> int:
        """The next audit file, made (empty, a regular file, never through a link)
        and locked under a name of its own beside the audit (_next_name)."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC \
            | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            try:
                fd = os.open(self._next_name(name), flags, 0o600, dir_fd=self._dir)
            except FileExistsError:      # left by a rotation cut short: not ours now
                os.unlink(self._next_name(name), dir_fd=self._dir)
                fd = os.open(self._next_name(name), flags, 0o600, dir_fd=self._dir)
        except OSError as e:
            raise endpoint.EndpointError(f"cannot make the next audit file beside "
                                         f"{self.path}: {e.strerror or e}") from None
        try:
            endpoint.lock_exclusive(fd, f"the audit file {self.path}")
        except endpoint.EndpointError:
            os.close(fd)
            raise
        return fd

    def close(self):
        """No more writes.  A write still under way (abandoned at stop: a disk that
        holds it) keeps the file, which the process's exit closes: waiting for it
        here held the stop for as long as the disk held the write."""
        self._closed = True
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError:
                    pass
                self._file = None
            if self._dir is not None:
                os.close(self._dir)
                self._dir = None
        finally:
            self._lock.release()


#: Supervisor._granted's note of a grant whose path named another directory or file
#: when the system started than when policy.load checked it
_REPLACED = "replaced since it was checked"


class Supervisor:
    _turns: Turns | None = None      # while the lane's host worker runs (_lane_host)
    _clock = None                    # trio's clock, which any thread may read
    _log_dir_fd: int | None = None   # the log directory, locked while the system runs
    #: what waits for external clients, all of them (made with the first one); every
    #: batch of effects asks it which clients a write shed (_shed)
    _external_queues: _QueuePool | None = None
    _engine_queues: _QueuePool | None = None       # what waits for engines (made in __init__)

    def __init__(self, plan: Plan, socket_path: str | None = None, out=None, err=None,
                 log_format: str = "text", zygote: Launched | None = None):
        self.plan = plan
        self._launched = zygote
        self.system = plan.system
        # what this system is (its file, links resolved), once: its lock, its sockets
        # and its answers are named after it.  Resolved again at each request, a link
        # on the way moved since (cur -> v1, now -> v2) made it refuse every request
        # meant for it as meant for another, and nothing could stop it
        self.identity = endpoint.identity(self.system.path)
        self.log_dir = self.system.logs or endpoint.default_log_dir(
            endpoint.system_id(self.identity))
        self.output = output.Output(out or sys.stdout, err or sys.stderr, log_format,
                                    self.log_dir, self._terminal_gone,
                                    self._remake_log_dir)
        self.socket_path = socket_path or self.system.socket or \
            endpoint.default_socket_path(self.identity)
        self.run_id = os.urandom(6).hex()
        self.router = R.Router(
            plan.main_interface, self.system.external,
            {c.name: c.limits for c in self.system.compartments.values()},
            external_limits=self.system.external_limits or Limits(),
            clock=self._now, wall=_wall, names=plan.names,
            audit=self.system.audit is not None, backlog=self._backlog,
            revocable=tuple(f"{c.name}.{g.name}" for c in self.system.compartments.values()
                            for g in c.grants if g.revocable),
            extends=plan.extends, sealed=authority.sealed(plan))
        self.hosts = hostcaps.HostCaps(
            lambda owner: self.system.compartments[owner].limits.log_rate
            if owner in self.system.compartments else 100.0, clock=self._now)
        holders: dict[str, list[str]] = {name: [] for name in self.system.compartments}
        for c in self.system.compartments.values():      # once over the grants: O(grants)
            for target in dict.fromkeys(g.target for g in c.grants if g.kind == "compartment"):
                if target in holders:
                    holders[target].append(c.name)
        self.lifecycle = S.Lifecycle({c.name: c.restart
                                      for c in self.system.compartments.values()},
                                     holders, external=bool(self.system.external),
                                     programs=plan.programs)
        self.audit = _Audit(self.system.audit, self.run_id, self.system.audit_max_size,
                            self.system.audit_keep, self.system.audit_share) \
            if self.system.audit else None
        if self.audit is not None:
            self.audit.set_event = self._set
            self.audit.on_note = self.say
        if self.output.files is not None:
            self.output.files.set_event = self._set
        self.links: dict[int, _Link] = {}
        self.procs: dict = {}
        self.denials = S.Throttle(per_second=5)
        self.notices = S.Throttle(per_second=5)
        # WSUPER_STATS=1: engines time their calls, and start-up times are shown
        self.stats = os.environ.get("WSUPER_STATS") == "1"
        self._spawned_at: dict[str, float] = {}
        self._done = trio.Event()
        self._exit_code = 0
        self._last_written = False       # _last_writes is done
        self._run_began = False          # the audit has `run started`
        self._io_limiters: dict[str, trio.CapacityLimiter] = {}
        #: COMPARTMENT.GRANT -> (st_dev, st_ino) of the file or directory its path named
        #: when the system started: each start of the compartment must open that one
        self._granted: dict[str, tuple] = {}
        # host object -> its jobs not begun, in order, while any is queued or running
        # (even abandoned at its deadline); guarded by _io_lock, as the pools' work is
        self._jobs: dict[tuple, collections.deque] = {}
        # host object -> how many of its calls queued as jobs are not answered yet (a
        # job done, its answer waiting for trio's thread): trio's side (and turns) only
        self._unanswered: dict[tuple, int] = {}
        self._io_lock = threading.Lock()
        self._io_pools: dict = {}        # _io_key -> its _IoPool, while it has work
        # host call token -> set when its job's thread ends; present while one runs
        self._host_threads: dict[int, threading.Event] = {}
        # grant -> the file operations its revocation waited for (_revoke): a second
        # `wsuper revoke` of it waits for those still running, and says so
        self._revoke_waits: dict[str, tuple[list, list]] = {}
        # host call tokens whose job was not run because a grant on their way was being
        # revoked (_io_answer): left to that revocation to fail, no answer to wait for
        self._left_to_revocation: set[int] = set()
        # id(served) -> set once its close (_release_in_thread) has ended: a revocation
        # answers once the files and directories it closes are closed (_revoke)
        self._releasing: dict[int, threading.Event] = {}
        self._release_limiter = trio.CapacityLimiter(4)
        self._bound: dict[str, int] = {}
        self._system_lock: endpoint.Lock | None = None
        self._external = 0
        self._lingering = 0              # connections we ended, being read to their end
        self._admin_conns: set[_AdminConn] = set()     # admin connections being served
        self._fd_reserve: int | None = None
        self._ready_at: dict[str, float] = {}
        self._peer_of: dict[str, int] = {}   # compartment -> its current engine connection
        self._ready_peer: dict[str, int] = {}
        self._began = 0.0
        self._host_fds = 0               # descriptors held by host files and directories
        self._fds_of: dict[str, int] = {}    # ... by the compartment whose grant opened them
        self._fd_owner: dict[int, str] = {}  # id(served) -> that compartment
        self._fd_each = FD_EACH          # ... each compartment keeps for itself (set in _run)
        self._fd_owed = 0                # what the compartments below _fd_each may still take
        self._fd_budget = 0              # ... and how many they may hold (set in _run)
        #: what external clients (every connection: one caller) hold of it, and may:
        #: half of what the compartments' own leave (set in _run, _hold)
        self._fds_outside = 0
        self._fd_outside_limit = 0
        self._fd_reserved: dict[int, object] = {}  # host call token -> the descriptor
                                                   # counted for it before it ran (_host_call)
        self._max_external = 0           # external connections at once (set in _run)
        self._told: set[str] = set()
        self.lane = None                 # the fast lane (fastlane.py), once started
        self._external_queues: _QueuePool | None = None   # what waits for clients
        #: what waits for the compartments' engines, all of them, beyond each one's
        #: own soft bound (router.engine_queue_pool)
        self._engine_queues = _QueuePool(
            R.engine_queue_pool(c.limits for c in self.system.compartments.values()),
            "compartment", "compartments", excused=self.router.forwarded_bytes)
        self.prober = Prober(self)          # probes: docs/instrumentation.md

    # ------------------------------------------------------------ either thread
    # What the lane's host worker may run as well as trio's thread (turns.py):
    # the clock, waking a task and starting one.  From the worker, a wake of a
    # task that waits, and a start, are owed to trio's thread, which does them
    # before any of its tasks runs: the same as doing them now.

    def _now(self) -> float:
        """trio.current_time(), from either thread."""
        clock = self._clock
        return clock.current_time() if clock is not None else trio.current_time()

    def _set(self, event: trio.Event):
        turns = self._turns
        if turns is not None and turns.here and not event.is_set() \
                and event.statistics().tasks_waiting:
            turns.owe(event.set)
        else:
            event.set()

    def _soon(self, fn, *args):
        """fn(*args) now in trio's thread; from the worker, before trio's next task."""
        turns = self._turns
        if turns is not None and turns.here:
            turns.owe(fn, *args)
        else:
            fn(*args)

    def _in_order(self, fn, *args):
        """fn(*args) now, unless the worker owes something it must follow: then
        owed after it."""
        turns = self._turns
        if turns is not None and turns.here and turns.stopped:
            turns.owe(fn, *args)
        else:
            fn(*args)

    def _then(self, fn, *args):
        """fn(*args) now in trio's thread; from the worker, owed with everything
        after it (the worker stops where it is: the order of effects is kept)."""
        turns = self._turns
        if turns is not None and turns.here:
            turns.owe(fn, *args, stop=True)
        else:
            fn(*args)

    # ------------------------------------------------------------ task boundaries
    # Every task of the system's nursery runs behind one boundary (_bounded): an
    # exception that is not trio's own (Cancelled, KeyboardInterrupt) leaving the
    # task is a fault of ours in serving its peer.  It is said, naming the task,
    # and `on_fault` cuts off that peer alone; a task of the whole system's (the
    # calls' clock, the listeners, the signals) is started again (`again`).  An
    # exception that reached the nursery ended the supervisor and every compartment
    # with it (issue 10's class, found again from the inside: tests/faults.py).

    def _task(self, what: str, fn, *args, on_fault=None, again: bool = False):
        """fn(*args) as a task of the system's nursery, behind its boundary."""
        self.nursery.start_soon(self._bounded, what, fn, args, on_fault, again,
                                name=getattr(fn, "__qualname__", what))

    async def _bounded(self, what: str, fn, args, on_fault=None, again: bool = False):
        delay = 0.01
        while True:
            try:
                await fn(*args)
                return
            except BaseException as e:  # noqa: BLE001 - split below: trio's own go on
                faults, rest = _faults_of(e)
                if faults is None:
                    raise
                self._task_fault(what, faults, on_fault, again)
                if rest is not None:
                    raise rest from None
                if not again or self._done.is_set():
                    return
            await trio.sleep(delay)              # a fault at every turn: not a busy loop
            delay = min(delay * 2, 1.0)

    def _task_fault(self, what: str, e: BaseException, on_fault=None, again=False):
        """Say the fault of a task (`what`), then cut off what it served (`on_fault`):
        nothing raised here leaves it."""
        leaf = _first_leaf(e)
        text = f"internal error in {what} ({type(leaf).__name__}: {first_line(leaf)})"
        if on_fault is None:
            text += ": carried on" if again else ": that task ended"
        try:
            self.say(text)
        except Exception:  # noqa: BLE001 - the line is all it could give
            pass
        if on_fault is not None:
            try:
                on_fault(text)
            except Exception as e2:  # noqa: BLE001 - said, never raised
                try:
                    self.say(f"internal error while cutting off after it ({what}): "
                             f"{type(e2).__name__}: {first_line(e2)}")
                except Exception:  # noqa: BLE001
                    pass

    def _cut_engine(self, name: str, pid: int, proc, why: str):
        """A task serving engine `pid` (compartment `name`) failed: that engine is cut
        off and killed; its reader (_read_engine) then ends it as a crash."""
        if pid in self.router.peers:
            self._cut_off(pid, why)
        proc.kill()

    def say(self, text: str, compartment: str | None = None):
        """A supervisor event for the operator."""
        self.output.event(text, compartment)

    def _terminal_gone(self):
        """The reader of stdout or stderr went away (`wsuper up ... | head -1`, a log
        collector that ended): the system stops, saying why in the log files (the
        terminal takes nothing more) and in the audit.  It stopped without a word
        anywhere: the log files ended with its compartments' `stopped` lines and the
        audit with `run stopped`, exit 0, as after a stop nobody asked for."""
        if not self.lifecycle.stopping:
            self.say("the terminal's reader went away (stdout or stderr is a pipe whose "
                     "reader closed it): stopping")
            self._audit_operator({"event": "stop requested",
                                  "reason": "the terminal's reader went away"})
        self._act(self.lifecycle.stop(0))

    def _say_log_refused(self, name: str):
        """Log lines of `name` its log_rate refused and nobody was told of yet (its
        program ended, or its engine stopped: no line may follow to say it)."""
        text = self.hosts.log_refused(name)
        if text:
            self.say(text, name)
        self._say_throttled_hidden(name)

    def _say_throttled_hidden(self, key: str):
        """Denials and notices of `key` its throttle counted and nobody was told of
        yet: said with the next line shown, there was none once its peer went or the
        system stopped (a compartment that made 10,000 denied calls in a burst and
        then exited showed 5 of them, and the operator never learnt of the rest)."""
        for throttle, what in ((self.denials, "denials for"), (self.notices, "lines about")):
            self._say_hidden(key, throttle.hidden(key), what)

    def _say_hidden(self, key: str, hidden: int, what: str):
        if hidden:
            compartment = key if key in self.system.compartments else None
            self.say(f"({hidden} more {what} {key} were not shown"
                     + ("; the audit file has them)" if self.audit else ")"), compartment)

    def _throttled(self, throttle: S.Throttle, key: str, text: str, what: str):
        """A line a peer can cause at any rate: at most a few a second each (the
        audit file, if any, has every call and every connection cut off)."""
        show, hidden = throttle.admit(key, self._now())
        compartment = key if key in self.system.compartments else None
        self._say_hidden(key, hidden, what)
        if show:
            self.say(text, compartment)

    def tell_once(self, key: str, text: str):
        if key not in self._told:
            self._told.add(key)
            self.say(text)

    # ------------------------------------------------------------ main

    async def run(self, lock: endpoint.Lock | None = None) -> int:
        """`lock`: the system's lock, held already (endpoint.Lock of this system's
        identity); None: taken here."""
        if lock is not None and (lock.fd is None or lock.path != endpoint.lock_path(
                self.identity)):
            lock.release()
            lock = None                  # not this system's, or let go: taken here
        taken = lock is not None
        lock = lock or endpoint.Lock(self.identity)
        self._system_lock = lock           # made again with the runtime directory
        key = ""                   # the key of the system file that moves what failed
        try:
            if not taken:
                lock.acquire()
            if self.system.external:
                # the key that moves it: `up --socket`'s, or the file's (none: the default)
                key = "--socket" if self.system.socket_option else \
                    "system.socket" if self.system.socket else ""
                endpoint.safe_socket_dir(self.socket_path)
            key = "system.logs" if self.system.logs else ""     # none: the default
            try:
                endpoint.own_dir(self.log_dir, "log directory ", parents=True)
                self._log_dir_fd = endpoint.lock_dir(self.log_dir, "log directory ")
            except endpoint.EndpointError as e:
                if self.system.logs:
                    raise
                raise endpoint.EndpointError(f"{e}{endpoint.default_log_dir_hint()}") from None
            self._log_files_free()
            if self.audit is not None:
                key = "system.audit"
                endpoint.own_dir(os.path.dirname(self.audit.path), "audit directory ")
                self.audit.open()
                self._audit_not_among_others_logs()
        except endpoint.EndpointError as e:
            self._let_go(lock)
            if key and key != "--socket":
                # FILE:LINE: KEY: REASON, the line `check` names for the same refusal
                # (cli._refused_by_up): `up` said FILE: KEY: REASON, no line
                _refuse(policy._Where.of_file(self.system.path).error(key, str(e)))
            else:
                _refuse(f"{self.system.path}: {key}: {e}" if key else e)
            return 2
        # beside the lock, what `wsuper revoke` may check without asking (its grants
        # are the router's, for as long as it runs: endpoint.running_grants)
        lock.publish(self.router.revocable, self.system.compartments)
        try:
            return await self._run()
        finally:
            for path, inode in self._bound.items():
                endpoint.owned_socket(path, inode)
            self._let_go(lock)

    def _log_files_free(self):
        """Refuse (EndpointError) a log directory that holds, under the name of one of
        this system's log files (or a rotation of one), a file another process keeps
        locked: another running system's audit (`audit = "/d/supervisor.log"` there).
        The log lines went into that audit, and its rotation moved it from under its
        writer (the log files' writer refuses it too: output._take)."""
        for name in (output.SUPERVISOR, *self.system.compartments):
            for n in range(output.LOG_FILE_KEEP + 1):
                file = f"{name}.log" + (f".{n}" if n else "")
                try:
                    output._not_taken(self._log_dir_fd, file)
                except OSError:
                    raise endpoint.EndpointError(
                        f"the log directory {quoted(self.log_dir)} holds {file}, which "
                        f"another process keeps locked (the audit file of another "
                        f"running system?): this system's log lines would be written "
                        f"into it; give each system its own") from None

    def _audit_not_among_others_logs(self):
        """Refuse (EndpointError) an audit named as a log file (`NAME.log`, or a
        rotation `NAME.log.N`) in the log directory of another running system (which
        holds that directory locked: endpoint.lock_dir): that system's log files of
        that name are this audit."""
        folder = os.path.dirname(os.path.realpath(self.audit.path))
        if folder == os.path.realpath(self.log_dir) or not re.fullmatch(
                r".+\.log(\.[0-9]+)?", os.path.basename(self.audit.path)):
            return                       # its own log directory: policy refuses its names
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) \
                    and not endpoint.foreign_holders(fd):     # not another user's lock
                raise endpoint.EndpointError(
                    f"the audit file {self.audit.path} is a log file's name in the log "
                    f"directory of another running system: its log lines would be "
                    f"written into the audit; name another file") from None
        finally:
            os.close(fd)

    def _remake_log_dir(self) -> int:
        """The log directory again, as `run` made it (removed while the system ran):
        made if missing, refused unless it is a real directory of ours closed to
        others, and locked for this system; its descriptor (the log files' writer
        thread keeps it).  Raises EndpointError."""
        endpoint.own_dir(self.log_dir, "log directory ", parents=True)
        return endpoint.lock_dir(self.log_dir, "log directory ")

    def _let_go(self, lock):
        """What run took before anything started: the audit file, the log directory,
        the system's lock (all, or those it had when it was refused)."""
        if self.audit is not None:
            self.audit.close()
        if self._log_dir_fd is not None:
            os.close(self._log_dir_fd)
            self._log_dir_fd = None
        lock.release()

    async def _run(self) -> int:
        limit = raise_fd_limit()
        try:
            self._max_external, self._fd_budget = fd_plan(
                limit, len(self.system.compartments), self.system.max_connections,
                _open_descriptors(limit))
        except FdShortage as e:
            _refuse(e)
            return 2
        if self._max_external < self.system.max_connections:
            self.say(f"note: max_connections {self.system.max_connections} is more than "
                     f"this process's {limit} file descriptors allow beside its "
                     f"compartments: at most {self._max_external} external connections "
                     f"at once (raise the limit: ulimit -n)")
        n = max(1, len(self.system.compartments))
        self._fd_each = max(1, min(FD_EACH, self._fd_budget // (2 * n)))
        self._fd_owed = self._fd_each * len(self.system.compartments)
        self._fd_outside_limit = max(1, (self._fd_budget - self._fd_owed) // 2)
        self._fd_reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        for missing in confine.probe():
            self.say(f"note: {missing}")
        for unused in self.system.unused(self.plan.programs):
            self.say(f"note: {unused}")
        try:
            self.output.start()
        except OSError as e:
            _refuse(e.strerror)
            return 2
        # a worker thread that cannot be started is waited for (threads.run_sync):
        # the operator is told when that begins and ends
        threads.on_shortage = self.say
        try:
            return await self._serve()
        finally:
            threads.on_shortage = None
            self.output.stop()

    async def _serve(self) -> int:
        self._began = trio.current_time()
        self._clock = trio.lowlevel.current_clock()
        # what _now answers from here on, without its two frames (a call reads it twice)
        self.router.clock = self.hosts.clock = self._clock.current_time
        why = fastlane.enabled()
        if why is None:
            try:
                self.lane = fastlane.Lane()
            except OSError as e:
                # its thread (or its descriptors) could not be made: a pids cgroup or
                # RLIMIT_NPROC reached, no memory.  `up` said only "[Errno 11] Resource
                # temporarily unavailable", exit 1; the lane is only a quicker way
                why = f"the fast lane cannot start ({e.strerror or e})"
        if why is None:
            self.router.native = self.lane
        else:
            self.say(f"note: {why}: calls between compartments run slower")
        why = fastlane.engines_native()
        if why is not None:
            self.say(f"note: {why}: calls into compartments run slower")
        try:
            return await self._serve_all()
        finally:
            if self.lane is not None:
                self.lane.stop()
                if self.stats:           # WSUPER_STATS=1: what the fast lane did
                    self.say("fast lane: " + " ".join(f"{k}={v}" for k, v in
                                                      self.lane.stats().items()))

    async def _serve_all(self) -> int:
        """The run, and its last writes on every way out of it (_last_writes): a run
        whose audit says `run started` says `run stopped` too, and the log files get
        what waits for them.  Refused once it had begun (the external socket taken
        meanwhile: exit 2), or ended by an error of its own, the audit kept `run
        started` alone, and a reader of it could not tell that run from one still
        going, or one killed (SIGKILL) before it could say more; the lines waiting
        for the log files were dropped without a word."""
        try:
            return await self._serve_all_now()
        except BaseException:
            # an internal error out of the nursery (a traceback follows), or a
            # KeyboardInterrupt trio raised: its records kept, and the run's end said
            if not self._last_written:
                self._exit_code = self._exit_code or 1
                with trio.CancelScope(shield=True):
                    # an audit write's failure said, not acted on: the nursery that
                    # would stop the system is gone, and the system is ending anyway
                    try:
                        await self._last_writes(lambda why: self.say(
                            f"error: cannot write the audit log ({why})"))
                    except Exception as e:  # noqa: BLE001 - the error that ended the
                        # run is the one to raise (its traceback), this one is said
                        self.say(f"error: the run's last writes failed: "
                                 f"{type(e).__name__}: {first_line(e)}")
            raise

    async def _serve_all_now(self) -> int:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            if self.lane is not None:
                self._task("the fast lane's events",
                           self._lane_host if host_worker() else self._lane_events, again=True)
            if self.audit is not None:
                self.audit.add({"time": None, "event": "run started",
                                "system": self.system.path})
                self._run_began = True
                self._task("the audit's writer", self.audit.writer, self._audit_failed,
                           on_fault=self._audit_failed)
            self._task("the receiver of signals", self._signals, again=True)
            self._task("expiring calls", self._expire_calls, again=True)
            self._task("polling probes", self.prober.poll, again=True)
            if self.output.files is not None:
                self._task("the log files' writer", self.output.files.writer, again=True)
            key = ""       # the key that moves what failed, as run() names it
            try:
                await nursery.start(self._admin)
                if self.system.external:
                    key = "--socket" if self.system.socket_option else \
                        "system.socket" if self.system.socket else ""
                    await nursery.start(self._listen)
            except (OSError, endpoint.EndpointError) as e:
                if key and key != "--socket":
                    _refuse(policy._Where.of_file(self.system.path).error(key, str(e)))
                else:
                    _refuse(f"{self.system.path}: {key}: {e}" if key else e)
                self._exit_code = 2
                await self._last_writes()     # after `run started`: its end too
                nursery.cancel_scope.cancel()
                return self._exit_code
            # what start-up made (modules, policy, plan, router) lives as long as we do:
            # out of the collector's way, so that no full collection walks it while
            # compartments start (~0.1 s a pause at 300 of them; docs/performance.md).
            # No gc.collect() first: it would delay the first spawn by ~20 ms
            gc.freeze()
            try:
                await threads.run_sync(self._note_granted, give_up=self._done)
            except threads.NoThread:     # stopped while it waited for a thread: no
                pass                     # compartment starts (_done), nothing to note
            self.zygote = Zygote(self._launched)
            self._zygote_said = trio.Event()    # its end acted on (_run_zygote)
            self._launched = None
            self._task("hearing the zygote", self._run_zygote,
                       on_fault=lambda why: self._act(self.lifecycle.stop(1)))
            for comp in self.system.compartments.values():
                if self._done.is_set():        # stopped while they start: no more
                    break
                # in order, but each waits for its fork alone: the next request goes
                # to the zygote as soon as this one is sent
                await nursery.start(self._first_spawn, comp)
            await self._done.wait()
            self.router.stopping = STOPPED   # the engines' ends from here on are the stop's
            await self._stop_engines()
            self.zygote.stop()
            self._perform(self.router.native_tick())     # the last natively forwarded calls
            # calls still in flight end here (their callers told), recorded before
            # `run stopped`, the run's last record (they came after it, or never)
            self._perform(self.router.end_audit(STOPPED))
            # what the throttles counted and no line followed to say (external
            # clients', a compartment's whose engine outlived the stop's reports)
            for key in dict.fromkeys(self.denials.keys() + self.notices.keys()):
                self._say_throttled_hidden(key)
            await self._last_writes()
            # an admin request being answered gets its answer before the end cancels
            # it: a `wsuper revoke` whose revocation ended the last program (its call
            # failed, it exited) waited for the closes and file operations it began,
            # the system stopped meanwhile, and the operator was told "the system ...
            # gave no answer" (exit 1), though the grant was revoked
            with trio.move_on_after(ADMIN_LAST_ANSWER):
                while any(c.answering for c in self._admin_conns):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        return self._exit_code

    async def _last_writes(self, on_audit_error=None):
        """What ends every run, once, however it ends: the audit's last record and
        write (_end_audit), the terminal's last lines (output.settle: what a terminal
        that reads nothing did not take is said in the log files), then the log
        files' last write (5 s at most: what it could not write is said)."""
        if self._last_written:
            return
        self._last_written = True
        await self._end_audit(on_audit_error)
        await self.output.settle()
        if self.output.files is not None:
            with trio.move_on_after(5):
                await self.output.files.flush_last()
            self.output.files.close()

    async def _end_audit(self, on_error=None):
        """The run's last record, `run stopped` with the exit code so far, and the
        last write of what waits (AUDIT_LAST_WRITE at most); what it could not write
        is said, and the exit code is 1 then (if it was 0).  `on_error`: told of a
        write that fails (by default _audit_failed, which stops the system)."""
        if self.audit is None or self.audit.ended or not self._run_began:
            return
        self.audit.add({"time": None, "event": "run stopped",
                        "exit_code": self._exit_code})
        self.audit.ended = True
        with trio.move_on_after(AUDIT_LAST_WRITE):
            await self.audit.flush(on_error or self._audit_failed)
        left = self.audit.unwritten()
        if left and not self.audit.failed:
            # a disk that held the last write past the deadline lost the run's
            # last records, `run stopped` among them, and nobody was told
            self.say(f"error: the audit file {self.audit.path}: its last {left} "
                     f"record{'s' * (left != 1)} (`run stopped` among them) were "
                     f"not written: a write to it did not end within "
                     f"{AUDIT_LAST_WRITE:g} s at stop (it is not waited for)")
            self._exit_code = self._exit_code or 1
        elif left:
            # the write that failed, and what came after it (the calls ended
            # at the stop, `run stopped`): dropped without a count
            self.say(f"error: {left} audit record{'s' * (left != 1)} (`run "
                     f"stopped` among them) {'were' if left != 1 else 'was'} not "
                     f"written, since writing the audit failed "
                     f"({self.audit.failed})")

    async def _run_zygote(self):
        """The zygote's answers and engines' exits, until it is gone.  Gone before the
        system is done (killed, or out of memory), it took every engine with it and
        nothing can start again: the system stops, saying so.  It stopped only when
        some compartment next tried to start: one left stopped (restart = "never"),
        or waiting out a long restart_delay, and the system served on without a
        single engine, each telling its callers it was "killed by SIGKILL"."""
        zygote = self.zygote
        try:
            await zygote.run()
            if not self._done.is_set():
                self.say(f"the zygote (pid {zygote.pid}) is gone{self._zygote_end()}, and "
                         f"every engine with it: no compartment can start again; stopping")
                self._act(self.lifecycle.stop(1))
        finally:
            self._zygote_said.set()

    def _zygote_end(self) -> str:
        """How the zygote ended, as said wherever its end is noticed first: ' (stopped:
        ...)' if the supervisor stopped it for what it sent, else its exit if known.
        A start waiting for its answer noticed it first ('cannot start compartment
        app: the zygote is gone') and stopped the system, and the line it was
        stopped for was never said."""
        zygote = self.zygote
        if zygote.broken is not None:     # stopped for it: what it sent says more
            return f" (stopped: {zygote.broken})"
        code = zygote.returncode
        return f" ({_describe_exit(code)})" if code is not None else ""

    def _audit_room(self) -> bool:
        """Whether the audit takes more records now (not while AUDIT_BACKLOG wait)."""
        return self.audit is None or self.audit.room.is_set()

    def _audit_left(self) -> int | None:
        """How many more records the audit takes now (None: no audit)."""
        return None if self.audit is None else max(AUDIT_BACKLOG - len(self.audit.pending), 0)

    async def _expire_calls(self):
        """Fail calls that took longer than their callee's call_time; cut off engines
        that stalled in the middle of a message (the fast lane frames theirs)."""
        while True:
            await trio.sleep(EXPIRY_TICK)
            if self.lane is not None:
                self._perform(self.router.native_tick(self._audit_room(), self._audit_left()))
                # external clients that took nothing of what waits for them while
                # they were not read for it are read again (a blocking writer)
                self.lane.unhold(self.system.message_timeout)
                for pid in self.lane.stalled(self.system.message_timeout):
                    self._cut_off(pid, f"it sent part of a message and did not finish it "
                                       f"within {self.system.message_timeout:g} s "
                                       f"(message_timeout)")
            if self.router.next_deadline() is not None:
                try:
                    self._perform(self.router.expire())
                except Exception as e:  # noqa: BLE001 - a fault here must not end the system
                    self.tell_once("expire-fault", f"internal error while expiring calls: "
                                                   f"{type(e).__name__}: {first_line(e)}")

    async def _lane_events(self):
        """Hand the router what the fast lane queued for it, as soon as it is there:
        one wake-up of this task per batch, not one of each peer's task too.  What
        the lane queued while a batch was handled is handled next without a trip
        through trio's scheduler (on one core, a host call's answer lets its caller
        run at once, and its next call is often queued by the time the batch is
        done); the others still get their turn: after every TURN, and whenever this
        batch woke one of them (then the wait is trio's, as before, and what it
        woke runs first: the lane's event descriptor is readable while any_ready())."""
        fd = self.lane.event_fd
        ready: list = []
        turn = time.perf_counter()
        while True:
            if not ready:
                await trio.lowlevel.wait_readable(fd)
                turn = time.perf_counter()
                ready = self.lane.ready()
            paused = self.audit is not None and not self.audit.room.is_set()
            woke = False
            for pid in ready:
                woke = self._hand_over(pid, paused, turn + TURN) or woke
                if time.perf_counter() > turn + TURN:
                    await trio.lowlevel.checkpoint()
                    turn = time.perf_counter()
            if self.audit is not None:
                self._perform(self.router.native_tick(self._audit_room(), self._audit_left()))
            if woke or not self.lane.any_ready():
                ready = []                      # through trio: what it woke runs first
                continue
            if time.perf_counter() > turn + TURN:
                await trio.lowlevel.checkpoint()
                turn = time.perf_counter()
            ready = self.lane.ready()

    async def _lane_host(self):
        """The lane's host worker (turns.py): a thread that waits on the lane's event
        descriptor and hands the router what the lane queued, as _lane_events does,
        but only while trio's thread waits for I/O, and without trio's scheduler
        between a host call and its answer.  This task owns it: it ends the thread
        when the supervisor stops, and raises what the worker could not handle."""
        turns = self._turns = Turns()
        turns.on_fault = self._owed_fault
        turns.waiting = self.lane.any_ready
        turns.on_stuck = lambda: self._take_in_trio(self.lane.ready())
        turns.install()
        stop_r, stop_w = os.pipe2(os.O_CLOEXEC)
        worker = threading.Thread(target=self._lane_worker, args=(turns, stop_r),
                                  name="wsuper-lane-host", daemon=True)
        try:
            try:
                worker.start()
            except RuntimeError as e:
                # no thread to give (RLIMIT_NPROC, a pids cgroup, no memory): the
                # lane's calls are handed over by trio's thread instead, as without
                # the worker (WSUPER_HOST_WORKER=0); this raised out of the system's
                # nursery, and `up` ended in a traceback as it started
                self.say(f"note: the fast lane's host worker cannot start ({e}): its "
                         f"host calls are served from the event loop")
                turns.close()
                self._turns = None
                worker = None
                await self._lane_events()
                return
            await turns.failed.wait()
            raise turns.error
        finally:
            os.write(stop_w, b"x")
            turns.close()
            self._turns = None
            if worker is not None:
                worker.join(5)
            os.close(stop_r)
            os.close(stop_w)

    def _lane_worker(self, turns: Turns, stop: int):
        """The worker thread: wait (without the GIL) until the lane has something,
        take a turn, hand it over; until the supervisor stops."""
        poller = select.poll()
        poller.register(self.lane.event_fd, select.POLLIN)
        poller.register(stop, select.POLLIN)
        while True:
            if any(fd == stop for fd, _ in poller.poll()):
                return
            if not turns.enter():
                return
            try:
                self._lane_turn(turns)
            except BaseException as e:  # noqa: BLE001 - raised in trio's thread, by _lane_host
                turns.owe(_reraise, e, stop=True)
                return
            finally:
                turns.leave()

    def _lane_turn(self, turns: Turns):
        """One turn of the worker (holding `turns`): what one batch of _lane_events
        does, for at most TURN.  The peers it has not come to by then, or once
        something is owed that later work must follow (`turns.stopped`), are
        woken to their own tasks, which take their items in trio, after it."""
        turn = time.perf_counter()
        ready = self.lane.ready()
        while ready:
            paused = self.audit is not None and not self.audit.room.is_set()
            for i, pid in enumerate(ready):
                if turns.stopped:
                    turns.owe(self._take_in_trio, ready[i:])
                    return
                if time.perf_counter() > turn + TURN:
                    turns.owe(self._take_in_trio, ready[i:])   # their own tasks go on
                    return
                turns.blame = pid               # what is owed from here on is pid's
                try:
                    self._hand_over(pid, paused, turn + TURN)
                finally:
                    turns.blame = None
            if self.audit is not None and not turns.stopped:
                self._perform(self.router.native_tick(self._audit_room(), self._audit_left()))
            if turns.stopped or time.perf_counter() > turn + TURN or not self.lane.any_ready():
                return
            ready = self.lane.ready()

    def _hand_over(self, pid: int, paused: bool, until: float) -> bool:
        """A peer the lane named ready (from either thread): hand the router what it
        queued until `until`; what is left, or everything while it is busy or the
        audit is full (`paused`), goes to its own task.  True if that task was
        woken (or its stream ended: it returns)."""
        link = self.links.get(pid)
        if link is None or not link.native:
            return False
        if link.busy or paused or link.end is not _OPEN:
            self._set(link.wake)                # its own task carries on
            return True
        rest = self._feed(pid, link, self.lane.take(pid), until)
        if rest:
            link.pending, link.busy = rest, True
            self._set(link.wake)
            return True
        if rest is not None:
            self._in_order(self.lane.release, pid)
            return False
        return True                             # its stream ended: its task returns

    def _owed_fault(self, pid: int, e: Exception):
        """What the worker owed for pid's input raised in trio's thread: that peer is
        cut off, as when _feed's own call raises."""
        link = self.links.get(pid)
        self._fault(pid, e)
        if link is not None and link.native:
            link.finish("cut off after an internal error")

    def _take_in_trio(self, pids: list):
        """Peers the worker left when it stopped: each one's own task takes its items
        (as for a peer woken while the audit is full)."""
        for pid in pids:
            link = self.links.get(pid)
            if link is not None and link.native:
                link.wake.set()

    def _feed(self, pid: int, link: "_NativeLink", items: list, until: float):
        """Hand a fast-lane peer's items to the router (in SLICE-byte slices) until
        they are done or it is time `until`; returns what is left, or None once the
        stream ended or the peer was cut off (`link.end` says why)."""
        if len(items) == 1 and type(items[0]) is bytes and 0 < len(items[0]) <= SLICE:
            # one read of one slice, nearly always: what the loop below does with it
            return [] if self._feed_one(pid, link, items[0]) else None
        turns = self._turns
        for i, item in enumerate(items):
            if item is None or isinstance(item, int):
                self._then(link.finish,
                           None if item is None else os.strerror(item) or "connection lost")
                return None
            at = 0
            while at < len(item):
                if len(item) - at <= SLICE:
                    chunk = item if at == 0 else item[at:]
                else:
                    chunk = item[at:at + self._piece(pid, item, at)]
                at += len(chunk)
                if not self._feed_one(pid, link, chunk if type(chunk) is bytes
                                      else bytes(chunk)):
                    return None
                if (at < len(item) or i + 1 < len(items)) \
                        and (time.perf_counter() > until or turns is not None and turns.stopped):
                    # what is left of the item, as a view of it: a copy (item[at:])
                    # at every turn's end made one message's intake quadratic in its
                    # size (a 64 MiB host call held the loop ~3 s, 0.5 s at a time)
                    return ([memoryview(item)[at:]] if at < len(item) else []) \
                        + items[i + 1:]
        return []

    def _piece(self, pid: int, item, at: int) -> int:
        """How much of `item` from `at` (more than a SLICE is left) to hand the router
        at once: the messages that begin there and fit in a SLICE, or the one that
        begins there whole if it is larger; a SLICE where that cannot be told (a
        table not whole or past wire.MAX_SEGMENTS, the peer's framer holding part of
        a message, so that `at` is inside one).

        The lane frames what a peer sends and hands Python whole messages.  Cut in
        SLICE-byte pieces wherever they fell, a message larger than a slice went
        through the router, the connection and its framer piece by piece, to be
        gathered and joined again (~2.3 ms of the loop a MiB): a compartment whose
        calls carried 8 MiB each (host calls: the lane forwards none) cost the loop
        ~17 ms a call, twenty times what sending one cost it.  Its handling, at its
        end, was never split by that; and slices that end where messages do leave
        the framer empty, so that the next large one goes whole too.  A message of
        several segments was still cut in slices: what pycapnp (Cap'n Proto's C++)
        sends whenever params outgrow its first segment, so an external client's
        calls of 8 MiB each cost the loop ~60 ms a call, and a compartment calling
        another one at a time beside it waited ten times as long as alone
        (benchmarks/neighbour.py xhuge)."""
        peer = self.router.peers.get(pid)
        if peer is None or peer.conn.pending_bytes:
            return SLICE
        end, last = at, len(item)
        while last - end >= 8:
            nseg, words = _TABLE_ONE.unpack_from(item, end)
            size = 8 + 8 * words if nseg == 0 else wire.framed_size(item, end)
            if size is None or end + size > last:
                break
            if end + size - at > SLICE:
                return size if end == at else end - at
            end += size
        return end - at if end > at else SLICE

    def _feed_one(self, pid: int, link: "_NativeLink", chunk: bytes) -> bool:
        """Hand one slice to the router and perform what it decides; False once the
        peer was cut off (the choke point: nothing raised here ends the system)."""
        try:
            self._perform(self.router.receive(pid, chunk))
        except Exception as e:  # noqa: BLE001 - no peer's input may end the system
            self._then(self._fault, pid, e)
            self._then(link.finish, "cut off after an internal error")
            return False
        if pid not in self.router.peers:
            self._then(link.finish, "broke the protocol")
            return False
        return True

    async def _signals(self):
        """SIGINT, SIGTERM and SIGHUP stop the system (startsignals.stopping: not one
        ignored when it began, nohup's SIGHUP); received until it has stopped.  It
        returned after the first: a second one while the system stopped (a slow
        stop, or SIGINT and SIGTERM together) met the handlers trio restored, and
        SIGTERM's killed the supervisor at once (no `run stopped`, its sockets
        left), SIGINT's ended it in a traceback with exit code 1.  The stop is
        bounded (GRACE_SECONDS, the last writes' deadlines): it goes on.  With all
        three ignored when it began (`trap '' INT TERM HUP`), there is none to
        receive (`wsuper stop` stops the system): trio's receiver of no signal
        raised TypeError, and `up` ended in a traceback as it began."""
        wanted = startsignals.stopping()
        if not wanted:
            return
        with trio.open_signal_receiver(*wanted) as signals:
            # those that came before it was installed (`up` holds them from trio.run
            # on: startsignals): a SIGTERM then killed the supervisor without a word
            for sig in startsignals.take():
                self._on_signal(sig)
            async for sig in signals:
                self._on_signal(sig)

    def _on_signal(self, sig: int):
        name = signal.Signals(sig).name
        if self._done.is_set():
            self.tell_once(f"signal-{name}", f"{name} while stopping: the stop goes "
                                             f"on (SIGKILL would lose its last records)")
            return
        self._act(self.lifecycle.signal(sig, name))

    def _audit_failed(self, reason: str):
        self.say(f"error: cannot write the audit log ({reason}); stopping, since calls "
                 f"would go unrecorded")
        self._act(self.lifecycle.stop(1))

    # ------------------------------------------------------------ engines

    async def _first_spawn(self, comp, task_status=trio.TASK_STATUS_IGNORED):
        """`_spawn` at start-up: started once its request is sent (or it failed)."""
        sent = False

        def on_sent():
            nonlocal sent
            sent = True
            task_status.started()
        await self._spawn(comp, 0, on_sent)
        if not sent:
            task_status.started()

    async def _spawn(self, comp, generation: int, sent=None):
        """_spawn_now behind its boundary: a fault of ours in starting `comp` is that
        start's failure (its restart policy decides), never the supervisor's end.  An
        engine it had made already is cut off, and its end decides instead."""
        before = self._peer_of.get(comp.name)
        try:
            await self._spawn_now(comp, generation, sent)
        except Exception as e:  # noqa: BLE001 - one start's fault, not the system's
            why = (f"internal error in starting {comp.name} "
                   f"({type(e).__name__}: {first_line(e)})")
            self.say(why, comp.name)
            pid, proc = self._peer_of.get(comp.name), self.procs.get(comp.name)
            if pid and pid != before and proc is not None:
                self._cut_engine(comp.name, pid, proc, why)
            else:
                self._act(self.lifecycle.start_failed(comp.name, why, trio.current_time()))

    async def _spawn_now(self, comp, generation: int, sent=None):
        """Start an engine for `comp`; what goes wrong is a failed start, never an exit.
        `sent()`: called once the zygote has the request (see Zygote.spawn).  None
        once the system stops: a stop during start-up (SIGTERM, `wsuper stop`) went on
        opening the grants of, and forking, every compartment not started yet (each
        said "ready" after "stopping"), before the stop could begin."""
        if self._done.is_set():
            return
        try:
            hosts = await self._open_grants(comp)
        except _StartError as e:
            self._act(self.lifecycle.start_failed(comp.name, str(e), trio.current_time(),
                                                  told=e.told))
            return
        if self._done.is_set():          # stopped while its grants were opened
            self._release_hosts(comp, hosts)
            return
        try:
            ours, theirs = pysocket.socketpair(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
        except OSError as e:
            self._release_hosts(comp, hosts)
            self._act(self.lifecycle.start_failed(
                comp.name, f"cannot make its socket: {e.strerror}", trio.current_time()))
            return
        spec = EngineSpec.of(comp, self.system.engine_user,
                             exports=comp.exports is not None,
                             per_call=comp.instance == "per_call", stats=self.stats)
        if self.stats:
            self._spawned_at[comp.name] = trio.current_time()

        def on_sent():                   # the zygote has its copy: ours can go now
            theirs.close()
            if sent is not None:
                sent()
        try:
            proc = await self.zygote.spawn(spec, theirs.fileno(), on_sent)
        except OSError as e:
            ours.close()
            self._release_hosts(comp, hosts)
            if self._done.is_set():
                # the stop ended the zygote while it was asked (a start under way as
                # the stop came): no failure, and nothing to say; it was said as one,
                # "cannot start compartment calc: the zygote is gone" after "stopping"
                return
            if not self.zygote.alive:
                self.say(f"cannot start compartment {comp.name}: the zygote is gone"
                         f"{self._zygote_end()}")
                self._act(self.lifecycle.stop(1))
                return
            self._act(self.lifecycle.start_failed(comp.name, f"cannot start its engine: "
                                                  f"{e.strerror or e}", trio.current_time()))
            return
        finally:
            theirs.close()
        self.procs[comp.name] = proc
        self._task(f"watching the process of {comp.name}", proc.watch,
                   on_fault=lambda why: self._lost_watch(comp.name, pid, proc, why))
        pid, effects = self.router.add_engine(comp.name, comp.grants, hosts)
        self._peer_of[comp.name] = pid
        cut = functools.partial(self._cut_engine, comp.name, pid, proc)
        self._task(f"watching the start of {comp.name}", self._watch_start, comp, pid, proc,
                   on_fault=cut)
        link = self._lane_link(pid, ours, comp.limits, external=False) \
            if self.lane is not None else None
        if link is None:
            link = _Link(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), comp.limits,
                         engine=True)
        self.links[pid] = link
        link.shared = self._engine_queues
        link.calls_room = R.calls_past_soft(comp.limits)
        self._engine_queues.links[link] = pid
        self._task(f"writing to the engine of {comp.name}", link.writer, on_fault=cut)
        # this incarnation's last stderr lines, for why it ended: its own (one kept by
        # name had an earlier incarnation's last words end the reason of every later
        # one, "killed by SIGKILL: error: cannot load module ..." long after it loaded)
        stderr_done, tail = trio.Event(), collections.deque(maxlen=5)
        end = _EngineEnd()
        self._task(f"reading the engine of {comp.name}", self._read_engine, comp.name,
                   generation, pid, link, proc, stderr_done, tail, end,
                   on_fault=lambda why: self._end_engine(comp.name, generation, pid, link,
                                                         proc, end, why))

        def stderr_fault(why):
            stderr_done.set()
            cut(why)
        self._task(f"reading the stderr of {comp.name}", self._read_stderr, comp.name, proc,
                   stderr_done, tail, on_fault=stderr_fault)
        self._perform(effects)

    def _lane_link(self, pid: int, sock, limits: Limits, external: bool):
        """Hand a peer's socket to the fast lane (it owns the descriptor from then
        on); None if the lane cannot take it (the peer then runs on trio's)."""
        framer = self.router.peers[pid].conn._framer
        try:
            fd = os.dup(sock.fileno())
        except OSError:                  # no descriptor to spare: trio's socket it is
            return None
        try:
            self.lane.add(pid, fd, R.queue_soft_limit(limits), R.queue_hard_limit(limits),
                          framer.max_words, framer.max_segments, limits.message_size,
                          limits.in_flight, external)
        except (OSError, MemoryError, ValueError) as e:
            os.close(fd)
            self.tell_once("lane-add", f"note: a connection stays off the native path "
                                       f"({type(e).__name__}: {first_line(e)})")
            return None
        sock.close()                     # the lane's descriptor is the only one now
        self.router.lane_peer(pid)
        return _NativeLink(self.lane, pid, limits, external)

    async def _open_grants(self, comp) -> dict:
        """Open the files and directories a compartment is granted, off the event loop."""
        hosts = {}
        for g in comp.grants:
            if g.kind != "host" or g.target not in ("directory", "file", "environment",
                                                    "probe"):
                continue
            if self.router.grant_ended(f"{comp.name}.{g.name}"):
                # revoked or expired, no call goes through it: not opened again at a
                # restart.  Opened, a directory the operator removed (or unmounted)
                # after revoking it failed every later start of its holder (an
                # outside review), after its expiry too (reviewer 191); a probe
                # grant's queue took a copy of every event nobody could read
                continue
            if g.target == "probe":     # an analysis: a queue of events
                hosts[g.name] = self.prober.grant(comp.name, g)
                continue
            opened, opening = None, hostcaps.GrantOpening(
                g, self.hosts.write_quota(comp.name, g))
            with trio.move_on_after(hostcaps.IO_DEADLINE):
                try:
                    opened = await threads.run_sync(
                        opening.run, abandon_on_cancel=True,
                        limiter=self._io_limiter(comp.name))
                except (OSError, hostcaps.hostfs.FsError) as e:
                    self._release_hosts(comp, hosts)
                    code = getattr(e, "code", None) or errno.errorcode.get(
                        getattr(e, "errno", None) or 0, "")
                    raise _StartError.grant(g, getattr(e, "strerror", None) or e,
                                            f" ({code})" if code else "") from None
            if opened is None:
                opening.abandon()
                self._release_hosts(comp, hosts)
                short = " (no thread could be started)" if threads.short() else ""
                raise _StartError.grant(g, f"it took longer than {hostcaps.IO_DEADLINE:g} s"
                                           + short)
            problem = self._not_granted(comp.name, g, opened)
            if problem:
                self._release(g.target, opened, counted=False)
                self._release_hosts(comp, hosts)
                raise _StartError.grant(g, problem, ": it is not what it was when the "
                                                    "system started")
            if not self._hold(g.target, opened, comp.name):
                self._release(g.target, opened, counted=False)
                self._release_hosts(comp, hosts)
                raise _StartError.grant(g, "the supervisor has no file descriptors to spare "
                                           "(EMFILE)")
            hosts[g.name] = opened
        return hosts

    def _note_granted(self):
        """What each file and directory grant's path names now, before any engine runs
        (policy.load has just checked it).  The path as it is, with its subdir if it has
        one: joined with "" it ended in "/", which a file's stat refuses (ENOTDIR), so
        file grants were noted only at their first open, wherever the path led then.
        What policy.load checked it must still be (Grant.checked): between the two a
        system compiles its modules (seconds), time to plant a link on the way."""
        for comp in self.system.compartments.values():
            for g in comp.grants:
                if g.kind == "host" and g.target in ("directory", "file"):
                    try:
                        st = os.stat(os.path.join(g.path, g.subdir) if g.subdir else g.path)
                    except OSError as e:        # gone since policy.load: never granted
                        self._granted[f"{comp.name}.{g.name}"] = e.strerror or str(e)
                        continue
                    now = (st.st_dev, st.st_ino)
                    if g.checked is None:       # never through policy.load: nothing
                        self._granted[f"{comp.name}.{g.name}"] = (     # was checked
                            "wsuper up never checked it")
                        continue
                    if now != g.checked:
                        # replaced between policy.load's checks (the supervisor's own
                        # files, the modules, the kernel's file systems) and now, by a
                        # link on the way maybe: what it names now was never checked
                        self._granted[f"{comp.name}.{g.name}"] = _REPLACED
                        continue
                    self._granted[f"{comp.name}.{g.name}"] = now

    def _not_granted(self, name: str, g, opened) -> str | None:
        """Why `opened` (grant `g` of compartment `name`, opened by its path) is not the
        file or directory granted, or None.  A grant's path is opened again at every
        start, following what is on its way: a compartment that replaced a directory
        there by a symbolic link (through a writable grant that holds it) had its
        next start open wherever the link pointed, outside every grant."""
        if g.target not in ("directory", "file"):
            return None
        st = os.fstat(opened.fd)
        # noted before any engine ran; noted at a first open instead, it would be
        # whatever the path led to then (fail closed: nothing noted, nothing granted)
        granted = self._granted.get(f"{name}.{g.name}")
        if granted == (st.st_dev, st.st_ino):
            return None
        if granted is _REPLACED:
            return ("it was replaced after wsuper up checked it, before the system "
                    "started (something on its way, by a symbolic link maybe): what it "
                    "names now was never checked; start the system anew")
        if not isinstance(granted, tuple):
            return (f"it could not be looked at when the system started "
                    f"({granted or 'not noted'}); a grant is what its path named then: "
                    f"start the system anew to grant what is there now")
        return (f"it now names another {g.target} than when the system started (something "
                f"on its way was replaced, by a symbolic link maybe); a grant is what its "
                f"path named then: start the system anew to grant what is there now")

    def _release_hosts(self, comp, hosts: dict):
        for g in comp.grants:
            if g.name in hosts:
                self._release(g.target, hosts[g.name])

    async def _respawn(self, comp, delay, generation):
        await trio.sleep(delay)
        if generation == self.lifecycle.generation[comp.name] and not self._done.is_set() \
                and self.lifecycle.state[comp.name] == "restarting":
            await self._spawn(comp, generation)

    def _end_engine(self, name, gen, pid, link, proc, end: "_EngineEnd", why: str):
        """_read_engine failed (`why`): the engine is killed, and what its end had left
        to do is done, each step on its own (one that raises is said, the next done):
        its callers told, its restart policy asked, its link closed."""
        proc.kill()
        reason = f"engine cut off: {why}"
        steps = []
        if not end.acted:
            steps += [lambda: self._perform(self.router.disconnected(
                          pid, self._for_callers(name, reason))),
                      lambda: self._act(self.lifecycle.engine_stopped(
                          name, gen, reason, trio.current_time(), clean=False))]
        steps += [lambda: self._perform(self.router.engine_ended(pid)), link.close,
                  lambda: self.links.pop(pid, None),
                  lambda: self._engine_queues.links.pop(link, None)]
        for step in steps:
            try:
                step()
            except Exception as e:  # noqa: BLE001 - the next step all the same
                self.say(f"internal error while ending the engine of {name}: "
                         f"{type(e).__name__}: {first_line(e)}", name)

    def _lost_watch(self, name: str, pid: int, proc, why: str):
        """The watch of an engine's process failed: the engine is cut off and killed,
        and its end taken as the zygote reports it, or as not known past
        process.REPORT_GRACE (what the watch would have done)."""
        self._cut_engine(name, pid, proc, why)

        async def unreported():
            await trio.sleep(process.REPORT_GRACE)
            if proc.returncode is None:
                proc._exit(process.UNREPORTED)
        self._task(f"the end of {name}'s process", unreported)

    def _cut_program(self, name: str, why: str):
        """The watch of a program's run_time and run_cpu failed: its engine is killed
        (a limit that cannot be held fails closed)."""
        proc = self.procs.get(name)
        if proc is not None:
            proc.kill()

    async def _read_engine(self, name, gen, pid, link, proc, stderr_done, tail,
                           end: "_EngineEnd | None" = None):
        end = end or _EngineEnd()
        reason = await self._pump(pid, link)
        if reason is None:
            # it closed its connection: its compartment's calls wait from now on for
            # what its end decides (a restart), not go to it (Router.engine_closed)
            self._perform(self.router.engine_closed(pid))
        lingered = False
        cut = pid not in self.router.peers
        if cut and proc.returncode is None:
            proc.kill()                  # cut off (it broke the protocol, or stalled)
        elif proc.returncode is None:
            # its connection ended and its process lives on: an engine exiting closes
            # its socket as it goes, but a taken-over one may close it (or stop itself)
            # and wait, and was never noticed: not restarted, its holders' calls each
            # waiting their whole call_time (an outside review).  GRACE_SECONDS to go
            with trio.move_on_after(GRACE_SECONDS):
                await proc.gone.wait()
            if not proc.gone.is_set():   # (gone, its exit not yet reported: not lingering)
                lingered = True
                proc.kill()
        code = await proc.wait()
        zygote = getattr(self, "zygote", None)
        if zygote is not None and not zygote.alive:
            # its end is the zygote's (which took every engine with it): decided
            # first, it said 'restarting calc in 0.1 s (engine killed by SIGKILL;
            # restart 1 of at most 3 ...)', then that the zygote is gone and the
            # system stops, one time in three (the zygote's reaping raced it).  The
            # zygote's end is acted on first: stopping, nothing restarts
            await self._zygote_said.wait()
        if lingered:
            reason = (f"closed its connection and did not exit within {GRACE_SECONDS:g} s "
                      f"(killed)")
        elif cut and link.cut_reason:
            # killed here because it was cut off: that is why it ended (it was said
            # 'engine killed by SIGKILL', the supervisor's own kill, in the restart
            # line, to its callers and as the last reason of one that failed for good)
            reason = f"cut off: {first_line(link.cut_reason)}"
        elif code:                # its own exit says more than the broken socket
            with trio.move_on_after(1):       # its last words, if it left any
                await stderr_done.wait()
            reason = _describe_exit(code)
            if tail:
                reason += f": {tail[-1]}"
        elif reason is None:
            reason = "exited"
        else:
            # not cut off, its exit clean: `reason` is its socket's error (an engine
            # that exits with what the supervisor wrote to it unread leaves
            # ECONNRESET), which was pasted after "engine" ("engine Connection reset
            # by peer"); said after its exit, as an external client's is
            reason = f"exited ({reason})"
        self._perform(self.router.disconnected(pid, self._for_callers(name,
                                                                      f"engine {reason}")))
        # decided at once, before anything else runs: with an await between, the
        # calls made meanwhile failed "is gone" though a restart was coming.  An end
        # the zygote did not report (process.UNREPORTED) may have been the exit
        # after a program that ended well: `clean` matters only then (Lifecycle.
        # engine_stopped), and a finished program is not run again on no evidence
        self._act(self.lifecycle.engine_stopped(name, gen, f"engine {reason}",
                                                trio.current_time(),
                                                clean=code in (0, EXIT_GUEST_OK,
                                                               process.UNREPORTED)
                                                and not lingered and not cut))
        end.acted = True
        self._perform(self.router.engine_ended(pid))
        await link.aclose()
        self.links.pop(pid, None)
        self._engine_queues.links.pop(link, None)
        self._say_log_refused(name)

    async def _pump(self, pid: int, link: _Link) -> str | None:
        """Feed a peer's bytes to the router until it closes (None) or is cut off (why)."""
        if link.native:
            return await self._pump_native(pid, link)
        try:
            while True:
                paused = trio.current_time()
                await self._may_read(link)
                if link.partial_since is not None:
                    # time this peer was not read (its answers waited, or the audit's)
                    # is not its own: a half-read message's clock stops meanwhile
                    link.partial_since += trio.current_time() - paused
                deadline = math.inf if link.partial_since is None \
                    else link.partial_since + self.system.message_timeout
                data = None
                with trio.move_on_at(deadline):
                    data = await link.receive()
                if data is None:
                    self._cut_off(pid, f"it sent part of a message and did not finish it "
                                       f"within {self.system.message_timeout:g} s "
                                       f"(message_timeout)")
                    return "stalled in the middle of a message"
                if not data:
                    return None
                # Fairness: a read can hold hundreds of small messages; they are fed
                # in slices, and the loop is let go whenever this peer has held it
                # for TURN seconds, so no peer's flood delays anyone else for long.
                # External clients take one turn between them (_client_turn).
                clients = link.external
                if clients:
                    await self._client_turn_of(link)
                try:
                    for at in range(0, len(data), SLICE):
                        try:
                            self._perform(self.router.receive(pid, data[at:at + SLICE]
                                                              if len(data) > SLICE else data))
                        except Exception as e:  # noqa: BLE001 - no peer's input may end the system
                            self._fault(pid, e)
                            return "cut off after an internal error"
                        if pid not in self.router.peers:
                            break
                        if time.perf_counter() - link.turn > TURN:
                            await trio.lowlevel.checkpoint()
                            if clients:             # the other clients' turns first
                                self._clients_turn.release()
                                clients = False
                                await self._client_turn_of(link)
                                clients = True
                            link.turn = time.perf_counter()
                finally:
                    if clients:
                        self._clients_turn.release()
                peer = self.router.peers.get(pid)
                if peer is None:                     # it broke the protocol: cut off
                    return "broke the protocol"
                partial = peer.conn.partial_message     # which message, if one is half in
                if partial is None:
                    link.partial_since = link.partial = None
                elif partial != link.partial:             # a new one began: its own deadline
                    link.partial, link.partial_since = partial, trio.current_time()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            return str(e) or "connection lost"

    async def _pump_native(self, pid: int, link: _NativeLink) -> str | None:
        """An engine on the fast lane: the lane's watcher hands the router what the
        lane queued; this task takes over what it left (a flood), a TURN at a time,
        and returns when the stream ends.  The peer stays *held* (nothing of it goes
        natively) until everything taken was handled: then `release`."""
        while True:
            if link.end is not _OPEN:
                return link.end
            if not link.pending:
                # reset after the wait, not before it: a wake that came before this
                # task first waited (trio's thread taking over the worker's peers,
                # on_stuck, can wake a new engine's link before its task has run)
                # must not be lost, or what the lane queued waits for ever
                await link.wake.wait()
                link.wake = trio.Event()
                if not link.busy and link.end is _OPEN:   # woken while paused: take
                    link.pending = self.lane.take(pid)
                    link.busy = bool(link.pending)
                continue
            if self.audit is not None and not self.audit.room.is_set():
                await self.audit.room.wait()
            clients = link.external
            if clients:
                await self._client_turn()
            try:
                if link.end is not _OPEN:
                    continue
                items, link.pending = link.pending, []
                rest = self._feed(pid, link, items, time.perf_counter() + TURN)
                if rest is None:
                    continue
                link.pending = rest or self.lane.take(pid)
                if link.pending:
                    # a client keeps the clients' turn while the others run, so
                    # that no other client's input is handled before they have
                    await trio.lowlevel.checkpoint()
                    continue
            finally:
                if clients:
                    self._clients_turn.release()
            link.busy = False
            self.lane.release(pid)

    async def _client_turn(self):
        """Take the external clients' turn: one at a time, in the order they asked.
        Each peer's task lets the loop go every TURN, so peers share it by task, and
        a local client with many connections each flooding the supervisor with work
        for Python (Gateway.get, calls with capabilities) had as many turns as it
        had connections: a compartment whose calls need the supervisor (a host
        call) waited behind all of them (16 connections: 0.2 ms became 38 ms a
        call).  External clients together now have one turn, held across the
        checkpoint that lets everyone else run, so each compartment's task (and
        the supervisor's own) runs between two turns of theirs, however many
        connections they open; among themselves they go in turn (trio.Lock is
        fair).  Without a wait while nobody holds it: a client's call costs no
        extra trip through the scheduler.
        Taken only while the audit has room: a client checked it, then waited for
        the turn, and meanwhile the backlog filled (AUDIT_BACKLOG); each one whose
        turn then came fed a whole TURN of input anyway, so the backlog passed its
        mark by a TURN of records per connection waiting (max_connections of them).
        A client whose turn comes while the audit is full lets it go, and waits
        for room first (then for the turn again, behind those that waited)."""
        turn = self._clients_turn
        while True:
            try:
                turn.acquire_nowait()
            except trio.WouldBlock:
                await turn.acquire()
            audit = self.audit
            if audit is None or audit.room.is_set():
                return
            turn.release()
            await audit.room.wait()

    async def _client_turn_of(self, link: _Link):
        """_client_turn for a trio peer: the time it waits (for the others' turns,
        for the audit's room) is not its own, as in _may_read: a half-read
        message's clock (message_timeout) stops meanwhile."""
        paused = trio.current_time()
        await self._client_turn()
        if link.partial_since is not None:
            link.partial_since += trio.current_time() - paused

    @property
    def _clients_turn(self) -> trio.Lock:
        turn = self.__dict__.get("_clients_turn_lock")
        if turn is None:
            turn = self.__dict__["_clients_turn_lock"] = trio.Lock()
        return turn

    async def _may_read(self, link: _Link):
        """Backpressure: no more from an external client while too much waits to be
        written to it, nor from any peer while too much waits for the audit log.
        Not from an engine for what waits for it: an engine writes blocking and
        reads nothing until its write is done, so one writing an answer larger than
        its socket's buffer while more than `soft` waited for it waited for us, and
        we for it, for good (its compartment stuck, every call to it refused); what
        reading it adds to its backlog (its own calls' answers) is bounded by
        `hard`, past which it is cut off (the lane does the same: epoll_set).
        Nor, for what waits for it, from an external client that took none of it for
        `message_timeout` while it was not read: it may write as an engine does (a
        blocking write of a message larger than its socket takes, and no read until
        it is done), and it waited for us, and we for it, for good; it is read again
        until it takes some (bounded by `hard` too; the lane: Lane.unhold)."""
        timeout = self.system.message_timeout
        while not link.engine and link.queued > link.soft and not link.closed:
            now = time.monotonic()
            if link.held_since is None:
                link.held_since = now
            since = max(link.held_since, link.wrote_at)
            if now - since >= timeout:
                break                   # it took nothing meanwhile: read on
            with trio.move_on_after(since + timeout - now):
                await link.drained.wait()
        else:
            link.held_since = None
        if self.audit is not None and not self.audit.room.is_set():
            await self.audit.room.wait()

    def _fault(self, pid: int, e: BaseException):
        """Performing what a peer's input asked for raised: a fault here.  Fail closed:
        that peer is cut off, the operator is told, everyone else carries on."""
        self._cut_off(pid, f"internal error while handling its message "
                           f"({type(e).__name__}: {first_line(e)})")

    def _cut_off(self, pid: int, reason: str, tell: bool = True):
        """Close a peer's connection for `reason`; an external client is told why (an
        Abort naming the limit), unless `tell` is False (it reads nothing: the Abort
        would only wait behind what it does not read)."""
        peer = self.router.peers.get(pid)
        name = peer.name if peer is not None else f"peer {pid}"
        self._throttled(self.notices, name, f"{name}: connection cut off: {reason}",
                        "lines about")
        link = self.links.get(pid)
        if link is not None:
            if tell and peer is not None and peer.kind == "external" and peer.alive \
                    and not link.closed:
                # evicted, or stalled in the middle of a message: without this, its end
                # of the stream was all a client heard, with no reason or limit named
                try:
                    data = peer.conn.send_abort(f"connection cut off: {reason}")
                except Exception:  # noqa: BLE001 - the connection may be in any state
                    data = None
                if data is not None:
                    link.write(data)          # closed next: at most CLOSE_FLUSH on trio's
            link.cut, link.cut_reason = True, reason
            link.close()
        self._perform(self.router.disconnected(pid, f"{name} was cut off: {reason}"))
        self._shed()        # any the Abort's write shed (not left for a next write)

    async def _watch_start(self, comp, pid: int, proc):
        """An engine that is not ready within start_time (a start function that never
        returns, say) is a failed start: it is killed, and its restart policy decides."""
        await trio.sleep(comp.limits.start_time)
        if self._peer_of.get(comp.name) != pid or self._ready_peer.get(comp.name) == pid \
                or proc.returncode is not None or self._done.is_set():
            return
        self._peer_of[comp.name] = 0         # what this incarnation says from now on: stale
        self._act(self.lifecycle.start_failed(
            comp.name, f"it did not start within {comp.limits.start_time:g} s (limit "
                       f"start_time)", trio.current_time()))
        proc.kill()

    async def _watch_program(self, name: str, generation: int, limits: Limits):
        """Hold a program to its run_time (wall) and run_cpu (CPU seconds of its engine,
        counted from when the program started, checked every 0.25 s)."""
        proc = self.procs.get(name)
        if proc is None:
            return
        began = trio.current_time()
        cpu0 = await threads.run_sync(_cpu_seconds, proc.pid)
        while True:
            await trio.sleep(0.25 if limits.run_cpu is not None
                             else max(0.0, began + limits.run_time - trio.current_time()))
            if name not in self.lifecycle.running or proc.returncode is not None \
                    or generation != self.lifecycle.generation[name]:
                return
            reason = None
            if limits.run_time is not None and trio.current_time() - began >= limits.run_time:
                reason = f"its program ran longer than {limits.run_time:g} s (limit run_time)"
            elif limits.run_cpu is not None and cpu0 is not None:
                used = await threads.run_sync(_cpu_seconds, proc.pid)
                if used is not None and used - cpu0 >= limits.run_cpu:
                    reason = (f"its program used more than {limits.run_cpu:g} s of CPU "
                              f"(limit run_cpu)")
            if reason is not None:
                self._peer_of[name] = 0      # what this incarnation says from now on: stale
                self._say_log_refused(name)
                self._act(self.lifecycle.program_ended(name, None, reason,
                                                       trio.current_time()))
                proc.kill()
                return

    async def _read_stderr(self, name, proc, done, tail):
        """An engine's stderr, shown line by line at most log_rate lines a second;
        an engine that floods it is read only as fast as that (output.StderrLines)."""
        lines = output.StderrLines(self.system.compartments[name].limits.log_rate,
                                   trio.current_time())
        async with proc.stderr:
            while True:
                try:
                    chunk = await proc.stderr.receive_some(1 << 14)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    chunk = b""
                if not chunk:            # what was held back, its last line (no newline)
                    for text, shown in lines.finish(trio.current_time()):
                        if not lines.is_note(text):
                            tail.append(printable(text))
                        self.output.plugin(name, text, "stderr")
                    done.set()
                    break
                for text, shown in lines.feed(chunk, trio.current_time()):
                    if not lines.is_note(text):      # its own lines: why it ended
                        tail.append(printable(text))
                    if shown:
                        self.output.plugin(name, text, "stderr")
                if lines.over:                 # read on only when the rate allows
                    await trio.sleep(lines.wait())

    async def _stop_engines(self):
        procs = [p for p in self.procs.values() if p.returncode is None]
        for p in procs:
            p.terminate()
        with trio.move_on_after(GRACE_SECONDS):
            for p in procs:
                await p.wait()
        for p in procs:
            if p.returncode is None:
                p.kill()
        # their exits are the zygote's news: a zygote that does not tell them (stopped,
        # or wedged) held the stop for ever, `wsuper stop` and SIGTERM included.  It is
        # stopped next, and killed if it does not end (any engine left goes with it:
        # PR_SET_PDEATHSIG)
        with trio.move_on_after(GRACE_SECONDS):
            for p in procs:
                await p.wait()

    # ------------------------------------------------------------ host objects

    @staticmethod
    def _io_key(owner: str, caller: str = ""):
        """Whose worker threads run a call of `caller` on `owner`'s host objects."""
        return owner if not caller or caller == owner else (owner, caller)

    def _io_limiter(self, owner: str, caller: str = "") -> trio.CapacityLimiter:
        """The worker threads (2) of `owner`'s host objects, or of `caller`'s calls on
        those it was handed: a caller's slow operations never hold up the owner's (a
        compartment handed a Directory took both its owner's threads, and every file
        operation of the owner, on any grant, failed "not begun"; an outside review)."""
        key = self._io_key(owner, caller)
        limiter = self._io_limiters.get(key)
        if limiter is None:
            if len(self._io_limiters) >= IO_LIMITERS_KEPT:     # callers come and go
                for k in [k for k, lim in self._io_limiters.items()
                          if not lim.borrowed_tokens and not lim.statistics().tasks_waiting]:
                    del self._io_limiters[k]
            limiter = self._io_limiters[key] = trio.CapacityLimiter(2)
        return limiter

    def _host_call(self, call: fx.HostCall):
        if call.kind == "probe":
            self._then(self.prober.host_call, call)
            return
        if (call.kind, call.interface_id, call.method_id) in _OPENS:
            # the descriptor it will hold is counted before it runs: found missing
            # after (_host_done), Directory.create had made the file and the caller
            # was told EMFILE (an O_EXCL tried again then said EEXIST)
            seat = object()
            if not self._hold("file", seat, call.caller or call.owner):
                self._host_done(call.token, hostcaps.Refusal(
                    self._no_fds(call.caller or call.owner)), call.owner, call.caller)
                return
            self._fd_reserved[call.token] = seat
        try:
            outcome = self.hosts.serve(call, at_once=call.kind not in hostcaps.TAKE_TURNS
                                       or self._idle(call))
        except BaseException:
            seat = self._fd_reserved.pop(call.token, None)
            if seat is not None:
                self._uncount(seat)
            raise
        if isinstance(outcome, hostcaps.Job):
            self._queue_job(call, outcome)
        else:
            self._host_done(call.token, outcome, call.owner, call.caller)

    @staticmethod
    def _job_key(call: fx.HostCall) -> tuple:
        """The host object whose operations `call` takes its turn among."""
        return (call.kind, id(call.served)) if call.served is not None else \
            (call.kind, call.owner)

    def _idle(self, call: fx.HostCall) -> bool:
        """Whether nothing is under way on `call`'s host object: no operation queued,
        none running in a thread (even one abandoned at its deadline).  Only then may
        a call be answered at once on this thread (a read the page cache holds):
        else it overtook what came before it (a read answered what was there before
        the write sent ahead of it; an outside review), nor an answer of one done
        whose answer waits for trio's thread (its answer came after the read's,
        which a pipelining client sees; r249).  (A worker thread removes an object's
        queue, under _io_lock, only once it is empty and its operation has ended;
        only this thread adds one: read without the lock.)"""
        key = self._job_key(call)
        return key not in self._jobs and key not in self._unanswered

    def _io_answered(self, entry: _IoEntry):
        """`entry`'s call is answered (by its outcome or its deadline): one fewer of
        its object's unanswered (_idle)."""
        entry.answered = True
        left = self._unanswered.get(entry.key, 0) - 1
        if left > 0:
            self._unanswered[entry.key] = left
        else:
            self._unanswered.pop(entry.key, None)

    def _queue_job(self, call: fx.HostCall, job: hostcaps.Job):
        """Jobs on one host object run one after another, in the order their calls
        came (E-order: a write then a truncate on one File ran in two threads at once,
        and the truncate could land first; an outside review); jobs on different
        objects run side by side, at most 2 a compartment, and 2 a caller on what it
        was handed (_io_limiter).

        They are run by the worker threads of the compartment's (or the caller's)
        _IoPool, which stay a moment (IO_LINGER) for more: a job queued while one
        waits is handed to it directly (one thread wake-up, no trio task, no trio
        thread hand-off), and its outcome goes back to the pool's task in trio
        (one wake-up for all those done meanwhile), which answers the call, and
        fails with ETIMEDOUT each call whose deadline came first."""
        key = self._job_key(call)
        pkey = self._io_key(call.owner, call.caller)
        pool = self._io_pools.get(pkey)
        if pool is None:
            pool = self._io_pools[pkey] = _IoPool(pkey, call.owner, call.caller,
                                                  self._io_lock)
        turns = self._turns
        entry = _IoEntry(call, job, self._now() + hostcaps.IO_DEADLINE,
                         turns.blame if turns is not None and turns.here else None, pool,
                         key)
        self._unanswered[key] = self._unanswered.get(key, 0) + 1
        pool.pending.append(entry)
        more = False
        with self._io_lock:
            queue = self._jobs.get(key)
            if queue is not None:        # its object is ready or running: it follows
                queue.append(entry)      # (run by its own pool's threads: _io_hand)
            else:
                # queued now, even by the lane's worker: a call after it in the same
                # turn sees its object busy (_idle)
                self._jobs[key] = collections.deque([entry])
                pool.ready.append(key)
                if not self._io_notify(pool) and pool.threads < 2:
                    pool.threads += 1
                    more = True
        # its pool's task runs even for a job queued behind another pool's (the same
        # object, called by its owner and by a compartment it was handed to): it is
        # what fails the call at its deadline.  Started only by the first pool's, such
        # a call behind a hung operation waited for ever, never ETIMEDOUT (r249)
        if not pool.running:
            pool.running = True
            self._soon(self._task, "host file operations", self._io_pool, pool)
        elif more:
            self._set(pool.wake)

    def _io_hand(self, pool: _IoPool, key, token):
        """Holding _io_lock, in a worker thread of `pool`'s that ended a job on the
        object `key`, whose queue is not empty: the object is ready in the pool of its
        next job's call.  Handed on in whichever pool ran the job before, a call of a
        compartment handed a Directory ran on its owner's threads (holding one of the
        owner's 2 tokens for as long as it hung), and the owner's on the caller's (r249)."""
        nxt = self._jobs[key][0].pool
        nxt.ready.append(key)            # after the others ready: each in turn
        if nxt is pool or self._io_notify(nxt):
            return
        if nxt.threads < 2:
            nxt.threads += 1
            try:
                token.run_sync_soon(self._io_want, nxt)
            except trio.RunFinishedError:   # the system has stopped
                pass

    @staticmethod
    def _io_notify(pool: _IoPool) -> bool:
        """Holding _io_lock: wake one of `pool`'s threads waiting for a job, if any
        is.  It is counted out of `waiting` here and into `wakes`, which the first
        thread that leaves its wait takes (_io_work): a notify that comes as a wait
        times out is not seen by it (Condition.wait says False all the same), and
        the thread counted itself out again: `waiting` fell below 0, no thread was
        ever started or notified for the jobs after, which each failed "not begun"
        at its deadline and left its object busy for good (calls ~IO_LINGER apart:
        1 in 3 to 2 in 3 failed; r249)."""
        if not pool.waiting:
            return False
        pool.waiting -= 1
        pool.wakes += 1
        pool.cond.notify()
        return True

    def _io_want(self, pool: _IoPool):
        """Trio's thread: `pool` wants a thread (_io_hand); its task is started again
        if it had ended (every call of its own answered meanwhile, at their deadlines)."""
        if pool.running:
            pool.wake.set()
            return
        pool.running = True
        self._io_pools.setdefault(pool.key, pool)
        self._task("host file operations", self._io_pool, pool)

    async def _io_pool(self, pool: _IoPool):
        """The trio side of a pool: starts the worker threads it wants, answers the
        calls whose jobs they did, and fails those whose deadline came first; ends
        once its threads have (IO_LINGER after the last job)."""
        token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    with self._io_lock:
                        done, pool.done = pool.done, []
                        wanted = pool.threads
                    for entry, outcome in done:
                        self._io_answer(entry, outcome)
                    while pool.started < wanted:
                        pool.started += 1
                        nursery.start_soon(self._io_thread, pool, token)
                    pending, now = pool.pending, trio.current_time()
                    while pending and (pending[0].answered or pending[0].deadline <= now):
                        entry = pending.popleft()
                        if not entry.answered:
                            self._io_expire(entry)
                    if not wanted and not pool.started and not pending:
                        self._io_pool_gone(pool)      # now: a job queued from here on
                        break                         # makes a new pool (and task)
                    # deadlines come in the order of the jobs (each IO_DEADLINE after
                    # it was queued): with none pending, none falls due within
                    # IO_DEADLINE, and a job queued meanwhile need not wake this task
                    with trio.move_on_at(pending[0].deadline if pending else
                                         now + hostcaps.IO_DEADLINE):
                        await pool.wake.wait()
                    pool.wake = trio.Event()
        finally:
            self._io_pool_gone(pool)

    def _io_pool_gone(self, pool: _IoPool):
        pool.running = False
        if self._io_pools.get(pool.key) is pool:
            del self._io_pools[pool.key]

    async def _io_thread(self, pool: _IoPool, token):
        """One worker thread of `pool`'s: the compartment's token (_io_limiter) is
        held until the thread ends, even abandoned at a deadline: a compartment whose
        operations hang runs 2 at a time, not every one, nor all of trio's threads."""
        try:
            await threads.run_sync(self._io_work, pool, token, abandon_on_cancel=True,
                                   limiter=self._io_limiter(pool.owner, pool.caller))
        finally:
            pool.started -= 1
            pool.wake.set()

    def _io_work(self, pool: _IoPool, token):
        """A worker thread: the ready objects' jobs, one at a time, each object's in
        order and one job of it at a time (it is not ready while one runs, even one
        abandoned at its deadline: the next never overtakes it); ends when none has
        come for IO_LINGER seconds."""
        lock, live, host_threads = self._io_lock, self.router.host_call_live, self._host_threads
        with lock:
            while True:
                if not pool.ready:
                    pool.waiting += 1
                    notified = pool.cond.wait(IO_LINGER)
                    if pool.wakes:                 # one notified: counted out already
                        pool.wakes -= 1            # (this one, or one still waking)
                    else:
                        pool.waiting -= 1
                    if not notified and not pool.ready:
                        pool.threads -= 1
                        return
                    continue
                key = pool.ready.popleft()
                queue = self._jobs[key]
                entry = queue.popleft()
                lock.release()
                try:
                    call, job = entry.call, entry.job
                    if call is None or job is None:   # failed at its deadline, abandoned
                        outcome = None
                    else:
                        # a call that ended while it waited (its grant revoked, its
                        # caller gone or cancelling it) is not done.  Marked running
                        # first: a revocation that does not see the mark came before
                        # the check, which then fails (`_revoke` waits for the others)
                        tok = call.token
                        finished = host_threads[tok] = threading.Event()
                        try:
                            outcome = job.run() if live(tok) else _SKIPPED
                        except Exception as e:  # noqa: BLE001 - that call fails, not the thread
                            outcome = e
                        finally:
                            finished.set()
                            host_threads.pop(tok, None)
                finally:
                    lock.acquire()
                if queue:
                    self._io_hand(pool, key, token)
                else:
                    del self._jobs[key]
                if self._io_answer_here(pool, entry, outcome):
                    continue
                pool.done.append((entry, outcome))
                if len(pool.done) == 1:
                    try:
                        token.run_sync_soon(self._io_woken, pool)
                    except trio.RunFinishedError:   # the system has stopped
                        pass

    def _io_answer_here(self, pool: _IoPool, entry: _IoEntry, outcome) -> bool:
        """In a worker thread, holding _io_lock: answer the call now, in a turn of
        this thread's (Turns.try_enter: only while trio's thread waits for I/O and
        the lane's worker has no turn), as the lane's worker answers what it serves
        at once: no wake-up of trio's thread at all.  Only an answer that opened
        nothing, to a call the lane's worker queued (what is owed for it that raises
        cuts off its peer, `blame`), with no answer of the pool's waiting for trio
        (answers keep their order); else False, and trio's thread answers it."""
        turns = self._turns
        kind = type(outcome)
        if entry.blame is None or turns is None or pool.done or not (
                kind is hostcaps.Answer and not outcome.objects and not outcome.lines
                and not outcome.notices
                or kind is hostcaps.Refusal and outcome.notice is None) \
                or not turns.try_enter():
            return False
        self._io_lock.release()
        try:
            turns.blame = entry.blame
            try:
                self._io_answer(entry, outcome)
                pending = pool.pending          # (the pool's task may not wake for long)
                while pending and pending[0].answered:
                    pending.popleft()
            finally:
                turns.blame = None
                turns.leave()
        finally:
            self._io_lock.acquire()
        return True

    @staticmethod
    def _io_woken(pool: _IoPool):
        pool.wake.set()

    def _io_answer(self, entry: _IoEntry, outcome):
        """A job's outcome, in trio: its call's answer, unless its deadline came first
        (then its job was abandoned: what it opened is closed)."""
        if entry.answered:
            return
        self._io_answered(entry)
        call, job = entry.call, entry.job
        entry.call = entry.job = None   # (its params: kept till its deadline, a write's
        try:                            # data held 10 s of writes)
            if isinstance(outcome, Exception):
                raise outcome
            if outcome is _SKIPPED:
                job.abandon()
                if self.router.host_call_revoking(call.token):
                    # the revocation under way fails it (_revoke), after its record; and
                    # does not wait for it: its thread marked it running before asking
                    # (a revocation that began between the two counted it begun)
                    self._left_to_revocation.add(call.token)
                    return
                expired = self.router.host_call_expired(call.token)  # its grant expired
                outcome = hostcaps.Refusal(expired, "denied") if expired else \
                    hostcaps.Refusal("ECANCELED: the call ended before its turn came "
                                     "(revoked, cancelled, or its caller is gone)")
            elif outcome is None:                # (abandoned: only by _io_expire)
                outcome = hostcaps.Refusal(f"ETIMEDOUT: {job.label}: not done")
            self._host_done(call.token, outcome, call.owner, call.caller)
        except Exception as e:  # noqa: BLE001 - one job's fault ends that call only
            job.abandon()
            self._io_failed(call, job, e)

    def _io_expire(self, entry: _IoEntry):
        """The deadline of a job not answered yet: its call fails ETIMEDOUT."""
        self._io_answered(entry)
        job, call = entry.job, entry.call
        begun = job.abandon()            # first: a worker that took it sees it abandoned
        entry.call = entry.job = None
        if begun:
            outcome = hostcaps.Refusal(
                f"ETIMEDOUT: {job.label}: the operation took longer than "
                f"{hostcaps.IO_DEADLINE:g} s; it may still complete")
        else:
            why = "no thread could be started" if threads.short() else \
                "earlier file operations have not ended"
            outcome = hostcaps.Refusal(
                f"ETIMEDOUT: {job.label}: not begun within {hostcaps.IO_DEADLINE:g} s "
                f"({why}); it was not done")
        try:
            self._host_done(call.token, outcome, call.owner, call.caller)
        except Exception as e:  # noqa: BLE001 - one call's fault ends that call only
            self._io_failed(call, job, e)

    def _io_failed(self, call: fx.HostCall, job: hostcaps.Job, e: Exception):
        """A fault of ours in answering `call`: that call fails EIO, said once."""
        self._host_done(call.token, hostcaps.Refusal(
            f"EIO: {job.label}: internal error ({type(e).__name__})",
            notice=f"internal error in a host call: {type(e).__name__}: "
                   f"{first_line(e)}"), call.owner)

    def _host_done(self, token: int, outcome, owner: str = "", caller: str = ""):
        """A host call ended; `owner`: the compartment whose grant it went through;
        `caller`: who called, which the descriptors it opened are counted to (the
        owner if not said): counted to the owner, a compartment it handed a
        Directory opened files through it until none were left, the owner's own
        share too, and the owner's own opens failed EMFILE (an outside review)."""
        turns = self._turns
        answer = isinstance(outcome, hostcaps.Answer)
        if turns is not None and turns.here and (turns.stopped or answer and outcome.objects):
            turns.owe(self._host_done, token, outcome, owner, caller, stop=True)
            return
        seat = self._fd_reserved.pop(token, None)
        if seat is not None:         # counted before it ran: now for what it opened, if any
            self._uncount(seat)
        if answer and outcome.objects:
            held = [self._hold(*o, caller or owner) for o in outcome.objects]
            if not all(held):
                for (kind, served), counted in zip(outcome.objects, held):
                    self._release(kind, served, counted)
                outcome = hostcaps.Refusal(self._no_fds(caller or owner))
                answer = False
        if answer:
            # the answer first: the caller goes on while its lines are formatted
            self._perform(self.router.host_returned(token, outcome.content, outcome.objects))
            for text in outcome.notices:       # before the line that follows them
                self.say(text, owner or None)
            for line in outcome.lines:
                self.output.plugin(line.compartment, line.text)
        else:
            if outcome.notice:
                self.say(outcome.notice)
            self._perform(self.router.host_failed(token, outcome.reason, outcome.type))

    def _outside(self, owner: str) -> bool:
        """Whether descriptors counted to `owner` are external clients' (any caller
        that is not a compartment: every connection is one, "external")."""
        return owner not in self.system.compartments

    def _no_fds(self, owner: str) -> str:
        """The refusal of an open _hold found no descriptor for (`owner`'s), said
        to the operator once."""
        if self._outside(owner) and self._fds_outside >= self._fd_outside_limit:
            text = (f"external clients hold {self._fds_outside} host files and "
                    f"directories, half of the descriptors the supervisor can spare "
                    f"beyond the compartments' own")
            self.tell_once("fd-outside", f"{text}: their opens fail (EMFILE) until they "
                                         f"close some")
            return f"EMFILE: {text}; close some files"
        self._tell_fd_budget()
        return _NO_FDS

    def _tell_fd_budget(self):
        self.tell_once("fd-budget", f"host files and directories hold "
                       f"{self._host_fds} descriptors, all the supervisor can spare "
                       f"(but the last {self._fd_each} of each compartment's own): "
                       f"opening more fails (EMFILE) until some are closed")

    def _hold(self, kind: str, served, owner: str = "") -> bool:
        """Count a host object's descriptor to `owner` (a compartment); False if there
        is none to spare (it is not counted then, and the caller releases it).  The
        last _fd_each of the budget for each compartment are its own: one that has
        fewer may still take one when the others hold every other descriptor (a
        compartment that opened files until EMFILE left none for anyone)."""
        if kind not in ("directory", "file") or served is None:
            return True
        mine = self._fds_of.get(owner, 0)
        owed = owner in self.system.compartments and mine < self._fd_each
        if self._host_fds + 1 + self._fd_owed - owed > self._fd_budget:
            return False
        if self._outside(owner):
            # external clients, however many connections they open, take at most
            # half of what the compartments' own leave: they took all of it, and
            # every compartment was left its last FD_EACH (a local client with two
            # connections held 120 files through a Directory a compartment handed
            # out, and a program's 16th open failed EMFILE: r272)
            if self._fds_outside >= self._fd_outside_limit:
                return False
            self._fds_outside += 1
        self._host_fds += 1
        self._fds_of[owner] = mine + 1
        self._fd_owed -= owed
        self._fd_owner[id(served)] = owner
        return True

    def _release(self, kind: str, served, counted: bool = True):
        if kind == "probe":
            self.prober.registry.unsubscribe(served)
            return
        if kind in ("directory", "file") and served is not None:
            if counted:
                self._uncount(served)
            done = self._releasing[id(served)] = threading.Event()
            self._soon(self._task, f"closing a host {kind}", self._release_in_thread, kind,
                       served, done)

    def _uncount(self, served):
        """The descriptor _hold counted for `served` is free again."""
        self._host_fds -= 1
        owner = self._fd_owner.pop(id(served), None)
        if owner is None:
            owner = ""
        elif self._outside(owner):
            self._fds_outside -= 1
        mine = self._fds_of.get(owner, 1) - 1
        if mine > 0:
            self._fds_of[owner] = mine
        else:
            self._fds_of.pop(owner, None)
        if owner in self.system.compartments and mine < self._fd_each:
            self._fd_owed += 1

    async def _release_in_thread(self, kind, served, done: threading.Event | None = None):
        # abandoned when cancelled (at stop: the process's exit closes it): a close a
        # disk holds (a file with writes a hung network file system has not taken;
        # the engines' loss at stop releases their files) held the stop as long
        try:
            await threads.run_sync(hostcaps.release, kind, served,
                                   limiter=self._release_limiter, abandon_on_cancel=True)
        finally:
            if done is not None:
                done.set()
                if self._releasing.get(id(served)) is done:
                    del self._releasing[id(served)]

    # ------------------------------------------------------------ endpoints

    async def _bind(self, path: str) -> trio.SocketListener:
        endpoint.claim_socket_path(path)
        sock = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            # bound here, not by trio's bind, which binds a Unix socket in a worker
            # thread: with none to give (RLIMIT_NPROC, a pids cgroup), `up` ended in
            # a traceback (a local bind is as quick as the chmod below)
            sock.bind(path)
        except OSError as e:
            # named: "[Errno 2] No such file or directory" said neither which socket
            # nor which key moves it
            sock.close()
            raise endpoint.EndpointError(f"cannot bind the socket {quoted(path)}: "
                                         f"{e.strerror or e}") from None
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old)
        sock = trio.socket.from_stdlib_socket(sock)
        os.chmod(path, 0o600)
        self._bound[path] = os.lstat(path).st_ino
        sock.listen(64)
        return trio.SocketListener(sock)

    async def _accept(self, listener) -> trio.SocketStream | None:
        """The next connection; None after refusing one for want of descriptors."""
        try:
            return await listener.accept()
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                raise
            self.tell_once("emfile", f"out of file descriptors ({e.strerror}): refusing "
                                     f"connections until some are free")
            if self._fd_reserve is not None:       # free one to take the connection and
                os.close(self._fd_reserve)         # close it, so it does not stay queued
                self._fd_reserve = None
                try:
                    conn, _ = listener.socket._sock.accept()
                    conn.close()
                except OSError:
                    pass
                try:
                    self._fd_reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    pass
            await trio.sleep(0.1)
            return None

    async def _listen(self, task_status=trio.TASK_STATUS_IGNORED):
        listener = await self._bind(self.socket_path)
        self.say(f"listening on {self.socket_path} (external: "
                 f"{', '.join(self.system.external)})")
        task_status.started()
        await self._kept_bound(self.socket_path, "external socket", listener,
                               self._accept_external)

    async def _accept_external(self, listener):
        while True:
            stream = await self._accept(listener)
            if stream is None:
                continue
            most = self._max_external
            if self._external >= most and not self._make_room():
                self.tell_once("max-external", f"more than {most} external connections "
                               f"at once: refusing the others (max_connections)")
                self._task("refusing an external connection", self._refuse, stream,
                           f"too many connections (at most {most})",
                           on_fault=lambda why, s=stream: s.socket.close())
                continue
            self._task("serving an external connection", self._serve_external, stream)

    def _make_room(self) -> bool:
        """All external connections are taken: close the one idle longest (see
        `idlest`), so that clients which hold connections open doing nothing useful
        cannot keep the others out.  False if every connection is busy."""
        now, conns = self._now(), []
        serving = self.router.serving()
        for pid, link in self.links.items():
            peer = self.router.peers.get(pid)
            if peer is None or peer.kind != "external" or link.closed:
                continue
            last = peer.useful                    # the router's, and the lane's own
            if link.native:
                last = max(last, now - self.lane.idle(pid))
            busy = bool(peer.conn.unanswered or (peer.conn.native is not None
                                                 and peer.conn.native.in_flight())
                        or pid in serving)
            conns.append((pid, now - last, busy))
        pick = idlest(conns, IDLE_EVICT)
        if pick is None:
            return False
        pid, quiet = pick
        self._cut_off(pid, f"it did no useful work for {quiet:.1f} s while another client "
                           f"waited to connect (max_connections)")
        return True

    async def _refuse(self, stream, reason: str):
        """Tell a connection past max_connections why (an Abort), and close it
        (_linger)."""
        from capnp_schemas import protocol
        await self._linger(stream, protocol.Connection("refused").send_abort(reason))

    async def _linger(self, stream, rest: bytes = b""):
        """Close a client's connection that we ended (refused, cut off, evicted,
        after an Abort saying why), once `rest` (what is still to be written to it)
        is.  A client sends without waiting (a bootstrap, calls pipelined on it, the
        rest of a message it was cut off in); closed at once with that unread, the
        kernel failed its next write (EPIPE) and its read after the Abort
        (ECONNRESET), and a client that writes before it reads said that instead of
        the reason (`wsuper call`, half the time: 'disconnected: message = [Errno 32]
        Broken pipe').  So only our writing side ends, and what the client sends is
        read and dropped until it closes: at most CLOSE_FLUSH seconds and
        LINGER_BYTES, and LINGERING connections at a time (past that, closed
        once `rest` is written, if it is an Abort's size: ABORT_BYTES)."""
        lingering = self._lingering < LINGERING
        self._lingering += lingering
        try:
            with trio.move_on_after(CLOSE_FLUSH):
                if rest and (lingering or len(rest) <= ABORT_BYTES):
                    await stream.send_all(rest)
                if lingering:
                    await stream.send_eof()
                    taken = 0
                    while taken < LINGER_BYTES:
                        chunk = await stream.receive_some(1 << 16)
                        if not chunk:
                            break
                        taken += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._lingering -= lingering
            await stream.aclose()

    async def _serve_external(self, stream):
        self._external += 1
        pid = link = linger = None
        try:
            limits = self.system.external_limits or Limits()
            pid = self.router.add_external()
            link = self._lane_link(pid, stream.socket, limits, external=True) \
                if self.lane is not None else None
            if link is None:
                link = _Link(stream, limits)
            self.links[pid] = link
            if self._external_queues is None:
                self._external_queues = _QueuePool(R.external_queue_pool(limits),
                                                   excused=self.router.forwarded_bytes)
            link.shared = self._external_queues
            link.calls_room = R.calls_past_soft(limits)     # (calls back to its objects)
            self._external_queues.links[link] = pid
            async with trio.open_nursery() as n:
                n.start_soon(link.writer)
                why = await self._pump(pid, link)      # None: it closed; else what ended it
                self._perform(self.router.disconnected(
                    pid, "external client disconnected" + (f" ({why})" if why else "")))
                await link.aclose()
                # what is still queued for it (an Abort last) goes out if it reads, for a
                # while: a client aborted or evicted while it read nothing kept its
                # writer, its descriptor and its place of max_connections for ever
                n.cancel_scope.deadline = trio.current_time() + CLOSE_FLUSH
            # ended by us (told why): the rest of what it sends is read (_linger)
            if link.detached is not None and len(link.detached[1]) <= LINGER_BYTES:
                fd, rest = link.detached         # the lane's descriptor, handed back, and
                try:                             # what it did not take yet (its Abort)
                    sock = trio.socket.from_stdlib_socket(pysocket.socket(fileno=fd))
                except OSError:                   # (closed in `finally`)
                    pass
                else:
                    link.detached = None
                    linger = (trio.SocketStream(sock), rest)
            elif link.cut and not link.native and not link.queued:
                linger, stream = (stream, b""), None
        except Exception as e:  # noqa: BLE001 - this connection's fault: it alone is cut off
            self.say(f"internal error in serving an external connection "
                     f"({type(e).__name__}: {first_line(e)})")
            if pid is not None and pid in self.router.peers:
                self._cut_off(pid, f"internal error ({type(e).__name__})")
            linger = None
        finally:
            self._external -= 1
            self.links.pop(pid, None)
            if self._external_queues is not None:
                self._external_queues.links.pop(link, None)
            if link is not None and link.detached is not None:
                os.close(link.detached[0])  # not lingered on: it reads nothing, or the
                #                             system stopped meanwhile
            if stream is not None:
                await stream.aclose()
        if linger is not None:          # its place is free meanwhile (its descriptor is
            await self._linger(*linger)     # counted with the refused ones: LINGERING)

    async def _admin(self, task_status=trio.TASK_STATUS_IGNORED):
        """The admin socket: one JSON request line per connection, one answer line;
        at most ADMIN_CONNECTIONS still sending their request (a new one closes the
        oldest: endpoint.admin_evictee), and ADMIN_ANSWERING requests answered at once
        (past it, any but a stop is refused: nothing a local client does keeps
        `wsuper stop` out)."""
        path = endpoint.admin_socket_path(self.identity)
        listener = await self._bind(path)
        task_status.started()
        await self._kept_bound(path, "admin socket", listener, self._accept_admin)

    async def _kept_bound(self, path: str, what: str, listener, accept):
        """`accept(listener)` for as long as the system runs, and the socket bound again
        whenever its path no longer names it.  Removed while the system ran (a
        cleaner of old files, an operator's rm in the runtime directory), the admin
        socket was gone for good: `wsuper stop` and `status` waited for it, holding
        the system's lock, and said its `up` was stuck starting; the external one
        took no client again."""
        told = False
        while True:
            if listener is not None:
                async with listener, trio.open_nursery() as nursery:
                    nursery.start_soon(self._bounded, f"accepting on the {what}", accept,
                                       (listener,), None, True)
                    while self._still_bound(path):
                        await trio.sleep(SOCKET_CHECK)
                    nursery.cancel_scope.cancel()
            listener = None
            try:
                # its directory removed too (a cleaner of old files in /tmp takes
                # /tmp/wsuper-UID whole, the lock with it): made again as at start
                # (ours, 0700), and the lock file with it, or every bind failed
                # ENOENT for good and no command found the system running
                endpoint.safe_socket_dir(path)
                if self._system_lock is not None:
                    self._system_lock.renew()
                listener = await self._bind(path)
            except (OSError, endpoint.EndpointError) as e:
                if not told:
                    told = True
                    self.say(f"error: the {what} {path} was removed or replaced while the "
                             f"system ran, and cannot be bound again ({e}); tried again "
                             f"every {SOCKET_CHECK:g} s")
                await trio.sleep(SOCKET_CHECK)
                continue
            told = False
            self.say(f"the {what} {path} was removed or replaced while the system ran: "
                     f"listening there again")

    def _still_bound(self, path: str) -> bool:
        try:
            return os.lstat(path).st_ino == self._bound.get(path)
        except FileNotFoundError:
            return False
        except OSError:
            return True          # cannot tell (no descriptor, ...): as it was

    async def _accept_admin(self, listener):
        while True:
            stream = await self._accept(listener)
            if stream is None:
                continue
            conns = [(c, c.since, c.reading) for c in self._admin_conns]
            if sum(reading for _c, _s, reading in conns) >= endpoint.ADMIN_CONNECTIONS:
                victim = endpoint.admin_evictee(conns)
                victim.evicted = True
                victim.scope.cancel()
                self._admin_conns.discard(victim)
            conn = _AdminConn(trio.current_time())
            self._admin_conns.add(conn)
            self._task("serving an admin request", self._serve_admin, stream, conn)

    @staticmethod
    def _admin_line_now(stream, answer: dict):
        """Write one answer line without waiting (the socket is non-blocking): lost if
        the client's socket does not take it whole at once."""
        try:
            os.write(stream.socket.fileno(), endpoint.encode(answer))
        except OSError:
            pass

    def _admin_busy(self) -> dict:
        return {"ok": False, "system": self.identity,
                "error": f"too many admin requests at once (at most "
                         f"{endpoint.ADMIN_ANSWERING} are answered at a time, and a stop "
                         f"always); try again"}

    async def _serve_admin(self, stream, conn):
        try:
            async with stream:
                await self._serve_admin_line(stream, conn)
        finally:
            self._admin_conns.discard(conn)

    async def _serve_admin_line(self, stream, conn):
        data = b""
        conn.scope.deadline = trio.current_time() + endpoint.ADMIN_READ_TIMEOUT
        with conn.scope:
            while b"\n" not in data and len(data) <= endpoint.ADMIN_LINE_LIMIT:
                try:
                    chunk = await stream.receive_some(1 << 16)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not chunk:
                    break
                data += chunk
        conn.reading = False
        if conn.scope.cancelled_caught and not conn.evicted and b"\n" not in data:
            # part of a request, then silence: the part was taken as the request, and
            # answered "expected one JSON object on one line (not JSON: Expecting ','
            # delimiter ...)", or, whole but for its newline, carried out 5 s later
            # (a stop, a revocation); it is refused naming why (an outside review, r266)
            self._admin_line_now(stream, {
                "ok": False, "system": self.identity,
                "error": f"the request did not end within {endpoint.ADMIN_READ_TIMEOUT:g} s "
                         f"({len(data)} bytes came, and no newline): a request is one JSON "
                         f"object on one line; nothing was done"})
            return
        if conn.evicted:           # a line, if the socket takes it at once
            self._admin_line_now(stream, {
                **self._admin_busy(), "error": f"closed before the whole request came: "
                f"another connection needed its place (at most "
                f"{endpoint.ADMIN_CONNECTIONS} admin connections still sending theirs)"})
            return
        line = data.partition(b"\n")[0]
        if len(line) > endpoint.ADMIN_LINE_LIMIT:
            # cut at the limit, it was parsed all the same, and answered "expected one
            # JSON object on one line", which did not say what was wrong with it
            self._admin_line_now(stream, {
                "ok": False, "system": self.identity,
                "error": f"a request is one line of at most {endpoint.ADMIN_LINE_LIMIT} "
                         f"bytes: this one is longer"})
            return
        # parsed once, here: every decision below is taken on its value (a trace was
        # once told by the substring "trace" in the raw line: {"op":"\u0074race"}
        # was answered "unknown request"; r268)
        req, problem = endpoint.take_request(line)
        answering = sum(not c.reading for c in self._admin_conns) - 1
        if answering >= endpoint.ADMIN_ANSWERING and not endpoint.never_busy(req):
            self.tell_once("max-admin", f"more than {endpoint.ADMIN_ANSWERING} admin "
                                        f"requests at once: refusing the others (not a stop)")
            self._admin_line_now(stream, self._admin_busy())
            return
        if req is not None and req["op"] == "trace" and req["system"] == self.identity:
            try:                         # a trace session streams its events
                await self.prober.trace(stream, req)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except Exception as e:  # noqa: BLE001 - no request may end the system
                self.say(f"internal error in a trace session: "
                         f"{type(e).__name__}: {first_line(e)}")
            return
        conn.answering = True            # the stop lets it finish (_serve_all)
        try:
            try:
                answer = await self._admin_answer(req, problem)
            except Exception as e:  # noqa: BLE001 - no request may end the system
                self.say(f"internal error answering an admin request: "
                         f"{type(e).__name__}: {first_line(e)}")
                answer = {"ok": False, "error": "internal error"}
            answer["system"] = self.identity
            # a client that never reads its answer (one larger than the socket's buffer:
            # a status of many compartments) held the connection, and the answer, for
            # ever
            with trio.move_on_after(endpoint.ADMIN_SEND_TIMEOUT):
                try:
                    await stream.send_all(endpoint.encode(answer))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        finally:
            conn.answering = False

    async def _revoke(self, grant: str) -> dict:
        """Revoke `grant`; answered once nothing more happens through it.  A file
        operation a worker thread has already begun cannot be stopped (the kernel is
        in the middle of it): the answer waits for those (at most IO_DEADLINE), so
        that no write lands after `wsuper revoke` said ok (an outside review), and
        says so if one is still running then.  Those begun end before the revocation
        itself (Router.revoking), and their calls are answered as they ended: the
        file's content and the audit agree on which landed."""
        deadline = trio.current_time() + hostcaps.IO_DEADLINE
        if self.router.revoked_already(grant):
            # one revocation, one record: a second said a revocation at its own time.
            # But not "ok" while a file operation begun before the first still runs
            # (that one gave up waiting, or is still waiting): it said ok at once, and
            # the write landed after it
            text = f"{grant} was revoked already"
            running, closing = self._revoke_waits.get(grant, ([], []))
        else:
            text = f"revoked {grant}"
            # from here no host job through the grant begins; those a worker thread has
            # begun end first and are answered as they ended, before the revocation:
            # revoked at once, a write under way landed while its call was failed
            # "revoked while this call was in flight" (the program told it had not
            # happened, the audit saying so, the file holding it; r259)
            tokens = self.router.revoking(grant)
            begun = [t for t in tokens if t in self._host_threads]
            # a job its thread had marked running but had not yet asked whether it was
            # still wanted (host_call_live) is not run, and left to this revocation
            # (_io_answer): waited for as begun, its call never answered, revoke waited
            # for it until the deadline (10 s), the grant acting meanwhile (r261)
            left = self._left_to_revocation        # (changed in place only)
            try:
                while any(self.router.host_call_open(t) and t not in left for t in begun) \
                        and trio.current_time() < deadline:
                    await trio.sleep(0.005)
            except BaseException:
                self.router.not_revoking(grant)
                self._forget_left()
                raise
            if self.router.revoked_already(grant):    # by another request meanwhile
                return await self._revoke(grant)
            try:
                # its record goes in the router's effects: after the records of the
                # calls that ended before it (the lane's: those the denials below drain
                # into these effects), before the denials.  Written here, before
                # these effects, it came ahead of such records (an outside review)
                effects = self.router.revoke(grant, {"time": None, "event": "grant revoked",
                                                     "grant": grant, "by": "operator"})
            except R.UnknownGrant as e:
                # "unknown": the operator named no revocable grant (exit 2, as offline)
                return {"ok": False, "error": e.args[0], "unknown": True}
            released = [e.served for e in effects if isinstance(e, fx.HostRelease)]
            self._perform(effects)
            self._forget_left()
            # those still running (past the deadline: a hung disk) were failed above;
            # the answer says they may still complete
            running = [e for e in map(self._host_threads.get, tokens) if e is not None]
            # and the closes of the files and directories it releases (worker threads):
            # answered before them, `wsuper revoke app.data && umount /data` could find
            # the directory still open in the supervisor (EBUSY)
            closing = [e for e in (self._releasing.get(id(x)) for x in released)
                       if e is not None]
            if running or closing:
                self._revoke_waits[grant] = (running, closing)
        while not all(e.is_set() for e in running + closing) \
                and trio.current_time() < deadline:
            await trio.sleep(0.01)
        left = sum(not e.is_set() for e in running)
        unclosed = sum(not e.is_set() for e in closing)
        if not left and not unclosed:
            self._revoke_waits.pop(grant, None)
        return {"ok": True, "text": text + (
            f"; {left} file operation{'s' if left > 1 else ''} begun before it did not finish "
            f"within {hostcaps.IO_DEADLINE:g} s and may still complete" if left else "") + (
            f"; {unclosed} of the files and directories it closes did not close within "
            f"{hostcaps.IO_DEADLINE:g} s" if unclosed else "")}

    def _forget_left(self):
        """Of the calls left to a revocation (_left_to_revocation), those it has
        failed, or that ended otherwise, are no longer noted."""
        left = self._left_to_revocation
        if left:
            left -= {t for t in left if not self.router.host_call_open(t)}

    async def _admin_answer(self, req: dict | None, problem: str | None) -> dict:
        """The answer to the request endpoint.parse_request gave (`req`), or to a line
        it refused (`problem`: why, naming the key)."""
        if req is None:
            # why, too (not UTF-8, not JSON where, not an object, a key twice, a key
            # of the wrong type, missing or unknown)
            return {"ok": False, "error": printable(problem)[:400]}
        if req.get("system") != self.identity:
            return {"ok": False, "error": f"this is {self.system.path}, not "
                                          f"{printable(str(req.get('system')))[:200]}"}
        if req.get("op") == "revoke":
            return await self._revoke(req["grant"])
        if req.get("op") == "status":
            return {"ok": True, "status": await self._status()}
        if req.get("op") == "socket":
            # where this run's external endpoint listens: `up --socket PATH` may bind
            # where the system file does not say, and `wsuper call` asks here
            # and the fingerprint of each interface's schema as up loaded it: `call`
            # writes the parameters with the schema as it is now, and one changed
            # since (a field's type, the order of fields) was read by the callee in
            # its old layout, the call answered with no word of it
            return {"ok": True, "socket": self.socket_path if self.system.external else None,
                    "schemas": dict(self.plan.fingerprints)}
        if req.get("op") == "probe":
            return await self.prober.admin(req)
        if req.get("op") == "stop":
            if self.lifecycle.stopping:
                # a second `wsuper stop` (or one after SIGTERM, a failure): said again,
                # and audited again, "stopping (wsuper stop)", as if this one began it
                return {"ok": True, "text": "already stopping", "pid": os.getpid()}
            self.say("stopping (wsuper stop)")
            self._audit_operator({"event": "stop requested"})
            self._act(self.lifecycle.stop(0))
            return {"ok": True, "text": "stopping", "pid": os.getpid()}
        # at most 100 characters of it: the answer to a request of 64 KiB of
        # characters printable escapes was five times as long
        return {"ok": False, "error": f"unknown request "
                                      f"{str(req.get('op'))[:100]!r}"}

    def _audit_operator(self, record: dict):
        """An operator's change to the running system (a revocation, a stop; probe
        changes: prober._audit) is a record of the audit, as the calls it affects are."""
        if self.audit is not None:
            self.audit_event({"time": None, **record, "by": "operator"})

    def audit_event(self, record: dict):
        """An event of the run (not a call) into the audit, after the records of every
        call that ended before it.  The fast lane keeps the records of the calls it
        returned until the router drains them (every EXPIRY_TICK, or at a wake-up):
        added at once, `grant revoked` came before the records of calls through the
        grant that the lane had returned before it, and the audit said they returned
        after the revocation (an outside review).  They are drained first, audit room
        or not (at most the lane's AUDIT_CAPACITY more than AUDIT_BACKLOG)."""
        if self.audit is None:
            return
        if self.lane is not None:
            self._perform(self.router.native_tick())
        self.audit.add(record)

    async def _status(self) -> dict:
        now = trio.current_time()
        pids = {name: p.pid for name, p in self.procs.items() if p.returncode is None}
        memory, stopped = await threads.run_sync(_processes, pids)
        compartments = []
        forwarded = self.router.forwarded_to()      # one pass over the calls in flight
        for name in self.system.compartments:
            # when its current engine became ready: an engine starting (a restart, or
            # one past start_time) has no uptime, though an earlier one was ready (it
            # was counted from then, as if the new one had been up all along)
            ready = self._ready_at.get(name) \
                if self._ready_peer.get(name) == self._peer_of.get(name) else None
            compartments.append({
                "name": name, "state": self.lifecycle.state[name], "pid": pids.get(name),
                "uptime_s": round(now - ready, 3) if ready is not None and name in pids
                else None,
                "restarts": self.lifecycle.restarts[name],
                "generation": self.lifecycle.generation[name],
                "memory_bytes": memory.get(name), "stopped": name in stopped,
                **self.router.status(name, forwarded)})
        # "stopping": its stop has begun (its compartments end): `wsuper status` showed
        # a system stopping as one running
        return {"pid": os.getpid(), "run": self.run_id, "uptime_s": round(now - self._began, 3),
                "stopping": bool(self.lifecycle.stopping),
                "external": list(self.system.external), "compartments": compartments}

    # ------------------------------------------------------------ effects

    def _for_callers(self, name: str, reason: str) -> str:
        """Why compartment `name` stopped, as its callers are told it (told_callers):
        every reason they get of an engine's loss, a restart, a failure or a stop
        passes here."""
        comp = self.system.compartments.get(name)
        return reason if comp is None else told_callers(comp.module, comp.grants, reason)

    def _backlog(self, pid: int) -> int:
        link = self.links.get(pid)
        return link.queued if link is not None else 0

    def _perform(self, effects):
        # Consecutive sends to one peer go out as one write; any other effect, or a
        # send to a peer after sends to another, first flushes them, so nothing it
        # triggers can overtake them.  (Joined wherever they were, a Return to a
        # client, the calls held on it sent on, and a second Return to the client
        # went out as the client's two Returns, then the calls: the client, acting
        # on the second, could call past them.)
        turns = self._turns
        here = turns is not None and turns.here
        if type(effects) is list and len(effects) == 1 and not (here and turns.stopped):
            # one effect, nearly always (a host call, or its answer): what the loops
            # below (or _perform_here's, in the worker) do with it, without the batch
            e = effects[0]
            kind = type(e)
            if kind is fx.Send:
                link = self.links.get(e.peer)
                if link is None:
                    return
                if link.native or not here:
                    if not link.write(e.data):
                        self._then(self._cut_off, e.peer, _not_reading(link), False)
                    self._shed()
                    return
            elif kind is fx.HostCall:
                self._host_call(e)
                return
        if here:
            self._perform_here(turns, effects)
            return
        batch: dict[int, list] = {}
        last = None
        for e in effects:
            if isinstance(e, fx.Send):
                if e.peer != last:
                    if e.peer in batch:        # back to a peer after another: in order
                        self._write_all(batch)
                    last = e.peer
                batch.setdefault(e.peer, []).append(e.data)
                continue
            last = None
            self._write_all(batch)
            if isinstance(e, fx.HostCall):
                self._host_call(e)
            elif isinstance(e, fx.HostRelease):
                self._release(e.kind, e.served)
            elif isinstance(e, fx.Close):
                link = self.links.get(e.peer)
                if link is not None:
                    link.cut, link.cut_reason = True, e.reason
                    link.close()
            elif isinstance(e, (fx.Started, fx.StartFailed, fx.Exited)) \
                    and e.peer != self._peer_of.get(e.compartment):
                continue                 # news of an incarnation that was replaced
            elif isinstance(e, fx.Started):
                self._on_started(e)
            elif isinstance(e, fx.StartFailed):
                self._act(self.lifecycle.start_failed(e.compartment, e.reason,
                                                      trio.current_time()))
            elif isinstance(e, fx.Exited):
                self._say_log_refused(e.compartment)
                self._act(self.lifecycle.program_ended(e.compartment, e.exit_code, e.error,
                                                       trio.current_time()))
            elif isinstance(e, fx.Notice):
                if e.peer is None:
                    self.say(e.text)
                else:
                    self._throttled(self.notices, e.peer, e.text, "lines about")
            elif isinstance(e, fx.Denied):
                self._throttled(self.denials, e.caller, e.text, "denials for")
            elif isinstance(e, fx.Audit):
                if self.audit is not None:
                    self.audit.add(e.record)
        self._write_all(batch)

    def _perform_here(self, turns: Turns, effects):
        """_perform, in the lane's host worker: sends to peers on the lane, host calls
        and audit records here; at the first other effect (or once something is
        owed that must come first), it and every effect after it are owed to
        trio's thread, which performs them, in order, before any of its tasks runs.
        (One effect, nearly always, is done by _perform itself, as the loop would.)"""
        batch: dict[int, list] = {}
        last = None
        effects = effects if isinstance(effects, list) else list(effects)
        for i, e in enumerate(effects):
            kind = type(e)
            if not turns.stopped:
                if kind is fx.Send:
                    link = self.links.get(e.peer)
                    if link is None or link.native:
                        if e.peer != last:
                            if e.peer in batch:    # back to a peer after another: in order
                                self._write_all(batch)
                            last = e.peer
                        batch.setdefault(e.peer, []).append(e.data)
                        continue
                elif kind is fx.HostCall or kind is fx.Audit:
                    last = None
                    self._write_all(batch)
                    if not turns.stopped:
                        if kind is fx.HostCall:
                            self._host_call(e)
                        elif self.audit is not None:
                            self.audit.add(e.record)
                        continue
            self._write_all(batch)
            turns.owe(self._perform, effects[i:], stop=True)
            return
        self._write_all(batch)

    def _write_all(self, batch: dict):
        if not batch:
            return
        turns = self._turns
        here = turns is not None and turns.here
        for pid, chunks in batch.items():
            if here and turns.stopped:          # after what the worker owes: in order
                turns.owe(self._write_all, {pid: chunks})
                continue
            link = self.links.get(pid)
            if link is not None and not link.write(
                    chunks[0] if len(chunks) == 1 else b"".join(chunks)):
                self._then(self._cut_off, pid, _not_reading(link), False)
        batch.clear()
        self._shed()

    def _shed(self):
        """Cut off the peers a pool shed to make room for a write (_QueuePool.room):
        they hold the most of it, unread.  (Asked after every write: nearly always
        neither pool owes anything, said without the loop.)"""
        eng, ext = self._engine_queues, self._external_queues
        if (eng is None or not eng.owed) and (ext is None or not ext.owed):
            return
        for queues in (ext, eng):
            while queues is not None and queues.owed:
                pid, reason = queues.owed.pop(0)
                if pid in self.links:
                    self._then(self._cut_shed, pid, reason)

    def _cut_shed(self, pid: int, reason: str):
        """Cut off a peer a pool shed, unless it was cut off meanwhile (past its hard
        bound, say): it was, with a second line naming it `peer N`."""
        if pid in self.links and pid in self.router.peers:
            self._cut_off(pid, reason, False)

    def _on_started(self, e: fx.Started):
        if self._done.is_set():          # forked as the stop began: not ready for anything
            return
        self._ready_at[e.compartment] = trio.current_time()
        self._ready_peer[e.compartment] = e.peer
        comp = self.system.compartments[e.compartment]
        proc = self.procs[e.compartment]
        base = os.path.dirname(self.system.path) + os.sep
        rel = comp.module[len(base):] if comp.module.startswith(base) else comp.module
        self.say(f"ready {comp.name} pid={proc.pid} module={rel}", comp.name)
        if self.stats and comp.name in self._spawned_at:
            ms = (trio.current_time() - self._spawned_at.pop(comp.name)) * 1000
            self.say(f"stats start {comp.name} {ms:.2f} ms", comp.name)
        self.prober.started(comp.name, proc.pid)
        self._act(self.lifecycle.started(e.compartment, e.program))

    # ------------------------------------------------------------ lifecycle actions

    def _act(self, actions):
        for a in actions:
            if isinstance(a, S.Say):
                self.say(a.text, a.compartment)
            elif isinstance(a, S.Run):
                self._perform(self.router.run(a.name))
                limits = self.system.compartments[a.name].limits
                if limits.run_time is not None or limits.run_cpu is not None:
                    self._task(f"watching the program of {a.name}", self._watch_program,
                               a.name, self.lifecycle.generation[a.name], limits,
                               on_fault=functools.partial(self._cut_program, a.name))
            elif isinstance(a, S.Restart):
                self._perform(self.router.stop_engine(a.name,
                                                      self._for_callers(a.name, a.reason)))
                proc = self.procs.get(a.name)
                if proc is not None:
                    proc.terminate()
                self._task(f"restarting {a.name}", self._respawn,
                           self.system.compartments[a.name], a.delay,
                           self.lifecycle.generation[a.name])
            elif isinstance(a, (S.Fail, S.Stop)):
                reason = self._for_callers(a.name, a.reason)
                self._perform(self.router.stop_engine(a.name, reason))
                self._perform(self.router.fail_compartment(
                    a.name, reason, said="failed" if isinstance(a, S.Fail) else None))
                proc = self.procs.get(a.name)
                if proc is not None:
                    proc.terminate()
            elif isinstance(a, S.Finish):
                self._exit_code = a.code
                self._done.set()


def idlest(conns, idle_after: float) -> tuple | None:
    """Which external connection makes room for a new one (pure): of `conns`,
    (pid, seconds since its last useful work, busy), the one idle longest, if
    idle at least `idle_after` seconds and not busy (no call of its own in
    flight, and none of ours that it serves: Router.serving); (pid, seconds) or None.  Useful work is a call or bootstrap it made,
    a return it gave or got (Router: Peer.useful, and the lane's own): messages
    that ask for nothing (Release, Finish, unknown types answered 'unimplemented')
    do not count, so sending them cannot hold a connection."""
    best = None
    for pid, quiet, busy in conns:
        if busy or quiet < idle_after:
            continue
        if best is None or quiet > best[1]:
            best = (pid, quiet)
    return best


def told_callers(module: str, grants, text: str) -> str:
    """`text` (why a compartment failed to start, as its engine or the supervisor
    said it to the operator) as its callers are told it: the module's host path as
    its file name, and each file or directory grant's path as the grant's name.  An
    engine's reasons name its module's path ('cannot instantiate
    /home/alice/plugins/calc.wasm: ... start function trapped', a failure the
    module controls), and the callers are other compartments and clients.

    Each path is looked for as it is and as the reasons write it escaped: an engine
    prints its reason through `printable` (and `quoted` writes JSON's escapes), so
    a path with a character that is not printable ('My\u00a0Plugins', a no-break
    space; a tab) reached the callers whole, "/home/alice/My\\xa0Plugins/calc.wat"
    matching no path (an outside review)."""
    paths = [(module, os.path.basename(module))] if module else []
    paths += [(g.path, f"(grant {g.name})") for g in grants
              if getattr(g, "path", None) and g.kind == "host"]
    forms = {(form, name) for path, name in paths
             for form in (path, printable(path), json.dumps(path)[1:-1])}
    for path, name in sorted(forms, key=lambda p: (-len(p[0]), p)):   # the longest first
        if len(path) > 1:
            text = text.replace(path, name)
    return text


class _StartError(Exception):
    """A start that failed: its text for the operator, and `told`, what the callers
    of the compartment are told (no host path: a grant's path is the operator's to
    know, not that of the compartments calling this one)."""

    def __init__(self, text: str, told: str | None = None):
        super().__init__(text)
        self.told = told or text

    @classmethod
    def grant(cls, g, why, told: str | None = None) -> "_StartError":
        """Grant `g` could not be opened, `why`: the operator is told its path, the
        callers its name and `told` (or ': ' and `why`)."""
        return cls(f"cannot open {g.path} for grant {g.name}: {why}",
                   f"cannot open its grant {g.name}" + (f": {why}" if told is None else told))


def _faults_of(e: BaseException):
    """(the faults in `e`, the rest): trio's Cancelled, KeyboardInterrupt and
    SystemExit are the rest, a group split between the two."""
    if isinstance(e, BaseExceptionGroup):
        return e.split(Exception)
    if isinstance(e, Exception):
        return e, None
    return None, e


def _first_leaf(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def host_worker() -> bool:
    """Whether the lane's host worker serves what the fast lane queues (turns.py);
    WSUPER_HOST_WORKER=0: a trio task does (_lane_events), for measuring."""
    return os.environ.get("WSUPER_HOST_WORKER", "1") != "0"


def _reraise(e: BaseException):
    raise e


def _refuse(e: Exception):
    """The system cannot start: one line, like every other error that stops a command."""
    stderr.line(f"wsuper: error: {printable(first_line(e, 1000))}")


def _wall() -> float:
    return time.time()


def _rfc3339(t: float) -> str:
    when = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used (from /proc; a worker thread)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _processes(pids: dict) -> tuple[dict, set]:
    """name -> resident bytes of each process, and the names of those stopped by a
    signal (SIGSTOP, Ctrl-Z) or a debugger, and staying so (as endpoint.stopped), from
    /proc; in a worker thread.  A compartment whose engine was stopped showed as
    "ready" in `wsuper status`, its callers each waiting their whole call_time."""
    rss, stopped = {}, set()
    for name, pid in pids.items():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss[name] = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
        if endpoint.process_state(pid) in endpoint._STOPPED_STATES:
            stopped.add(name)
    # looked at again all together, as endpoint.settled_state does one (a traced
    # engine is stopped a moment at each system call): ~0.3 s for any number of them
    for _ in range(endpoint.STOP_LOOKS - 1):
        if not stopped:
            break
        time.sleep(endpoint.STOP_LOOK_GAP)
        stopped = {name for name in stopped
                   if endpoint.process_state(pids[name]) in endpoint._STOPPED_STATES}
    return rss, stopped


def _describe_exit(code: int) -> str:
    if code == process.UNREPORTED:
        return (f"ended (how is not known: the zygote did not report its exit within "
                f"{process.REPORT_GRACE:g} s; stopped, or wedged)")
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


async def up(plan: Plan, socket_path: str | None = None, log_format: str = "text",
             zygote: Launched | None = None, lock: endpoint.Lock | None = None) -> int:
    """`zygote`: one started already (cli.py starts it before the policy is read);
    None: start one here.  `lock`: the system's lock, taken already (cli.py takes
    it before the policy is read); None: taken here."""
    return await Supervisor(plan, socket_path, log_format=log_format, zygote=zygote).run(lock)
