"""Round trip of one cross-compartment call: guest in `app` -> supervisor ->
guest export in `calc` -> back.  Runs `wsuper up` with a program making N
calls and with one making none; per call = (t_N - t_0) / N.

Baseline, measured in the same run: a plain-Python relay over socketpairs,
A -> R -> B -> R -> A with 64-byte messages (three processes, the same shape
as a mediated call).  The headline is the ratio; absolute times drift on
shared machines.  With --attenuated, the grant carries an allow-list and is
revocable, and every call is audited to a file (the cost of the membrane and
the audit).  Usage: python benchmarks/cross_call.py [N] [RUNS] [--attenuated]
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


ATTENUATED = "--attenuated" in sys.argv


def timed(d, n):
    with open(os.path.join(d, "app.wat"), "w") as f:
        f.write(LOOP.replace("N)", f"{n})"))
    with open(os.path.join(d, "s.toml"), "w") as f:
        grant = ('{ compartment = "calc", allow = ["add"], revocable = true }' if ATTENUATED
                 else '{ compartment = "calc" }')
        audit = f'audit = "{d}/audit.jsonl"\n' if ATTENUATED else ""
        f.write(f'[system]\n{audit}schemas = ["{EX}/calc.capnp"]\n[compartments.calc]\n'
                f'module = "{EX}/calc.wat"\nexports = "Calc"\n[compartments.app]\n'
                f'module = "app.wat"\n[compartments.app.grants]\ncalc = {grant}\n')
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "supervisor.cli", "up", os.path.join(d, "s.toml")],
                   cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t


def python_relay(n: int) -> float:
    """Microseconds per round trip through a blocking Python relay process."""
    import socket
    a_r, r_a = socket.socketpair()
    b_r, r_b = socket.socketpair()
    pids = []
    for role in ("relay", "echo"):
        pid = os.fork()
        if pid == 0:
            try:
                keep = (r_a, r_b) if role == "relay" else (b_r,)
                for sock in (a_r, r_a, b_r, r_b):
                    if sock not in keep:
                        sock.close()
                if role == "relay":
                    while d := r_a.recv(4096):
                        r_b.sendall(d)
                        r_a.sendall(r_b.recv(4096))
                else:
                    while d := b_r.recv(4096):
                        b_r.sendall(d)
            finally:
                os._exit(0)
        pids.append(pid)
    r_a.close(), r_b.close()
    msg = b"x" * 64
    t = time.perf_counter()
    for _ in range(n):
        a_r.sendall(msg)
        a_r.recv(4096)
    per = (time.perf_counter() - t) / n * 1e6
    a_r.close(), b_r.close()
    for pid in pids:
        os.waitpid(pid, 0)
    return per


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 5000
    runs = int(args[1]) if len(args) > 1 else 5
    with tempfile.TemporaryDirectory() as d:
        per, base = [], []
        for _ in range(runs):
            base.append(python_relay(n))
            per.append((timed(d, n) - timed(d, 0)) / n * 1e6)
    ratios = [p / b for p, b in zip(per, base)]
    affinity = len(os.sched_getaffinity(0))
    kind = "attenuated+audited call" if ATTENUATED else "cross-compartment call"
    print(f"{kind}: median {statistics.median(per):.1f} us "
          f"(runs {', '.join(f'{p:.0f}' for p in per)})")
    print(f"python relay baseline:  median {statistics.median(base):.1f} us "
          f"(runs {', '.join(f'{b:.0f}' for b in base)})")
    print(f"ratio call/relay: median {statistics.median(ratios):.1f}x "
          f"(N={n}, runs={runs}, cpus usable={affinity})")


if __name__ == "__main__":
    main()
