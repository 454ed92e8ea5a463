"""What `wsuper up` says when the kernel lacks a confinement mechanism, and
the seccomp program itself (run through an interpreter of its instructions)."""
import errno
import os

import pytest

from compartments import confine, seccomp

ALL_THERE = dict.fromkeys(confine.NAMESPACES)


@pytest.fixture
def kernel(monkeypatch):
    def set_(landlock=7, seccomp_=True, namespaces=ALL_THERE):
        monkeypatch.setattr(confine, "landlock_abi", lambda: landlock)
        monkeypatch.setattr(confine, "seccomp_supported", lambda: seccomp_)
        monkeypatch.setattr(confine, "namespaces", lambda: dict(namespaces))
    return set_


def test_probe_names_each_missing_mechanism(kernel):
    kernel(landlock=0, seccomp_=False)
    missing = confine.probe()
    assert len(missing) == 2
    assert "no Landlock" in missing[0] and "not confined to their files" in missing[0]
    assert "seccomp" in missing[1]


def test_an_old_landlock_is_named_with_what_it_cannot_do(kernel):
    kernel(landlock=3)
    assert confine.probe() == ["the kernel's Landlock ABI is 3 (< 6): engines can still "
                               "signal other processes of this user"]


def test_a_missing_namespace_is_named_with_what_engines_then_share(kernel):
    kernel(namespaces={**ALL_THERE, "net": "unshare: Operation not permitted"})
    assert confine.probe() == ["no net namespace for engines (unshare: Operation not "
                               "permitted): they share network interfaces and abstract Unix "
                               "sockets with the host"]


def test_no_user_namespace_is_one_line(kernel):
    why = "no user namespace: unshare(user): Operation not permitted"
    kernel(namespaces=dict.fromkeys(confine.NAMESPACES, why))
    (line,) = confine.probe()
    assert line.startswith(why) and "IPC, UTS, network and mount namespaces" in line


def test_this_kernel_gives_engines_every_namespace():
    # the real probe: a child that enters them as an engine does (a fresh one here)
    found = confine._try_namespaces()
    assert set(found) == set(confine.NAMESPACES)
    assert all(isinstance(why, (str, type(None))) for why in found.values())


PROG = seccomp.build(seccomp.rules())
NR = seccomp.SYSCALLS


def test_every_allowed_call_is_allowed_and_every_refused_one_gets_eperm():
    plain = set(seccomp.ALLOWED) - set(seccomp.CONDITIONS)
    assert {n for n in plain if seccomp.run(PROG, NR[n]) != seccomp.ALLOW} == set()
    assert {n for n in seccomp.REFUSED
            if seccomp.run(PROG, NR[n]) != seccomp.SECCOMP_RET_ERRNO | errno.EPERM} == set()


def test_every_other_known_call_gets_eperm_and_newer_ones_enosys():
    for name in set(NR) - set(seccomp.ALLOWED):
        assert seccomp.run(PROG, NR[name]) == seccomp.EPERM, name
    for nr in (seccomp.LAST_KNOWN + 1, 1000, 0x3FFFFFFF):    # as from an older kernel
        assert seccomp.run(PROG, nr) == seccomp.SECCOMP_RET_ERRNO | errno.ENOSYS


def test_x32_calls_get_eperm_and_other_architectures_are_killed():
    assert seccomp.run(PROG, 0x40000000 | NR["read"]) == seccomp.SECCOMP_RET_ERRNO | errno.EPERM
    assert seccomp.run(PROG, 3, arch=0x40000003) == seccomp.SECCOMP_RET_KILL_PROCESS  # i386


@pytest.mark.parametrize("name", ["mmap", "mprotect"])
def test_no_new_executable_memory(name):
    assert seccomp.run(PROG, NR[name], (0, 4096, 3, 0x22, 0, 0)) == seccomp.ALLOW
    assert seccomp.run(PROG, NR[name], (0, 4096, 7, 0x22, 0, 0)) == seccomp.EPERM
    assert seccomp.run(PROG, NR[name], (0, 4096, 4 | (1 << 32), 0, 0, 0)) == seccomp.EPERM


