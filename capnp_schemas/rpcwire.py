"""RPC messages decoded into plain values; Call, Return and Finish headers by hand.

Owns: the two decoders of an incoming rpc.capnp Message, and the encoders of
the three hot headers.  Both decoders give the same `Plain` record of plain
Python values (ints, str, tuples, locations of payload content), so that
nothing a peer sent is read after the one message it came in is handled:

* `decode(segs)`, by hand, word by word, for a Call to an imported
  capability, a Return with results or an exception, and a Finish: each
  cross-compartment call is four messages, and reading their headers through
  pycapnp cost more than anything else the supervisor and the engines did
  per message.  Anything it does not plainly recognise returns None.
* `decode_pycapnp(segs)`, through pycapnp with the traversal and nesting
  limits on, for every message; it raises on anything malformed, and the
  caller (protocol.Connection) turns that into a ProtocolError.

Must not: decide anything about the protocol (tables, ids, what is
supported: that is protocol.py), do I/O, or raise from `decode` (it returns
None instead).  Where decode accepts a message, pycapnp reading the same
bytes with the same limits accepts it and reads the same values (checked by
fuzz/protocol.py); the lenient readings are shared: an exception type that
rpc.capnp does not define reads as "failed", and a reason that is not UTF-8
is decoded with replacement characters.

The layout is rpc.capnp's wire format, which cannot change without breaking
every Cap'n Proto peer; `_check_layout()` compares each constant with the
loaded schema at import, so a mismatch fails loudly instead of corrupting.
"""
from __future__ import annotations

import struct
import sys
from array import array
from collections import Counter
from itertools import compress

from . import rpc, wire
from .wire import WireError

# Message union (discriminant at byte 0 of Message's one data word)
MSG_UNIMPLEMENTED, MSG_ABORT, MSG_CALL, MSG_RETURN, MSG_FINISH = 0, 1, 2, 3, 4
MSG_RESOLVE, MSG_RELEASE, MSG_BOOTSTRAP, MSG_DISEMBARGO = 5, 6, 8, 13
#: Message discriminant -> name, as rpc.capnp defines them
MESSAGE_NAMES = {f.discriminantValue: f.name for f in rpc.Message.schema.node.struct.fields}
# Return union (discriminant at byte 6)
RET_RESULTS, RET_EXCEPTION, RET_CANCELED = 0, 1, 2
# CapDescriptor union (discriminant at byte 0, id at byte 4)
CAP_NONE, CAP_SENDER_HOSTED, CAP_SENDER_PROMISE, CAP_RECEIVER_HOSTED = 0, 1, 2, 3
CAP_RECEIVER_ANSWER, CAP_THIRD_PARTY_HOSTED = 4, 5
_CAP_KINDS = {"none": CAP_NONE, "senderHosted": CAP_SENDER_HOSTED,
              "senderPromise": CAP_SENDER_PROMISE, "receiverHosted": CAP_RECEIVER_HOSTED,
              "receiverAnswer": CAP_RECEIVER_ANSWER, "thirdPartyHosted": CAP_THIRD_PARTY_HOSTED}
EXCEPTION_TYPES = ("failed", "overloaded", "disconnected", "unimplemented")

#: pycapnp's reader limits for every message from a peer (Cap'n Proto's
#: ReaderOptions); the hand decoder stays within the same traversal budget.
TRAVERSAL_LIMIT_WORDS = 64 * 1024
NESTING_LIMIT = 16
#: Capability descriptors in one payload.  Past it, the call (or the answer)
#: fails, and the references it gave are released (Plain.over).
MAX_CAPS_PER_MESSAGE = 256
#: ... up to this many: a payload of more is refused as a connection's abuse (a
#: ProtocolError).  It is what the header's traversal limit admits in a table
#: (2 words a descriptor and its tag): the table is counted and read by hand, a
#: word a descriptor in bulk, never by pycapnp's reader.  It was 4096 until r236,
#: and a conforming client passing more (Cap'n Proto's C++ RPC takes 20,000 in
#: one call) lost every call and capability it had on the connection.  Refusing
#: costs a Release out (40 bytes) for each distinct export id in (16 bytes a
#: descriptor), made at once: 32,767 took 4-12 ms of the event loop and sent
#: 1.3 MB; 500,000 (what an 8 MiB message holds) took 150-220 ms in one turn,
#: which is why the bound stays.
MAX_REFUSED_CAPS = (TRAVERSAL_LIMIT_WORDS - 1) // 2
#: ... and of them, receiverAnswer and thirdPartyHosted descriptors, whose ids
#: lie behind a pointer each, read one by one (about 5 us each: 32,767 took
#: 180 ms); past it, the connection, as past 4096 of any kind before r236.
MAX_REFUSED_POINTED = 16 * MAX_CAPS_PER_MESSAGE
#: Pipeline transform steps in one message, the call's target and every
#: receiverAnswer descriptor together (each alone is limited by
#: wire.MAX_PATH_DEPTH).  Such a message is read through pycapnp, at about a
#: microsecond a step: without this bound, 256 descriptors of 64 steps took
#: 20-25 ms to decode, ten of the event loop's turns.
MAX_TRANSFORM_STEPS_PER_MESSAGE = 64

