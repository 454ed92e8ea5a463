"""`wsuper logs`: a system's log files, read back in time order (and followed).

The running system writes them (output.py): one file per compartment and
`supervisor.log`, in the system's log directory, rotated.  Reading needs no
running system: the files stay after it stops.
"""
from __future__ import annotations

import collections
import errno
import heapq
import os
import stat
import time

import capnp_schemas
from capnp_schemas.text import printable, quoted

from . import endpoint

#: The log files' names, as output.py writes them and this module reads them (here,
#: so that `wsuper logs` imports none of the writer's trio)
LOG_FILE_KEEP = 3             # rotated files kept (NAME.log.1 .. .3)
SUPERVISOR = "supervisor"     # the log file of the supervisor's own events


#: Bytes of the followed file kept from just before the offset `-f` reads on from,
#: to tell a file truncated and written again from one appended to
TAIL_BYTES = 256


class NoLogs(Exception):
    pass


def log_dir(system) -> str:
    return system.logs or endpoint.default_log_dir(endpoint.system_id(system.path))


def _read_log(folder: str, name: str, at: int) -> list[str]:
    """A log's lines, its rotated files' then its current one's, as they were at one
    moment.  Each is opened, newest first, before any is read: read oldest first,
    name after name, a rotation between two reads (NAME.log -> NAME.log.1) had the
    file that had been current read under neither name, and its lines, up to a
    whole file of them, were not shown.  Opened newest first, a rotation meanwhile
    only shows a file again under its next name, which is skipped (its inode)."""
    base = os.path.join(folder, name + ".log")
    opened, seen = [], set()
    try:
        for p in (base, *(f"{base}.{i}" for i in range(1, LOG_FILE_KEEP + 1))):
            try:
                f = open(p, "rb", opener=_in(at))
            except FileNotFoundError:
                continue
            ino = os.fstat(f.fileno()).st_ino
            if ino in seen:
                f.close()
                continue
            seen.add(ino)
            opened.append(f)
        out = []
        for f in reversed(opened):
            out += _lines(f.read())
        return out
    finally:
        for f in opened:
            f.close()


def _read(files) -> list[str]:
    """The lines of the open files `files`, in that order (each is closed)."""
    out = []
    try:
        for f in files:
            out += _lines(f.read())
    finally:
        for f in files:
            f.close()
    return out


def lines(system, compartment: str | None = None, follow: bool = False):
    """The lines of one compartment's log (with the supervisor's events about it),
    or of every log merged by time; then, with `follow`, new lines as they come."""
    folder = log_dir(system)
    names = [compartment] if compartment else [SUPERVISOR, *system.compartments]
    if not os.path.lexists(folder):
        raise NoLogs(f"no logs for {system.path} yet (looked in {folder})")
    # only a directory `up` would write its logs in (endpoint.own_dir): one made by
    # someone else (`up` refuses to run with it) held lines of their choosing,
    # shown as the system's, terminal escapes included
    problem = endpoint.foreign_dir(folder, "log directory ")
    if problem:
        raise NoLogs(f"no logs of yours for {system.path}: {problem}")
    pinned = [_pinned(system, folder)]
    try:
        # read through the directory checked, whatever its path names meanwhile
        yield from _lines_in(folder, pinned, names, compartment, follow,
                             lambda at: _made_again(system, folder, at))
    finally:
        os.close(pinned[0])


def _made_again(system, folder: str, at: int) -> int | None:
    """A descriptor of the log directory the running system made again at `folder`
    (removed or moved away while it ran: LogFiles._make_again), pinned as the first
    one was; None while `at` is still the one there, or nothing is there yet.
    Followed through its first descriptor, `-f` went on showing the removed (or
    moved) directory, where nothing more was written, and never a line again."""
    try:
        now = os.stat(folder, follow_symlinks=False)
    except FileNotFoundError:
        return None
    own = os.fstat(at)
    if (now.st_dev, now.st_ino) == (own.st_dev, own.st_ino):
        return None
    problem = endpoint.foreign_dir(folder, "log directory ")
    if problem:
        raise NoLogs(f"no more logs of yours for {system.path}: the log directory was "
                     f"replaced while it was followed: {problem}")
    try:
        return _pinned(system, folder)
    except NoLogs:
        if os.path.lexists(folder):
            raise
        return None              # removed again meanwhile: looked at the next time


