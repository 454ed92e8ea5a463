"""Every rpc.capnp message kind and union member a conforming, or merely sloppy,
peer may send, sent by hand on a real socket to `wsuper up`'s endpoint: each
works as rpc.capnp says, or gets an `unimplemented` echo or an exception for that
message alone, or ends the connection where rpc.capnp calls it an error (the
table in docs/security.md, "Every message a peer may send"); the supervisor and
the other connections go on, and the connection that goes on still serves calc."""
import os
import struct

import pytest

from capnp_schemas import protocol as P, rpc, rpcwire, wire
from tests.conftest import EXAMPLES
from tests.wireclient import WireClient, struct_content

pytestmark = pytest.mark.interop

SYSTEM = """
[system]
schemas = ["{schema}"]
socket = "{socket}"

[compartments.calc]
module = "{module}"
exports = "Calc"
external = true
"""
CALC = 0xC0FFEE0000000001


@pytest.fixture
def calc_socket(tmp_path, wsuper):
    sock = tmp_path / "ext.sock"
    system = tmp_path / "system.toml"
    system.write_text(SYSTEM.format(schema=os.path.join(EXAMPLES, "calc.capnp"),
                                    module=os.path.join(EXAMPLES, "calc.wat"), socket=sock))
    run = wsuper("up", str(system))
    run.wait_for("ready calc")
    return run, str(sock)


def _raw(*words) -> bytes:
    return wire.frame([b"".join((w & (2 ** 64 - 1)).to_bytes(8, "little") for w in words)])


def _built(build) -> bytes:
    m = rpc.Message.new_message()
    build(m)
    return wire.frame(m.to_segments())


def _patched(data: bytes, byte: int, tag: int) -> bytes:
    """`data` (framed, one segment) with the 16 bits at `byte` of its segment set."""
    out = bytearray(data)
    struct.pack_into("<H", out, 8 + byte, tag)
    return bytes(out)


def _add(qid: int, calc: int) -> bytes:
    head, at = rpcwire.encode_call(qid, calc, CALC, 0, [])
    return P.Connection._splice(head, at, struct_content([40 | 2 << 32]))


def _shapes(calc: int) -> dict:
    """name -> (bytes, what comes back before calc's answer: a list of message
    kinds, or 'ends: <the Abort's reason, in part>', or 'ends' (no Abort))."""
    S = {}
    for name, disc in (("obsoleteSave", 7), ("obsoleteDelete", 9), ("provide", 10),
                       ("accept", 11), ("join", 12), ("thirdPartyAnswer (#14)", 14),
                       ("#999", 999)):
        S[name] = (_raw(1 << 32 | 1 << 48, disc, 1 << 32, 0x55), ["unimplemented"])

    def provide(m):
        p = m.init("provide")
        p.questionId, p.target.importedCap = 77, calc
    S["provide, built"] = (_built(provide), ["unimplemented"])

    def disembargo(ctx, target):
        def build(m):
            d = m.init("disembargo")
            d.target.importedCap = target
            if ctx == "accept":
                d.context.accept = None
            else:
                setattr(d.context, ctx, 5)
        return _built(build)
    for target, label in ((calc, "calc"), (99, "99")):
        for ctx in ("accept", "provide"):
            S[f"disembargo {ctx} {label}"] = (disembargo(ctx, target), ["unimplemented"])
        # a context rpc.capnp does not define (Disembargo.context's tag: word 3's bits 32-47)
        S[f"disembargo #7 {label}"] = (_patched(disembargo("provide", target), 8 * 3 + 4, 7),
                                        ["unimplemented"])
        S[f"disembargo receiverLoopback {label}"] = (
            disembargo("receiverLoopback", target), "ends: Disembargo (receiverLoopback)")
    S["disembargo senderLoopback calc"] = (disembargo("senderLoopback", calc),
                                          "ends: Disembargo (senderLoopback) on a target")
    S["disembargo senderLoopback 99"] = (disembargo("senderLoopback", 99),
                                        "ends: export id 99 was never issued")

    def call(send_to):
        def build(m):
            c = m.init("call")
            c.questionId, c.interfaceId, c.methodId = 50, CALC, 0
            c.target.importedCap = calc
            c.sendResultsTo.yourself = None
        return _patched(_built(build), 8 * 3 + 6, send_to)
    S["call sendResultsTo.yourself"] = (call(1), ["return resultsSentElsewhere"])
    S["call sendResultsTo.thirdParty"] = (call(2), ["return exception unimplemented"])
    S["call sendResultsTo #9"] = (call(9), ["return exception unimplemented"])

    def named(m):
        b = m.init("bootstrap")
        b.questionId, b.deprecatedObjectId = 52, "x"
    S["bootstrap deprecatedObjectId"] = (_built(named), ["return exception unimplemented"])

    def finish(m):
        f = m.init("finish")
        f.questionId, f.releaseResultCaps, f.requireEarlyCancellationWorkaround = 53, False, True
    S["call, finish with requireEarlyCancellationWorkaround"] = (
        _add(53, calc) + _built(finish), ["return"])

    def abort(m):
        m.init("abort").reason = "z" * 200_000
    S["abort, 200 KB reason"] = (_built(abort), "ends")

    for kind in ("call", "return", "finish", "resolve", "release", "bootstrap", "disembargo",
                 "abort", "unimplemented"):
        def unimpl(m, kind=kind):
            m.init("unimplemented").init(kind)
        S[f"unimplemented {kind}"] = (_built(unimpl), "ends: peer answered 'unimplemented' to")

    def resolve(m):
        r = m.init("resolve")
        r.promiseId, r.cap.receiverHosted = 3, calc
    S["resolve"] = (_built(resolve), ["unimplemented"])

    def release(m):
        r = m.init("release")
        r.id, r.referenceCount = calc, 0
    S["release of no reference"] = (_built(release), [])
    # NULL and zero-size bodies read as all defaults (question 0, export 0: the gateway)
    for name, disc, want in (
            ("call", 2, ["return exception"]), ("return", 3, "ends: return for question 0"),
            ("finish", 4, "ends: finish for question 0"), ("resolve", 5, ["unimplemented"]),
            ("release", 6, []), ("bootstrap", 8, ["return results"]),
            ("disembargo", 13, "ends: Disembargo (senderLoopback)"), ("abort", 1, "ends"),
            ("unimplemented", 0, "ends: peer answered 'unimplemented' to an Unimplemented"),
            ("accept", 11, ["unimplemented"])):
        S[f"NULL {name}"] = (_raw(1 << 32 | 1 << 48, disc, 0), want)
        S[f"zero-size {name}"] = (_raw(1 << 32 | 1 << 48, disc, 0xFFFFFFFC), want)
    return S


