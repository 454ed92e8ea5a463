"""Fuzzing the engine's native wsuper.call against Python's.

    python -m fuzz.callout --count 20000 --seed 1

Owns: the differential check of compartments/_fastcall.c's native call out
(native_call_out: the Call built and sent, the answer read, checked and
copied for the guest, all in C when plain; anything else handed to Python
with the question adopted) against compartments/engine.py's _host_call,
which is the definition.  Must not: be imported by wsuper itself.

Two real Engines with real wasmtime serve memio.wat (method 5: wsuper.call
with whatever arguments were written into its memory, then reply_read), each
on a real socket pair; one has its Guest's call_out unset, which sends every
call out to Python.  A thread plays the supervisor on the other end of each:
it reads the engine's Call and answers it as the input says: plain results
of every shape (flat, with pointers, null, a far pointer, a capability
pointer, past the segment, in two segments, in a segment longer than one
read, a pointer-rich struct mutated: _mutated), an exception, results that
need a Finish, the answer in two writes,
the answer with the outer call's Finish in the same write, the outer call's
Finish alone first (the engine finishes its question, then reads the
answer), a call into the engine first, whose guest code calls out again with
the same arguments (a call out begun inside Python's wait for another:
answered before or after the outer one), the answer to another question, or
no answer but the end of the connection.  Each input also picks the call's
arguments (a granted handle, none, a released one, an object's; params well
formed in the shapes the native path takes or wrong in the ways one can be;
capability counts; pointers inside, across the end of and outside memory;
method ids out of range; a reply pending with or without handles).

Checks, after every input: the two engines sent the same bytes (Calls and
Finish messages, their question ids written in the order first seen, the
outer call's answer, and their ends: exit codes and what they said), their
memories are the same, and so are their tables (`tables`: questions open,
ids aside, and those waited for, the reply pending and its handles, handles,
imports and references, what waits to be sent or handled, the fuel the call
used, the calls out timed).
`native` counts the calls out the native path did itself, `handed` those it
began and handed to Python, so that a run that reached neither does not pass
unnoticed.
"""
from __future__ import annotations

import argparse
import fcntl
import random
import socket
import struct
import sys
import termios
import threading
import time

from capnp_schemas import payloads, protocol, rpcwire, wire
from capnp_schemas.protocol import Content
from compartments import unchecked
from compartments.engine import ENGINE_INTERFACE, Engine
from compartments.limits import Limits
from compartments.spec import EngineSpec
from fuzz import protocol as F
from fuzz.hostmem import ARGS, LIMIT, MEMIO, MEMORY, framed, message, struct_ptr

CALL = 5                            # memio.wat's method that calls out
PARAMS_AT, OUT_AT, REPLY_AT = 4096, 8192, 16384
REPLIES = ("plain",) * 12 + ("pointers", "pointers", "null", "far", "capability",
           "outside", "exception", "finish", "split", "cancel", "wrong", "end", "caps",
           "finish first", "nested", "nested", "nested first", "nested first", "segments",
           "large", "mutated", "mutated", "mutated")
#: a struct with a text and a list of structs, and another struct: what a callee
#: (a compartment, as hostile as any; the lane forwards its one-segment results
#: without reading them) mutates for "mutated" results and params
RICH = [struct_ptr(0, 1, 3), 7,
        (2 << 2) | 1 | (2 << 32) | (6 << 35),            # "hello" at 5
        (2 << 2) | 1 | (7 << 32) | (2 << 35),            # two structs: the tag at 6
        struct_ptr(4, 1, 1),                             # a struct at 9
        0x6f6c6c6568, struct_ptr(2, 1, 0), 11, 12,
        13, (0 << 2) | 1 | (2 << 32) | (3 << 35), 0x6968]  # its text "hi" at 11


def _mutated(rng: random.Random) -> list:
    """RICH with one to four of its words mutated as fuzz/protocol.py mutates pointers
    (offsets, sizes, counts, kinds, far and capability pointers) or set to an
    interesting value, and now and then cut or grown."""
    words = list(RICH)
    for _ in range(rng.randrange(1, 5)):
        at = rng.randrange(len(words))
        if rng.randrange(3):
            words[at] = F._mutate_pointer(rng, words[at], 1)
        else:
            words[at] = rng.choice(F.INTERESTING)
    if not rng.randrange(6):
        words = words[:rng.randrange(1, len(words))]
    elif not rng.randrange(6):
        words += [rng.getrandbits(64) for _ in range(rng.randrange(1, 4))]
    return words


