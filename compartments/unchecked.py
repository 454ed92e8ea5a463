"""Calls into and out of wasm without wasmtime-py's per-call checks.

Owns: every use of wasmtime-py's *private* API in wsuper -- its ctypes
bindings (`wasmtime._ffi`), its exception hand-over (`wasmtime._func`'s
`LAST_EXCEPTION` and `enter_wasm`), `Trap._consume`, `WasmtimeError._from_ptr`
and the raw handles of `Func`, `Memory`, `Store`, `Linker` and `FuncType`.
Nothing else in wsuper may touch them.  At import it checks the wasmtime-py
version and every feature it relies on, and runs one real call each way;
anything that moved fails the import with `WasmtimeInternalsChanged`, whose
message names what moved.

Must not: know the guest ABI, the engine or the protocol; hold any state
beyond the host functions it defines.

Why: wasmtime-py's `Func.__call__` asks the engine for the function's type
and converts every argument through `Val` (about 60 µs per call here), and
its `Linker.define_func` trampoline converts every argument and result
(10-25 µs per guest -> host call).  The guest ABI has only i32/i64
parameters and at most one i32 result, so the engine calls exports through
the C API's `wasmtime_func_call_unchecked` (`TypedFunc`) and defines host
functions with `wasmtime_linker_define_func_unchecked` (`define`): raw slots,
read and written directly.  A Python exception raised by a host function --
`WasiExit` from `proc_exit` included -- becomes a trap in the guest and is
re-raised, the same object, to whoever called into wasm, exactly as
wasmtime-py does it; that is what the import-time check verifies.

Both directions have a native version, `_fastcall.c` (built by `pip install
-e .` like the other extensions): the same C API calls without ctypes in the
way (a call into the guest 2.8 -> 0.2 µs, a host call 1.2 -> 0.04 µs here).  This
module hands it the C functions' addresses from the library wasmtime-py
loaded, after the prototype checks below, and turns its failures into
wasmtime-py's objects; the import-time check runs on whichever path is in
use.  Without the extension, or with `WSUPER_NATIVE=0`, the ctypes path runs.
"""
from __future__ import annotations

import ctypes
import os
import operator
import weakref
from ctypes import POINTER, byref, c_void_p, cast

import wasmtime

#: The wasmtime-py major versions this module was checked against.
TESTED_MAJOR_VERSIONS = (50,)


class WasmtimeInternalsChanged(ImportError):
    """wasmtime-py no longer has a private feature this module relies on."""


def _fail(what: str):
    raise WasmtimeInternalsChanged(
        f"compartments/unchecked.py relies on wasmtime-py internals that changed: {what}. "
        f"It was checked against wasmtime-py {', '.join(map(str, TESTED_MAJOR_VERSIONS))}.x "
        f"(pinned in pyproject.toml); adapt unchecked.py and run tests/unit/test_unchecked.py")


def _version() -> str:
    """The installed wasmtime-py's version: from the one wasmtime-*.dist-info beside
    the package imported, when there is exactly one (its name says the version);
    else as importlib.metadata finds it.  importlib.metadata costs the zygote ~12 ms
    of its start and ~40 modules (zipfile, email, ...) that every engine would
    share, and fork, for nothing (docs/performance.md)."""
    site = os.path.dirname(os.path.dirname(os.path.abspath(wasmtime.__file__)))
    try:
        found = [n for n in os.listdir(site)
                 if n.startswith("wasmtime-") and n.endswith(".dist-info")]
    except OSError:
        found = []
    if len(found) == 1:
        return found[0][len("wasmtime-"):-len(".dist-info")]
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("wasmtime")
    except PackageNotFoundError:
        return "unknown"


_VERSION = _version()
try:
    if int(_VERSION.split(".")[0]) not in TESTED_MAJOR_VERSIONS:
        raise ValueError
except ValueError:
    _fail(f"wasmtime-py {_VERSION} is installed")

try:
    import wasmtime._func as _wfunc
    from wasmtime import _ffi as ffi
