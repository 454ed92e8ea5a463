"""A capability promised in the result of a call not returned yet, passed in
another call (rpc.capnp's receiverAnswer), as Cap'n Proto clients send it when
they pipeline: `calc.sumTo(3, echo.hold(observer).cap)` in one round trip.  It
was refused ('unimplemented'); now the callee holds it at once, and its calls on
it wait in the supervisor until the answer returns, then go to what it resolved
to, or fail with why."""
import pytest

from tests import rpcstress
from tests.conftest import external_client

pytestmark = pytest.mark.interop


@pytest.fixture
def calc_and_echo(tmp_path, wsuper):
    """calc and an Echo whose hold returns the params it got, capability included:
    the system the stress runs (tests/rpcstress.py)."""
    run = wsuper("up", rpcstress.write_system(str(tmp_path)))
    run.wait_for("ready calc")
    run.wait_for("ready echo")
    return run, tmp_path / "ext.sock"


def _client(run_sock, body):
    calc, echo = rpcstress.schemas(str(run_sock.parent))

    async def with_schemas(gateway):
        return await body(gateway, calc, echo)

    return external_client(str(run_sock), with_schemas)


def _observer(calc_schema, steps: list):
    class Observer(calc_schema.Observer.Server):
        async def step(self, i, partial, **_):
            steps.append((i, partial))
    return Observer()


def test_a_capability_promised_by_an_unreturned_call_can_be_passed_and_called(calc_and_echo):
    """Cap'n Proto's C++ client (pycapnp) sends calc.sumTo(3, observer) where the
    observer is `echo.hold(mine).cap`, a promise on a call it has not had an
    answer to: the capability descriptor is receiverAnswer."""
    run, sock = calc_and_echo
    steps = []

    async def body(gateway, calc_schema, echo_schema):
        calc = gateway.get("calc").cap.cast_as(calc_schema.Calc)
        echo = gateway.get("echo").cap.cast_as(echo_schema.Echo)
        held = echo.hold(cap=_observer(calc_schema, steps)).cap     # not returned yet
        total = (await calc.sumTo(3, held.cast_as(calc_schema.Observer))).total
        again = (await calc.sumTo(2, held.cast_as(calc_schema.Observer))).total
        return total, again

    assert _client(sock, body) == (6, 3)
    # calc's calls on the promise reached the observer it resolved to, in order
    assert steps == [(1, 1), (2, 3), (3, 6), (1, 1), (2, 3)]
    assert not [line for line in run.lines if "unimplemented" in line]


def test_a_capability_promised_by_a_call_that_holds_none_fails_the_calls_on_it(calc_and_echo):
    """The promised field holds no capability (echo.hold of none): calc's call on
    it fails, so sumTo fails, and the connection and both compartments go on."""
    import capnp
    run, sock = calc_and_echo
    steps = []

    async def body(gateway, calc_schema, echo_schema):
        calc = gateway.get("calc").cap.cast_as(calc_schema.Calc)
        echo = gateway.get("echo").cap.cast_as(echo_schema.Echo)
        held = echo.hold().cap
        with pytest.raises(capnp.KjException):
            await calc.sumTo(2, held.cast_as(calc_schema.Observer))
        held = echo.hold(cap=_observer(calc_schema, steps)).cap
        return (await calc.sumTo(2, held.cast_as(calc_schema.Observer))).total

    assert _client(sock, body) == 3
    assert steps == [(1, 1), (2, 3)]


def test_a_pipelined_call_on_a_promise_that_comes_back_to_its_caller_is_delivered(
        calc_and_echo):
    """A call pipelined on `echo.hold(mine).cap` resolves to the client's own
    object: the client's RPC stack then embargoes its calls on it and sends a
    Disembargo, which the supervisor answered 'unimplemented' (the C++ stack
    drops the connection for that).  It is reflected now, and the calls arrive
    in order."""
    run, sock = calc_and_echo
    steps = []

    async def body(gateway, calc_schema, echo_schema):
        echo = gateway.get("echo").cap.cast_as(echo_schema.Echo)
        held = echo.hold(cap=_observer(calc_schema, steps)).cap.cast_as(calc_schema.Observer)
        first = held.step(1, 1)                  # pipelined on the unreturned answer
        second = held.step(2, 3)
        await first
        await second
        await held.step(3, 6)                    # after it resolved
        return True

    assert _client(sock, body)
    assert steps == [(1, 1), (2, 3), (3, 6)]


