"""Engine processes: forked by the zygote (compartments/zygote.py).

Owns: starting the zygote, asking it for engines (one EngineSpec each) and
following their exits.  Must not: decide anything about a compartment (that
is runtime.py and supervision.py), or start an engine any other way.

The zygote is exec'd once, with an empty environment, and forks every engine
from its preloaded heap: ~8 ms and ~3.9 MiB per compartment, confinement
included, instead of a fresh interpreter's ~50-90 ms and ~15 MiB
(benchmarks/suite.py measures both).

It is started here with `Popen`, synchronously, by the thread running trio.
trio's `open_process` would fork from a worker thread, and Linux delivers
the child's parent-death signal (PR_SET_PDEATHSIG) when the *thread* that
forked it exits: trio retires idle worker threads after 10 s, which would
take the zygote, and with it every engine, down.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket as pysocket

import trio

from capnp_schemas.text import printable
from compartments import zygote
from compartments.spec import EngineSpec

from . import launch
from .launch import Launched, raise_fd_limit  # noqa: F401 - raise_fd_limit: runtime's


#: Bytes of one line of the zygote's (its answers and exit events are a few dozen,
#: a refusal's reason a few hundred): more without a newline is not the zygote's
LINE_LIMIT = 1 << 20


def _whole(v) -> bool:
    return type(v) is int


#: Seconds the zygote has to report the exit of an engine seen gone by its pidfd
#: before the engine is taken as ended all the same, its status UNREPORTED.  The
#: zygote reports one within milliseconds; generous, so that a loaded host (two
#: cores shared, the zygote forking its spares) never costs an exit its code and
#: the reason its callers are told
REPORT_GRACE = 5.0
#: The returncode of an engine whose process ended and whose exit the zygote did not
#: report within REPORT_GRACE (stopped, or wedged): no status a process can have
UNREPORTED = 1 << 16


#: Seconds at least the zygote may say nothing at all while a request of ours waits
#: for its answer (for the lock, its send, or the answer itself) before that start
#: fails: it answers a request within milliseconds, or says {"busy": N} every
#: zygote.BUSY_EVERY while requests wait for compiles (which may take COMPILE_WALL
#: each, and queue).  Silence this long is a zygote stopped (SIGSTOP) or wedged,
#: not a slow compile; a start waited for it for ever, its compartment
#: "restarting" with no bound.  A compartment's own start_time, if longer, is its
#: bound instead (Zygote.spawn's `silence`)
ANSWER_SILENCE = 5.0


#: Seconds at most between two looks at the zygote's silence while a start waits
#: (Zygote._within): a look later than this, by more than this again, says this
#: process did not run meanwhile, and that time is not counted as silence
SILENCE_LOOK = 0.5


class Stalled(OSError):
    """The zygote said nothing for a start's whole bound (stopped or wedged)."""


_GONE = -1     # _pidfd: the engine is gone already (its pid no process's, or another's)


