"""OS confinement of an engine process (Linux), applied after the module is loaded.

Owns: every layer the kernel puts around an engine, and `probe()`, which says
once at start which layers this kernel cannot give.  Must not: import wasmtime,
the engine or the supervisor; leave a layer out silently (a layer the probe
found available and that then fails is a `ConfinementError`: the engine does
not run).

Assume the engine's Python has been taken over -- or wasmtime, so that the
guest runs native code: the kernel must still hold it.  `confine()` applies,
in this order:

1. descriptors: every one but stdin/stdout/stderr, the supervisor socket
   and the module's memfd is pointed at /dev/null.  Not closed: some belong
   to libraries (pycapnp's schema parser keeps directory descriptors of its
   import path), which would close them again later, perhaps after the
   number was reused; on /dev/null they reach nothing;
2. resource limits: no new files of any size (RLIMIT_FSIZE 0), few descriptors,
   bounded address space, no core dumps, no locked memory, no queued signals;
3. namespaces: new IPC, UTS, network and mount namespaces; the mount
   namespace is emptied (its root is an empty read-only tmpfs, every other
   mount is detached).  A spare engine makes them before its request
   (enter_early); step 1 then also ends the two descriptors it kept (its
   /proc/self and /dev/null).  Not root: they come with a user namespace that maps
   the engine's own uid and gid to themselves and nothing else;
4. privileges: root changes to the unprivileged `user` (uid, gid, no
   supplementary groups); then every capability goes -- bounding set,
   ambient, inheritable, permitted, effective;
5. no new privileges (PR_SET_NO_NEW_PRIVS);
6. Landlock: no filesystem access at all, no TCP bind or connect, no signals
   or abstract Unix sockets outside the engine (as far as the kernel's
   Landlock ABI goes);
7. seccomp: an allow-list of the system calls a running engine makes
   (seccomp.py), synchronised to every thread.  It refuses PROT_EXEC to mmap
   and mprotect, so that no new code can be made; and before step 1, no
   memory is left both writable and executable (`seal_code`: libffi makes
   ctypes' callbacks in such a page, and every engine inherited it).

Death with the supervisor is PR_SET_PDEATHSIG (`die_with_parent`); the
environment is empty because the supervisor starts the zygote with none.

We wrote this with ctypes instead of depending on `landlockpy`/`pyseccomp`:
it is a few hundred lines of well-documented kernel ABI, and an engine must
not import more than it needs.  The engine must be single-threaded when it is
confined (wasmtime is configured without parallel compilation): Landlock and
the credential changes apply to the calling thread only.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import resource
import signal
import stat
import struct

from . import seccomp

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
# Looked up now (the zygote imports this module), not by every engine: ~30 µs each.
_libc.unshare, _libc.umount2, _libc.setgroups

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# Landlock (x86_64 and aarch64 share these syscall numbers)
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1

SYS_CAPSET = 126
SYS_PIVOT_ROOT = 155
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
#: The namespaces every engine gets, with what each keeps from it.
NAMESPACES = {
    "ipc": (CLONE_NEWIPC, "other processes' System V IPC and POSIX message queues"),
    "uts": (CLONE_NEWUTS, "the host name"),
    "net": (CLONE_NEWNET, "network interfaces and abstract Unix sockets"),
    "mount": (CLONE_NEWNS, "every mounted file system (an empty root instead)"),
}

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
MNT_DETACH = 2


class ConfinementError(OSError):
    """A layer the kernel offers could not be applied: the engine must not run."""


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL):
    """Ask the kernel to SIGKILL us (or send `sig`) when `parent_pid` (our parent)
    dies.  The setting is cleared when the process changes user: call it again
    after."""
    _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent_pid:               # it died before we asked
        os._exit(1)


# ---------------------------------------------------------------- what the kernel offers

def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 if it has none (or it is disabled)."""
    v = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return max(v, 0)


_seccomp: bool | None = None


def seccomp_supported() -> bool:
    global _seccomp
    if _seccomp is None:
        _seccomp = platform.machine() == "x86_64" and _libc.prctl(21, 0, 0, 0, 0) >= 0
    return _seccomp                               # PR_GET_SECCOMP answers


_namespaces: dict | None = None      # name -> None (available) or why not; see namespaces()
_probing: tuple[int, int] | None = None   # (pid, read end) of the probe probe_soon forked


def namespaces() -> dict:
    """name -> None if engines started by this process get that namespace, else the
    reason they cannot.  Found out once, by a child that tries what engines do (the
    one probe_soon forked, if it did)."""
    global _namespaces, _probing
    if _namespaces is None:
        if _probing is not None:
            pid, r = _probing
            _probing = None
            _namespaces = _probe_report(pid, r)
        else:
            _namespaces = _try_namespaces()
    return _namespaces


def probe_soon():
    """Fork the namespace probe now, while this process is small and runs one thread
    (`wsuper up`, right after the zygote's launch); namespaces() reads its report.
    Forked from the supervisor once everything was imported, just before the first
    spawn, it was 6-14 ms on the way to the first `ready` (docs/performance.md, "Up
    and stop").  One that cannot be forked now is forked then, as before."""
    global _probing
    if _namespaces is None and _probing is None:
        try:
            _probing = _fork_probe()
        except OSError:
            pass


