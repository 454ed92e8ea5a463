"""Hostile code inside a confined engine: the kernel still holds it.

The engine's own Python is assumed taken over (or wasmtime, so the guest runs
native code).  The first test loads a real module into a real Engine, confines
it exactly as `compartments.engine.run` does, and then tries everything an
attacker would, through raw system calls; each attempt's *effect* is checked
from outside the engine (the file, the other process, the mount, the host
name, the IPC objects).  The others check live engines under `wsuper up`
from the outside."""
import ctypes
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from compartments import confine, zygote as zygote_module
from tests.conftest import EXAMPLES, read_line

ROOT_USER = os.geteuid() == 0
ENGINE_USER = (65534, 65534)

HOSTILE = r"""
import ctypes, errno, json, os, socket, struct, sys
from compartments.engine import Engine
from compartments.seccomp import SYSCALLS
from compartments.spec import EngineSpec
cfg = json.loads(sys.argv[2])
sock = socket.socket(fileno=cfg["sock"])
engine = Engine(sock, EngineSpec("calc", sys.argv[1], exports=True))
missing = engine.confine(tuple(cfg["user"]) if cfg["user"] else None)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
result = {"missing": missing}
keep = []

def sys_(name, *args):
    args = [ctypes.c_char_p(a) if isinstance(a, bytes) else
            ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    rc = libc.syscall(SYSCALLS[name], *args)
    if rc < 0:
        raise OSError(ctypes.get_errno(), name)
    return rc

def attempt(name, f):
    try:
        r = f()
        result[name] = "allowed"
        if isinstance(r, int) and r > 2:
            keep.append(r)                      # a descriptor it got: keep it open
    except OSError as e:
        result[name] = errno.errorcode.get(e.errno, str(e.errno))
    except BaseException as e:
        result[name] = type(e).__name__

buf = ctypes.create_string_buffer(256)
target, victim = cfg["file"].encode(), cfg["victim"]
AT_FDCWD = -100
# files, by path: there are none (an empty mount namespace), and no call for them
attempt("read_file", lambda: open("/etc/hostname").read())
attempt("write_file", lambda: open(cfg["new"], "w").write("x"))
attempt("list_dir", lambda: os.listdir("/"))
attempt("stat", lambda: os.stat("/etc/passwd"))
attempt("readlink", lambda: os.readlink("/proc/self/exe"))
attempt("proc_self_mem", lambda: open("/proc/self/mem", "rb"))
attempt("chmod", lambda: sys_("chmod", target, 0o666))
attempt("fchmodat", lambda: sys_("fchmodat", AT_FDCWD, target, 0o666))
attempt("fchmodat2", lambda: sys_("fchmodat2", AT_FDCWD, target, 0o666, 0))
attempt("chown", lambda: sys_("chown", target, 1234, 1234))
attempt("fchownat", lambda: sys_("fchownat", AT_FDCWD, target, 1234, 1234, 0))
attempt("utimensat", lambda: sys_("utimensat", AT_FDCWD, target, None, 0))
attempt("setxattr", lambda: sys_("setxattr", target, b"user.pwned", b"1", 1, 0))
attempt("removexattr", lambda: sys_("removexattr", target, b"user.keep"))
attempt("truncate", lambda: sys_("truncate", target, 0))
attempt("unlink", lambda: sys_("unlinkat", AT_FDCWD, target, 0))
attempt("mknod", lambda: sys_("mknodat", AT_FDCWD, cfg["new"].encode(), 0o10644, 0))
attempt("inotify", lambda: sys_("inotify_add_watch", sys_("inotify_init1", 0),
                                cfg["watched"].encode(), 0x100))
attempt("fanotify_init", lambda: sys_("fanotify_init", 0, 0))
# another process
def iov(addr, n):
    return struct.pack("<QQ", addr, n)
local, remote = ctypes.create_string_buffer(iov(ctypes.addressof(buf), 64)), \
    ctypes.create_string_buffer(iov(cfg["victim_addr"], 64))
attempt("kill", lambda: sys_("kill", victim, 15))
attempt("tgkill", lambda: sys_("tgkill", victim, victim, 15))
word = ctypes.create_string_buffer(8)
attempt("futex_requeue", lambda: sys_("futex", word, 4, 1, 0, word, 0))   # FUTEX_CMP_REQUEUE
attempt("ptrace", lambda: sys_("ptrace", 16, victim, 0, 0))
attempt("process_vm_readv", lambda: sys_("process_vm_readv", victim, local, 1, remote, 1, 0))
attempt("pidfd_open", lambda: sys_("pidfd_open", victim, 0))
attempt("pidfd_send_signal", lambda: sys_("pidfd_send_signal", 0, 15, None, 0))
attempt("pidfd_getfd", lambda: sys_("pidfd_getfd", 0, 0, 0))
attempt("prlimit", lambda: sys_("prlimit64", victim, 7, ctypes.create_string_buffer(
    struct.pack("<QQ", 3, 3)), None))
attempt("setpriority", lambda: sys_("setpriority", 0, victim, 19))
attempt("sched_setscheduler", lambda: sys_("sched_setscheduler", victim, 5,
                                           ctypes.create_string_buffer(4)))
attempt("sched_setaffinity", lambda: sys_("sched_setaffinity", victim, 8,
                                          ctypes.create_string_buffer(b"\x01" + bytes(7))))
attempt("ioprio_set", lambda: sys_("ioprio_set", 1, victim, 3 << 13))
# another process's CPU clock (MAKE_PROCESS_CPUCLOCK, MAKE_THREAD_CPUCLOCK): the kernel
# asks no permission of clock_gettime, so it told any process's CPU time to the
# nanosecond (when another compartment runs, and for how long), and which pids exist
cpu_clock, thread_clock = (~victim << 3) | 2, (~victim << 3) | 6
attempt("cpu_clock_gettime", lambda: sys_("clock_gettime", cpu_clock, buf))
attempt("cpu_clock_getres", lambda: sys_("clock_getres", cpu_clock, buf))
attempt("thread_clock_getres", lambda: sys_("clock_getres", thread_clock, buf))
attempt("cpu_clock_nanosleep", lambda: sys_(
    "clock_nanosleep", cpu_clock, 0, ctypes.create_string_buffer(bytes(16)), None))
# System V IPC and POSIX message queues
def shm_read():
    sid = sys_("shmget", cfg["shm_key"], 0, 0)
    addr = sys_("shmat", sid, None, 0o10000)       # SHM_RDONLY
    result["shm_seen"] = ctypes.string_at(addr, 32).hex()
attempt("shm", shm_read)
attempt("msg", lambda: sys_("msgsnd", sys_("msgget", cfg["msg_key"], 0),
                            ctypes.create_string_buffer(struct.pack("<q", 1) + b"pwned"), 5, 0))
attempt("sem", lambda: sys_("semop", sys_("semget", cfg["sem_key"], 0, 0),
                            ctypes.create_string_buffer(struct.pack("<HhH", 0, 5, 0)), 1))
attempt("mq_open", lambda: sys_("mq_open", b"wsuper-hostile", 0o102, 0o666, None))
# mounts, the machine
class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]
if cfg["mnt"]:
    attempt("mount_setattr", lambda: sys_("mount_setattr", AT_FDCWD, cfg["mnt"].encode(), 0,
                                          ctypes.byref(MountAttr(1, 0, 0, 0)), 32))
    attempt("umount", lambda: sys_("umount2", cfg["mnt"].encode(), 2))
attempt("mount", lambda: sys_("mount", b"none", b"/", b"tmpfs", 0, None))
attempt("open_tree", lambda: sys_("open_tree", AT_FDCWD, b"/", 1))
attempt("fsopen", lambda: sys_("fsopen", b"tmpfs", 0))
attempt("sethostname", lambda: sys_("sethostname", b"pwned-by-an-engine", 18))
attempt("setdomainname", lambda: sys_("setdomainname", b"pwned", 5))
timex = ctypes.create_string_buffer(struct.pack("<I4xqqq", 4, 0, 0, 123456) + bytes(200))
attempt("clock_adjtime", lambda: sys_("clock_adjtime", 0, timex))
attempt("settimeofday", lambda: sys_("settimeofday", None, None))
attempt("keyctl", lambda: sys_("add_key", b"user", b"wsuper-hostile", b"x", 1, -3))
attempt("userfaultfd", lambda: sys_("userfaultfd", 0))
attempt("perf_event_open", lambda: sys_("perf_event_open", ctypes.create_string_buffer(128),
                                        0, -1, -1, 0))
attempt("bpf", lambda: sys_("bpf", 0, ctypes.create_string_buffer(64), 64))
attempt("io_uring", lambda: sys_("io_uring_setup", 1, ctypes.create_string_buffer(120)))
# processes, programs, identity, sockets, executable memory
def child(pid):
    if pid == 0:                 # a new process: it must not go on as a second us
        os._exit(0)
attempt("fork", lambda: child(os.fork()))
attempt("clone3", lambda: child(sys_("clone3", ctypes.create_string_buffer(88), 88)))
attempt("exec", lambda: os.execv("/bin/true", ["true"]))
attempt("setuid", lambda: sys_("setuid", 0))
attempt("unshare_user", lambda: sys_("unshare", 0x10000000))
attempt("tcp_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
attempt("unix_socket", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
attempt("socketpair", lambda: socket.socketpair())
attempt("ioctl_tiocsti", lambda: sys_("ioctl", 2, 0x5412, b"x"))
attempt("mmap_exec", lambda: sys_("mmap", None, 4096, 7, 0x22, -1, 0))
page = sys_("mmap", None, 4096, 3, 0x22, -1, 0)          # read+write is fine
attempt("mprotect_exec", lambda: sys_("mprotect", page, 4096, 5))
attempt("memfd_create", lambda: sys_("memfd_create", b"x", 0))
attempt("personality", lambda: sys_("personality", 0x0040000))
# an outside review (r263): namespaces, programs, its own limits and process flags, a
# signal with a forged sender, a mapping moved or grown (it keeps its protection)
attempt("setns", lambda: sys_("setns", 0, 0))
attempt("execveat", lambda: sys_("execveat", 0, b"", ctypes.c_void_p(0), ctypes.c_void_p(0),
                                 0x1000))                                  # AT_EMPTY_PATH
attempt("prctl", lambda: sys_("prctl", 4, 1, 0, 0, 0))                      # PR_SET_DUMPABLE
attempt("raise_rlimit", lambda: sys_("prlimit64", 0, 7, ctypes.create_string_buffer(
    struct.pack("<QQ", 1 << 20, 1 << 20)), None))                          # RLIMIT_NOFILE
attempt("rt_sigqueueinfo", lambda: sys_("rt_sigqueueinfo", victim, 15,
                                        ctypes.create_string_buffer(128)))
attempt("mremap", lambda: sys_("mremap", page, 4096, 1 << 20, 1, 0))       # MREMAP_MAYMOVE
# r274: the arguments of calls the filter allows.  An out-of-band byte on its socket, sent
# or received (MSG_OOB: the kernel's AF_UNIX out-of-band code, a way into the kernel from
# a sandbox that may only use a socket; peeking and the error queue with it), memory the
# kernel may never swap out (MAP_LOCKED), huge pages from the machine's reserved pool
# (MAP_HUGETLB), and advice that reaches past its own pages: merged with other processes'
# pages of the same bytes (KSM, MADV_MERGEABLE), a shared file's pages freed
# (MADV_REMOVE) or put out of the page cache (MADV_PAGEOUT), poisoned (MADV_HWPOISON)
fd = cfg["sock"]
attempt("send_oob", lambda: sys_("sendto", fd, b"!", 1, 0x1, None, 0))            # MSG_OOB
attempt("recv_oob", lambda: sys_("recvfrom", fd, buf, 1, 0x1 | 0x40, None, None))
attempt("recv_peek", lambda: sys_("recvfrom", fd, buf, 1, 0x2 | 0x40, None, None))
attempt("recv_errqueue", lambda: sys_("recvfrom", fd, buf, 1, 0x2000 | 0x40, None, None))
attempt("mmap_locked", lambda: sys_("mmap", None, 1 << 20, 3, 0x22 | 0x2000 | 0x8000, -1, 0))
attempt("mmap_hugetlb", lambda: sys_("mmap", None, 2 << 20, 3, 0x22 | 0x40000, -1, 0))
attempt("madvise_mergeable", lambda: sys_("madvise", page, 4096, 12))
shared = sys_("mmap", None, 4096, 3, 0x21, -1, 0)                # MAP_SHARED | MAP_ANONYMOUS
attempt("madvise_remove", lambda: sys_("madvise", shared, 4096, 9))
attempt("madvise_hwpoison", lambda: sys_("madvise", shared, 4096, 100))
libc_page = ctypes.cast(libc.getpid, ctypes.c_void_p).value & ~4095    # a shared file's
attempt("madvise_pageout", lambda: sys_("madvise", libc_page, 4096, 21))
# r274: signals queued to itself and left pending.  The kernel counts them per user, and
# past the limit no process of that user (another engine, any service of 65534; not
# root: wsuper's own user, the supervisor and the operator's programs) gets a signal
# queued: a POSIX timer cannot be made, an RT signal cannot be sent
def queue_signals():
    rtmin = 34
    sys_("rt_sigprocmask", 0, ctypes.create_string_buffer(struct.pack("<Q", 1 << rtmin - 1)),
         None, 8)                                              # SIG_BLOCK SIGRTMIN
    pid, n = os.getpid(), 0
    try:
        while n < 1 << 20:
            sys_("tgkill", pid, pid, rtmin)
            n += 1
    finally:
        result["signals_queued"] = n
attempt("queue_signals", queue_signals)
os.write(1, (json.dumps(result) + "\n").encode())
sock.recv(16)                    # the test looks at us from outside meanwhile
os._exit(0)
"""

