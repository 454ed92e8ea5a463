"""Calling a wasm export of a known type without wasmtime-py's per-call checks.

wasmtime-py's `Func.__call__` asks the engine for the function's type and
converts every argument through `Val` on each call: about 60 µs per call here.
The engine calls `wsuper_dispatch` once per incoming call, with a signature it
has already verified, so it uses the C API's `wasmtime_func_call_unchecked`
directly (through wasmtime-py's own ctypes bindings: pinned version, see
pyproject.toml).  Traps and Python exceptions raised by host functions come
back exactly as through `Func.__call__` (wasmtime-py's `enter_wasm`).
"""
from __future__ import annotations

from ctypes import byref

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._func import enter_wasm


def signature(store, func: wasmtime.Func) -> tuple:
    ty = func.type(store)
    return (tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results))


class TypedFunc:
    """A wasm function whose (params, results) were checked once, at creation."""

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func, params: tuple, results: tuple,
                 actual: tuple | None = None):
        """`actual`: the export's (params, results) if already known from its module."""
        actual = actual or signature(store, func)
        if actual != (tuple(params), tuple(results)):
            raise TypeError(f"expected func {list(params)} -> {list(results)}, "
                            f"found {list(actual[0])} -> {list(actual[1])}")
        if any(k not in ("i32", "i64") for k in (*params, *results)) or len(results) > 1:
            raise TypeError("only i32/i64 parameters and at most one result are supported")
        self._store = store
        self._func = func._func
        self._params = tuple(params)
        self._result = results[0] if results else None
        self._slots = max(len(params), len(results))

    def bind(self, store: wasmtime.Store, func: wasmtime.Func) -> "TypedFunc":
        """The same signature on another instance of the same module (no check again:
        an export of one module has one type)."""
        other = object.__new__(TypedFunc)
        other.__dict__.update(self.__dict__)
        other._store, other._func = store, func._func
        return other

    def __call__(self, *args):
        # A fresh array per call: the guest may re-enter (a callback) before we return.
        raw = (ffi.wasmtime_val_raw_t * max(self._slots, 1))()
        for i, (kind, value) in enumerate(zip(self._params, args, strict=True)):
            setattr(raw[i], kind, value)
        with enter_wasm(self._store) as trap:
            error = ffi.wasmtime_func_call_unchecked(
                self._store._context(), byref(self._func), raw, self._slots, trap)
            if error:
                raise wasmtime.WasmtimeError._from_ptr(error)
        return getattr(raw[0], self._result) if self._result else None