def probe_reaped():
    """The probe probe_soon forked, ended and reaped if its report was never read (a
    refused system): `cli.main` run in a process that goes on left it a zombie."""
    if _probing is not None:
        namespaces()


#: Namespaces a spare engine enters before it knows its compartment (enter_early):
#: they need nothing of it.  The mount namespace is emptied there too; what is read
#: through /proc until confine() (the module's memfd, the descriptors to keep, the
#: threads) is read through this process's own /proc/self, kept open for it (_proc).
EARLY = ("ipc", "uts", "net", "mount")
_entered_early: tuple[str, ...] = ()
#: Kept by enter_early when it empties the mount namespace, and closed by confine()
#: before any other layer: this process's /proc/self (O_PATH) and /dev/null.
_proc: int | None = None
_null: int | None = None


def enter_early():
    """In a process that will become one engine (a spare, compartments/zygote.py), before
    it is told which: new IPC, UTS, network and mount namespaces of its own, the mount
    namespace emptied (when not root, all inside a new user namespace of its own, as
    confine() would make them), and an empty capability bounding set.  confine() then
    does only the rest.  Each process gets fresh namespaces, as before; they are only
    made sooner.  Until confine(), this process reaches /proc/self through a descriptor
    (proc_path and the others below), and nothing else of the file system: from
    drop_root_early on, before it loads its module, only beneath that directory
    (by "..", the descriptor reached all of /proc: _landlock_own_proc).
    Raises ConfinementError (the engine must then not run)."""
    global _entered_early, _proc, _null
    wanted = [name for name in EARLY if namespaces()[name] is None]
    try:
        if _entered_early or not wanted:
            return
        if "mount" in wanted:
            _proc = os.open("/proc/self", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            _null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        _enter_namespaces(wanted, strict=True)
        _entered_early = tuple(wanted)
        _drop_bounding_set()             # inside the user namespace, if one was made
    finally:
        _drop_mount_template()           # used, or never to be: not kept


class proc_path:
    """`with proc_path("fd/3") as path:` a path to /proc/self/fd/3 that works for the
    block's duration (after enter_early, relative to /proc/self, the working directory
    then)."""

    def __init__(self, rel: str):
        self.rel = rel

    def __enter__(self) -> str:
        if _proc is None:
            return "/proc/self/" + self.rel
        os.fchdir(_proc)
        return self.rel

    def __exit__(self, *exc):
        if _proc is not None:
            os.chdir("/")


def proc_listdir(rel: str) -> list[str]:
    """os.listdir("/proc/self/" + rel), also after enter_early."""
    if _proc is None:
        return os.listdir("/proc/self/" + rel)
    fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=_proc)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def proc_readlink(rel: str) -> str:
    return os.readlink(rel, dir_fd=_proc) if _proc is not None \
        else os.readlink("/proc/self/" + rel)


