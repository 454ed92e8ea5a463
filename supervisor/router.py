"""The reference monitor: routes Cap'n Proto RPC between connections (pure).

Bytes in, effects out: `Router.receive(peer, data)` feeds one connection and
returns what the runtime must do (send bytes, print a log line, note that a
compartment started or exited).  No trio, no sockets, no processes; the unit
tests drive it directly and the runtime (runtime.py) performs the effects.

Every call from a peer names a target in *that peer's* export table (its
c-list); the router resolves it to a capability object here and delivers the
call:
  Remote   an object hosted by an engine (or an external client): forward it
  Proxy    a compartment's main object, as granted by name in system.toml;
           calls wait while the compartment starts, fail once it is gone
  Host     an object the supervisor hosts itself (Log, the external Gateway)
Capabilities in params and results are translated from the sender's tables to
the receiver's; content bytes are spliced, never interpreted.  A peer that
breaks the protocol gets an Abort and is cut off; nobody else notices.
"""
from __future__ import annotations

import heapq
import inspect
import itertools
import os
import time

import attrs

from capnp_schemas import engine as engine_schema, host as host_schema, protocol, wire
from capnp_schemas.payloads import StartResults, grants_content, method_structs, with_capability
from capnp_schemas.protocol import Content, RemoteRef

from compartments.limits import Limits

from . import hostfs

LOG_LINE_LIMIT = 4096       # characters of one Log line that are shown
ENGINE_ID = engine_schema.Engine.schema.node.id
LOG_ID = host_schema.Log.schema.node.id
CLOCK_ID = host_schema.Clock.schema.node.id
RANDOM_ID = host_schema.Random.schema.node.id
DIRECTORY_ID = host_schema.Directory.schema.node.id
FILE_ID = host_schema.File.schema.node.id
ENVIRONMENT_ID = host_schema.Environment.schema.node.id
HOST_IDS = {"log": LOG_ID, "clock": CLOCK_ID, "random": RANDOM_ID, "directory": DIRECTORY_ID,
            "file": FILE_ID, "environment": ENVIRONMENT_ID}
DIRECTORY_METHODS = tuple(m.name for m in host_schema.Directory.schema.node.interface.methods)
FILE_METHODS = tuple(m.name for m in host_schema.File.schema.node.interface.methods)
RANDOM_MAX_BYTES = 65536
GATEWAY_ID = host_schema.Gateway.schema.node.id


_, RunResults = method_structs(engine_schema.Engine, "run")
LogWriteParams, _ = method_structs(host_schema.Log, "write")
GatewayGetParams, GatewayGetResults = method_structs(host_schema.Gateway, "get")
_, GatewayListResults = method_structs(host_schema.Gateway, "list")
_, ClockResults = method_structs(host_schema.Clock, "wall")
RandomParams, RandomResults = method_structs(host_schema.Random, "bytes")
_ENV_STRUCTS = {m: method_structs(host_schema.Environment, m) for m in ("args", "vars", "get")}
_DIR_STRUCTS = {m: method_structs(host_schema.Directory, m) for m in DIRECTORY_METHODS}
_FILE_STRUCTS = {m: method_structs(host_schema.File, m) for m in FILE_METHODS}
_FS_METHODS = {iid: [(m, *structs[m], "max_bytes" in inspect.signature(getattr(cls, m)).parameters)
                     for m in names]
               for iid, names, structs, cls in (
                   (DIRECTORY_ID, DIRECTORY_METHODS, _DIR_STRUCTS, hostfs.Directory),
                   (FILE_ID, FILE_METHODS, _FILE_STRUCTS, hostfs.File))}


# ------------------------------------------------------------------ effects


@attrs.frozen
class Send:
    peer: int
    data: bytes


@attrs.frozen
class Close:
    """Close this peer's connection (after an Abort was sent)."""
    peer: int
    reason: str


@attrs.frozen
class LogLine:
    compartment: str
    text: str


@attrs.frozen
class Started:
    compartment: str
    program: bool


@attrs.frozen
class StartFailed:
    compartment: str
    reason: str


@attrs.frozen
class Exited:
    compartment: str
    exit_code: int | None
    error: str | None = None


@attrs.frozen
class Notice:
    text: str


# ------------------------------------------------------------------ capabilities


class Cap:
    """A capability object in the supervisor.  Identity matters: never equal to another."""
    refs: int = 0


class Remote(Cap):
    """An object hosted by a peer, known to us by the peer's export id."""

    def __init__(self, peer: "Peer", import_id: int):
        self.peer = peer
        self.import_id = import_id
        self.refs = 0

    def __repr__(self):
        return f"Remote({self.peer.name}#{self.import_id})"


class Proxy(Cap):
    """A compartment's main object, as granted by name: stable across its lifetime."""

    def __init__(self, compartment: str, interface_id: int | None):
        self.compartment = compartment
        self.interface_id = interface_id
        self.target: Remote | None = None
        self.error: str | None = None
        self.error_type = "disconnected"
        self.queue: list = []
        self.refs = 0

    def __repr__(self):
        return f"Proxy({self.compartment})"