except ImportError as e:
    _fail(f"cannot import {e.name or 'wasmtime._ffi / wasmtime._func'}")


def _need(owner, name: str, where: str):
    if not hasattr(owner, name):
        _fail(f"{where}.{name} is gone")
    return getattr(owner, name)


for _name in ("wasmtime_func_call_unchecked", "wasmtime_linker_define_func_unchecked",
              "wasmtime_func_unchecked_callback_t", "wasmtime_val_raw_t",
              "wasmtime_caller_context", "wasmtime_memory_data", "wasmtime_memory_data_size",
              "wasm_trap_t"):
    _need(ffi, _name, "wasmtime._ffi")
for _name in ("LAST_EXCEPTION", "enter_wasm", "maybe_raise_last_exn"):
    _need(_wfunc, _name, "wasmtime._func")
_need(wasmtime.Trap, "_consume", "wasmtime.Trap")
_need(wasmtime.WasmtimeError, "_from_ptr", "wasmtime.WasmtimeError")
_need(wasmtime.Store, "_context", "wasmtime.Store")
#: a store's context pointer, as Store._context() returns it, read without that
#: method's Python call (five a served call: a fuel set and read, a deadline set
#: and cleared, the call); None once the store is closed, which the native
#: functions refuse with _context()'s ValueError.  Where it lives is checked at
#: import (_self_test_in, _self_test).
_context = operator.attrgetter("_Store__context")
for _cls in (wasmtime.Linker, wasmtime.FuncType):
    _need(_cls, "ptr", f"wasmtime.{_cls.__name__}")
# The callback returns a trap pointer, as an integer the size of a pointer; 0 is
# success.  If that changed, a failing host function could look like a successful one.
if ffi.wasmtime_func_unchecked_callback_t._restype_ not in (ctypes.c_size_t, ctypes.c_void_p) \
        or len(ffi.wasmtime_func_unchecked_callback_t._argtypes_) != 4:
    _fail("wasmtime_func_unchecked_callback_t is no longer "
          "size_t (*)(void *env, caller *, val_raw *, size_t)")
if getattr(ffi.wasmtime_func_call_unchecked, "__code__", None) is None or \
        ffi.wasmtime_func_call_unchecked.__code__.co_argcount != 5 or \
        getattr(ffi.wasmtime_linker_define_func_unchecked, "__code__", None) is None or \
        ffi.wasmtime_linker_define_func_unchecked.__code__.co_argcount != 9:
    _fail("wasmtime_func_call_unchecked or wasmtime_linker_define_func_unchecked "
          "changed their parameters")
if ctypes.sizeof(ffi.wasmtime_val_raw_t) != 16 or \
        not {"i32", "i64"} <= {f[0] for f in ffi.wasmtime_val_raw_t._fields_}:
    _fail("wasmtime_val_raw_t is no longer a 16-byte union with i32 and i64")

_ValRaw = ffi.wasmtime_val_raw_t
_enter_wasm = _wfunc.enter_wasm


class _CallFailed(Exception):
    """_fastcall's failure: args are (is_trap, pointer)."""


def _native_path():
    """The native module, set up; None: the ctypes path (not built, or turned off)."""
    if os.environ.get("WSUPER_NATIVE", "1") == "0":
        return None
    try:
        from . import _fastcall
    except ImportError:
        return None
    dll = _need(ffi, "dll", "wasmtime._ffi")
    for name in ("wasmtime_context_get_fuel", "wasmtime_context_set_fuel", "wasmtime_trap_new"):
        _need(ffi, name, "wasmtime._ffi")
    try:
        addresses = [cast(getattr(dll, name), c_void_p).value for name in (
            "wasmtime_func_call_unchecked", "wasmtime_caller_context", "wasmtime_memory_data",
            "wasmtime_memory_data_size", "wasmtime_trap_new", "wasmtime_context_set_fuel",
            "wasmtime_context_get_fuel")]
    except AttributeError as e:
        _fail(f"the wasmtime library has no {e}")

    def stash(e):                   # what wasmtime-py's own trampoline does with it
        _wfunc.LAST_EXCEPTION = e
    _fastcall.setup(*addresses, stash, _CallFailed)
    try:
        _fastcall.instances(*[cast(getattr(dll, name), c_void_p).value for name in (
            "wasmtime_instance_pre_instantiate", "wasmtime_instance_export_get",
            "wasmtime_store_limiter", "wasmtime_context_set_epoch_deadline")])
    except AttributeError as e:
        _fail(f"the wasmtime library has no {e}")
    return _fastcall


