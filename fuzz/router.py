"""Fuzzing the reference monitor itself: the router, and the host layer's params.

    python -m fuzz.router --count 100000 --seed 1

Owns: two targets on top of fuzz/protocol.py's mutators and seeds.  Must not:
be imported by wsuper itself, or accept a failure silently.

router   A Router with a compartment `calc` (exports an interface), a
         compartment `app` granted calc, and a hostile compartment `evil`
         granted calc (through an allow-list and revocation), a log and a
         directory, plus a hostile external client.  Each input is a mutated
         message sent by `evil` or by the client.  Checks: `receive` returns
         (never raises); no effect reports an internal error (which would
         mean a peer's input tripped a fault that the choke point caught: a
         bug to fix at its root); every Send goes to a live peer; and after
         every input, app's call to calc is still delivered and answered.
         Time passes too: the router's clock jumps now and then and expire()
         runs, calc leaves some of evil's calls unanswered until then (they
         time out, and are answered late or never), and evil's grants expire
         (expires_after), with the same checks after each.
host     Each input is host-call params (a seed of host.capnp params, or any
         other seed) mutated, served by a real HostCaps for each host kind
         and method, on a real directory and file in a temporary directory.
         Checks: serve() and Job.run() never raise; the outcome is an Answer
         or a Refusal; no Refusal reports an internal error; an Answer's
         content fits the caller's size limit.
"""
from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import tempfile
import time
import traceback

from capnp_schemas import hosted, payloads, protocol as P, rpc, wire
from capnp_schemas.protocol import Content
from compartments.limits import Limits
from supervisor import effects as fx, hostcaps, router as R
from supervisor.policy import Grant

from . import protocol as F, run_and_report

CALC = 0xC0FFEE0000000001
CALL_TIME = 5.0           # calc's call_time (World.advance jumps past it)
EXPIRES = 100.0           # evil's grants' expires_after
HOST_KINDS = ("log", "clock", "random", "environment", "directory", "file")


class Failure(Exception):
    def __init__(self, check, detail):
        super().__init__(f"{check}: {detail}")
        self.check, self.detail = check, detail


class _Engine:
    """The engine side of one compartment, answering its control calls."""

    def __init__(self, world, name, exports, grants):
        self.world, self.name, self.exports = world, name, exports
        self.conn = P.Connection(name)
        self.control, self.main = object(), object()
        self.grants, self.inbox = {}, []
        self.held = []            # calls it answers later (World.defer), or never
        self.hostile = False      # once set, what the router sends it is not read
        self.pid, effects = world.router.add_engine(name, grants, world.hosts_for(grants))
        world.engines[self.pid] = self
        world.perform(effects)

    def feed(self, data):
        for ev in self.conn.receive(data):
            if isinstance(ev, P.BootstrapRequested):
                self.send(self.conn.send_return(ev.answer_id, Content.capability(0),
                                                [self.control]))
            elif isinstance(ev, P.CallReceived) and ev.target is self.control:
                if ev.method_id == 0:
                    segs = ev.payload.content.message()
                    loc = wire.struct_pointer_field(segs, (0, 0), 0)
                    for i, (s, start, d, _p) in enumerate(wire.struct_list_elements(segs, loc)):
                        idx = wire.capability_index(segs, (s, start + d + 1))
                        self.grants[i] = ev.payload.caps[idx]
                    seg = bytearray(struct.pack("<QQQ", (1 << 32) | (1 << 48), 0, 0))
                    caps = []
                    if self.exports:
                        wire.set_word(seg, 2, wire.cap_pointer(0))
                        caps = [self.main]
                    self.send(self.conn.send_return(ev.answer_id, Content.standalone([seg]),
                                                    caps))
            elif isinstance(ev, P.CallReceived) and self.exports:
                if self.world.defer:                # answered once time has passed
                    self.held.append(ev.answer_id)
                else:
                    self.send(self.conn.send_return(ev.answer_id))   # calc answers everything
            elif isinstance(ev, (P.CallReceived, P.ReturnReceived)):
                self.inbox.append(ev)

    def send(self, data):
        self.world.perform(self.world.router.receive(self.pid, data))