class Host(Cap):
    """An object the supervisor hosts: 'log', 'clock', 'random', 'directory', 'file'
    (for one compartment), or the external 'gateway'.  `obj` is the hostfs object
    of a directory or file; it is closed when the last reference goes."""

    def __init__(self, kind: str, owner: str, obj=None, path: str | None = None):
        self.kind = kind
        self.owner = owner
        self.obj = obj
        self.path = path          # the grant path (audit): "app.data", "app.data>Directory.open"
        self.refs = 0

    def __repr__(self):
        return f"Host({self.kind} of {self.owner})"


class Membrane:
    """The attenuation of one grant, shared by everything obtained through it.

    `allow`: (interface id, method id) pairs that may be called on interfaces in
    `restricted` (the granted one, and any the allow-list names); other
    interfaces pass.  Revoking kills the grant, everything derived from it, and
    the calls in flight through any of them.
    """

    def __init__(self, path: str, allow=None, restricted=frozenset(), revocable=False,
                 forward: "Membrane | None" = None):
        self.path = path
        self.allow = allow
        self.restricted = restricted
        self.revocable = revocable
        self.forward = forward            # set on a reverse membrane (params direction)
        self._revoked: str | None = None
        self.uses_left: int | None = None        # quotas, set for a grant's membrane
        self.expires_at: float | None = None
        self.rate: float | None = None
        self.tokens = 0.0
        self.refilled = 0.0
        self.wrappers: dict[int, Wrapped] = {}
        self.inflight: set = set()        # (peer id, answer id) of calls through it
        self.reverse = Membrane(path + " (passed back)", forward=self) \
            if revocable and forward is None else None

    @property
    def revoked(self) -> str | None:
        return self.forward.revoked if self.forward is not None else self._revoked

    def allows(self, interface_id: int, method_id: int) -> bool:
        if self.allow is None or interface_id not in self.restricted:
            return True
        return (interface_id, method_id) in self.allow


class Wrapped(Cap):
    """A capability seen through a membrane."""

    def __init__(self, target: Cap, membrane: Membrane, path: str):
        self.target = target
        self.membrane = membrane
        self.path = path
        self.refs = 0

    def __repr__(self):
        return f"Wrapped({self.path})"


@attrs.frozen
class GrantSpec:
    """One grant as the router needs it (from system.toml via the runtime)."""
    local: str
    kind: str                      # "compartment" | "host"
    target: str
    allow: frozenset | None = None
    revocable: bool = False
    max_uses: int | None = None
    expires_after: float | None = None
    calls_per_second: float | None = None
    path: str | None = None
    read_only: bool = False
    append_only: bool = False
    subdir: str | None = None
    max_bytes_written: int | None = None
    args: tuple = ()
    vars: tuple = ()
    mount: str | None = None       # directory grants: the path a WASI program sees

    @property
    def attenuated(self) -> bool:
        return self.allow is not None or self.revocable or self.max_uses is not None \
            or self.expires_after is not None or self.calls_per_second is not None


@attrs.frozen
class Audit:
    """One capability call, for the audit log (emitted when it ends, or when denied)."""
    record: dict


@attrs.frozen
class Denied:
    """A call refused by attenuation: shown on the terminal."""
    text: str
    caller: str = ""


@attrs.frozen
class _Call:
    """A call waiting somewhere (on a starting compartment, on an unreturned answer)."""
    interface_id: int
    method_id: int
    content: Content
    caps: tuple
    reply: tuple            # (peer, answer_id)


class CallError(Exception):
    def __init__(self, reason: str, type: str = "failed"):
        super().__init__(reason)
        self.reason = reason
        self.type = type


class _Denial(CallError):
    """Refused by attenuation (allow-list, revocation)."""


def _describe(cap) -> str:
    if isinstance(cap, Wrapped):
        return cap.path
    if isinstance(cap, Proxy):
        return f"{cap.compartment} (main object)"
    if isinstance(cap, Remote):
        return f"{cap.peer.name} object #{cap.import_id}"
    if isinstance(cap, Host):
        return cap.path or f"{cap.kind} of {cap.owner}"
    return type(cap).__name__


class Peer:
    """One connection: an engine (compartment) or an external client."""

    def __init__(self, pid: int, name: str, kind: str, limits: Limits):
        self.id = pid
        self.name = name
        self.kind = kind                 # "engine" | "external"
        self.limits = limits
        # a message carries content plus headers: allow the headers on top
        self.conn = protocol.Connection(name, max_message_words=(limits.message_size >> 3) + 8192)
        self.remotes: dict[int, Remote] = {}
        self.alive = True
        self.control: Remote | None = None

    def __repr__(self):
        return f"Peer({self.name})"


# ------------------------------------------------------------------ the router


