"""The RPC headers of every call, encoded and decoded by hand.

Each cross-compartment call is four messages (Call and Return, twice), and
building or reading their headers through pycapnp cost more than anything
else the supervisor and the engines did per message.  Call, Return and Finish
are therefore laid out here directly, word by word; every other message, and
anything unusual in these three (a promised-answer target, a pipelined
capability, a third-party return), goes through pycapnp as before.

The layout is rpc.capnp's wire format, which cannot change without breaking
every Cap'n Proto peer; `_check_layout()` compares each constant with the
loaded schema at import, so a mismatch fails loudly instead of corrupting.

Decoding is as strict as pycapnp's: every pointer goes through wire.resolve
(bounds, far pointers), fields beyond a struct's data section read as their
defaults, and anything that is not plainly well-formed returns None so that
the caller falls back to pycapnp, which then reports the exact error.
"""
from __future__ import annotations

import struct

from . import rpc, wire

# Message union (discriminant at byte 0 of Message's one data word)
MSG_CALL, MSG_RETURN, MSG_FINISH = 2, 3, 4
# Return union (discriminant at byte 6)
RET_RESULTS, RET_EXCEPTION, RET_CANCELED = 0, 1, 2
# CapDescriptor union (discriminant at byte 0, id at byte 4)
CAP_NONE, CAP_SENDER_HOSTED, CAP_SENDER_PROMISE, CAP_RECEIVER_HOSTED = 0, 1, 2, 3
EXCEPTION_TYPES = ("failed", "overloaded", "disconnected", "unimplemented")

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


def encode_return(answer_id: int, no_finish: bool, caps) -> tuple[bytearray, int]:
    """A Return with results (releaseParamCaps = false).  As encode_call."""
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


def encode_finish(question_id: int) -> bytes:
    """Finish with releaseResultCaps = false (stored XOR its default, true)."""
    return _HEAD_ONE + b"".join(_Q.pack(w) for w in (
        _ROOT, MSG_FINISH, _struct_ptr(0, 1, 0), question_id | (1 << 32)))


# ------------------------------------------------------------------ decoding


_UNSIGNED = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I"),
             8: struct.Struct("<Q")}


def _data(segs, r, byte: int, size: int) -> int:
    """An integer field of the struct `r` (from wire.resolve), 0 past its data."""
    _kind, s, start, w = r
    if byte + size > ((w >> 32) & 0xFFFF) * 8:
        return 0
    return _UNSIGNED[size].unpack_from(segs[s], 8 * start + byte)[0]


def _ptr(r, index: int):
    """Location of pointer field `index` of struct `r`, or None."""
    _kind, s, start, w = r
    if index >= w >> 48:
        return None
    return (s, start + ((w >> 32) & 0xFFFF) + index)


def _struct(segs, loc):
    if loc is None:
        return None
    r = wire.resolve(segs, loc)
    if r is None or r[0] != wire.STRUCT:
        return None
    return r


class Plain:
    """A decoded header (only the fields the connection uses)."""
    __slots__ = ("which", "kind", "id", "import_id", "interface_id", "method_id", "content_loc",
                 "caps", "no_finish", "release", "reason", "type")


def decode(segs) -> Plain | None:
    """Decode a Call to an imported capability, a Return (results or exception)
    or a Finish; None for anything else (the caller falls back to pycapnp)."""
    try:
        root = _struct(segs, (0, 0))
        if root is None:
            return None
        which = _data(segs, root, 0, 2)
        if which not in (MSG_CALL, MSG_RETURN, MSG_FINISH):
            return None
        body = _struct(segs, _ptr(root, 0))
        if body is None:
            return None
        out = Plain()
        out.which = which
        if which == MSG_FINISH:
            out.id = _data(segs, body, 0, 4)
            out.release = not (_data(segs, body, 4, 1) & 1)          # default true
            return out
        if which == MSG_CALL:
            if _data(segs, body, 6, 2) != 0 or _data(segs, body, 16, 1) & 7:
                return None              # results elsewhere, or tail-call/pipelining flags
            target = _struct(segs, _ptr(body, 0))
            if target is None or _data(segs, target, 4, 2) != 0:
                return None              # a promised-answer target
            out.id = _data(segs, body, 0, 4)
            out.import_id = _data(segs, target, 0, 4)
            out.interface_id = _data(segs, body, 8, 8)
            out.method_id = _data(segs, body, 4, 2)
            payload_loc = _ptr(body, 1)
        else:
            flags = _data(segs, body, 4, 1)
            if not flags & 1:            # releaseParamCaps = true: the slow path handles it
                return None
            out.id = _data(segs, body, 0, 4)
            out.no_finish = bool(flags & 2)
            kind = _data(segs, body, 6, 2)
            out.kind = "exception" if kind == RET_EXCEPTION else "results"
            if kind == RET_EXCEPTION:
                exc = _struct(segs, _ptr(body, 0))
                if exc is None:
                    return None
                out.content_loc = None
                out.reason = _text(segs, _ptr(exc, 0))
                t = _data(segs, exc, 4, 2)
                if out.reason is None or t >= len(EXCEPTION_TYPES):
                    return None
                out.type = EXCEPTION_TYPES[t]
                return out
            if kind != RET_RESULTS:
                return None
            payload_loc = _ptr(body, 0)
        out.content_loc, out.caps = None, ()
        payload = _struct(segs, payload_loc)
        if payload is None:
            return out if payload_loc is None or wire.resolve(segs, payload_loc) is None \
                else None
        out.content_loc = _ptr(payload, 0)
        caps = _caps(segs, _ptr(payload, 1))
        if caps is None:
            return None
        out.caps = caps
        return out
    except wire.WireError:
        return None


def _caps(segs, loc):
    if loc is None:
        return ()
    r = wire.resolve(segs, loc)
    if r is None:
        return ()
    kind, s, start, w = r
    if kind != wire.LIST or (w >> 32) & 7 != 7:
        return None
    tag = wire._word(segs, s, start)
    n, dw, pc = (tag >> 2) & 0x3FFFFFFF, (tag >> 32) & 0xFFFF, tag >> 48
    if tag & 3 or dw < 1 or n * (dw + pc) > w >> 35:
        return None
    seg = segs[s]
    out = []
    for i in range(n):
        word = _Q.unpack_from(seg, 8 * (start + 1 + i * (dw + pc)))[0]
        which = word & 0xFFFF
        if which > CAP_RECEIVER_HOSTED:
            return None                  # receiverAnswer, thirdPartyHosted: slow path
        out.append((which, word >> 32 if which else 0))
    return tuple(out)


def _text(segs, loc) -> str | None:
    if loc is None:
        return ""
    r = wire.resolve(segs, loc)
    if r is None:
        return ""
    kind, s, start, w = r
    if kind != wire.LIST or (w >> 32) & 7 != 2:
        return None
    n = w >> 35
    raw = bytes(segs[s][8 * start:8 * start + n])
    if not raw or raw[-1] != 0:
        return None
    return raw[:-1].decode("utf-8", "replace")


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
    f = layout(rpc.Finish)
    assert f[:2] == (1, 0) and f[3]["questionId"][0] == 0 and f[3]["releaseResultCaps"][0] == 32
    e = layout(rpc.Exception)
    assert e[:2] == (1, 2) and e[3]["reason"][0] == 0 and e[3]["type"][0] == 2
    assert tuple(rpc.Exception.Type.schema.enumerants) == EXCEPTION_TYPES


_check_layout()
