"""Host functions without wasmtime-py's per-call conversions.

wasmtime-py's `Linker.define_func` trampoline wraps the caller, converts each
argument through `Val` and the result back through `Val._convert_to_raw`:
about 10-25 µs per guest→host call here.  The guest ABI's host functions take
and return only i32/i64, so the engine defines them with the C API's
*unchecked* callback (`wasmtime_linker_define_func_unchecked`): arguments and
result are raw slots, read and written directly.  Guest memory is reached
through the caller's own store context, with bounds checked by the engine.

A Python exception in a host function becomes a trap in the guest and is
re-raised to whoever called into wasm, exactly as wasmtime-py does it (its
`LAST_EXCEPTION`, consumed by `enter_wasm`).
"""
from __future__ import annotations

import ctypes
import weakref
from ctypes import c_void_p, cast

import wasmtime
import wasmtime._func as _wfunc
from wasmtime import _ffi as ffi

_HOST: dict[int, tuple] = {}      # env id -> (function, param kinds, has result)


class CallerContext:
    """The store context of the current host call (what wasmtime-py calls a Storelike)."""
    __slots__ = ("ptr",)

    def __init__(self):
        self.ptr = None

    def _context(self):
        return self.ptr


CURRENT = CallerContext()


@ffi.wasmtime_func_unchecked_callback_t
def _trampoline(env, caller, raw, nraw):
    fn, kinds, has_result = _HOST[env or 0]
    outer = CURRENT.ptr
    CURRENT.ptr = ffi.wasmtime_caller_context(caller)
    try:
        result = fn(*[getattr(raw[i], k) for i, k in enumerate(kinds)])
        if has_result:
            raw[0].i32 = result
        return 0
    except BaseException as e:   # becomes a trap; re-raised by enter_wasm
        _wfunc.LAST_EXCEPTION = e
        trap = wasmtime.Trap("python exception")._consume()
        return cast(trap, c_void_p).value
    finally:
        CURRENT.ptr = outer


@ctypes.CFUNCTYPE(None, c_void_p)
def _finalize(env):
    _HOST.pop(env or 0, None)


def define(linker: wasmtime.Linker, module: str, name: str, params, results, fn,
           engine: wasmtime.Engine) -> None:
    """Define `module.name` (i32/i64 params, at most one i32 result) as `fn(*args)`
    on `linker`, which belongs to `engine`."""
    if len(results) > 1 or any(r != "i32" for r in results):
        raise TypeError("host functions return at most one i32")
    kinds = tuple(params)
    ty = func_type(kinds, tuple(results), engine)
    env = len(_HOST) + 1
    while env in _HOST:
        env += 1
    _HOST[env] = (fn, kinds, bool(results))
    m, n = module.encode(), name.encode()
    error = ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(), ctypes.create_string_buffer(m), len(m), ctypes.create_string_buffer(n),
        len(n), ty.ptr(), _trampoline, env, _finalize)
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
    ctx = CURRENT.ptr
    return (ctypes.addressof(ffi.wasmtime_memory_data(ctx, byref(memory._memory)).contents),
            ffi.wasmtime_memory_data_size(ctx, byref(memory._memory)))


from ctypes import byref  # noqa: E402