def test_no_locked_or_huge_page_memory():
    """r274: mmap's flags, beside its protection: MAP_LOCKED (memory never swapped out)
    and MAP_HUGETLB (the machine's reserved pool, any page size) are refused."""
    for flags in (0x22, 0x21, 0x02 | 0x10, 0x22 | 0x8000 | 0x4000):  # POPULATE, NORESERVE
        assert seccomp.run(PROG, NR["mmap"], (0, 4096, 3, flags, 0, 0)) == seccomp.ALLOW, flags
    for flags in (0x22 | 0x2000, 0x22 | 0x40000, 0x22 | 0x40000 | 21 << 26, 0x2000 | 1 << 32):
        assert seccomp.run(PROG, NR["mmap"], (0, 4096, 3, flags, 0, 0)) == seccomp.EPERM, flags
    assert seccomp.run(PROG, NR["mmap"], (0, 4096, 7, 0x22, 0, 0)) == seccomp.EPERM
    assert seccomp.run(PROG, NR["mprotect"], (0, 4096, 3, 0x2000, 0, 0)) == seccomp.ALLOW


@pytest.mark.parametrize("name", ["sendto", "recvfrom"])
def test_the_socket_is_read_and_written_without_out_of_band_data(name):
    """r274: only MSG_DONTWAIT, MSG_NOSIGNAL and MSG_WAITALL; never MSG_OOB (the kernel's
    AF_UNIX out-of-band code), MSG_PEEK or MSG_ERRQUEUE."""
    for flags in (0, 0x40, 0x4000, 0x100, 0x40 | 0x4000 | 0x100, 1 << 32):
        assert seccomp.run(PROG, NR[name], (3, 0, 1, flags, 0, 0)) == seccomp.ALLOW, flags
    for flags in (0x1, 0x2, 0x2000, 0x1 | 0x40, 0x8000, 0x80000000, 0x4000000):
        assert seccomp.run(PROG, NR[name], (3, 0, 1, flags, 0, 0)) == seccomp.EPERM, flags


def test_madvise_takes_advice_on_the_engines_own_pages_only():
    """r274: not KSM (12, 13), MADV_REMOVE (9), COLD and PAGEOUT (20, 21: a shared file's
    pages out of the page cache), poisoning (100, 101), COLLAPSE (25), guard regions
    (102, 103) or any advice a later kernel adds."""
    for advice in seccomp.MADVICE:
        assert seccomp.run(PROG, NR["madvise"], (0, 4096, advice, 0, 0, 0)) == seccomp.ALLOW
    for advice in (9, 12, 13, 20, 21, 24, 25, 26, 100, 101, 102, 103, 4 | 1 << 8):
        assert seccomp.run(PROG, NR["madvise"], (0, 4096, advice, 0, 0, 0)) == seccomp.EPERM, \
            advice


def test_futex_only_waits_and_wakes():
    for op in (0, 1, 9, 10, 128, 129, 128 | 256 | 9):
        assert seccomp.run(PROG, NR["futex"], (0, op, 0, 0, 0, 0)) == seccomp.ALLOW, op
    for op in (3, 4, 5, 6, 7, 11, 12, 128 | 4, 128 | 6):     # requeue, wake-op, PI locks
        assert seccomp.run(PROG, NR["futex"], (0, op, 0, 0, 0, 0)) == seccomp.EPERM, op


@pytest.mark.parametrize("name", ["tgkill", "tkill"])
def test_a_signal_goes_only_to_the_engine_itself(name):
    assert seccomp.run(PROG, NR[name], (seccomp.SELF, seccomp.SELF, 6, 0, 0, 0)) == seccomp.ALLOW
    assert seccomp.run(PROG, NR[name], (1, 1, 9, 0, 0, 0)) == seccomp.EPERM
    assert seccomp.run(PROG, NR["kill"], (seccomp.SELF, 9, 0, 0, 0, 0)) == seccomp.EPERM


