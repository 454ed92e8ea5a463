"""Whose turn it is to run the supervisor's Python: trio's thread, or the lane's host worker.

The supervisor's state (router, host layer, links, output) has always been
touched by one thread, trio's, one task at a time.  A host call from a
compartment on the fast lane used to wake trio: its epoll, its scheduler, the
lane task, and back (about 8 µs of CPU more than the work, on one core the
largest part of a `Log.write`'s price; docs/performance.md).  The lane's host
worker (runtime.py) serves those calls itself, in a thread of its own, but only
while trio's thread waits for I/O, when no task of trio's is running:

* trio's thread holds `Turns`' lock whenever it runs: it lets go in
  `before_io_wait` and takes it back in `after_io_wait`, two hooks of trio's
  public Instrument API (`trio.lowlevel.add_instrument`);
* the worker takes the lock (`enter`) before it touches anything and lets go
  (`leave`) after at most one TURN of work.

So the state is never touched by two threads at once, and from trio's side the
worker's turn looks like a task that ran between two of its I/O waits, which is
what the lane task (`_lane_events`) was.  What only trio's thread may do (wake a
task that waits, start one, end a stream's task) the worker *owes*: `owe(fn,
*args)` queues it, and trio's thread runs everything owed, in order, at once in
`after_io_wait`, before any of its tasks runs (a woken task could not have run
before then anyway).  `owe(..., stop=True)` marks work the worker may not go
past: everything after it is owed too, so the order of effects is the same as
in one thread.  While anything is owed, the worker waits for trio's turn
before it takes another; it also waits whenever trio's thread wants the lock
back, so neither starves the other.

A host objects' worker thread (runtime.py, Supervisor._io_work) may take a
turn too, for the moment it answers the call whose file operation it did, but
only when the lock is free at once (`try_enter`): else trio's thread answers.

Pure threading; the supervisor decides what is owed.  Tested without
processes in tests/unit/test_turns.py.
"""
from __future__ import annotations

import threading

import trio


#: How long trio's thread waits, at most, for a worker that wants the lock to
#: take it (it wakes within microseconds; the bound is for a stalled thread)
HANDOFF_WAIT = 0.005


def _nothing():
    pass