_Q = struct.Struct("<Q")
_HEAD_ONE = struct.pack("<II", 0, 4)     # stream framing of a one-segment, 4-word message


def _struct_ptr(offset: int, data: int, ptrs: int) -> int:
    return ((offset << 2) & 0xFFFFFFFF) | (data << 32) | (ptrs << 48)


def _composite_ptr(offset: int, words: int) -> int:
    return (((offset << 2) | 1) & 0xFFFFFFFF) | ((7 | (words << 3)) << 32)


_ROOT = _struct_ptr(0, 1, 1)            # root -> Message (1 data word, 1 pointer) at word 1


def _cap_table(caps) -> tuple[int, bytes]:
    """(pointer word for Payload.capTable when placed right after it, table words)."""
    n = len(caps)
    if not n:
        return 0, b""
    out = bytearray(8 * (1 + 2 * n))
    _Q.pack_into(out, 0, _struct_ptr(n, 1, 1))          # the tag: n elements of (1, 1)
    for i, (which, ident) in enumerate(caps):
        _Q.pack_into(out, 8 + 16 * i, which | (ident << 32))
    return _composite_ptr(0, 2 * n), bytes(out)


def encode_call(question_id: int, import_id: int, interface_id: int, method_id: int,
                caps) -> tuple[bytearray, int]:
    """A Call to an imported capability.  Returns (header segment, word index of
    Payload.content) for the caller to point at the content.  `caps`:
    (CAP_* kind, id) descriptors."""
    table_ptr, table = _cap_table(caps)
    # words: 0 root | 1 Message data | 2 Message ptr | 3-5 Call data | 6-8 Call ptrs
    #        | 9 target data | 10 target ptr | 11-12 Payload ptrs | 13.. cap table
    head = bytearray(8 * 13)
    _Q.pack_into(head, 0, _ROOT)
    _Q.pack_into(head, 8, MSG_CALL)
    _Q.pack_into(head, 16, _struct_ptr(0, 3, 3))
    _Q.pack_into(head, 24, question_id | (method_id << 32))     # sendResultsTo: caller (0)
    _Q.pack_into(head, 32, interface_id)
    _Q.pack_into(head, 48, _struct_ptr(2, 1, 1))                # target -> word 9
    _Q.pack_into(head, 56, _struct_ptr(3, 0, 2))                # params -> word 11
    _Q.pack_into(head, 72, import_id)                           # importedCap (union 0)
    if table:
        _Q.pack_into(head, 96, table_ptr)                       # capTable -> word 13
        head += table
    return head, 11


# A Return's header with no capabilities, answer id 0: what encode_return builds
_RETURN_PLAIN = b"".join(_Q.pack(w) for w in (
    _ROOT, MSG_RETURN, _struct_ptr(0, 2, 1), 0, 0, _struct_ptr(0, 0, 2), 0, 0))


def encode_return(answer_id: int, no_finish: bool, caps) -> tuple[bytearray, int]:
    """A Return with results (releaseParamCaps = false).  As encode_call."""
    if not caps:          # the common case: the words below, answer id and flag aside
        head = bytearray(_RETURN_PLAIN)
        _Q.pack_into(head, 24, answer_id | (1 << 32) | ((1 << 33) if no_finish else 0))
        return head, 6
    table_ptr, table = _cap_table(caps)
    # words: 0 root | 1 Message data | 2 Message ptr | 3-4 Return data | 5 Return ptr
    #        | 6-7 Payload ptrs | 8.. cap table
    head = bytearray(8 * 8)
    _Q.pack_into(head, 0, _ROOT)
    _Q.pack_into(head, 8, MSG_RETURN)
    _Q.pack_into(head, 16, _struct_ptr(0, 2, 1))
    # releaseParamCaps (default true) stored XOR true: false is bit 32 set
    _Q.pack_into(head, 24, answer_id | (1 << 32) | ((1 << 33) if no_finish else 0))
    _Q.pack_into(head, 40, _struct_ptr(0, 0, 2))                # results -> word 6
    if table:
        _Q.pack_into(head, 56, table_ptr)                       # capTable -> word 8
        head += table
    return head, 6


#: a framed Release's first 32 bytes (framing, root, Message, its pointer): its
#: last word, id and referenceCount, follows
_RELEASE_HEAD = _HEAD_ONE + b"".join(_Q.pack(w) for w in (
    _ROOT, MSG_RELEASE, _struct_ptr(0, 1, 0)))


def encode_releases(counts) -> bytes:
    """Framed Release messages, one for each import id: count of `counts` (what
    Connection.send_release builds with pycapnp, without the table: for the
    references a refused message brought, which never entered it; a message may
    bring tens of thousands, and they are made at once, not one by one).
    `counts`: a dict, or the ids themselves (an array or list, one entry a
    reference; counted here, at C's pace where no id repeats)."""
    if isinstance(counts, dict):
        keys, values = array("I", counts.keys()), array("I", counts.values())
    else:
        keys = array("I", counts)
        if len(set(keys)) == len(keys):
            values = array("I", [1]) * len(keys)
        else:
            c = Counter(keys)
            keys, values = array("I", c.keys()), array("I", c.values())
    out = array("I")
    out.frombytes(_RELEASE_HEAD + bytes(8))
    out *= len(keys)
    if keys:
        out[8::10] = keys                            # Release.id, .referenceCount
        out[9::10] = values
    if sys.byteorder != "little":
        out.byteswap()          # the template's words back, the ids and counts to the wire's
    return out.tobytes()


