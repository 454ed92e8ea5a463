"""`wsuper up` with faults injected inside the supervisor, for the tests of the class
"one peer's trouble ends the supervisor" (tests/integration/test_injected_faults.py,
fuzz/faults.py).

    python -m tests.faults up SYSTEM.toml

runs the real command (supervisor.cli.run, in this process) after wrapping the
functions named in POINTS: each raises an exception of KINDS once, at its first
call that concerns the peer it is armed for, after a line `arm POINT PEER KIND` on
this process's stdin (PEER: a compartment's name, "client", or "-" for any).  It
writes `fault injected: POINT` on stderr as it raises.  The zygote it starts runs
zygote_main, which wraps two points of every engine's (ENGINE_POINTS: set off by
a call whose params hold a marker).  Nothing of this is in the supervisor or the
engine: the wrapping is done here, in processes only this module starts, so no
policy, guest or client can reach it.  tests/faultcases.py has the system and
the checks (tests/integration/test_injected_faults.py, fuzz/faults.py).
"""
from __future__ import annotations

import os
import sys
import threading

#: point -> what it stands for (the boundary whose inside raises)
POINTS = {
    "engine-input": "the router's handling of an engine's message (Router.receive)",
    "client-input": "the router's handling of an external client's message",
    "host-call": "a host call's dispatch (Supervisor._host_call)",
    "host-done": "a host call's completion (Router.host_returned)",
    "delivery": "a write to a peer's connection (its link's write)",
    "new-client": "a new external connection (Router.add_external)",
    "engine-lost": "the router's loss of an engine (Router.disconnected)",
    "engine-end": "the decision on an engine's end (Lifecycle.engine_stopped)",
    "engine-ready": "an engine's start acted on (Supervisor._on_started)",
    "respawn": "a compartment's restart (EngineSpec.of, in Supervisor._spawn)",
    "stderr": "the reader of an engine's stderr (StderrLines.finish)",
    "exit-watch": "the watch of an engine's process (Process._ended)",
    "admin-answer": "an admin request's answer (endpoint.encode)",
    "revoke": "a revocation (Router.revoke)",
    "probe": "a probe request (Prober.admin)",
    "tick": "the calls' clock (Router.native_tick / Router.next_deadline)",
    "accept": "the accept loop of the external socket (Supervisor._accept)",
    "spawn-late": "a restart, its engine made, before its reader runs (_lane_link)",
}


class FaultInjected(RuntimeError):
    """The unexpected exception a test injects (the kind "runtime")."""


def fault(kind: str, text: str) -> BaseException:
    """An exception of `kind` (KINDS): each of those the code under a boundary can
    raise that it does not expect."""
    import errno
    import struct
    if kind == "key":
        return KeyError(text)
    if kind == "assert":
        return AssertionError(text)
    if kind == "struct":
        return struct.error(text)
    if kind == "unicode":
        return UnicodeDecodeError("utf-8", b"\xff", 0, 1, text)
    if kind == "os":
        return OSError(errno.EIO, text)
    if kind == "memory":
        return MemoryError(text)
    if kind == "recursion":
        return RecursionError(text)
    if kind == "kj":
        import capnp
        return capnp.KjException(text)
    if kind == "group":            # as a nested nursery raises
        return ExceptionGroup("from a nursery", [FaultInjected(text)])
    return FaultInjected(text)


KINDS = ("runtime", "key", "assert", "struct", "unicode", "os", "memory", "recursion",
         "kj", "group")

_armed: dict = {}            # point -> (the peer it is armed for, "" for any; its kind)
_lock = threading.Lock()


def _fire(point: str, peer: str = "") -> None:
    with _lock:
        want = _armed.get(point)
        if want is None or (want[0] and want[0] != peer):
            return
        del _armed[point]
    os.write(2, f"fault injected: {point} {peer}\n".encode())
    raise fault(want[1], f"injected at {point}")


def _wrap(owner, name: str, point: str, peer_of=None, is_async: bool = False):
    """owner.name raises at `point` (peer_of(*args) names the peer it concerns)."""
    real = getattr(owner, name)
    if is_async:
        async def wrapped(*args, **kw):
            _fire(point, peer_of(*args) if peer_of else "")
            return await real(*args, **kw)
    else:
        def wrapped(*args, **kw):
            _fire(point, peer_of(*args) if peer_of else "")
            return real(*args, **kw)
    wrapped.__name__ = name
    setattr(owner, name, wrapped)


