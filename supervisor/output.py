"""What a running system tells its operator: the terminal and the log files.

Two streams, as a shell user expects:
  stdout  what the plugins say: `[NAME] text` (their logs and stderr)
  stderr  what the supervisor does: `TIME wsuper: text` (ready, finished,
          restarts, denials, errors), with a wall-clock RFC 3339 time
With `--log-format json` each line is instead one JSON object
(`{"time", "compartment", "stream", "text"}` on stdout, `{"time", "event",
"compartment"}` on stderr).  Every character a guest could control is
escaped (capnp_schemas.text.printable) before it reaches a terminal.

Everything also goes to log files in the system's log directory (one per
compartment, and `supervisor.log`), each capped at `LOG_FILE_SIZE` and
rotated (`NAME.log.1` ... `.3`); `wsuper logs` reads them.

The event loop never waits on any of it: files are written by a worker
thread in batches, and the terminal by a thread of its own through a bounded
queue.  A terminal that does not keep up (a pipe nobody reads, a suspended
terminal) loses plugin lines, counted and said once it catches up; the log
files keep every line (unless the disk itself does not keep up: then what
waits for it is bounded too, see LogFiles).  A terminal that goes away
(`wsuper up | head`) stops the system quietly.
"""
from __future__ import annotations

import collections
import datetime
import errno
import fcntl
import io
import json
import math
import os
import queue
import re
import select
import stat
import threading
import time

import trio

from capnp_schemas.text import bounded, printable

from . import threads
from .logs import LOG_FILE_KEEP, SUPERVISOR     # the reader's names, the writer's too

LOG_FILE_SIZE = 1 << 20       # bytes per log file before it is rotated
TERMINAL_BACKLOG = 10_000     # lines waiting for the terminal before plugin lines are dropped
                              # (and twice that before the supervisor's events are)
TERMINAL_BACKLOG_CHARS = 16 << 20   # ... and characters of them: a line is at most 4096
                              # characters, escaped up to ten times that (\U000e0001)
TERMINAL_GATHER = 0.01        # seconds the terminal thread rests after a write, while lines
                              # gather for the next one
TERMINAL_WRITE_CHARS = 1 << 16  # characters of lines the terminal thread writes at once at most
TERMINAL_LAST = 2.0           # seconds the stop waits for the terminal to take its last lines
BATCH_SECONDS = 0.05          # seconds between two batches of log file (and audit) writes
LOG_BACKLOG_BYTES = 16 << 20  # characters of lines waiting for the log files' writer before
                              # plugin lines are dropped (and twice that before events are)
#: Lines held back by the rate that StderrLines.feed gives (the rest are only counted):
#: the runtime keeps the last 5 lines of an engine's stderr, shown or not
HIDDEN_KEPT = 8
STDERR_LINE_LIMIT = 4096      # bytes of one engine stderr line (longer ones come in pieces)
EVENT_LINE_LIMIT = 4096       # characters of one supervisor event shown (the rest counted), as
                              # of a plugin's log line (hostcaps.LOG_LINE_LIMIT)
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z ")