_native = _native_path()
_KIND = {"i32": b"i", "i64": b"I"}


def _raise_failure(e: _CallFailed):
    """A failed call into wasm, as wasmtime-py raises it: the host function's own
    exception when one caused it, else the Trap or WasmtimeError."""
    is_trap, pointer = e.args
    if is_trap:
        failure = wasmtime.Trap._from_ptr(cast(pointer, POINTER(ffi.wasm_trap_t)))
    else:
        failure = wasmtime.WasmtimeError._from_ptr(cast(pointer, POINTER(ffi.wasmtime_error_t)))
    _wfunc.maybe_raise_last_exn()
    raise failure from None


# ---------------------------------------------------------------- into wasm

class TypedFunc:
    """A wasm function whose (params, results) were checked once, at creation."""

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func, params: tuple, results: tuple,
                 actual: tuple | None = None):
        """`actual`: the export's (params, results) if already known from its module."""
        if actual is None:
            ty = func.type(store)
            actual = (tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results))
        if actual != (tuple(params), tuple(results)):
            raise TypeError(f"expected func {list(params)} -> {list(results)}, "
                            f"found {list(actual[0])} -> {list(actual[1])}")
        if any(k not in ("i32", "i64") for k in (*params, *results)) or len(results) > 1:
            raise TypeError("only i32/i64 parameters and at most one result are supported")
        self._store = store
        self._func = _raw_func(func)
        self._params = tuple(params)
        self._result = results[0] if results else None
        self._slots = max(len(params), len(results))
        self._kinds = b"".join(_KIND[k] for k in params)
        self._result_kind = ord(_KIND[self._result]) if self._result else 0

    def bind(self, store: wasmtime.Store, func: wasmtime.Func) -> "TypedFunc":
        """The same signature on another instance of the same module (no check again:
        an export of one module has one type)."""
        other = object.__new__(TypedFunc)
        other.__dict__.update(self.__dict__)
        other._store, other._func = store, _raw_func(func)
        return other

    def __call__(self, *args):
        if _native is not None:
            try:
                return _native.call(_context(self._store), self._func, self._kinds,
                                    self._result_kind, *args)
            except _CallFailed as e:
                _raise_failure(e)
        # A fresh array per call: the guest may re-enter (a callback) before we return.
        raw = (_ValRaw * max(self._slots, 1))()
        for i, (kind, value) in enumerate(zip(self._params, args, strict=True)):
            setattr(raw[i], kind, value)
        with _enter_wasm(self._store) as trap:      # re-raises a host function's exception
            error = ffi.wasmtime_func_call_unchecked(
                self._store._context(), byref(self._func), raw, self._slots, trap)
            if error:
                raise wasmtime.WasmtimeError._from_ptr(error)
        return getattr(raw[0], self._result) if self._result else None


def refuel(store: wasmtime.Store, fuel: int) -> int:
    """Set the store's fuel to `fuel` (-1: leave it); returns what it had left."""
    if _native is not None:
        try:
            return _native.fuel(_context(store), fuel)
        except _CallFailed as e:
            _raise_failure(e)
    left = store.get_fuel()
    if fuel >= 0:
        store.set_fuel(fuel)
    return left


