"""Module rewriting for probes (compartments/instrument.py), run in wasmtime: a
rewritten module computes what the original does with every site off, and
with sites on it reports entries, exits, blocks and stores where they happen."""
import struct

import pytest
import wasmtime

from compartments import instrument
from compartments.instrument import COUNT, EVENTS, EXPORT_PROBES, InstrumentError
from compartments.wasm import engine_config, new_store

ENGINE = wasmtime.Engine(engine_config())

# No name section: every call and element is by number, the case the renumbering is for.
PLAIN = """(module
  (type $t (func (param i32) (result i32)))
  (import "env" "ext" (func (param i32) (result i32)))
  (table 2 funcref)
  (memory (export "memory") 1)
  (global (mut i32) (i32.const 0))
  (elem (i32.const 0) func 1 2)
  (func (param i32) (result i32)                      ;; 1: fib, recursive
    (if (result i32) (i32.lt_u (local.get 0) (i32.const 2))
      (then (local.get 0))
      (else (i32.add (call 1 (i32.sub (local.get 0) (i32.const 1)))
                     (call 1 (i32.sub (local.get 0) (i32.const 2)))))))
  (func (param i32) (result i32)                      ;; 2: early return, br to the body
    (if (i32.eqz (local.get 0)) (then (return (i32.const 100))))
    (block (drop (br_if 1 (i32.const 7) (i32.eq (local.get 0) (i32.const 1)))))
    (i32.store offset=16 (i32.const 0) (local.get 0))
    (i64.store8 (i32.const 40) (i64.const 255))
    (call 0 (local.get 0)))
  (func (export "fib") (param i32) (result i32) (call_indirect (type $t) (local.get 0) (i32.const 0)))
  (func (export "two") (param i32) (result i32) (call_indirect (type $t) (local.get 0) (i32.const 1)))
  (func (export "trap") (call 6))
  (func unreachable)
  (start 7)
  (func (global.set 0 (i32.const 1))))
"""


def _run(module_bytes, hooks=None, flags=None, sites=None):
    hits = []
    module = wasmtime.Module(ENGINE, module_bytes)
    store = new_store(ENGINE)
    store.set_fuel(1 << 40)
    linker = wasmtime.Linker(ENGINE)
    linker.define_func("env", "ext", wasmtime.FuncType([wasmtime.ValType.i32()],
                                                       [wasmtime.ValType.i32()]),
                       lambda x: x * 1000)
    if hooks:
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.define_func(instrument.PROBE_MODULE, "hit", wasmtime.FuncType([i32, i32], []),
                           lambda s, w: hits.append(("hit", s, w)))
        linker.define_func(instrument.PROBE_MODULE, "store",
                           wasmtime.FuncType([i32, i64, i32], []),
                           lambda s, a, n: hits.append(("store", s, a, n)))
    inst = linker.instantiate(store, module)
    ex = inst.exports(store)
    if flags is not None:           # as the engine does it (compartments/probing.py)
        from compartments.probing import EngineProbes
        probes = EngineProbes(sites)
        probes.attach(ex, store)
        probes.set(flags, False)
    return store, ex, hits


def _counters(store, ex, sites):
    data = ex[EXPORT_PROBES].read(store, sites.counters, sites.counters + 8 * len(sites))
    return struct.unpack(f"<{len(sites)}q", data)


@pytest.fixture(scope="module")
def rewritten():
    return instrument.rewrite(PLAIN.encode(), instrument.POINTS)


def test_with_every_site_off_the_module_computes_what_it_did(rewritten):
    out, sites = rewritten
    store0, ex0, _ = _run(wasmtime.wat2wasm(PLAIN))
    store1, ex1, hits = _run(out, hooks=True)
    for x in range(0, 12):
        assert ex1["fib"](store1, x) == ex0["fib"](store0, x)
    for x in (0, 1, 5):
        assert ex1["two"](store1, x) == ex0["two"](store0, x)
    assert ex1["memory"].read(store1, 0, 64) == ex0["memory"].read(store0, 0, 64)
    assert hits == []
    with pytest.raises(wasmtime.Trap):
        ex1["trap"](store1)


def test_function_sites_count_entries_in_the_module(rewritten):
    out, sites = rewritten
    fn = [s for s in range(len(sites)) if sites.kinds[s] == 0]
    flags = bytearray(len(sites))
    for s in fn:
        flags[s] = COUNT
    store, ex, hits = _run(out, hooks=True, flags=bytes(flags), sites=sites)
    ex["fib"](store, 10)
    counts = _counters(store, ex, sites)
    by_function = {sites.functions[s]: counts[s] for s in fn}
    assert by_function[1] == 177          # fib(10) makes 177 calls of function 1
    assert by_function[3] == 1            # the export that called it
    assert hits == []                     # counting needs no host call


def test_every_way_out_of_a_function_reports_its_exit(rewritten):
    out, sites = rewritten
    site = next(s for s in range(len(sites)) if sites.kinds[s] == 0 and sites.functions[s] == 2)
    flags = bytearray(len(sites))
    flags[site] = EVENTS
    store, ex, hits = _run(out, hooks=True, flags=bytes(flags), sites=sites)
    for x in (0, 1, 5):                   # return, br to the body's label, falling off the end
        hits.clear()
        ex["two"](store, x)
        assert [h for h in hits if h[0] == "hit"] == [("hit", site, 0), ("hit", site, 1)], x