def rfc3339(t: float | None = None) -> str:
    """UTC, to the millisecond: 2026-12-03T13:40:54.637Z (the part to the second is
    formatted once a second; a busy plugin's log writes many lines in each)."""
    if t is None:
        t = time.time()
    frac, whole = math.modf(t)
    us = round(frac * 1e6)               # as datetime.fromtimestamp rounds
    second = int(whole)
    if us >= 1_000_000:
        second, us = second + 1, us - 1_000_000
    elif us < 0:
        second, us = second - 1, us + 1_000_000
    if _SECONDS[0] != second:
        when = datetime.datetime.fromtimestamp(second, datetime.timezone.utc)
        _SECONDS[:] = (second, when.strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_SECONDS[1]}.{us // 1000:03d}Z"


_SECONDS = [None, ""]      # (a second, its text)


def strip_time(line: str) -> str:
    """A line without the timestamp this module puts first."""
    return _TIME.sub("", line, count=1)


class Output:
    def __init__(self, out, err, fmt: str = "text", log_dir: str | None = None,
                 on_closed=lambda: None, remake_log_dir=None):
        for stream in (out, err):      # a terminal that is not UTF-8 gets escapes, not errors
            try:
                stream.reconfigure(errors="backslashreplace")
            except (AttributeError, ValueError, OSError):
                pass
        self.out = _written_whole(out)
        self.err = self.out if err is out else _written_whole(err)
        self.json = fmt == "json"
        self.files = LogFiles(log_dir, self._files_failed, self._files_paused,
                              remake_log_dir, self._files_remade) if log_dir else None
        self.on_closed = on_closed
        self.closed = False
        self.dropped = 0
        self._queue: queue.SimpleQueue | None = None
        self._queued = 0               # characters of the lines in _queue (under _counting)
        self._lines = 0                # ... and how many lines (under _counting)
        self._lagged = False           # the stop's wait for the terminal ran out (settle)
        self._counting = threading.Lock()
        self._token = None
        self._trio_thread = None
        self._closing = threading.Lock()
        self._hurry = threading.Event()   # set by stop: the terminal thread rests no more

    def start(self):
        """Write the terminal from a thread from now on (call inside trio), and watch
        for its reader going away."""
        self._token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.current_thread()
        self._queue = queue.SimpleQueue()     # no lock and condition to a put: C
        try:
            threading.Thread(target=self._terminal, name="wsuper terminal",
                             daemon=True).start()
            threading.Thread(target=self._watch, name="wsuper terminal watch",
                             daemon=True).start()
        except RuntimeError as e:
            # no thread to give (RLIMIT_NPROC, which counts threads; a pids cgroup; no
            # memory for a stack): `up` ended in a traceback.  The caller refuses to
            # start, saying why (lines written from here on go straight to the terminal)
            self._queue = None
            raise OSError(errno.EAGAIN, f"cannot start the terminal's thread ({e}): the "
                                        f"process or thread limit (RLIMIT_NPROC, a pids "
                                        f"cgroup) is reached, or memory is short") from None

    def _watch(self):
        """A reader that goes away (`wsuper up | head -1`) is noticed even if nothing
        more is ever written: poll reports an error on a pipe whose reader closed it.
        (Terminals and files never report one; a hang-up only stops the watching.)"""
        poller = select.poll()
        watched = set()
        for stream in (self.out, self.err):
            try:
                fd = stream.fileno()
            except (AttributeError, ValueError, OSError):
                continue
            if fd not in watched:
                poller.register(fd, 0)          # errors and hang-ups only
                watched.add(fd)
        while watched and not self.closed:
            for fd, events in poller.poll():
                if events & select.POLLERR:
                    self._gone()
                    return
                poller.unregister(fd)
                watched.discard(fd)

    def stop(self, timeout: float = TERMINAL_LAST):
        """Let the terminal thread finish what is queued (at most `timeout` s; a
        moment only if settle() waited for it in vain already), then say how many
        lines it did not show, if no later line has said it."""
        if self._queue is not None:
            done = threading.Event()
            self._queue.put((None, done))
            self._hurry.set()
            if done.wait(0.1 if self._lagged else timeout) and self.dropped:
                self._print(self.err, self._dropped_note())
            self._queue = None

    def caught_up(self) -> bool:
        """Whether the terminal has taken every line queued for it."""
        if self._queue is None or self.closed:
            return True
        with self._counting:
            return self._lines == 0

    async def settle(self, timeout: float = TERMINAL_LAST):
        """At stop, before the log files' last write: wait (at most `timeout` s) for
        the terminal to take the lines queued for it.  A terminal that does not (a
        pager stopped, a reader that lags: a pipe full) lost them with the process,
        the run's last events among them, and `up` ended, exit 0, in the middle of
        a plugin's lines without a word anywhere.  The terminal cannot be told (it
        takes nothing): the log files, which have every one of those lines, say
        how many it did not show."""
        if self.caught_up():
            return
        self._hurry.set()               # the thread rests no more between writes
        with trio.move_on_after(timeout):
            while not self.caught_up():
                await trio.sleep(0.001)     # the stop's own pace (docs/performance.md)
            return
        self._lagged = True
        with self._counting:
            left = self._lines
        note = (f"the terminal did not take its last lines within {timeout:g} s at stop "
                f"(its reader reads nothing): {left + self.dropped} lines were not shown "
                f"there, nor what is said after this (the log files have them)")
        self._write(self.err, note if not self.json
                    else json.dumps({"time": rfc3339(), "event": note}))
        if self.files is not None:
            self.files.add(SUPERVISOR, f"{rfc3339()} wsuper: {printable(note)}")

    def _dropped_note(self) -> str:
        dropped, self.dropped = self.dropped, 0
        note = f"the terminal did not keep up: {dropped} lines were not shown" + \
            (" (the log files have them)" if self.files is not None else "")
        return json.dumps({"time": rfc3339(), "event": note}) if self.json \
            else f"{rfc3339()} wsuper: {note}"

    def _terminal(self):
        """The terminal's thread: it wakes for a line, writes it with all that waits,
        each stream flushed once, then rests a moment while more lines gather (a
        wake-up per batch of lines, not per line, however busy the plugins are).  It
        slept before the write: every line of an idle system, `ready` and `stopping`
        among them, came TERMINAL_GATHER late, and the stop waited that long again
        for its last lines (docs/performance.md, "Up and stop")."""
        q = self._queue
        while True:
            batch = [q.get()]
            while True:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            touched = set()
            run: list[str] = []             # lines of one stream in a row: one write
            run_stream = None
            run_chars = 0
            for stream, line in batch:
                # each run at most TERMINAL_WRITE_CHARS: joined whole, a backlog of
                # 16 Mi characters was copied three times over at once (~200 MB)
                if run and (stream is not run_stream
                            or run_chars + len(line) > TERMINAL_WRITE_CHARS):
                    self._print(run_stream, "\n".join(run), flush=False)
                    run = []
                    run_chars = 0
                if stream is None:
                    self._flush(touched)
                    line.set()
                    return
                if touched and stream not in touched:
                    # stdout and stderr may be one pipe or file (2>&1), stdout
                    # block-buffered there and stderr line-buffered: flushed only at
                    # the batch's end, the plugins' lines came after every event
                    # line of the batch written after them
                    self._flush(touched)
                    touched = set()
                run.append(line)
                run_chars += len(line) + 1
                run_stream = stream
                touched.add(stream)
            if run:
                self._print(run_stream, "\n".join(run), flush=False)
            self._flush(touched)
            with self._counting:         # written: no longer held (a stopped terminal
                self._queued -= sum(len(line) for _stream, line in batch)   # holds them)
                self._lines -= len(batch)
            self._hurry.wait(TERMINAL_GATHER)     # not once the stop's last lines wait

    def _flush(self, streams):
        for stream in streams:
            try:
                stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                self._print(stream, "", flush=True)      # the same handling as a write

    def event(self, text: str, compartment: str | None = None):
        """A supervisor event (about `compartment`, if it concerns one).  Events carry
        text a guest or a peer chose (a trap's function name, a reason): each is cut
        at EVENT_LINE_LIMIT characters, saying how many more there were."""
        text = bounded(text, EVENT_LINE_LIMIT)
        now = time.time()
        if self.json:
            record = {"time": rfc3339(now), "event": text}
            if compartment:
                record["compartment"] = compartment
            self._write(self.err, json.dumps(record))
        else:
            self._write(self.err, f"{rfc3339(now)} wsuper: {printable(text)}")
        if self.files is not None:
            line = f"{rfc3339(now)} wsuper: {printable(text)}"
            self.files.add(SUPERVISOR, line)
            if compartment:
                self.files.add(compartment, line)

    def _files_failed(self, why: str):
        """The log files stopped (said once, on the terminal only)."""
        self._note(f"the log files stopped: {why}; lines are shown here only from now on")

    def _files_remade(self, why: str):
        """The log directory was made again (on the terminal only)."""
        self._note(f"note: {why}")

    def _note(self, text: str):
        if self.json:
            self._write(self.err, json.dumps({"time": rfc3339(), "event": text}))
        else:
            self._write(self.err, f"{rfc3339()} wsuper: {printable(text)}")

    def _files_paused(self, why: str):
        """The log files cannot be written for a moment (on the terminal only)."""
        when = self.files.waits_for if self.files is not None else "it passes"
        self._note(f"the log files wait: {why}; their lines are kept (up to a bound) and "
                   f"written once {when}")

    def plugin(self, compartment: str, text: str, stream: str = "log"):
        """A line a plugin wrote (to its log, or to its engine's stderr)."""
        line = f"[{compartment}] stderr: {printable(text)}" if stream == "stderr" \
            else f"[{compartment}] {printable(text)}"
        if self.json:
            self._write(self.out, json.dumps({"time": rfc3339(), "compartment": compartment,
                                              "stream": stream, "text": text}), True)
        else:
            self._write(self.out, line, True)
        if self.files is not None:     # marked as the plugin's, never taken for an event
            self.files.add(compartment, f"{rfc3339()} {line}", droppable=True)

    def _write(self, stream, line: str, droppable: bool = False):
        if self.closed:
            return
        if self._queue is None:
            self._print(stream, line)
            return
        # a terminal nobody reads (a stopped pager, Ctrl-S) holds a bounded backlog, in
        # lines and in characters (10,000 lines of escapes were ~400 MB)
        share = 1 if droppable else 2
        with self._counting:
            queued = self._queued
        if self._queue.qsize() >= TERMINAL_BACKLOG * share \
                or queued + len(line) > TERMINAL_BACKLOG_CHARS * share:
            self.dropped += 1
            return
        if self.dropped and self._queue.qsize() < TERMINAL_BACKLOG // 2 \
                and queued < TERMINAL_BACKLOG_CHARS // 2:
            self._put(self.err, self._dropped_note())
        self._put(stream, line)

    def _put(self, stream, line: str):
        with self._counting:
            self._queued += len(line)
            self._lines += 1
        self._queue.put((stream, line))

    def _print(self, stream, line: str, flush: bool = True):
        """`line` (one line, or several joined by newlines) and its newline, in one
        write: print() writes a line's end apart, which is a system call of its own
        on an unbuffered stream (PYTHONUNBUFFERED=1, as in many services and
        containers): two for each line a plugin logged, and a wake-up of the reader
        for each."""
        if self.closed:
            return
        try:
            try:
                stream.write(line + "\n")
            except UnicodeEncodeError:     # a stream we could not reconfigure: escape it
                encoding = getattr(stream, "encoding", None) or "ascii"
                stream.write(line.encode(encoding, "backslashreplace").decode(encoding, "replace")
                             + "\n")
            if flush:
                stream.flush()
        except (BrokenPipeError, ValueError, OSError) as e:
            if isinstance(e, OSError) and not isinstance(e, BrokenPipeError) \
                    and e.errno != errno.EPIPE:
                return
            self._gone()

    def _gone(self):
        """The terminal's reader went away: nothing more is written to it (the log
        files still get everything), and the system is told (`on_closed`), once."""
        with self._closing:
            if self.closed:
                return
            self.closed = True
        try:                                 # nothing more; keep exit from complaining
            null = os.open(os.devnull, os.O_WRONLY)
        except OSError:
            null = None
        for stream in (self.out, self.err) if null is not None else ():
            try:
                os.dup2(null, stream.fileno())
            except (OSError, ValueError, AttributeError):
                pass
        if null is not None:
            os.close(null)
        if self._token is not None and threading.current_thread() is not self._trio_thread:
            try:
                self._token.run_sync_soon(self.on_closed)
            except trio.RunFinishedError:
                pass
        else:
            self.on_closed()


def _written_whole(stream):
    """`stream` (a text stream on a descriptor, as sys.stdout is) written as a blocking
    descriptor is, whole: its descriptor may be non-blocking, made so by another
    program that shares it (O_NONBLOCK belongs to the open file, which every process
    that inherited it shares: a CI runner's pipe, a terminal a program left so), and
    Python's text layer drops what a write could not take at once (EAGAIN), without
    a word, as it drops what a short write left (without a buffer under it, as with
    PYTHONUNBUFFERED=1): of 2,000 plugin lines to such a pipe whose reader lagged,
    70 came whole, the rest were lost uncounted and a cut line was joined to the
    next.  The same stream on a buffer that writes all of what it is given (_Whole);
    anything else (no descriptor, layers of a kind of their own, whose writes are
    theirs to do) as it is."""
    if type(stream) is not io.TextIOWrapper:
        return stream
    under = stream.buffer
    if type(under) is io.BufferedWriter:
        under = under.raw
    if type(under) is not io.FileIO:
        return stream
    try:
        fd = stream.fileno()
        stream.flush()                      # what it holds goes first
    except (OSError, ValueError):
        return stream
    return io.TextIOWrapper(io.BufferedWriter(_Whole(fd, stream)), encoding=stream.encoding,
                            errors=stream.errors, line_buffering=stream.line_buffering,
                            write_through=stream.write_through)


class _Whole(io.RawIOBase):
    """The descriptor of `stream`, written as a blocking one: a write it cannot take
    now (EAGAIN) waits until it can (the terminal thread's waits are bounded as for
    a terminal that is slow: lines past the backlog are counted).  It holds `stream`,
    which owns the descriptor: let go of, a stream its caller kept no reference to
    closed it, and the number went to the next descriptor opened (an engine's
    socket: plugin lines were written into it)."""

    def __init__(self, fd: int, stream):
        super().__init__()
        self._fd = fd
        self._stream = stream

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        self._open()
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self.fileno())

    def _open(self):
        """ValueError, as the stream itself raises, once its owner closed it: its
        number may be another descriptor's by now (nothing is written to it, and
        _gone does not put /dev/null in its place)."""
        if self._stream.closed:
            raise ValueError("I/O operation on closed file")

    def write(self, data) -> int:
        self._open()
        while True:
            try:
                return os.write(self._fd, data)
            except BlockingIOError:
                poller = select.poll()
                poller.register(self._fd, select.POLLOUT)
                poller.poll()           # writable, or an error the write then raises