def start_deadlines(engine: wasmtime.Engine, other: wasmtime.Engine | None = None) -> bool:
    """In an engine process: guest code of `engine`'s stores (and `other`'s, a
    second engine of the process: a per_call compartment's pool) that runs past
    the deadline given to deadline() traps (_fastcall.c, "deadlines": an alarm
    that moves the engines' epochs).  False without the native module: code is
    then stopped only at its next host call (Engine._cut_off)."""
    if _native is None:
        return False
    dll = _need(ffi, "dll", "wasmtime._ffi")
    try:
        functions = [cast(getattr(dll, name), c_void_p).value for name in (
            "wasmtime_engine_increment_epoch", "wasmtime_context_set_epoch_deadline")]
    except AttributeError as e:
        _fail(f"the wasmtime library has no {e}")
    _native.deadlines(cast(engine.ptr(), c_void_p).value, *functions,
                      *(() if other is None else (cast(other.ptr(), c_void_p).value,)))
    return True


_POOLING = ("wasmtime_pooling_allocation_config_new",
            "wasmtime_pooling_allocation_config_delete",
            "wasmtime_pooling_allocation_config_total_core_instances_set",
            "wasmtime_pooling_allocation_config_total_memories_set",
            "wasmtime_pooling_allocation_config_total_tables_set",
            "wasmtime_pooling_allocation_config_total_stacks_set",
            "wasmtime_pooling_allocation_config_total_gc_heaps_set",
            "wasmtime_pooling_allocation_config_max_memories_per_module_set",
            "wasmtime_pooling_allocation_config_max_tables_per_module_set",
            "wasmtime_pooling_allocation_config_max_memory_size_set",
            "wasmtime_pooling_allocation_config_table_elements_set",
            "wasmtime_pooling_allocation_config_linear_memory_keep_resident_set",
            "wasmtime_pooling_allocation_config_table_keep_resident_set",
            "wasmtime_pooling_allocation_strategy_set")


def pooling(config: wasmtime.Config, *, instances: int, memories: int, memory: int,
            reservation: int, table_elements: int, tables: int = 1,
            keep_resident: int = 0) -> None:
    """Make `config` allocate instances from a pool (wasmtime's pooling instance
    allocator, which wasmtime-py 50 has only in its C bindings): room for
    `instances` instances at once, each with at most `memories` memories of at
    most `memory` bytes and `tables` tables of at most `table_elements`
    elements, reserved (address space only) when the engine is made.  A module
    that needs more fails to load in the engine (Module.deserialize: "does not
    fit in pooling allocator requirements").  `reservation`: the config's
    memory_reservation, which `memory` may not exceed (wasmtime's C API aborts
    the process making such an engine: ValueError here instead).
    `keep_resident`: bytes of each memory and table that a slot used again is
    wiped by writing zeros (and the data image again), not given back to the
    kernel: the next instance's first touches of them fault no pages in."""
    if not 0 < memory <= reservation:
        raise ValueError(f"a pooled memory of {memory} bytes does not fit the memory "
                         f"reservation of {reservation} bytes")
    for name in _POOLING:
        _need(ffi, name, "wasmtime._ffi")
    pool = ffi.wasmtime_pooling_allocation_config_new()
    try:
        ffi.wasmtime_pooling_allocation_config_total_core_instances_set(pool, instances)
        ffi.wasmtime_pooling_allocation_config_total_memories_set(pool, instances * memories)
        ffi.wasmtime_pooling_allocation_config_total_tables_set(pool, instances * tables)
        ffi.wasmtime_pooling_allocation_config_total_stacks_set(pool, 0)     # async only
        ffi.wasmtime_pooling_allocation_config_total_gc_heaps_set(pool, 0)   # no GC proposal
        ffi.wasmtime_pooling_allocation_config_max_memories_per_module_set(pool, memories)
        ffi.wasmtime_pooling_allocation_config_max_tables_per_module_set(pool, tables)
        ffi.wasmtime_pooling_allocation_config_max_memory_size_set(pool, memory)
        ffi.wasmtime_pooling_allocation_config_table_elements_set(pool, table_elements)
        ffi.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(pool, keep_resident)
        ffi.wasmtime_pooling_allocation_config_table_keep_resident_set(pool, keep_resident)
        ffi.wasmtime_pooling_allocation_strategy_set(config.ptr(), pool)
    finally:
        ffi.wasmtime_pooling_allocation_config_delete(pool)


