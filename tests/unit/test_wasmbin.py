"""compartments/wasmbin.py: reading what protection needs from a module's bytes, and
the checks inserted before bulk-memory instructions (run here with real wasmtime,
without page protection: the checks alone decide)."""
import os

import wasmtime
from hypothesis import given, settings, strategies as st

import pytest

from compartments import wasm, wasmbin
from compartments.wasmbin import BinaryError, Unsupported

BULK = """(module
  (memory (export "memory") 2)
  (data (i32.const 4096) "read-only")
  (data $p "passive")
  (func (export "fill") (param i32 i32) (memory.fill (local.get 0) (i32.const 7) (local.get 1)))
  (func (export "copy") (param i32 i32 i32)
    (memory.copy (local.get 0) (local.get 1) (local.get 2)))
  (func (export "init") (param i32 i32) (memory.init $p (local.get 0) (i32.const 0) (local.get 1)))
  (func (export "load8") (param i32) (result i32) (i32.load8_u (local.get 0))))"""


def _wasm(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


REGIONS = (4096, 4096, 8192)        # no-access [0, 4096), read-only [4096, 8192)


def _checked(wat_or_bytes, regions=REGIONS):
    data = _wasm(wat_or_bytes) if isinstance(wat_or_bytes, str) else wat_or_bytes
    return wasmbin.add_bulk_checks(data, *regions)


def _instance(data: bytes):
    engine = wasmtime.Engine(wasm.engine_config())
    store = wasm.new_store(engine)
    store.set_fuel(10 ** 9)
    return store, wasmtime.Instance(store, wasmtime.Module(engine, data), []).exports(store)


def _trap_address(call):
    """The address a trap names, or None if the call returned."""
    try:
        call()
    except wasmtime.Trap as e:
        import re
        m = re.search(r"memory fault at wasm address (0x[0-9a-f]+)", e.message)
        assert m, e.message
        return int(m.group(1), 16)
    return None


def test_each_bulk_instruction_gets_a_check_and_the_module_stays_valid():
    checked = _checked(BULK)
    wasmtime.Module.validate(wasmtime.Engine(wasm.engine_config()), checked)
    # functions and a type were added; the originals kept their indices
    store, ex = _instance(checked)
    ex["fill"](store, 9000, 4)
    assert ex["load8"](store, 9003) == 7
    assert sorted(ex) == ["copy", "fill", "init", "load8", "memory"]     # nothing exported


def test_no_regions_no_checks_and_regions_must_be_in_order():
    assert wasmbin.add_bulk_checks(_wasm(BULK), 0, 8192, 8192) is None
    with pytest.raises(ValueError):
        wasmbin.add_bulk_checks(_wasm(BULK), 8192, 4096, 12288)


@pytest.mark.parametrize("regions, call, args, traps", [
    ((4096, 4096, 4096), "fill", (5000, 4), False),       # only a null page
    ((4096, 4096, 4096), "copy", (9000, 100, 4), True),
    ((0, 8192, 12288), "fill", (0, 4), False),            # only read-only, not from 0
    ((0, 8192, 12288), "fill", (12000, 400), True),
    ((0, 8192, 12288), "copy", (13000, 0, 4), False),
    ((8192, 2 ** 31, 2 ** 32 - 65536), "fill", (70000, 4), False),  # large constants
    ((8192, 2 ** 31, 2 ** 32 - 65536), "fill", (2 ** 31 + 8, 4), "out of bounds"),
])
def test_checks_for_other_regions(regions, call, args, traps):
    store, ex = _instance(_checked(BULK, regions))
    if traps:
        with pytest.raises(wasmtime.Trap, match="unreachable" if traps is True else traps):
            ex[call](store, *args)
    else:
        ex[call](store, *args)


@pytest.mark.parametrize("call, args, address", [
    ("fill", (0, 4), 0x0),              # into the no-access region
    ("fill", (4000, 200), 0xfa0),       # starts below the read-only region, in no-access
    ("fill", (5000, 10), 5000),         # into the read-only region
    ("fill", (8000, 300), 8000),
    ("copy", (4096, 9000, 4), 4096),    # destination read-only
    ("copy", (9000, 16, 4), 16),        # source no-access
    ("copy", (9000, 4090, 16), 4090),   # source runs from no-access into read-only
    ("init", (6000, 3), 6000),
])
def test_a_bulk_instruction_that_would_touch_a_protected_page_faults_there_first(call, args,
                                                                                address):
    """Without page protection the check's own access does not fault: the
    `unreachable` after it traps.  With it (test_protect.py), it faults at `address`."""
    store, ex = _instance(_checked(BULK))
    with pytest.raises(wasmtime.Trap, match="unreachable"):
        ex[call](store, *args)
    assert ex["load8"](store, 4096) == ord("r")          # nothing was written
    assert ex["load8"](store, address) in (0, ord("r"), ord("e"), ord("a"))


@pytest.mark.parametrize("call, args", [
    ("fill", (8192, 300)),              # read-write
    ("fill", (0, 0)),                   # touches nothing
    ("fill", (4096, 0)),
    ("copy", (9000, 4096, 9)),          # from read-only is a read
    ("copy", (8192, 9000, 64)),
    ("init", (8200, 7)),
])
def test_a_bulk_instruction_on_read_write_memory_runs_as_before(call, args):
    store, ex = _instance(_checked(BULK))
    ex[call](store, *args)


def test_a_bulk_instruction_out_of_bounds_still_traps_as_out_of_bounds():
    store, ex = _instance(_checked(BULK))
    with pytest.raises(wasmtime.Trap, match="out of bounds"):
        ex["fill"](store, 131000, 1000)


def test_bulk_instructions_on_another_memory_are_not_checked():
    data = _wasm("""(module (memory (export "memory") 1) (memory $b 1)
      (func (export "fill") (param i32 i32)
        (memory.fill $b (local.get 0) (i32.const 1) (local.get 1)))
      (func (export "copy_in") (param i32 i32 i32)
        (memory.copy 0 $b (local.get 0) (local.get 1) (local.get 2)))
      (func (export "copy_out") (param i32 i32 i32)
        (memory.copy $b 0 (local.get 0) (local.get 1) (local.get 2))))""")
    store, ex = _instance(_checked(data))
    ex["fill"](store, 0, 100)                            # memory $b: nothing protected there
    with pytest.raises(wasmtime.Trap):
        ex["copy_in"](store, 0, 0, 4)                    # writes memory 0's no-access page
    with pytest.raises(wasmtime.Trap):
        ex["copy_out"](store, 0, 0, 4)                   # reads it
    ex["copy_out"](store, 0, 8192, 4)


def test_a_module_without_bulk_instructions_is_left_as_it_is():
    assert _checked('(module (memory 1) (func (drop (i32.const 0xfc0b))))') is None
    assert _checked("(module)") is None


def test_checks_fit_modules_with_every_kind_of_instruction_around_them():
    """SIMD, atomics, GC types, exceptions, tail calls, reference types, wide
    arithmetic: the decoder walks them all to find the bulk instructions."""
    data = _wasm("""(module
      (type $s (struct (field (mut i32)) (field i8)))
      (rec (type $a (array (mut i16))) (type $f (func (param (ref null $a)))))
      (tag $t (param i32))
      (import "m" "g" (global $g i32))
      (import "m" "f" (func $imp (param i32)))
      (memory (export "memory") 1 1)
      (table $tb 2 funcref)
      (global $m (mut i32) (i32.add (global.get $g) (i32.const 1)))
      (elem declare func $k)
      (func $k (param i32) (result i32)
        (local v128 (ref null $s))
        (local.set 1 (v128.load offset=16 align=4 (i32.const 0)))
        (v128.store (i32.const 32) (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
            (local.get 1) (v128.const i64x2 1 2)))
        (drop (i32x4.extract_lane 3 (local.get 1)))
        (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1)))
        (atomic.fence)
        (local.set 2 (struct.new $s (i32.const 1) (i32.const 2)))
        (drop (ref.test (ref $s) (local.get 2)))
        (block $out (result i32)
          (try_table (catch $t $out) (throw $t (i32.const 5)))
          (i32.const 0))
        (drop)
        (drop (i64.add128 (i64.const 1) (i64.const 2) (i64.const 3) (i64.const 4)))
        (drop)
        (block $b (br_table $b $b (i32.const 0)))
        (memory.fill (local.get 0) (i32.const 0) (i32.const 8))
        (drop (ref.func $k))
        (if (local.get 0) (then (return_call $k (i32.const 0))))
        (call_indirect $tb (param i32) (i32.const 1) (i32.const 0))
        (i32.const 3))
      (func (export "f") (param i32) (result i32) (call $k (local.get 0))))""")
    engine = wasmtime.Engine(wasm.engine_config())
    wasmtime.Module.validate(engine, data)
    checked = _checked(data)
    wasmtime.Module.validate(engine, checked)
    assert checked.count(b"\xfc\x0b\x00") == 1


def test_names_are_kept_and_the_checks_are_named():
    data = _wasm(BULK.replace('(func (export "fill")', '(func $my_fill (export "fill")'))
    for module in (data, _wasm(BULK)):          # with a name section, and without one
        store, ex = _instance(_checked(module))
        with pytest.raises(wasmtime.Trap) as e:
            ex["fill"](store, 5000, 1)
        names = [f.func_name for f in e.value.frames]
        assert names == [wasmbin.CHECK_FUNCTION + "_write",
                         "my_fill" if module is data else None]


# ---------------------------------------------------------------- facts


def test_facts_find_memory_data_and_names():
    data = _wasm("""(module (memory (export "memory") 3)
      (data $ro (i32.const 4096) "abc") (data $rw (i32.const 8192) "de") (data $p "x"))""")
    f = wasmbin.facts(data)
    assert f.memory_problem is None and f.min_pages == 3 and not f.bulk
    assert f.segments == ((4096, 4099, "ro"), (8192, 8194, "rw"))
    assert f.rodata is None and f.declared is None          # no segment named .rodata
    named = wasmbin.facts(_wasm('(module (memory (export "memory") 1) '
                                '(data $.rodata (i32.const 1024) "abc"))'))
    assert named.rodata == (1024, 1027)


@pytest.mark.parametrize("offset, where", [
    ("(global.get $g)", 16),                                    # an immutable global
    ("(offset (i32.add (global.get $g) (i32.const 8)))", 24),    # extended-const
    ("(offset (i32.sub (i32.mul (i32.const 4) (global.get $h)) (i32.const 4)))", 60),
    ("(offset (i32.add (i32.const -1) (i32.const 4097)))", 4096),   # wraps at 2^32
])
def test_data_placed_by_a_constant_expression_is_found_where_wasmtime_puts_it(offset, where):
    """A segment's offset may be any constant expression: one that reads a global or
    does extended-const arithmetic lands where wasmtime evaluates it, and the
    no-access check must see it there (it once saw only a lone i32.const)."""
    wat = f"""(module (global $g i32 (i32.const 16)) (global $h i32 (global.get $g))
      (memory (export "memory") 2) (data $d {offset} "data"))"""
    f = wasmbin.facts(_wasm(wat))
    assert f.segments == ((where, where + 4, "d"),) and f.unknown_segments == 0
    store = wasm.new_store(wasmtime.Engine(wasm.engine_config()))
    store.set_fuel(1000)
    instance = wasmtime.Instance(store, wasmtime.Module(store.engine, _wasm(wat)), [])
    memory = instance.exports(store)["memory"]
    assert bytes(memory.read(store, where, where + 4)) == b"data"


def test_data_placed_by_a_mutable_or_imported_global_is_unknown():
    f = wasmbin.facts(_wasm("""(module (import "m" "g" (global $g i32))
      (memory (export "memory") 1) (data (global.get $g) "x"))"""))
    assert f.segments == () and f.unknown_segments == 1


def test_what_compiles_but_cannot_be_instantiated_is_seen():
    assert wasmbin.instantiation_problem(_wasm(
        '(module (memory 1) (data (i32.const 65535) "a") (data (i32.const 0) ""))')) is None
    assert "shared" in wasmbin.instantiation_problem(_wasm("(module (memory 1 1 shared))"))
    assert "past the end" in wasmbin.instantiation_problem(_wasm(
        '(module (memory 1) (data (i32.const 65535) "ab"))'))
    # computed from an imported global: not judged here
    assert wasmbin.instantiation_problem(_wasm(
        '(module (import "m" "g" (global i32)) (memory 1) (data (global.get 0) "ab"))')) is None
    # a 64-bit memory's offsets are i64 (test_segments_of_64_bit_memories_and_tables_...)
    assert "past the end" in wasmbin.instantiation_problem(_wasm(
        '(module (memory i64 1) (data (i64.const 65535) "ab"))'))
    # element segments, in each of their forms
    assert "element segment 0 at [1, 3)" in wasmbin.instantiation_problem(_wasm(
        "(module (table 2 funcref) (func $f) (elem (i32.const 1) $f $f))"))
    assert "table 1" in wasmbin.instantiation_problem(_wasm(
        "(module (table 1 funcref) (table 2 funcref) (func $f) "
        "(elem (table 1) (i32.const 1) func $f $f))"))
    assert "[5, 7)" in wasmbin.instantiation_problem(_wasm(
        "(module (global i32 (i32.const 5)) (table 6 funcref) (func $f) "
        "(elem (global.get 0) funcref (ref.func $f) (ref.null func)))"))
    assert wasmbin.instantiation_problem(_wasm(
        "(module (table 3 funcref) (func $f) (elem (i32.const 1) $f $f) (elem func $f $f) "
        "(elem declare func $f) (elem funcref (ref.func $f)) "
        "(elem declare funcref (ref.func $f)))")) is None


@pytest.mark.parametrize("wat, problem", [
    # a memory64's or table64's offsets are i64 expressions, constants, globals and
    # extended-const alike: read as i32 they were unknown, so such a module passed
    # `wsuper check` and `up`'s check and failed every start
    ('(module (memory i64 1) (data (i64.const 65530) "0123456789"))',
     "data segment 0 at [0xfffa, 0x10004)"),
    ('(module (memory i64 1) (data (i64.const -1) "0"))', "data segment 0 at [0xffffffffffffffff"),
    ('(module (memory i64 1) (global i64 (i64.const 65000)) (data (global.get 0) "x") '
     '(data (i64.add (global.get 0) (i64.const 600)) "0123456789"))', "data segment 1 at"),
    ('(module (memory i64 1) (data (i64.mul (i64.const 2) (i64.const 32768)) "x"))',
     "data segment 0 at [0x10000"),
    ('(module (table i64 1 funcref) (elem (table 0) (i64.const 1) func 0) (func))',
     "element segment 0 at [1, 2)"),
    ('(module (global i64 (i64.const 4)) (table i64 5 funcref) (func $f) '
     '(elem (table 0) (global.get 0) funcref (ref.func $f) (ref.null func)))', "[4, 6)"),
    # and what fits, or reads a global of another type or a mutable one, is not refused
    ('(module (memory i64 1) (data (i64.const 65526) "0123456789"))', None),
    ('(module (memory 1) (global i64 (i64.const 99999)) (global (mut i32) (i32.const 99999)) '
     '(data (i32.const 65526) "0123456789"))', None),
    ('(module (table i64 2 funcref) (elem (table 0) (i64.const 1) func 0) (func))', None),
])
def test_segments_of_64_bit_memories_and_tables_are_judged_too(wat, problem):
    found = wasmbin.instantiation_problem(_wasm(wat))
    engine = wasmtime.Engine(wasm.engine_config())          # and wasmtime agrees
    store = wasm.new_store(engine)
    store.set_fuel(1 << 20)
    module = wasmtime.Module(engine, _wasm(wat))
    if problem is None:
        assert found is None
        wasmtime.Instance(store, module, [])
    else:
        assert problem in found
        with pytest.raises(wasmtime.Trap):
            wasmtime.Instance(store, module, [])


@pytest.mark.parametrize("wat, problem", [
    ("(module)", "no memory"),
    ("(module (memory 1))", "not exported"),
    ('(module (memory (export "memory") i64 1))', "64-bit"),
    ('(module (memory (export "memory") 1 1 shared))', "shared"),
    ('(module (import "m" "mem" (memory 1)) (export "memory" (memory 0)))', "imported"),
    ('(module (memory 1) (memory (export "memory") 1))', "not exported"),
])
def test_memories_that_cannot_be_protected_say_why(wat, problem):
    assert problem in wasmbin.facts(_wasm(wat)).memory_problem


def test_the_declaration_round_trips_and_replaces_an_old_one():
    data = _wasm('(module (memory (export "memory") 1))')
    once = wasmbin.with_declaration(data, 4096, 4096, 8192)
    twice = wasmbin.with_declaration(once, 0, 8192, 12288)
    assert wasmbin.facts(once).declared == (4096, 4096, 8192)
    assert wasmbin.facts(twice).declared == (0, 8192, 12288)
    assert twice.count(wasmbin.CUSTOM_SECTION.encode()) == 1
    wasmtime.Module.validate(wasmtime.Engine(), twice)


def _custom(name: bytes, payload: bytes) -> bytes:
    body = bytes([len(name)]) + name + payload
    return b"\x00" + wasmbin._uleb(len(body)) + body


@pytest.mark.parametrize("payload, why", [
    (b"\x02\x00\x00\x00", "version 2"),
    (b"\x01\x80\x20\x00\x00", "out of order"),
    (b"\x01\x00\x00", "unexpected end"),
    (b"\x01\x00\x00\x00\x00", "bytes after"),
    (b"\x01\xff\xff\xff\xff\xff\x00\x00", "too"),
])
def test_a_malformed_declaration_is_reported_not_trusted(payload, why):
    data = _wasm('(module (memory (export "memory") 1))') + _custom(b"wsuper.protect", payload)
    f = wasmbin.facts(data)
    assert f.declared is None and why in f.declared_problem


@pytest.mark.parametrize("first, second", [
    (b"\x01\x00\x00\x00", b"\x01\x80\x20\x80\x20\x80\x40"),    # two that differ
    (b"\x09", b"\x01\x80\x20\x80\x20\x80\x40"),                    # malformed, then good
    (b"\x01\x80\x20\x80\x20\x80\x40", b"\x09"),                    # good, then malformed
    (b"\x01\x80\x20\x80\x20\x80\x40",) * 2,                         # the same twice
])
def test_a_module_with_two_declarations_declares_none_and_says_so(first, second):
    """An outside review (r266): the last wsuper.protect section was taken, without a
    word: two that said different things were protected as the second says (a
    reader of the first sees another layout), a malformed one before a good one
    was protected, a good one before a malformed one was not."""
    data = _wasm('(module (memory (export "memory") 1))') + \
        _custom(b"wsuper.protect", first) + _custom(b"wsuper.protect", second)
    wasmtime.Module.validate(wasmtime.Engine(), data)
    f = wasmbin.facts(data)
    assert f.declared is None and "2 wsuper.protect sections" in f.declared_problem


def test_a_malformed_name_section_names_nothing():
    data = _wasm('(module (memory (export "memory") 1) (data (i32.const 0) "x"))')
    for junk in (b"\x09\x05\x01", b"\x09\x01\xff", b"\x01\xff\xff\xff\x0f"):
        assert wasmbin.facts(data + _custom(b"name", junk)).segments == ((0, 1, ""),)


def test_names_from_a_module_are_made_printable():
    data = _wasm('(module (memory (export "memory") 1) (data $x (i32.const 0) "x"))')
    data = data.replace(b"\x01x", b"\x01\x1b")               # the segment's name: ESC
    assert wasmbin.facts(data).segments[0][2] == "?"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 400))
