"""Structure-aware, differential fuzzing of the wire and protocol layer.

    python -m fuzz.protocol --count 1000000 --seed 1 [--jobs 2]
    python -m fuzz.protocol --atheris -runs=1000000     (coverage-guided; needs
                                                        pip install atheris==3.0.0)

Owns: the mutators, the checks below and the runner (the seeds are
fuzz/seeds.py).  Must not: be imported by wsuper itself (it is a test tool),
or accept a failure silently.

Seeds are valid messages of every kind a peer can send (Bootstrap; Call to an
import and pipelined on a promised answer, with capability descriptors of
every kind; Return with results and capabilities, exception, canceled,
noFinishNeeded; Finish; Release; Disembargo; Resolve; Abort; a message type
rpc.capnp does not define), one-segment and spread over many small segments
(far and double-far pointers), carrying real host-call params (Log.write,
Directory.open, File.read/write, Gateway.get, Environment.vars) or a struct
with a field of every kind (fuzz/sample.capnp); and, one input in 64,
messages past a per-message limit (257 capabilities of every kind, a
transform past its bound: fuzz/seeds.py over_seeds), which fail one call or
answer and release what they gave (RefsReleased must read as Release
messages of as many references).  Each input is a seed
mutated 1-4 times: bit flips; integers at 0, 2^31, 2^32-1, 2^63, 2^64-1 and
enum values past the last; pointer words (offset, sizes, kind, element size,
count, far and capability pointers) aimed at the pointers a walk of the seed
found; struct-list tags past the end; segment tables; truncation; invalid
UTF-8 and missing NULs in texts; splices of two seeds.

Checks (each failure is reported with its class and a reproducing input):
  framer     fed in random pieces, the stream frames into the same messages
             as fed at once; only WireError leaves the framer.  Again with a
             limit of 16 words, which most inputs pass: they are skipped the
             same way at once and in pieces, keeping at most
             wire.OVERSIZED_KEPT_BYTES of the first bytes of their segments,
             and as many of their last (r243).
  protocol   a fresh Connection with exports, imports, questions and answers
             (so ids resolve) receives the input, and one whose framing's
             limit is 16 words (a Call or Return past it fails alone, named
             from its first bytes, r236): nothing but ProtocolError
             leaves receive(); every event carries plain values only; the
             content of every payload can be forwarded (send_return) and
             arrives meaning the same at a second connection (_splice says
             what content that was not well-formed may newly reach); what an
             owner reads of it (a pipelined call's capability, the content as
             a message) raises WireError at worst.
  decoders   where rpcwire.decode accepts a message, rpcwire.decode_pycapnp
             (pycapnp, same limits) accepts it and reads the same values;
             decode never raises.  Where decode refuses, the Connection's
             fallback handled it (the protocol check).
  native     the native code (capnp_schemas/fastwire.h, which the supervisor's
             fast lane runs too) against the Python it replaces, on every
             one-segment message and content: where the native decoder
             accepts a message, the Python decoder (rpcwire._decode) and a
             Connection accept it with the same values (and pycapnp, by the
             decoders check); the forwarded bytes are the Connection's
             (send_call, send_return); the native copy and splice give the
             Python bytes, and refuse wherever Python raises; and on every
             message, of any number of segments, the copy through far
             pointers (_fastwire.copy_segments) from the root and from a
             Call's or Return's content pointer gives the Python walk's
             bytes, or is refused where and as it raises.
  plain      Connection.plain_calls (an engine's reading of a read of plain
             calls, without events) against receive(): on the input and on
             the input as a plain call's params (as a hostile caller's params
             reach the engine that serves them), each on its own, twice over
             (a read of several calls, or one question id used twice),
             between a peer's plain calls, and
             followed by a peer's call that reuses the id of an answer still
             open (refused) or of one returned with noFinishNeeded (allowed),
             and on a connection at its max_unfinished or max_kept_bytes
             (refused): it raises nothing; where it refuses,
             the connection is exactly as it was; where it accepts, receive()
             on a twin connection gives the same calls (answer id, target,
             interface, method, content copied for a guest, no capabilities)
             and leaves the same tables.
  copier     for content with a known schema: when single_segment_copy
             accepts, the copy is one segment with every pointer inside it,
             and pycapnp reads the same from the copy as from the original
             (values, or the same schema-mismatch error); when pycapnp cannot
             read the original for a structural reason (bounds, far pointers,
             tags, nesting), the copier refused it too.
  payloads   for content of a flat host-call struct: payloads.read answers
             as pycapnp does (the same values, or a refusal), and what the
             flat reader accepts on its own, pycapnp reads the same; again
             with the pointer resolved, as the protocol core hands content
             on, which is what the native reader (_fastwire.read_flat) takes.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import struct
import sys
import time
import traceback

from capnp_schemas import payloads, protocol as P, rpcwire, wire

from .seeds import (Obj, Seed, content_seeds, fresh, message_seeds, over_seeds,
                    rare_seeds, sample)

Q = struct.Struct("<Q")

INTERESTING = (0, 1, 2, 3, 4, 5, 7, 13, 14, 99, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 1 << 29,
               (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 63, (1 << 64) - 1)
BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x82", b"\xf4\x90\x80\x80")
COPY_WORDS = 1 << 16             # the copier's budget in the copier check
READ_WORDS = 1 << 16             # pycapnp's traversal limit in the copier check


# ---------------------------------------------------------------- mutations


def _rand_word(rng):
    return rng.choice(INTERESTING) if rng.random() < 0.6 else rng.getrandbits(64)


def _mutate_pointer(rng, w: int, nsegs: int) -> int:
    return _pointer_op(rng, w, nsegs) & 0xFFFFFFFFFFFFFFFF


def _pointer_op(rng, w: int, nsegs: int) -> int:
    op = rng.randrange(12)
    lo, hi = w & 0xFFFFFFFF, w >> 32
    if op == 0:                                          # offset nudged
        off = (wire._signed30(w) + rng.choice((-2, -1, 1, 2, 3))) & 0x3FFFFFFF
        return (hi << 32) | (off << 2) | (w & 3)
    if op == 1:                                          # offset anywhere
        off = rng.choice((0, 1, (1 << 29) - 1, 1 << 29, (1 << 30) - 1, rng.getrandbits(30)))
        return (hi << 32) | (off << 2) | (w & 3)
    if op == 2:                                          # struct sizes
        data, ptrs = hi & 0xFFFF, hi >> 16
        data = rng.choice((0, data + 1, max(data - 1, 0), 0xFFFF, data))
        ptrs = rng.choice((0, ptrs + 1, max(ptrs - 1, 0), 0xFFFF, ptrs)) & 0xFFFF
        return ((data & 0xFFFF) | ptrs << 16) << 32 | lo
    if op == 3:                                          # list element size
        return ((hi & ~7) | rng.randrange(8)) << 32 | lo
    if op == 4:                                          # list count
        count = hi >> 3
        count = rng.choice((0, count + 1, count + 2, max(count - 1, 0), (1 << 29) - 1,
                            rng.getrandbits(29)))
        return ((hi & 7) | (count << 3)) << 32 | lo
    if op == 5:                                          # kind
        return (w & ~3) | rng.randrange(4)
    if op == 6:                                          # a far pointer somewhere
        seg = rng.choice((rng.randrange(nsegs + 1), rng.getrandbits(32)))
        pad = rng.choice((0, 1, 2, rng.getrandbits(5), (1 << 29) - 1))
        return wire.far_pointer(seg & 0xFFFFFFFF, pad, rng.random() < 0.4)
    if op == 7:                                          # a capability (or other) pointer
        return wire.cap_pointer(rng.choice((0, 1, 5, 255, 256, (1 << 32) - 1))) \
            | (rng.choice((0, 0, 0, 4, 0xFFFC)))
    if op == 8:
        return 0
    if op == 9:                                          # far flips
        return w ^ 4 if w & 3 == wire.FAR else w ^ (1 << rng.randrange(64))
    if op == 10:
        return w ^ (1 << rng.randrange(64))
    return _rand_word(rng)


def mutate(rng, seed: Seed, seeds) -> bytes:
    segs = [bytearray(s) for s in seed.segs]
    table_op = None
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        op = rng.randrange(100)
        s = rng.randrange(len(segs))
        seg = segs[s]
        nwords = len(seg) // 8
        if op < 30 and seed.ptrs:                        # a pointer the walk found
            ls, lp = rng.choice(seed.ptrs)
            if ls < len(segs) and 8 * lp + 8 <= len(segs[ls]):
                w = Q.unpack_from(segs[ls], 8 * lp)[0]
                Q.pack_into(segs[ls], 8 * lp, _mutate_pointer(rng, w, len(segs)))
        elif op < 40 and nwords:                         # any word as a pointer
            p = rng.randrange(nwords)
            Q.pack_into(seg, 8 * p, _mutate_pointer(rng, Q.unpack_from(seg, 8 * p)[0], len(segs)))
        elif op < 52 and nwords:                         # an integer field
            width = rng.choice((1, 2, 2, 4, 4, 8))
            at = rng.randrange(len(seg) // width) * width
            v = rng.choice(INTERESTING) & ((1 << 8 * width) - 1)
            seg[at:at + width] = v.to_bytes(width, "little")
        elif op < 62 and seg:                            # bit flips
            for _ in range(rng.choice((1, 1, 2, 8))):
                i = rng.randrange(len(seg))
                seg[i] ^= 1 << rng.randrange(8)
        elif op < 68 and seed.tags:                      # a struct-list tag
            ts, tp = rng.choice(seed.tags)
            if ts < len(segs) and 8 * tp + 8 <= len(segs[ts]):
                tag = Q.unpack_from(segs[ts], 8 * tp)[0]
                n = (tag >> 2) & 0x3FFFFFFF
                n = rng.choice((n + 1, n + 2, 0, (1 << 29) - 1, 1 << 29, (1 << 30) - 1))
                tag = (tag & ~0xFFFFFFFC) | (n << 2)
                if rng.random() < 0.3:
                    tag ^= rng.choice((1, 2, 3)) | (rng.getrandbits(16) << 32)
                Q.pack_into(segs[ts], 8 * tp, tag)
                if rng.random() < 0.5:                   # and the segment ends at it
                    del segs[ts][8 * (tp + 1 + rng.randrange(3)):]
        elif op < 76 and seed.texts:                     # texts: bad UTF-8, no NUL
            ts, at, n = rng.choice(seed.texts)
            if ts < len(segs) and at + n <= len(segs[ts]) and n:
                bad = rng.choice(BAD_UTF8)
                i = at + rng.randrange(n)
                segs[ts][i:i + len(bad)] = bad[:max(0, at + n - i)]
                if rng.random() < 0.3:
                    segs[ts][at + n - 1] = 0x41
        elif op < 82 and nwords:                         # truncate a segment
            del seg[8 * rng.randrange(nwords):]
        elif op < 88:                                    # splice another seed in
            other = rng.choice(seeds)
            src = bytearray(rng.choice(other.segs))
            if rng.random() < 0.5 or not nwords:
                segs.append(src)
            else:
                p = rng.randrange(nwords)
                k = rng.randrange(1, 1 + len(src) // 8) if len(src) >= 8 else 0
                seg[8 * p:8 * p + 8 * k] = src[:8 * k]
        elif op < 92 and nwords > 1:                     # duplicate or drop words
            p = rng.randrange(nwords)
            if rng.random() < 0.5:
                seg[8 * p:8 * p] = seg[8 * p:8 * p + 8]
            else:
                del seg[8 * p:8 * p + 8]
        elif op < 97:
            table_op = rng.randrange(6)
        else:
            segs.insert(rng.randrange(len(segs) + 1), bytearray(8 * rng.randrange(3)))
    data = bytearray(wire.frame([bytes(s[:len(s) & ~7]) for s in segs]))
    if table_op is not None:
        if table_op == 0:                                # segment count
            struct.pack_into("<I", data, 0, rng.choice(
                (len(segs), max(len(segs) - 2, 0), 511, 512, 100000, (1 << 32) - 1)))
        elif table_op == 1 and len(segs):                # a segment size
            i = rng.randrange(len(segs))
            old = struct.unpack_from("<I", data, 4 + 4 * i)[0]
            struct.pack_into("<I", data, 4 + 4 * i, rng.choice(
                (old + 1, max(old - 1, 0), 0, 1 << 20, (1 << 32) - 1)))
        elif table_op == 2:                              # truncated stream
            del data[rng.randrange(len(data) + 1):]
        elif table_op == 3:                              # trailing bytes: half a message
            data += bytes(rng.randrange(1, 12))
        elif table_op == 4:                              # two messages in one read
            data += wire.frame(rng.choice(seeds).segs)
        else:
            data = data[:rng.randrange(len(data) + 1)] + bytes(rng.choice(seeds).segs[0][:16])
    return bytes(data)


# ---------------------------------------------------------------- checks


class Failure(Exception):
    """A property the harness checks did not hold: a bug to fix at its root."""

    def __init__(self, check: str, detail: str):
        super().__init__(f"{check}: {detail}")
        self.check, self.detail = check, detail


_PLAIN = (int, str, bytes, float, type(None), Obj)
_EVENT_TYPES = (P.BootstrapRequested, P.CallReceived, P.ReturnReceived, P.FinishReceived,
                P.ExportReleased, P.Unhandled, P.AbortReceived, P.Payload, P.Imported,
                P.Exported, P.PromisedAnswer, P.RemoteRef, P.DisembargoReceived,
                P.RefsReleased)


def plain(v, path="event"):
    """Raise Failure unless `v` holds plain values only."""
    if isinstance(v, _PLAIN):
        return
    if isinstance(v, tuple):
        for i, x in enumerate(v):
            plain(x, f"{path}[{i}]")
    elif isinstance(v, P.Content):
        if not all(isinstance(s, (bytes, bytearray, memoryview)) for s in v.segments):
            raise Failure("protocol", f"{path}: content segments of another type")
        plain(v.loc, path + ".loc")
        plain(v.word, path + ".word")
    elif isinstance(v, _EVENT_TYPES):
        for name in v.__attrs_attrs__:
            plain(getattr(v, name.name), f"{path}.{name.name}")
    else:
        raise Failure("protocol", f"{path} is a {type(v).__module__}.{type(v).__name__}")


def _tables(c: P.Connection) -> tuple:
    return (sorted(c.answers), c.unanswered, c._unfinished, sorted(c._no_finish),
            sorted(c.questions), dict(c.imports), sorted(c.exports), c._framer.messages,
            c._framer.pending, c.closed)


def _guest_bytes(content: P.Content):
    try:
        return content.single_segment_copy()
    except wire.WireError as e:
        return f"WireError: {e}"


def _peer_call(qid: int, i: int, content: P.Content | None = None) -> bytes:
    """A call with question id `qid` to the fuzzed connection's export i % 4, method
    i, as a peer's Connection makes it: plain, with a one-word struct, or `content`."""
    peer = P.Connection("peer")
    peer.imports.update({i: 1 for i in range(4)})
    for _ in range(qid):
        peer._new_question([])
    return peer.send_call(i % 4, 0x1234, i, content or P.Content.standalone(
        [struct.pack("<QQ", 1 << 32, i)]))[1]


