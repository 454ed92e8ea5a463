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
import os

import attrs
import wasmtime

from . import abi
from .limits import MAX_MODULE_BYTES     # the one bound (compartments/limits.py)


#: Bytes of wasm stack a guest may use (wasmtime's default): the frames of its
#: recursion, measured in bytes, not calls
MAX_WASM_STACK = 512 << 10
#: ... times this for a module rewritten with probe sites (instrument.py): a clone's
#: frame is larger than its function's (the sites' local, blocks and checks), and a
#: recursion 10,919 deep that ran as built trapped "call stack exhausted" at 8,189
#: once a `functions` probe was on: turning a probe on made a working guest fail.
#: The clone of a function of the smallest frame takes about 1.33 times its stack;
#: 4 leaves room for every site compiled in.
PROBED_STACK_FACTOR = 4


def wasm_stack(probed: bool = False) -> int:
    """The wasm stack of an engine (`probed`: its module has probe sites), within
    half of the process's native stack (RLIMIT_STACK), on which wasmtime runs the
    guest: past it the engine would die of SIGSEGV instead of trapping."""
    import resource
    if not probed:
        return MAX_WASM_STACK
    soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
    room = PROBED_STACK_FACTOR * MAX_WASM_STACK
    if soft != resource.RLIM_INFINITY:
        room = min(room, soft // 2)
    return max(MAX_WASM_STACK, room)


#: address space each linear memory reserves (engine_config); a pooled memory
#: (engine.py, instance = "per_call") may be no larger
MEMORY_RESERVATION = 1 << 26


def engine_config(probed: bool = False) -> wasmtime.Config:
    """The wasmtime configuration of every engine (and of every compilation for one).
    `probed`: an engine whose module has probe sites, whose guest gets more wasm
    stack (wasm_stack); its compiled code is the same, so a module compiled with
    one configuration loads in an engine of the other."""
    config = wasmtime.Config()
    config.max_wasm_stack = wasm_stack(probed)
    config.memory_reservation = MEMORY_RESERVATION     # 64 MiB of address space, not 4 GiB
    config.memory_guard_size = 1 << 16
    # A memory growing past its reservation moves, with this much room to grow
    # again; wasmtime's default (2 GiB) does not fit under the engine's
    # RLIMIT_AS, and every growth past 64 MiB failed.
    config.memory_reservation_for_growth = 1 << 26
    config.consume_fuel = True              # CPU per call: see Engine._guest
    # time per call: code past its call's deadline traps (Engine._guest, the alarm
    # in _fastcall.c); every store needs a deadline then (new_store), or its code
    # traps at once
    config.epoch_interruption = True
    config.parallel_compilation = False     # stay single-threaded: see confine.py
    return config


#: a store's epoch deadline when no call's deadline applies: never reached (the
#: epoch moves once for each call deadline that passes)
NO_DEADLINE = 1 << 48


def new_store(engine: wasmtime.Engine) -> wasmtime.Store:
    """A store of an engine_config() engine, whose code runs until a deadline is set
    (epoch interruption's default deadline is the current epoch: its code would trap
    at once)."""
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(NO_DEADLINE)
    return store


class ModuleFileError(OSError):
    """The module file is no regular file of at most MAX_MODULE_BYTES: the file is at
    fault, and will be again until it changes (not a passing failure)."""
    transient = False


#: path -> (bytes, None) or (None, the error reading it raised): module files read
#: by `preload` in a child that then gave up its access to files.
_PRELOADED: dict = {}


def file_key(st: os.stat_result) -> tuple:
    """What a compiled module is known by (the zygote's cache, zygote._Modules): its
    file's device, inode, size, modification and change times.  The change time
    too: a copy that keeps times (cp -p) of a module of the same size, written in
    place, kept the old compiled code for good."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def preload(path: str, expect: tuple | None = None):
    """In a child about to give up root and every file (a compiler:
    confine.confine_helper): read the module file at `path` now; read_file(path)
    then answers from memory, or raises what reading it raised.  `expect`: the
    file_key its compiled form will be known by (the zygote looked it up before):
    if the file read is not that one as it was then (the path renamed over, a
    symbolic link pointed elsewhere, the file written, since), reading it raises
    OSError: what was read must never be taken for another file's code."""
    seen: list = []
    try:
        data = _read_regular(path, seen)
        if expect is not None and file_key(seen[0]) != expect:
            raise OSError(f"the module file {path} changed while it was being compiled "
                          f"(compiled again once it changes, or a few seconds later)")
        _PRELOADED[path] = (data, None)
    except (OSError, ModuleFileError) as e:
        _PRELOADED[path] = (None, e)


def read_file(path: str) -> bytes:
    """A module file's bytes, as they are.  Only a regular file of at most
    MAX_MODULE_BYTES is read, opened without blocking (capnp_schemas.read_regular):
    a module file replaced while the system runs is read again at the next start,
    and a FIFO there held the zygote's compiler in open() for good (no engine
    started again, `wsuper stop` waited for ever); /dev/zero was read until
    memory ran out.  Raises ModuleFileError, or OSError if it cannot be read."""
    if path in _PRELOADED:
        data, error = _PRELOADED[path]
        if error is not None:
            raise error
        return data
    return _read_regular(path)


def _read_regular(path: str, seen: list | None = None) -> bytes:
    import capnp_schemas
    try:
        return capnp_schemas.read_regular(path, MAX_MODULE_BYTES, seen=seen)
    except capnp_schemas.FileProblem as e:
        if e.strerror:
            raise OSError(e.strerror) from None
        raise ModuleFileError(f"the file {e}") from None


def read_module(path: str) -> bytes:
    """A module file as a binary module, read as the supervisor's preflight reads it:
    a `.wat` file is WebAssembly text (UTF-8) unless it starts as a binary module
    does; any other file is binary.  Raises OSError, UnicodeDecodeError or
    WasmtimeError.  (A binary named .wat passed preflight as binary, and every
    engine then read it as text and failed.)"""
    data = read_file(path)
    if path.endswith(".wat") and not data.startswith(b"\0asm"):
        return bytes(wasmtime.wat2wasm(data.decode("utf-8")))
    return data


def compile_module(wasm_engine: wasmtime.Engine, path: str) -> wasmtime.Module:
    """Compile a module file (read_module); raises OSError, UnicodeDecodeError or
    WasmtimeError."""
    return wasmtime.Module(wasm_engine, read_module(path))


def signature(ty: wasmtime.FuncType) -> tuple:
    """(params, results) of a function type, as strings ("i32", "i64", ...)."""
    return (tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results))


