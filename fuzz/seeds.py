"""Seeds for the wire and protocol fuzzer (fuzz/protocol.py): valid messages
of every kind a peer sends, content with a known schema, and the connection
state they are fed to.

Owns: building the seeds and the fresh `Connection` (exports, imports,
questions and answers, so the seeds' ids resolve), and the walk that finds a
seed's pointers, struct-list tags and texts for the mutators to aim at.
Must not: mutate or check anything (protocol.py does).
"""
from __future__ import annotations

import itertools
import os
import struct

import capnp
from capnp.lib.capnp import _StructModule

import capnp_schemas
from capnp_schemas import protocol as P, rpc, rpcwire, wire

HERE = os.path.dirname(os.path.abspath(__file__))
sample = capnp.load(os.path.join(HERE, "sample.capnp"),
                     imports=capnp_schemas.parser_imports(capnp_schemas.IMPORT_PATH))
host = capnp_schemas.host


# ---------------------------------------------------------------- seeds


def _tiny_segments(builder_of):
    """Build a message in 1-to-3-word segments, so it is full of far and
    double-far pointers: `builder_of` gets the keyword arguments of
    new_message that do it.  Without num_first_segment_words, pycapnp asks the
    allocator for its first segment with its suggested size (1,024 words), and
    every "tiny" seed was one segment with no far pointer at all (an outside
    review of the fuzzers)."""
    sizes = itertools.cycle((1, 2, 3))
    return builder_of({"num_first_segment_words": 1,
                       "allocate_seg_callable": lambda n: bytearray(8 * max(n, next(sizes)))})


def _sample(alloc=None):
    s = sample.Sample.new_message(**(alloc or {}))
    s.u8, s.i64, s.flag, s.real, s.colour = 7, -(1 << 62), True, 2.5, "blue"
    s.text, s.data = "héllo", b"\x00\x01\xff"
    c = s.init("child")
    c.text = "child"
    c.init("numbers", 3)
    kids = s.init("children", 2)
    kids[0].text, kids[1].u8 = "k0", 9
    kids[1].init("bits", 9)[8] = True
    s.texts = ["a", "", "ccc"]
    s.numbers = [1, 2, 3, 4, 5]
    s.bits = [True, False, True]
    s.init("voids", 5)
    nested = s.init("nested", 2)
    nested.init(0, 2)[1] = 0xFFFF
    nested.init(1, 0)
    s.choice.more = sample.Sample.new_message(text="deep")
    return s


def content_seeds():
    """(schema struct module, standalone content segments) with a known schema."""
    out = []
    for alloc in (None, "tiny"):
        def build(make, alloc=alloc):
            if alloc is None:
                return make(None).to_segments()
            return _tiny_segments(lambda a: make(a)).to_segments()
        out.append((sample.Sample, build(_sample)))
        for iface, method, fields in (
                (host.Log, "write", {"text": "hello, log"}),
                (host.Directory, "open", {"path": "a/b.txt", "mode": "readWrite"}),
                (host.Directory, "rename", {"from": "x", "to": "y/z"}),
                (host.File, "read", {"offset": (1 << 63), "count": (1 << 32) - 1}),
                (host.File, "write", {"offset": (1 << 64) - 1, "data": b"\xff" * 20}),
                (host.File, "truncate", {"size": (1 << 64) - 1}),
                (host.Gateway, "get", {"name": "calc"})):
            m = iface.schema.methods[method]
            mod = _StructModule(m.param_type, method)

            def make(a, mod=mod, fields=fields):
                msg = mod.new_message(**(a or {}))
                for k, v in fields.items():
                    setattr(msg, k, v)
                return msg
            out.append((mod, build(make)))
        m = host.Environment.schema.methods["vars"]
        mod = _StructModule(m.result_type, "vars")

        def make_vars(a, mod=mod):
            msg = mod.new_message(**(a or {}))
            vs = msg.init("vars", 3)
            for i, v in enumerate(vs):
                v.name, v.value = f"N{i}", "v" * i
            return msg
        out.append((mod, build(make_vars)))

    def many(kw):          # a Sample of as many segments as a message may have
        s = sample.Sample.new_message(**kw)
        s.texts = [f"t{i}" for i in range(wire.MAX_SEGMENTS - 3)]
        return s
    out.append((sample.Sample, _tiny_segments(many).to_segments()))
    return [(mod, [bytes(s) for s in segs]) for mod, segs in out]


class Obj:
    """An object the fuzzed connection exports (plain, so events can hold it)."""
    __slots__ = ("n",)

    def __init__(self, n):
        self.n = n

    def __repr__(self):
        return f"Obj({self.n})"