class World:
    def __init__(self, folder):
        self.folder = folder
        self.now = 0.0            # the router's clock (advance)
        self.defer = False        # calc holds the calls it gets meanwhile (advance)
        self.router = R.Router({"calc": CALC, "app": None, "evil": None},
                               external=("calc",), names={CALC: ("Calc", {0: "add"})},
                               audit=True, clock=lambda: self.now,
                               limits={"calc": Limits(call_time=CALL_TIME)})
        self.engines: dict[int, _Engine] = {}
        self.calc = _Engine(self, "calc", True, [])
        self.app = _Engine(self, "app", False, [Grant("calc", "compartment", "calc")])
        self.evil = None
        self.client = None
        self.new_evil()
        self.new_client()

    def hosts_for(self, grants):
        return {g.name: hostcaps.open_grant(g) for g in grants
                if g.kind == "host" and g.target in ("directory", "environment", "file")}

    def close(self):
        """Let go of every peer: the router releases what they held."""
        for pid in list(self.router.peers):
            self.perform(self.router.disconnected(pid, "fuzz: done"))

    def new_evil(self):
        # imports 0-2; 3 and 4 expire (expires_after counts from evil's first start:
        # a new evil keeps their expiry, and 0-2 stay usable)
        grants = [Grant("calc", "compartment", "calc", allow=("add",),
                        methods=frozenset({(CALC, 0)}), revocable=True),
                  Grant("log", "host", "log"),
                  Grant("data", "host", "directory", path=self.folder),
                  Grant("later", "compartment", "calc", expires_after=EXPIRES),
                  Grant("scratch", "host", "directory", path=self.folder,
                        expires_after=EXPIRES)]
        self.evil = _Engine(self, "evil", False, grants)
        self.evil.hostile = True         # started: from now on it only sends fuzz

    def seeds(self) -> list:
        """Valid messages from evil's side (its grants are imports 0, 1, 2 in its
        table) and from a client's: calls through a membrane, host calls, pipelined
        calls on a host call's answer, capabilities passed in, finishes, releases."""
        conn = P.Connection("seeds")
        calc, log, data, later, scratch = 0, 1, 2, 3, 4
        for i in (calc, log, data, later, scratch):
            conn.imports[i] = 1
        d, f, lg = hosted.BY_KIND["directory"], hosted.BY_KIND["file"], hosted.BY_KIND["log"]

        def params(iface, method, **fields):
            return payloads.build(iface.method(method).params, fields)[0]
        out = []

        def call(target, iface_id, method, content=P.EMPTY, caps=()):
            qid, msg = conn.send_call(target, iface_id, method, content, list(caps))
            out.append(msg)
            return qid
        call(calc, CALC, 0, Content.standalone([struct.pack("<QQ", 1 << 32, 5 | 7 << 32)]))
        call(calc, CALC, 2, caps=[object()])                      # not allowed; a cap passed
        call(later, CALC, 0)                                      # grants that expire
        call(scratch, d.id, d.method("stat").ordinal, params(d, "stat", path="f"))
        call(log, lg.id, 0, params(lg, "write", text="hello"))
        for method, fields in (("open", {"path": "f", "mode": "read"}), ("stat", {"path": "f"}),
                               ("list", {"path": ""}), ("subdir", {"path": "d"}),
                               ("mkdir", {"path": "new"}), ("readlink", {"path": "f"})):
            call(data, d.id, d.method(method).ordinal, params(d, method, **fields))
        q = call(data, d.id, d.method("open").ordinal, params(d, "open", path="f", mode="read"))
        call((q, (0,)), f.id, f.method("read").ordinal, params(f, "read", offset=0, count=4))
        call((q, (0,)), f.id, f.method("stat").ordinal)
        out.append(conn.send_finish(q))
        out.append(conn.send_release(log))
        gw = hosted.GATEWAY
        q = call(0, gw.id, 0, params(gw, "get", name="calc"))
        call((q, (0,)), CALC, 0)
        call(0, gw.id, 1)
        _q, boot = conn.send_bootstrap()
        out.append(boot)
        # a capability promised in an answer not returned yet, passed in a call
        # (receiverAnswer), and a Disembargo on such a promise
        q = call(data, d.id, d.method("open").ordinal, params(d, "open", path="f", mode="read"))
        opened = out.pop()                # sent just before what follows (LEADS)
        seeds = [F.Seed(m) for m in out]
        for build in (lambda m: _promised_in_params(m, 90, calc, q),
                      lambda m: _disembargo(m, q)):
            msg = rpc.Message.new_message()
            build(msg)
            seeds.append(F.Seed(wire.frame(msg.to_segments())))
            LEADS[id(seeds[-1])] = opened
        return seeds

    def new_client(self):
        self.client = self.router.add_external("client")

    def perform(self, effects):
        for e in effects:
            if isinstance(e, fx.Send):
                if e.peer not in self.router.peers and e.peer not in self.engines \
                        and e.peer != self.client:
                    raise Failure("router", f"a Send to peer {e.peer}, which does not exist")
                engine = self.engines.get(e.peer)
                if engine is not None and e.peer in self.router.peers and not engine.hostile:
                    engine.feed(e.data)
            elif isinstance(e, fx.Notice) and "internal error" in e.text:
                raise Failure("router", e.text)
            elif isinstance(e, fx.HostCall):
                self.perform(self.router.host_returned(e.token, Content()))
            elif isinstance(e, fx.HostRelease):
                hostcaps.release(e.kind, e.served)

    def advance(self, rng):
        """Time passes: the clock jumps (past calc's call_time, or the expiry of
        evil's grants, now and then), expire() runs, and what calc held is answered
        late, or later still."""
        waiting = None
        if rng.random() < 0.5:                  # a call of app's that calc holds
            self.defer = True
            try:
                waiting, data = self.app.conn.send_call(self.app.grants[0].import_id, CALC, 0)
                self.app.inbox.clear()
                self.app.send(data)
            finally:
                self.defer = False
        jump = rng.choice((0.001, 1.0, CALL_TIME + 1, EXPIRES + 1))
        self.now += jump
        self.perform(self.router.expire())
        if waiting is not None and jump > CALL_TIME:     # it is told, and only once
            told = [ev for ev in self.app.inbox if isinstance(ev, P.ReturnReceived)
                    and ev.question_id == waiting]
            if len(told) != 1 or "did not answer within" not in str(told[0].error):
                raise Failure("router", f"app's call calc held past its call_time was "
                                        f"answered {told!r}, not failed once as timed out")
        if self.calc.held and rng.random() < 0.5:
            held, self.calc.held = self.calc.held, []
            for answer_id in held:               # their callers were told it timed out
                self.calc.send(self.calc.conn.send_return(answer_id))

    def honest_call_works(self):
        handle = self.app.grants[0].import_id
        _q, data = self.app.conn.send_call(handle, CALC, 0)
        self.app.inbox.clear()
        self.app.send(data)
        if not self.app.inbox or self.app.inbox[-1].error is not None:
            raise Failure("router", f"app's call to calc failed after the input: "
                                    f"{self.app.inbox[-1:]}")