def test_a_call_cpp_forwards_back_as_a_tail_call_does_not_cut_the_client_off(calc_and_echo):
    """A client passes calc a promise of its own (senderPromise) that resolves to a
    capability it got from the supervisor on the same connection.  When calc calls
    it, Cap'n Proto's C++ RPC forwards the call back as a tail call: Call with
    sendResultsTo.yourself, then Return with takeFromOtherQuestion (rpc.capnp level
    1).  The supervisor cut the client off for it ("sendResultsTo 'yourself' is not
    supported"); now the call goes on, its outcome answers calc's call (here a
    failure: the capability is echo, which is no Observer), and the connection
    serves on."""
    import asyncio

    import capnp

    import capnp_schemas
    run, sock = calc_and_echo
    calc_schema, echo_schema = rpcstress.schemas(str(sock.parent))

    async def main():
        async with capnp.kj_loop():
            stream = await capnp.AsyncIoStream.create_unix_connection(str(sock))
            client = capnp.TwoPartyClient(stream)
            gateway = client.bootstrap().cast_as(capnp_schemas.host.Gateway)
            calc = (await gateway.get("calc")).cap.as_interface(calc_schema.Calc)
            echo = (await gateway.get("echo")).cap.as_interface(echo_schema.Echo)
            go = asyncio.Event()

            class Later(echo_schema.Echo.Server):       # a local promise of echo
                async def hold(self, cap, _context, **_):
                    await go.wait()
                    _context.results.cap = cap

            promise = echo_schema.Echo._new_client(Later()).hold(cap=echo).cap
            total = asyncio.ensure_future(calc.sumTo(2, promise.cast_as(calc_schema.Observer)))
            await asyncio.sleep(0.3)                      # sent as a senderPromise
            go.set()
            with pytest.raises(capnp.KjException) as failed:
                await total
            return str(failed.value), (await calc.add(1, 2)).sum

    reason, after = asyncio.run(asyncio.wait_for(main(), 30))
    assert "yourself" not in reason and "disconnected" not in reason
    assert "does not implement" in reason or "dispatch returned" in reason
    assert after == 3
    run.wait_for("ready echo")
    assert not [line for line in run.lines if "protocol error" in line]


def test_a_capability_promised_by_a_call_that_failed_already_is_passed_broken(calc_and_echo):
    """Cap'n Proto's C++ client passes `gateway.get("nope").cap` in echo.hold as a
    promise on the unanswered get (receiverAnswer); get fails at once, before hold
    is read.  hold failed as a whole ('capability from a failed call'), where
    Cap'n Proto's own RPC delivers it with a broken capability, and so did wsuper
    when the promised call failed only after hold came: the same client program
    had two outcomes, by timing.  hold returns now, and a call on what it returned
    fails with the promised call's reason and exception type."""
    import capnp

    import capnp_schemas
    run, sock = calc_and_echo

    async def body(gateway, calc_schema, echo_schema):
        echo = gateway.get("echo").cap.cast_as(echo_schema.Echo)
        calc = gateway.get("calc").cap
        said = []
        for promise in (gateway.get("nope").cap,                        # failed
                        calc.cast_as(capnp_schemas.host.Gateway).get("x").cap):  # unimplemented
            held = (await echo.hold(cap=promise)).cap.as_interface(calc_schema.Observer)
            with pytest.raises(capnp.KjException) as e:
                await held.step(1, 1)
            said.append((e.value.type, e.value.description))
        return said, (await calc.cast_as(calc_schema.Calc).add(1, 2)).sum

    (failed, unimplemented), three = _client(sock, body)
    assert three == 3
    assert failed[0] == "FAILED" and "capability promised by a failed call: " \
        "no compartment named 'nope'" in failed[1], failed
    assert unimplemented[0] == "UNIMPLEMENTED" and "does not implement" in unimplemented[1]
    assert not [line for line in run.lines if "protocol error" in line]


def test_a_clients_own_object_come_back_through_a_promise_is_called_locally(calc_and_echo):
    """pycapnp (Cap'n Proto's C++ RPC) sends echo.hold(cap=echo.hold(cap=mine).cap)
    in one go: the inner promise has resolved to the client's own object when the
    outer answer goes, and a Cap'n Proto peer names it so (receiverHosted): the
    client calls its own object locally.  The supervisor exported the promise, and
    each of those calls went through it and back (the audit recorded every one;
    300 calls took 0.34 s, against 0.02 s on its own object)."""
    run, sock = calc_and_echo
    steps = []

    async def body(gateway, calc_schema, echo_schema):
        echo = gateway.get("echo").cap.cast_as(echo_schema.Echo)
        mine = _observer(calc_schema, steps)
        back = (await echo.hold(cap=echo.hold(cap=mine).cap)).cap
        observer = back.as_interface(calc_schema.Observer)
        for i in range(3):
            await observer.step(i, i)
        return True

    assert _client(sock, body)
    assert steps == [(0, 0), (1, 1), (2, 2)]
    run.stop()                                   # the audit is whole once it has stopped
    from tests.conftest import audit_calls
    audit = audit_calls(str(sock.parent / "audit.jsonl"))
    assert [r for r in audit if r["method"] == "hold"] and \
        not [r for r in audit if r["method"] == "step"], audit
