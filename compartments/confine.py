"""OS confinement of an engine process (Linux), applied after the module is loaded.

Assume the engine's Python has been taken over: the kernel must still hold it.
`confine()` applies, in this order:

1. descriptors: every one but stdin/stdout/stderr, the supervisor socket
   and wasmtime's memory images is pointed at /dev/null.  Not closed: some
   belong to libraries (pycapnp's schema parser keeps directory descriptors
   of its import path), which would close them again later, perhaps after
   the number was reused; on /dev/null they reach nothing;
2. resource limits: no new files of any size (RLIMIT_FSIZE 0), few descriptors,
   bounded address space, no core dumps;
3. no new privileges (PR_SET_NO_NEW_PRIVS);
4. Landlock: no filesystem access at all (no path is granted yet), no TCP bind
   or connect, no signals or abstract Unix sockets outside the engine
   (as far as the kernel's Landlock ABI goes);
5. seccomp: a filter that refuses (EPERM) new sockets, exec, fork/clone,
   ptrace, mount, module loading, bpf, io_uring, privilege changes and the
   like, synchronised to every thread; other architectures than x86_64 are
   killed outright.

Death with the supervisor is PR_SET_PDEATHSIG (engine.py); the environment is
empty because the supervisor starts engines with none (`python -I`, env {}).

We wrote this with ctypes instead of depending on `landlockpy`/`pyseccomp`:
it is about a hundred lines of well-documented kernel ABI, and an engine must
not import more than it needs.  The engine must be single-threaded when it is
confined (wasmtime is configured without parallel compilation): Landlock
applies to the calling thread only.
"""
from __future__ import annotations

import ctypes
import os
import platform
import resource
import signal
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

# Landlock (x86_64 and aarch64 share these syscall numbers)
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1

# seccomp
SYS_SECCOMP_X86_64 = 317
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
AUDIT_ARCH_X86_64 = 0xC000003E
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
EPERM = 1

#: x86_64 system calls an engine never needs and a hijacked one would want.
DENIED_SYSCALLS_X86_64 = {
    "socket": 41, "connect": 42, "accept": 43, "bind": 49, "listen": 50, "socketpair": 53,
    "accept4": 288, "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322,
    "clone3": 435, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272,
    "setns": 308, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
    "finit_module": 313, "delete_module": 176, "bpf": 321, "perf_event_open": 298,
    "keyctl": 250, "add_key": 248, "request_key": 249, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "personality": 135,
    "setuid": 105, "setgid": 106, "setreuid": 113, "setregid": 114, "setresuid": 117,
    "setresgid": 119, "setgroups": 116, "reboot": 169, "swapon": 167, "swapoff": 168,
    "iopl": 172, "ioperm": 173, "quotactl": 179, "acct": 163, "settimeofday": 164,
    "clock_settime": 227, "adjtimex": 159, "syslog": 103, "mknod": 133, "mknodat": 259,
    "memfd_secret": 447, "fsopen": 430, "fsmount": 432, "move_mount": 429, "open_tree": 428,
}


class ConfinementError(OSError):
    """A layer the kernel offers could not be applied: the engine must not run."""


def die_with_parent(parent_pid: int):
    """Ask the kernel to SIGKILL us when `parent_pid` (our parent) dies.  The
    setting is cleared when the process changes user: call it again after."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:               # it died before we asked
        os._exit(1)


def prepare():
    """Done once in the zygote, so that forked engines do not pay for it."""


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 if it has none (or it is disabled)."""
    v = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return max(v, 0)


def seccomp_supported() -> bool:
    return platform.machine() == "x86_64" and os.path.exists("/proc/self/status") and \
        _libc.prctl(21, 0, 0, 0, 0) >= 0          # PR_GET_SECCOMP answers


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
    return missing


def confine(keep_fds, address_space: int | None = None, user=None) -> list[str]:
    """Confine this (single-threaded) process for good; returns what was unavailable."""
    unavailable = []
    _neutralize_fds_except(set(keep_fds) | {0, 1, 2})
    _limit_resources(address_space)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        unavailable.append("no_new_privs")
    abi = landlock_abi()
    if abi:
        _landlock_deny_all(abi)
    else:
        unavailable.append("landlock")
    if seccomp_supported():
        _seccomp_deny(DENIED_SYSCALLS_X86_64.values())
    else:
        unavailable.append("seccomp")
    return unavailable


def _neutralize_fds_except(keep):
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in sorted(_open_fds()):
            if fd not in keep and fd != null:
                try:
                    os.dup2(null, fd)
                except OSError:
                    pass
    finally:
        os.close(null)


def _open_fds():
    try:
        return [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 1024))


def _limit_resources(address_space):
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    highest = max(_open_fds(), default=2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, highest + 8))
    if address_space:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))


def _landlock_deny_all(abi: int):
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
        attr = struct.pack("<QQQ", fs, net, scoped)
    elif abi >= 4:
        attr = struct.pack("<QQ", fs, net)
    else:
        attr = struct.pack("<Q", fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, buf, len(attr), 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        if _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, fd, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(fd)


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_program(denied) -> list[tuple]:
    """Classic BPF: kill foreign architectures, refuse `denied` (and x32) with EPERM."""
    LD_W_ABS, JEQ_K, JGE_K, RET_K = 0x20, 0x15, 0x35, 0x06
    denied = sorted(set(denied))
    prog = [(LD_W_ABS, 0, 0, 4),                      # seccomp_data.arch
            (JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
            (RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
            (LD_W_ABS, 0, 0, 0)]                      # seccomp_data.nr
    deny_at = len(prog) + 1 + len(denied) + 1          # index of the EPERM return
    prog.append((JGE_K, deny_at - len(prog) - 1, 0, 0x40000000))   # x32 system calls
    for nr in denied:
        prog.append((JEQ_K, deny_at - len(prog) - 1, 0, nr))
    prog.append((RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append((RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM))
    assert len(prog) == deny_at + 1
    return prog


def _fprog(denied) -> "_SockFprog":
    prog = seccomp_program(denied)
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    fprog._keep = filters
    return fprog


_PROGRAMS: dict = {}


def _seccomp_deny(denied):
    key = tuple(sorted(set(denied)))
    fprog = _PROGRAMS.get(key)
    if fprog is None:        # the zygote builds the engines' program once, before forking
        fprog = _PROGRAMS[key] = _fprog(key)
    if _libc.syscall(SYS_SECCOMP_X86_64, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC,
                     ctypes.byref(fprog)) != 0:
        raise OSError(ctypes.get_errno(), "seccomp(SECCOMP_SET_MODE_FILTER) failed")


# Built at import (the zygote imports this module), so forked engines do not.
_ENGINE_SYSCALLS = tuple(sorted(set(DENIED_SYSCALLS_X86_64.values())))
_PROGRAMS[_ENGINE_SYSCALLS] = _fprog(_ENGINE_SYSCALLS)

