"""The engine control protocol: how the supervisor starts a compartment and runs it (pure).

Each engine's bootstrap object is its Engine (engine.capnp), which only the
supervisor holds:

  1. Bootstrap              -> the Engine
  2. Engine.start(grants)   -> the compartment's main object (if it exports an
                               interface) and whether it has a program (_start)
  3. Engine.run()           -> the program's exit code, or an exception (a trap)

The router keeps a *handler* for every question it has open on a peer: a
`Forward` for a call in transit, or one of the control steps below.  When the
answer comes back the router calls `handler.returned(router, peer, event)`;
when the peer is lost first, `handler.lost(router, peer, reason)`.  Every
answer from an engine is untrusted: it is decoded eagerly, and anything
malformed fails the step (the compartment failed to start), never the router.
"""
from __future__ import annotations

from capnp_schemas import engine as engine_schema, hosted, payloads, protocol
from capnp_schemas.payloads import DecodeError, StartResults, grants_content, method_structs

from . import effects as fx
from .caps import CallError, Host

ENGINE_ID = engine_schema.Engine.schema.node.id
START, RUN = 0, 1
_RunResults = method_structs(engine_schema.Engine, "run")[1]
_RESULT_WORDS = 1 << 12          # start and run results are a few words


class Forward:
    """A call forwarded to this peer; the answer goes to `reply` (peer, answer id).
    `deadline`: when it fails if not answered (the router's clock); `size`: the
    bytes of its params (a call the native lane forwarded: as the lane
    counted them, once it hands the call over); `charged`: as
    Call.charged."""
    __slots__ = ("reply", "deadline", "size", "charged")

    def __init__(self, reply, deadline: float | None = None, size: int = 0,
                 charged=None):
        self.reply = reply
        self.deadline = deadline
        self.size = size
        self.charged = charged

    def returned(self, router, peer, ev):
        router.forward_returned(peer, ev, self.reply, self.charged)

    def lost(self, router, peer, reason):
        router.count(peer, False)
        router.fail(self.reply, CallError(f"compartment {peer.name} is gone: {reason}",
                                          "disconnected"))


class Bootstrap:
    """Step 1: the engine's bootstrap answer is its Engine; then start it with its grants."""

    def __init__(self, grants, hosts: dict):
        self.grants = grants          # policy.Grant, with `methods` resolved
        self.hosts = hosts            # grant name -> the host layer's object (host grants)

    def returned(self, router, peer, ev):
        caps = ev.payload.caps if ev.payload is not None else ()
        if not caps or not isinstance(caps[0], protocol.Imported):
            router.start_failed(peer, f"engine bootstrap failed: {ev.error or 'no capability'}")
            return
        peer.control = router.remote(peer, caps[0].import_id)
        peer.control.refs += 1
        names, granted = [], []
        for g in self.grants:
            kind = "compartment" if g.kind == "compartment" else g.target
            mount = (g.mount or f"/{g.name}") if kind == "directory" else ""
            names.append((g.name, kind, mount))
            label = f"{peer.name}.{g.name}"
            if g.kind == "compartment":
                cap, interface_id = router.proxies[g.target], router.proxies[g.target].interface_id
            else:
                cap = Host(g.target, peer.name, self.hosts.get(g.name), label)
                interface_id = hosted.BY_KIND[g.target].id
            if g.attenuated:
                cap = router.attenuate(cap, label, g, interface_id)
            granted.append(cap)
        try:
            router.call_peer(peer, peer.control.import_id, ENGINE_ID, START,
                             grants_content(names), granted, Start())
        except CallError as e:
            router.start_failed(peer, e.reason)

    def lost(self, router, peer, reason):
        router.emit(fx.StartFailed(peer.name, reason, peer.id))


class Start:
    """Step 2: the compartment's main object, and whether it has a program."""

    def returned(self, router, peer, ev):
        if ev.payload is None:
            router.start_failed(peer, ev.error)
            return
        try:
            caps = [router.import_cap(peer, c) for c in ev.payload.caps]
        except CallError as e:
            router.start_failed(peer, f"engine answered start() with {e.reason}")
            return
        try:
            program = payloads.read(StartResults, ev.payload.content, _RESULT_WORDS)["program"]
            index = ev.payload.content.cap_index((0,))
        except (DecodeError, ValueError) as e:
            router.sweep(caps)
            router.start_failed(peer, f"engine answered start() with a malformed message: {e}")
            return
        proxy = router.proxies.get(peer.name)
        if proxy is not None:
            main = caps[index] if index is not None and index < len(caps) else None
            if not router.is_remote_of(main, peer):
                router.sweep(caps)
                router.start_failed(peer, "engine did not return the compartment's main object")
                return
            router.connect_proxy(proxy, main)
        router.sweep(caps)
        router.emit(fx.Started(peer.name, program, peer.id))

    def lost(self, router, peer, reason):
        router.emit(fx.StartFailed(peer.name, reason, peer.id))


class Run:
    """Step 3: the program ran; its exit code, or why it failed."""

    def returned(self, router, peer, ev):
        if ev.payload is None:
            router.emit(fx.Exited(peer.name, None, ev.error, peer.id))
            return
        try:
            code = payloads.read(_RunResults, ev.payload.content, _RESULT_WORDS)["exitCode"]
        except DecodeError as e:
            router.emit(fx.Exited(peer.name, None, f"engine answered run() with a malformed "
                                                   f"message: {e}", peer.id))
            return
        router.emit(fx.Exited(peer.name, code, None, peer.id))

    def lost(self, router, peer, reason):
        router.emit(fx.Exited(peer.name, None, reason, peer.id))
