"""Differential fuzzing of the fast lane against the Python router, over real sockets.

    python -m fuzz.lane --count 20000 --seed 1

Two worlds, each the real Router and Lane (supervisor/_fastlane.c) with the
hand-driven engines of tests/unit/test_fastlane.py: calc (exports), app
(granted calc, its route installed by a first call) and b (granted calc too).
In about a third of the world pairs app is an external client on the gateway
instead.  In one world app's messages may go natively; in the other the lane
hands every one of them to Python (Lane.set_ok(app, False)).  Each input is app's valid
one-segment Call to calc (on its grant, or pipelined on a call still open, or
carrying a capability: calc's own, one of app's, a null one, a promised answer; its
params small, or of 80 KiB or 300 KiB), or such a Call in two segments as pycapnp
lays it out (fuzz.lane.in_two_segments: the Data behind a far pointer), or in
three (in_three_segments: a Text in a third), or
a Finish, or a Release of its grant, mutated in one segment (the mutators of fuzz/protocol.py: ids,
pointer words, integer fields, bit flips, words dropped or repeated; the first
segment mostly) or with a segment dropped or added, then
framed as one message (one input in four: two or three such messages, in one
write), followed by a plain marker call so that both worlds know when app's
input was handled (one write in five cut in two anywhere, the lane reading the
first part before the second is written).  calc answers every call it got (its answers to
method 2 held until after the next input, so that input may use their question
ids again; one input in five answered with a mutated Return); app finishes what
wants finishing; now and then app's grant is revoked, or calc's engine dies and
a new one takes its place, just before an input.

Checks, after each input, in both worlds: no exception out of the router or the
lane, no internal error reported; in the world pairs with an audit (half; in half
of those the lane's room for records is 3), the records emitted, times aside; what calc received (interface, method,
content, capabilities; the content but for its own question id's word where it
reaches its message's header, _same_calls) and what app got back (which answer, results or which
exception type and reason, or an Abort's), and whether app (and calc) was cut
off, are the same in both worlds; and b's call to calc is still delivered and
answered.  An app cut off is made anew, and the worlds too once calc was cut
off, app's grant revoked, or calc's answer no longer answered its call (both,
to stay in step).
"""
from __future__ import annotations

import argparse
import fcntl
import random
import struct
import sys
import termios
import time
import traceback

from capnp_schemas import protocol as P, rpcwire, wire
from capnp_schemas.protocol import Content
from supervisor import effects as fx

from . import protocol as F
from .seeds import Seed

Q = struct.Struct("<Q")


class Failure(Exception):
    def __init__(self, check, detail):
        super().__init__(f"{check}: {detail}")
        self.check, self.detail = check, detail


def _summary(segs):
    """What a message says, for comparing the worlds (ids the lane picks left out)."""
    try:
        m = rpcwire.decode_pycapnp(segs)
    except Exception as e:
        return ("unreadable", type(e).__name__)
    return m


