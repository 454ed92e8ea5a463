"""The seccomp filter of an engine: which system calls a running engine may make.

Owns: the x86_64 system call table, the allow-list (with the argument checks
of a few calls), the list of calls the issue named as refused, and the BPF
program built from them.  Must not: apply anything but the filter
(confine.py orders the layers).

The program (classic BPF, built once in the zygote; ~200 instructions) does,
for each call:

* an architecture other than x86_64 (i386 through int 0x80): kill the process;
* an x32 call (number >= 2^30): EPERM;
* a call in ALLOWED: allowed (for those in CONDITIONS, only with those arguments);
* a call newer than this table (number > LAST_KNOWN): ENOSYS, as from an older
  kernel, so that a library probing a new call takes its old-kernel fallback;
* every other call (REFUSED among them): EPERM.

The allowed calls are found by a search tree over the call number: a call
costs a handful of comparisons.
"""
from __future__ import annotations

import ctypes
import errno
import os

#: x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl, Linux 6.17).
SYSCALLS = {
    "read": 0, "write": 1, "open": 2, "close": 3, "stat": 4, "fstat": 5, "lstat": 6, "poll": 7,
    "lseek": 8, "mmap": 9, "mprotect": 10, "munmap": 11, "brk": 12, "rt_sigaction": 13,
    "rt_sigprocmask": 14, "rt_sigreturn": 15, "ioctl": 16, "pread64": 17, "pwrite64": 18,
    "readv": 19, "writev": 20, "access": 21, "pipe": 22, "select": 23, "sched_yield": 24,
    "mremap": 25, "msync": 26, "mincore": 27, "madvise": 28, "shmget": 29, "shmat": 30,
    "shmctl": 31, "dup": 32, "dup2": 33, "pause": 34, "nanosleep": 35, "getitimer": 36,
    "alarm": 37, "setitimer": 38, "getpid": 39, "sendfile": 40, "socket": 41, "connect": 42,
    "accept": 43, "sendto": 44, "recvfrom": 45, "sendmsg": 46, "recvmsg": 47, "shutdown": 48,
    "bind": 49, "listen": 50, "getsockname": 51, "getpeername": 52, "socketpair": 53,
    "setsockopt": 54, "getsockopt": 55, "clone": 56, "fork": 57, "vfork": 58, "execve": 59,
    "exit": 60, "wait4": 61, "kill": 62, "uname": 63, "semget": 64, "semop": 65, "semctl": 66,
    "shmdt": 67, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "fcntl": 72,
    "flock": 73, "fsync": 74, "fdatasync": 75, "truncate": 76, "ftruncate": 77, "getdents": 78,
    "getcwd": 79, "chdir": 80, "fchdir": 81, "rename": 82, "mkdir": 83, "rmdir": 84,
    "creat": 85, "link": 86, "unlink": 87, "symlink": 88, "readlink": 89, "chmod": 90,
    "fchmod": 91, "chown": 92, "fchown": 93, "lchown": 94, "umask": 95, "gettimeofday": 96,
    "getrlimit": 97, "getrusage": 98, "sysinfo": 99, "times": 100, "ptrace": 101,
    "getuid": 102, "syslog": 103, "getgid": 104, "setuid": 105, "setgid": 106, "geteuid": 107,
    "getegid": 108, "setpgid": 109, "getppid": 110, "getpgrp": 111, "setsid": 112,
    "setreuid": 113, "setregid": 114, "getgroups": 115, "setgroups": 116, "setresuid": 117,
    "getresuid": 118, "setresgid": 119, "getresgid": 120, "getpgid": 121, "setfsuid": 122,
    "setfsgid": 123, "getsid": 124, "capget": 125, "capset": 126, "rt_sigpending": 127,
    "rt_sigtimedwait": 128, "rt_sigqueueinfo": 129, "rt_sigsuspend": 130, "sigaltstack": 131,
    "utime": 132, "mknod": 133, "uselib": 134, "personality": 135, "ustat": 136, "statfs": 137,
    "fstatfs": 138, "sysfs": 139, "getpriority": 140, "setpriority": 141,
    "sched_setparam": 142, "sched_getparam": 143, "sched_setscheduler": 144,
    "sched_getscheduler": 145, "sched_get_priority_max": 146, "sched_get_priority_min": 147,
    "sched_rr_get_interval": 148, "mlock": 149, "munlock": 150, "mlockall": 151,
    "munlockall": 152, "vhangup": 153, "modify_ldt": 154, "pivot_root": 155, "_sysctl": 156,
    "prctl": 157, "arch_prctl": 158, "adjtimex": 159, "setrlimit": 160, "chroot": 161,
    "sync": 162, "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167,
    "swapoff": 168, "reboot": 169, "sethostname": 170, "setdomainname": 171, "iopl": 172,
    "ioperm": 173, "create_module": 174, "init_module": 175, "delete_module": 176,
    "get_kernel_syms": 177, "query_module": 178, "quotactl": 179, "nfsservctl": 180,
    "getpmsg": 181, "putpmsg": 182, "afs_syscall": 183, "tuxcall": 184, "security": 185,
    "gettid": 186, "readahead": 187, "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190,
    "getxattr": 191, "lgetxattr": 192, "fgetxattr": 193, "listxattr": 194, "llistxattr": 195,
    "flistxattr": 196, "removexattr": 197, "lremovexattr": 198, "fremovexattr": 199,
    "tkill": 200, "time": 201, "futex": 202, "sched_setaffinity": 203,
    "sched_getaffinity": 204, "set_thread_area": 205, "io_setup": 206, "io_destroy": 207,
    "io_getevents": 208, "io_submit": 209, "io_cancel": 210, "get_thread_area": 211,
    "lookup_dcookie": 212, "epoll_create": 213, "epoll_ctl_old": 214, "epoll_wait_old": 215,
    "remap_file_pages": 216, "getdents64": 217, "set_tid_address": 218, "restart_syscall": 219,
    "semtimedop": 220, "fadvise64": 221, "timer_create": 222, "timer_settime": 223,
    "timer_gettime": 224, "timer_getoverrun": 225, "timer_delete": 226, "clock_settime": 227,
    "clock_gettime": 228, "clock_getres": 229, "clock_nanosleep": 230, "exit_group": 231,
    "epoll_wait": 232, "epoll_ctl": 233, "tgkill": 234, "utimes": 235, "vserver": 236,
    "mbind": 237, "set_mempolicy": 238, "get_mempolicy": 239, "mq_open": 240, "mq_unlink": 241,
    "mq_timedsend": 242, "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245,
    "kexec_load": 246, "waitid": 247, "add_key": 248, "request_key": 249, "keyctl": 250,
    "ioprio_set": 251, "ioprio_get": 252, "inotify_init": 253, "inotify_add_watch": 254,
    "inotify_rm_watch": 255, "migrate_pages": 256, "openat": 257, "mkdirat": 258,
    "mknodat": 259, "fchownat": 260, "futimesat": 261, "newfstatat": 262, "unlinkat": 263,
    "renameat": 264, "linkat": 265, "symlinkat": 266, "readlinkat": 267, "fchmodat": 268,
    "faccessat": 269, "pselect6": 270, "ppoll": 271, "unshare": 272, "set_robust_list": 273,
    "get_robust_list": 274, "splice": 275, "tee": 276, "sync_file_range": 277, "vmsplice": 278,
    "move_pages": 279, "utimensat": 280, "epoll_pwait": 281, "signalfd": 282,
    "timerfd_create": 283, "eventfd": 284, "fallocate": 285, "timerfd_settime": 286,
    "timerfd_gettime": 287, "accept4": 288, "signalfd4": 289, "eventfd2": 290,
    "epoll_create1": 291, "dup3": 292, "pipe2": 293, "inotify_init1": 294, "preadv": 295,
    "pwritev": 296, "rt_tgsigqueueinfo": 297, "perf_event_open": 298, "recvmmsg": 299,
    "fanotify_init": 300, "fanotify_mark": 301, "prlimit64": 302, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "clock_adjtime": 305, "syncfs": 306, "sendmmsg": 307,
    "setns": 308, "getcpu": 309, "process_vm_readv": 310, "process_vm_writev": 311,
    "kcmp": 312, "finit_module": 313, "sched_setattr": 314, "sched_getattr": 315,
    "renameat2": 316, "seccomp": 317, "getrandom": 318, "memfd_create": 319,
    "kexec_file_load": 320, "bpf": 321, "execveat": 322, "userfaultfd": 323, "membarrier": 324,
    "mlock2": 325, "copy_file_range": 326, "preadv2": 327, "pwritev2": 328,
    "pkey_mprotect": 329, "pkey_alloc": 330, "pkey_free": 331, "statx": 332,
    "io_pgetevents": 333, "rseq": 334, "pidfd_send_signal": 424, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "pidfd_open": 434,
    "clone3": 435, "close_range": 436, "openat2": 437, "pidfd_getfd": 438, "faccessat2": 439,
    "process_madvise": 440, "epoll_pwait2": 441, "mount_setattr": 442, "quotactl_fd": 443,
    "landlock_create_ruleset": 444, "landlock_add_rule": 445, "landlock_restrict_self": 446,
    "memfd_secret": 447, "process_mrelease": 448, "futex_waitv": 449,
    "set_mempolicy_home_node": 450, "cachestat": 451, "fchmodat2": 452,
    "map_shadow_stack": 453, "futex_wake": 454, "futex_wait": 455, "futex_requeue": 456,
    "statmount": 457, "listmount": 458, "lsm_get_self_attr": 459, "lsm_set_self_attr": 460,
    "lsm_list_modules": 461, "mseal": 462, "setxattrat": 463, "getxattrat": 464,
    "listxattrat": 465, "removexattrat": 466, "open_tree_attr": 467, "file_getattr": 468,
    "file_setattr": 469,
}

