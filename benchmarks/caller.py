"""The CPU a calling engine spends on each plain call out, with nothing else running.

    .venv/bin/python benchmarks/caller.py [CALLS] [python-call-out]

An `Engine` runs a program (the suite's call loop, benchmarks/suite.py
_loop_wat) that calls its grant `calc` CALLS times with Calc.add's params, in
a forked process of its own (not confined: this measures the call path, not
start-up), with its calls' deadlines as run() gives them.  This process plays
the supervisor and the callee with a `protocol.Connection`: it answers each
Call at once with plain results (noFinishNeeded, as the supervisor's lane
forwards a compartment's answer).  Prints the engine process's CPU time per
call (user + system, its own rusage), the wall time per call, and how many
calls out the native path made (compartments/_fastcall.c, native_call_out) and
handed to Python.  A second argument `python-call-out` keeps every other
native path but sends the calls out to Python (Engine._host_call), for an A/B
of the native call out alone; WSUPER_NATIVE=0 measures the ctypes path.
"""
import os
import socket
import struct
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from capnp_schemas import payloads, protocol  # noqa: E402
from capnp_schemas.protocol import Content  # noqa: E402
from compartments.engine import ENGINE_INTERFACE, Engine  # noqa: E402
from compartments.spec import EngineSpec  # noqa: E402

import callee  # noqa: E402
import suite  # noqa: E402


def main(calls: int, python_call_out: bool = False):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "app.wat")
    with open(path, "w") as f:
        f.write(suite._loop_wat("calc", suite.CALC_ID, 0,
                                [0x0000000100000000, 0x0000000300000002], calls))
    ours, theirs = socket.socketpair()
    engine = Engine(theirs, EngineSpec(name="app", module=path, exports=False))
    if python_call_out and engine._native is not None:
        engine._native.call_out = None
    finished = callee.forked(engine, ours, lambda e: (
        (e._native.calls_out, e._native.calls_handed) if e._native is not None else (0, 0)))
    theirs.close()
    conn = protocol.Connection("supervisor")

    def events():
        while data := ours.recv(1 << 20):
            yield from conn.receive(data)
    ev = events()

    def answer(qid):
        for e in ev:
            if isinstance(e, protocol.ReturnReceived) and e.question_id == qid:
                return e
        raise SystemExit("the engine ended")

    qid, data = conn.send_bootstrap()
    ours.sendall(data)
    control = answer(qid).payload.caps[0].import_id
    qid, data = conn.send_call(control, ENGINE_INTERFACE, 0,
                               payloads.grants_content([("calc", "compartment", "")]),
                               [object()])
    ours.sendall(data)
    answer(qid)
    qid, data = conn.send_call(control, ENGINE_INTERFACE, 1, protocol.EMPTY, [])   # run()
    ours.sendall(data)
    results = Content.standalone([struct.pack("<QQ", 0, 5)])
    made = 0
    start = time.perf_counter()
    for e in ev:
        if isinstance(e, protocol.CallReceived):
            made += 1
            ours.sendall(conn.send_return(e.answer_id, results, [], no_finish=True))
        elif isinstance(e, protocol.ReturnReceived) and e.question_id == qid:
            break
    wall = time.perf_counter() - start
    ours.close()
    cpu, native, handed = finished()
    print(f"{made} calls out: engine CPU {cpu / made * 1e6:.1f} µs a call, "
          f"wall {wall / made * 1e6:.1f} µs a call; {native} made natively, "
          f"{handed} handed to Python")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000,
         len(sys.argv) > 2 and sys.argv[2] == "python-call-out")
