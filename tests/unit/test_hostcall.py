"""Host functions through wasmtime's unchecked callback, on more than one engine."""
import wasmtime

from compartments import hostcall
from compartments.engine import engine_config
from compartments.fastcall import TypedFunc

WAT = """(module (import "h" "f" (func $f (param i32) (result i32)))
  (func (export "twice") (param i32) (result i32) (call $f (call $f (local.get 0)))))"""


def test_one_signature_serves_several_engines_in_one_process():
    # a function type is tied to the first engine that uses it: the cache is per engine
    for _ in range(3):
        engine = wasmtime.Engine(engine_config())
        store = wasmtime.Store(engine)
        store.set_fuel(1 << 30)
        linker = wasmtime.Linker(engine)
        hostcall.define(linker, "h", "f", ("i32",), ("i32",), lambda x: x + 1, engine)
        inst = linker.instantiate(store, wasmtime.Module(engine, WAT))
        twice = TypedFunc(store, inst.exports(store)["twice"], ("i32",), ("i32",))
        assert twice(40) == 42
