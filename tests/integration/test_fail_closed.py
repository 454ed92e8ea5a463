"""Nothing a plugin or a client sends can stop the supervisor (a live system).

Each hostile input goes to a running `wsuper up`; afterwards another
compartment's calls still succeed, and the supervisor's descriptors and memory
are back within bounds.  The classes: fields that cannot be read (text that is
not UTF-8, enum values past the last, integers at 2^63 and 2^64-1, pointers of
the wrong kind, lists whose tag lies outside their segment, exception types
nobody defined), messages the core does not know, half messages, peers that
do not read, too many connections.
"""
import os
import select
import socket
import struct
import threading
import time

import pytest

from capnp_schemas import hosted, payloads, protocol as P, rpc, rpcwire, wire
from capnp_schemas.protocol import Content
from supervisor.runtime import CLOSE_FLUSH
from tests.conftest import EXAMPLES, external_client, run_wsuper
from tests.integration.guests import program
from tests.wireclient import WireClient, frame

CALC_ID, OBSERVER_ID = 0xC0FFEE0000000001, 0xC0FFEE0000000003
LOG, DIR, FILE = (hosted.BY_KIND[k] for k in ("log", "directory", "file"))

SYSTEM = """
[system]
schemas = ["{examples}/calc.capnp"]
socket = "{tmp}/ext.sock"
max_connections = 4
message_timeout = 1
logs = "{tmp}/logs"

[system.external_limits]
message_size = "64KiB"

[compartments.calc]
module = "{examples}/calc.wat"
exports = "Calc"
external = true
"""


def _supervisor(pid: int) -> tuple[int, int]:
    """(open descriptors, resident KiB) of the supervisor process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return fds, rss


def _add(sock: str, a: int, b: int, name: str = "calc") -> int:
    import capnp_schemas
    calc_schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))

    async def body(gateway):
        calc = (await gateway.get(name)).cap.as_interface(calc_schema.Calc)
        return (await calc.add(a, b)).sum

    return external_client(sock, body)


@pytest.fixture
def live(tmp_path, wsuper):
    (tmp_path / "system.toml").write_text(SYSTEM.format(examples=EXAMPLES, tmp=tmp_path))
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready calc")
    sock = str(tmp_path / "ext.sock")
    assert _add(sock, 1, 2) == 3
    return run, sock


def live_logs(run):
    """The log directory of the `live` system."""
    import pathlib
    return pathlib.Path(run.proc.args[-1]).parent / "logs"


def _still_serving(run, sock, before):
    assert run.proc.poll() is None, "\n".join(run.lines)
    assert _add(sock, 20, 22) == 42
    # The supervisor closes the connection _add just dropped when it reads the end
    # of it, which may come a moment after _add returns (CI once saw 39 -> 42 here,
    # with the test's own connection still open): wait for what is let go, so that
    # only what is kept for good fails.
    deadline = time.monotonic() + 10
    while True:
        fds, rss = _supervisor(run.proc.pid)
        if fds <= before[0] + 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert fds <= before[0] + 2, (fds, before)
    assert rss <= before[1] + 40 * 1024, (rss, before)


# ------------------------------------------------------------------ external clients


def _name_params(raw_name_word: int, extra: bytes = b"") -> Content:
    """Gateway.get params whose one pointer (`name`) is `raw_name_word`."""
    return Content.standalone([struct.pack("<QQ", 1 << 48, raw_name_word) + extra])


def test_hostile_fields_from_a_client_fail_that_call_or_that_client_only(live):
    run, sock = live
    before = _supervisor(run.proc.pid)
    c = WireClient(sock)
    gw = c.bootstrap()
    get = hosted.GATEWAY.method("get").ordinal
    # `name` points at a struct, then at text that is not UTF-8
    as_struct = _name_params(1 << 32, struct.pack("<Q", 7))
    not_utf8 = _name_params((1 << 0) | (2 << 32) | (3 << 35), b"\xff\xfe\0\0\0\0\0\0")
    for params in (as_struct, not_utf8):
        ret = c.returned(c.call(gw, hosted.GATEWAY.id, get, params))
        assert ret.payload is None and "malformed params" in ret.error
    # a list of structs whose last element lies past the end of its segment: the
    # supervisor forwards content unread, and what it may reach there is only the
    # receiver's own header (capnp_schemas/protocol.py, _splice); the call is
    # answered either way, and nothing else is touched
    calc = c.get(gw, "calc")
    tag_outside = Content.standalone([struct.pack("<QQQ", 1 << 48, 1 | (7 << 32) | (1 << 35),
                                                  (1 << 2) | (1 << 32))])
    ret = c.returned(c.call(calc, CALC_ID, 0, tag_outside))
    assert ret.payload is not None or ret.error
    _still_serving(run, sock, before)
    c.close()


def test_a_call_of_as_many_segments_as_a_message_may_have_reaches_the_compartment(live):
    """A client's Call of 512 segments (the most a message may have) was forwarded
    with its header as one segment more: the engine's framing refused 513, and it
    ended ('protocol error from supervisor'), restarted, every caller's calls in
    it failed: one client's message cut off the compartment (an outside review).
    Now the call reaches it, is answered, and the engine is the one it was."""
    run, sock = live
    before = _supervisor(run.proc.pid)
    c = WireClient(sock)
    calc = c.get(c.bootstrap(), "calc")
    # 511 segments of content, and the header in a 512th (as a stock client may lay
    # it out): the struct Calc.add(40, 2) in the first
    segs = [bytearray(struct.pack("<QQ", 1 << 32, 40 | (2 << 32)))] + [bytes(8)] * 510
    qid = c.conn._new_question([])
    head, at = rpcwire.encode_call(qid, calc, CALC_ID, 0, [])
    head = bytearray(head)
    wire.set_word(segs[0], 0, wire.far_pointer(511, 0))           # the root: the header
    pad = len(head) // 8                                          # params: a double far
    head += wire.far_pointer(0, 1).to_bytes(8, "little") + (1 << 32).to_bytes(8, "little")
    wire.set_word(head, at, wire.far_pointer(511, pad, double=True))
    data = wire.frame([bytes(x) for x in segs] + [bytes(head)])
    assert len(wire.unframe(data)) == wire.MAX_SEGMENTS
    c.send(data)
    ret = c.returned(qid)
    assert ret.payload is not None, ret.error
    copy = wire.unframe(ret.payload.content.single_segment_copy())
    assert struct.unpack_from("<i", copy[0], 8)[0] == 42
    _still_serving(run, sock, before)
    assert not [line for line in run.lines if "protocol error" in line or "restarting" in line]
    c.close()


def test_a_return_with_an_exception_type_nobody_defined_reaches_no_one_as_a_crash(live):
    run, sock = live
    before = _supervisor(run.proc.pid)
    c = WireClient(sock)
    calc = c.get(c.bootstrap(), "calc")
    qid, step = _observer_called(c, calc, 2)
    answer = bytearray(c.conn.send_exception(step.answer_id, "no", "failed"))
    struct.pack_into("<H", answer, 60, 0xFFFF)       # Exception.type
    c.send(bytes(answer))
    ret = c.returned(qid)
    assert ret.payload is None                       # calc's sumTo failed on it, cleanly
    _still_serving(run, sock, before)


def _calc_structs(method):
    import capnp_schemas
    calc_schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))
    return payloads.method_structs(calc_schema.Calc, method)


@pytest.mark.parametrize("what", ["abort not UTF-8", "unknown message", "unknown and broken",
                                  "garbage"])
def test_messages_that_break_the_protocol_cut_off_that_client_only(live, what):
    run, sock = live
    before = _supervisor(run.proc.pid)
    c = WireClient(sock)
    c.bootstrap()
    if what == "abort not UTF-8":
        data = bytearray(P.Connection("x").send_abort("hello"))
        data[56:61] = b"\xff\xfe\xfd\xfc\xfb"
    elif what == "unknown message":           # Message union value 30, nothing else
        data = frame(struct.pack("<QQ", (1 << 32) | (1 << 48), 30))
    elif what == "unknown and broken":        # ... whose pointer leads outside the message
        data = frame(struct.pack("<QQQ", (1 << 32) | (1 << 48), 30, (40 << 2) | (1 << 32)))
    else:
        data = os.urandom(4096)
    c.send(bytes(data))
    assert c.closed()
    _still_serving(run, sock, before)


def test_a_message_whose_pipeline_transforms_are_too_long_together_is_refused(live):
    """256 capabilities of kind receiverAnswer with 64 steps each took 20-25 ms to
    decode: other clients waited 150-570 ms.  Now the message is refused before its
    steps are read past the bound: the call fails with the limit named (it cut the
    sender off, as if it had broken the protocol; a conforming peer may pipeline
    that deep), and the connection goes on."""
    from capnp_schemas import rpc, rpcwire
    run, sock = live
    before = _supervisor(run.proc.pid)
    c = WireClient(sock)
    gw = c.bootstrap()
    # a question of the client's, answered and not finished: what its descriptors
    # pipeline on (one never asked is a protocol error, past the limit too)
    get = hosted.GATEWAY.method("get")
    asked = c.call(gw, hosted.GATEWAY.id, get.ordinal,
                   payloads.build(get.params, {"name": "calc"})[0])
    c.wait(lambda e: isinstance(e, P.ReturnReceived) and e.question_id == asked)
    qid = c.conn._new_question([])
    msg = rpc.Message.new_message()
    call = msg.init("call")
    call.questionId, call.target.importedCap = qid, gw
    call.interfaceId = hosted.GATEWAY.id
    for d in call.params.init("capTable", 96):     # within this system's 64 KiB a message
        ra = d.init("receiverAnswer")
        ra.questionId = asked
        for i, op in enumerate(ra.init("transform", 64)):
            op.getPointerField = i
    c.send(frame(*msg.to_segments()))
    ev = c.returned(qid)
    assert ev.error.startswith(f"params refused: more than "
                               f"{rpcwire.MAX_TRANSFORM_STEPS_PER_MESSAGE} pipeline transform "
                               f"steps in one message"), ev.error
    assert c.get(gw, "calc") is not None             # the same connection, going on
    c.send(c.conn.send_finish(asked))
    c.close()
    _still_serving(run, sock, before)


def _ask_sum_to(c: WireClient, calc: int, n: int) -> tuple[int, object]:
    """Ask calc.sumTo(n, observer), the observer an object of this client's: (the
    question's id, the observer)."""
    observer = object()
    params = payloads.build(_calc_structs("sumTo")[0], {"n": n})[0]
    seg = bytearray(params.segments[0])
    struct.pack_into("<Q", seg, len(seg) - 8, 3)     # `observer` (the last pointer): cap #0
    return c.call(calc, CALC_ID, 2, Content.standalone([bytes(seg)]), [observer]), observer


