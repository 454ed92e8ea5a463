"""instance = "per_call": one call's CPU budget (fuel_per_call) covers everything
of its instance, the module's start function, _initialize and wsuper_dispatch,
and running out anywhere is E_OVERLOADED ("used up its CPU budget").  A real
Engine with real wasmtime on a recording socket, its supervisor played here."""
from __future__ import annotations

import contextlib
import os
import struct

import pytest

from capnp_schemas import protocol
from capnp_schemas.protocol import Content
from compartments.engine import Engine
from compartments.limits import Limits
from compartments.spec import EngineSpec
from fuzz.hostmem import Recorded
from tests.enginedriver import Driven

FUEL = 200_000
PHASES = ("start", "initialize", "dispatch")


def _burn(n: int) -> str:
    return (f"(local $i i32) (local.set $i (i32.const {n})) (block $d (loop $l "
            f"(br_if $d (i32.eqz (local.get $i))) "
            f"(local.set $i (i32.sub (local.get $i) (i32.const 1))) (br $l)))")


def _module(path, start=0, initialize=0, dispatch=0) -> str:
    """A module whose start function, _initialize and dispatch each loop so often."""
    path.write_text(f"""(module (memory (export "memory") 1)
  (func $s {_burn(start)}) (start $s)
  (func (export "_initialize") {_burn(initialize)})
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    {_burn(dispatch)} (i32.const 0)))""")
    return str(path)


def _engine(module: str, per_call: bool):
    engine = Engine(Recorded(), EngineSpec(name="burn", module=module, exports=True,
                                           per_call=per_call,
                                           limits=Limits(fuel_per_call=FUEL)))
    d = Driven(engine)
    return engine, lambda: d.ask(d.sup.send_call(d.main, 1, 0, Content.standalone([bytes(16)]))[1])


def _fuel_per_loop(tmp_path) -> float:
    engine, call = _engine(_module(tmp_path / "one.wat", dispatch=1000), per_call=False)
    assert call().payload is not None
    return engine._fuel_used / 1000


@pytest.mark.parametrize("spent", [("start", "dispatch"), ("initialize", "dispatch"),
                                   ("start", "initialize")], ids="+".join)
def test_a_per_call_instance_s_start_and_initialize_spend_the_call_s_budget(tmp_path, spent):
    """Each of two phases takes 60% of fuel_per_call: alone, each fits; together,
    the call is over budget.  Each phase got a budget of its own (the start
    function the store's, _initialize and dispatch a fresh fuel_per_call each),
    so one call could burn three times fuel_per_call; and a start function that
    ran out failed 'cannot instantiate: its start function trapped: all fuel
    consumed' (E_FAILED) instead of E_OVERLOADED."""
    n = int(0.6 * FUEL / _fuel_per_loop(tmp_path))
    for phase in spent:                          # alone, each phase fits the budget
        _engine_, call = _engine(_module(tmp_path / f"{phase}.wat", **{phase: n}), True)
        assert call().payload is not None
    _engine_, call = _engine(_module(tmp_path / "both.wat", **{p: n for p in spent}), True)
    for _ in range(2):                           # and the compartment keeps serving
        ret = call()
        assert ret.payload is None and ret.error_type == "overloaded", ret.error
        assert ret.error == (f"compartment burn used up its CPU budget for this call "
                             f"(fuel_per_call = {FUEL})")


