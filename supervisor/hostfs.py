"""Host files and directories, served by the supervisor (engines have no file access).

Every path a compartment names is resolved by the kernel beneath the granted
directory's descriptor: openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
RESOLVE_NO_XDEV.
'..' and symbolic links are followed only while they stay beneath it; an
absolute path, a link with an absolute target, or a '..' that would climb out
fails with ENOTCAPABLE, whether the link was planted before or created during
the run, and a rename racing with an open cannot lead outside: nothing is
checked by path and then opened.  Operations on a name (unlink, rmdir,
rename, link, symlink, mkdir) resolve its parent that way and hand the kernel
one component, which it never follows.

Only regular files and directories are ever opened.  A path is first opened
with O_PATH (no side effects, never blocks), its type checked with fstat, and
then that same inode is reopened for I/O through /proc/self/fd: a FIFO, a
socket or a device inside a grant gets ENOTSUP and is never opened.

Attenuation is part of each object and carried to what it opens: a read-only
directory opens read-only files and read-only subdirectories; an append-only
one opens files with O_APPEND (so the kernel refuses to overwrite, whatever
the interface does) and can neither remove, rename, truncate nor set times
(docs/policy-reference.md has the table, operation by operation).

This module is called by the supervisor's host-capability layer in worker
threads: methods of one object may run concurrently, and with its close().
The descriptor each object owns is closed only when no call is using it, and
the write quota shared by everything opened through a grant is locked.  Every
refusal or failure is an FsError with an errno name; nothing else escapes.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import platform
import stat as st
import struct
import threading
import time

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
SYS_OPENAT2 = 437                         # the same on every architecture
SYS_GETDENTS64 = {"x86_64": 217, "aarch64": 61, "riscv64": 61, "loongarch64": 61,
                  "ppc64le": 202, "s390x": 220}.get(platform.machine())
RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_BENEATH = 0x01, 0x02, 0x08
AT_EMPTY_PATH = 0x1000
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
MAX_READ = 1 << 20              # bytes one File.read returns at most
MAX_PATH = 4096                 # bytes of a path or a link target
OFF_MAX = (1 << 63) - 1         # the largest file offset or size (off_t)
DEFAULT_MAX_BYTES = 1 << 20     # results size when the caller states no limit
LIST_PAGE_BYTES = 64 << 10      # one page of a listing: at most this much ...
LIST_PAGE_ENTRIES = 2048        # ... and this many entries
_RESULT_SLACK = 64              # results' own structure around data or entries
RESULT_SLACK = _RESULT_SLACK
_GETDENTS_BUF = 32 << 10
#: openat2 tried again: EAGAIN (a rename raced a '..' it resolved), and ELOOP (_beneath)
_RETRIES = 8

MODES = {"read": os.O_RDONLY, "write": os.O_WRONLY, "append": os.O_WRONLY,
         "readWrite": os.O_RDWR}
SYNC = {"none": 0, "data": os.O_DSYNC, "full": os.O_SYNC}
TIME_SET = ("keep", "now", "to")

_ERRNO_CODE = {errno.EXDEV: "ENOTCAPABLE"}     # from resolving: it would leave the grant
_REASONS = {errno.ELOOP: "has too many levels of symbolic links, or is a symbolic link "
                         "where none is followed",
            errno.EXDEV: "leads outside the granted directory",
            errno.ENOENT: "does not exist", errno.EEXIST: "already exists",
            errno.EISDIR: "is a directory", errno.ENOTDIR: "is not a directory",
            errno.ENOTEMPTY: "is not empty", errno.EACCES: "is not accessible",
            errno.EPERM: "is not permitted", errno.ENOSPC: "no space left",
            errno.ENAMETOOLONG: "is too long", errno.EBUSY: "is in use",
            errno.EFBIG: "would be too large", errno.EINVAL: "is not valid here",
            errno.EMFILE: "cannot be opened: the supervisor has too many open files",
            errno.ENFILE: "cannot be opened: the system has too many open files"}


def _vetted(fd: int, vet) -> int:
    """`fd`, what a grant's path was opened to, if `vet` (called with its fstat)
    finds nothing wrong with it; else closed, and FsError EACCES saying why.  Asked
    of the descriptor itself: what the path leads to may change after any look
    at the path."""
    if vet is None:
        return fd
    try:
        problem = vet(os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    if problem:
        os.close(fd)
        raise FsError(problem, "EACCES")
    return fd


class FsError(Exception):
    """A refused or failed file operation; the text is for the compartment.

    `code` is the POSIX errno name that fits it best ("ENOENT", "EROFS", ...,
    and WASI's "ENOTCAPABLE" for a path that would leave the directory); the
    supervisor puts it first in the error's reason, so that a WASI program
    gets a meaningful errno.
    """

    def __init__(self, text: str, code: str = "EIO"):
        super().__init__(text)
        self.code = code


def _explain(e: OSError, what: str, resolving: bool = True) -> FsError:
    """An OSError from the kernel as an FsError.  `resolving`: EXDEV came from
    openat2 refusing to leave the directory (ENOTCAPABLE), not from rename."""
    n = e.errno or errno.EIO
    code = _ERRNO_CODE.get(n) if resolving else None
    code = code or errno.errorcode.get(n, "EIO")
    if n == errno.EXDEV and not resolving:
        return FsError(f"{what} is on another file system", "EXDEV")
    return FsError(f"{what} {_REASONS.get(n, e.strerror or 'failed')}", code)


#: File systems that hold the kernel's state rather than files (statfs's f_type):
#: no grant reaches one.  Opened by the supervisor, /proc/self is the
#: supervisor's own process (its memory, descriptors, environment), and sysfs,
#: debugfs or cgroupfs let a write change the machine.
KERNEL_FS = {0x9fa0: "proc", 0x62656572: "sysfs", 0x64626720: "debugfs",
             0x74726163: "tracefs", 0x73636673: "securityfs", 0x27e0eb: "cgroup",
             0x63677270: "cgroup2", 0xcafe4a11: "bpf", 0x1cd1: "devpts",
             0x6165676c: "pstore", 0xde5e81e4: "efivarfs", 0x62656570: "configfs",
             0x65735543: "fusectl", 0x42494e4d: "binfmt_misc", 0xf97cff8c: "selinuxfs",
             0x43415d53: "smackfs", 0x6e736673: "nsfs", 0x19800202: "mqueue",
             0x958458f6: "hugetlbfs", 0x6e667364: "nfsd", 0x67596969: "rpc_pipefs",
             0x07655821: "resctrl", 0x5a3c69f0: "apparmorfs", 0x0187: "autofs",
             0x6c6f6f70: "binderfs"}


def kernel_fs(fd: int) -> str | None:
    """The name of the kernel file system `fd` is on (KERNEL_FS), or None for an
    ordinary one; a descriptor fstatfs cannot read counts as one (fails closed)."""
    buf = ctypes.create_string_buffer(256)        # struct statfs: 120 bytes on 64-bit
    if _libc.fstatfs(fd, buf) != 0:
        return "unknown"
    return KERNEL_FS.get(struct.unpack_from("@l", buf)[0] & 0xFFFFFFFF)


def _ordinary(fd: int, what) -> int:
    """`fd`, if it is on an ordinary file system; else it is closed and refused."""
    fs = kernel_fs(fd)
    if fs is None:
        return fd
    os.close(fd)
    raise FsError(f"{what} is on the kernel's {fs} file system, which no grant reaches",
                  "EACCES")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _openat2(dirfd: int, path: bytes, flags: int, mode: int = 0o644) -> int:
    """openat2 beneath `dirfd` (_beneath), of a file on an ordinary file system."""
    return _ordinary(_beneath(dirfd, path, flags, mode),
                     repr(path.decode("utf-8", "replace")))


def _beneath(dirfd: int, path: bytes, flags: int, mode: int = 0o644) -> int:
    """openat2 beneath `dirfd`; retried when the kernel saw a race it cannot rule out.

    ELOOP is tried again too: a lookup the kernel starts lock-free and finishes
    again with references (a mount or unmount anywhere, as every engine's start
    makes, or a rename, spoiled its first try) counts the symbolic links of both
    tries against the 40 it allows, so a chain of 37 links was 'too many levels of
    symbolic links' now and then (a tenth of the time beside mounts in a loop),
    where wasmtime, and the same call a moment later, followed it.  A real loop,
    or a chain past 40, is ELOOP every time: _RETRIES calls, nothing made."""
    # no mount point is crossed: what is mounted beneath a grant (a bind mount of
    # the supervisor's own directory, a proc, a mount made after `check`) is not
    # the granted directory, whatever `check` saw
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0,
                   RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
    for _ in range(_RETRIES):
        fd = _libc.syscall(SYS_OPENAT2, dirfd, path, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.ELOOP):
            break
    raise OSError(err, os.strerror(err))


def _resolving(e: OSError, raw: bytes, what: str) -> FsError:
    """The FsError for openat2 failing on `raw` (the path `what`)."""
    if e.errno == errno.EXDEV:
        how = "contains '..' that" if b".." in raw.split(b"/") else \
            "crosses a symbolic link or a mount point that"
        return FsError(f"{what!r} {how} leads outside the granted directory", "ENOTCAPABLE")
    return _explain(e, repr(what))


def _reopen(opath_fd: int, flags: int) -> int:
    """Open the inode an O_PATH descriptor names, for I/O: no path is looked up again."""
    return os.open(f"/proc/self/fd/{opath_fd}", flags | os.O_CLOEXEC)


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


def _times(accessed_ns, accessed, modified_ns, modified):
    """Two timespecs for utimensat(2) from (ns, keep|now|to) pairs."""
    out = (_Timespec * 2)()
    for i, (ns, how) in enumerate(((accessed_ns, accessed), (modified_ns, modified))):
        if how not in TIME_SET:
            raise FsError(f"unknown time setting {how!r} (keep, now or to)", "EINVAL")
        if not isinstance(ns, int) or not -(1 << 63) <= ns <= OFF_MAX:
            raise FsError(f"time {ns!r} is out of range", "EINVAL")
        if how == "to":
            out[i] = _Timespec(*divmod(ns, 1_000_000_000))
        else:
            out[i] = _Timespec(0, UTIME_NOW if how == "now" else UTIME_OMIT)
    return out


def _nothing_to_set(accessed: str, modified: str, follow: bool, raw: bytes) -> bool:
    """Whether Directory.setTimes needs no look-up of its last component: both
    times kept, the name not followed, and the name a plain one (a trailing '/'
    says it must be a directory, and '.' or '..' are the directories themselves,
    so those are looked up, as wasmtime does)."""
    if accessed != "keep" or modified != "keep" or follow:
        return False
    name = _split(raw)[1]
    return not name.endswith(b"/") and name not in (b".", b"..")


def _utimensat(fd: int, times, what: str):
    if _libc.utimensat(fd, b"", times, AT_EMPTY_PATH) != 0:
        n = ctypes.get_errno()
        raise _explain(OSError(n, os.strerror(n)), what)


_SHOWN_PATH = 200


def _shown(path: str) -> str:
    """`path` as an error names it before its length is checked: its start, and how
    many characters more there were."""
    if len(path) <= _SHOWN_PATH:
        return repr(path)
    return f"{path[:_SHOWN_PATH]!r}... ({len(path) - _SHOWN_PATH} more characters)"


def _path(path) -> bytes:
    """A path as bytes, refusing (with a reason) what can never be beneath a directory."""
    if not isinstance(path, str):
        raise FsError(f"a path must be text, not {type(path).__name__}", "EINVAL")
    # named before its length is known: at most _SHOWN_PATH characters of it (whole,
    # a path as long as a message made each call a string of up to 32 MB, which the
    # reason's cut then left without the words saying what was wrong)
    if "\0" in path:
        raise FsError(f"{_shown(path)} contains a NUL byte", "EINVAL")
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        raise FsError(f"{_shown(path)} is not valid UTF-8", "EILSEQ") from None
    if len(raw) > MAX_PATH:
        raise FsError(f"a path of {len(raw)} bytes is too long (at most {MAX_PATH})",
                      "ENAMETOOLONG")
    if raw.startswith(b"/"):
        raise FsError(f"{path!r} is absolute; paths are relative to the granted directory",
                      "ENOTCAPABLE")
    return raw or b"."


def check_path(path: str) -> str:
    """The path as it will be resolved, or an FsError saying why it never can be."""
    return _path(path).decode()


def _split(raw: bytes) -> tuple[bytes, bytes]:
    """(parent, last component) of a path; the component keeps a trailing '/',
    which tells the kernel that it must be a directory."""
    stripped = raw.rstrip(b"/")
    if not stripped:                       # "" or "/": the directory itself
        return b".", b"."
    parent, _, name = stripped.rpartition(b"/")
    return parent or b".", name + (b"/" if len(stripped) != len(raw) else b"")


def _lstat_name(parent: int, name: bytes) -> os.stat_result:
    """The entry `name` of `parent` (raised as OSError if not there), never
    followed: a trailing '/' names a directory, never a link (ENOTDIR).  Given to
    the kernel as it was, 'l/' made it follow the link l, without RESOLVE_BENEATH:
    with a link the host planted (l -> /srv/private), rename and link said ENOENT
    or not for what lay outside, and the check of a directory moved higher walked
    it and named the links it found there."""
    s = os.stat(name.rstrip(b"/") or name, dir_fd=parent, follow_symlinks=False)
    if name.endswith(b"/") and not st.S_ISDIR(s.st_mode):
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    return s


def _link_source(sp: int, sname: bytes, directory: bool = False):
    """What link(2) says of its source (raised as OSError): ENOENT if it is not
    there (before it looks at the new name); with `directory`, EPERM if it is a
    directory (after: a name taken is EEXIST first).  Never followed (_lstat_name)."""
    s = _lstat_name(sp, sname)
    if directory and st.S_ISDIR(s.st_mode):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))


def _there(parent: int, name: bytes):
    """Whether `name` is in `parent` as unlink and rmdir find it (raised as
    OSError if not): a trailing '/' names a directory, never a link (ENOTDIR)."""
    _lstat_name(parent, name)


def _kind(mode: int) -> str:
    return "file" if st.S_ISREG(mode) else "directory" if st.S_ISDIR(mode) else \
        "symlink" if st.S_ISLNK(mode) else "other"


_DT_KIND = {8: "file", 4: "directory", 10: "symlink"}
_DIRENT = struct.Struct("<QqHB")      # a linux_dirent64 before its name


def _info(s: os.stat_result) -> dict:
    return {"kind": _kind(s.st_mode), "size": s.st_size, "modifiedNs": s.st_mtime_ns,
            "inode": s.st_ino, "accessedNs": s.st_atime_ns, "changedNs": s.st_ctime_ns,
            "links": s.st_nlink, "device": s.st_dev}


def _not_openable(s: os.stat_result, what: str) -> FsError:
    m = s.st_mode
    if st.S_ISDIR(m):
        return FsError(f"{what} is a directory", "EISDIR")
    if st.S_ISLNK(m):
        return FsError(f"{what} is a symbolic link, and this call does not follow it", "ELOOP")
    name = "a FIFO (named pipe)" if st.S_ISFIFO(m) else "a socket" if st.S_ISSOCK(m) else \
        "a character device" if st.S_ISCHR(m) else "a block device" if st.S_ISBLK(m) else \
        "not a regular file"
    return FsError(f"{what} is {name}: only regular files and directories can be opened",
                   "ENOTSUP")


def _offset(value, what: str) -> int:
    if not isinstance(value, int) or value < 0 or value > OFF_MAX:
        raise FsError(f"{what} {value!r} is out of range (0 .. 2^63-1)", "EINVAL")
    return value


class WriteQuota:
    """Bytes that may still be written through one grant and all it opened."""

    def __init__(self, limit: int | None):
        self.left = limit
        self._lock = threading.Lock()

    def spend(self, n: int, label: str):
        if self.left is None:
            return
        with self._lock:
            if n > self.left:
                raise FsError(f"{label}: write quota exhausted ({self.left} bytes left, "
                              f"{n} asked; limit max_bytes_written)", "EDQUOT")
            self.left -= n

    def refund(self, n: int):
        if self.left is not None and n > 0:
            with self._lock:
                self.left += n


#: preadv2's flag for "only what needs no I/O" (Linux 4.14), or None
_NOWAIT = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None


class _Handle:
    """A descriptor several threads may use while one closes it: `with h as fd:`
    holds it open; close() takes effect when the last user is done."""
    __slots__ = ("fd", "_users", "_closing", "_lock", "_label")

    def __init__(self, fd: int, label: str):
        self.fd, self._users, self._closing, self._lock = fd, 0, False, threading.Lock()
        self._label = label

    def __enter__(self) -> int:
        lock = self._lock
        lock.acquire()
        if self._closing:
            lock.release()
            raise FsError(f"{self._label} was closed", "EBADF")
        self._users += 1
        lock.release()
        return self.fd

    def __exit__(self, *_exc):
        lock = self._lock
        lock.acquire()
        try:
            self._users -= 1
            if self._closing and not self._users:
                self._close()
        finally:
            lock.release()

    def close(self):
        with self._lock:
            if not self._closing:
                self._closing = True
                if not self._users:
                    self._close()

    def _close(self):
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:          # nothing more can be done with it
                pass


SUBDIR_DEPTH = 4096             # directories a Directory may lie below its grant


class _Beneath(_Handle):
    """The descriptor of a directory beneath a grant (a `subdir`): each use first
    finds it still beneath the grant's directory, whose (st_dev, st_ino) is `root`.
    A directory the host moved out of the grant (`mv grant/work ~/`) was named by
    its descriptor wherever it went, and a plugin holding it made files there and
    read what the user put there afterwards (a review of directory grants)."""
    __slots__ = ("root",)

    def __init__(self, fd: int, label: str, root: tuple):
        super().__init__(fd, label)
        self.root = root

    def __enter__(self) -> int:
        fd = super().__enter__()
        try:
            _still_beneath(fd, self.root, self._label)
        except BaseException:
            super().__exit__()
            raise
        return fd


def _still_beneath(fd: int, root: tuple, label: str):
    """Climb from the directory `fd` by '..' (the kernel's parent, not a name) to the
    grant's directory `root`; ENOTCAPABLE if the top of the file system comes first,
    or more than SUBDIR_DEPTH directories.  One descriptor at a time."""
    cur = fd
    try:
        for _ in range(SUBDIR_DEPTH + 1):
            s = os.fstat(cur)
            if (s.st_dev, s.st_ino) == root:
                return
            try:
                up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=cur)
            except FileNotFoundError:
                raise FsError(f"{label} was removed", "ENOENT") from None
            if cur != fd:
                os.close(cur)
            cur = up
            u = os.fstat(cur)
            if (u.st_dev, u.st_ino) == (s.st_dev, s.st_ino):      # '/': its own parent
                break
        else:
            raise FsError(f"{label} lies more than {SUBDIR_DEPTH} directories below the "
                          f"granted directory", "ENOTCAPABLE")
    except OSError as e:
        raise _explain(e, label) from None
    finally:
        if cur != fd:
            os.close(cur)
    raise FsError(f"{label} was moved out of the granted directory", "ENOTCAPABLE")


def _named(obj, name: str | None):
    """`obj` (a granted Directory or File, open) from now on says `name` in its errors
    and in those of what is opened through it ("data/notes.txt"), not its host path:
    they go to the guest that holds it, and the host path (a user's home, the layout
    of the host) is not the guest's to know (an outside review: a plugin on wsuper's
    ABI was told "EPERM: file /home/alice/journal.txt: /home/alice/journal.txt is
    append-only").  Errors opening the grant, said to the operator, keep the path."""
    if name is not None:
        obj.label = obj._h._label = name
    return obj


def _utf8_part(text: bytes, offset: int, room: int, path: str) -> bytes:
    """The bytes of UTF-8 `text` from `offset` (a character's first byte, or its
    end), as many as `room` takes, cut at a character's end; EINVAL for an offset
    past the end or inside a character, E2BIG when not one character fits."""
    if offset > len(text) or (offset < len(text) and text[offset] & 0xC0 == 0x80):
        raise FsError(f"readlink of {path!r}: offset {offset} is not where a character "
                      f"of its target ({len(text)} bytes) begins", "EINVAL")
    end = min(len(text), offset + max(room, 0))
    while end < len(text) and end > offset and text[end] & 0xC0 == 0x80:
        end -= 1                        # never half a character
    if end == offset < len(text):
        raise FsError(f"readlink of {path!r}: not one character of its target fits in "
                      f"a message to you", "E2BIG")
    return text[offset:end]


class Directory:
    """A directory capability: an O_PATH descriptor and its attenuation."""

    def __init__(self, fd: int, label: str, read_only: bool = False, append_only: bool = False,
                 quota: WriteQuota | None = None, refuse_hard_links: bool = False,
                 root: tuple | None = None):
        # root: (st_dev, st_ino) of the grant's directory, for one beneath it
        self._h = _Handle(fd, label) if root is None else _Beneath(fd, label, root)
        self.root = root
        self.label = label
        self.read_only = read_only
        self.append_only = append_only
        self.refuse_hard_links = refuse_hard_links
        self.quota = quota or WriteQuota(None)

    @property
    def fd(self) -> int:
        return self._h.fd

    @classmethod
    def grant(cls, path: str, subdir: str | None = None, max_bytes_written: int | None = None,
              quota: WriteQuota | None = None, name: str | None = None, vet=None,
              **attenuation) -> "Directory":
        """The granted directory.  `quota`: the grant's write quota, when it outlives
        this object (a restart opens the grant again); else one of
        `max_bytes_written`.  `name`: what its holder knows it by (the grant's name):
        once it is open, what its errors say, never `path` (_named).  `vet(stat)`:
        why what `path` led to may not be granted, or None (_vetted)."""
        try:
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise _explain(e, path) from None
        fd = _vetted(_ordinary(fd, path), vet)
        d = cls(fd, path, quota=quota or WriteQuota(max_bytes_written), **attenuation)
        if subdir:
            try:
                sub = d._subdir(subdir, follow=True, root=True)   # beneath, like any path
            finally:
                d.close()
            return _named(sub, name)
        return _named(d, name)

    # ------------------------------------------------------------ helpers

    def _refuse(self, what: str, path, append_ok: bool = False):
        """Attenuation: read-only refuses every change, append-only every change
        that is not adding (`append_ok`)."""
        if self.read_only:
            raise FsError(f"{self.label} is read-only: cannot {what} {path!r}", "EROFS")
        if self.append_only and not append_ok:
            raise FsError(f"{self.label} is append-only: cannot {what} {path!r}", "EPERM")

    def _sub(self, raw: bytes) -> str:
        return f"{self.label}/{raw.decode()}" if raw != b"." else self.label

    def _beneath(self, dfd: int, raw: bytes, flags: int, what: str) -> int:
        try:
            return _openat2(dfd, raw, flags)
        except OSError as e:
            raise _resolving(e, raw, what) from None

    def _parent(self, dfd: int, raw: bytes, path: str, dots: str) -> tuple[int, bytes]:
        """(descriptor of the parent, last component) for an operation on a name.
        A last component '.' or '..' is never handed to the kernel (it would be
        resolved without RESOLVE_BENEATH): if the path stays beneath, the
        operation fails with `dots` ("EEXIST", ...), as Linux does."""
        parent, name = _split(raw)
        if name.rstrip(b"/") in (b".", b".."):
            os.close(self._beneath(dfd, raw, os.O_PATH, path))   # ENOTCAPABLE if outside
            raise FsError(f"{path!r} names a directory entry that cannot be changed", dots)
        return self._beneath(dfd, parent, os.O_PATH | os.O_DIRECTORY, path), name

    def _turn(self, what: str):
        """The turn of symbolic links, renames and hard links (_names_turn), for one
        that may change a name; a read-only directory's is refused whatever it
        finds (_made), and takes no turn from those that may."""
        return contextlib.nullcontext() if self.read_only else _names_turn(what)

    def _check_links(self, s: os.stat_result, path: str):
        if self.refuse_hard_links and st.S_ISREG(s.st_mode) and s.st_nlink > 1:
            raise FsError(f"{path!r} has {s.st_nlink} hard links, and {self.label} refuses "
                          f"files with more than one (refuse_hard_links)", "EPERM")

    # ------------------------------------------------------------ opening

    def open(self, path: str, mode: str, follow: bool = False, append: bool = False,
             sync: str = "none") -> dict:
        """An existing regular file."""
        if mode not in MODES:
            raise FsError(f"unknown open mode {mode!r} (read, write, append, readWrite)",
                          "EINVAL")
        return self._open(path, MODES[mode], mode in ("read", "readWrite"), mode != "read",
                          bool(append) or mode == "append", sync, create=False,
                          follow=bool(follow))

    def create(self, path: str, readable: bool = False, append: bool = False,
               sync: str = "none") -> dict:
        """A new regular file, open to write (and read); EEXIST if the name exists."""
        return self._open(path, os.O_RDWR if readable else os.O_WRONLY, bool(readable), True,
                          bool(append), sync, create=True, follow=False)

    def _open(self, path, flags, readable, writable, append, sync, create, follow) -> dict:
        if sync not in SYNC:
            raise FsError(f"unknown sync mode {sync!r} (none, data, full)", "EINVAL")
        raw = _path(path)
        # read-only: refused once the file is found, as open(2) on a read-only mount
        # says ENOENT for what is not there (O_CREAT then: _made refuses it, EROFS).
        # Append-only: at once, unless it appends (a file it made instead, for
        # fopen(new, "w"), would refuse every write but appends)
        refuse = None
        if writable and not create:
            if self.read_only:
                refuse = lambda: self._refuse("open to write", path)       # noqa: E731
            else:
                self._refuse("open to write", path, append_ok=append)
        if self.append_only and writable:
            append = True                          # the kernel keeps every write at the end
        flags |= SYNC[sync] | (os.O_APPEND if append else 0)
        with self._made(raw if create else None, slash="EISDIR", what="create", path=path), \
                self._h as dfd:
            fd = self._open_file(dfd, raw, path, flags, create, follow, refuse)
        return {"file": File(fd, self._sub(raw), readable=readable, writable=writable,
                             append=append, append_only=self.append_only,
                             read_only=self.read_only, quota=self.quota)}

    def _open_file(self, dfd, raw, path, flags, create, follow, refuse=None) -> int:
        if create:      # O_EXCL: makes a regular file or fails; never follows, never blocks
            try:
                return _openat2(dfd, raw, flags | os.O_CREAT | os.O_EXCL)
            except OSError as e:
                raise _resolving(e, raw, path) from None
        try:
            p = _openat2(dfd, raw, os.O_PATH | (0 if follow else os.O_NOFOLLOW))
        except OSError as e:
            raise _resolving(e, raw, path) from None
        try:
            s = os.fstat(p)
            if not st.S_ISREG(s.st_mode):
                raise _not_openable(s, repr(path))
            if refuse is not None:
                refuse()
            self._check_links(s, path)
            return _reopen(p, flags)           # the inode just checked, not the path again
        except OSError as e:
            raise _explain(e, repr(path)) from None
        finally:
            os.close(p)

    def subdir(self, path: str, follow: bool = False) -> dict:
        d = self._subdir(path, follow)
        try:
            inode = os.fstat(d.fd).st_ino
        except BaseException:
            d.close()
            raise
        return {"dir": d, "inode": inode}

    def _subdir(self, path: str, follow: bool, root: bool = False) -> "Directory":
        """`root`: the directory opened is a grant's own (Directory.grant's subdir)."""
        raw = _path(path)
        with self._h as dfd:
            fd = self._beneath(dfd, raw, os.O_PATH | os.O_DIRECTORY |
                               (0 if follow else os.O_NOFOLLOW), path)
            try:
                top = self.root
                if top is None and not root:
                    s = os.fstat(dfd)
                    top = (s.st_dev, s.st_ino)
            except BaseException:
                os.close(fd)
                raise
        return Directory(fd, self._sub(raw), self.read_only, self.append_only, self.quota,
                         self.refuse_hard_links, root=top)

    # ------------------------------------------------------------ reading

    def stat(self, path: str, follow: bool = False) -> dict:
        raw = _path(path)
        with self._h as dfd:
            p = self._beneath(dfd, raw, os.O_PATH | (0 if follow else os.O_NOFOLLOW), path)
        try:
            return {"info": _info(os.fstat(p))}
        finally:
            os.close(p)

    def list(self, path: str, cursor: int = 0, *, max_bytes: int | None = None) -> dict:
        """One page of the entries of `path`, from `cursor` (0: the start).  The
        cursors are the kernel's directory offsets (getdents64 d_off): nothing is
        kept between pages, and a page costs the same wherever it starts."""
        cursor = _offset(cursor, "cursor")
        raw = _path(path)
        budget = min(DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
                     LIST_PAGE_BYTES) - _RESULT_SLACK
        with self._h as dfd:
            fd = self._beneath(dfd, raw, os.O_RDONLY | os.O_DIRECTORY, path)
        try:
            if cursor:
                os.lseek(fd, cursor, os.SEEK_SET)
            # the directory's own inode ('.'): a WASI readdir lists '.' with it, and
            # asked it of `stat`, which an allow-list of "list" alone refused
            return {**_page(fd, cursor, budget), "inode": os.fstat(fd).st_ino}
        except OSError as e:
            raise _explain(e, repr(path)) from None
        finally:
            os.close(fd)

    def readlink(self, path: str, offset: int = 0, partial: bool = False, *,
                 max_bytes: int | None = None) -> dict:
        """The target of the link `path`, whole: ENAMETOOLONG if it does not fit in
        an answer of `max_bytes`.  With `partial`, the part from byte `offset` that
        fits (cut at a character's end), the whole target's `length` and a `digest`
        of it, so a caller of a small message_size reads a long target in parts
        (a target is up to 4095 bytes; an answer at the least message_size carries
        960 of them) and sees whether the link was replaced meanwhile (by its text:
        a link made again at once often has the inode of the one it replaced)."""
        raw = _path(path)
        with self._h as dfd:
            p = self._beneath(dfd, raw, os.O_PATH | os.O_NOFOLLOW, path)
        try:
            if not st.S_ISLNK(os.fstat(p).st_mode):
                raise FsError(f"{path!r} is not a symbolic link", "EINVAL")
            target = os.readlink(b"", dir_fd=p)
        except OSError as e:
            raise _explain(e, repr(path)) from None
        finally:
            os.close(p)
        if target.startswith(b"/"):
            # a host path (made on the host: a compartment cannot make one): its text
            # is the host's layout, not the grant's (wasmtime refuses it too)
            raise FsError(f"{path!r} is a symbolic link whose target is absolute: it "
                          f"leads outside the granted directory", "ENOTCAPABLE")
        try:
            target.decode("utf-8")
        except UnicodeDecodeError:
            raise FsError(f"the target of {path!r} is not valid UTF-8", "EILSEQ") from None
        room = (DEFAULT_MAX_BYTES if max_bytes is None else max_bytes) - _RESULT_SLACK
        if not partial:
            if offset:
                raise FsError("readlink: an offset is for a partial answer", "EINVAL")
            if len(target) > room:
                raise FsError(f"the target of {path!r} is longer than a message to you "
                              f"may be", "ENAMETOOLONG")
            return {"target": target.decode("utf-8")}
        return {"target": _utf8_part(target, offset, room, path).decode("utf-8"),
                "length": len(target),
                "digest": int.from_bytes(hashlib.blake2b(target, digest_size=8).digest(),
                                         "little")}

    # ------------------------------------------------------------ changing names

    def _at(self, path: str, dots: str, op, what: str):
        """Run op(parent descriptor, last component) for a path beneath this directory."""
        raw = _path(path)
        with self._h as dfd:
            parent, name = self._parent(dfd, raw, path, dots)
        try:
            return op(parent, name)
        except OSError as e:
            raise _explain(e, repr(path), resolving=False) from None
        finally:
            os.close(parent)

    @contextlib.contextmanager
    def _made(self, name: bytes | None, target: bytes = b"", parent: int | None = None,
              look: bytes | None = None, slash: str | None = None, first=None,
              then=None, what: str = "make", path: str | None = None):
        """A new entry (a file, a directory, a link) spends the write quota too:
        ENTRY_COST bytes, its name and its link target; given back if it fails.
        `name`: its path beneath this directory (what it costs).  When the quota
        cannot pay, a call that would fail anyway fails as it does with quota to
        spare (EEXIST, ENOENT, EPERM, ...), not EDQUOT: nothing would have been
        made.  `mkdir -p` and O_CREAT|O_EXCL go by EEXIST, and got EDQUOT once the
        quota ran low.  Where that is looked up (_fails_anyway): `look`, the
        entry's name in `parent` (a descriptor), or else `name` beneath this
        directory; `slash`: the errno of a name with a trailing '/' that is not
        there (create: EISDIR; symlink, link: ENOENT); `first`, `then`: the
        call's own checks that come before and after the name's (a link's source:
        ENOENT first, EPERM for a directory then, as link(2) does).

        A read-only directory is refused here too (EROFS: cannot `what` `path`), the
        same way: a call that would fail anyway fails as it does on a writable one,
        as on a read-only mount, where mkdir(2), link(2), symlink(2) and
        open(O_CREAT|O_EXCL) look at the name first (a mkdir -p of a directory that
        is there, `mkdir(d) != 0 && errno != EEXIST`, failed EROFS)."""
        if name is None:
            yield
            return
        n = ENTRY_COST + len(name) + len(target)
        try:
            if self.read_only:
                raise FsError(f"{self.label} is read-only: cannot {what} "
                              f"{path if path is not None else name.decode()!r}", "EROFS")
            self.quota.spend(n, self.label)
        except FsError:
            if first is not None:
                first()
            self._fails_anyway(name if look is None else look, parent, slash)
            if then is not None:
                then()
            raise
        try:
            yield
        except BaseException:
            self.quota.refund(n)
            raise

    def _fails_anyway(self, raw: bytes, parent: int | None, slash: str | None = None):
        """The FsError making the entry `raw` gets whatever the quota (see _made): it
        exists (EEXIST), its path is refused (ENOTCAPABLE, ELOOP, ENAMETOOLONG, ...),
        the directory it would be in does not exist, or it ends in '/' and the call
        makes no directory (`slash`)."""
        name = raw.rstrip(b"/") or b"."
        what = raw.decode("utf-8", "replace")
        try:
            if parent is not None:
                os.stat(name, dir_fd=parent, follow_symlinks=False)
            else:
                with self._h as dfd:
                    os.close(_openat2(dfd, name, os.O_PATH | os.O_NOFOLLOW))
        except FsError:
            return
        except OSError as e:
            if e.errno != errno.ENOENT:        # the path itself is refused: that first
                if parent is not None:
                    raise _explain(e, repr(what), resolving=False) from None
                raise _resolving(e, name, name.decode("utf-8", "replace")) from None
            if parent is None:
                where, _ = _split(raw)
                try:
                    with self._h as dfd:
                        os.close(_openat2(dfd, where, os.O_PATH | os.O_DIRECTORY))
                except FsError:
                    return
                except OSError as e2:
                    raise _resolving(e2, where, where.decode("utf-8", "replace")) from None
            if slash is not None and raw.endswith(b"/"):
                raise _explain(OSError(getattr(errno, slash), os.strerror(getattr(errno, slash))),
                               repr(what), resolving=False) from None
            return
        if slash == "EISDIR" and raw.endswith(b"/"):      # open(2): before EEXIST
            raise _explain(OSError(errno.EISDIR, os.strerror(errno.EISDIR)), repr(what),
                           resolving=False) from None
        raise FsError(f"{what!r} already exists", "EEXIST")

    def mkdir(self, path: str):
        with self._made(_path(path), path=path):       # read-only: refused there
            self._at(path, "EEXIST", lambda p, n: os.mkdir(n, 0o755, dir_fd=p), "make")

    def _refuse_there(self, what: str, path: str, dots: str):
        """`_refuse` for a call on an existing name (remove, rename): read-only at
        once (EROFS), as a read-only mount refuses unlink, rmdir and rename before it
        looks; append-only once the name is found, as a directory the kernel keeps
        append-only (chattr +a) does: a name that is not there (ENOENT), a path that
        leads out (ENOTCAPABLE), '.' or '..' (`dots`) fail as on a writable
        directory, and only what would be removed is EPERM (unlink of a file that
        was never there, a program's clean-up that lets ENOENT pass, failed EPERM)."""
        if self.read_only or not self.append_only:
            self._refuse(what, path)
            return

        def there(p, n):
            _there(p, n)
            self._refuse(what, path)
        self._at(path, dots, there, what)

    def unlink(self, path: str):
        self._refuse_there("remove", path, "EISDIR")
        self._at(path, "EISDIR", lambda p, n: os.unlink(n, dir_fd=p), "remove")

    def rmdir(self, path: str):
        dots = "ENOTEMPTY" if path.rstrip("/").endswith("..") else "EINVAL"
        self._refuse_there("remove", path, dots)
        self._at(path, dots, lambda p, n: os.rmdir(n, dir_fd=p), "remove")

    def remove(self, path: str):
        """A file, a link or an empty directory, whichever `path` names."""
        self._refuse_there("remove", path, "EISDIR")

        def op(p, n):
            try:
                os.unlink(n, dir_fd=p)
            except IsADirectoryError:
                os.rmdir(n, dir_fd=p)
        self._at(path, "EISDIR", op, "remove")

    def symlink(self, target: str, path: str):
        """Make `path` a symbolic link to `target`.  The target text must be
        relative and must not climb above this directory from where the link is
        (so no tool on the host that follows it is led outside either).
        Read-only: refused by _made, after the checks that would fail it anyway."""
        if not target:
            raise FsError("a symbolic link needs a target", "ENOENT")
        if isinstance(target, str) and target.startswith("/"):
            raise FsError(f"a link to {_shown(target)} would lead outside the granted directory "
                          f"(link targets are relative)", "EPERM")
        t = _path(target)
        raw = _path(path)
        with self._h as dfd:
            parent, name = self._parent(dfd, raw, path, "EEXIST")
            try:
                with self._turn(repr(path)):
                    if _climbs(t, _depth_below(dfd, parent)):
                        raise FsError(f"a link at {path!r} to {target!r} would lead "
                                      f"outside the granted directory", "EPERM")
                    with self._made(raw, t, parent=parent, look=name, slash="ENOENT",
                                    path=path):
                        os.symlink(t, name, dir_fd=parent)
            except OSError as e:
                raise _explain(e, repr(path), resolving=False) from None
            finally:
                os.close(parent)

    def link(self, from_: str, to: str, fromDir: str = "", fromInode: int = 0,  # noqa: N803
             toDir: str = "", toInode: int = 0):                                  # noqa: N803
        """A hard link `to` naming what `from_` names (a link itself, if it is one).
        `fromDir`/`toDir`: see _parents.  Read-only: refused by _made, after the
        checks that would fail it anyway."""
        if self.refuse_hard_links:
            raise FsError(f"{self.label} refuses hard links (refuse_hard_links)", "EPERM")
        sp, sname, dp, dname = self._parents(from_, "EPERM", to, "EEXIST",
                                             (fromDir, fromInode), (toDir, toInode))
        try:
            if sname.endswith(b"/"):
                # 'x/' names a directory, which has no hard links: linkat(2) would
                # follow a link named so, without RESOLVE_BENEATH, and say what it
                # found (ENOENT, EPERM) wherever it led.  Said here, the path
                # followed beneath as every path is: a link to nothing ENOENT, to a
                # file ENOTDIR, one that leads out ENOTCAPABLE (whatever is there);
                # a directory, or a link to one, EEXIST if `to` is taken, else EPERM
                # (a link was ENOTDIR whatever it led to, where Linux and wasmtime
                # say what it leads to)
                self._resolve_from(from_, fromDir)
                self._fails_anyway(dname, dp, "ENOENT")
                raise OSError(errno.EPERM, os.strerror(errno.EPERM))
            if self.append_only and not self.read_only:
                # a second name of a file this grant only appends to may lie where
                # another grant (a writable one nested in it, another compartment's)
                # writes: linked there, the file was truncated and overwritten
                # through that grant.  Refused as link(2) refuses a file the kernel
                # keeps append-only (may_linkat): once the source is found
                # (ENOENT) and the new name is free (EEXIST)
                _link_source(sp, sname)
                self._fails_anyway(dname, dp, "ENOENT")
                raise FsError(f"{self.label} is append-only: cannot link {from_!r} as "
                              f"{to!r} (a second name of a file may lie where another "
                              f"grant writes)", "EPERM")
            with self._turn(f"linking {from_!r} as {to!r}"):
                self._stays_beneath(sp, sname, dp, from_, to, new_name=True)
                with self._made(dname, parent=dp, slash="ENOENT",
                                first=lambda: _link_source(sp, sname),
                                then=lambda: _link_source(sp, sname, directory=True),
                                what="link to", path=to):
                    os.link(sname, dname, src_dir_fd=sp, dst_dir_fd=dp,
                            follow_symlinks=False)
        except OSError as e:
            raise _explain(e, f"linking {from_!r} as {to!r}:", resolving=False) from None
        finally:
            os.close(sp)
            os.close(dp)

    def rename(self, from_: str, to: str, fromDir: str = "", fromInode: int = 0,  # noqa: N803
               toDir: str = "", toInode: int = 0):                                  # noqa: N803
        """Rename beneath this directory (replacing `to`): both parents are resolved
        beneath it, and renameat(2) moves the last component only.  `fromDir`/`toDir`:
        see _parents.  Append-only: EPERM once both paths resolve and `from_` is
        there (_refuse_there)."""
        if self.read_only or not self.append_only:
            self._refuse("rename", from_)
        sp, sname, dp, dname = self._parents(from_, "EBUSY", to, "EBUSY",
                                             (fromDir, fromInode), (toDir, toInode))
        try:
            if self.append_only:
                _lstat_name(sp, sname)
                self._refuse("rename", from_)
            with _names_turn(f"renaming {from_!r} to {to!r}"):
                self._stays_beneath(sp, sname, dp, from_, to)
                os.rename(sname, dname, src_dir_fd=sp, dst_dir_fd=dp)
        except OSError as e:
            raise _explain(e, f"renaming {from_!r} to {to!r}:", resolving=False) from None
        finally:
            os.close(sp)
            os.close(dp)

    def _parents(self, from_: str, from_dot: str, to: str, to_dot: str,
                 from_base=("", 0), to_base=("", 0)):
        """The parents of `from_` and `to`, both resolved beneath this directory, and
        their last components: (src parent fd, src name, dst parent fd, dst name).
        `*_dot`: the errno for a path that names this directory itself.

        `*_base`: (path, inode) of the directory the path is relative to, when it is
        not this one (a WASI rename or link between two descriptors of one grant):
        the path is then resolved beneath that directory, so that it cannot climb
        out of it, and that directory, resolved beneath this one, must still be
        the one with that inode (EXDEV if it was moved or replaced since it was
        opened), so the operation never lands on whatever now has its old name.
        The inode is checked on the descriptor that is then used: no second lookup."""
        with self._h as dfd:
            sp, sname = self._parent_in(dfd, from_, from_dot, from_base)
            try:
                dp, dname = self._parent_in(dfd, to, to_dot, to_base)
            except BaseException:
                os.close(sp)
                raise
        return sp, sname, dp, dname

    def _resolve_from(self, path: str, where: str):
        """Resolve `path`, following its links, beneath the directory it is relative
        to (this one, or `where` beneath it, as _parent_in): FsError if it is not
        there or leads outside."""
        with self._h as dfd:
            bfd = self._beneath(dfd, _path(where), os.O_PATH | os.O_DIRECTORY, where) \
                if where else None
            try:
                os.close(self._beneath(dfd if bfd is None else bfd, _path(path), os.O_PATH,
                                       path))
            finally:
                if bfd is not None:
                    os.close(bfd)

    def _parent_in(self, dfd: int, path: str, dots: str, base) -> tuple[int, bytes]:
        where, inode = base
        if not where:
            return self._parent(dfd, _path(path), path, dots)
        try:
            bfd = self._beneath(dfd, _path(where), os.O_PATH | os.O_DIRECTORY, where)
        except FsError as e:
            # it was a directory by that name when it was opened: not there now (or
            # not a directory), it was moved or replaced too (a program was told
            # ENOENT, or ENOTDIR, of a name it had not asked about, where the
            # caller's fallback for EXDEV, copying, works); removed: the engine
            # says ENOENT, as Linux does of a directory removed
            if e.code in ("ENOENT", "ENOTDIR", "ELOOP"):
                raise FsError(f"{where!r} is no longer the directory that was opened by "
                              f"that name (it was moved or removed)", "EXDEV") from None
            raise
        try:
            if os.fstat(bfd).st_ino != inode:
                raise FsError(f"{where!r} is no longer the directory that was opened by "
                              f"that name (it was moved or replaced)", "EXDEV")
            return self._parent(bfd, _path(path), path, dots)
        finally:
            os.close(bfd)

    def _stays_beneath(self, sp: int, sname, dp: int, from_: str, to: str,
                       new_name: bool = False):
        """Moving a symbolic link (or a directory holding some) to a shallower place
        must not make its '..' climb out of the grant: a tool on the host that
        follows it would be led outside.  Checked for the link itself, and for
        every link in a directory moved (up to MOVE_CHECK_ENTRIES of them).

        `new_name` (a hard link): a symbolic link that leads outside from where the
        new name is, whatever its depth, gets no second name.  A compartment can
        make no link that leads outside; one the host planted (an absolute
        target, a '..' past the grant) was copied under any name at its own depth
        or deeper, a new name leading outside that the compartment chose."""
        with self._h as dfd:
            old, new = _depth_below(dfd, sp), _depth_below(dfd, dp)
        new = new or 0                  # cannot tell: the least depth for where it goes,
        if new_name:
            moved = _lstat_name(sp, sname)
            if st.S_ISLNK(moved.st_mode):
                target = os.fsencode(os.readlink(sname, dir_fd=sp))
                if target.startswith(b"/") or _climbs(target, new):
                    raise FsError(f"a hard link {to!r} of the symbolic link {from_!r} would "
                                  f"lead outside the granted directory", "EPERM")
                return
        if old is not None and new >= old:  # and for where it was, the most (check it)
            return
        moved = _lstat_name(sp, sname)
        if st.S_ISLNK(moved.st_mode):
            if _climbs(os.fsencode(os.readlink(sname, dir_fd=sp)), new):
                raise FsError(f"moving the link {from_!r} to {to!r} would make it lead "
                              f"outside the granted directory", "EPERM")
            return
        if not st.S_ISDIR(moved.st_mode):
            return
        bad = _climbing_link_in(sname, sp, new + 1, from_)
        if bad is not None:
            raise FsError(f"moving {from_!r} to {to!r} would make the link {bad!r} in it "
                          f"lead outside the granted directory", "EPERM")

    # ------------------------------------------------------------ metadata

    def setTimes(self, path: str, follow: bool, accessedNs: int, accessed: str,  # noqa: N802,N803
                 modifiedNs: int, modified: str):                                 # noqa: N803
        """Refused (read-only EROFS, append-only EPERM) once `path` is found, as
        utimensat(2) on a read-only mount says ENOENT for what is not there."""
        times = _times(accessedNs, accessed, modifiedNs, modified)
        raw = _path(path)
        if _nothing_to_set(accessed, modified, follow, raw) and not (self.read_only or
                                                                     self.append_only):
            # no time to set, the name not followed: the name itself is not looked
            # up (utimensat(2) looks up nothing; wasmtime its directory), so a name
            # that is not there is no error; its directory is found beneath as ever
            parent, _name = _split(raw)
            with self._h as dfd:
                os.close(self._beneath(dfd, parent, os.O_PATH | os.O_DIRECTORY, path))
            return
        with self._h as dfd:
            p = self._beneath(dfd, raw, os.O_PATH | (0 if follow else os.O_NOFOLLOW), path)
        try:
            self._refuse("set the times of", path)
            self._check_links(os.fstat(p), path)
            _utimensat(p, times, repr(path))
        finally:
            os.close(p)

    def sync(self):
        with self._h as dfd:
            fd = self._beneath(dfd, b".", os.O_RDONLY | os.O_DIRECTORY, ".")
        try:
            os.fsync(fd)
        except OSError as e:
            raise _explain(e, self.label) from None
        finally:
            os.close(fd)

    def close(self):
        self._h.close()


MOVE_CHECK_ENTRIES = 10_000     # entries of a directory checked before it moves higher
MOVE_CHECK_SECONDS = 1.0        # and the time that check may take (_climbing_link_in)
MOVE_CHECK_DEPTH = 100          # and the directories within one another it walks
NAMES_WAIT = 5.0                # seconds one waits for another's turn (_names_turn)

_names_lock = threading.Lock()  # the one turn of every symlink, rename and hard link


@contextlib.contextmanager
def _names_turn(what: str):
    """Held while a symbolic link is made, or a name renamed or hard-linked, in any
    granted directory: their checks that links stay beneath (_climbs at the new
    link's depth, _stays_beneath for what moves higher) look, then act, and another
    such operation in between, by any holder of any grant, must not change what was
    looked at (a link made inside a directory after it was walked and before it
    moves higher; a climbing link renamed over the harmless one checked): it then
    was moved where its '..' led outside.

    One turn for all, not one per file system: the file system cannot be told from
    st_dev, which differs inside one (a btrfs subvolume: a link made in it through
    the grant took the turn of the grant's st_dev, a rename in it that of the
    subvolume's, and the race was back; a directory moved higher may hold a
    subvolume too).  EAGAIN after NAMES_WAIT."""
    if not _names_lock.acquire(timeout=NAMES_WAIT):
        raise FsError(f"{what}: other renames, links or symbolic links took longer than "
                      f"{NAMES_WAIT:g} s; try again", "EAGAIN")
    try:
        yield
    finally:
        _names_lock.release()


#: What a new file, directory or link costs of max_bytes_written (besides its name
#: and link target): a block of the disk, so names and links cannot fill it for free.
ENTRY_COST = 4096


def _climbing_link_in(name, parent: int, depth: int, what: str) -> str | None:
    """The path (below `name`) of a symbolic link in the directory `name` of
    `parent` that would climb out of the grant were that directory `depth - 1`
    directories below it, or None.  Held in the turn of _names_turn, so its work is
    bounded: entries are read as they are checked, and it fails (EPERM) past
    MOVE_CHECK_ENTRIES of them or MOVE_CHECK_SECONDS, however large a directory is,
    and past MOVE_CHECK_DEPTH directories within one another
    (os.fwalk read every entry of each directory before the count began: a rename
    of one with a million names held every compartment's turn for half a second).
    A directory it cannot read fails it too: none is passed over unchecked
    (os.fwalk passed over those it could not open: one the supervisor may search
    and write but not read, mode 0300, and the climbing links made in it were
    moved higher).

    One directory is open at a time (its descriptor and its listing's), whatever
    the depth: each is read whole, the names of its subdirectories kept, and then
    closed before one of them is entered; the walk comes back up through '..',
    which must be the directory it came from (renames wait for the turn this
    holds; one removed meanwhile fails the move).  It held two descriptors for
    every level it was in, up to 200 of the supervisor's, which every compartment
    shares, and more than it keeps beyond what compartments' files may hold."""
    deadline = time.monotonic() + MOVE_CHECK_SECONDS
    seen = 0
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    # per directory from `name` down to the one open: (its st_dev and st_ino, its path
    # below `name`, the depth of its entries, its subdirectories not yet walked)
    levels: list = []
    try:
        fd = _walk_into(parent, name, flags)
    except (FileNotFoundError, NotADirectoryError):
        return None                     # removed meanwhile: nothing in it to move
    except OSError as e:
        if e.errno == errno.EXDEV:      # a mount point: the kernel refuses to move it
            return None                 # (EBUSY), and nothing on it is looked at
        raise
    try:
        try:
            path, d, read = "", depth, True
            while True:
                if read:
                    subdirs = []
                    with os.scandir(fd) as it:
                        for entry in it:
                            seen += 1
                            if seen > MOVE_CHECK_ENTRIES:
                                raise FsError(f"{what!r} holds too many entries to check "
                                              f"before moving it higher (more than "
                                              f"{MOVE_CHECK_ENTRIES})", "EPERM")
                            if time.monotonic() > deadline:
                                raise FsError(f"the entries of {what!r} took longer than "
                                              f"{MOVE_CHECK_SECONDS:g} s to check before "
                                              f"moving it higher", "EPERM")
                            where = f"{path}/{entry.name}" if path else entry.name
                            try:
                                if entry.is_symlink():
                                    if _climbs(os.fsencode(os.readlink(entry.name, dir_fd=fd)),
                                               d):
                                        return where
                                elif entry.is_dir(follow_symlinks=False):
                                    subdirs.append(entry.name)
                            except FileNotFoundError:
                                continue        # removed meanwhile (removals take no turn)
                    s = os.fstat(fd)
                    levels.append(((s.st_dev, s.st_ino), path, d, subdirs))
                while not levels[-1][3]:        # walked whole: back up to the next one
                    levels.pop()
                    if not levels:
                        return None
                    up = os.open("..", flags, dir_fd=fd)
                    os.close(fd)
                    fd = up
                    s = os.fstat(fd)
                    if (s.st_dev, s.st_ino) != levels[-1][0]:
                        raise FsError(f"{what!r} changed while it was checked before moving "
                                      f"it higher", "EPERM")
                if len(levels) >= MOVE_CHECK_DEPTH:
                    raise FsError(f"{what!r} is too deep to check before moving it higher "
                                  f"(more than {MOVE_CHECK_DEPTH} directories within it)",
                                  "EPERM")
                _ident, path, d, subdirs = levels[-1]
                entry = subdirs.pop()
                try:
                    down = _walk_into(fd, entry, flags)
                except (FileNotFoundError, NotADirectoryError):
                    read = False                # removed meanwhile: nothing in it to move
                    continue
                except OSError as e:
                    if e.errno != errno.EXDEV:
                        raise
                    where = f"{path}/{entry}" if path else entry
                    raise FsError(f"{what!r} holds a mount point ({where!r}): what is "
                                  f"mounted there is not the grant's, to look into or to "
                                  f"move higher", "EPERM") from None
                os.close(fd)
                fd = down
                path, d, read = (f"{path}/{entry}" if path else entry), d + 1, True
        except OSError as e:
            raise FsError(f"the entries of {what!r} could not all be checked before moving it "
                          f"higher: {e.strerror or e}", "EPERM") from None
    finally:
        os.close(fd)


def _walk_into(dfd: int, name, flags: int) -> int:
    """The directory `name` of `dfd` opened for _climbing_link_in, never across a
    mount point (EXDEV, as every path a grant resolves: RESOLVE_NO_XDEV).  It was
    os.open: the walk of a directory moved higher read what was mounted beneath it
    (a sysfs, a tmpfs the grant cannot list, a hung network file system, holding
    the turn of every compartment's renames), and its refusal named a link found
    there."""
    return _beneath(dfd, os.fsencode(name), flags)


def _climbs(target: bytes, depth: int | None) -> bool:
    """Whether a link target, followed from `depth` directories below the grant
    (None: cannot tell, the least depth assumed), may climb above it.

    Only leading `..` are allowed: after a name, `..` climbs from wherever that
    name leads, and a name may itself be a link (`self -> .` makes
    `self/self/../..` climb two levels from one).  With every `..` leading, a
    target climbs exactly as far as it says, and every link it passes through
    was held to the same rule, so a chain of links stays beneath too (but for a
    link the host planted that leads outside: docs/policy-reference.md)."""
    depth = depth or 0
    named = False
    for part in target.split(b"/"):
        if part == b"..":
            if named:
                return True
            depth -= 1
            if depth < 0:
                return True
        elif part not in (b"", b"."):
            named = True
    return False


def _depth_below(root: int, parent: int) -> int | None:
    """How many directories `parent` lies below `root` (both descriptors of
    directories, `parent` resolved beneath `root`); None if that cannot be told
    (it was moved or removed meanwhile)."""
    a = os.readlink(f"/proc/self/fd/{root}")
    b = os.readlink(f"/proc/self/fd/{parent}")
    rel = os.path.relpath(b, a)
    if rel == ".":
        return 0
    if rel == ".." or rel.startswith("../") or not b.startswith("/") \
            or b.endswith(" (deleted)"):
        return None
    return len(rel.split("/"))


def _page(fd: int, cursor: int, budget: int) -> dict:
    """Entries from the directory stream `fd` (already at `cursor`) until
    `budget` bytes of results or LIST_PAGE_ENTRIES entries."""
    buf = ctypes.create_string_buffer(_GETDENTS_BUF)
    entries, used, last = [], 0, cursor
    head, find, kinds = _DIRENT.unpack_from, bytes.find, _DT_KIND    # the loop's, at hand
    while True:
        n = _libc.syscall(SYS_GETDENTS64, fd, buf, _GETDENTS_BUF)
        if n < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        if n == 0:
            return {"entries": entries, "cursor": last, "done": True}
        raw, pos = buf.raw[:n], 0
        while pos < n:
            ino, off, reclen, dtype = head(raw, pos)
            end = find(raw, b"\0", pos + 19, pos + reclen)     # the kernel ends it with one
            name = raw[pos + 19:end if end >= 0 else pos + reclen]
            pos += reclen
            if name == b"." or name == b"..":
                last = off
                continue
            cost = 40 + (len(name) + 8 & ~7)          # an Entry: 4 words, and its name
            if used + cost > budget or len(entries) >= LIST_PAGE_ENTRIES:
                if not entries:
                    raise FsError(f"an entry ({len(name)} bytes of name) does not fit in a "
                                  f"message to you (message_size)", "E2BIG")
                return {"entries": entries, "cursor": last, "done": False}
            kind = kinds.get(dtype)
            if kind is None:
                try:
                    kind = "other" if dtype else _kind(os.stat(name, dir_fd=fd,
                                                               follow_symlinks=False).st_mode)
                except FileNotFoundError:        # removed since it was read: not there
                    last = off
                    continue
            try:
                text = name.decode("utf-8")
            except UnicodeDecodeError:
                # not a name anyone can use here (paths are UTF-8: EILSEQ); shown with
                # replacement characters it could be taken for another entry's name
                if entries:
                    return {"entries": entries, "cursor": last, "done": False}
                raise FsError(f"the name {name[:64]!r} in this directory is not valid "
                              f"UTF-8", "EILSEQ") from None
            entries.append({"name": text, "kind": kind, "inode": ino, "cursor": off})
            used += cost
            last = off


def _write_appending(fd: int, data: bytes) -> int:
    """write(2) with O_APPEND on for it (and as it was after): where pwritev2's
    RWF_APPEND is not supported."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & os.O_APPEND:
        return os.write(fd, data)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_APPEND)
    try:
        return os.write(fd, data)
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


class File:
    """An open regular file: a descriptor, what it was opened for, and the
    attenuation of the grant it came through."""

    def __init__(self, fd: int, label: str, readable: bool, writable: bool,
                 append: bool = False, append_only: bool = False, read_only: bool = False,
                 quota: WriteQuota | None = None):
        self._h = _Handle(fd, label)
        self.label = label
        self.readable = readable
        self.writable = writable
        self.appending = append             # O_APPEND is on
        self.append_only = append_only      # ... and always will be (the grant)
        self.read_only = read_only
        self.quota = quota or WriteQuota(None)
        self._lock = threading.Lock()       # append: its write, then the offset it left

    @property
    def fd(self) -> int:
        return self._h.fd

    @classmethod
    def grant(cls, path: str, read_only: bool = False, append_only: bool = False,
              max_bytes_written: int | None = None, refuse_hard_links: bool = False,
              quota: WriteQuota | None = None, name: str | None = None,
              vet=None) -> "File":
        """The granted file.  `quota`, `name`, `vet`: as Directory.grant's."""
        if read_only:
            flags, kw = os.O_RDONLY, dict(readable=True, writable=False)
        elif append_only:
            flags, kw = os.O_WRONLY | os.O_APPEND, dict(readable=False, writable=True,
                                                        append=True)
        else:
            flags, kw = os.O_RDWR, dict(readable=True, writable=True)
        try:
            p = _vetted(_ordinary(os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC),
                                  path), vet)
        except OSError as e:
            raise _explain(e, path) from None
        try:
            s = os.fstat(p)
            if not st.S_ISREG(s.st_mode):
                raise _not_openable(s, path)
            if refuse_hard_links and s.st_nlink > 1:
                raise FsError(f"{path} has {s.st_nlink} hard links (refuse_hard_links)", "EPERM")
            fd = _reopen(p, flags)
        except OSError as e:
            raise _explain(e, path) from None
        finally:
            os.close(p)
        return _named(cls(fd, path, append_only=append_only, read_only=read_only,
                          quota=quota or WriteQuota(max_bytes_written), **kw), name)

    def _writing(self, what: str):
        if not self.writable:
            why = "read-only" if self.read_only else "not open for writing"
            raise FsError(f"{self.label} is {why}: cannot {what}", "EBADF")

    def read(self, offset: int, count: int, *, max_bytes: int | None = None) -> dict:
        if not self.readable:
            raise FsError(f"{self.label} is not open for reading", "EBADF")
        if not (type(offset) is int and 0 <= offset <= OFF_MAX):     # the hot path: inline
            offset = _offset(offset, "offset")
        if not (type(count) is int and count >= 0):
            raise FsError(f"count {count!r} is out of range", "EINVAL")
        count = min(count, MAX_READ, (DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)
                    - _RESULT_SLACK)
        h = self._h
        fd = h.__enter__()
        try:
            return {"data": os.pread(fd, count if count > 0 else 0, offset)}
        except OSError as e:
            raise _explain(e, self.label) from None
        finally:
            h.__exit__()

    def read_now(self, offset: int, count: int, *, max_bytes: int | None = None) -> dict | None:
        """`read`, if it can be done without waiting for the disk: all of it from the
        page cache (preadv2 with RWF_NOWAIT), so that the event loop may do it.
        None: it would wait, was short, or the file system cannot say (a worker
        thread then runs `read`, which gives the exact answer)."""
        if _NOWAIT is None or not self.readable or not (type(offset) is int and
                                                        0 <= offset <= OFF_MAX) \
                or not (type(count) is int and count >= 0):
            return None
        count = min(count, MAX_READ, (DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)
                    - _RESULT_SLACK)
        if count <= 0:
            return None
        buf = bytearray(count)
        try:
            fd = self._h.__enter__()
        except FsError:
            return None
        try:
            n = os.preadv(fd, [buf], offset, _NOWAIT)
        except OSError:                # EAGAIN: not cached; EOPNOTSUPP; anything: the thread
            return None
        finally:
            self._h.__exit__()
        if n != count:                 # short: at the end of the file, or partly cached
            return None
        return {"data": bytes(buf)}

    def write(self, offset: int, data: bytes) -> dict:
        self._writing("write")
        if self.appending:
            why = "append-only" if self.append_only else "open to append"
            raise FsError(f"{self.label} is {why}: use append, not write at an offset", "EPERM")
        offset = _offset(offset, "offset")
        if offset + len(data) > OFF_MAX:
            # EINVAL, as pwrite(2) says of a write whose end would pass the largest
            # offset (and wasmtime); EFBIG is the file system's, for one that begins
            # past the largest file it holds (fuzz.wasi seed 1272 of 300 calls)
            raise FsError(f"{self.label}: writing {len(data)} bytes at {offset} would pass "
                          f"the largest offset (2^63 - 1)", "EINVAL")
        with self._h as fd:
            # a write past the end adds the zeros before it too, as truncate does, and
            # they count alike (else one byte at 2^40 made a file of a TiB for one byte
            # of the quota, which a file system without holes writes out in full)
            try:
                gap = max(offset - os.fstat(fd).st_size, 0) \
                    if data and self.quota.left is not None else 0
            except OSError as e:
                raise _explain(e, self.label) from None
            self.quota.spend(len(data) + gap, self.label)
            try:
                n = os.pwrite(fd, data, offset)
            except OSError as e:
                self.quota.refund(len(data) + gap)
                raise _explain(e, self.label) from None
        self.quota.refund(len(data) - n + (gap if not n else 0))
        return {"written": n}

    def append(self, data: bytes) -> dict:
        """Write at the end; the offset it was written at and the bytes written (a
        short write, as write(2)'s: the file system full, the file at its largest)."""
        self._writing("append")
        with self._h as fd, self._lock:
            # spent once the File is known open: an append to a closed one (released
            # by its holder, a call queued after the release) spent the quota for good
            self.quota.spend(len(data), self.label)
            try:
                # the kernel picks the end in the write itself (RWF_APPEND, as O_APPEND
                # does), and leaves this descriptor's offset after what it wrote: found
                # first (lseek, fstat) and written then, two Files of one file appending
                # at once wrote over each other or were told one offset for both
                if not data:                           # nothing written: nothing moved
                    return {"offset": os.fstat(fd).st_size, "written": 0}
                try:
                    n = os.pwritev(fd, [data], -1, os.RWF_APPEND)
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    n = _write_appending(fd, data)     # no RWF_APPEND here: O_APPEND
                end = os.lseek(fd, 0, os.SEEK_CUR) - n
            except OSError as e:
                self.quota.refund(len(data))
                raise _explain(e, self.label) from None
        self.quota.refund(len(data) - n)
        return {"offset": end, "written": n}

    def truncate(self, size: int):
        if self.append_only:
            raise FsError(f"{self.label} is append-only: cannot truncate", "EPERM")
        if not self.writable:
            # EINVAL, as ftruncate(2) says of a descriptor not open for writing (and
            # wasmtime): a write to one is EBADF, a truncation is not
            why = "read-only" if self.read_only else "not open for writing"
            raise FsError(f"{self.label} is {why}: cannot truncate", "EINVAL")
        size = _offset(size, "size")
        with self._h as fd:
            try:
                grow = size - os.fstat(fd).st_size    # zeros added count as written
                self.quota.spend(max(grow, 0), self.label)
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    self.quota.refund(grow)
                    raise
            except OSError as e:
                raise _explain(e, self.label) from None

    def stat(self) -> dict:
        with self._h as fd:
            return {"info": _info(os.fstat(fd))}

    def setAppend(self, append: bool):                     # noqa: N802
        if not append and self.append_only:
            raise FsError(f"{self.label} is append-only: its writes always go to the end",
                          "EPERM")
        with self._h as fd, self._lock:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL,
                        flags | os.O_APPEND if append else flags & ~os.O_APPEND)
            self.appending = bool(append)

    def sync(self, dataOnly: bool = False):                 # noqa: N803
        with self._h as fd:
            try:
                (os.fdatasync if dataOnly else os.fsync)(fd)
            except OSError as e:
                raise _explain(e, self.label) from None

    def setTimes(self, accessedNs: int, accessed: str, modifiedNs: int,  # noqa: N802,N803
                 modified: str):                                          # noqa: N803
        if self.read_only:
            raise FsError(f"{self.label} is read-only: cannot set its times", "EROFS")
        if self.append_only:
            raise FsError(f"{self.label} is append-only: cannot set its times", "EPERM")
        times = _times(accessedNs, accessed, modifiedNs, modified)
        with self._h as fd:
            _utimensat(fd, times, self.label)

    def close(self):
        self._h.close()


