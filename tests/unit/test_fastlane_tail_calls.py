"""Tail calls (Call with sendResultsTo.yourself, Return takeFromOtherQuestion) on
the fast lane, with the real Router and Lane over sockets (tests/unit/test_fastlane.py's
harness): a call forwarded natively that its callee answers with a tail call of
its own is taken over by Python and answered with that call's outcome, in either
order, failed, with a call pipelined on the tail call; and an external client's
native call answered so, whose client leaves before or after the answer, leaves
no orphan counted (both failed before 7e17d3d: the counts stayed).  Every count
(in flight, unfinished, kept bytes, native and Python's) ends at zero."""
import struct

import pytest

from capnp_schemas import protocol as P
from supervisor import effects as fx, fastlane
from fuzz.router_scenarios import TailConn, send_finish, send_take, to_yourself
from tests.unit.test_fastlane import CALC, Engine, External, grant, params, sup  # noqa: F401

pytestmark = pytest.mark.skipif(fastlane.Lane is None, reason=str(fastlane.unavailable))


def _value(ret):
    return struct.unpack_from("<Q", ret.payload.content.single_segment_copy(), 16)[0]


def _system(sup, **kw):
    s = sup({"calc": CALC, "app": None, "store": CALC}, **kw)
    store = Engine(s, "store", exports=True)
    calc = Engine(s, "calc", [grant("store", "store")], exports=True)
    calc.conn.__class__ = TailConn
    return s, store, calc


def _clean(s, *engines):
    for e in engines:
        conn = s.router.peers[e.pid].conn
        assert (conn.unanswered, conn.unfinished, conn._kept) == (0, 0, 0), e.name
        assert s.lane.in_flight(e.pid) == 0 and s.lane.unfinished(e.pid) == 0
    assert s.router._pending == {} and s.router._tails == {}
    assert s.router._orphans == {} and s.router._orphans_at == {}
    assert not [e for e in s.other if isinstance(e, fx.Notice)], s.other
    assert not s.closed


@pytest.mark.parametrize("order", ["take first", "outcome first", "fails", "pipelined"])
def test_a_native_call_answered_by_a_tail_call(sup, order):
    s, store, calc = _system(sup)
    app = Engine(s, "app", [grant("calc", "calc")])
    app.call()
    app.until(lambda: calc.calls())
    calc.send(calc.conn.send_return(calc.calls()[-1].answer_id, no_finish=True))
    app.until(lambda: app.returns())
    for n in range(2, 8):
        app.call()
        app.until(lambda: len(calc.calls()) == n)
        native = calc.calls()[-1].answer_id
        assert native >= P.NATIVE_QID_BASE
        tq, data = calc.conn.send_call(calc.grants[0].import_id, CALC, 0, params(n))
        data = to_yourself(data)
        if order == "pipelined":
            pq, pdata = calc.conn.send_call((tq, (0,)), CALC, 0, params(1))
            data += pdata
        if order != "outcome first":
            calc.send(data + send_take(calc.conn, native, tq) + send_finish(calc.conn, tq, True))
        else:
            calc.send(data)
        store.until(lambda: len(store.calls()) == n - 1)
        sc = store.calls()[-1]
        if order == "fails":
            store.send(store.conn.send_exception(sc.answer_id, f"no {n}", no_finish=True))
        else:
            store.send(store.conn.send_return(sc.answer_id, params(100 + n), no_finish=True))
        if order == "outcome first":
            calc.until(lambda: tq in calc.conn.__dict__.get("elsewhere", ()))
            calc.send(send_take(calc.conn, native, tq) + calc.conn.send_finish(tq))
        app.until(lambda: len(app.returns()) == n)
        ret = app.returns()[-1]
        if order == "fails":
            assert ret.error == f"no {n}"
        else:
            assert ret.payload is not None and _value(ret) == 100 + n, ret
        calc.until(lambda: tq in calc.conn.__dict__.get("elsewhere", ()))
        if order == "pipelined":
            calc.until(lambda: any(r.question_id == pq for r in calc.returns()))
    for _ in range(10):
        s.pump(0.01)
        for e in (calc, store, app):
            e.poll()
    _clean(s, calc, store, app)


@pytest.mark.parametrize("when", ["gone after the take", "gone before the take"])
def test_an_external_clients_native_call_answered_by_a_tail_call_leaves_no_orphan(sup, when):
    s, store, calc = _system(sup, external=("calc",))
    honest = External(s, "honest")
    honest.call()
    honest.until(lambda: calc.calls())
    calc.send(calc.conn.send_return(calc.calls()[-1].answer_id, no_finish=True))
    honest.until(lambda: honest.returns())
    for i in range(4):
        x = External(s, f"x{i}")
        x.call()                                   # the first: through Python
        x.until(lambda: len(calc.calls()) == 2 * i + 2)
        calc.send(calc.conn.send_return(calc.calls()[-1].answer_id, no_finish=True))
        x.until(lambda: x.returns())
        x.call()
        x.until(lambda: len(calc.calls()) == 2 * i + 3)
        native = calc.calls()[-1].answer_id
        assert native >= P.NATIVE_QID_BASE
        tq, data = calc.conn.send_call(calc.grants[0].import_id, CALC, 0, params(i))
        take = to_yourself(data) + send_take(calc.conn, native, tq) + send_finish(calc.conn, tq, True)
        if when == "gone after the take":
            calc.send(take)
            store.until(lambda: len(store.calls()) == i + 1)
        x.sock.close()
        calc.until(lambda: x.pid not in s.router.peers)
        if when == "gone before the take":
            calc.until(lambda: P.FinishReceived(native) in calc.inbox)
            calc.send(take)
            store.until(lambda: len(store.calls()) == i + 1)
        store.send(store.conn.send_return(store.calls()[-1].answer_id, params(7), no_finish=True))
        calc.until(lambda: tq in calc.conn.__dict__.get("elsewhere", ()))
        assert s.router._orphans == {} and s.router._orphans_at == {}
    honest.call()
    honest.until(lambda: len(calc.calls()) == 10)
    assert calc.calls()[-1].answer_id >= P.NATIVE_QID_BASE          # natively still
    calc.send(calc.conn.send_return(calc.calls()[-1].answer_id, params(3), no_finish=True))
    honest.until(lambda: len(honest.returns()) == 2)
    for _ in range(10):
        s.pump(0.01)
        for e in (calc, store, honest):
            e.poll()
    _clean(s, calc, store)