#: Attempts that reach something outside the engine; each must be refused.
ATTEMPTS = [
    "read_file", "write_file", "list_dir", "stat", "readlink", "proc_self_mem", "chmod",
    "fchmodat", "fchmodat2", "chown", "fchownat", "utimensat", "setxattr", "removexattr",
    "truncate", "unlink", "mknod", "inotify", "fanotify_init", "kill", "tgkill",
    "futex_requeue", "ptrace", "cpu_clock_gettime", "cpu_clock_getres",
    "thread_clock_getres", "cpu_clock_nanosleep",
    "process_vm_readv", "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "prlimit",
    "setpriority", "sched_setscheduler", "sched_setaffinity", "ioprio_set", "shm", "msg",
    "sem", "mq_open", "mount", "open_tree", "fsopen", "sethostname", "setdomainname",
    "clock_adjtime", "settimeofday", "keyctl", "userfaultfd", "perf_event_open", "bpf",
    "io_uring", "fork", "clone3", "exec", "setuid", "unshare_user", "tcp_socket",
    "unix_socket", "socketpair", "ioctl_tiocsti", "mmap_exec", "mprotect_exec",
    "memfd_create", "personality", "setns", "execveat", "prctl", "raise_rlimit",
    "rt_sigqueueinfo", "mremap"]
#: Calls the filter allows, with arguments it must refuse (r274): each EPERM, from the
#: filter (not an error of the kernel's that another machine, with a huge page pool or
#: KSM, would not give)
REFUSED_ARGUMENTS = ["send_oob", "recv_oob", "recv_peek", "recv_errqueue", "mmap_locked",
                     "mmap_hugetlb", "madvise_mergeable", "madvise_remove",
                     "madvise_hwpoison", "madvise_pageout"]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_libc.shmdt.argtypes = [ctypes.c_void_p]


def _status(pid) -> dict:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _gone_or(read) -> str:
    """What `read()` reads of a process in /proc, or "" if it ended meanwhile (a
    compiler or a spare's rehearsal is brief: the full suite met one ended between
    its listing and its status)."""
    try:
        return read()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _sysvipc(kind: str, key: int) -> dict:
    with open(f"/proc/sysvipc/{kind}") as f:
        head = f.readline().split()
        for line in f:
            row = dict(zip(head, line.split()))
            if int(row["key"]) == key:
                return row
    raise AssertionError(f"{kind} {key} is gone")


def _ioprio(pid) -> int:
    return _libc.syscall(252, 1, pid)


TIMER = r"""
import ctypes, os, sys
if sys.argv[1] != "-":
    os.setgroups([]); os.setresgid(int(sys.argv[2]), int(sys.argv[2]), int(sys.argv[2]))
    os.setresuid(int(sys.argv[1]), int(sys.argv[1]), int(sys.argv[1]))
libc = ctypes.CDLL(None, use_errno=True)
timer = ctypes.c_void_p()
rc = libc.timer_create(1, None, ctypes.byref(timer))          # CLOCK_MONOTONIC, SIGALRM
print(0 if rc == 0 else ctypes.get_errno())
"""


def _timer_create_as(user) -> int:
    """0 if a process of `user` ((uid, gid), None: ours) can make a POSIX timer, which
    takes one of its user's queued signals; else the errno."""
    uid, gid = user if user else ("-", "-")
    r = subprocess.run([sys.executable, "-I", "-c", TIMER, str(uid), str(gid)],
                       capture_output=True, text=True, timeout=60)
    return int(r.stdout)


def _maxerror() -> int:
    timex = ctypes.create_string_buffer(208)
    _libc.adjtimex(timex)
    return int.from_bytes(timex.raw[24:32], "little", signed=True)


def _mount_options(path) -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                return fields[5]
    return "(gone)"


