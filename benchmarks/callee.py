"""The CPU a callee engine spends on each plain call, with nothing else running.

    .venv/bin/python benchmarks/callee.py [CALLS] [PER_READ] [python-host-calls|python-serving]

An `Engine` serving examples/calc/calc.wat runs in a forked process of its own
(not confined: this measures the call path, not start-up); this process plays
the supervisor with a `protocol.Connection`, sends `Calc.add` calls PER_READ
at a time (1: one call per read, as in a ping-pong; 50: as under load) and
reads the answers.  The engine gives each call's code its deadline, as run()
has it do (Engine.start_deadlines).  Prints the engine process's CPU time
per call (user + system, its own rusage) and the wall time per call.  WSUPER_NATIVE=0 measures
the ctypes path into wasm (and the Python wire code) instead; a third argument
`python-host-calls` keeps the native paths but sends the guest's params_read,
results_set and reply_read to the Python functions (the Guest's memory unset),
for an A/B of the native host calls alone; `python-serving` keeps them but takes
every read in through the general path (events, Engine._on_event) rather than
Engine._serve_plain, for an A/B of that alone.
"""
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from capnp_schemas import payloads, protocol  # noqa: E402
from capnp_schemas.protocol import Content  # noqa: E402
from compartments.engine import ENGINE_INTERFACE, Engine  # noqa: E402
from compartments.spec import EngineSpec  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CALC = os.path.join(os.path.dirname(HERE), "examples", "calc", "calc.wat")
CALC_ID = 0xc0ffee0000000001          # examples/calc/calc.capnp: interface Calc


def forked(engine: Engine, ours: socket.socket, report=lambda engine: ()):
    """`engine` serving in a forked process of its own until the other end of its
    socket (`ours` is closed there) ends or its program does, with its calls'
    deadlines as run() gives them (the alarm that stops a call's code at its
    call_time, a cost of every call).  Returns finished(): once the other end is
    closed, the engine process's CPU seconds and what report(engine) gave."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ours.close()
        engine.start_deadlines()
        before = time.process_time()
        try:
            engine.serve()
        except SystemExit:              # a program's end
            pass
        os.write(w, repr((time.process_time() - before, *report(engine))).encode())
        os._exit(0)

    def finished() -> tuple:
        os.waitpid(pid, 0)
        return eval(os.read(r, 200))     # our own child's repr of numbers
    return finished


def main(calls: int, per_read: int, python_host_calls: bool = False,
         python_serving: bool = False):
    ours, theirs = socket.socketpair()
    engine = Engine(theirs, EngineSpec(name="calc", module=CALC, exports=True))
    if python_serving:
        engine._plain_serving = False
    if python_host_calls and engine._native is not None:
        engine._native.memory = None
    finished = forked(engine, ours)
    theirs.close()
    conn = protocol.Connection("supervisor")

    def round_trip(data: bytes, answers: int) -> list:
        ours.sendall(data)
        got = []
        while len(got) < answers:
            got.extend(conn.receive(ours.recv(1 << 20)))
        return got

    _qid, data = conn.send_bootstrap()
    control = round_trip(data, 1)[0].payload.caps[0].import_id
    _qid, data = conn.send_call(control, ENGINE_INTERFACE, 0, payloads.grants_content([]), [])
    main_cap = round_trip(data, 1)[0].payload.caps[0].import_id
    params = Content.standalone([struct.pack("<QQ", 1 << 32, (3 << 32) | 2)])   # add(2, 3)
    start = time.perf_counter()
    for _ in range(calls // per_read):
        batch = [conn.send_call(main_cap, CALC_ID, 0, params, [])[1] for _ in range(per_read)]
        answers = round_trip(b"".join(batch), per_read)
        if answers[-1].payload is None:
            raise SystemExit(f"the call failed: {answers[-1].error}")
    wall = time.perf_counter() - start
    ours.close()
    cpu, = finished()
    n = calls // per_read * per_read
    print(f"{n} calls, {per_read} a read: engine CPU {cpu / n * 1e6:.1f} µs a call, "
          f"wall {wall / n * 1e6:.1f} µs a call")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000,
         int(sys.argv[2]) if len(sys.argv) > 2 else 1,
         len(sys.argv) > 3 and sys.argv[3] == "python-host-calls",
         len(sys.argv) > 3 and sys.argv[3] == "python-serving")