def test_exit_in_a_per_call_instance_fails_that_call_and_the_compartment_serves_on(tmp_path):
    """proc_exit in a per_call instance's dispatch ended the whole engine: every
    other caller's capability broke ('compartment ... is gone'), and a client
    calling it four times within a minute used up its restarts, for good.  Only
    that call's instance ends now; the next call gets a new one as always."""
    module = tmp_path / "exit.wat"
    module.write_text("""(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (if (i32.eqz (local.get 2)) (then (call $exit (i32.const 3))))
    (i32.const 0)))""")
    engine = Engine(Recorded(), EngineSpec(name="exits", module=str(module), exports=True,
                                           per_call=True))
    d = Driven(engine)
    sup, ask, main = d.sup, d.ask, d.main
    for _ in range(3):
        ret = ask(sup.send_call(main, 1, 0, Content.standalone([bytes(16)]))[1])
        assert ret.payload is None and ret.error_type == "failed"
        assert ret.error == "compartment exits exited (code 3) in this call's instance"
        assert ask(sup.send_call(main, 1, 1, Content.standalone([bytes(16)]))[1]).payload \
            is not None


def test_exit_in_a_start_function_is_a_clear_failure_to_instantiate(tmp_path):
    """A start function (the module's `start` section) that calls proc_exit: the
    engine died with a Python traceback on stderr (exit code 70, 'compartments.wasi.
    WasiExit: 4'); in a per_call instance, it took the whole engine down.  Now the
    first instance cannot be instantiated, saying why, and a per_call call fails."""
    from compartments.engine import EngineError
    always, later = tmp_path / "always.wat", tmp_path / "later.wat"
    body = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "wsuper" "object" (func $object (param i32) (result i32)))
  (memory (export "memory") 1)
  (func $s (if (i32.gt_s (call $object (i32.const 5)) (i32.const %d))
    (then (call $exit (i32.const 4)))))
  (start $s)
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) (i32.const 0)))"""
    always.write_text(body % 0)
    with pytest.raises(EngineError, match=r"cannot instantiate .*always.wat: its start "
                                          r"function called exit\(4\)$"):
        Engine(Recorded(), EngineSpec(name="always", module=str(always), exports=True))
    # the first instance's handle 1 (its object) is in every per_call instance's table:
    # there, the start function's object is handle 2, and it exits
    later.write_text(body % 1)
    _engine_, call = _engine(str(later), per_call=True)
    for _ in range(2):
        ret = call()
        assert ret.payload is None and ret.error_type == "failed"
        assert ret.error == "burn: cannot instantiate: its start function called exit(4)"


def test_exit_in_a_per_call_instance_s_initialize_says_so(tmp_path):
    """It said '_initialize failed: 4' (the exception's bare code); at start the
    same is '_initialize called exit(4)'."""
    module = tmp_path / "init.wat"
    module.write_text("""(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "wsuper" "object" (func $object (param i32) (result i32)))
  (memory (export "memory") 1)
  (func $s (drop (call $object (i32.const 7))))
  (start $s)
  ;; at start its object is handle 2 (the start function's is 1); in a per_call
  ;; instance, whose table starts as the first one's was at start, 3: it exits
  (func (export "_initialize")
    (if (i32.gt_s (call $object (i32.const 5)) (i32.const 2)) (then (call $exit (i32.const 4)))))
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) (i32.const 0)))""")
    _engine_, call = _engine(str(module), per_call=True)
    ret = call()
    assert ret.payload is None and ret.error == "burn: _initialize called exit(4)"


def _calling_module(path, start=0, initialize=0, dispatch=0) -> str:
    """As _module, but method 0 calls the grant "peer" (and waits for it), and only
    the other methods loop `dispatch` times."""
    path.write_text(f"""(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "peer")
  (func $s {_burn(start)}) (start $s)
  (func (export "_initialize") {_burn(initialize)})
  (func $burn {_burn(dispatch)})
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (if (i32.eqz (local.get 2))
      (then (return (call $call (call $lookup (i32.const 100) (i32.const 4)) (i64.const 7)
                          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                          (i32.const 0) (i32.const 200)))))
    (call $burn) (i32.const 0)))""")
    return str(path)


@pytest.mark.parametrize("spent", [("start", "dispatch"), ("initialize", "dispatch")],
                         ids="+".join)
def test_a_per_call_call_served_while_another_waits_has_the_same_one_budget(tmp_path, spent):
    """Method 0 calls out and waits; meanwhile method 1 comes, served nested in an
    instance of its own whose phases each take 60% of fuel_per_call.  At the top
    level that call is over budget; nested, it passed: re-entering the guest keeps
    the budget of the code that waits below to give it back after, but it took
    that budget from the *new* instance's store, so _initialize's fuel was given
    back to the call's instance, and its dispatch ran on a budget of its own."""
    from tests.unit.test_engine_native import Answering
    n = int(0.6 * FUEL / _fuel_per_loop(tmp_path))
    module = _calling_module(tmp_path / "nest.wat", dispatch=n,
                             **{p: n for p in spent if p != "dispatch"})
    engine = Engine(Answering(), EngineSpec(name="burn", module=module, exports=True,
                                            per_call=True, limits=Limits(fuel_per_call=FUEL)))
    d = Driven(engine, [("peer", "compartment", "")], [object()])
    sock, sup, ask, main = d.sock, d.sup, d.ask, d.main
    empty = Content.standalone([bytes(16)])
    top = ask(sup.send_call(main, 1, 1, empty)[1])
    assert top.payload is None and top.error_type == "overloaded", top.error
    returns, asked = {}, {}

    def answering(out):
        more = b""
        for ev in sup.receive(out):
            if isinstance(ev, protocol.CallReceived):    # method 0 waits: method 1 comes
                asked["out"] = ev.answer_id
                asked["nested"], msg = sup.send_call(main, 1, 1, empty)
                more += msg
            elif isinstance(ev, protocol.ReturnReceived):
                returns[ev.question_id] = ev
                if ev.question_id == asked.get("nested"):
                    more += sup.send_return(asked["out"], empty)
        return more
    sock.answer = answering
    q, msg = sup.send_call(main, 1, 0, empty)
    sock.batches.append(msg)
    while sock.batches:
        engine._pump()
    engine._flush()
    answering(b"".join(sock.writes))
    nested = returns[asked["nested"]]
    assert nested.payload is None and nested.error_type == "overloaded", nested.error
    assert nested.error == (f"compartment burn used up its CPU budget for this call "
                            f"(fuel_per_call = {FUEL})")
    assert returns[q].payload is not None        # the call that waited is served on