#: id(seed) -> a message sent before each input made from that seed, in the same
#: bytes (its answer is not back yet when the seed's message is read)
LEADS: dict = {}


def _promised_in_params(msg, qid: int, target: int, promise: int):
    c = msg.init("call")
    c.questionId, c.interfaceId, c.methodId = qid, CALC, 2
    c.target.importedCap = target
    ra = c.params.init("capTable", 1)[0].init("receiverAnswer")
    ra.questionId = promise
    ra.init("transform", 1)[0].getPointerField = 0


def _disembargo(msg, promise: int):
    d = msg.init("disembargo")
    pa = d.target.init("promisedAnswer")
    pa.questionId = promise
    pa.init("transform", 1)[0].getPointerField = 0
    d.context.senderLoopback = 7


def check_router(world: World, data: bytes, as_client: bool, defer: bool = False):
    """`defer`: calc holds the calls this input makes (World.advance answers them)."""
    pid = world.client if as_client else world.evil.pid
    world.defer = defer
    try:
        try:
            effects = world.router.receive(pid, data)
        except Exception as e:  # noqa: BLE001 - the property under test
            raise Failure("router", f"receive raised {type(e).__name__}: {F._line(e)}") \
                from None
        world.perform(effects)
    finally:
        world.defer = False
    peer = world.router.peers.get(pid)
    if peer is not None and peer.conn.partial_message is not None:
        world.perform(world.router.disconnected(pid, "fuzz: half a message"))
    if pid not in world.router.peers:        # it was cut off: bring on a new one
        if as_client:
            world.new_client()
        else:
            world.router.disconnected(world.evil.pid, "fuzz")
            # the harness lets go of the engine it replaces (1M inputs held 330,000
            # of them, with their connections: about 1 GB of this process)
            world.engines.pop(world.evil.pid, None)
            world.new_evil()
    world.honest_call_works()
    pipelined_add_up(world.router)


def pipelined_add_up(router):
    """The bytes of pipelined calls the router counts are those its peers hold,
    and what comes from the shared pool is what each holds beyond its own share."""
    peers = router.peers.values()
    held = sum(p.pipelined for p in peers)
    pooled = sum(R.pooled(p.pipelined) for p in peers)
    external = sum(R.pooled(p.pipelined) for p in peers if p.kind == "external")
    if (router.pipelined_bytes, router.pipelined_pooled) != (held, pooled) \
            or router.pipelined_pooled > router.pipelined_total \
            or router.pipelined_external != external \
            or external > router.pipelined_total // 2:
        raise Failure("router", f"pipelined bytes counted {router.pipelined_bytes} "
                                f"(pool {router.pipelined_pooled}, external clients' "
                                f"{router.pipelined_external}), peers hold {held} "
                                f"(pool {pooled}, external clients' {external})")