class _Outside:
    """What the attacker goes for, set up and watched from outside the engine."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.file = tmp_path / "victim.txt"
        self.file.write_text("precious\n")
        os.chmod(self.file, 0o644)
        os.utime(self.file, (1_000_000_000, 1_000_000_000))
        os.setxattr(self.file, "user.keep", b"yes")
        self.watched = tmp_path / "watched"
        self.watched.mkdir()
        self.victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(f"/proc/{self.victim.pid}/maps") as f:
            self.victim_addr = int(f.readline().split("-")[0], 16)
        key = 0x57530000 + secrets.randbelow(0xFFFF)
        self.shm_key, self.msg_key, self.sem_key = key, key + 1, key + 2
        self.shm_secret = secrets.token_bytes(32)
        self.shm = _libc.shmget(self.shm_key, 4096, 0o1000 | 0o666)
        addr = _libc.shmat(self.shm, None, 0)
        ctypes.memmove(addr, self.shm_secret, 32)
        _libc.shmdt(addr)
        self.msg = _libc.msgget(self.msg_key, 0o1000 | 0o666)
        self.sem = _libc.semget(self.sem_key, 1, 0o1000 | 0o666)
        assert min(self.shm, self.msg, self.sem) >= 0
        self.mnt = None
        if ROOT_USER:                       # a tmpfs for the engine to remount read-only
            self.mnt = str(tmp_path / "mnt")
            os.mkdir(self.mnt)
            assert _libc.mount(b"none", self.mnt.encode(), b"tmpfs", 0, b"size=64k") == 0
        self.before = self.observe()

    def observe(self) -> dict:
        st = os.stat(self.file)
        pid = self.victim.pid
        with open(f"/proc/{pid}/limits") as f:
            nofile = next(line for line in f if line.startswith("Max open files")).split()[3:5]
        return {
            "file": (oct(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size,
                     sorted(os.listxattr(self.file)), self.file.read_text()),
            "new files": sorted(p.name for p in self.tmp.iterdir()),
            "victim": (self.victim.poll(), nofile, os.getpriority(os.PRIO_PROCESS, pid),
                       os.sched_getscheduler(pid), sorted(os.sched_getaffinity(pid)),
                       _ioprio(pid), _status(pid)["TracerPid"].strip()),
            "shm": (_sysvipc("shm", self.shm_key)["nattch"],
                    _sysvipc("shm", self.shm_key)["lpid"]),
            "msg": (_sysvipc("msg", self.msg_key)["qnum"],),
            "sem": (_sysvipc("sem", self.sem_key)["otime"],),
            "hostname": socket.gethostname(),
            "mount": _mount_options(self.mnt) if self.mnt else None,
        }

    def close(self):
        self.victim.kill()
        self.victim.wait()
        _libc.shmctl(self.shm, 0, None)              # IPC_RMID
        _libc.msgctl(self.msg, 0, None)
        _libc.semctl(self.sem, 0, 0)
        if self.mnt:
            _libc.umount2(self.mnt.encode(), 2)


@pytest.fixture
def outside(tmp_path):
    o = _Outside(tmp_path)
    yield o
    o.close()


@pytest.mark.skipif(not confine.seccomp_supported() or confine.landlock_abi() == 0,
                    reason="the kernel lacks seccomp or Landlock")
def test_hostile_code_in_a_confined_engine_reaches_nothing_outside(outside):
    ours, theirs = socket.socketpair()
    cfg = {"sock": theirs.fileno(), "user": ENGINE_USER if ROOT_USER else None,
           "file": str(outside.file), "new": str(outside.tmp / "created-by-the-engine"),
           "watched": str(outside.watched), "victim": outside.victim.pid,
           "victim_addr": outside.victim_addr, "shm_key": outside.shm_key,
           "msg_key": outside.msg_key, "sem_key": outside.sem_key, "mnt": outside.mnt}
    maxerror = _maxerror()
    engine = subprocess.Popen([sys.executable, "-I", "-c", HOSTILE, f"{EXAMPLES}/calc.wat",
                               json.dumps(cfg)], env={}, pass_fds=[theirs.fileno()],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    theirs.close()
    try:
        line = read_line(engine)
        assert line, engine.stderr.read()
        got = json.loads(line)
        pid = engine.pid
        # --- the engine, seen from outside, while it is alive
        status = _status(pid)
        for cap in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
            assert int(status[cap], 16) == 0, (cap, status[cap])
        assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
        assert status["Threads"].strip() == "1"         # Landlock holds the calling thread
        if ROOT_USER:
            assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
            assert status["Groups"].strip() == ""
        missing = {n for n, why in confine.namespaces().items() if why is not None}
        for ns in ("ipc", "uts", "net", "mnt"):
            if {"mnt": "mount"}.get(ns, ns) not in missing:
                assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
        if "mount" not in missing:       # one empty, read-only tmpfs, and nothing else
            mounts = open(f"/proc/{pid}/mountinfo").read().splitlines()
            assert len(mounts) == 1 and " / / ro," in mounts[0] and " tmpfs " in mounts[0]
        assert open(f"/proc/{pid}/environ", "rb").read() == b""
        fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        live = sorted(v.split(":")[0] for v in fds.values() if v != "/dev/null")
        # its socket, stderr, stdout (this test's pipes) and the module's memory image;
        # no inotify, fanotify, pidfd, userfaultfd or any other descriptor it asked for
        assert live == ["/memfd", "pipe", "pipe", "socket"], fds
        limits = open(f"/proc/{pid}/limits").read()
        assert re.search(r"Max file size\s+0\s+0", limits)
        assert re.search(r"Max locked memory\s+0\s+0", limits)     # r274
        # its user may still queue signals (a POSIX timer's, made here as that user)
        assert got["signals_queued"] <= 16, got["signals_queued"]
        assert _timer_create_as(ENGINE_USER if ROOT_USER else None) == 0
        # --- what it tried
        assert got["missing"] == [], got["missing"]
        allowed = [name for name in ATTEMPTS if got[name] == "allowed"]
        assert not allowed, {name: got[name] for name in ATTEMPTS}
        assert {name: got[name] for name in REFUSED_ARGUMENTS} == \
            dict.fromkeys(REFUSED_ARGUMENTS, "EPERM")
        assert status["VmLck"].strip() == "0 kB", status["VmLck"]      # nothing locked
        with pytest.raises(OSError):         # no out-of-band byte came on its socket
            ours.recv(1, socket.MSG_OOB | socket.MSG_DONTWAIT)
        assert "shm_seen" not in got
        # --- and the effects, from outside: nothing changed
        (outside.watched / "new-file").write_text("x")       # an inotify watch would see it
        after = outside.observe()
        assert after == outside.before
        assert not (150_000 > _maxerror() >= 123_456 > maxerror)   # clock_adjtime(ADJ_MAXERROR)
    finally:
        ours.send(b"done")
        engine.wait(timeout=30)
        ours.close()


#: A spare between its request and confine(): what Module.deserialize of a compiler's
#: output (hostile bytes went through the compiler) runs beside.  It reaches
#: /proc/self through one descriptor; is that all it reaches?
SPARE_WINDOW = r"""
import json, os, sys
from compartments import confine
victim = int(sys.argv[1])
memfd = os.memfd_create("wsuper-module", 0)
os.write(memfd, b"module bytes")
confine.enter_early()
confine.drop_root_early((65534, 65534) if os.geteuid() == 0 else None, 0)
got = {}

def attempt(name, f):
    try:
        got[name] = f()
    except OSError as e:
        got[name] = "refused"

def read(rel):
    fd = os.open(rel, os.O_RDONLY, dir_fd=confine._proc)
    try:
        return os.read(fd, 4096).decode("latin-1")
    finally:
        os.close(fd)

attempt("proc", lambda: len(os.listdir(os.open("..", os.O_RDONLY | os.O_DIRECTORY,
                                                  dir_fd=confine._proc))))
attempt("init_cmdline", lambda: read("../1/cmdline"))
attempt("victims_root", lambda: read(f"../{victim}/root/etc/passwd"))
attempt("own_root", lambda: read("root/etc/passwd"))

def attach():                        # PTRACE_ATTACH, then let it go
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(101, 16, victim, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "ptrace")
    os.waitpid(victim, 0)
    libc.syscall(101, 17, victim, 0, 0)            # PTRACE_DETACH
    return "attached"

attempt("ptrace_victim", attach)
# what it needs of its own /proc/self until confine(): its module, its descriptors, sizes
with confine.proc_path(f"fd/{memfd}") as path:
    attempt("module", lambda: open(path, "rb").read().decode())
attempt("fds", lambda: sorted(map(int, confine.proc_listdir("fd"))) and "listed")
attempt("statm", lambda: confine.proc_read("statm") and "read")
attempt("maps", lambda: confine._read_maps() and "read")
os.write(1, (json.dumps(got) + "\n").encode())
os._exit(0)
"""


@pytest.mark.skipif(confine.landlock_abi() == 0 or confine.namespaces()["mount"] is not None,
                    reason="the kernel lacks Landlock or mount namespaces")
def test_a_spare_loading_its_module_reaches_only_its_own_proc_directory():
    """Before confine(), a spare loads its module with Module.deserialize, which
    trusts bytes a compiler child wrote from a hostile module.  Its mount namespace
    is empty, but the /proc/self descriptor it keeps for reading its module led,
    by "..", to all of /proc: every process's command line, and through
    /proc/PID/root the whole file system of any process of its uid that may be
    traced (the engines' user's, or, without root, every process of wsuper's
    user), which it could also trace (no seccomp yet, no Yama on some kernels)."""
    victim = subprocess.Popen(["sleep", "60"], **({"user": 65534, "group": 65534,
                                                  "extra_groups": []} if ROOT_USER else {}))
    try:
        r = subprocess.run([sys.executable, "-I", "-c", SPARE_WINDOW, str(victim.pid)],
                           env={}, capture_output=True, text=True, timeout=60)
    finally:
        victim.kill()
        victim.wait()
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    reaches = ("proc", "init_cmdline", "victims_root", "own_root", "ptrace_victim")
    assert {k: got[k] for k in reaches} == dict.fromkeys(reaches, "refused")
    assert got["module"] == "module bytes"
    assert (got["fds"], got["statm"], got["maps"]) == ("listed", "read", "read")


#: An engine as the zygote makes it (its module compiled into a sealed memfd, loaded by
#: Module.deserialize_file, confined), taken over: can it make bytes of its own module
#: code?  The module's code is an executable mapping of the memfd, whose later pages
#: hold the image of its data segments (wasmtime maps them as the memory's image).
GROW_CODE = r"""
import ctypes, fcntl, json, os, socket, sys, wasmtime
from compartments import wasm, zygote
from compartments.engine import Engine
from compartments.spec import EngineSpec
path = sys.argv[1]
eng = wasmtime.Engine(wasm.engine_config(probed=False))
fds = (os.memfd_create("wsuper-module", os.MFD_ALLOW_SEALING),
       os.memfd_create("wsuper-description", os.MFD_ALLOW_SEALING))
assert zygote._compile_into(eng, path, fds, 2) == 0
for fd in fds:
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, zygote._SEALS)
description = wasm.Description.from_json(os.pread(fds[1], 1 << 20, 0))
module = wasmtime.Module.deserialize_file(eng, f"/proc/self/fd/{fds[0]}")
os.close(fds[1])
a, b = socket.socketpair()
engine = Engine(a, EngineSpec("x", path, exports=True), module, eng, description)
os.close(fds[0])
with open("/proc/self/maps") as f:       # its own layout: an attacker knows it
    code = [line.split()[0] for line in f if "/memfd:wsuper-module" in line
            and line.split()[1] == "r-xp"]
page, marker = 4096, b"WSUPERCODE"
with open(path, "rb") as f:
    size = os.fstat(f.fileno()).st_size
engine.confine((65534, 65534) if os.geteuid() == 0 else None)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
got = {"code": len(code)}

def grow(start, length, flags, name):
    # page by page, as far as the memfd goes, until the marker shows
    for more in range(1, 256):
        new = libc.syscall(25, ctypes.c_long(start), ctypes.c_long(length),
                           ctypes.c_long(length + more * page), flags, 0)
        if new < 0:
            got[name] = os.strerror(ctypes.get_errno())
            return
        start, length = new, length + more * page
        at = ctypes.string_at(start, length).find(marker)
        if at >= 0:
            got[name] = "executable"
            os.write(1, (json.dumps(got) + "\n").encode())
            ctypes.CFUNCTYPE(None)(start + at + len(marker))()     # exit_group(42)
    got[name] = "not found"

for where in code:
    start, end = (int(x, 16) for x in where.split("-"))
    grow(start, end - start, 1, "moved")                 # MREMAP_MAYMOVE
    # in place: what followed it (the module's read-only pages) unmapped first
    libc.munmap(ctypes.c_void_p(end), ctypes.c_size_t(64 * page))
    grow(start, end - start, 0, "in_place")
