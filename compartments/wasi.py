"""WASI preview 1 (`wasi_snapshot_preview1`) on top of a compartment's grants.

A WASI program (C with wasi-libc, Rust for wasm32-wasip1, ...) runs as a
compartment unchanged: its file descriptors, arguments, environment, clocks
and randomness are the capabilities its policy grants, and nothing else.

How that is enforced: this module runs in the engine, which has no files, no
network and no environment of its own (see confine.py).  Every WASI call that
needs authority becomes an ordinary capability call to the supervisor --
`path_open` is `Directory.open`, `fd_write` is `File.write` or `Log.write`,
`clock_time_get` is `Clock.wall` -- through the same c-list, membranes,
quotas, revocation and audit as any other call.  This file only translates;
it decides nothing the supervisor does not check again.

* Preopens: every directory grant, at fd 3, 4, ... in the order granted, named
  by its `mount` ("/NAME" unless the policy says otherwise).
* fd 0, 1, 2: the grants named `stdin` (a file), `stdout` and `stderr` (a log,
  one line per line written, cut at 4096 characters; or a file, appended to).
  Without such a grant the descriptor is empty, like /dev/null: reading gives
  end of file, writing goes nowhere.
* Arguments: the compartment's name, then the environment grant's `args`.
  Variables: its `vars`.  No environment grant: no arguments beyond the name
  and no variables.
* Clocks need a clock grant, random_get a random grant (ENOTCAPABLE without).
* Rights are reported as wasmtime reports them, can be dropped with
  fd_fdstat_set_rights (never added back: ENOTCAPABLE), and a dropped right
  is enforced.  Rename and hard links within one directory grant (across two:
  EXDEV).  docs/guest-abi.md lists what stays unsupported.

Errors from the supervisor carry a POSIX errno name first in their reason
("ENOENT: ..."); a path that would leave its directory is EPERM, as under
wasmtime; anything refused by attenuation (an allow-list, a revoked or
used-up grant) is ENOTCAPABLE.
"""
from __future__ import annotations

import errno
import re
import struct
import sys
import time

from capnp_schemas import host as host_schema, hosted, protocol
from capnp_schemas.protocol import Content

from . import abi, protect

# wasi_snapshot_preview1 errno values (the WASI witx `errno` enum)
ERRNO = {"SUCCESS": 0, **{name: value for value, name in enumerate((
    "E2BIG", "EACCES", "EADDRINUSE", "EADDRNOTAVAIL", "EAFNOSUPPORT", "EAGAIN", "EALREADY",
    "EBADF", "EBADMSG", "EBUSY", "ECANCELED", "ECHILD", "ECONNABORTED", "ECONNREFUSED",
    "ECONNRESET", "EDEADLK", "EDESTADDRREQ", "EDOM", "EDQUOT", "EEXIST", "EFAULT", "EFBIG",
    "EHOSTUNREACH", "EIDRM", "EILSEQ", "EINPROGRESS", "EINTR", "EINVAL", "EIO", "EISCONN",
    "EISDIR", "ELOOP", "EMFILE", "EMLINK", "EMSGSIZE", "EMULTIHOP", "ENAMETOOLONG",
    "ENETDOWN", "ENETRESET", "ENETUNREACH", "ENFILE", "ENOBUFS", "ENODEV", "ENOENT",
    "ENOEXEC", "ENOLCK", "ENOLINK", "ENOMEM", "ENOMSG", "ENOPROTOOPT", "ENOSPC", "ENOSYS",
    "ENOTCONN", "ENOTDIR", "ENOTEMPTY", "ENOTRECOVERABLE", "ENOTSOCK", "ENOTSUP", "ENOTTY",
    "ENXIO", "EOVERFLOW", "EOWNERDEAD", "EPERM", "EPIPE", "EPROTO", "EPROTONOSUPPORT",
    "EPROTOTYPE", "ERANGE", "EROFS", "ESPIPE", "ESRCH", "ESTALE", "ETIMEDOUT", "ETXTBSY",
    "EXDEV", "ENOTCAPABLE"), start=1)}}
#: the host's names for some of them
_ALIASES = {"EDEADLOCK": "EDEADLK", "EOPNOTSUPP": "ENOTSUP", "EWOULDBLOCK": "EAGAIN"}
#: every errno the host's kernel has a name for: one WASI has not is an I/O error there
#: (EUCLEAN, ENOMEDIUM, EREMOTEIO, ...), never taken for a refusal (ENOTCAPABLE)
_HOST_ERRNOS = frozenset(errno.errorcode.values())
E = type("E", (), {k[1:]: v for k, v in ERRNO.items() if k.startswith("E") and k != "E2BIG"})

FILETYPE_UNKNOWN, FILETYPE_CHAR, FILETYPE_DIR, FILETYPE_FILE, FILETYPE_SYMLINK = 0, 2, 3, 4, 7
FDFLAGS_APPEND, FDFLAGS_DSYNC, FDFLAGS_NONBLOCK, FDFLAGS_RSYNC, FDFLAGS_SYNC = 1, 2, 4, 8, 16
FDFLAGS_ALL = 0x1F
FDFLAGS_SYNCS = FDFLAGS_DSYNC | FDFLAGS_RSYNC | FDFLAGS_SYNC
OFLAGS_CREAT, OFLAGS_DIRECTORY, OFLAGS_EXCL, OFLAGS_TRUNC = 1, 2, 4, 8
LOOKUP_SYMLINK_FOLLOW = 1
FST_ATIM, FST_ATIM_NOW, FST_MTIM, FST_MTIM_NOW = 1, 2, 4, 8

# rights (the witx `rights` flags), by bit
(RIGHT_FD_DATASYNC, RIGHT_FD_READ, RIGHT_FD_SEEK, RIGHT_FD_FDSTAT_SET_FLAGS, RIGHT_FD_SYNC,
 RIGHT_FD_TELL, RIGHT_FD_WRITE, RIGHT_FD_ADVISE, RIGHT_FD_ALLOCATE, RIGHT_PATH_CREATE_DIRECTORY,
 RIGHT_PATH_CREATE_FILE, RIGHT_PATH_LINK_SOURCE, RIGHT_PATH_LINK_TARGET, RIGHT_PATH_OPEN,
 RIGHT_FD_READDIR, RIGHT_PATH_READLINK, RIGHT_PATH_RENAME_SOURCE, RIGHT_PATH_RENAME_TARGET,
 RIGHT_PATH_FILESTAT_GET, RIGHT_PATH_FILESTAT_SET_SIZE, RIGHT_PATH_FILESTAT_SET_TIMES,
 RIGHT_FD_FILESTAT_GET, RIGHT_FD_FILESTAT_SET_SIZE, RIGHT_FD_FILESTAT_SET_TIMES,
 RIGHT_PATH_SYMLINK, RIGHT_PATH_REMOVE_DIRECTORY, RIGHT_PATH_UNLINK_FILE,
 RIGHT_POLL_FD_READWRITE, RIGHT_SOCK_SHUTDOWN, RIGHT_SOCK_ACCEPT) = (1 << i for i in range(30))
ALL_RIGHTS = (1 << 30) - 1
#: a regular file: everything a file descriptor can do (FD_READ / FD_WRITE as opened)
FILE_RIGHTS = (RIGHT_FD_DATASYNC | RIGHT_FD_READ | RIGHT_FD_SEEK | RIGHT_FD_FDSTAT_SET_FLAGS
               | RIGHT_FD_SYNC | RIGHT_FD_TELL | RIGHT_FD_WRITE | RIGHT_FD_ADVISE
               | RIGHT_FD_ALLOCATE | RIGHT_FD_FILESTAT_GET | RIGHT_FD_FILESTAT_SET_SIZE
               | RIGHT_FD_FILESTAT_SET_TIMES | RIGHT_POLL_FD_READWRITE)
#: a directory, as wasmtime reports it (0x7B7FE00): no seeking, reading, truncating
DIR_RIGHTS = (RIGHT_PATH_CREATE_DIRECTORY | RIGHT_PATH_CREATE_FILE | RIGHT_PATH_LINK_SOURCE
              | RIGHT_PATH_LINK_TARGET | RIGHT_PATH_OPEN | RIGHT_FD_READDIR
              | RIGHT_PATH_READLINK | RIGHT_PATH_RENAME_SOURCE | RIGHT_PATH_RENAME_TARGET
              | RIGHT_PATH_FILESTAT_GET | RIGHT_PATH_FILESTAT_SET_TIMES | RIGHT_FD_FILESTAT_GET
              | RIGHT_FD_FILESTAT_SET_TIMES | RIGHT_PATH_SYMLINK | RIGHT_PATH_REMOVE_DIRECTORY
              | RIGHT_PATH_UNLINK_FILE)
DIR_INHERITING = DIR_RIGHTS | FILE_RIGHTS
#: a stream (a log, an empty stdio descriptor): no seek or tell, so libc sees a terminal
STREAM_RIGHTS = RIGHT_FD_FDSTAT_SET_FLAGS | RIGHT_FD_FILESTAT_GET | RIGHT_FD_SYNC \
    | RIGHT_FD_DATASYNC | RIGHT_POLL_FD_READWRITE

CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_PROCESS, CLOCK_THREAD = 0, 1, 2, 3
MAX_IO = 256 << 10          # bytes moved by one File.read, File.write or Random.bytes call
                            # (see Wasi.max_io)
MAX_FDS = 1024
MAX_PATH = 4096
MAX_LINKS = 40              # symbolic links O_CREAT follows to a missing target (Linux's limit)
READLINK_RETRIES = 8       # reads of a link replaced while it is read in parts (then EAGAIN)
MAX_IOVECS = 1024
MAX_TRANSFER = 64 << 20     # bytes one fd_read / fd_write moves at most (then it is short)
LOG_LINE = 4096             # characters of one log line the supervisor shows
RANDOM_CHUNK = 65536        # Random.bytes' per-call bound
MAX_SLEEP = 3600.0          # seconds one time.sleep of poll_oneoff (a longer sleep: several)
U64 = (1 << 64) - 1
_DIRENT = struct.Struct("<QQIBxxx")      # d_next, d_ino, d_namlen, d_type; the name follows
_ERRNO_PREFIX = re.compile(r"(E[A-Z0-9]+): ")
_HANDLES_FULL = "(limit handles)"           # in the router's refusal of a full c-list

_KINDS = {"file": FILETYPE_FILE, "directory": FILETYPE_DIR, "symlink": FILETYPE_SYMLINK,
          "other": FILETYPE_UNKNOWN}
_KIND_VALUES = {value: _KINDS.get(name, FILETYPE_UNKNOWN)       # Kind's raw value -> filetype
                for name, value in host_schema.Kind.schema.enumerants.items()}
_M = {(i.name, m.name): (i.id, m.ordinal, m.params, m.results)    # from the one table
      for i in hosted.BY_KIND.values() for m in i.methods}


#: (argument, bytes) of the result of each call that changes something, or writes
#: other memory first: a result pointer the program may not write (memory
#: protection: EFAULT) fails the call before it opens, writes, reads or seeks (it
#: used to do that, then say EFAULT: the program, told nothing happened, wrote
#: again or lost what it read), and before it fills a buffer or sleeps (readdir
#: and readlink filled theirs, poll_oneoff slept and wrote its events, and the
#: sizes calls wrote their first result, each then saying EFAULT: an outside
#: review, r240).  The
#: check writes back the bytes that are there: a result pointer into the call's
#: own path, iovecs or data is read as the program left it (zeros were written
#: there first, so fd_write wrote them and path_open read a path cut by a NUL)
_RESULTS = {"path_open": ((8, 4),), "fd_read": ((3, 4),), "fd_write": ((3, 4),),
            "fd_pread": ((4, 4),), "fd_pwrite": ((4, 4),), "fd_seek": ((3, 8),),
            "fd_readdir": ((4, 4),), "path_readlink": ((5, 4),), "poll_oneoff": ((3, 4),),
            "args_sizes_get": ((0, 4), (1, 4)), "environ_sizes_get": ((0, 4), (1, 4))}


#: (argument, the values it may take) of each flags or enum argument: witx gives it a
#: u8, u16 or u32 with these bits (flags: a mask) or these values (enum: a range).  Any
#: other value (a bit witx has no name for, a value past the type's width, which the
#: masks below cut away) is EINVAL before the call does anything, as wasmtime refuses
#: it before its call runs (it traps).  It was taken as the bits left: `0x10000` as
#: no flags (fd_fdstat_set_flags turned O_APPEND off and said success), lookupflags
#: `2` as none, fst_flags `0x10002` set the access time, advice 256 was NORMAL, and
#: rights past the 30 witx names were dropped without a word.
_MASK, _ENUM = "mask", "enum"
_NARROW = {
    "fd_advise": ((3, _ENUM, 5),),
    "fd_fdstat_set_flags": ((1, _MASK, 0x1F),),
    "fd_filestat_set_times": ((3, _MASK, 0xF),),
    "fd_seek": ((2, _ENUM, 2),),       # whence (it was looked at after the descriptor)
    "proc_raise": ((0, _ENUM, 30),),   # signal (it was ENOSYS, as for one witx names)
    "path_filestat_get": ((1, _MASK, 0x1),),
    "path_filestat_set_times": ((1, _MASK, 0x1), (6, _MASK, 0xF)),
    "path_link": ((1, _MASK, 0x1),),
    "path_open": ((1, _MASK, 0x1), (4, _MASK, 0xF), (5, _MASK, ALL_RIGHTS),
                  (6, _MASK, ALL_RIGHTS), (7, _MASK, 0x1F)),
    "fd_fdstat_set_rights": ((1, _MASK, ALL_RIGHTS), (2, _MASK, ALL_RIGHTS)),
    "sock_accept": ((1, _MASK, 0x1F),),
    "sock_recv": ((3, _MASK, 0x3),),
    "sock_send": ((3, _ENUM, 0xFFFF),),  # siflags: a plain u16, not flags (wasmtime takes any)
    "sock_shutdown": ((1, _MASK, 0x3),),
}


def _narrow_ok(args, narrow) -> bool:
    """Whether each flags or enum argument of `narrow` (_NARROW) is one witx has."""
    for i, how, bound in narrow:
        v = args[i] & U64                # (a negative i32 is past every bound too)
        if (v & ~bound) if how == _MASK else v > bound:
            return False
    return True


class HostCallFailed(Exception):
    """A capability call that returned an exception (raised by the engine)."""

    def __init__(self, type: str, reason: str):
        super().__init__(reason)
        self.type, self.reason = type, reason