def export_types(module: wasmtime.Module, names=abi.ENTRY_TYPES, known=None) -> dict:
    """name -> (params, results) of each function the module exports under one of
    `names` (the entry points: the only exports the engine calls).  Only those
    types are read: wasmtime's C API aborts the process that asks for a function
    type holding a v128, exnref or GC reference (`support for v128 is not
    implemented`), and a module exporting any such helper was refused with its
    compiler killed by SIGABRT.  `known`: wasmbin.function_types' exports of the
    module's binary: an entry point of a type wasmtime cannot show (a v128, a GC
    reference) is given that type, as the binary says it, and refused by it
    (abi.check_entries names it), never asked of wasmtime."""
    return {exp.name: _signature(exp.type, (known or {}).get(exp.name))
            for exp in module.exports
            if exp.name in names and isinstance(exp.type, wasmtime.FuncType)}


def _signature(ty: wasmtime.FuncType, known) -> tuple:
    """signature(ty), unless the binary's own reading `known` holds a type asking
    wasmtime for would abort this process (wasmbin.unshown): then `known`."""
    from . import wasmbin
    return known if wasmbin.unshown(known) else signature(ty)


def describe_imports(module: wasmtime.Module, known=None):
    """(module, name, kind, signature) for each import, in abi.check_imports' terms.
    The signature is read only of a function the ABI lists (see export_types: any
    other is refused by its name); `known`: wasmbin.function_types' imports, as
    export_types' `known`."""
    for imp in module.imports:
        ty = imp.type
        if isinstance(ty, wasmtime.FuncType):
            listed = imp.name in (abi.IMPORTS if imp.module == abi.MODULE else
                                  abi.WASI_IMPORTS if imp.module == abi.WASI_MODULE else {})
            yield imp.module, imp.name, "func", _signature(
                ty, (known or {}).get((imp.module, imp.name))) if listed else None
        else:
            yield imp.module, imp.name, type(ty).__name__, None


