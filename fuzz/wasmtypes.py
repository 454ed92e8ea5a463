"""Structure-aware, differential fuzzing of wasmbin.function_types.

    python -m fuzz.wasmtypes --count 200000 --seed 1

Owns: the seeds (modules with rec groups, sub types, struct and array types,
v128 and GC reference parameters, every import kind, a name imported twice),
the mutators, the checks below and the runner.  Must not: be imported by
wsuper itself (it is a test tool), or accept a failure silently.

function_types reads a module's function imports' and exports' types from its
bytes, in wsuper check's child and in every compile (the types wasmtime's C API
aborts the process to show: wasm.describe).  Each input is a seed mutated 1-4
times: bit flips; bytes set to the type section's own codes (rec, sub, func,
struct, array, ref null, v128); LEB128 integers made overlong, past 32 or 64
bits, or 2^32-1 and 2^31 counts; truncation; a section repeated, dropped, or
moved; a section of one seed spliced into another.

Checks (each failure is reported with its class and a reproducing input):
  errors     only wasmbin.BinaryError or Unsupported leaves function_types.
  wasmtime   where wasmtime (configured as the engines are) compiles the input,
             function_types reads it without raising, has every function import
             and export wasmtime has, and every type it reads as one wasmtime
             can show (not wasmbin.unshown) is the one wasmtime shows (externref
             by its name, which wasmtime's Python API shows as anyref).  A type
             wasmtime cannot show is never asked of it (that aborts this process).
"""
from __future__ import annotations

import argparse
import random
import sys
import traceback

from . import run_and_report

_SEED_TEXTS = [
    '(module (memory (export "memory") 1) (func (export "_start")))',
    '(module (rec (type (struct)) (type $f (sub final (func (param v128) (result i32)))))'
    ' (import "m" "a" (func (type $f))) (import "m" "g" (global i32))'
    ' (func (export "b") (param i32 f64) (result i64) unreachable)'
    ' (func (export "c") (param (ref null 0))) (memory (export "memory") 1)'
    ' (export "a2" (func 0)))',
    '(module (type $s (sub (struct (field i32) (field (mut i8)))))'
    ' (type $t (sub $s (struct (field i32) (field (mut i8)) (field (ref null $s)))))'
    ' (type $a (array (mut i16))) (type $f (func (param (ref null $t) anyref) (result i31ref)))'
    ' (import "wsuper" "params_read" (func (param i32 i32) (result i32)))'
    ' (import "wsuper" "params_read" (func (param v128 i32) (result i32)))'
    ' (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))'
    ' (import "t" "t" (table 1 funcref)) (import "m" "m" (memory 1))'
    ' (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) i32.const 0)'
    ' (func (export "f") (type $f) unreachable))',
    '(module (rec (type $x (func (param (ref $y)))) (type $y (struct (field (ref null $x)))))'
    ' (import "a" "b" (func (param externref funcref) (result f32 f64 i64)))'
    ' (func (export "x") (type $x) unreachable) (export "ab" (func 0))'
    ' (func (export "v") (param v128 v128) (result v128) local.get 0))',
    '(module (tag $e (param i32)) (import "a" "t" (tag (param i64)))'
    ' (func (export "e") (param exnref) (result (ref null exn)) unreachable)'
    ' (func (export "ok") (param i32) (result i32) local.get 0) (export "tag" (tag $e)))',
]

#: Bytes the type section is made of
_CODES = [0x4E, 0x50, 0x4F, 0x60, 0x5F, 0x5E, 0x63, 0x64, 0x7B, 0x7F, 0x7E, 0x70, 0x6F,
          0x6E, 0x69, 0x00, 0x01, 0x80, 0xFF, 0x78, 0x77]