def _pinned(system, folder: str) -> int:
    """A descriptor of the log directory `folder`, checked as foreign_dir checks its
    path (a real directory of the user's that nobody else may write to).  The path
    was checked and then its files were opened by path: a directory swapped in
    between (its parent writable by others) was read as the system's."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise NoLogs(f"no logs of yours for {system.path}: log directory {folder}: "
                     f"{e.strerror or e} (a symbolic link or something else was put "
                     f"there?)") from None
    problem = endpoint.owned_problem(os.fstat(fd), folder, "log directory ")
    if problem:
        os.close(fd)
        raise NoLogs(f"no logs of yours for {system.path}: {problem}")
    return fd


def _in(at: int):
    """An opener for open(): the file of that name in the directory `at` (a
    descriptor), whatever the directory's path names by now; a regular file only,
    as the system writes only one (output._append).  Opened as it was, a FIFO there
    held `wsuper logs` for ever (waiting for a writer), and a symbolic link to
    /dev/zero read until a MemoryError traceback: NoLogs names the file instead."""
    def opener(path, flags):
        name = os.path.basename(path)
        try:
            fd = os.open(name, flags | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                         dir_fd=at)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise                        # FileNotFoundError: the callers skip it
            fd = None
        mode = os.fstat(fd).st_mode if fd is not None else None
        if mode is not None and stat.S_ISREG(mode):
            os.set_blocking(fd, True)
            return fd
        if fd is not None:
            os.close(fd)
        kind = "a symbolic link" if mode is None else capnp_schemas.file_kind(mode)
        raise NoLogs(f"log file {quoted(path)} is {kind}, not a regular file: the system "
                     f"writes none there (its log files stop); remove it")
    return opener


def _lines_in(folder: str, pinned: list, names: list, compartment: str | None,
              follow: bool, made_again=lambda at: None):
    """`pinned`: [the directory's descriptor], which, with `follow`, becomes the one
    `made_again(descriptor)` returns when the system made the directory again (the
    caller closes the last; this one those before it)."""
    if not follow:
        yield from _merged({n: _read_log(folder, n, pinned[0]) for n in names}, compartment)
        return
    # with `follow`, each current file is opened first and then read through that
    # descriptor, before and after: what is written while the files are first read
    # is shown by the following, and a rotation at any time loses nothing
    followed = {}
    try:
        while True:
            followed = {n: _Followed(folder, n, pinned[0]) for n in names}
            first = {}
            for n in names:
                f = followed[n]
                older = _read(f.older())
                first[n] = older + _lines(f.rest())
            yield from _merged(first, compartment)
            while True:
                time.sleep(0.2)
                again = made_again(pinned[0])
                # what the old one gained before it was left, then the new one's
                yield from _merged({n: followed[n].new_lines() for n in names}, compartment)
                if again is not None:
                    break
            for f in followed.values():
                f.close()
            old, pinned[0] = pinned[0], again
            os.close(old)
    finally:
        for f in followed.values():
            f.close()


class _Followed:
    """One log followed across its rotations.  The file being followed is kept open,
    so that when its name moves on (NAME.log -> NAME.log.1 and a new NAME.log), what
    was appended to it since the last look is still read from it, then every file
    rotated after it, then the new one: `-f` used to notice a new inode and read
    the new file from its start, and lost the old one's last lines at every
    rotation (those written between its last look and the rotation)."""

    def __init__(self, folder: str, name: str, at: int):
        self.path = os.path.join(folder, name + ".log")
        self.at = at                     # the directory's descriptor (logs._pinned)
        self.file, self.offset = None, 0
        self.tail = b""          # the last bytes read, up to the offset (rest())
        self.read_before: set = set()     # inodes of the rotated files older() read
        try:
            self.file = open(self.path, "rb", opener=_in(self.at))
        except FileNotFoundError:
            pass

    def _inode(self):
        return os.fstat(self.file.fileno()).st_ino if self.file is not None else None

    def older(self) -> list:
        """The rotated files older than the one followed, opened, oldest first (for
        _read, which closes them).  Each is opened, newest first, before any is
        read (as _read_log does): listed by name and then read by name, a rotation
        between the two had a name read that named another file by then, the
        followed one among them (its lines shown twice), the oldest under none."""
        ino = self._inode()
        opened, seen = [], set()
        for i in range(1, LOG_FILE_KEEP + 1):
            try:
                f = open(f"{self.path}.{i}", "rb", opener=_in(self.at))
            except FileNotFoundError:
                continue
            n = os.fstat(f.fileno()).st_ino
            if n in seen:                # moved on by a rotation meanwhile: read once
                f.close()
                continue
            seen.add(n)
            opened.append((n, f))
        at = next((i for i, (n, _f) in enumerate(opened) if n == ino), None)
        for _n, f in opened[:at + 1 if at is not None else 0]:
            f.close()                    # the followed one, and any newer
        older = opened[at + 1 if at is not None else 0:]
        self.read_before = {n for n, _f in older}
        return [f for _n, f in reversed(older)]

    def new_lines(self) -> list[str]:
        data = self.rest()
        try:
            now = os.stat(os.path.basename(self.path), dir_fd=self.at).st_ino
        except FileNotFoundError:
            return _lines(data)
        old = self._inode()
        if now == old:
            return _lines(data)
        # rotated (or made since).  What the old file gained between the read above
        # and the look at its name is read now: the system appends its last lines
        # and rotates at once (LogFiles._write_all), and once the name has moved on
        # nothing more is written to the old file (it is written by name).  Then
        # the files rotated after it, oldest first, then the new current one
        data += self.rest()
        try:
            current = open(self.path, "rb", opener=_in(self.at))
        except FileNotFoundError:
            return _lines(data)
        newest = os.fstat(current.fileno()).st_ino
        # nothing was followed yet (there was no file): every file rotated since,
        # which older() did not read (one made and rotated between two looks
        # was lost, the new one read from its start).  Each is opened, newest
        # first, before any is read: listed and then read by name, a rotation
        # meanwhile had a name read that named another file by then
        between, seen = [], {newest}
        try:
            for i in range(1, LOG_FILE_KEEP + 1):
                try:
                    f = open(f"{self.path}.{i}", "rb", opener=_in(self.at))
                except FileNotFoundError:
                    continue
                n = os.fstat(f.fileno()).st_ino
                if n == old:
                    f.close()
                    break
                if n in seen or (old is None and n in self.read_before):
                    f.close()
                    continue
                seen.add(n)
                between.append(f)
            data += b"".join(f.read() for f in reversed(between))
        finally:
            for f in between:
                f.close()
        self.read_before = set()
        self.close()
        self.file, self.offset, self.tail = current, 0, b""
        return _lines(data + self.rest())

    def rest(self) -> bytes:
        """Whole lines appended to the followed file since the last look."""
        if self.file is None:
            return b""
        fd = self.file.fileno()
        # truncated since the last look (logrotate's copytruncate, `: > NAME.log`):
        # the system appends (O_APPEND) from its new end, and reading on from the old
        # offset showed nothing until the file grew past it, then the rest of a line
        # from its middle.  A file shorter than the offset, or whose bytes just before
        # it are not the end of the last line read (`tail`), is read again from its
        # start: a newline alone there was no proof (lines of one length, as a
        # ticker's, written again past the old offset had every line before it lost)
        if self.offset and (os.fstat(fd).st_size < self.offset or os.pread(
                fd, len(self.tail), self.offset - len(self.tail)) != self.tail):
            self.offset = 0
            self.tail = b""
        self.file.seek(self.offset)
        data = self.file.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        if end:
            self.tail = (self.tail + data[:end])[-TAIL_BYTES:]
        return data[:end]

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def _lines(data: bytes) -> list[str]:
    """The lines of `data` as shown: the system writes them escaped already
    (output.py), and whatever else is in a file is escaped here (printable is the
    same on text it has escaped), so no line moves the cursor or starts another."""
    lines = data.decode("utf-8", "replace").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [printable(line) for line in lines]


def _merged(read: dict[str, list[str]], compartment: str | None):
    """The files' lines as shown (`read`: name -> its lines, in file order), in time
    order.  One compartment's file as it is (its plugin's lines marked `[NAME]`,
    the supervisor's events about it `wsuper:`).  The merged view shows each line
    once: every event from supervisor.log, in its order, and each compartment's
    plugin lines by time among them; an event about a compartment, which its own
    file has too, never before the lines that file has before it.  Merged by the
    millisecond alone, with events first on a tie, `finished app exit=0` was
    shown before the last lines app wrote in that millisecond."""
    if compartment is not None:
        yield from heapq.merge(*read.values(), key=_time)
        return
    events = read.get(SUPERVISOR, [])
    left = collections.Counter(events)
    queues: list[collections.deque] = []      # per compartment: (is an event, line)
    holders: dict[str, collections.deque] = {}   # event -> the queues that hold it (indices)
    for name, lines in read.items():
        if name == SUPERVISOR:
            continue
        mark, q = f"[{name}] ", collections.deque()
        for line in lines:
            if line.partition(" ")[2].startswith(mark):
                q.append((False, line))
            elif left[line] > 0:      # an event about it (its own copy of a lost-lines
                left[line] -= 1       # note, or one rotated out of supervisor.log: not)
                q.append((True, line))
                holders.setdefault(line, collections.deque()).append(len(queues))
        queues.append(q)
    heads = []                # (time, which queue, its serial) of queues whose head is a line
    serial = [0] * len(queues)    # an entry of an older serial is stale (skipped)

    def push(i):
        q = queues[i]
        if q and not q[0][0]:
            heapq.heappush(heads, (_time(q[0][1]), i, serial[i]))

    def pop(i) -> str:
        line = queues[i].popleft()[1]
        push(i)
        return line
    for i in range(len(queues)):
        push(i)
    for event in events:
        t = _time(event)
        while heads and heads[0][0] < t:           # plugin lines that came before it
            _t, i, n = heapq.heappop(heads)
            if n == serial[i]:
                yield pop(i)
        held = holders.get(event)
        if held:
            i = held.popleft()
            q = queues[i]
            serial[i] += 1
            while q and q[0] != (True, event) and not q[0][0]:
                yield q.popleft()[1]                # its lines before it, whatever their time
            try:
                q.remove((True, event))
            except ValueError:
                pass
            push(i)
        yield event
    rest = [[line for is_event, line in q if not is_event] for q in queues]
    yield from heapq.merge(*rest, key=_time)


def _time(line: str) -> str:
    return line.partition(" ")[0]