@pytest.mark.parametrize("how", ["start", "initialize"])
def test_capabilities_of_a_call_whose_instance_cannot_be_had_are_released(tmp_path, how):
    """A per_call call whose instance fails before its dispatch (its start function
    runs out of the call's fuel, or _initialize runs out of what the start function
    left) fails; the capabilities it brought were never taken, and stayed imported
    for good: each failed call held its callers' objects at the supervisor, and
    the engine's imports grew without bound."""
    n = int(0.6 * FUEL / _fuel_per_loop(tmp_path))
    phases = {"start": dict(start=3 * n), "initialize": dict(start=n, initialize=n)}[how]
    engine = Engine(Recorded(), EngineSpec(name="burn", module=_module(
        tmp_path / f"{how}.wat", **phases), exports=True, per_call=True,
        limits=Limits(fuel_per_call=FUEL)))
    d = Driven(engine)
    sup, ask, main = d.sup, d.events, d.main
    for _ in range(3):
        (ret,) = [e for e in ask(sup.send_call(main, 1, 0, Content.standalone([bytes(16)]),
                                               [object(), object()])[1])
                  if isinstance(e, protocol.ReturnReceived)]
        assert ret.payload is None and ret.error_type == "overloaded", ret.error
    assert engine.conn.imports == {} and sup.exports == {}