class World:
    def __init__(self, native: bool, external: bool = False, audit: int | None = None):
        from tests.unit import test_fastlane as T
        self.T = T
        self.external = external     # app is an external client on the gateway
        # audit: None (off), 0 (on, the lane's own room for records) or the room for
        # records of the lane's audited calls in flight (past it they go to Python)
        self.sup = T.Sup({"calc": T.CALC, "app": None, "b": None}, external=("calc",),
                         **({} if audit is None else {"audit": True,
                                                      "audit_capacity": audit or None}))
        self.audit_seen = 0          # sup.other up to here was read for audit records
        self.calc = self._calc()
        if self.external:
            self.app = T.External(self.sup, "app")
        else:
            self.app = T.Engine(self.sup, "app", [T.grant("calc", "calc", revocable=True)])
        self.b = T.Engine(self.sup, "b", [T.grant("calc", "calc")])
        self.native = native
        self.app_raw = []            # (which, id, kind/type, content) app got, in order
        self.calc_got = []           # (interface, method, content, caps) calc got, in order
        self.held = []               # calc's answers (id, tag) to app's method-2 calls, held
        #: a seed: calc's next answer to app (not the marker's) is mutated with it
        self.bad_return = None
        self.comparable = True       # False: that answer no longer answers its call
        self.bad_sent = False        # a mutated Return went to the supervisor
        self.new_app()

    def new_app(self):
        """app (again, once cut off), its route in through a first call."""
        T = self.T
        old = getattr(self, "app", None)
        if old is not None:
            if old.pid in self.sup.router.peers:
                self.sup.perform(self.sup.router.disconnected(old.pid, "gone"))
            self.sup.lane.remove(old.pid)
            self.sup.engines.pop(old.pid, None)
            old.sock.close()
        if self.external:
            self.app = T.External(self.sup, "app")
        else:
            self.app = T.Engine(self.sup, "app", [T.grant("calc", "calc", revocable=True)])
        self.gone = False
        self._honest(self.app)
        if not self.native:
            self.sup.lane.set_ok(self.app.pid, False)
        # app's side is read raw from here on: its inputs use ids its Connection
        # does not know
        self.framer = wire.Framer()
        self.app.poll = self._app_poll
        self.imp = self.app.grants[0].import_id

    def _app_poll(self, timeout=0.0):
        from compartments.zygote import readable
        app = self.app
        if app.sock.fileno() < 0:
            return False
        if not readable(app.sock, timeout):   # poll(2): descriptors past 1,023 too
            return False
        data = app.sock.recv(1 << 20)
        if not data:
            self.gone = True
            app.sock.close()
            return False
        for segs in self.framer.feed(data):
            m = _summary(segs)
            if isinstance(m, tuple):
                self.app_raw.append(m)
                continue
            row = (m.which, getattr(m, "id", None), getattr(m, "kind", None),
                   getattr(m, "type", None), getattr(m, "reason", None))
            if m.which == rpcwire.MSG_RETURN and getattr(m, "kind", None) == "results":
                try:
                    row += (Content(segs, m.content_loc).single_segment_copy(),)
                except Exception as e:
                    row += (type(e).__name__,)
            self.app_raw.append(row)
            if m.which == rpcwire.MSG_RETURN and not m.no_finish:
                app.sock.sendall(rpcwire.encode_finish(m.id))
        return True

    def _honest(self, e):
        """`e` calls calc; calc answers everything it got; `e` gets its answer."""
        qid = e.call()
        self.serve_until(lambda: any(r.question_id == qid for r in e.returns()))
        e.inbox[:] = [x for x in e.inbox if not (isinstance(x, P.ReturnReceived)
                                                 and x.question_id == qid)]

    def serve_until(self, done, timeout=5.0, hold=False):
        end = time.monotonic() + timeout
        calc = self.calc
        while not done():
            if time.monotonic() > end:
                raise Failure("stuck", "timed out")
            self.sup.pump(0.002)
            for e in list(self.sup.engines.values()):
                e.poll(0.0)
            for ev in calc.calls():
                try:
                    content = ev.payload.content.single_segment_copy()
                except Exception as x:
                    content = type(x).__name__
                tag = None
                try:
                    tag = Q.unpack_from(wire.unframe(content)[0], 8)[0] \
                        if isinstance(content, bytes) else None
                except Exception:
                    pass
                if ev.target is not calc.main or tag != MARK:
                    self.calc_got.append(_Got((ev.interface_id, ev.method_id,
                                               ev.target is calc.main, content,
                                               len(ev.payload.caps)),
                                              Q.pack(ev.answer_id | (ev.method_id << 32))))
                if ev.answer_id in calc.conn.answers:
                    if ev.method_id == 2 and tag != MARK and hold:
                        self.held.append((ev.answer_id, tag))   # answered after the next input
                    elif ev.method_id == 1:
                        calc.send(calc.conn.send_exception(ev.answer_id, "no", "overloaded"))
                    else:
                        ret = calc.conn.send_return(ev.answer_id, self.T.params(
                            tag if tag is not None else 3),
                            no_finish=tag is None or tag % 4 != 3)   # as engines do, mostly
                        if self.bad_return is not None and tag not in (MARK, 5):
                            ret, same = bad_return(self.bad_return, ret, ev.answer_id)
                            self.bad_return = None
                            self.comparable &= same
                            self.bad_sent = True
                        calc.send(ret)
            calc.inbox[:] = [x for x in calc.inbox if not isinstance(x, P.CallReceived)]
            self.internal()

    def internal(self):
        for e in self.sup.other:
            text = getattr(e, "text", "") or getattr(e, "reason", "") or ""
            if "internal error" in str(text):
                raise Failure("internal", str(text)[:300])

    def send(self, data: bytes, marker_qid: int, cut: int | None = None):
        """app's input, then its marker call; until the marker's answer, or app gone.
        `cut`: the bytes are written in two, the lane reading (and framing) the
        first part, a message cut anywhere, before the second is written."""
        app = self.app
        out = data + marker(marker_qid, self.imp)
        try:
            if cut is not None and 0 < cut < len(out):
                app.sock.sendall(out[:cut])
                _read_by_the_lane(app.sock)
                out = out[cut:]
            app.sock.sendall(out)
        except OSError:
            self.gone = True
        n = len(self.app_raw)

        def done():
            if self.gone or app.pid in self.sup.closed or app.pid not in self.sup.router.peers:
                return True
            if self.calc_gone():
                return True
            return any(r[0] == rpcwire.MSG_RETURN and r[1] == marker_qid
                       for r in self.app_raw[n:])
        held, self.held = self.held, []
        self.serve_until(done, hold=True)
        if app.pid in self.sup.closed or app.pid not in self.sup.router.peers:
            self.gone = True
        if self.gone and not self.calc_gone():
            # app cut off: what was sent on to calc before still reaches it (the rest
            # of a large call the lane had begun to write, a Finish): read to its end
            # before what calc got is compared (else it depends on how far calc had
            # read when app went: seed 2240 input 127 under ASan, a harness false alarm)
            self.serve_until(self._calc_read_all, hold=True)
        if self.bad_sent:
            self._settle_calc()
        # the calls held since the input before (their question ids were open for
        # this one to use again): answered now
        for aid, tag in held:
            if aid in self.calc.conn.answers and self.calc.pid in self.sup.router.peers:
                self.calc.send(self.calc.conn.send_return(aid, self.T.params(
                    tag if tag is not None else 3), no_finish=True))

    def audit_records(self) -> list:
        """The audit records emitted since the last look (the lane's drained first, as
        the runtime's tick does), each without its times, in a canonical order: the
        lane's are drained when asked, Python's made as each call ends."""
        self.sup.perform(self.sup.router.native_tick())
        new = [e.record for e in self.sup.other[self.audit_seen:] if isinstance(e, fx.Audit)]
        self.audit_seen = len(self.sup.other)
        return sorted(tuple(sorted((k, str(v)) for k, v in r.items()
                                   if k not in ("time", "duration_ms"))) for r in new)

    def _calc_read_all(self) -> bool:
        """Nothing waits for calc in the lane or unread on its socket (or calc is gone)."""
        if self.calc_gone():
            return True
        if self.sup.lane.queued(self.calc.pid):
            return False
        try:
            unread = struct.unpack("<i", fcntl.ioctl(self.calc.sock.fileno(), termios.FIONREAD,
                                                     bytes(4)))[0]
        except OSError:
            return True
        return not unread

    def _settle_calc(self):
        """What calc has written is read and handled by the supervisor: its mutated
        Return's effect (calc cut off, or not) is judged only then.  The lane reads
        and hands a message to Python under its mutex, so once calc's socket holds
        nothing unread, `any_ready` (which takes the mutex) says whether Python has
        anything of it still to handle.  (A Return the lane handed to Python reached
        the router a pump later than the Python path's own read: calc was "not cut
        off" in the native world only because it was judged too soon: seed 251251,
        input 2053, a harness false alarm.)"""
        if self.calc_gone():
            return
        _read_by_the_lane(self.calc.sock)
        end = time.monotonic() + 5.0
        while self.sup.lane.any_ready() and time.monotonic() < end:
            self.sup.pump(0.05)

    def restart_calc(self):
        """calc's engine dies (its calls in flight, native or not, with it) and a
        new one serves in its place."""
        old = self.calc
        self.sup.perform(self.sup.router.disconnected(old.pid, "killed"))
        self.sup.lane.remove(old.pid)
        self.sup.engines.pop(old.pid, None)
        old.sock.close()
        self.held = []
        self.calc = self._calc()

    def _calc(self):
        calc = self.T.Engine(self.sup, "calc", exports=True)
        poll = calc.poll

        def calc_poll(timeout=0.0):          # what calc's bad Return brought back
            try:                             # breaks its own side: calc_gone
                return poll(timeout)
            except P.ProtocolError:
                return False
        calc.poll = calc_poll
        return calc

    def why_calc_gone(self) -> str:
        if self.calc.conn.closed is not None:
            return f"its own side closed: {self.calc.conn.closed}"
        if self.calc.pid in self.sup.closed or self.calc.pid not in self.sup.router.peers:
            return "the supervisor cut it off: " + "; ".join(
                str(getattr(e, "text", e))[:200] for e in self.sup.other[-3:])
        return "not gone"

    def calc_gone(self) -> bool:
        """calc cut off, or its own side of the connection broken (an Unimplemented
        echo of its bad Return, which a real engine would not send on from)."""
        return self.calc.pid in self.sup.closed or self.calc.pid not in self.sup.router.peers \
            or self.calc.conn.closed is not None

    def stop(self):
        for pid in list(self.sup.engines):      # their sockets, and then the lane's own
            self.sup.lane.remove(pid)
        self.sup.stop()