def deadline(store: wasmtime.Store, until: float | None):
    """The guest code in `store` that runs (or goes on) now stops at `until`
    (time.monotonic(); None: no deadline).  Only after start_deadlines()."""
    _native.deadline(_context(store), until)


for _name in ("wasmtime_instance_t", "wasmtime_extern_t", "wasmtime_instance_pre_instantiate",
              "wasmtime_instance_export_get", "WASMTIME_EXTERN_FUNC", "WASMTIME_EXTERN_MEMORY",
              "WASMTIME_EXTERN_GLOBAL"):
    _need(ffi, _name, "wasmtime._ffi")
for _cls in (wasmtime.Func, wasmtime.Memory, wasmtime.Global, wasmtime.Instance):
    _need(_cls, "_from_raw", f"wasmtime.{_cls.__name__}")
_need(wasmtime.InstancePre, "ptr", "wasmtime.InstancePre")
_WRAP = {ffi.WASMTIME_EXTERN_FUNC.value: (wasmtime.Func._from_raw, "func"),
         ffi.WASMTIME_EXTERN_MEMORY.value: (wasmtime.Memory._from_raw, "memory"),
         ffi.WASMTIME_EXTERN_GLOBAL.value: (wasmtime.Global._from_raw, "global_")}
_INSTANCE_SIZE = ctypes.sizeof(ffi.wasmtime_instance_t)
_EXTERN_SIZE = ctypes.sizeof(ffi.wasmtime_extern_t)


def new_store(engine: wasmtime.Engine, fuel: int, epoch_deadline: int, *, memory_size: int,
              table_elements: int, memories: int) -> wasmtime.Store:
    """wasmtime.Store(engine), its limits set (as Store.set_limits), `fuel` in it
    and its epoch deadline `epoch_deadline` ticks from now: in one native call
    instead of three through ctypes."""
    store = wasmtime.Store(engine)
    if _native is None:
        store.set_limits(memory_size=memory_size, table_elements=table_elements,
                         memories=memories)
        store.set_fuel(fuel)
        store.set_epoch_deadline(epoch_deadline)
        return store
    try:
        _native.store(store.ptr(), _context(store), fuel, epoch_deadline, memory_size,
                      table_elements, memories)
    except _CallFailed as e:
        _raise_failure(e)
    return store


def instantiate(pre: wasmtime.InstancePre, store: wasmtime.Store, names: tuple) -> dict:
    """A new instance of `pre` in `store` (as pre.instantiate(store), which raises
    what it raises), and of its exports only those named in `names` (bytes) that
    are functions, memories or globals: name (str) -> wasmtime-py's object.
    wasmtime-py's Instance.exports wraps every export, with a C call and a name
    string each: ~19 us of a per_call compartment's call for two exports."""
    instance = ffi.wasmtime_instance_t()
    items = (ffi.wasmtime_extern_t * len(names))()      # each export's object keeps it
    if _native is not None:
        try:
            found = _native.instantiate(pre.ptr(), _context(store), instance, names, items,
                                        _INSTANCE_SIZE, _EXTERN_SIZE)
        except _CallFailed as e:
            _raise_failure(e)
    else:
        with _enter_wasm(store) as trap:
            error = ffi.wasmtime_instance_pre_instantiate(pre.ptr(), store._context(),
                                                          byref(instance), trap)
            if error:
                raise wasmtime.WasmtimeError._from_ptr(error)
        found = 0
        for i, name in enumerate(names):
            if ffi.wasmtime_instance_export_get(store._context(), byref(instance), name,
                                                len(name), byref(items[i])):
                found |= 1 << i
    out = {}
    i = 0
    while found:
        if found & 1:
            item = items[i]
            wrap = _WRAP.get(item.kind)
            if wrap is not None:
                out[names[i].decode()] = wrap[0](getattr(item.of, wrap[1]))
        found >>= 1
        i += 1
    return out


def _raw_func(func: wasmtime.Func):
    try:
        return func._func
    except AttributeError:
        _fail("wasmtime.Func._func (the C function handle) is gone")