@pytest.mark.parametrize("body, says", [
    ('(memory (export "memory") i64 1) (data (i64.const 65530) "0123456789")',
     "one of its data segments lies past the end of its memory: out of bounds memory access"),
    ('(memory (export "memory") 1) (table i64 1 funcref) (elem (table 0) (i64.const 1) func 0)',
     "one of its element segments lies past the end of its table: undefined element: "
     "out of bounds table access"),
    ('(memory (export "memory") 1) (func $s unreachable) (start $s)',
     "its start function trapped: wasm `unreachable` instruction executed (in s)"),
    # an exception its start function threw and nothing caught: wasmtime's error, not
    # a trap, was said as if instantiation itself had failed ("cannot instantiate
    # m.wat: thrown Wasm exception"), not naming the start function
    ('(memory (export "memory") 1) (tag $t (param i32)) (func $s (throw $t (i32.const 7))) '
     '(start $s)', "its start function failed: thrown Wasm exception"),
])
def test_a_module_whose_segments_do_not_fit_is_not_said_to_have_a_start_function_trap(
        tmp_path, body, says):
    """A module that cannot be set up (a data or element segment past the end of its
    memory or table: a module file replaced since `wsuper check`, or one its reader
    could not judge) was reported as 'its start function trapped: out of bounds
    memory access', whether it had a start function or not."""
    from compartments.engine import EngineError
    path = tmp_path / "segments.wat"
    path.write_text(f"(module {body} (func (export \"wsuper_dispatch\") "
                    f"(param i32 i64 i32 i32 i32) (result i32) (i32.const 0)))")
    with pytest.raises(EngineError) as e:
        Engine(Recorded(), EngineSpec(name="segments", module=str(path), exports=True))
    assert str(e.value) == f"cannot instantiate {path}: {says}"


def test_no_call_reaches_a_program_that_exited_while_its_exit_flush_waits(tmp_path):
    """exit (proc_exit) in a call the compartment serves ends its one instance: the
    engine sends the last unfinished line of stdout (a Log.write, a host call
    during which calls into the compartment are served), answers the exiting
    call 'exited' and ends.  The calls that came while that Log.write waited
    were dispatched into the program that had exited: its wsuper_dispatch ran
    after its exit (measured with real engines: 1 to 5 calls of six callers
    answered by it, lines it wrote then shown) and could exit a second time,
    its code taken for the program's.  They are refused as the exiting call
    is answered."""
    from tests.unit.test_engine_native import Answering
    module = tmp_path / "exits.wat"
    module.write_text("""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "bye")
  (data (i32.const 0) "\\10\\00\\00\\00\\03\\00\\00\\00")
  (global $ran (mut i32) (i32.const 0))
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (global.set $ran (i32.add (global.get $ran) (i32.const 1)))
    (if (i32.eqz (local.get 2)) (then
      (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32)))
      (call $exit (i32.const 7))))
    (i32.const 0)))""")
    engine = Engine(Answering(), EngineSpec(name="exits", module=str(module), exports=True))
    q, returns, nested, written, d = _a_call_at_each_exit_flush_line(engine, run=False, exits=True)
    assert len(written) == 1 and len(nested) == 1            # "bye" went out
    assert returns[q].error == "compartment exits exited (code 7)"
    ret = returns[nested[0]]
    assert ret.payload is None and ret.error_type == "disconnected", ret
    assert ret.error == "compartment exits exited (code 7)"