MARK = 0x5A5A5A5A5A5A5A5A


class _Got(tuple):
    """What calc got for one call, compared between the worlds (_same_calls); `own`
    (not compared) is the word of the call's own question id and method, the
    Call's first data word."""
    def __new__(cls, fields, own: bytes):
        t = super().__new__(cls, fields)
        t.own = own
        return t


def _same_calls(ca: list, cb: list) -> bool:
    """calc got the same calls in both worlds: the same fields, and the same copy of
    each one's content but where one world's copy holds its own question id's word
    where the other's holds its own.  Content whose objects run past the end of its
    last segment reaches the header the supervisor appended to it
    (protocol.Connection._splice, fastwire.h fw_forward_msg): the same words on
    either path but that id, which each path picks from its own range (the
    lane's from 2^31); the recipient reads its own message's header, nothing of
    anyone else's.  (Found with the two-segment seeds, whose Data is the last
    object, right before the header: seed 4, input 105.)"""
    if len(ca) != len(cb):
        return False
    for x, y in zip(ca, cb):
        if x == y:
            continue
        p, q = x[3], y[3]
        if x[:3] != y[:3] or x[4:] != y[4:] or type(p) is not bytes or type(q) is not bytes \
                or len(p) != len(q):
            return False
        for at in range(0, len(p), 8):
            if p[at:at + 8] != q[at:at + 8] and (p[at:at + 8], q[at:at + 8]) != (x.own, y.own):
                return False
    return True


