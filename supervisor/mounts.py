"""Where a path lies in its file system, whatever mount it is reached through.

`wsuper check` and `up` refuse a grant that reaches the supervisor's own files or
a file that decides what another compartment runs.  Comparing real paths is not
enough: a bind mount shows one directory at two paths, and `realpath` of each is
itself.  Here a path is placed as (device, path within that file system): the
mount a descriptor of it lies on (`mnt_id` in /proc/self/fdinfo), that mount's
root within its file system and its mount point (/proc/self/mountinfo).  Two
names of one directory, through any mounts, have one place.  A file seen
through an overlay mount lies in its upper or lower directory too: a name
under an overlay (or under one of its layers) is placed in each of its views.

Nothing here decides anything; `policy.load` compares places (with the real
paths, as before: either match refuses).  What cannot be placed (no /proc, a
mount not in the table) has no place, and the path comparison alone applies.
"""
from __future__ import annotations

import os
import re

MOUNTINFO = "/proc/self/mountinfo"
#: bytes of /proc/self/mountinfo read at most (a line is ~100-200 bytes)
MAX_MOUNTINFO = 16 << 20

_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> str:
    """A mountinfo path field: the kernel writes space, tab, newline and backslash
    as octal escapes (\\040 ...)."""
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m[1], 8) & 0xFF]), field))


def parse(text: bytes) -> dict[int, tuple[str, str, str]]:
    """mountinfo's lines: mount id -> (device 'major:minor', the mount's root within
    its file system, its mount point).  Lines that do not parse are left out."""
    table = {}
    for line in text.splitlines():
        fields = line.split(b" ")
        if len(fields) < 5:
            continue
        try:
            mount_id = int(fields[0])
        except ValueError:
            continue
        table[mount_id] = (os.fsdecode(fields[2]), _unescape(fields[3]), _unescape(fields[4]))
    return table


_OPTION = re.compile(rb"(?:\\.|[^,])+")
_LAYER = re.compile(rb"(?:\\.|[^:])+")


def overlays(text: bytes) -> list[tuple[str, tuple[str, ...]]]:
    """The overlay mounts in mountinfo's lines: (mount point, its layers: the upper
    directory and each lower one).  A file seen in the merged view lies in a layer
    too, under the same relative path, and can be changed there."""
    out = []
    for line in text.splitlines():
        head, sep, tail = line.partition(b" - ")
        fields, rest = head.split(b" "), tail.split(b" ")
        if not sep or len(fields) < 5 or len(rest) < 3 or rest[0] != b"overlay":
            continue
        layers = []
        for option in _OPTION.findall(rest[2]):
            key, _, value = option.partition(b"=")
            if key in (b"upperdir", b"lowerdir", b"lowerdir+", b"datadir+"):
                for layer in _LAYER.findall(value):
                    layers.append(_unescape(re.sub(rb"\\([,:\\])", rb"\1", layer)))
        if layers:
            out.append((_unescape(fields[4]), tuple(layers)))
    return out


def _read() -> bytes:
    try:
        with open(MOUNTINFO, "rb") as f:
            return f.read(MAX_MOUNTINFO)
    except OSError:
        return b""


def table() -> dict[int, tuple[str, str, str]]:
    """This process's mounts (empty where /proc is not there to say)."""
    return parse(_read())


def _mount_id(fd: int) -> int | None:
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            info = f.read(4096)
    except OSError:
        return None
    m = re.search(rb"^mnt_id:\s*(\d+)", info, re.M)
    return int(m[1]) if m else None


def _beneath(base: str, path: str) -> str | None:
    """`path` relative to `base` if it is `base` or beneath it ('' for itself)."""
    if path == base:
        return ""
    prefix = base.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else None


def within(point: str, root: str, path: str) -> str | None:
    """`path` (absolute, as the process sees it) beneath the mount point `point`,
    as a path within the file system whose `root` is mounted there."""
    if path != point and not path.startswith(point.rstrip("/") + "/"):
        return None
    rest = path[len(point.rstrip("/")):].lstrip("/")
    return os.path.normpath(os.path.join(root, rest)) if rest else os.path.normpath(root)


class Places:
    """Places of paths, each looked up once (one `load`: the mount table is read
    once and mounts are taken not to change meanwhile)."""

    def __init__(self, mounts: dict | None = None, layers: list | None = None):
        text = _read() if mounts is None or layers is None else b""
        self.mounts = parse(text) if mounts is None else mounts
        self.layers = overlays(text) if layers is None else layers
        self._seen: dict[tuple[str, bool | None], frozenset] = {}

    def of(self, path: str, follow: bool = True) -> frozenset:
        """The places (device, path within it) of the absolute path `path`: the
        place of what it names (`follow`: through a final symbolic link) and of the
        name in its directory; of a name not there yet, its nearest existing
        directory's place with the rest of the path.  Empty if unknown."""
        key = (path, follow)
        if key not in self._seen:
            self._seen[key] = frozenset(self._look(path, follow)) if self.mounts else frozenset()
        return self._seen[key]

    def object(self, path: str) -> frozenset:
        """The place of what the existing path `path` names (empty if unknown): what
        a grant of it reaches, through whatever mount it is."""
        key = (path, None)
        if key not in self._seen:
            found = self._object(path, True) if self.mounts else None
            self._seen[key] = frozenset() if found is None else frozenset([found])
        return self._seen[key]

    def _look(self, path: str, follow: bool):
        yield from self._in_one(path, follow)
        for point, layers in self.layers:   # the same file in an overlay's other views
            for base in (point, *layers):
                rest = _beneath(base, path)
                if rest is None:
                    continue
                for other in (point, *layers):
                    if other != base:
                        yield from self._in_one(os.path.join(other, rest) if rest else other,
                                                follow)

    def _in_one(self, path: str, follow: bool):
        found = self._object(path, follow)
        if found is not None:
            yield found
        parent, name = os.path.split(path)
        rest = [name] if name else []
        while parent:
            at = self._object(parent, True)
            if at is not None:
                yield at[0], os.path.normpath(os.path.join(at[1], *rest))
                return
            if parent == "/":
                return
            parent, name = os.path.split(parent)
            rest.insert(0, name)

    def _object(self, path: str, follow: bool) -> tuple[str, str] | None:
        flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = os.open(path, flags)
        except (OSError, ValueError):
            return None
        try:
            mount = self.mounts.get(_mount_id(fd))
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)
        if mount is None or not real.startswith("/"):
            return None          # not reachable from our root, or unknown: no place
        device, root, point = mount
        inside = within(point, root, real)
        return None if inside is None else (device, inside)
