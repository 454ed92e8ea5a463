"""The native params_read and results_set (compartments/_fastcall.c, Guest): an
engine whose plain host calls are done in C must behave byte for byte like one
whose host calls all go to Python (compartments/engine.py's _host_params_read
and _host_results_set, the definition), whatever the guest hands them.

Two real Engines with real wasmtime serve fuzz/memio.wat, which passes the
host functions whatever arguments the test wrote into its memory; one has
its Guest's memory unset, which sends every host call to Python.  Both get
the same calls after the same memory writes; their answers (every byte they
write) and their memories must be the same, and the native one must really
have done the plain ones itself (fuzz/hostmem.py)."""
from __future__ import annotations

import os
import struct

import pytest

from capnp_schemas import payloads, protocol, rpcwire, wire
from capnp_schemas.protocol import Content
from compartments import unchecked
from compartments.abi import E_MESSAGE, E_STATE
from compartments.engine import ENGINE_INTERFACE, EXIT_PROTOCOL, Engine
from compartments.spec import EngineSpec
from tests import sanitized
from fuzz.hostmem import ARGS, IFACE, LIMIT, MEMIO, MEMORY, Recorded, call, differ, framed, \
    started, struct_ptr

pytestmark = pytest.mark.skipif(unchecked._native is None,
                                reason="the native path is not built (compartments._fastcall)")


def test_native_host_calls_answer_exactly_as_python_ones():
    """fuzz/hostmem.py's differential check, 2,000 calls (long runs: python -m fuzz.hostmem)."""
    for seed in range(4):
        failures, handled = differ(seed, 500)
        assert failures == []
        assert handled > 100, "the native path did (almost) nothing"


def results_of(args, writes=(), method=0):
    engine, sock, sup, main = started(message_size=LIMIT)
    out, _memory = call(engine, sock, sup, main, method, writes, args)
    [ev] = sup.receive(out)
    return ev, engine._native.handled


def test_a_plain_message_is_taken_natively_and_arrives_whole():
    msg = framed([struct_ptr(0, 2, 0), 41, 42])
    ev, handled = results_of((64, len(msg), 0, 0), [(64, msg)])
    assert handled == 1
    assert bytes(ev.payload.content.segments[0])[8:24] == struct.pack("<QQ", 41, 42)
    assert wire.resolve(ev.payload.content.segments, ev.payload.content.loc) is not None


@pytest.mark.parametrize("msg, status", [
    (framed([struct_ptr(5, 1, 0), 1]), E_MESSAGE),      # outside the segment
    (framed([struct_ptr(0, 1, 0), 1], size=7), E_MESSAGE),   # the table lies
])
def test_a_bad_message_is_left_to_python_which_says_why(msg, status):
    ev, handled = results_of((64, len(msg), 0, 0), [(64, msg)])
    assert handled == 0
    assert ev.payload is None and f"dispatch returned {status}" in ev.error


def test_results_set_twice_is_refused_the_second_time():
    msg = framed([struct_ptr(0, 1, 0), 1])
    ev, handled = results_of((64, len(msg), 0, 0), [(64, msg)], method=2)
    assert handled == 1                                  # the first
    assert ev.payload is None and f"dispatch returned {E_STATE}" in ev.error


def test_an_out_of_range_message_traps_with_python_s_words():
    ev, handled = results_of((MEMORY - 8, 24, 0, 0))
    assert handled == 0
    assert "trapped" in ev.error and "out-of-range memory" in ev.error
    assert "trapped: wsuper.results_set: guest passed out-of-range memory" in ev.error


def test_host_call_probes_and_per_call_instances_keep_to_python():
    engine, sock, sup, main = started(message_size=LIMIT)
    msg = framed([struct_ptr(0, 1, 0), 9])
    engine.memory.write(engine.store, msg, 64)
    engine.memory.write(engine.store, struct.pack("<4i", 64, len(msg), 0, 0), ARGS)
    engine.probes.hostcalls = True          # timing host calls is Python's
    _q, call = sup.send_call(main, IFACE, 0, Content.standalone([bytes(16)]))
    sock.batches.append(call)
    engine._pump()
    assert engine._native.handled == 0
    assert engine.probes.events, "the host call was not timed"
    engine.probes.hostcalls = False
    sock.batches.append(sup.send_call(main, IFACE, 0, Content.standalone([bytes(16)]))[1])
    engine._pump()
    assert engine._native.handled == 1
    # a per_call engine has a memory per call: never the native path
    per_call = Engine(engine.sock, EngineSpec(name="p", module=MEMIO, exports=True,
                                              per_call=True))
    assert per_call._native.memory is None


def test_a_closed_store_is_refused_by_the_native_calls_never_used():
    """The native call and fuel functions (and deadline) take a store's context as
    unchecked._context reads it (not through Store._context()): a closed store's
    is gone, and each refuses it as _context() did (ValueError), never touching
    freed memory (this file runs under ASan too)."""
    import wasmtime
    from compartments import wasm
    engine = wasmtime.Engine(wasm.engine_config())
    store = wasm.new_store(engine)
    store.set_fuel(1000)
    instance = wasmtime.Linker(engine).instantiate(store, wasmtime.Module(
        engine, '(module (func (export "f") (param i32) (result i32) local.get 0))'))
    f = unchecked.TypedFunc(store, instance.exports(store)["f"], ("i32",), ("i32",))
    assert f(7) == 7 and unchecked.refuel(store, 500) <= 1000
    assert unchecked.refuel(store, -1) == 500
    store.close()
    for use in (lambda: f(7), lambda: unchecked.refuel(store, 5),
                lambda: unchecked.refuel(store, -1)):
        with pytest.raises(ValueError, match="already closed"):
            use()


