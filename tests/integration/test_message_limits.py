"""Per-message limits fail one call, not the connection.

A well-formed message that merely passes a limit of one message's (the
capabilities one payload carries: protocol.MAX_CAPS_PER_MESSAGE, 256) was a
protocol error, and the supervisor aborted the whole connection: every other
call and capability the client had on it died with it.  Cap'n Proto's C++ RPC
(pycapnp, here) has no such limit and sends such a call.  Now the call alone
fails, naming the limit, every capability it carried is released (the
client's objects go), and the connection serves on."""
import gc
import weakref

import pytest

from tests import rpcstress
from tests.conftest import external_client

pytestmark = pytest.mark.interop

MANY_SCHEMA = """@0xd0a1b2c3d4e5f6b9;
interface Thing { ping @0 () -> (); }
interface Many { take @0 (things :List(Thing)) -> (n :UInt32); }
interface Big { put @0 (data :Data, thing :Thing) -> (); }
"""


@pytest.fixture
def system(tmp_path, wsuper):
    run = wsuper("up", rpcstress.write_system(str(tmp_path)))
    run.wait_for("ready calc")
    run.wait_for("ready echo")
    (tmp_path / "many.capnp").write_text(MANY_SCHEMA)
    return run, tmp_path


_MANY: list = []


def _many(tmp):
    """The Many schema, loaded once per process (a schema's ids are one file's)."""
    import capnp_schemas
    if not _MANY:
        _MANY.append(capnp_schemas.load(str(tmp / "many.capnp")))
    return _MANY[0]


def _things(many_schema, n, alive: list):
    class Thing(many_schema.Thing.Server):
        async def ping(self, **_):
            pass
    things = [Thing() for _ in range(n)]
    alive.extend(weakref.ref(t) for t in things)
    return things


def _call_carrying(system, n: int, timeout: float = 30):
    """An external pycapnp client calls echo (cast to an interface whose params are
    a list of its own objects) with `n` of them; then calc.add on the same
    connection, on a capability it got before the call, and on a fresh one.  What
    the call failed with, the two sums; and that none of the `n` objects is left
    alive and nothing was aborted."""
    import capnp
    run, tmp = system
    calc_schema, _echo = rpcstress.schemas(str(tmp))
    many = _many(tmp)
    alive: list = []

    async def body(gateway):
        calc = gateway.get("calc").cap.cast_as(calc_schema.Calc)
        assert (await calc.add(2, 3)).sum == 5
        echo = gateway.get("echo").cap.cast_as(many.Many)
        req = echo.take_request()
        things = req.init("things", n)
        for i, t in enumerate(_things(many, n, alive)):
            things[i] = t
        with pytest.raises(capnp.KjException) as e:
            await req.send()
        del req, things
        failed = str(e.value)
        after = (await calc.add(40, 2)).sum                # the same connection, going on
        fresh = gateway.get("calc").cap.cast_as(calc_schema.Calc)
        return failed, after, (await fresh.add(1, 1)).sum

    failed, after, fresh = external_client(str(tmp / "ext.sock"), body, timeout=timeout)
    assert f"{n} capabilities in one message (limit 256" in failed, failed
    assert "disconnected" not in failed.lower()
    assert (after, fresh) == (42, 2)
    gc.collect()
    assert [r for r in alive if r() is not None] == []
    assert not [line for line in run.lines if "aborted" in line], run.lines


def test_a_call_carrying_257_capabilities_fails_alone_and_releases_them(system):
    """The client calls echo (cast to an interface whose params are a list of
    its own objects) with 257 of them: the call fails with the limit named,
    the 257 objects are released (the client's RPC stack lets go of each once
    the supervisor's Release for it arrives, before the answer), and calc.add
    on the same connection, and on a capability it got before, works."""
    _call_carrying(system, 257)


def test_256_capabilities_still_go_through(system):
    """The limit itself: 256 of them reach echo's membrane as any call does (echo
    does not implement Many: its refusal, not the supervisor's limit)."""
    import capnp
    run, tmp = system
    many = _many(tmp)
    alive: list = []

    async def body(gateway):
        echo = gateway.get("echo").cap.cast_as(many.Many)
        req = echo.take_request()
        things = req.init("things", 256)
        for i, t in enumerate(_things(many, 256, alive)):
            things[i] = t
        try:
            await req.send()
            return ""
        except capnp.KjException as e:
            return str(e)

    failed = external_client(str(tmp / "ext.sock"), body)
    assert "capabilities in one message" not in failed