def test_stores_report_address_and_size(rewritten):
    out, sites = rewritten
    site = next(s for s in range(len(sites)) if sites.kinds[s] == 2 and sites.functions[s] == 2)
    flags = bytearray(len(sites))
    flags[site] = EVENTS | COUNT
    store, ex, hits = _run(out, hooks=True, flags=bytes(flags), sites=sites)
    ex["two"](store, 5)
    assert [h for h in hits if h[0] == "store"] == [("store", site, 16, 4), ("store", site, 40, 1)]
    assert _counters(store, ex, sites)[site] == 2


def test_block_sites_show_which_arm_ran(rewritten):
    out, sites = rewritten
    blocks = [s for s in range(len(sites)) if sites.kinds[s] == 1 and sites.functions[s] == 1]
    flags = bytearray(len(sites))
    for s in blocks:
        flags[s] = COUNT
    store, ex, _ = _run(out, hooks=True, flags=bytes(flags), sites=sites)
    ex["fib"](store, 1)                   # only the `then` arm
    once = [c for s, c in zip(range(len(sites)), _counters(store, ex, sites)) if s in blocks]
    assert 0 in once and max(once) == 1   # some blocks never ran
    ex["fib"](store, 6)
    twice = [c for s, c in zip(range(len(sites)), _counters(store, ex, sites)) if s in blocks]
    assert all(c > 0 for c in twice)      # both arms now


def test_names_are_kept(tmp_path):
    wat = '(module (func $alpha (export "a") (call $beta)) (func $beta) (func $"with space"))'
    out, sites = instrument.rewrite(wat.encode(), ["functions"])
    names = instrument.function_names(out)
    assert {"alpha", "beta", "with space"} <= set(names.values())
    assert {sites.name(f) for f in sites.functions} == {"alpha", "beta", "with space"}


def test_clones_carry_their_functions_names_even_names_printed_as_annotations():
    """A trap in a probed function's clone names the function: the clone has its name.
    Two functions of one name (C's static functions) print as `(@name ...)`."""
    wat = ('(module (func $a (@name "dup") (export "a") (call $b)) '
           '(func $b (@name "dup")) (func $"q\\"uote" (export "q") unreachable))')
    out, sites = instrument.rewrite(wat.encode(), ["functions"])
    wasmtime.Module(ENGINE, out)
    names = list(instrument.function_names(out).values())
    assert names.count("dup") == 4 and names.count('q"uote') == 2     # each, and its clone
    assert not any(n.startswith("wsuper~0.c") for n in names)


def test_hostile_or_unknown_input_is_refused_with_a_reason():
    with pytest.raises(InstrumentError, match="unknown probe point"):
        instrument.rewrite(b"\0asm\1\0\0\0", ["everything"])
    with pytest.raises(InstrumentError):
        instrument.rewrite(b"\0asm\1\0\0\0garbage", ["functions"])
    with pytest.raises(InstrumentError, match="at most"):
        instrument.rewrite(b"\0asm" + bytes(instrument.MAX_MODULE_BYTES), ["functions"])
    # a module whose own names look like ours gets other names for the probes
    wat = '(module (func $wsuper~0.hit (export "f")) (func $wsuper~0.mem))'
    out, sites = instrument.rewrite(wat.encode(), ["functions"])
    wasmtime.Module(ENGINE, out)
    assert "wsuper~0.hit" in instrument.function_names(out).values()


# Tail calls by every route (direct, through a table, between two functions),
# deep enough that a frame per call overflows wasmtime's stack.
TAIL = """(module
  (type $t (func (param i32) (result i32)))
  (table 2 funcref)
  (elem (i32.const 0) func $down $even)
  (memory 1)
  (func $down (export "down") (param i32) (result i32)
    (i32.store (i32.const 8) (local.get 0))
    (if (result i32) (i32.eqz (local.get 0)) (then (i32.const 42))
      (else (return_call $down (i32.sub (local.get 0) (i32.const 1))))))
  (func $indirect (export "indirect") (param i32) (result i32)
    (if (result i32) (i32.eqz (local.get 0)) (then (i32.const 43))
      (else (return_call_indirect (type $t) (i32.sub (local.get 0) (i32.const 1))
                                  (i32.const 1)))))
  (func $even (export "even") (param i32) (result i32)
    (if (result i32) (i32.eqz (local.get 0)) (then (i32.const 1))
      (else (return_call $odd (i32.sub (local.get 0) (i32.const 1))))))
  (func $odd (param i32) (result i32)
    (if (result i32) (i32.eqz (local.get 0)) (then (i32.const 0))
      (else (return_call $even (i32.sub (local.get 0) (i32.const 1))))))
  (elem (table 0) (i32.const 1) func $indirect))
"""


@pytest.mark.parametrize("points", [("functions",), ("blocks",), ("stores",), instrument.POINTS])
def test_tail_calls_keep_constant_stack_with_sites_on(points):
    """A probed function that tail-calls runs in constant stack as it did: its
    divert into the clone is a tail call too (it was `call` then `return`, and a
    loop of return_calls overflowed the stack as soon as a probe was on)."""
    out, sites = instrument.rewrite(TAIL.encode(), points)
    deep = 300_000                            # a frame each overflows 512 KiB
    store0, ex0, _ = _run(wasmtime.wat2wasm(TAIL))
    expected = {name: ex0[name](store0, deep) for name in ("down", "indirect", "even")}
    store, ex, hits = _run(out, hooks=True, flags=bytes([COUNT]) * len(sites), sites=sites)
    for name, value in expected.items():
        assert ex[name](store, deep) == value, (points, name)
    if "functions" in points:
        fn = {sites.functions[s]: c for s, c in enumerate(_counters(store, ex, sites))
              if sites.kinds[s] == 0}
        assert fn[0] == deep + 1              # every activation of $down counted