def test_hostile_bytes_give_binary_error_or_unsupported_never_anything_else(junk, cut):
    base = _wasm(BULK) + _custom(b"wsuper.protect", b"\x01\x00\x00\x00")
    for data in (junk, wasmbin.MAGIC + junk, base[:cut] + junk, base[:cut]):
        for fn in (wasmbin.facts, wasmbin.table_minimums,
                   lambda d: wasmbin.add_bulk_checks(d, *REGIONS)):
            try:
                fn(data)
            except (BinaryError, Unsupported):
                pass


@pytest.mark.parametrize("wat, mins", [
    ('(module (memory (export "memory") 1))', ()),
    ('(module (import "a" "t" (table 5 funcref)) (table 9 20 funcref) (table i64 4 funcref))',
     (5, 9, 4)),
    ('(module (table 3 funcref (ref.null func)) (table 7 externref))', (3, 7)),  # initializer
])
def test_table_minimums_of_imported_and_own_tables_in_index_order(wat, mins):
    assert wasmbin.table_minimums(_wasm(wat)) == mins


def test_counts_larger_than_the_bytes_are_refused_before_any_loop():
    # a data section claiming 2^32-1 segments in 5 bytes
    data = wasmbin.MAGIC + b"\x0b\x05\xff\xff\xff\xff\x0f"
    with pytest.raises(BinaryError, match="vector of"):
        wasmbin.facts(data)