os.write(1, (json.dumps(got) + "\n").encode())
os._exit(0)
"""

#: x86_64: mov eax, 231 (exit_group); mov edi, 42; syscall
EXIT_42 = bytes.fromhex("b8e7000000bf2a0000000f05")


@pytest.mark.skipif(not confine.seccomp_supported(), reason="the kernel lacks seccomp")
def test_an_escaped_engine_cannot_grow_its_code_over_its_modules_data(tmp_path):
    """An outside review (r263): seccomp refuses PROT_EXEC to mmap and mprotect, so that
    an engine taken over can make no new code; but `mremap` was allowed, and moving or
    growing a mapping keeps its protection.  The module's code is an executable
    mapping of its memfd, whose next pages hold the image of its data segments: grown
    by a few pages, the code mapping showed the plugin author's data as code, and the
    engine ran it (here exit_group(42))."""
    data = "".join(f"\\{b:02x}" for b in b"WSUPERCODE" + EXIT_42)
    with open(f"{EXAMPLES}/calc.wat") as f:
        wat = f.read().replace('(data (i32.const 12000) "unknown method")',
                               f'(data (i32.const 12000) "unknown method")\n'
                               f'(data (i32.const 20480) "{data}")', 1)
    module = tmp_path / "x.wat"
    module.write_text(wat)
    r = subprocess.run([sys.executable, "-I", "-c", GROW_CODE, str(module)], env={},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 42, "the module's data ran as code: " + r.stdout
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["code"] >= 1                   # the module's code is the memfd's: the premise
    assert got["moved"] == got["in_place"] == "Operation not permitted", got


ABORT = r"""
import os, socket, sys
from compartments.engine import Engine
from compartments.spec import EngineSpec
a, b = socket.socketpair()
Engine(a, EngineSpec("calc", sys.argv[1])).confine((65534, 65534) if os.geteuid() == 0 else None)
os.abort()      # what a failed assertion in a library does
"""


def test_an_engine_that_aborts_dies_rather_than_spinning():
    r = subprocess.run([sys.executable, "-I", "-c", ABORT, f"{EXAMPLES}/calc.wat"], env={},
                       capture_output=True, timeout=60)
    assert r.returncode == -6, r.stderr[-2000:]     # SIGABRT: it could signal itself


def _up(tmp_path, wsuper, body: str):
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{sock}"
{body}""")
    return wsuper("up", str(tmp_path / "system.toml"))


def _pid(run, name) -> int:
    return int(run.wait_for(f"ready {name}").split("pid=")[1].split()[0])


def _ns_links(pid) -> list[str]:
    """The namespaces process `pid` holds by a descriptor ("mnt:[4026532...]")."""
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if re.fullmatch(r"[a-z_]+:\[\d+\]", link) and not link.startswith(
                ("socket:", "pipe:", "anon_inode:")):
            links.append(link)
    return links


@pytest.mark.skipif(not ROOT_USER or confine.namespaces()["mount"] is not None,
                    reason="the empty mount namespace is made once only as root")
def test_engines_copy_one_empty_mount_namespace_that_only_the_zygote_holds(tmp_path, wsuper):
    """As root, each engine's mount namespace is a copy of one empty namespace the
    zygote made once, not a copy of the host's emptied by pivot_root in each engine
    (which walks every thread on the machine: docs/performance.md, "Start-up at
    scale").  Each engine still has its own, with one empty read-only tmpfs and
    nothing else; the zygote holds the one they copy, and nothing else does: not an
    engine, not the supervisor."""
    run = _up(tmp_path, wsuper, f"""
[compartments.a]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.b]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
""")
    engines = [_pid(run, "a"), _pid(run, "b")]
    zygote = int(_status(engines[0])["PPid"])
    supervisor = int(_status(zygote)["PPid"])
    held = _ns_links(zygote)
    assert len(held) == 1 and held[0].startswith("mnt:"), held
    theirs = {os.readlink(f"/proc/{pid}/ns/mnt") for pid in engines}
    assert len(theirs) == 2 and held[0] not in theirs          # each its own copy
    assert os.readlink("/proc/self/ns/mnt") not in theirs
    for pid in engines:
        mounts = open(f"/proc/{pid}/mountinfo").read().splitlines()
        assert len(mounts) == 1 and " / / ro," in mounts[0] and " tmpfs " in mounts[0], mounts
        assert _ns_links(pid) == []
    assert _ns_links(supervisor) == []


def test_a_live_engine_is_confined(tmp_path, wsuper):
    run = _up(tmp_path, wsuper, f"""
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
external = true
""")
    pid = _pid(run, "calc")
    status = _status(pid)
    for cap in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
        assert int(status[cap], 16) == 0, (cap, status[cap])
    assert status["NoNewPrivs"].strip() == "1"
    if confine.seccomp_supported():
        assert status["Seccomp"].strip() == "2"
    if ROOT_USER:
        assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
    assert status["Threads"].strip() == "1"
    assert open(f"/proc/{pid}/environ", "rb").read() == b""
    fds = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    live = sorted(v for v in fds.values() if v != "/dev/null")
    assert fds["0"] == fds["1"] == "/dev/null"
    assert [v.split(":")[0] for v in live] == ["/memfd", "pipe", "socket"]
    for ns, name in (("ipc", "ipc"), ("uts", "uts"), ("net", "net"), ("mnt", "mount")):
        if confine.namespaces()[name] is None:
            assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")


def _writable_code(pid) -> list[str]:
    """The mappings of a process through which it could write code it can run: one
    both writable and executable, or an executable one of a file that another of
    its mappings shares writably (a dual mapping)."""
    found, shared_writable, executable = [], {}, {}
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            perms, inode = fields[1], (fields[3], fields[4])
            if "w" in perms and "x" in perms:
                found.append(line.strip())
            if inode[1] != "0":
                if "w" in perms and perms[3] == "s":
                    shared_writable[inode] = line.strip()
                if "x" in perms:
                    executable[inode] = line.strip()
    found += [f"{shared_writable[i]} / {executable[i]}"
              for i in shared_writable.keys() & executable.keys()]
    return found


