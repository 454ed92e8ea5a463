"""A stock pycapnp client (Cap'n Proto's C++ RPC stack) calls a compartment
through the supervisor's external endpoint: the proof that we speak rpc.capnp."""
import os

import capnp
import pytest

import capnp_schemas
from capnp_schemas import wire
from fuzz.seeds import _aliased
from tests.conftest import EXAMPLES, external_client

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


@pytest.fixture
def external_calc(tmp_path, wsuper):
    sock = tmp_path / "ext.sock"
    system = tmp_path / "system.toml"
    system.write_text(SYSTEM.format(schema=os.path.join(EXAMPLES, "calc.capnp"),
                                    module=os.path.join(EXAMPLES, "calc.wat"), socket=sock))
    run = wsuper("up", str(system))
    run.wait_for("ready calc")
    return run, str(sock)


def _client(path, body):
    calc_schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))

    async def with_schema(gateway):
        return await body(gateway, calc_schema)

    return external_client(path, with_schema)


def test_interop_stock_pycapnp_client_calls_compartment(external_calc):
    _run, path = external_calc

    async def body(gateway, calc_schema):
        names = (await gateway.list()).names
        calc = (await gateway.get("calc")).cap.as_interface(calc_schema.Calc)
        return list(names), (await calc.add(20, 22)).sum

    assert _client(path, body) == (["calc"], 42)


def test_interop_pipelined_calls_on_unreceived_results(external_calc):
    _run, path = external_calc

    async def body(gateway, calc_schema):
        # Neither `get` nor `newCounter` has returned when the next call is sent.
        calc = gateway.get("calc").cap.cast_as(calc_schema.Calc)
        counter = calc.newCounter().counter
        first = counter.inc(5)
        second = counter.inc(7)
        added = calc.add(1, 2)
        return (await first).value, (await second).value, (await added).sum

    assert _client(path, body) == (5, 12, 3)


def test_interop_errors_reach_the_client_as_exceptions(external_calc):
    run, path = external_calc

    async def body(gateway, calc_schema):
        with pytest.raises(capnp.KjException, match="no compartment named 'nope'"):
            await gateway.get("nope")
        # the connection and the compartment still serve afterwards
        calc = (await gateway.get("calc")).cap.as_interface(calc_schema.Calc)
        return (await calc.add(2, 2)).sum

    assert _client(path, body) == 4


@pytest.mark.parametrize("garbage", [
    b"\xff\xff\xff\x7f" + b"\0" * 60,                 # 2^31 segments
    b"\x00\x00\x00\x00\xff\xff\xff\x0f",              # a 2 GiB segment, then silence
    b"\x00\x00\x00\x00\x02\x00\x00\x00" + b"\xab" * 16,  # a nonsense root pointer
    # a 248-byte Resolve whose pointers alias: 13 levels of two pointers to one
    # struct, which the unimplemented echo copied as 262 KB
    wire.frame([_aliased(13, 5)]),
])
def test_interop_hostile_client_is_cut_off_and_others_are_served(external_calc, garbage):
    import socket
    _run, path = external_calc
    evil = socket.socket(socket.AF_UNIX)
    evil.connect(path)
    evil.sendall(garbage)
    evil.settimeout(10)
    received = b""
    while chunk := evil.recv(65536):   # an Abort, then the supervisor closes (EOF)
        received += chunk
    evil.close()
    with capnp_schemas.rpc.Message.from_bytes(received) as msg:
        assert msg.which() == "abort" and "protocol error" in msg.abort.reason

    async def body(gateway, calc_schema):
        calc = (await gateway.get("calc")).cap.as_interface(calc_schema.Calc)
        return (await calc.add(3, 4)).sum

    assert _client(path, body) == 7


def test_interop_a_pipelined_call_on_a_failed_call_fails_with_its_type(external_calc):
    """Cap'n Proto rejects a call pipelined on a broken promise with the promise's
    own exception: a call on calc through the wrong interface is UNIMPLEMENTED, and
    so is a call pipelined on its result (it was FAILED)."""
    _run, path = external_calc

    async def body(gateway, calc_schema):
        await gateway.list()
        calc = gateway.get("calc").cap
        wrong = calc.cast_as(capnp_schemas.host.Gateway).get("x")   # not calc's interface
        pipelined = wrong.cap.cast_as(calc_schema.Calc).add(1, 2)
        types = []
        for promise in (wrong, pipelined):
            try:
                await promise
            except capnp.KjException as e:
                types.append(e.type)
        return types

    assert _client(path, body) == ["UNIMPLEMENTED", "UNIMPLEMENTED"]


