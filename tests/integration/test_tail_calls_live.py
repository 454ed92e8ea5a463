"""Tail calls from a raw client against a running system (calc and echo of
tests/rpcstress.py), on the fast lane and off it: a client that answers calc's
calls back (Observer.step) with tail calls of its own (Call with
sendResultsTo.yourself, Return takeFromOtherQuestion), in every order, with
calls pipelined on them, taken twice or never, gets each question answered once,
keeps its connection, and leaves nothing behind."""
import struct

import pytest

from capnp_schemas import protocol as P, wire
from capnp_schemas.protocol import Content
from fuzz.router_scenarios import TailConn, send_finish, send_take, to_yourself
from tests import rpcstress
from tests.wireclient import WireClient

pytestmark = pytest.mark.interop

CALC, OBSERVER = 0xC0FFEE0000000001, 0xC0FFEE0000000003


class TailClient(WireClient):
    def __init__(self, path):
        super().__init__(path)
        self.conn.__class__ = TailConn


def _ints(*values, cap=False) -> Content:
    data = struct.pack(f"<{len(values)}i", *values).ljust(8 * ((len(values) + 1) // 2), b"\0")
    dw = len(data) // 8
    words = struct.pack("<Q", (dw << 32) | ((1 if cap else 0) << 48)) + data
    if cap:
        words += struct.pack("<Q", wire.cap_pointer(0))
    return Content.standalone([words])


def _read_ints(content, n):
    seg = wire.unframe(content.single_segment_copy())[0]
    return struct.unpack_from(f"<{n}i", seg, 8)


@pytest.fixture(params=["1", "0"], ids=["native", "python"])
def system(request, tmp_path, wsuper, monkeypatch):
    monkeypatch.setenv("WSUPER_NATIVE", request.param)
    path = rpcstress.write_system(str(tmp_path))
    run = wsuper("up", path)
    run.wait_for("ready calc")
    run.wait_for("ready echo")
    return run, path, str(tmp_path / "ext.sock")


def _sum_with_tail_calls(cl, calc, n, mode):
    """calc.sumTo(n, observer); each step answered by mode(i): a tail call to
    calc.add (take before or after its outcome, Finish at once or later, a call
    pipelined on it), a plain return, or a tail call taken never (the step then
    answered plainly)."""
    observer = object()
    q = cl.call(calc, CALC, 2, _ints(n, cap=True), [observer])
    later = []
    steps = 0
    while True:
        ev = cl.wait(lambda e: isinstance(e, P.CallReceived)
                     or (isinstance(e, P.ReturnReceived) and e.question_id == q), timeout=20)
        if isinstance(ev, P.ReturnReceived):
            if ev.finish_needed:
                cl.send(cl.conn.send_finish(q))
            break
        steps += 1
        i, partial = _read_ints(ev.payload.content, 2)
        how = mode(i)
        if how == "return":
            cl.send(cl.conn.send_return(ev.answer_id))
            continue
        tq, data = cl.conn.send_call(calc, CALC, 0, _ints(i, partial))
        data = to_yourself(data)
        if how == "before":                   # as C++: Call, Return take, Finish
            cl.send(data + send_take(cl.conn, ev.answer_id, tq) + send_finish(cl.conn, tq, True))
        elif how == "after":                  # the outcome first, then the take
            cl.send(data)
            while tq not in cl.conn.__dict__.get("elsewhere", ()):
                cl.pump()
            cl.send(send_take(cl.conn, ev.answer_id, tq))
            cl.send(cl.conn.send_finish(tq))
        elif how == "finish_later":
            cl.send(data + send_take(cl.conn, ev.answer_id, tq))
            later.append(tq)
        elif how == "pipelined":              # a call pipelined on the tail call fails
            pq, pdata = cl.conn.send_call((tq, (0,)), CALC, 0, _ints(1, 2))
            cl.send(data + pdata + send_take(cl.conn, ev.answer_id, tq))
            r = cl.returned(pq)
            assert r.payload is None and "elsewhere" in r.error, r
            later.append(tq)
        elif how == "never":                  # its outcome held until Finish
            cl.send(data)
            while tq not in cl.conn.__dict__.get("elsewhere", ()):
                cl.pump()
            cl.send(cl.conn.send_return(ev.answer_id))
            later.append(tq)
    for tq in later:
        cl.send(cl.conn.send_finish(tq))
    return ev, steps


MODES = ["before", "after", "finish_later", "pipelined", "never", "return"]


def test_tail_calls_answering_calcs_calls_back_in_every_order(system):
    run, path, sock = system
    cl = TailClient(sock)
    gateway = cl.bootstrap()
    calc = cl.get(gateway, "calc")
    for round in range(40):
        n = 12
        ret, steps = _sum_with_tail_calls(cl, calc, n, lambda i: MODES[(i + round) % len(MODES)])
        assert ret.payload is not None, ret.error
        assert _read_ints(ret.payload.content, 1)[0] == n * (n + 1) // 2
        assert steps == n
    r = cl.returned(cl.call(calc, CALC, 0, _ints(20, 22)))   # the connection serves on
    assert _read_ints(r.payload.content, 1)[0] == 42
    assert cl.conn.questions == {} or all(q.finished for q in cl.conn.questions.values())
    cl.close()
    assert rpcstress.leftovers(path) == []
    assert run.proc.poll() is None
    # (calls into a client's objects are never routed natively: the lane's part is
    # the client's own plain calls, and Python taking tail calls off it)
    run.stop()
    assert not [line for line in run.lines if "protocol error" in line
                or "internal error" in line or "aborted" in line], run.lines
