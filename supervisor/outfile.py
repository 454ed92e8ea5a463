"""The file an operator's command writes at a path it was given (`trace -o`,
`check --graph`, `build -o`): one helper for all of them.

Each is refused where it may not be written (`refused`: a directory another
user may change on the way, another user's file or link in a shared directory,
a name the runtime directory keeps for a system), and is written whole or not
at all: into a file of its own beside it (`.NAME.XXXXXXXX.tmp`, made O_EXCL,
mode 0600), renamed over the name only once it is complete.  A write that
fails (a full disk, a compiler that fails, Ctrl-C) leaves the file that was
there as it was, and no part of the new one.  Before (r266, left to r268),
`trace -o` over an existing file emptied it and then failed to write: the old
content was lost; `check --graph` and `build -o` left a half-written file.

The new file has the permission bits of the one it replaces (never its
set-user-ID, set-group-ID or sticky bits), or, where there was none, those of
a file the command makes (0666 less the umask; a linker's own for `build`).
It belongs to whoever runs the command: the old file's owner and group are not
kept (a rename cannot keep them), nor its other hard links, which keep the old
content.  A symbolic link of one's own at the name is followed: the file it
leads to is replaced, the link kept.

A FIFO, a terminal or another device (`-o /dev/stdout | jq`, `/dev/null`) is
written as it is, never renamed over: opened without waiting (O_NONBLOCK), so a
FIFO that no process reads is refused at once, naming it, where open() waited
for a reader before the command had asked the system anything (r268).  So is
one of the command's own descriptors (`/dev/stdout`, `/dev/fd/N`,
`/proc/self/fd/N`), whatever file is behind it, written where and as its
opener chose (`> t.json`, `>> log`): taken as a path, the file behind it was
replaced, `>> log` losing the log.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import tempfile

from capnp_schemas.text import quoted


class OutputError(Exception):
    """The output cannot be written, or may not be: the message names the option
    and the path."""


def refused(option: str, output: str) -> str | None:
    """Why the command may not write `output` at all, or None: a name that is no
    file's, a path another user could choose the target of (cli._planted), a
    name the runtime directory keeps (endpoint.kept_name), at the path or where
    its link leads.  Every output goes through this (`build -o` took a kept
    name: r268)."""
    from . import endpoint
    from .cli import _planted
    if not output or output.endswith(os.sep):
        return f"{option} {quoted(output)} names no file"
    problem = _planted(option, output)
    if problem:
        return problem
    for name in {output, os.path.realpath(output)}:
        if endpoint.kept_name(name):
            # `trace S -o` the running system's lock, or the grants file beside it,
            # wrote the trace over them ("wrote ..."), as over another system's (r266)
            return (f"{option} {quoted(output)} has the name of a system's own socket, admin "
                    f"socket or lock, or of the grants file beside its lock, in the runtime "
                    f"directory ({endpoint.KEPT_NAMES}): not writing there; name another "
                    f"file")
    return None


class Output:
    """Where a command writes its output: `fd`, open for writing (the temporary
    file, or the stream itself), and `path`, the temporary file's name (a tool
    that writes by name: dot -o, clang -o), None for a stream.  `done = True`
    once it is whole: only then is it renamed over the name."""

    def __init__(self, fd: int, path: str | None):
        self.fd, self.path, self.done = fd, path, False

    @property
    def streaming(self) -> bool:
        return self.path is None


def _stream(option: str, output: str, st, follow: bool) -> int:
    """Open the FIFO or device `output` for writing, without waiting for a reader."""
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{option} {quoted(output)} is a directory: name a file")
    try:
        fd = os.open(output, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
                     | (0 if follow else os.O_NOFOLLOW))
    except OSError as e:
        if e.errno == errno.ENXIO and stat.S_ISFIFO(st.st_mode):
            raise OutputError(f"{option} {quoted(output)} is a FIFO that no process reads "
                              f"(start its reader first): nothing was written") from None
        raise OutputError(f"{option} {quoted(output)}: {e.strerror}") from None
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    return fd


#: a name of one of this process's open descriptors: /dev/fd/N, /proc/self/fd/N
_OWN_FD = re.compile(r"/(?:dev/fd|proc/self/fd)/([0-9]{1,9})")


def own_descriptor(output: str) -> int | None:
    """The descriptor `output` names among this process's own (`/dev/stdout`,
    `/dev/stderr`, `/dev/fd/N`, `/proc/self/fd/N`), or None."""
    if output in ("/dev/stdout", "/dev/stderr"):
        return 1 if output == "/dev/stdout" else 2
    m = _OWN_FD.fullmatch(output)
    return int(m.group(1)) if m else None


@contextlib.contextmanager
def replacing(option: str, output: str, *, stream: bool = True, make_folder: bool = False):
    """Write `output` (the command's `option`) through an Output: refused (OutputError)
    where `refused` says, or when it cannot be made; renamed over `output` at the end
    if the block set `done` and raised nothing, else removed, `output` as it was.
    `stream`: a FIFO or a device at `output` is written as it is (else refused);
    `make_folder`: its directory is made if missing (`build -o`)."""
    n = own_descriptor(output) if stream else None
    if n is not None:
        # the command's own stdout (or another descriptor it was given): written as it
        # is, where and as its opener chose (`> t.json`, `>> log`, a pipe).  Taken as a
        # path, the file behind it was replaced by a new one: the command's own output
        # (its "wrote" line) went to the file unlinked, and `>> log` lost the log
        try:
            fd = fcntl.fcntl(n, fcntl.F_DUPFD_CLOEXEC, 3)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.close(fd)
                raise OutputError(f"{option} {quoted(output)} is a directory: name a file")
        except OSError as e:
            raise OutputError(f"{option} {quoted(output)}: {e.strerror}") from None
        try:
            yield Output(fd, None)
        finally:
            os.close(fd)
        return
    # what is there is looked at once, before `refused`: a link only followed if it
    # was there then (refused looked at its owner); a name with nothing there is
    # replaced, never followed (a link another planted since the look: r227)
    try:
        st = os.lstat(output)
    except FileNotFoundError:
        st = None
    except (OSError, ValueError) as e:
        raise OutputError(f"{option} {quoted(output)}: {getattr(e, 'strerror', e)}") from None
    problem = refused(option, output)
    if problem:
        raise OutputError(problem)
    link = st is not None and stat.S_ISLNK(st.st_mode)
    if link:
        try:
            st = os.stat(output)
        except FileNotFoundError:      # a dangling link of one's own: made where it leads
            st = None
        except OSError as e:
            raise OutputError(f"{option} {quoted(output)}: {e.strerror}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        if not stream or stat.S_ISDIR(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise OutputError(f"{option} {quoted(output)} is {kind}: name a file")
        fd = _stream(option, output, st, follow=link)
        out = Output(fd, None)
        try:
            yield out
        finally:
            os.close(fd)
        return
    target = os.path.realpath(output) if link else output
    folder, name = os.path.split(os.path.abspath(target))
    if make_folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot make {quoted(folder)} for {quoted(output)}: "
                              f"{e.strerror}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise OutputError(f"{option} {quoted(output)}: cannot write in {quoted(folder)}: "
                          f"{e.strerror}") from None
    out = Output(fd, tmp)
    try:
        yield out
        if out.done:
            mine = os.fstat(fd)
            if st is not None:
                mode = stat.S_IMODE(st.st_mode) & 0o777
            elif os.path.samestat(mine, os.stat(tmp)):
                umask = os.umask(0o022)
                os.umask(umask)
                mode = 0o666 & ~umask
            else:                      # made anew by the tool that wrote it (a linker)
                mode = None
            try:
                if mode is not None:
                    os.chmod(tmp, mode)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except OSError as e:
                raise OutputError(f"{option} {quoted(output)}: {e.strerror}") from None
            tmp = None
    finally:
        os.close(fd)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
