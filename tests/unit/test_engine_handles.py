"""A guest's handles (docs/guest-abi.md, "Handles"): what a name it looks up
gives once it has given that handle up, and what becomes of the capabilities
of a reply it never read.  A real Engine with real wasmtime serving
tests/integration/guests/handles.wat, its supervisor played here."""
from __future__ import annotations

import os
import struct

import pytest

from capnp_schemas import protocol
from capnp_schemas.protocol import Content
from compartments import abi
from compartments.engine import Engine
from compartments.spec import EngineSpec
from tests.enginedriver import Driven
from tests.unit.test_engine_native import Answering

GUESTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "integration", "guests")
IFACE = 0x1234
EMPTY16 = Content.standalone([bytes(16)])


def _engine(native: bool = True):
    """handles.wat's engine, started with the grants "peer" and "other": (engine, its
    socket, the supervisor's Connection, its main object, {grant: our object})."""
    engine = Engine(Answering(), EngineSpec(name="handles", module=os.path.join(
        GUESTS, "handles.wat"), exports=True))
    if not native:
        engine._native.memory = None
    grants = {"peer": object(), "other": object()}
    d = Driven(engine, [("peer", "compartment", ""), ("other", "compartment", "")],
               grants.values())
    return engine, d.sock, d.sup, d.main, grants


def _value(ev) -> int | str:
    if ev.payload is None:
        return ev.error
    return struct.unpack_from("<i", ev.payload.content.segments[0], 8)[0]


def _serve(engine, sock, sup, main, method, answer, params=EMPTY16):
    """Call `method`; `answer(call event)` gives the engine's outgoing calls their
    answers (bytes).  Returns the call's value (or error)."""
    mine = []

    def answering(out):
        more = b""
        for ev in sup.receive(out):
            if isinstance(ev, protocol.CallReceived):
                more += answer(ev)
            elif isinstance(ev, protocol.ReturnReceived):
                mine.append(ev)
        return more
    sock.answer = answering
    sock.batches.append(sup.send_call(main, IFACE, method, params)[1])
    while sock.batches:
        engine._pump()
    engine._flush()
    answering(b"".join(sock.writes))
    sock.writes.clear()
    [ev] = mine
    return _value(ev)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("method", [0, 1], ids=["an object", "a reply's capability"])
def test_a_released_grant_is_not_found_whatever_took_its_handle_since(native, method):
    """lookup("peer") after the guest released that handle, and the handle number was
    given to something else (its own object, a capability from a reply): it said
    that other handle, as if it were the grant (a call through it reached another
    capability).  A name whose handle was released is not found."""
    engine, sock, sup, main, grants = _engine(native)
    peer, _entry = engine.grants["peer"]

    def answer(ev):
        return sup.send_return(ev.answer_id, EMPTY16, [object()])
    assert _serve(engine, sock, sup, main, method, answer) == abi.E_NOTFOUND
    assert engine.handles.get(peer) is not None, "the handle was not given to another"


def test_a_grant_s_name_still_finds_it_while_its_handle_is_held():
    engine, sock, sup, main, grants = _engine()
    peer, _entry = engine.grants["peer"]
    got = []

    def answer(ev):
        got.append(ev.target)
        return sup.send_return(ev.answer_id, EMPTY16)
    assert _serve(engine, sock, sup, main, 3, answer) == 0
    assert got == [grants["peer"]] and engine.grants["peer"][0] == peer


@pytest.mark.parametrize("native", [True, False])
def test_an_unread_nested_reply_goes_when_the_call_it_was_under_fails(native):
    """Method 2 calls "peer" and waits; meanwhile method 3 is served nested, calls
    "peer" and never reads its reply, which brings 4 capabilities.  Then method 2's
    call fails, and it reads the failure's reason as the ABI asks before its next
    call.  The nested reply's handles were released only if a *successful* reply
    replaced it: after a failure they stayed in the table for good, handles the
    guest never learned (64 such rounds filled a table of 256)."""
    engine, sock, sup, main, grants = _engine(native)
    before = len(engine.handles.entries())
    outgoing, nested = [], []

    def answering(out):
        more = b""
        for ev in sup.receive(out):
            if isinstance(ev, protocol.CallReceived):
                outgoing.append(ev.answer_id)
                if len(outgoing) == 1:          # method 2 waits: method 3 comes
                    q, msg = sup.send_call(main, IFACE, 3, EMPTY16)
                    nested.append(q)
                    more += msg
                elif len(outgoing) == 2:        # method 3's call: 4 capabilities
                    more += sup.send_return(ev.answer_id, EMPTY16,
                                            [object() for _ in range(4)])
                else:                           # method 2's second call
                    more += sup.send_return(ev.answer_id, EMPTY16)
            elif isinstance(ev, protocol.ReturnReceived) and ev.question_id in nested:
                assert _value(ev) == 0
                more += sup.send_exception(outgoing[0], "no", "failed")
        return more
    sock.answer = answering
    q, msg = sup.send_call(main, IFACE, 2, EMPTY16)
    sock.batches.append(msg)
    while sock.batches:
        engine._pump()
    engine._flush()
    [ret] = [ev for ev in sup.receive(b"".join(sock.writes))
             if isinstance(ev, protocol.ReturnReceived) and ev.question_id == q]
    assert _value(ret) == abi.E_FAILED
    assert len(outgoing) == 3
    assert len(engine.handles.entries()) == before, "the unread reply's handles stayed"


