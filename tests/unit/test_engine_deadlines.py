"""A call's code stopped at its call_time in wasm (_fastcall.c "deadlines": the
engine's own alarm moves wasmtime's epoch).  A real Engine with real wasmtime on
a recording socket, its supervisor played here, each in a process of its own:
the alarm's SIGALRM handler is the engine process's (not pytest's)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from compartments import unchecked

pytestmark = pytest.mark.skipif(unchecked._native is None, reason="needs the native module")

_PRELUDE = """
import json, sys
import wasmtime
from capnp_schemas.protocol import Content
from compartments import unchecked
from compartments.engine import Engine
from compartments.limits import Limits
from compartments.spec import EngineSpec
from fuzz.hostmem import Recorded
from tests.enginedriver import Driven

def engine(path, text, per_call=False, host=None, **limits):
    # an engine of the module `text`, alarm and all (as run() makes one); `host`:
    # the module's import "wsuper" "release" is this function of the test's, i32 -> i32
    open(path, "w").write(text)
    e = Engine(Recorded(), EngineSpec(name="spin", module=path, exports=True,
                                      per_call=per_call, limits=Limits(**limits)),
               instantiate=False)
    if host is not None:       # in each linker (per_call: its pool's too)
        i32 = wasmtime.ValType.i32()
        for linker in (e._linker, *([e._pool.linker] if e._pool is not None else [])):
            linker.allow_shadowing = True
            linker.define_func("wsuper", "release", wasmtime.FuncType([i32], [i32]), host)
    e.start_deadlines()
    e.instantiate()
    return e, Driven(e)

def call(d, method=0):
    ev = d.ask(d.sup.send_call(d.main, 1, method, Content.standalone([bytes(16)]))[1])
    return [ev.error_type, ev.error] if ev.payload is None else ["ok", None]