#: Calls an engine never needs and an escaped one would want, and their relatives
#: (issue 12's list and more).  They are refused like every call outside ALLOWED;
#: this list is what the tests and docs/security.md check by name.
REFUSED = frozenset({
    # new sockets and connections; the engine has its one socket already
    "socket", "socketpair", "connect", "accept", "accept4", "bind", "listen",
    # new processes and programs
    "clone", "clone3", "fork", "vfork", "execve", "execveat",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kill",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "process_madvise", "process_mrelease", "kcmp",
    "prlimit64", "setrlimit", "setpriority", "getpriority",
    "sched_setscheduler", "sched_setparam", "sched_setattr", "sched_setaffinity",
    "sched_getscheduler", "sched_getparam", "sched_getattr", "sched_getaffinity",
    "ioprio_set", "ioprio_get", "migrate_pages", "move_pages", "set_mempolicy",
    "mbind", "get_mempolicy", "set_mempolicy_home_node",
    # files and their metadata (there are no paths to reach, but no call either)
    "open", "openat", "openat2", "creat", "open_by_handle_at", "name_to_handle_at",
    "stat", "lstat", "newfstatat", "statx", "access", "faccessat", "faccessat2",
    "readlink", "readlinkat", "getdents", "getdents64", "chdir", "fchdir", "getcwd",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "utime", "utimes", "futimesat", "utimensat", "truncate", "ftruncate", "fallocate",
    "setxattr", "lsetxattr", "fsetxattr", "setxattrat", "getxattr", "lgetxattr",
    "fgetxattr", "getxattrat", "listxattr", "llistxattr", "flistxattr", "listxattrat",
    "removexattr", "lremovexattr", "fremovexattr", "removexattrat", "file_setattr",
    "file_getattr", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename",
    "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "mknod",
    "mknodat", "statfs", "fstatfs", "ustat", "sync", "syncfs", "quotactl",
    "quotactl_fd", "lookup_dcookie", "cachestat",
    # watching files
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    "fanotify_init", "fanotify_mark",
    # System V IPC and POSIX message queues
    "shmget", "shmat", "shmdt", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl",
    "semget", "semop", "semtimedop", "semctl", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # mounts and namespaces
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "fsopen", "fsconfig",
    "fsmount", "fspick", "move_mount", "open_tree", "open_tree_attr", "mount_setattr",
    "statmount", "listmount",
    # the machine: time, names, modules, power, accounting
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname",
    "setdomainname", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "syslog", "iopl", "ioperm",
    "vhangup", "nfsservctl", "uselib", "sysfs", "_sysctl", "personality",
    # identity and privileges
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid",
    "setfsgid", "setgroups", "capset", "prctl", "arch_prctl", "seccomp",
    "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    "lsm_set_self_attr", "lsm_get_self_attr", "lsm_list_modules",
    # kernel interfaces an attacker loves
    "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "memfd_secret",
    "memfd_create", "modify_ldt", "vmsplice", "splice", "tee", "copy_file_range",
    "sendfile", "remap_file_pages", "fadvise64", "readahead", "io_setup", "io_submit",
    "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "mseal", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "map_shadow_stack", "signalfd", "signalfd4",
    "timerfd_create", "eventfd", "eventfd2", "epoll_create", "epoll_create1",
    "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "futex_waitv",
    "get_robust_list", "set_robust_list", "rseq",
    # moving or growing a mapping keeps its protection: grown, the executable mapping
    # of a module's code showed the pages after it in the module's memfd as code,
    # among them the image of its data segments, bytes the plugin's author wrote
    # (an outside review, r263).  glibc's realloc copies when it fails
    "mremap",
})