# ---------------------------------------------------------------- out of wasm

_HOST: dict[int, tuple] = {}      # env id -> (function, param kinds, has result)


class _CallerContext:
    """The store context of the current host call."""
    __slots__ = ("ptr",)

    def __init__(self):
        self.ptr = None


_CURRENT = _CallerContext()


@ffi.wasmtime_func_unchecked_callback_t
def _trampoline(env, caller, raw, nraw):
    fn, kinds, has_result = _HOST[env or 0]
    outer = _CURRENT.ptr
    _CURRENT.ptr = ffi.wasmtime_caller_context(caller)
    try:
        result = fn(*[getattr(raw[i], k) for i, k in enumerate(kinds)])
        if has_result:
            if not -0x80000000 <= result <= 0x7FFFFFFF:   # ctypes would truncate it
                raise OverflowError(f"host function result {result!r} is not an i32")
            raw[0].i32 = result
        return 0
    except BaseException as e:   # becomes a trap; re-raised by _enter_wasm to the caller
        _wfunc.LAST_EXCEPTION = e
        trap = wasmtime.Trap("python exception")._consume()
        return cast(trap, c_void_p).value
    finally:
        _CURRENT.ptr = outer


@ctypes.CFUNCTYPE(None, c_void_p)
def _finalize(env):
    if _HOST is not None:            # None: the interpreter is shutting down
        _HOST.pop(env or 0, None)


if _native is not None:
    _NATIVE_TRAMPOLINE = ffi.wasmtime_func_unchecked_callback_t(_native.addresses()[0])
    _NATIVE_FINALIZE = ctypes.CFUNCTYPE(None, c_void_p)(_native.addresses()[1])


def guest(owner, frames: list, probes, max_bytes: int, results):
    """The state the native params_read, results_set and reply_read work on
    (_fastcall.Guest: the engine, whose `reply` it reads, its frame stack, its
    probes, its message limit, and how results are made from a segment), or
    None without the native path.  Its `memory` starts as None: every call goes
    to the Python functions until it is set."""
    return None if _native is None else _native.Guest(owner, frames, probes, max_bytes, results)


#: host functions the native path can do itself, when a Guest allows it
NATIVE = {} if _native is None else {"params_read": _native.PARAMS_READ,
                                     "results_set": _native.RESULTS_SET,
                                     "reply_read": _native.REPLY_READ,
                                     "call": _native.CALL}


def define(linker: wasmtime.Linker, module: str, name: str, params, results, fn,
           engine: wasmtime.Engine, native=None) -> None:
    """Define `module.name` (i32/i64 params, at most one i32 result) as `fn(*args)`
    on `linker`, which belongs to `engine`.  `native`: (kind, guest), kind a
    value of NATIVE: the native path does the plain calls itself (see
    _fastcall.c), and gives `fn` the rest."""
    if len(results) > 1 or any(r != "i32" for r in results):
        raise TypeError("host functions return at most one i32")
    kinds = tuple(params)
    ty = func_type(kinds, tuple(results), engine)
    if _native is not None:
        env = _native.host(fn, b"".join(_KIND[k] for k in kinds), bool(results),
                           *(native or ()))
        trampoline, finalize = _NATIVE_TRAMPOLINE, _NATIVE_FINALIZE
    else:
        env = len(_HOST) + 1
        while env in _HOST:
            env += 1
        _HOST[env] = (fn, kinds, bool(results))
        trampoline, finalize = _trampoline, _finalize
    m, n = module.encode(), name.encode()
    error = ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(), ctypes.create_string_buffer(m), len(m), ctypes.create_string_buffer(n),
        len(n), ty.ptr(), trampoline, env, finalize)
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


_VAL = {"i32": wasmtime.ValType.i32, "i64": wasmtime.ValType.i64}
# engine -> signature -> FuncType.  A function type is tied to the first engine
# that uses it (wasmtime asserts it), so types are made once *per engine*; the
# zygote makes them for its engine before it forks, so engines do not pay for them.
_TYPES: "weakref.WeakKeyDictionary[wasmtime.Engine, dict]" = weakref.WeakKeyDictionary()