class StderrLines:
    """An engine's stderr bytes as lines to show: whole lines (an over-long one in
    pieces of STDERR_LINE_LIMIT), at most `rate` a second; the rest are counted,
    and said (`N lines not shown`) with the next line shown.  `feed` gives
    (text, shown) pairs: the last few lines, shown or not, tell why an engine
    died.  `over`: lines were held back, so its reader should wait `wait()`."""

    def __init__(self, rate: float, now: float):
        from .supervision import TokenBucket
        self.rate = TokenBucket(rate, now)
        self.buf = b""
        self.hidden = 0

    @property
    def over(self) -> bool:
        return self.hidden > 0

    def wait(self) -> float:
        return min(1.0, self.rate.wait())

    def feed(self, chunk: bytes, now: float) -> list[tuple[str, bool]]:
        """The lines `chunk` ends, as (text, shown).  Those held back by the rate
        are the last ones of a feed (its `now` is one time: once the rate refuses
        one, it refuses the rest), and only the last HIDDEN_KEPT of them are given
        (the tail that tells why an engine ended): the others are counted, never
        decoded.  The work is linear in the chunk: a chunk of 16 KiB of newlines
        took ~56 ms of the supervisor's loop (each line copied the rest of the
        buffer, and was decoded and given though not shown), and an engine
        writing such chunks at the rate's pace held the loop most of the time."""
        buf = self.buf + chunk if self.buf else chunk
        out = []
        held: collections.deque = collections.deque(maxlen=HIDDEN_KEPT)
        at, size = 0, len(buf)
        while True:
            end = buf.find(b"\n", at, at + STDERR_LINE_LIMIT)
            if end >= 0:
                line, at = (at, end), end + 1
            elif size - at > STDERR_LINE_LIMIT:
                line, at = (at, at + STDERR_LINE_LIMIT), at + STDERR_LINE_LIMIT
            else:
                break
            if not self.rate.take(now):
                self.hidden += 1
                held.append(line)
                at = self._held_back(buf, at, held)     # and so is the rest
                break
            out += self._said()
            out.append((buf[line[0]:line[1]].decode("utf-8", "replace"), True))
        self.buf = buf[at:]
        out += [(buf[a:b].decode("utf-8", "replace"), False) for a, b in held]
        return out

    def _held_back(self, buf: bytes, at: int, held: collections.deque) -> int:
        """The lines of `buf` from `at` on, all held back: counted in bulk (as feed
        cuts them: a line in pieces of STDERR_LINE_LIMIT), the last ones' places
        put in `held`; returns where what no newline ends yet begins."""
        limit, kept = STDERR_LINE_LIMIT, []
        last = buf.rfind(b"\n", at)
        if last >= 0:                  # whole lines, each before a newline
            lines = buf[at:last].split(b"\n")
            self.hidden += len(lines) + sum(len(x) // limit for x in lines
                                            if len(x) >= limit)
            end = last
            for x in reversed(lines[-HIDDEN_KEPT:]):
                start = end - len(x)
                kept[:0] = [(a, min(a + limit, end))
                            for a in range(start, start + len(x) // limit * limit + 1, limit)]
                end = start - 1
            at = last + 1
        pieces = (len(buf) - at - 1) // limit if len(buf) > at else 0   # no newline yet
        kept += [(a, a + limit) for a in range(at, at + pieces * limit, limit)]
        self.hidden += pieces
        held.extend(kept)
        return at + pieces * limit

    def finish(self, now: float) -> list[tuple[str, bool]]:
        """The stream ended (the engine exited): how many lines the rate held back,
        which no later line will say, then its last line if no newline ended it
        (shown whatever the rate: one a stream, and last, where the reason of the
        engine's end is taken from).  Both were lost without a word: an engine's
        last words without a newline, and the count of a flood before it died."""
        out = self._said()
        if self.buf:
            text, self.buf = self.buf.decode("utf-8", "replace"), b""
            self.rate.take(now)
            out.append((text, True))
        return out

    @staticmethod
    def is_note(text: str) -> bool:
        """Whether a line `feed` or `finish` gave is its own count of lines held back
        (not the engine's: no reason of its end is taken from it)."""
        return type(text) is _Note

    def _said(self) -> list[tuple[str, bool]]:
        if not self.hidden:
            return []
        note = (_Note(f"({self.hidden} lines not shown: more than {self.rate.rate:g} "
                      f"a second, limit log_rate)"), True)
        self.hidden = 0
        return [note]


class _Note(str):
    """StderrLines' count of the lines it held back (a str)."""
    __slots__ = ()


#: Errors writing the log files that pass: no descriptor free, in the supervisor
#: (EMFILE) or in the system (ENFILE), no memory for one; no room on the disk
#: (ENOSPC), or in the user's quota (EDQUOT).  Lines wait (bounded by
#: LOG_BACKLOG_BYTES) and are written when it has passed.  A full disk stopped the
#: files for good, and every later line of the run was lost, though room came back
DESCRIPTOR_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
TRANSIENT_ERRNOS = DESCRIPTOR_ERRNOS | SPACE_ERRNOS
#: times a batch is begun again in a new log directory when the one it was written
#: in was removed meanwhile (LogFiles._write); past them it waits for the next flush
REMAKE_TRIES = 5


class _Refused(OSError):
    """The log directory, removed or moved, cannot be made again (LogFiles.remake)."""


class _DirRemoved(OSError):
    """The log directory was removed again as often as a batch was begun again in a
    new one (an `rm -rf` in a loop): the batch waits for the next flush, as for a
    descriptor, and is not lost."""


def not_at(fd: int, path: str, dir_fd: int | None = None) -> bool:
    """Whether the file or directory open as `fd` is no longer the one at `path`
    (relative to `dir_fd`, if given): it has no name left, nothing is there, or
    something else is (removed, or moved away, while it was written through `fd`)."""
    own = os.fstat(fd)
    if own.st_nlink == 0:
        return True
    try:
        now = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    return (now.st_dev, now.st_ino) != (own.st_dev, own.st_ino)


class LogFiles:
    """Per-name log files in one directory, capped and rotated, written in batches.
    `set_event`: how `add` wakes the writer (the supervisor's, from either thread).

    What waits for the writer is bounded (LOG_BACKLOG_BYTES): a disk that does not
    keep up (a hung network file system, a full one retried) held every line in
    memory, without bound, while plugins went on writing.  Past the bound plugin
    lines are counted, not kept, and each file says how many it lost once the
    writer catches up; the supervisor's events have twice the room."""
    set_event = staticmethod(trio.Event.set)

    def __init__(self, folder: str, on_failed=lambda why: None, on_paused=lambda why: None,
                 remake=None, on_remade=lambda why: None):
        """`on_failed(why)`: told once, when writing fails and the files stop;
        `on_paused(why)`: when writing fails for want of a descriptor (then it is
        tried again, and told again only after it worked once more).  `remake()`:
        makes the folder again where it was, as at start, and returns a descriptor
        that holds it for this system (its lock), or raises why not; called when
        the folder was removed or moved away while the system ran, and then
        `on_remade(why)` is told."""
        self.folder = folder
        self.remake = remake
        self.on_remade = on_remade
        self._held: int | None = None  # what remake() returned last: closed at close()
        self.on_failed = on_failed
        self.on_paused = on_paused
        self.paused = False
        self.paused_why = ""
        self.waits_for = ""            # what the files wait for, while `paused`
        self.pending: dict[str, list[str]] = {}
        self.pending_size = 0          # characters in `pending`
        self.dropped: dict[str, int] = {}   # name -> lines not kept since the last batch
        self.wake = trio.Event()
        self.failed: str | None = None
        self._dir: int | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._flushing = trio.Lock()
        self._writing: dict | None = None   # the batch a flush hands its thread
        self._looked: set = set()     # names whose file's last line was looked at

    def add(self, name: str, line: str, droppable: bool = False):
        if self.pending_size + len(line) > LOG_BACKLOG_BYTES * (1 if droppable else 2):
            self.dropped[name] = self.dropped.get(name, 0) + 1
            return
        self.pending.setdefault(name, []).append(line)
        self.pending_size += len(line)
        if not self.wake.is_set():      # set already: the writer has not taken it yet
            self.set_event(self.wake)

    async def writer(self):
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            await self.flush()
            await trio.sleep(BATCH_SECONDS)     # let lines gather: one write for many

    async def flush(self):
        """Write what is pending.  One flush at a time, in order: the last one, at
        shutdown, waits for a batch the writer took and is still writing (before,
        close() could come first, and that batch, "stopping" among it, was lost)."""
        async with self._flushing:
            batch, self.pending, self.pending_size = self.pending, {}, 0
            dropped, self.dropped = self.dropped, {}
            for name, n in dropped.items():     # after what was kept: they came later
                batch.setdefault(name, []).append(_Lost.note(name, name, n))
                if name != SUPERVISOR:
                    batch.setdefault(SUPERVISOR, []).append(_Lost.note(SUPERVISOR, name, n))
            if batch and not self.failed:
                self._writing = batch
                try:
                    # abandoned when cancelled: a disk that held a write (a hung
                    # network file system) held the stop with it, as long as it
                    # held the write, past flush_last's deadline and SIGTERM
                    await threads.run_sync(self._write, batch,
                                                  abandon_on_cancel=True)
                except trio.Cancelled:
                    # the stop's deadline came before the write began, or before it
                    # ended: the batch, already out of `pending`, was lost without a
                    # word.  Kept (what the thread has not written of it, as it is
                    # now: the thread may go on), close() says it was not written
                    self._keep(batch.copy())
                    raise
                except OSError as e:
                    if e.errno not in TRANSIENT_ERRNOS and not isinstance(e, _DirRemoved):
                        self.failed = f"{self.folder}: {e.strerror or e}"
                        self.on_failed(self.failed)
                        return
                    # no descriptor free for a moment (a flood of connections, of
                    # files), or no room on the disk (_append left nothing of the
                    # write that failed): the files stopped for good, and every
                    # later line of the run was lost.  What was not written waits for the next flush,
                    # before what came since, as long as it fits; the rest is counted
                    self._keep(batch)
                    self.paused_why = f"{self.folder}: {e.strerror or e}"
                    self.waits_for = "there is room" if e.errno in SPACE_ERRNOS \
                        else "the directory stays" if isinstance(e, _DirRemoved) \
                        else "a descriptor is free"
                    if not self.paused:
                        self.paused = True
                        self.on_paused(self.paused_why)
                    self.set_event(self.wake)
                    return
                finally:
                    self._writing = None
                self.paused = False

    async def flush_last(self):
        """The last flush, at stop: a shortage of descriptors is waited out (within the
        caller's deadline) as the writer would have; close() says what it left.  One
        flush that failed for want of a descriptor lost every line kept for the
        files, though the operator had been told they would be written."""
        await self.flush()
        while self.paused and not self.failed and (self.pending or self.dropped):
            await trio.sleep(BATCH_SECONDS)
            await self.flush()

    def _keep(self, batch: dict):
        """Put what `batch` still holds (not written) back before what is pending, up
        to the backlog's bound; count the rest as dropped.  A count of lines lost
        that was not written is no line to keep or drop: dropped, it was counted as
        one line (a file said "1 lines were not written" for hundreds lost).  The
        counts not written are summed, per file and per whose lines they count, and
        kept whatever the bound (one per file and name), after that file's lines."""
        pending, self.pending, self.pending_size = self.pending, {}, 0
        lost: dict[tuple[str, str], int] = {}
        for source in (batch, pending):
            for name, lines in source.items():
                for line in lines:
                    if type(line) is _Lost:
                        lost[name, line.owner] = lost.get((name, line.owner), 0) + line.n
                    else:
                        self._readd(name, line)
        for (name, owner), n in lost.items():
            note = _Lost.note(name, owner, n)
            self.pending.setdefault(name, []).append(note)
            self.pending_size += len(note)

    def _readd(self, name: str, line: str):
        if self.pending_size + len(line) > LOG_BACKLOG_BYTES * 2:
            self.dropped[name] = self.dropped.get(name, 0) + 1
            return
        self.pending.setdefault(name, []).append(line)
        self.pending_size += len(line)

    def _write(self, batch: dict):
        """Append each name's lines; a file about to pass LOG_FILE_SIZE is rotated
        first, between two lines (lines are bounded: 4096 characters escaped).
        Everything is done in the directory as opened once (no path is followed
        again: the directory cannot be swapped for a link meanwhile)."""
        with self._lock:               # close() leaves the directory to a write under way
            if self._closed:
                return
            for tries_left in range(REMAKE_TRIES - 1, -1, -1):
                try:
                    if self._dir is not None and self.remake is not None and self._gone():
                        self._make_again()
                    if self._dir is None:
                        self._dir = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY
                                            | os.O_NOFOLLOW | os.O_CLOEXEC)
                    self._write_all(self._dir, batch)
                    return
                except OSError as e:
                    # removed after the look above, as the batch was written or the
                    # new one made (an `rm -rf` racing a writer kept busy by a plugin
                    # at full rate): a file opened in it failed ENOENT, and the log
                    # files stopped for good.  What is left of the batch is begun
                    # again in a new one; refused for another cause, it fails as before
                    if self.remake is None or self._dir is None \
                            or e.errno in TRANSIENT_ERRNOS \
                            or not self._removed(isinstance(e, _Refused)):
                        raise           # (no descriptor, no room: waited out as ever)
                    if not tries_left:
                        raise _DirRemoved(errno.ENOENT, f"removed again as soon as made "
                                                        f"({e.strerror or e})") from None

    def _removed(self, refused: bool) -> bool:
        """Whether what just failed failed because the directory was removed: nothing
        is at `folder` now, or (a write's failure, not a refusal to make it again)
        the directory written in has no name left and a directory is at `folder`
        (made again by another meanwhile: the next try looks at it as at start)."""
        try:
            now = os.stat(self.folder, follow_symlinks=False)
        except FileNotFoundError:
            return True
        return not refused and stat.S_ISDIR(now.st_mode) \
            and os.fstat(self._dir).st_nlink == 0

    def _gone(self) -> bool:
        """Whether the directory the files are written in is no longer the one at
        `folder` (removed, or moved away): written on through its descriptor, the
        files went into a directory no name reached (removed: every open failed
        ENOENT, and the files stopped for good), and `wsuper logs` found nothing."""
        return not_at(self._dir, self.folder)

    def _make_again(self):
        """A new folder where the old one was, made and held as at start (remake:
        a real directory of ours, closed to others, locked for this system), and
        the files begin again there."""
        try:
            held = self.remake()
        except Exception as e:  # noqa: BLE001 - refused (a link planted there): the
            # batch fails, as a write that fails, and the files stop saying why
            raise _Refused(errno.EACCES, f"cannot make it again: {e}") from None
        # the directory locked, not one opened again by its path: another could be
        # put there meanwhile
        try:
            new = os.dup(held)
        except OSError:
            os.close(held)     # kept, its lock refused the next try at the same directory
            raise
        # the one made before (moved away) is let go of: each kept, a directory
        # moved aside again and again took one more of the supervisor's descriptors
        # a move, and every moved one stayed locked, until the system stopped
        if self._held is not None:
            os.close(self._held)
        self._held = held
        old, self._dir = self._dir, new
        os.close(old)
        self._looked.clear()
        self.on_remade(f"the log directory {self.folder} was removed or moved while the "
                       f"system ran: a new one is made there (the files before are in "
                       f"the directory moved, if it was)")

    def _write_all(self, folder: int, batch: dict):
        """What is written leaves `batch`: when writing fails, it holds what was not."""
        for name, lines in list(batch.items()):
            file = name + ".log"
            try:
                size = os.stat(file, dir_fd=folder, follow_symlinks=False).st_size
            except FileNotFoundError:
                size = 0
            chunk: list[bytes] = []
            if name not in self._looked:
                # the first write of this run to it: a last line an earlier run left
                # unended (a full disk, a machine that lost power) is ended first,
                # or this run's first line was joined to it.  Looked at until a
                # write to it has ended: one that failed for want of a descriptor
                # (its lines wait for the next flush) lost the newline with it
                if size and not ends_a_line(folder, file, size):
                    chunk.append(b"\n")
                    size += 1
            for i, line in enumerate(lines):
                data = (line + "\n").encode("utf-8", "backslashreplace")
                if size and size + len(data) > LOG_FILE_SIZE:
                    _append(folder, file, chunk)
                    batch[name] = lines[i:]
                    _not_taken(folder, file)
                    rotate(folder, file)
                    chunk, size = [], 0
                chunk.append(data)
                size += len(data)
            _append(folder, file, chunk)
            self._looked.add(name)
            del batch[name]

    def close(self):
        """No more writes.  Lines still kept for the files when they wait (a shortage
        of descriptors that outlasted the last flush) are said lost, once."""
        # a write still under way (abandoned at stop: a disk that holds it) keeps the
        # directory, which the process's exit closes: waiting for it here held the
        # stop for as long as the disk held the write
        self._closed = True
        if self._lock.acquire(blocking=False):
            try:
                if self._dir is not None:
                    os.close(self._dir)
                    self._dir = None
                if self._held is not None:
                    os.close(self._held)
                    self._held = None
            finally:
                self._lock.release()
        left = self.unwritten()
        if not self.failed and left:
            why = f"{self.paused_why} until the system stopped" if self.paused else \
                f"{self.folder}: the last write did not end in time at stop"
            self.failed = f"{why}: {left} lines kept for them were not written"
            self.on_failed(self.failed)

    def unwritten(self) -> int:
        """How many lines are kept or counted, not written.  A note of lines lost
        stands for its count, not one line, and the supervisor's copy of another's
        note for none (they are counted in that one's file)."""
        n = sum(self.dropped.values())
        # a batch whose thread had not begun when close() came is never written (the
        # thread finds the files closed); one written meanwhile holds what was not
        batches = [self.pending] + ([self._writing] if self._writing else [])
        for name, lines in ((k, v) for b in batches for k, v in b.items()):
            for line in lines:
                if type(line) is not _Lost:
                    n += 1
                elif line.owner == name:
                    n += line.n
        return n


class _Lost(str):
    """The line that says how many of `owner`'s lines were not written (in its own
    file, or a copy in the supervisor's); `n` is that count."""
    __slots__ = ("owner", "n")

    @classmethod
    def note(cls, file: str, owner: str, n: int) -> "_Lost":
        text = f"{rfc3339()} wsuper: {n} lines were not written to the log files " \
               f"(the disk did not keep up" + (f": {n} of {owner}'s)" if file != owner
                                               else ")")
        line = cls(text)
        line.owner, line.n = owner, n
        return line


def ends_a_line(folder: int, file: str, size: int) -> bool:
    """Whether the regular file `file` in the directory `folder` (a descriptor), of
    `size` bytes, ends with a newline; True when that cannot be told (it cannot
    be read, or is not a regular file: its writer says so).  No descriptor free for
    a moment (TRANSIENT_ERRNOS) is raised, as the write's would be: the lines wait
    and the file is looked at again (taken for a whole line, this run's first line
    was joined to the piece)."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=folder)
    except OSError as e:
        if e.errno in TRANSIENT_ERRNOS:
            raise
        return True
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return True
        return os.pread(fd, 1, size - 1) in (b"\n", b"")
    except OSError:
        return True
    finally:
        os.close(fd)


def enxio_kind(path: str, dir_fd: int | None = None, fifo: str = "a FIFO no one reads") -> str:
    """What the file at `path` is, whose opening to write failed ENXIO: a FIFO no
    one reads, or a socket (another system's, put where a log file or an audit
    lies), which was said to be a FIFO too; or a device with no driver."""
    try:
        mode = os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = stat.S_IFIFO
    return "a socket" if stat.S_ISSOCK(mode) else "a device with no driver behind it" \
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else fifo


def _take(fd: int, file: str):
    """Lock the log file open as `fd` for this write (flock, let go as it is closed),
    or raise OSError (EBUSY) if another process holds it: another running system's
    audit file (each system locks its audit for the run).  A log directory given to
    one system that holds another's audit under a log file's name (`audit =
    "/d/supervisor.log"` beside `logs = "/d"`) had the log lines appended to the
    audit, and the audit rotated (and in the end deleted) from under its writer."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            from .endpoint import foreign_holders
            if foreign_holders(fd):
                return           # another user's process (a file others may read): no
                                 # system of ours, whose audit it could be
            raise OSError(errno.EBUSY, f"{file} is locked by another process (the audit "
                                       f"file of another running system?): no log file "
                                       f"of this system's is written there") from None
        # a file system that cannot lock: the log directory's own lock refused it at start


def _not_taken(folder: int, file: str):
    """Raise OSError (EBUSY) if another process holds the log file `file` locked
    (_take), before it is rotated: renamed, and in the end deleted.  Only a regular
    file is opened to look (an audit is one): opening a device can do something."""
    try:
        if not stat.S_ISREG(os.stat(file, dir_fd=folder, follow_symlinks=False).st_mode):
            return
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=folder)
    except OSError:
        return                   # nothing there, or no file to rotate: rotate says why
    try:
        _take(fd, file)
    finally:
        os.close(fd)