def _read_by_the_lane(sock, timeout: float = 5.0):
    """Wait until the lane has read all that was written on `sock` (a Unix socket:
    SIOCOUTQ counts what the other end has not read yet), so that what is written
    next comes in a read of its own."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if not struct.unpack("<i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                                   bytes(4)))[0]:
                return
        except OSError:
            return
        time.sleep(0.0005)


def bad_return(seed: str, data: bytes, answer_id: int):
    """calc's Return `data`, mutated as `seed` says, alike in both worlds: its answer
    id (the lane's own numbering in one world, Python's in the other) is put back
    where it was.  Also whether the answer id changes nothing else: a mutant whose
    Return moved, or reads as a default one (answer 0, another call in the other
    world), or whose content reaches the id's bytes, may rightly differ."""
    segs = [bytearray(sg) for sg in wire.unframe(data)]
    _k, s, start, w = wire.resolve(segs, (0, 0))                       # the Message
    _k, s, at, _w = wire.resolve(segs, (s, start + ((w >> 32) & 0xFFFF)))  # its Return
    mutant = bytearray(wire.unframe(mutate_one(random.Random(seed), Seed(data)))[0])

    def with_id(aid):
        out = bytearray(mutant)
        if 8 * at + 4 <= len(out):
            out[8 * at:8 * at + 4] = struct.pack("<I", aid)
        return [bytes(out)]

    def reads(mseg, aid):
        """What the Return says, its answer id aside; None if it is not aid's."""
        try:
            _k, s2, start2, w2 = wire.resolve(mseg, (0, 0))
            _k, s2, at2, _w = wire.resolve(mseg, (s2, start2 + ((w2 >> 32) & 0xFFFF)))
            m = rpcwire.decode_pycapnp(mseg)
        except Exception:
            return None
        if (s2, at2) != (s, at) or m.which != rpcwire.MSG_RETURN or m.id != aid:
            return None
        content = None
        if getattr(m, "content_loc", None) is not None:
            try:
                content = Content(mseg, m.content_loc).single_segment_copy()
            except Exception as e:
                content = type(e).__name__
        return (m.kind, m.no_finish, m.release, getattr(m, "caps", None), content,
                getattr(m, "reason", None), getattr(m, "type", None))

    out = with_id(answer_id)
    other = answer_id ^ 0x5A5A5A5A
    mine = reads(out, answer_id)
    same = mine is not None and mine == reads(with_id(other), other)
    return wire.frame(out), same