def _kind(m) -> str:
    w = m.which()
    if w != "return":
        return w
    r = m.__getattr__("return")
    k = r.which()
    if k == "exception":
        return f"return exception {r.exception.type}"
    return f"return {k}"


def _outcome(path: str, shape: str):
    """What a fresh client that got calc hears after sending `shape`, then calc.add
    as question 500: the kinds of the messages before add's return (or the Abort
    and the end of the stream), and whether add returned."""
    c = WireClient(path)
    calc = c.get(c.bootstrap(), "calc")
    data, _want = _shapes(calc)[shape]
    c.send(data)
    try:
        c.send(_add(500, calc))
    except OSError:
        pass
    framer, got = wire.Framer(), []
    c.sock.settimeout(10)
    try:
        while True:
            chunk = c.sock.recv(1 << 16)
            if not chunk:
                return got, "ends"
            for segs in framer.feed(chunk):
                m = rpc.Message.from_segments(segs)
                if m.which() == "abort":
                    return got, f"ends: {m.abort.reason}"
                if m.which() == "return" and m.__getattr__("return").answerId == 500:
                    return got, "goes on"
                got.append(_kind(m))
    except ConnectionResetError:
        return got, "ends"
    finally:
        c.close()


def test_every_message_a_peer_may_send_gets_what_rpc_capnp_says(calc_socket):
    run, path = calc_socket
    wrong = []
    for shape, (_data, want) in _shapes(0).items():
        got, end = _outcome(path, shape)
        if isinstance(want, list):
            # (the message kinds it names, in part: a Return's kind and type follow)
            got = [g for g in got if g not in ("finish", "release")]
            ok = end == "goes on" and len(got) == len(want) \
                and all(g.startswith(w) for g, w in zip(got, want))
        elif want == "ends":
            ok = end == "ends" or end.startswith("ends: protocol error: ")
        else:
            ok = end.startswith("ends: protocol error: " + want[len("ends: "):])
        if not ok:
            wrong.append((shape, want, got, end))
    assert not wrong, "\n".join(map(repr, wrong))
    # and the supervisor serves on
    c = WireClient(path)
    calc = c.get(c.bootstrap(), "calc")
    assert c.returned(c.call(calc, CALC, 0, struct_content([1 | 2 << 32]))).payload is not None