#: Allowed: every call a running engine was seen to make (tracing every engine
#: of the whole test suite, see scripts/trace-engine-syscalls), and the
#: relatives of those that only rare paths reach.  Each acts on the engine's
#: own memory, descriptors, signals or time, and on nothing else.
ALLOWED = {
    # the supervisor's socket, and stderr
    "recvfrom": "reading the socket (seen); a few flags only (CONDITIONS)",
    "sendto": "writing the socket (seen); a few flags only (CONDITIONS)",
    "write": "stderr (seen: call-stats, errors)",
    "writev": "stderr, from the C library's error messages (seen, before an abort)",
    "close": "a descriptor of its own, when an object holding one goes away",
    # memory: the Python heap, wasm linear memory (growth, moves, fresh instances)
    "brk": "the C heap (seen)",
    "mmap": "memory, the module's data image (seen); never executable, locked or of "
            "huge pages (CONDITIONS)",
    "mprotect": "memory growth (seen); never executable (CONDITIONS)",
    "munmap": "memory released (seen)",
    "madvise": "memory given back; advice on its own pages only (CONDITIONS)",
    # locks: only ever contended by... nobody (one thread), but the C library and
    # KJ wake waiters they think may exist, and abort if that fails (seen)
    "futex": "wait and wake only (CONDITIONS)",
    "sched_yield": "spinning locks",
    # signals: wasmtime turns SIGSEGV/SIGILL/SIGFPE inside wasm into a trap; a
    # failed assertion in a library aborts, and must be able to (not spin)
    "rt_sigreturn": "returning from the trap handler (seen)",
    "rt_sigprocmask": "its own signal mask (seen, abort)",
    "rt_sigaction": "its own handlers: abort() and wasmtime reset them to die (seen)",
    "sigaltstack": "the trap handler's stack (set up before confinement)",
    "restart_syscall": "a sleep interrupted by a signal, resumed",
    "setitimer": "the alarm of the running call's deadline (its own process's ITIMER_REAL: "
                 "_fastcall.c, deadlines)",
    "getpid": "abort() signals itself (seen)",
    "gettid": "abort() signals itself (seen)",
    "tgkill": "abort() signals itself (seen); only itself (CONDITIONS)",
    "tkill": "signalling itself; only itself (CONDITIONS)",
    # time: the vDSO answers these without a system call, unless the clock source
    # cannot be read from user space; CLOCK_PROCESS_CPUTIME_ID always calls
    "clock_gettime": "WASI clock_time_get of the process clock (seen); vDSO fallback; "
                     "its own clocks only (CONDITIONS)",
    "clock_getres": "vDSO fallback; its own clocks only (CONDITIONS)",
    "gettimeofday": "vDSO fallback",
    "time": "vDSO fallback",
    "clock_nanosleep": "WASI poll_oneoff sleeps (seen); its own clocks only (CONDITIONS)",
    "nanosleep": "sleeping, older C libraries",
    "getrandom": "hash seeds of new tables",
    "exit": "leaving",
    "exit_group": "leaving (seen)",
}