def test_the_native_host_calls_under_asan_and_ubsan(tmp_path):
    """The differential test above, again, with _fastcall.c built with
    AddressSanitizer and UBSan (any error ends the process), in a copy of the
    tree so that this interpreter's own extension is left alone."""
    sanitized.rerun(tmp_path, "compartments/_fastcall.c", "tests/unit/test_engine_native.py")


# ---------------------------------------------------------------- outside a dispatch

GUESTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "integration", "guests")
SECRET = Content.standalone([struct.pack("<QQ", 1 << 32, 0x5EC2E7)])


class Answering(Recorded):
    """A socket whose supervisor answers the engine's outgoing calls: `answer(call)`
    gives what to send back when the engine waits."""

    def __init__(self):
        super().__init__()
        self.answer = None

    def recv(self, n, flags=0):
        if not self.batches and self.answer is not None and self.writes:
            out = b"".join(self.writes)
            self.writes.clear()
            self.batches.append(self.answer(out))
        return super().recv(n, flags)


def _outside(native: bool = True, per_call: bool = False):
    """outside.wat's engine, bootstrapped and started with one grant ("peer") on a
    recording socket: (engine, its socket, the supervisor's Connection, the import
    ids of the engine's control object and of its main object)."""
    engine = Engine(Answering(), EngineSpec(name="outside", module=os.path.join(
        GUESTS, "outside.wat"), exports=True, per_call=per_call))
    if not native:
        engine._native.memory = None
    sock, sup = engine.sock, protocol.Connection("supervisor")
    sock.batches.append(sup.send_bootstrap()[1])
    engine._pump()
    engine._flush()
    [boot] = sup.receive(sock.writes.pop())
    control = boot.payload.caps[0].import_id
    sock.batches.append(sup.send_call(control, ENGINE_INTERFACE, 0, payloads.grants_content(
        [("peer", "compartment", "")]), [object()])[1])
    engine._pump()
    engine._flush()
    [ready] = sup.receive(sock.writes.pop())
    main = ready.payload.caps[0].import_id
    return engine, sock, sup, control, main


def waiting(second: str, native: bool = True, per_call: bool = False):
    """outside.wat's call 0 (params SECRET), which calls out through its grant and
    waits; meanwhile `second` comes: "run" (the supervisor's Engine.run: _start runs)
    or "call" (call 1: with per_call, a new instance's _initialize runs).  Returns
    (each Return's content segment or None, in order; the statuses _initialize or
    _start saw; what the engine wrote)."""
    engine, sock, sup, control, main = _outside(native, per_call)
    returns, written, later = [], [], []

    def answer(out):
        written.append(out)
        more = b""
        for ev in sup.receive(out):
            if isinstance(ev, protocol.ReturnReceived):
                segments = ev.payload.content.segments
                returns.append(bytes(segments[0]) if segments else None)
            if isinstance(ev, protocol.CallReceived):        # call 0 waits: the second comes
                more += (sup.send_call(control, ENGINE_INTERFACE, 1, Content.standalone(
                    [bytes(8)])) if second == "run" else sup.send_call(
                        main, IFACE, 1, Content.standalone([bytes(16)])))[1]
                # the answer call 0 waits for, in a later read (in the same read it
                # would end the wait before the second is served)
                later.append(sup.send_return(ev.answer_id, Content.standalone([bytes(16)])))
        return more or (later.pop() if later else b"")
    sock.answer = answer
    plain_recv = sock.recv

    def recv(n, flags=0):
        # run() waits for call 0 to return, writing nothing meanwhile: the answer
        # call 0 waits for comes all the same
        if not sock.batches and not sock.writes and later:
            sock.batches.append(later.pop())
        return plain_recv(n, flags)
    sock.recv = recv
    engine.memory.write(engine.store, struct.pack("<ii", 1, 1), 4000)
    sock.batches.append(sup.send_call(main, IFACE, 0, SECRET)[1])
    while sock.batches:
        engine._pump()
    engine._flush()
    answer(b"".join(sock.writes))
    seen = struct.unpack("<ii", engine.memory.read(engine.store, 4000, 4008))
    return returns, seen, b"".join(written)


@pytest.mark.parametrize("native", [True, False])
def test_start_running_while_a_call_waits_cannot_reach_that_call(native):
    """The supervisor's `run` may come while a call into the guest waits in
    wsuper.call.  _start ran above that call then, on the engine's one stack, and
    the call could return only once the program had (a program that serves for
    ever held it for good); it now starts once the call has returned, at the top
    level, where params_read and results_set say E_STATE, natively too."""
    returns, seen, _written = waiting("run", native)
    assert seen == (E_STATE, E_STATE)
    assert len(returns) == 2                           # call 0's, then run's
    assert returns[0] is None, "_start set the waiting call's results"
    assert returns[1] is not None                      # run's exit code


def test_start_outside_a_dispatch_is_the_same_natively_and_in_python():
    assert waiting("run", True)[1:] == waiting("run", False)[1:]