"""


def _run(tmp_path, body: str):
    """Run `body` (after _PRELUDE) in a Python of its own; what it prints as JSON."""
    script = _PRELUDE + textwrap.dedent(body).replace("TMP", repr(str(tmp_path)))
    try:
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the engine never answered: its guest code was not stopped")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_per_call_instances_start_function_is_stopped_at_its_calls_call_time(tmp_path):
    """With instance = "per_call" a new instance's start function runs for the call
    (it spends of the call's fuel), but it ran with no deadline: one that looped
    ran on to fuel_per_call (hours at 2^62), its engine stuck, every later call
    of every caller failing "did not answer within" behind it."""
    out = _run(tmp_path, """
    # the start function loops in every instance but the first (the compartment's
    # own, at its start, which no call's deadline bounds)
    instances = []
    def host(_):
        instances.append(1)
        return int(len(instances) > 1)
    e, d = engine(TMP + "/m.wat", '''(module
      (import "wsuper" "release" (func $host (param i32) (result i32)))
      (memory (export "memory") 1)
      (func $step (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
      (func $s (local $i i32)
        (if (call $host (i32.const 0))
          (then (loop $l (local.set $i (call $step (local.get $i))) (br $l)))))
      (start $s)
      (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) (i32.const 0)))''',
      per_call=True, host=host, fuel_per_call=1 << 62, call_time=0.2)
    print(json.dumps([call(d), call(d)]))
    """)
    assert out == [["overloaded", "compartment spin ran past the 0.2 s a call may take "
                    "(limit call_time), and its code was stopped"]] * 2


_CALLS_OUT_THEN_SPINS = """(module
  (import "wsuper" "params_read" (func $params_read (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $step (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
  ;; every call calls its capability; then method 0 loops for ever, others return
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (local $i i32)
    (drop (call $params_read (i32.const 4096) (i32.const 0)))
    (drop (call $call (i32.load (i32.const 0)) (i64.const 1) (i32.const 0) (i32.const 0)
                (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000)))
    (if (i32.eqz (local.get 2))
      (then (loop $l (local.set $i (call $step (local.get $i))) (br $l))))
    (i32.const 0)))"""

# the supervisor's side of a call with one capability (the observer), answered
# once the engine has asked it; what the engine sent, as events
_CANCELLED_WHILE_IT_WAITS = """
import socket, struct
from capnp_schemas import protocol, wire
e, d = engine(TMP + "/m.wat", MODULE, call_time=3600, fuel_per_call=1 << 62)
sup, events, answered = d.sup, [], set()
seg = struct.pack("<QQQ", (1 << 32) | (1 << 48), 5, wire.cap_pointer(0))
q, msg = sup.send_call(d.main, 1, 0, Content.standalone([seg]), [object()])
q1, msg1 = sup.send_call(d.main, 1, 1, Content.standalone([seg]), [object()])

def seen():
    while e.sock.writes:
        events.extend(sup.receive(e.sock.writes.pop(0)))
    return events

def answer_step():
    steps = [ev.answer_id for ev in seen() if isinstance(ev, protocol.CallReceived)
             and ev.answer_id not in answered]
    if not steps:
        return b""
    answered.add(steps[-1])
    return sup.send_return(steps[-1])

script = SCRIPT

def recv(_n, flags=0):
    if flags & socket.MSG_DONTWAIT or not script:
        if flags & socket.MSG_DONTWAIT:
            raise BlockingIOError
        return b""
    return script.pop(0)()
e.sock.recv = recv
try:
    e.serve()
except SystemExit:
    pass
seen()
print(json.dumps([ev.error for ev in events if isinstance(ev, protocol.ReturnReceived)
                  and ev.question_id == q]))
"""


def test_a_call_cancelled_while_it_waits_in_a_call_out_is_stopped_when_it_goes_on(tmp_path):
    """The supervisor's Finish for a call whose code waits in a call out (its
    caller cancelled it, went, or was revoked) made the call past its time
    (CANCELLED), but only for its next host call: its deadline in wasm stayed the
    one it entered with, and code that went on computing ran for nobody until its
    call_time (up to a day), every later call of every caller waiting behind it."""
    out = _run(tmp_path, _CANCELLED_WHILE_IT_WAITS.replace("MODULE", repr(
        _CALLS_OUT_THEN_SPINS)).replace(
        "SCRIPT", "[lambda: msg, lambda: sup.send_finish(q), answer_step]"))
    assert len(out) == 1 and "was sent Finish for this call while it ran" in out[0], out


def test_a_call_cancelled_while_a_call_runs_above_it_is_stopped_when_it_goes_on(tmp_path):
    """The same, the Finish read while another call runs on top of it (served
    while it waits): when that one returned, the code beneath was given back the
    deadline it had entered with, not CANCELLED, and ran on for nobody."""
    out = _run(tmp_path, _CANCELLED_WHILE_IT_WAITS.replace("MODULE", repr(
        _CALLS_OUT_THEN_SPINS)).replace(
        "SCRIPT", "[lambda: msg, lambda: msg1, lambda: sup.send_finish(q), answer_step, "
        "answer_step]"))
    assert len(out) == 1 and "was sent Finish for this call while it ran" in out[0], out


@pytest.mark.parametrize("then", ["computes", "returns"])
def test_a_per_call_call_cancelled_while_its_instances_initialize_waits_is_stopped(
        tmp_path, then):
    """A per_call call's Finish read while its instance's _initialize waits in a
    host call (a WASI read of its configuration, a call out) was not noticed at
    all: the call was not registered as served until its instance was made, so
    _initialize ran on for nobody to the call's call_time, and then its dispatch
    ran whole, calls out and all.  (The host call here plays the read: it hands
    the engine the supervisor's Finish, as _wait_for would; then _initialize
    computes a while, stopped there, or returns, and the dispatch is stopped at
    its entry.)"""
    out = _run(tmp_path, """
    from capnp_schemas import protocol
    sent = {}
    def host(_):
        if sent:            # an instance made for the call (not the one at start)
            e._received(d.sup.send_finish(sent["q"]))
        return 1
    e, d = engine(TMP + "/m.wat", '''(module
      (import "wsuper" "release" (func $host (param i32) (result i32)))
      (memory (export "memory") 1)
      (func $step (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
      (func (export "_initialize") (local $i i32)
        (if (i32.eqz (call $host (i32.const 0))) (then (return)))
        (loop $l (local.set $i (call $step (local.get $i)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const LOOPS)))))
      (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
        (local $i i32) (loop $l (local.set $i (call $step (local.get $i))) (br $l))
        (i32.const 0)))''',
      per_call=True, host=host, fuel_per_call=1 << 62, call_time=3600)
    q, msg = d.sup.send_call(d.main, 1, 0, Content.standalone([bytes(16)]))
    sent["q"] = q
    e.sock.batches.append(msg)
    e._pump()
    e._flush()
    evs = [ev for w in e.sock.writes for ev in d.sup.receive(w)]
    print(json.dumps([ev.error for ev in evs if isinstance(ev, protocol.ReturnReceived)]))
    """.replace("LOOPS", "50000000" if then == "computes" else "0"))
    assert len(out) == 1 and "was sent Finish for this call while it ran" in out[0], out