class Side:
    """One engine on a real socket pair, and the supervisor's end of it."""

    def __init__(self, native: bool):
        ours, theirs = socket.socketpair()
        self.sock = ours
        self.sup = protocol.Connection("supervisor")
        self.engine = Engine(theirs, EngineSpec(name="memio", module=MEMIO, exports=True,
                                                stats=True, limits=Limits(message_size=LIMIT)))
        if not native:                       # every call out, and every read, Python's
            self.engine._native.call_out = None
            self.engine._plain_serving = False
        self.peer = object()                       # what the grant reaches
        self.main = self._answer(self.sup.send_bootstrap()[1])
        self.main = self._answer(self.sup.send_call(
            self.main, ENGINE_INTERFACE, 0,
            payloads.grants_content([("peer", "compartment", "")]), [self.peer])[1])
        self.handle = self.engine.grants["peer"][0]
        if native:                                 # the calls out are taken natively
            assert self.engine._native.call_out is not None

    def _answer(self, msg: bytes) -> int:
        self.sock.sendall(msg)
        self.engine._pump()
        self.engine._flush()
        [ev] = self.sup.receive(self.sock.recv(1 << 20))
        return ev.payload.caps[0].import_id


def _reply_content(kind: str, rng: random.Random) -> Content:
    n = rng.randrange(1, 6)
    body = [rng.getrandbits(64) for _ in range(n)]
    if kind == "pointers":               # a struct with a text and a list of structs
        words = [struct_ptr(0, 1, 2), 7, (2 << 2) | 1 | (2 << 32) | (6 << 35),
                 (2 << 2) | 1 | (7 << 32) | (2 << 35), 0x6f6c6c6568,
                 struct_ptr(1, 1, 0), 11, 12, 0]
    elif kind == "null":
        words = [0] + body
    elif kind == "far":
        words = [(1 << 3) | 2, struct_ptr(0, 1, 0), 99]
    elif kind == "capability":
        words = [3]
    elif kind == "outside":
        words = [struct_ptr(n + 3, 2, 0)] + body
    elif kind == "segments":             # the struct in a second segment (a far pointer)
        return Content.standalone([struct.pack("<Q", (1 << 32) | 2), b"".join(
            struct.pack("<Q", w) for w in [struct_ptr(0, n, 0)] + body)])
    elif kind == "mutated":
        words = _mutated(rng)
    elif kind == "large":                # a small struct in a segment past one read
        words = [struct_ptr(0, n, 0)] + body + [0] * (8200 + n)
    else:
        words = [struct_ptr(0, n, 0)] + body
    return Content.standalone([b"".join(struct.pack("<Q", w & (2**64 - 1)) for w in words)])


def _respond(side: Side, kind: str, rng: random.Random, outer_qid: int, log: list):
    """The supervisor's end while the engine serves the outer call: answer its call
    out as `kind` says; everything the engine sends is logged, question ids aside."""
    sock, sup = side.sock, side.sup
    sock.settimeout(10)
    framer = wire.Framer()
    ids: dict = {}              # question id -> the order it was first seen in
    outs: list = []             # the answer ids of the engine's calls out, in order
    nested: list = []           # the question id of the supervisor's call into it
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                log.append("end")
                return
            for segs in framer.feed(data):     # each message, its bytes as sent
                log.append(_without_question_id(segs, ids))
            for ev in sup.receive(data):
                if isinstance(ev, protocol.CallReceived):
                    outs.append(ev.answer_id)
                    try:
                        _answer_out(side, kind, rng, ev, outer_qid, outs, nested)
                    except Exception as e:  # noqa: BLE001 - the engine must not wait for good
                        log.append(("could not answer", type(e).__name__))
                        sock.shutdown(socket.SHUT_WR)
                elif isinstance(ev, protocol.FinishReceived) and kind == "finish first" \
                        and outs and ev.answer_id == outs[0]:
                    # the engine finished its question once told its call was: the
                    # answer comes after that
                    sock.sendall(sup.send_return(ev.answer_id, _reply_content("plain", rng),
                                                 [], no_finish=True))
                elif isinstance(ev, protocol.ReturnReceived) and ev.question_id == outer_qid:
                    log.append(("return", ev.payload is None, ev.error,
                                None if ev.payload is None else
                                ev.payload.content.single_segment_copy()))
                    return
                elif isinstance(ev, protocol.ReturnReceived) and ev.question_id in nested:
                    # (its bytes are logged: where the event falls among them is how
                    # the kernel cut the engine's writes into reads)
                    if kind == "nested first" and len(outs) > 1:
                        # the nested call answered: now the outer call out's answer
                        sock.sendall(sup.send_return(outs[0], _reply_content("plain", rng),
                                                     [], no_finish=True))
    except (OSError, protocol.ProtocolError) as e:
        log.append(("failed", type(e).__name__))


