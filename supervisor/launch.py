"""Starting the zygote process (compartments/zygote.py), and nothing else.

Kept apart from process.py (which needs trio): `wsuper up` starts the zygote
first thing, before the CLI imports anything heavy, so that the zygote's
start-up (imports, preparation: ~150-250 ms) overlaps the supervisor's own.
Start it from the thread that will run trio: see process.py on
PR_SET_PDEATHSIG.
"""
from __future__ import annotations

import json
import os
import socket as pysocket
import subprocess
import sys


#: How long a schema's parse may take (the zygote's child: CPU and wall clock).
SCHEMA_SECONDS = 60


#: Bytes of the zygote's answer about a schema (the parser's text is cut at 64 KiB)
ANSWER_LIMIT = 1 << 20

#: Bytes of compile requests at most that `wsuper up` sends the zygote at once
#: (Launched.compile_soon), which may not read them yet (its imports): well inside
#: a socket's buffer, so the send never waits; ~150 modules, and a module left out
#: compiles at its first start
COMPILE_SOON_BYTES = 48 << 10


class Launched:
    """A zygote process started, not yet spoken to: `wsuper up` starts it first thing,
    so that its ~150 ms of imports and preparation overlap the supervisor's own
    (policy, preflight).  Start it from the thread that will run trio (see above)."""

    def __init__(self):
        raise_fd_limit()                 # the zygote, and so its engines, inherit it
        ours, theirs = pysocket.socketpair(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-I", "-m", "compartments.zygote", str(theirs.fileno()),
                 str(os.getpid())], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, env={}, cwd="/", start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock: pysocket.socket | None = ours

    def parse_schema(self, path: str, imports: list, before=(), after=()
                     ) -> tuple[int, str] | None:
        """Have the zygote parse a schema file in a child of its own (pycapnp's parser
        can abort a process; compartments/zygote.py): (its exit code, what the parser
        printed), as capnp_schemas.parse_elsewhere wants it.  None when the zygote
        did not answer: it is then discarded (`wsuper up` starts another), and the
        file is parsed another way.  Asked before the supervisor's first spawn, so
        no other answer can come first."""
        sock = self.sock
        if sock is None:
            return None
        try:
            sock.settimeout(SCHEMA_SECONDS + 10)
            sock.sendall(json.dumps({"schema": path, "imports": list(imports),
                                     "before": [list(b) for b in before],
                                     "after": list(after)}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise OSError("the zygote is gone")
                data += chunk
                if len(data) > ANSWER_LIMIT:     # its text is 64 KiB at most, escaped
                    raise ValueError("an answer past ANSWER_LIMIT")
            answer = json.loads(data)
            code, text = answer["schema"], answer["stderr"]
            if not isinstance(code, int) or not isinstance(text, str):
                raise ValueError(answer)
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            # what is not an answer of the zygote's (JSON nested past the
            # interpreter's depth raised out of `wsuper up`): it is discarded
            self.discard()
            return None
        sock.settimeout(None)
        return code, text

    def compile_soon(self, system) -> None:
        """Have the zygote compile every module of `system` now, as each first start
        will want it (compartments/zygote.py: {"compile": SPEC}, no answer): its
        compiles then run beside the supervisor's own checks (preflight compiles
        each module too, to check it), not after them on the way to the first
        ready.  A hint only: a module not compiled yet is compiled at its first
        start as before, and what fails says so there.  At most COMPILE_SOON_BYTES
        of lines, so that the send never waits for the zygote."""
        from compartments.spec import EngineSpec
        sock = self.sock
        if sock is None:
            return
        seen, data = set(), b""
        for comp in system.compartments.values():
            spec = EngineSpec.of(comp, system.engine_user)
            variant = (spec.module, spec.instrument, spec.protect, spec.limits.memory)
            if variant in seen:
                continue
            seen.add(variant)
            line = b'{"compile":' + spec.to_json() + b"}\n"
            if len(data) + len(line) > COMPILE_SOON_BYTES:
                break
            data += line
        if data:
            try:
                sock.sendall(data)
            except OSError:
                pass            # gone: parse_schema or the first spawn finds it so

    def take(self) -> tuple[subprocess.Popen, pysocket.socket]:
        sock, self.sock = self.sock, None
        if sock is None:
            raise RuntimeError("this zygote was taken already")
        return self.popen, sock

    def discard(self):
        """Stop it, unless a Zygote took it: by its stop signal (end), and only then
        close its socket (closed first, the zygote could read its end and exit 0
        before the signal came: the full suite met that once)."""
        if self.sock is not None:
            end(self.popen)
            self.sock.close()
            self.sock = None


#: Seconds the zygote has to end by its stop signal (compartments/zygote.py STOP:
#: it ends its compilers' and the schema parser's process groups first, then
#: itself) before it is killed (one SIGSTOPped never ends by it)
STOP_GRACE = 2.0


def stop_signal() -> int:
    from compartments import zygote          # standard library imports alone
    return zygote.STOP


def end(popen: subprocess.Popen, grace: float | None = None):
    """End the zygote `popen`: its stop signal, then SIGKILL if it has not ended
    within `grace` (STOP_GRACE).  Killed at once, it never ended its compilers'
    groups, and what a compiler (or the schema parser, uid 0) forked outlived the
    whole system: PR_SET_PDEATHSIG ends the compiler alone."""
    if popen.poll() is None:
        try:
            popen.send_signal(stop_signal())
        except ProcessLookupError:
            pass
        try:
            popen.wait(STOP_GRACE if grace is None else grace)
        except subprocess.TimeoutExpired:
            popen.kill()
    popen.wait()


#: Descriptors below which no command starts (`ulimit -n` lower, its hard limit too,
#: less those open at launch beside 0, 1 and 2: fd_floor_problem):
#: the schemas' parser (pycapnp) aborts the process that runs out while it reads
#: (SIGABRT, a C++ `terminate`, no word of wsuper's), the zygote died in a
#: traceback, and `up` said only "[Errno 24] Too many open files".  The supervisor's
#: own reserve (runtime.FD_RESERVE_BASE) is as many.
FD_FLOOR = 64


def fd_floor_problem() -> str | None:
    """Raise the soft descriptor limit to the hard one (raise_fd_limit); why no
    command can run under it (fewer than FD_FLOOR left to open), or None.  What is
    left counts the descriptors open already beside 0, 1 and 2 (inherited at
    launch: a parent, a daemon manager that leaks its own): counted by the limit
    alone, 50 inherited under a limit of 64 passed the floor, and the schemas'
    parser aborted `up` and `check` (SIGABRT) as before it."""
    import resource
    soft = raise_fd_limit()
    if soft == resource.RLIM_INFINITY:
        return None
    held, below = _inherited_descriptors(soft)
    if soft - below >= FD_FLOOR:
        return None
    if not held:
        return (f"this process may open only {soft} file descriptors (RLIMIT_NOFILE, its "
                f"hard limit included); wsuper needs at least {FD_FLOOR}: raise it "
                f"(ulimit -n)")
    return (f"this process may open only {soft} file descriptors (RLIMIT_NOFILE, its hard "
            f"limit included), and {held} beside 0, 1 and 2 are open already (inherited "
            f"at launch): {max(soft - below, 0)} left, and wsuper needs at least "
            f"{FD_FLOOR}: raise the limit (ulimit -n), or launch it without them")


def _inherited_descriptors(limit: int) -> tuple[int, int]:
    """Descriptors open in this process beside 0, 1 and 2: how many, and how many of
    them take a place below `limit` (the soft RLIMIT_NOFILE).  One numbered `limit`
    or more (a parent opened it under a higher limit) takes none of the places a
    new descriptor is given (the lowest free number below the limit): counted
    against the floor, `ulimit -n 66` with one descriptor inherited low and three
    high was refused "62 left" of the 65 it had, and the count differed from the
    one without /proc below, which stops at the limit."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        fds = None
    if fds is not None:      # less the one listdir itself had open (below the limit)
        numbers = [int(fd) for fd in fds if fd.isdigit()]
        return (max(0, descriptors_below(numbers, 1 << 62) - 1),
                max(0, descriptors_below(numbers, limit) - 1))
    held = 0
    for fd in range(3, min(limit, 1 << 16)):
        try:
            os.fstat(fd)
            held += 1
        except OSError:
            pass
    return held, held


def descriptors_below(fds, limit: int) -> int:
    """How many of the descriptor numbers `fds` beside 0, 1 and 2 take a place under
    the soft limit `limit` (pure)."""
    return sum(1 for fd in fds if 2 < fd < limit)


def raise_fd_limit() -> int:
    """Each engine costs the supervisor a socket and a pipe: use the hard limit.
    Returns the limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft
