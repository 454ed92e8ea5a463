"""The zygote: a preloaded process that forks engines on request.

Owns: forking engines, the compiled form of each module (sealed memfds),
reporting engines' exits, and parsing `wsuper up`'s schema files in a child.
Must not: hold any module's bytes in its own memory, run guest code, or trust
the requests beyond what `EngineSpec` validates.

A fresh interpreter costs ~50-90 ms and ~15 MiB of private memory before it
does anything (imports of wasmtime, pycapnp, the schemas).  The supervisor
starts this process once (supervisor/process.py: `python -I`, an empty
environment); it imports all of that, makes what every engine shares (the
wasmtime engine and its function types, the seccomp program, which
namespaces the kernel gives), walks an engine's start-up on a built-in module
of its own (WARM_UPS times), freezes the heap (`gc.freeze()`, so the children
share it copy-on-write) and then forks one engine per request:

  request (supervisor -> zygote, on the control socket):
      one line: the request's number, a space, and an EngineSpec as a JSON
      object (compartments/spec.py), sent with two descriptors (SCM_RIGHTS):
      the engine's socket and the write end of its stderr pipe, which come with
      the request's first bytes (a long request may come in pieces: _Lines)
  answer: one JSON line {"pid": N, "id": NUMBER}, or {"error": "...", "id":
      NUMBER} for a request it refused; a request whose module must be compiled
      first is answered when that is done, and later requests meanwhile
  event:  one JSON line {"exit": N, "code": C} when an engine ends
  busy:   one JSON line {"busy": N} every BUSY_EVERY seconds while N requests
      wait for their modules' compiles: the supervisor bounds its wait for an
      answer by the time since it last heard from this process (a stopped or
      wedged zygote says nothing: supervisor/process.py, ANSWER_SILENCE)
  compile (supervisor -> zygote, `wsuper up` as soon as its policy is read):
      {"compile": EngineSpec}: compile that spec's module now, as its first
      request would (its requests then find it compiled, or wait for this
      compile); never answered, and one that cannot be taken changes nothing
  schema (supervisor -> zygote, before any request): {"schema": PATH, "imports":
      [DIR, ...]}; answer {"schema": EXIT CODE, "stderr": TEXT} of a child that
      parsed that file (pycapnp's parser may abort a process: never this one)

**No other compartment's bytes.**  A forked child carries its parent's whole
memory, so the zygote never has a module in its own: each module file is
compiled once by a short-lived child of the zygote, which serializes the code
into one memfd and the module's wasm.Description into another, and exits; the
zygote seals both (no write, no resize) and keeps only the descriptors.  An
engine closes every other module's descriptors first thing, then maps its own
(`Module.deserialize_file`: the code pages are the memfd's, shared by all
engines of that module, and wasmtime uses the same memfd as the image of
linear memory), so it holds its own module and data and nothing else.

**Spares.**  The engine that answers a request was forked before it: after
each answer that took the last one (and once at start) the zygote forks a spare
(`_Spare`; SPARES_AHEAD of them back to back when more requests wait; and while
requests come one at a time it keeps SPARES_IDLE, the one taken replaced
FORK_DELAY after the answer, when no request waits), which
closes what is the zygote's, enters new IPC, UTS, network and mount namespaces,
empties the mount namespace and its bounding set (confine.enter_early), rehearses an engine's start
on the built-in warm-up module if no request waits, and then waits on its
own socket for one request: the spec line, the engine's socket and stderr
pipe, and its module's two memfds.  What it inherits is the same for every
compartment; it learns which compartment it is, and gets that module, only
with its request (docs/design.md says why this is as strong as forking at the
request).  Requests may come back to back.

**Compiles beside the loop.**  A module can be made to compile for a long time
(up to COMPILE_SECONDS of CPU), and while the zygote waited for one no other
engine started or restarted.  Compilers run beside the loop now (COMPILES at
once), each request waiting for its own module only.

Engines are the zygote's children; the zygote dies with the supervisor
(PR_SET_PDEATHSIG) and engines with the zygote, so nothing outlives the
supervisor.  It is not a fork of the supervisor: that would leak the
supervisor's memory, its environment included, into every engine.
"""
from __future__ import annotations

import collections
import errno
import faulthandler
import fcntl
import gc
import json
import os
import re
import resource
import select
import signal
import socket
import sys
import time
import traceback

