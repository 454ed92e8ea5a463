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
  one line per call, or a file, appended to).  Without such a grant the
  descriptor is closed (EBADF).
* Arguments: the compartment's name, then the environment grant's `args`.
  Variables: its `vars`.  No environment grant: no arguments beyond the name
  and no variables.
* Clocks need a clock grant, random_get a random grant (ENOTCAPABLE without).
* Rename within one directory grant (across two: EXDEV).  No sockets, no
  symbolic links, no hard links, no timestamps to set: ENOTSUP.

Errors from the supervisor carry a POSIX errno name first in their reason
("ENOENT: ..."); anything refused by attenuation (an allow-list, a revoked or
used-up grant) is ENOTCAPABLE.
"""
from __future__ import annotations

import re
import struct
import time

from capnp_schemas import host as host_schema, protocol
from capnp_schemas.payloads import method_structs
from capnp_schemas.protocol import Content

# wasi_snapshot_preview1 errno values (the WASI witx `errno` enum)
ERRNO = {
    "SUCCESS": 0, "E2BIG": 1, "EACCES": 2, "EAGAIN": 6, "EBADF": 8, "EBUSY": 10,
    "EDQUOT": 19, "EEXIST": 20, "EFAULT": 21, "EFBIG": 22, "EINVAL": 28, "EIO": 29,
    "EISDIR": 31, "ELOOP": 32, "EMFILE": 33, "ENAMETOOLONG": 37, "ENOENT": 44, "ENOMEM": 48,
    "ENOSPC": 51, "ENOSYS": 52, "ENOTDIR": 54, "ENOTEMPTY": 55, "ENOTSOCK": 57, "ENOTSUP": 58,
    "EOVERFLOW": 61, "EPERM": 63, "EROFS": 69, "ESPIPE": 70, "EXDEV": 75, "ENOTCAPABLE": 76,
}
E = type("E", (), {k[1:]: v for k, v in ERRNO.items() if k.startswith("E") and k != "E2BIG"})

FILETYPE_CHAR, FILETYPE_DIR, FILETYPE_FILE, FILETYPE_OTHER = 2, 3, 4, 0
FDFLAGS_APPEND = 1
OFLAGS_CREAT, OFLAGS_DIRECTORY, OFLAGS_EXCL, OFLAGS_TRUNC = 1, 2, 4, 8
RIGHT_FD_READ, RIGHT_FD_SEEK, RIGHT_FD_TELL, RIGHT_FD_WRITE = 1 << 1, 1 << 2, 1 << 5, 1 << 6
ALL_RIGHTS = (1 << 29) - 1
CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_PROCESS, CLOCK_THREAD = 0, 1, 2, 3
MAX_IO = 1 << 20            # bytes moved by one read or write call (the File limit)
MAX_FDS = 1024
MAX_PATH = 4096
RANDOM_CHUNK = 65536        # Random.bytes' per-call bound
MAX_SLEEP = 3600.0          # seconds one poll_oneoff may sleep (it returns, and may sleep again)
_ERRNO_PREFIX = re.compile(r"(E[A-Z0-9]+): ")

_KINDS = {"file": FILETYPE_FILE, "directory": FILETYPE_DIR, "other": FILETYPE_OTHER}
_M = {}                     # (interface name, method) -> (interface id, ordinal, params, results)
for _iface in ("Log", "Clock", "Random", "Directory", "File", "Environment"):
    _mod = getattr(host_schema, _iface)
    for _ordinal, _method in enumerate(_mod.schema.node.interface.methods):
        _M[_iface, _method.name] = (_mod.schema.node.id, _ordinal,
                                    *method_structs(_mod, _method.name))


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
    if m and m.group(1) in ERRNO:
        return ERRNO[m.group(1)]
    return {"overloaded": E.AGAIN, "disconnected": E.IO,
            "unimplemented": E.NOTSUP}.get(e.type, E.NOTCAPABLE)


class _Desc:
    """One open descriptor."""
    __slots__ = ("kind", "cap", "mount", "offset", "readable", "writable", "append",
                 "line", "entries")

    def __init__(self, kind, cap, *, mount=None, readable=False, writable=False, append=False):
        self.kind = kind            # "dir" | "file" | "log"
        self.cap = cap              # import id: our own reference, dropped when closed
        self.mount = mount          # preopened directories: the name the program sees
        self.offset = 0
        self.readable, self.writable, self.append = readable, writable, append
        self.line = bytearray()     # log: the unfinished line
        self.entries = None         # dir: listing cached by fd_readdir


class Wasi:
    """The WASI state of one compartment.  `host` is the engine: guest memory
    (read, write), capability calls (invoke) and import ownership (adopt, drop)."""

    def __init__(self, host, name: str, max_io: int = MAX_IO):
        self.host = host
        self.name = name
        self.max_io = max_io
        self.fds: dict[int, _Desc] = {}
        self.clock = self.random = self.env = None
        self._argv = self._environ = None

    def grant(self, grants):
        """`grants`: (name, kind, mount, import id) for each granted capability.
        Each one used here gets a reference of its own (host.hold), so that the
        guest releasing its wsuper handle to a grant does not pull it from
        under a descriptor."""
        by_name = {g[0]: g for g in grants}
        for fd, stream in enumerate(("stdin", "stdout", "stderr")):
            g = by_name.get(stream)
            if g and g[1] in (("file",) if fd == 0 else ("log", "file")):
                self.fds[fd] = _Desc(g[1], self.host.hold(g[3]),
                                     readable=g[1] == "file" and fd == 0, writable=fd > 0,
                                     append=True)
        fd = 3
        for gname, kind, mount, cap in grants:
            if kind == "directory":
                self.fds[fd] = _Desc("dir", self.host.hold(cap), mount=mount or f"/{gname}")
                fd += 1
            elif kind in ("clock", "random", "environment"):
                attr = {"clock": "clock", "random": "random", "environment": "env"}[kind]
                if getattr(self, attr) is None:      # preflight refuses two of a kind
                    setattr(self, attr, self.host.hold(cap))

    # ------------------------------------------------------------ plumbing

    def function(self, name: str):
        """The host function for one wasi_snapshot_preview1 import (ENOSYS if unknown)."""
        impl = getattr(self, name, None) or self._nosys
        def call(*args):
            try:
                r = impl(*args)
                return 0 if r is None else r
            except _Fail as f:
                return f.errno
            except HostCallFailed as e:
                return errno_of(e)
            except (ValueError, OverflowError, struct.error, UnicodeError):
                return E.INVAL           # arguments no call could mean (huge, negative)
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
                                           traversal_limit_in_words=1 << 20)
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
        if kinds and d.kind not in kinds:
            raise _Fail(E.NOTDIR if kinds == ("dir",) else E.BADF)
        return d

    def _new_fd(self, desc: _Desc) -> int:
        if len(self.fds) >= MAX_FDS:
            self.host.drop(desc.cap)
            raise _Fail(E.MFILE)
        fd = 3
        while fd in self.fds:
            fd += 1
        self.fds[fd] = desc
        return fd

    def _u32(self, ptr, value):
        self.host.write(ptr & 0xFFFFFFFF, struct.pack("<I", value & 0xFFFFFFFF))

    def _u64(self, ptr, value):
        self.host.write(ptr & 0xFFFFFFFF, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def _path(self, ptr, length) -> str:
        length &= 0xFFFFFFFF
        if length > MAX_PATH:
            raise _Fail(E.NAMETOOLONG)
        try:
            return self.host.read(ptr & 0xFFFFFFFF, length).decode("utf-8")
        except UnicodeDecodeError:
            raise _Fail(E.INVAL) from None

    def _iovecs(self, ptr, count):
        count &= 0xFFFFFFFF
        if count > 1024:
            raise _Fail(E.INVAL)
        raw = self.host.read(ptr & 0xFFFFFFFF, 8 * count)
        return [struct.unpack_from("<II", raw, 8 * i) for i in range(count)]

    def _gather(self, iovs_ptr, count) -> bytes:
        out, left = [], self.max_io
        for buf, length in self._iovecs(iovs_ptr, count):
            take = min(length, left)
            out.append(self.host.read(buf, take))
            left -= take
            if not left:
                break
        return b"".join(out)

    def _read_into(self, d: _Desc, offset: int, iovs_ptr, count) -> int:
        """Read at `offset` into the guest's buffers (at most max_io); bytes read."""
        iovecs = self._iovecs(iovs_ptr, count)
        want = min(self.max_io, sum(length for _buf, length in iovecs))
        data = self._read_at(d, offset, want)
        pos = 0
        for buf, length in iovecs:
            if pos >= len(data):
                break
            chunk = data[pos:pos + length]
            self.host.write(buf, chunk)
            pos += len(chunk)
        return len(data)

    # ------------------------------------------------------------ args, environment

    def _strings(self, which) -> list[bytes]:
        if self._argv is None:
            argv, environ = [self.name], []
            if self.env is not None:
                r, _ = self._call(self.env, "Environment", "args")
                argv += list(r.args)
                r, _ = self._call(self.env, "Environment", "vars")
                environ = [f"{v.name}={v.value}" for v in r.vars]
            self._argv = [a.encode() + b"\0" for a in argv]
            self._environ = [v.encode() + b"\0" for v in environ]
        return self._argv if which == "args" else self._environ

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
        if clock_id in (CLOCK_PROCESS, CLOCK_THREAD):   # this engine's own CPU time
            ns = time.process_time_ns()
        else:
            r, _ = self._call(self.clock, "Clock", "wall" if clock_id == CLOCK_REALTIME
                              else "monotonic")
            ns = r.ns
        self._u64(out, ns)

    def random_get(self, buf, length):
        if self.random is None:
            raise _Fail(E.NOTCAPABLE)
        buf, length = buf & 0xFFFFFFFF, length & 0xFFFFFFFF
        while length:
            n = min(length, RANDOM_CHUNK)
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

    def poll_oneoff(self, subs_ptr, events_ptr, count, nevents_ptr):
        """Clock subscriptions sleep (an absolute time needs the clock grant, to know
        how long that is); descriptors are always ready."""
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
                if flags & 1:                  # absolute: how far is it from now?
                    if self.clock is None or clock not in (CLOCK_REALTIME, CLOCK_MONOTONIC):
                        ready.append((userdata, E.NOTCAPABLE if self.clock is None
                                      else E.NOTSUP, tag))
                        continue
                    r, _ = self._call(self.clock, "Clock", "wall" if clock == CLOCK_REALTIME
                                      else "monotonic")
                    timeout = max(0, timeout - r.ns)
                timers.append((timeout, userdata))
            elif tag in (1, 2):
                (fd,) = struct.unpack_from("<I", raw, 48 * i + 16)
                ready.append((userdata, 0 if fd in self.fds else E.BADF, tag))
            else:
                raise _Fail(E.INVAL)
        if not ready and timers:
            timeout, _ = min(timers)
            time.sleep(min(timeout / 1e9, MAX_SLEEP))
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
            raise _Fail(E.INVAL)
        self.host.write(buf & 0xFFFFFFFF, name)

    def fd_close(self, fd):
        d = self._fd(fd)
        del self.fds[fd]
        self._flush(d)
        self.host.drop(d.cap)

    def fd_renumber(self, fd, to):
        d = self._fd(fd)
        self._fd(to)
        if fd != to:
            self.fd_close(to)
            self.fds[to] = self.fds.pop(fd)
        del d

    def _rights(self, d: _Desc) -> int:
        if d.kind == "dir":
            return ALL_RIGHTS & ~(RIGHT_FD_READ | RIGHT_FD_WRITE)
        base = ALL_RIGHTS & ~(RIGHT_FD_READ | RIGHT_FD_WRITE)
        if d.kind == "log":     # a terminal to libc (isatty): stdout is line-buffered
            base &= ~(RIGHT_FD_SEEK | RIGHT_FD_TELL)
        return base | (RIGHT_FD_READ if d.readable else 0) | (RIGHT_FD_WRITE if d.writable else 0)

    def fd_fdstat_get(self, fd, out):
        d = self._fd(fd)
        filetype = {"dir": FILETYPE_DIR, "file": FILETYPE_FILE, "log": FILETYPE_CHAR}[d.kind]
        flags = FDFLAGS_APPEND if d.append and d.kind == "file" else 0
        rights = self._rights(d)
        inheriting = ALL_RIGHTS if d.kind == "dir" else 0
        self.host.write(out & 0xFFFFFFFF, struct.pack("<BxHxxxxQQ", filetype, flags, rights,
                                                       inheriting))

    def fd_fdstat_set_flags(self, fd, flags):
        d = self._fd(fd)
        if (flags & 0xFFFF) != (FDFLAGS_APPEND if d.append and d.kind == "file" else 0):
            raise _Fail(E.NOTSUP)

    def fd_fdstat_set_rights(self, fd, _base, _inheriting):
        self._fd(fd)
        raise _Fail(E.NOTSUP)

    def _filestat(self, out, info=None, filetype=None):
        if info is not None:
            filetype = _KINDS.get(str(info.kind), FILETYPE_OTHER)
            size, mtime, inode = info.size, info.modifiedNs, info.inode
        else:
            size = mtime = inode = 0
        self.host.write(out & 0xFFFFFFFF, struct.pack("<QQBxxxxxxxQQQQQ", 0, inode, filetype, 1,
                                                       size, mtime, mtime, mtime))

    def fd_filestat_get(self, fd, out):
        d = self._fd(fd)
        if d.kind == "log":
            return self._filestat(out, filetype=FILETYPE_CHAR)
        if d.kind == "dir":
            r, _ = self._call(d.cap, "Directory", "stat", path="")
        else:
            r, _ = self._call(d.cap, "File", "stat")
        self._filestat(out, r.info)

    def fd_filestat_set_size(self, fd, size):
        d = self._fd(fd, "file")
        if size < 0:
            raise _Fail(E.INVAL)
        self._call(d.cap, "File", "truncate", size=size)

    def fd_filestat_set_times(self, fd, *_):
        self._fd(fd)
        raise _Fail(E.NOTSUP)

    def fd_advise(self, fd, *_):
        self._fd(fd, "file")

    def fd_allocate(self, fd, *_):
        self._fd(fd, "file")
        raise _Fail(E.NOTSUP)

    def fd_sync(self, fd):          # the supervisor writes through at once
        self._flush(self._fd(fd))

    fd_datasync = fd_sync

    def fd_seek(self, fd, offset, whence, out):
        d = self._seekable(fd)
        if whence == 0:
            base = 0
        elif whence == 1:
            base = d.offset
        elif whence == 2:
            r, _ = self._call(d.cap, "File", "stat")
            base = r.info.size
        else:
            raise _Fail(E.INVAL)
        new = base + offset
        if new < 0:
            raise _Fail(E.INVAL)
        d.offset = new
        self._u64(out, new)

    def fd_tell(self, fd, out):
        self._u64(out, self._seekable(fd).offset)

    def _seekable(self, fd) -> _Desc:
        d = self._fd(fd)
        if d.kind != "file":
            raise _Fail(E.SPIPE if d.kind == "log" else E.BADF)
        return d

    def _file(self, fd, want: str) -> _Desc:
        """An open file descriptor that allows `want` ("readable" or "writable")."""
        d = self._fd(fd)
        if d.kind != "file" or not getattr(d, want):
            raise _Fail(E.BADF if d.kind != "dir" else E.ISDIR)
        return d

    def fd_read(self, fd, iovs, count, out):
        d = self._file(fd, "readable")
        n = self._read_into(d, d.offset, iovs, count)
        d.offset += n
        self._u32(out, n)

    def fd_pread(self, fd, iovs, count, offset, out):
        d = self._file(fd, "readable")
        if offset < 0:
            raise _Fail(E.INVAL)
        self._u32(out, self._read_into(d, offset, iovs, count))

    def _read_at(self, d, offset, count) -> bytes:
        if count == 0:
            return b""
        r, _ = self._call(d.cap, "File", "read", offset=offset, count=count)
        return bytes(r.data)[:count]

    def fd_write(self, fd, iovs, count, out):
        d = self._fd(fd)
        data = self._gather(iovs, count)
        if d.kind == "dir" or not d.writable:
            raise _Fail(E.BADF if d.kind != "dir" else E.ISDIR)
        if d.kind == "log":
            self._log(d, data)
        elif d.append:
            if data:
                r, _ = self._call(d.cap, "File", "append", data=data)
                d.offset = r.offset + len(data)
        elif data:
            r, _ = self._call(d.cap, "File", "write", offset=d.offset, data=data)
            d.offset += r.written
            data = data[:r.written]
        self._u32(out, len(data))

    def fd_pwrite(self, fd, iovs, count, offset, out):
        d = self._file(fd, "writable")
        if offset < 0:
            raise _Fail(E.INVAL)
        data = self._gather(iovs, count)
        if data:
            if d.append:    # as Linux does with O_APPEND: at the end, whatever the offset
                self._call(d.cap, "File", "append", data=data)
            else:
                r, _ = self._call(d.cap, "File", "write", offset=offset, data=data)
                data = data[:r.written]
        self._u32(out, len(data))

    def _log(self, d: _Desc, data: bytes):
        d.line += data
        while b"\n" in d.line:
            line, _, rest = bytes(d.line).partition(b"\n")
            d.line = bytearray(rest)
            self._call(d.cap, "Log", "write", text=line.decode("utf-8", "replace"))
        if len(d.line) > 4096:
            self._flush(d)

    def _flush(self, d: _Desc):
        if d.kind == "log" and d.line:
            line, d.line = bytes(d.line), bytearray()
            self._call(d.cap, "Log", "write", text=line.decode("utf-8", "replace"))

    def flush_all(self):
        """At exit: the unfinished lines of stdout and stderr."""
        for d in self.fds.values():
            try:
                self._flush(d)
            except HostCallFailed:
                pass

    def close_all(self):
        """Drop every reference this state holds (instance = "per_call": the engine
        makes a fresh Wasi from the grants for each call and closes it after)."""
        fds, self.fds = self.fds, {}
        for d in fds.values():
            self.host.drop(d.cap)
        for attr in ("clock", "random", "env"):
            self.host.drop(getattr(self, attr))
            setattr(self, attr, None)

    def fd_readdir(self, fd, buf, length, cookie, out):
        d = self._fd(fd, "dir")
        length &= 0xFFFFFFFF
        if cookie == 0 or d.entries is None:
            r, _ = self._call(d.cap, "Directory", "list", path="")
            d.entries = [(".", FILETYPE_DIR), ("..", FILETYPE_DIR)] + \
                [(e.name, _KINDS.get(str(e.kind), FILETYPE_OTHER)) for e in r.entries]
        if cookie < 0:
            raise _Fail(E.INVAL)
        data = bytearray()
        for i in range(cookie, len(d.entries)):
            if len(data) >= length:
                break
            name, filetype = d.entries[i]
            raw = name.encode()
            data += struct.pack("<QQIBxxx", i + 1, i + 1, len(raw), filetype) + raw
        data = bytes(data[:length])
        self.host.write(buf & 0xFFFFFFFF, data)
        self._u32(out, len(data))

    # ------------------------------------------------------------ paths

    def path_open(self, dirfd, _lookup, path_ptr, path_len, oflags, rights, _inheriting,
                  fdflags, out):
        d = self._fd(dirfd, "dir")
        path = self._path(path_ptr, path_len)
        if oflags & OFLAGS_DIRECTORY:
            if oflags & (OFLAGS_CREAT | OFLAGS_TRUNC):
                raise _Fail(E.INVAL)
            return self._u32(out, self._open_dir(d, path))
        read = bool(rights & RIGHT_FD_READ)
        write = bool(rights & RIGHT_FD_WRITE) or bool(oflags & OFLAGS_TRUNC)
        append = bool(fdflags & FDFLAGS_APPEND)
        mode = "readWrite" if read and write else "write" if write else "read"
        if append and not read:
            mode = "append"
        try:
            cap = self._open_file(d, path, mode, oflags)
        except HostCallFailed as e:
            if errno_of(e) == E.ISDIR and not write:   # open(".", O_RDONLY)
                return self._u32(out, self._open_dir(d, path))
            raise
        desc = _Desc("file", cap, readable=read, writable=write or append, append=append)
        if oflags & OFLAGS_TRUNC:
            try:
                self._call(cap, "File", "truncate", size=0)
            except HostCallFailed:
                self.host.drop(cap)
                raise
        self._u32(out, self._new_fd(desc))

    def _open_dir(self, d: _Desc, path: str) -> int:
        _, caps = self._call(d.cap, "Directory", "subdir", path=path)
        return self._new_fd(_Desc("dir", self._one_cap(caps)))

    def _open_file(self, d: _Desc, path: str, mode: str, oflags: int) -> int:
        if oflags & OFLAGS_CREAT and oflags & OFLAGS_EXCL:
            return self._create(d, path, mode)
        try:
            _, caps = self._call(d.cap, "Directory", "open", path=path, mode=mode)
            return self._one_cap(caps)
        except HostCallFailed as e:
            if not oflags & OFLAGS_CREAT or errno_of(e) != E.NOENT:
                raise
        try:
            return self._create(d, path, mode)
        except HostCallFailed as e:           # created meanwhile by someone else
            if errno_of(e) != E.EXIST:
                raise
            _, caps = self._call(d.cap, "Directory", "open", path=path, mode=mode)
            return self._one_cap(caps)

    def _create(self, d: _Desc, path: str, mode: str) -> int:
        _, caps = self._call(d.cap, "Directory", "create", path=path)
        cap = self._one_cap(caps)
        if mode in ("write", "append"):
            return cap
        self.host.drop(cap)               # create gives a write-only file: reopen
        _, caps = self._call(d.cap, "Directory", "open", path=path, mode=mode)
        return self._one_cap(caps)

    def path_filestat_get(self, dirfd, _flags, path_ptr, path_len, out):
        d = self._fd(dirfd, "dir")
        r, _ = self._call(d.cap, "Directory", "stat", path=self._path(path_ptr, path_len))
        self._filestat(out, r.info)

    def path_create_directory(self, dirfd, path_ptr, path_len):
        d = self._fd(dirfd, "dir")
        self._call(d.cap, "Directory", "mkdir", path=self._path(path_ptr, path_len))

    def _remove(self, dirfd, path_ptr, path_len, want_dir: bool):
        d = self._fd(dirfd, "dir")
        path = self._path(path_ptr, path_len)
        r, _ = self._call(d.cap, "Directory", "stat", path=path)
        is_dir = str(r.info.kind) == "directory"
        if is_dir != want_dir:
            raise _Fail(E.NOTDIR if want_dir else E.ISDIR)
        self._call(d.cap, "Directory", "remove", path=path)

    def path_remove_directory(self, dirfd, path_ptr, path_len):
        self._remove(dirfd, path_ptr, path_len, True)

    def path_unlink_file(self, dirfd, path_ptr, path_len):
        self._remove(dirfd, path_ptr, path_len, False)

    def path_filestat_set_times(self, dirfd, *_):
        self._fd(dirfd, "dir")
        raise _Fail(E.NOTSUP)

    def path_rename(self, dirfd, old_ptr, old_len, newfd, new_ptr, new_len):
        d, new = self._fd(dirfd, "dir"), self._fd(newfd, "dir")
        if d.cap != new.cap:             # two capabilities: no rename across them
            raise _Fail(E.XDEV)
        self._call(d.cap, "Directory", "rename", **{"from": self._path(old_ptr, old_len),
                                                    "to": self._path(new_ptr, new_len)})

    def path_link(self, dirfd, _flags, _p, _l, newfd, *_):
        self._fd(dirfd, "dir")
        self._fd(newfd, "dir")
        raise _Fail(E.NOTSUP)

    def path_symlink(self, _p, _l, dirfd, *_):
        self._fd(dirfd, "dir")
        raise _Fail(E.NOTSUP)

    def path_readlink(self, dirfd, *_):
        self._fd(dirfd, "dir")
        raise _Fail(E.INVAL)            # no path beneath a grant is a symbolic link