def _append(folder: int, file: str, chunk: list):
    """Append to a regular file only: a FIFO there (opened for writing, it waits for
    a reader) would hold the writer thread for good."""
    if not chunk:
        return
    try:
        fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                     | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600, dir_fd=folder)
    except OSError as e:
        why = f"is {enxio_kind(file, folder)}, not a regular file" if e.errno == errno.ENXIO \
            else \
            "is a symbolic link, not a regular file" if e.errno == errno.ELOOP else \
            f"cannot be opened: {e.strerror}"
        raise OSError(e.errno, f"{file} {why}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{file} is not a regular file")
        if st.st_nlink > 1:       # another name of it may lie in a grant: not written
            raise OSError(errno.EMLINK, f"{file} has {st.st_nlink} hard links; remove "
                                        f"the others")
        _take(fd, file)
        os.set_blocking(fd, True)
        data = memoryview(b"".join(chunk))
        try:
            while data:            # a short write (a disk or a file size limit reached)
                data = data[os.write(fd, data):]     # is followed by its error, not lost
        except OSError:
            # what did fit (a piece of a line, at a full disk) goes: the chunk is in
            # the file whole or not at all, since its lines are kept and written
            # again (a full disk waited out), or said lost.  Left, the file held
            # the piece, and then the same lines whole (or the next run's first
            # line joined to it).  This run is its only writer (the directory is
            # locked), and a file made shorter needs no room
            try:
                os.ftruncate(fd, st.st_size)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


def rotate(folder: int, file: str, keep: int = LOG_FILE_KEEP, keep_current: bool = False):
    """NAME -> NAME.1 -> ... -> NAME.`keep` (the oldest goes), in the directory
    `folder` (a descriptor): no name is followed through a link.  With
    `keep_current`, NAME.1 is a second link to NAME, which stays where it is (its
    writer replaces it at once: the name is never missing)."""
    def exists(name):
        try:
            os.stat(name, dir_fd=folder, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False
    for i in range(keep - 1, 0, -1):
        if exists(f"{file}.{i}"):
            os.replace(f"{file}.{i}", f"{file}.{i + 1}", src_dir_fd=folder, dst_dir_fd=folder)
    if not keep_current:
        os.replace(file, f"{file}.1", src_dir_fd=folder, dst_dir_fd=folder)
        return
    if exists(f"{file}.1"):        # keep = 1: the one rotated file goes
        os.unlink(f"{file}.1", dir_fd=folder)
    os.link(file, f"{file}.1", src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
