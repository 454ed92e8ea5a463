"""Generated-module, differential fuzzing of the bulk-memory walk of memory protection.

    python -m fuzz.wasmbulk --count 500 --seed 1

Owns: the generator (`wasm-tools smith`, every proposal the engines enable, up
to two memories), the insertion of bulk-memory instructions, the checks below
and the runner.  Must not: be imported by wsuper itself, or accept a failure
silently.

wasmbin.add_bulk_checks puts a check before every memory.fill, memory.copy and
memory.init on memory 0 (docs/memory-protection.md, "Bulk memory"); to find
them it walks every instruction of every function, and one instruction whose
immediates it misreads would hide the bytes that follow it.  Its own tests
and fuzz/wasmtypes.py feed it hand-written and mutated modules; here each
input is a module wasm-tools smith generates from random bytes (every kind of
instruction, block and type it makes, in any order), printed as text, with a
stack-neutral bulk-memory instruction (its operands folded: constants) written
after about a third of its instructions at random: `memory.fill` and
`memory.copy` on memory 0 and, where it has two memories, on memory 1 and
from one to the other (besides any smith made, memory.init among them).

Checks (each failure is reported with its class and the input's number):
  walk       where wasmtime, configured as the engines are, compiles the module,
             the walk reads every function body to its end without raising, and
             finds the bulk-memory instructions wasm-tools prints, each with its
             memories, in order.
  rewrite    add_bulk_checks rewrites it (or leaves it alone when none is on
             memory 0), and wasmtime compiles the result.
Inputs of which smith makes no module, or one wasmtime does not compile, are
counted, not failures.
"""
from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import tempfile
import traceback

from . import run_and_report

SMITH = ["--bulk-memory-enabled", "true", "--simd-enabled", "true",
         "--relaxed-simd-enabled", "true", "--threads-enabled", "true",
         "--reference-types-enabled", "true", "--tail-call-enabled", "true",
         "--gc-enabled", "true", "--exceptions-enabled", "true",
         "--wide-arithmetic-enabled", "true", "--extended-const-enabled", "true",
         "--saturating-float-to-int-enabled", "true", "--sign-extension-ops-enabled", "true",
         "--memory64-enabled", "false", "--compact-imports-enabled", "false",
         "--min-memories", "1", "--max-memories", "2",
         "--min-funcs", "1", "--max-funcs", "20", "--max-instructions", "400"]
KINDS = ["numeric,vector,control,variable,memory,parametric",
         "aggregate,reference,control,table,parametric,variable", None]
# (text, sub-opcode, memories as the walk reports them)
BULK = [("(memory.fill (i32.const 0) (i32.const 0) (i32.const 0))", 11, (0,)),
        ("(memory.copy (i32.const 0) (i32.const 0) (i32.const 0))", 10, (0, 0))]
BULK2 = [("(memory.fill 1 (i32.const 0) (i32.const 0) (i32.const 0))", 11, (1,)),
         ("(memory.copy 0 1 (i32.const 0) (i32.const 0) (i32.const 0))", 10, (0, 1)),
         ("(memory.copy 1 0 (i32.const 0) (i32.const 0) (i32.const 0))", 10, (1, 0))]


class Failure(Exception):
    def __init__(self, check: str, detail: str):
        super().__init__(detail)
        self.check, self.detail = check, detail


class NotCompiled(Exception):
    """An input the engines would not compile: not a case."""


def _tools():
    import wasmtime

    from compartments import instrument, wasm
    return instrument.wasm_tools(), wasmtime.Engine(wasm.engine_config())


def _with_bulk(rng: random.Random, text: str) -> tuple[str, list]:
    """`text` with bulk-memory instructions after some of its functions'
    instructions; what was inserted, in order."""
    memories = len(re.findall(r"^  \(memory ", text, re.M))
    choices = BULK + (BULK2 if memories > 1 else [])
    out, inserted, in_func = [], [], False
    for line in text.splitlines():
        out.append(line)
        if line.startswith("  ("):
            in_func = line.startswith("  (func")
            continue
        s = line.strip()
        if in_func and _THERE.match(s):        # one smith made: the walk finds it too
            inserted.append(_as_walked(s))
        if in_func and line.startswith("    ") and s and s[0] not in "(;" and \
                rng.random() < 0.3:
            ins, sub, mems = rng.choice(choices)
            out.append("    " + ins)
            inserted.append((sub, mems))
    return "\n".join(out) + "\n", inserted


_THERE = re.compile(r"memory\.(fill|copy|init)\b([ 0-9]*)(;;.*)?$")