def _peer_calls() -> list[bytes]:
    """Plain calls to the fuzzed connection's exports: three with question ids
    it has no answers for (10 up); one reusing the id of its answer 2, open and
    not returned (a protocol error); one reusing 4, an answer `_plain_state`
    returned with noFinishNeeded (allowed)."""
    return [_peer_call(10 + i, i) for i in range(3)] + [_peer_call(2, 3), _peer_call(4, 4)]


_PEER_CALLS = []


def _plain_state(kind: str) -> P.Connection:
    """fresh(), and: "allowance", its answer 4 returned with noFinishNeeded (a
    Finish for it allowed, its id free again); "unfinished", at its max_unfinished;
    "kept", past its max_kept_bytes (a new answer refused, both of them)."""
    c = fresh()
    if kind == "allowance":
        c._new_answer(4)
        c.send_return(4, P.EMPTY, no_finish=True)
    elif kind == "unfinished":
        c.max_unfinished = c.unfinished
    elif kind == "kept":
        c.max_kept_bytes = c._kept - 1
    return c


def _as_params(data: bytes) -> bytes | None:
    """The input as the params of a plain call (question id 20, to export 1), as a
    caller's Connection, or the supervisor's fast lane, forwards a hostile
    caller's params to the engine that serves them: its segments unchanged but
    for the root word, the Call's header after them (Connection._splice).  None
    where it is no message or its root cannot be forwarded (the sender's own
    engine refuses such params)."""
    try:
        segs = wire.unframe(data)
        return _peer_call(20, 1, P.Content(tuple(bytes(s) for s in segs), (0, 0)))
    except wire.WireError:
        return None