def hard_linked(path: str, limit: int = 100_000) -> tuple[int, list[str], bool]:
    """Regular files under `path` (symbolic links not followed) that have more than
    one hard link: (how many, the first few paths, whether all of `path` was seen
    within `limit` entries).  For `wsuper check`: such a link may have been made on
    the host to a file outside every grant.

    What the grant reaches only: each directory is opened beneath `path` as the
    grant opens it (openat2, RESOLVE_NO_XDEV), so what is mounted beneath it (which
    no path of the grant crosses) is not walked: a proc, a sysfs or another file
    system mounted there was read entry by entry (a hung network mount held
    `check` for good), and its files with two links were warned about though the
    compartment could never open them."""
    count, examples, seen = 0, [], 0
    try:
        root = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0, [], True
    try:
        stack = [""]
        while stack:
            rel = stack.pop()
            try:
                fd = _openat2(root, os.fsencode(rel) or b".",
                              os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except (OSError, FsError):    # a mount point (EXDEV), gone, unreadable
                continue
            try:
                with os.scandir(fd) as it:
                    for e in it:
                        seen += 1
                        if seen > limit:
                            return count, examples, False
                        try:
                            s = e.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        where = f"{rel}/{e.name}" if rel else e.name
                        if st.S_ISDIR(s.st_mode):
                            stack.append(where)
                        elif st.S_ISREG(s.st_mode) and s.st_nlink > 1:
                            count += 1
                            if len(examples) < 3:
                                examples.append(os.path.join(path, where))
            except OSError:
                continue
            finally:
                os.close(fd)
    finally:
        os.close(root)
    return count, examples, True