def _int_result(ret) -> int:
    """The Int32 result (`sum`, `value`, `total`) of a calc method's Return."""
    import struct
    assert ret.payload is not None, ret.error
    msg = ret.payload.content.single_segment_copy()
    data_words = struct.unpack_from("<H", msg, 12)[0]
    return struct.unpack_from("<i", msg, 16)[0] if data_words else 0


def test_interop_params_smaller_than_the_schema_read_as_defaults(external_calc):
    """Cap'n Proto clients may send a params struct smaller than the method's (an
    older schema) or none at all: Rust's capnp-rpc sends a null params pointer for
    a request whose fields it never set (`calc.add_request().send()`), and every
    field then has its default.  calc read its data fields without looking at the
    struct's size, so such a call was answered with the previous call's params
    (another client's): add() after add(20, 22) returned 42."""
    from capnp_schemas import protocol as P
    from tests.wireclient import WireClient, struct_content
    _run, path = external_calc
    c = WireClient(path)
    calc = c.get(c.bootstrap(), "calc")
    CALC = 0xC0FFEE0000000001
    no_data = struct_content([])                          # a struct of no words
    pointer_only = struct_content([], [0])                # a null pointer, no data
    assert _int_result(c.returned(c.call(calc, CALC, 0, struct_content([20 | 22 << 32])))) == 42
    for smaller in (P.EMPTY, no_data, pointer_only):
        assert _int_result(c.returned(c.call(calc, CALC, 0, smaller))) == 0
    # Counter.inc(by) with no `by`: adds nothing
    counter_ret = c.returned(c.call(calc, CALC, 1))
    counter = counter_ret.payload.caps[0].import_id
    assert _int_result(c.returned(c.call(counter, CALC + 1, 0, struct_content([5])))) == 5
    for smaller in (P.EMPTY, no_data, pointer_only):
        assert _int_result(c.returned(c.call(counter, CALC + 1, 0, smaller))) == 5
    # sumTo(n, observer) without its pointer section: no observer, whatever the last
    # call left in calc's buffer and whatever capabilities come beside the params
    mine = object()
    for smaller in (P.EMPTY, struct_content([3])):
        ret = c.returned(c.call(calc, CALC, 2, smaller, [mine]))
        assert ret.payload is None and "dispatch returned 4" in ret.error
    assert _int_result(c.returned(c.call(calc, CALC, 0, struct_content([1 | 2 << 32])))) == 3
    c.close()


def test_interop_a_long_name_asked_of_the_gateway_is_not_malformed(external_calc):
    """Gateway.get read its params with a fixed budget of 8192 words (64 KiB), so a
    well-formed request for a name longer than that, which a stock client sends as
    any other, was answered 'Gateway.get: malformed params: Exceeded message
    traversal limit'.  Its params are read as a host object's are, within the
    message they came in: the name is simply not a compartment's."""
    _run, path = external_calc

    async def body(gateway, calc_schema):
        errors = []
        for n in (70_000, 1_000_000):
            with pytest.raises(capnp.KjException) as e:
                await gateway.get("y" * n)
            errors.append(e.value.description)
        calc = (await gateway.get("calc")).cap.as_interface(calc_schema.Calc)
        return errors, (await calc.add(1, 1)).sum

    errors, two = _client(path, body)
    assert two == 2
    for e in errors:
        assert "no compartment named 'yyyy" in e and "malformed" not in e, e


def test_interop_a_method_calc_does_not_have_is_unimplemented(external_calc):
    """Schema evolution: a client whose Calc has a method more than calc's (a newer
    schema) must be told `unimplemented`, the exception Cap'n Proto clients fall
    back on (the guest ABI's -5, as generated skeletons answer).  The example calc
    failed every method it did not know with status 1: type `failed`."""
    _run, path = external_calc
    from tests.wireclient import WireClient, struct_content
    c = WireClient(path)
    calc = c.get(c.bootstrap(), "calc")
    CALC = 0xC0FFEE0000000001
    counter = c.returned(c.call(calc, CALC, 1)).payload.caps[0].import_id
    for target, iface, method in ((calc, CALC, 3), (calc, CALC, 65535),
                                  (counter, CALC + 1, 1), (counter, CALC, 0)):
        ret = c.returned(c.call(target, iface, method, struct_content([1])))
        assert ret.payload is None and ret.error_type == "unimplemented", (method, ret)
    assert _int_result(c.returned(c.call(calc, CALC, 0, struct_content([2 | 3 << 32])))) == 5
    c.close()