def test_no_call_reaches_a_program_whose_start_called_exit(tmp_path):
    """A C program that also serves calls ends with exit() (`wsuper build` links its
    _start as `exit(main())`: libc's atexit handlers and stdio's exit flush run,
    then proc_exit).  The guard of b8c5fa8 was set only by an exit in a call the
    program serves: after an exit in _start the calls that came while run()'s
    exit flush sent the last unfinished line (a Log.write, during which calls
    are served), and every call after run() was answered, ran wsuper_dispatch
    in the program that had exited (measured with real engines: six callers,
    hundreds of calls answered by it after 'finished a exit=3', each writing
    a line; an exit there ended the engine with run() unanswered, its code
    lost).  They are refused now, as after an exit in a call it serves."""
    from tests.unit.test_engine_native import Answering
    module = tmp_path / "ends.wat"
    module.write_text("""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "bye")
  (data (i32.const 0) "\\10\\00\\00\\00\\03\\00\\00\\00")
  (global $ran (mut i32) (i32.const 0))
  (func (export "_start")
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32)))
    (call $exit (i32.const 3)))
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (global.set $ran (i32.add (global.get $ran) (i32.const 1)))
    (i32.const 0)))""")
    engine = Engine(Answering(), EngineSpec(name="ends", module=str(module), exports=True))
    q, returns, nested, written, d = _a_call_at_each_exit_flush_line(engine, run=True, exits=False)
    sock, sup, main = d.sock, d.sup, d.main
    sock.writes.clear()
    assert len(written) == 1 and len(nested) == 1            # "bye" went out
    assert returns[q].payload is not None, returns[q]        # run() answered: exit 3
    ret = returns[nested[0]]
    assert ret.payload is None and ret.error_type == "disconnected", ret
    assert ret.error == "compartment ends exited (code 3)"
    # and after run() too
    after = d.ask(sup.send_call(main, 1, 1, Content.standalone([bytes(16)]))[1])
    assert after.payload is None and after.error == "compartment ends exited (code 3)"


def test_an_exit_in_a_call_served_during_the_end_of_a_program_answers_run(tmp_path):
    """A program whose _start returns without calling exit (wasi-libc's own _start
    when main returns 0, a Rust program) leaves the compartment serving calls.
    run()'s exit flush sends its last unfinished line (a Log.write, during which
    calls are served); an exit in a call served then ended the engine with
    run() never answered: the supervisor said 'engine exited' (a failure), and
    the exit code was lost.  That exit is the program's end, as an exit in a
    call served while _start runs is: run() is answered with its code."""
    from tests.unit.test_engine_native import Answering
    from compartments.engine import _RunResults
    from capnp_schemas import payloads
    module = tmp_path / "ends.wat"
    module.write_text("""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "bye")
  (data (i32.const 0) "\\10\\00\\00\\00\\03\\00\\00\\00")
  (func (export "_start")
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32))))
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (call $exit (i32.const 7))
    (i32.const 0)))""")
    engine = Engine(Answering(), EngineSpec(name="ends", module=str(module), exports=True))
    q, returns, nested, written, d = _a_call_at_each_exit_flush_line(engine, run=True, exits=True)
    assert len(written) == 1 and len(nested) == 1            # "bye" went out
    assert returns[nested[0]].error == "compartment ends exited (code 7)"
    assert q in returns, "run() was never answered"
    assert payloads.read(_RunResults, returns[q].payload.content, 8)["exitCode"] == 7


@pytest.mark.parametrize("per_call", [False, True])
def test_the_code_of_an_exit_in_a_served_call_is_told_as_run_tells_it(tmp_path, per_call):
    """exit(-1) is `finished NAME exit=-1` at a program's end (run()'s code is
    signed); the caller of a call that made it was told 'exited (code
    4294967295)', another number for the same exit."""
    module = tmp_path / "minus.wat"
    module.write_text("""(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (call $exit (i32.const -1))
    (i32.const 0)))""")
    engine = Engine(Recorded(), EngineSpec(name="minus", module=str(module), exports=True,
                                           per_call=per_call))
    d = Driven(engine)
    sock, sup = d.sock, d.sup
    sock.batches.append(sup.send_call(d.main, 1, 1, Content.standalone([bytes(16)]))[1])
    if per_call:
        engine._pump()
    else:
        with pytest.raises(SystemExit):
            engine._pump()
    engine._flush()
    [ret] = sup.receive(b"".join(sock.writes))
    assert ret.payload is None and "exited (code -1)" in ret.error, ret