def test_a_live_engine_has_no_memory_it_could_write_code_into(tmp_path, wsuper):
    # seccomp refuses PROT_EXEC to mmap and mprotect so that an engine taken over
    # makes no new code; but libffi had already made a page writable and executable
    # for ctypes' callbacks (wasmtime-py's trampolines, made in the zygote at import),
    # and every engine inherited it: somewhere to write code, and jump to it
    run = _up(tmp_path, wsuper, f"""
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
external = true
""")
    pid = _pid(run, "calc")
    assert _writable_code(pid) == []
    # and its callbacks (every host call goes through one) still run
    out = subprocess.run([sys.executable, "-m", "supervisor.cli", "call",
                          str(tmp_path / "system.toml"), "calc.add", "(a = 2, b = 3)"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "5" in out.stdout, (out.stdout, out.stderr)


def test_an_executable_stack_loses_execute_not_write_when_code_is_sealed():
    """An outside review: seal_code made every writable and executable mapping
    read-only.  A C library before glibc 2.41 (this machine's is 2.36) makes the
    stack executable when a library it loads asks for one (PT_GNU_STACK), and the
    stack made read-only killed the process with SIGSEGV at its next push: every
    engine, at every start, "engine killed by SIGSEGV".  The stack keeps its write
    permission and loses execute; the process goes on."""
    code = """if True:
        import ctypes
        from compartments import confine
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        def stack():
            for line in open("/proc/self/maps").read().splitlines():
                if line.endswith("[stack]"):
                    a, b = (int(x, 16) for x in line.split()[0].split("-"))
                    return a, b, line.split()[1]
        a, b, _ = stack()
        assert libc.mprotect(a, b - a, 7) == 0, ctypes.get_errno()   # as glibc does
        assert stack()[2] == "rwxp"
        confine.seal_code()
        print(stack()[2])
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=os.path.dirname(os.path.dirname(
                             os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0 and out.stdout.split() == ["rw-p"], (out.returncode,
                                                                   out.stdout, out.stderr)


_SEALED = r"""if True:
    import ctypes, json, mmap, os, sys
    from compartments import confine
    confine.use_procmap_query = sys.argv[1] == "query"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    def perms(addr):
        for line in open("/proc/self/maps").read().splitlines():
            a, b = (int(x, 16) for x in line.split()[0].split("-"))
            if a <= addr < b:
                return line.split()[1]
    # writable and executable: a page as libffi makes one, and one neither readable
    wx = libc.mmap(None, 4096, 7, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    wx_only = libc.mmap(None, 4096, 6, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    dual = sys.argv[2] == "dual"
    if dual:    # a file mapped shared and writable, and again executable: code to write
        fd = os.memfd_create("dual")
        os.ftruncate(fd, 4096)
        libc.mmap(None, 4096, 3, mmap.MAP_SHARED, fd, 0)
        libc.mmap(None, 4096, 5, mmap.MAP_PRIVATE, fd, 0)
    try:
        confine.seal_code()
        said = None
    except confine.ConfinementError as e:
        said = str(e)
    print(json.dumps({"wx": perms(wx), "wx_only": perms(wx_only), "said": said}))
"""


@pytest.mark.parametrize("way", ["query", "text"])
def test_sealing_code_asks_the_kernel_or_reads_the_text_and_decides_the_same(way):
    """seal_code asks the kernel for the mappings it judges (PROCMAP_QUERY, Linux
    6.11) instead of reading and parsing /proc/self/maps' ~240 lines, which took
    ~0.5-1 ms of every engine's start; kernels without it read the text.  Either
    way: a writable and executable mapping loses its write permission (kept
    readable only if it was), and a file mapped both shared writable and executable
    is refused, naming both mappings."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for case in ("plain", "dual"):
        out = subprocess.run([sys.executable, "-c", _SEALED, way, case], capture_output=True,
                             text=True, timeout=60, cwd=root)
        assert out.returncode == 0, (case, out.stdout, out.stderr)
        got = json.loads(out.stdout)
        assert got["wx"] == "r-xp" and got["wx_only"] == "--xp", (case, got)
        if case == "plain":
            assert got["said"] is None, got
        else:
            assert re.fullmatch(r"the executable memory [0-9a-f]+-[0-9a-f]+ \(/memfd:dual"
                                r"( \(deleted\))?\) is also mapped writable, at "
                                r"[0-9a-f]+-[0-9a-f]+ \(/memfd:dual( \(deleted\))?\)",
                                got["said"]), got


def test_sealing_code_asks_the_kernel_mapping_by_mapping_where_it_can():
    """The cost the query saves: the kernel answers it (this kernel has it), and
    seal_code then never reads /proc/self/maps' text."""
    if not confine.use_procmap_query:
        pytest.skip("turned off")
    fd = os.open("/proc/self/maps", os.O_RDONLY)
    try:
        try:
            found = confine._queried_maps(fd, confine._Q_EXECUTABLE)
        except OSError as e:
            pytest.skip(f"this kernel has no PROCMAP_QUERY ({e})")
    finally:
        os.close(fd)
    text = [line.split() for line in open("/proc/self/maps").read().splitlines()]
    # ([vsyscall], the kernel's page at the top, is no mapping of the process's: no
    # writable, no file's, nothing seal_code judges)
    assert [(start, end) for start, end, *_ in found] == \
        [tuple(int(x, 16) for x in f[0].split("-")) for f in text
         if "x" in f[1] and f[-1] != "[vsyscall]"]
    code = """if True:
        from compartments import confine
        confine._read_maps = lambda: (_ for _ in ()).throw(AssertionError("read the text"))
        confine.seal_code()
        print("sealed")
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=root)
    assert out.returncode == 0 and out.stdout.split() == ["sealed"], (out.stdout, out.stderr)


def test_when_memory_runs_out_the_kernel_ends_engines_and_compilers_first(tmp_path, wsuper):
    """There is no cgroup: an engine's memory is bounded by its RLIMIT_AS only (up to
    twice its limit and 512 MiB more), and a compiler's by its limits (4 GiB, and what
    it forks, and its memfds, which no process's size counts).  When many of them
    exhaust the machine's memory, the kernel's OOM killer ends the process it ranks
    first: by size alone that may be the supervisor (its buffers grow with its
    clients), and every compartment ended with it.  Engines and compilers rank first
    (oom_score_adj 1000); the supervisor and the zygote keep their own."""
    from compartments import zygote as zyg

    run = _up(tmp_path, wsuper, f"""
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
""")
    pid = _pid(run, "calc")
    assert open(f"/proc/{pid}/oom_score_adj").read().strip() == "1000"
    assert open(f"/proc/{run.proc.pid}/oom_score_adj").read().strip() == \
        open("/proc/self/oom_score_adj").read().strip()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:                          # a compiler, as the zygote makes one
        try:
            zyg.limit_compiler(confine, w)
            os.write(w, open("/proc/self/oom_score_adj", "rb").read())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(child, 0)
    assert os.read(r, 64).strip() == b"1000"
    os.close(r)


@pytest.mark.skipif(not ROOT_USER, reason="engine_user applies when wsuper runs as root")
def test_engine_user_sets_the_uid_and_gid_of_engines(tmp_path, wsuper):
    run = _up(tmp_path, wsuper, f"""engine_user = "4242:4343"
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
""")
    status = _status(_pid(run, "calc"))
    assert status["Uid"].split() == ["4242"] * 4 and status["Gid"].split() == ["4343"] * 4


def _memory(pid) -> bytes:
    """Every readable private or file mapping of a process, concatenated."""
    out = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            if fields[1][0] != "r" or fields[-1] in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                out.append(os.pread(mem.fileno(), end - start, start))
            except OSError:
                pass
    return b"".join(out)


def test_an_engine_holds_no_other_compartments_module_or_data(tmp_path, wsuper):
    secret = "wsuper-secret-" + secrets.token_hex(16)
    (tmp_path / "holder.wat").write_text(f"""(module
  (memory (export "memory") 1)
  (data (i32.const 1024) "{secret}")
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) (i32.const 0)))""")
    run = _up(tmp_path, wsuper, f"""
[compartments.holder]
module = "holder.wat"
exports = "Calc"
[compartments.other]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
""")
    holder, other = _pid(run, "holder"), _pid(run, "other")
    zygote = int(_status(other)["PPid"])
    assert int(_status(holder)["PPid"]) == zygote
    time.sleep(0.2)
    assert secret.encode() in _memory(holder)             # the scan finds what is there
    assert secret.encode() not in _memory(other)
    assert secret.encode() not in _memory(zygote)         # nor is it kept for the next fork
    # the other engine has one module descriptor: its own
    inode = lambda pid: {os.stat(f"/proc/{pid}/fd/{fd}").st_ino for fd in os.listdir(f"/proc/{pid}/fd")
                         if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:")}  # noqa: E731
    assert len(inode(other)) == 1 and inode(other) != inode(holder)


def test_a_spare_engine_waits_with_namespaces_of_its_own_and_no_module(tmp_path, wsuper):
    """The zygote keeps a spare child ready for the next request (zygote.py; a few,
    forked back to back, when requests come in a row as here): each has made its own
    IPC, UTS, network and mount namespaces already, emptied the mount namespace (one
    empty read-only tmpfs) and its capability bounding set, holds no compartment's
    module, and each engine, spare or not, has namespaces of its own."""
    run = _up(tmp_path, wsuper, f"""
[compartments.a]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.b]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
""")
    engines = {_pid(run, "a"), _pid(run, "b")}
    zygote = int(_status(next(iter(engines)))["PPid"])
    ns = lambda pid, name: os.readlink(f"/proc/{pid}/ns/{name}")  # noqa: E731

    def held(pid) -> dict:
        out = {}
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                out[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:          # closed meanwhile
                pass
        return out
    deadline = time.monotonic() + 10
    while True:                      # a spare closes the built-in module once it has
        spares = _spares(zygote, engines)    # rehearsed on it (or did not rehearse)
        fds = {spare: held(spare) for spare in spares}
        if spares and not any(v.startswith("/memfd:") for f in fds.values() for v in f.values()):
            break
        assert time.monotonic() < deadline, fds
        time.sleep(0.05)
    assert 1 <= len(spares) <= zygote_module.SPARES_AHEAD, spares
    for spare in spares:
        f = fds[spare]
        assert f["0"] == f["1"] == "/dev/null"
        # its own socket to the zygote and no other (the directories are pycapnp's, as
        # in the zygote; confine() points them at /dev/null like every other)
        assert [v.split(":")[0] for k, v in f.items() if k not in ("0", "1", "2")
                and not v.startswith("/")] == ["socket"], f
        if ROOT_USER or any(why is None for why in confine.namespaces().values()):
            assert int(_status(spare)["CapBnd"], 16) == 0
        if confine.namespaces()["mount"] is None:
            mounts = open(f"/proc/{spare}/mountinfo").read().splitlines()
            assert len(mounts) == 1 and " / / ro," in mounts[0] and " tmpfs " in mounts[0]
            # the one way out of it until confine(): its own /proc/PID, to read its
            # module through (the other directories are the zygote's, as above)
            assert [v for v in f.values() if v.startswith("/proc")] == [f"/proc/{spare}"], f
    sockets = [v for f in fds.values() for k, v in f.items() if v.startswith("socket:")]
    assert len(set(sockets)) == len(spares)          # none holds another's
    for name, why in confine.namespaces().items():
        if why is None:
            name = {"mount": "mnt"}.get(name, name)
            pids = (zygote, *spares, *engines)
            seen = {ns(pid, name) for pid in pids}
            assert len(seen) == len(pids), (name, seen)    # each its own


def test_an_idle_zygote_keeps_a_second_spare(tmp_path, wsuper):
    """Between requests that come one at a time the zygote keeps SPARES_IDLE spares, so
    that the one a request takes is replaced FORK_DELAY later (not while its engine
    starts) and the next request still finds one (zygote.py)."""
    run = _up(tmp_path, wsuper, f"""
[compartments.a]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
""")
    engines = {_pid(run, "a")}
    zygote = int(_status(next(iter(engines)))["PPid"])
    deadline = time.monotonic() + 10
    while len(_spares(zygote, engines)) < zygote_module.SPARES_IDLE:
        assert time.monotonic() < deadline, _spares(zygote, engines)
        time.sleep(0.05)
    time.sleep(0.2)
    assert len(_spares(zygote, engines)) == zygote_module.SPARES_IDLE


def _spares(zygote: int, engines: set) -> list:
    return [int(p) for p in open(f"/proc/{zygote}/task/{zygote}/children").read().split()
            if int(p) not in engines]


def test_no_spare_holds_a_request_even_when_the_spare_was_gone_and_the_module_is_refused(
        tmp_path, wsuper):
    """A request that finds no spare (it was killed) and whose module cannot be
    loaded is refused at once: the next spare never holds its engine socket (before,
    a spare forked for it did, and the compartment hung in 'restarting')."""
    shutil.copy(f"{EXAMPLES}/calc.wat", tmp_path / "b.wat")
    run = _up(tmp_path, wsuper, f"""
