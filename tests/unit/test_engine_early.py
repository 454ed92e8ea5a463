"""The engine's early bootstrap (compartments/engine.py, answer_bootstrap): an
engine answers the supervisor's bootstrap before its module is instantiated (no
guest code has run), and answers Engine.start only once it is: a real Engine,
real wasmtime, a socketpair with the supervisor's protocol core at the other end."""
from __future__ import annotations

import os
import socket

from capnp_schemas import payloads, protocol
from compartments.engine import ENGINE_INTERFACE, Engine
from compartments.spec import EngineSpec

GUESTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "integration", "guests")


def _engine():
    ours, theirs = socket.socketpair()
    engine = Engine(theirs, EngineSpec(name="spin", module=os.path.join(GUESTS, "spin.wat"),
                                       exports=True), instantiate=False)
    return engine, ours, protocol.Connection("supervisor")


def _answers(sup, sock) -> list:
    return sup.receive(sock.recv(1 << 16))


def test_the_bootstrap_is_answered_before_instantiation_and_start_after():
    engine, sock, sup = _engine()
    with sock, engine.sock:
        engine.answer_bootstrap()            # nothing has come yet: nothing to do
        _q, boot = sup.send_bootstrap()
        sock.sendall(boot)
        engine.answer_bootstrap()
        assert not hasattr(engine, "instance")          # no guest code has run
        [ev] = _answers(sup, sock)
        control = ev.payload.caps[0].import_id
        # a start that came before the start function returned is refused
        _q, start = sup.send_call(control, ENGINE_INTERFACE, 0, payloads.grants_content([]))
        sock.sendall(start)
        engine._pump()
        engine._flush()
        [ev] = _answers(sup, sock)
        assert ev.payload is None and "before the module was instantiated" in ev.error
        engine.instantiate()
        _q, start = sup.send_call(control, ENGINE_INTERFACE, 0, payloads.grants_content([]))
        sock.sendall(start)
        engine._pump()
        engine._flush()
        [ev] = _answers(sup, sock)
        assert ev.payload is not None and ev.payload.caps        # its main object


def test_what_comes_with_the_bootstrap_waits_for_serve():
    """A bootstrap and a start in one read: the bootstrap is answered at once, the
    start only by serve(), after instantiation, in the order they came."""
    engine, sock, sup = _engine()
    with sock, engine.sock:
        _q, boot = sup.send_bootstrap()
        sock.sendall(boot)
        engine.answer_bootstrap()
        [ev] = _answers(sup, sock)
        control = ev.payload.caps[0].import_id
        _q, boot2 = sup.send_bootstrap()
        _q, start = sup.send_call(control, ENGINE_INTERFACE, 0, payloads.grants_content([]))
        sock.sendall(boot2 + start)
        engine.answer_bootstrap()
        engine.answer_bootstrap()            # held events: reads nothing more
        got = _answers(sup, sock)
        assert [type(e).__name__ for e in got] == ["ReturnReceived"]     # the second bootstrap
        sock.shutdown(socket.SHUT_WR)        # serve() then ends at the end of its input
        engine.instantiate()
        engine.serve()
        [ev] = _answers(sup, sock)
        assert ev.payload is not None and ev.payload.caps        # start, after instantiation