def _a_call_at_each_exit_flush_line(engine, run: bool, exits: bool):
    """Drive `engine` (its stdout a Log) through its first call, run() when `run`,
    else a call of method 0: each Log.write its exit flush makes is answered with
    a call of method 1 sent first (a call that comes while the flush waits); the
    engine exits meanwhile (SystemExit) when `exits`.  -> (the first question, returns by
    question id, the calls sent at the flush, the Log.writes, the Driven)."""
    from compartments.engine import ENGINE_INTERFACE
    log = object()
    d = Driven(engine, [("stdout", "log", "")], [log])
    sock, sup, main = d.sock, d.sup, d.main
    returns, nested, written = {}, [], []

    def answering(out):
        more = b""
        for ev in sup.receive(out):
            if isinstance(ev, protocol.CallReceived):       # the exit flush's Log.write
                assert ev.target is log
                written.append(ev)
                q, msg = sup.send_call(main, 1, 1, Content.standalone([bytes(16)]))
                nested.append(q)
                more += msg + sup.send_return(ev.answer_id)
            elif isinstance(ev, protocol.ReturnReceived):
                returns[ev.question_id] = ev
        return more
    sock.answer = answering
    if run:
        control = d.ask(sup.send_bootstrap()[1]).payload.caps[0].import_id
        q, msg = sup.send_call(control, ENGINE_INTERFACE, 1, Content.standalone([bytes(8)]))
    else:
        q, msg = sup.send_call(main, 1, 0, Content.standalone([bytes(16)]))
    sock.batches.append(msg)
    with pytest.raises(SystemExit) if exits else contextlib.nullcontext():
        while sock.batches:
            engine._pump()
    engine._flush()
    answering(b"".join(sock.writes))
    return q, returns, nested, written, d


def test_the_stack_pointer_of_code_that_does_not_return_is_put_back(tmp_path):
    """Guest code that traps or runs out of fuel never moves its C stack pointer
    (wasm-ld's __stack_pointer global) back up: each such call's frames stayed
    taken in a shared instance, and a few made every later call fail (out of
    stack, or its frames ran into the module's data).  A module exporting the
    global gets it back as it was when the call began."""
    module = tmp_path / "sp.wat"
    module.write_text(f"""(module (memory (export "memory") 2)
  (global $sp (export "__stack_pointer") (mut i32) (i32.const 65536))
  (func $burn {_burn(10 ** 9)})
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (global.set $sp (i32.sub (global.get $sp) (i32.const 8192)))   ;; a frame
    (if (i32.eq (local.get 2) (i32.const 1)) (then (call $burn)))
    (if (i32.eq (local.get 2) (i32.const 2)) (then unreachable))
    (global.set $sp (i32.add (global.get $sp) (i32.const 8192)))
    (i32.const 0)))""")
    engine = Engine(Recorded(), EngineSpec(name="sp", module=str(module), exports=True,
                                           limits=Limits(fuel_per_call=FUEL)))
    d = Driven(engine)
    empty = Content.standalone([bytes(16)])
    for method, says in ((1, "overloaded"), (2, "failed")) * 3:
        ret = d.ask(d.sup.send_call(d.main, 1, method, empty)[1])
        assert ret.payload is None and ret.error_type == says, ret.error
        assert engine._stack_pointer.value(engine.store) == 65536
    assert d.ask(d.sup.send_call(d.main, 1, 0, empty)[1]).payload is not None


