"""The unchecked call paths into and out of wasm (compartments/unchecked.py),
with real wasmtime: what a host function raises comes back out intact, a
failing host function never looks like a successful one, and a wasmtime-py
whose internals moved is refused at import, naming what moved.  Every test
runs on both paths: the native one (_fastcall.c) and ctypes."""
import subprocess
import sys

import pytest
import wasmtime

from compartments import abi, unchecked, wasi
from compartments.unchecked import TypedFunc
from compartments.wasm import engine_config, new_store
from tests.conftest import ROOT

@pytest.fixture(autouse=True, params=["native", "ctypes"])
def path(request, monkeypatch):
    if request.param == "ctypes":
        monkeypatch.setattr(unchecked, "_native", None)
    elif unchecked._native is None:
        pytest.skip("compartments/_fastcall.c is not built")
    return request.param


WAT = """(module (import "h" "f" (func $f (param i32) (result i32)))
  (global $after (export "after") (mut i32) (i32.const 0))
  (func (export "twice") (param i32) (result i32) (local $r i32)
    (local.set $r (call $f (call $f (local.get 0))))
    (global.set $after (i32.const 1))
    (local.get $r)))"""


def _instance(fn, wat=WAT, module="h", name="f", sig=(("i32",), ("i32",))):
    engine = wasmtime.Engine(engine_config())
    store = new_store(engine)
    store.set_fuel(1 << 30)
    linker = wasmtime.Linker(engine)
    unchecked.define(linker, module, name, *sig, fn, engine)
    exports = linker.instantiate(store, wasmtime.Module(engine, wat)).exports(store)
    return store, exports


def test_one_signature_serves_several_engines_in_one_process():
    # a function type is tied to the first engine that uses it: the cache is per engine
    for _ in range(3):
        store, ex = _instance(lambda x: x + 1)
        assert TypedFunc(store, ex["twice"], ("i32",), ("i32",))(40) == 42


class Refused(Exception):
    def __init__(self, reason, data):
        super().__init__(reason)
        self.data = data


def test_an_exception_raised_in_a_host_function_comes_back_out_intact():
    raised = Refused("no such key", {"key": b"\xff" * 3})

    def host(x):
        if x == 2:
            raise raised
        return x + 1

    store, ex = _instance(host)
    twice = TypedFunc(store, ex["twice"], ("i32",), ("i32",))
    with pytest.raises(Refused) as got:
        twice(1)                      # the second host call raises
    assert got.value is raised and got.value.data == {"key": b"\xff" * 3}
    assert ex["after"].value(store) == 0          # the guest did not go on
    assert twice(5) == 7 and ex["after"].value(store) == 1   # and the instance still works


@pytest.mark.parametrize("result", [None, "7", 1 << 40, 1.5])
def test_a_host_function_returning_nonsense_fails_rather_than_succeeding(result):
    store, ex = _instance(lambda x: result)
    twice = TypedFunc(store, ex["twice"], ("i32",), ("i32",))
    with pytest.raises((TypeError, OverflowError)):
        twice(1)
    assert ex["after"].value(store) == 0


@pytest.mark.parametrize("code", [0, 3, 0xFFFFFFFF])
def test_wasi_proc_exit_comes_back_out_of_the_fast_path_with_its_code(code):
    wat = """(module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (global $after (export "after") (mut i32) (i32.const 0))
      (func (export "_start") (call $exit (i32.const %d)) (global.set $after (i32.const 1))))
    """ % (code - (1 << 32) if code >= 1 << 31 else code)
    state = wasi.Wasi(host=None, name="app")
    store, ex = _instance(state.function("proc_exit"), wat, abi.WASI_MODULE, "proc_exit",
                          abi.WASI_IMPORTS["proc_exit"])
    with pytest.raises(wasi.WasiExit) as got:
        TypedFunc(store, ex["_start"], (), ())()
    assert type(got.value) is wasi.WasiExit and got.value.code == code
    assert ex["after"].value(store) == 0


def test_a_trap_is_a_trap_and_leaves_no_exception_behind():
    store, ex = _instance(lambda x: x, """(module (import "h" "f" (func $f (param i32) (result i32)))
      (func (export "boom") (param i32) (result i32) unreachable))""")
    boom = TypedFunc(store, ex["boom"], ("i32",), ("i32",))
    with pytest.raises(wasmtime.Trap):
        boom(0)
    with pytest.raises(wasmtime.Trap):        # not a stale exception from somewhere else
        boom(0)