def _observer_called(c: WireClient, calc: int, n: int) -> tuple[int, P.CallReceived]:
    """Ask calc.sumTo(n, observer) (_ask_sum_to) and wait for calc's first call on
    the observer: (the question's id, that call), for the client to answer."""
    qid, observer = _ask_sum_to(c, calc, n)
    return qid, c.wait(lambda e: isinstance(e, P.CallReceived) and e.target is observer)


def _sum_to(c: WireClient, calc: int, n: int, junk: int = 0) -> P.ReturnReceived:
    """calc.sumTo(n, observer), the observer hosted by this client and answering
    (each answer with `junk` capabilities that Observer.step does not return)."""
    qid, observer = _ask_sum_to(c, calc, n)
    while True:
        ev = c.wait(lambda e: isinstance(e, P.CallReceived) and e.target is observer
                    or isinstance(e, P.ReturnReceived) and e.question_id == qid)
        if isinstance(ev, P.ReturnReceived):
            if ev.finish_needed:
                c.send(c.conn.send_finish(qid))
            return ev
        c.send(c.conn.send_return(ev.answer_id, P.EMPTY, [object() for _ in range(junk)]))


def test_an_external_client_sends_nothing_past_its_message_size(either_path, live):
    """The framing admits a message up to message_size plus 64 KiB (its header),
    and what lay between went on: params of 100 KB from a client whose message_size
    is 64 KiB reached calc, and so did results that large from an object the client
    hosts.  Now such params fail the call, and such results the call they answer,
    each naming the limit; the client's connection goes on, on either path (the
    fast lane forwards calls once the route is known: a few small calls first)."""
    from tests.wireclient import struct_content
    run, sock = live
    c = WireClient(sock)
    calc = c.get(c.bootstrap(), "calc")
    add = payloads.build(_calc_structs("add")[0], {"a": 1, "b": 2})[0]
    for _ in range(5):
        ret = c.returned(c.call(calc, CALC_ID, 0, add))
        assert ret.payload is not None, ret.error
    for words in (9000, 12000):                    # 72 KB and 96 KB: past 64 KiB
        ret = c.returned(c.call(calc, CALC_ID, 0, struct_content([1, 2] + [0] * words)))
        assert ret.payload is None and "(limit message_size = 65536)" in ret.error, ret
        assert "params of" in ret.error
    ret = c.returned(c.call(calc, CALC_ID, 0, add))        # the connection goes on
    assert ret.payload is not None, ret.error
    # results: the client's observer answers calc's Observer.step with 72 KB
    observer = object()
    params = payloads.build(_calc_structs("sumTo")[0], {"n": 2})[0]
    seg = bytearray(params.segments[0])
    struct.pack_into("<Q", seg, len(seg) - 8, 3)     # `observer` (the last pointer): cap #0
    qid = c.call(calc, CALC_ID, 2, Content.standalone([bytes(seg)]), [observer])
    steps = 0
    while True:
        ev = c.wait(lambda e: isinstance(e, P.CallReceived) and e.target is observer
                    or isinstance(e, P.ReturnReceived) and e.question_id == qid)
        if isinstance(ev, P.ReturnReceived):
            if ev.finish_needed:
                c.send(c.conn.send_finish(qid))
            break
        c.send(c.conn.send_return(ev.answer_id, struct_content([0] * 9000) if not steps
                                  else P.EMPTY))
        steps += 1
    # calc's first step failed (calc gives up: 'dispatch returned 5'), it got no 72 KB,
    # and the client hears why (r236)
    assert steps == 1 and ev.payload is None, (steps, ev)
    assert "its call out to method 0 of interface 0xc0ffee0000000003 failed: results of " \
        in ev.error and "(limit message_size = 65536)" in ev.error, ev.error
    ret = c.returned(c.call(calc, CALC_ID, 0, add))
    assert ret.payload is not None, ret.error
    c.close()


def test_capabilities_a_method_does_not_take_do_not_fill_the_callees_handle_table(live):
    """calc.add takes no capability; 64 calls with 16 capabilities each used to fill
    calc's 1024 handles for good (neither calc nor generated code releases what it
    did not ask for), and every later call that carries a capability failed
    'overloaded'.  Now the handles a call's params bring are the call's: released
    once it is answered, unless the guest keeps them."""
    run, sock = live
    before = _supervisor(run.proc.pid)
    c = WireClient(sock)
    calc = c.get(c.bootstrap(), "calc")
    add = payloads.build(_calc_structs("add")[0], {"a": 1, "b": 2})[0]
    junk = []
    for _ in range(64):
        caps = [object() for _ in range(16)]
        junk += caps
        ret = c.returned(c.call(calc, CALC_ID, 0, add, caps))
        assert ret.payload is not None, ret.error
    ret = _sum_to(c, calc, 3)                        # a capability calc does take
    assert ret.payload is not None, ret.error
    # and the client hears that every capability it passed was let go
    deadline = time.monotonic() + 10
    while any(id(o) in c.conn._export_ids for o in junk):
        assert time.monotonic() < deadline, len(c.conn.exports)
        c.pump()
    _still_serving(run, sock, before)
    c.close()


def test_calls_pipelined_on_an_unreturned_answer_are_bounded_in_bytes(live):
    """Calls pipelined on an answer not returned yet each kept their whole message:
    in_flight (64) of them at message_size was 0.5 GiB a connection at the default
    8 MiB.  Now what they hold is bounded (here 1 MiB: twice this system's 64 KiB
    message_size, at least 1 MiB); the call past it fails at once, 'overloaded'."""
    from supervisor import router as R
    run, sock = live
    before = _supervisor(run.proc.pid)
    c = WireClient(sock)
    calc = c.get(c.bootstrap(), "calc")
    observer = object()                  # sumTo waits on it: its answer stays unreturned
    params = payloads.build(_calc_structs("sumTo")[0], {"n": 1})[0]
    seg = bytearray(params.segments[0])
    struct.pack_into("<Q", seg, len(seg) - 8, 3)
    pending = c.call(calc, CALC_ID, 2, Content.standalone([bytes(seg)]), [observer])
    step = c.wait(lambda e: isinstance(e, P.CallReceived) and e.target is observer)
    big = Content.standalone([struct.pack("<QQ", 1 << 48, 0) + bytes(60 << 10)])
    qids = [c.call((pending, ()), CALC_ID, 0, big) for _ in range(30)]
    waiting = 17                                  # 17 messages of 61.5 KiB fit in 1 MiB
    refused = [c.returned(q) for q in qids[waiting:]]
    assert all(r.error_type == "overloaded" and "per connection" in r.error for r in refused)
    assert str(R.pipelined_limit(R.Limits(message_size=64 << 10))) in refused[0].error
    c.send(c.conn.send_return(step.answer_id))           # sumTo returns (no capability)
    assert c.returned(pending).payload is not None
    for q in qids[:waiting]:                              # the 17 that waited go on now
        ret = c.returned(q)                               # (and fail: nothing to call)
        assert ret.payload is None and "pipelined call" in ret.error, ret
    _still_serving(run, sock, before)
    c.close()


def test_capabilities_in_replies_a_guest_never_reads_do_not_fill_its_handle_table(live):
    """calc.sumTo calls the caller's observer back and never reads the replies.  An
    observer answering each step with 16 capabilities filled calc's handles for
    good after 64 steps.  Now a reply's handles are released at the guest's next
    call if it did not read that reply (as the ABI asks it to, before its next call)."""
    run, sock = live
    before = _supervisor(run.proc.pid)
    c = WireClient(sock)
    calc = c.get(c.bootstrap(), "calc")
    for _ in range(2):
        ret = _sum_to(c, calc, 100, junk=16)          # 1600 capabilities in all
        assert ret.payload is not None, ret.error
    ret = _sum_to(c, calc, 3)
    assert ret.payload is not None, ret.error
    _still_serving(run, sock, before)
    c.close()


def test_an_unread_reply_at_a_nested_level_does_not_fill_the_handle_table(live):
    """While calc waits in sumTo for its observer, a second sumTo is served nested;
    its observer's reply (16 capabilities, never read) was overwritten, not
    released, when the outer observer answered with a capability: 64 rounds
    filled calc's 1024 handles for good, for every client after."""
    run, sock = live
    before = _supervisor(run.proc.pid)
    c = WireClient(sock)
    calc = c.get(c.bootstrap(), "calc")

    def sum_to(n, observer):
        params = payloads.build(_calc_structs("sumTo")[0], {"n": n})[0]
        seg = bytearray(params.segments[0])
        struct.pack_into("<Q", seg, len(seg) - 8, 3)
        return c.call(calc, CALC_ID, 2, Content.standalone([bytes(seg)]), [observer])

    def step_of(observer):
        return c.wait(lambda e: isinstance(e, P.CallReceived) and e.target is observer)
    for _ in range(80):
        outer, inner = object(), object()
        q1 = sum_to(2, outer)
        s1 = step_of(outer)                        # calc waits in outer.step(1)
        q2 = sum_to(1, inner)                      # served nested
        c.send(c.conn.send_return(step_of(inner).answer_id, P.EMPTY,
                                  [object() for _ in range(16)]))
        r2 = c.returned(q2)
        c.send(c.conn.send_return(s1.answer_id, P.EMPTY, [object()]))
        c.send(c.conn.send_return(step_of(outer).answer_id, P.EMPTY, []))
        r1 = c.returned(q1)
        assert r1.payload is not None and r2.payload is not None, (r1.error, r2.error)
    c.close()
    c = WireClient(sock)
    calc = c.get(c.bootstrap(), "calc")
    ret = _sum_to(c, calc, 3, junk=16)
    assert ret.payload is not None, ret.error
    _still_serving(run, sock, before)
    c.close()