@pytest.mark.parametrize("per_call", [False, True], ids=["shared", "per_call"])
def test_a_call_served_while_a_program_s_start_waits_in_a_call_is_served(tmp_path, per_call):
    """A program (run: its _start) that calls a grant and waits: a call that comes
    meanwhile is served, nested, as it always was.  The bound on the params the
    nested calls hold (NESTED_BYTES) summed the params of every frame below, and
    the frame of code that is no dispatch (_start, _initialize, a start function)
    is None: every such call failed 'the engine could not handle this call
    (AttributeError: 'NoneType' object has no attribute 'params')'."""
    from compartments.engine import ENGINE_INTERFACE
    from tests.unit.test_engine_native import Answering
    module = tmp_path / "program.wat"
    module.write_text("""(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "peer")
  (func (export "_start")
    (drop (call $call (call $lookup (i32.const 100) (i32.const 4)) (i64.const 7)
                      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                      (i32.const 0) (i32.const 200))))
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) (i32.const 0)))""")
    engine = Engine(Answering(), EngineSpec(name="program", module=str(module), exports=True,
                                            per_call=per_call))
    d = Driven(engine, [("peer", "compartment", "")], [object()])
    sock, sup, main = d.sock, d.sup, d.main
    empty = Content.standalone([bytes(16)])
    returns, asked = {}, {}

    def answering(out):
        more = b""
        for ev in sup.receive(out):
            if isinstance(ev, protocol.CallReceived):   # _start waits: a call comes
                asked["out"] = ev.answer_id
                asked["nested"], msg = sup.send_call(main, 1, 1, empty)
                more += msg
            elif isinstance(ev, protocol.ReturnReceived):
                returns[ev.question_id] = ev
                if ev.question_id == asked.get("nested"):
                    more += sup.send_return(asked["out"], empty)
        return more
    sock.answer = answering
    control = d.ask(sup.send_bootstrap()[1]).payload.caps[0].import_id
    q, msg = sup.send_call(control, ENGINE_INTERFACE, 1, Content.standalone([bytes(8)]))
    sock.batches.append(msg)
    while sock.batches:
        engine._pump()
    engine._flush()
    answering(b"".join(sock.writes))
    nested = returns[asked["nested"]]
    assert nested.payload is not None, nested.error
    assert returns[q].payload is not None, returns[q].error     # run ends as it should


LEFTOVERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "integration", "guests", "leftovers.wat")


@pytest.mark.parametrize("pool", [None, False], ids=["pooled", "default allocator"])
def test_a_per_call_instance_sees_nothing_an_earlier_call_left_in_memory(pool):
    """Each call writes a secret into its memory, changes a byte its data segment
    initialised, grows the memory and writes the secret into the new page; the
    next call looks for each (guests/leftovers.wat).  A per_call instance's
    memory from wasmtime's pooling allocator is a slot used again call after
    call, and must be handed over as a fresh instance's: zeroed, the data
    segments written again, its size the module's initial one."""
    engine = Engine(Recorded(), EngineSpec(name="left", module=LEFTOVERS, exports=True,
                                           per_call=True), pool=pool)
    assert (engine._pool is not None) == (pool is None)
    d = Driven(engine)
    seen = []
    for _ in range(4):
        ret = d.ask(d.sup.send_call(d.main, 1, 0, Content.standalone([bytes(16)]))[1])
        assert ret.payload is not None, ret.error
        seen.append(struct.unpack_from("<q", ret.payload.content.segments[0], 8)[0])
    assert seen == [0, 0, 0, 0]
    # the guest tells: a shared instance answers what the call before left
    shared = Engine(Recorded(), EngineSpec(name="left", module=LEFTOVERS, exports=True))
    d = Driven(shared)
    seen = [struct.unpack_from("<q", d.ask(d.sup.send_call(
        d.main, 1, 0, Content.standalone([bytes(16)]))[1]).payload.content.segments[0], 8)[0]
        for _ in range(2)]
    assert seen == [0, 15]


NULL_PAGE_AT_START = """(module
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; its start function writes the null page, which protection closes only once
  ;; the instance is made (docs/memory-protection.md)
  (func $start (i32.store (i32.const 16) (i32.const 1)))
  (start $start)
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (i32.store (i32.const 4096) (i32.const 0)) (i32.store (i32.const 4100) (i32.const 2))
    (i64.store (i32.const 4104) (i64.const 0x0000000100000000))
    (i64.store (i32.const 4112) (i64.const 7))
    (drop (call $results_set (i32.const 4096) (i32.const 24) (i32.const 0) (i32.const 0)))
    (i32.const 0)))"""