def _without_question_id(segs, ids: dict) -> bytes:
    """A message's bytes, the question id of a Call or Finish (which differs: the
    native path's are from 2^31, Python's are small and depend on which it freed
    last) written as the order it was first seen in, b"Q000", b"Q001", ..."""
    out = [bytearray(seg) for seg in segs]
    try:
        _kind, s, start, w = wire.resolve(segs, (0, 0))
        data = (w >> 32) & 0xFFFF
        which = struct.unpack_from("<H", segs[s], 8 * start)[0] if data else 0
        if which in (rpcwire.MSG_CALL, rpcwire.MSG_FINISH):
            _kind, s, start, w = wire.resolve(segs, (s, start + data))
            if (w >> 32) & 0xFFFF:          # the Call or Finish has its data word
                at = 8 * start
                qid = struct.unpack_from("<I", out[s], at)[0]
                out[s][at:at + 4] = b"Q%03d" % ids.setdefault(qid, len(ids))
    except (TypeError, IndexError, struct.error, wire.WireError):
        pass                                # not one to rewrite: as it is
    return b"".join(bytes(seg) for seg in out)


def _answer_out(side: Side, kind: str, rng: random.Random, ev, outer_qid: int, outs: list,
                nested: list):
    sock, sup = side.sock, side.sup
    aid = ev.answer_id
    if kind in ("nested", "nested first") and len(outs) == 1:
        # a call into the engine before the answer: the guest calls out again, with
        # the same arguments (memio's method 5), from inside the wait for this one
        qid, msg = sup.send_call(side.main, 0x1234, CALL, Content.standalone([bytes(16)]))
        nested.append(qid)
        sock.sendall(msg)
    elif kind == "nested" and len(outs) == 2:
        # the outer call out's answer first, then the nested one's: in one write, or
        # in two (the nested wait reads the outer's answer, not its own)
        first = sup.send_return(outs[0], _reply_content("plain", rng), [], no_finish=True)
        second = sup.send_return(aid, _reply_content("plain", rng), [], no_finish=True)
        if rng.randrange(2):
            sock.sendall(first + second)
        else:
            sock.sendall(first)
            _read_by(side.engine)
            sock.sendall(second)
    elif kind == "nested first" and len(outs) == 2:
        # the nested call out's answer alone (the outer one's once the nested call
        # has been answered: _respond)
        sock.sendall(sup.send_return(aid, _reply_content("plain", rng), [], no_finish=True))
    elif kind in ("nested", "nested first"):
        # a third call out: the nested call's guest called out twice?  Fail it
        sock.sendall(sup.send_exception(aid, "one nested call out only", no_finish=True))
    elif kind == "finish first":
        sock.sendall(sup.send_finish(outer_qid))     # the answer once the engine finishes
    elif kind == "exception":
        sock.sendall(sup.send_exception(aid, "no such luck", rng.choice(
            ("failed", "overloaded", "disconnected")), no_finish=True))
    elif kind == "finish":
        sock.sendall(sup.send_return(aid, _reply_content("plain", rng), []))
    elif kind == "caps":
        sock.sendall(sup.send_return(aid, Content.capability(0), [object()]))
    elif kind == "split":
        msg = sup.send_return(aid, _reply_content("plain", rng), [], no_finish=True)
        cut = rng.randrange(1, len(msg))
        sock.sendall(msg[:cut])
        _read_by(side.engine)
        sock.sendall(msg[cut:])
    elif kind == "cancel":
        msg = sup.send_return(aid, _reply_content("plain", rng), [], no_finish=True)
        sock.sendall(msg + sup.send_finish(outer_qid))
    elif kind == "wrong":
        sock.sendall(_raw_return(12345))       # a question neither engine asked
    elif kind == "end":
        sock.shutdown(socket.SHUT_WR)
    else:
        content = _reply_content(kind, rng)
        if kind == "mutated" and _reads_its_answer_id(content, side.engine.max_message_bytes):
            content = _reply_content("plain", rng)
        sock.sendall(sup.send_return(aid, content, [], no_finish=True))