def _pidfd(pid: int, parent: int | None = None) -> int | None:
    """A pidfd of engine `pid`, a child of `parent` (the zygote), or None (no
    descriptor to spare: the zygote's report of its exit is then the only news, as
    before), or _GONE: no process has the pid (the zygote reaped the engine), or
    one not the zygote's child has it (reaped, and the pid given to another process
    before this open): a pidfd of that one would have been watched and signalled
    as the engine (`ForkedEngine.send_signal`: a kill of any of the user's)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return _GONE
    except (OSError, AttributeError):
        return None
    ppid = _parent(pid) if parent is not None else None
    if ppid is not None and ppid != parent:
        # read while the pidfd's process lived (not readable after: not ended), the
        # parent is that process's; one that has ended already may be ours (a zombie
        # the zygote has not reaped): its pidfd, readable, says it is gone.  (Not
        # read at all: the pidfd is kept, as before)
        if not zygote.readable(fd):
            os.close(fd)
            return _GONE
    return fd


def _kill_late(pid: int, zygote: int):
    """Kill engine `pid`, forked by `zygote` for a start that gave up waiting for
    it (Stalled): its socket's other end is closed, and nobody would ever watch,
    signal or stop it.  By a pidfd, only while it is the zygote's child."""
    fd = _pidfd(pid, zygote)
    if fd is None or fd == _GONE:
        return
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def _parent(pid: int) -> int | None:
    """The parent pid of process `pid` (/proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class ForkedEngine:
    """An engine forked by the zygote: same interface as EngineProcess.

    Its exit is the zygote's news, and also its own: an engine is not our child
    (no waitpid), but its pidfd says when it ends.  With the zygote stopped
    (SIGSTOP) or wedged, an engine killed meanwhile stayed "ready" for as long
    as the zygote said nothing: never restarted, its callers each waiting their
    whole call_time (and once the engine had closed its socket, its wait() never
    returned).  Seen ended by its pidfd, the zygote has REPORT_GRACE to say how;
    past it the engine has ended all the same, its returncode UNREPORTED."""

    def __init__(self, pid: int, stderr: trio.lowlevel.FdStream, pidfd: int | None = None):
        self.pid = pid
        self.stderr = stderr
        self.returncode: int | None = None
        self._exited = trio.Event()
        #: its process is gone: seen by its pidfd, or its exit reported (its
        #: returncode may still be on its way: wait())
        self.gone = trio.Event()
        # signalled by its pid only if it never had a pidfd (send_signal): one that
        # had, its pidfd closed (watch over), is never signalled by a pid again, nor
        # one found gone when it was answered (_GONE: its pid no longer its)
        self._by_pid = pidfd is None
        if pidfd == _GONE:
            pidfd = None
            self.gone.set()
        self._pidfd = pidfd

    def _exit(self, code: int):
        if self.returncode is None:
            self.returncode = code
        self.gone.set()
        self._exited.set()

    async def watch(self):
        # the pidfd stays ours (send_signal) until the engine has ended; closed here
        fd = self._pidfd
        if fd is None:
            if self.gone.is_set() and not self._exited.is_set():   # gone when answered
                with trio.move_on_after(REPORT_GRACE):
                    await self._exited.wait()
                self._exit(UNREPORTED)
            await self._exited.wait()
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ended, fd)
                await self._exited.wait()
                nursery.cancel_scope.cancel()
        except BaseException as e:
            if not isinstance(e, trio.Cancelled):
                # a fault of ours: killed while its pidfd still names it alone (the
                # supervisor cuts it off: Supervisor._lost_watch)
                self.kill()
            raise
        finally:
            self._pidfd = None
            os.close(fd)

    async def _ended(self, fd: int):
        """The process is gone (its pidfd is readable): the zygote's report of how,
        or UNREPORTED."""
        await trio.lowlevel.wait_readable(fd)
        self.gone.set()
        with trio.move_on_after(REPORT_GRACE):
            await self._exited.wait()
        self._exit(UNREPORTED)

    async def wait(self) -> int:
        await self._exited.wait()
        return self.returncode

    def send_signal(self, sig: int):
        """`sig` to the engine, through its pidfd when there is one: by its pid, an
        engine the zygote had reaped and not yet reported (its exit on its way, or
        the zygote stopped right after) was another process once its pid was
        reused, and the stop's SIGTERM or a kill went to that process (any of the
        user's).  Its pidfd names the engine alone; ended, it is ESRCH."""
        if self.returncode is not None or self.gone.is_set():
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            elif self._by_pid:          # no pidfd to spare: by its pid, as ever
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


class _Answer:
    """The zygote's answer to one request, when it comes (None: it never will)."""

    def __init__(self):
        self._event = trio.Event()
        self.value = None

    def set(self, value):
        self.value = value
        self._event.set()

    async def wait(self):
        await self._event.wait()
        return self.value


