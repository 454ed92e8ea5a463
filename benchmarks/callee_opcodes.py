"""The interpreter opcodes a callee engine runs for each plain call it serves.

    .venv/bin/python benchmarks/callee_opcodes.py [PER_READ] [--pinned] [--top N]

benchmarks/callee.py's engine (calc, forked, its calls' deadlines on), sent
6,000 `Calc.add` calls PER_READ at a time (17 by default); in the engine,
from its 3,000th served call on, `sys.settrace` with `f_trace_opcodes` counts
every opcode of the frames entered for the next 340 calls (the loop's own
frames, entered before, are resumed, and count too), by function.  Prints the
opcodes per served call, without this script's own wrapper of
`Engine._serve_call` (~33), and the N functions that run the most.  A measure
a noisy, shared machine does not move, unlike CPU time.

The tracing slows the engine ~50 times, which takes it past LOOK_AHEAD_NS and
HOLD_NS between calls of a read: it looks ahead and writes answers where an
untraced engine seldom does (~35 opcodes a call).  `--pinned` sets both past
reach in the engine, for the branches an untraced engine takes: run after run
the same count (but for a garbage collection's finalizers, should one fall in
the traced calls).
"""
import argparse
import collections
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import callee  # noqa: E402
import opcodes  # noqa: E402
from compartments import engine as E  # noqa: E402

WARM, TRACED = 3000, 340


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("per_read", type=int, nargs="?", default=17)
    ap.add_argument("--pinned", action="store_true",
                    help="look-ahead and held answers as an untraced engine has them")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    if a.pinned:
        E.LOOK_AHEAD_NS = E.HOLD_NS = 10 ** 15       # the forked engine inherits these
    out = tempfile.NamedTemporaryFile(prefix="callee-opcodes-", delete=False).name
    counts: collections.Counter = collections.Counter()
    served = [0]

    tracer = opcodes.tracer(counts)
    serve_call = E.Engine._serve_call

    def counted(self, *args):
        served[0] += 1
        if served[0] == WARM:
            sys.settrace(tracer)
        elif served[0] == WARM + TRACED:
            sys.settrace(None)
            counts.pop(f"{os.path.basename(__file__)}:counted", None)
            with open(out, "w") as f:
                f.write(f"opcodes per call {sum(counts.values()) / TRACED:.0f}\n")
                for key, n in counts.most_common(a.top):
                    f.write(f"{n / TRACED:7.1f} {key}\n")
        return serve_call(self, *args)

    E.Engine._serve_call = counted
    callee.main(2 * WARM, a.per_read)
    try:
        with open(out) as f:
            print(f.read(), end="")
    finally:
        os.unlink(out)


if __name__ == "__main__":
    main()