class Turns(trio.abc.Instrument):
    """Made and added inside trio (`install`), by trio's thread, which holds the
    lock from then on but while it waits for I/O."""

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()                # trio's thread: it is running now
        self._token = trio.lowlevel.current_trio_token()
        self._waiter: threading.Event | None = None
        self._handed: threading.Event | None = None
        self.trio_wants = False             # trio's thread waits for the lock
        self.worker_wants = False           # the worker waits for the lock
        self.worker_turns = 0               # turns the worker has taken
        self.blame = None                   # what owed work is for (see pay)
        self.on_fault = None                # blame, exception -> None (see pay)
        self.waiting = None                 # () -> whether work waits for the worker
        self.on_stuck = None                # trio's thread does that work (see below)
        self._stuck_at = -1
        self.turn = 0                       # trio's turns so far (each ends at an I/O wait)
        self.owed: list = []                # (fn, args): for trio's thread, in order
        self.stopped = False                # something owed that later work must follow
        self.here = False                   # the worker has its turn
        self.closed = False
        self._removed = False
        self.error: BaseException | None = None
        self.failed = trio.Event()          # an owed function raised (`error`)

    def install(self):
        trio.lowlevel.add_instrument(self)

    # ------------------------------------------------------------ trio's thread

    def before_io_wait(self, timeout):
        self.turn += 1
        self._lock.release()
        waiter = self._waiter
        if waiter is not None:
            waiter.set()

    def after_io_wait(self, timeout):
        if self.worker_wants:
            # The worker waits for the lock: let it have its turn first.  Without
            # this, a trio that always has a task to run (a flood on a peer's own
            # task) takes the lock back within a microsecond of letting go, long
            # before the worker's thread wakes, and the worker waits for seconds.
            turns = self.worker_turns
            handed = self._handed = threading.Event()
            if self.worker_wants and self.worker_turns == turns:
                handed.wait(HANDOFF_WAIT)
            self._handed = None
        if not self._lock.acquire(False):
            self.trio_wants = True
            self._lock.acquire()
            self.trio_wants = False
        if self.owed:
            self.pay()
        # A trio that always has a task to run lets go of the GIL only for moments
        # (an epoll that does not wait, a send): CPython may then not hand the
        # worker the GIL for a long time, and work would wait for it.  When work
        # waited through two of trio's busy rounds without a turn of the worker's,
        # trio's thread takes it over (`on_stuck`), as the lane task did.
        # Nothing may raise out of a hook: trio would drop the instrument with the
        # lock held, and the worker would wait for it for ever.
        try:
            if timeout == 0 and self.waiting is not None and self.waiting():
                if self._stuck_at == self.worker_turns:
                    self._stuck_at = -1
                    self.on_stuck()
                else:
                    self._stuck_at = self.worker_turns
            else:
                self._stuck_at = -1
        except BaseException as e:  # noqa: BLE001 - handed to the watching task
            self._fail(e)

    def pay(self):
        """Run what the worker owes, in order (trio's thread, holding the lock).
        Work owed while handling one peer's input (`blame`, set by the worker)
        that raises is that peer's fault, as in the lane task: `on_fault(blame,
        e)`, and the rest owed for that input is dropped (as the rest of a
        `_perform` that raised was).  Anything else that raises ends the
        supervisor: `failed` wakes the task that watches the worker, which
        raises `error`."""
        owed, self.owed = self.owed, []
        self.stopped = False
        faulted = []
        for fn, args, blame in owed:
            if blame is not None and blame in faulted:
                continue
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - no peer's input may end the system
                if blame is None or self.on_fault is None:
                    self._fail(e)
                    return
                faulted.append(blame)
                try:
                    self.on_fault(blame, e)
                except BaseException as e2:  # noqa: BLE001 - handed to the watching task
                    self._fail(e2)
                    return
            except BaseException as e:  # noqa: BLE001 - handed to the watching task
                self._fail(e)
                return

    def _fail(self, e: BaseException):
        if self.error is None:
            self.error = e
        self.closed = True
        self.failed.set()

    def close(self):
        """Trio's thread, in a task (holding the lock): no more turns for the worker;
        what it owes is paid now (unless paying failed).  Once; again does nothing."""
        if self._removed:
            return
        self._removed = True
        if self.owed and self.error is None:
            self.pay()
        self.closed = True
        try:
            trio.lowlevel.remove_instrument(self)
        except KeyError:
            pass
        waiter = self._waiter
        self._lock.release()                # the worker may take it, to see `closed`
        if waiter is not None:
            waiter.set()

    # ------------------------------------------------------------ the worker's thread

    def enter(self) -> bool:
        """Take a turn (blocking); False once closed (the worker ends)."""
        while True:
            if self.closed:
                return False
            if self.trio_wants or self.owed:
                turn = self.turn
                waiter = self._waiter = threading.Event()
                if (self.trio_wants or self.owed) and self.turn == turn and not self.closed:
                    waiter.wait()
                self._waiter = None
            self.worker_wants = True
            self._lock.acquire()
            self.worker_wants = False
            self.worker_turns += 1
            handed = self._handed
            if handed is not None:
                handed.set()
            if self.closed or self.owed:    # trio's thread has not paid yet: its turn first
                self._lock.release()
                continue
            self.here = True
            return True

    def try_enter(self) -> bool:
        """A turn for another thread of the supervisor's (a host objects' worker,
        runtime.py), only if it can be had at once: it never waits, and takes none
        while trio's thread or the worker waits for the lock, or anything is owed.
        Ended by `leave`, as the worker's is."""
        if self.closed or self.trio_wants or self.worker_wants or self.owed:
            return False
        if not self._lock.acquire(False):
            return False
        if self.closed or self.owed or self.trio_wants:
            self._lock.release()
            return False
        self.here = True
        return True

    def leave(self):
        """End the turn; if anything is owed, wake trio's thread to pay it."""
        self.here = False
        owed = bool(self.owed)
        self._lock.release()
        if owed:
            try:
                self._token.run_sync_soon(_nothing)
            except trio.RunFinishedError:
                pass

    def owe(self, fn, *args, stop: bool = False):
        """For trio's thread, in order, before its next task (see the module)."""
        self.owed.append((fn, args, self.blame))
        if stop:
            self.stopped = True