def proc_read(rel: str) -> bytes:
    fd = os.open(rel, os.O_RDONLY | os.O_CLOEXEC, dir_fd=_proc) if _proc is not None \
        else os.open("/proc/self/" + rel, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def prepare():
    """Done once in the zygote, so that forked engines do not pay for it."""
    namespaces()
    _cap_last()
    if seccomp_supported():
        seccomp.program()
        seccomp.helper_program()         # the compilers' and schema parser's


#: An empty mount namespace, made once by the zygote when it is root
#: (make_mount_template), held by this descriptor: each engine enters it and makes
#: a copy of its own (_enter_mount_template) instead of emptying a copy of the
#: host's.  pivot_root, that emptying's step, walks every thread on the machine
#: (the kernel's chroot_fs_refs, under the tasklist lock): 0.22 ms with 200
#: threads, 1.0 ms with 2,200, in each engine; the copy of the empty one stays
#: at ~0.2 ms (docs/performance.md, "Start-up at scale").  A descriptor of the
#: zygote's: every child but a spare closes it (zygote.py, `theirs`), a spare once
#: it has its namespaces (enter_early).
_mount_template: int | None = None


def mount_template() -> int | None:
    """The empty mount namespace's descriptor (make_mount_template), or None."""
    return _mount_template


def make_mount_template():
    """As root, with mount namespaces: make the empty mount namespace engines copy
    (_mount_template), in a child that empties its own as an engine would and
    leaves once its namespace is held.  Nothing is held (engines empty their own,
    as before) when not root (an engine's user namespace has no right to enter
    the zygote's), without mount namespaces, or if any step fails."""
    global _mount_template
    if _mount_template is not None or os.geteuid() != 0 or namespaces().get("mount") is not None:
        return
    r, w = os.pipe()
    hold_r, hold_w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        for fd in (r, w, hold_r, hold_w):
            os.close(fd)
        return
    if pid == 0:                          # empties its mount namespace, then waits
        try:
            os.close(r)
            os.close(hold_w)
            _check(_libc.unshare(CLONE_NEWNS), "unshare(mount)")
            _empty_mount_namespace()
            os.write(w, b"1")
            os.read(hold_r, 1)            # until the zygote holds the namespace
        finally:
            os._exit(0)
    os.close(w)
    os.close(hold_r)
    try:
        if os.read(r, 1) == b"1":         # not reaped yet: the pid is our child's
            fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            if os.fstat(fd).st_ino == os.stat("/proc/self/ns/mnt").st_ino:
                os.close(fd)              # never the host's own
            else:
                _mount_template = fd
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(hold_w)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _drop_mount_template():
    """Close the empty mount namespace's descriptor, if this process holds it."""
    global _mount_template
    fd, _mount_template = _mount_template, None
    if fd is not None:
        os.close(fd)


def _enter_mount_template() -> bool:
    """In a process about to empty its mount namespace (as root, one thread): enter
    the empty one (_mount_template) and make a copy of it its own; the descriptor
    is closed either way.  False (nothing changed: empty one's own, as before) if
    there is none or it cannot be entered; ConfinementError if it was entered and
    no copy could be made (the process must then not run: it shares that one)."""
    global _mount_template
    fd, _mount_template = _mount_template, None
    if fd is None:
        return False
    try:
        if _libc.setns(fd, CLONE_NEWNS) != 0:
            return False
    finally:
        os.close(fd)
    _check(_libc.unshare(CLONE_NEWNS), "unshare(mount) of the empty mount namespace")
    os.chdir("/")
    return True


def probe() -> list[str]:
    """What this kernel lacks, as sentences for the supervisor to print once."""
    missing = []
    abi = landlock_abi()
    if abi == 0:
        missing.append("the kernel has no Landlock: engines are not confined to their files")
    elif abi < 6:
        missing.append(f"the kernel's Landlock ABI is {abi} (< 6): engines can still signal "
                       f"other processes of this user")
    if not seccomp_supported():
        missing.append(f"no seccomp filter on {platform.machine()}: engines can make any "
                       f"system call")
    found = namespaces()
    if all(why is not None and why.startswith(_NO_USERNS) for why in found.values()):
        missing.append(f"{next(iter(found.values()))}: engines share the host's IPC, UTS, "
                       f"network and mount namespaces, and keep this user's capability "
                       f"bounding set (they hold no capability)")
    else:
        missing += [f"no {name} namespace for engines ({why}): they share "
                    f"{NAMESPACES[name][1]} with the host"
                    for name, why in found.items() if why is not None]
    return missing


_NO_USERNS = "no user namespace"


def _try_namespaces() -> dict:
    """Fork a child that enters the namespaces as an engine would; its report."""
    return _probe_report(*_fork_probe())


def _fork_probe() -> tuple[int, int]:
    """A child that enters the namespaces as an engine would and writes its report:
    (its pid, the read end of its pipe).  Raises OSError (no pipe, no fork)."""
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:                                   # the child: try, report, leave
        try:
            report = {}
            try:
                _enter_namespaces(list(NAMESPACES), strict=False, report=report)
            except BaseException as e:  # noqa: BLE001 - anything: say so
                report["mount"] = str(e) or type(e).__name__
            os.write(w, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


def _probe_report(pid: int, r: int) -> dict:
    """The report of the probe child `pid` (_fork_probe), once it has ended."""
    with os.fdopen(r, "rb") as f:
        data = f.read()
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass                                       # reaped by someone else: its report stands
    try:
        report = json.loads(data)
    except ValueError:
        report = dict.fromkeys(NAMESPACES, "the probe died")
    return {name: report.get(name) for name in NAMESPACES}


# ---------------------------------------------------------------- confine

#: oom_score_adj of engines and of the children that compile modules: the kernel's OOM
#: killer ends them before any process of the machine that keeps the default 0.
OOM_FIRST = 1000


def rank_first_for_oom():
    """Make this process (an engine to be, a compiler) the first the kernel's OOM killer
    ends when the machine runs out of memory, before the supervisor and the zygote:
    there is no cgroup, and by size alone the supervisor (whose buffers grow with its
    clients) could rank before an engine that filled its RLIMIT_AS, or a compiler
    whose memfds no process's size counts; every compartment ended with it.  Raising
    it needs no privilege.  Before the file system is given up (it is a /proc file);
    a /proc that cannot be written changes nothing else, and is left at that."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(OOM_FIRST))
    except OSError:
        pass


def drop_root_early(user, parent: int):
    """In a spare that has its request, before it loads the module (wasmtime's
    Module.deserialize trusts the bytes a compiler wrote): when root, become `user`
    and hold no capability (empty bounding, ambient, effective, permitted and
    inheritable sets), and die with `parent` again (the change of user cleared
    it).  confine() then does the rest as that user.  Not root: nothing to give
    up yet.  Root or not, after enter_early, the file system it reaches is then
    only its own /proc/self directory (_landlock_own_proc).  Raises
    ConfinementError (root and no user, or a Landlock the kernel has that fails)."""
    if os.geteuid() == 0:
        if user is None:
            raise ConfinementError(errno.EPERM,
                                   "running as root, and no user to run the engine as")
        _drop_privileges(user)
        if parent:
            die_with_parent(parent)
    _landlock_own_proc()


def _landlock_own_proc():
    """After enter_early (an empty mount namespace, and its /proc/self kept open as
    _proc for reading the module and its descriptors until confine()): a Landlock
    layer that lets this process read and list beneath its own /proc/PID directory
    and nothing else, before Module.deserialize runs on a compiler's output.  The
    descriptor alone led, by "..", to all of /proc: every process's command line,
    and through /proc/PID/root the file system of any process of its uid that may
    be traced (another user's service as 65534; without root, every process of
    wsuper's user).  Its memfd, reached through /proc/self/fd, is on no mounted
    file system: Landlock lets it be read.  confine() adds its own layer (no file
    at all) later.  Nothing to do without enter_early's /proc, or without Landlock
    (probe() says so at start)."""
    abi = landlock_abi()
    if _proc is None or not abi:
        return
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:      # as confine() would
        raise ConfinementError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    landlock_read_only((_proc,), abi)


def confine(keep_fds, address_space: int | None = None, user=None, parent: int = 0) -> list[str]:
    """Confine this (single-threaded) process for good; returns what was unavailable.

    `user`: (uid, gid) to become when running as root (required then).
    `parent`: die with that process (again: a change of user clears it)."""
    root = os.geteuid() == 0
    if root and user is None:
        raise ConfinementError("running as root, and no user to run the engine as")
    threads = len(proc_listdir("task"))
    if threads != 1:       # Landlock and the change of user would hold one thread only
        raise ConfinementError(f"the engine has {threads} threads; it must have one")
    unavailable = [name for name, why in namespaces().items() if why is not None]
    use_seccomp = seccomp_supported()       # asked now: nothing can be looked up later
    _cap_last()
    fds = _open_fds()
    seal_code()                 # reads /proc/self/maps: before its descriptor goes
    _neutralize_fds_except(set(keep_fds) | {0, 1, 2}, fds)
    _limit_resources(address_space, max(fds, default=2))
    _enter_namespaces([n for n, why in namespaces().items()
                       if why is None and n not in _entered_early], strict=True,
                      in_user_namespace=bool(_entered_early))
    _drop_privileges(user if root else None)
    if parent:
        die_with_parent(parent)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfinementError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    abi = landlock_abi()
    if abi:
        _landlock_deny_all(abi)
    else:
        unavailable.append("landlock")
    if use_seccomp:
        seccomp.install()
    else:
        unavailable.append("seccomp")
    return unavailable


PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4


def _read_maps() -> str:
    """/proc/self/maps, whole (also after enter_early)."""
    fd = os.open("maps", os.O_RDONLY | os.O_CLOEXEC, dir_fd=_proc) if _proc is not None \
        else os.open("/proc/self/maps", os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(fd)


#: PROCMAP_QUERY (Linux 6.11): asks /proc/PID/maps for the next mapping at or after an
#: address that has given permissions, without the kernel writing, and this process
#: parsing, the text of all of them (~240 lines in an engine: reading and parsing
#: them was ~0.5-1 ms of each engine's start, the largest step of confine())
_PROCMAP_QUERY = 0xC0686611              # _IOWR('f', 17, struct procmap_query)
_Q_READABLE, _Q_WRITABLE, _Q_EXECUTABLE, _Q_SHARED, _Q_COVERING_OR_NEXT = 1, 2, 4, 8, 0x10
#: whether seal_code asks the kernel with PROCMAP_QUERY (tests turn it off to check
#: the text's path, which kernels before 6.11 take)
use_procmap_query = True


class _ProcmapQuery(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint64), ("query_flags", ctypes.c_uint64),
                ("query_addr", ctypes.c_uint64), ("vma_start", ctypes.c_uint64),
                ("vma_end", ctypes.c_uint64), ("vma_flags", ctypes.c_uint64),
                ("vma_page_size", ctypes.c_uint64), ("vma_offset", ctypes.c_uint64),
                ("inode", ctypes.c_uint64), ("dev_major", ctypes.c_uint32),
                ("dev_minor", ctypes.c_uint32), ("vma_name_size", ctypes.c_uint32),
                ("build_id_size", ctypes.c_uint32), ("vma_name_addr", ctypes.c_uint64),
                ("build_id_addr", ctypes.c_uint64)]


def _queried_maps(fd: int, flags: int) -> list[tuple]:
    """Every mapping of this process that has all of `flags` (_Q_*), in address order:
    (start, end, readable, (device, inode), name).  OSError: the kernel has no
    PROCMAP_QUERY (ENOTTY before 6.11), or it failed."""
    q, name, out, addr = _ProcmapQuery(), ctypes.create_string_buffer(4096), [], 0
    ioctl = _libc.ioctl
    while True:
        q.size, q.query_flags, q.query_addr = ctypes.sizeof(q), flags | _Q_COVERING_OR_NEXT, addr
        q.vma_name_size, q.vma_name_addr = len(name), ctypes.addressof(name)
        q.build_id_size = q.build_id_addr = 0
        if ioctl(fd, _PROCMAP_QUERY, ctypes.byref(q)) != 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:          # no mapping past `addr` has them
                return out
            raise OSError(err, os.strerror(err))
        if q.vma_end <= addr:                # never: but a loop must end
            raise OSError(errno.EIO, "PROCMAP_QUERY went backwards")
        out.append((q.vma_start, q.vma_end, bool(q.vma_flags & _Q_READABLE),
                    ((q.dev_major, q.dev_minor), q.inode),
                    name.value.decode("utf-8", "replace") or "anonymous"))
        addr = q.vma_end


def seal_code():
    """Leave no memory of this process through which it could write code it can run,
    before seccomp refuses it new executable memory (PROT_EXEC to mmap and mprotect):
    a mapping both writable and executable loses its write permission, and an
    executable mapping of a file that another mapping shares writably (a dual
    mapping, which cannot be undone here) is a ConfinementError.  libffi makes
    ctypes' callbacks (wasmtime-py's trampolines, ours) in a page that is both, once,
    at import in the zygote: every engine inherited it, a place for an engine taken
    over to write code and jump to.  Every callback an engine uses exists by then
    (they are module-level); a new one after this would fault, never run writable.

    The stack is the other way round: it keeps its write permission and loses
    execute (it holds no code).  A C library before glibc 2.41 makes the stack
    executable when any library it loads asks for one (PT_GNU_STACK), and made
    read-only and executable, the engine died of SIGSEGV at its next push, every
    start of every compartment (an outside review).  An engine has one thread
    here (its main one): no other stack to find.

    Asked of the kernel mapping by mapping (PROCMAP_QUERY: only the writable and
    executable ones, the shared writable ones, and the executable ones when there
    are any of those); from /proc/self/maps' text where the kernel cannot answer
    that way (before Linux 6.11), or fails to: the same decisions either way."""
    if use_procmap_query:
        fd = os.open("maps", os.O_RDONLY | os.O_CLOEXEC, dir_fd=_proc) if _proc is not None \
            else os.open("/proc/self/maps", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _seal_queried(fd)
            return
        except ConfinementError:
            raise
        except OSError:                      # the kernel cannot say: the text, from the start
            pass
        finally:
            os.close(fd)
    _seal_from_text()


def _seal_queried(fd: int):
    """seal_code, asking the kernel (PROCMAP_QUERY); OSError if it cannot answer."""
    for start, end, readable, _, name in _queried_maps(fd, _Q_WRITABLE | _Q_EXECUTABLE):
        stack = name.startswith("[stack")
        prot = (PROT_READ if readable else 0) | (PROT_WRITE if stack else PROT_EXEC)
        if _libc.mprotect(start, end - start, prot) != 0:
            where = f"{start:x}-{end:x}"
            raise ConfinementError(ctypes.get_errno(), f"cannot make the writable and "
                                   f"executable memory {where} ({name}) "
                                   f"{'not executable' if stack else 'read-only'}")
    # asked after the changes above, as the text's path judges each line once changed
    shared = {inode: f"{start:x}-{end:x} ({name})" for start, end, _, inode, name
              in _queried_maps(fd, _Q_WRITABLE | _Q_SHARED) if inode[1]}
    if not shared:                           # nearly always: no executable one to ask
        return
    code = {inode: f"{start:x}-{end:x} ({name})" for start, end, _, inode, name
            in _queried_maps(fd, _Q_EXECUTABLE) if inode[1]}
    for inode in shared.keys() & code.keys():
        raise ConfinementError(f"the executable memory {code[inode]} is also mapped "
                               f"writable, at {shared[inode]}")


def _seal_from_text():
    """seal_code from /proc/self/maps' text."""
    shared, code = {}, {}
    for line in _read_maps().splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        where, perms, inode = fields[0], fields[1], (fields[3], fields[4])
        name = fields[5] if len(fields) > 5 else "anonymous"
        if "w" in perms and "x" in perms:
            start, end = (int(x, 16) for x in where.split("-"))
            stack = name.startswith("[stack")        # "[stack]" ("[stack:TID]" before 4.5)
            prot = (PROT_READ if perms[0] == "r" else 0) | \
                (PROT_WRITE if stack else PROT_EXEC)
            if _libc.mprotect(start, end - start, prot) != 0:
                raise ConfinementError(ctypes.get_errno(), f"cannot make the writable and "
                                       f"executable memory {where} ({name}) "
                                       f"{'not executable' if stack else 'read-only'}")
            perms = perms.replace("x", "-") if stack else perms.replace("w", "-")
        if inode[1] != "0":
            if "w" in perms and perms[3] == "s":
                shared[inode] = f"{where} ({name})"
            if "x" in perms:
                code[inode] = f"{where} ({name})"
    for inode in shared.keys() & code.keys():
        raise ConfinementError(f"the executable memory {code[inode]} is also mapped "
                               f"writable, at {shared[inode]}")


def _neutralize_fds_except(keep, fds):
    """Point every descriptor in `fds` but those in `keep` at /dev/null (enter_early's
    /proc/self among them); then enter_early's own two are closed."""
    global _proc, _null
    null = _null if _null is not None else os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in sorted(fds):
            if fd not in keep and fd != null:
                try:
                    os.dup2(null, fd)
                except OSError:
                    pass
    finally:
        os.close(null)
        if _proc is not None:
            os.close(_proc)          # /dev/null already, as above
        _proc = _null = None


def neutralize_fds(keep):
    """Point every descriptor of this process but those in `keep` at /dev/null (as
    confine() does: a library may close its own later)."""
    _neutralize_fds_except(set(keep), _open_fds())


def _open_fds():
    try:
        return [int(x) for x in proc_listdir("fd")]
    except OSError:
        return list(range(3, 1024))


def lower_limit(which: int, soft: int, hard: int | None = None):
    """setrlimit(which, (soft, hard)) (hard: soft if None), never above the hard limit
    already in force: raising a hard limit fails without root (ValueError), and
    wsuper may run under one lower than ours (`ulimit -t 50`, `ulimit -v`, a service
    manager's LimitCPU=): every schema, module compile or wasm-tools child then
    failed.  Under a lower hard limit, that one holds (the tighter bound).

    A CPU limit ends its process with SIGXCPU at the soft limit only while that
    signal's default is in force: ignored where wsuper was launched (`trap '' XCPU`,
    a service manager's), it is ignored by every process wsuper starts, as exec
    keeps an ignored disposition, and a compiler ran on to the hard limit, 5 s more,
    killed there by SIGKILL, which named no limit.  So its default is restored
    with the limit (this process is the one limited: a child, or one about to exec)."""
    hard = soft if hard is None else hard
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        hard = min(hard, current)
    if which == resource.RLIMIT_CPU:
        signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    resource.setrlimit(which, (min(soft, hard), hard))


def _limit_resources(address_space, highest: int):
    lower_limit(resource.RLIMIT_FSIZE, 0)
    lower_limit(resource.RLIMIT_CORE, 0)
    # no memory the kernel may not swap out (MAP_LOCKED, which the filter refuses too):
    # root's limit, often unlimited in a container, was the engine's, 65534 though it is
    lower_limit(resource.RLIMIT_MEMLOCK, 0)
    # no signal queued with its information (r274): the kernel counts queued signals per
    # user, and an engine that queued its limit to itself (blocked, tgkill) left its user
    # none: no other process of it (another engine, a service of 65534; not root, the
    # supervisor and the operator's own programs) could make a POSIX timer or send an RT
    # signal.  What an engine is sent still comes: the kernel's own signals (its traps,
    # its alarm, death with its parent) and SIGTERM and SIGKILL go past the limit, and
    # abort()'s SIGABRT comes without its information
    lower_limit(resource.RLIMIT_SIGPENDING, 0)
    lower_limit(resource.RLIMIT_NOFILE, highest + 8)
    if address_space:
        lower_limit(resource.RLIMIT_AS, address_space)


def _check(result: int, what: str):
    if result != 0:
        e = ctypes.get_errno()
        raise ConfinementError(e, f"{what}: {os.strerror(e)}")


def _enter_namespaces(wanted, strict: bool, report: dict | None = None,
                      in_user_namespace: bool = False):
    """unshare() the `wanted` namespaces (not root: inside a user namespace of our
    own, made here unless `in_user_namespace`: enter_early made it).  strict: a
    failure raises ConfinementError.  Else (the probe) each one is tried alone, and
    why one failed goes to `report[name]`."""
    if not wanted:
        return
    if os.geteuid() != 0 and not in_user_namespace:
        try:
            _enter_user_namespace()
        except ConfinementError as e:
            if strict:
                raise
            report.update(dict.fromkeys(wanted, f"{_NO_USERNS}: {e.strerror}"))
            return
    if strict:
        # as root, the mount namespace is a copy of the zygote's empty one when it
        # can be (_enter_mount_template): no pivot_root walking every thread
        templated = "mount" in wanted and os.geteuid() == 0 and not in_user_namespace \
            and _enter_mount_template()
        rest = [name for name in wanted if not (templated and name == "mount")]
        if rest:
            _check(_libc.unshare(sum(NAMESPACES[name][0] for name in rest)),
                   "unshare(" + ", ".join(rest) + ")")
        if "mount" in rest:
            _empty_mount_namespace()
        return
    for name in wanted:
        try:
            _check(_libc.unshare(NAMESPACES[name][0]), "unshare")
            if name == "mount":
                _empty_mount_namespace()
        except ConfinementError as e:
            report[name] = e.strerror


#: Why the kernel refuses an ordinary user a user namespace, by errno, said after it
#: (`wsuper up` says it once): "No space left on device" alone read as a full disk.
_USERNS_WHY = {
    errno.ENOSPC: " (the limit on user namespaces is reached: sysctl "
                  "user.max_user_namespaces)",
    errno.EPERM: " (refused to users who are not root here: sysctl "
                 "kernel.unprivileged_userns_clone, or a security policy such as AppArmor's "
                 "kernel.apparmor_restrict_unprivileged_userns)",
    errno.EACCES: " (refused to users who are not root here: sysctl "
                  "kernel.unprivileged_userns_clone, or a security policy such as AppArmor's "
                  "kernel.apparmor_restrict_unprivileged_userns)",
}


def _enter_user_namespace():
    """A user namespace in which our own uid and gid map to themselves, and
    nothing else (so no id in it is privileged outside it)."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER) != 0:
        e = ctypes.get_errno()
        raise ConfinementError(e, f"unshare(user): {os.strerror(e)}{_USERNS_WHY.get(e, '')}")
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                       ("/proc/self/gid_map", f"{gid} {gid} 1")):
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as e:
            # AppArmor's restriction lets the namespace be made, with no capability in
            # it: the maps cannot be written
            raise ConfinementError(e.errno, f"writing {path}: {e.strerror}"
                                            f"{_USERNS_WHY.get(e.errno, '')}") from None


def _empty_mount_namespace():
    """In a new mount namespace: make an empty, read-only tmpfs the root and detach
    every other mount, so that no path leads anywhere (not even to /proc)."""
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
    # /proc surely exists; the tmpfs only needs somewhere to be mounted before it is the root
    _check(_libc.mount(b"none", b"/proc", b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       b"mode=0555,size=4k,nr_inodes=1"), "mounting an empty tmpfs")
    os.chdir("/proc")
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detaching the old root")
    os.chdir("/")


_CAP_LAST: int | None = None


def _cap_last() -> int:
    global _CAP_LAST
    if _CAP_LAST is None:
        try:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                _CAP_LAST = int(f.read())
        except (OSError, ValueError):
            _CAP_LAST = 63
    return _CAP_LAST


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_bounding_dropped = False


def _drop_bounding_set():
    """Empty the capability bounding set and the ambient set: for good (neither can
    grow again), and harmless to do early (they bound what an exec could gain, not
    what this process holds: it keeps what it needs for the namespaces and the
    change of user)."""
    global _bounding_dropped
    # not root: only in a user namespace of our own can the bounding set shrink
    can_drop = os.geteuid() == 0 or any(why is None for why in namespaces().values())
    for cap in range(_cap_last() + 1):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            e = ctypes.get_errno()
            if e == errno.EINVAL:                # past the kernel's last capability
                break
            if can_drop:
                raise ConfinementError(e, f"dropping capability {cap} from the bounding set: "
                                       f"{os.strerror(e)}")
            break                                # no user namespace: nothing to drop with
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    _bounding_dropped = True


def _drop_privileges(user):
    """Root: become `user`.  Then no capability at all, in any set."""
    if not _bounding_dropped:            # enter_early may have done it
        _drop_bounding_set()
    _become(user)
    _no_capabilities()


def _become(user):
    """Root: become `user` ((uid, gid), no supplementary groups); None: stay."""
    if user is None:
        return
    uid, gid = user
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise ConfinementError(errno.EPERM, f"could not become uid {uid} gid {gid}")


def _no_capabilities():
    """Empty the effective, permitted and inheritable sets."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)), "capset")


def landlock_ruleset(abi: int) -> bytes:
    """struct landlock_ruleset_attr handling every right Landlock ABI `abi` knows:
    every file-system access, TCP bind and connect (ABI 4), and the scopes (ABI 6:
    abstract Unix sockets and signals outside the domain).  What a ruleset handles
    and no rule allows is denied, so every ruleset wsuper makes (an engine's, the
    wasm-tools child's: instrument.py) starts from this one: a right left out of
    it is a right the sandboxed process keeps (the wasm-tools child, uid 0, could
    signal every process of the machine, the supervisor's among them)."""
    fs = (1 << 13) - 1                      # ABI 1: execute .. make_sym
    if abi >= 2:
        fs |= 1 << 13                       # refer
    if abi >= 3:
        fs |= 1 << 14                       # truncate
    if abi >= 5:
        fs |= 1 << 15                       # ioctl_dev
    net = 0b11 if abi >= 4 else 0           # bind_tcp, connect_tcp
    scoped = 0b11 if abi >= 6 else 0        # abstract unix sockets, signals
    if abi >= 6:
        return struct.pack("<QQQ", fs, net, scoped)
    if abi >= 4:
        return struct.pack("<QQ", fs, net)
    return struct.pack("<Q", fs)


PR_CAPBSET_READ = 23
CAP_SETPCAP = 8


def _bounding_set() -> list[int]:
    """The capabilities in this thread's bounding set."""
    held = []
    for cap in range(_cap_last() + 1):
        r = _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0)
        if r < 0:                                # past the kernel's last capability
            break
        if r:
            held.append(cap)
    return held


def exec_capability_problem() -> str | None:
    """Why drop_capabilities_before_exec cannot work here, or None: root (whom an
    exec gives its bounding set) with capabilities in that set but without
    CAP_SETPCAP to drop them (wsuper as root in a container or a unit whose
    capabilities are cut, setpcap among them), so that a helper it runs would
    hold them."""
    if os.geteuid() != 0:
        return None
    held = _bounding_set()
    if not held:
        return None
    try:
        with open("/proc/self/status") as f:
            effective = next(int(line.split()[1], 16) for line in f
                             if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        effective = 0
    if effective >> CAP_SETPCAP & 1:
        return None
    return (f"wsuper runs as root without CAP_SETPCAP, and its bounding set holds "
            f"{len(held)} capabilities (first {held[0]}): a program it runs would have "
            f"them, and it cannot drop them (empty the bounding set, or run wsuper "
            f"as another user)")


def drop_capabilities_before_exec():
    """In a child about to exec a helper (wasm-tools): when root, empty the capability
    bounding set and the ambient set, so that the program it execs, uid 0 though it
    is, gains no capability (exec gives root the bounding set).  Not root: an exec
    under no_new_privs gains none anyway.  A capability not in the set is not
    dropped (that needs CAP_SETPCAP too: root with an empty bounding set and no
    CAP_SETPCAP could run no helper at all).  Raises ConfinementError."""
    if os.geteuid() != 0:
        return
    for cap in _bounding_set():
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            e = ctypes.get_errno()
            raise ConfinementError(e, f"dropping capability {cap} from the bounding set: "
                                   f"{os.strerror(e)}")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def landlock_read_only(paths, abi: int):
    """Landlock: every right the kernel's ABI knows handled (landlock_ruleset);
    reading and executing allowed beneath `paths` only (none: no file at all); no
    TCP (ABI >= 4), no signal or abstract Unix socket outside (ABI >= 6).  A path
    that does not exist is left out; an int is a descriptor opened already (O_PATH:
    a directory this process may no longer reach by its path).  Raises
    ConfinementError."""
    execute, read_file, read_dir = 1 << 0, 1 << 2, 1 << 3
    attr = landlock_ruleset(abi)      # every right this ABI knows, then the rules
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, buf, len(attr), 0)
    if fd < 0:
        raise ConfinementError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for path in paths:
            try:
                pfd = path if isinstance(path, int) else os.open(path, os.O_PATH | os.O_CLOEXEC)
                is_dir = stat.S_ISDIR(os.fstat(pfd).st_mode)
            except OSError:
                continue
            try:
                allowed = execute | read_file | (read_dir if is_dir else 0)
                rule = ctypes.create_string_buffer(struct.pack("<Qi", allowed, pfd), 12)
                if _libc.syscall(445, fd, 1, rule, 0) != 0:   # landlock_add_rule, PATH_BENEATH
                    raise ConfinementError(ctypes.get_errno(), f"landlock_add_rule {path}")
            finally:
                if not isinstance(path, int):
                    os.close(pfd)
        if _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, fd, 0) != 0:
            raise ConfinementError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(fd)