@pytest.mark.parametrize("name", ["hit", "store", "other"])
def test_a_module_importing_the_probe_hooks_itself_is_refused(name):
    """The probe hooks are the engine's: a module that imported them itself had
    its own calls linked to them once instrumented (only then: uninstrumented,
    the import is refused), and reported entries, exits and stores that never
    happened, with every probe off."""
    wat = (f'(module (import "{instrument.PROBE_MODULE}" "{name}" (func (param i32 i32))) '
           f'(func (export "f") (call 0 (i32.const 0) (i32.const 0))))')
    with pytest.raises(InstrumentError, match=f"imports {instrument.PROBE_MODULE}.{name}"):
        instrument.rewrite(wat.encode(), instrument.POINTS)


# Imports of a global and a tag whose types name `func`, and calls by number: only
# function imports move the module's own functions (both counted as functions, and
# the call of function 1, the store, was left pointing at the `hit` hook, of its type).
REF_IMPORTS = """(module
  (import "env" "g" (global (ref func)))
  (import "env" "e" (tag (param (ref func))))
  (import "env" "ext" (func (param i32) (result i32)))
  (memory 1)
  (func (param i32 i32) (i32.store (local.get 0) (local.get 1)))
  (func (export "f") (param i32) (result i32)
    (call 1 (i32.const 0) (call 0 (local.get 0)))
    (i32.load (i32.const 0)))
  (elem declare func 2))
"""


def test_only_function_imports_shift_the_function_indices():
    out, sites = instrument.rewrite(REF_IMPORTS.encode(), instrument.POINTS)
    wasmtime.Module(ENGINE, out)
    assert sites.imported == 1 and set(sites.functions) == {1, 2}
    text = instrument._tool(["print", "-"], out).decode()
    calls = [line.split(None, 1)[1] for line in text.splitlines()
             if line.split()[:1] == ["call"]]
    # ext stays 0; the store moves past the two hooks (1, 2) to 3, in f and its clone
    # (printed by the name the rewriter gives a function the module leaves unnamed:
    # what a trap in it says, "function #1", its index as built)
    assert '(func $"function #1" (;3;)' in text
    assert calls.count("0") == 2 and calls.count('$"function #1"') == 2 and "1" not in calls


@pytest.mark.parametrize("memories,address", [
    ("(memory 1) (memory i64 1)", "i32"),
    ("(memory i64 1) (memory 1)", "i64"),
    ('(import "env" "mem" (memory i64 1)) (memory 1)', "i64"),
    ('(import "env" "mem" (memory 1)) (memory i64 1)', "i32"),
])
def test_stores_are_probed_with_memory_0s_address_type(memories, address):
    """The stores probed are memory 0's: its address type is the one the rewriter
    keeps, whatever another memory's is (a 64-bit memory 1 made every function
    with a store fail to validate: the module could not be instrumented)."""
    other = "i64" if address == "i32" else "i32"
    wat = f"""(module {memories}
      (func (export "f") (result i32)
        (i32.store offset=16 ({address}.const 4) (i32.const 7))
        (i64.store 1 ({other}.const 8) (i64.const 1))
        (i32.load ({address}.const 20))))"""
    out, sites = instrument.rewrite(wat.encode(), ["stores"])
    results = []
    for module, flags in ((wasmtime.wat2wasm(wat), None), (out, bytes([EVENTS]) * len(sites))):
        store = new_store(ENGINE)
        store.set_fuel(1 << 20)
        linker = wasmtime.Linker(ENGINE)
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.define(store, "env", "mem", wasmtime.Memory(store, wasmtime.MemoryType(
            wasmtime.Limits(1, None), is_64=address == "i64")))
        linker.define_func(instrument.PROBE_MODULE, "hit", wasmtime.FuncType([i32, i32], []),
                           lambda s, w: None)
        linker.define_func(instrument.PROBE_MODULE, "store",
                           wasmtime.FuncType([i32, i64, i32], []),
                           lambda s, a, n: results.append(("store", a, n)))
        ex = linker.instantiate(store, wasmtime.Module(ENGINE, module)).exports(store)
        if flags is not None:
            from compartments.probing import EngineProbes
            probes = EngineProbes(sites)
            probes.attach(ex, store)
            probes.set(flags, False)
        results.append(ex["f"](store))
    assert results == [7, ("store", 20, 4), 7]


# An exception thrown two functions down and caught above them, by `throw` and by
# `throw_ref` (rethrown from a catch), many times in one guest call.
THROWS = """(module
  (tag $e (param i32))
  (func $thrower (param i32) (if (local.get 0) (then (throw $e (local.get 0)))))
  (func $middle (param i32) (call $thrower (local.get 0)))
  (func $rethrower (param i32)
    (block $h (result exnref)
      (try_table (catch_all_ref $h) (call $middle (local.get 0)))
      (return))
    (throw_ref))
  (func $catcher (export "catch") (param i32) (result i32)
    (block $h (result i32) (try_table (catch $e $h) (call $rethrower (local.get 0)))
      (i32.const -1)))
  (func (export "many") (param i32) (result i32) (local i32)
    (loop $l
      (local.set 1 (i32.add (local.get 1) (call $catcher (local.get 0))))
      (br_if $l (local.tee 0 (i32.sub (local.get 0) (i32.const 1)))))
    (local.get 1)))
"""