@pytest.mark.parametrize("name", ["clock_gettime", "clock_getres", "clock_nanosleep"])
def test_a_clock_is_the_machines_or_the_engines_own_never_another_processs(name):
    """The kernel asks no permission to read another process's CPU clock: an engine
    read the CPU time of any process (another compartment's engine, the supervisor)
    to the nanosecond, and learned which pids exist."""
    def cpu_clock(pid, clock, thread=False):   # MAKE_PROCESS_CPUCLOCK, MAKE_THREAD_CPUCLOCK
        return ((~pid << 3) | (4 if thread else 0) | clock) & 0xFFFFFFFF
    for clock in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11,      # CLOCK_REALTIME .. CLOCK_TAI
                  cpu_clock(0, 2), cpu_clock(0, 0), cpu_clock(0, 2, thread=True)):
        assert seccomp.run(PROG, NR[name], (clock, 0, 0, 0, 0, 0)) == seccomp.ALLOW, clock
    for pid in (1, 2, 4242, 1 << 20, (1 << 22) - 1):
        for clock in (0, 1, 2):
            for thread in (False, True):
                assert seccomp.run(PROG, NR[name], (cpu_clock(pid, clock, thread), 0, 0, 0, 0,
                                                    0)) == seccomp.EPERM, (pid, clock, thread)
    assert seccomp.run(PROG, NR[name], (1 << 31, 0, 0, 0, 0, 0)) == seccomp.EPERM
    assert seccomp.run(PROG, NR[name], (cpu_clock(1, 2) | 1 << 32, 0, 0, 0, 0, 0)) \
        == seccomp.EPERM                  # the kernel reads an int: the low 32 bits


def test_the_program_fits_the_kernel_and_its_jumps_land_inside():
    assert len(PROG) <= 4096
    for i, (code, jt, jf, k) in enumerate(PROG):
        assert code in (0x20, 0x15, 0x35, 0x45, 0x05, 0x06, 0x54)
        if code == 0x05:
            assert i + 1 + k < len(PROG)
        elif code in (0x15, 0x35, 0x45):
            assert i + 1 + max(jt, jf) < len(PROG)
    assert PROG[-1][0] == 0x06                        # it ends in a return


HELPER = seccomp.build_helper()


def test_the_helpers_filter_refuses_what_a_compiler_never_needs_and_allows_the_rest():
    """The compilers' deny-list (seccomp.HELPER_REFUSED): every call on it EPERM, a
    clone that makes any namespace EPERM (a user namespace would give it every
    capability there), clone3 ENOSYS (its flags cannot be read: the C library falls
    back to clone); every other call of the table allowed, as a compile and its
    wasm-tools need (fork, exec, wait, pipes, memory)."""
    refused = {n for n in seccomp.HELPER_REFUSED if seccomp.run(HELPER, NR[n]) != seccomp.EPERM}
    assert refused == set()
    others = set(NR) - seccomp.HELPER_REFUSED - {"clone", "clone3"} \
        - set(seccomp.HELPER_SELF_ONLY)
    assert {n for n in others if seccomp.run(HELPER, NR[n]) != seccomp.ALLOW} == set()
    assert seccomp.run(HELPER, NR["clone3"]) == seccomp.ENOSYS
    for flag in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                 0x40000000, 0x00000080):
        assert seccomp.run(HELPER, NR["clone"], (flag | 0x11,) + (0,) * 5) == seccomp.EPERM
    vfork = 0x00004000 | 0x00000100 | 17                 # CLONE_VFORK | CLONE_VM | SIGCHLD
    assert seccomp.run(HELPER, NR["clone"], (vfork,) + (0,) * 5) == seccomp.ALLOW
    assert seccomp.run(HELPER, 1 << 30) == seccomp.EPERM               # x32
    assert seccomp.run(HELPER, NR["read"], arch=0x40000003) == \
        seccomp.SECCOMP_RET_KILL_PROCESS                               # i386


@pytest.mark.parametrize("name", ["clock_gettime", "clock_getres", "clock_nanosleep",
                                  "timer_create"])