class WasiExit(BaseException):
    """proc_exit: unwinds the guest; the engine reports the code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class _Fail(Exception):
    def __init__(self, errno: int):
        self.errno = errno


def errno_of(e: HostCallFailed) -> int:
    """The WASI errno for a failed capability call."""
    m = _ERRNO_PREFIX.match(e.reason or "")
    if m:
        name = _ALIASES.get(m.group(1), m.group(1))
        if name == "ENOTCAPABLE":
            # the supervisor's file refusal of a path that would leave its directory
            # (absolute, a '..' that climbs out, a link that leads out): EPERM, as
            # wasmtime says and the WASI test suite requires.  A refusal by
            # attenuation comes as "denied: ..." and stays ENOTCAPABLE (below)
            return E.PERM
        if name in ERRNO:
            return ERRNO[name]
        if name in _HOST_ERRNOS:
            return E.IO
    if e.type == "overloaded" and _HANDLES_FULL in (e.reason or ""):
        # the c-list is full (limit handles), of the program's own descriptors for the
        # most part: EMFILE, as a full descriptor table is; it is no passing
        # overload that trying again clears (EAGAIN: a loop that retried spun for good)
        return E.MFILE
    return {"overloaded": E.AGAIN, "disconnected": E.IO,
            "unimplemented": E.NOTSUP}.get(e.type, E.NOTCAPABLE)


class _Desc:
    """One open descriptor."""
    __slots__ = ("kind", "cap", "mount", "offset", "readable", "writable", "append", "flags",
                 "base", "inheriting", "line", "cut", "root", "rel", "ino", "page",
                 "cursors")

    def __init__(self, kind, cap, *, mount=None, readable=False, writable=False, append=False,
                 flags=0, base=0, inheriting=0, root=None, rel="."):
        self.kind = kind            # "dir" | "file" | "log" | "null"
        self.cap = cap              # import id: our own reference, dropped when closed
        self.mount = mount          # preopened directories: the name the program sees
        self.offset = 0
        self.readable, self.writable, self.append = readable, writable, append
        self.flags = flags          # fdflags as the program set them
        self.base, self.inheriting = base, inheriting
        self.line = bytearray()     # log: the start of the unfinished line (at most 4 x LOG_LINE)
        self.cut = 0                # log: bytes of that line past what is kept
        self.root = root            # dir: the preopen it came from (our own reference) ...
        self.rel = rel              # ... and its path from there (for link/rename across fds)
        self.ino = None             # dir: its inode, for '.' and '..' in fd_readdir
        self.page = None            # dir: the last page of its listing fd_readdir fetched
        self.cursors = []           # dir: the host's cursor after each entry listed, in order


class Wasi:
    """The WASI state of one compartment.  `host` is the engine: guest memory
    (read, write), capability calls (invoke) and import ownership (adopt, drop).
    `max_io`: bytes one File.read or File.write may move, so that every
    message stays within the compartment's message_size (and the supervisor's
    decoding limits); a larger read or write from the program is several calls.
    `max_answer`: the compartment's message_size: what one Random.bytes answer
    may carry (abi.random_most)."""

    def __init__(self, host, name: str, max_io: int = MAX_IO,
                 max_answer: int | None = None):
        self.host = host
        self.name = name
        self.max_io = max(1, min(max_io, MAX_IO))
        self.max_answer = max_answer
        self.fds: dict[int, _Desc] = {}
        self.clock = self.random = self.env = None
        self._argv = self._environ = None
        self._frames: list[list[_Desc]] = []   # per WASI call running now: what it uses
        self._deferred: list[_Desc] = []   # closed while an outer call uses them

    @property
    def max_answer_words(self) -> int:
        """Words of a host answer read at most: what the message that carried it
        may hold (message_size, and the 64 KiB of header the engine's framing
        admits on top of it), at least 1 Mi.  A fixed 1 Mi words (8 MiB) failed a
        program whose environment grant `check` allowed, fitting its
        message_size of 32 MiB: 'the engine could not handle this call
        (KjException: ... Exceeded message traversal limit ...)' (an outside
        review, reviewer 204)."""
        if self.max_answer is None:
            return 1 << 20
        return max(1 << 20, (self.max_answer >> 3) + 8192)

    @property
    def max_random(self) -> int:
        """Bytes asked of Random.bytes at a time: max_io, and no more than an answer
        carries (half of message_size was more than that below 2 KiB: EINVAL)."""
        if self.max_answer is None:
            return self.max_io
        return max(1, min(self.max_io, abi.random_most(self.max_answer)))

    def grant(self, grants):
        """`grants`: (name, kind, mount, import id) for each granted capability.
        Each one used here gets a reference of its own (host.hold), so that the
        guest releasing its wsuper handle to a grant does not pull it from
        under a descriptor."""
        by_name = {g[0]: g for g in grants}
        for fd, stream in enumerate(("stdin", "stdout", "stderr")):
            g = by_name.get(stream)
            if g and g[1] in (("file",) if fd == 0 else ("log", "file")):
                kind = "file" if g[1] == "file" else "log"
                rights = (FILE_RIGHTS & ~(RIGHT_FD_WRITE if fd == 0 else RIGHT_FD_READ)) \
                    if kind == "file" else STREAM_RIGHTS | RIGHT_FD_WRITE
                self.fds[fd] = _Desc(kind, self.host.hold(g[3]), readable=fd == 0,
                                     writable=fd > 0, append=fd > 0,
                                     flags=FDFLAGS_APPEND if fd > 0 and kind == "file" else 0,
                                     base=rights)
            else:                        # not granted: empty, like /dev/null
                self.fds[fd] = _Desc("null", None, readable=fd == 0, writable=fd > 0,
                                     base=STREAM_RIGHTS | RIGHT_FD_SEEK | RIGHT_FD_TELL
                                     | (RIGHT_FD_READ if fd == 0 else RIGHT_FD_WRITE))
        fd = 3
        for gname, kind, mount, cap in grants:
            if kind == "directory":
                held = self.host.hold(cap)
                self.fds[fd] = _Desc("dir", held, mount=mount or f"/{gname}", base=DIR_RIGHTS,
                                     inheriting=DIR_INHERITING, root=held)
                fd += 1
            elif kind in ("clock", "random", "environment"):
                attr = {"clock": "clock", "random": "random", "environment": "env"}[kind]
                if getattr(self, attr) is None:      # preflight refuses two of a kind
                    setattr(self, attr, self.host.hold(cap))

    # ------------------------------------------------------------ plumbing

    def function(self, name: str):
        """The host function for one wasi_snapshot_preview1 import (ENOSYS if unknown)."""
        impl = getattr(self, name, None) or self._nosys
        results = _RESULTS.get(name, ())
        narrow = _NARROW.get(name, ())
        # the engine's: guest code of a call past its call_time is cut off here,
        # before the function changes anything (an unfinished line of a log, say)
        begins = getattr(self.host, "host_call_begins", None)
        def call(*args):
            if narrow and not _narrow_ok(args, narrow):
                return E.INVAL           # before anything: no result pointer, no fd
            if begins is not None:
                begins()
            self._frames.append([])
            returned = False     # (sys.exc_info() also names what the engine handles around us)
            try:
                for i, size in results:         # before the call does anything
                    # written back as it is: the result may share memory with what
                    # the call reads (its path, iovecs or data), read after this
                    at = args[i] & 0xFFFFFFFF
                    self.host.write(at, self.host.read(at, size))
                r = impl(*args)
                returned = True
                return 0 if r is None else r
            except _Fail as f:
                returned = True
                return f.errno
            except HostCallFailed as e:
                returned = True
                return errno_of(e)
            except protect.Fault as e:    # a protected page (compartments/protect.py)
                returned = True
                print(f"wsuper: {name}: EFAULT: {e}", file=sys.stderr, flush=True)
                return E.FAULT
            except (ValueError, OverflowError, struct.error, UnicodeError):
                returned = True
                return E.INVAL           # arguments no call could mean (huge, negative)
            finally:
                self._frames.pop()
                if self._deferred:
                    # no host call while an exit or a trap unwinds the guest: what
                    # closed meanwhile is only let go then
                    self._drop_deferred(flush=returned)
        if name == "proc_exit":
            return impl
        call.__name__ = name
        return call

    @staticmethod
    def _nosys(*_args):
        return E.NOSYS

    def _call(self, cap, iface: str, method: str, **fields):
        """Call a host capability; returns (results reader, new import ids)."""
        iface_id, index, params, results = _M[iface, method]
        content = Content.standalone(params.new_message(**fields).to_segments()) \
            if fields else protocol.EMPTY
        payload = self.host.invoke(cap, iface_id, index, content)
        caps = [self.host.adopt(c) for c in payload.caps]
        try:
            reader = results.from_segments(payload.content.message(),
                                           traversal_limit_in_words=self.max_answer_words)
        except Exception:  # noqa: BLE001 - the supervisor sent something unreadable
            for c in caps:
                self.host.drop(c)
            raise _Fail(E.IO) from None
        return reader, caps

    def _one_cap(self, caps) -> int:
        for c in caps[1:]:
            self.host.drop(c)
        if not caps or caps[0] is None:
            raise _Fail(E.IO)
        return caps[0]

    def _fd(self, fd, *kinds) -> _Desc:
        d = self.fds.get(fd)
        if d is None:
            raise _Fail(E.BADF)
        if self._frames:
            self._frames[-1].append(d)          # in use until this call returns
        if kinds and d.kind not in kinds:
            raise _Fail(E.NOTDIR if kinds == ("dir",) else E.BADF)
        return d

    @staticmethod
    def _need(d: _Desc, right: int):
        """A right the descriptor must still have (the program may have dropped it)."""
        if not d.base & right:
            raise _Fail(E.BADF if right in (RIGHT_FD_READ, RIGHT_FD_WRITE) else E.NOTCAPABLE)

    def _room(self):
        """EMFILE unless one more descriptor fits, in the descriptor table and in the
        c-list (each open file is a handle): asked before an open does anything, as
        open(2) takes its descriptor first.  Found full only after Directory.create
        or Directory.open and File.truncate had run, an O_CREAT made the file and an
        O_TRUNC emptied it, and the program was told EMFILE: nothing happened (an
        O_EXCL tried again then said EEXIST).  _new_fd checks again (a call served
        meanwhile may have opened some)."""
        if len(self.fds) >= MAX_FDS or not self.host.can_hold(1):
            raise _Fail(E.MFILE)

    def _new_fd(self, desc: _Desc) -> int:
        """The lowest free number, as open(2) takes (and wasmtime reuses a closed
        0, 1 or 2 too): `close(1); open(...)` redirects stdout, the POSIX idiom.
        From 3 up, a program that closed its stdout and opened a file kept
        printing into a closed descriptor: EBADF, every line lost."""
        if len(self.fds) >= MAX_FDS:
            self._release(desc)
            raise _Fail(E.MFILE)
        fd = 0
        while fd in self.fds:
            fd += 1
        self.fds[fd] = desc
        return fd

    def _release(self, d: _Desc):
        """Drop a closed descriptor's references.  A WASI call waits for the supervisor
        as wsuper.call does, and calls into the compartment are served meanwhile
        (engine.py): one whose dispatch closes the descriptor that the waiting call
        is using leaves its references until that call returns.  Dropped at once,
        the import id would be free for the next open to take, and the rest of the
        outer read or write would go to that other file; a closed file is read to
        the end of a read that had begun, as on Linux."""
        if self._in_use(d, self._frames[:-1]):
            self._deferred.append(d)
        else:
            self._drop(d)

    def _drop(self, d: _Desc):
        self.host.drop(d.cap)
        if d.root is not None and d.root != d.cap:
            self.host.drop(d.root)

    @staticmethod
    def _in_use(d: _Desc, frames) -> bool:
        """Whether one of the WASI calls of `frames` (waiting) uses `d`."""
        return any(x is d for frame in frames for x in frame)

    def _drop_deferred(self, flush: bool = True):
        """After a WASI call returned: what no call still running uses goes, a log's
        unfinished line sent first, as a close sends it (`flush`: not while an
        exit or a trap unwinds).  The close flushed the log before the call using
        it had finished: what that call wrote after (a write of "line\nmore"
        closed during the Log.write of "line") was said to be written, and was
        dropped with the descriptor, never sent."""
        deferred, self._deferred = self._deferred, []
        for d in deferred:
            if self._in_use(d, self._frames):
                self._deferred.append(d)
                continue
            try:
                if flush:
                    self._flush(d)
            except (HostCallFailed, _Fail):
                pass                     # refused (log_rate), as a close's flush may be
            finally:
                self._drop(d)

    def _u32(self, ptr, value):
        self.host.write(ptr & 0xFFFFFFFF, struct.pack("<I", value & 0xFFFFFFFF))

    def _u64(self, ptr, value):
        self.host.write(ptr & 0xFFFFFFFF, struct.pack("<Q", value & U64))

    def _path(self, ptr, length) -> str:
        length &= 0xFFFFFFFF
        if length > MAX_PATH:
            raise _Fail(E.NAMETOOLONG)
        raw = self.host.read(ptr & 0xFFFFFFFF, length)
        if b"\0" in raw:
            raise _Fail(E.INVAL)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Fail(E.ILSEQ) from None

    def _iovecs(self, ptr, count) -> list[tuple[int, int]]:
        count &= 0xFFFFFFFF
        if count > MAX_IOVECS:
            raise _Fail(E.INVAL)
        raw = self.host.read(ptr & 0xFFFFFFFF, 8 * count)
        return [struct.unpack_from("<II", raw, 8 * i) for i in range(count)]

    @staticmethod
    def _chunks(iovecs, size):
        """The iovecs as (ptr, length) runs of at most `size` bytes each, made as they
        are used, and at most MAX_TRANSFER bytes in all (a short read or write)."""
        run, left, total = [], size, 0
        for ptr, length in iovecs:
            while length:
                take = min(length, left)
                run.append((ptr, take))
                ptr, length, left = ptr + take, length - take, left - take
                if not left:
                    yield run
                    total += size
                    if total >= MAX_TRANSFER:
                        return
                    run, left = [], size
        if run:
            yield run

    def _gather(self, run) -> bytes:
        """The bytes of `run`'s buffers, up to the first one protection forbids the
        host to read (a short transfer, as writev's that faults midway); raises
        protect.Fault only if that is the first."""
        out = []
        for p, n in run:
            try:
                out.append(self.host.read(p, n))
            except protect.Fault:
                if not out:
                    raise
                break
        return b"".join(out)

    def _scatter(self, run, data: bytes) -> int:
        """`data` into `run`'s buffers, up to the first one protection forbids the
        host to write; the bytes written (fewer than `data`: a short read, as
        readv's that faults midway).  Raises protect.Fault only if that is the
        first: a buffer written and then EFAULT told the program that nothing was
        read."""
        pos = 0
        for p, n in run:
            if pos >= len(data):
                break
            try:
                self.host.write(p, data[pos:pos + n])
            except protect.Fault:
                if not pos:
                    raise
                break
            pos += min(n, len(data) - pos)
        return min(pos, len(data))

    def _read_into(self, d: _Desc, offset: int, iovs_ptr, count) -> int:
        """Read at `offset` into the guest's buffers, as many calls as it takes,
        until they are full or the file ends; bytes read."""
        if d.kind == "null":
            return 0
        done = 0
        for run in self._chunks(self._iovecs(iovs_ptr, count), self.max_io):
            want = sum(n for _p, n in run)
            try:
                r, _ = self._call(d.cap, "File", "read", offset=offset + done, count=want)
            except HostCallFailed:
                if done:
                    break                  # what was read is the result; the error comes again
                raise
            data = bytes(r.data)[:want]
            try:
                moved = self._scatter(run, data)
            except protect.Fault:          # a buffer further on is protected: short
                if done:
                    break
                raise
            done += moved
            if moved < want:
                break
        return done

    def _write_from(self, d: _Desc, offset: int | None, iovs_ptr, count, *,
                    positional: bool = False) -> int:
        """Write the guest's buffers at `offset` (None: at the end), as many calls
        as it takes; bytes written.  An error after some bytes (the host's, or a
        protected buffer further on) ends the write short, as POSIX does.  Appending moves the descriptor's offset to the new
        end, unless `positional` (pwrite: the offset never moves, even when an
        append-mode descriptor makes it append)."""
        done = 0
        for run in self._chunks(self._iovecs(iovs_ptr, count), self.max_io):
            try:
                data = self._gather(run)        # short at a protected buffer
                if offset is None:
                    # what went: fewer bytes than sent when the file system filled up
                    # or the file reached its largest (they were said to be written)
                    r, _ = self._call(d.cap, "File", "append", data=data)
                    n = min(r.written, len(data))
                    if not positional:
                        d.offset = r.offset + n
                else:
                    r, _ = self._call(d.cap, "File", "write", offset=offset + done, data=data)
                    n = r.written
            except (HostCallFailed, protect.Fault):   # after some bytes: a short write
                if done:
                    break
                raise
            done += n
            if n < sum(length for _p, length in run):
                break
        return done

    # ------------------------------------------------------------ args, environment

    def _strings(self, which) -> list[bytes]:
        """argv (args_*: Environment.args) or environ (environ_*: Environment.vars),
        each asked once, of its own method: with `allow = ["args"]` the arguments
        were refused too (both were asked at once), and wasi-libc's start, whose
        args_sizes_get failed, ended every program with 71 before main.  A method
        the grant refuses (an allow-list, revoked) gives none, as no environment
        grant does: wasi-libc ends the program (71) at any failure there."""
        if which == "args":
            if self._argv is None:
                argv = [self.name, *self._env_list("args")]
                self._argv = [a.encode() + b"\0" for a in argv]
            return self._argv
        if self._environ is None:
            self._environ = [f"{v.name}={v.value}".encode() + b"\0"
                             for v in self._env_list("vars")]
        return self._environ

    def _env_list(self, method: str) -> list:
        if self.env is None:
            return []
        try:
            r, _ = self._call(self.env, "Environment", method)
        except HostCallFailed as e:
            if errno_of(e) == E.NOTCAPABLE:
                return []
            raise
        return list(r.args if method == "args" else r.vars)

    def _sizes(self, which, count_ptr, size_ptr):
        strings = self._strings(which)
        self._u32(count_ptr, len(strings))
        self._u32(size_ptr, sum(map(len, strings)))

    def _fill(self, which, ptrs, buf):
        buf &= 0xFFFFFFFF
        for i, s in enumerate(self._strings(which)):
            self._u32(ptrs + 4 * i, buf)
            self.host.write(buf, s)
            buf += len(s)

    def args_sizes_get(self, count_ptr, size_ptr):
        self._sizes("args", count_ptr, size_ptr)

    def args_get(self, argv, buf):
        self._fill("args", argv, buf)

    def environ_sizes_get(self, count_ptr, size_ptr):
        self._sizes("environ", count_ptr, size_ptr)

    def environ_get(self, environ, buf):
        self._fill("environ", environ, buf)

    # ------------------------------------------------------------ clocks, random, misc

    def clock_res_get(self, clock_id, out):
        if clock_id not in (CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_PROCESS, CLOCK_THREAD):
            raise _Fail(E.INVAL)
        self._u64(out, 1000 if clock_id in (CLOCK_PROCESS, CLOCK_THREAD) else 1)

    def clock_time_get(self, clock_id, _precision, out):
        if clock_id not in (CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_PROCESS, CLOCK_THREAD):
            raise _Fail(E.INVAL)
        if self.clock is None:
            raise _Fail(E.NOTCAPABLE)
        # the CPU time (this engine's own) is read here, but only as the grant gives
        # the monotonic clock: one Clock.monotonic call, which its membrane judges.
        # Read without asking, a grant revoked, expired, used up, rate-limited or
        # allowing `wall` alone still gave a nanosecond timer, as often as wanted
        r, _ = self._call(self.clock, "Clock", "wall" if clock_id == CLOCK_REALTIME
                          else "monotonic")
        ns = time.process_time_ns() if clock_id in (CLOCK_PROCESS, CLOCK_THREAD) else r.ns
        self._u64(out, ns)

    def random_get(self, buf, length):
        if self.random is None:
            raise _Fail(E.NOTCAPABLE)
        buf, length = buf & 0xFFFFFFFF, length & 0xFFFFFFFF
        while length:
            # at most what one answer to this compartment may carry, as for files:
            # with message_size = 64 KiB a chunk of 65536 bytes was refused (EINVAL)
            n = min(length, RANDOM_CHUNK, self.max_random)
            r, _ = self._call(self.random, "Random", "bytes", count=n)
            data = bytes(r.data)
            if len(data) != n:
                raise _Fail(E.IO)
            self.host.write(buf, data)
            buf, length = buf + n, length - n

    def proc_exit(self, code):
        raise WasiExit(code & 0xFFFFFFFF)

    def sched_yield(self):
        return 0

    def proc_raise(self, _signal):
        """No signals: ENOTSUP, wasmtime's answer (it was ENOSYS, every function's
        not written here, and a program asserting wasmtime's errno failed)."""
        return E.NOTSUP

    def poll_oneoff(self, subs_ptr, events_ptr, count, nevents_ptr):
        """Clock subscriptions sleep (an absolute time needs the clock grant, to know
        how long that is); descriptors are always ready.  Subscriptions are looked at
        in order, and the first that cannot be (a kind or clock that does not exist:
        EINVAL; a descriptor not open: EBADF) fails the whole call, as under
        wasmtime."""
        count &= 0xFFFFFFFF
        if count == 0 or count > 4096:
            raise _Fail(E.INVAL)
        raw = self.host.read(subs_ptr & 0xFFFFFFFF, 48 * count)
        timers, ready = [], []
        for i in range(count):
            userdata, tag = struct.unpack_from("<QB", raw, 48 * i)
            if tag == 0:
                clock, timeout, _precision, flags = struct.unpack_from("<IxxxxQQH", raw,
                                                                        48 * i + 16)
                if clock > CLOCK_THREAD:       # not a clock at all (wasmtime: EINVAL too)
                    raise _Fail(E.INVAL)
                if flags & ~1:                 # subclockflags has ABSTIME alone (wasmtime:
                    raise _Fail(E.INVAL)       # EINVAL; it was slept as if relative)
                if flags & 1:                  # absolute: how far is it from now?
                    if clock not in (CLOCK_REALTIME, CLOCK_MONOTONIC):
                        # a CPU-time clock's time cannot be waited for: the whole
                        # call, as wasmtime fails it (its event said ENOTSUP)
                        raise _Fail(E.INVAL)
                    if self.clock is None:
                        ready.append((userdata, E.NOTCAPABLE, tag))
                        continue
                    try:
                        r, _ = self._call(self.clock, "Clock", "wall" if clock == CLOCK_REALTIME
                                          else "monotonic")
                    except HostCallFailed as e:   # refused (allow, revoked): its event
                        ready.append((userdata, errno_of(e), tag))     # says so, as
                        continue                  # without the grant (not the whole call)
                    timeout = max(0, timeout - r.ns)
                timers.append((timeout, userdata))
            elif tag in (1, 2):
                (fd,) = struct.unpack_from("<I", raw, 48 * i + 16)
                d = self.fds.get(fd)
                if d is None:                  # the whole call, as wasmtime and the WASI
                    raise _Fail(E.BADF)        # test suite's poll_oneoff_files require
                # a dropped POLL_FD_READWRITE is enforced as every dropped right is
                ready.append((userdata, 0 if d.base & RIGHT_POLL_FD_READWRITE
                              else E.NOTCAPABLE, tag))
            else:
                raise _Fail(E.INVAL)
        if not ready and timers:
            timeout, _ = min(timers)
            left = timeout / 1e9
            # the events it will write, checked before it sleeps (EFAULT, not a sleep
            # and then EFAULT), as the count is (_RESULTS)
            at = events_ptr & 0xFFFFFFFF
            due = sum(1 for t, _u in timers if t <= timeout)
            self.host.write(at, self.host.read(at, 32 * due))
            # answers the engine holds go out first; a call's sleep past its
            # call_time fails the call instead
            self.host.before_blocking(left)
            while True:      # in pieces time.sleep takes; the clock is due only at the end
                piece = min(left, MAX_SLEEP)    # (it used to be reported due after an hour)
                time.sleep(piece)
                left -= piece
                if left <= 0:
                    break
            ready = [(u, 0, 0) for t, u in timers if t <= timeout]
        out = b"".join(struct.pack("<QHBxxxxxQHxxxxxx", u, err, tag, 0, 0)
                       for u, err, tag in ready)
        self.host.write(events_ptr & 0xFFFFFFFF, out)
        self._u32(nevents_ptr, len(ready))

    def sock_shutdown(self, fd, _how):
        self._fd(fd)
        raise _Fail(E.NOTSOCK)

    def sock_accept(self, fd, *_):
        self._fd(fd)
        raise _Fail(E.NOTSOCK)

    sock_recv = sock_send = sock_accept

    # ------------------------------------------------------------ descriptors

    def fd_prestat_get(self, fd, out):
        d = self._fd(fd)
        if d.mount is None:
            raise _Fail(E.BADF)
        self.host.write(out & 0xFFFFFFFF, struct.pack("<BxxxI", 0, len(d.mount.encode())))

    def fd_prestat_dir_name(self, fd, buf, length):
        d = self._fd(fd)
        if d.mount is None:
            raise _Fail(E.BADF)
        name = d.mount.encode()
        if (length & 0xFFFFFFFF) < len(name):
            raise _Fail(E.NAMETOOLONG)          # as wasmtime says
        self.host.write(buf & 0xFFFFFFFF, name)

    def fd_close(self, fd):
        d = self._fd(fd)
        del self.fds[fd]
        try:
            self._flush(d)
        finally:
            self._release(d)

    def fd_renumber(self, fd, to):
        """`fd` takes the number `to` (which must be open), at once: closing what
        `to` was cannot fail it, as dup2(2) ignores the errors of that close (a
        log's unfinished line refused past log_rate closed `to`, left `fd` where
        it was and failed EAGAIN).  The move is done before that close: its flush
        is a host call, during which calls into the compartment are served, and
        with `to` free and `fd` still at its number meanwhile, an open took `to`
        (and the move overwrote it, its file's reference lost) or a close of
        `fd` made the move fail."""
        self._fd(fd)
        old = self._fd(to)
        if fd != to:
            self.fds[to] = self.fds.pop(fd)
            try:
                self._flush(old)
            except HostCallFailed:
                pass
            finally:
                self._release(old)

    def _filetype(self, d: _Desc) -> int:
        return {"dir": FILETYPE_DIR, "file": FILETYPE_FILE}.get(d.kind, FILETYPE_CHAR)

    def fd_fdstat_get(self, fd, out):
        d = self._fd(fd)
        self.host.write(out & 0xFFFFFFFF, struct.pack("<BxHxxxxQQ", self._filetype(d),
                                                       d.flags, d.base, d.inheriting))

    def fd_fdstat_set_flags(self, fd, flags):
        """APPEND on or off (never off on an append-only grant: EPERM), NONBLOCK
        (no effect on files); the SYNC flags cannot change after opening (ENOTSUP)."""
        d = self._fd(fd)
        flags &= 0xFFFF
        if flags & ~FDFLAGS_ALL:
            raise _Fail(E.INVAL)
        self._need(d, RIGHT_FD_FDSTAT_SET_FLAGS)
        changed = flags ^ d.flags
        if changed & FDFLAGS_SYNCS or (changed & FDFLAGS_APPEND and d.kind != "file"):
            raise _Fail(E.NOTSUP)
        if changed & FDFLAGS_APPEND:
            self._call(d.cap, "File", "setAppend", append=bool(flags & FDFLAGS_APPEND))
            d.append = bool(flags & FDFLAGS_APPEND)
        d.flags = flags

    def fd_fdstat_set_rights(self, fd, base, inheriting):
        """Drop rights (never add: ENOTCAPABLE); a dropped right is enforced."""
        d = self._fd(fd)
        base, inheriting = base & U64, inheriting & U64
        if base & ~d.base or inheriting & ~d.inheriting:
            raise _Fail(E.NOTCAPABLE)
        d.base, d.inheriting = base, inheriting

    def _filestat(self, out, info=None, filetype=None):
        if info is not None:
            filetype = _KINDS.get(str(info.kind), FILETYPE_UNKNOWN)
            self.host.write(out & 0xFFFFFFFF, struct.pack(
                "<QQBxxxxxxxQQqqq", info.device, info.inode, filetype, info.links, info.size,
                info.accessedNs, info.modifiedNs, info.changedNs))
        else:
            self.host.write(out & 0xFFFFFFFF, struct.pack("<QQBxxxxxxxQQQQQ", 0, 0, filetype,
                                                           1, 0, 0, 0, 0))

    def fd_filestat_get(self, fd, out):
        d = self._fd(fd)
        self._need(d, RIGHT_FD_FILESTAT_GET)
        if d.kind in ("log", "null"):
            return self._filestat(out, filetype=FILETYPE_CHAR)
        if d.kind == "dir":
            r, _ = self._call(d.cap, "Directory", "stat", path="", follow=True)
        else:
            r, _ = self._call(d.cap, "File", "stat")
        self._filestat(out, r.info)

    def fd_filestat_set_size(self, fd, size):
        d = self._fd(fd)
        if d.kind == "dir":
            raise _Fail(E.ISDIR)
        if d.kind != "file":
            raise _Fail(E.INVAL)
        self._need(d, RIGHT_FD_FILESTAT_SET_SIZE)
        if size < 0:
            raise _Fail(E.INVAL)
        self._call(d.cap, "File", "truncate", size=size)

    @staticmethod
    def _times(atim, mtim, fst_flags) -> dict:
        """setTimes fields from fd_/path_filestat_set_times' arguments; EINVAL for a
        combination that makes no sense, before anything else is looked at."""
        fst_flags &= 0xFFFF
        if fst_flags & ~0xF or (fst_flags & FST_ATIM and fst_flags & FST_ATIM_NOW) \
                or (fst_flags & FST_MTIM and fst_flags & FST_MTIM_NOW):
            raise _Fail(E.INVAL)
        atim, mtim = atim & U64, mtim & U64
        if (fst_flags & FST_ATIM and atim >> 63) or (fst_flags & FST_MTIM and mtim >> 63):
            raise _Fail(E.OVERFLOW)          # past the year 2262: not a time the host has
        how = lambda set_, now: "to" if fst_flags & set_ else "now" if fst_flags & now \
            else "keep"                                                   # noqa: E731
        return dict(accessedNs=atim if fst_flags & FST_ATIM else 0,
                    accessed=how(FST_ATIM, FST_ATIM_NOW),
                    modifiedNs=mtim if fst_flags & FST_MTIM else 0,
                    modified=how(FST_MTIM, FST_MTIM_NOW))

    def fd_filestat_set_times(self, fd, atim, mtim, fst_flags):
        times = self._times(atim, mtim, fst_flags)
        d = self._fd(fd)
        self._need(d, RIGHT_FD_FILESTAT_SET_TIMES)
        if d.kind == "dir":
            self._call(d.cap, "Directory", "setTimes", path="", follow=True, **times)
        elif d.kind == "file":
            self._call(d.cap, "File", "setTimes", **times)
        else:
            raise _Fail(E.NOTSUP)

    def fd_advise(self, fd, offset, length, advice):
        d = self._fd(fd)
        if d.kind == "dir":
            raise _Fail(E.ISDIR)
        if d.kind != "file":
            raise _Fail(E.SPIPE)
        if advice & 0xFF > 5 or offset < 0 or length < 0:
            raise _Fail(E.INVAL)
        self._need(d, RIGHT_FD_ADVISE)            # advice only: nothing to do

    def fd_allocate(self, fd, *_):
        d = self._fd(fd)
        if d.kind == "dir":
            raise _Fail(E.ISDIR)
        if d.kind != "file":
            raise _Fail(E.BADF)
        self._need(d, RIGHT_FD_ALLOCATE)
        raise _Fail(E.NOTSUP)

    def fd_sync(self, fd):
        self._sync(fd, RIGHT_FD_SYNC, False)

    def fd_datasync(self, fd):
        self._sync(fd, RIGHT_FD_DATASYNC, True)

    def _sync(self, fd, right, data_only):
        d = self._fd(fd)
        if d.kind != "dir":
            # a directory's rights, as wasmtime reports them, have neither FD_SYNC
            # nor FD_DATASYNC (it refuses them: EBADF); fsync of a directory, which
            # makes the names made in it durable, works here as on Linux
            self._need(d, right)
        if d.kind == "file":
            self._call(d.cap, "File", "sync", dataOnly=data_only)
        elif d.kind == "dir":
            self._call(d.cap, "Directory", "sync")
        else:
            self._flush(d)

    def fd_seek(self, fd, offset, whence, out):
        d = self._seekable(fd)
        self._need(d, RIGHT_FD_TELL if offset == 0 and whence == 1 else RIGHT_FD_SEEK)
        if whence not in (0, 1, 2):    # (256 passed a check of its low byte, then was END)
            raise _Fail(E.INVAL)
        if d.kind == "null":
            return self._u64(out, 0)
        if d.kind != "file":
            raise _Fail(E.BADF)
        if whence == 0:
            base = 0
        elif whence == 1:
            base = d.offset
        else:
            r, _ = self._call(d.cap, "File", "stat")
            base = r.info.size
        new = base + offset
        if new < 0 or new > U64 >> 1:
            raise _Fail(E.INVAL)
        d.offset = new
        self._u64(out, new)

    def fd_tell(self, fd, out):
        d = self._seekable(fd)
        self._need(d, RIGHT_FD_TELL)
        self._u64(out, d.offset)

    def _seekable(self, fd) -> _Desc:
        """The descriptor of an fd_seek or fd_tell: a log is a pipe (ESPIPE); a
        directory EBADF, as wasmtime says and the WASI test suite's directory_seek
        requires (its missing FD_SEEK right said ENOTCAPABLE)."""
        d = self._fd(fd)
        if d.kind == "log":
            raise _Fail(E.SPIPE)
        if d.kind == "dir":
            raise _Fail(E.BADF)
        return d

    def _readable(self, fd) -> _Desc:
        d = self._fd(fd)
        if d.kind == "dir":
            raise _Fail(E.ISDIR)
        if not d.readable:
            raise _Fail(E.BADF)
        self._need(d, RIGHT_FD_READ)
        return d

    def _writable(self, fd) -> _Desc:
        d = self._fd(fd)
        if d.kind == "dir":
            raise _Fail(E.ISDIR)
        if not d.writable:
            raise _Fail(E.BADF)
        self._need(d, RIGHT_FD_WRITE)
        return d

    def fd_read(self, fd, iovs, count, out):
        d = self._readable(fd)
        n = self._read_into(d, d.offset, iovs, count)
        d.offset += n
        self._u32(out, n)

    def fd_pread(self, fd, iovs, count, offset, out):
        d = self._readable(fd)
        if d.kind != "file" and d.kind != "null":
            raise _Fail(E.SPIPE)
        self._need(d, RIGHT_FD_SEEK)    # witx: FD_READ "with FD_SEEK, includes fd_pread"
        if offset < 0:
            raise _Fail(E.INVAL)
        self._u32(out, self._read_into(d, offset, iovs, count))

    def fd_write(self, fd, iovs, count, out):
        d = self._writable(fd)
        if d.kind == "null":
            n = min(sum(length for _p, length in self._iovecs(iovs, count)), MAX_TRANSFER)
        elif d.kind == "log":
            n = 0
            for run in self._chunks(self._iovecs(iovs, count), self.max_io):
                try:
                    data = self._gather(run)
                    took = self._log(d, data)
                except (HostCallFailed, protect.Fault):   # after some bytes: short
                    if n:
                        break
                    raise
                n += took
                if took < sum(length for _p, length in run):
                    break
        elif d.append:
            n = self._write_from(d, None, iovs, count)
        else:
            n = self._write_from(d, d.offset, iovs, count)
            d.offset += n
        self._u32(out, n)

    def fd_pwrite(self, fd, iovs, count, offset, out):
        d = self._writable(fd)
        if d.kind != "file":
            raise _Fail(E.SPIPE)
        self._need(d, RIGHT_FD_SEEK)
        if offset < 0:
            raise _Fail(E.INVAL)
        # on an append-mode descriptor it appends, whatever the offset (as Linux
        # does); either way the descriptor's own offset stays where it was
        self._u32(out, self._write_from(d, None if d.append else offset, iovs, count,
                                        positional=True))

    def _log(self, d: _Desc, data: bytes) -> int:
        """Lines go to the log one by one.  A line longer than the log shows is
        cut there (the rest is counted, not sent).  The bytes taken: all, or when
        a line is refused (past log_rate), those of the lines before it, a short
        write (none: the refusal), and the line refused is as it was before this
        write (what an earlier write left unfinished stays).  Every byte was
        said to be refused, those of lines shown too, and a program that tried
        again showed them twice."""
        start = 0
        while True:
            nl = data.find(b"\n", start)
            piece = data[start:] if nl < 0 else data[start:nl]
            kept, cut = len(d.line), d.cut
            room = 4 * LOG_LINE - len(d.line)
            if room > 0:
                d.line += piece[:room]
            d.cut += max(0, len(piece) - max(room, 0))
            if nl < 0:
                return len(data)
            pending = d.line[:kept]
            try:
                self._send_line(d)
            except HostCallFailed:
                # (before what a call served meanwhile wrote to it, if one did)
                d.line, d.cut = pending + d.line, cut + d.cut
                if start:
                    return start
                raise
            start = nl + 1

    def _send_line(self, d: _Desc):
        raw, cut = bytes(d.line), d.cut
        d.line, d.cut = bytearray(), 0
        text = raw.decode("utf-8", "replace")
        if cut or len(text) > LOG_LINE:
            more = cut + len(raw)
            show = text[:LOG_LINE - 40]
            more -= len(show.encode("utf-8", "replace"))
            text = f"{show}... ({max(more, 1)} more bytes)"
        self._call(d.cap, "Log", "write", text=text)

    def _flush(self, d: _Desc):
        if d.kind == "log" and (d.line or d.cut):
            self._send_line(d)

    def flush_all(self):
        """At exit: the unfinished lines of stdout and stderr.  Each Log.write is a host
        call, during which calls into the compartment are served: over the table
        itself, one that opened or closed a file meanwhile failed the flush
        ('dictionary changed size during iteration'), the other logs' lines
        unsent.  The descriptors as they were, then, each in use while it is
        flushed (a close served meanwhile leaves its reference until then), and
        one closed meanwhile skipped: its close sent its line."""
        for d in list(self.fds.values()):
            if d.kind != "log" or not (d.line or d.cut) \
                    or not any(x is d for x in self.fds.values()):
                continue
            self._frames.append([d])
            done = False                 # (not while an exit served meanwhile unwinds)
            try:
                self._flush(d)
                done = True
            except HostCallFailed:
                done = True
            finally:
                self._frames.pop()
                if self._deferred:
                    self._drop_deferred(flush=done)

    def close_all(self):
        """Drop every reference this state holds (instance = "per_call": the engine
        makes a fresh Wasi from the grants for each call and closes it after)."""
        fds, self.fds = self.fds, {}
        for d in fds.values():
            self._release(d)
        self._drop_deferred(flush=False)        # (after its answer: no more host calls)
        for attr in ("clock", "random", "env"):
            self.host.drop(getattr(self, attr))
            setattr(self, attr, None)

    # ------------------------------------------------------------ directories

    def fd_readdir(self, fd, buf, length, cookie, out):
        """Entries from `cookie` on.  Cookies 1 and 2 follow '.' and '..'; after
        that the cookie after the n-th entry of the listing is n + 2 (n from 1),
        as under wasmtime: small, since wasi-libc's telldir gives them as a
        32-bit long (the host's cursors, ext4's 63-bit hashes, came back cut and
        seekdir resumed elsewhere).  The host's cursor after each entry is kept
        (d.cursors) to resume at any cookie; one past them is found by listing on
        from the last known.  It keeps one page (what one Directory.list
        returned) to serve the small buffers libc asks with; a listing from the
        start always asks the host again."""
        d = self._fd(fd, "dir")
        self._need(d, RIGHT_FD_READDIR)
        length &= 0xFFFFFFFF
        cookie &= U64
        data = bytearray()
        fresh = False                     # the first page was just fetched, for '.'
        while len(data) < length:
            if cookie < 2:
                if d.ino is None:         # the listing says it (Directory.list alone:
                    d.page = self._list_page(d, 2)    # an allow-list without stat)
                    fresh = True
                    if d.ino is None:     # (a listing that does not say: stat)
                        self._ino(d)
                # '..' gets the directory's own inode, as under wasmtime (the parent
                # may be outside the grant)
                name = b"." if cookie == 0 else b".."
                cookie += 1
                data += _DIRENT.pack(cookie, d.ino, len(name), FILETYPE_DIR) + name
                continue
            page = d.page
            if (cookie == 2 and not fresh) or page is None or cookie not in page[2]:
                page = d.page = self._list_page(d, cookie)
            fresh = False
            records, cookies, at, done = page
            i = at[cookie]
            if i == len(records):
                if done:
                    break
                d.page = self._list_page(d, cookie)
                continue
            j = i
            while j < len(records) and len(data) < length:
                data += records[j]
                j += 1
            cookie = cookies[j - 1]
        data = bytes(data[:length])       # a full buffer tells libc to ask again
        self.host.write(buf & 0xFFFFFFFF, data)
        self._u32(out, len(data))

    def _list_page(self, d: _Desc, cookie: int):
        """One page of the directory after the entry `cookie` (>= 2) names, which
        follows cookie - 2 entries: (dirent records, the cookie after each,
        {cookie: index of the record after it}, whether it is the last).  From the
        start (2), the directory as it is now: what was known of it is forgotten."""
        skip = cookie - 2                      # entries before the page
        if skip == 0:
            d.cursors = []
        known = d.cursors
        while True:                            # each page adds an entry, or ends
            have = min(skip, len(known))       # entries before the next page asked
            cursor = known[have - 1] if have else 0
            r, _ = self._call(d.cap, "Directory", "list", path="", cursor=cursor)
            if d.ino is None and r.inode:
                d.ino = r.inode
            entries = list(r.entries)
            if not entries and not r.done:     # (the host never ends a page on nothing)
                break
            del known[have:]                   # what the host says now
            known.extend(e.cursor for e in entries)
            if have + len(entries) <= skip and not r.done:
                continue                       # not there yet: on from the last entry
            records, cookies = [], []
            for j, e in enumerate(entries[skip - have:]):
                name, nxt = e.name.encode(), skip + j + 3
                records.append(_DIRENT.pack(nxt, e.inode, len(name),
                                            _KIND_VALUES.get(e.kind.raw, FILETYPE_UNKNOWN))
                               + name)
                cookies.append(nxt)
            at = {c: i + 1 for i, c in enumerate(cookies)}
            at[cookie] = 0
            return records, cookies, at, r.done
        raise _Fail(E.IO)

    # ------------------------------------------------------------ paths

    def _dir_path(self, dirfd, path_ptr, path_len, right) -> tuple[_Desc, str]:
        d = self._fd(dirfd, "dir")
        self._need(d, right)
        path = self._path(path_ptr, path_len)
        if not path:
            raise _Fail(E.NOENT)
        return d, path

    def path_open(self, dirfd, lookupflags, path_ptr, path_len, oflags, rights, _inheriting,
                  fdflags, out):
        oflags, fdflags, rights = oflags & 0xFFFF, fdflags & 0xFFFF, rights & U64
        # flags that no path could make valid are EINVAL before the path is looked
        # at (an empty path with O_DIRECTORY|O_CREAT was ENOENT), as under wasmtime
        if oflags & ~0xF or fdflags & ~FDFLAGS_ALL or oflags & OFLAGS_DIRECTORY and \
                oflags & (OFLAGS_CREAT | OFLAGS_EXCL | OFLAGS_TRUNC):
            self._fd(dirfd, "dir")
            raise _Fail(E.INVAL)
        d, path = self._dir_path(dirfd, path_ptr, path_len, RIGHT_PATH_OPEN)
        if oflags & OFLAGS_CREAT:
            self._need(d, RIGHT_PATH_CREATE_FILE)
        self._room()
        follow = bool(lookupflags & LOOKUP_SYMLINK_FOLLOW)
        read, write = bool(rights & RIGHT_FD_READ), bool(rights & RIGHT_FD_WRITE)
        if oflags & OFLAGS_DIRECTORY:
            fd = self._open_dir(d, path, follow, fdflags)
            if write:                    # a directory is opened for writing by nobody
                self.fd_close(fd)
                raise _Fail(E.ISDIR)
            return self._u32(out, fd)
        trunc = bool(oflags & OFLAGS_TRUNC)
        sync = "full" if fdflags & (FDFLAGS_SYNC | FDFLAGS_RSYNC) else \
            "data" if fdflags & FDFLAGS_DSYNC else "none"
        append = bool(fdflags & FDFLAGS_APPEND)
        try:
            cap, created = self._open_file(d, path, read, write or trunc, oflags, follow,
                                           append, sync)
        except HostCallFailed as e:
            # open(dir, O_RDONLY) opens the directory, as on Linux: also where
            # Directory.open is refused (allow = ["subdir", ...]: a directory is
            # Directory.subdir's, and it was refused with it); if that fails too,
            # the open's refusal is the answer
            why = errno_of(e)
            if why in (E.ISDIR, E.NOTCAPABLE) and not write and \
                    not oflags & (OFLAGS_CREAT | OFLAGS_TRUNC):
                if why == E.ISDIR:
                    return self._u32(out, self._open_dir(d, path, follow, fdflags))
                try:
                    fd = self._open_dir(d, path, follow, fdflags)
                except HostCallFailed:
                    raise e from None
                return self._u32(out, fd)
            raise
        mask = ~0 if read else ~RIGHT_FD_READ
        mask &= ~0 if write else ~RIGHT_FD_WRITE
        desc = _Desc("file", cap, readable=read, writable=write, append=append,
                     flags=fdflags, base=FILE_RIGHTS & mask & d.inheriting)
        if trunc and not created:
            try:
                self._call(cap, "File", "truncate", size=0)
            except HostCallFailed:
                self._release(desc)
                raise
        self._u32(out, self._new_fd(desc))

    def _open_file(self, d: _Desc, path, read, write, oflags, follow, append, sync):
        """(file capability, whether it was created): Directory.open for an existing
        file, Directory.create for a new one (two methods, so that an allow-list
        can tell opening from creating).  Directory.create never follows a link
        (O_EXCL): O_CREAT through a symbolic link whose target does not exist
        makes that target, as Linux does, by reading the link and creating where
        it leads, itself a path the supervisor resolves beneath the directory
        (an absolute target, or one that climbs out: ENOTCAPABLE)."""
        mode = "readWrite" if read and write else "write" if write else "read"
        # O_CREAT with a trailing '/' never opens anything: the kernel's create says
        # why (EISDIR, or ENOENT/ENOTDIR for the directory it would be in), as open(2)
        # does for a file, a link or nothing by that name (an open first said ENOTDIR)
        if oflags & OFLAGS_CREAT and (oflags & OFLAGS_EXCL or path.endswith("/")):
            made = dict(path=path, readable=read, append=append, sync=sync)
            try:
                return self._one_cap(self._call(d.cap, "Directory", "create", **made)[1]), True
            except HostCallFailed as e:   # "./": EEXIST is O_EXCL's; without it, EISDIR
                if oflags & OFLAGS_EXCL or errno_of(e) != E.EXIST:
                    raise
                raise _Fail(E.ISDIR) from None
        for _ in range(MAX_LINKS + 1):
            opened = dict(path=path, mode=mode, follow=follow, append=append, sync=sync)
            made = dict(path=path, readable=read, append=append, sync=sync)
            try:
                return self._one_cap(self._call(d.cap, "Directory", "open", **opened)[1]), False
            except HostCallFailed as e:
                # not there, or opening refused (an allow-list of "create" without
                # "open": a new file is still made, as with O_EXCL; one that exists
                # stays refused, by the open after create's EEXIST)
                if not oflags & OFLAGS_CREAT or errno_of(e) not in (E.NOENT, E.NOTCAPABLE):
                    raise
            try:
                return self._one_cap(self._call(d.cap, "Directory", "create", **made)[1]), True
            except HostCallFailed as e:       # the name is taken: made meanwhile, or a link
                if errno_of(e) != E.EXIST:
                    raise
            try:
                return self._one_cap(self._call(d.cap, "Directory", "open", **opened)[1]), False
            except HostCallFailed as e:
                if not follow or errno_of(e) != E.NOENT or path.endswith("/"):
                    raise
                try:                          # a link to nothing: create its target
                    target = self._readlink(d, path).decode()
                except HostCallFailed as r:
                    # an absolute target leads outside: that is the answer (its text
                    # is not given); anything else, the open's own refusal
                    if (r.reason or "").startswith("ENOTCAPABLE: "):
                        raise
                    raise e from None
            if not target:
                raise _Fail(E.NOENT)
            parent = path.rpartition("/")[0]
            path = target if target.startswith("/") or not parent else f"{parent}/{target}"
        raise _Fail(E.LOOP)

    def _open_dir(self, d: _Desc, path: str, follow: bool, fdflags: int) -> int:
        r, caps = self._call(d.cap, "Directory", "subdir", path=path, follow=follow)
        desc = _Desc("dir", self._one_cap(caps), flags=fdflags,
                     base=DIR_RIGHTS & d.inheriting, inheriting=DIR_INHERITING & d.inheriting,
                     root=self.host.hold(d.root), rel=f"{d.rel}/{path}")
        # its inode, for rename and link between two descriptors (_two) and '.' in
        # readdir: from the answer, so that neither needs Directory.stat
        desc.ino = r.inode or None
        return self._new_fd(desc)

    def _two(self, fd_a, path_a, fd_b, path_b) -> tuple[int, dict]:
        """One directory capability and the fields for an operation on two paths:
        the descriptor's own if they are the same one, else their common preopen
        (they must come from one grant: across two, EXDEV), each path relative to
        its descriptor's directory, named by its path from the preopen and its
        inode.  The supervisor resolves each path beneath that directory (it
        cannot climb out of it, as with one descriptor) and checks the inode, so
        a directory moved since it was opened is never mistaken for what now has
        its old name (EXDEV instead)."""
        if fd_a.cap == fd_b.cap:
            return fd_a.cap, {"from": path_a, "to": path_b}
        if fd_a.root != fd_b.root:
            raise _Fail(E.XDEV)
        fields = {"from": path_a, "to": path_b}
        for side, d in (("from", fd_a), ("to", fd_b)):
            if d.cap != d.root:
                fields[f"{side}Dir"] = d.rel
                fields[f"{side}Inode"] = self._ino(d)
        return fd_a.root, fields

    def _between(self, fd_a: _Desc, fd_b: _Desc, call):
        """call() a rename or link between two directory descriptors (_two): EXDEV
        says one of their directories was moved or removed since it was opened;
        removed, it is ENOENT, as Linux and wasmtime say of a directory removed."""
        try:
            return call()
        except HostCallFailed as e:
            if fd_a.cap == fd_b.cap or errno_of(e) != E.XDEV:
                raise
            for d in (fd_a, fd_b):
                if d.cap != d.root:
                    try:
                        r, _ = self._call(d.cap, "Directory", "stat", path="", follow=True)
                    except HostCallFailed:
                        continue                    # stat refused (allow): EXDEV stands
                    if r.info.links == 0:
                        raise _Fail(E.NOENT) from None
            raise

    def _ino(self, d: _Desc) -> int:
        """The inode of a directory descriptor's own directory (asked once)."""
        if d.ino is None:
            r, _ = self._call(d.cap, "Directory", "stat", path="", follow=True)
            d.ino = r.info.inode
        return d.ino

    def path_filestat_get(self, dirfd, flags, path_ptr, path_len, out):
        d, path = self._dir_path(dirfd, path_ptr, path_len, RIGHT_PATH_FILESTAT_GET)
        r, _ = self._call(d.cap, "Directory", "stat", path=path,
                          follow=bool(flags & LOOKUP_SYMLINK_FOLLOW))
        self._filestat(out, r.info)

    def path_filestat_set_times(self, dirfd, flags, path_ptr, path_len, atim, mtim, fst_flags):
        times = self._times(atim, mtim, fst_flags)
        d, path = self._dir_path(dirfd, path_ptr, path_len, RIGHT_PATH_FILESTAT_SET_TIMES)
        self._call(d.cap, "Directory", "setTimes", path=path,
                   follow=bool(flags & LOOKUP_SYMLINK_FOLLOW), **times)

    def path_create_directory(self, dirfd, path_ptr, path_len):
        d, path = self._dir_path(dirfd, path_ptr, path_len, RIGHT_PATH_CREATE_DIRECTORY)
        self._call(d.cap, "Directory", "mkdir", path=path)

    def path_remove_directory(self, dirfd, path_ptr, path_len):
        d, path = self._dir_path(dirfd, path_ptr, path_len, RIGHT_PATH_REMOVE_DIRECTORY)
        self._call(d.cap, "Directory", "rmdir", path=path)

    def path_unlink_file(self, dirfd, path_ptr, path_len):
        d, path = self._dir_path(dirfd, path_ptr, path_len, RIGHT_PATH_UNLINK_FILE)
        self._call(d.cap, "Directory", "unlink", path=path)

    def path_rename(self, dirfd, old_ptr, old_len, newfd, new_ptr, new_len):
        d, old = self._dir_path(dirfd, old_ptr, old_len, RIGHT_PATH_RENAME_SOURCE)
        n, new = self._dir_path(newfd, new_ptr, new_len, RIGHT_PATH_RENAME_TARGET)
        cap, fields = self._two(d, old, n, new)
        self._between(d, n, lambda: self._call(cap, "Directory", "rename", **fields))

    def path_link(self, dirfd, flags, old_ptr, old_len, newfd, new_ptr, new_len):
        d, old = self._dir_path(dirfd, old_ptr, old_len, RIGHT_PATH_LINK_SOURCE)
        n, new = self._dir_path(newfd, new_ptr, new_len, RIGHT_PATH_LINK_TARGET)
        if flags & LOOKUP_SYMLINK_FOLLOW:   # following would need a path outside: refused
            raise _Fail(E.INVAL)
        cap, fields = self._two(d, old, n, new)
        self._new_name(n, new, lambda: self._between(
            d, n, lambda: self._call(cap, "Directory", "link", **fields)))

    def path_symlink(self, old_ptr, old_len, dirfd, new_ptr, new_len):
        target = self._path(old_ptr, old_len)
        d, path = self._dir_path(dirfd, new_ptr, new_len, RIGHT_PATH_SYMLINK)
        self._new_name(d, path, lambda: self._call(d.cap, "Directory", "symlink",
                                                   target=target, path=path))

    def _new_name(self, d: _Desc, path: str, make):
        """make() a link named `path` beneath `d`.  A name ending in '/' that is
        taken (EEXIST from the host, as Linux says) is answered as wasmtime and
        the WASI test suite's path_symlink_trailing_slashes require: what
        'name/' is decides, followed as a trailing '/' is: a directory (or a
        link to one) EEXIST, a file or a link to one ENOTDIR, a link to
        nothing ENOENT, a link that leads out EPERM."""
        try:
            make()
        except HostCallFailed as e:
            if not path.endswith("/") or errno_of(e) != E.EXIST:
                raise
            try:
                self._call(d.cap, "Directory", "stat", path=path, follow=True)
            except HostCallFailed as why:
                if errno_of(why) == E.NOTCAPABLE:     # stat refused (allow): EEXIST
                    raise e from None
                raise why from None
            raise

    def path_readlink(self, dirfd, path_ptr, path_len, buf, buf_len, out):
        d, path = self._dir_path(dirfd, path_ptr, path_len, RIGHT_PATH_READLINK)
        target = self._readlink(d, path, buf_len & 0xFFFFFFFF)  # cut to the buffer, as wasmtime
        self.host.write(buf & 0xFFFFFFFF, target)
        self._u32(out, len(target))

    def _readlink(self, d: _Desc, path: str, most: int | None = None) -> bytes:
        """The first `most` bytes (all: None) of the target of the link `path`
        beneath `d`, asked in parts: a target longer than one answer to this
        compartment may carry (its message_size less the answer's structure: a
        target of 1,000 bytes at message_size = "1KiB") failed ENAMETOOLONG, which
        wasmtime never says of a link that is there.  A link replaced between two
        parts (another length or digest of its target) is read again from the start."""
        for _ in range(READLINK_RETRIES):
            got, first = b"", None
            while True:
                r, _ = self._call(d.cap, "Directory", "readlink", path=path,
                                  offset=len(got), partial=True)
                part = r.target.encode()
                if first is None:
                    first = (r.length, r.digest)
                elif (r.length, r.digest) != first:
                    break                           # replaced meanwhile: start over
                got += part
                if not part or len(got) >= r.length or (most is not None and len(got) >= most):
                    return got[:most] if most is not None else got
        raise _Fail(E.AGAIN)
