"""wasmtime configuration, compilation and description of modules.

Owns: the one wasmtime `Config` every engine runs with, compiling a module
file (`.wat` or binary) with it, and describing a module's imports and
exports in the terms `abi.check_imports` and the engine use.

Must not: import the engine program, trio or the supervisor, or use
wasmtime-py's private API (that is `unchecked.py`).

A `Description` is what an engine needs to know of its module beyond the
compiled code; the zygote's compiler child makes it once per module, so
that engines do not walk the module's imports and exports again (in a
forked child that costs ~0.4 MiB of copied pages and ~0.2 ms).  The supervisor's
preflight imports this module to check modules before any process starts;
the zygote imports it to compile modules for engines.
"""
from __future__ import annotations

import json

import attrs
import wasmtime

from . import abi


def engine_config() -> wasmtime.Config:
    """The wasmtime configuration of every engine (and of every compilation for one)."""
    config = wasmtime.Config()
    config.memory_reservation = 1 << 26     # 64 MiB of address space, not 4 GiB
    config.memory_guard_size = 1 << 16
    # A memory growing past its reservation moves, with this much room to grow
    # again; wasmtime's default (2 GiB) does not fit under the engine's
    # RLIMIT_AS, and every growth past 64 MiB failed.
    config.memory_reservation_for_growth = 1 << 26
    config.consume_fuel = True              # CPU per call: see Engine._guest
    config.parallel_compilation = False     # stay single-threaded: see confine.py
    return config


def compile_module(wasm_engine: wasmtime.Engine, path: str) -> wasmtime.Module:
    """Compile a module file; raises OSError, UnicodeDecodeError or WasmtimeError."""
    if path.endswith(".wat"):
        with open(path, encoding="utf-8") as f:
            return wasmtime.Module(wasm_engine, f.read())
    return wasmtime.Module.from_file(wasm_engine, path)


def signature(ty: wasmtime.FuncType) -> tuple:
    """(params, results) of a function type, as strings ("i32", "i64", ...)."""
    return (tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results))


def export_types(module: wasmtime.Module) -> dict:
    """name -> (params, results) of each function the module exports."""
    return {exp.name: signature(exp.type) for exp in module.exports
            if isinstance(exp.type, wasmtime.FuncType)}


def describe_imports(module: wasmtime.Module):
    """(module, name, kind, signature) for each import, in abi.check_imports' terms."""
    for imp in module.imports:
        ty = imp.type
        if isinstance(ty, wasmtime.FuncType):
            yield imp.module, imp.name, "func", signature(ty)
        else:
            yield imp.module, imp.name, type(ty).__name__, None


@attrs.frozen
class Description:
    """What the engine needs to know of a module, found where it was compiled."""
    wasi: tuple = ()           # the wasi_snapshot_preview1 functions it imports
    exports: dict = {}         # name -> (params, results) of each exported function
    protect: dict | None = None    # compiled for memory protection: its protect.Layout

    def to_json(self) -> bytes:
        return json.dumps({"wasi": list(self.wasi), "exports": {
            name: [list(p), list(r)] for name, (p, r) in self.exports.items()},
            "protect": self.protect}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Description":
        obj = json.loads(data)
        return cls(tuple(obj["wasi"]), {name: (tuple(p), tuple(r))
                                        for name, (p, r) in obj["exports"].items()},
                   obj.get("protect"))


def describe(module: wasmtime.Module) -> tuple[str | None, Description]:
    """(why the module may not be linked, or None; its Description)."""
    imports = list(describe_imports(module))
    wasi = sorted({name for m, name, _kind, _sig in imports if m == abi.WASI_MODULE})
    return abi.check_imports(imports), Description(tuple(wasi), export_types(module))