def encode_finish(question_id: int) -> bytes:
    """Finish with releaseResultCaps = false (stored XOR its default, true)."""
    return _HEAD_ONE + b"".join(_Q.pack(w) for w in (
        _ROOT, MSG_FINISH, _struct_ptr(0, 1, 0), question_id | (1 << 32)))


# ------------------------------------------------------------------ decoding


class Plain:
    """A decoded message: plain values only.  Which fields are set depends on
    `which` (a Message discriminant):

    call      id, import_id | promise (question id, transform), interface_id,
              method_id, send_to, content_loc, caps
    return    id, release, no_finish, kind; results: content_loc, caps;
              exception: reason, type; takeFromOtherQuestion: take (an answer id)
    finish    id, release
    release   id, count
    bootstrap id, named (deprecatedObjectId is set: a 0.4-style named object)
    abort     reason, type
    disembargo import_id | promise, kind (senderLoopback, receiverLoopback,
              accept, provide), id (the embargo id of a loopback)

    `caps` holds (CAP_* kind, value): the id, 0 for none, (question id,
    transform) for receiverAnswer, its vine's id for thirdPartyHosted.  `content_loc`
    is where the payload's content pointer lives (None: no content).

    `over` (a Call's or a Return's; set by decode_pycapnp, and by the protocol
    core for a message past its framing's limit, protocol._on_oversized): the
    message is well-formed but passes a per-message limit (more than MAX_CAPS_PER_MESSAGE
    capabilities, more pipeline transform steps than MAX_PATH_DEPTH or
    MAX_TRANSFORM_STEPS_PER_MESSAGE), and this says which, for the call or the
    answer to fail with (a Call's promise target is then (question id, ())).  `caps` then holds only the references the message
    gives its receiver and what it names of the receiver's, (refs, named): refs
    an export id for each senderHosted, senderPromise and thirdPartyHosted (its
    vine's) descriptor, one reference each to release; named (CAP_* kind, id)
    for each receiverHosted and receiverAnswer, checked as within the limit;
    nothing else of the table is read (no receiverAnswer's transform), and
    `content_loc` is None.

    `content_root`, set by the native decoder only (which checks the content
    pointer as protocol.Connection._payload does: fastwire.h): what
    wire.resolve gives for the pointer at `content_loc`, so that it is not
    resolved again; not a field of the message (fields() leaves it out)."""
    __slots__ = ("which", "id", "import_id", "promise", "interface_id", "method_id",
                 "send_to", "content_loc", "caps", "release", "no_finish", "kind", "reason",
                 "type", "count", "take", "named", "content_root", "over")

    def fields(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__
                if k != "content_root" and k != "over" and hasattr(self, k)}

    def __repr__(self):
        return f"Plain({self.fields()})"


def decode(segs) -> Plain | None:
    """Decode a Call to an imported capability, a Return (results or exception)
    or a Finish; None for anything else (the caller falls back to
    decode_pycapnp).  Never raises.  A plain one-segment message (fastwire.h)
    is read natively, to the same values."""
    if wire._native is not None and len(segs) == 1:
        t = wire._native.decode(segs[0])
        if t is not None:
            return _plain(t)
    try:
        return _decode(segs)
    except wire.WireError:
        return None


_WHICH = {1: MSG_CALL, 2: MSG_RETURN, 3: MSG_FINISH}


def _plain(t) -> Plain:
    """A Plain from the native decoder's tuple (capnp_schemas/_fastwire.c)."""
    which, ident, import_id, interface_id, method_id, no_finish, release, at = t[:8]
    out = Plain()
    out.which = _WHICH[which]
    out.id = ident
    if which == 3:
        out.release = bool(release)
        return out
    if at < 0:
        out.content_loc = None
    else:
        out.content_loc = (0, at)
        # the pointer there, resolved: null (0), an object in the segment (1) or a
        # capability (2); as wire.resolve(segs, (0, at)) gives it
        content, w = t[8], t[9]
        out.content_root = None if not content else (w & 3, 0, t[10], w) if content == 1 \
            else (wire.OTHER, 0, at, w)
    out.caps = ()
    if which == 1:
        out.import_id, out.promise = import_id, None
        out.interface_id, out.method_id, out.send_to = interface_id, method_id, "caller"
    else:
        out.release, out.no_finish, out.kind = bool(release), bool(no_finish), "results"
    return out