#: What a helper that runs wasm-tools may read and execute besides the tool's own
#: directory: the dynamic loader's libraries and cache.
TOOL_LIBRARIES = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/etc/ld.so.cache")


def confine_helper(user=None, parent: int = 0, readable=()) -> list[str]:
    """Confine a short-lived child that parses hostile input (a module's compiler, the
    preflight's, the schema parser) once it has opened and read what it must; returns
    the layers this kernel could not give.  For good, in this order:

    1. root: no capability can come back (an empty bounding set and ambient set),
       then `user` (uid, gid; no supplementary groups) if given.  None keeps uid 0
       (the schema parser reads files only root may), without any capability;
    2. every capability set empty (effective, permitted, inheritable);
    3. no real-time scheduling and no lower nice value (RLIMIT_RTPRIO and
       RLIMIT_NICE 0), no queued signals (RLIMIT_SIGPENDING 0); death with
       `parent` (after the change of user, which clears it);
    4. no new privileges;
    5. Landlock: nothing of the file system but reading (and executing) beneath
       `readable`; no TCP; no signal or abstract Unix socket outside;
    6. seccomp: seccomp.HELPER_REFUSED refused (no socket, no namespace...).

    Not the engines' full confinement: no namespaces (they cost milliseconds a
    compile) and no descriptor clean-up (the caller's).  The process must have
    one thread.  Raises ConfinementError."""
    unavailable = []
    if os.geteuid() == 0:
        drop_capabilities_before_exec()
        _become(user)
    _no_capabilities()
    # no real-time policy and no lower nice value, by any call, for it and what it
    # forks: wsuper may run under hard limits above 0 (limits.conf, LimitRTPRIO=),
    # which a helper's uid may use without a capability (seccomp.HELPER_POLICIES)
    lower_limit(resource.RLIMIT_RTPRIO, 0)
    lower_limit(resource.RLIMIT_NICE, 0)
    # no signal queued with its information, as an engine (_limit_resources): the kernel
    # counts them per user, and a compiler's 96,367 left 65534 none (the schema
    # parser's, root none) while it ran
    lower_limit(resource.RLIMIT_SIGPENDING, 0)
    if parent:
        die_with_parent(parent)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise ConfinementError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    abi = landlock_abi()
    if abi:
        landlock_read_only(readable, abi)
    else:
        unavailable.append("landlock")
    if seccomp_supported():
        try:
            seccomp.install_helper()
        except OSError as e:
            raise ConfinementError(e.errno, str(e)) from None
    else:
        unavailable.append("seccomp")
    return unavailable


def _landlock_deny_all(abi: int):
    attr = landlock_ruleset(abi)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, buf, len(attr), 0)
    if fd < 0:
        raise ConfinementError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        if _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, fd, 0) != 0:
            raise ConfinementError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(fd)
