"""Fuzz harnesses for wsuper's trust boundaries (not part of the installed package).

protocol.py  the wire and protocol layer: mutated RPC messages into a
             Connection, the hand decoder against pycapnp, the single-segment
             copier against pycapnp.  `python -m fuzz.protocol --help`.
seeds.py     its seed messages and contents, and the connection they meet.
router.py    the router and the host layer's params.
hostmem.py   host calls on guest memory, native against Python.
lane.py      the fast lane against the Python router, over real sockets.
policy.py    the system file: parse, errors, what `wsuper check` prints.
wasi.py      hostile WASI calls under wsuper and under wasmtime's own WASI.
faults.py    exceptions injected inside a running supervisor, at random points.
"""


def run_and_report(run, count: int, seed: int) -> int:
    """`run(count, seed, progress) -> (done, {failure class: [inputs]})`, with
    progress on stderr every 10,000 inputs and a summary; exit code 1 on any failure."""
    import sys
    import time
    t = time.monotonic()

    def progress(n, failures):
        print(f"{n} inputs, {len(failures)} failure classes, {time.monotonic() - t:.0f} s",
              file=sys.stderr, flush=True)
    done, failures = run(count, seed, progress)
    print(f"{done} inputs in {time.monotonic() - t:.1f} s: "
          f"{'no failures' if not failures else f'{len(failures)} failure classes'}")
    for key, inputs in failures.items():
        print(f"  {key}  (inputs {inputs[:5]})")
    return 1 if failures else 0