def test_a_per_call_instance_s_initialize_cannot_read_the_call_that_waits():
    """instance = "per_call": a call that comes while another waits gets a new
    instance, whose _initialize runs above the waiting call: it may not read that
    call's params (which its dispatch would hand to the second caller) nor set
    its results."""
    returns, _seen, _written = waiting("call", per_call=True)
    assert len(returns) == 2
    assert all(r is None for r in returns), "another call's params or results reached it"


def test_a_per_call_instance_s_start_function_cannot_reach_the_outer_instance():
    """A per_call instance's start function runs before _initialize, as it is made:
    its host calls reach its own handles and memory (none yet: it traps, and the
    call fails), never the outer instance's.  Its memory belongs to another store,
    and wasmtime aborts the whole engine when it is used with this one, so this runs
    in a process of its own."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = f"""if True:
        import os
        from capnp_schemas import payloads, protocol
        from capnp_schemas.protocol import Content
        from compartments.engine import ENGINE_INTERFACE, Engine
        from compartments.spec import EngineSpec
        from fuzz.hostmem import Recorded
        engine = Engine(Recorded(), EngineSpec(name="startcall", module={os.path.join(
            GUESTS, "startcall.wat")!r}, exports=True, per_call=True))
        sock, sup = engine.sock, protocol.Connection("supervisor")
        def ask(msg):
            sock.batches.append(msg)
            engine._pump()
            engine._flush()
            [ev] = sup.receive(sock.writes.pop())
            return ev
        control = ask(sup.send_bootstrap()[1]).payload.caps[0].import_id
        main = ask(sup.send_call(control, ENGINE_INTERFACE, 0,
                                 payloads.grants_content([]))[1]).payload.caps[0].import_id
        handles = len(engine.handles.entries())
        for _ in range(2):
            ev = ask(sup.send_call(main, 1, 0, Content.standalone([bytes(16)]))[1])
            print(ev.error)
        print(len(engine.handles.entries()) - handles)
    """
    run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[:2] == ["startcall: cannot instantiate: its start function trapped: "
                         "wsuper.lookup: no memory to use: the module exports none named "
                         "'memory', or its start function is running"] * 2
    assert lines[2] == "0", "the new instance's start function added to the outer handles"


def test_a_call_that_came_with_one_that_waits_is_served_while_it_waits():
    """Calls 0 and 1 in one read: call 0 calls out and waits (the engine serves
    calls meanwhile), and call 1 is answered during that wait.  It used to wait
    behind call 0 in the list of that read's events until call 0 had returned; a
    call that came in one read with run() waited for the whole program (its
    caller timed out) -- and one that call 0's callee waits for, for ever."""
    engine, sock, sup, _control, main = _outside()
    first_q, first = sup.send_call(main, IFACE, 0, Content.standalone([bytes(16)]))
    second_q, second = sup.send_call(main, IFACE, 1, Content.standalone([bytes(16)]))
    answered_before_the_wait_ended = []

    def answer(out):
        events = sup.receive(out)
        returned = [ev.question_id for ev in events if isinstance(ev, protocol.ReturnReceived)]
        more = b""
        for ev in events:
            if isinstance(ev, protocol.CallReceived):       # call 0's call out: it waits
                answered_before_the_wait_ended.extend(returned)
                more += sup.send_return(ev.answer_id, Content.standalone([bytes(16)]))
        return more

    sock.answer = answer
    sock.batches.append(first + second)
    while sock.batches:
        engine._pump()
    engine._flush()
    assert answered_before_the_wait_ended == [second_q]


def test_calls_that_come_in_one_read_and_each_wait_are_not_nested_into_each_other():
    """40 calls in one read, each of which calls out and waits: each wait sends its
    question and reads its answer before it takes the next of those calls.  Every
    wait took the next call of the read at once (its own question not even sent:
    that happens before a read blocks), so the calls nested 40 deep and those past
    MAX_NESTING (32) failed 'calls nested deeper than 32 (a call cycle between
    compartments?)', where there was no cycle."""
    engine, sock, sup, _control, main = _outside()
    asked, batch = {}, b""
    for _ in range(40):
        q, msg = sup.send_call(main, IFACE, 0, Content.standalone([bytes(16)]))
        asked[q] = None
        batch += msg
    deepest = [0]

    def answer(out):
        more = b""
        for ev in sup.receive(out):
            if isinstance(ev, protocol.ReturnReceived) and ev.question_id in asked:
                asked[ev.question_id] = ev.error or "ok"
            if isinstance(ev, protocol.CallReceived):       # a call out: answered
                more += sup.send_return(ev.answer_id, Content.standalone([bytes(16)]))
        deepest[0] = max(deepest[0], len(engine.frames))
        return more

    sock.answer = answer
    sock.batches.append(batch)
    for _ in range(1000):
        if all(asked.values()):
            break
        engine._pump()
        engine._flush()
        answer(b"".join(sock.writes))
        sock.writes.clear()
    failed = [e for e in asked.values() if e != "ok"]
    assert not failed, f"{len(failed)} calls failed: {failed[0]}"
    assert deepest[0] <= 2