@attrs.frozen
class Description:
    """What the engine needs to know of a module, found where it was compiled."""
    wasi: tuple = ()           # the wasi_snapshot_preview1 functions it imports
    exports: dict = {}         # name -> (params, results) of each exported function
    sites: dict | None = None      # probe sites compiled in (instrument.Sites.to_json), if any
    protect: dict | None = None    # compiled for memory protection: its protect.Layout

    def to_json(self) -> bytes:
        return json.dumps({"wasi": list(self.wasi), "exports": {
            name: [list(p), list(r)] for name, (p, r) in self.exports.items()},
            "sites": self.sites, "protect": self.protect}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Description":
        obj = json.loads(data)
        return cls(tuple(obj["wasi"]), {name: (tuple(p), tuple(r))
                                        for name, (p, r) in obj["exports"].items()},
                   obj.get("sites"), obj.get("protect"))


def known_types(binary: bytes | None) -> tuple[dict, dict]:
    """wasmbin.function_types of a module's binary, as describe_imports and
    export_types take them ({}, {} if there is none, or it cannot be read)."""
    from . import wasmbin
    if binary is None:
        return {}, {}
    try:
        return wasmbin.function_types(binary)
    except (wasmbin.BinaryError, wasmbin.Unsupported):
        return {}, {}


def describe(module: wasmtime.Module, sites=None, layout=None,
             binary: bytes | None = None) -> tuple[str | None, Description]:
    """(why the module may not be linked, or None; its Description).  `sites`: the
    instrument.Sites of a rewritten module, whose probe imports and export are ours;
    `layout`: its protect.Layout, if it was compiled for memory protection;
    `binary`: the bytes `module` was compiled from, whose entry points' and ABI
    imports' types are read from them when wasmtime cannot show them (see
    export_types: asked of wasmtime, a v128 _start killed the zygote's compiler
    with SIGABRT, a module file changed after `wsuper check` had looked at it)."""
    known_imports, known_exports = known_types(binary)
    imports = list(describe_imports(module, known_imports))
    if sites is not None:
        from .instrument import EXPORT_PROBES, PROBE_MODULE
        imports = [i for i in imports if i[0] != PROBE_MODULE]
    wasi = sorted({name for m, name, _kind, _sig in imports if m == abi.WASI_MODULE})
    exports = export_types(module, known=known_exports)
    if sites is not None:
        exports.pop(EXPORT_PROBES, None)
    return abi.check_imports(imports), Description(
        tuple(wasi), exports, sites.to_json() if sites is not None else None,
        layout.to_json() if layout is not None else None)


def compile_for(wasm_engine: wasmtime.Engine, path: str, instrument=(), protect=None,
                memory_limit: int = 0):
    """(module, instrument.Sites or None, protect.Layout or None): compile_binary_for
    without the binary."""
    module, sites, layout, _binary = compile_binary_for(wasm_engine, path, instrument,
                                                        protect, memory_limit)
    return module, sites, layout


def compile_binary_for(wasm_engine: wasmtime.Engine, path: str, instrument=(), protect=None,
                       memory_limit: int = 0):
    """(module, instrument.Sites or None, protect.Layout or None, the bytes the
    module was compiled from: describe's `binary`): the module file
    compiled as a compartment asks, with probe sites for the points `instrument`
    and memory protection as the protect.Setting `protect` (and its memory limit)
    call for.  Raises OSError, UnicodeDecodeError, WasmtimeError or
    instrument.InstrumentError.

    Both rewrite the module, in this order (docs/memory-protection.md, "With
    probes"): the protection layout is read from the module as built; then the
    probe sites are compiled in (instrument.py, wasm-tools); then protection's
    checks go before every bulk-memory instruction of the result (clones
    included), as functions appended after every other, so no probe site's
    index moves and no probe reports protection's own checks."""
    if not instrument:
        data = read_module(path)
        if protect is None:
            return wasmtime.Module(wasm_engine, data), None, None, data
        from . import protect as protection
        data, layout = protection.prepare(data, protect, memory_limit,
                                          lambda d: wasmtime.Module.validate(wasm_engine, d))
        return wasmtime.Module(wasm_engine, data), None, layout, data
    from . import instrument as rewriting, protect as protection
    data = read_file(path)
    layout = bulk = None
    if protect is not None:
        if not data.startswith(b"\0asm"):
            data = bytes(wasmtime.wat2wasm(data.decode("utf-8")))
        wasmtime.Module.validate(wasm_engine, data)
        layout, bulk = protection.plan(data, protect, memory_limit)
    data, sites = rewriting.rewrite(data, instrument)
    if layout is not None and bulk and layout.regions is not None:
        data, layout = protection.add_checks(
            data, layout, protect, lambda d: wasmtime.Module.validate(wasm_engine, d))
    return wasmtime.Module(wasm_engine, data), sites, layout, data