def test_interop_a_third_party_capability_is_called_through_its_vine(external_calc):
    """A level-3 peer hands on a capability another vat hosts as thirdPartyHosted,
    whose vine is an export of its own that forwards to it; rpc.capnp: "Level 1
    and 2 implementations that receive a thirdPartyHosted may simply send calls to
    its vine".  The supervisor cut such a client off ("capability descriptor #5 is
    not supported").  calc.sumTo(2, observer) with the observer passed so reaches
    the vine (the client's object here), and the vine is released after."""
    import struct

    from capnp_schemas import protocol as P, rpc
    from tests.wireclient import WireClient, struct_content
    _run, path = external_calc
    c = WireClient(path)
    calc = c.get(c.bootstrap(), "calc")
    CALC = 0xC0FFEE0000000001
    vine = object()
    params = struct_content([2], [3])                     # n = 2, observer = capability 0
    # the question and the vine's export, on the client's books; the Call sent by hand
    qid, _data = c.conn.send_call(calc, CALC, 2, params, [vine])
    msg = rpc.Message.new_message()
    call = msg.init("call")
    call.questionId, call.interfaceId, call.methodId = qid, CALC, 2
    call.target.importedCap = calc
    call.sendResultsTo.caller = None
    tph = call.init("params").init("capTable", 1)[0].init("thirdPartyHosted")
    tph.vineId = c.conn.export_id(vine)
    c.send(P.Connection._with_content(msg, (0, 1), params))
    steps = []
    for _ in range(2):                                    # calc calls the observer: the vine
        ev = c.wait(lambda e: isinstance(e, P.CallReceived))
        assert ev.target is vine and ev.interface_id == CALC + 2
        steps.append(struct.unpack_from("<ii", ev.payload.content.single_segment_copy(), 16))
        c.send(c.conn.send_return(ev.answer_id))
    assert steps == [(1, 1), (2, 3)]                      # (i, partial sum)
    assert _int_result(c.returned(qid)) == 3
    c.wait(lambda e: isinstance(e, P.ExportReleased) and e.obj is vine)
    assert _int_result(c.returned(c.call(calc, CALC, 0, struct_content([1 | 2 << 32])))) == 3
    c.close()


_MAKER: list = []


def _maker_schema(tmp):
    """A client-side interface whose one method gives a capability: a promise of
    it, pipelined, is what a client passes before it is known (loaded once)."""
    if not _MAKER:
        path = tmp / "maker.capnp"
        path.write_text("@0xd0a1b2c3d4e5f6d1;\n"
                        "interface Maker { make @0 () -> (cap :Capability); }\n")
        _MAKER.append(capnp_schemas.load(str(path)))
    return _MAKER[0]


def test_interop_a_promise_that_fails_with_a_long_reason_fails_only_its_calls(
        external_calc, tmp_path):
    """The client passes calc a promise of its own (a capability its local call
    has not returned yet) as sumTo's observer; the promise then fails with what
    was thrown, 600 KiB of it.  Cap'n Proto's C++ RPC tells the supervisor with a
    Resolve carrying that exception, which the supervisor answers `unimplemented`
    by echoing it; the echo could not be built past 512 KiB (the header's
    traversal limit), and the client was cut off: sumTo, and every other call and
    capability of its, failed 'disconnected'.  Now only sumTo fails, and calc on
    the same connection answers."""
    import asyncio
    run, path = external_calc
    maker_schema = _maker_schema(tmp_path)

    class Maker(maker_schema.Maker.Server):
        async def make(self, **_):
            await asyncio.sleep(0.3)                 # calc's call on it is queued first
            raise Exception("x" * (600 << 10))

    async def body(gateway, calc_schema):
        calc = (await gateway.get("calc")).cap.as_interface(calc_schema.Calc)
        maker = maker_schema.Maker._new_client(Maker())
        promised = maker.make().cap.cast_as(calc_schema.Observer)
        with pytest.raises(capnp.KjException) as e:
            await calc.sumTo(2, promised)
        return str(e.value), (await calc.add(40, 2)).sum

    failed, after = _client(path, body)
    assert "disconnected" not in failed.lower(), failed[:300]
    assert after == 42
    assert not [line for line in run.lines if "aborted" in line or "protocol error" in line], \
        run.lines