[compartments.a]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.b]
module = "{tmp_path}/b.wat"
exports = "Calc"
restart = "permanent"
restart_delay = 0.0
""")
    a, b = _pid(run, "a"), _pid(run, "b")
    zygote = int(_status(a)["PPid"])
    deadline = time.monotonic() + 10
    while not _spares(zygote, {a, b}):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for spare in _spares(zygote, {a, b}):
        os.kill(spare, signal.SIGKILL)
    (tmp_path / "b.wat").write_text("(module (this is not wasm")
    os.kill(b, signal.SIGKILL)
    line = run.wait_for("b failed to start", timeout=10)
    assert "cannot load module" in line
    deadline = time.monotonic() + 10
    while True:                       # each spare forked since holds one socket: its own
        spares = _spares(zygote, {a, b})  # (SPARES_IDLE of them, the second a bit later)
        try:
            sockets = [[v for v in (os.readlink(f"/proc/{spare}/fd/{fd}")
                                    for fd in os.listdir(f"/proc/{spare}/fd"))
                        if v.startswith(("socket:", "pipe:"))] for spare in spares]
        except FileNotFoundError:        # a descriptor closed (or a spare set up) meanwhile
            sockets = [[]]
        if len(spares) == zygote_module.SPARES_IDLE and all(
                len([s for s in held if s.startswith("socket:")]) == 1 for held in sockets):
            break
        assert time.monotonic() < deadline, (spares, sockets)
        time.sleep(0.05)


def test_a_compiler_child_holds_nothing_of_the_zygote(monkeypatch):
    """The child that compiles a module (untrusted bytes, unconfined) closes what is
    the zygote's first: its control socket, its other modules' memfds, the spares'
    sockets.  Checked with the real fork: the child lists what it holds."""
    import wasmtime

    from compartments import wasm, zygote

    # what the child looks for: the descriptors' files (device, inode), by fstat: the
    # compiler is confined before it compiles, and may not list /proc/self/fd then
    name = lambda fd: (os.fstat(fd).st_dev, os.fstat(fd).st_ino)   # noqa: E731
    watched = {}

    def report(_engine, _path, _fds, err, *_a, **_k):   # runs in the compiler child
        held = set()
        for fd in range(min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1 << 16)):
            try:
                held.add(name(fd))
            except OSError:                   # not open
                pass
        # only the answers: the whole list can pass the parent's read of the error
        # (a process that has run many tests holds many descriptors)
        os.write(err, zygote._SAID      # as the compiler says why (after what others printed)
                 + "|".join(k for k, v in watched.items() if v in held).encode())
        return 1
    monkeypatch.setattr(zygote, "_compile_into", report)
    modules = zygote._Modules(wasmtime.Engine(wasm.engine_config()))
    control, other = socket.socketpair()
    memfd = os.memfd_create("another-module")
    watched.update(control=name(control.fileno()), memfd=name(memfd),
                   other=name(other.fileno()))
    try:
        modules.zygote_own = lambda: [control, memfd]
        fds, error = modules.get(f"{EXAMPLES}/calc.wat")
        assert fds is None
        held = error.split(": ", 1)[1].split("|")
        assert "control" not in held and "memfd" not in held, error
        assert "other" in held          # (not the zygote's: still there)
    finally:
        control.close(), other.close(), os.close(memfd)


def _children(pid: int) -> list:
    try:
        return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def test_a_modules_start_function_runs_confined(tmp_path, wsuper):
    """A module's start function is guest code: it runs only once the engine is
    confined (it ran before confine(), unconfined, until this was fixed).  Caught
    while it spins: the engine running it already has its seccomp filter, no
    capabilities and no_new_privs."""
    (tmp_path / "spin.wat").write_text("""(module
  (memory (export "memory") 1)
  (func $spin (loop $l (br $l)))
  (start $spin)
  (func (export "_start")))""")
    run = _up(tmp_path, wsuper, """