@pytest.mark.parametrize("pool", [None, False], ids=["pooled", "default allocator"])
def test_a_protected_per_call_instance_s_start_function_meets_a_memory_as_new(tmp_path, pool):
    """Memory protection closes the null page of each per_call instance once it is
    made; its start function, run as it is made, writes there as in any new
    memory.  A pooled instance's memory is a slot used again, which wasmtime
    wipes but leaves protected as the call before left it: the second call's
    start function trapped ('cannot instantiate: ... no-access region')."""
    from compartments.protect import Setting
    path = tmp_path / "nullstart.wat"
    path.write_text(NULL_PAGE_AT_START)
    engine = Engine(Recorded(), EngineSpec(name="np", module=str(path), exports=True,
                                           per_call=True, protect=Setting(4096, "none")),
                    pool=pool)
    assert engine.regions is not None and engine.regions.no_access_end == 4096
    assert (engine._pool is not None) == (pool is None)
    d = Driven(engine)
    for _ in range(3):
        ret = d.ask(d.sup.send_call(d.main, 1, 0, Content.standalone([bytes(16)]))[1])
        assert ret.payload is not None, ret.error


GROWS_TWICE = """(module
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (local $first i32) (local $second i32)
    (local.set $first (memory.grow (i32.const 1)))
    (local.set $second (memory.grow (i32.const 1)))
    (i32.store (i32.const 0) (i32.const 0)) (i32.store (i32.const 4) (i32.const 2))
    (i64.store (i32.const 8) (i64.const 0x0000000100000000))
    (i32.store (i32.const 16) (local.get $first)) (i32.store (i32.const 20) (local.get $second))
    (drop (call $results_set (i32.const 0) (i32.const 24) (i32.const 0) (i32.const 0)))
    (i32.const 0)))"""


@pytest.mark.parametrize("pool", [None, False], ids=["pooled", "default allocator"])
def test_a_per_call_instance_grows_to_its_memory_limit_and_no_further(tmp_path, pool):
    """memory = 128 KiB: each call's instance grows from one page to two, and its
    next memory.grow returns -1, whether the instance's memory is a pool slot
    (sized by the same limit) or the default allocator's."""
    path = tmp_path / "grow.wat"
    path.write_text(GROWS_TWICE)
    engine = Engine(Recorded(), EngineSpec(name="g", module=str(path), exports=True,
                                           per_call=True, limits=Limits(memory=128 << 10)),
                    pool=pool)
    assert (engine._pool is not None) == (pool is None)
    d = Driven(engine)
    for _ in range(3):
        ret = d.ask(d.sup.send_call(d.main, 1, 0, Content.standalone([bytes(16)]))[1])
        assert ret.payload is not None, ret.error
        assert struct.unpack_from("<ii", ret.payload.content.segments[0], 8) == (1, -1)


def test_a_per_call_engine_under_a_tight_address_space_limit_fails_in_words_not_a_panic():
    """The pool's slot is address space wasmtime maps when its engine is made; under
    a `ulimit -v` that left no room for it, wasmtime panicked ("failed to create
    memory pool mapping") and the engine process aborted (SIGABRT, a Rust
    backtrace).  The pool is now left out where its room cannot be had, and what
    happens is what happened before pools: here, an EngineError naming the module
    and the errno, which the supervisor reports as the compartment's failure."""
    import subprocess
    import sys
    code = f"""
import resource
from compartments.engine import Engine, EngineError
from compartments.spec import EngineSpec
from fuzz.hostmem import Recorded
vm = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vm + (32 << 20), resource.RLIM_INFINITY))
try:
    Engine(Recorded(), EngineSpec(name="left", module={LEFTOVERS!r}, exports=True,
                                  per_call=True))
except EngineError as e:
    print(e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__)))))
    assert r.returncode == 0 and "panicked" not in r.stderr, r.stderr[-2000:]
    assert r.stdout == f"cannot instantiate {LEFTOVERS}: Cannot allocate memory (os error 12)\n"