@pytest.mark.parametrize("method_id", [0x10001, -65535, -1, (1 << 31) - 1])
def test_a_method_id_out_of_range_is_unimplemented_never_another_method(method_id):
    """Method ids are Cap'n Proto's UInt16; the guest passes an i32.  One out of
    range was cut to 16 bits: method 0x10001 called method 1 (and -1 method
    65535), the call the guest did not make."""
    engine, sock, sup, main, grants = _engine()
    called = []

    def answer(ev):
        called.append(ev.method_id)
        return sup.send_return(ev.answer_id, EMPTY16)
    params = Content.standalone([struct.pack("<Qi4x", 1 << 32, method_id)])
    assert _serve(engine, sock, sup, main, 4, answer, params) == abi.E_UNIMPLEMENTED
    assert called == []
    assert engine.reply[0] == f"method id {method_id} is out of range 0..65535".encode()


def test_a_method_id_in_range_is_called_as_it_is():
    engine, sock, sup, main, grants = _engine()
    called = []

    def answering(out):
        more = b""
        for ev in sup.receive(out):
            if isinstance(ev, protocol.CallReceived):
                called.append(ev.method_id)
                more += sup.send_return(ev.answer_id, EMPTY16)
        return more
    sock.answer = answering
    for m in (0, 1, 65535):
        sock.batches.append(sup.send_call(main, IFACE, 4, Content.standalone(
            [struct.pack("<Qi4x", 1 << 32, m)]))[1])
        while sock.batches:
            engine._pump()
        engine._flush()
        answering(b"".join(sock.writes))
        sock.writes.clear()
    assert called == [0, 1, 65535]


@pytest.mark.parametrize("which", [0, 1], ids=["a grant", "a reply's capability"])
def test_an_answer_keeps_its_capabilities_when_the_guest_releases_their_handles(which):
    """results_set with a capability, then release of its handle before returning
    (the guest is done with it): the Release went out before the Return that names
    the capability, and the supervisor ended the engine's connection ('protocol
    error: export id 0 was never issued or was released'): the compartment was
    restarted and every caller's capability to it broke.  The results hold a
    reference of their own until the answer is queued."""
    engine, sock, sup, main, grants = _engine()
    returned, released = [], []

    def answering(out):
        more = b""
        for ev in sup.receive(out):             # the supervisor's own checks
            if isinstance(ev, protocol.CallReceived):
                more += sup.send_return(ev.answer_id, EMPTY16, [object()])
            elif isinstance(ev, protocol.ReturnReceived):
                returned.append(ev)
            elif isinstance(ev, protocol.ExportReleased):
                released.append(ev)
        return more
    sock.answer = answering
    params = Content.standalone([struct.pack("<Qi4x", 1 << 32, which)])
    sock.batches.append(sup.send_call(main, IFACE, 5, params)[1])
    while sock.batches:
        engine._pump()
    engine._flush()
    answering(b"".join(sock.writes))
    [ret] = [r for r in returned if r.payload is not None and r.payload.caps]
    cap = ret.payload.caps[0]          # ours, as the supervisor hosts what it names
    assert isinstance(cap, protocol.Exported)
    assert (cap.obj is grants["peer"]) == (which == 0) and cap.obj is not grants["other"]
    assert _value(ret) == 5
    assert released, "the guest released its last handle: the reference goes after the answer"


def test_a_reply_whose_handles_went_at_the_next_call_is_not_pending_any_more():
    """A reply left unread loses its handles at the guest's next call.  When that
    call then trapped (its params out of memory), the old reply stayed pending: a
    later reply_read copied its handle numbers, released by then and perhaps given
    to something else since (here the guest's own object), as the reply's
    capabilities.  It is no longer pending (E_STATE)."""
    engine, sock, sup, main, grants = _engine()

    def answer(ev):
        return sup.send_return(ev.answer_id, EMPTY16, [object()])
    assert "trapped" in _serve(engine, sock, sup, main, 6, answer)
    assert _serve(engine, sock, sup, main, 7, answer) == abi.E_STATE


@pytest.mark.parametrize("native", [True, False])
def test_a_reply_is_read_once(native):
    """docs/guest-abi.md, reply_read: the reply is the guest's to read once; read,
    it is no longer pending, and a second reply_read is E_STATE (its handles are
    the guest's already: copied again, they would be handed out twice)."""
    engine, sock, sup, main, grants = _engine(native)
    before = len(engine.handles.entries())

    def answer(ev):
        return sup.send_return(ev.answer_id, EMPTY16, [object()])
    assert _serve(engine, sock, sup, main, 9, answer) == abi.E_STATE
    assert len(engine.handles.entries()) == before + 1      # the one reply's capability