def test_a_helper_reads_no_other_processs_cpu_clock(name):
    """As the engines (above): a compiler of a hostile module could read any process's
    CPU time, or set a timer on it, and so watch when every other process ran."""
    own = ((~0 << 3) | 2) & 0xFFFFFFFF                  # MAKE_PROCESS_CPUCLOCK(0, SCHED)
    for clock in (0, 1, 2, 3, 7, 11, own):
        assert seccomp.run(HELPER, NR[name], (clock,) + (0,) * 5) == seccomp.ALLOW, clock
    for pid in (1, 4242):
        for kind in (0, 2, 4 | 2):                      # PROF, SCHED, a thread's SCHED
            clock = ((~pid << 3) | kind) & 0xFFFFFFFF
            assert seccomp.run(HELPER, NR[name], (clock,) + (0,) * 5) == seccomp.EPERM


def test_no_helper_and_nothing_it_forks_can_leave_its_process_group():
    """A compiler leads a process group that its parent ends with it (zygote.end_group):
    setsid or setpgid in anything it forks made a process nobody ended, which held the
    compiler's pipe and memfds after it, and outlived the supervisor.  Both refused."""
    for call in ("setsid", "setpgid"):
        assert call in seccomp.HELPER_REFUSED
        assert seccomp.run(HELPER, NR[call], (0,) * 6) == seccomp.EPERM, call
    assert seccomp.run(HELPER, NR["getpgid"]) == seccomp.ALLOW          # asking is fine


def test_no_helper_forks_a_process_that_is_not_its_own_child():
    """clone(CLONE_PARENT) made a helper's process the child of the helper's parent
    (`wsuper up`'s supervisor, for in_a_compiler): ended with the group, but a
    zombie there for good, as many as the compile could fork.  Refused, whatever
    else the call asks (fork, vfork, a thread); a plain fork, vfork and a thread
    are not."""
    parent = 0x00008000
    for flags in (17, 0x00004000 | 0x00000100 | 17, 0x003D0F00):
        assert seccomp.run(HELPER, NR["clone"], (flags,) + (0,) * 5) == seccomp.ALLOW
        assert seccomp.run(HELPER, NR["clone"], (flags | parent,) + (0,) * 5) == \
            seccomp.EPERM, hex(flags)


def test_no_helper_changes_the_limits_or_priority_of_another_process_of_its_uid():
    """A compiler runs as the engines' user (the supervisor's own when not root; the
    schema parser keeps uid 0): prlimit64 set another compartment's engine's
    RLIMIT_NOFILE to 0, setpriority and sched_setaffinity slowed it, and neither
    Landlock nor the change of user stopped it (same uid is all they ask).  Now
    each is refused but on the helper itself (pid 0, as the C library asks), and
    setpriority and ioprio_set (by process, group or the whole user) altogether."""
    for call in seccomp.HELPER_SELF_ONLY:
        assert seccomp.run(HELPER, NR[call], (0, 7, 0, 0, 0, 0)) == seccomp.ALLOW, call
        for pid in (1, 4242, 0xFFFFFFFF):
            assert seccomp.run(HELPER, NR[call], (pid, 7, 0, 0, 0, 0)) == seccomp.EPERM, call
    for call in ("setpriority", "ioprio_set"):
        assert seccomp.run(HELPER, NR[call], (0, 0, 19, 0, 0, 0)) == seccomp.EPERM, call
    for call in ("getpriority", "getrlimit", "setrlimit", "sched_getaffinity"):
        assert seccomp.run(HELPER, NR[call]) == seccomp.ALLOW, call