EXPORTS = [Obj(i) for i in range(4)]


def fresh(max_message_words: int = wire.MAX_MESSAGE_WORDS) -> P.Connection:
    """A connection whose tables hold something for every id a seed uses:
    exports 0-3, imports 0-2, questions 0-5 (unanswered), answers 0-3 (0, 1
    returned with a capability, 2 not returned, 3 returned with an error).
    `max_message_words`: its framing's limit (a small one makes most inputs
    messages past it, skipped and failed alone: wire.Oversized)."""
    c = P.Connection("fuzzed", max_unfinished=64, max_message_words=max_message_words)
    for obj in EXPORTS:
        c._export(obj)
    c.imports.update({0: 1, 1: 1, 2: 1})
    for _ in range(6):
        c._new_question([])
    for aid in range(4):
        c._new_answer(aid)
    cap_content = _CAP_CONTENT
    c.send_return(0, cap_content, [EXPORTS[3]])
    c.send_return(1, cap_content, [P.RemoteRef(1)])
    c.send_exception(3, "no")
    return c


_CAP_CONTENT = P.Content.standalone([struct.pack("<QQ", 1 << 48, wire.cap_pointer(0))])


def _frame(msg) -> bytes:
    return wire.frame(msg.to_segments())


def _tiny(build) -> bytes:
    """The same message built in tiny segments."""
    return wire.frame(_tiny_segments(lambda kw: build(rpc.Message.new_message(
        **kw))).to_segments())


def message_seeds(contents) -> list[bytes]:
    out = []
    peer = P.Connection("peer")           # encodes what a peer sends
    for obj in range(3):
        peer.imports[obj] = 1
    descs = [None, Obj(9), P.RemoteRef(2)]
    for _mod, segs in contents:
        content = P.Content.standalone(segs)
        peer.questions.clear()
        _q, data = peer.send_call(1, 0xA05A5E2C6B2F6D07, 3, content, descs)
        out.append(_renumber(data, 20))                          # Call: fast path
        head, at = rpcwire.encode_return(1, False, [(1, 7), (3, 2), (0, 0)])
        out.append(P.Connection._splice(head, at, content))      # Return with caps
        head, at = rpcwire.encode_return(4, True, [])
        out.append(P.Connection._splice(head, at, content))      # noFinishNeeded

    def call_builder(promised: bool, send_to="caller"):
        def build(m):
            c = m.init("call")
            c.questionId, c.interfaceId, c.methodId = 21, 0xA05A5E2C6B2F6D06, 0
            if promised:
                pa = c.target.init("promisedAnswer")
                pa.questionId = 0
                ops = pa.init("transform", 2)
                ops[0].noop = None
                ops[1].getPointerField = 0
            else:
                c.target.importedCap = 2
            setattr(c.sendResultsTo, send_to, None)
            p = c.init("params")
            p.content.set_as_text("x/y.txt")
            t = p.init("capTable", 6)
            t[0].none = None
            t[1].senderHosted = 8
            t[2].senderPromise = 9
            t[3].receiverHosted = 1
            ra = t[4].init("receiverAnswer")
            ra.questionId = 1
            ra.init("transform", 1)[0].getPointerField = 0
            t[5].receiverHosted = 0
            return m
        return build

    def ret_builder(kind):
        def build(m):
            r = m.init("return")
            r.answerId = {"exception": 2, "canceled": 3, "results": 5, "take": 1}[kind]
            if kind == "take":                 # a tail call's results (rpc.capnp level 1)
                r.takeFromOtherQuestion = 0
            elif kind == "exception":
                e = r.init("exception")
                e.reason, e.type = "it broke: ünïcode", "overloaded"
                e.trace = "trace"
            elif kind == "canceled":
                r.canceled = None
            else:
                r.releaseParamCaps = True
                p = r.init("results")
                p.content.set_as_text("done")
                p.init("capTable", 1)[0].senderPromise = 4
            return m
        return build

    def simple(kind):
        def build(m):
            if kind == "bootstrap":
                m.init("bootstrap").questionId = 22
            elif kind == "finish":
                f = m.init("finish")
                f.questionId, f.releaseResultCaps = 2, True
            elif kind == "release":
                r = m.init("release")
                r.id, r.referenceCount = 1, 1
            elif kind == "disembargo":
                d = m.init("disembargo")
                d.target.init("promisedAnswer").questionId = 0
                d.context.senderLoopback = 3
            elif kind == "resolve":
                r = m.init("resolve")
                r.promiseId = 0
                r.cap.senderHosted = 5
            elif kind == "resolve-exception":
                r = m.init("resolve")
                r.promiseId = 1
                r.init("exception").reason = "nope"
            elif kind == "abort":
                e = m.init("abort")
                e.reason, e.type = "bye", "disconnected"
            elif kind == "unimplemented":
                m.unimplemented = rpc.Message.new_message(bootstrap={"questionId": 1})
            return m
        return build

    builders = [call_builder(False), call_builder(True), call_builder(False, "yourself"),
                ret_builder("exception"), ret_builder("canceled"), ret_builder("results"),
                ret_builder("take")]
    builders += [simple(k) for k in ("bootstrap", "finish", "release", "disembargo", "resolve",
                                     "resolve-exception", "abort", "unimplemented")]
    for build in builders:
        out.append(_frame(build(rpc.Message.new_message())))
        out.append(_tiny(build))

    def plain_in_two(which: str, data: bytes):
        """A plain Call or Return (no capabilities) as pycapnp lays out content that
        outgrows its first segment: the header and the content's struct there, its
        Data behind a far pointer in a second segment (what the fast lane forwards
        as it came, fastwire.h fw_forward_msg)."""
        def build(m, data):
            if which == "call":
                c = m.init("call")
                c.questionId, c.interfaceId, c.methodId = 21, 0xA05A5E2C6B2F6D06, 0
                c.target.importedCap = 2
                p = c.init("params")
            else:
                r = m.init("return")
                r.answerId, r.noFinishNeeded = 5, True
                p = r.init("results")
            sm = p.content.as_struct(sample.Sample)
            sm.u8, sm.text = 7, "two"
            sm.data = data
            return m
        first = sum(len(sg) for sg in build(rpc.Message.new_message(), b"").to_segments()) // 8
        return _frame(build(rpc.Message.new_message(num_first_segment_words=first), data))

    for which in ("call", "return"):
        out.append(plain_in_two(which, bytes(range(200))))
    out.append(rpcwire.encode_finish(0))
    out.append(rpcwire.encode_finish(1))
    m = rpc.Message.new_message()
    m.init("bootstrap").questionId = 23
    seg = bytearray(m.to_segments()[0])
    seg[8:10] = struct.pack("<H", 99)                     # a type rpc.capnp lacks
    out.append(wire.frame([seg]))
    out.append(wire.frame([_aliased(8, 5)]))              # a Resolve that reads larger
    return out