def test_an_exception_reports_the_exits_of_the_activations_it_leaves():
    """Every activation an exception leaves reports its exit there, innermost first,
    marked unwound (what 2), and the exception goes on as it did: an entry no
    longer waits for the end of the guest call for its exit (after its callers'
    exits), and the engine's stack of open entries no longer grows per throw."""
    out, sites = instrument.rewrite(THROWS.encode(), instrument.POINTS)
    store0, ex0, _ = _run(wasmtime.wat2wasm(THROWS))
    expected = [ex0["catch"](store0, 0), ex0["catch"](store0, 7), ex0["many"](store0, 50)]
    fn = {sites.functions[s]: s for s in range(len(sites)) if sites.kinds[s] == 0}
    for flag in (COUNT, EVENTS, COUNT | EVENTS):
        store, ex, hits = _run(out, hooks=True, flags=bytes([flag]) * len(sites), sites=sites)
        from compartments.probing import EngineProbes
        probes = EngineProbes(sites)      # the engine's bookkeeping of the same hits
        probes.set(bytes([flag]) * len(sites), False)
        got = []
        for name, arg in (("catch", 0), ("catch", 7), ("many", 50)):
            hits.clear()
            probes.collect()
            got.append(ex[name](store, arg))
            for h in hits:
                if h[0] == "hit":
                    probes.hit(h[1], h[2])
            assert len(probes.stack) == 0, (flag, name)    # every entry has its exit
            if flag & EVENTS and (name, arg) == ("catch", 7):
                assert [(h[1], h[2]) for h in hits if h[0] == "hit" and
                        sites.kinds[h[1]] == 0] == [
                    (fn[3], 0), (fn[2], 0), (fn[1], 0), (fn[0], 0),
                    (fn[0], 2), (fn[1], 2), (fn[2], 2), (fn[3], 1)]
                from compartments.probing import EVENT, EXIT
                exits = [(site, b) for kind, site, _t, _a, b in
                         EVENT.iter_unpack(probes.collect()[1]) if kind == EXIT]
                assert exits == [(fn[0], 1), (fn[1], 1), (fn[2], 1), (fn[3], 0)]
        assert got == expected, flag


def test_flags_set_while_an_inner_instance_runs_reach_the_outer_one_after_it(rewritten):
    """instance = "per_call": a call that comes while another waits gets an instance
    of its own, attached over the waiting one.  A probe turned on or off meanwhile
    is written into the inner instance only; when it ends, the outer one gets the
    flags too (it kept the old ones: counted nothing of a probe added meanwhile, and
    kept calling the hooks of one removed)."""
    from compartments.probing import EngineProbes
    out, sites = rewritten
    fib = next(s for s in range(len(sites)) if sites.kinds[s] == 0 and sites.functions[s] == 1)
    on = bytearray(len(sites))
    on[fib] = COUNT | EVENTS
    probes = EngineProbes(sites)
    outer_store, outer, outer_hits = _run(out, hooks=True)
    probes.attach(outer, outer_store)
    probes.set(bytes(len(sites)), False)
    inner_store, inner, _ = _run(out, hooks=True)
    previous = probes.attach(inner, inner_store)
    probes.set(bytes(on), False)                  # on, while the inner instance runs
    probes.detach(previous)
    outer["fib"](outer_store, 5)
    assert _counters(outer_store, outer, sites)[fib] == 15
    assert outer_hits
    previous = probes.attach(inner, inner_store)
    probes.set(bytes(len(sites)), False)          # off, while the inner instance runs
    probes.detach(previous)
    outer_hits.clear()
    outer["fib"](outer_store, 5)
    assert _counters(outer_store, outer, sites)[fib] == 15 and outer_hits == []


def test_the_probes_prefix_is_found_in_one_pass_over_the_text():
    """A module naming its functions wsuper~0., wsuper~1., ... made the rewriter ask
    the whole text for each prefix in turn: time quadratic in the module (37 s of
    CPU for 1.7 MB, and an 8 MiB one ran into the compiler's CPU limit while every
    other compartment waited to start).  The prefix is still one no id uses."""
    n = 1000
    wat = "(module\n" + "".join(f"(func $wsuper~{i}.x (export \"f{i}\"))\n" for i in range(n)) + \
        '(func $wsuper~00.y) (func $wsuper~99999999.z))'
    printed = instrument._tool(["print", "-"], bytes(wasmtime.wat2wasm(wat))).decode()

    class Text(str):
        asked = 0

        def __contains__(self, item):
            Text.asked += 1
            return super().__contains__(item)
    rewriter = instrument._Rewriter(Text(printed), ["functions"], {})
    assert Text.asked < 10
    assert rewriter.p not in printed
    out, sites = instrument.rewrite(wasmtime.wat2wasm(wat), ["functions"])
    wasmtime.Module(ENGINE, out)
    assert len(sites) == n + 2