def test_no_helper_takes_a_real_time_policy_or_a_higher_priority():
    """A compiler may set its own scheduling (pid 0), but only to a time-sharing
    policy (SCHED_OTHER, SCHED_BATCH, SCHED_IDLE, with or without
    SCHED_RESET_ON_FORK): under a hard RLIMIT_RTPRIO above 0 (limits.conf's
    `@audio - rtprio 95`, a service's LimitRTPRIO=), which its uid may use without
    any capability, a compiler of a hostile module made itself and what it forks
    SCHED_FIFO and spinning, and the supervisor and every engine (SCHED_OTHER) got
    what real-time throttling leaves: 5 % of each CPU, for the compile's 120 s of
    CPU per process.  sched_setattr (its policy and nice value are in memory, which
    the filter cannot read) is refused altogether, as setpriority is."""
    SCHED_OTHER, SCHED_FIFO, SCHED_RR, SCHED_BATCH, SCHED_IDLE, SCHED_DEADLINE = 0, 1, 2, 3, 5, 6
    RESET_ON_FORK = 0x40000000
    call = NR["sched_setscheduler"]
    for policy in (SCHED_OTHER, SCHED_BATCH, SCHED_IDLE):
        for flags in (0, RESET_ON_FORK):
            assert seccomp.run(HELPER, call, (0, policy | flags, 0, 0, 0, 0)) == seccomp.ALLOW
            for pid in (1, 4242):
                assert seccomp.run(HELPER, call, (pid, policy | flags, 0, 0, 0, 0)) == \
                    seccomp.EPERM
    for policy in (SCHED_FIFO, SCHED_RR, SCHED_DEADLINE, 4, 7, 0xFFFFFFFF):
        for flags in (0, RESET_ON_FORK):
            assert seccomp.run(HELPER, call, (0, policy | flags, 0, 0, 0, 0)) == \
                seccomp.EPERM, policy
    assert seccomp.run(HELPER, NR["sched_setattr"], (0,) * 6) == seccomp.EPERM
    assert seccomp.run(HELPER, NR["sched_getattr"], (0,) * 6) == seccomp.ALLOW


#: ioctl requests that set a file's attributes, by descriptor: FS_IOC_SETFLAGS (and
#: its 32-bit form), FS_IOC_FSSETXATTR (what file_setattr does by path),
#: FS_IOC_SETVERSION (both forms) and ext4's, FS_IOC_ENABLE_VERITY, btrfs's
#: SUBVOL_SETFLAGS, FS_IOC_SET_ENCRYPTION_POLICY
_SETTERS = (0x40086602, 0x40046602, 0x401C5820, 0x40087602, 0x40047602, 0x40086604,
            0x40806685, 0x4008941A, 0x800C6613)