def check_plain(data: bytes):
    if not _PEER_CALLS:
        _PEER_CALLS.extend(_peer_calls())
    c0, c1, c2, open2, allowed4 = _PEER_CALLS
    reads = [(c0 + c1 + c2, "")]
    # the input, and the input as a plain call's params (the mutated messages are
    # nearly never a plain call themselves: every Call seed passes capabilities);
    # a later call of a read reusing an open answer's id, or one freed with
    # noFinishNeeded: plain_calls checks only the first call's limits and opens the
    # answers after it without _new_answer's checks (4a05a58); at the limits
    for one in (data, _as_params(data)):
        if one is not None:
            reads += [(one, ""), (one * 2, ""), (c0 + one, ""), (c0 + one + c1, ""),
                      (one + c2, ""), (c0 + one + open2, ""), (one + allowed4, "allowance"),
                      (c0 + one + allowed4, "allowance"), (c0 + one, "unfinished"),
                      (one + c1, "kept")]
    for read, kind in reads:
        a, b = _plain_state(kind), _plain_state(kind)
        try:
            calls = a.plain_calls(read, Obj)
        except Exception as e:
            raise Failure("plain", f"{type(e).__name__} escaped plain_calls: {_line(e)}") from e
        if calls is None:
            if _tables(a) != _tables(b):
                raise Failure("plain", "plain_calls refused a read and changed the tables")
            continue
        try:
            events = b.receive(read)
        except P.ProtocolError as e:
            raise Failure("plain", f"plain_calls took a read receive() refuses: {_line(e)}")
        except Exception as e:                          # the protocol check's failure
            raise Failure("protocol", f"{type(e).__name__} escaped receive(): {_line(e)}") from e
        got = [(ev.answer_id, ev.target, ev.interface_id, ev.method_id,
                _guest_bytes(ev.payload.content), ev.payload.caps, ev.elsewhere)
               if isinstance(ev, P.CallReceived) else type(ev).__name__ for ev in events]
        want = [(aid, t, f, m, _guest_bytes(c), (), False) for aid, t, f, m, c in calls]
        if got != want:
            raise Failure("plain", f"plain_calls read {str(want)[:200]}, receive() "
                                   f"{str(got)[:200]}")
        if _tables(a) != _tables(b):
            raise Failure("plain", "plain_calls and receive() left different tables")