def test_results_of_257_capabilities_fail_the_call_they_answer_not_the_connection(live):
    """A client answering calc's call on its observer with 257 capabilities (one
    past what a message carries; Cap'n Proto's C++ RPC has no such limit) was cut
    off: 'malformed message: 257 capabilities in one message (limit 256)', every
    call and capability of its with it.  Now calc's call on the observer fails
    (so sumTo does), the 257 are released to the client, and its connection
    serves on: the next sumTo on it is answered."""
    run, sock = live
    before = _supervisor(run.proc.pid)
    c = WireClient(sock)
    calc = c.get(c.bootstrap(), "calc")
    qid, step = _observer_called(c, calc, 2)
    junk = [object() for _ in range(257)]
    # what send_return refuses to write (more than one message carries), by hand;
    # the answer is the client's own books' (send_exception), the bytes its own
    c.conn.send_exception(step.answer_id, "(the return below stands for it)")
    msg = rpc.Message.new_message()
    ret = msg.init("return")
    ret.answerId = step.answer_id
    ret.releaseParamCaps = False
    table = ret.init("results").init("capTable", len(junk))
    for i, o in enumerate(junk):
        table[i].senderHosted = c.conn._export(o)
    c.send(frame(*msg.to_segments()))
    r = c.returned(qid)
    # calc's guest got E_FAILED ('results refused: 257 capabilities in one message
    # (limit 256, ...)') and gave up: what calc.wat says of it, and (r236) the
    # supervisor's refusal of its call out, which the caller heard nothing of
    assert r.payload is None and r.error == (
        "calc: dispatch returned 5; its call out to method 0 of interface "
        "0xc0ffee0000000003 failed: results refused: 257 capabilities in one message "
        "(limit 256, MAX_CAPS_PER_MESSAGE)"), r.error
    # the 257 come back released, each
    deadline = time.monotonic() + 10
    while any(id(o) in c.conn._export_ids for o in junk):
        assert time.monotonic() < deadline, len(c.conn.exports)
        c.pump()
    ret = _sum_to(c, calc, 3)                        # the same connection, going on
    assert ret.payload is not None, ret.error
    assert not [line for line in run.lines if "aborted" in line], run.lines
    c.close()
    _still_serving(run, sock, before)


def test_a_half_sent_message_is_cut_off_after_message_timeout(live):
    run, sock = live
    before = _supervisor(run.proc.pid)
    c = WireClient(sock)
    c.send(struct.pack("<II", 0, 4096) + bytes(100))   # promises 32 KiB, sends 100 bytes
    t = time.monotonic()
    assert c.closed(timeout=10)
    assert time.monotonic() - t < 5
    run.wait_for("did not finish it within 1 s (message_timeout)")
    _still_serving(run, sock, before)


def _served(c: WireClient, calc: int, params) -> P.ReturnReceived:
    """The answer to a call of `c`'s, made once calc has answered the calls `c`
    cancelled (a Finish sent with each call): they count against its in_flight until
    calc answers them (469b0a0), and under load calc may still have its last 64 to
    do ("64 of them it cancelled, not answered by their callee yet"): the test's
    next call was refused 'overloaded'.  Any other answer is returned at once."""
    deadline = time.monotonic() + 30
    while True:
        ret = c.returned(c.call(calc, CALC_ID, 0, params))
        if ret.payload is not None or "it cancelled, not answered" not in ret.error \
                or time.monotonic() > deadline:
            return ret
        time.sleep(0.05)