def _decode(segs):
    resolve = wire.resolve
    r = resolve(segs, (0, 0))
    if r is None or r[0] != wire.STRUCT:
        return None
    _k, s, start, w = r
    dw, pc = (w >> 32) & 0xFFFF, w >> 48
    if not dw or not pc:
        return None
    which = _Q.unpack_from(segs[s], 8 * start)[0] & 0xFFFF
    if which != MSG_CALL and which != MSG_RETURN and which != MSG_FINISH:
        return None
    # words pycapnp would charge to its traversal limit: each object, and 2
    # for a possible far landing pad on the way to it
    spent = dw + pc + 2
    r = resolve(segs, (s, start + dw))
    if r is None or r[0] != wire.STRUCT:
        return None
    _k, s, start, w = r
    dw, pc = (w >> 32) & 0xFFFF, w >> 48
    spent += dw + pc + 2
    seg = segs[s]
    w0 = _Q.unpack_from(seg, 8 * start)[0] if dw else 0
    out = Plain()
    out.which = which
    out.id = w0 & 0xFFFFFFFF
    if which == MSG_FINISH:
        out.release = not (w0 >> 32) & 1                      # stored XOR its default, true
        return out
    if which == MSG_CALL:
        w2 = _Q.unpack_from(seg, 8 * start + 16)[0] if dw >= 3 else 0
        if w0 >> 48 or w2 & 7 or not pc:
            return None      # results sent elsewhere, tail-call or pipelining hints, no target
        r = resolve(segs, (s, start + dw))
        if r is None or r[0] != wire.STRUCT:
            return None
        _k, ts, tstart, tw = r
        spent += ((tw >> 32) & 0xFFFF) + (tw >> 48) + 2
        t0 = _Q.unpack_from(segs[ts], 8 * tstart)[0] if (tw >> 32) & 0xFFFF else 0
        if (t0 >> 32) & 0xFFFF:
            return None                                        # a promised-answer target
        out.import_id = t0 & 0xFFFFFFFF
        out.promise = None
        out.interface_id = _Q.unpack_from(seg, 8 * start + 8)[0] if dw >= 2 else 0
        out.method_id = (w0 >> 32) & 0xFFFF
        out.send_to = "caller"
        payload_loc = (s, start + dw + 1) if pc >= 2 else None
    else:
        kind = w0 >> 48
        out.release = not (w0 >> 32) & 1                      # releaseParamCaps, default true
        out.no_finish = bool((w0 >> 33) & 1)
        ptr = (s, start + dw) if pc else None
        if kind == RET_EXCEPTION:
            out.kind = "exception"
            r = resolve(segs, ptr) if ptr else None
            if r is None or r[0] != wire.STRUCT:
                return None
            _k, es, estart, ew = r
            edw, epc = (ew >> 32) & 0xFFFF, ew >> 48
            spent += edw + epc + 2
            e0 = _Q.unpack_from(segs[es], 8 * estart)[0] if edw else 0
            t = (e0 >> 32) & 0xFFFF
            out.type = EXCEPTION_TYPES[t] if t < 4 else "failed"
            out.reason = ""
            if epc:
                r = resolve(segs, (es, estart + edw))
                if r is not None:
                    reason = _text(segs, r)
                    if reason is None:
                        return None
                    out.reason = reason
                    spent += 2      # not its words: see _exception
            return out if spent <= TRAVERSAL_LIMIT_WORDS else None
        if kind != RET_RESULTS:
            return None
        out.kind = "results"
        payload_loc = ptr
    out.content_loc, out.caps = None, ()
    if payload_loc is None:
        return out if spent <= TRAVERSAL_LIMIT_WORDS else None
    r = resolve(segs, payload_loc)
    if r is None:
        return out if spent <= TRAVERSAL_LIMIT_WORDS else None
    if r[0] != wire.STRUCT:
        return None
    _k, s, start, w = r
    dw, pc = (w >> 32) & 0xFFFF, w >> 48
    spent += dw + pc + 2
    if pc:
        out.content_loc = (s, start + dw)
    if pc >= 2:
        r = resolve(segs, (s, start + dw + 1))
        if r is not None:
            caps = _caps(segs, r)
            if caps is None:
                return None
            out.caps = caps
            spent += wire.object_words(r[3]) + 2
    return out if spent <= TRAVERSAL_LIMIT_WORDS else None


def _caps(segs, r):
    """The cap table (a resolved list of CapDescriptor), or None to fall back."""
    if r[0] != wire.LIST or (r[3] >> 32) & 7 != wire.COMPOSITE:
        return None
    n, dw, pc = wire.composite_tag(segs, r)
    if not dw or n > MAX_CAPS_PER_MESSAGE:
        return None
    _k, s, start, _w = r
    seg, step = segs[s], dw + pc
    out = []
    for i in range(n):
        word = _Q.unpack_from(seg, 8 * (start + 1 + i * step))[0]
        which = word & 0xFFFF
        if which > CAP_RECEIVER_HOSTED:
            return None                  # receiverAnswer, thirdPartyHosted: pycapnp's
        out.append((which, word >> 32 if which else 0))
    return tuple(out)


def _text(segs, r) -> str | None:
    """A resolved Text pointer, decoded leniently (None: not a text)."""
    kind, s, start, w = r
    if kind != wire.LIST or (w >> 32) & 7 != 2:
        return None
    n = w >> 35
    if not n or segs[s][8 * start + n - 1] != 0:
        return None                      # not NUL-terminated
    return bytes(segs[s][8 * start:8 * start + n - 1]).decode("utf-8", "replace")


# ------------------------------------------------------------------ through pycapnp