# Types wasmtime's C API cannot hand over (it aborts the process that asks: `support
# for v128 is not implemented`), in exports and imports the engine never calls.
EXOTIC = ("v128", "anyref", "exnref", "(ref null 0)", "i31ref", "(ref func)")


@pytest.mark.parametrize("where", ["export", "import"])
def test_a_module_with_functions_of_types_wasmtime_cannot_describe_is_judged_not_aborted(
        tmp_path, where):
    """A module exporting a helper with a v128 (or GC reference) parameter is valid:
    the engine calls only its entry points.  Asking wasmtime for every export's type
    killed the process that asked (wsuper check's child, the zygote's compiler) with
    SIGABRT, and the module was refused as 'its compiler was killed by SIGABRT'.  An
    import of such a function is refused by its name, as any other the ABI does not
    list."""
    import json
    import subprocess
    import sys
    helpers = "".join(
        f'(func (export "h{i}") (param {t}) (result {t}) unreachable)' if where == "export"
        else f'(import "env" "h{i}" (func (param {t}) (result {t})))'
        for i, t in enumerate(EXOTIC))
    path = tmp_path / "exotic.wat"
    path.write_text(f'(module (type (struct)) {helpers} (memory (export "memory") 1) '
                    f'(func (export "_start")))')
    script = f"""if True:
        import json, wasmtime
        from compartments import wasm
        from supervisor import preflight
        engine = wasmtime.Engine(wasm.engine_config())
        problem, d = wasm.describe(wasm.compile_module(engine, {str(path)!r}))
        facts = preflight._module_facts(engine, {str(path)!r})
        print(json.dumps([problem, {{k: list(map(list, v)) for k, v in d.exports.items()}},
                          facts["problem"]]))
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-500:]
    problem, exports, facts_problem = json.loads(run.stdout)
    assert exports == {"_start": [[], []]}
    if where == "export":
        assert problem is None and facts_problem is None
    else:
        assert problem.startswith("imports env.h0, which is not granted")
        assert facts_problem == problem


@pytest.mark.parametrize("where", ["_start", "_initialize", "wsuper_dispatch", "abi import",
                                   "wasi import"])
def test_an_entry_point_or_abi_import_of_a_type_wasmtime_cannot_describe_is_refused_by_name(
        tmp_path, where):
    """The engine calls the entry points and links the ABI's imports, so their types
    are read; asked of wasmtime, a type holding a v128 or a GC reference killed
    the process that asked (wsuper check's child) with SIGABRT, and the module
    was refused as 'its compiler was killed by SIGABRT: `support for v128 ` is not
    implemented', naming neither the function nor what is wrong with it.  Such a
    type is read from the binary (wasmbin.function_types) and refused as any
    other wrong type, by the function's name."""
    import json
    import subprocess
    import sys
    for i, t in enumerate(EXOTIC):
        if where in ("abi import", "wasi import"):
            module, name = ("wsuper", "params_read") if where == "abi import" else \
                ("wasi_snapshot_preview1", "fd_write")
            body = (f'(import "{module}" "{name}" (func (param {t} i32) (result i32))) '
                    f'(type (struct)) (memory (export "memory") 1) (func (export "_start"))')
            want = f"imports {module}.{name} with the wrong type"
        else:
            body = (f'(type (struct)) (memory (export "memory") 1) '
                    f'(func (export "{where}") (param {t}) unreachable)')
            want = f"exports {where} with the wrong type"
        path = tmp_path / f"exotic{i}.wat"
        path.write_text(f"(module {body})")
        script = f"""if True:
            import json, wasmtime
            from compartments import wasm
            from supervisor import preflight
            engine = wasmtime.Engine(wasm.engine_config())
            print(json.dumps(preflight._module_facts(engine, {str(path)!r})["problem"]))
        """
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, (t, run.stderr[-500:])
        problem = json.loads(run.stdout)
        assert problem is not None and problem.startswith(want), (t, problem)


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("module,name,good", [
    ("wsuper", "params_read", "(param i32 i32) (result i32)"),
    ("wasi_snapshot_preview1", "fd_write", "(param i32 i32 i32 i32) (result i32)")])
def test_a_name_imported_twice_once_of_a_type_wasmtime_cannot_describe_is_refused(
        tmp_path, module, name, good, first):
    """The binary format lets a module import one (module, name) more than once,
    each of its own type.  function_types read one type per name (the last), so an
    ABI import of a v128 (or GC reference) type followed by the same name of the
    right type was asked of wasmtime, and killed the process that asked (wsuper
    check's child) with SIGABRT.  Whichever comes first, it is refused by name."""
    import json
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for i, t in enumerate(EXOTIC):
        bad = f'(import "{module}" "{name}" (func (param {t} i32) (result i32)))'
        fine = f'(import "{module}" "{name}" (func {good}))'
        path = tmp_path / f"twice{i}.wat"
        path.write_text(f"(module {bad if first else fine} {fine if first else bad} "
                        f'(type (struct)) (memory (export "memory") 1) (func (export "_start")))')
        imports, _exports = wasmbin.function_types(bytes(wasmtime.wat2wasm(path.read_text())))
        assert wasmbin.unshown(imports[(module, name)]), (t, imports)
        script = f"""if True:
            import json, wasmtime
            from compartments import wasm
            from supervisor import preflight
            engine = wasmtime.Engine(wasm.engine_config())
            print(json.dumps(preflight._module_facts(engine, {str(path)!r})["problem"]))
        """
        run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, (t, run.stderr[-500:])
        problem = json.loads(run.stdout)
        assert problem is not None and \
            problem.startswith(f"imports {module}.{name} with the wrong type"), (t, problem)


@pytest.mark.parametrize("variant", ["plain", "protected", "instrumented"])
@pytest.mark.parametrize("where", ["_start", "wsuper_dispatch", "abi import", "wasi import"])
def test_the_zygotes_compiler_describes_a_module_of_a_type_wasmtime_cannot_show(
        tmp_path, where, variant):
    """check refuses a module whose entry point or ABI import has a v128 (or GC
    reference) type, but the module file may change after check looked at it (a
    restart, a compile again for the file as it is now): the zygote's compiler
    described it with wasm.describe, which asked wasmtime for the type, and was
    killed by SIGABRT ('its compiler was killed by SIGABRT', naming nothing).  The
    compiler reads such a type from the bytes it compiled, on every way of
    compiling (as it is, protected, rewritten for probes): an import is refused by
    its name, an entry point described by its type (the engine refuses to call
    it), and the compiler is not killed."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for i, t in enumerate(EXOTIC):
        if where in ("abi import", "wasi import"):
            module, name = ("wsuper", "params_read") if where == "abi import" else \
                ("wasi_snapshot_preview1", "fd_write")
            body = (f'(import "{module}" "{name}" (func (param {t} i32) (result i32))) '
                    f'(type (struct)) (memory (export "memory") 1) (func (export "_start"))')
            want = f"imports {module}.{name} with the wrong type"
        else:
            body = (f'(type (struct)) (memory (export "memory") 1) '
                    f'(func (export "{where}") (param {t}) unreachable)')
            want = None
        path = tmp_path / f"exotic{i}.wat"
        path.write_text(f"(module {body})")
        args = {"plain": "", "protected": ", protect=protect.Setting(4096, protect.NONE)",
                "instrumented": ", instrument=('functions',)"}[variant]
        script = f"""if True:
            import os, wasmtime
            from compartments import protect, wasm, zygote
            engine = wasmtime.Engine(wasm.engine_config())
            r, w = os.pipe()
            fds = (os.memfd_create("module"), os.memfd_create("description"))
            code = zygote._compile_into(engine, {str(path)!r}, fds, w{args})
            os.close(w)
            print(code, os.read(r, 4096).decode(errors="replace"))
            if code == 0:
                print(wasm.Description.from_json(
                    os.pread(fds[1], os.fstat(fds[1]).st_size, 0)).exports)
        """
        run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, (t, run.stderr[-500:])
        if want is None:
            assert run.stdout.startswith("0 "), (t, run.stdout)
            assert f"'{where}': (('" in run.stdout, (t, run.stdout)
        else:
            assert run.stdout.startswith("1 ") and want in run.stdout, (t, run.stdout)


def test_function_types_reads_every_function_type_from_the_binary():
    data = wasmtime.wat2wasm(
        '(module (rec (type (struct)) (type $f (sub final (func (param v128) (result i32)))))'
        ' (import "m" "a" (func (type $f))) (import "m" "g" (global i32))'
        ' (func (export "b") (param i32 f64) (result i64) unreachable)'
        ' (func (export "c") (param (ref null 0))) (memory (export "memory") 1)'
        ' (export "a2" (func 0)))')
    imports, exports = wasmbin.function_types(bytes(data))
    assert imports == {("m", "a"): (("v128",), ("i32",))}
    assert exports == {"b": (("i32", "f64"), ("i64",)), "c": (("a reference type",), ()),
                       "a2": (("v128",), ("i32",))}
    assert wasmbin.unshown(exports["c"]) and wasmbin.unshown(exports["a2"])
    assert not wasmbin.unshown(exports["b"]) and not wasmbin.unshown(None)


@pytest.mark.parametrize("param", [b"\x7f", b"\x7b", b"\x63\x00"])   # i32, v128, (ref null 0)
@pytest.mark.parametrize("exported", [0, 1, 300])
def test_function_types_memory_stays_below_the_modules_size(param, exported):
    """function_types named every type of the type section: a tuple of 8 bytes a
    parameter for each type of a module of 1,000-parameter function types (1 MB of
    them: 8 MB; a 28 MB module took 7 s and 230 MB, where wasmtime takes 0.2 s
    and 40 MB), in wsuper check's child and in every compile.  Only the types of
    functions imported or exported are named, each once however many share it."""
    import tracemalloc
    # 1,000 types of 1,000 parameters; of a reference type, which is walked one by
    # one (not skipped at once), 300: 3 s less for each of its three runs under
    # tracemalloc, and naming every type would still take 8 bytes a parameter
    # where the bound below is 0.5 (peak 2.4 MB, bound 150 kB)
    n = 300 if param == b"\x63\x00" else 1000
    ty = b"\x60" + wasmbin._uleb(1000) + param * 1000 + b"\x00"
    types = wasmbin._uleb(n) + ty * n
    funcs = wasmbin._uleb(exported) + b"\x00" * exported
    exports = wasmbin._uleb(exported) + b"".join(
        wasmbin._uleb(len(f"f{i}")) + f"f{i}".encode() + b"\x00" + wasmbin._uleb(i)
        for i in range(exported))
    data = wasmbin.MAGIC + b"".join(bytes([sid]) + wasmbin._uleb(len(body)) + body for sid, body
                                    in ((1, types), (3, funcs), (7, exports)))
    tracemalloc.start()
    try:
        imports, found = wasmbin.function_types(data)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert imports == {} and len(found) == exported
    assert all(p == found["f0"] for p in found.values())
    assert peak < len(data) // 4, (peak, len(data))


@pytest.mark.parametrize("bits", [32, 64])
def test_a_long_constant_expression_is_read_wrapping_at_each_step(bits):
    """extended-const's add, sub and mul wrap at 2^bits at each step (as wasmtime
    evaluates them).  Read unwrapped, a data segment offset of N multiplications
    grew a number of ~63 N bits, each step slower than the last: a module of a
    few MB kept `wsuper check`'s child busy until its CPU limit, named as a
    compile that took too long.  Here 400,000 steps (hours, read unwrapped), whose value is the one
    wrapped arithmetic gives."""
    const, add, sub, mul = {32: (0x41, 0x6A, 0x6B, 0x6C), 64: (0x42, 0x7C, 0x7D, 0x7E)}[bits]
    big = (1 << (bits - 1)) - 1
    n = 400_000
    step = bytes([const]) + wasmbin._sleb(big) + bytes([mul])
    expr = bytes([const]) + wasmbin._sleb(big) + step * n + \
        bytes([const]) + wasmbin._sleb(-3) + bytes([sub]) + \
        bytes([const]) + wasmbin._sleb(5) + bytes([add]) + b"\x0b"
    want = (pow(big, n + 1, 1 << bits) + 3 + 5) % (1 << bits)
    memory = b"\x01\x04\x01" if bits == 64 else b"\x01\x00\x01"      # memory64 or not
    data = (wasmbin.MAGIC + wasmbin._section(5, 1, memory[1:])
            + wasmbin._section(11, 1, b"\x00" + expr + b"\x01a"))
    problem = wasmbin.instantiation_problem(data)
    assert problem is not None and f"[{want:#x}, {want + 1:#x})" in problem, problem


def test_function_types_reads_bytes_bytearray_and_memoryview_alike():
    """wat2wasm gives a bytearray, a file read bytes; a vector of value types is
    skipped with find(), which a memoryview lacks."""
    data = bytes(wasmtime.wat2wasm(
        '(module (type (func (param i32 (ref null 0)))) (import "m" "i" (func (type 0)))'
        ' (func (export "f") (param v128 i32) (result f64) unreachable))'))
    want = wasmbin.function_types(data)
    assert want[1] == {"f": (("v128", "i32"), ("f64",))}
    assert wasmbin.function_types(bytearray(data)) == want
    assert wasmbin.function_types(memoryview(data)) == want