@pytest.mark.parametrize("root", [0x7, 0xFFFFFFFF, 3 | 4 | (1 << 32), 2**64 - 1])
def test_a_root_other_pointer_that_is_no_capability_is_e_message_not_the_engines_end(root):
    """Found by an outside review: results (or a call's params) whose root word is
    an 'other' pointer with bits a capability pointer never has were taken
    (results_set: OK), sent, and the supervisor's protocol core refused the
    engine's Return ('payload content is an 'other' pointer that is not a
    capability'): it aborted the engine, and every call in the compartment
    failed with it.  The engine refuses them as it refuses any message it could
    not send: E_MESSAGE to the guest."""
    msg = framed([root, 0])
    ev, handled = results_of((64, len(msg), 0, 0), [(64, msg)])
    assert handled == 0
    assert ev.payload is None and f"dispatch returned {E_MESSAGE}" in ev.error


def test_a_root_capability_pointer_is_still_taken():
    msg = framed([3 | (1 << 32), 0])
    ev, _handled = results_of((64, len(msg), 0, 0), [(64, msg)])
    assert ev.payload is not None


def test_call_params_whose_root_is_no_capability_are_e_message_and_never_sent(tmp_path):
    """The same check on a call's params (the one message check, _guest_content):
    the call is refused with E_MESSAGE before anything is sent."""
    wat = tmp_path / "junkcall.wat"
    wat.write_text("""(module
      (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
      (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 100) "peer")
      (data (i32.const 64) "\\00\\00\\00\\00\\02\\00\\00\\00\\07\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00\\00")
      (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
        (call $call (call $lookup (i32.const 100) (i32.const 4)) (i64.const 7) (i32.const 0)
                    (i32.const 64) (i32.const 24) (i32.const 0) (i32.const 0) (i32.const 200))))""")
    engine = Engine(Answering(), EngineSpec(name="junkcall", module=str(wat), exports=True))
    sock, sup = engine.sock, protocol.Connection("supervisor")
    sock.batches.append(sup.send_bootstrap()[1])
    engine._pump()
    engine._flush()
    [boot] = sup.receive(sock.writes.pop())
    sock.batches.append(sup.send_call(boot.payload.caps[0].import_id, ENGINE_INTERFACE, 0,
                                      payloads.grants_content([("peer", "compartment", "")]),
                                      [object()])[1])
    engine._pump()
    engine._flush()
    [ready] = sup.receive(sock.writes.pop())
    sock.batches.append(sup.send_call(ready.payload.caps[0].import_id, IFACE, 0,
                                      Content.standalone([bytes(16)]))[1])
    engine._pump()
    engine._flush()
    [answer] = sup.receive(b"".join(sock.writes))        # no Call went out before it
    assert answer.payload is None and f"dispatch returned {E_MESSAGE}" in answer.error


COPYING = """(module
  (import "wsuper" "params_read" (func $pr (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $rs (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 40)
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) (local $i i32)
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $i) (i32.const 1000)))
      (drop (call $pr (i32.const 65536) (i32.const 0)))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
    (i32.store (i32.const 8) (i32.const 1))        ;; results: an empty message
    (drop (call $rs (i32.const 0) (i32.const 16) (i32.const 0) (i32.const 0)))
    (i32.const 0)))
"""


@pytest.mark.parametrize("native", [True, False])
def test_what_host_functions_copy_is_charged_to_the_calls_fuel(tmp_path, native):
    """Host functions were not charged for what they copy: a call that read its
    params of 4 MiB in a loop (params_read, 12 instructions a round) used 0.33 ms
    of CPU a round, ~7 hours to spend the default fuel_per_call (a plain loop
    spends it in 0.29 s), and ran on past its call_time, as no host call of it
    calls out.  Past 4 KiB, a copy costs the call one unit of fuel per 8 bytes,
    natively and in Python: 1000 rounds of 1 MiB (128 M units) are past a budget
    of 10^7, and the call fails as out of fuel."""
    from compartments.limits import Limits
    (tmp_path / "copying.wat").write_text(COPYING)
    engine = Engine(Answering(), EngineSpec(name="copying", module=str(tmp_path / "copying.wat"),
                                            exports=True,
                                            limits=Limits(fuel_per_call=10_000_000)))
    if not native:
        engine._native.memory = None
    sock, sup = engine.sock, protocol.Connection("supervisor")
    sock.batches.append(sup.send_bootstrap()[1])
    engine._pump()
    engine._flush()
    [boot] = sup.receive(sock.writes.pop())
    control = boot.payload.caps[0].import_id
    sock.batches.append(sup.send_call(control, ENGINE_INTERFACE, 0,
                                      payloads.grants_content([]), [])[1])
    engine._pump()
    engine._flush()
    [ready] = sup.receive(sock.writes.pop())
    main = ready.payload.caps[0].import_id
    n = (1 << 20) - 8             # a root list of n bytes: params of 1 MiB
    params = Content.standalone([struct.pack("<II", 1, 2 | (n << 3)) + b"\1" * n])
    handled = engine._native.handled
    sock.batches.append(sup.send_call(main, IFACE, 0, params)[1])
    engine._pump()
    engine._flush()
    [answer] = sup.receive(b"".join(sock.writes))
    assert answer.payload is None and answer.error_type == "overloaded", answer
    assert "used up its CPU budget" in answer.error
    assert (engine._native.handled > handled) == native       # the path it took


FLUSHING = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fw (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "partial")
  (func (export "_start"))
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 7))
    (drop (call $fw (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.const 0)))