def _answer(shape: str, aid: int) -> bytes:
    """The client's Return to calc's call of its observer, of kind `shape`."""
    m = rpc.Message.new_message()
    r = m.init("return")
    r.answerId, r.releaseParamCaps = aid, False
    if shape in ("exception with trace", "canceled"):
        if shape == "canceled":
            r.canceled = None
        else:
            e = r.init("exception")
            e.reason, e.trace = "observer broke", "at step\n" * 100
        return wire.frame(m.to_segments())
    if shape == "results":
        r.init("results")
        return wire.frame(m.to_segments())
    if shape == "takeFromOtherQuestion of none":
        r.takeFromOtherQuestion = 4000
        return wire.frame(m.to_segments())
    if shape == "resultsSentElsewhere":
        r.resultsSentElsewhere = None
        return wire.frame(m.to_segments())
    tag = {"acceptFromThirdParty": 5, "kind #9": 9}.get(shape)
    if tag is not None:
        r.canceled = None
        return _patched(wire.frame(m.to_segments()), 8 * 3 + 6, tag)
    # a newer schema's Return (4 data words, 3 pointers) and Exception (3 pointers:
    # reason, trace, details), extra words set
    exc = shape == "a newer schema's exception"
    return _raw(1 << 32 | 1 << 48, 3, 4 << 32 | 3 << 48,
                aid | 1 << 32 | (1 << 48 if exc else 0), 0, 0xDEAD, 0xBEEF,
                (2 << 2 | 2 << 32 | 3 << 48) if exc else 0, 0, 0,
                0, 0, 1 | 2 << 2 | (2 | 6 << 3) << 32, 0, 0, int.from_bytes(b"boom!\0\0\0", "little"))


@pytest.mark.parametrize("shape,want", [
    ("results", "goes on"), ("exception with trace", "goes on"), ("canceled", "goes on"),
    ("a newer schema's results", "goes on"), ("a newer schema's exception", "goes on"),
    ("takeFromOtherQuestion of none", "ends: takeFromOtherQuestion names question 4000"),
    ("resultsSentElsewhere", "ends: return of kind 'resultsSentElsewhere' is not supported"),
    ("acceptFromThirdParty", "ends: return of kind 'acceptFromThirdParty' is not supported"),
    ("kind #9", "ends: malformed message: Return: a union member")])
def test_every_return_a_peer_may_answer_a_callback_with(calc_socket, shape, want):
    """calc.sumTo(1, observer) calls the client's observer; the client answers with
    each Return kind: results and exceptions (with a trace, with a newer schema's
    larger structs) fail or finish only that call out, and calc answers on; a
    Return rpc.capnp calls an error for a call made with sendResultsTo.caller ends
    the connection (as Cap'n Proto's C++ RPC)."""
    run, path = calc_socket
    c = WireClient(path)
    calc = c.get(c.bootstrap(), "calc")
    qid, data = c.conn.send_call(calc, CALC, 2, struct_content([1], [3]), [object()])
    c.send(data)
    framer, end = wire.Framer(), None
    c.sock.settimeout(10)
    sent = False
    while end is None:
        chunk = c.sock.recv(1 << 16)
        if not chunk:
            end = "ends"
            break
        for segs in framer.feed(chunk):
            m = rpc.Message.from_segments(segs)
            if m.which() == "call" and not sent:
                c.send(_answer(shape, m.call.questionId))
                sent = True
            elif m.which() == "abort":
                end = f"ends: {m.abort.reason}"
            elif m.which() == "return" and m.__getattr__("return").answerId == qid:
                c.send(rpcwire.encode_finish(qid))
                c.send(_add(500, calc))
            elif m.which() == "return" and m.__getattr__("return").answerId == 500:
                end = "goes on"
    c.close()
    assert sent and end.startswith(want if want == "goes on"
                                   else "ends: protocol error: " + want[len("ends: "):]), end


def test_a_call_through_far_and_double_far_pointers_is_read_as_any_other(calc_socket):
    """Content in a second segment behind a far pointer (its landing pad there),
    the header after it reaching it through a double-far landing pad (what a
    multi-segment Cap'n Proto builder writes): calc.add reads 40 and 2."""
    import struct as st

    from capnp_schemas.protocol import Content
    run, path = calc_socket
    c = WireClient(path)
    calc = c.get(c.bootstrap(), "calc")
    pad = wire.far_pointer(1, 0)
    seg1 = st.pack("<QQ", 1 << 32, 40 | 2 << 32)     # landing pad: struct at the next word
    content = Content((st.pack("<Q", pad), seg1), (0, 0))
    qid, data = c.conn.send_call(calc, CALC, 0, content)
    assert st.unpack_from("<I", data)[0] == 1          # two segments on the wire
    c.send(data)
    ret = c.returned(qid)
    msg = ret.payload.content.single_segment_copy()
    assert st.unpack_from("<i", msg, 16)[0] == 42
    c.close()