def decode_pycapnp(segs) -> Plain:
    """Decode any message through pycapnp (traversal and nesting limits on).

    Reads each field once, into plain values, and raises (KjException,
    WireError ...) on anything malformed.  A message type rpc.capnp does not
    define is returned with only `which` set."""
    msg = rpc.Message.from_segments(segs, traversal_limit_in_words=TRAVERSAL_LIMIT_WORDS,
                                    nesting_limit=NESTING_LIMIT)
    out = Plain()
    out.which = which = _message_which(segs)
    if which == MSG_CALL:
        call = msg.call
        out.id = call.questionId
        out.interface_id = call.interfaceId
        out.method_id = call.methodId
        try:
            out.send_to = _which(call.sendResultsTo, "Call.sendResultsTo")
        except WireError:
            out.send_to = "undefined"             # a newer schema's: the call fails alone
        target = call.target
        budget = [MAX_TRANSFORM_STEPS_PER_MESSAGE]
        pa = None
        if _which(target, "MessageTarget") == "importedCap":
            out.import_id, out.promise = target.importedCap, None
        else:
            pa = target.promisedAnswer
            out.import_id, out.promise = None, (pa.questionId, ())
        try:
            if pa is not None:
                out.promise = _promised(pa, budget)
            out.caps, out.content_loc, over = _payload(segs, call.params, 1, budget)
        except _OverSteps as e:
            # the call fails (a target's path past the bound is never followed)
            out.caps, out.content_loc, over = _refused(segs, 1, str(e))
        if over is not None:
            out.over = over
    elif which == MSG_RETURN:
        ret = msg.__getattr__("return")
        out.id = ret.answerId
        out.release = ret.releaseParamCaps
        out.no_finish = ret.noFinishNeeded
        out.kind = kind = _which(ret, "Return")
        if kind == "results":
            try:
                out.caps, out.content_loc, over = _payload(segs, ret.results, 0,
                                                           [MAX_TRANSFORM_STEPS_PER_MESSAGE])
            except _OverSteps as e:
                out.caps, out.content_loc, over = _refused(segs, 0, str(e))
            if over is not None:
                out.over = over
        elif kind == "exception":
            out.reason, out.type = _exception(ret.exception, segs, (0, 0))
        elif kind == "takeFromOtherQuestion":
            out.take = ret.takeFromOtherQuestion
    elif which == MSG_FINISH:
        fin = msg.finish
        out.id, out.release = fin.questionId, fin.releaseResultCaps
    elif which == MSG_RELEASE:
        rel = msg.release
        out.id, out.count = rel.id, rel.referenceCount
    elif which == MSG_BOOTSTRAP:
        out.id = msg.bootstrap.questionId
        out.named = msg.bootstrap._has("deprecatedObjectId")
    elif which == MSG_ABORT:
        out.reason, out.type = _exception(msg.abort, segs, (0,))
    elif which == MSG_DISEMBARGO:
        d = msg.disembargo
        target = d.target
        if _which(target, "MessageTarget") == "importedCap":
            out.import_id, out.promise = target.importedCap, None
        else:
            out.import_id, out.promise = None, _promised(
                target.promisedAnswer, [MAX_TRANSFORM_STEPS_PER_MESSAGE])
        try:
            out.kind = kind = _which(d.context, "Disembargo.context")
        except WireError:
            out.kind = kind = "undefined"         # a newer schema's: echoed unimplemented
        out.id = getattr(d.context, kind) if kind.endswith("Loopback") else None
    return out


def _message_which(segs) -> int:
    """The Message union's discriminant as a number (pycapnp refuses to name
    one that rpc.capnp does not define, which we must answer 'unimplemented')."""
    r = wire.resolve(segs, (0, 0))
    if r is None or not (r[3] >> 32) & 0xFFFF:
        return MSG_UNIMPLEMENTED                        # all defaults
    return _Q.unpack_from(segs[r[1]], 8 * r[2])[0] & 0xFFFF


def _which(reader, what: str) -> str:
    try:
        return reader.which()
    except Exception:
        raise wire.WireError(f"{what}: a union member that rpc.capnp does not define") from None


class PastBound(wire.WireError):
    """A well-formed Call or Return past a bound at which the connection ends, not
    only the call (a cap table of more than MAX_REFUSED_CAPS descriptors, or
    MAX_REFUSED_POINTED receiverAnswer and thirdPartyHosted ones): not
    malformed, and not said to be (it read 'malformed message: ...' until r243)."""


class _OverSteps(wire.WireError):
    """A well-formed message's pipeline transforms pass a per-message bound: a
    Call's or Return's fails that call or answer (Plain.over), not the
    connection; a Disembargo's is still a protocol error."""


def _promised(pa, budget: list) -> tuple:
    """(question id, pointer path) of a PromisedAnswer.  `budget`: [steps the
    message may still have], checked (by the list's length, which costs nothing)
    before any step is read, so a message's decoding does bounded work."""
    ops = pa.transform
    if len(ops) > wire.MAX_PATH_DEPTH:
        raise _OverSteps(f"pipeline transform of {len(ops)} steps "
                         f"(limit {wire.MAX_PATH_DEPTH})")
    budget[0] -= len(ops)
    if budget[0] < 0:
        raise _OverSteps(f"more than {MAX_TRANSFORM_STEPS_PER_MESSAGE} pipeline "
                         f"transform steps in one message (limit "
                         f"{MAX_TRANSFORM_STEPS_PER_MESSAGE}: the target's and every "
                         f"capability's together)")
    path = []
    for op in ops:
        if _which(op, "PromisedAnswer.Op") == "getPointerField":
            path.append(op.getPointerField)
    return (pa.questionId, tuple(path))