def check_host(hosts: hostcaps.HostCaps, served: dict, data: bytes, rng):
    kind = rng.choice(HOST_KINDS)
    iface = hosted.BY_KIND[kind]
    method = rng.choice(iface.methods)
    try:
        segs = wire.unframe(data)
    except wire.WireError:
        return
    max_bytes = rng.choice((1024, 4096, 65536, 8 << 20))
    call = fx.HostCall(1, kind, "fuzz", served.get(kind), iface.id, method.ordinal,
                       Content.standalone(segs), max_bytes)
    try:
        outcome = hosts.serve(call)
        if isinstance(outcome, hostcaps.Job):
            outcome = outcome.run()
    except Exception as e:  # noqa: BLE001 - the property under test
        raise Failure("host", f"{iface.name}.{method.name} raised {type(e).__name__}: "
                              f"{F._line(e)}") from None
    if isinstance(outcome, hostcaps.Refusal):
        if outcome.notice:
            raise Failure("host", f"{iface.name}.{method.name}: {outcome.notice}")
        return
    if not isinstance(outcome, hostcaps.Answer):
        raise Failure("host", f"{iface.name}.{method.name} gave {outcome!r}")
    size = sum(len(s) for s in outcome.content.segments)
    if size > max_bytes:
        raise Failure("host", f"{iface.name}.{method.name} answered {size} bytes to a caller "
                              f"that accepts {max_bytes}")
    for k, obj in outcome.objects:
        hostcaps.release(k, obj)


def _host_seeds():
    """Valid params of every host method (defaults), as seeds."""
    out = []
    for iface in hosted.BY_KIND.values():
        for m in iface.methods:
            try:
                content = payloads.build(m.params, _defaults(m.params))[0]
            except Exception:  # noqa: BLE001 - a method whose defaults do not build
                continue
            out.append(F.Seed(list(content.segments)))
    return out


def _defaults(struct_module) -> dict:
    values = {}
    for field in struct_module.schema.fields_list:
        if field.proto.which() != "slot":
            continue
        kind = field.proto.slot.type.which()
        values[field.proto.name] = {"text": "f", "data": b"xy", "bool": True}.get(
            kind, 1 if kind.startswith(("int", "uint")) else None)
    return {k: v for k, v in values.items() if v is not None}


def run(count: int, seed: int = 1, progress=None) -> tuple[int, dict]:
    st = F._setup()
    failures: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in ("f", "g"):
            with open(os.path.join(folder, name), "w") as f:
                f.write("content")
        os.mkdir(os.path.join(folder, "d"))
        world = World(folder)
        hosts = hostcaps.HostCaps(lambda owner: 1e9, clock=time.monotonic)
        served = {"directory": hostcaps.hostfs.Directory.grant(folder),
                  "file": hostcaps.hostfs.File.grant(os.path.join(folder, "g")),
                  "environment": (("-v",), {"A": "b"})}
        host_seeds = _host_seeds()
        router_seeds = world.seeds()
        everything = st["all"] + host_seeds + router_seeds
        messages = st["messages"] + router_seeds * 8
        for i in range(count):
            rng = random.Random(seed * 1_000_003 + i)
            try:
                if rng.random() < 0.4:
                    s = rng.choice(host_seeds + st["contents"])
                    check_host(hosts, served, F.mutate(rng, s, everything), rng)
                else:
                    s = rng.choice(messages)
                    data = F.mutate(rng, s, everything) if rng.random() < 0.9 else \
                        bytes(wire.frame(s.segs))
                    if id(s) in LEADS:          # a promise in an answer not back yet
                        data = LEADS[id(s)] + data
                    elif rng.random() < 0.3:    # after a valid one: pipelining, finishes
                        data = bytes(wire.frame(rng.choice(router_seeds).segs)) + data
                    check_router(world, data, rng.random() < 0.3, rng.random() < 0.2)
                if rng.random() < 0.1:
                    world.advance(rng)
                    world.honest_call_works()
                    pipelined_add_up(world.router)
            except Failure as f:
                failures.setdefault(f"{f.check}: {f.detail[:120]}", []).append(i)
                world = _renew(world, folder)      # a fresh world after a failure
            except Exception:  # noqa: BLE001 - a bug in the harness itself
                failures.setdefault("harness: " + traceback.format_exc(limit=2)[-200:],
                                    []).append(i)
                world = _renew(world, folder)
            if progress and i % 10000 == 9999:
                progress(i + 1, failures)
        _close(world)
        for kind, obj in served.items():
            hostcaps.release(kind, obj)
    return count, failures


def _close(world):
    try:
        world.close()
    except Exception:  # noqa: BLE001 - a world a failure left in any state
        pass


def _renew(world, folder):
    _close(world)
    return World(folder)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.router")
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    return run_and_report(run, args.count, args.seed)


if __name__ == "__main__":
    sys.exit(main())
