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
    out = []
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            out += [line.rstrip("\n") for line in f]
    return out


def lines(system, compartment: str | None = None, follow: bool = False):
    """The lines of one compartment's log (with the supervisor's events about it),
    or of every log merged by time; then, with `follow`, new lines as they come."""
    folder = log_dir(system)
    names = [compartment] if compartment else [output.SUPERVISOR, *system.compartments]
    if not os.path.isdir(folder):
        raise NoLogs(f"no logs for {system.path} yet (looked in {folder})")
    streams = [_shown(n, _read(_files(folder, n)), compartment) for n in names]
    yield from heapq.merge(*streams, key=_time)
    if not follow:
        return
    positions = {n: _end(os.path.join(folder, n + ".log")) for n in names}
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