def test_a_peer_that_keeps_sending_large_messages_is_not_taken_for_a_stalled_one(live):
    """For three times message_timeout, an unbroken stream of 40 KiB calls (and their
    Finishes), written so that every read ends inside some message: each message
    has its own deadline, and this peer is never cut off."""
    from capnp_schemas import rpcwire
    run, sock = live
    c = WireClient(sock)
    calc = c.get(c.bootstrap(), "calc")
    body = (struct.pack("<QQ", (1 << 32) | (1 << 48), 5)
            + struct.pack("<Q", 1 | (2 << 32) | ((40 << 10) << 35)) + bytes(40 << 10))
    drained, stop = [0], time.monotonic() + 3

    def drain():                       # read and drop the answers, whatever they are
        # waits with poll, not the socket's timeout: that is the writer's too, and
        # 0.5 s bounded each whole sendall of the test's writes (WireClient.send)
        waiting = select.poll()
        waiting.register(c.sock, select.POLLIN)
        while time.monotonic() < stop + 1:
            if not waiting.poll(500):
                continue
            try:
                data = c.sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            drained[0] += len(data)
    reader = threading.Thread(target=drain)
    reader.start()
    qid, rest = 1000, b""
    while time.monotonic() < stop:     # each write ends inside the next message
        head, at = rpcwire.encode_call(qid, calc, CALC_ID, 0, [])
        msg = P.Connection._splice(head, at, Content.standalone([body])) \
            + rpcwire.encode_finish(qid)
        c.sock.sendall(rest + msg[:len(msg) // 2])
        rest = msg[len(msg) // 2:]
        qid += 1
        time.sleep(0.005)
    c.sock.sendall(rest)
    reader.join()
    assert drained[0] > 0
    c.sock.settimeout(10)               # still connected: a plain call is answered
    params = payloads.build(_calc_structs("add")[0], {"a": 2, "b": 3})[0]
    ret = _served(c, calc, params)
    assert ret.payload is not None, ret.error
    c.close()
    _still_serving(run, sock, _supervisor(run.proc.pid))


def _take_every_connection(sock: str, n: int = 4) -> list:
    """`n` connections, each bootstrapped (the fixture's own may take a moment to go)."""
    held, deadline = [], time.monotonic() + 10
    while len(held) < n:
        c = WireClient(sock)
        try:
            c.gateway = c.bootstrap()
            held.append(c)
        except (OSError, AssertionError, P.ProtocolError):
            c.close()
            assert time.monotonic() < deadline
            time.sleep(0.2)
    return held


def test_connections_past_max_connections_are_refused_unless_one_is_idle(live):
    run, sock = live
    before = _supervisor(run.proc.pid)
    held = _take_every_connection(sock)
    for c in held:                      # each heard from just now: none may make room
        c.bootstrap()
    extra = WireClient(sock)
    assert extra.closed()
    run.wait_for("more than 4 external connections at once")
    # silent for more than IDLE_EVICT, the longest idle makes room for a newcomer
    time.sleep(1.2)
    for c in held[1:]:
        c.bootstrap()
    newcomer = WireClient(sock)
    newcomer.bootstrap()
    assert held[0].closed()
    run.wait_for("did no useful work for ")
    for c in held[1:] + [newcomer]:
        c.close()
    time.sleep(0.2)
    _still_serving(run, sock, before)


def test_a_client_refused_for_max_connections_hears_why_even_as_it_writes(live):
    """A refused connection was written its Abort and closed at once, with what the
    client had sent unread: the kernel then fails the client's next write (EPIPE)
    and its read after the Abort (ECONNRESET).  A client sends its first messages
    without waiting (a bootstrap and calls pipelined on it), and one that writes
    before it reads said so instead of the reason: `wsuper call` failed half the
    time with 'capabilityHelper.h:125: disconnected: message = [Errno 32] Broken
    pipe' rather than 'too many connections (at most 32)' (an outside review,
    reviewer 219).  Now the stream ends after the Abort as a stream ends, and what
    the client sends meanwhile is taken."""
    run, sock = live
    held = _take_every_connection(sock)
    calc_params = payloads.build(_calc_structs("sumTo")[0], {"n": 1})[0]
    seg = bytearray(calc_params.segments[0])
    struct.pack_into("<Q", seg, len(seg) - 8, 3)     # `observer`: capability #0
    for c in held:                       # each serving calc's call: none makes room
        calc = c.get(c.gateway, "calc")
        c.call(calc, CALC_ID, 2, Content.standalone([bytes(seg)]), [object()])
        c.wait(lambda e: isinstance(e, P.CallReceived))
    c = WireClient(sock)
    c.send(c.conn.send_bootstrap()[1])   # as every client begins, before it reads
    data = b""
    try:
        while chunk := c.sock.recv(1 << 16):
            data += chunk
    except ConnectionResetError:
        pytest.fail(f"the stream was reset after {len(data)} bytes, not ended")
    (abort,) = P.Connection("test").receive(data)
    assert "too many connections (at most 4)" in abort.reason, abort
    c.sock.sendall(c.conn.send_bootstrap()[1])       # no EPIPE: it is still read
    c.close()
    ran = run_wsuper("call", run.proc.args[-1], "calc.add", "(a = 1, b = 2)")
    assert ran.returncode == 1 and "too many connections (at most 4)" in ran.stderr, \
        ran.stderr
    for c in held:
        c.close()
    assert run.proc.poll() is None


@pytest.fixture(params=["1", "0"], ids=["native", "trio"])
def either_path(request, monkeypatch):
    """The live system with its external connections on the fast lane, and on
    trio's sockets (WSUPER_NATIVE=0; also any connection the lane could not take
    a descriptor for)."""
    monkeypatch.setenv("WSUPER_NATIVE", request.param)
    return request.param


def test_clients_evicted_while_silent_give_their_descriptors_back(either_path, live):
    """On trio's sockets, a client evicted to make room (max_connections) that then
    sent nothing kept its task waiting to read it for ever: its descriptor, its
    connection's memory and its count of connections.  A client could so evict its
    own silent connections, one after another, to heap up descriptors in the
    supervisor without bound (found while timing the suite: its eviction test
    waited 10 s for an end that never came)."""
    run, sock = live
    held = _take_every_connection(sock)             # silent from now on
    fds = _supervisor(run.proc.pid)[0]
    newcomers = []
    for _ in range(4):
        time.sleep(1.2)                     # every connection idle past IDLE_EVICT
        c = WireClient(sock)
        c.bootstrap()                       # makes room: the idlest is evicted
        newcomers.append(c)
    for c in held:                          # each evicted, told why, and closed
        assert c.closed(timeout=5)
    # as many connections as before, and their descriptors: none kept for the evicted.
    # Each is closed at most CLOSE_FLUSH after its Abort: awaited (a loaded machine
    # may take longer), not sampled once after CLOSE_FLUSH + 0.5 s
    deadline = time.monotonic() + CLOSE_FLUSH + 10
    while _supervisor(run.proc.pid)[0] > fds + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _supervisor(run.proc.pid)[0] <= fds + 1, (_supervisor(run.proc.pid), fds)
    for c in held + newcomers:
        c.close()
    assert run.proc.poll() is None


def test_clients_cut_off_while_they_read_nothing_give_their_place_back(either_path, live):
    """A client whose answers waited in the supervisor's queue when it was aborted
    (here: bad framing), and that never read again, kept its connection's writer
    waiting on it for ever on trio's sockets: its descriptor, and its place of
    max_connections, which no eviction could take back (it is no longer a peer).
    Four of them kept every other client out for good.  What is queued for a
    closed connection goes out for a second at most."""
    run, sock = live
    gateway_list = hosted.GATEWAY.method("list")
    held = _take_every_connection(sock)
    for c in held:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        batch = bytearray()
        for _ in range(6000):            # ~0.5 MB of answers: past the socket buffers,
            qid, data = c.conn.send_call(c.gateway, hosted.GATEWAY.id,   # under `soft`
                                         gateway_list.ordinal, P.EMPTY, [])
            batch += data + c.conn.send_finish(qid)
        c.sock.settimeout(10)
        c.sock.sendall(bytes(batch) + b"\xff\xff\xff\x00" + bytes(4))   # then bad framing
    run.wait_for("bad framing")
    # every place comes back while the four still hold their sockets, reading nothing
    newcomers = _take_every_connection(sock)
    for c in newcomers + held:
        c.close()
    assert run.proc.poll() is None


def test_clients_whose_answers_cannot_be_written_give_their_place_back(either_path, live):
    """A client that shut the read side of its socket, made a call and then stayed
    silent: the answer, written when the callee returned, failed (EPIPE) and marked
    its connection closed, but on trio's sockets its task went on waiting to read
    it for ever, and eviction passes over a closed connection.  Four of them kept
    every other client out for good (max_connections), and their descriptors."""
    run, sock = live
    held = _take_every_connection(sock)
    add = payloads.build(_calc_structs("add")[0], {"a": 2, "b": 3})[0]
    for c in held:
        calc = c.get(c.gateway, "calc")
        c.sock.shutdown(socket.SHUT_RD)
        c.call(calc, CALC_ID, 0, add)              # its answer cannot be written
    # every place comes back (each one's task ended) while the four stay silent
    newcomers = _take_every_connection(sock)
    c = newcomers[0]
    assert c.returned(c.call(c.get(c.gateway, "calc"), CALC_ID, 0, add)).payload is not None
    for c in newcomers + held:
        c.close()
    assert run.proc.poll() is None


def test_a_client_cut_off_is_told_why_in_an_abort_naming_the_limit(either_path, live):
    """A client cut off for a limit heard nothing but the end of the stream (a
    pycapnp client: 'disconnected', no reason) when it stalled in the middle of a
    message (message_timeout) or was evicted to make room (max_connections), while
    a protocol error or a refused connection gets an Abort that says why."""
    run, sock = live

    def abort_of(c) -> str:
        assert c.closed()
        aborts = [e for e in c.events if isinstance(e, P.AbortReceived)]
        assert aborts, c.events
        return aborts[0].reason

    stalled = WireClient(sock)
    stalled.bootstrap()
    stalled.send(struct.pack("<II", 0, 100) + bytes(16))   # 2 words of 100, then nothing
    reason = abort_of(stalled)
    assert "did not finish it within 1 s (message_timeout)" in reason, reason
    held = _take_every_connection(sock)
    time.sleep(1.2)                       # the first is idle longest, the others are not
    for c in held[1:]:
        c.bootstrap()
    newcomer = WireClient(sock)
    newcomer.bootstrap()
    reason = abort_of(held[0])
    assert "did no useful work" in reason and "(max_connections)" in reason, reason
    for c in held + [newcomer, stalled]:
        c.close()
    assert run.proc.poll() is None


@pytest.mark.parametrize("how", ["evicted", "stalled in a message", "broke the protocol"])
def test_a_client_cut_off_hears_why_even_as_it_writes(either_path, live, how):
    """The class of test_a_client_refused_for_max_connections_hears_why_even_as_it_writes,
    for a connection cut off: evicted, stalled in a message, after a protocol error.
    Its Abort was written, then its socket's reading side shut (trio's sockets: to end
    its reader task) or the socket closed with what the client sent unread (the lane),
    and on a Unix socket either failed the client's next write at once (EPIPE): a
    client that wrote before it read (an idle one evicted that makes its next call,
    one sending the rest of the message it stalled in, one pipelining) heard 'Broken
    pipe', not why: 'it did no useful work ... (max_connections)' (reviewer 219).
    What it sends after the Abort is read and dropped now, for a while (_linger)."""
    run, sock = live
    before = _supervisor(run.proc.pid)
    held, newcomer = [], None
    list_ = hosted.GATEWAY.method("list")
    if how == "evicted":
        held = _take_every_connection(sock)
        time.sleep(1.2)                   # the first is idle longest, the others are not
        for c in held[1:]:
            c.bootstrap()
        newcomer = WireClient(sock)
        newcomer.bootstrap()              # held[0] is evicted to make room
        client, why = held[0], "(max_connections)"
        then = client.conn.send_call(client.gateway, hosted.GATEWAY.id, list_.ordinal)[1]
    elif how == "stalled in a message":
        client, why = WireClient(sock), "(message_timeout)"
        client.bootstrap()
        client.send(struct.pack("<II", 0, 100) + bytes(16))  # 2 words of 100, then nothing
        then = bytes(784)                 # the rest of it, once it was cut off
    else:
        client, why = WireClient(sock), ""
        gateway = client.bootstrap()
        client.send(frame(struct.pack("<QQ", (1 << 32) | (1 << 48), 30)))  # no such message
        then = client.conn.send_call(gateway, hosted.GATEWAY.id, list_.ordinal)[1]
    poll = select.poll()                  # (a test process may hold descriptors past
    poll.register(client.sock, select.POLLIN)   # select's 1,024)
    assert poll.poll(10_000)              # its Abort came
    try:
        for _ in range(3):                # its next writes: a call, the rest of a message
            client.sock.sendall(then)
            time.sleep(0.05)
    except BrokenPipeError:
        pytest.fail("its write failed (EPIPE) before it could read why it was cut off")
    assert client.closed()
    aborts = [e for e in client.events if isinstance(e, P.AbortReceived)]
    assert aborts and why in aborts[0].reason, client.events
    for c in held + [newcomer, client]:
        if c is not None:
            c.close()
    deadline = time.monotonic() + 10      # their places free again once their ends are read
    while _supervisor(run.proc.pid)[0] > before[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    _still_serving(run, sock, before)


def test_connections_that_only_chatter_cannot_keep_a_new_client_out(live):
    """Every connection sending a message that asks for nothing (a Release of no
    reference) every 0.3 s used to count as busy: eviction waited for 1 s of
    silence, so they kept every other client out for as long as they liked.  Only
    useful work counts now: a call or bootstrap, a return."""
    from capnp_schemas import rpc
    run, sock = live
    before = _supervisor(run.proc.pid)
    held = _take_every_connection(sock)

    def nothing(c) -> bytes:             # Release(the gateway, 0 references)
        msg = rpc.Message.new_message()
        msg.init("release").id = c.gateway
        return frame(*msg.to_segments())

    def chatter(seconds: float):
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            for c in held:
                try:
                    c.send(nothing(c))
                except OSError:          # the one closed to make room
                    pass
            time.sleep(0.3)
    chatter(1.5)
    extra = WireClient(sock)             # and while they chatter, a newcomer gets in
    t = threading.Thread(target=chatter, args=(1.0,))
    t.start()
    try:
        calc = extra.get(extra.bootstrap(), "calc")
        params = payloads.build(_calc_structs("add")[0], {"a": 2, "b": 3})[0]
        assert extra.returned(extra.call(calc, CALC_ID, 0, params)).payload is not None
    finally:
        t.join()
    run.wait_for("did no useful work for ")
    for c in held + [extra]:
        c.close()
    time.sleep(0.2)
    _still_serving(run, sock, before)


def test_a_client_that_never_reads_stops_being_read_and_bounds_memory(live):
    run, sock = live
    before = _supervisor(run.proc.pid)
    c = WireClient(sock)
    calc = c.get(c.bootstrap(), "calc")
    params = payloads.build(_calc_structs("add")[0], {"a": 1, "b": 2})[0]
    one = c.conn.send_call(calc, CALC_ID, 0, params)[1]
    c.sock.settimeout(0.5)
    sent, stop = [0], time.monotonic() + 8

    def flood():                       # calls, and never a read of their answers
        try:
            while time.monotonic() < stop:
                c.sock.sendall(one * 200)
                sent[0] += 200
        except OSError:
            pass
    t = threading.Thread(target=flood)
    t.start()
    time.sleep(3)
    assert _add(sock, 2, 3) == 5                     # others are served meanwhile
    t.join()
    fds, rss = _supervisor(run.proc.pid)
    assert rss <= before[1] + 40 * 1024, (rss, before, sent)
    c.close()
    _still_serving(run, sock, before)


def test_a_client_that_shuts_its_reading_side_is_cut_off_as_one_that_is_gone(either_path, live):
    """An outside review: a client that shut down the reading side of its socket
    (shutdown(SHUT_RD): the supervisor's writes to it fail with EPIPE, while what it
    sends is still read) was cut off on trio's sockets, as a client that is gone;
    on the fast lane, its output was dropped and it went on being served: 14,500
    calls in 4 s, never finished (max_unfinished is 4096) and never read, calc
    serving every one.  Whatever path it is on, a peer the supervisor can no longer
    write to is gone: it is cut off before it can have a bound's worth of calls
    answered, and the others are served."""
    run, sock = live
    before = _supervisor(run.proc.pid)
    c = WireClient(sock)
    calc = c.get(c.bootstrap(), "calc")
    params = payloads.build(_calc_structs("add")[0], {"a": 1, "b": 2})[0]
    for _ in range(3):                                   # its calls go natively, if they may
        assert c.returned(c.call(calc, CALC_ID, 0, params)).payload is not None
    c.sock.shutdown(socket.SHUT_RD)
    c.sock.settimeout(5)
    sent = 0
    with pytest.raises((BrokenPipeError, ConnectionResetError)):   # it closes it
        while sent < 2 * P.MAX_UNFINISHED:            # calls, never finished nor read
            c.sock.sendall(b"".join(c.conn.send_call(calc, CALC_ID, 0, params)[1]
                                    for _ in range(50)))
            sent += 50
            time.sleep(0.002)
    c.close()
    _still_serving(run, sock, before)


# ------------------------------------------------------------------ compartments


def _escaped(data: bytes) -> str:
    return "".join(f"\\{b:02x}" for b in data)


def _params(iface, method, **fields) -> bytes:
    return frame(payloads.build(iface.method(method).params, fields)[0].segments[0])


def _patched(raw: bytes, old: bytes, new: bytes) -> bytes:
    i = raw.index(old)
    return raw[:i] + new + raw[i + len(new):]


def test_hostile_host_call_params_from_a_compartment_fail_those_calls_only(tmp_path, wsuper):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("content")
    cases = [   # (handle name, interface, method, framed params)
        ("log", LOG, "write", _patched(_params(LOG, "write", text="ab"), b"ab", b"\xff\xfe")),
        ("data", DIR, "open", _params(DIR, "open", path="f", mode="read")[:16]
         + struct.pack("<H", 7) + _params(DIR, "open", path="f", mode="read")[18:]),
        ("file", FILE, "read", _params(FILE, "read", offset=1 << 63, count=10)),
        ("file", FILE, "write", _params(FILE, "write", offset=(1 << 64) - 1, data=b"x")),
        ("file", FILE, "truncate", _params(FILE, "truncate", size=(1 << 64) - 1)),
        ("data", DIR, "stat", _patched(_params(DIR, "stat", path="ab"), b"ab", b"\xc3\x28")),
    ]
    strings, body = {"log": 100, "data": 20, "file": 30, "case": 40, "big": 50}, []
    at = 4096
    for i, (grant, iface, method, raw) in enumerate(cases):
        strings[_escaped(raw)] = at
        body.append(f"""
    (local.set $r (call $call (call $lookup (i32.const {strings[grant]}) (i32.const {len(grant)}))
                        (i64.const {iface.id}) (i32.const {iface.method(method).ordinal})
                        (i32.const {at}) (i32.const {len(raw)}) (i32.const 0) (i32.const 0)
                        (i32.const 1000)))
    (call $log_int (i32.const 40) (i32.const 4) (i32.add (i32.mul (i32.const 100)
                   (i32.const {i})) (i32.sub (i32.const 0) (local.get $r))))""")
        at += (len(raw) + 15) // 16 * 16
    # Log.write of one mebibyte: a line that long is shown cut, and the call succeeds
    body.append("""
    (i32.store (i32.const 65536) (i32.const 0))
    (i32.store (i32.const 65540) (i32.const 131075))
    (i64.store (i32.const 65544) (i64.const 0x0001000000000000))
    (i64.store (i32.const 65552) (i64.or (i64.const 0x0000000200000001)
                                         (i64.shl (i64.const 1048577) (i64.const 35))))
    (memory.fill (i32.const 65560) (i32.const 121) (i32.const 1048576))
    (i32.store8 (i32.const 1114136) (i32.const 0))
    (local.set $r (call $call (global.get $log) (i64.const 0xa05a5e2c6b2f6d01) (i32.const 0)
                        (i32.const 65536) (i32.const 1048608) (i32.const 0) (i32.const 0)
                        (i32.const 1000)))
    (call $log_int (i32.const 50) (i32.const 3) (local.get $r))""")
    text = program("".join(body), {k: v for k, v in strings.items()}).replace(
        '(memory (export "memory") 1)', '(memory (export "memory") 20)')
    (tmp_path / "evil.wat").write_text(text)
    (tmp_path / "system.toml").write_text(SYSTEM.format(examples=EXAMPLES, tmp=tmp_path) + f"""
[compartments.evil]
module = "evil.wat"
restart = "never"
[compartments.evil.grants]
log = {{ host = "log" }}
data = {{ host = "directory", path = "{data}" }}
file = {{ host = "file", path = "{data / 'f'}" }}
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready calc")
    run.wait_for("finished evil exit=0")
    cases_seen = [int(l.split()[-1]) for l in run.lines if l.startswith("[evil] case ")]
    # each hostile call failed alone (E_FAILED = -2), in order
    assert cases_seen == [100 * i + 2 for i in range(len(cases))], run.lines
    big = next(l for l in run.lines if l.startswith("[evil] yyyy"))
    assert big.endswith(f"({(1 << 20) - 4096} more characters)")
    assert "[evil] big 0" in run.lines
    assert (data / "f").read_text() == "content"
    assert _add(str(tmp_path / "ext.sock"), 20, 22) == 42


# ------------------------------------------------------------------ descriptors


def _up_with_fd_limit(system, limit: int):
    """`wsuper up system` with RLIMIT_NOFILE at `limit` (the supervisor raises its soft
    limit to the hard one: both are set), as a conftest.Running."""
    import resource
    from tests.conftest import Running

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return Running(["up", str(system)], preexec_fn=low_limit)


@pytest.mark.parametrize("limit", [8, 16, 24, 63, 64])
@pytest.mark.parametrize("command", ["up", "check"])
def test_a_descriptor_limit_too_low_to_start_is_said_first(command, limit):
    """A review of start-up in hostile environments: `ulimit -n` low at launch (its
    hard limit too).  Under 24 or so the schemas' parser aborted `wsuper up` and
    `wsuper check` (a C++ `terminate`, SIGABRT, exit 134, no word of wsuper's), the
    zygote died in a traceback, or up said only "[Errno 24] Too many open files",
    exit 1.  Below launch.FD_FLOOR every command says so first, exit 2, and starts
    nothing; at it, the system runs."""
    import resource
    import subprocess
    import sys
    from supervisor.launch import FD_FLOOR
    from tests.conftest import ROOT

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", command,
                        os.path.join(EXAMPLES, "hello.toml")], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, preexec_fn=low_limit)
    assert "Traceback" not in r.stderr and "terminate" not in r.stderr, r.stderr[-2000:]
    if limit < FD_FLOOR:
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr == (f"wsuper: error: this process may open only {limit} file "
                            f"descriptors (RLIMIT_NOFILE, its hard limit included); wsuper "
                            f"needs at least {FD_FLOOR}: raise it (ulimit -n)\n")
        assert r.stdout == ""
    else:
        assert r.returncode == 0, r.stderr[-2000:]
        assert command == "check" or "[app] 2 + 3 = 5" in r.stdout, r.stdout


@pytest.mark.parametrize("limit,inherited", [(64, 40), (64, 58), (128, 50)],
                         ids=["64 with 40 open", "64 with 58 open", "128 with 50 open"])
@pytest.mark.parametrize("command", ["up", "check"])
def test_descriptors_open_at_launch_count_against_the_floor(command, limit, inherited):
    """A review of start-up: the floor (launch.FD_FLOOR) was the limit alone, not
    what is left of it: launched with descriptors open beside 0, 1 and 2 (a parent
    or a daemon manager that leaks its own), 50 of them under a limit of 64, the
    schemas' parser aborted `up` and `check` (SIGABRT, exit -6), and 40 made `up`
    say only "[Errno 24] Too many open files", exit 1, as before the floor.  What
    is left counts: below the floor, said first, exit 2; above it, the system runs."""
    import subprocess
    import sys
    from supervisor.launch import FD_FLOOR
    from tests.conftest import ROOT

    # a parent of its own, which leaks its descriptors as such a parent does: numbered
    # from 3 (this process's own may number past the limit: the test run's schema
    # parsers hold theirs, and one numbered past it takes none of its places)
    parent = ("import os, resource, sys\n"
              f"for _ in range({inherited}):\n"
              "    os.set_inheritable(os.open(os.devnull, os.O_RDONLY), True)\n"
              f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))\n"
              "os.execv(sys.executable, [sys.executable, '-m', 'supervisor.cli', *sys.argv[1:]])\n")
    r = subprocess.run([sys.executable, "-c", parent, command,
                        os.path.join(EXAMPLES, "hello.toml")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert "Traceback" not in r.stderr and "terminate" not in r.stderr, r.stderr[-2000:]
    if limit - inherited < FD_FLOOR:
        assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
        assert r.stderr.startswith("wsuper: error: this process may open only ") and \
            f"{inherited} beside 0, 1 and 2 are open already" in r.stderr, r.stderr
        assert len(r.stderr.splitlines()) == 1 and r.stdout == ""
    else:
        assert r.returncode == 0, r.stderr[-2000:]
        assert command == "check" or "[app] 2 + 3 = 5" in r.stdout, r.stdout


def test_descriptors_numbered_past_the_limit_take_no_place_under_it():
    """A review of the floor's count: a descriptor inherited with a number at or
    past the soft limit (opened by a parent under a higher one) takes none of the
    places under it, where every new descriptor goes; counted from /proc, `ulimit
    -n 66` with one low descriptor and three high ones was refused "62 left" of
    the 65 it had (and the count without /proc, which stops at the limit, said
    otherwise).  Only the low one counts: `check` runs."""
    import subprocess
    import sys
    from supervisor.launch import FD_FLOOR, descriptors_below
    from tests.conftest import ROOT
    assert descriptors_below([0, 1, 2, 3, 10, 65, 66, 251], 66) == 3
    assert descriptors_below([], 64) == 0
    limit = FD_FLOOR + 2
    # from a fresh process: the test process's own descriptors (pycapnp's parsers
    # keep those of the schemas they read) may already number past the limit
    code = f"""if True:
        import os, resource, sys
        low = os.open(os.devnull, os.O_RDONLY)
        os.set_inheritable(low, True)
        assert low < {limit}, low
        high = [os.dup2(low, n) for n in (400, 401, 402)]
        resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))
        os.execv(sys.executable, [sys.executable, "-m", "supervisor.cli", "check",
                                  {os.path.join(EXAMPLES, "hello.toml")!r}])
    """
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "file descriptors" not in r.stderr, r.stderr


def test_running_out_of_descriptors_refuses_never_exits(tmp_path):
    """With a low descriptor limit: a compartment holding open files gets EMFILE past
    the budget; a restart still finds descriptors; connections past what the
    supervisor can hold are refused.  The supervisor never exits."""
    import signal
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    open_params = _params(DIR, "open", path="f", mode="read")
    (tmp_path / "hoard.wat").write_text(program(f"""
    (block $done (loop $more
      (local.set $r (call $call (call $lookup (i32.const 20) (i32.const 4))
                          (i64.const {DIR.id}) (i32.const {DIR.method("open").ordinal})
                          (i32.const 4096) (i32.const {len(open_params)})
                          (i32.const 0) (i32.const 0) (i32.const 1000)))
      (br_if $done (i32.ne (local.get $r) (i32.const 0)))
      ;; read the reply: its handle is then ours (unread, the next call drops it)
      (drop (call $reply_read (i32.const 2048) (i32.const 3000)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $more)))
    (drop (call $reply_read (i32.const 2048) (i32.const 3000)))
    (call $log_int (i32.const 40) (i32.const 6) (local.get $i))
    (call $log (i32.const 2048) (i32.load (i32.const 1000)))
    """, {"data": 20, "opened": 40, _escaped(open_params): 4096}))
    (tmp_path / "system.toml").write_text(SYSTEM.format(examples=EXAMPLES, tmp=tmp_path)
                                          .replace("max_connections = 4",
                                                   "max_connections = 1000") + f"""
[compartments.calc.grants]
[compartments.hoard]
module = "hoard.wat"
restart = "never"
[compartments.hoard.grants]
log = {{ host = "log" }}
data = {{ host = "directory", path = "{data}" }}
""")

    run = _up_with_fd_limit(tmp_path / "system.toml", 200)
    try:
        opened = int(run.wait_for("[hoard] opened").split()[-1])
        assert 0 < opened < 200
        assert "EMFILE: the supervisor has no file descriptors to spare" in \
            run.wait_for("[hoard] EMFILE")
        sock = str(tmp_path / "ext.sock")
        # a restart needs descriptors: the reserve has them
        calc_pid = int(next(l for l in run.lines if "ready calc" in l)
                       .split("pid=")[1].split()[0])
        os.kill(calc_pid, signal.SIGKILL)
        run.wait_for("ready calc", start=len(run.lines))
        assert _add(sock, 2, 2) == 4
        # more connections than descriptors: the rest are refused, nobody exits
        held, deadline = [], time.monotonic() + 30
        while len(held) < 250 and time.monotonic() < deadline:
            try:
                held.append(WireClient(sock, timeout=2))
            except BlockingIOError:            # the listen backlog is full: let it accept
                time.sleep(0.02)
        for c in held[:3]:
            c.sock.close()
        held = held[3:]
        # refused: past the connections its descriptors allow (or, if it ran out
        # first, for want of descriptors)
        run.wait_for("refusing")
        for c in held:
            c.close()
        time.sleep(0.5)
        assert run.proc.poll() is None
        assert _add(sock, 20, 22) == 42
    finally:
        run.proc.kill()
        run.proc.communicate()


def _many_calcs(tmp_path, n: int) -> str:
    """A system of `n` calc compartments, the second holding a directory grant."""
    (tmp_path / "d").mkdir()
    text = SYSTEM.format(examples=EXAMPLES, tmp=tmp_path).replace(
        "max_connections = 4", "max_connections = 32")
    for i in range(1, n):
        text += f'[compartments.c{i}]\nmodule = "{EXAMPLES}/calc.wat"\nexports = "Calc"\n'
    return text + f'[compartments.c1.grants]\ndata = {{ host = "directory", path = "{tmp_path}/d" }}\n'


def test_many_compartments_under_a_tight_descriptor_limit_still_open_their_grants(tmp_path):
    """A review of limits (reviewer 211): 50 compartments under `ulimit -n 300` (the
    supervisor holds ~190 descriptors with them all running).  The external
    connections' share of the descriptors had a floor of 64 (or max_connections),
    whatever was left beside the engines' reserve, and the host files' budget came
    out below what each compartment keeps for itself: c1's directory grant failed
    "cannot open ... the supervisor has no file descriptors to spare (EMFILE)" at
    each start, and c1 failed for good.  Connections now take at most what leaves
    each compartment one host descriptor."""
    (tmp_path / "system.toml").write_text(_many_calcs(tmp_path, 50))
    run = _up_with_fd_limit(tmp_path / "system.toml", 300)
    try:
        assert run.next_start("c1").startswith("wsuper: ready c1"), run.lines[-5:]
        run.wait_for("all compartments ready")
        assert not [line for line in run.lines if "failed" in line], run.lines
        assert _add(str(tmp_path / "ext.sock"), 20, 22) == 42
    finally:
        run.proc.kill()
        run.proc.communicate()


@pytest.mark.parametrize("limit", [128, 160])
def test_a_descriptor_limit_too_low_for_the_system_is_said_before_it_starts(tmp_path, limit):
    """A review of limits (reviewer 211): 50 compartments under `ulimit -n 128`
    (hard limit too): `up` started them, and those its descriptors could not hold
    failed "cannot start its engine: Too many open files", then "cannot make its
    socket", and failed for good, none of it naming the limit.  `up` now refuses at
    once, exit 2, naming the limit and what the system needs, and starts nothing."""
    (tmp_path / "system.toml").write_text(_many_calcs(tmp_path, 50))
    run = _up_with_fd_limit(tmp_path / "system.toml", limit)
    assert run.finish() == 2, run.lines
    assert not [line for line in run.lines
                if line.startswith("wsuper: ready") or "failed to start" in line], run.lines
    last = run.lines[-1]
    assert last.startswith(
        f"wsuper: error: this process may open only {limit} file descriptors "
        f"(RLIMIT_NOFILE, its hard limit included), and a system of 50 compartments "
        f"needs at least "), run.lines
    assert last.endswith(": raise the limit (ulimit -n) or run fewer compartments"), last


def test_a_compartment_that_hoards_descriptors_leaves_every_other_its_own(tmp_path):
    """Host files and directories share the supervisor's descriptor budget: one
    compartment that opened files until EMFILE took all of it (with a limit of
    1024 descriptors, within its default `handles`), and every other
    compartment's next open failed with EMFILE.  Each compartment now keeps a
    few of the budget for itself: the hoarder stops short of them."""
    from tests.integration.guests import _PRELUDE
    for d in ("data", "mine"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f").write_text("x")
    open_params = _params(DIR, "open", path="f", mode="read")
    opening = f"""(call $call (call $lookup (i32.const 20) (i32.const 4))
                          (i64.const {DIR.id}) (i32.const {DIR.method("open").ordinal})
                          (i32.const 4096) (i32.const {len(open_params)})
                          (i32.const 0) (i32.const 0) (i32.const 1000))"""
    (tmp_path / "hoard.wat").write_text(program(f"""
    (block $done (loop $more
      (local.set $r {opening})
      (br_if $done (i32.ne (local.get $r) (i32.const 0)))
      ;; read the reply: its handle is then ours (unread, the next call drops it)
      (drop (call $reply_read (i32.const 2048) (i32.const 3000)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $more)))
    (call $log_int (i32.const 40) (i32.const 6) (local.get $i))
    """, {"data": 20, "opened": 40, _escaped(open_params): 4096}))
    # `other` opens one file when called: its status is the answer (0: opened)
    (tmp_path / "other.wat").write_text(f"""(module
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
{_PRELUDE}
  (data (i32.const 20) "data")
  (data (i32.const 4096) "{_escaped(open_params)}")
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (i64.store (i32.const 8208) (i64.extend_i32_u {opening}))
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
    (drop (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))
    (i32.const 0)))
""")
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{tmp_path}/ext.sock"
[compartments.hoard]
module = "hoard.wat"
restart = "never"
[compartments.hoard.grants]
log = {{ host = "log" }}
data = {{ host = "directory", path = "{tmp_path}/data" }}
[compartments.other]
module = "other.wat"
exports = "Calc"
external = true
[compartments.other.grants]
data = {{ host = "directory", path = "{tmp_path}/mine" }}
""")

    run = _up_with_fd_limit(tmp_path / "system.toml", 300)
    try:
        opened = int(run.wait_for("[hoard] opened").split()[-1])
        assert 100 < opened < 300, opened
        run.wait_for("all the supervisor can spare")
        for _ in range(3):           # each opens (and keeps) one more: its own
            assert _add(str(tmp_path / "ext.sock"), 0, 0, "other") == 0
        assert run.proc.poll() is None
    finally:
        run.proc.kill()
        run.proc.communicate()


# ------------------------------------------------------------------ text a guest controls


def test_text_a_guest_controls_never_makes_a_line_of_its_own(tmp_path):
    """A function name with newlines and escape sequences, traps in it, log lines
    and stderr-worthy text: every character shows escaped, no fake event appears.
    Nor a line that looks empty: letters that show as nothing (two Hangul fillers,
    U+3164, and the braille blank, U+2800) were shown as they were."""
    (tmp_path / "v.wat").write_text(program(
        """(call $log (i32.const 300) (i32.const 38)) (call $log (i32.const 400) (i32.const 9))
           (call $evil)""",
        {"\\1b[2J\\0afinished victim exit=0\\e2\\80\\aeRTL": 300,
         "\\e3\\85\\a4\\e3\\85\\a4\\e2\\a0\\80": 400}).replace(
        '(func (export "_start")',
        '(func $evil (@name "x\\0aready victim pid=1\\0a\\1b]0;title\\07") unreachable)\n'
        '  (func (export "_start")'))
    (tmp_path / "system.toml").write_text(
        '[compartments.victim]\nmodule = "v.wat"\nrestart = "never"\n'
        '[compartments.victim.grants]\nlog = { host = "log" }\n')
    import subprocess
    import sys
    from tests.conftest import ROOT
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", "up",
                        str(tmp_path / "system.toml")], cwd=ROOT, capture_output=True)
    out = r.stdout + r.stderr
    assert b"\x1b" not in out and "\u202e".encode() not in out and b"\x07" not in out
    lines = [line.decode() for line in out.splitlines()]
    assert not any(line.startswith(("finished victim", "ready victim pid=1")) for line in lines)
    assert not any("wsuper: finished victim exit=0" in line for line in lines)
    assert any("(in x\\nready victim pid=1\\n\\x1b]0;title\\x07)" in line for line in lines), lines
    assert any("[victim] \\x1b[2J\\nfinished victim exit=0\\u202eRTL" in line for line in lines)
    assert any(line.endswith("[victim] \\u3164\\u3164\\u2800") for line in lines), lines


def test_a_flood_of_clients_cut_off_fills_neither_terminal_nor_logs(live):
    """Each client cut off for a protocol error is a line for the operator; a
    local client can cause thousands a second.  They are throttled (a few a
    second, the rest counted), so the supervisor's own history stays in its log
    files and its terminal backlog stays small."""
    run, sock = live
    before = _supervisor(run.proc.pid)
    began = time.monotonic()
    for _ in range(400):
        c = WireClient(sock)
        c.send(struct.pack("<I", 600))              # a segment table claiming 601 segments
        c.closed()
    elapsed = time.monotonic() - began
    _still_serving(run, sock, before)
    time.sleep(1.1)
    c = WireClient(sock)                            # the next one shown says how many were not
    c.send(struct.pack("<I", 600))
    c.closed()
    run.wait_for("more lines about external were not shown")
    shown = len([l for l in run.lines if "connection aborted" in l])
    assert 5 <= shown <= 5 * (elapsed + 3) + 1, (shown, elapsed)
    history = (live_logs(run) / "supervisor.log").read_text()
    assert "ready calc" in history
    assert 5 <= history.count("connection aborted") <= 5 * (elapsed + 3) + 1


def test_the_supervisors_own_files_must_be_regular_files(tmp_path):
    """The audit file and the log files are opened for writing by worker threads: a
    FIFO there (opened for writing, it waits for a reader) held one for good. For
    the audit, records piled up, peers were paused, and `wsuper up` never exited,
    not even on SIGTERM; for a log file, it never exited either.  The audit file
    is now opened before anything starts, and refused unless it is a regular
    file; a log file that is not one fails the log files, not the exit."""
    calc = os.path.join(EXAMPLES, "calc.wat")
    hello = os.path.join(EXAMPLES, "hello.wat")
    body = (f'[compartments.calc]\nmodule = "{calc}"\nexports = "Calc"\n'
            f'[compartments.app]\nmodule = "{hello}"\n[compartments.app.grants]\n'
            f'calc = {{ compartment = "calc" }}\nlog = {{ host = "log" }}\n')
    os.mkfifo(tmp_path / "audit.fifo")
    os.symlink(tmp_path / "elsewhere.jsonl", tmp_path / "audit.link")
    for name, said in (("audit.fifo", "a FIFO (named pipe) no one reads"),
                       ("audit.link", "Too many levels of symbolic links")):
        (tmp_path / "system.toml").write_text(
            f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\naudit = "{name}"\n' + body)
        r = run_wsuper("up", str(tmp_path / "system.toml"), timeout=30)
        assert r.returncode == 2, r.output
        assert r.stderr.strip() == (f"wsuper: error: {tmp_path / 'system.toml'}:3: system.audit: "
                                    f"cannot open the audit file "
                                    f"{tmp_path / name}: {said}; the audit must be a "
                                    f"regular file"), r.stderr
        assert r.stdout == ""
    (tmp_path / "logs").mkdir(mode=0o700)
    for log in ("supervisor.log", "app.log"):
        os.mkfifo(tmp_path / "logs" / log)
    (tmp_path / "system.toml").write_text(
        f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\nlogs = "logs"\n' + body)
    r = run_wsuper("up", str(tmp_path / "system.toml"), timeout=30)
    assert r.returncode == 0, r.output
    assert "2 + 3 = 5" in r.stdout
    # ... and the operator is told, once, that the log files stopped and why
    assert r.stderr.count("wsuper: the log files stopped: ") == 1, r.stderr
    assert "log is a FIFO no one reads, not a regular file; lines are shown here only" \
        in r.stderr, r.stderr


SLOW_WAT = """(module
  (import "wsuper" "params_read" (func $params_read (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "wsuper_dispatch") (param $obj i32) (param $iface i64) (param $method i32)
        (param $len i32) (param $ncaps i32) (result i32)
    (local $n i32)
    (if (i32.gt_u (local.get $len) (i32.const 4096)) (then (return (i32.const 1))))
    (drop (call $params_read (i32.const 0) (i32.const 4096)))
    ;; Calc.add(a, b): spin a million times a, answer b
    (local.set $n (i32.mul (i32.load (i32.const 16)) (i32.const 1000000)))
    (block $d (loop $l (br_if $d (i32.le_s (local.get $n) (i32.const 0)))
       (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br $l)))
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
    (i64.store (i32.const 8208) (i64.extend_i32_u (i32.load (i32.const 20))))
    (drop (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))
    (i32.const 0)))
"""


def test_what_ended_an_external_clients_connection_reaches_the_calls_it_leaves(
        tmp_path, wsuper):
    """A client that closed with an answer unread (the supervisor's read then fails
    ECONNRESET) was reported as if it had closed cleanly: every call it left failed
    'external client disconnected'.  Now the reason says what ended the stream."""
    (tmp_path / "system.toml").write_text(
        SYSTEM.format(examples=EXAMPLES, tmp=tmp_path)
        .replace("logs =", f'audit = "{tmp_path}/audit.jsonl"\nlogs ='))
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready calc")
    c = WireClient(str(tmp_path / "ext.sock"))
    calc = c.get(c.bootstrap(), "calc")
    observer = object()                   # calc's sumTo calls it back; it never answers
    params = payloads.build(_calc_structs("sumTo")[0], {"n": 2})[0]
    seg = bytearray(params.segments[0])
    struct.pack_into("<Q", seg, len(seg) - 8, 3)
    c.call(calc, CALC_ID, 2, Content.standalone([bytes(seg)]), [observer])
    c.wait(lambda e: isinstance(e, P.CallReceived) and e.target is observer)
    c.call(calc, CALC_ID, 0, payloads.build(_calc_structs("add")[0], {"a": 1, "b": 2})[0])
    deadline = time.monotonic() + 10      # add's answer is in the socket, unread
    while not _audited(tmp_path, "add") and time.monotonic() < deadline:
        time.sleep(0.05)
    c.close()
    while not _audited(tmp_path, "step") and time.monotonic() < deadline:
        time.sleep(0.05)
    step = _audited(tmp_path, "step")
    assert step and step["outcome"] == "failed", step
    assert step["reason"] == ("compartment external is gone: external client disconnected "
                              "(Connection reset by peer)"), step
    # the gateway's calls are named too (they were "0xa05a5e2c6b2f6d02", "0")
    get = _audited(tmp_path, "get")
    assert (get["interface"], get["capability"]) == ("Gateway", "the gateway"), get


def _audited(tmp_path, method):
    """The audit record of the first call of `method`, once it is written."""
    import json
    try:
        lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return None
    return next((r for r in map(json.loads, lines) if r.get("method") == method), None)


def test_calls_of_clients_that_closed_are_cancelled_and_an_honest_call_is_answered_promptly(
        tmp_path, wsuper):
    """The outside review: 20 connections each sent in_flight (64) slow calls and
    closed; the engine ran every one for nobody, and an honest call waited behind
    them until call_time.  Now the calls of a client that is gone are cancelled
    (Finish to the engine, which does not run them) and those not answered yet
    count against one bound for all external clients: the honest call, retried
    while it is refused 'overloaded', is answered within a few of the slow calls."""
    from tests.wireclient import struct_content
    (tmp_path / "slow.wat").write_text(SLOW_WAT)
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{tmp_path}/ext.sock"
logs = "{tmp_path}/logs"
[compartments.calc]
module = "slow.wat"
exports = "Calc"
external = true
[compartments.calc.limits]
fuel_per_call = 100000000000
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready calc")
    sock = str(tmp_path / "ext.sock")
    spin = 50                                  # 50 million iterations: some 50-150 ms a call
    began = time.monotonic()
    for _ in range(20):
        c = WireClient(sock)
        calc = c.get(c.bootstrap(), "calc")
        for _ in range(64):
            c.call(calc, CALC_ID, 0, struct_content([spin | (1 << 32)]))
        c.close()
    honest = WireClient(sock, timeout=8)       # before: no answer for minutes
    calc = honest.get(honest.bootstrap(), "calc")
    refused = 0
    while True:
        ret = honest.returned(honest.call(calc, CALC_ID, 0, struct_content([0 | (42 << 32)])))
        if ret.payload is not None or ret.error_type != "overloaded" \
                or time.monotonic() - began > 8:
            break
        assert "external clients that are gone" in ret.error, ret.error
        refused += 1
        time.sleep(0.05)
    took = time.monotonic() - began
    assert ret.payload is not None, (ret.error, refused)
    assert struct.unpack_from("<i", ret.payload.content.single_segment_copy(), 16)[0] == 42
    assert took < 8, took


def test_a_trap_in_a_function_with_a_long_name_is_reported_within_bounds(tmp_path):
    """The outside review: a trap in a function whose name (the module's name
    section) had 300,000 characters made a line of 300,123 on the terminal and in
    supervisor.log; at 1.5 M the engine's exception was past the supervisor's
    reader limit (512 KiB), and the honest engine was cut off as a protocol
    violator.  The name is cut in the engine, every reason sent is cut, and every
    event line is cut at 4096 characters: the program fails with its trap."""
    name = "A" * 600_000                       # past the reader limit
    (tmp_path / "t.wat").write_text(f'(module (memory (export "memory") 1) (func ${name} '
                                    f'unreachable) (func (export "_start") call ${name}))')
    (tmp_path / "system.toml").write_text(
        f'[system]\nlogs = "{tmp_path}/logs"\n'
        '[compartments.t]\nmodule = "t.wat"\nrestart = "never"\n')
    r = run_wsuper("up", str(tmp_path / "system.toml"), merged=True)
    lines = r.stdout.splitlines()
    assert all(len(line) <= 4096 + 100 for line in lines), max(map(len, lines))
    assert not any("protocol error" in line for line in lines), lines
    assert any("wasm `unreachable` instruction executed (in AAAA" in line
               and "more characters)" in line for line in lines), lines
    logged = (tmp_path / "logs" / "supervisor.log").read_text().splitlines()
    assert logged and all(len(line) <= 4096 + 100 for line in logged)


def test_an_inherited_method_reaches_a_granted_main_object_and_the_allow_list_holds(tmp_path):
    """Real engines: srv exports Sub, which extends(Pinger).  A call of Pinger's
    ping on the granted Sub carries Pinger's id (as Cap'n Proto calls an inherited
    method); the supervisor refused it ('does not implement interface') before it
    reached srv, though allow = ["ping"] names it.  It reaches srv now; Pinger's
    spin, not listed, is still denied, and an interface Sub does not extend still
    does not reach srv."""
    from tests.conftest import Running
    from tests.integration.guests import HERE
    (tmp_path / "sub.capnp").write_text("""@0xe5a1c3d7b9f20e01;
interface Pinger @0xe5a1c3d7b9f20e02 { spin @0 () -> (); ping @1 () -> (value :Int32); }
interface Sub @0xe5a1c3d7b9f20e03 extends(Pinger) { other @0 () -> (); }
""")
    (tmp_path / "client.wat").write_text(program("""
    (local.set $h (call $lookup (i32.const 200) (i32.const 3)))
    (call $log_int (i32.const 300) (i32.const 4)
          (call $call0 (local.get $h) (i64.const 0xe5a1c3d7b9f20e02) (i32.const 1)))
    (call $log_int (i32.const 310) (i32.const 4)
          (call $call0 (local.get $h) (i64.const 0xe5a1c3d7b9f20e02) (i32.const 0)))
    (call $log_int (i32.const 320) (i32.const 5)
          (call $call0 (local.get $h) (i64.const 0x1234) (i32.const 1)))
    (call $log (i32.const 330) (i32.const 4))
""", {"srv": 200, "ping": 300, "spin": 310, "other": 320, "done": 330}))
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["sub.capnp"]
[compartments.srv]
module = "{HERE}/spin.wat"
exports = "Sub"
[compartments.client]
module = "client.wat"
restart = "never"
[compartments.client.grants]
log = {{ host = "log" }}
srv = {{ compartment = "srv", allow = ["ping"] }}
""")
    run = Running(["up", str(tmp_path / "system.toml")])
    try:
        run.wait_for("[client] done")
        said = {line.split("[client] ")[1].split()[0]: line.split()[-1]
                for line in run.lines if "[client] " in line and "done" not in line}
        assert said["ping"] == "0", run.lines
        assert said["spin"] != "0" and said["other"] != "0", run.lines
        assert any("Pinger.spin is not allowed" in line for line in run.lines), run.lines
    finally:
        run.stop()


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python"])
def test_time_the_supervisor_did_not_read_a_peer_does_not_count_against_its_message(
        tmp_path, wsuper, monkeypatch, native):
    """message_timeout is for a peer that begins a message and does not finish it.
    The supervisor stops reading a peer while its answers wait unread (backpressure;
    or while the audit, or Python's queue, is full): a message it had half read
    when it stopped kept its clock running, so the peer was cut off ("did not
    finish it within 1 s") though the rest had been sent long before: the fast
    lane cut it off while it was not even reading it, Python once it read again.
    Here a client sends 60,000 whole calls (~4 MB of answers, past the 1 MiB the
    supervisor queues before it stops reading) and reads nothing for three times
    message_timeout; then it reads every answer and is still served."""
    from capnp_schemas import rpcwire
    monkeypatch.setenv("WSUPER_NATIVE", native)
    (tmp_path / "system.toml").write_text(SYSTEM.format(examples=EXAMPLES, tmp=tmp_path))
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready calc")
    c = WireClient(str(tmp_path / "ext.sock"))
    calc = c.get(c.bootstrap(), "calc")
    params = payloads.build(_calc_structs("add")[0], {"a": 2, "b": 3})[0]

    def call(qid):
        head, at = rpcwire.encode_call(qid, calc, CALC_ID, 0, [])
        return P.Connection._splice(head, at, params) + rpcwire.encode_finish(qid)
    blob = b"".join(call(qid) for qid in range(1000, 61000))   # reads end inside one
    failed = []

    def send():
        # c.send, not one sendall: sendall's timeout bounds the whole 10 MB, which a
        # loaded machine outlasted (CI: closed at frame 55,687, the test's own write
        # stopped inside a message, rightly cut off as one that did not finish it)
        try:
            c.send(blob)
        except OSError as e:
            failed.append(e)
    c.sock.settimeout(60)               # each piece sent, each read below
    sent = threading.Thread(target=send)
    sent.start()
    time.sleep(3)                       # answers unread: it stops reading this client
    drained, frames, rest = 0, 0, b""
    while frames < 60000:               # now read every answer (a frame each), to the last
        data = c.sock.recv(1 << 16)
        assert data, (frames, failed, run.lines[-3:])
        drained, rest = drained + len(data), rest + data
        while len(rest) >= 8:
            n = struct.unpack_from("<I", rest)[0] + 1
            head = (4 + 4 * n + 7) & ~7
            if len(rest) < head:
                break
            size = head + 8 * sum(struct.unpack_from(f"<{n}I", rest, 4))
            if len(rest) < size:
                break
            rest, frames = rest[size:], frames + 1
    sent.join()
    assert not failed, failed
    assert drained > 1 << 20 and not rest, drained
    c.sock.settimeout(10)
    ret = _served(c, calc, params)          # still connected, and served
    assert ret.payload is not None, ret.error
    assert not any("did not finish it within" in line for line in run.lines), run.lines
    c.close()


def test_wsuper_call_waits_for_room_in_a_full_backlog(live, tmp_path):
    """A unix socket whose backlog is full refuses a non-blocking connect at once
    (EAGAIN), and asyncio took the socket for connected as soon as it was writable:
    while any local process kept the external socket's backlog full, `wsuper call`
    failed with 'disconnected: ... Transport endpoint is not connected'.  It waits
    for room now (its timeout bounds the wait).  Here a listener slow to accept,
    with a full backlog, stands before the live system's socket."""
    import capnp_schemas
    from supervisor import client
    run, sock = live
    front = str(tmp_path / "front.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(front)
    listener.listen(0)
    queued = []
    while True:                                  # fill the backlog
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(front)
        except BlockingIOError:
            s.close()
            break
        queued.append(s)

    def pump(a, b):
        try:
            while True:
                data = a.recv(1 << 16)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def slow_front():
        time.sleep(0.3)
        for _ in range(len(queued) + 1):
            conn, _ = listener.accept()
            back = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            back.connect(sock)
            threading.Thread(target=pump, args=(conn, back), daemon=True).start()
            threading.Thread(target=pump, args=(back, conn), daemon=True).start()
    threading.Thread(target=slow_front, daemon=True).start()
    calc = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp")).Calc
    try:
        out = client.call(front, "calc", calc, "add", {"a": 40, "b": 2}, timeout=20)
        assert "sum = 42" in out, out
    finally:
        for s in queued:
            s.close()
        listener.close()


def test_an_idle_external_connection_costs_the_supervisor_little_memory(tmp_path, wsuper):
    """max_connections may be 100,000.  Each external connection on the fast lane
    took ~48 KiB more than it needed (a ring of the answers an *engine* returns
    without a Finish, which a client never uses): ~60 KiB an idle connection, 5 GiB
    at the bound.  The ring is an engine's, made at its first such return.  Here
    1000 idle clients (each bootstrapped) must cost under 32 KiB each (~17 now)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"needs 1200 descriptors (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    (tmp_path / "system.toml").write_text(
        SYSTEM.format(examples=EXAMPLES, tmp=tmp_path).replace("max_connections = 4",
                                                               "max_connections = 1100"))
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready calc")
    sock = str(tmp_path / "ext.sock")
    clients = []
    try:
        for _ in range(10):                  # what any connection costs first
            clients.append(WireClient(sock))
            clients[-1].bootstrap()
        time.sleep(0.5)
        before = _supervisor(run.proc.pid)[1]
        for _ in range(1000):
            clients.append(WireClient(sock))
            clients[-1].bootstrap()
        time.sleep(0.5)
        each = (_supervisor(run.proc.pid)[1] - before) / 1000
        assert each < 32, f"{each:.1f} KiB a connection"
    finally:
        for c in clients:
            c.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_external_clients_never_take_the_descriptors_the_compartments_need(tmp_path):
    """A max_connections above the supervisor's file descriptors let clients take
    every one: then no engine restarted and no grant opened.  The supervisor
    accepts at most half of what is left beside its compartments' reserve, and
    says so at start; here, under a limit of 400 descriptors, 500 clients connect,
    the calc engine is killed, and it comes back (its eight grants opened) and
    serves."""
    import resource
    import signal
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 700:
        pytest.skip(f"needs 700 descriptors (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 700), hard))
    (tmp_path / "d").mkdir()
    (tmp_path / "system.toml").write_text(
        SYSTEM.format(examples=EXAMPLES, tmp=tmp_path).replace(
            "max_connections = 4", "max_connections = 100000")
        + "[compartments.calc.grants]\n" + "".join(
            f'data{i} = {{ host = "directory", path = "{tmp_path}/d" }}\n' for i in range(8)))
    run = _up_with_fd_limit(tmp_path / "system.toml", 400)
    ready = run.wait_for("ready calc")
    sock, clients = str(tmp_path / "ext.sock"), []
    try:
        tries = 0
        while len(clients) < 500 and tries < 2000:
            tries += 1
            try:
                clients.append(WireClient(sock, timeout=2))
            except OSError:              # its backlog full (EAGAIN): it accepts meanwhile
                time.sleep(0.01)
        time.sleep(1)
        pid = int(ready.split("pid=")[1].split()[0])
        os.kill(pid, signal.SIGKILL)
        line = run.next_start("calc", len(run.lines))
        assert "ready calc" in line, run.lines[-5:]
        for c in clients:
            c.close()
        clients = []
        time.sleep(1.5)                  # the refused and the closed are gone
        assert _add(sock, 20, 22) == 42
        (note,) = [line for line in run.lines if "note: max_connections" in line]
        assert "100000 is more than this process's 400 file descriptors" in note \
            and "ulimit -n" in note, note
    finally:
        for c in clients:
            c.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        run.proc.kill()
        run.proc.communicate()
