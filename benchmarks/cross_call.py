"""Round trip of one cross-compartment call: guest in `app` -> supervisor ->
guest export in `calc` -> back.  Runs `wsuper up` with a program making N
calls and with one making none; per call = (t_N - t_0) / N.  Reports the
median of several runs.  Usage: python benchmarks/cross_call.py [N] [RUNS]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = os.path.join(ROOT, "examples", "calc")

LOOP = """(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "calc")
  (func (export "_start") (local $h i32) (local $i i32)
    (local.set $h (call $lookup (i32.const 100) (i32.const 4)))
    (i32.store (i32.const 1024) (i32.const 0)) (i32.store (i32.const 1028) (i32.const 2))
    (i64.store (i32.const 1032) (i64.const 0x0000000100000000))
    (i64.store (i32.const 1040) (i64.const 0x0000000300000002))
    (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (i32.const N)))
      (if (i32.lt_s (call $call (local.get $h) (i64.const 0xc0ffee0000000001) (i32.const 0)
            (i32.const 1024) (i32.const 24) (i32.const 0) (i32.const 0) (i32.const 1000)) (i32.const 0))
          (then unreachable))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))))
"""


def timed(d, n):
    with open(os.path.join(d, "app.wat"), "w") as f:
        f.write(LOOP.replace("N)", f"{n})"))
    with open(os.path.join(d, "s.toml"), "w") as f:
        f.write(f'[system]\nschemas = ["{EX}/calc.capnp"]\n[compartments.calc]\n'
                f'module = "{EX}/calc.wat"\nexports = "Calc"\n[compartments.app]\n'
                f'module = "app.wat"\n[compartments.app.grants]\ncalc = {{ compartment = "calc" }}\n')
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "supervisor.cli", "up", os.path.join(d, "s.toml")],
                   cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory() as d:
        per = [(timed(d, n) - timed(d, 0)) / n * 1e6 for _ in range(runs)]
    print(f"cross-compartment call round trip: median {statistics.median(per):.1f} us "
          f"(runs: {', '.join(f'{p:.1f}' for p in per)}; N={n}, cpus={os.cpu_count()})")


if __name__ == "__main__":
    main()