async def _ended(popen) -> None:
    """Until `popen`, a child of ours, has ended (and is reaped): woken by its pidfd.
    Polled every 10 ms before, each stop of a system waited up to that much more
    for its zygote (docs/performance.md, "Up and stop").  Without a pidfd (a kernel
    before 5.3), polled as before."""
    try:
        fd = os.pidfd_open(popen.pid)        # not reaped yet (poll said so): still ours
    except OSError:
        fd = None
    try:
        while popen.poll() is None:
            if fd is None:
                await trio.sleep(0.01)
            else:
                await trio.lowlevel.wait_readable(fd)
    finally:
        if fd is not None:
            os.close(fd)


class Zygote:
    """The supervisor's end of compartments/zygote.py (see there for the protocol)."""
    _stopped = False                 # its stop signal was sent (stop)
    broken: str | None = None        # why what it sent was not an answer of its (_message)

    def __init__(self, launched: Launched | None = None):
        self._popen, ours = (launched or Launched()).take()
        self.pid = self._popen.pid
        self._raw = ours
        self._sock = trio.socket.from_stdlib_socket(ours)
        # one per request sent and not answered yet, by the number it was sent with:
        # the zygote answers a request whose module it must compile when that is
        # done, and the others meanwhile (compartments/zygote.py)
        self._waiting: dict[int, _Answer] = {}
        self._ids = itertools.count(1)
        self._engines: dict[int, ForkedEngine] = {}
        self._early: dict[int, int] = {}           # exits reported before registration
        self._answered: set[int] = set()           # pids answered, not registered yet
        self._lock = trio.Lock()
        self.alive = True
        #: when it last said anything (trio's clock): a request's wait is bounded by
        #: the silence since then (ANSWER_SILENCE)
        self.heard = float("-inf")
        #: requests whose wait ended (Stalled) with their answer still to come: an
        #: engine it forks for one later is nobody's, and is killed
        self._abandoned: set[int] = set()

    async def run(self):
        """Read answers and exit events until the zygote goes away."""
        buf = b""
        try:
            while True:
                try:
                    data = await self._sock.recv(1 << 16)
                except OSError:
                    # its end closed with our requests unread (the stop's SIGTERM while
                    # compartments start): ECONNRESET, not an end; it is gone all the
                    # same.  Raised, it ended `wsuper up` in a traceback, exit 1
                    break
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    msg = self._message(line)
                    if msg is None:
                        break
                    self.heard = trio.current_time()
                    if "pid" in msg or "error" in msg:
                        waiting = self._waiting.pop(msg.get("id"), None)
                        if waiting is not None:
                            if "pid" in msg:
                                self._answered.add(msg["pid"])
                            waiting.set(msg)
                        elif msg.get("id") in self._abandoned:
                            self._abandoned.discard(msg["id"])
                            if "pid" in msg:        # forked for a start that gave up
                                _kill_late(msg["pid"], self.pid)
                    elif "exit" in msg:
                        engine = self._engines.pop(msg["exit"], None)
                        if engine is not None:
                            engine._exit(msg["code"])
                        elif msg["exit"] in self._answered:    # not registered yet
                            self._early[msg["exit"]] = msg["code"]
                        # else no engine of ours: never kept (it grew without bound)
                if self.broken is None and len(buf) > LINE_LIMIT:
                    self.broken = f"it sent a line of more than {LINE_LIMIT} bytes"
                if self.broken is not None:
                    break
        finally:
            self.alive = False
            for waiting in self._waiting.values():  # never to be answered
                waiting.set(None)
            self._waiting.clear()
            for engine in self._engines.values():   # they died with the zygote
                engine._exit(-signal.SIGKILL)
            self._engines.clear()
            # by its stop signal, never SIGKILL first: cancelled right after stop() (the
            # runtime's stop cancels this at once), the zygote was SIGKILLed before
            # it had ended its compilers' groups, and what they forked lived on
            if self._popen.poll() is None:
                with trio.CancelScope(shield=True):
                    self.stop()
                    with trio.move_on_after(launch.STOP_GRACE):
                        await _ended(self._popen)
            launch.end(self._popen, 0)

    def _said_unread(self) -> bool:
        """Whether the zygote's socket holds bytes run() has not read yet: it said
        something (its answer, perhaps) that the reader had no turn to take."""
        if not self.alive:
            return False
        try:
            # poll, not select: the socket may be numbered above FD_SETSIZE
            return zygote.readable(self._raw)
        except (OSError, ValueError):
            return False

    async def _within(self, began: float, silence: float, wait, what: str):
        """`await wait()`, for as long as the zygote is heard from at least once every
        `silence` seconds (from `began` on); Stalled past that.

        Silence is counted only while this process runs to hear it: the wait looks
        at least every SILENCE_LOOK, and what a look came later than that (with
        SILENCE_LOOK to spare) is time this process did not run (stopped by
        Ctrl-Z, SIGSTOP or a debugger, starved by the machine's load), which is not
        the zygote's silence.  Counted, a start woke up past its bound after such a
        stop and failed at once ("stopped or wedged", a critical compartment's
        stopping the system), before the zygote, or the reader of what it had
        said meanwhile, had a turn.  Bytes the zygote sent that run() has not read
        yet are heard too.

        A late look still counts its own interval, and is checked against the
        bound like any other: a supervisor late at every look (a loop kept busy,
        a machine loaded) reaches the bound in looks.  (A late look that went on
        without the check discounted, once the silence was whole, the next look,
        due at once, for ever: a truly stopped zygote held the start without
        end.)  The first late look that finds the bound reached gives the zygote
        (stopped and going on with this process, perhaps) one SILENCE_LOOK more
        to be heard; only one in a wait, so that, too, ends."""
        watched = began           # silence is counted from here (or what was heard)
        spared = False            # the one more look after a late one at the bound
        while True:
            look = min(max(watched, self.heard) + silence,
                       trio.current_time() + SILENCE_LOOK)
            with trio.move_on_at(look):
                return await wait()
            now = trio.current_time()
            if now > look + SILENCE_LOOK:
                # not running: none of the lateness was silence (the look's own
                # interval was; it is checked below as any look's)
                watched = max(watched, self.heard) + (now - look)
                if not spared and now >= max(watched, self.heard) + silence:
                    spared = True
                    watched = now - silence + min(SILENCE_LOOK, silence)
            if self._said_unread():
                watched = now
                await trio.sleep(0)           # the reader's turn
                continue
            if now >= max(watched, self.heard) + silence:
                raise Stalled(f"the zygote (pid {self.pid}) said nothing for {silence:g} s "
                              f"while {what} (it is stopped or wedged); no compartment "
                              f"can start until it goes on")

    async def spawn(self, spec: EngineSpec, sock_fd: int, sent=None) -> ForkedEngine:
        """Fork an engine for `spec`, serving on `sock_fd` (ours; the zygote gets a copy).
        `sent()` is called once the request is on its way: another may follow it then.
        Stalled (an OSError) if the zygote says nothing for the start's bound
        (max(ANSWER_SILENCE, its start_time)) before it answers: a stopped or
        wedged zygote held the start, and its compartment "restarting", for ever."""
        silence = max(ANSWER_SILENCE, spec.limits.start_time)
        began = trio.current_time()
        err_r, err_w = os.pipe()
        waiting = _Answer()
        try:
            # whole requests, one after another; each wait bounded by the silence
            await self._within(began, silence, self._lock.acquire, "a start waited its turn")
            try:
                if not self.alive:
                    raise OSError("the zygote is gone")
                ident = next(self._ids)
                line = b"%d " % ident + spec.to_json() + b"\n"
                sent_bytes = 0
                while True:     # the descriptors go with the request's first bytes
                    await self._within(began, silence,
                                       lambda: trio.lowlevel.wait_writable(self._raw),
                                       "a request waited to be sent")
                    try:
                        sent_bytes = pysocket.send_fds(self._raw, [line], [sock_fd, err_w])
                        break
                    except BlockingIOError:
                        continue
                # the rest of a line a full buffer cut short, never left half sent: a
                # zygote that stalls meanwhile can never be sent a whole request again
                # (its control stream would be cut mid-line), and is ended (its end
                # stops the system, saying why: _zygote_end)
                with trio.CancelScope(shield=True):
                    try:
                        while sent_bytes < len(line):
                            await self._within(began, silence,
                                               lambda: trio.lowlevel.wait_writable(self._raw),
                                               "a request was sent")
                            try:
                                sent_bytes += self._raw.send(line[sent_bytes:])
                            except BlockingIOError:
                                continue
                    except Stalled as e:
                        if self.broken is None:
                            self.broken = f"it did not read a whole request ({e})"
                        if self._popen.poll() is None:
                            self._popen.kill()
                        raise
                self._waiting[ident] = waiting
            finally:
                self._lock.release()
        except BaseException:
            os.close(err_r)
            raise
        finally:
            os.close(err_w)
        if sent is not None:
            sent()
        try:
            answer = await self._within(began, silence, waiting.wait,
                                        "a start waited for its answer")
        except BaseException:
            if self._waiting.pop(ident, None) is waiting:   # its answer may come yet
                self._abandoned.add(ident)
            os.close(err_r)
            raise
        if answer is None:
            os.close(err_r)
            raise OSError("the zygote is gone")
        if "error" in answer:
            os.close(err_r)
            raise OSError(f"the zygote refused: {answer['error']}")
        pid = answer["pid"]
        self._answered.discard(pid)
        # not once its exit is known: reaped by the zygote, its pid may be another's.
        # (Reaped and reused before this open, it is another's pidfd all the same:
        # the zygote's report of the exit, on its way, is then the news, as before)
        engine = ForkedEngine(pid, trio.lowlevel.FdStream(err_r),
                              None if pid in self._early else _pidfd(pid, self.pid))
        if pid in self._early:
            engine._exit(self._early.pop(pid))
        elif not self.alive:
            # answered just before run() ended (a line not of its behind the answer,
            # or the zygote gone): it dies with the zygote (PR_SET_PDEATHSIG) like
            # those run's end let go of.  Registered, its exit was never reported,
            # its wait() never returned, and `wsuper up`'s stop sat out
            # GRACE_SECONDS twice for it
            engine._exit(-signal.SIGKILL)
        else:
            self._engines[pid] = engine
        return engine

    def _message(self, line: bytes) -> dict | None:
        """One line of the zygote's, checked as any peer's input is: an answer
        ({"pid": N, "id": I} or {"error": TEXT, "id": I}) or an exit ({"exit": N,
        "code": C}), every number an int and every pid one that may be an engine
        (above 1, neither ours nor the zygote's; an answer's not an engine's
        already).  None, with `broken` saying why, for anything else: a line that
        was not JSON raised out of run() (a traceback, and `wsuper up` ended
        without its stop), and a pid of 0 or -1 would have had kill() signal our
        process group or every process we may signal."""
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            msg = None
        ok = isinstance(msg, dict)
        if ok and ("pid" in msg or "error" in msg):
            ok = _whole(msg.get("id")) and (
                isinstance(msg.get("error"), str) if "error" in msg else
                self._engine_pid(msg["pid"]) and msg["pid"] not in self._engines
                and msg["pid"] not in self._answered)
        elif ok and "busy" in msg:
            ok = _whole(msg["busy"]) and len(msg) == 1
        elif ok:
            ok = "exit" in msg and self._engine_pid(msg["exit"]) and _whole(msg.get("code"))
        if not ok:
            shown = printable(line[:100].decode("utf-8", "replace"))
            self.broken = f"it sent a line that is not an answer of its: {shown}" + \
                ("..." if len(line) > 100 else "")
            return None
        return msg

    def _engine_pid(self, pid) -> bool:
        return _whole(pid) and pid > 1 and pid not in (os.getpid(), self.pid)

    @property
    def returncode(self) -> int | None:
        """Its exit status once it is gone (negative: the signal that killed it)."""
        return self._popen.returncode

    def stop(self):
        """Its own stop signal (compartments/zygote.py STOP: it ends its compilers'
        process groups first); it ignores SIGTERM (IGNORED).  Once: run's end
        waits for it (launch.STOP_GRACE) before it kills."""
        if not self._stopped and self._popen.poll() is None:
            self._stopped = True
            self._popen.send_signal(zygote.STOP)