def _reads_its_answer_id(content: Content, max_bytes: int) -> bool:
    """Whether the guest's copy of `content`, returned, depends on the Return's answer
    id: content that runs past its segment's end reaches the header that follows it
    in the message (protocol.Connection._splice), whose first data word holds the
    id, and the native path numbers its questions from 2^31, Python from 0.  Such a
    mutant would differ rightly (the fuzzer's own false alarm, seed 1 call 299)."""
    def reading(aid):
        head, at = rpcwire.encode_return(aid, True, ())
        try:
            segs = wire.unframe(protocol.Connection._splice(head, at, content))
            m = rpcwire.decode(segs)
            return wire.single_segment_copy(segs, m.content_loc, max_bytes // 8)
        except Exception as e:  # noqa: BLE001 - any refusal: its words are compared
            return f"{type(e).__name__}: {e}"
    return len({reading(aid) for aid in (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)}) > 1


def _read_by(engine: Engine, timeout: float = 10.0):
    """Wait until `engine` has read every byte sent to it (its socket holds none
    unread), so that what is sent next comes in a read of its own: an event, not a
    pause.  A pause of 2 ms between the two writes of a split answer let both come
    in one read 33 times in 1,500 (the engine's thread had not taken the GIL back
    from this one in time): the answer was then the plain one alone, done
    natively, and test_engine_native's test of a split answer failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            unread = struct.unpack("<i", fcntl.ioctl(engine.sock.fileno(), termios.FIONREAD,
                                                     bytes(4)))[0]
        except OSError:
            return                          # its socket is gone: nothing more to read
        if not unread:
            return
        time.sleep(0.0005)


def _raw_return(qid: int) -> bytes:
    head, at = rpcwire.encode_return(qid & 0xFFFFFFFF, True, ())
    return struct.pack("<II", 0, len(head) // 8) + bytes(head)


def scenario(rng: random.Random) -> dict:
    """One call out: the memory writes, memio's arguments, the reply pending, and
    how the supervisor answers."""
    data = message(rng) if rng.randrange(4) else framed(
        [struct_ptr(0, 2, 0), rng.getrandbits(64), rng.getrandbits(64)]) \
        if rng.randrange(3) else framed(_mutated(rng))
    where = rng.choice((PARAMS_AT,) * 8 + (MEMORY - len(data), MEMORY - len(data) + 8, 0))
    length = rng.choice((len(data),) * 12 + (0, 8, len(data) - 8, len(data) + 8, -1,
                                             LIMIT + 8))
    writes = []
    if data and 0 <= where <= MEMORY - len(data):
        writes.append((where, data))
    if length == LIMIT + 8:
        big = framed([struct_ptr(0, LIMIT // 8, 0)] + [1] * (LIMIT // 8))
        writes.append((PARAMS_AT, big))
        where, length = PARAMS_AT, len(big)
    handle = rng.choice(("grant",) * 12 + (0, 99, -1, "object"))
    count = rng.choice((0,) * 14 + (1, -1, 300))
    method = rng.choice((0,) * 10 + (7, 65535, 65536, -1))
    out = rng.choice((OUT_AT,) * 12 + (MEMORY - 4, MEMORY, -8))
    iface = rng.choice((0x1234, 2**64 - 1, 1 << 63))
    read = rng.choice((REPLY_AT,) * 5 + (0, MEMORY - 8))
    pending = None
    if not rng.randrange(6):
        pending = (b"old", rng.randrange(2))
    return {"writes": writes, "handle": handle, "iface": iface, "method": method,
            "params": (where, length), "caps": (OUT_AT + 512, count), "out": out,
            "read": read, "pending": pending, "reply": rng.choice(REPLIES),
            "seed": rng.getrandbits(32)}


def run(side: Side, s: dict) -> tuple:
    """Serve one outer call (memio method 5) with scenario `s`: (what the supervisor
    saw, how the engine ended if it did, its memory, its tables)."""
    engine = side.engine
    handle = side.handle if s["handle"] == "grant" else \
        engine.handles.add(engine._local(5)) if s["handle"] == "object" else s["handle"]
    if s["pending"] is not None:          # a reply never read, its handles an object's
        data, n = s["pending"]
        hs = [engine.handles.add(engine._local(6)) for _ in range(n)]
        engine.reply = (data, hs)
        engine._reply_entries = [(h, engine.handles.get(h)) for h in hs]
    for at, data in s["writes"]:
        engine.memory.write(engine.store, data, at)
    args = struct.pack("<i", handle) + struct.pack("<Q", s["iface"]) + struct.pack(
        "<6i", s["method"], *s["params"], *s["caps"], s["out"]) + struct.pack(
        "<iii", 0, s["read"], REPLY_AT + 8192)
    engine.memory.write(engine.store, args, ARGS + 16)
    qid, msg = side.sup.send_call(side.main, 0x1234, CALL, Content.standalone([bytes(16)]))
    log: list = []
    t = threading.Thread(target=_respond,
                         args=(side, s["reply"], random.Random(s["seed"]), qid, log))
    t.start()
    side.sock.sendall(msg)
    ended = None
    try:
        engine._pump()
        engine._flush()
    except SystemExit as e:
        ended = e.code
        side.engine.sock.close()
    t.join(30)
    if t.is_alive():
        raise RuntimeError("the supervisor's end never saw the outer call end")
    memory = bytes(engine.memory.read(engine.store, 0, engine.memory.data_len(engine.store)))
    return log, ended, memory, tables(engine)


def tables(engine: Engine) -> tuple:
    """What the engine holds after a call, as far as the native path and Python's
    must agree: the question ids aside (the native path's are from 2^31), and the
    reads it took (how the answers' bytes came in two writes is the kernel's)."""
    return (len(engine.conn.questions), len(engine._waiting), sorted(engine._asking),
            engine.reply, [h for h, _entry in engine._reply_entries],
            len(list(engine.handles.entries())), sorted(engine.conn.imports.items()),
            sorted(engine._import_refs.items()), sorted(engine._unread_refs.items()),
            len(engine._outgoing), len(engine._backlog), engine._fuel_used, engine._copied,
            len(engine.call_times or ()), engine._until, len(engine._running))


def differ(seed: int, calls: int) -> tuple[list[str], int, int]:
    """(what differed, as 'seed S call I: ...'; calls out done natively; handed)."""
    rng = random.Random(seed)
    failures: list[str] = []
    native = handed = 0
    pair = None
    for i in range(calls):
        if pair is None:
            pair = (Side(True), Side(False))
        s = scenario(rng)
        a, b = run(pair[0], s), run(pair[1], s)
        for what, x, y in (("messages", a[0], b[0]), ("ends", a[1], b[1]),
                           ("memories", a[2], b[2]), ("tables", a[3], b[3])):
            if x != y:
                failures.append(f"seed {seed} call {i}: the {what} differ "
                                f"({ {k: v for k, v in s.items() if k != 'writes'} }): "
                                f"{str(x)[:300]} != {str(y)[:300]}")
        if pair[1].engine._native.calls_out or pair[1].engine._native.calls_handed:
            failures.append(f"seed {seed}: the Python engine took the native path")
        if a[1] is not None or b[1] is not None:   # an engine ended: a new pair
            native += pair[0].engine._native.calls_out
            handed += pair[0].engine._native.calls_handed
            for side in pair:
                side.sock.close()
                side.engine.sock.close()
            pair = None
    if pair is not None:
        native += pair[0].engine._native.calls_out
        handed += pair[0].engine._native.calls_handed
        for side in pair:
            side.sock.close()
            side.engine.sock.close()
    return failures, native, handed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.callout")
    ap.add_argument("--count", type=int, default=20_000, help="calls in all")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if unchecked._native is None:
        print("the native path is not built (compartments._fastcall): nothing to compare")
        return 2
    t0 = time.monotonic()
    failures, native, handed = differ(args.seed, args.count)
    for f in failures[:20]:
        print(f)
    print(f"{args.count} calls out, seed {args.seed}: {native} done natively, {handed} "
          f"handed to Python, {len(failures)} differences, {time.monotonic() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