def _over_builder(kind):
    """Past a per-message limit (257 capabilities; a transform past its
    bound): refused as one call or answer (Plain.over), not the connection."""
    def build(m):
        if kind == "return":
            r = m.init("return")
            r.answerId = 5
            p = r.init("results")
        else:
            c = m.init("call")
            c.questionId, c.interfaceId, c.methodId = 24, 0xA05A5E2C6B2F6D06, 0
            if kind == "deep":
                pa = c.target.init("promisedAnswer")
                pa.questionId = 0
                pa.init("transform", wire.MAX_PATH_DEPTH + 1)
            else:
                c.target.importedCap = 2
            p = c.init("params")
        p.content.set_as_text("x")
        t = p.init("capTable", 3 if kind == "deep" else rpcwire.MAX_CAPS_PER_MESSAGE + 1)
        for i in range(len(t)):
            k = i % 5
            if k == 0:
                t[i].senderHosted = 8 + i % 3
            elif k == 1:
                t[i].senderPromise = 9
            elif k == 2:
                t[i].init("thirdPartyHosted").vineId = 7
            elif k == 3:
                t[i].receiverHosted = 1
            else:
                t[i].none = None
        return m
    return build


def over_seeds() -> list[bytes]:
    """Messages past a per-message limit, each in one segment and spread over
    many: a Call and a Return of 257 capabilities of every kind, a Call whose
    target's transform passes MAX_PATH_DEPTH.  Refused as one call or answer
    (Plain.over, RefsReleased), not as the connection.  Apart from
    message_seeds, so that the runs of the seeds before them stay as they were."""
    out = []
    for kind in ("call", "return", "deep"):
        build = _over_builder(kind)
        out.append(_frame(build(rpc.Message.new_message())))
        out.append(_tiny(build))
    return out