def _payload(segs, payload, field: int, budget: list) -> tuple:
    """(cap descriptors, content location, None) of Payload field `field` of the
    body; `budget` as _promised's.  A payload of more than MAX_CAPS_PER_MESSAGE
    capabilities is well-formed, and not ours to read: (the references it gives,
    None, the limit it passes), see Plain.over."""
    n = _table_size(segs, field)
    if n is not None and n > MAX_CAPS_PER_MESSAGE:
        return _refused(segs, field, _over_caps(n), n)    # pycapnp never reads it
    table = payload.capTable
    if len(table) > MAX_CAPS_PER_MESSAGE:
        return _refused(segs, field, _over_caps(len(table)), len(table))
    caps = []
    for d in table:
        name = _which(d, "CapDescriptor")
        kind = _CAP_KINDS[name]
        if kind == CAP_RECEIVER_ANSWER:
            caps.append((kind, _promised(d.receiverAnswer, budget)))
        elif kind == CAP_THIRD_PARTY_HOSTED:
            # a level-1 peer sends calls to its vine (rpc.capnp): the sender's export
            caps.append((kind, d.thirdPartyHosted.vineId))
        else:
            caps.append((kind, getattr(d, name) if kind else 0))
    loc = wire.follow_path(segs, (0, 0), (0, field))
    return tuple(caps), None if loc is None else wire.struct_pointer_field(segs, loc, 0), None


def _refused(segs, field: int, over: str, n: int | None = None) -> tuple:
    """What _payload gives for a payload refused for `over` (Plain.over): (the
    references it gives, None, `over`); a table of more than MAX_REFUSED_CAPS
    descriptors (`n`, counted here if not given) is a WireError (the
    connection's)."""
    if n is None:
        n = _table_size(segs, field) or 0
    if n > MAX_REFUSED_CAPS:
        raise PastBound(f"{n} capabilities in one message (limit "
                        f"{MAX_CAPS_PER_MESSAGE}; a call or answer past it fails, past "
                        f"{MAX_REFUSED_CAPS} the connection: refusing it costs a "
                        f"Release for each)")
    return _given_refs(segs, field), None, over


def _table_size(segs, field: int) -> int | None:
    """Descriptors in the cap table of Payload field `field` of the body, read by
    hand (not charged to pycapnp's traversal limit, which a table of more than
    32,767 passes); None when the table is not plainly a list of structs (pycapnp
    then reads it, and says what is wrong with it)."""
    try:
        loc = wire.follow_path(segs, (0, 0), (0, field))
        loc = wire.struct_pointer_field(segs, loc, 1) if loc is not None else None
        r = wire.resolve(segs, loc) if loc is not None else None
        if r is None or r[0] != wire.LIST or (r[3] >> 32) & 7 != wire.COMPOSITE:
            return None
        return wire.composite_tag(segs, r)[0]
    except wire.WireError:
        return None


def _over_caps(n: int) -> str:
    return f"{n} capabilities in one message (limit {MAX_CAPS_PER_MESSAGE}, MAX_CAPS_PER_MESSAGE)"