#: A framing limit most inputs pass (16 words): they are skipped, and a Call or
#: Return among them fails alone, named from its first bytes (wire.Oversized)
SMALL_WORDS = 16


def check_protocol(data: bytes, max_message_words: int = wire.MAX_MESSAGE_WORDS):
    conn = fresh(max_message_words)
    try:
        events = conn.receive(data)
    except P.ProtocolError as e:
        if type(e) is not P.ProtocolError:
            raise Failure("protocol", f"a subclass of ProtocolError escaped: {type(e)}")
        if conn.closed is None:
            raise Failure("protocol", "ProtocolError left the connection open")
        return
    except Exception as e:
        raise Failure("protocol", f"{type(e).__name__} escaped receive(): {_line(e)}") from e
    for ev in events:
        plain(ev)
        if isinstance(ev, P.Unhandled):
            try:
                echo = rpcwire.decode_pycapnp(wire.unframe(ev.reply)).which
            except Exception as e:
                raise Failure("protocol", f"the unimplemented echo does not read: "
                                          f"{type(e).__name__}: {_line(e)}") from e
            if echo != rpcwire.MSG_UNIMPLEMENTED:
                raise Failure("protocol", f"the unimplemented echo is a message #{echo}")
            if len(ev.reply) > len(data) + P._ECHO_OVERHEAD:
                raise Failure("protocol", f"the unimplemented echo ({len(ev.reply)} bytes) is "
                                          f"larger than the input ({len(data)} bytes)")
        if isinstance(ev, P.RefsReleased):
            # a refused message's references (a per-message limit): Release
            # messages, as many references as it gave, none through the tables
            try:
                got = 0
                for segs in wire.Framer().feed(ev.data):
                    m = rpcwire.decode_pycapnp(segs)
                    if m.which != rpcwire.MSG_RELEASE:
                        raise ValueError(f"a message #{m.which}")
                    got += m.count
            except Exception as e:
                raise Failure("protocol", f"a refused message's releases do not read: "
                                          f"{type(e).__name__}: {_line(e)}") from e
            if got != ev.count:
                raise Failure("protocol", f"a refused message gave {ev.count} references "
                                          f"and {got} were released")
        payload = getattr(ev, "payload", None)
        if payload is not None and payload.content.segments:
            _forward(payload.content)
            _owner_reads(payload.content, (0,))
        for pa in _promises(ev):
            if pa.result is not None:
                _owner_reads(pa.result[0], pa.transform)


#: bytes kept of a skipped message's segments' first (and last) for check_kept: a
#: few words, so that headers of every shape lie partly outside them
KEPT_SMALL = 256


def _header_facts(events) -> list:
    out = []
    for ev in events:
        if isinstance(ev, P.CallReceived):
            t = ev.target
            out.append(("call", ev.answer_id, ev.interface_id, ev.method_id, ev.elsewhere,
                        (t.answer_id, t.transform) if isinstance(t, P.PromisedAnswer)
                        else id(t)))
        elif isinstance(ev, P.ReturnReceived):
            out.append(("return", ev.question_id))
    return out


def check_kept(data: bytes):
    """A message past the framing's limit is read from the bytes kept of it (the
    first and the last of each segment, laid out in place, the rest reading as
    zeros): where that reading fails a call or an answer alone, reading the
    whole message gives the same call or answer (ids, target, interface,
    method), or refuses the message; never a header read from words not kept."""
    kept = wire.OVERSIZED_KEPT_BYTES
    wire.OVERSIZED_KEPT_BYTES = KEPT_SMALL
    try:
        conn = fresh(SMALL_WORDS)
        try:
            events = conn.receive(data)
        except P.ProtocolError:
            return
        except Exception as e:
            raise Failure("kept", f"{type(e).__name__} escaped receive(): {_line(e)}") from e
    finally:
        wire.OVERSIZED_KEPT_BYTES = kept
    skipped = [ev for ev in events
               if isinstance(ev, (P.CallReceived, P.ReturnReceived))
               and "more than this connection takes" in ((getattr(ev, "over", None) or "")
                                                         + (getattr(ev, "error", None) or ""))]
    if not skipped:
        return
    try:
        whole = fresh().receive(data)
    except P.ProtocolError:
        return
    got, want = _header_facts(skipped), _header_facts(whole)
    if any(g not in want for g in got):
        raise Failure("kept", f"read from the bytes kept as {got}, whole as {want}")


def _promises(ev):
    out = [ev.target] if isinstance(getattr(ev, "target", None), P.PromisedAnswer) else []
    payload = getattr(ev, "payload", None)
    if payload is not None:
        out += [c for c in payload.caps if isinstance(c, P.PromisedAnswer)]
    return out


def _owner_reads(content: P.Content, transform):
    """What an owner reads of a payload (a pipelined call's capability, the
    content as a standalone message) raises WireError at worst."""
    for read in (lambda: content.cap_index(transform), content.message,
                 lambda: content.follow(transform)):
        try:
            read()
        except wire.WireError:
            pass
        except Exception as e:
            raise Failure("owner", f"{type(e).__name__} reading received content: "
                                   f"{_line(e)}") from e