def marker(qid, imp):
    c = P.Connection("m")
    c.imports[imp] = 1
    _q, data = c.send_call(imp, 0xC0FFEE0000000001, 0, Content.standalone(
        [struct.pack("<QQ", 1 << 32, MARK)]))
    return _renumber(data, qid)


def _renumber(data: bytes, qid: int) -> bytes:
    segs = [bytearray(s) for s in wire.unframe(data)]
    msg = P.rpc.Message.from_segments([bytes(s) for s in segs]).as_builder()
    msg.call.questionId = qid
    return wire.frame(msg.to_segments())


def _renumbered_in_place(data: bytes, qid: int) -> bytes:
    """`data`, a one-segment Call, with question id `qid`, its segments as they were
    (pycapnp's builder would lay a large one out in two)."""
    [seg] = [bytearray(sg) for sg in wire.unframe(data)]
    _k, s, start, w = wire.resolve([seg], (0, 0))                      # the Message
    _k, s, at, _w = wire.resolve([seg], (s, start + ((w >> 32) & 0xFFFF)))  # its Call
    seg[8 * at:8 * at + 4] = struct.pack("<I", qid)
    return wire.frame([bytes(seg)])


def in_two_segments(qid: int, imp: int, data: bytes, method: int = 0,
                    interface: int = 0xC0FFEE0000000001, text: str = "") -> bytes:
    """A Call framed as pycapnp (Cap'n Proto's C++) lays out one whose params
    outgrow its first segment: the header and the params struct (a
    fuzz/sample.capnp Sample, u8 = 7) in segment 0, its `data` in segment 1,
    reached by a far pointer (as an external client's large calls come); with a
    `text` longer than what segment 1 has left, that text in a third segment
    (in_three_segments)."""
    from .seeds import sample

    def build(first=None, payload=b"", text=""):
        msg = P.rpc.Message.new_message(**({} if first is None
                                           else {"num_first_segment_words": first}))
        c = msg.init("call")
        c.questionId = qid
        c.target.importedCap = imp
        c.interfaceId = interface
        c.methodId = method
        p = c.params.content.as_struct(sample.Sample)
        p.u8 = 7
        p.data = payload
        if text:
            p.text = text
        return msg.to_segments()
    first = sum(len(sg) for sg in build()) // 8       # all but the data
    segs = build(first, data, text)
    assert len(segs) == (3 if text else 2), [len(sg) for sg in segs]
    return wire.frame(segs)