def header_after(msg, words: int, after: int = 0) -> bytes:
    """`msg` (a builder of one segment) framed as a peer that builds its content
    before its header lays it out: its root pointer at word 0, then `words` of
    Data (the payload's content, when it has one: what its content pointer
    points at), then the header, then `after` words that nothing points at.
    Past the framing's limit, the header lies in the last bytes of the segment
    (wire.Oversized.tails), or, with `after`, in neither its first nor its last."""
    (h,) = msg.to_segments()
    out = bytearray(8 * (1 + words)) + bytearray(h[8:]) + bytearray(8 * after)
    root = struct.unpack_from("<Q", h, 0)[0]
    struct.pack_into("<Q", out, 0, wire.near_pointer(0, 1 + words + wire._signed30(root), root))
    which = struct.unpack_from("<H", out, 8 * (1 + words))[0]
    field = {rpcwire.MSG_CALL: 1, rpcwire.MSG_RETURN: 0}.get(which)
    if field is not None:
        payload = wire.follow_path([out], (0, 0), (0, field))
        at = wire.struct_pointer_field([out], payload, 0) if payload is not None else None
        if at is not None:                      # the content: a Data of the words before
            off = (1 - (at[1] + 1)) & 0x3FFFFFFF
            struct.pack_into("<Q", out, 8 * at[1], 1 | (off << 2) | ((2 | ((8 * words) << 3)) << 32))
    return wire.frame([bytes(out)])


def _raw(words) -> bytes:
    return wire.frame([b"".join((w & (2 ** 64 - 1)).to_bytes(8, "little") for w in words)])


def rare_seeds() -> list[bytes]:
    """What a conforming, or merely sloppy, peer may send that the seeds above do
    not (r243): each rpc.capnp message kind and union member a level-1 peer does
    not implement or rarely meets (obsoleteSave/obsoleteDelete, provide, accept,
    join, a newer schema's thirdPartyAnswer; a Disembargo for accept, provide, or
    a context rpc.capnp does not define; Call.sendResultsTo.thirdParty, or one it
    does not define; Return resultsSentElsewhere, acceptFromThirdParty; Finish with
    requireEarlyCancellationWorkaround; Unimplemented of each kind), structs larger
    than the schema's (a newer Exception's details), NULL and zero-size bodies,
    and Calls and Returns whose header follows their content (header_after).
    Apart from message_seeds, as over_seeds are."""
    out = []
    for disc in (7, 9, 10, 11, 12, 14, 15):            # a body of one data word
        out.append(_raw([1 << 32 | 1 << 48, disc, 1 << 32, 0x55]))
    for disc in (1, 2, 3, 4, 5, 6, 8, 13):             # NULL and zero-size bodies
        out.append(_raw([1 << 32 | 1 << 48, disc, 0]))
        out.append(_raw([1 << 32 | 1 << 48, disc, 0xFFFFFFFC]))

    def built(build):
        m = rpc.Message.new_message()
        build(m)
        return m

    def disembargo(ctx):
        def build(m):
            d = m.init("disembargo")
            d.target.importedCap = 1
            if ctx == "accept":
                d.context.accept = None
            else:
                setattr(d.context, ctx, 2)
        return build
    for ctx in ("senderLoopback", "receiverLoopback", "accept", "provide"):
        out.append(_frame(built(disembargo(ctx))))
    seg = bytearray(built(disembargo("provide")).to_segments()[0])
    at = seg.rfind(struct.pack("<I", 2))                # provide's value; its tag follows
    struct.pack_into("<H", seg, at + 4, 7)              # a context rpc.capnp lacks
    out.append(wire.frame([bytes(seg)]))

    def call(send_to):
        def build(m):
            c = m.init("call")
            c.questionId, c.interfaceId, c.methodId = 25, 0xA05A5E2C6B2F6D06, 1
            c.target.importedCap = 2
            c.sendResultsTo.yourself = None
            t = c.init("params").init("capTable", 2)
            t[0].senderHosted, t[1].receiverHosted = 8, 1
        m = built(build)
        seg = bytearray(m.to_segments()[0])
        struct.pack_into("<H", seg, 8 * 3 + 6, send_to)  # Call's data: sendResultsTo's tag
        return wire.frame([bytes(seg)])
    out += [call(2), call(9)]                           # thirdParty; one it lacks

    def ret(kind):
        def build(m):
            r = m.init("return")
            r.answerId = 5
            if kind == "exception":
                e = r.init("exception")
                e.reason, e.trace = "x", "at y"
            else:
                r.canceled = None
        m = built(build)
        seg = bytearray(m.to_segments()[0])
        if kind != "exception":
            struct.pack_into("<H", seg, 8 * 3 + 6, kind)
        return wire.frame([bytes(seg)])
    out += [ret(3), ret(5), ret(8), ret("exception")]

    def finish(m):
        f = m.init("finish")
        f.questionId, f.releaseResultCaps, f.requireEarlyCancellationWorkaround = 2, False, True
    out.append(_frame(built(finish)))
    for kind in ("call", "return", "finish", "resolve", "release", "bootstrap", "disembargo",
                 "abort"):
        def unimpl(m, kind=kind):
            u = m.init("unimplemented")
            if kind in ("call", "return", "bootstrap", "disembargo", "abort", "resolve"):
                u.init(kind)
            elif kind == "finish":
                u.init("finish").questionId = 1
            else:
                u.init("release").id = 1
        out.append(_frame(built(unimpl)))
    # Return of a newer schema: 3 data words, 2 pointers; its Exception of 3 (details)
    out.append(_raw([1 << 32 | 1 << 48, 3, 0 | 3 << 32 | 2 << 48,
                     3 | 1 << 48, 0xDEAD, 0xBEEF, 1 << 2 | 1 << 32 | 3 << 48, 0,
                     0, 1 | 2 << 2 | (2 | 2 << 3) << 32, 0, 0, ord("x")]))
    # headers after their content (and before 8 words nothing points at)
    for kind in ("call", "return"):
        def head(m, kind=kind):
            if kind == "call":
                c = m.init("call")
                c.questionId, c.interfaceId, c.methodId = 26, 0xA05A5E2C6B2F6D06, 2
                pa = c.target.init("promisedAnswer")
                pa.questionId = 0
                pa.init("transform", 1)[0].getPointerField = 0
                p = c.init("params")
            else:
                r = m.init("return")
                r.answerId = 5
                p = r.init("results")
            t = p.init("capTable", 3)
            t[0].senderHosted = 8
            t[1].init("receiverAnswer").questionId = 1
            t[2].receiverHosted = 0
        out.append(header_after(built(head), 40))
        out.append(header_after(built(head), 40, after=8))
    return out