def check_framing(rng, data: bytes):
    """Fed in pieces, the stream frames into the same messages as at once, up to
    a bad segment table (the messages whole before it come out, then the error)."""
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 4)))
    outcomes = []
    pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    for max_words, chunks in ((wire.MAX_MESSAGE_WORDS, [data]), (wire.MAX_MESSAGE_WORDS, pieces),
                              (SMALL_WORDS, [data]), (SMALL_WORDS, pieces)):
        f, got, error = wire.Framer(max_words=max_words), [], None
        try:
            for chunk in chunks:
                got += [("skipped", m.size, m.limit, m.segments, m.tails, m.words)
                        if type(m) is wire.Oversized
                        else [bytes(s) for s in m] for m in f.feed(chunk)]
        except wire.WireError as e:
            error = str(e)
        except Exception as e:
            raise Failure("framer", f"{type(e).__name__}: {_line(e)}") from e
        if f.failed is not None:             # met after messages: raised by the next feed
            if error is not None and error != str(f.failed):
                raise Failure("framer", "raised another error than the one pending")
            error = str(f.failed)
        outcomes.append((got, error))
    if outcomes[0] != outcomes[1] or outcomes[2] != outcomes[3]:
        raise Failure("framer", "fed in pieces, the stream frames differently")
    for got, _error in outcomes[2:]:
        for m in got:
            if type(m) is tuple and (sum(map(len, m[3])) > wire.OVERSIZED_KEPT_BYTES
                                     or sum(map(len, m[4])) > wire.OVERSIZED_KEPT_BYTES):
                raise Failure("framer", f"a skipped message kept {sum(map(len, m[3]))} bytes "
                                        f"of its segments' first, {sum(map(len, m[4]))} of "
                                        f"their last")


def _forward(content: P.Content):
    """Received content must forward without error and arrive the same."""
    a, b = P.Connection("fwd-a"), P.Connection("fwd-b")
    b._new_question([])
    a._new_answer(0)
    try:
        data = a.send_return(0, content)
        content.message()
    except Exception as e:
        raise Failure("forward", f"{type(e).__name__} forwarding received content: "
                                 f"{_line(e)}") from e
    try:
        (ev,) = b.receive(data)
    except Exception as e:
        raise Failure("forward", f"forwarded content refused: {type(e).__name__}: "
                                 f"{_line(e)}") from e
    try:
        before = content.single_segment_copy(COPY_WORDS)
    except wire.WireError:
        before = None
    try:
        after = ev.payload.content.single_segment_copy(COPY_WORDS)
    except wire.WireError:
        after = None
    # content that was not well-formed (before is None) may read otherwise
    # after forwarding, but only through the words _splice documents
    if before is not None and before != after \
            and not reaches_root_word(content.segments, content.loc):
        raise Failure("forward", "forwarded content differs from the received content")


def reaches_root_word(segs, loc, limit=100_000) -> bool:
    """Whether the content at `loc` reaches the sender's root word (segment 0,
    word 0): as a far landing pad, or inside an object.  Forwarding replaces
    that one word (protocol.Connection._splice), so such content (which only a
    hostile sender makes) may read differently after it; nothing else may."""
    todo, seen = [loc], set()
    while todo:
        if len(seen) > limit:
            return True                  # too big to tell: the copies refused it anyway
        at = todo.pop()
        if at in seen:
            continue
        seen.add(at)
        try:
            w = wire._word(segs, *at)
            if w & 3 == wire.FAR and (w >> 32) == 0 and (w >> 3) & 0x1FFFFFFF <= 0:
                return True
            r = wire.resolve(segs, at)
        except wire.WireError:
            continue
        if r is None or r[0] == wire.OTHER:
            continue
        kind, seg, start, w = r
        if seg == 0 and start == 0 and wire.object_words(w):
            return True
        if kind == wire.STRUCT:
            data = (w >> 32) & 0xFFFF
            todo.extend((seg, start + data + i) for i in range(w >> 48))
        elif (w >> 32) & 7 == 6:
            todo.extend((seg, start + i) for i in range(w >> 35))
        elif (w >> 32) & 7 == wire.COMPOSITE:
            try:
                n, data, pc = wire.composite_tag(segs, r)
            except wire.WireError:
                continue
            for i in range(n):
                e = start + 1 + i * (data + pc)
                todo.extend((seg, e + data + j) for j in range(pc))
    return False


def check_decoders(data: bytes):
    try:
        messages = wire.Framer().feed(data)
    except wire.WireError:
        return
    except Exception as e:
        raise Failure("framer", f"{type(e).__name__}: {_line(e)}") from e
    for segs in messages:
        try:
            fast = rpcwire.decode(segs)
        except Exception as e:
            raise Failure("decoders", f"rpcwire.decode raised {type(e).__name__}: "
                                      f"{_line(e)}") from e
        if fast is None:
            continue
        try:
            slow = rpcwire.decode_pycapnp(segs)
        except Exception as e:
            raise Failure("decoders", f"rpcwire.decode accepted what pycapnp refuses: "
                                      f"{type(e).__name__}: {_line(e)}") from e
        if fast.fields() != slow.fields():
            diff = {k: (v, slow.fields().get(k)) for k, v in fast.fields().items()
                    if slow.fields().get(k) != v}
            raise Failure("decoders", f"rpcwire.decode and pycapnp disagree: {diff}")


class _PythonOnly:
    """Within it, wire.py and friends run their Python code, not the native one."""

    def __enter__(self):
        self.saved, wire._native = wire._native, None

    def __exit__(self, *exc):
        wire._native = self.saved


def _python_copy(segs, loc, words):
    with _PythonOnly():
        try:
            return wire.single_segment_copy(segs, loc, words)
        except wire.WireError:
            return None