def _many_locals(functions: int, count: int) -> bytes:
    """A module of `functions` functions with `count` i32 locals each: a few bytes,
    which wasm-tools prints as `(local i32 i32 ...)`, four bytes a local."""
    def uleb(n):
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)
    body = b"\x01" + uleb(count) + b"\x7f\x0b"
    funcs = uleb(functions) + b"\x00" * functions
    code = uleb(functions) + (uleb(len(body)) + body) * functions
    return (b"\0asm\1\0\0\0" + b"\x01\x04\x01\x60\x00\x00" + b"\x03" + uleb(len(funcs)) +
            funcs + b"\x0a" + uleb(len(code)) + code)


def test_a_module_that_prints_as_far_more_text_than_its_size_is_refused():
    """Ten functions of 50,000 locals are 100 bytes, and 2 MB of text; 10,000 such
    functions (100 KB) were 2 GB, read whole into the compiler child (which has no
    memory limit) and edited there, while no other compartment could start.  The
    text is read as it comes and bounded by the module's size."""
    small = _many_locals(10, 50_000)
    wasmtime.Module.validate(ENGINE, small)
    with pytest.raises(InstrumentError, match="printed more than .* for a module of 100") as e:
        instrument.rewrite(small, ["functions"])
    assert not e.value.transient          # the module is at fault: not tried again
    fine = _many_locals(10, 500)          # a lot of locals, but text of its own size
    out, sites = instrument.rewrite(fine, ["functions"])
    wasmtime.Module(ENGINE, out)
    assert len(sites) == 10


def test_probe_memory_over_the_memory_limit_is_refused_naming_it(tmp_path):
    """limits.memory bounds every memory of a compartment's store, the probe memory
    too: a module of one page whose probe sites needed six failed to start with
    wasmtime's "memory minimum size of 6 pages exceeds memory limits"."""
    import socket

    from compartments.engine import Engine, EngineError
    from compartments.limits import Limits
    from compartments.spec import EngineSpec
    path = tmp_path / "many.wat"
    # 3,000 functions of 4 sites: two pages of probe memory, past one page as six
    # were (9,000 functions took three times as long to instrument and compile)
    path.write_text('(module (memory (export "memory") 1) (func (export "_start")) ' + "".join(
        "(func (param i32) (if (local.get 0) (then nop) (else nop)))" for _ in range(3000))
        + ")")
    for memory, refused in ((64 << 10, True), (1 << 20, False)):
        ours, theirs = socket.socketpair()
        with ours, theirs:
            spec = EngineSpec(name="many", module=str(path), instrument=("blocks",),
                              limits=Limits(memory=memory))
            if refused:
                with pytest.raises(EngineError, match=r"[0-9]+ probe sites \(instrument = "
                                   r"\['blocks'\]\) need 131072 bytes of probe memory, more "
                                   r"than limits.memory \(65536 bytes\)"):
                    Engine(theirs, spec, instantiate=False)
            else:
                engine = Engine(theirs, spec, instantiate=False)
                engine.instantiate()


# Every kind of instruction that writes memory, each once, in memory 0 (reported)
# and in memory 1 (not: the stores probed are memory 0's).  {a}: memory 0's address
# type, {b}: memory 1's, {n}: the length's type of a copy between them.
WRITES = """(module
  (memory $m0 {a} 1) (memory $m1 {b} 1)
  (data $d "wxyz")
  (func (export "f") (param {a}) (result i32)
    ({a}.const 300) (i32.const 1) ({a}.const 5) (memory.fill)
    ({b}.const 300) (i32.const 1) ({b}.const 5) (memory.fill $m1)
    ({a}.const 400) ({a}.const 300) ({a}.const 6) (memory.copy)
    ({a}.const 500) ({b}.const 300) ({n}.const 7) (memory.copy $m0 $m1)
    ({b}.const 500) ({a}.const 300) ({n}.const 7) (memory.copy $m1 $m0)
    ({a}.const 600) (i32.const 1) (i32.const 3) (memory.init $d)
    ({b}.const 600) (i32.const 1) (i32.const 3) (memory.init $m1 $d)
    (v128.store offset=16 (local.get 0) (v128.const i32x4 1 2 3 4))
    (v128.store $m1 ({b}.const 100) (v128.const i32x4 1 2 3 4))
    (v128.store16_lane offset=2 3 (local.get 0) (v128.const i32x4 1 2 3 4))
    (v128.store64_lane $m1 1 ({b}.const 0) (v128.const i32x4 1 2 3 4))
    (i32.atomic.store8 offset=40 (local.get 0) (i32.const 9))
    (i64.atomic.store $m1 ({b}.const 40) (i64.const 9))
    (drop (i64.atomic.rmw32.add_u offset=48 (local.get 0) (i64.const 1)))
    (drop (i32.atomic.rmw16.cmpxchg_u offset=56 (local.get 0) (i32.const 0) (i32.const 2)))
    (drop (i32.atomic.rmw.xchg $m1 ({b}.const 56) (i32.const 2)))
    (i32.add (i32.add (i32.load8_u ({a}.const 304)) (i32.load8_u ({a}.const 405)))
             (i32.add (i32.load8_u ({a}.const 602)) (i32.load offset=16 (local.get 0))))))
"""


@pytest.mark.parametrize("a,b", [("i32", "i32"), ("i64", "i32"), ("i32", "i64"),
                                 ("i64", "i64")])