[compartments.spinner]
module = "spin.wat"
""")
    deadline = time.monotonic() + 20
    seen: dict = {}                   # pid -> samples in a row it was running
    while True:   # the zygote's child that keeps running: the engine (a compiler or a
        zygotes = [c for c in _children(run.proc.pid)   # spare's rehearsal is brief)
                   if "compartments.zygote" in _gone_or(lambda: open(f"/proc/{c}/cmdline").read())]
        running = {c for z in zygotes for c in _children(z)   # one may end as it is read
                   if _gone_or(lambda: _status(c).get("State", "")).startswith("R")}
        seen = {c: seen.get(c, 0) + 1 for c in running}
        spinning = [c for c, n in seen.items() if n >= 10]
        if spinning:
            break
        assert time.monotonic() < deadline, zygotes
        time.sleep(0.05)
    status = _status(spinning[0])
    assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1", status
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0, status


#: What a taken-over wasm-tools child tries: signal a process outside it, say whether
#: that worked (the shell's status), then wait while the test looks at it.
TOOL_CHILD = 'kill -TERM "$1" 2>/dev/null; echo "$?"; read -r _'


@pytest.mark.skipif(confine.landlock_abi() == 0, reason="the kernel has no Landlock")
def test_the_wasm_tools_child_holds_no_capability_and_signals_nothing_outside():
    """The helper that rewrites modules for probes (wasm-tools, instrument._tool) reads
    hostile modules: its child is confined by instrument._confine_tool.  Run with that
    same confinement, a program (a shell here, as wasm-tools taken over) holds no
    capability even when wsuper runs as root (exec gave uid 0 its whole bounding set:
    it could load a kernel module or change the clock), and (Landlock ABI 6) cannot
    signal a process outside it: it could kill any process of its user (as
    root, every process: the supervisor's first)."""
    from compartments import instrument
    shell = os.path.realpath(shutil.which("sh"))       # a program, as wasm-tools is
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    r, w = os.pipe()
    try:
        tool = subprocess.Popen([shell, "-c", TOOL_CHILD, "sh", str(victim.pid)],
                                stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={}, preexec_fn=instrument._confine_tool(shell))
        os.close(r)
        try:
            said = read_line(tool).decode().strip()
            assert said, tool.stderr.read()
            status = _status(tool.pid)
            for cap in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
                assert int(status[cap], 16) == 0, (cap, status[cap])
            assert status["NoNewPrivs"].strip() == "1"
            if confine.landlock_abi() >= 6:
                assert said != "0", said           # kill failed (EPERM)
                time.sleep(0.1)
                assert victim.poll() is None
        finally:
            os.close(w)
            tool.wait(timeout=30)
    finally:
        victim.kill()
        victim.wait()


def test_every_landlock_ruleset_handles_every_right_of_the_kernels_abi():
    """confine.landlock_ruleset, from which both rulesets (an engine's, the wasm-tools
    child's) are made: each ABI's every right handled, none of a later ABI."""
    import struct
    sizes = {1: 8, 2: 8, 3: 8, 4: 16, 5: 16, 6: 24, 7: 24}
    fs_bits = {1: 13, 2: 14, 3: 15, 4: 15, 5: 16, 6: 16, 7: 16}
    for abi, size in sizes.items():
        attr = confine.landlock_ruleset(abi)
        assert len(attr) == size, abi
        fields = struct.unpack(f"<{size // 8}Q", attr)
        assert fields[0] == (1 << fs_bits[abi]) - 1, abi
        if abi >= 4:
            assert fields[1] == 0b11, abi          # bind_tcp, connect_tcp
        if abi >= 6:
            assert fields[2] == 0b11, abi          # abstract Unix sockets, signals


#: A process that runs a program under the wasm-tools child's confinement (as the
#: compiler child does, instrument._tool), says the program's pid, and waits.
TOOL_PARENT = r"""
import os, shutil, subprocess, sys
from compartments import instrument
shell = os.path.realpath(shutil.which("sh"))
tool = subprocess.Popen([shell, "-c", 'read -r _'], stdin=int(sys.argv[1]), env={},
                        preexec_fn=instrument._confine_tool(shell), pass_fds=())
os.write(1, b"%d\n" % tool.pid)
os.read(0, 1)
"""


def test_the_wasm_tools_child_dies_with_the_process_that_ran_it():
    """The compiler child that runs wasm-tools may die first (killed at its CPU limit,
    or with the zygote, which dies with the supervisor): wasm-tools must not run on
    for up to its own CPU limit after the whole system is gone."""
    r, w = os.pipe()                    # the tool's stdin: it never ends on its own
    parent = subprocess.Popen([sys.executable, "-c", TOOL_PARENT, str(r)], pass_fds=[r],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                                  os.path.abspath(__file__)))))
    os.close(r)
    tool = None
    try:
        tool = int(read_line(parent))
        assert _status(tool)["PPid"].strip() == str(parent.pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 20
        while True:
            try:
                state = _status(tool)
            except FileNotFoundError:
                break                                # gone (reaped by init)
            if state.get("State", "").startswith("Z"):
                break                                # dead, waiting to be reaped
            assert time.monotonic() < deadline, ("the tool outlived its parent", state)
            time.sleep(0.05)
    finally:
        os.close(w)
        if parent.poll() is None:
            parent.kill()
            parent.wait()


#: An escaped engine frees every mapping it holds that it cannot use (no access: the
#: reservations it inherited from the zygote), then maps as much fresh read-write
#: memory as its RLIMIT_AS lets it (mapped only, never touched): what it could commit.
ADDRESS_SPACE = r"""
import ctypes, os, socket, sys
from compartments.engine import Engine
from compartments.spec import EngineSpec
reserved = []
for line in open("/proc/self/maps"):
    fields = line.split()
    if fields[1].startswith("---") and len(fields) < 6:        # no access, anonymous
        start, end = (int(x, 16) for x in fields[0].split("-"))
        reserved.append((start, end - start))
a, b = socket.socketpair()
Engine(a, EngineSpec("calc", sys.argv[1])).confine((65534, 65534) if os.geteuid() == 0 else None)
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
for start, size in reserved:
    libc.munmap(start, size)
chunk, total = 16 << 20, 0
while True:       # PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE
    if libc.mmap(None, chunk, 3, 0x22 | 0x4000, -1, 0) in (None, ctypes.c_void_p(-1).value):
        break
    total += chunk
os.write(1, b"%d\n" % total)
# as an engine ends (zygote._leave_with): the interpreter's finalization frees ctypes'
# callbacks, a write into libffi's page, which confine() left executable only
os._exit(0)
"""


def test_an_escaped_engine_can_map_no_more_than_its_memory_budget():
    """docs/security.md: an escaped engine's memory is bounded by RLIMIT_AS, about twice
    its `memory` limit plus 512 MiB.  The limit is set on top of what the engine has
    mapped when it is confined, and the engine may unmap what it holds: so no large
    reservation may be among it.  The import-time self-test of compartments/unchecked.py
    left a store with wasmtime's default 4 GiB memory reservation in the zygote for
    good (frozen, never collected), inherited by every engine: unmapped, that was
    4 GiB more for each engine to fill, 4.7 GiB in all for the default 64 MiB."""
    r = subprocess.run([sys.executable, "-I", "-c", ADDRESS_SPACE, f"{EXAMPLES}/calc.wat"],
                       env={}, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    mapped = int(r.stdout)
    memory = 64 << 20                     # the default limit
    # twice the memory limit and 512 MiB, and what the engine's own heap and wasmtime's
    # 64 MiB reservations (the memory, its room to grow) take back when freed
    assert mapped <= 2 * memory + (512 << 20) + (256 << 20), mapped >> 20


def test_a_live_engines_address_space_is_its_budget_over_a_small_base(tmp_path, wsuper):
    """The same bound for an engine the zygote forked (which inherits the zygote's whole
    address space, its warm-up included): RLIMIT_AS is what it had mapped at
    confine() plus twice its memory limit and 512 MiB, and what it had mapped must be
    small (it was 4.2 GiB, nearly all an unused reservation an escaped engine could
    unmap and fill)."""
    run = _up(tmp_path, wsuper, f"""
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
""")
    pid = _pid(run, "calc")
    limits = open(f"/proc/{pid}/limits").read()
    address_space = int(re.search(r"Max address space\s+(\d+)", limits).group(1))
    base = address_space - 2 * (64 << 20) - (512 << 20)
    assert base < 512 << 20, base >> 20


def test_a_per_call_engine_s_pool_is_taken_out_of_its_budget(tmp_path, wsuper):
    """instance = "per_call": the calls' instances come from wasmtime's pooling
    allocator (engine.pool_for), whose slot (64 MiB of address space) is reserved
    before confine().  RLIMIT_AS is set on top of what is mapped then: counted
    in it, the pool was 64 MiB more that an escaped engine could unmap and fill.
    The slot holds what the budget's room held before (a call's instance), so
    it is taken out: a per_call engine's budget is a shared one's."""
    run = _up(tmp_path, wsuper, f"""
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.fresh]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
instance = "per_call"
""")
    budget, mapped = {}, {}
    for name in ("calc", "fresh"):
        pid = _pid(run, name)
        limits = open(f"/proc/{pid}/limits").read()
        budget[name] = int(re.search(r"Max address space\s+(\d+)", limits).group(1))
        mapped[name] = int(_status(pid)["VmSize"].split()[0]) << 10
    assert mapped["fresh"] - mapped["calc"] >= 64 << 20, mapped      # the pool is there
    assert abs(budget["fresh"] - budget["calc"]) < 16 << 20, budget   # and not in the budget


#: Rewrites a small module with wasm-tools as the compiler child does (instrument._tool),
#: and says what came of it.
TOOL_RUN = r"""
from compartments import instrument
try:
    out = instrument._tool(["print"], b"\0asm\x01\0\0\0")
    print("ran", out.decode().split()[0])
except BaseException as e:
    print("refused", type(e).__name__, e)
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv (util-linux)")
@pytest.mark.parametrize("bounding, said", [
    ("-all", "ran (module"),
    ("-setpcap", "refused InstrumentError cannot confine wasm-tools: wsuper runs as root "
                 "without CAP_SETPCAP")])
def test_wasm_tools_runs_as_root_with_capabilities_cut_or_is_refused_saying_why(
        bounding, said):
    """Emptying the wasm-tools child's bounding set (drop_capabilities_before_exec)
    needs CAP_SETPCAP, which root may lack (a container, a unit with its
    capabilities cut): with an empty bounding set already, every rewrite for probes
    failed ('Exception occurred in preexec_fn', which the compiler did not catch:
    it died saying nothing, and was tried again every 10 s); with others left and
    no CAP_SETPCAP, the same.  Now a capability not held is not dropped, and root
    that cannot drop what it holds is refused saying why, never run with them."""
    r = subprocess.run(["setpriv", f"--bounding-set={bounding}", sys.executable, "-c", TOOL_RUN],
                       capture_output=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__)))))
    assert r.stdout.decode().startswith(said), (r.stdout, r.stderr[-2000:])


def _what_this_process_can_do(place: str) -> dict:
    """Run in a child that parses hostile input (a compiler, the schema parser): what
    it holds and what it can reach, as names (the attempt's errno name, or "allowed").
    `place`: a directory anybody may write to, with a world-readable file `secret`,
    and a Unix socket `sock` anybody may connect to; the parent is signalled."""
    import errno as errno_

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    libc.syscall(125, header, data)                     # capget
    bounding = [c for c in range(41) if libc.prctl(23, c, 0, 0, 0) == 1]  # CAPBSET_READ
    facts = {"uid": os.geteuid(), "effective": data[0], "permitted": data[1],
             "bounding": len(bounding), "no_new_privs": libc.prctl(39, 0, 0, 0, 0),
             "seccomp": libc.prctl(21, 0, 0, 0, 0),
             "real-time priority limit": resource.getrlimit(resource.RLIMIT_RTPRIO)[1],
             "nice limit": resource.getrlimit(resource.RLIMIT_NICE)[1]}

    def attempt(name, f):
        try:
            f()
            facts[name] = "allowed"
        except OSError as e:
            facts[name] = errno_.errorcode.get(e.errno, str(e.errno))
    attempt("signal the parent", lambda: os.kill(os.getppid(), 0))
    attempt("write a file", lambda: os.close(os.open(os.path.join(place, "written"),
                                                     os.O_WRONLY | os.O_CREAT, 0o644)))
    attempt("read a file", lambda: os.close(os.open(os.path.join(place, "secret"),
                                                    os.O_RDONLY)))

    def unix():
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(os.path.join(place, "sock"))
        finally:
            s.close()
    attempt("connect a Unix socket", unix)
    attempt("open a UDP socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())

    def oob():                  # the kernel's AF_UNIX out-of-band code (r274)
        a, b = socket.socketpair()
        with a, b:
            a.send(b"!", socket.MSG_OOB)
    attempt("send out-of-band data on a socket pair", oob)
    attempt("run /bin/true", lambda: subprocess.run(["/bin/true"], check=True))
    attempt("make a user namespace", lambda: _unshare_user(libc))

    def shm():
        made = libc.shmget(0, 4096, 0o1600)                # IPC_PRIVATE, IPC_CREAT
        if made < 0:
            raise OSError(ctypes.get_errno(), "shmget")
        libc.shmctl(made, 0, None)                         # IPC_RMID: leave none behind
    attempt("make System V shared memory", shm)

    def leave_group():          # what it forks (a daemon) tries to leave its group
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                os._exit(0)
            except OSError as e:
                os._exit(e.errno)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code:
            raise OSError(code, "setsid")
    attempt("leave its process group", leave_group)

    def limit_another():        # a process of its uid (an engine's, as here its child)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        os.close(r)
        try:
            resource.prlimit(pid, resource.RLIMIT_NOFILE,
                             resource.prlimit(pid, resource.RLIMIT_NOFILE))
        finally:
            os.close(w)
            os.waitpid(pid, 0)
    attempt("limit another process of its uid", limit_another)
    attempt("take a real-time policy",
            lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1)))

    # queued signals, which the kernel counts per user: past its limit no process of
    # that user (65534's, or root's for the schema parser) could make a POSIX timer
    # (r274).  Blocked and queued to itself; they go with it
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
    queued, me = 0, os.getpid()
    while queued < 1 << 20 and libc.syscall(234, me, threading.get_native_id(),
                                            signal.SIGRTMIN) == 0:
        queued += 1
    facts["signals queued"] = queued

    # what Landlock does not cover: a file's metadata by path (or descriptor), and
    # watching a directory.  `owned` is this child's uid's own file, outside its grants
    # (the schema parser keeps uid 0 as root: root's file, as /etc/shadow is)
    owned = os.path.join(place, f"owned-{os.geteuid()}")
    attempt("change a file's mode", lambda: os.chmod(owned, 0o666))
    attempt("change a file's owner", lambda: os.chown(owned, os.geteuid(), os.getegid()))
    attempt("change a file's times", lambda: os.utime(owned, (0, 0)))
    attempt("set a file's extended attribute",
            lambda: os.setxattr(owned, "user.wsuper-attack", b"1"))

    def watch(init, add):
        fd = init()
        if fd < 0:
            raise OSError(ctypes.get_errno(), "init")
        try:
            if add(fd) < 0:
                raise OSError(ctypes.get_errno(), "watch")
        finally:
            os.close(fd)
    attempt("watch a directory (inotify)", lambda: watch(
        lambda: libc.inotify_init1(os.O_CLOEXEC),
        lambda fd: libc.inotify_add_watch(fd, place.encode(), 0x100 | 0x20)))  # CREATE|OPEN
    libc.fanotify_mark.argtypes = (ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                   ctypes.c_char_p)
    attempt("watch a directory (fanotify)", lambda: watch(
        lambda: libc.fanotify_init(0x200 | 0x400 | 0x800, os.O_RDONLY),  # FID|DFID|NAME
        lambda fd: libc.fanotify_mark(fd, 1, 0x100, -100, place.encode())))  # ADD CREATE
    return facts


def _unshare_user(libc):
    pid = os.fork()
    if pid == 0:
        os._exit(0 if libc.unshare(0x10000000) == 0 else ctypes.get_errno())
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code:
        raise OSError(code, "unshare")


#: Whose files `place` holds: a compiler's uid (the engines' as root), and this
#: process's (root's: the schema parser keeps uid 0)
_OWNERS = sorted({ENGINE_USER if ROOT_USER else (os.getuid(), os.getgid()),
                  (os.getuid(), os.getgid())})


@pytest.fixture
def place():
    """The directory `_what_this_process_can_do` attacks, open to anybody (under the
    system's temporary directory: pytest's tmp_path is root's own, 0700), with
    its listening Unix socket."""
    import tempfile
    where = tempfile.mkdtemp(prefix="wsuper-attack-")
    try:
        os.chmod(where, 0o777)
        for d in (os.path.dirname(where),):
            if os.stat(d).st_mode & 0o001 == 0:
                pytest.skip(f"{d} is not searchable by others")
        with open(os.path.join(where, "secret"), "w") as f:
            f.write("secret")
        os.chmod(os.path.join(where, "secret"), 0o644)
        for uid, gid in _OWNERS:                 # the helpers' uids' own files
            owned = os.path.join(where, f"owned-{uid}")
            with open(owned, "w") as f:
                f.write("owned")
            os.chmod(owned, 0o600)
            os.chown(owned, uid, gid)
        server = socket.socket(socket.AF_UNIX)
        server.bind(os.path.join(where, "sock"))
        os.chmod(os.path.join(where, "sock"), 0o777)
        server.listen(8)
        with server:
            yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


HELD_BY_NONE = {"effective": 0, "permitted": 0, "bounding": 0, "no_new_privs": 1,
                "seccomp": 2, "signal the parent": "EPERM", "write a file": "EACCES",
                "read a file": "EACCES", "connect a Unix socket": "EPERM",
                "open a UDP socket": "EPERM", "run /bin/true": "EACCES",
                "send out-of-band data on a socket pair": "EPERM",
                "make a user namespace": "EPERM", "make System V shared memory": "EPERM",
                "leave its process group": "EPERM",
                "limit another process of its uid": "EPERM",
                "take a real-time policy": "EPERM", "real-time priority limit": 0,
                "nice limit": 0, "signals queued": 0,
                "change a file's mode": "EPERM", "change a file's owner": "EPERM",
                "change a file's times": "EPERM", "set a file's extended attribute": "EPERM",
                "watch a directory (inotify)": "EPERM",
                "watch a directory (fanotify)": "EPERM"}

#: What of HELD_BY_NONE only the helpers' seccomp filter stops
_SECCOMP_ONLY = ("seccomp", "connect a Unix socket", "open a UDP socket",
                 "send out-of-band data on a socket pair",
                 "make a user namespace", "make System V shared memory",
                 "leave its process group", "limit another process of its uid",
                 "change a file's mode", "change a file's owner", "change a file's times",
                 "set a file's extended attribute", "watch a directory (inotify)",
                 "watch a directory (fanotify)")


def _untouched(place: str) -> bool:
    """Whether the files of the helpers' uids in `place` are as the fixture made them:
    mode, owner, times and extended attributes (what `_what_this_process_can_do`
    tried to change)."""
    for uid, gid in _OWNERS:
        owned = os.path.join(place, f"owned-{uid}")
        st = os.stat(owned)
        try:
            attrs = os.listxattr(owned)
        except OSError:
            attrs = []
        if st.st_mode & 0o7777 != 0o600 or st.st_mtime <= 0 or \
                (st.st_uid, st.st_gid) != (uid, gid) or "user.wsuper-attack" in attrs:
            return False
    return True


def _held(facts: dict) -> dict:
    """What of HELD_BY_NONE a child still held (the layers this kernel has)."""
    expected = dict(HELD_BY_NONE)
    if not ROOT_USER:
        expected["bounding"] = facts["bounding"]     # a user's, shrinks only in a userns
    if confine.landlock_abi() < 6:
        expected.pop("signal the parent")            # root: uid 65534 cannot either
    if not confine.landlock_abi():
        for k in ("write a file", "read a file", "run /bin/true"):
            expected.pop(k)
    if not confine.seccomp_supported():
        for k in _SECCOMP_ONLY:
            expected.pop(k)
    return {k: facts[k] for k in expected if facts[k] != expected[k]}


@pytest.mark.parametrize("probes", [(), ("functions",)])
def test_a_compiler_child_holds_no_authority(monkeypatch, place, probes):
    """The child that compiles a module parses hostile bytes (wasmparser, Cranelift,
    the probes' rewriter): a memory bug there ran as root with every capability, and
    could signal the supervisor, write root's files, open sockets, connect to a Unix
    socket by path, make namespaces.  Now it has read its module and then given up
    root, every capability, the file system, sockets: checked from inside a real
    compiler child, with and without probes (which run wasm-tools)."""
    import wasmtime

    from compartments import wasm, zygote

    def report(_engine, path, _fds, err, *_a, **_k):      # runs in the compiler child
        facts = _what_this_process_can_do(place)
        facts["module"] = len(wasm.read_file(path))        # read before it gave files up
        os.write(err, zygote._SAID + json.dumps(facts).encode())
        return 1
    monkeypatch.setattr(zygote, "_compile_into", report)
    modules = zygote._Modules(wasmtime.Engine(wasm.engine_config()))
    fds, error = modules.get(f"{EXAMPLES}/calc.wat", probes)
    assert fds is None
    facts = json.loads(error.split(": ", 1)[1])
    assert facts["module"] == os.path.getsize(f"{EXAMPLES}/calc.wat")
    if ROOT_USER:
        assert facts["uid"] == ENGINE_USER[0]
    assert _held(facts) == {}, facts
    assert not os.path.exists(os.path.join(place, "written"))
    assert _untouched(place)


def test_the_preflights_compiler_child_holds_no_authority(place):
    """`wsuper check` and `up` compile each module in a child of their own process
    (zygote.in_a_compiler): the same hostile bytes, and the supervisor's process is
    root's with the admin socket.  It gives up as much as the zygote's compiler."""
    from compartments import wasm, zygote

    path = f"{EXAMPLES}/calc.wat"

    def work():
        facts = _what_this_process_can_do(place)
        facts["module"] = len(wasm.read_file(path))
        return facts
    facts = zygote.in_a_compiler(work, path)
    assert facts["module"] == os.path.getsize(path)
    if ROOT_USER:
        assert facts["uid"] == ENGINE_USER[0]
    assert _held(facts) == {}, facts
    assert _untouched(place)


@pytest.mark.skipif(not ROOT_USER, reason="a spare gives up root only when it has it")
def test_a_spare_gives_up_root_before_it_loads_its_compiled_module(monkeypatch):
    """wasmtime's Module.deserialize trusts its input, and a compiler that parsed the
    hostile module wrote it: the spare that loads it ran as root with every
    capability (its bounding set only was empty) until confine(), after the load.
    Now it is the engine's user, with no capability, before: checked with the real
    _child in a real fork, at the moment it loads the module."""
    import types

    import wasmtime

    from compartments import engine, wasm, zygote
    from compartments.spec import EngineSpec

    path = f"{EXAMPLES}/calc.wat"
    wasm_engine = wasmtime.Engine(wasm.engine_config())
    fds, error = zygote._Modules(wasm_engine).get(path)
    assert error is None
    r, w = os.pipe()

    class Module:
        @staticmethod
        def deserialize_file(_engine, _path):        # runs in the child, at the load
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            header = (ctypes.c_uint32 * 2)(0x20080522, 0)
            data = (ctypes.c_uint32 * 6)()
            libc.syscall(125, header, data)                 # capget
            os.write(w, json.dumps([os.getresuid(), os.getresgid(), os.getgroups(),
                                    [data[i] for i in range(6)]]).encode())
            raise wasmtime.WasmtimeError("stopped here by the test")
    monkeypatch.setattr(zygote, "wasmtime", types.SimpleNamespace(
        Module=Module, WasmtimeError=wasmtime.WasmtimeError))
    monkeypatch.setattr(zygote, "wasm", wasm)
    monkeypatch.setattr(zygote, "engine", engine)
    monkeypatch.setattr(zygote, "confine", confine)
    a, b = socket.socketpair()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.close(r)
            spec = EngineSpec("calc", path, user=ENGINE_USER)
            code = zygote._child(spec, b.fileno(), tuple(os.dup(fd) for fd in fds),
                                 wasm_engine, parent)
        finally:
            os._exit(code)
    os.close(w)
    a.close(), b.close()
    with os.fdopen(r, "rb") as f:
        said = f.read()
    _, status = os.waitpid(pid, 0)
    for fd in fds:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == engine.EXIT_CANNOT_LOAD
    uids, gids, groups, caps = json.loads(said)
    assert uids == [ENGINE_USER[0]] * 3 and gids == [ENGINE_USER[1]] * 3 and groups == []
    assert caps == [0] * 6


def test_the_schema_parsers_child_holds_no_authority(monkeypatch, place):
    """The zygote parses each schema file in a child (pycapnp's parser aborts on some
    errors): that child ran as root with every capability.  Now it keeps uid 0 (the
    files may be root's alone) but no capability, reads only beneath the files and
    import directories it was given, and makes no socket, namespace or file.
    Checked inside the real child, where the parser would run."""
    import capnp_schemas

    from compartments import zygote

    monkeypatch.setattr(capnp_schemas, "PARSE_AFTER", f"""if True:
    import json, os, sys
    def parse(path, imports, before):
        test = sys.modules[{__name__!r}]
        facts = test._what_this_process_can_do({place!r})
        facts["schema"] = len(open(path).read())        # what it was given: readable
        os.write(2, ("\\x00" + json.dumps(facts)).encode())   # 2: its pipe
        os._exit(3)
""")
    schema = f"{EXAMPLES}/calc.capnp"
    line = json.dumps({"schema": schema, "imports": [os.path.dirname(schema)]})
    answer = zygote._parse_schema(line.encode(), [])
    assert answer["schema"] == 3, answer
    facts = json.loads(answer["stderr"].rpartition("\x00")[2])
    assert facts["schema"] == os.path.getsize(schema)
    assert _held(facts) == {}, facts
    assert _untouched(place)


@pytest.mark.skipif(not ROOT_USER, reason="a compiler gives up root only when it has it")
def test_a_compiler_runs_wasm_tools_its_user_cannot_reach_by_path(monkeypatch, tmp_path):
    """A compiler becomes the engines' user before it rewrites a module for probes,
    and wsuper may be installed where that user cannot go (beneath root's 0700 home):
    it opens wasm-tools and its directory while still root and runs it through
    /proc/self/fd, so probes still compile.  Checked with a real compile, a copy of
    wasm-tools in a directory only root may enter."""
    import wasmtime

    from compartments import instrument, wasm, zygote

    private = tmp_path / "root-only"
    (private / "bin").mkdir(parents=True)
    binary = private / "bin" / "wasm-tools"
    shutil.copy2(instrument.wasm_tools(), binary)
    private.chmod(0o700)
    monkeypatch.setattr(instrument, "wasm_tools", lambda: str(binary))
    modules = zygote._Modules(wasmtime.Engine(wasm.engine_config()))
    fds, error = modules.get(f"{EXAMPLES}/calc.wat", ("functions",))
    assert error is None
    description = wasm.Description.from_json(os.pread(fds[1], 1 << 20, 0))
    assert description.sites is not None and len(description.sites) > 0
    for fd in fds:
        os.close(fd)