def check_native(data: bytes):
    native = wire._native
    if native is None:
        return
    framer = wire.Framer()
    try:
        messages = framer.feed(data)
    except wire.WireError:
        return
    alone = len(messages) == 1 and framer.failed is None   # `data` is that one message
    several = getattr(native, "copy_segments", None)
    for segs in messages:
        if several is not None:
            # the copy through far pointers, in any number of segments: the same
            # bytes, or refused where the walk raises and named as it names it;
            # from the root, and from a Call's or Return's content pointer, where an
            # engine (its guest's params or reply) and router.content_bytes start it
            # (checked from the root only, a copy that erred past a landing pad in
            # another segment, or from a pointer no root walk reaches, went unseen)
            locs = [(0, 0)]
            with _PythonOnly():
                decoded = rpcwire.decode(segs)
            at = getattr(decoded, "content_loc", None)
            if at is not None and at != (0, 0):
                locs.append(at)
            for loc in locs:
                with _PythonOnly():
                    try:
                        want = wire.single_segment_copy(segs, loc, COPY_WORDS)
                    except wire.WireError as e:
                        want = f"WireError: {e}"
                got = several([bytes(s) for s in segs], loc[0], loc[1], COPY_WORDS)
                if isinstance(got, tuple):
                    try:
                        wire._copy_refused(segs, got, COPY_WORDS)
                        got = "not refused"
                    except wire.WireError as e:
                        got = f"WireError: {e}"
                if got != want:
                    raise Failure("native", f"the native copy of {len(segs)} segments differs "
                                            f"from wire.py's: {str(got)[:80]} / {str(want)[:80]}")
        if len(segs) != 1:
            _check_forward_msg(native, segs)
            continue
        seg = bytes(segs[0])
        # the copy, from the root and (below) from a payload's content
        for loc in ((0, 0), None):
            got = native.copy(seg, -1 if loc is None else loc[1], COPY_WORDS)
            want = _python_copy(segs, loc, COPY_WORDS)
            if got is not None and got != want:
                raise Failure("native", f"the native copy differs from wire.py's "
                                        f"({'refused' if want is None else 'other bytes'})")
        t = native.decode(seg)
        if t is None:
            continue
        with _PythonOnly():
            slow = rpcwire.decode(segs)
        if slow is None:
            raise Failure("native", "the native decoder accepted what rpcwire._decode refuses")
        fast = rpcwire._plain(t)
        if fast.fields() != slow.fields():
            diff = {k: (v, slow.fields().get(k)) for k, v in fast.fields().items()
                    if slow.fields().get(k) != v}
            raise Failure("native", f"the native decoder and rpcwire._decode disagree: {diff}")
        if getattr(fast, "content_loc", None) is not None:
            # the content pointer as it resolved it: what the protocol core and the
            # flat reader then take instead of resolving it again
            try:
                want = wire.resolve(segs, fast.content_loc)
            except wire.WireError as e:
                want = f"WireError: {e}"
            if fast.content_root != want:
                raise Failure("native", f"the native decoder resolves the content pointer "
                                        f"as {fast.content_root}, wire.resolve as {want}")
        if t[0] == 3:
            continue
        # a Connection accepts it, and forwarding it gives the native bytes
        received = _received_and_forwarded(t, data if alone else wire.frame(segs), "")
        if received is None:
            return
        ev, want = received
        content = ev.payload.content
        if t[0] == 1:
            got = native.forward(seg, (1 << 31) + 5, 7, ev.interface_id, ev.method_id, False)
        else:
            got = native.forward(seg, 9, 0, 0, 0, True)
        if got != want:
            raise Failure("native", "the forwarded bytes differ from protocol.Connection's")
        # the content as an engine copies it for its guest, and splices it on
        if content.segments:
            got = native.copy(seg, content.loc[1], COPY_WORDS)
            want = _python_copy(content.segments, content.loc, COPY_WORDS)
            if got is not None and got != want:
                raise Failure("native", "the native copy of a payload's content differs")
            head, at = rpcwire.encode_return(3, True, ())
            got = native.splice(bytes(head), at, seg, content.loc[1])
            with _PythonOnly():
                try:
                    want = P.Connection._splice(bytearray(head), at, content)
                except wire.WireError:
                    want = None
            if got is not None and got != want:
                raise Failure("native", "the native splice differs from protocol.py's")


def _received_and_forwarded(t, data: bytes, what: str):
    """The framed message `data`, which the native decoder read as `t` (a plain
    call or return), received by a Connection that issued what it names; then
    (its event, the bytes protocol.Connection forwards it as: a call to import 7
    as question 2^31+5, or a return to question 9), or None if the Connection
    refuses it for another reason than the protocol's (the protocol check's to
    report).  A ProtocolError is a Failure: the native decoder accepted it."""
    conn = P.Connection("native")
    if t[0] == 1:
        conn.exports[t[2]] = P._Export(object(), 1)
        conn._export_ids[id(conn.exports[t[2]].obj)] = t[2]
    else:
        conn.questions[t[1]] = P._Question([])
    try:
        (ev,) = conn.receive(data)
    except P.ProtocolError as e:
        raise Failure("native", f"the native decoder accepted what a Connection "
                                f"refuses{what}: {_line(e)}") from e
    except Exception:  # noqa: BLE001 - anything else is the protocol check's to report
        return None
    content = ev.payload.content
    out = P.Connection("out")
    with _PythonOnly():
        if t[0] == 1:
            out.imports[7] = 1
            out._qids._next = (1 << 31) + 5
            _q, want = out.send_call(7, ev.interface_id, ev.method_id, content)
        else:
            out.answers[9] = P._Answer()
            out.unanswered = 1
            want = out.send_return(9, content, (), no_finish=True)
    return ev, want