#: Refused calls an engine does make, and what it does instead when refused: each is
#: left out of what scripts/trace-engine-syscalls reports as refused.
FALLS_BACK = {
    "mremap": "glibc's realloc of a large (mmapped) block allocates, copies and frees",
}
assert set(FALLS_BACK) <= REFUSED

PROT_EXEC = 0x4
#: mmap flags refused (r274): memory the kernel may never swap out (MAP_LOCKED; confine
#: also sets RLIMIT_MEMLOCK to 0), and huge pages, which come from a pool the machine
#: reserved for its own uses (MAP_HUGETLB, any size: the size is bits of these flags)
MAP_LOCKED, MAP_HUGETLB = 0x2000, 0x40000
#: The flags an engine may give send and recv on its socket (r274): not blocking, no
#: SIGPIPE, waiting for the whole length; nothing else (0 is what it gives).  Never
#: MSG_OOB: an out-of-band byte on a Unix socket runs the kernel's AF_UNIX out-of-band
#: code, on the engine's side and, for every normal read, the supervisor's; a
#: use-after-free there (CVE-2025-38236) took code running in Chrome's renderer
#: sandbox into the kernel, and Chrome's filter now refuses MSG_OOB.  Nor MSG_PEEK or
#: MSG_ERRQUEUE, which no engine needs and which that code also serves.
MSG_FLAGS = 0x40 | 0x4000 | 0x100          # MSG_DONTWAIT, MSG_NOSIGNAL, MSG_WAITALL
#: The madvise advice an engine may give (r274): about its own pages only.  Not KSM
#: (MADV_MERGEABLE, MADV_UNMERGEABLE: pages merged with other processes' pages of the
#: same bytes, whose copy-on-write timing tells an engine what another process
#: holds, on a machine that runs KSM), not MADV_REMOVE (frees the pages of a shared
#: file under its other users), not poisoning or offlining a page, nor any advice a
#: later kernel adds; not MADV_COLD or MADV_PAGEOUT, which evict from the page cache
#: the pages of a file it shares with every other process (libpython, wasmtime's
#: library): the kernel lets the file's owner do so, and when wsuper does not run as
#: root that is the engines' uid; timing its own reads of them then tells when the
#: supervisor or another engine ran that code (a page cache attack), and the
#: supervisor reads its code from disk again.  0-4 NORMAL, RANDOM, SEQUENTIAL,
#: WILLNEED, DONTNEED; 8 FREE; 10, 11 DONTFORK, DOFORK; 14, 15 (NO)HUGEPAGE; 16, 17
#: DONTDUMP, DODUMP; 18, 19 WIPEONFORK, KEEPONFORK; 22, 23 POPULATE_READ, _WRITE.
MADVICE = (0, 1, 2, 3, 4, 8, 10, 11, 14, 15, 16, 17, 18, 19, 22, 23)
FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME = 128, 256
FUTEX_WAIT, FUTEX_WAKE, FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET = 0, 1, 9, 10