def install():
    from compartments import spec
    from supervisor import endpoint, output, process, prober, router, runtime, supervision

    def peer_name(rt, pid, *_):
        p = rt.peers.get(pid)
        if p is None:
            return ""
        return p.name if p.kind == "engine" else "client"

    def host_peer(rt, token, *_):
        entry = rt._host_calls.get(token)
        return entry[1].owner if entry is not None else ""

    def link_peer(link, *_):
        sup = _sup[0]
        if sup is None:
            return ""
        p = sup.router.peers.get(getattr(link, "pid", None) or _pid_of(sup, link))
        return p.name if p is not None and p.kind == "engine" else ""

    def _pid_of(sup, link):
        for pid, lk in sup.links.items():
            if lk is link:
                return pid
        return None

    _sup = [None]
    real_init = runtime.Supervisor.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        _sup[0] = self
    runtime.Supervisor.__init__ = init

    _wrap(router.Router, "receive", "engine-input", peer_name)
    _wrap(router.Router, "receive", "client-input", peer_name)
    _wrap(runtime.Supervisor, "_host_call", "host-call", lambda s, e: e.owner)
    _wrap(router.Router, "host_returned", "host-done", host_peer)
    _wrap(runtime._Link, "write", "delivery", link_peer)
    _wrap(runtime._NativeLink, "write", "delivery", link_peer)
    _wrap(router.Router, "add_external", "new-client")
    _wrap(router.Router, "disconnected", "engine-lost", peer_name)
    _wrap(supervision.Lifecycle, "engine_stopped", "engine-end", lambda s, name, *_: name)
    _wrap(runtime.Supervisor, "_on_started", "engine-ready", lambda s, e: e.compartment)
    real_of = spec.EngineSpec.of

    def of(comp, *a, **kw):
        _fire("respawn", comp.name)
        return real_of(comp, *a, **kw)
    spec.EngineSpec.of = staticmethod(of)
    _wrap(output.StderrLines, "finish", "stderr")
    _wrap(process.ForkedEngine, "_ended", "exit-watch", is_async=True)
    _wrap(endpoint, "encode", "admin-answer")
    _wrap(router.Router, "revoke", "revoke")
    _wrap(prober.Prober, "admin", "probe", is_async=True)
    _wrap(router.Router, "next_deadline", "tick")
    _wrap(runtime.Supervisor, "_accept", "accept", is_async=True)
    _wrap(runtime.Supervisor, "_lane_link", "spawn-late",
          lambda s, pid, *_: s.router.peers[pid].name if pid in s.router.peers else "")


def _arming():
    """`arm POINT PEER KIND` lines (PEER "-": any)."""
    for line in sys.stdin:
        words = line.split()
        if len(words) == 4 and words[0] == "arm" and words[1] in POINTS \
                and words[3] in KINDS:
            with _lock:
                _armed[words[1]] = ("" if words[2] == "-" else words[2], words[3])
            os.write(2, f"armed: {words[1]}\n".encode())


#: the engine's points: a call to Calc.add whose `a` is one of these, in any engine
#: (the zygote this process starts runs zygote_main, which wraps them before it forks)
ENGINE_POINTS = {
    1000000007: "engine-loop",     # the engine's loop, sending the answer (Engine._send)
    1000000009: "engine-call",     # the handling of that one call (Engine._outcome)
}


def zygote_main():
    """The zygote (compartments.zygote.main), its engines' code wrapped first."""
    import struct

    from compartments import engine, zygote
    marks = {struct.pack("<i", a): point for a, point in ENGINE_POINTS.items()}

    def check(data, point):
        for mark, p in marks.items():
            if p == point and mark in bytes(data):
                os.write(2, f"fault injected: {point}\n".encode())
                raise FaultInjected(f"injected at {point}")

    real_send, real_outcome = engine.Engine._send, engine.Engine._outcome

    def send(self, data):
        check(data, "engine-loop")
        return real_send(self, data)

    def outcome(self, status, frame):
        check(frame.params, "engine-call")
        return real_outcome(self, status, frame)
    engine.Engine._send, engine.Engine._outcome = send, outcome
    zygote.main()


def _zygote_here():
    """The zygote started by `wsuper up` runs zygote_main (launch.Launched)."""
    import subprocess

    from supervisor import launch
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    real = subprocess.Popen

    class Popen(real):
        def __init__(self, args, *a, **kw):
            if list(args[1:4]) == ["-I", "-m", "compartments.zygote"]:
                args = [args[0], "-I", "-c", f"import sys; sys.path.insert(0, {root!r}); "
                        f"from tests.faults import zygote_main; zygote_main()", *args[4:]]
            super().__init__(args, *a, **kw)
    launch.subprocess = type(sys)("subprocess")
    launch.subprocess.__dict__.update(subprocess.__dict__)
    launch.subprocess.Popen = Popen


def main():
    install()
    _zygote_here()
    threading.Thread(target=_arming, name="faults-arming", daemon=True).start()
    from supervisor import cli
    sys.argv = ["wsuper", *sys.argv[1:]]
    cli.run()


if __name__ == "__main__":
    main()