def func_type(params: tuple, results: tuple, engine: wasmtime.Engine) -> wasmtime.FuncType:
    types = _TYPES.setdefault(engine, {})
    ty = types.get((params, results))
    if ty is None:                          # kept here: it must outlive the linkers
        ty = types[params, results] = wasmtime.FuncType([_VAL[k]() for k in params],
                                                        [_VAL[r]() for r in results])
    return ty


def memory_span(memory: wasmtime.Memory) -> tuple[int, int]:
    """(base address, size) of a memory, in the current host call's context."""
    if _native is not None:
        return _native.span(memory._memory)
    ctx = _CURRENT.ptr
    handle = byref(memory._memory)
    return (ctypes.addressof(ffi.wasmtime_memory_data(ctx, handle).contents),
            ffi.wasmtime_memory_data_size(ctx, handle))


# ---------------------------------------------------------------- the import-time check

_SELF_TEST = """(module
  (import "t" "f" (func $f (param i32 i64) (result i32)))
  (memory (export "memory") 1)
  (global $after (export "after") (mut i32) (i32.const 0))
  (func (export "g") (param i32) (result i32) (local $r i32)
    (local.set $r (call $f (local.get 0) (i64.const -2)))
    (global.set $after (i32.const 1))
    (local.get $r)))"""


class _Probe(Exception):
    pass


def _self_test():
    """One real call each way, with the features the engine relies on.  What it makes
    is released before it returns (_self_test_in): this runs in the zygote, whose
    whole address space every engine inherits and has its RLIMIT_AS set on top of."""
    config = wasmtime.Config()
    config.parallel_compilation = False   # no thread pool: the zygote forks, engines confine
    # not wasmtime's default 4 GiB (and 32 MiB guard) for the memory: the store stayed
    # alive (a cycle through the probe's traceback, frozen by the zygote's gc.freeze),
    # and every engine inherited the reservation, which an escaped engine unmapped to
    # map 4 GiB more than its budget (test_an_escaped_engine_can_map_no_more_than...)
    config.memory_reservation = 1 << 16
    config.memory_guard_size = 1 << 16
    config.memory_reservation_for_growth = 0
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    try:
        _self_test_in(engine, store)
    finally:
        store.close()                     # its instance and memory: unmapped now
    if getattr(store, "_Store__context", False) is not None:
        _fail("wasmtime.Store no longer forgets its context (__context) when closed")


def _self_test_in(engine, store):
    if getattr(store, "_Store__context", None) is not store._context():
        _fail("wasmtime.Store no longer keeps its context as __context (unchecked._context)")
    linker = wasmtime.Linker(engine)
    probe = _Probe("raised in a host function")
    seen = []

    def host(x, y):
        base, size = memory_span(memory)
        seen.append((x, y, size))
        if x == 1:
            raise probe
        return 41 + x

    define(linker, "t", "f", ("i32", "i64"), ("i32",), host, engine)
    instance = linker.instantiate(store, wasmtime.Module(engine, _SELF_TEST))
    exports = instance.exports(store)
    memory = exports["memory"]
    g = TypedFunc(store, exports["g"], ("i32",), ("i32",))
    try:
        g(1)
    except _Probe as e:
        if e is not probe:
            _fail("a host function's exception comes back as another object")
    except (wasmtime.Trap, wasmtime.WasmtimeError):
        _fail("a host function's exception comes back as a plain trap "
              "(wasmtime._func.LAST_EXCEPTION / enter_wasm no longer hand it over)")
    else:
        _fail("a failing host function returned as if it had succeeded "
              "(the callback's trap return is not honoured)")
    if exports["after"].value(store) != 0:
        _fail("the guest kept running after its host function failed")
    if g(-5) != 36 or seen != [(1, -2, 65536), (-5, -2, 65536)] or \
            exports["after"].value(store) != 1:
        _fail(f"raw arguments or results are read differently (got {seen})")


_self_test()
