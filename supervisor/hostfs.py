"""Host files and directories, served by the supervisor (engines have no file access).

Every path a compartment names is resolved by the kernel beneath the granted
directory's descriptor: openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS, so '..', absolute paths and symbolic links (planted
before or created during the run, anywhere on the path) fail, and a rename
racing with an open cannot lead outside: there is no check-then-open.

Attenuation is part of each object and carried to what it opens: a read-only
directory opens read-only files and read-only subdirectories; an append-only
one opens files with O_APPEND (so the kernel refuses to overwrite, whatever
the interface does) and can neither remove, rename nor truncate.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat as st

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x02, 0x04, 0x08
MAX_READ = 1 << 20


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


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _openat2(dirfd: int, path: str, flags: int, mode: int = 0o644) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0,
                   RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(SYS_OPENAT2, dirfd, path.encode(), ctypes.byref(how),
                       ctypes.sizeof(how))
    if fd < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), path)
    return fd


def check_path(path: str) -> str:
    """Refuse, with a clear reason, what can never be beneath a directory."""
    if "\0" in path:
        raise FsError("path contains a NUL byte", "EINVAL")
    if path.startswith("/"):
        raise FsError(f"{path!r} is absolute; paths are relative to the granted directory",
                      "ENOTCAPABLE")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FsError(f"{path!r} contains '..'; paths cannot leave the granted directory",
                      "ENOTCAPABLE")
    return "/".join(parts) or "."


def _explain(e: OSError, path: str) -> FsError:
    reasons = {errno.ELOOP: "crosses a symbolic link (not allowed)",
               errno.EXDEV: "leads outside the granted directory",
               errno.ENOENT: "does not exist", errno.EEXIST: "already exists",
               errno.EISDIR: "is a directory", errno.ENOTDIR: "is not a directory",
               errno.ENOTEMPTY: "is not empty", errno.EACCES: "is not accessible",
               errno.EPERM: "is not permitted", errno.ENOSPC: "no space left"}
    code = "ENOTCAPABLE" if e.errno == errno.EXDEV else errno.errorcode.get(e.errno, "EIO")
    return FsError(f"{path!r} {reasons.get(e.errno, e.strerror or 'failed')}", code)


def _kind(mode: int) -> str:
    return "file" if st.S_ISREG(mode) else "directory" if st.S_ISDIR(mode) else "other"


def _info(s: os.stat_result) -> dict:
    return {"kind": _kind(s.st_mode), "size": s.st_size, "modifiedNs": s.st_mtime_ns,
            "inode": s.st_ino}


class WriteQuota:
    """Bytes that may still be written through one grant and all it opened."""

    def __init__(self, limit: int | None):
        self.left = limit

    def spend(self, n: int, label: str):
        if self.left is not None:
            if n > self.left:
                raise FsError(f"{label}: write quota exhausted ({self.left} bytes left, "
                              f"{n} asked; limit max_bytes_written)", "EDQUOT")
            self.left -= n


class Directory:
    def __init__(self, fd: int, label: str, read_only: bool = False, append_only: bool = False,
                 quota: WriteQuota | None = None):
        self.fd = fd                   # O_PATH descriptor, owned by this object
        self.label = label
        self.read_only = read_only
        self.append_only = append_only
        self.quota = quota or WriteQuota(None)

    @classmethod
    def grant(cls, path: str, subdir: str | None = None, max_bytes_written: int | None = None,
              **attenuation) -> "Directory":
        d = cls(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC),
                path, quota=WriteQuota(max_bytes_written), **attenuation)
        if subdir:
            try:
                sub = d.subdir(subdir)["dir"]   # beneath, no symlinks, like any path
            finally:
                d.close()
            return sub
        return d

    def _at(self, path: str, flags: int, mode: int = 0o644) -> int:
        path = check_path(path)
        try:
            return _openat2(self.fd, path, flags, mode)
        except OSError as e:
            raise _explain(e, path) from None

    def _parent(self, path: str) -> tuple[int, str]:
        path = check_path(path)
        if path == ".":
            raise FsError("this operation needs a name, not the directory itself", "EINVAL")
        parent, _, name = path.rpartition("/")
        return self._at(parent or ".", os.O_PATH | os.O_DIRECTORY), name

    def open(self, path: str, mode: str) -> "File":
        if mode != "read" and self.read_only:
            raise FsError(f"{self.label} is read-only: files open for reading only", "EROFS")
        if mode in ("write", "readWrite") and self.append_only:
            raise FsError(f"{self.label} is append-only: files open to append or read", "EPERM")
        flags = {"read": os.O_RDONLY, "write": os.O_WRONLY, "append": os.O_WRONLY | os.O_APPEND,
                 "readWrite": os.O_RDWR}[mode]
        fd = self._at(path, flags | os.O_NOFOLLOW)
        return {"file": File(fd, f"{self.label}/{check_path(path)}",
                             readable=mode in ("read", "readWrite"), writable=mode != "read",
                             append_only=mode == "append" or self.append_only, quota=self.quota)}

    def create(self, path: str) -> "File":
        if self.read_only:
            raise FsError(f"{self.label} is read-only: cannot create {path!r}", "EROFS")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | (os.O_APPEND if self.append_only else 0)
        fd = self._at(path, flags)
        return {"file": File(fd, f"{self.label}/{check_path(path)}", readable=False,
                             writable=True, append_only=self.append_only, quota=self.quota)}

    def list(self, path: str) -> list[tuple[str, str]]:
        fd = self._at(path or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.scandir(fd) as it:
                return {"entries": [{"name": name, "kind": kind} for name, kind in sorted(
                    (e.name, _kind(e.stat(follow_symlinks=False).st_mode)) for e in it)]}
        finally:
            os.close(fd)

    def stat(self, path: str) -> dict:
        fd = self._at(path or ".", os.O_PATH)
        try:
            return {"info": _info(os.fstat(fd))}
        finally:
            os.close(fd)

    def remove(self, path: str):
        if self.read_only or self.append_only:
            raise FsError(f"{self.label} is {'read' if self.read_only else 'append'}-only: "
                          f"cannot remove {path!r}", "EROFS" if self.read_only else "EPERM")
        parent, name = self._parent(path)
        try:
            s = os.stat(name, dir_fd=parent, follow_symlinks=False)
            (os.rmdir if st.S_ISDIR(s.st_mode) else os.unlink)(name, dir_fd=parent)
        except OSError as e:
            raise _explain(e, path) from None
        finally:
            os.close(parent)

    def mkdir(self, path: str):
        if self.read_only:
            raise FsError(f"{self.label} is read-only: cannot make {path!r}", "EROFS")
        parent, name = self._parent(path)
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
        except OSError as e:
            raise _explain(e, path) from None
        finally:
            os.close(parent)

    def rename(self, from_: str, to: str):
        """Rename within this directory (replacing `dst`): both names are resolved
        beneath it, and renameat(2) moves the last component only."""
        src, dst = from_, to
        if self.read_only or self.append_only:
            raise FsError(f"{self.label} is {'read' if self.read_only else 'append'}-only: "
                          f"cannot rename {src!r}", "EROFS" if self.read_only else "EPERM")
        src_parent, src_name = self._parent(src)
        try:
            dst_parent, dst_name = self._parent(dst)
        except FsError:
            os.close(src_parent)
            raise
        try:
            os.rename(src_name, dst_name, src_dir_fd=src_parent, dst_dir_fd=dst_parent)
        except OSError as e:
            raise _explain(e, src) from None
        finally:
            os.close(src_parent)
            os.close(dst_parent)

    def subdir(self, path: str) -> "Directory":
        fd = self._at(path, os.O_PATH | os.O_DIRECTORY)
        return {"dir": Directory(fd, f"{self.label}/{check_path(path)}", self.read_only,
                                 self.append_only, self.quota)}

    def close(self):
        os.close(self.fd)


class File:
    def __init__(self, fd: int, label: str, readable: bool, writable: bool, append_only: bool,
                 quota: WriteQuota | None = None):
        self.fd = fd
        self.label = label
        self.readable = readable
        self.writable = writable
        self.append_only = append_only
        self.quota = quota or WriteQuota(None)

    @classmethod
    def grant(cls, path: str, read_only: bool = False, append_only: bool = False,
              max_bytes_written: int | None = None) -> "File":
        if read_only:
            flags, kw = os.O_RDONLY, dict(readable=True, writable=False, append_only=False)
        elif append_only:
            flags, kw = os.O_WRONLY | os.O_APPEND, dict(readable=False, writable=True,
                                                        append_only=True)
        else:
            flags, kw = os.O_RDWR, dict(readable=True, writable=True, append_only=False)
        return cls(os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC), path,
                   quota=WriteQuota(max_bytes_written), **kw)

    def read(self, offset: int, count: int, *, max_bytes: int = MAX_READ) -> dict:
        if not self.readable:
            raise FsError(f"{self.label} is not open for reading", "EBADF")
        try:
            return {"data": os.pread(self.fd, min(count, MAX_READ, max_bytes), offset)}
        except OSError as e:
            raise _explain(e, self.label) from None

    def write(self, offset: int, data: bytes) -> int:
        if not self.writable:
            raise FsError(f"{self.label} is read-only", "EBADF")
        if self.append_only:
            raise FsError(f"{self.label} is append-only: use append, not write at an offset",
                          "EPERM")
        self.quota.spend(len(data), self.label)
        try:
            return {"written": os.pwrite(self.fd, data, offset)}
        except OSError as e:
            raise _explain(e, self.label) from None

    def append(self, data: bytes) -> int:
        if not self.writable:
            raise FsError(f"{self.label} is read-only", "EBADF")
        self.quota.spend(len(data), self.label)
        try:
            if self.append_only:                    # O_APPEND: the kernel picks the end
                end = os.fstat(self.fd).st_size
                os.write(self.fd, data)
                return {"offset": end}
            end = os.lseek(self.fd, 0, os.SEEK_END)
            os.pwrite(self.fd, data, end)
            return {"offset": end}
        except OSError as e:
            raise _explain(e, self.label) from None

    def truncate(self, size: int):
        if not self.writable or self.append_only:
            raise FsError(f"{self.label} is {'append' if self.append_only else 'read'}-only: "
                          f"cannot truncate", "EPERM" if self.append_only else "EBADF")
        try:
            os.ftruncate(self.fd, size)
        except OSError as e:
            raise _explain(e, self.label) from None

    def stat(self) -> dict:
        return {"info": _info(os.fstat(self.fd))}

    def close(self):
        os.close(self.fd)