#: Calls allowed only with some arguments; otherwise EPERM.
#:   ("none_of", i, mask, ...): argument i has none of the bits of mask (and so on for
#:   each further pair of argument and mask);
#:   ("one_of", i, ignored, values): argument i, without the bits `ignored`, is one of values;
#:   ("self", i): argument i is this process's own pid (set when the filter is installed);
#:   ("clock", i): argument i is a clock of the machine (CLOCK_REALTIME .. CLOCK_TAI, and
#:   up to MAX_CLOCK) or a CPU clock of this process or thread named by pid 0
#:   (OWN_CPU_CLOCKS), never another process's or thread's CPU clock.
#: After confinement no new memory is ever executable (wasmtime compiled and mapped
#: every piece of code before); futex only waits and wakes (no requeue, no PI, no
#: wake-op); a signal only goes to the engine itself; a clock is the machine's or its
#: own: the kernel asks no permission to read another process's CPU clock
#: (MAKE_PROCESS_CPUCLOCK(pid, ...), a negative clockid), so an engine read the CPU
#: time of any process to the nanosecond (when another compartment's engine ran, and
#: for how long) and which pids exist, and could sleep until one had used so much.
CONDITIONS = {
    "mmap": ("none_of", 2, PROT_EXEC, 3, MAP_LOCKED | MAP_HUGETLB),
    "mprotect": ("none_of", 2, PROT_EXEC),
    "futex": ("one_of", 1, FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME,
              (FUTEX_WAIT, FUTEX_WAKE, FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET)),
    "tgkill": ("self", 0),
    "tkill": ("self", 0),
    "clock_gettime": ("clock", 0),
    "clock_getres": ("clock", 0),
    "clock_nanosleep": ("clock", 0),
    "sendto": ("one_of", 3, MSG_FLAGS, (0,)),
    "recvfrom": ("one_of", 3, MSG_FLAGS, (0,)),
    "madvise": ("one_of", 2, 0, MADVICE),
}
#: The clock ids below this are the machine's clocks and this process's and thread's
#: own CPU clocks (CLOCK_PROCESS_CPUTIME_ID 2, CLOCK_THREAD_CPUTIME_ID 3); 11 is
#: CLOCK_TAI, the last one Linux defines; room is left for new ones.
MAX_CLOCK = 16
#: The low 32 bits of the CPU clock ids of pid 0 (this process, -8 .. -5, or this
#: thread, -4 .. -1) and above: what clock_getcpuclockid(0) gives.  Any other
#: negative id names another process's or thread's CPU clock.
OWN_CPU_CLOCKS = 0xFFFFFFF8

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
SYS_SECCOMP = 317
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1

ALLOW = SECCOMP_RET_ALLOW
EPERM = SECCOMP_RET_ERRNO | errno.EPERM
ENOSYS = SECCOMP_RET_ERRNO | errno.ENOSYS
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _JA, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x05, 0x06
_AND_K = 0x54
_ARGS = 16                  # offsetof(struct seccomp_data, args): 6 u64, little-endian
SELF = 0xFFFFFFFF           # in a ("self", i) check: replaced by the pid at install


LAST_KNOWN = max(SYSCALLS.values())


def rules() -> dict[int, object]:
    """call number -> ALLOW or a condition (CONDITIONS), for every allowed call."""
    assert not REFUSED & set(ALLOWED), REFUSED & set(ALLOWED)
    return {SYSCALLS[name]: CONDITIONS.get(name, ALLOW) for name in ALLOWED}