def _given_refs(segs, field: int) -> tuple:
    """The references the cap table of Payload field `field` gives its receiver, as
    export ids, one for each senderHosted, senderPromise and thirdPartyHosted
    (its vine's id) descriptor, which the receiver must release (rpc.capnp: it
    owns one reference each); and the objects of ours it names, (CAP_* kind, id)
    for each receiverHosted (an export id) and receiverAnswer (a question id),
    which the receiver checks as it would within the limit (one it never issued
    is a protocol error there, and here too): (refs, named).  A descriptor of a
    kind rpc.capnp does not define is a WireError, as within the limit.  Read a
    word a descriptor, in bulk: the table, which pycapnp has just counted
    against the traversal limit, may hold tens of thousands of descriptors, and
    a receiverAnswer's transform is never read."""
    loc = wire.follow_path(segs, (0, 0), (0, field))
    loc = wire.struct_pointer_field(segs, loc, 1) if loc is not None else None
    r = wire.resolve(segs, loc) if loc is not None else None
    if r is None:
        return (), ()
    n, dw, pc = wire.composite_tag(segs, r)
    if not dw:
        return (), ()
    _k, s, start, _w = r
    step = dw + pc
    table = bytes(segs[s][8 * (start + 1):8 * (start + 1 + n * step)])
    # each descriptor's first word: the union's tag (its low 16 bits), then the id
    kinds, ids = array("H", table)[0::4 * step], array("I", table)[1::2 * step]
    if sys.byteorder != "little":
        kinds.byteswap()
        ids.byteswap()
    if not n:
        return (), ()
    if max(kinds) > CAP_THIRD_PARTY_HOSTED:
        raise WireError("CapDescriptor: a union member that rpc.capnp does not define")
    senders = kinds.count(CAP_SENDER_HOSTED) + kinds.count(CAP_SENDER_PROMISE)
    if senders == n:                                # at C's pace, as every pass below
        return tuple(ids), ()
    kb = bytes(kinds.tolist())                      # each < 6: a byte a descriptor
    out = array("I", compress(ids, kb.translate(_SENDERS)))
    # an export id named many times is checked once, as is a question
    named = [(CAP_RECEIVER_HOSTED, i) for i in set(compress(ids, kb.translate(_ONLY[3])))]
    if pc:
        pointed = kinds.count(CAP_RECEIVER_ANSWER) + kinds.count(CAP_THIRD_PARTY_HOSTED)
        if pointed > MAX_REFUSED_POINTED:
            raise PastBound(f"{pointed} receiverAnswer and thirdPartyHosted capabilities in "
                            f"one message (a call or answer past {MAX_CAPS_PER_MESSAGE} "
                            f"fails; past {MAX_REFUSED_POINTED} of these, the connection)")
        answers, vines = set(), []
        for i in compress(range(n), kb.translate(_ONLY[4])):
            # PromisedAnswer: questionId is its first data word's low half
            t = wire.resolve(segs, (s, start + 1 + i * step + dw))
            if t is None or t[0] != wire.STRUCT or not (t[3] >> 32) & 0xFFFF:
                raise WireError("CapDescriptor.receiverAnswer: no PromisedAnswer")
            answers.add(_Q.unpack_from(segs[t[1]], 8 * t[2])[0] & 0xFFFFFFFF)
        named += [(CAP_RECEIVER_ANSWER, q) for q in answers]
        for i in compress(range(n), kb.translate(_ONLY[5])):
            # ThirdPartyCapDescriptor: vineId is its first data word's low half
            t = wire.resolve(segs, (s, start + 1 + i * step + dw))
            vines.append(_Q.unpack_from(segs[t[1]], 8 * t[2])[0] & 0xFFFFFFFF
                         if t is not None and t[0] == wire.STRUCT and (t[3] >> 32) & 0xFFFF
                         else 0)
        out.extend(vines)
    elif kinds.count(CAP_RECEIVER_ANSWER):
        raise WireError("CapDescriptor.receiverAnswer: no PromisedAnswer")
    return tuple(out), tuple(named)


#: bytes.translate tables: a kind's byte to 1 where it is of the kinds, else 0
_SENDERS = bytes(int(k in (CAP_SENDER_HOSTED, CAP_SENDER_PROMISE)) for k in range(256))
_ONLY = [bytes(int(k == kind) for k in range(256)) for kind in range(6)]


class NotKept(Exception):
    """A word the header of a skipped message is read from was not kept."""


def header_kept(segs, inside) -> bool:
    """Whether every word that reading a Call's or Return's header reads
    (decode_pycapnp, _given_refs; never the payload's content, nor an
    exception's reason or trace) lies in what was kept of a message the framing
    skipped: `inside(s, start, words)` says so of a range (wire.Oversized.inside).
    `segs` are the segments at their full size, what was not kept reading as
    zeros (Oversized.sparse): a header read from there would be read as what
    the peer never sent.  A WireError where a pointer on the way is malformed
    (as the decoders would say)."""
    def obj(loc):
        s, p = loc
        if not inside(s, p, 1):
            raise NotKept
        w = wire._word(segs, s, p)
        if w & 3 == wire.FAR:
            if not inside(w >> 32, (w >> 3) & 0x1FFFFFFF, 2 if (w >> 2) & 1 else 1):
                raise NotKept
        r = wire.resolve(segs, loc)
        if r is not None and r[0] != wire.OTHER \
                and not inside(r[1], r[2], wire.object_words(r[3])):
            raise NotKept
        return r

    def st(r):
        if r is None or r[0] != wire.STRUCT:
            return None
        w = r[3]
        return r[1], r[2], (w >> 32) & 0xFFFF, w >> 48

    def promised(loc):                                # a PromisedAnswer and its transform
        pa = st(obj(loc))
        if pa is not None and pa[3]:
            obj((pa[0], pa[1] + pa[2]))

    def payload(loc):
        p = st(obj(loc))
        if p is None or p[3] < 2:
            return
        r = obj((p[0], p[1] + p[2] + 1))             # the cap table (the content: not read)
        if r is None or r[0] != wire.LIST or (r[3] >> 32) & 7 != wire.COMPOSITE:
            return
        n, dw, pc = wire.composite_tag(segs, r)
        if not dw or not pc:
            return
        _k, ts, start, _w = r
        step = dw + pc
        kinds = array("H", bytes(segs[ts][8 * (start + 1):8 * (start + 1 + n * step)]))[0::4 * step]
        if sys.byteorder != "little":
            kinds.byteswap()
        for i in range(n):
            if kinds[i] == CAP_RECEIVER_ANSWER:
                promised((ts, start + 1 + i * step + dw))
            elif kinds[i] == CAP_THIRD_PARTY_HOSTED:
                obj((ts, start + 1 + i * step + dw))

    try:
        m = st(obj((0, 0)))
        if m is None or not m[2] or not m[3]:
            return True
        which = _Q.unpack_from(segs[m[0]], 8 * m[1])[0] & 0xFFFF
        body = st(obj((m[0], m[1] + m[2])))
        if body is None:
            return True
        s, start, dw, pc = body
        if which == MSG_CALL:
            if pc >= 1:
                t = st(obj((s, start + dw)))
                if t is not None and t[3]:
                    promised((t[0], t[1] + t[2]))
            if pc >= 2:
                payload((s, start + dw + 1))
        elif which == MSG_RETURN and pc >= 1:
            kind = (_Q.unpack_from(segs[s], 8 * start)[0] >> 48) if dw else 0
            if kind == RET_RESULTS:
                payload((s, start + dw))
            elif kind == RET_EXCEPTION:
                obj((s, start + dw))                  # the Exception (its reason is not read)
        return True
    except NotKept:
        return False