_LEBS = [b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x08", b"\x80\x80\x80\x80\x80\x00",
         b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x80\x00", b"\x81\x80\x80\x80\x00"]


class Failure(Exception):
    """A property the harness checks did not hold: a bug to fix at its root."""

    def __init__(self, check: str, detail: str):
        super().__init__(f"{check}: {detail}")
        self.check, self.detail = check, detail


_STATE: dict = {}


def _setup() -> dict:
    if not _STATE:
        import atexit

        import wasmtime
        atexit.register(_STATE.clear)       # the engine before wasmtime's own teardown

        from compartments import wasm
        _STATE["engine"] = wasmtime.Engine(wasm.engine_config())
        _STATE["seeds"] = [bytes(wasmtime.wat2wasm(t)) for t in _SEED_TEXTS]
    return _STATE


def _sections(data: bytes) -> list[bytes]:
    """The seed's sections, each with its header (seeds are well formed)."""
    from compartments import wasmbin
    return [data[s.header:s.end] for s in wasmbin.sections(data)]


def mutate(rng: random.Random, data: bytes, seeds: list) -> bytes:
    from compartments import wasmbin
    out = bytearray(data)
    pick = rng.random()
    if pick < 0.2 and out:
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    elif pick < 0.45 and len(out) > 8:
        out[rng.randrange(8, len(out))] = rng.choice(_CODES)
    elif pick < 0.6 and len(out) > 8:
        i = rng.randrange(8, len(out))
        out[i:i + rng.randrange(0, 3)] = rng.choice(_LEBS)
    elif pick < 0.7:
        out = out[:rng.randrange(len(out) + 1)]
    else:
        try:
            secs = _sections(bytes(out))
        except wasmbin.BinaryError:
            return bytes(out)
        if secs:
            what = rng.random()
            i = rng.randrange(len(secs))
            if what < 0.3:
                secs.insert(rng.randrange(len(secs) + 1), secs[i])          # repeated
            elif what < 0.5:
                del secs[i]
            elif what < 0.7:
                secs.insert(rng.randrange(len(secs) + 1), secs.pop(i))     # moved
            else:
                other = _sections(rng.choice(seeds))
                if other:
                    secs[i] = rng.choice(other)                             # spliced
        out = bytearray(wasmbin.MAGIC + b"".join(secs))
    return bytes(out)


def _shown(sig) -> tuple:
    """wasm.signature's names: wasmtime's Python API shows externref as "anyref"
    (the C API's WASM_ANYREF), where function_types says what it is."""
    return tuple(tuple("anyref" if t == "externref" else t for t in part) for part in sig)


def check(data: bytes):
    import wasmtime

    from compartments import wasm, wasmbin
    try:
        imports, exports = wasmbin.function_types(data)
    except (wasmbin.BinaryError, wasmbin.Unsupported):
        imports = exports = None
    except Exception as e:  # noqa: BLE001 - what the check is for
        raise Failure("errors", f"{type(e).__name__}: {e}") from None
    try:
        module = wasmtime.Module(_setup()["engine"], data)
    except wasmtime.WasmtimeError:
        return
    if imports is None:
        raise Failure("wasmtime", "function_types refused a module wasmtime compiles")
    for imp in module.imports:
        if isinstance(imp.type, wasmtime.FuncType):
            key = (imp.module, imp.name)
            if key not in imports:
                raise Failure("wasmtime", f"import {key} missing")
            if not wasmbin.unshown(imports[key]):
                # a name imported twice, both shown: the dict holds one of them
                same = [i for i in module.imports if (i.module, i.name) == key]
                if len(same) == 1 and _shown(imports[key]) != wasm.signature(imp.type):
                    raise Failure("wasmtime", f"import {key}: {imports[key]} != "
                                  f"{wasm.signature(imp.type)}")
    for exp in module.exports:
        if isinstance(exp.type, wasmtime.FuncType):
            if exp.name not in exports:
                raise Failure("wasmtime", f"export {exp.name!r} missing")
            if not wasmbin.unshown(exports[exp.name]) and \
                    _shown(exports[exp.name]) != wasm.signature(exp.type):
                raise Failure("wasmtime", f"export {exp.name!r}: {exports[exp.name]} != "
                              f"{wasm.signature(exp.type)}")


def input_of(seed: int, i: int) -> bytes:
    seeds = _setup()["seeds"]
    rng = random.Random(seed * 1_000_003 + i)
    data = rng.choice(seeds)
    if rng.random() < 0.9:
        for _ in range(rng.randrange(1, 5)):
            data = mutate(rng, data, seeds)
    return data


def run(count: int, seed: int = 1, progress=None) -> tuple[int, dict]:
    failures: dict = {}
    for i in range(count):
        try:
            check(input_of(seed, i))
        except Failure as f:
            failures.setdefault(f"{f.check}: {f.detail[:120]}", []).append(i)
        except Exception:  # noqa: BLE001 - a bug in the harness itself
            failures.setdefault("harness: " + traceback.format_exc(limit=2)[-200:],
                                []).append(i)
        if progress and i % 10000 == 9999:
            progress(i + 1, failures)
    return count, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.wasmtypes")
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--show", type=int, metavar="INPUT", help="print input INPUT (hex) and stop")
    args = ap.parse_args(argv)
    if args.show is not None:
        print(input_of(args.seed, args.show).hex())
        return 0
    return run_and_report(run, args.count, args.seed)


if __name__ == "__main__":
    sys.exit(main())