def test_every_instruction_that_writes_memory_0_is_a_store_site(a, b):
    """`stores` reports every write to memory 0, as docs/instrumentation.md says:
    memory.fill, memory.copy and memory.init (memset, memcpy: their length is the
    size), SIMD stores and lane stores, atomic stores and read-modify-writes.
    Only the plain stores were probed: a probe watching a buffer never saw a
    memcpy into it.  Memory 1's writes are not reported, and the module computes
    what it did, with every site off and with every site on."""
    wat = WRITES.format(a=a, b=b, n="i64" if a == b == "i64" else "i32")
    out, sites = instrument.rewrite(wat.encode(), ["stores"])
    results, reported = [], []
    for module, flags in ((wasmtime.wat2wasm(wat), None), (out, None),
                          (out, bytes([EVENTS]) * len(sites))):
        store, ex, hits = _run(module, hooks=True, flags=flags, sites=sites)
        results.append(ex["f"](store, 100))
        reported.append([(h[2], h[3]) for h in hits if h[0] == "store"])
    assert results[0] == results[1] == results[2], results
    assert reported[:2] == [[], []]
    assert reported[2] == [(300, 5), (400, 6), (500, 7), (600, 3), (116, 16), (102, 2),
                           (140, 1), (148, 4), (156, 2)], (a, b)


@pytest.mark.parametrize("address,offset,told", [
    (-16, 0x20, (1 << 64) - 1),             # address + offset past 2^64 - 1: not 16
    (-16, 0, (1 << 64) - 16),               # at 2^63 or past: unsigned
    (-1, 1, (1 << 64) - 1),
    ((1 << 63) - 8, 8, 1 << 63),            # past 2^63 without wrapping
    (0x200, 0xffff_ffff_ffff_ff00, (1 << 64) - 1),
    (0x80, 0xffff_ffff_ffff_ff00, (1 << 64) - 0x80),
    (8, 8, 16),
])
def test_a_memory64_store_is_reported_at_its_address_never_a_wrapped_one(address,
                                                                          offset, told):
    """A memory64 store's effective address is address + offset, unbounded (past
    the memory it traps, and a `stores` probe reports it first).  The rewriter
    added them in an i64, which wrapped: a store at 2^64 - 16 with offset=32 was
    reported as one at 16, where nothing was written; it is reported at 2^64 - 1,
    past any memory.  The supervisor reads addresses unsigned (one at 2^63 or past
    was negative, and address 0 to an analysis)."""
    wat = f"""(module (memory i64 1)
      (func (export "f") (param i64)
        (i64.store offset={offset} (local.get 0) (i64.const 1))))"""
    out, sites = instrument.rewrite(wat.encode(), ["stores"])
    store, ex, hits = _run(out, hooks=True, flags=bytes([EVENTS]) * len(sites), sites=sites)
    expect_trap = told + 8 > 65536
    try:
        ex["f"](store, address)
        trapped = False
    except wasmtime.Trap:
        trapped = True
    assert trapped == expect_trap
    ((_kind, site, reported, size),) = hits
    assert (reported & ((1 << 64) - 1), size) == (told, 8)
    from supervisor import probes as P
    from compartments.probing import EVENT, STORE
    r = P.Registry(lambda: 0, {"c": ("stores",)})
    r.sites["c"] = sites
    r.add(P.spec("c", "s", "stores", events=True), sites)
    sub = r.subscribe(P.Subscriber(["c"]))
    r.engine_events("c", EVENT.pack(STORE, site, 1, reported, size))
    (event,), _ = sub.take(10)
    assert event["address"] == told
    assert r.list("c")[0]["range"] == [told, told + 8]


# Each names what the module does not have, and what the rewriting adds after its
# own: the probe memory (memory 1), `wsuper:on` (global 0 of a module without
# globals), the functions appended (the clones, the hit and store helpers), and
# the hooks' function types.
PAST_THE_MODULE = {
    "a memory": '(memory 1) (func (export "f") (i32.store8 1 (i32.const 0) (i32.const 3)))',
    "a load": '(memory 1) (func (export "f") (result i32) (i32.load 1 (i32.const 0)))',
    "a global": '(memory 1) (func (export "f") (global.set 0 (i32.const 1)))',
    "a function": '(memory 1) (func (export "f") (call 2 (i32.const 0) (i32.const 2)))',
    "a reference": '(memory 1) (elem declare func 3) (func (export "f") (drop (ref.func 3)))',
    # the probe hooks' types come after the module's own too
    "a type": '(memory 1) (table 1 funcref) (func (export "f") '
              '(call_indirect (type 2) (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0)))',
}


@pytest.mark.parametrize("what", PAST_THE_MODULE)
def test_an_invalid_module_is_refused_before_its_references_reach_the_probes(what):
    """A module that names a memory, global or function it does not have is invalid,
    and stays so: rewritten, those indices named the probe memory, `wsuper:on` and
    the functions the rewriting adds, the result validated, and the module wrote
    its own flags and counters and called the probe hooks (forged events).  The
    supervisor's check refuses the module as it is, but a module file replaced while
    the system runs is read again at the next start, where only this stands."""
    wat = f"(module {PAST_THE_MODULE[what]})"
    with pytest.raises(InstrumentError, match="not valid WebAssembly"):
        instrument.rewrite(wat.encode(), instrument.POINTS)
    with pytest.raises(InstrumentError, match="not valid WebAssembly"):
        instrument.rewrite(bytes(wasmtime.wat2wasm(wat)), ["functions"])