def build(actions: dict[int, object]) -> list[tuple]:
    """The filter: (code, jt, jf, k) instructions, classic BPF."""
    head = [(_LD_W_ABS, 0, 0, 4),                           # seccomp_data.arch
            (_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
            (_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
            (_LD_W_ABS, 0, 0, 0),                           # seccomp_data.nr
            (_JGE_K, 0, 1, X32_SYSCALL_BIT),
            (_RET_K, 0, 0, EPERM)]
    # not allowed: ENOSYS past the table, EPERM within it
    default = [(_JGE_K, 0, 1, LAST_KNOWN + 1), (_RET_K, 0, 0, ENOSYS), (_RET_K, 0, 0, EPERM)]
    return head + _tree(sorted(actions.items()), default)


def _tree(entries, default: list) -> list[tuple]:
    """A binary search over sorted (number, action): a few comparisons per call."""
    if len(entries) <= 3:
        out = []
        for nr, action in entries:
            check = _condition(action) if isinstance(action, tuple) else \
                [(_RET_K, 0, 0, action)]
            out += [(_JEQ_K, 0, len(check), nr)] + check
        return out + default
    mid = len(entries) // 2
    left, right = _tree(entries[:mid], default), _tree(entries[mid:], default)
    # nr >= entries[mid]: jump (long) over the left half to the right one
    return [(_JGE_K, 0, 1, entries[mid][0]), (_JA, 0, 0, len(left))] + left + right


def _condition(cond) -> list[tuple]:
    """Instructions that end in ALLOW or EPERM for one call's argument check
    (the low 32 bits of the argument: every checked argument is an int)."""
    kind, index = cond[0], cond[1]
    load = (_LD_W_ABS, 0, 0, _ARGS + 8 * index)
    if kind == "none_of":           # each (argument, mask) pair in turn
        out = []
        for i, mask in zip(cond[1::2], cond[2::2]):
            out += [(_LD_W_ABS, 0, 0, _ARGS + 8 * i), (_JSET_K, 0, 1, mask),
                    (_RET_K, 0, 0, EPERM)]
        return out + [(_RET_K, 0, 0, ALLOW)]
    if kind == "one_of":
        values = cond[3]
        out = [load, (_AND_K, 0, 0, ~cond[2] & 0xFFFFFFFF)]
        for i, v in enumerate(values):        # jump to the ALLOW after the EPERM
            out.append((_JEQ_K, len(values) - i, 0, v))
        return out + [(_RET_K, 0, 0, EPERM), (_RET_K, 0, 0, ALLOW)]
    if kind == "self":
        return [load, (_JEQ_K, 1, 0, SELF), (_RET_K, 0, 0, EPERM), (_RET_K, 0, 0, ALLOW)]
    if kind == "not_one_of":        # EPERM for any of cond[2], else ALLOW
        values = cond[2]
        out = [load]
        for i, v in enumerate(values):        # jump to the EPERM after the ALLOW
            out.append((_JEQ_K, len(values) - i, 0, v))
        return out + [(_RET_K, 0, 0, ALLOW), (_RET_K, 0, 0, EPERM)]
    if kind == "self_policy":       # argument `index` is 0 (the caller), and cond[2:] one_of
        policy = _condition(("one_of", *cond[2:]))
        return [load, (_JEQ_K, 1, 0, 0), (_RET_K, 0, 0, EPERM)] + policy
    if kind == "clock":             # below MAX_CLOCK, or OWN_CPU_CLOCKS and above
        return [load, (_JGE_K, 0, 1, OWN_CPU_CLOCKS), (_RET_K, 0, 0, ALLOW),
                (_JGE_K, 0, 1, MAX_CLOCK), (_RET_K, 0, 0, EPERM), (_RET_K, 0, 0, ALLOW)]
    raise ValueError(kind)


def run(prog: list[tuple], nr: int, args=(0,) * 6, arch: int = AUDIT_ARCH_X86_64) -> int:
    """What `prog` answers for call `nr` with `args` (an interpreter for the
    instructions build() emits; the unit tests check the program with it)."""
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == _LD_W_ABS:
            acc = {0: nr, 4: arch}.get(k)
            if acc is None:
                acc = args[(k - _ARGS) // 8] & 0xFFFFFFFF
        elif code == _RET_K:
            return k
        elif code == _JA:
            pc += k
        elif code == _AND_K:
            acc &= k
        elif code in (_JEQ_K, _JGE_K, _JSET_K):
            hit = acc == k if code == _JEQ_K else acc >= k if code == _JGE_K else acc & k
            pc += jt if hit else jf
        else:
            raise ValueError(f"instruction {code:#x}")
        pc += 1


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


#: What a helper child refuses (confine.confine_helper: the children that parse a
#: hostile module or schema, and the wasm-tools they run).  A deny-list, not the
#: engines' allow-list: a compiler runs wasmtime's compiler, CPython and (probes)
#: fork and exec wasm-tools, and an allow-list that missed a call they make on
#: some input would fail compiles.  What it refuses is what a helper never needs
#: and an escaped one would want: sockets (the network, Unix sockets by path,
#: which Landlock does not cover, and a socket pair's out-of-band data), other
#: processes' memory, the kernel's modules, keys, mounts, System V IPC, namespaces
#: (a user namespace would give it a full set of capabilities there), io_uring
#: (which bypasses this filter), BPF, leaving its process group or its parent
#: (CLONE_PARENT), and changing another process's limits, priority or scheduling
#: (HELPER_SELF_ONLY: on itself only).
HELPER_REFUSED = frozenset({
    # a socket pair, too (r274): no helper makes one, and on a Unix socket of its own
    # it reached the kernel's AF_UNIX out-of-band code (MSG_OOB: MSG_FLAGS above)
    "socket", "socketpair", "ptrace", "process_vm_readv", "process_vm_writev",
    "pidfd_getfd", "kcmp",
    # another process's memory by other calls that ask only its uid (of a dumpable
    # process: the supervisor and the engines when wsuper runs as a user, whose uid
    # the compilers share): where each of its pages is (move_pages with no nodes:
    # -EFAULT where nothing is mapped, its layout through the ASLR), its thread
    # area's address (get_robust_list), its pages moved (migrate_pages), advice on
    # its memory and the reaping of it (process_madvise, process_mrelease)
    "move_pages", "migrate_pages", "get_robust_list", "process_madvise", "process_mrelease",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "fsopen", "fsmount",
    "fsconfig", "fspick", "open_tree", "mount_setattr", "unshare", "setns",
    "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_by_handle_at", "name_to_handle_at", "reboot", "swapon", "swapoff",
    "settimeofday", "clock_settime", "quotactl", "acct", "iopl", "ioperm", "uselib",
    # System V IPC and POSIX message queues: a helper shares the host's IPC
    # namespace, and its user (the engines') may be other daemons' too
    "shmget", "shmat", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl",
    "semget", "semop", "semctl", "semtimedop", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # its process group: a helper leads one, and what it forks stays in it, so that
    # the process that started it ends them all with it (zygote.end_group); a
    # process that left it (a daemon of the module's) outlived everything, and
    # held the compiler's pipe and memfds open
    "setsid", "setpgid",
    # other processes of its uid (the engines', the supervisor's when it is not
    # root; uid 0's when the schema parser keeps it): their priority, by process,
    # group or the whole user, and their I/O priority.  Neither Landlock nor the
    # change of user stops these: same uid is all they ask
    "setpriority", "ioprio_set",
    # a file's metadata, and watching files: Landlock covers neither, and a helper
    # shares the host's mount namespace.  A compiler of a hostile module made any
    # file of its uid world-writable by its path (chmod 0666), or set its times,
    # owner group or extended attributes (as the engines' user: any file of 65534's;
    # without root, wsuper's own user's: its system file, its modules, its home),
    # and watched any directory its uid may read for the names of the files made,
    # opened and read there (inotify; fanotify, which asks no privilege since 5.13)
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "utime", "utimes", "futimesat", "utimensat",
    "setxattr", "lsetxattr", "fsetxattr", "setxattrat",
    "removexattr", "lremovexattr", "fremovexattr", "removexattrat", "file_setattr",
    "inotify_init", "inotify_init1", "inotify_add_watch", "fanotify_init", "fanotify_mark",
    # a scheduling policy and nice value given in memory, which a filter cannot read
    # (sched_setscheduler on itself below, with a time-sharing policy, is what a
    # helper may do): SCHED_FIFO, or a lower nice value, under a hard RLIMIT_RTPRIO
    # or RLIMIT_NICE above 0, could starve the supervisor and every engine
    "sched_setattr",
    # truncate(2) by path: Landlock refuses it only from ABI 3 (Linux 6.2); on an
    # older kernel a compiler of a hostile module emptied any file of its uid (a
    # helper's own descriptors, its memfds among them, keep ftruncate)
    "truncate",
})
#: ioctl requests that set a file's attributes through a descriptor (the helper may
#: open to read what lies beneath `readable`: the module, wasm-tools, a schema's
#: directory), which Landlock does not look at for a regular file: what chmod,
#: file_setattr and setxattr above would do by path.  FS_IOC_SETFLAGS (chattr; and
#: its 32-bit form), FS_IOC_FSSETXATTR (the project quota id, the flags),
#: FS_IOC_SETVERSION (both forms) and ext4's EXT4_IOC_SETVERSION, FS_IOC_ENABLE_VERITY
#: (a file read-only for good), BTRFS_IOC_SUBVOL_SETFLAGS (a subvolume made
#: read-only), FS_IOC_SET_ENCRYPTION_POLICY (an empty directory of its uid made
#: encrypted, with a key of its choosing).  Refused by their number (the low 32
#: bits: the kernel's `cmd` is an unsigned int)
HELPER_REFUSED_IOCTLS = (0x40086602, 0x40046602, 0x401C5820, 0x40087602, 0x40047602,
                         0x40086604, 0x40806685, 0x4008941A, 0x800C6613)
#: Calls a helper may make on itself only (pid 0), never on another process of its
#: uid: an engine's RLIMIT_NOFILE set to 0, or RLIMIT_CPU to 1, by the compiler of
#: another compartment's module, its scheduling or CPUs changed
HELPER_SELF_ONLY = ("prlimit64", "sched_setaffinity", "sched_setparam")
#: sched_setscheduler: on itself only, and only to a time-sharing policy
#: (SCHED_OTHER, SCHED_BATCH, SCHED_IDLE; SCHED_RESET_ON_FORK or not).  Under a
#: hard RLIMIT_RTPRIO above 0 (limits.conf's `@audio - rtprio 95`, a service's
#: LimitRTPRIO=), which needs no capability, a compiler of a hostile module could
#: make itself and what it forks SCHED_FIFO and spin: the supervisor and every
#: engine would get the 5 % of each CPU that real-time throttling leaves.  (confine_helper also
#: lowers both limits to 0, so a real-time policy or a lower nice value is out of
#: reach by any call.)
HELPER_POLICIES = (0, 3, 5)
_SCHED_RESET_ON_FORK = 0x40000000
#: Calls a helper may make on the machine's clocks and its own CPU clocks only (the
#: ("clock", 0) condition of the engines' filter): another process's CPU clock
#: needs no permission, and told a compiler of a hostile module when, and how long,
#: every other process ran (a timer_create on it signals the helper as it runs)
HELPER_OWN_CLOCKS = ("clock_gettime", "clock_getres", "clock_nanosleep", "timer_create")
#: Namespace flags of clone(): a helper's clone with any of them is refused, and
#: clone3 (whose flags are in memory a filter cannot read) answers ENOSYS, so that
#: the C library falls back to clone.
_CLONE_NEW = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 \
    | 0x40000000 | 0x00000080
#: CLONE_PARENT: the new process is its caller's parent's child.  A compiler's so made
#: was a child of `wsuper up`'s supervisor (in_a_compiler): ended with the group
#: (zygote.end_group), but never reaped there, a zombie of the engines' uid for good,
#: as many as the compile could fork (its uid's process limit, the pid space)
_CLONE_PARENT = 0x00008000


def helper_rules() -> dict[int, object]:
    """call number -> EPERM, ENOSYS or a condition, for every call a helper may not
    make as it likes (everything else is allowed)."""
    actions = {SYSCALLS[name]: EPERM for name in HELPER_REFUSED}
    for name in HELPER_SELF_ONLY:                   # pid 0: the caller
        actions[SYSCALLS[name]] = ("one_of", 0, 0, (0,))
    actions[SYSCALLS["sched_setscheduler"]] = ("self_policy", 0, 1, _SCHED_RESET_ON_FORK,
                                               HELPER_POLICIES)
    actions[SYSCALLS["clone3"]] = ENOSYS
    actions[SYSCALLS["clone"]] = ("none_of", 0, _CLONE_NEW | _CLONE_PARENT)
    actions[SYSCALLS["ioctl"]] = ("not_one_of", 1, HELPER_REFUSED_IOCTLS)
    for name in HELPER_OWN_CLOCKS:                  # as the engines' (CONDITIONS)
        actions[SYSCALLS[name]] = ("clock", 0)
    return actions


def build_helper() -> list[tuple]:
    """The helpers' filter: build()'s head (other architectures killed, x32
    refused), helper_rules(), and every other call allowed."""
    return build(helper_rules())[:6] + _tree(sorted(helper_rules().items()),
                                             [(_RET_K, 0, 0, ALLOW)])


_PROGRAM = None
_HELPER = None


def _fprog(prog: list[tuple]) -> "_SockFprog":
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    fprog._keep = filters
    return fprog


def helper_program() -> "_SockFprog":
    """The helpers' filter, built once (the zygote builds it before forking)."""
    global _HELPER
    if _HELPER is None:
        _HELPER = _fprog(build_helper())
    return _HELPER


def install_helper():
    """Apply the helpers' filter (build_helper) to this process, for good."""
    helper_program()
    if _libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC,
                     ctypes.byref(_HELPER)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(e)}")


def program() -> "_SockFprog":
    """The engines' filter, built once (the zygote builds it before forking)."""
    global _PROGRAM
    if _PROGRAM is None:
        prog = build(rules())
        filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
        fprog = _SockFprog(len(prog), filters)
        fprog._keep = filters
        fprog._self = [i for i, ins in enumerate(prog) if ins[0] == _JEQ_K and ins[3] == SELF]
        _PROGRAM = fprog
    return _PROGRAM


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def install():
    """Apply the filter to this process, every thread, for good."""
    fprog = program()
    for i in fprog._self:            # this engine's own copy of the program: its pid
        fprog._keep[i].k = os.getpid()
    if _libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC,
                    ctypes.byref(fprog)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(e)}")