class Router:
    def __init__(self, compartments: dict[str, int | None], external: tuple = (),
                 limits: dict | None = None, external_limits: Limits = Limits(),
                 clock=time.monotonic, names: dict | None = None, audit: bool = False,
                 wall_ns=time.time_ns, monotonic_ns=time.monotonic_ns, entropy=os.urandom,
                 filesystem=hostfs):
        """`compartments`: name -> interface id of its main object (None: exports nothing).
        `limits`: name -> Limits (default Limits()).  `clock` times call_time.
        `names`: interface id -> (name, {method id: name}), for messages and the audit."""
        self.limits = limits or {}
        self.wall_ns, self.monotonic_ns, self.entropy = wall_ns, monotonic_ns, entropy
        self.filesystem = filesystem
        self.names = names or {}
        self.audit = audit
        self.membranes: dict[str, Membrane] = {}        # grant path -> membrane
        self._through: dict[tuple, list] = {}            # reply key -> membranes crossed
        self._audit_open: dict[tuple, tuple] = {}        # reply key -> (record, start)
        self.clock = clock
        self._deadlines: list = []                  # heap of (deadline, peer id, question id)
        self._log_budget: dict[str, list] = {}      # compartment -> [tokens, last refill]
        self.external_limits = external_limits
        self.peers: dict[int, Peer] = {}
        self.engines: dict[str, Peer] = {}
        self.proxies = {name: Proxy(name, iid) for name, iid in compartments.items()
                        if iid is not None}
        self.external = tuple(external)
        self.gateway = Host("gateway", "external")
        self._ids = itertools.count(1)
        self._pending: dict[tuple, object] = {}     # (peer id, question id) -> handler
        self._pipelined: dict[tuple, list] = {}     # (peer id, answer id) -> [_Call]
        self._out: list = []

    # ------------------------------------------------------------ peers

    def add_engine(self, name: str, grants: list[tuple[str, str, str]]) -> tuple[int, list]:
        """A new engine connection for compartment `name`; starts its bootstrap.

        `grants` is a list of GrantSpec.
        """
        grants = [g if isinstance(g, GrantSpec) else GrantSpec(*g) for g in grants]
        peer = self._new_peer(name, "engine", self.limits.get(name, Limits()))
        self.engines[name] = peer
        proxy = self.proxies.get(name)
        if proxy is not None:          # a (re)start: calls wait for it, then go to it
            proxy.target, proxy.error = None, None
        qid, data = peer.conn.send_bootstrap()
        self._pending[(peer.id, qid)] = ("bootstrap", grants)
        self._out.append(Send(peer.id, data))
        return peer.id, self._flush()

    def add_external(self, label: str = "external") -> int:
        return self._new_peer(label, "external", self.external_limits).id

    def _new_peer(self, name, kind, limits) -> Peer:
        peer = Peer(next(self._ids), name, kind, limits)
        self.peers[peer.id] = peer
        return peer

    def run(self, name: str) -> list:
        """Run the compartment's program (Engine.run)."""
        peer = self.engines[name]
        qid, data = peer.conn.send_call(peer.control.import_id, ENGINE_ID, 1)
        self._pending[(peer.id, qid)] = ("run", name)
        self._out.append(Send(peer.id, data))
        return self._flush()

    # ------------------------------------------------------------ input

    def receive(self, pid: int, data: bytes) -> list:
        peer = self.peers.get(pid)
        if peer is None or not peer.alive:
            return []
        try:
            for ev in peer.conn.receive_iter(data):
                self._event(peer, ev)
                if not peer.alive:
                    break
        except protocol.ProtocolError as e:
            self._out.append(Send(pid, peer.conn.send_abort(f"protocol error: {e}")))
            self._out.append(Notice(f"{peer.name}: protocol error, connection aborted: {e}"))
            if self.audit:
                self._out.append(Audit({"time": round(self.clock(), 6), "peer": peer.name,
                                        "event": "connection aborted",
                                        "reason": f"protocol error: {e}"}))
            self._out.append(Close(pid, str(e)))
            self._lose(peer, f"{peer.name}: connection aborted: {e}")
        return self._flush()

    def expire(self) -> list:
        """Fail forwarded calls older than their callee's call_time (call this often)."""
        now = self.clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            _deadline, pid, qid = heapq.heappop(self._deadlines)
            handler = self._pending.get((pid, qid))
            peer = self.peers.get(pid)
            if handler is None or handler[0] != "forward" or peer is None:
                continue                     # answered in time, or the peer is gone
            del self._pending[(pid, qid)]
            self._out.append(Send(pid, peer.conn.send_finish(qid)))
            self._fail(handler[1], CallError(
                f"compartment {peer.name} did not answer within {peer.limits.call_time:g} s "
                f"(limit call_time)", "overloaded"))
        return self._flush()

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def stop_engine(self, name: str, reason: str) -> list:
        """The runtime is taking compartment `name`'s engine down (to restart it)."""
        peer = self.engines.get(name)
        return self.disconnected(peer.id, reason) if peer is not None else []

    def fail_compartment(self, name: str, reason: str) -> list:
        """The compartment will not come back: calls through its grants fail from now on."""
        proxy = self.proxies.get(name)
        if proxy is not None:
            self._break_proxy(proxy, f"compartment {name} failed: {reason}", "failed")
        return self._flush()

    def disconnected(self, pid: int, reason: str) -> list:
        """The peer's connection closed or its process died."""
        peer = self.peers.get(pid)
        if peer is not None and peer.alive:
            self._lose(peer, reason)
        return self._flush()

    def _flush(self) -> list:
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------ events

    def _event(self, peer: Peer, ev):
        if isinstance(ev, protocol.CallReceived):
            self._on_call(peer, ev)
        elif isinstance(ev, protocol.ReturnReceived):
            self._on_return(peer, ev)
        elif isinstance(ev, protocol.BootstrapRequested):
            if peer.kind == "external":
                self._return(peer, ev.answer_id, Content.capability(0), [self.gateway])
            else:
                self._out.append(Send(peer.id, peer.conn.send_exception(
                    ev.answer_id, "compartments get their capabilities from their grants")))
        elif isinstance(ev, protocol.ExportReleased):
            self._drop(ev.obj)
        elif isinstance(ev, protocol.FinishReceived):
            pass   # calls pipelined on it are still delivered when it returns
        elif isinstance(ev, protocol.Unhandled):
            self._out.append(Send(peer.id, ev.reply))
        elif isinstance(ev, protocol.AbortReceived):
            self._out.append(Close(peer.id, ev.reason))
            self._lose(peer, f"{peer.name} aborted the connection: {ev.reason}")

    def _on_call(self, peer: Peer, ev: protocol.CallReceived):
        reply = (peer, ev.answer_id)
        if peer.conn.unanswered > peer.limits.in_flight:
            self._fail(reply, CallError(
                f"{peer.name} has {peer.limits.in_flight} calls in flight already "
                f"(limit in_flight = {peer.limits.in_flight})", "overloaded"))
            for c in ev.payload.caps:             # drop what it passed along
                if isinstance(c, protocol.Imported):
                    self._sweep((self._remote(peer, c.import_id),))
            return
        try:
            caps = tuple(self._import_cap(peer, c) for c in ev.payload.caps)
        except CallError as e:
            self._fail(reply, e)
            return
        call = _Call(ev.interface_id, ev.method_id, ev.payload.content, caps, reply)
        target = ev.target
        if isinstance(target, protocol.PromisedAnswer):
            if target.error is not None:
                self._fail(reply, CallError(f"pipelined call on a failed call: {target.error}"))
                return
            result = target.result
            if result is None:
                self._pipelined.setdefault((peer.id, target.answer_id), []).append(
                    (target.transform, call))
                return
            try:
                target = self._resolve_pipeline(peer, result, target.transform)
            except CallError as e:
                self._fail(reply, e)
                return
        self._deliver(target, call)

    def _resolve_pipeline(self, peer, result, transform) -> Cap:
        content, caps = result
        try:
            index = content.cap_index(transform)
        except wire.WireError as e:
            raise CallError(f"pipelined call: {e}") from None
        if index is None or index >= len(caps) or caps[index] is None:
            raise CallError("pipelined call on a field that holds no capability")
        cap = caps[index]
        if isinstance(cap, RemoteRef):
            return self._remote(peer, cap.import_id)
        return cap

    def _on_return(self, peer: Peer, ev: protocol.ReturnReceived):
        handler = self._pending.pop((peer.id, ev.question_id), None)
        if handler is None:
            # A late answer to a call that timed out (we already sent Finish):
            # nobody wants what it carries.
            if ev.payload is not None:
                self._sweep([self._remote(peer, c.import_id) for c in ev.payload.caps
                             if isinstance(c, protocol.Imported)])
            return
        if ev.finish_needed:
            self._out.append(Send(peer.id, peer.conn.send_finish(ev.question_id)))
        if handler[0] == "forward":
            reply = handler[1]
            if ev.payload is None:
                self._fail(reply, CallError(ev.error, ev.error_type))
                return
            try:
                caps = tuple(self._import_cap(peer, c) for c in ev.payload.caps)
            except CallError as e:
                self._fail(reply, e)
                return
            self._return(reply[0], reply[1], ev.payload.content, caps)
            self._sweep(caps)
            return
        kind, arg = handler
        if kind == "bootstrap":
            self._on_engine_bootstrap(peer, ev, arg)
        elif kind == "start":
            self._on_engine_started(peer, ev)
        elif kind == "run":
            if ev.payload is None:
                self._out.append(Exited(peer.name, None, ev.error))
            else:
                code = _read(RunResults, ev.payload.content).exitCode
                self._out.append(Exited(peer.name, code))

    # ------------------------------------------------------------ engine control

    def _on_engine_bootstrap(self, peer: Peer, ev, grants):
        if ev.payload is None or not ev.payload.caps \
                or not isinstance(ev.payload.caps[0], protocol.Imported):
            self._start_failed(peer, f"engine bootstrap failed: {ev.error or 'no capability'}")
            return
        peer.control = self._remote(peer, ev.payload.caps[0].import_id)
        peer.control.refs += 1
        names, caps = [], []
        for g in grants:
            kind = "compartment" if g.kind == "compartment" else g.target
            mount = (g.mount or f"/{g.local}") if kind == "directory" else ""
            names.append((g.local, kind, mount))
            if g.kind == "compartment":
                cap = self.proxies[g.target]
            else:
                try:
                    cap = Host(g.target, peer.name, self._open_host(g), f"{peer.name}.{g.local}")
                except (OSError, hostfs.FsError) as e:
                    self._start_failed(peer, f"cannot open {g.path} for grant {g.local}: "
                                             f"{getattr(e, 'strerror', None) or e}")
                    return
            if g.attenuated:
                path = f"{peer.name}.{g.local}"
                membrane = self.membranes.get(path)
                if membrane is None or membrane.revoked:   # a restart gets a fresh grant
                    granted = self.proxies[g.target].interface_id \
                        if g.kind == "compartment" else HOST_IDS[g.target]
                    restricted = frozenset({granted} | {i for i, _ in (g.allow or ())})
                    membrane = self.membranes[path] = Membrane(path, g.allow, restricted,
                                                               g.revocable)
                    now = self.clock()
                    membrane.uses_left = g.max_uses
                    if g.expires_after is not None:
                        membrane.expires_at = now + g.expires_after
                    if g.calls_per_second is not None:
                        membrane.rate = membrane.tokens = g.calls_per_second
                        membrane.refilled = now
                cap = self._wrap(cap, membrane, path)
            caps.append(cap)
        try:
            self._call_peer(peer, peer.control.import_id, ENGINE_ID, 0,
                            grants_content(names), caps, ("start", None))
        except CallError as e:
            self._start_failed(peer, e.reason)

    def _on_engine_started(self, peer: Peer, ev):
        if ev.payload is None:
            self._start_failed(peer, ev.error)
            return
        content = ev.payload.content
        caps = [self._import_cap(peer, c) for c in ev.payload.caps]
        program = _read(StartResults, content).program
        proxy = self.proxies.get(peer.name)
        if proxy is not None:
            index = content.cap_index((0,))
            main = caps[index] if index is not None and index < len(caps) else None
            if not isinstance(main, Remote):
                self._start_failed(peer, "engine did not return the compartment's main object")
                return
            main.refs += 1
            proxy.target = main
            queue, proxy.queue = proxy.queue, []
            for call in queue:
                self._deliver(proxy, call)
        self._sweep(caps)
        self._out.append(Started(peer.name, program))

    def _start_failed(self, peer, reason):
        self._out.append(StartFailed(peer.name, reason))
        proxy = self.proxies.get(peer.name)
        if proxy is not None:
            self._break_proxy(proxy, f"compartment {peer.name} failed to start: {reason}")

    # ------------------------------------------------------------ delivery

    def _deliver(self, cap, call: _Call):
        try:
            if self.audit and call.reply not in self._audit_open:
                self._audit_open[call.reply] = (self._record(cap, call), self.clock())
            while isinstance(cap, Wrapped):
                m = cap.membrane
                if m.revoked:
                    raise _Denial(f"{cap.path} was revoked", "failed")
                if not m.allows(call.interface_id, call.method_id):
                    raise _Denial(f"{cap.path}: {self._method(call)} is not allowed "
                                  f"(allow = [{self._allowed(m)}])", "failed")
                self._spend_quota(cap, m)
                m.inflight.add(call.reply)
                self._through.setdefault(call.reply, []).append((m, self._method(call)))
                if m.reverse is not None:
                    call = attrs.evolve(call, caps=tuple(
                        self._wrap(c, m.reverse, m.reverse.path) for c in call.caps))
                cap = cap.target
            if isinstance(cap, Proxy):
                if cap.interface_id is not None and call.interface_id != cap.interface_id:
                    raise CallError(f"compartment {cap.compartment} does not implement "
                                    f"interface {call.interface_id:#x}", "unimplemented")
                if cap.error is not None:
                    raise CallError(cap.error, cap.error_type)
                if cap.target is None:
                    cap.queue.append(call)
                    return
                cap = cap.target
            if isinstance(cap, Remote):
                if not cap.peer.alive:
                    raise CallError(f"compartment {cap.peer.name} is gone", "disconnected")
                self._call_peer(cap.peer, cap.import_id, call.interface_id, call.method_id,
                                call.content, call.caps, ("forward", call.reply))
            elif isinstance(cap, Host):
                content, caps = self._host_call(cap, call)
                self._return(call.reply[0], call.reply[1], content, caps)
            else:
                raise CallError("not a capability")
        except CallError as e:
            if isinstance(e, _Denial):
                self._out.append(Denied(f"denied: {call.reply[0].name} -> {e.reason}",
                                        call.reply[0].name))
            self._fail(call.reply, e)
            self._sweep(call.caps)

    def _call_peer(self, peer, import_id, interface_id, method_id, content, caps, handler):
        self._check_handles(peer, caps)
        out_caps = [self._export_cap(peer, c) for c in caps]
        qid, data = peer.conn.send_call(import_id, interface_id, method_id, content, out_caps)
        self._retain_new(peer, caps)
        self._pending[(peer.id, qid)] = handler
        if handler[0] == "forward":
            heapq.heappush(self._deadlines,
                           (self.clock() + peer.limits.call_time, peer.id, qid))
        self._out.append(Send(peer.id, data))

    def _return(self, peer: Peer, answer_id: int, content: Content, caps):
        key = (peer, answer_id)
        crossed = self._close_call(key, "returned")
        if not peer.alive or not peer.conn.awaiting_return(answer_id):
            self._sweep(caps)
            return
        for m, label in reversed(crossed):   # innermost membrane first
            caps = tuple(self._wrap(c, m, f"{m.path}>{label}") for c in caps)
        try:
            self._check_handles(peer, caps)
        except CallError as e:
            self._fail((peer, answer_id), e)
            self._sweep(caps)
            return
        out_caps = [self._export_cap(peer, c) for c in caps]
        # Engines never pipeline: spare them the Finish when nothing needs releasing.
        data = peer.conn.send_return(answer_id, content, out_caps,
                                     no_finish=peer.kind == "engine")
        self._retain_new(peer, caps)
        self._out.append(Send(peer.id, data))
        waiting = self._pipelined.pop((peer.id, answer_id), [])
        for transform, call in waiting:
            try:
                target = self._resolve_pipeline(peer, (content, out_caps), transform)
            except CallError as e:
                self._fail(call.reply, e)
                continue
            self._deliver(target, call)

    def _fail(self, reply, e: CallError):
        peer, answer_id = reply
        self._close_call(reply, "denied" if isinstance(e, _Denial) else "failed", e.reason)
        if not peer.alive or not peer.conn.awaiting_return(answer_id):
            return
        self._out.append(Send(peer.id, peer.conn.send_exception(
            answer_id, e.reason, e.type, no_finish=peer.kind == "engine")))
        for _transform, call in self._pipelined.pop((peer.id, answer_id), []):
            self._fail(call.reply, CallError(f"pipelined on a failed call: {e.reason}", e.type))

    # ------------------------------------------------------------ membranes and audit

    def _wrap(self, cap, membrane: Membrane, path: str):
        if cap is None or (isinstance(cap, Wrapped) and cap.membrane is membrane):
            return cap
        w = membrane.wrappers.get(id(cap))
        if w is None:
            w = membrane.wrappers[id(cap)] = Wrapped(cap, membrane, path)
            cap.refs += 1
        return w

    def _close_call(self, key, outcome: str, reason: str | None = None) -> list:
        crossed = self._through.pop(key, [])
        for m, _label in crossed:
            m.inflight.discard(key)
        opened = self._audit_open.pop(key, None)
        if opened is not None:
            record, start = opened
            record.update(outcome=outcome,
                          duration_ms=round((self.clock() - start) * 1000, 3))
            if reason:
                record["reason"] = reason
            self._out.append(Audit(record))
        return crossed

    def _spend_quota(self, cap: Wrapped, m: Membrane):
        now = self.clock()
        if m.expires_at is not None and now >= m.expires_at:
            raise _Denial(f"{cap.path} has expired (expires_after)", "failed")
        if m.uses_left is not None:
            if m.uses_left <= 0:
                raise _Denial(f"{cap.path} is used up (max_uses)", "failed")
        if m.rate is not None:
            m.tokens = min(m.rate, m.tokens + (now - m.refilled) * m.rate)
            m.refilled = now
            if m.tokens < 1:
                raise _Denial(f"{cap.path}: more than {m.rate:g} calls per second "
                              f"(calls_per_second)", "overloaded")
            m.tokens -= 1
        if m.uses_left is not None:
            m.uses_left -= 1

    def revoke(self, path: str) -> list:
        """Revoke grant `path` ("compartment.local"): it, everything obtained through it,
        and every call in flight through any of them fail from now on."""
        m = self.membranes.get(path)
        if m is None or not m.revocable:
            revocable = sorted(p for p, x in self.membranes.items() if x.revocable)
            raise KeyError(f"no revocable grant {path!r} "
                           f"(revocable: {', '.join(revocable) or 'none'})")
        if m._revoked is None:
            m._revoked = "revoked"
            for key in list(m.inflight) + list(m.reverse.inflight if m.reverse else ()):
                self._fail(key, CallError(f"{path} was revoked while this call was in flight",
                                          "failed"))
            self._out.append(Notice(f"revoked {path}"))
        return self._flush()

    def _record(self, cap, call: _Call) -> dict:
        iface, methods = self.names.get(call.interface_id, (f"{call.interface_id:#x}", {}))
        return {"time": round(self.clock(), 6), "caller": call.reply[0].name,
                "capability": _describe(cap), "interface": iface,
                "method": methods.get(call.method_id, str(call.method_id))}

    def _method(self, call: _Call) -> str:
        iface, methods = self.names.get(call.interface_id, (f"{call.interface_id:#x}", {}))
        return f"{iface}.{methods.get(call.method_id, call.method_id)}"

    def _allowed(self, m: Membrane) -> str:
        return ", ".join(sorted(f"{self.names.get(i, ('?', {}))[0]}."
                                f"{self.names.get(i, ('?', {}))[1].get(j, j)}"
                                for i, j in m.allow or ()))

    # ------------------------------------------------------------ host objects

    def _host_call(self, cap: Host, call: _Call):
        if cap.kind == "log":
            if call.interface_id != LOG_ID or call.method_id != 0:
                raise CallError("Log implements only write()", "unimplemented")
            self._spend_log_token(cap.owner)
            text = _read(LogWriteParams, call.content).text
            if len(text) > LOG_LINE_LIMIT:
                text = text[:LOG_LINE_LIMIT] + f"... ({len(text) - LOG_LINE_LIMIT} more characters)"
            self._out.append(LogLine(cap.owner, text))
            return protocol.EMPTY, ()
        if cap.kind == "clock":
            if call.interface_id != CLOCK_ID or call.method_id not in (0, 1):
                raise CallError("Clock implements wall() and monotonic()", "unimplemented")
            ns = self.wall_ns() if call.method_id == 0 else self.monotonic_ns()
            return Content.standalone(ClockResults.new_message(ns=ns).to_segments()), ()
        if cap.kind == "random":
            if call.interface_id != RANDOM_ID or call.method_id != 0:
                raise CallError("Random implements bytes()", "unimplemented")
            count = _read(RandomParams, call.content).count
            if count > RANDOM_MAX_BYTES:
                raise CallError(f"Random.bytes: at most {RANDOM_MAX_BYTES} bytes per call, "
                                f"not {count}")
            msg = RandomResults.new_message(data=self.entropy(count))
            return Content.standalone(msg.to_segments()), ()
        if cap.kind == "environment":
            if call.interface_id != ENVIRONMENT_ID or call.method_id > 2:
                raise CallError("Environment implements args(), vars() and get()",
                                "unimplemented")
            args, variables = cap.obj
            name = ("args", "vars", "get")[call.method_id]
            params_struct, results_struct = _ENV_STRUCTS[name]
            if name == "args":
                msg = results_struct.new_message(args=list(args))
            elif name == "vars":
                msg = results_struct.new_message(
                    vars=[{"name": k, "value": v} for k, v in variables.items()])
            else:
                key = _read(params_struct, call.content).name
                msg = results_struct.new_message(value=variables.get(key, ""),
                                                 present=key in variables)
            return Content.standalone(msg.to_segments()), ()
        if cap.kind in ("directory", "file"):
            try:
                return self._fs_call(cap, call)
            except hostfs.FsError as e:
                raise CallError(f"{e.code}: {cap.kind} {cap.obj.label}: {e}") from None
        if cap.kind == "gateway":
            if call.interface_id != GATEWAY_ID:
                raise CallError("the gateway implements Gateway only", "unimplemented")
            if call.method_id == 0:
                name = _read(GatewayGetParams, call.content).name
                if name not in self.external:
                    raise CallError(f"no compartment named {name!r} is exported to the outside "
                                    f"(exported: {', '.join(self.external) or 'none'})")
                return with_capability(GatewayGetResults.new_message()), (self.proxies[name],)
            if call.method_id == 1:
                msg = GatewayListResults.new_message(names=list(self.external))
                return Content.standalone(msg.to_segments()), ()
            raise CallError(f"Gateway has no method {call.method_id}", "unimplemented")
        raise CallError(f"unknown host object {cap.kind}")

    def _spend_log_token(self, owner: str):
        """Token bucket: log_rate lines per second, bursts of up to log_rate lines."""
        rate = self.limits.get(owner, Limits()).log_rate
        now = self.clock()
        budget = self._log_budget.setdefault(owner, [rate, now])
        budget[0] = min(rate, budget[0] + (now - budget[1]) * rate)
        budget[1] = now
        if budget[0] < 1:
            raise CallError(f"{owner} writes to its log faster than {rate:g} lines/s "
                            f"(limit log_rate)", "overloaded")
        budget[0] -= 1

    def _open_host(self, g: GrantSpec):
        attenuation = dict(read_only=g.read_only, append_only=g.append_only,
                           max_bytes_written=g.max_bytes_written)
        if g.target == "directory":
            return self.filesystem.Directory.grant(g.path, subdir=g.subdir, **attenuation)
        if g.target == "file":
            return self.filesystem.File.grant(g.path, **attenuation)
        if g.target == "environment":
            return (tuple(g.args), dict(g.vars))
        return None

    def _fs_call(self, cap: Host, call: _Call):
        """A call on a hostfs object, by the method's name from host.capnp: params
        decoded into Python values, results built from the dict it returns.
        (Temporary: supervisor/hostcaps.py serves host capabilities this way.)"""
        methods = _FS_METHODS[HOST_IDS[cap.kind]]
        if call.interface_id != HOST_IDS[cap.kind] or call.method_id >= len(methods):
            raise CallError(f"{cap.kind.capitalize()} has no such method", "unimplemented")
        name, params_struct, results_struct, takes_max = methods[call.method_id]
        try:
            params = {("from_" if k == "from" else k): v
                      for k, v in _read(params_struct, call.content).to_dict().items()}
        except UnicodeDecodeError:
            raise hostfs.FsError(f"{name}: a text parameter is not valid UTF-8", "EINVAL") \
                from None
        if takes_max:
            params["max_bytes"] = call.reply[0].limits.message_size - 1024
        try:
            results = getattr(cap.obj, name)(**params)
        except hostfs.FsError:
            raise
        except Exception as e:  # noqa: BLE001 - a bug in hostfs: the call fails, we go on
            import traceback
            traceback.print_exc()
            raise hostfs.FsError(f"internal error ({type(e).__name__})", "EIO") from None
        if not results:
            return protocol.EMPTY, ()
        opened = [(k, v) for k, v in results.items()
                  if isinstance(v, (hostfs.File, hostfs.Directory))]
        if opened:
            kind = "directory" if isinstance(opened[0][1], hostfs.Directory) else "file"
            return with_capability(results_struct.new_message()), \
                (Host(kind, cap.owner, opened[0][1],
                      f"{cap.path}>{cap.kind.capitalize()}.{name}" if cap.path else None),)
        return Content.standalone(results_struct.new_message(**results).to_segments()), ()

    # ------------------------------------------------------------ capability tables

    def _remote(self, peer: Peer, import_id: int) -> Remote:
        r = peer.remotes.get(import_id)
        if r is None:
            r = peer.remotes[import_id] = Remote(peer, import_id)
        return r

    def _import_cap(self, peer: Peer, c):
        if c is None:
            return None
        if isinstance(c, protocol.Imported):
            return self._remote(peer, c.import_id)
        if isinstance(c, protocol.Exported):
            return c.obj
        # receiverAnswer: a capability inside the result of a call the peer made to us
        if c.error is not None:
            raise CallError(f"capability from a failed call: {c.error}")
        result = c.result
        if result is None:
            raise CallError("passing a promised capability before it resolves is not supported",
                            "unimplemented")
        return self._resolve_pipeline(peer, result, c.transform)

    @staticmethod
    def _check_handles(peer: Peer, caps):
        """Refuse to grow a peer's c-list past its `handles` limit."""
        conn = peer.conn
        new = {id(c) for c in caps if c is not None
               and not (isinstance(c, Remote) and c.peer is peer)
               and conn.export_id(c) is None}
        if len(conn.exports) + len(new) > peer.limits.handles:
            raise CallError(f"{peer.name} would hold more than {peer.limits.handles} "
                            f"capabilities (limit handles); it must release some", "overloaded")

    @staticmethod
    def _export_cap(peer: Peer, cap):
        if isinstance(cap, Remote) and cap.peer is peer:
            return RemoteRef(cap.import_id)
        return cap

    @staticmethod
    def _retain_new(peer: Peer, caps):
        # Count one reference per export-table entry a capability has.
        for cap in caps:
            if cap is not None and not (isinstance(cap, Remote) and cap.peer is peer):
                if peer.conn.exports[peer.conn.export_id(cap)].refcount == 1:
                    cap.refs += 1

    def _drop(self, cap):
        cap.refs -= 1
        if isinstance(cap, Host) and hasattr(cap.obj, "close") and cap.refs <= 0:
            cap.obj.close()
            cap.obj = None
        if isinstance(cap, Wrapped) and cap.refs <= 0 \
                and cap.membrane.wrappers.get(id(cap.target)) is cap:
            del cap.membrane.wrappers[id(cap.target)]
            self._drop(cap.target)
            return
        self._sweep((cap,))

    def _sweep(self, caps):
        """Release imports nobody in the supervisor refers to any more."""
        for cap in caps:
            if isinstance(cap, Remote) and cap.refs <= 0 and cap.peer.alive \
                    and cap.peer.remotes.get(cap.import_id) is cap:
                del cap.peer.remotes[cap.import_id]
                if cap.import_id in cap.peer.conn.imports:
                    self._out.append(Send(cap.peer.id, cap.peer.conn.send_release(cap.import_id)))

    # ------------------------------------------------------------ losing a peer

    def _lose(self, peer: Peer, reason: str):
        """Take every entry out of the peer's tables first, then fail what depended on it."""
        peer.alive = False
        exported = peer.conn.drop_all()
        pending = [(k, h) for k, h in self._pending.items() if k[0] == peer.id]
        for k, _ in pending:
            del self._pending[k]
        for key in [k for k in self._pipelined if k[0] == peer.id]:
            del self._pipelined[key]
        for obj in exported:
            self._drop(obj)
        for (_pid, _qid), handler in pending:
            kind, arg = handler
            if kind == "forward":
                self._fail(arg, CallError(f"compartment {peer.name} is gone: {reason}",
                                          "disconnected"))
            elif kind == "run":
                self._out.append(Exited(peer.name, None, reason))
            elif kind in ("bootstrap", "start"):
                self._out.append(StartFailed(peer.name, reason))
        proxy = self.proxies.get(peer.name)
        if peer.kind == "engine" and proxy is not None and self.engines.get(peer.name) is peer:
            self._break_proxy(proxy, f"compartment {peer.name} is gone: {reason}")
        self.peers.pop(peer.id, None)

    def _break_proxy(self, proxy: Proxy, reason: str, type: str = "disconnected"):
        proxy.error = reason
        proxy.error_type = type
        proxy.target = None
        queue, proxy.queue = proxy.queue, []
        for call in queue:
            self._fail(call.reply, CallError(reason, type))


def _read(struct, content: Content):
    try:
        return struct.from_segments(content.message(),
                                    traversal_limit_in_words=protocol.TRAVERSAL_LIMIT_WORDS,
                                    nesting_limit=protocol.NESTING_LIMIT)
    except Exception as e:  # pycapnp raises KjException for malformed content
        raise CallError(f"malformed params: {str(e).splitlines()[0][:200]}") from None