def test_a_helper_changes_no_files_attributes_nor_data_by_any_other_call(tmp_path):
    """A review of the helpers' deny-list (reviewer 173): chmod, chown, utime,
    setxattr and file_setattr were refused (Landlock covers none of them), but the
    same changes by ioctl on a descriptor opened to read, which Landlock gives
    beneath what a helper may read (the module, wasm-tools, the schema's directory)
    and does not look at for a regular file, were not: FS_IOC_SETFLAGS (chattr: no
    dump, synchronous, no atime, ...), FS_IOC_FSSETXATTR (file_setattr's own
    ioctl: the project quota id), the inode's version, fs-verity (a file made
    read-only for good), a btrfs subvolume made read-only.  And truncate(2), by
    path, which Landlock covers only from ABI 3 (Linux 6.2): on older kernels a
    compiler emptied any file of its uid.  Each refused, checked with the kernel."""
    for cmd in _SETTERS:
        assert seccomp.run(HELPER, NR["ioctl"], (3, cmd, 0, 0, 0, 0)) == seccomp.EPERM, hex(cmd)
        assert seccomp.run(HELPER, NR["ioctl"], (3, cmd | (1 << 32), 0, 0, 0, 0)) == \
            seccomp.EPERM, hex(cmd)
    for cmd in (0x5401, 0x5421, 0x5451, 0x80086601):     # TCGETS, FIONBIO, FIOCLEX, GETFLAGS
        assert seccomp.run(HELPER, NR["ioctl"], (3, cmd, 0, 0, 0, 0)) == seccomp.ALLOW
    assert seccomp.run(HELPER, NR["truncate"]) == seccomp.EPERM
    assert seccomp.run(HELPER, NR["ftruncate"]) == seccomp.ALLOW    # its own memfds
    import array
    import fcntl
    import os
    victim = tmp_path / "victim"
    victim.write_text("data")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                        # pragma: no cover (the child)
        code = 1
        try:
            os.close(r)
            confine._libc.prctl(confine.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            seccomp.install_helper()
            out = []
            fd = os.open(victim, os.O_RDONLY)
            flags = array.array("l", [0])
            fcntl.ioctl(fd, 0x80086601, flags)              # FS_IOC_GETFLAGS: allowed
            flags[0] |= 0x40                                # FS_NODUMP_FL
            for what, call in (("setflags", lambda: fcntl.ioctl(fd, 0x40086602, flags)),
                               ("truncate", lambda: os.truncate(victim, 0))):
                try:
                    call()
                    out.append(f"{what}=ok")
                except OSError as e:
                    out.append(f"{what}={errno.errorcode[e.errno]}")
            os.write(w, " ".join(out).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        said = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    got = dict(part.split("=") for part in said.split())
    if got.get("setflags") == "ENOTTY" or got.get("setflags") == "EOPNOTSUPP":
        got.pop("setflags")                     # a file system without flags: nothing to set
    assert set(got.values()) <= {"EPERM"}, said
    assert victim.read_text() == "data"


def test_a_helper_reads_nothing_of_another_processs_memory_of_its_uid():
    """A review of the helpers' deny-list (reviewer 173): ptrace and
    process_vm_readv were refused, but move_pages (asked with no nodes: where each
    page of another process is, -EFAULT where nothing is mapped), get_robust_list
    (another process's thread area address) and migrate_pages (its pages moved)
    ask only the same uid of a dumpable process: a compiler of a hostile module
    mapped the address space of the supervisor and of every engine when wsuper
    runs as a user (the compilers' uid is the supervisor's then), through the
    ASLR.  Each refused, checked with the kernel."""
    import ctypes
    import os
    import time
    for call in ("move_pages", "migrate_pages", "get_robust_list", "process_madvise",
                 "process_mrelease"):
        assert call in seccomp.HELPER_REFUSED
        assert seccomp.run(HELPER, NR[call]) == seccomp.EPERM, call
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    root = os.geteuid() == 0

    def become():                                   # pragma: no cover (the children)
        if root:
            os.setgid(65534)
            os.setuid(65534)
            confine._libc.prctl(4, 1, 0, 0, 0)      # PR_SET_DUMPABLE: as a process
                                                    # that never changed its uid
    r0, w0 = os.pipe()
    target = os.fork()
    if target == 0:                                 # pragma: no cover (the child)
        try:
            become()
            page = ctypes.create_string_buffer(4096)
            page[0] = b"x"
            os.write(w0, str(ctypes.addressof(page)).encode())
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(w0)
    try:
        addr = int(os.read(r0, 64))
        os.close(r0)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                # pragma: no cover (the child)
            code = 1
            try:
                os.close(r)
                become()
                confine._libc.prctl(confine.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
                seccomp.install_helper()
                out = []
                pages = (ctypes.c_void_p * 2)(addr & ~4095, 0x1000)
                status = (ctypes.c_int * 2)()
                head, size = ctypes.c_void_p(), ctypes.c_size_t()
                nodes = ctypes.c_ulong(1)
                for what, args in (
                        ("move_pages", (NR["move_pages"], target, 2, pages, None, status, 0)),
                        ("get_robust_list", (NR["get_robust_list"], target,
                                             ctypes.byref(head), ctypes.byref(size))),
                        ("migrate_pages", (NR["migrate_pages"], target, 64,
                                           ctypes.byref(nodes), ctypes.byref(nodes)))):
                    got = libc.syscall(*args)
                    out.append(f"{what}=" + ("ok" if got >= 0 else
                                             errno.errorcode[ctypes.get_errno()]))
                os.write(w, " ".join(out).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            said = f.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert said == "move_pages=EPERM get_robust_list=EPERM migrate_pages=EPERM", said
    finally:
        os.kill(target, 9)
        os.waitpid(target, 0)


@pytest.mark.parametrize("code, why", [
    (errno.ENOSPC, "the limit on user namespaces is reached: sysctl user.max_user_namespaces"),
    (errno.EPERM, "refused to users who are not root here: sysctl "
                  "kernel.unprivileged_userns_clone")])
def test_a_user_namespace_refused_to_an_ordinary_user_says_why(monkeypatch, code, why):
    """Run by an ordinary user where the limit on user namespaces is reached (or 0),
    `wsuper up` said "no user namespace: unshare(user): No space left on device",
    which reads as a full disk; refused by policy, only "Operation not permitted".
    The note names the limit or the policy to look at."""
    import ctypes

    class Libc:
        def unshare(self, flags):
            ctypes.set_errno(code)
            return -1
    monkeypatch.setattr(confine, "_libc", Libc())
    monkeypatch.setattr(confine.os, "geteuid", lambda: 1000)
    report = {}
    confine._enter_namespaces(list(confine.NAMESPACES), strict=False, report=report)
    assert set(report) == set(confine.NAMESPACES)
    for said in report.values():
        assert said.startswith(f"no user namespace: unshare(user): {os.strerror(code)} ({why}"), \
            said


def test_a_user_namespace_whose_maps_cannot_be_written_says_why(monkeypatch):
    """A policy such as AppArmor's restriction of user namespaces lets an ordinary
    user's unshare(CLONE_NEWUSER) succeed, with no capability in the namespace: the
    uid and gid maps cannot be written, and the note said only "writing
    /proc/self/uid_map: Operation not permitted".  It names what to look at."""
    class Libc:
        def unshare(self, flags):
            return 0
    real_open = os.open

    def refused(path, *args, **kw):
        if str(path).startswith("/proc/self/"):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), path)
        return real_open(path, *args, **kw)
    monkeypatch.setattr(confine, "_libc", Libc())
    monkeypatch.setattr(confine.os, "open", refused)
    with pytest.raises(confine.ConfinementError) as e:
        confine._enter_user_namespace()
    assert e.value.strerror == (
        "writing /proc/self/setgroups: Operation not permitted (refused to users who are not "
        "root here: sysctl kernel.unprivileged_userns_clone, or a security policy such as "
        "AppArmor's kernel.apparmor_restrict_unprivileged_userns)")


def test_the_namespace_probe_forked_soon_is_the_one_whose_report_is_read(monkeypatch):
    """`wsuper up` forks its namespace probe right after the zygote's launch, while
    the process is small (confine.probe_soon): forked from the whole supervisor
    just before the first spawn, it was 6-14 ms on the way to the first `ready`.
    namespaces() then reads that child's report and forks nothing more, and the
    report is the one a probe forked then would give."""
    monkeypatch.setattr(confine, "_namespaces", None)
    monkeypatch.setattr(confine, "_probing", None)
    expected = confine._try_namespaces()
    confine.probe_soon()
    assert confine._probing is not None
    child = confine._probing[0]

    def no_fork():
        raise AssertionError("a second probe was forked")
    monkeypatch.setattr(os, "fork", no_fork)
    assert confine.namespaces() == expected
    assert confine._probing is None
    with pytest.raises(ChildProcessError):     # reaped
        os.waitpid(child, os.WNOHANG)


def test_the_zygote_forks_its_namespace_probe_before_its_imports():
    """The zygote found out its namespaces in confine.prepare, after importing
    wasmtime, pycapnp and the engine (~0.2 s): a probe forked then, and waited for,
    was 5-7 ms more before it could serve its first request.  Its main() now forks
    the probe first thing (confine.probe_soon), before serve() imports anything
    heavy; prepare reads that probe's report (namespaces(): the test above).
    A real zygote process, as the supervisor starts it, up to serve()."""
    import socket
    import subprocess
    import sys
    code = ("import sys\n"
            "from compartments import confine, zygote\n"
            "def serve(control, pid):\n"
            "    print(confine._probing is not None, 'wasmtime' in sys.modules, flush=True)\n"
            "    confine.namespaces()\n"
            "zygote.serve = serve\n"
            "zygote.main()\n")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        out = subprocess.run([sys.executable, "-I", "-c", code, str(theirs.fileno()),
                              str(os.getpid())], pass_fds=(theirs.fileno(),), env={},
                             cwd="/", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"], \
        f"no namespace probe forked before the imports: {out.stdout!r}"