#: Descriptors (SCM_RIGHTS) that come with each request: socket, stderr pipe.
REQUEST_FDS = 2
#: Spares forked back to back while requests come in a row (`wsuper up`): after a
#: fork, every page this process writes is copied (~340 a request, for the loop's
#: Python), so one round of the loop for several forks.
SPARES_AHEAD = 4
#: Spares kept while requests come one at a time (restarts): the one that takes a
#: request leaves another, so the next spare is forked FORK_DELAY later, not while
#: the engine it replaces starts (its fork, set-up and rehearsal are ~5 ms of CPU on
#: the cores that engine and the supervisor need: docs/performance.md, "Start-up,
#: fifth pass"), and a restart that comes within the delay still finds one.
SPARES_IDLE = 2
FORK_DELAY = 0.005
#: CPU seconds of the child that compiles a module (and rewrites it for probes)
COMPILE_SECONDS = 120
#: Seconds of wall clock it may take (COMPILES share the CPUs, which the engines
#: use too).  A compiler that sleeps, or blocks, uses no CPU: one that closed its
#: pipe and slept held the zygote's whole loop in waitpid, and one that kept its
#: pipe open held its compile slot and its requests, for good
COMPILE_WALL = 3 * COMPILE_SECONDS
#: Seconds between two {"busy": N} lines while requests wait for compiles: a
#: compile takes up to COMPILE_WALL, and compiles queue, so a request may wait
#: long for its answer; this says the zygote goes on (process.ANSWER_SILENCE is
#: the supervisor's bound on silence, several times this)
BUSY_EVERY = 1.0
#: Compilers at once; more modules to compile wait for one to end (their requests
#: with them), while requests for modules compiled already go on.  The CPUs this
#: process may run on, at least 2 and at most 4: a compile of a large module takes
#: hundreds of MB (830 MB for 3.6 MB of wasm), and a big host's every CPU at once
#: would be gigabytes at `wsuper up`
COMPILES = min(4, max(2, len(os.sched_getaffinity(0))))
#: Seconds at least before a module whose compiler died is compiled again (_Modules.get)
FAILED_RETRY = 10.0
#: Times at most a request is compiled again for its module file as it is now, when
#: the file changed under a compile that failed (its compiler refuses to read a file
#: other than the one looked up: wasm.preload); then that failure is its answer
RECOMPILES = 3
#: Bytes of address space a child that compiles a module may map (on top of what
#: it had when forked).  A compile's memory grows with the module (one function of
#: 200,000 additions, 600 KB: 217 MB; 3.6 MB: 830 MB), and 120 s of CPU is enough
#: for a module that needs tens of GB: COMPILES of them at once could take the
#: machine's memory, and the kernel's OOM killer chooses among the supervisor and
#: every engine.  4 GiB, or less on a small host (its memory shared by the
#: compilers that may run at once, and one more), but never less than 1 GiB.  A
#: host's memory is the least of its RAM and the memory limit of the control group
#: wsuper runs in (a container's, a service's MemoryMax=): a container of 2 GiB on
#: a large machine is a small host, and its OOM killer chooses among its processes.
def _compile_memory(physical: int | None = None, compiles: int | None = None) -> int:
    physical = _host_memory() if physical is None else physical
    compiles = COMPILES if compiles is None else compiles
    return 4 << 30 if physical <= 0 else max(1 << 30, min(4 << 30, physical // (compiles + 1)))


def _host_memory(cgroups: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int:
    """The bytes of memory this process may use: the host's RAM, or less, the limit
    of its control group or of one above it (v2 memory.max, v1
    memory.limit_in_bytes); 0 if none is known."""
    try:
        known = [os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
    except (ValueError, OSError):
        known = []
    try:
        with open(cgroups, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            base, name = root, "memory.max"                 # v2 (unified)
        elif "memory" in controllers.split(","):
            base, name = os.path.join(root, "memory"), "memory.limit_in_bytes"   # v1
        else:
            continue
        parts = [p for p in path.split("/") if p and p not in (".", "..")]
        for depth in range(len(parts), -1, -1):        # its group and every one above
            try:
                with open(os.path.join(base, *parts[:depth], name), encoding="ascii") as f:
                    value = f.read().strip()
            except (OSError, UnicodeDecodeError):
                continue
            if value.isdigit() and 0 < int(value) < 1 << 62:  # "max", v1's "unlimited"
                known.append(int(value))
    known = [k for k in known if k > 0]
    return min(known) if known else 0


COMPILE_MEMORY = _compile_memory()
_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


#: What starts the compiler's own explanation on its pipe, which is its stderr too.
#: Only `say` writes it, and the text it says never holds a NUL (the text quotes
#: the module: an import's name may be any bytes): a marker in what was said, or
#: in what a library printed, is never read as the compiler's own.
_SAID = b"\x00wsuper: "
#: Bytes of the compiler's explanation at most (an answer of in_a_compiler may be more)
SAID_MAX = 4000
#: Bytes at most of all a child of in_a_compiler writes (its answer and what a library
#: printed): more is no answer (it is killed), never read into this process's memory
ANSWER_MAX = 1 << 20
#: The line Rust's allocator prints before it aborts (the compiler's stderr is its pipe)
_RUST_OUT_OF_MEMORY = re.compile(rb"^memory allocation of [0-9]+ bytes failed$", re.M)


def out_of_memory() -> str:
    return (f"compiling it needed more than {COMPILE_MEMORY >> 20} MiB of memory "
            f"(the compiler's limit)")


def too_big(limit: int | None = None) -> str:
    """Its output past `limit` bytes (RLIMIT_FSIZE: COMPILE_MEMORY, or a lower hard
    limit wsuper runs under) or, kept, past COMPILE_MEMORY."""
    limit = COMPILE_MEMORY if limit is None else limit
    size = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"
    # under a lower hard limit (`ulimit -f 8`, a service manager's LimitFSIZE=) that
    # one is named: "(the compiler's limit)" sent the operator of `ulimit -f` looking
    # for a module too large, as every module was
    whose = "the compiler's limit" if limit >= COMPILE_MEMORY else \
        "the file size limit wsuper runs under: ulimit -f"
    return f"its compiled form is more than {size} ({whose})"


_TOO_BIG = re.compile(r"its compiled form is more than [0-9]+ (MiB|bytes) "
                      r"\((the compiler's limit|the file size limit wsuper runs under: "
                      r"ulimit -f)\)")


def say(fd: int, text: str, limit: int = SAID_MAX):
    """In a compiler child: its own word on its pipe `fd`, after the marker, every NUL
    of `text` escaped (a module's import named "\\0wsuper: compiling it needed more
    than ..." made its refusal read as the memory limit; one that put the marker at
    the cut made the compiler say nothing, and a module at fault was tried again
    and again as a compiler that died)."""
    view = memoryview(_SAID + text.replace("\0", "\\x00").encode("utf-8", "replace")[:limit])
    while view:
        view = view[os.write(fd, view):]


def own_word(status: int, text: bytes) -> str | None:
    """What a compiler that ended with wait `status`, having written `text`, said of
    itself (`say`): the text after the last marker, if it exited; None if it said
    nothing (a child killed by a signal never said its word: a marker in what it
    printed before is not its own)."""
    if not os.WIFEXITED(status) or _SAID not in text:
        return None
    return text.rpartition(_SAID)[2].decode("utf-8", "replace")


def ended(status: int) -> str:
    """How a compiler ended, in words (not a wait status: "256" was exit code 1)."""
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = f"signal {os.WTERMSIG(status)}"
        return f"its compiler was killed by {name}"
    return f"its compiler exited with code {os.waitstatus_to_exitcode(status)}"


def lead_group():
    """In a child that will parse hostile input (a compiler), first: lead a process
    group of its own.  What it forks stays in it (the helpers' seccomp filter refuses
    setsid and setpgid), so that end_group ends them all: a process the module forked
    outlived the compiler, the zygote and the supervisor, holding the compiler's
    pipe (its parent waited on it for good) and its memfds (mapped for writing, so
    that the zygote could not seal them, and died)."""
    os.setpgid(0, 0)


def end_group(pid: int):
    """SIGKILL the child `pid` (lead_group) and every process of its group.  Only
    while `pid` is not reaped yet (running, or a zombie): no other process or group
    can then have its number."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass


def joined(pid: int):
    """In the parent, after forking a child that calls lead_group: the same, so that
    end_group reaches its group even before the child ran."""
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass        # it did it already, or it is gone (end_group's os.kill still is)


def limit_compiler(confining, stderr: int):
    """In a child about to compile a module: its CPU and memory bounded (never above
    a hard limit already in force), and its stderr on `stderr`, the pipe it says
    why on (what wasmtime prints as it aborts)."""
    confining.lower_limit(resource.RLIMIT_CPU, COMPILE_SECONDS, COMPILE_SECONDS + 5)
    # on top of what this fork has mapped already (the supervisor's, or a process
    # holding a wasmtime instance, which reserves gigabytes of address space)
    with open("/proc/self/statm", "rb") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    confining.lower_limit(resource.RLIMIT_AS, mapped + COMPILE_MEMORY)
    # and what it writes (its output memfds, which the zygote keeps): a memfd's pages
    # are not the writer's address space, and a compiler taken over by its module
    # wrote gigabytes there, kept sealed in the zygote and read whole by each engine
    confining.lower_limit(resource.RLIMIT_FSIZE, COMPILE_MEMORY)
    confining.rank_first_for_oom()      # and what it forks: before the supervisor
    os.dup2(stderr, 2)
    faulthandler.disable()      # an abort at the limit is an answer, not a crash to dump


#: (uid, gid) a compiler runs as when wsuper is root and no engine user is known (the
#: built-in warm-up module, `wsuper check`): policy.DEFAULT_ENGINE_USER's default.
COMPILER_USER = (65534, 65534)


def confine_compiler(confining, path: str, probes: bool, user=None, parent: int = 0,
                     expect: tuple | None = None) -> list:
    """In a child about to parse and compile the module at `path` (hostile bytes:
    wasmparser, Cranelift, the probes' rewriter and wasm-tools), once limited
    (limit_compiler): read the module file now (wasm.preload), import what the
    compile imports late, then give up, for good (confine.confine_helper), root
    (for `user`, or COMPILER_USER), every capability, new privileges, every file
    (Landlock; with `probes`, reading and executing wasm-tools and the loader's
    libraries only), TCP, signals and abstract sockets outside, and sockets,
    namespaces, mounts, modules, ptrace (seccomp).  It dies with `parent`.
    `expect`: the file the compile is for (wasm.file_key; wasm.preload).
    Returns what the kernel could not give; raises confine.ConfinementError."""
    import selectors  # noqa: F401 - imported now: no file can be read after
    import subprocess  # noqa: F401
    import time  # noqa: F401

    import capnp_schemas  # noqa: F401
    import capnp_schemas.text  # noqa: F401

    from . import instrument, protect, wasm  # noqa: F401
    wasm.preload(path, expect)
    readable = ()
    if probes:
        try:
            # by descriptor: `user` may not reach it by its path (wsuper beneath
            # root's 0700 home); run through /proc/self/fd (instrument._tool)
            readable = (instrument.hold_wasm_tools(), *confining.TOOL_LIBRARIES)
        except (instrument.InstrumentError, OSError):
            pass                    # the rewriting says so, with nothing to run
    if user is None and os.geteuid() == 0:
        user = COMPILER_USER
    return confining.confine_helper(user, parent, readable)


def compiler_limit_hit(status: int, text: bytes) -> str | None:
    """Which of its limits a compiler that ended with wait `status`, having
    written `text`, ran into; None if none.  Only the compiler's own word (`say`),
    or an abort with Rust's out-of-memory line, says it ran out of memory: the text
    anywhere else quotes the module."""
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
        return f"compiling it took more than {COMPILE_SECONDS} s of CPU (the compiler's limit)"
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT \
            and _RUST_OUT_OF_MEMORY.search(text):   # wasmtime aborts when malloc fails
        return out_of_memory()
    if own_word(status, text) == out_of_memory():   # Python's MemoryError
        return out_of_memory()
    word = own_word(status, text)
    if word is not None and _TOO_BIG.fullmatch(word):    # its output, past RLIMIT_FSIZE
        return word
    return None


class CompilerFailed(Exception):
    """A child compiling a module (`in_a_compiler`) ended without an answer."""


def in_a_compiler(work, path: str, user=None, probes: bool = False):
    """`start_in_a_compiler(...).result()`: see there."""
    return start_in_a_compiler(work, path, user, probes).result()


def start_in_a_compiler(work, path: str, user=None, probes: bool = False) -> "InACompiler":
    """Start computing the result of `work()` (JSON values) in a child of this process under
    a compiler's limits (COMPILE_SECONDS, COMPILE_MEMORY, COMPILE_WALL; what it
    forks ends with it: collect), as the zygote compiles:
    `wsuper check` and `up` compile each module once, and a module can be made to
    take minutes and tens of GB to compile (or abort the process when memory runs
    out).  Confined as the zygote's compilers are (confine_compiler: `work` reads
    the module file at `path`, read first, and no other file; `user` as there),
    with every descriptor it inherited but its pipe pointed at /dev/null (this
    process is the supervisor's: its admin socket, its engines' sockets).  Raises
    CompilerFailed naming the limit, or what the child said.

    The child parses hostile modules: what it answers is JSON (or CompilerFailed),
    of at most ANSWER_MAX bytes, and nothing more is known of it: the caller checks
    its shape as it would any hostile input.  `probes`: `work` rewrites the module
    for probes, and may run wasm-tools (confine_compiler's `probes`).  Its `result()`
    waits for it; `wsuper up` starts one before its last imports and takes the
    result after them (supervisor/preflight.py, ChecksSoon)."""
    from . import confine as confining
    parent = os.getpid()
    try:                    # no process or descriptor left: a failure, not a traceback
        r, w = os.pipe()
    except OSError as e:
        raise CompilerFailed(f"cannot start a compiler: {e.strerror or e}") from None
    try:
        pid = os.fork()
    except OSError as e:
        os.close(r)
        os.close(w)
        raise CompilerFailed(f"cannot start a compiler: {e.strerror or e}") from None
    if pid == 0:
        code = 1
        try:
            lead_group()
            # never outlive `wsuper check` or `up` (killed, or ^C): a compile may
            # run on for COMPILE_SECONDS and COMPILE_MEMORY after it
            confining.die_with_parent(parent)
            os.close(r)
            limit_compiler(confining, w)
            try:
                confining.neutralize_fds(keep={2, w})
                confine_compiler(confining, path, probes, user, os.getppid())
            except confining.ConfinementError as e:
                say(w, f"cannot confine its compiler: {e}")
                os._exit(1)
            try:
                result = work()
            except MemoryError:
                say(w, out_of_memory())
            else:
                # ensure_ascii: no NUL in it (nor a marker)
                say(w, json.dumps(result, ensure_ascii=True), limit=ANSWER_MAX)
                code = 0
        except BaseException as e:     # noqa: BLE001 - said on the pipe, in one line
            try:
                say(w, "".join(traceback.format_exception_only(e)).strip()
                    .replace("\n", " ")[:500])
            except BaseException:      # noqa: BLE001
                pass
        finally:
            os._exit(code)
    os.close(w)
    joined(pid)
    return InACompiler(pid, r)


class InACompiler:
    """A child of start_in_a_compiler: `result()` once, or `cancel()`."""

    def __init__(self, pid: int, pipe: int):
        self.pid, self.pipe = pid, pipe
        self.began = time.monotonic()

    def cancel(self):
        """End it (and its group) and reap it, unless its result was taken."""
        if self.pipe is None:
            return
        pipe, self.pipe = self.pipe, None
        end_group(self.pid)
        os.close(pipe)
        os.waitpid(self.pid, 0)

    def result(self):
        """Its answer (JSON values), or CompilerFailed: waits for it to end, or for
        what is left of its COMPILE_WALL."""
        pid, r, self.pipe = self.pid, self.pipe, None
        if r is None:
            raise CompilerFailed("its result was taken, or it was cancelled")
        # a signal whose default ends this process (`wsuper check` stopped) ends the
        # child's group first (_stop): the child dies with us, but what it forked does
        # not (`up` raises StoppedAtStart there instead, and collect ends the group)
        kept = {}
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                if signal.getsignal(sig) == signal.SIG_DFL:
                    kept[sig] = signal.signal(sig, _stop)
            except ValueError:      # not the main thread: no handler of ours
                break
        try:
            status, text, why = collect(
                pid, r, max(0.0, COMPILE_WALL - (time.monotonic() - self.began)),
                ANSWER_MAX + len(_SAID))
        except OSError as e:
            raise CompilerFailed(f"cannot wait for its compiler: {e.strerror or e}") from None
        finally:
            for sig, handler in kept.items():
                signal.signal(sig, handler)
        return _answer_of(status, text, why)


def _answer_of(status: int, text: bytes, why):
    """The answer of a child of start_in_a_compiler, or CompilerFailed."""
    if why == "too much":
        raise CompilerFailed(f"its compiler wrote more than {ANSWER_MAX} bytes")
    if why == "time":
        raise CompilerFailed(took_too_long())
    word = own_word(status, text)
    if status == 0 and word is not None:
        try:
            return json.loads(word)
        except (ValueError, RecursionError):
            raise CompilerFailed("its compiler's answer is not JSON") from None
    limit = compiler_limit_hit(status, text)
    if limit:
        raise CompilerFailed(limit)
    if word is None:        # what a library printed last (Rust's panic, say)
        lines = text.decode("utf-8", "replace").replace("\0", "\\x00").strip().splitlines()
        word = lines[-1] if lines else ""
    raise CompilerFailed(ended(status) + (f": {word[:500]}" if word else ""))


def took_too_long() -> str:
    return f"compiling it took more than {COMPILE_WALL} s (the compiler's limit)"


def collect(pid: int, pipe: int, seconds: float, limit: int) -> tuple:
    """(wait status, bytes, why) of the child `pid` (lead_group), which writes on
    `pipe` (the read end, closed here): read until the child ends, not until the
    end of file (what it forked may hold the pipe open), nor beyond `seconds` or
    `limit` bytes (`why`: "time" or "too much", else None).  Then its group is
    ended (end_group), what is left in the pipe read, and the child reaped;
    interrupted (^C), the same, and the exception goes on."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:             # no descriptor left: it is not waited for blindly
        end_group(pid)
        os.close(pipe)
        os.waitpid(pid, 0)
        raise
    _collecting.add(pid)        # the zygote's STOP ends it (_stop)
    deadline = time.monotonic() + seconds
    chunks, size, why = [], 0, None
    poller = select.poll()
    poller.register(pipe, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    try:
        while why is None:
            left = deadline - time.monotonic()
            if left <= 0:      # unless it ended meanwhile: then its end is its answer
                if pidfd not in dict(poller.poll(0)):
                    why = "time"
                break
            ready = dict(poller.poll(left * 1000))
            if pipe in ready:
                try:
                    data = os.read(pipe, 1 << 16)
                except BlockingIOError:
                    data = None
            if pipe in ready and data is not None:
                if not data:
                    poller.unregister(pipe)
                size += len(data)
                if size > limit:
                    why = "too much"        # never held here: the child is stopped
                    break
                chunks.append(data)
            if pidfd in ready:
                break                       # it ended
    finally:
        end_group(pid)          # before it is reaped: the group's number is its own
        os.close(pidfd)
        try:
            if why is None:     # what it wrote before it ended
                os.set_blocking(pipe, False)
                while size <= limit:
                    try:
                        data = os.read(pipe, 1 << 16)
                    except BlockingIOError:
                        break
                    if not data:
                        break
                    size += len(data)
                    chunks.append(data)
                if size > limit:
                    why = "too much"
        finally:
            os.close(pipe)
            _collecting.discard(pid)
            _, status = os.waitpid(pid, 0)
    return status, b"".join(chunks), why


class _Compile:
    """One module's compile, in a child of the zygote (_Modules.start): its memfds
    and the pipe it says why on."""

    def __init__(self, want: tuple, args: tuple, fds: tuple, pid: int, pipe: int):
        self.want = want                # (variant, file key): what it is compiled for
        self.args = args                # (path, instrument, protect, memory_limit)
        self.fds = fds
        self.pid = pid
        self.pipe = pipe                # read end; end of file: the compiler is done
        self.text = b""                 # what it said (the last 4096 bytes)
        self.status: int | None = None  # its wait status, once reaped
        self.began = time.monotonic()
        self.deadline = self.began + COMPILE_WALL
        self.eof = False                # its pipe is at end of file (it may still run)
        self.timed_out = False          # ended at `deadline` (end_group)

    def read(self) -> bool:
        """Take what the compiler wrote; True at end of file.  The compile is done
        when the compiler is reaped (`status`), not then: what it forked may hold
        its pipe, and it may close the pipe and go on."""
        try:
            data = os.read(self.pipe, 1 << 16)
        except BlockingIOError:
            return False
        self.text = (self.text + data)[-4096:]
        self.eof = self.eof or not data
        return not data

    def ended(self) -> bool:
        """Whether the compiler ended already (a zombie, not reaped yet): then its own
        end is its answer, never its deadline.  The loop sees an end only when it
        gets to it: a compile done in time, seen past its deadline (the zygote busy
        meanwhile: a schema's parse, spares, the machine's load), was refused as
        too long, and the module with it."""
        try:
            return os.waitid(os.P_PID, self.pid,
                             os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return False

    def drain(self):
        """What is left in the pipe of a compiler that ended (its group ended)."""
        os.set_blocking(self.pipe, False)
        for _ in range(64):         # a pipe's worth, bounded: nothing writes any more
            if self.eof:
                return
            try:
                data = os.read(self.pipe, 1 << 16)
            except BlockingIOError:
                return
            self.text = (self.text + data)[-4096:]
            self.eof = not data

    def wait(self) -> tuple:
        """(fds, None, False) or (None, why, said): blocks until the compiler ends
        (COMPILE_WALL at most)."""
        status, text, why = collect(self.pid, os.dup(self.pipe),
                                    max(0.0, self.deadline - time.monotonic()), 1 << 20)
        self.status, self.text = status, (self.text + text)[-4096:]
        self.timed_out = why == "time"
        self.eof = True
        return self.finish()

    def finish(self) -> tuple:
        """wait()'s answer for a compiler that ended and was reaped (`status`)."""
        os.close(self.pipe)
        status, path = self.status, self.args[0]
        if self.timed_out:
            for fd in self.fds:
                os.close(fd)
            return None, f"cannot load module {path}: {took_too_long()}", False
        if status != 0:
            for fd in self.fds:
                os.close(fd)
            # its own word follows _SAID (what a library printed may come before it)
            error = own_word(status, self.text) or ""
            said = bool(error) and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
            limit = compiler_limit_hit(status, self.text)
            if limit:       # the same file needs as much again: kept until it changes
                error, said = limit, True
            return None, f"cannot load module {path}: " + (
                error or ended(status)), said
        try:
            for fd in self.fds:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            # sealed: its size is what it is for good.  Both were in the compiler's
            # memory at once (COMPILE_MEMORY): never kept bigger, whatever it wrote
            big = sum(os.fstat(fd).st_size for fd in self.fds) > COMPILE_MEMORY
        except OSError as e:    # still mapped for writing (EBUSY): never used unsealed
            for fd in self.fds:
                os.close(fd)
            return None, f"cannot load module {path}: its compiler's output cannot be " \
                f"sealed ({e.strerror})", False
        if big:
            for fd in self.fds:
                os.close(fd)
            return None, f"cannot load module {path}: {too_big()}", True
        return self.fds, None, False


class _Modules:
    """Each module file compiled once, by a child: its code serialized into one
    sealed memfd, its wasm.Description into another; never in this process's
    memory.  Keyed by path and the file's identity, and by how it is prepared for
    memory protection (compartments/protect.py: a module may get checks).

    A compile runs beside the zygote's loop (serve: `lookup`, `start`, `settle`):
    a module can be made to compile for a long time (COMPILE_SECONDS), and while
    one compiled no other engine started or restarted.  `get` compiles and waits."""

    def __init__(self, wasm_engine):
        self._engine = wasm_engine
        self._fds: dict[tuple, tuple] = {}    # (path, protection) -> (file key, memfds)
        #: (path, protection) -> (file key, why, until): a compile that failed, not tried
        #: again for that file until `until` (time.monotonic(); None: until it changes)
        self._failed: dict[tuple, tuple] = {}
        #: the compiles under way, by what they are for (_Compile.want)
        self.compiling: dict[tuple, _Compile] = {}
        # set by serve(): what is the zygote's (its control socket, wake-up pipe, the
        # spares' sockets, the requests waiting, the built-in module's and every
        # module's memfds), which a compiler child closes before it reads a module
        self.zygote_own = lambda: ()

    def get(self, path: str, instrument: tuple = (), protect=None,
            memory_limit: int = 0) -> tuple[tuple | None, str | None]:
        """((code memfd, description memfd), None), or (None, why the module cannot
        be loaded).  `instrument`: the probe points compiled in (instrument.py);
        `protect`: the spec's protect.Setting, or None, with the compartment's
        memory limit (both decide the regions, and so the checks).  Each variant
        is a module of its own."""
        fds, why, want = self.lookup(path, instrument, protect, memory_limit)
        if want is None:
            return fds, why
        began = time.monotonic()
        return self.settle(want, began, *self._compile(path, instrument, protect,
                                                       memory_limit, expect=want[1]))

    def lookup(self, path: str, instrument: tuple = (), protect=None,
               memory_limit: int = 0) -> tuple:
        """(fds, None, None) for a module compiled, (None, why, None) for one that
        cannot be, or (None, None, want) for one to compile (`start(want, ...)`)."""
        try:
            st = os.stat(path)
        except OSError as e:
            return None, f"cannot load module {path}: {e.strerror}", None
        # the change time too (wasm.file_key); the compiler reads this file as it
        # is now, or fails (wasm.preload): a path pointed at another file meanwhile
        # (a symbolic link, a rename) had that file's code kept as this one's
        from .wasm import file_key
        key = file_key(st)
        from .protect import STATIC_MEMORY     # the limit matters only as above it or not
        variant = (path, instrument, protect,
                   protect is not None and memory_limit > STATIC_MEMORY)
        cached = self._fds.get(variant)
        if cached is not None and cached[0] == key:
            return cached[1], None, None
        failed = self._failed.get(variant)
        if failed is not None and failed[0] == key and (
                failed[2] is None or time.monotonic() < failed[2]):
            return None, failed[1], None
        return None, None, (variant, key)

    def settle(self, want: tuple, began: float, fds, error, said) -> tuple:
        """Keep what a compile for `want` gave: (fds, None) or (None, why)."""
        variant, key = want
        if fds is None:
            # The same file fails the same way: a module that takes long to fail must
            # not be compiled again at each of its restarts.  Failures the compiler
            # explained are kept until the file changes; a compiler that died (a
            # signal, a limit) is tried again after ten times its run.
            took = time.monotonic() - began
            self._failed[variant] = (key, error, None if said else
                                     time.monotonic() + max(FAILED_RETRY, 10 * took))
            return None, error
        self._failed.pop(variant, None)
        cached = self._fds.get(variant)
        if cached is not None:                # the file changed: its old form goes
            for fd in cached[1]:
                os.close(fd)
        self._fds[variant] = (key, fds)
        return fds, None

    def changed(self, want: tuple) -> bool:
        """Whether the file of `want` (variant, file key) is not the one looked up
        any more (wasm.file_key): a compile of it that failed failed for another
        file, or for the same one touched (a chmod, a hard link made: its change
        time), and says nothing of the file as it is now."""
        from .wasm import file_key
        try:
            return file_key(os.stat(want[0][0])) != want[1]
        except OSError:
            return False            # gone: its lookup says so

    def running(self) -> list[int]:
        """The pids of the compilers not reaped yet (_end_groups ends their groups).
        One reaped (its `status` known) stays in `compiling` until its end is
        settled, and the zygote forks meanwhile (the requests that waited for
        another compile): its number may be a new child's (an engine) by then,
        which waitid cannot tell from the compiler's."""
        return [job.pid for job in self.compiling.values() if job.status is None]

    def descriptors(self) -> list[int]:
        return [fd for _key, fds in self._fds.values() for fd in fds] + [
            fd for c in self.compiling.values() for fd in (*c.fds, c.pipe)]

    def _compile(self, path: str, instrument: tuple = (), protect=None, memory_limit: int = 0,
                 expect: tuple | None = None):
        """Compile and wait: (fds, None, False) or (None, why, said).  `expect`: the
        file's key it is for (wasm.preload)."""
        job = self.start(None, (path, instrument, protect, memory_limit), expect)
        try:
            return job.wait()
        finally:
            self.compiling.pop(job.want, None)

    def start(self, want, args: tuple, expect: tuple | None = None) -> _Compile:
        """Fork the child that compiles `args` (path, instrument, protect,
        memory_limit[, user]) for `want` ((variant, file key), whose file it must
        read, or fail: wasm.preload; or None, with that key in `expect`); it is in
        `compiling` until its end is settled.  `user`: (uid, gid) the compiler runs
        as when the zygote is root (the engines'; COMPILER_USER if None):
        confine_compiler."""
        path, instrument, protect, memory_limit = args[:4]
        user = args[4] if len(args) > 4 else None        # the engines' (EngineSpec.user)
        if want is not None:
            expect = want[1]
        from . import confine as confining     # imported already: serve() binds it
        made: list = []     # the second memfd or the pipe refused: the first ones closed
        try:
            for name in ("wsuper-module", "wsuper-module-description"):
                made.append(os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING))
            r, w = os.pipe()
        except OSError:
            for fd in made:
                os.close(fd)
            raise
        fds = tuple(made)
        zygote = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            for fd in (*fds, r, w):
                os.close(fd)
            raise
        if pid == 0:                       # the compiler: it reads the module, not us
            code = 1
            try:
                lead_group()
                # a compile may take long: never outlive the zygote (one left blocked
                # on a module file outlived the whole system)
                confining.die_with_parent(zygote)
                os.close(r)
                signal.set_wakeup_fd(-1)           # the zygote's wake-up pipe goes next
                _defaults()                     # not the zygote's _stop, nor IGNORED
                _close_all(self.zygote_own())      # never another module's, nor ours
                # bounded: a module can be made to compile for minutes (a 3 MB
                # function took 5 s), and its restarts wait for it; probes'
                # rewriting runs in Python here too (never above the hard limit
                # it has: raising one fails without root)
                limit_compiler(confining, w)
                # it reads the module now, as root if the zygote is; then it gives up
                # root, every capability and every file before it parses a byte
                try:
                    confine_compiler(confining, path, bool(instrument), user, zygote,
                                     expect)
                except confining.ConfinementError as e:
                    say(w, f"cannot confine its compiler: {e}")
                    code = 2                   # not the module's fault: tried again later
                else:
                    code = _compile_into(self._engine, path, fds, w, instrument, protect,
                                         memory_limit)
            finally:
                os._exit(code)
        os.close(w)
        joined(pid)
        os.set_blocking(r, False)
        job = _Compile(want if want is not None else ("sync", pid), args, fds, pid, r)
        self.compiling[job.want] = job
        return job


def _compile_into(wasm_engine, path: str, fds: tuple, err: int, instrument: tuple = (),
                  protect=None, memory_limit: int = 0) -> int:
    import wasmtime

    from . import instrument as rewriting, wasm
    try:        # rewritten here, in this child (instrument.py bounds the tool)
        module, sites, layout, binary = wasm.compile_binary_for(
            wasm_engine, path, instrument, protect, memory_limit)
    except MemoryError:     # Python's, rewriting it for probes
        say(err, out_of_memory())
        return 1
    except (OSError, UnicodeDecodeError, wasmtime.WasmtimeError,
            rewriting.InstrumentError) as e:
        text = str(e).strip()
        what = "cannot instrument it: " if isinstance(e, rewriting.InstrumentError) else ""
        say(err, what + (text.splitlines()[0] if text else type(e).__name__))
        # 1: the module is at fault, and will be again (_Modules.get keeps it);
        # 2: time or resources ran out, or the file could not be read: try again later
        transient = getattr(e, "transient", isinstance(e, OSError))
        return 2 if transient else 1
    problem, description = wasm.describe(module, sites, layout, binary)
    if problem:
        say(err, f"module {path} {problem}")
        return 1
    try:
        for fd, data in zip(fds, (module.serialize(), description.to_json())):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
    except OSError as e:
        if e.errno != errno.EFBIG:      # past RLIMIT_FSIZE (limit_compiler)
            raise
        say(err, too_big(resource.getrlimit(resource.RLIMIT_FSIZE)[0]))
        return 1
    return 0


#: How long a schema's parse may take (CPU, and wall clock), as supervisor/launch.py.
SCHEMA_SECONDS = 60


def _parse_schema(line: bytes, closing: list) -> dict:
    """{"schema": exit code, "stderr": what the parser printed} of a child that parsed
    the schema files `before` names (the supervisor names none: capnp_schemas.load
    gives each copy a new parser), then the one `line` names, each with its import
    path, in one new parser (capnp_schemas.PARSE_AFTER): pycapnp's
    parser aborts the process on some errors, so never here.  The child, like a
    compiler child, closes what is the zygote's first (`closing`), and holds
    nothing else: at `wsuper up` this comes before any compartment's request.
    Then it gives up what it holds (confine.confine_helper): every capability
    (it stays uid 0 if root: the schema files may be root's alone), no new
    privileges, Landlock reading only beneath those files and import
    directories, the helpers' seccomp deny-list; it dies with the zygote."""
    def paths(v):
        return isinstance(v, list) and all(isinstance(i, str) for i in v)
    try:
        msg = json.loads(line)
        path, imports, before = msg["schema"], msg["imports"], msg.get("before", [])
        after = msg.get("after", [])
        if not set(msg) <= {"schema", "imports", "before", "after"} \
                or not isinstance(path, str) or not paths(after) \
                or not paths(imports) or not isinstance(before, list) \
                or not all(isinstance(b, list) and len(b) == 2 and isinstance(b[0], str)
                           and paths(b[1]) for b in before):
            raise ValueError("bad fields")
    except (ValueError, KeyError, TypeError) as e:
        return {"error": f"schema request: {e}"}
    r, w = os.pipe()
    zygote = os.getpid()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(r)
        os.close(w)
        return {"schema": 70, "stderr": f"cannot check the schema: {e}"}
    if pid == 0:
        code = 1
        try:
            lead_group()                 # what it forks ends with it (collect)
            os.close(r)
            signal.set_wakeup_fd(-1)
            _defaults()                     # not the zygote's _stop, nor IGNORED
            _close_all(closing)
            os.dup2(w, 2)
            os.close(w)
            from . import confine        # never above a hard limit wsuper runs under
            confine.lower_limit(resource.RLIMIT_CPU, SCHEMA_SECONDS)
            confine.lower_limit(resource.RLIMIT_CORE, 0)        # an abort is an answer:
            faulthandler.disable()              # no core, no dump of our stack (if enabled)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(SCHEMA_SECONDS)
            import capnp  # noqa: F401 - PARSE_AFTER's: no library can be read after
            import capnp_schemas
            exec(capnp_schemas.PARSE_BOUND, {})     # /proc is out of reach after
            # pycapnp's parser opens imports as it finds them: it may read beneath
            # the files and import directories it was given, and nothing else; as
            # uid 0 if the zygote is root (the operator's files may be root's only),
            # but with no capability, signal, socket or file write (/dev/urandom:
            # for a file without an id, the parser suggests a random one)
            confine.confine_helper(None, zygote, [path, *imports, *after, *(
                p for p, _ in before), *(d for _, i in before for d in i), "/dev/urandom"])
            scope = {}
            exec(capnp_schemas.PARSE_AFTER, scope)
            scope["parse"](path, imports, before, *([after] if after else []))
            code = 0
        except BaseException:
            traceback.print_exc()          # what an interpreter would say of it
        finally:
            try:
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(w)
    joined(pid)
    try:        # until it ends, not until the end of file: what it forked may hold it
        status, text, why = collect(pid, r, SCHEMA_SECONDS + 5, 16 << 20)
    except OSError as e:
        return {"schema": 70, "stderr": f"cannot check the schema: {e}"}
    if why == "time":
        return {"schema": 70, "stderr": f"checking the schema took more than "
                f"{SCHEMA_SECONDS} s"}
    return {"schema": os.waitstatus_to_exitcode(status),
            "stderr": text[:1 << 16].decode("utf-8", "replace")}


#: The children collect() waits for, not reaped yet (group leaders: lead_group)
_collecting: set = set()
#: The zygote's compilers (serve sets it): their pids, group leaders too
_compilers = lambda: ()     # noqa: E731


def _end_groups():
    """End the groups of this process's compilers (and collect's child): at the
    zygote's end, whatever ends it.  Only those of a child not reaped yet, whose
    number is still its own."""
    for pid in {*_collecting, *_compilers()}:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            continue                # reaped already: the number may be another's now
        end_group(pid)


def _stop(signum, _frame):
    """The zygote's STOP (the supervisor's stop, or its death): every compiler's
    group ends first (and a schema parser's), and then the zygote, by that signal,
    as it did before; wherever it was (a send blocked, a schema's parse).  Also
    in_a_compiler's, for a signal that would end its caller."""
    _end_groups()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


class _Spare:
    """A child forked ahead of the next request, the same for every compartment: it
    has closed what is the zygote's, entered new IPC, UTS, network and (emptied) mount
    namespaces (confine.enter_early) and waits on its own socket (SOCK_SEQPACKET) for one
    request: the EngineSpec line, with its engine socket, stderr pipe and its
    module's two memfds.  Then it is that compartment's engine, and nothing else."""

    def __init__(self, pid: int, sock: socket.socket):
        self.pid = pid
        self.sock = sock


def _fork_spare(closing: list, zygote: int, wasm_engine, warm: tuple | None,
                rehearse: bool) -> _Spare:
    """`closing`: the zygote's descriptors (and sockets) a spare must not keep; `warm`:
    the built-in module's memfds, to rehearse on if `rehearse`, closed either way."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        raise
    if pid == 0:
        def spare() -> int:
            ours.close()
            _close_all(closing)
            signal.set_wakeup_fd(-1)
            return _spare(theirs, wasm_engine, zygote, warm, rehearse)
        _leave_with(spare)
    theirs.close()
    return _Spare(pid, ours)


def readable(f, timeout: float = 0.0) -> bool:
    """Whether `f` (a descriptor, or what has `fileno()`) has something to read, or
    its end, within `timeout` seconds (0: now).  poll(2), never select(2), which
    raises for a descriptor past 1,023: a zygote started by a supervisor that holds
    more (launched by a process that left many open; or a second zygote, started
    by process.py when the first did not answer, after a big system's grants are
    open) gets its control socket's number from it, past 1,023, and select ended
    it at its first start that found no spare ("the zygote is gone").  The
    supervisor's checks of one descriptor, the tests' and the fuzzers' waits use
    it too."""
    poller = select.poll()
    poller.register(f, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _close_all(items):
    """Close descriptors (ints) and sockets, in a forked child."""
    for item in items:
        if isinstance(item, socket.socket):
            item.close()
        else:
            os.close(item)


def _leave_with(run):
    """In a forked child: run `run()` and exit with its code; never returns.  A bug
    says where on stderr (the child's own, or the zygote's) and exits with 70."""
    code = 70
    try:
        code = run()
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


#: What a spare uses, bound by serve() before it forks any: a child finds them here
#: without an import statement, whose machinery (importlib's _handle_fromlist, each
#: module's __spec__) copies ~30 pages in every engine (docs/performance.md, "Start-up,
#: fifth pass").
wasmtime = confine = engine = wasm = EngineSpec = None


def _spare(sock: socket.socket, wasm_engine, zygote: int, warm: tuple | None,
           rehearse: bool) -> int:
    confine.die_with_parent(zygote)       # it may wait long: never outlive the zygote
    confine.rank_first_for_oom()          # out of memory: engines go before the supervisor
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    if null > 2:
        os.close(null)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _defaults()
    unconfined = None
    try:
        confine.enter_early()
    except OSError as e:                  # said once there is a stderr to say it on
        unconfined = e
    if warm is not None:                  # the built-in module's memfds (_warm_up)
        try:
            if rehearse and not readable(sock):   # no request yet
                _rehearse(wasm_engine, warm)
        except Exception:  # noqa: BLE001 - only an optimisation
            pass
        finally:
            for fd in warm:
                os.close(fd)
    try:
        line, fds, flags, _addr = socket.recv_fds(sock, 1 << 18, 4)   # a line < 64 KiB
    except OSError:
        return 0
    sock.close()
    if not line and not fds:
        return 0                          # the zygote is gone
    if len(fds) != 4 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        return 70                         # not a request of ours: a bug, never an engine
    sock_fd, err_fd, code_fd, description_fd = fds
    os.dup2(err_fd, 2)
    if err_fd > 2:
        os.close(err_fd)
    if unconfined is not None:
        print(f"error: cannot confine the engine: {_one_line(unconfined)}", file=sys.stderr)
        return engine.EXIT_CONFINE
    return _child(EngineSpec.from_json(line), sock_fd, (code_fd, description_fd),
                  wasm_engine, zygote)


#: The wasmtime engine (wasm.engine_config(probed=True)) in which an engine child
#: runs a module rewritten with probe sites; made by `serve`, with the zygote's own
_probed_engine = None


def _child(spec, sock_fd: int, module_fds: tuple, wasm_engine, zygote: int) -> int:
    code_fd, description_fd = module_fds
    # Module.deserialize trusts its input, which a compiler wrote (hostile bytes
    # went through it): root's uid and capabilities go before it, for the
    # engine's user (confine() does the rest; it finds root gone)
    try:
        confine.drop_root_early(spec.user, zygote)
    except OSError as e:
        os.close(code_fd)
        os.close(description_fd)
        print(f"error: cannot confine the engine: {_one_line(e)}", file=sys.stderr)
        return engine.EXIT_CONFINE
    try:
        description = wasm.Description.from_json(
            os.pread(description_fd, os.fstat(description_fd).st_size, 0))
        if description.sites is not None and _probed_engine is not None:
            # a rewritten module's clones need more wasm stack than its functions
            # (wasm.wasm_stack): turning a probe on trapped a recursion that ran as
            # built.  Its code, compiled by wasm_engine's configuration, loads here
            wasm_engine = _probed_engine
        with confine.proc_path(f"fd/{code_fd}") as path:   # after enter_early: relative
            module = wasmtime.Module.deserialize_file(wasm_engine, path)
            # instance = "per_call": its calls' instances from a pool of their own,
            # whose engine loads the code from the same memfd (engine.pool_for)
            pool = engine.pool_for(spec, description.sites is not None,
                                   lambda e: wasmtime.Module.deserialize_file(e, path))
    except (OSError, ValueError, KeyError, wasmtime.WasmtimeError) as e:
        print(f"error: {_one_line(f'cannot load module {spec.module}: {e}')}",
              file=sys.stderr)
        return engine.EXIT_CANNOT_LOAD
    finally:
        os.close(code_fd)
        os.close(description_fd)
    return engine.run(spec, sock_fd, module, wasm_engine, description, parent=zygote,
                      pool=pool)


def _refuse(spec, error: str, sock_fd: int, err_fd: int, zygote: int) -> int:
    """A child that only says why its module cannot be loaded (as an engine would)."""
    from . import engine
    os.dup2(err_fd, 2)
    print(f"error: {_one_line(error)}", file=sys.stderr)
    return engine.EXIT_CANNOT_LOAD


def _one_line(text) -> str:
    """An engine child's last words, one line as the engine writes its own
    (printable): a module path with a newline in a folder's name split the line,
    and the part past it went to the callers without their paths taken out
    (runtime.told_callers matches the path as printable writes it)."""
    from capnp_schemas.text import printable
    return printable(str(text))


#: Times the zygote walks an engine's start before it freezes: CPython 3.11 rewrites
#: a function's code in place (quickening, specialization) once it has run about 8
#: times; done here, engines run code that no longer changes (~45 fewer pages
#: copied each, docs/performance.md).
WARM_UPS = 8

_WARM_UP = """(module
  (import "wsuper" "params_read" (func (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "warm-up")
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) (i32.const 0)))"""


def _warm_up(wasm_engine) -> tuple | None:
    """Walk here (WARM_UPS times) the path every engine walks (a module of our own:
    no compartment's), so that what it initializes lazily is shared by the children.
    Returns that module's memfds (spares walk it again: _rehearse), or None."""
    import tempfile
    try:
        d = tempfile.TemporaryDirectory()
    except OSError:
        return None                         # only an optimisation
    with d:
        path = os.path.join(d.name, "warm-up.wat")
        with open(path, "w") as f:
            f.write(_WARM_UP)
        fds, error = _Modules(wasm_engine).get(path)
    if error:
        return None
    for _ in range(WARM_UPS):
        _rehearse(wasm_engine, fds)
    return fds


def _warm_up_fork_handlers():
    """Run here, WARM_UPS times, what CPython runs in every forked child before any of
    our code (the stdlib's os.register_at_fork handlers: threading's and logging's;
    random's reseeding costs no pages), so that their code, like the engine's (_warm_up),
    is quickened in the pages the children share: ~60 fewer pages copied by the time
    a child runs its first line, ~30 fewer over an engine's whole start
    (docs/performance.md, "Start-up, fifth pass").  In this process, which has one
    thread and no lock held, they change nothing a fork would not.  Only an
    optimisation: skipped if the interpreter's handlers are not the ones we know."""
    threading, logging = sys.modules.get("threading"), sys.modules.get("logging")
    handlers = [getattr(threading, "_after_fork", None),     # (if imported: pycapnp's
                getattr(logging, "_after_at_fork_child_reinit_locks", None)]   # asyncio)
    handlers = [h for h in handlers if h is not None]
    if not handlers or threading is None or threading.active_count() != 1:
        return
    try:
        for _ in range(WARM_UPS):
            for handler in handlers:
                handler()
    except Exception:  # noqa: BLE001 - only an optimisation
        pass


def _rehearse(wasm_engine, fds: tuple):
    """An engine's start-up on the built-in module (`fds`: its memfds), thrown away:
    in the zygote, what it initializes lazily is then shared; in a spare, the pages
    it writes (reference counts, allocator pools) are copied then, before a request
    waits for them."""
    import wasmtime

    from . import confine, engine, wasm
    from .spec import EngineSpec
    code, desc = fds
    with confine.proc_path(f"fd/{code}") as path:     # in a spare, after enter_early
        module = wasmtime.Module.deserialize_file(wasm_engine, path)
    description = wasm.Description.from_json(os.pread(desc, os.fstat(desc).st_size, 0))
    a, b = socket.socketpair()
    with a, b:
        e = engine.Engine(a, EngineSpec("warm-up", "warm-up.wat", exports=True), module,
                          wasm_engine, description)
        _warm_up_start(e)
    e.store.close()         # its instance, memory and host functions: gone now,
    module.close()          # and the module with its image; nothing is inherited


def _warm_up_start(e):
    """The supervisor's first two questions to a new engine (bootstrap, Engine.start),
    asked here, so that what answering them first initializes is shared too."""
    from capnp_schemas import payloads, protocol

    from . import engine
    sup = protocol.Connection("warm-up")

    def ask(data):
        for ev in e.conn.receive(data):
            e._on_event(ev)
        out = b"".join(e._outgoing)
        e._outgoing.clear()
        return sup.receive(out)
    try:
        _qid, data = sup.send_bootstrap()
        (boot,) = ask(data)
        _qid, data = sup.send_call(boot.payload.caps[0].import_id, engine.ENGINE_INTERFACE, 0,
                                   payloads.grants_content([]))
        ask(data)
    except Exception:  # noqa: BLE001 - only an optimisation
        pass


def serve(control: socket.socket, supervisor_pid: int):
    """The zygote, until the supervisor is gone.  Its end (that, its STOP at the
    stop or at the supervisor's death: _stop, a bug) ends every compiler's group
    first: a compiler dies with the zygote (PR_SET_PDEATHSIG), but what it forked
    does not (the setting is not inherited), and lived on after `wsuper up`, with
    whatever the module's code made of it."""
    try:
        _serve(control, supervisor_pid)
    except (BrokenPipeError, ConnectionResetError):
        pass        # the supervisor is gone, our answers unread: an end, not a traceback
    finally:
        _end_groups()


def _serve(control: socket.socket, supervisor_pid: int):
    global wasmtime, confine, engine, wasm, EngineSpec     # for the spares (above)
    global _compilers, _probed_engine
    import wasmtime

    from . import abi, confine, engine, unchecked, wasm
    from .spec import EngineSpec, SpecError
    # STOP, not SIGKILL, at the supervisor's death: it ends the compilers' groups
    # too (_stop), which PR_SET_PDEATHSIG alone never reaches
    confine.die_with_parent(supervisor_pid, STOP)
    for sig in IGNORED:        # main did, unless serve runs without it
        signal.signal(sig, signal.SIG_IGN)
    zygote = os.getpid()
    wasm_engine = wasmtime.Engine(wasm.engine_config())
    # an engine whose module has probe sites runs it in this one (more wasm stack,
    # the same compiled code: _child)
    _probed_engine = wasmtime.Engine(wasm.engine_config(probed=True))
    for params, results in (*abi.IMPORTS.values(), *abi.WASI_IMPORTS.values()):
        for shared in (wasm_engine, _probed_engine):          # shared by the children
            unchecked.func_type(params, results, shared)
    confine.prepare()                      # what engines need to confine themselves
    modules = _Modules(wasm_engine)
    _compilers = modules.running
    signal.signal(STOP, _stop)
    warm = _warm_up(wasm_engine)          # the built-in module's memfds, or None
    _warm_up_fork_handlers()
    # the empty mount namespace engines copy (as root), made after the warm-up's
    # compiler: no child but a spare ever holds it (`theirs`)
    confine.make_mount_template()
    template = confine.mount_template()
    # no gc.collect() first: it walks the whole heap (~20 ms of CPU, ~40 ms of the
    # wall time before the first spawn), and what it would free is never touched
    # by the children (docs/performance.md, "Many compartments, fourth pass")
    gc.freeze()
    gc.enable()                            # off since main() began
    #: the control socket's lines (_Lines), and the whole ones not handled yet, each
    #: with its descriptors: [(line, fds, too_long)]
    lines = _Lines()
    received: collections.deque = collections.deque()
    children: set[int] = set()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    spares: list[_Spare] = []

    def theirs() -> list:
        """What is the zygote's, for a child that is not a spare (a compiler, a
        schema parser, a refusal) to close: closing()'s, the built-in module's
        memfds, and the empty mount namespace, which a spare keeps for its own."""
        return closing() + list(warm or ()) + ([template] if template is not None else [])
    modules.zygote_own = theirs
    #: requests waiting for their module's compile, by what it is compiled for
    #: (_Compile.want): [(id, line, spec, fds)]; and the compiles that wait for a
    #: slot (COMPILES at once), in the order they were asked for: [(want, args)]
    parked: dict[tuple, list] = {}
    queued: collections.deque = collections.deque()
    #: requests whose module file changed under a compile that failed: how many
    #: times each was compiled again for its file as it is now (RECOMPILES at most)
    recompiled: dict = {}

    def closing() -> list:
        """What is the zygote's, for a spare to close: the control socket, the wake-up
        pipe, every module's memfds and every compiler's pipe, the other spares'
        sockets, the descriptors of the requests that wait for a compile, and of those
        read and not handled yet (or read in part)."""
        return [control, wake_r, wake_w, *modules.descriptors(),
                *(s.sock for s in spares),
                *(fd for requests in parked.values() for *_, fds in requests for fd in fds),
                *(fd for _line, fds, _long in received for fd in fds),
                *lines.descriptors()]
    try:
        spares.append(_fork_spare(closing(), zygote, wasm_engine, warm, True))
    except OSError:
        pass                          # tried again at the first request

    def hand_over(line: bytes, fds: list, module_fds: tuple) -> int:
        """The pid of the spare that took this request: the one waiting, or, when
        there is none or it is gone (a send to it fails), one forked now, which
        closes this request's descriptors first like everything else of the
        zygote's.  Raises OSError when neither could take it."""
        for attempt in range(2):
            spare = spares.pop() if spares else _fork_spare(
                closing() + list(fds), zygote, wasm_engine, warm, False)
            try:
                socket.send_fds(spare.sock, [line], [*fds, *module_fds])
                return spare.pid
            except OSError:
                if attempt:
                    raise
            finally:
                spare.sock.close()
        raise AssertionError("unreachable")

    def answer(msg: dict):
        recompiled.pop(msg.get("id"), None)     # answered: it waits no more
        control.sendall(json.dumps(msg).encode() + b"\n")

    def dispatch(ident, line: bytes, spec, fds: list, module_fds, error) -> None:
        """Answer request `ident`: a spare becomes its engine, or (its module cannot
        be loaded) a child that says why."""
        nonlocal deferred
        try:
            if module_fds is None:
                pid = os.fork()
            else:                     # a spare becomes this compartment's engine
                pid = hand_over(line, fds, module_fds)
        except OSError as e:          # out of descriptors, memory, processes: refuse this one
            for fd in fds:
                os.close(fd)
            answer({"error": f"cannot start an engine: {e}", "id": ident})
            return
        if pid == 0:
            def refuse() -> int:
                _defaults()                 # an engine's, to the stop
                _close_all(theirs())
                signal.set_wakeup_fd(-1)
                return _refuse(spec, error, fds[0], fds[1], zygote)
            _leave_with(refuse)
        for fd in fds:
            os.close(fd)
        children.add(pid)
        answer({"pid": pid, "id": ident})
        if not spares:                # the next one, while no request waits
            more = bool(received) or lines.pending() or \
                readable(control)
            # many requests in a row (wsuper up): no time to rehearse, and a few spares
            # forked back to back, since what this loop writes between two forks is
            # copied again after each one (docs/performance.md)
            for _ in range(SPARES_AHEAD if more else 1):
                try:
                    spares.append(_fork_spare(closing(), zygote, wasm_engine, warm, not more))
                except OSError:
                    break             # tried again at the next request
        if len(spares) < SPARES_IDLE and deferred is None:
            deferred = time.monotonic() + FORK_DELAY

    def start_compiles():
        """Start the compiles that wait, while fewer than COMPILES run; one that
        cannot start (no memory, processes) fails its requests."""
        while queued and len(modules.compiling) < COMPILES:
            want, args = queued.popleft()
            try:
                modules.start(want, args)
            except OSError as e:
                for ident, line, spec, fds in parked.pop(want, ()):
                    for fd in fds:
                        os.close(fd)
                    answer({"error": f"cannot compile module {args[0]}: {e}", "id": ident})

    def compiled(job: _Compile):
        """A compiler is done: keep what it made, and answer what waited for it."""
        began = job.began
        try:
            result = job.finish()
        finally:
            modules.compiling.pop(job.want, None)
        module_fds, error = modules.settle(job.want, began, *result)
        # one at a time, the others left among what a child closes: a spare forked
        # for one must never hold another's socket or stderr pipe
        requests = parked.get(job.want, [])
        while requests:
            ident, line, spec, fds = requests.pop(0)
            if error is not None and modules.changed(job.want) \
                    and recompiled.get(ident, 0) < RECOMPILES:
                # its file is not the one looked up any more (a chmod, a hard link,
                # a touch: its change time; or a new version): what failed was not
                # the module asked for now, which is compiled for it instead
                recompiled[ident] = recompiled.get(ident, 0) + 1
                load(ident, line, spec, fds)
                continue
            dispatch(ident, line, spec, fds, module_fds, error)
        parked.pop(job.want, None)
        start_compiles()

    def request(line: bytes, fds: list, too_long: bool) -> None:
        """One line from the supervisor: a module to compile, a schema to parse, or a
        request for an engine."""
        if line.startswith(b'{"compile":'):    # a module to compile now (launch.py)
            for fd in fds:
                os.close(fd)
            if not too_long:      # never answered: a hint (one too long is no spec)
                compile_soon(line)
            return
        if too_long:
            answer({"error": "engine request: too long", "id": _request_id(line)})
            return
        if line.startswith(b'{"schema":'):     # a schema to parse (supervisor/launch.py)
            for fd in fds:
                os.close(fd)
            answer(_parse_schema(line, theirs()))
            return
        ident = _request_id(line)
        line = line.partition(b" ")[2]
        try:
            if ident is None:
                raise SpecError("a request starts with its number and a space")
            if len(fds) != REQUEST_FDS:
                raise SpecError(f"expected {REQUEST_FDS} descriptors, got {len(fds)}")
            spec = EngineSpec.from_json(line)
        except (SpecError, ValueError, TypeError) as e:
            for fd in fds:
                os.close(fd)
            answer({"error": f"engine request: {e}", "id": ident})
            return
        load(ident, line, spec, fds)

    def compile_soon(line: bytes) -> None:
        """{"compile": SPEC}: compile the module of that EngineSpec now, as its first
        request would, and keep it; no answer, and no engine.  `wsuper up` asks it
        for every module as soon as its policy names them, so that the first start
        finds its module compiled (its compile ran beside the supervisor's preflight,
        not after it).  A spec refused, a module that cannot be compiled: its first
        request says so, as it would have (`load`)."""
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or set(obj) != {"compile"}:
                raise SpecError("a compile request is {\"compile\": SPEC}")
            spec = EngineSpec.from_json(json.dumps(obj["compile"]).encode())
            _fds, _error, want = modules.lookup(spec.module, spec.instrument,
                                                spec.protect, spec.limits.memory)
        except (SpecError, ValueError, TypeError, RecursionError, OSError):
            return                  # its requests, if any, meet the same and say it
        if want is None or want in parked:
            return                  # compiled, failed already, or under way
        queued.append((want, (spec.module, spec.instrument, spec.protect,
                              spec.limits.memory, spec.user)))
        parked[want] = []           # the requests for it wait on this compile
        start_compiles()

    def load(ident, line: bytes, spec, fds: list) -> None:
        """Answer request `ident` with its module as its file is now: compiled, failed,
        or compiled first (parked meanwhile)."""
        try:
            module_fds, error, want = modules.lookup(spec.module, spec.instrument,
                                                     spec.protect, spec.limits.memory)
        except OSError as e:
            for fd in fds:
                os.close(fd)
            answer({"error": f"cannot start an engine: {e}", "id": ident})
            return
        if want is None:
            dispatch(ident, line, spec, fds, module_fds, error)
            return
        # its module is compiled beside this loop: other requests go on meanwhile
        if want not in parked:
            queued.append((want, (spec.module, spec.instrument, spec.protect,
                                  spec.limits.memory, spec.user)))
        parked.setdefault(want, []).append((ident, line, spec, fds))
        start_compiles()

    deferred = time.monotonic() + FORK_DELAY     # when to fork the next spare (SPARES_IDLE)
    beat = time.monotonic() + BUSY_EVERY          # the next {"busy": N} while requests wait
    control_fd = control.fileno()
    while True:
        waiting = sum(len(requests) for requests in parked.values())
        if waiting and time.monotonic() >= beat:
            control.sendall(json.dumps({"busy": waiting}).encode() + b"\n")
        if not waiting or time.monotonic() >= beat:
            beat = time.monotonic() + BUSY_EVERY
        until = [job.deadline for job in modules.compiling.values() if not job.timed_out]
        if deferred is not None:
            until.append(deferred)
        if waiting:
            until.append(beat)
        timeout = max(0.0, min(until) - time.monotonic()) if until else None
        jobs = {job.pipe: job for job in modules.compiling.values() if not job.eof}
        # poll, not select: a compiler's pipe may be numbered above FD_SETSIZE (the
        # zygote holds two memfds a module, two descriptors a waiting request)
        poller = select.poll()
        for fd in (control_fd, wake_r, *jobs):
            poller.register(fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(None if timeout is None else timeout * 1000)}
        if deferred is not None and control_fd not in ready and time.monotonic() >= deferred:
            deferred = None                   # no request waits: fork it now
            while len(spares) < SPARES_IDLE:
                try:
                    spares.insert(0, _fork_spare(closing(), zygote, wasm_engine, warm, True))
                except OSError:
                    break             # tried again at the next request
        for job in modules.compiling.values():
            if not job.timed_out and job.status is None and time.monotonic() >= job.deadline \
                    and not job.ended():
                job.timed_out = True        # reaped below once dead, then settled
                end_group(job.pid)
        if wake_r in ready:
            os.read(wake_r, 512)
            compilers = {job.pid for job in modules.compiling.values() if job.status is None}
            while True:
                try:        # who ended, left a zombie: a compiler's group ends first
                    info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    break
                if info is None or info.si_pid == 0:
                    break
                if info.si_pid in compilers:
                    end_group(info.si_pid)
                pid, status = os.waitpid(info.si_pid, 0)
                if pid not in children:       # a compiler, or a spare (never handed on)
                    for job in modules.compiling.values():
                        if job.pid == pid:
                            job.status = status
                    for s in [s for s in spares if s.pid == pid]:
                        spares.remove(s)
                        s.sock.close()
                    continue
                children.discard(pid)
                answer({"exit": pid, "code": os.waitstatus_to_exitcode(status)})
        for fd, job in jobs.items():
            if fd in ready:
                job.read()
        for job in [job for job in modules.compiling.values() if job.status is not None]:
            job.drain()
            compiled(job)
        if control_fd not in ready:
            continue
        data, fds, _flags, _addr = socket.recv_fds(control, 1 << 16, REQUEST_FDS + 1)
        if not data:
            return                          # the supervisor is gone
        whole, stray = lines.feed(data, fds)
        for fd in stray:
            os.close(fd)
        received.extend(whole)
        while received:                     # every whole line, in order
            line, fds, too_long = received.popleft()
            request(line, fds, too_long)

class _Lines:
    """The control socket's bytes cut into lines, each with the descriptors that came
    with it: protocol state only (it closes nothing; the loop does).  The
    supervisor sends a request's two descriptors with its first bytes; a line
    longer than half the socket's send buffer goes in pieces, and the kernel
    hands the descriptors over with the read that reaches the piece they came
    with, and ends that read there: so they belong to the last line that *starts*
    in that read's bytes.  (They were taken for the first line that *ended*
    there: a request in pieces had its descriptors closed and was refused, and
    one whose last piece was read together with the next request's first piece
    took that request's socket and stderr pipe.)"""

    def __init__(self, limit: int = 1 << 16):
        self.limit = limit
        self._buf = b""            # the line being received (never a whole one)
        self._fds: list = []       # its descriptors
        self._skip = False         # dropping the rest of a line that was too long

    def feed(self, data: bytes, fds: list) -> tuple[list, list]:
        """([(line, fds, too_long)], stray): the lines `data` completes, in order,
        and the descriptors to close (they came where no line starts, which the
        supervisor never does, or with a line dropped).  A line too long comes once,
        cut, with too_long True and no descriptors; the rest of it is dropped."""
        total = self._buf + data
        stray: list = []
        start = None                  # where the line the descriptors came with starts
        if fds:
            nl = total.rfind(b"\n", len(self._buf), len(total) - 1)
            start = nl + 1 if nl >= 0 else (0 if not self._buf and total else None)
            if start is None or (start == 0 and self._skip):
                stray, fds, start = list(fds), [], None
        out, pos = [], 0
        while True:
            end = total.find(b"\n", pos)
            mine = (self._fds if pos == 0 else []) + (fds if pos == start else [])
            if end < 0:
                break
            if pos == 0 and self._skip:          # the end of a line too long
                self._skip = False
                stray += mine
            else:
                out.append((total[pos:end], mine, False))
            pos = end + 1
        rest = total[pos:]
        if pos == 0 and self._skip:              # still in a line too long
            self._buf, self._fds = b"", []
            stray += mine
        elif len(rest) > self.limit:
            out.append((rest[:self.limit], [], True))
            self._buf, self._fds, self._skip = b"", [], True
            stray += mine
        else:
            self._buf, self._fds = rest, mine
        return out, stray

    def descriptors(self) -> list:
        """Those of the line being received: the zygote's until it is whole."""
        return list(self._fds)

    def pending(self) -> bool:
        return bool(self._buf)


def _request_id(line: bytes) -> int | None:
    """The number a request starts with (the supervisor's, to match its answer)."""
    head = line[:21].partition(b" ")
    return int(head[0]) if head[1] and head[0].isdigit() else None


#: Signals the zygote ignores: the supervisor decides when it stops (Zygote.stop:
#: STOP; and the kernel's when the supervisor dies: PR_SET_PDEATHSIG).  A SIGTERM
#: sent to every process of the service at once (systemd's KillMode=control-group,
#: its default, `kill 0`) killed the zygote too, and the supervisor, seeing it gone
#: before its own SIGTERM, said "the zygote is gone ... no compartment can start
#: again" and exited 1, not 143.  Its children take SIGTERM's and SIGHUP's defaults
#: back (_defaults).
IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: The zygote's stop: the supervisor's (Zygote.stop), and the kernel's when the
#: supervisor dies (PR_SET_PDEATHSIG).  Its handler (_stop) ends every compiler's
#: group first, then the zygote by this signal.  Not SIGTERM, which it ignores.
STOP = signal.SIGUSR2


def _defaults():
    """A child of the zygote (a spare, a compiler, the schema's parser, a refusal)
    takes SIGTERM's and SIGHUP's defaults back (IGNORED: an ignored disposition
    survives fork; every engine ignored SIGHUP), and STOP's (not the zygote's
    _stop).  SIGINT stays ignored, as it was before: the engine ignores it anyway
    (the supervisor decides when it stops)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(STOP, signal.SIG_DFL)


def main():
    for sig in IGNORED:        # first thing: its imports and warm-up take ~150 ms
        signal.signal(sig, signal.SIG_IGN)
    # no cyclic garbage collection until the heap is frozen (_serve): collections
    # during the imports and the warm-up cost CPU on the way to the first spawn and
    # free blocks in pages every engine then shares and writes to
    gc.disable()
    control = socket.socket(fileno=int(sys.argv[1]))
    try:
        # the namespace probe (confine.prepare reads its report), forked now, while
        # this process is small and has imported nothing heavy: it runs beside the
        # imports (~0.2 s) instead of after them, ~8 ms before the first request
        # could be served (docs/performance.md, "Each module compiled once")
        from . import confine
        confine.probe_soon()
        serve(control, int(sys.argv[2]))
    except ImportError as e:     # unchecked.WasmtimeInternalsChanged, most likely
        print(f"wsuper zygote: {e}", file=sys.stderr, flush=True)
        os._exit(1)
    except OSError as e:
        # what it could not get as it began (a fork to try the namespaces or to
        # compile the warm-up module: a pids cgroup or RLIMIT_NPROC reached, no
        # memory): a traceback on the terminal `up` ran in; one line now (the
        # supervisor says the zygote is gone)
        try:
            print(f"wsuper zygote: cannot go on: {e.strerror or e}", file=sys.stderr,
                  flush=True)
        except OSError:
            pass
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    main()