def _aliased(depth: int, which: int) -> bytes:
    """A Message of type `which` whose body is `depth` levels of structs with two
    pointers to the same next struct: small, and as large as every path through
    it to a reader that copies it (the unimplemented echo must not)."""
    def sp(at, target, ptrs):
        return ((target - at - 1) & 0x3FFFFFFF) << 2 | ptrs << 48
    words = [sp(0, 1, 2) | 1 << 32, which, sp(2, 4, 2), sp(3, 4, 2)]
    for level in range(depth):
        here = 4 + 2 * level
        words += [0, 0] if level == depth - 1 else [sp(here, here + 2, 2),
                                                     sp(here + 1, here + 2, 2)]
    return b"".join(struct.pack("<Q", w) for w in words)


def _renumber(data: bytes, qid: int) -> bytes:
    segs = [bytearray(s) for s in wire.unframe(data)]
    _k, s, start, _w = wire.resolve(segs, wire.follow_path(segs, (0, 0), (0,)))
    segs[s][8 * start:8 * start + 4] = struct.pack("<I", qid)
    return wire.frame(segs)


# ---------------------------------------------------------------- structure of a seed


def walk(segs):
    """(pointer locations, composite-tag locations, text byte ranges) reachable
    from the root: where mutations hurt most."""
    ptrs, tags, texts = [], [], []
    seen = set()
    todo = [((0, 0), 0)]
    while todo and len(ptrs) < 2000:
        loc, depth = todo.pop()
        if loc in seen or depth > 40:
            continue
        seen.add(loc)
        ptrs.append(loc)
        try:
            r = wire.resolve(segs, loc)
        except wire.WireError:
            continue
        if r is None:
            continue
        kind, s, start, w = r
        if kind == wire.STRUCT:
            data, n = (w >> 32) & 0xFFFF, w >> 48
            todo.extend(((s, start + data + i), depth + 1) for i in range(n))
        elif kind == wire.LIST:
            esz, count = (w >> 32) & 7, w >> 35
            if esz == 2:
                texts.append((s, 8 * start, count))
            elif esz == 6:
                todo.extend(((s, start + i), depth + 1) for i in range(min(count, 200)))
            elif esz == 7:
                tags.append((s, start))
                try:
                    n, data, pc = wire.composite_tag(segs, r)
                except wire.WireError:
                    continue
                for i in range(min(n, 100)):
                    e = start + 1 + i * (data + pc)
                    todo.extend(((s, e + data + j), depth + 1) for j in range(pc))
    return ptrs, tags, texts


class Seed:
    __slots__ = ("segs", "ptrs", "tags", "texts", "schema")

    def __init__(self, data_or_segs, schema=None):
        segs = wire.unframe(data_or_segs) if isinstance(data_or_segs, bytes) else data_or_segs
        self.segs = [bytes(s) for s in segs]
        self.ptrs, self.tags, self.texts = walk(self.segs)
        self.schema = schema
