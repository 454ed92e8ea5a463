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


def _read(paths, current: str | None = None, upto: tuple | None = None) -> tuple[list, int]:
    """The lines of `paths`, and where reading `current` stopped: with `upto` (its
    inode and size, taken before), no further than that, and only whole lines, so
    that following it afterwards from there misses and repeats nothing."""
    out, stop = [], 0
    for p in paths:
        with open(p, "rb") as f:
            if p == current and upto is not None and os.fstat(f.fileno()).st_ino == upto[0]:
                data = f.read(upto[1])
                data = data[:data.rfind(b"\n") + 1]
                stop = len(data)
            else:
                data = f.read()
        out += data.decode("utf-8", "replace").splitlines()
    return out, stop


def lines(system, compartment: str | None = None, follow: bool = False):
    """The lines of one compartment's log (with the supervisor's events about it),
    or of every log merged by time; then, with `follow`, new lines as they come."""
    folder = log_dir(system)
    names = [compartment] if compartment else [output.SUPERVISOR, *system.compartments]
    if not os.path.isdir(folder):
        raise NoLogs(f"no logs for {system.path} yet (looked in {folder})")
    # with `follow`, where each file ends is taken first: what is written while
    # the files are read is shown by the following, not lost between the two
    positions = {n: _end(os.path.join(folder, n + ".log")) for n in names} if follow else {}
    streams = []
    for n in names:
        current = os.path.join(folder, n + ".log")
        lines_, stop = _read(_files(folder, n), current, positions.get(n))
        if follow:
            positions[n] = (positions[n][0], stop)
        streams.append(_shown(n, lines_, compartment))
    yield from heapq.merge(*streams, key=_time)
    if not follow:
        return
    while True:
        time.sleep(0.2)
        fresh = []
        for n in names:
            path = os.path.join(folder, n + ".log")
            inode, offset = positions[n]
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if st.st_ino != inode or st.st_size < offset:     # rotated: read it anew
                inode, offset = st.st_ino, 0
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            positions[n] = (inode, offset + end)
            fresh += _shown(n, data[:end].decode("utf-8", "replace").splitlines(),
                            compartment)
        yield from sorted(fresh, key=_time)


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


def _end(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_ino, st.st_size
    except FileNotFoundError:
        return 0, 0