def in_three_segments(qid: int, imp: int, data: bytes, text: str) -> bytes:
    """in_two_segments with a `text` in a segment of its own after the data's (the
    params struct's pointers reach two other segments; r239)."""
    return in_two_segments(qid, imp, data, text=text)


def seeds(imp: int) -> list:
    out = []
    c = P.Connection("app")
    c.imports[imp] = 1
    for method in (0, 1, 2):
        for tag in (7, 1 << 40):
            _q, data = c.send_call(imp, 0xC0FFEE0000000001, method, Content.standalone(
                [struct.pack("<QQ", 1 << 32, tag)]))
            out.append(Seed(_renumber(data, 100 + method)))
    # params past one of the lane's reads (64 KiB) and its budget of a wake-up
    # (256 KiB): a struct with its tag and a Data of 80 KiB or 300 KiB
    for size in (80 << 10, 300 << 10):
        _q, data = c.send_call(imp, 0xC0FFEE0000000001, 0, Content.standalone(
            [struct.pack("<QQQ", (1 << 32) | (1 << 48), 11, (0 << 2) | 1 | (2 << 32) | (size << 35))
             + bytes(range(256)) * (size // 256)]))
        out.append(Seed(_renumbered_in_place(data, 103)))
    # in two segments, as pycapnp (an external client) sends params that outgrow its
    # first one: header and params struct in the first, the Data behind a far
    # pointer in the second; small, and past one of the lane's reads
    for size in (64, 80 << 10):
        out.append(Seed(in_two_segments(104, imp, bytes(range(256)) * (size // 256) or b"x" * size)))
    # in three: a text in a segment after the data's (r239)
    for size in (64, 80 << 10):
        out.append(Seed(in_three_segments(105, imp, bytes(range(256)) * (size // 256) or b"x" * size,
                                          "t" * (size // 2 + 1000))))
    # pipelined on question 100 (open or not), and a finish
    _q, data = c.send_call((100, (0,)), 0xC0FFEE0000000001, 0,
                           Content.standalone([struct.pack("<QQ", 1 << 32, 9)]))
    out.append(Seed(_renumber(data, 110)))
    # calls carrying capabilities, on the grant a route is installed for: each goes to
    # Python, which wraps what it passes (r269): calc's own object back (receiverHosted),
    # one of app's (senderHosted), none, and a promised answer of a call still open
    for caps in ((P.RemoteRef(imp),), (object(),), (None,), (P.ReceiverAnswer(100),)):
        _q, data = c.send_call(imp, 0xC0FFEE0000000001, 0, Content.capability(0), caps)
        out.append(Seed(_renumbered_in_place(data, 111)))   # (pycapnp's copy aborts on
        #                                                      a capability pointer)
    out.append(Seed(rpcwire.encode_finish(100)))
    out.append(Seed(rpcwire.encode_finish(102)))   # a call calc holds: cancelled
    out.append(Seed(c.send_release(imp, 1)))       # app lets go of its grant (its route)
    return out


def mutate_one(rng, seed: Seed) -> bytes:
    """A mutated copy of the seed, framed as one message: one of its segments
    mutated (the first, mostly: the header the lane reads; the others hold
    content it forwards unread), or, one time in ten, a segment dropped or added."""
    segs = [bytearray(sg) for sg in seed.segs]
    k = 0 if len(segs) == 1 or rng.random() < 0.7 else rng.randrange(1, len(segs))
    if len(segs) > 1 and rng.random() < 0.1:
        if rng.random() < 0.5:
            del segs[rng.randrange(1, len(segs))]
        else:
            segs.append(bytearray(segs[-1][:8 * rng.randrange(4)]))
        return wire.frame([bytes(sg) for sg in segs])
    seg = segs[k]
    for _ in range(rng.choice((1, 1, 2, 3))):
        nwords = len(seg) // 8
        op = rng.randrange(10)
        if op < 3 and seed.ptrs:
            _s, p = rng.choice([sp for sp in seed.ptrs if sp[0] == k] or seed.ptrs)
            if 8 * p + 8 <= len(seg):
                Q.pack_into(seg, 8 * p, F._mutate_pointer(rng, Q.unpack_from(seg, 8 * p)[0], 1))
        elif op < 6 and nwords:
            width = rng.choice((1, 2, 4, 4, 8))
            at = rng.randrange(len(seg) // width) * width
            v = rng.choice(F.INTERESTING + (100, 101, 102, 110, 0x80000000, imp_hint[0]))
            seg[at:at + width] = (v & ((1 << 8 * width) - 1)).to_bytes(width, "little")
        elif op < 8 and seg:
            i = rng.randrange(len(seg))
            seg[i] ^= 1 << rng.randrange(8)
        elif nwords > 1:
            p = rng.randrange(nwords)
            if rng.random() < 0.5:
                seg[8 * p:8 * p] = seg[8 * p:8 * p + 8]
            else:
                del seg[8 * p:8 * p + 8]
    segs[k] = seg[:len(seg) & ~7]
    return wire.frame([bytes(sg) for sg in segs])


imp_hint = [0]


def run(count: int, seed: int = 1, progress=None) -> tuple[int, dict]:
    rng = random.Random(seed)
    failures: dict = {}
    worlds, revoked, fresh = None, False, True
    done = 0
    try:
        for i in range(count):
            if worlds is None or revoked or any(w.calc_gone() for w in worlds):
                for w in worlds or ():
                    w.stop()
                ext = rng.random() < 0.3
                audit = rng.choice((None, None, 0, 3))
                worlds, revoked, fresh = [World(True, ext, audit), World(False, ext, audit)], \
                    False, True
            if any(w.gone for w in worlds) or fresh:
                for w in worlds:
                    if not fresh:
                        w.new_app()
                    w.app_raw.clear()
                    w.calc_got.clear()
                if worlds[0].imp != worlds[1].imp:
                    raise AssertionError("the worlds are out of step")
                imp_hint[0] = worlds[0].imp
                pool = seeds(worlds[0].imp)
                qid, fresh = 1000, False
            data = mutate_one(rng, rng.choice(pool)) if rng.random() < 0.9 \
                else wire.frame(rng.choice(pool).segs)
            if rng.random() < 0.25:
                # more of app's messages in the same write (a call and its Finish,
                # an id used twice, ...): the lane takes the ones after a message it
                # handed to Python in order, through Python, as Python would
                for _ in range(rng.choice((1, 1, 2))):
                    data += mutate_one(rng, rng.choice(pool)) if rng.random() < 0.5 \
                        else wire.frame(rng.choice(pool).segs)
            cut = rng.randrange(1, len(data) + 1) if rng.random() < 0.2 else None
            qid += 1
            if rng.random() < 0.02:
                # calc restarts, app's calls held there (native, or through Python)
                # lost with it, just before this input
                for w in worlds:
                    w.restart_calc()
            if rng.random() < 0.02 and not worlds[0].external:
                # app's grant revoked, its calls held at calc in flight (natively, or
                # through Python), just before this input: both fail them, and it, alike
                for w in worlds:
                    w.sup.perform(w.sup.router.revoke("app.calc"))
                revoked = True
            if rng.random() < 0.2:
                # calc (a compartment: as hostile as anyone) answers app's call with a
                # mutated Return, which the lane may forward natively
                for w in worlds:
                    w.bad_return = f"{seed} {i}"
            for w in worlds:
                w.comparable, w.bad_sent = True, False
            try:
                for w in worlds:
                    n_app, n_calc = len(w.app_raw), len(w.calc_got)
                    w.send(data, qid, cut)
                    w.mark = (n_app, n_calc)
                    w.bad_return = None
                a, b = worlds
                if a.calc_gone() or b.calc_gone() or not (a.comparable and b.comparable):
                    # what calc's bad return did: alike in both, and the worlds start
                    # again (what app got meanwhile depends on when calc went)
                    if a.calc_gone() != b.calc_gone() and a.comparable and b.comparable:
                        raise Failure("calc cut off", f"calc cut off: native "
                                      f"{a.calc_gone()}, python {b.calc_gone()}"
                                      f" ({a.why_calc_gone()}; {b.why_calc_gone()})")
                    for w in worlds:
                        w.internal()
                    revoked = True
                    done += 1
                    continue
                ra, rb = a.app_raw[a.mark[0]:], b.app_raw[b.mark[0]:]
                ca, cb = a.calc_got[a.mark[1]:], b.calc_got[b.mark[1]:]
                if a.gone != b.gone:
                    raise Failure("cut off", f"app cut off: native {a.gone}, python {b.gone}")
                if not _same_calls(ca, cb):
                    raise Failure("calc got", f"native {ca!r:.300} python {cb!r:.300}")
                if a.gone and b.gone:
                    # app cut off (a later message of the same write broke the
                    # protocol): whether the answer to a call before it, which calc
                    # got in both worlds (compared above), reached app before its
                    # Abort is timing (the lane forwards at once; Python takes the
                    # write's messages together): seed 223 input 2309
                    ra, rb = ([r for r in rows if not (r[0] == rpcwire.MSG_RETURN
                                                       and r[2] == "results")]
                              for rows in (ra, rb))
                if ra != rb:
                    raise Failure("app got", f"native {ra!r:.300} python {rb!r:.300}")
                for w in worlds:
                    w._honest(w.b)
                aa, ab = a.audit_records(), b.audit_records()
                if aa != ab:
                    raise Failure("audit", f"native {aa!r:.600} python {ab!r:.600}")
                if any(w.bad_sent for w in worlds):
                    # calc's side of its connection believes the Return it built, not
                    # the mutant (a noFinishNeeded it did not set: it awaits a Finish
                    # for an id the supervisor may use again): the worlds start again
                    revoked = True
            except Failure as f:
                key = f"{f.check}: {f.detail[:100]}"
                failures.setdefault(key, []).append((i, f.detail, data.hex()))
                for w in worlds:
                    w.gone = True
            except Exception as e:
                key = f"harness: {type(e).__name__}: {e}"[:150]
                failures.setdefault(key, []).append((i, traceback.format_exc(), data.hex()))
                for w in worlds:
                    w.gone = True
            done += 1
            if progress and done % 500 == 0:
                progress(f"{done}/{count} inputs, {len(failures)} failure classes")
    finally:
        for w in worlds or ():
            w.stop()
    return done, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    began = time.monotonic()
    done, failures = run(args.count, args.seed,
                         progress=lambda s: print(s, file=sys.stderr, flush=True))
    for key, examples in failures.items():
        print(f"FAIL {key} ({len(examples)})")
        for i, detail, hexdata in examples[:2]:
            print(f"  input {i}: {detail[:2000]}\n  {hexdata}")
    print(f"fuzz.lane: {done} inputs, seed {args.seed}, {time.monotonic() - began:.0f} s, "
          f"{len(failures)} failure classes")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