@pytest.mark.parametrize("wat", ["(module)", "(module $m)", "(module (type (func (param f32))))",
                                 "(module (rec (type (struct)) (type (func))))",
                                 "(module (memory 1))"])
def test_a_module_without_functions_is_rewritten_too(wat):
    """A valid module with no function (nothing, or only types) failed to be
    instrumented: `(module)` prints as one line, so its end was not found ('no end of
    module'), and with only types the hooks went after the module's end ('extra
    tokens remaining after parse')."""
    out, sites = instrument.rewrite(wat.encode(), instrument.POINTS)
    wasmtime.Module(ENGINE, out)
    assert len(sites) == 0


UNNAMED_TRAPS = """(module
  (import "env" "ext" (func (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (param i32) (result i32) unreachable)
  (func $named (param i32) (result i32) (i32.div_u (local.get 0) (i32.const 0)))
  (func (export "unnamed") (param i32) (result i32) (call 1 (local.get 0)))
  (func (export "named") (param i32) (result i32) (call $named (local.get 0))))
"""


@pytest.mark.parametrize("export", ["unnamed", "named"])
def test_a_trap_is_reported_alike_with_probe_sites_off_on_or_not_compiled_in(export):
    """An outside review: a trap in a function the name section does not name was
    reported "(in function #1)" as built, "(in function #3)" with probe sites
    compiled in and off (the index in the rewritten module, where the probe hooks
    are imported first), and "(in wsuper~0.c0)" with them on (the rewriter's own id
    for the clone, which wasm-tools wrote into the name section): instrumentation
    changed what a trap says, and named functions the module does not have."""
    from compartments.engine import _trap_reason
    from compartments.probing import EngineProbes
    wasm = bytes(wasmtime.wat2wasm(UNNAMED_TRAPS))
    out, sites = instrument.rewrite(wasm, ["functions", "blocks", "stores"])

    def reason(module, flag=None):
        store, ex, _hits = _run(module, hooks=flag is not None)
        if flag is not None:
            probes = EngineProbes(sites)
            probes.attach(ex, store)
            probes.set(bytes([flag] * len(sites)), False)
        with pytest.raises(wasmtime.Trap) as e:
            ex[export](store, 5)
        return _trap_reason(e.value)
    want = reason(wasm)
    assert want.endswith("(in function #1)" if export == "unnamed" else "(in named)"), want
    assert [reason(out, flag) for flag in (0, COUNT, COUNT | EVENTS)] == [want] * 3


def test_a_trap_in_a_probe_sites_helper_names_the_guests_function(tmp_path):
    """An outside review: with a `stores` site on, the stack of a recursive function
    that stores ran out in the helper its site calls, and the trap said "call stack
    exhausted (in wsuper~0.st)", a function the module does not have, where without
    the probe it said "(in rec)".  A real engine, sites off and on."""
    import socket

    from compartments.engine import Engine, _CallError
    from compartments.spec import EngineSpec
    path = tmp_path / "rec.wat"
    path.write_text('''(module (memory (export "memory") 1)
      (func $rec (param i32) (result i32)
        (i32.store (i32.const 16) (local.get 0))
        (call $rec (i32.add (local.get 0) (i32.const 1))))
      (func (export "_start") (drop (call $rec (i32.const 0)))))''')
    said = []
    for points, flag in (((), None), (("stores",), 0), (("stores",), COUNT),
                         (("stores", "functions"), COUNT | EVENTS)):
        ours, theirs = socket.socketpair()
        with ours, theirs:
            engine = Engine(theirs, EngineSpec(name="rec", module=str(path),
                                               instrument=points), instantiate=False)
            engine.instantiate()
            if flag is not None:
                engine.probes.set(bytes([flag] * len(engine.probes.sites)), False)
            with pytest.raises(_CallError) as e:
                engine._guest(engine.start_func, fuel=1 << 40)
            said.append(e.value.reason if hasattr(e.value, "reason") else str(e.value))
    assert said[0].endswith("call stack exhausted (in rec)"), said
    assert said == [said[0]] * 4, said


def test_a_recursion_that_runs_as_built_still_runs_with_its_function_probe_on(tmp_path):
    """A clone's frame is larger than its function's (the sites' local, blocks and
    checks), and wasmtime bounds the wasm stack in bytes: a recursion 10,919 deep
    ran as built and trapped "call stack exhausted" at 8,189 once a `functions`
    probe was turned on, so turning a probe on (an operator watching) made a
    working compartment fail.  An engine of a module rewritten with probe sites has
    room for the clones' frames (wasm.engine_config(probed=True)).  A real engine,
    the depth found as built."""
    import socket

    from compartments.engine import Engine, _CallError
    from compartments.spec import EngineSpec
    path = tmp_path / "deep.wat"
    path.write_text('''(module (memory (export "memory") 1)
      (func $down (param i32)
        (if (local.get 0) (then (call $down (i32.sub (local.get 0) (i32.const 1))))))
      (func (export "_start") (call $down (i32.load (i32.const 0)))))''')

    def engine(points):
        ours, theirs = socket.socketpair()
        e = Engine(theirs, EngineSpec(name="deep", module=str(path), instrument=points),
                   instantiate=False)
        e.instantiate()
        return e, (ours, theirs)

    def runs(e, depth: int) -> bool:
        e.memory.write(e.store, struct.pack("<i", depth), 0)
        try:
            e._guest(e.start_func, fuel=1 << 40)
        except _CallError as err:
            assert "call stack exhausted" in str(getattr(err, "reason", err)), err
            return False
        return True

    plain, socks = engine(())
    with socks[0], socks[1]:
        lo, hi = 1, 1 << 22            # the deepest recursion the module runs as built
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if runs(plain, mid) else (lo, mid - 1)
    assert 1000 < lo < 1 << 22, lo
    for points, flag in ((("functions",), COUNT), (("functions",), COUNT | EVENTS),
                         (("functions", "blocks", "stores"), COUNT)):
        probed, socks = engine(points)
        with socks[0], socks[1]:
            probed.probes.set(bytes([flag] * len(probed.probes.sites)), False)
            assert runs(probed, lo), (points, flag, lo)