# calc's interfaces as a client whose Observer answers with capabilities sees them:
# the same interface ids, Observer.step's results a list of its own objects
_GENEROUS_CALC = """@0xd0a1b2c3d4e5f6d2;
interface Calc @0xc0ffee0000000001 {
  add @0 (a :Int32, b :Int32) -> (sum :Int32);
  newCounter @1 () -> (counter :Capability);
  sumTo @2 (n :Int32, observer :Observer) -> (total :Int32);
}
interface Observer @0xc0ffee0000000003 {
  step @0 (i :Int32, partial :Int32) -> (junk :List(Thing));
}
interface Thing { ping @0 () -> (); }
"""

# run apart: a process loads one schema per interface id
_GENEROUS_CLIENT = """
import asyncio, json, sys
import capnp
import capnp_schemas
calc_schema = capnp_schemas.load(sys.argv[2])

class Thing(calc_schema.Thing.Server):
    async def ping(self, **_):
        pass

class Observer(calc_schema.Observer.Server):
    async def step(self, i, partial, _context, **_):
        junk = _context.results.init("junk", 257)
        for k in range(257):
            junk[k] = Thing()

async def main():
    async with capnp.kj_loop():
        stream = await capnp.AsyncIoStream.create_unix_connection(sys.argv[1])
        client = capnp.TwoPartyClient(stream)
        gateway = client.bootstrap().cast_as(capnp_schemas.host.Gateway)
        calc = (await gateway.get("calc")).cap.as_interface(calc_schema.Calc)
        try:
            failed = "answered: %s" % (await calc.sumTo(2, Observer())).total
        except capnp.KjException as e:
            failed = str(e)
        return failed, (await calc.add(40, 2)).sum

print(json.dumps(asyncio.run(asyncio.wait_for(main(), 30))))
"""


def test_interop_a_callback_answer_the_supervisor_refuses_is_named_to_the_caller(
        external_calc, tmp_path):
    """A pycapnp client calls calc.sumTo with an Observer of its own, which answers
    calc's step call with 257 capabilities: one past what a message may carry,
    so the supervisor refuses that answer, and calc's guest gives up.  The client
    heard only 'calc: dispatch returned 5', the callee's status; it now hears
    which of its calls out failed and the limit its own answer passed."""
    import json
    import subprocess
    import sys
    run, path = external_calc
    (tmp_path / "generous.capnp").write_text(_GENEROUS_CALC)
    (tmp_path / "client.py").write_text(_GENEROUS_CLIENT)
    r = subprocess.run([sys.executable, str(tmp_path / "client.py"), path,
                        str(tmp_path / "generous.capnp")], capture_output=True, text=True,
                       timeout=60, cwd=os.path.dirname(os.path.dirname(EXAMPLES)))
    assert r.returncode == 0, r.stderr[-2000:]
    failed, after = json.loads(r.stdout)
    assert "calc: dispatch returned 5; its call out to method 0 of interface " \
           "0xc0ffee0000000003 failed: results refused: 257 capabilities in one message " \
           "(limit 256, MAX_CAPS_PER_MESSAGE)" in failed, failed
    assert after == 42


def test_interop_a_call_whose_results_go_to_a_third_party_fails_alone(external_calc):
    """A level-3 peer may ask for a call's results to be sent to a third vat
    (Call.sendResultsTo.thirdParty); a newer rpc.capnp may add members.  The
    supervisor (level 1) cut such a client off, every call and capability it had
    with it.  The call alone fails `unimplemented`, naming what; the capability it
    carried is released, and calc answers on the same connection."""
    import struct

    from capnp_schemas import protocol as P
    from tests.wireclient import WireClient, struct_content
    run, path = external_calc
    c = WireClient(path)
    calc = c.get(c.bootstrap(), "calc")
    CALC = 0xC0FFEE0000000001
    for tag, what in ((2, "sendResultsTo.thirdParty (level 3"), (9, "a Call.sendResultsTo that")):
        qid, msg, given = c.call_made_by_hand(calc, CALC)
        (seg,) = msg.to_segments()
        seg = bytearray(seg)
        struct.pack_into("<H", seg, 8 * 3 + 6, tag)      # Call's data: sendResultsTo's tag
        c.send(wire.frame([bytes(seg)]))
        ret = c.returned(qid)
        assert ret.payload is None and ret.error_type == "unimplemented", ret
        assert ret.error.startswith(what), ret.error
        c.wait(lambda e: isinstance(e, P.ExportReleased) and e.obj is given)
        ret = c.returned(c.call(calc, CALC, 0, struct_content([40 | 2 << 32])))
        assert _int_result(ret) == 42
    c.close()
    assert not [line for line in run.lines if "aborted" in line], run.lines