@pytest.mark.parametrize("native", [True, False])
def test_a_call_on_a_handle_of_its_own_object_is_unimplemented_and_says_why(native):
    """docs/guest-abi.md, E_UNIMPLEMENTED: `call` on a handle `object` gave the
    guest is refused in the engine, with a reason; nothing goes to the supervisor."""
    engine, sock, sup, main, grants = _engine(native)

    def answer(ev):
        raise AssertionError(f"the engine called out: {ev}")
    assert _serve(engine, sock, sup, main, 8, answer) == abi.E_UNIMPLEMENTED
    mem = engine.memory.read(engine.store, 1000, 1008 + 200)
    length = struct.unpack_from("<I", mem, 0)[0]
    assert mem[8:8 + length].decode() == "calling your own object through a handle is " \
        "not supported"


@pytest.mark.parametrize("native", [True, False])
def test_a_call_served_while_a_reply_is_pending_leaves_it_to_its_guest(native):
    """replyslot.wat's method 0 calls "peer" (answer: 42 and 2 capabilities), then
    writes a line to its log, a WASI call that goes to the supervisor and serves
    the calls that come meanwhile; then it reads its reply.  Meanwhile method 1 is
    served nested: it calls "peer" (7 and 3 capabilities) and never reads that.
    The nested call took the waiting guest's reply: its 2 handles were released,
    and it read 7 and the nested call's 3 handles instead of its own answer.  A
    run of guest code above another has a reply of its own."""
    engine = Engine(Answering(), EngineSpec(name="replyslot", module=os.path.join(
        GUESTS, "replyslot.wat"), exports=True))
    if not native:
        engine._native.memory = None
    peer, log = object(), object()
    d = Driven(engine, [("peer", "compartment", ""), ("stdout", "log", "")], [peer, log])
    sock, sup, main = d.sock, d.sup, d.main
    before = len(engine.handles.entries())
    answers, returns, nested = iter([(42, 2), (7, 3)]), {}, []

    def answering(out):
        more = b""
        for ev in sup.receive(out):
            if isinstance(ev, protocol.CallReceived) and ev.target is peer:
                v, n = next(answers)
                more += sup.send_return(ev.answer_id, Content.standalone(
                    [struct.pack("<Qq", 1 << 32, v)]), [object() for _ in range(n)])
            elif isinstance(ev, protocol.CallReceived):     # the log's write: method 1
                assert ev.target is log
                q, msg = sup.send_call(main, IFACE, 1, EMPTY16)
                nested.append(q)
                more += msg + sup.send_return(ev.answer_id)
            elif isinstance(ev, protocol.ReturnReceived):
                returns[ev.question_id] = ev
        return more
    sock.answer = answering
    q, msg = sup.send_call(main, IFACE, 0, EMPTY16)
    sock.batches.append(msg)
    while sock.batches:
        engine._pump()
    engine._flush()
    answering(b"".join(sock.writes))
    assert [_value(returns[n]) for n in nested] == [0]      # it was served meanwhile
    assert _value(returns[q]) == 42
    # the waiting guest's 2 handles are its own; the nested reply's 3 went
    assert len(engine.handles.entries()) == before + 2


def _toomany(native: bool = True):
    engine = Engine(Answering(), EngineSpec(name="toomany", module=os.path.join(
        GUESTS, "toomany.wat"), exports=True))
    if not native:
        engine._native.memory = None
    d = Driven(engine, [("peer", "compartment", "")], [object()])
    return engine, d.sock, d.sup, d.main


def _n(n: int) -> Content:
    return Content.standalone([struct.pack("<Qi4x", 1 << 32, n)])


@pytest.mark.parametrize("native", [True, False])
def test_a_guest_passing_more_capabilities_than_a_message_carries_gets_e_toomany(native):
    """wsuper.call passing 257 capabilities (abi.MAX_CAPS is 256) trapped the
    guest ("capability count 257 out of range 0..256"): the call it served
    failed, and a program's _start ended, where a peer's such call fails alone.
    It is E_TOOMANY for that call now (the code abi.py gives "too many
    capabilities in one message"), nothing is sent, and the guest goes on: 256
    still go out, and results_set with 257 is E_TOOMANY too."""
    engine, sock, sup, main = _toomany(native)
    calls = []

    def answer(ev):
        calls.append(len(ev.payload.caps))
        return sup.send_return(ev.answer_id, EMPTY16)
    assert _serve(engine, sock, sup, main, 0, answer, _n(257)) == abi.E_TOOMANY
    assert calls == []
    assert engine.reply == (b"257 capabilities in one message (limit 256)", [])
    assert _serve(engine, sock, sup, main, 0, answer, _n(256)) == abi.OK
    assert calls == [256]
    assert _serve(engine, sock, sup, main, 1, answer) == abi.E_TOOMANY