def _exception(e, segs, path: tuple) -> tuple[str, str]:
    """(reason, type) of an rpc.capnp Exception `e`, whose pointer is at `path`
    from the root, read leniently.  The reason is read by hand, not through the
    reader, so that its words are not charged to the header's traversal limit
    (as the hand decoder does not): a text is read once, in proportion to its
    size, which the framing bounds.  A Return whose exception said more than
    512 KiB (a conforming peer's, Cap'n Proto's C++ RPC sends what was thrown)
    passed that limit, and the peer was cut off for it."""
    loc = wire.follow_path(segs, (0, 0), path)
    loc = wire.struct_pointer_field(segs, loc, 0) if loc is not None else None
    r = wire.resolve(segs, loc) if loc is not None else None
    reason = "" if r is None else _text(segs, r)
    if reason is None:
        raise wire.WireError("Exception.reason is not a NUL-terminated text")
    t = e.type.raw
    return reason, EXCEPTION_TYPES[t] if t < len(EXCEPTION_TYPES) else "failed"


# ------------------------------------------------------------------ layout check


def _check_layout():
    """Every constant above against rpc.capnp as pycapnp loaded it."""
    def layout(s):
        n = s.schema.node
        fields = {f.name: (f.slot.offset if f.which() == "slot" else None, f.discriminantValue)
                  for f in n.struct.fields}
        return n.struct.dataWordCount, n.struct.pointerCount, n.struct.discriminantOffset, fields
    m = layout(rpc.Message)
    assert m[:3] == (1, 1, 0) and m[3]["call"] == (0, MSG_CALL) \
        and m[3]["return"] == (0, MSG_RETURN) and m[3]["finish"] == (0, MSG_FINISH)
    c = layout(rpc.Call)
    assert c[:2] == (3, 3) and c[3]["questionId"][0] == 0 and c[3]["interfaceId"][0] == 1 \
        and c[3]["methodId"][0] == 2 and c[3]["target"][0] == 0 and c[3]["params"][0] == 1 \
        and c[3]["allowThirdPartyTailCall"][0] == 128
    srt = rpc.Call.schema.fields["sendResultsTo"].schema.node.struct
    assert srt.discriminantOffset == 3
    t = layout(rpc.MessageTarget)
    assert t[:3] == (1, 1, 2) and t[3]["importedCap"] == (0, 0)
    p = layout(rpc.Payload)
    assert p[:2] == (0, 2) and p[3]["content"][0] == 0 and p[3]["capTable"][0] == 1
    d = layout(rpc.CapDescriptor)
    assert d[:3] == (1, 1, 0) and d[3]["senderHosted"] == (1, CAP_SENDER_HOSTED) \
        and d[3]["senderPromise"] == (1, CAP_SENDER_PROMISE) \
        and d[3]["receiverHosted"] == (1, CAP_RECEIVER_HOSTED) and d[3]["none"][1] == CAP_NONE
    r = layout(rpc.Return)
    assert r[:3] == (2, 1, 3) and r[3]["answerId"][0] == 0 \
        and r[3]["releaseParamCaps"][0] == 32 and r[3]["noFinishNeeded"][0] == 33 \
        and r[3]["results"] == (0, RET_RESULTS) and r[3]["exception"] == (0, RET_EXCEPTION)
    assert m[3]["unimplemented"][1] == MSG_UNIMPLEMENTED and m[3]["abort"][1] == MSG_ABORT \
        and m[3]["release"][1] == MSG_RELEASE and m[3]["bootstrap"][1] == MSG_BOOTSTRAP \
        and m[3]["disembargo"][1] == MSG_DISEMBARGO and m[3]["resolve"][1] == MSG_RESOLVE
    assert {k: d[3][k][1] for k in _CAP_KINDS} == _CAP_KINDS
    assert t[3]["promisedAnswer"][1] == 1
    f = layout(rpc.Finish)
    assert f[:2] == (1, 0) and f[3]["questionId"][0] == 0 and f[3]["releaseResultCaps"][0] == 32
    e = layout(rpc.Exception)
    assert e[:2] == (1, 2) and e[3]["reason"][0] == 0 and e[3]["type"][0] == 2
    assert tuple(rpc.Exception.Type.schema.enumerants) == EXCEPTION_TYPES


_check_layout()
