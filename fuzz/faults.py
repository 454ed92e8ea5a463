"""Faults injected inside a running supervisor, at random points, of random kinds.

    python -m fuzz.faults --count 200 --seed 1

Starts `wsuper up` under tests/faults.py (the real command, with POINTS of its
per-peer code wrapped to raise once when armed) on tests/faultcases.py's system:
two calc compartments served to external clients, and three programs making host
calls all the time.  Each input is a point (tests/faultcases.CASES: the reader of
a peer's messages, a host call and its completion, a reply's delivery, a new
connection, an engine's end and restart, its stderr, its process's watch, an admin
answer, a revoke, a probe, the calls' clock), an exception kind (tests/faults.KINDS:
KeyError, AssertionError, struct.error, UnicodeDecodeError, OSError, MemoryError,
RecursionError, capnp.KjException, a group as a nested nursery raises, ...),
on the program that restarted longest ago.  Checks (tests/faultcases.check): the fault is said in a
line naming it, the supervisor lives, every compartment answers, the one cut off
comes back.  A failure is the class of issue 10: fix it at its boundary.  A
supervisor that died is started again, and the next inputs go on.

tests/integration/test_injected_faults.py runs every point once, and a few
inputs of this.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import faultcases as FC, faults  # noqa: E402

from . import run_and_report  # noqa: E402


def _last_ready(run, name: str) -> int:
    return max((i for i, x in enumerate(run.lines) if f"ready {name} pid=" in x), default=-1)


def run(count: int, seed: int, progress=None):
    """`count` random faults on one system (started again if one ended it);
    (done, {failure class: [input numbers]})."""
    import pathlib
    rng = random.Random(seed)
    failures: dict = {}
    with tempfile.TemporaryDirectory(prefix="wsuper-faults-") as tmp:
        tmp = pathlib.Path(tmp)
        toml = FC.write_system(tmp)
        sock = str(tmp / "ext.sock")
        held = None
        try:
            for n in range(count):
                if held is None or held.proc.poll() is not None:
                    if held is not None:
                        held.stop()
                    held = FC.start(tmp)
                point = rng.choice(list(FC.CASES))
                kind = rng.choice(faults.KINDS)
                # the program that restarted longest ago: restarts in a row wait
                # twice as long each (up to 10 s), which only slows the run down
                ticker = min(FC.TICKERS, key=lambda t: _last_ready(held, t))
                try:
                    FC.check(held, sock, toml, point, kind, ticker)
                except Exception as e:  # noqa: BLE001 - each failure is a finding
                    alive = held.proc.poll() is None
                    why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
                    key = f"{point} {kind}: {'' if alive else 'supervisor ended: '}{why}"
                    failures.setdefault(key, []).append(n)
                    held.stop()
                    held = None
                if progress is not None and (n + 1) % 20 == 0:
                    progress(n + 1, failures)
        finally:
            if held is not None:
                held.stop()
    return count, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100, help="faults to inject")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    return run_and_report(run, args.count, args.seed)


if __name__ == "__main__":
    sys.exit(main())