@pytest.mark.parametrize("kinds, args, result", [
    (("i32", "i64", "i32"), (-1, -(1 << 63), 0x7FFFFFFF), "i64"),
    (("i64", "i32", "i64"), ((1 << 63) - 1, -(1 << 31), 5), "i32"),
])
def test_arguments_and_results_keep_their_kind_and_sign_both_ways(kinds, args, result):
    seen = []
    params = " ".join(f"(param {k})" for k in kinds)
    gets = " ".join(f"(local.get {i})" for i in range(len(kinds)))
    wat = f"""(module (import "h" "f" (func $f {params} (result i32)))
      (func (export "g") {params} (result {result})
        (drop (call $f {gets})) ({result}.const -3)))"""

    def host(*values):
        seen.append(values)
        return -7

    store, ex = _instance(host, wat, sig=(kinds, ("i32",)))
    assert TypedFunc(store, ex["g"], kinds, (result,))(*args) == -3
    assert seen == [args]


def test_a_host_call_made_inside_another_sees_its_own_memory_and_then_the_outer_one():
    wat = """(module (import "h" "f" (func $f (param i32) (result i32)))
      (memory (export "memory") 1 3)
      (func (export "grow") (result i32) (memory.grow (i32.const 1)))
      (func (export "inner") (param i32) (result i32) (call $f (local.get 0)))
      (func (export "outer") (result i32) (call $f (i32.const 0))))"""
    sizes = []

    def host(depth):
        if depth == 0:
            sizes.append(unchecked.memory_span(ex["memory"])[1])
            TypedFunc(store, ex["grow"], (), ("i32",))()
            inner = TypedFunc(store, ex["inner"], ("i32",), ("i32",))(1)
            sizes.append(unchecked.memory_span(ex["memory"])[1])   # after the inner one ended
            return inner + 1
        sizes.append(unchecked.memory_span(ex["memory"])[1])
        return 40

    store, ex = _instance(host, wat)
    assert TypedFunc(store, ex["outer"], (), ("i32",))() == 41
    assert sizes == [65536, 131072, 131072]


def test_fuel_is_read_and_set_in_one_step():
    store, ex = _instance(lambda x: x)
    assert unchecked.refuel(store, 1000) == 1 << 30
    assert unchecked.refuel(store, 0) == 1000
    with pytest.raises(wasmtime.Trap) as got:
        TypedFunc(store, ex["twice"], ("i32",), ("i32",))(1)
    assert got.value.trap_code == wasmtime.TrapCode.OUT_OF_FUEL


def _import_with(patch: str) -> subprocess.CompletedProcess:
    code = f"import wasmtime, wasmtime._func, wasmtime._ffi, importlib.metadata\n{patch}\n" \
           "import compartments.unchecked\n"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("patch, named", [
    ("del wasmtime._func.LAST_EXCEPTION", "wasmtime._func.LAST_EXCEPTION is gone"),
    ("wasmtime._func.maybe_raise_last_exn = lambda: None", "comes back as a plain trap"),
    ("del wasmtime._ffi.wasmtime_func_call_unchecked",
     "wasmtime._ffi.wasmtime_func_call_unchecked is gone"),
    ("import ctypes; wasmtime._ffi.wasmtime_func_unchecked_callback_t = ctypes.CFUNCTYPE("
     "ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)",
     "wasmtime_func_unchecked_callback_t is no longer"),
    # the version, from the one wasmtime-*.dist-info beside the package ...
    ("import os; os.listdir = lambda path: ['wasmtime-51.0.0.dist-info']",
     "wasmtime-py 51.0.0 is installed"),
    # ... or, when that is not one, from importlib.metadata
    ("import os; os.listdir = lambda path: ['wasmtime-50.0.1.dist-info', "
     "'wasmtime-51.0.0.dist-info']; importlib.metadata.version = lambda name: '51.0.0'",
     "wasmtime-py 51.0.0 is installed"),
])
def test_wasmtime_internals_that_moved_are_named_at_import(patch, named):
    r = _import_with(patch)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("compartments.unchecked.WasmtimeInternalsChanged: ") and named in last, \
        r.stderr


def test_the_pinned_wasmtime_passes_the_import_check():
    r = _import_with("")
    assert r.returncode == 0, r.stderr