def _as_walked(line: str) -> tuple:
    """(sub-opcode, memories) of a bulk-memory instruction as wasm-tools prints it:
    `memory.fill [mem]`, `memory.copy [dst src]`, `memory.init [mem] data`."""
    m = _THERE.match(line)
    op, args = m.group(1), [int(a) for a in m.group(2).split()]
    if op == "fill":
        return 11, (args[0] if args else 0,)
    if op == "copy":
        return 10, tuple(args) if args else (0, 0)
    return 8, (args[0] if len(args) == 2 else 0,)


def _walk(data: bytes) -> list:
    """(sub-opcode, memories) of every bulk-memory instruction the walk finds."""
    from compartments import wasmbin
    code = [s for s in wasmbin.sections(data) if s.id == 10]
    found: list = []
    if not code:
        return found
    r = wasmbin._Reader(data, code[0].start, code[0].end)
    for _ in range(r.count()):
        size = r.uleb()
        start, end = r.pos, r.pos + size
        body = wasmbin._Reader(data, start, end)
        for _ in range(body.count()):
            body.uleb()
            wasmbin._valtype(body)
        wasmbin._scan(body, lambda at, sub, mems: found.append((sub, tuple(mems))))
        if body.pos != end:
            raise Failure("walk", f"function body read to {body.pos - start} of {size} bytes")
        r.pos = end
    return found


def case(tools, seed: int, i: int, tmp: str):
    import wasmtime

    from compartments import wasmbin
    binary, engine = tools
    rng = random.Random(f"{seed}:{i}")
    raw = bytes(rng.getrandbits(8) for _ in range(rng.choice([1000, 4000, 8000])))
    kinds = rng.choice(KINDS)
    made = subprocess.run([binary, "smith", *SMITH, *(["--allowed-instructions", kinds]
                                                      if kinds else []), "-o", f"{tmp}/m.wasm"],
                          input=raw, capture_output=True, timeout=60)
    if made.returncode:
        raise NotCompiled("smith")
    text = subprocess.run([binary, "print", f"{tmp}/m.wasm"], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    text, inserted = _with_bulk(rng, text)
    with open(f"{tmp}/b.wat", "w", encoding="utf-8") as f:
        f.write(text)
    if subprocess.run([binary, "parse", f"{tmp}/b.wat", "-o", f"{tmp}/b.wasm"],
                      capture_output=True, timeout=60).returncode:
        raise NotCompiled("parse")
    data = open(f"{tmp}/b.wasm", "rb").read()
    try:
        wasmtime.Module(engine, data)
    except wasmtime.WasmtimeError:
        raise NotCompiled("wasmtime") from None
    try:
        found = _walk(data)
    except (wasmbin.BinaryError, wasmbin.Unsupported) as e:
        raise Failure("walk", f"{type(e).__name__}: {e}") from None
    if found != inserted:
        raise Failure("walk", f"found {len(found)} bulk-memory instructions, "
                              f"{len(inserted)} were inserted")
    try:
        checked = wasmbin.add_bulk_checks(data, 4096, 4096, 8192)
    except (wasmbin.BinaryError, wasmbin.Unsupported) as e:
        raise Failure("rewrite", f"{type(e).__name__}: {e}") from None
    on_memory_0 = any((m[0] if sub == 10 else m[-1]) == 0 or (sub == 10 and m[1] == 0)
                      for sub, m in inserted)
    if (checked is None) == on_memory_0:
        raise Failure("rewrite", f"rewritten: {checked is not None}, bulk-memory "
                                 f"instructions on memory 0: {on_memory_0}")
    if checked is not None:
        try:
            wasmtime.Module(engine, checked)
        except wasmtime.WasmtimeError as e:
            raise Failure("rewrite", f"wasmtime refuses the result: "
                                     f"{str(e).splitlines()[0]}") from None


def run(count: int, seed: int = 1, progress=None) -> tuple[int, dict]:
    tools = _tools()
    failures: dict = {}
    skipped = 0
    with tempfile.TemporaryDirectory(prefix="wasmbulk-") as tmp:
        for i in range(count):
            try:
                case(tools, seed, i, tmp)
            except NotCompiled:
                skipped += 1
            except Failure as f:
                failures.setdefault(f"{f.check}: {f.detail[:120]}", []).append(i)
            except Exception:  # noqa: BLE001 - a bug in the harness itself
                failures.setdefault("harness: " + traceback.format_exc(limit=2)[-200:],
                                    []).append(i)
            if progress and i % 100 == 99:
                progress(i + 1, failures)
    print(f"{skipped} of {count} inputs made no module wasmtime compiles (not cases)",
          file=sys.stderr)
    return count, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.wasmbulk")
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    return run_and_report(run, args.count, args.seed)


if __name__ == "__main__":
    sys.exit(main())