"""


COPYING_ONCE = """(module
  (import "wsuper" "params_read" (func $pr (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $rs (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 4)
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (drop (call $pr (i32.const 65536) (i32.const 0)))
    (i32.store (i32.const 8) (i32.const 1))        ;; results: an empty message
    (drop (call $rs (i32.const 0) (i32.const 16) (i32.const 0) (i32.const 0)))
    (i32.const 0)))
"""


@pytest.mark.parametrize("native", [True, False])
def test_a_copy_is_charged_for_what_it_copies_past_its_first_4_kib(tmp_path, native):
    """The docs (policy-reference's fuel_per_call, design.md, _fastcall.c's own
    comment) say a host function's copy costs one unit per 8 bytes past its
    first 4 KiB; it cost one per 8 bytes of all of it once it passed 4 KiB: 4096
    bytes of params were free, 4104 cost 513 units (one more word, 513 times the
    fuel).  Past 4 KiB, each word costs one unit, natively and in Python."""
    from compartments.engine import FREE_COPY
    from compartments.limits import Limits
    (tmp_path / "once.wat").write_text(COPYING_ONCE)
    engine = Engine(Answering(), EngineSpec(name="once", module=str(tmp_path / "once.wat"),
                                            exports=True,
                                            limits=Limits(message_size=1 << 20)))
    if not native:
        engine._native.memory = None
    sock, sup = engine.sock, protocol.Connection("supervisor")
    sock.batches.append(sup.send_bootstrap()[1])
    engine._pump()
    engine._flush()
    [boot] = sup.receive(sock.writes.pop())
    sock.batches.append(sup.send_call(boot.payload.caps[0].import_id, ENGINE_INTERFACE, 0,
                                      payloads.grants_content([]), [])[1])
    engine._pump()
    engine._flush()
    [ready] = sup.receive(sock.writes.pop())
    main = ready.payload.caps[0].import_id

    def fuel_for(size):                # params of `size` bytes, as the guest reads them
        n = size - 16                  # the segment table and the root pointer
        params = Content.standalone([struct.pack("<II", 1, 2 | (n << 3)) + b"\1" * n])
        assert len(engine._for_guest(params)) == size
        handled = engine._native.handled
        sock.batches.append(sup.send_call(main, IFACE, 0, params)[1])
        engine._pump()
        engine._flush()
        [answer] = sup.receive(b"".join(sock.writes))
        sock.writes.clear()
        assert answer.payload is not None, answer
        assert (engine._native.handled > handled) == native       # the path it took
        return engine._fuel_used

    free = fuel_for(FREE_COPY)
    assert fuel_for(FREE_COPY - 8) == free
    assert fuel_for(FREE_COPY + 8) == free + 1
    assert fuel_for(FREE_COPY + 8 * 1000) == free + 1000


LATE_LOOP = """(module
  (import "wsuper" "params_read" (func $pr (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $rs (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) (local $i i32)
    (local.set $i (i32.const 100000000))        ;; ~0.1 s of CPU: past call_time
    (loop $spin (local.set $i (i32.sub (local.get $i) (i32.const 1)))
                (br_if $spin (local.get $i)))
    (block $d (loop $l                           ;; then host calls that only compute
      (br_if $d (i32.ge_u (local.get $i) (i32.const 1000)))
      (drop (call $pr (i32.const 65536) (i32.const 0)))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
    (i32.store (i32.const 8) (i32.const 1))        ;; results: an empty message
    (drop (call $rs (i32.const 0) (i32.const 16) (i32.const 0) (i32.const 0)))
    (i32.const 0)))
"""


@pytest.mark.parametrize("native", [True, False])
def test_a_call_past_its_call_time_is_cut_off_at_a_host_call_that_only_computes(
        tmp_path, native):
    """Only a host call that may call out (wsuper.call, WASI) failed a call past
    its call_time: a loop of params_read (4 KiB of params are free of fuel) ran
    on for minutes after its caller had been told it failed (2.9 s of CPU per
    10^7 fuel in the Python path, every per_call compartment's: ~290 s for the
    default budget, ~1000 times a plain loop).  A call past its call_time fails
    at its next params_read, results_set, reply_read, fail, lookup or object
    too, natively and in Python."""
    from compartments.limits import Limits
    (tmp_path / "late.wat").write_text(LATE_LOOP)
    engine = Engine(Answering(), EngineSpec(name="late", module=str(tmp_path / "late.wat"),
                                            exports=True, limits=Limits(call_time=0.01)))
    if not native:
        engine._native.memory = None
    sock, sup = engine.sock, protocol.Connection("supervisor")
    sock.batches.append(sup.send_bootstrap()[1])
    engine._pump()
    engine._flush()
    [boot] = sup.receive(sock.writes.pop())
    sock.batches.append(sup.send_call(boot.payload.caps[0].import_id, ENGINE_INTERFACE, 0,
                                      payloads.grants_content([]), [])[1])
    engine._pump()
    engine._flush()
    [ready] = sup.receive(sock.writes.pop())
    main = ready.payload.caps[0].import_id
    sock.batches.append(sup.send_call(main, IFACE, 0, Content.standalone([bytes(16)]))[1])
    engine._pump()
    engine._flush()
    [answer] = sup.receive(b"".join(sock.writes))
    assert answer.payload is None and answer.error_type == "overloaded", answer
    assert "made a host call in a call that has run past the 0.01 s" in answer.error
    assert engine._native.handled == 0          # the native path left it to Python


def test_run_that_comes_as_a_per_call_instance_s_last_line_is_sent_waits_for_that_call(tmp_path):
    """A per_call call's instance left an unfinished line on stdout (a log): its
    end sends it (Log.write, a call out) before the call is answered, with no
    guest code running and no dispatch frame.  run() that came during that wait
    ran the program right there, and the call was answered only once _start had
    returned (a program that serves for ever: never).  It is held until the call
    has been answered, as during the call's own code."""
    (tmp_path / "flushing.wat").write_text(FLUSHING)
    engine = Engine(Answering(), EngineSpec(name="flushing", module=str(
        tmp_path / "flushing.wat"), exports=True, per_call=True))
    sock, sup = engine.sock, protocol.Connection("supervisor")
    sock.batches.append(sup.send_bootstrap()[1])
    engine._pump()
    engine._flush()
    [boot] = sup.receive(sock.writes.pop())
    control = boot.payload.caps[0].import_id
    sock.batches.append(sup.send_call(control, ENGINE_INTERFACE, 0, payloads.grants_content(
        [("stdout", "log", "")]), [object()])[1])
    engine._pump()
    engine._flush()
    [ready] = sup.receive(sock.writes.pop())
    main = ready.payload.caps[0].import_id
    order, later = [], []
    call_qid, run_qid = [None], [None]

    def answer(out):
        more = b""
        for ev in sup.receive(out):
            if isinstance(ev, protocol.ReturnReceived):
                order.append("call" if ev.question_id == call_qid[0] else
                             "run" if ev.question_id == run_qid[0] else ev.question_id)
            if isinstance(ev, protocol.CallReceived):      # the Log.write: run() comes
                run_qid[0], data = sup.send_call(control, ENGINE_INTERFACE, 1,
                                                 Content.standalone([bytes(8)]))
                more += data
                later.append(sup.send_return(ev.answer_id, Content.standalone([bytes(16)])))
        return more or (later.pop() if later else b"")
    sock.answer = answer
    plain_recv = sock.recv

    def recv(n, flags=0):
        if not sock.batches and not sock.writes and later:
            sock.batches.append(later.pop())
        return plain_recv(n, flags)
    sock.recv = recv
    call_qid[0], data = sup.send_call(main, IFACE, 0, SECRET)
    sock.batches.append(data)
    while sock.batches:
        engine._pump()
    engine._flush()
    answer(b"".join(sock.writes))
    assert order == ["call", "run"]


EXITING = """(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "peer")
  (func (export "_start"))
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (drop (call $call (call $lookup (i32.const 100) (i32.const 4)) (i64.const 7) (i32.const 0)
                (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 200)))
    (call $exit (i32.const 0))
    (i32.const 0)))
"""


def test_an_exit_in_a_call_that_held_run_ends_the_program_with_its_code(tmp_path):
    """run() that comes while a call waits in a call out is held until the call has
    returned; a call that then exits (exit(0), its shared instance done) left the
    held run() unanswered: the engine ended, and the supervisor took the program
    for one that failed ('engine exited ...'), where the same exit while _start
    runs ends the program with its code.  The held run() is answered with it."""
    (tmp_path / "exiting.wat").write_text(EXITING)
    engine = Engine(Answering(), EngineSpec(name="exiting", module=str(
        tmp_path / "exiting.wat"), exports=True))
    sock, sup = engine.sock, protocol.Connection("supervisor")
    sock.batches.append(sup.send_bootstrap()[1])
    engine._pump()
    engine._flush()
    [boot] = sup.receive(sock.writes.pop())
    control = boot.payload.caps[0].import_id
    sock.batches.append(sup.send_call(control, ENGINE_INTERFACE, 0, payloads.grants_content(
        [("peer", "compartment", "")]), [object()])[1])
    engine._pump()
    engine._flush()
    [ready] = sup.receive(sock.writes.pop())
    main = ready.payload.caps[0].import_id
    returns, later = {}, []
    run_qid = [None]

    def answer(out):
        more = b""
        for ev in sup.receive(out):
            if isinstance(ev, protocol.ReturnReceived):
                returns[ev.question_id] = ev
            if isinstance(ev, protocol.CallReceived):      # the call out: run() comes
                run_qid[0], data = sup.send_call(control, ENGINE_INTERFACE, 1,
                                                 Content.standalone([bytes(8)]))
                more += data
                later.append(sup.send_return(ev.answer_id, Content.standalone([bytes(16)])))
        return more or (later.pop() if later else b"")
    sock.answer = answer
    plain_recv = sock.recv

    def recv(n, flags=0):
        if not sock.batches and not sock.writes and later:
            sock.batches.append(later.pop())
        return plain_recv(n, flags)
    sock.recv = recv
    sock.batches.append(sup.send_call(main, IFACE, 0, SECRET)[1])
    with pytest.raises(SystemExit):
        while sock.batches:
            engine._pump()
    answer(b"".join(sock.writes))
    ret = returns.get(run_qid[0])
    assert ret is not None and ret.payload is not None, "the held run() was never answered"
    assert ret.payload.content.segments[0][8:12] == bytes(4)        # exitCode 0


def test_a_guest_never_initialised_goes_to_python_at_the_deadline_look_too():
    """The native path declines (hands to Python) a host call whose Guest was never
    initialised (guest_memory: `!g->owner`), but 0fa1c1a's past_deadline, which
    runs before it at every native call, read the owner's `_until` first:
    PyObject_GetAttr(NULL, ...), a segfault of the whole engine process (every
    call in it lost) where the Python path would have served.  The same for an
    owner cleared by the cycle collector (guest_clear).  Run in a child: before,
    it died of SIGSEGV."""
    import subprocess
    import sys
    code = '''if True:
        import wasmtime
        from compartments import unchecked
        native = unchecked._native
        engine = wasmtime.Engine(wasmtime.Config())
        linker = wasmtime.Linker(engine)
        guest = native.Guest.__new__(native.Guest)      # never initialised
        unchecked.define(linker, "wsuper", "params_read", ("i32", "i32"), ("i32",),
                         lambda *a: 7, engine, native=(native.PARAMS_READ, guest))
        module = wasmtime.Module(engine, """(module
          (import "wsuper" "params_read" (func $p (param i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "go") (result i32) (call $p (i32.const 0) (i32.const 0))))""")
        store = wasmtime.Store(engine)
        print(linker.instantiate(store, module).exports(store)["go"](store))
    '''
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(
                              os.path.dirname(os.path.abspath(__file__)))))
    assert done.returncode == 0 and done.stdout.strip() == "7", (done.returncode, done.stderr)


#: method m: fd_write to stdout (a log, no newline: nothing leaves the engine) of
#: m iovecs of 256 KiB / m bytes each, all over one 256 KiB buffer at 65536
SPREADING = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fw (param i32 i32 i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $rs (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 6)
  (func (export "_start"))
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) (local $i i32)
    (block $d (loop $l                           ;; the iovecs, at 16
      (br_if $d (i32.ge_u (local.get $i) (local.get 2)))
      (i32.store (i32.add (i32.const 16) (i32.shl (local.get $i) (i32.const 3)))
                 (i32.const 65536))
      (i32.store (i32.add (i32.const 20) (i32.shl (local.get $i) (i32.const 3)))
                 (i32.div_u (i32.const 262144) (local.get 2)))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
    (drop (call $fw (i32.const 1) (i32.const 16) (local.get 2) (i32.const 12)))
    (i32.store (i32.const 8) (i32.const 1))        ;; results: an empty message
    (drop (call $rs (i32.const 0) (i32.const 16) (i32.const 0) (i32.const 0)))
    (i32.const 0)))
"""


def test_a_host_call_s_free_copy_is_per_call_not_per_buffer(tmp_path):
    """Each buffer of a WASI read or write was a copy with its own free 4 KiB:
    one fd_write of 256 KiB cost 32,256 units, the same 256 KiB in 64 buffers of
    4 KiB cost none (1,024 buffers of 4 KiB, 4 MiB, for the 512 units of reading
    their iovecs), so a loop of them moved gigabytes on a full budget.  The first
    4 KiB are free per host call, whatever it copies, in how many pieces."""
    from compartments.engine import FREE_COPY
    from compartments.limits import Limits
    (tmp_path / "spreading.wat").write_text(SPREADING)
    engine = Engine(Answering(), EngineSpec(name="spreading", module=str(
        tmp_path / "spreading.wat"), exports=True, limits=Limits(message_size=1 << 20)))
    sock, sup = engine.sock, protocol.Connection("supervisor")
    sock.batches.append(sup.send_bootstrap()[1])
    engine._pump()
    engine._flush()
    [boot] = sup.receive(sock.writes.pop())
    sock.batches.append(sup.send_call(boot.payload.caps[0].import_id, ENGINE_INTERFACE, 0,
                                      payloads.grants_content([("stdout", "log", "")]),
                                      [object()])[1])
    engine._pump()
    engine._flush()
    [ready] = sup.receive(sock.writes.pop())
    main = ready.payload.caps[0].import_id

    def fuel_for(buffers):
        sock.batches.append(sup.send_call(main, IFACE, buffers, Content.standalone(
            [bytes(16)]))[1])
        engine._pump()
        engine._flush()
        [answer] = sup.receive(b"".join(sock.writes))
        sock.writes.clear()
        assert answer.payload is not None, answer
        return engine._fuel_used

    whole = fuel_for(1)
    assert whole > (256 << 10) // 8 - FREE_COPY // 8 - 100
    for buffers in (64, 1024):
        spent = fuel_for(buffers) - whole
        # the loop writing the iovecs (~20 units each) and reading them (8 bytes
        # each, a unit a word): all that costs more
        assert 0 <= spent <= 40 * buffers, (buffers, spent)


@pytest.mark.parametrize("native", [True, False])
def test_params_read_charges_its_handles_with_its_bytes_on_both_paths(tmp_path, native):
    """params_read copies the params and then their handles: in Python both
    share the host call's free 4 KiB (Engine._copied), natively only the bytes
    were charged, so the same call cost the two paths different fuel.  Params of
    4096 bytes and 8 handles (32 bytes) cost 4 units more than without them, on
    both."""
    from compartments.engine import FREE_COPY
    from compartments.limits import Limits
    (tmp_path / "once.wat").write_text(COPYING_ONCE)
    engine = Engine(Answering(), EngineSpec(name="once", module=str(tmp_path / "once.wat"),
                                            exports=True,
                                            limits=Limits(message_size=1 << 20)))
    if not native:
        engine._native.memory = None
    sock, sup = engine.sock, protocol.Connection("supervisor")
    sock.batches.append(sup.send_bootstrap()[1])
    engine._pump()
    engine._flush()
    [boot] = sup.receive(sock.writes.pop())
    sock.batches.append(sup.send_call(boot.payload.caps[0].import_id, ENGINE_INTERFACE, 0,
                                      payloads.grants_content([]), [])[1])
    engine._pump()
    engine._flush()
    [ready] = sup.receive(sock.writes.pop())
    main = ready.payload.caps[0].import_id

    def fuel_for(caps):
        n = FREE_COPY - 16
        params = Content.standalone([struct.pack("<II", 1, 2 | (n << 3)) + b"\1" * n])
        sock.batches.append(sup.send_call(main, IFACE, 0, params,
                                          [object() for _ in range(caps)])[1])
        engine._pump()
        engine._flush()
        answers = [ev for ev in sup.receive(b"".join(sock.writes))
                   if isinstance(ev, protocol.ReturnReceived)]
        sock.writes.clear()
        assert answers and answers[0].payload is not None, answers
        return engine._fuel_used

    assert fuel_for(8) == fuel_for(0) + 4


# ---------------------------------------------------------------- calls out (wsuper.call)

def test_native_calls_out_behave_exactly_as_python_ones():
    """fuzz/callout.py's differential check on real socket pairs, 1,200 calls out,
    every way of answering them (long runs: python -m fuzz.callout)."""
    from fuzz.callout import differ
    for seed in range(2):
        failures, native, handed = differ(seed, 600)
        assert failures == []
        assert native > 20, "the native path made (almost) no call out itself"
        assert handed > 10, "the native path handed (almost) no call out to Python"


def _one_call_out(reply: str):
    """memio's call out through its grant, answered as fuzz/callout says `reply`:
    (the side, what the supervisor saw, how the engine ended)."""
    from fuzz.callout import PARAMS_AT, Side, run, scenario
    import random
    side = Side(True)
    s = scenario(random.Random(0))
    s.update(writes=[(PARAMS_AT, framed([struct_ptr(0, 2, 0), 2, 3]))], handle="grant",
             iface=IFACE, method=0, params=(PARAMS_AT, 32), caps=(0, 0), out=8192,
             read=16384, pending=None, reply=reply)
    log, ended, _memory, _tables = run(side, s)
    return side, log, ended


def test_a_plain_call_out_is_made_natively_and_leaves_no_question_behind():
    side, log, ended = _one_call_out("plain")
    native = side.engine._native
    assert (native.calls_out, native.calls_handed, ended) == (1, 0, None)
    assert side.engine.conn.questions == {}
    assert log[-1][0] == "return" and log[-1][1] is False       # the outer call succeeded
    call = rpcwire.decode([log[0].replace(b"Q000", bytes(4))])
    assert (call.which, call.interface_id, call.method_id) == (rpcwire.MSG_CALL, IFACE, 0)
    assert call.import_id == side.engine.grants["peer"][1].import_id
    # the guest was told the answer's size, and read it (reply_read said OK): one
    # segment, the root at word 1, as long as the size said
    mem = lambda at, n: bytes(side.engine.memory.read(side.engine.store, at, at + n))  # noqa
    length, handles = struct.unpack("<II", mem(8192, 8))
    nseg, words = struct.unpack("<II", mem(16384, 8))
    assert (handles, nseg, 8 + 8 * words) == (0, 0, length)
    assert struct.unpack("<i", mem(ARGS + 64, 4)) == (0,)
    assert wire.resolve([mem(16392, 8 * words)], (0, 0))[2] == 1


@pytest.mark.parametrize("reply", ["finish", "split", "exception", "cancel", "caps"])
def test_an_answer_that_is_not_plain_alone_is_handed_to_python(reply):
    """The native path sends the Call and reads once; anything but the plain answer
    alone in that read goes to Python with the question adopted, and ends as in
    Python: the question is gone from the table once answered (and finished), and
    its id, from 2^31 up, never goes to the allocator of Python's own questions."""
    side, log, ended = _one_call_out(reply)
    native, conn = side.engine._native, side.engine.conn
    assert (native.calls_out, native.calls_handed, ended) == (0, 1, None)
    assert conn.questions == {}
    assert all(q < protocol.NATIVE_QID_BASE for q in conn._qids._free)
    assert log[-1][0] == "return"
    if reply == "finish":              # the Finish the answer asked for went out
        finish = [m for m in log if isinstance(m, bytes) and len(m) == 32]
        assert finish, log
    # and the next call out is native again, with the same question id free
    from fuzz.callout import run, scenario
    import random
    s = scenario(random.Random(0))
    s.update(writes=[(4096, framed([struct_ptr(0, 2, 0), 2, 3]))], handle="grant",
             iface=IFACE, method=0, params=(4096, 32), caps=(0, 0), out=8192, read=16384,
             pending=None, reply="plain")
    run(side, s)
    assert native.calls_out == 1


@pytest.mark.parametrize("reply, code", [("end", 0), ("wrong", EXIT_PROTOCOL)])
def test_the_end_of_the_connection_or_a_wrong_answer_ends_the_engine_as_in_python(reply, code):
    side, _log, ended = _one_call_out(reply)
    assert side.engine._native.calls_handed == 1
    assert ended == code