def test_a_call_carrying_20000_capabilities_fails_alone_and_releases_them(system):
    """Past 4096 capabilities (MAX_REFUSED_CAPS until r236) the supervisor aborted
    the connection, where Cap'n Proto's C++ RPC takes 20,000 in one call: a
    conforming client passing many lost every call and capability it had.  Now
    the call alone fails, naming the limit; the 20,000 are released, and the
    capability the client got before still works on the same connection."""
    _call_carrying(system, 20000, timeout=60)


@pytest.fixture(params=["1", "0"], ids=["lane", "trio"])
def either_path(request, monkeypatch):
    """External connections on the fast lane, and on trio's sockets."""
    monkeypatch.setenv("WSUPER_NATIVE", request.param)
    return request.param


def test_a_call_larger_than_message_size_fails_alone_and_releases_its_capability(
        either_path, system):
    """A call of 9 MB (a Data past the default message_size, 8 MiB, and the 64 KiB
    of header the framing adds) from a pycapnp client was refused from its
    segment table as the connection's framing error: the client was cut off,
    every call and capability it had with it.  Now its bytes are skipped, not
    kept, and the call alone fails naming message_size, from its header (Cap'n
    Proto's C++ RPC puts it at the head of the first segment); the capability it
    carried is released, and calc answers on the same connection, again and
    again (the framing goes on after it, on the fast lane too)."""
    import capnp
    run, tmp = system
    calc_schema, _echo = rpcstress.schemas(str(tmp))
    many = _many(tmp)
    alive: list = []

    async def body(gateway):
        calc = gateway.get("calc").cap.cast_as(calc_schema.Calc)
        assert (await calc.add(2, 3)).sum == 5
        echo = gateway.get("echo").cap.cast_as(many.Big)
        failed = []
        for _ in range(2):
            req = echo.put_request()
            req.data = b"x" * (9 << 20)
            req.thing = _things(many, 1, alive)[0]
            with pytest.raises(capnp.KjException) as e:
                await req.send()
            del req
            failed.append(str(e.value))
            failed.append((await calc.add(40, 2)).sum)
        return failed

    failed = external_client(str(tmp / "ext.sock"), body, timeout=60)
    for reason in failed[0::2]:
        assert "params refused: a message of 943" in reason and "message_size" in reason, \
            reason
        assert "disconnected" not in reason.lower()
    assert failed[1::2] == [42, 42]
    gc.collect()
    assert [r for r in alive if r() is not None] == []
    assert not [line for line in run.lines if "aborted" in line], run.lines


def test_a_call_past_the_limit_whose_header_follows_its_content_fails_alone(
        either_path, system):
    """A client that builds its content before its header (a hand-made message, an
    orphan adopted into the params) sends a large call with its header after the
    Data, at the end of the segment.  Past message_size and its 64 KiB of header,
    only the first bytes of the message were kept while the rest was skipped, and
    such a call cut the client off ("its header does not lie in the first bytes"),
    where the same call laid out as Cap'n Proto's C++ RPC lays it out failed
    alone.  The last bytes of each segment are kept too (r243): it fails alone,
    naming the limit, the capability it carried is released, and calc answers on
    the same connection (on the fast lane, and on trio's sockets)."""
    from capnp_schemas import protocol as P
    from fuzz.seeds import header_after
    from tests.wireclient import WireClient, struct_content
    run, tmp = system
    CALC = 0xC0FFEE0000000001
    c = WireClient(str(tmp / "ext.sock"), timeout=60)
    calc = c.get(c.bootstrap(), "calc")
    for _ in range(2):
        qid, m, given = c.call_made_by_hand(calc, CALC)
        data = header_after(m, (9 << 20) // 8)
        c.send(data)
        ret = c.returned(qid)
        assert ret.payload is None and ret.error.startswith(
            f"params refused: a message of {len(data)} bytes is more than this connection "
            f"takes"), ret.error
        c.wait(lambda e: isinstance(e, P.ExportReleased) and e.obj is given)
        ret = c.returned(c.call(calc, CALC, 0, struct_content([40 | 2 << 32])))
        assert ret.payload is not None
    c.close()
    assert not [line for line in run.lines if "aborted" in line], run.lines