def test_an_engines_probe_answers_never_outgrow_what_the_supervisor_accepts(tmp_path):
    """Engine.describe and Engine.collect were answered whatever their size: the
    supervisor accepts limits.message_size (and 64 KiB of headers) from an engine,
    so a module whose sites take more to describe (6 MB of function names made of
    control characters, escaped six times over in JSON: a 36 MB answer) or to
    collect (8 bytes of counter per site: 20,000 sites under message_size = 64 KiB)
    had its engine cut off as a protocol error ("message of 36032000 bytes exceeds
    the limit") at every probe added, a declared one at every start, until the
    compartment failed for good.  An answer that cannot fit is refused, the engine
    serving on; events past what fits are counted dropped."""
    from capnp_schemas import payloads, protocol
    from capnp_schemas.protocol import Content
    from compartments import probing
    from compartments.engine import ENGINE_INTERFACE, Engine
    from compartments.limits import Limits
    from compartments.spec import EngineSpec
    from fuzz.hostmem import Recorded
    names = "".join(f'(func ${"x" * 40}{i} (param i32) (if (local.get 0) (then nop)))'
                    for i in range(5000))
    path = tmp_path / "many.wat"
    path.write_text(f'(module (memory (export "memory") 1) {names} (func (export '
                    f'"wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) i32.const 0))')
    limit = 64 << 10
    engine = Engine(Recorded(), EngineSpec(name="many", module=str(path), exports=True,
                                           instrument=("functions", "blocks"),
                                           limits=Limits(message_size=limit, memory=1 << 20)))
    sup = protocol.Connection("supervisor", max_message_words=(limit >> 3) + 8192)
    sock = engine.sock

    def ask(msg):
        sock.batches.append(msg)
        engine._pump()
        engine._flush()
        return sup.receive(b"".join(sock.writes.pop() for _ in range(len(sock.writes))))

    [boot] = ask(sup.send_bootstrap()[1])
    control = boot.payload.caps[0].import_id
    ask(sup.send_call(control, ENGINE_INTERFACE, 0, payloads.grants_content([]))[1])
    sites = len(engine.probes.sites)
    assert 8 * sites > 2 * limit and len(engine.probes.describe()) > 2 * limit
    [described] = ask(sup.send_call(control, ENGINE_INTERFACE, probing.DESCRIBE,
                                    Content.standalone([bytes(8)]))[1])
    assert described.payload is None and "limits.message_size" in described.error, described
    [collected] = ask(sup.send_call(control, ENGINE_INTERFACE, probing.COLLECT,
                                    Content.standalone([bytes(8)]))[1])
    assert collected.payload is None and "limits.message_size" in collected.error, collected
    [again] = ask(sup.send_bootstrap()[1])           # still serving: not cut off
    assert again.payload is not None


def test_counters_that_fill_a_whole_message_size_are_still_collected(tmp_path):
    """The supervisor takes message_size and 64 KiB of headers of an engine: 8,192
    sites' counters, exactly a 64 KiB message_size, are collected whole."""
    from capnp_schemas import payloads, protocol
    from capnp_schemas.protocol import Content
    from compartments import probing
    from compartments.engine import ENGINE_INTERFACE, Engine
    from compartments.limits import Limits
    from compartments.spec import EngineSpec
    from fuzz.hostmem import Recorded
    path = tmp_path / "full.wat"
    path.write_text('(module (memory (export "memory") 1) ' + "(func)" * 8191 +
                    ' (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)'
                    ' i32.const 0))')
    limit = 64 << 10
    engine = Engine(Recorded(), EngineSpec(name="full", module=str(path), exports=True,
                                           instrument=("functions",),
                                           limits=Limits(message_size=limit, memory=1 << 20)))
    sup = protocol.Connection("supervisor", max_message_words=(limit >> 3) + 8192)
    sock = engine.sock

    def ask(msg):
        sock.batches.append(msg)
        engine._pump()
        engine._flush()
        return sup.receive(b"".join(sock.writes.pop() for _ in range(len(sock.writes))))

    [boot] = ask(sup.send_bootstrap()[1])
    control = boot.payload.caps[0].import_id
    ask(sup.send_call(control, ENGINE_INTERFACE, 0, payloads.grants_content([]))[1])
    assert 8 * len(engine.probes.sites) == limit
    [collected] = ask(sup.send_call(control, ENGINE_INTERFACE, probing.COLLECT,
                                    Content.standalone([bytes(8)]))[1])
    assert collected.payload is not None, collected.error