def _check_forward_msg(native, segs):
    """A message of several segments whose first one the native decoder reads as a
    plain call or return (its header and content pointer there, near pointers
    only): the fast lane forwards it (fastwire.h fw_forward_msg).  rpcwire.decode
    reads the same values from all the segments, a Connection accepts it, the
    forwarded bytes are protocol.Connection's (_splice: the segments as they came,
    the header on the end of the last), and the lane's measure of its content
    against a message_size (fw_msg_content_bytes) is router.content_bytes's."""
    forward = getattr(native, "forward_msg", None)
    if forward is None:
        return
    from supervisor import router as R
    data = wire.frame([bytes(sg) for sg in segs])
    t = native.decode(bytes(segs[0]))
    if t is None or t[0] == 3:
        if forward(data, 9, 7, 1, 0, True) is not None:
            raise Failure("native", "forward_msg forwards what the decoder refuses")
        return
    with _PythonOnly():
        slow = rpcwire.decode(segs)
    if slow is None:
        raise Failure("native", f"the native decoder accepted the first of {len(segs)} "
                                f"segments, which rpcwire._decode refuses")
    fast = rpcwire._plain(t)
    if fast.fields() != slow.fields():
        diff = {k: (v, slow.fields().get(k)) for k, v in fast.fields().items()
                if slow.fields().get(k) != v}
        raise Failure("native", f"the native decoder and rpcwire._decode disagree on a "
                                f"message of {len(segs)} segments: {diff}")
    received = _received_and_forwarded(t, data, f" ({len(segs)} segments)")
    if received is None:
        return
    ev, want = received
    content = ev.payload.content
    if t[0] == 1:
        got = forward(data, (1 << 31) + 5, 7, ev.interface_id, ev.method_id, False)
    else:
        got = forward(data, 9, 0, 0, 0, True)
    if got != want:
        raise Failure("native", f"the forwarded bytes of {len(segs)} segments differ from "
                                f"protocol.Connection's")
    size = content.size()
    for limit in {max(size - d, 0) for d in (0, 8, 64, 1000, R.HEADER_SLACK, R.HEADER_SLACK + 8)}:
        got = native.content_bytes(data, limit)
        want = R.content_bytes(content, limit)
        if got != want:
            raise Failure("native", f"the lane measures content of {len(segs)} segments as "
                                    f"{got} bytes against {limit}, router.content_bytes as {want}")


_STRUCTURAL = re.compile(
    r"out-of-bounds|far pointer|unknown segment|overrun|amplified|too deeply|"
    r"Unknown pointer type|INLINE_COMPOSITE lists of non-STRUCT|did not contain a root")
_LIMIT = re.compile(r"traversal limit")


def _read(mod, segs):
    """('ok', everything pycapnp reads) or ('error', its first line)."""
    try:
        with_limits = mod.from_segments(segs, traversal_limit_in_words=READ_WORDS,
                                        nesting_limit=wire.MAX_NESTING)
        return "ok", repr(with_limits.to_dict())
    except Exception as e:
        return "error", re.sub(r"stack: .*", "", _line(e))


def check_copier(mod, segs):
    try:
        copy = wire.single_segment_copy(segs, (0, 0), COPY_WORDS)
    except wire.WireError:
        return                               # refusing is always allowed
    except Exception as e:
        raise Failure("copier", f"single_segment_copy raised {type(e).__name__}: "
                                f"{_line(e)}") from e
    try:
        (one,) = wire.unframe(copy)
        _inside(one)
    except (ValueError, wire.WireError) as e:
        raise Failure("copier", f"the copy is not one self-contained segment: {_line(e)}") from e
    original = _read(mod, segs)
    if original[0] == "error":
        if _LIMIT.search(original[1]):
            return
        if _STRUCTURAL.search(original[1]):
            raise Failure("copier", f"copied what pycapnp cannot read: {original[1]}")
    copied = _read(mod, [one])
    if copied != original:
        raise Failure("copier", f"pycapnp reads {copied[0]} from the copy and "
                                f"{original[0]} from the original: "
                                f"{(copied[1] if copied[0] == 'error' else original[1])[:160]}")


def resolved(segs, loc=(0, 0)) -> P.Content:
    """Content whose pointer is resolved, as the protocol core hands it on (the
    native flat reader takes only such content); its root unknown (False) where
    the pointer cannot be resolved."""
    try:
        root = wire.resolve(segs, loc)
    except wire.WireError:
        root = False
    return P.Content(tuple(segs), loc, root=root)


def check_payloads(mod, segs):
    """The flat-struct reader (capnp_schemas/payloads.py) answers as pycapnp does:
    the same values, or a refusal; and what it accepts itself, pycapnp reads
    the same."""
    flat = payloads._flat(mod)
    if flat is None:
        return
    content = P.Content.standalone(segs)

    def outcome(reader):
        try:
            return "ok", repr(reader())
        except payloads.DecodeError:
            return "refused", ""
    theirs = outcome(lambda: payloads._read_pycapnp(mod, content, READ_WORDS))
    ours = outcome(lambda: payloads.read(mod, content, READ_WORDS))
    if ours != theirs:
        raise Failure("payloads", f"read gives {ours[0]} {ours[1][:80]}, pycapnp {theirs[0]} "
                                  f"{theirs[1][:80]}")
    alone = outcome(lambda: payloads._read_flat(flat, content, READ_WORDS))
    if alone[0] == "ok" and alone != theirs:
        raise Failure("payloads", f"the flat reader accepts what pycapnp reads as {theirs[0]} "
                                  f"{theirs[1][:80]}: {alone[1][:80]}")
    # as the protocol core hands content on, its pointer resolved: the native reader's
    # (_fastwire.read_flat) turn, which must read the same or leave it to the rest
    native = outcome(lambda: payloads.read(mod, resolved(segs), READ_WORDS))
    if native != theirs:
        raise Failure("payloads", f"read of resolved content gives {native[0]} "
                                  f"{native[1][:80]}, pycapnp {theirs[0]} {theirs[1][:80]}")


def _inside(seg):
    """Every pointer of a single-segment copy is near and inside the segment."""
    todo = [(0, 0)]
    while todo:
        p, depth = todo.pop()
        r = wire.resolve([seg], (0, p))
        w = Q.unpack_from(seg, 8 * p)[0]
        if w & 3 == wire.FAR:
            raise wire.WireError("the copy holds a far pointer")
        if r is None or r[0] == wire.OTHER:
            continue
        _k, _s, start, w = r
        if r[0] == wire.STRUCT:
            data = (w >> 32) & 0xFFFF
            todo.extend((start + data + i, depth + 1) for i in range(w >> 48))
        elif (w >> 32) & 7 == 6:
            todo.extend((start + i, depth + 1) for i in range(w >> 35))
        elif (w >> 32) & 7 == 7:
            n, data, pc = wire.composite_tag([seg], r)
            if n * (data + pc) != w >> 35:
                raise wire.WireError("the copy's struct list claims words it does not hold")
            for i in range(n):
                e = start + 1 + i * (data + pc)
                todo.extend((e + data + j, depth + 1) for j in range(pc))


def _line(e) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return text[:300]


# ---------------------------------------------------------------- running


_STATE: dict = {}


