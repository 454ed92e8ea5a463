"""instance = "per_call": what a call's fresh instance costs the engine, and a call served
in one, against a shared instance's; in interleaved rounds, as CPU time (the VM is
shared: wall time moves with the other work on it).

    .venv/bin/python benchmarks/per_call.py                  # this checkout
    .venv/bin/python benchmarks/per_call.py --against ../old # and another, interleaved

Each round runs one process per variant (the order reversed every other round):
  fresh    Engine._fresh_instance + the release after the answer (the store
           closed), examples/calc/calc.wat: pooled (engine.pool_for) and from
           the default allocator (pool=False: a call nested in another's)
  served   a Calc.add served by an Engine on a recording socket (its supervisor
           played in-process, tests/enginedriver.py): shared, per_call pooled,
           per_call from the default allocator
--against TREE runs the same in TREE (with TREE/.venv/bin/python; a checkout
without the pool measures what it has), and prints this checkout's figures
over TREE's.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def measure(tree: str, reps: int) -> dict:
    """In this process, the code of `tree`: median CPU us of each figure."""
    sys.path.insert(0, tree)
    from capnp_schemas.protocol import Content
    from compartments.engine import Engine
    from compartments.spec import EngineSpec
    from fuzz.hostmem import Recorded
    from tests.enginedriver import Driven
    calc = os.path.join(tree, "examples", "calc", "calc.wat")
    pooled = "pool" in inspect.signature(Engine.__init__).parameters
    params = Content.standalone([struct.pack("<2Q", 0x0000000100000000, 0x0000000300000002)])

    def engine(per_call, pool):
        kw = {"pool": pool} if pooled else {}
        return Engine(Recorded(), EngineSpec(name="calc", module=calc, exports=True,
                                             per_call=per_call), **kw)

    def fresh(pool):
        e = engine(True, pool)
        return lambda: e._leave_instance(e._fresh_instance(time.monotonic() + 3600, 0))()

    def served(per_call, pool):
        d = Driven(engine(per_call, pool))

        def call():
            ev = d.ask(d.sup.send_call(d.main, 0xc0ffee0000000001, 0, params)[1])
            assert ev.payload is not None, ev.error
        return call
    variants = {"fresh": fresh(None), "served shared": served(False, None),
                "served per_call": served(True, None)}
    if pooled:
        variants["fresh, default allocator"] = fresh(False)
        variants["served per_call, default allocator"] = served(True, False)

    def cpu_us(fn, n):
        t = time.thread_time()
        for _ in range(n):
            fn()
        return (time.thread_time() - t) / n * 1e6
    for fn in variants.values():
        cpu_us(fn, 100)
    return {k: statistics.median(cpu_us(fn, reps) for _ in range(5)) for k, fn in variants.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", help="another checkout, measured in the same rounds")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.reps)))
        return
    trees = {"this": ROOT}
    if args.against:
        trees["against"] = os.path.abspath(args.against)
    results: dict = {t: [] for t in trees}
    for r in range(args.rounds):
        for t in (list(trees) if r % 2 == 0 else list(reversed(trees))):
            py = os.path.join(trees[t], ".venv", "bin", "python")
            out = subprocess.run([py if os.path.exists(py) else sys.executable, __file__,
                                  "--one", trees[t], "--reps", str(args.reps)],
                                 capture_output=True, text=True, cwd=trees[t], check=True)
            results[t].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def spread(xs):
        return f"{statistics.median(xs):.3g} [{min(xs):.3g}..{max(xs):.3g}]"
    for t, rounds in results.items():
        print(f"{t} ({trees[t]}): CPU us, median [min..max] of {args.rounds} rounds")
        for key in rounds[0]:
            print(f"  {key:36s} {spread([r[key] for r in rounds])}")
        print(f"  {'served per_call / served shared':36s} "
              f"{spread([r['served per_call'] / r['served shared'] for r in rounds])}")
    if args.against:
        print("this / against, within each round")
        for key in results["against"][0]:
            print(f"  {key:36s} "
                  f"{spread([a[key] / b[key] for a, b in zip(results['this'], results['against'])])}")


if __name__ == "__main__":
    main()
