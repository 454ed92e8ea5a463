"""`wsuper logs`: a system's log files, read back in time order (and followed).

The running system writes them (output.py): one file per compartment and
`supervisor.log`, in the system's log directory, rotated.  Reading needs no
running system: the files stay after it stops.
"""
from __future__ import annotations

import heapq
import os
import time

from . import endpoint, output


class NoLogs(Exception):
    pass


def log_dir(system) -> str:
    return system.logs or output.default_log_dir(endpoint.system_id(system.path))


def _files(folder: str, name: str) -> list[str]:
    """A log's files, oldest first (rotated ones, then the current one)."""
    base = os.path.join(folder, name + ".log")
    rotated = [f"{base}.{i}" for i in range(output.LOG_FILE_KEEP, 0, -1)]
    return [p for p in (*rotated, base) if os.path.exists(p)]


def _read(paths) -> list[str]:
    """The lines of the files `paths`, in that order."""
    out = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                out += _lines(f.read())
        except FileNotFoundError:        # rotated away since it was listed
            pass
    return out


def lines(system, compartment: str | None = None, follow: bool = False):
    """The lines of one compartment's log (with the supervisor's events about it),
    or of every log merged by time; then, with `follow`, new lines as they come."""
    folder = log_dir(system)
    names = [compartment] if compartment else [output.SUPERVISOR, *system.compartments]
    if not os.path.isdir(folder):
        raise NoLogs(f"no logs for {system.path} yet (looked in {folder})")
    if not follow:
        yield from heapq.merge(*(_shown(n, _read(_files(folder, n)), compartment)
                                 for n in names), key=_time)
        return
    # with `follow`, each current file is opened first and then read through that
    # descriptor, before and after: what is written while the files are first read
    # is shown by the following, and a rotation at any time loses nothing
    followed = {n: _Followed(folder, n) for n in names}
    try:
        streams = []
        for n in names:
            f = followed[n]
            older = _read(f.older())
            streams.append(_shown(n, older + _lines(f.rest()), compartment))
        yield from heapq.merge(*streams, key=_time)
        while True:
            time.sleep(0.2)
            fresh = []
            for n in names:
                fresh += _shown(n, followed[n].new_lines(), compartment)
            yield from sorted(fresh, key=_time)
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

    def __init__(self, folder: str, name: str):
        self.path = os.path.join(folder, name + ".log")
        self.file, self.offset = None, 0
        self.read_before: set = set()     # inodes of the rotated files older() read
        try:
            self.file = open(self.path, "rb")
        except FileNotFoundError:
            pass

    def _inode(self):
        return os.fstat(self.file.fileno()).st_ino if self.file is not None else None

    def _rotated(self) -> list[tuple[str, int]]:
        """(path, inode) of the rotated files, newest first."""
        out = []
        for i in range(1, output.LOG_FILE_KEEP + 1):
            p = f"{self.path}.{i}"
            try:
                out.append((p, os.stat(p).st_ino))
            except FileNotFoundError:
                pass
        return out

    def older(self) -> list[str]:
        """The rotated files older than the one followed, oldest first."""
        rotated = self._rotated()
        ino = self._inode()
        at = next((i for i, (_p, n) in enumerate(rotated) if n == ino), None)
        older = rotated[at + 1 if at is not None else 0:]
        self.read_before = {n for _p, n in older}
        return [p for p, _n in reversed(older)]

    def new_lines(self) -> list[str]:
        data = self.rest()
        try:
            now = os.stat(self.path).st_ino
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
            current = open(self.path, "rb")
        except FileNotFoundError:
            return _lines(data)
        newest = os.fstat(current.fileno()).st_ino
        between = []
        for p, n in self._rotated():
            if n == old:
                break
            if n != newest and (old is not None or n not in self.read_before):
                between.append(p)
        # nothing was followed yet (there was no file): every file rotated since,
        # which older() did not read (one made and rotated between two looks
        # was lost, the new one read from its start)
        data += b"".join(_whole(p) for p in reversed(between))
        self.read_before = set()
        self.close()
        self.file, self.offset = current, 0
        return _lines(data + self.rest())

    def rest(self) -> bytes:
        """Whole lines appended to the followed file since the last look."""
        if self.file is None:
            return b""
        self.file.seek(self.offset)
        data = self.file.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end]

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def _whole(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def _lines(data: bytes) -> list[str]:
    return data.decode("utf-8", "replace").splitlines()


def _shown(name: str, lines: list[str], compartment: str | None) -> list[str]:
    """One file's lines as shown: a compartment's own file as it is (its plugin's
    lines marked `[NAME]`, the supervisor's events about it `wsuper:`); in the
    merged view only its plugin lines, since supervisor.log has every event."""
    if compartment is not None or name == output.SUPERVISOR:
        return lines
    mark = f"[{name}] "
    return [line for line in lines if line.partition(" ")[2].startswith(mark)]


def _time(line: str) -> str:
    return line.partition(" ")[0]