def _setup():
    if not _STATE:
        contents = content_seeds()
        _STATE["contents"] = [Seed(segs, mod) for mod, segs in contents]
        _STATE["messages"] = [Seed(m) for m in message_seeds(contents)]
        _STATE["all"] = _STATE["contents"] + _STATE["messages"]
        _STATE["over"] = [Seed(m) for m in over_seeds()]
        _STATE["rare"] = [Seed(m) for m in rare_seeds()]
    return _STATE


def one(seed: int, i: int):
    """Input number i of run `seed`: (data, schema or None), reproducibly."""
    st = _setup()
    rng = random.Random(seed * 1_000_003 + i)
    if i % 64 == 63:               # one in 64: a message past a per-message limit
        return mutate(rng, rng.choice(st["over"]), st["all"]), None
    if i % 64 == 31:               # one in 64: a rare kind or shape (r243)
        s = rng.choice(st["rare"])
        return (wire.frame(s.segs) if rng.random() < 0.25
                else mutate(rng, s, st["all"])), None
    if rng.random() < 0.25:
        s = rng.choice(st["contents"])
        return mutate(rng, s, st["all"]), s.schema
    s = rng.choice(st["messages"])
    return mutate(rng, s, st["all"]), None


def run_one(data: bytes, schema=None, rng=None):
    """All checks on one input; raises Failure."""
    check_framing(rng or random.Random(len(data)), data)
    if schema is not None:
        try:
            segs = wire.unframe(data)
        except wire.WireError:
            segs = None
        if segs is not None:
            check_copier(schema, segs)
            check_payloads(schema, segs)
    check_decoders(data)
    check_native(data)
    check_protocol(data)
    check_protocol(data, SMALL_WORDS)
    check_kept(data)
    check_plain(data)


def _key(f: Failure) -> str:
    return f"{f.check}: " + re.sub(r"\d+", "N", f.detail)[:120]


#: One input taking more CPU time than this is a failure: work must stay bounded.
SLOW_SECONDS = 1.0


def run_range(seed: int, start: int, stop: int, max_examples: int = 3):
    """Run inputs [start, stop); returns (count, {failure class: [(i, detail, hex)]})."""
    failures: dict = {}
    for i in range(start, stop):
        data, schema = one(seed, i)
        try:
            began = time.process_time()            # CPU time: other load does not count
            run_one(data, schema, random.Random(i))
            took = time.process_time() - began
            if took > SLOW_SECONDS:
                raise Failure("slow", f"one input took {took:.1f} s of CPU")
        except Failure as f:
            ex = failures.setdefault(_key(f), [])
            if len(ex) < max_examples:
                ex.append((i, f.detail, data.hex()))
        except Exception as e:                            # a bug in a check itself
            ex = failures.setdefault(f"harness: {type(e).__name__}", [])
            if len(ex) < max_examples:
                ex.append((i, traceback.format_exc(limit=3), data.hex()))
    return stop - start, failures


def _job(args):
    return run_range(*args)


def run(count: int, seed: int = 1, jobs: int = 1, chunk: int = 5000, progress=None):
    """Run `count` inputs; returns (count, failures by class)."""
    _setup()
    chunks = [(seed, a, min(a + chunk, count)) for a in range(0, count, chunk)]
    done, failures = 0, {}
    started = time.monotonic()

    def merge(result):
        nonlocal done
        n, f = result
        done += n
        for k, v in f.items():
            if k not in failures and progress:
                i, detail, _hex = v[0]
                progress(f"NEW FAILURE {k}\n  input {i} (--replay {i}): {detail[:300]}")
            failures.setdefault(k, []).extend(v[:3 - len(failures.get(k, []))])
        if progress:
            rate = done / max(time.monotonic() - started, 1e-9)
            progress(f"{done}/{count} inputs, {len(failures)} failure classes, {rate:.0f}/s")
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for result in pool.imap_unordered(_job, chunks):
                merge(result)
    else:
        for c in chunks:
            merge(run_range(*c))
    return done, failures


def coverage_guided(libfuzzer_args) -> int:
    """libFuzzer through atheris (optional: pip install atheris==3.0.0), from
    the seeds, with every check; a Failure stops it and saves the input."""
    try:
        import atheris
    except ImportError:
        print("--atheris needs atheris: pip install atheris==3.0.0", file=sys.stderr)
        return 2
    import tempfile
    st = _setup()
    corpus = tempfile.mkdtemp(prefix="wsuper-fuzz-corpus-")
    for n, seed in enumerate(st["all"]):
        with open(os.path.join(corpus, f"seed{n}"), "wb") as f:
            f.write(wire.frame(seed.segs))
    print(f"corpus (libFuzzer adds to it): {corpus}", file=sys.stderr)
    atheris.instrument_all()
    atheris.Setup([sys.argv[0], corpus, *libfuzzer_args],
                  lambda data: run_one(data, sample.Sample))
    atheris.Fuzz()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.protocol", description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=100_000, help="inputs to run (default 100000)")
    ap.add_argument("--seed", type=int, default=1, help="run seed: same seed, same inputs")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--replay", type=int, metavar="I", help="run input I of --seed only, verbosely")
    ap.add_argument("--atheris", nargs=argparse.REMAINDER, metavar="LIBFUZZER_ARG",
                    help="coverage-guided instead (atheris); the rest goes to libFuzzer, "
                         "e.g. --atheris -runs=100000")
    args = ap.parse_args(argv)
    if args.atheris is not None:
        return coverage_guided(args.atheris)
    if args.replay is not None:
        data, schema = one(args.seed, args.replay)
        print(data.hex())
        run_one(data, schema, random.Random(args.replay))
        print("ok")
        return 0
    started = time.monotonic()
    done, failures = run(args.count, args.seed, args.jobs,
                         progress=lambda m: print(m, file=sys.stderr, flush=True))
    elapsed = time.monotonic() - started
    print(f"fuzz.protocol: {done} inputs, seed {args.seed}, {args.jobs} job(s), "
          f"{elapsed:.0f} s, {len(failures)} failure classes")
    for key, examples in sorted(failures.items()):
        print(f"FAIL {key}")
        for i, detail, hexdata in examples:
            print(f"  input {i}: {detail}\n    {hexdata[:400]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
