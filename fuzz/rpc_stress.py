"""A randomized stress of the router with real pycapnp clients, under CPU load.

    python -m fuzz.rpc_stress --seeds 1-20 --ops 400 --conns 3 --load 2

Starts `wsuper up` on a system of calc (examples/calc) and echo (an Echo that
returns its params, capabilities included), with `--load` busy loops beside it,
and runs tests/rpcstress.py's random client sequences, one seed after another,
against the same supervisor.  After each seed (its clients closed) it checks:
the supervisor is up, no event line reports an internal error, a connection
aborted, a protocol error, a restart or an exit (tests/rpcstress.BAD_EVENTS),
the compartments hold no capability and wait on no call (`wsuper status`), and
the client's own objects were all released while its connections were open.
Exits 1 at the first failure, with the seed and the output to reproduce it.

tests/integration/test_rpc_stress.py runs one small fixed seed of the same.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import rpcstress  # noqa: E402
from tests.conftest import Running  # noqa: E402


def _seeds(text: str) -> list:
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1-10", help="e.g. 1-20 or 3,7,9")
    ap.add_argument("--ops", type=int, default=300, help="operations per seed")
    ap.add_argument("--conns", type=int, default=3, help="connections open at a time")
    ap.add_argument("--load", type=int, default=1, help="busy loops beside the supervisor")
    ap.add_argument("--only", default="", help="only these operations (comma-separated; "
                    "see tests/rpcstress.OPS)")
    ap.add_argument("--verbose", action="store_true", help="print every operation")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="wsuper-rpcstress-")
    system = rpcstress.write_system(tmp)
    sock = os.path.join(tmp, "ext.sock")
    busy = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(args.load)]
    run = Running(["up", system])
    failed = 0
    total = rpcstress.Stats()
    began = time.monotonic()
    try:
        run.wait_for("ready calc")
        run.wait_for("ready echo")
        for seed in _seeds(args.seeds):
            start = len(run.lines)
            t0 = time.monotonic()
            problem = None
            try:
                stats = rpcstress.drive(sock, tmp, seed, args.ops, args.conns,
                                        log=print if args.verbose else None,
                                        only=[o for o in args.only.split(",") if o])
            except Exception as e:  # noqa: BLE001 - reported with its seed
                problem = f"{type(e).__name__}: {e}"
                stats = {}
            if run.proc.poll() is not None:
                problem = (problem or "") + f"; the supervisor exited ({run.proc.returncode})"
            else:
                left = rpcstress.leftovers(system)
                if left:
                    problem = (problem or "") + f"; left over in the compartments: {left}"
                for c in rpcstress.status(system)["compartments"]:
                    if c["restarts"]:
                        problem = (problem or "") + f"; {c['name']} restarted"
            if stats.get("observers_left"):
                problem = (problem or "") + \
                    f"; {stats['observers_left']} observers still held by the supervisor"
            # read what the supervisor said meanwhile (without blocking for long)
            _drain(run)
            bad = rpcstress.bad_lines(run.lines[start:])
            if bad:
                problem = (problem or "") + "; supervisor said:\n  " + "\n  ".join(bad[:20])
            for k, v in stats.items():
                total.bump(k, v)
            print(f"seed {seed}: {args.ops} ops, {stats.get('connections', '?')} connections, "
                  f"{time.monotonic() - t0:.1f} s: " + ("ok" if problem is None else
                                                         "FAILED " + problem), flush=True)
            if problem is not None:
                failed += 1
                print("supervisor output during the seed:\n  "
                      + "\n  ".join(run.lines[start:][-60:]))
                break
    finally:
        run.stop()
        for b in busy:
            b.kill()
            b.wait()
    print(f"{time.monotonic() - began:.0f} s, load {args.load}; totals:")
    for k in sorted(total):
        print(f"  {k}: {total[k]}")
    return 1 if failed else 0


def _drain(run, wait: float = 0.5):
    """Read the supervisor's output lines that came so far."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(run.proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0, deadline - time.monotonic())):
            break
        line = run.proc.stdout.readline()
        if not line:
            break
        from supervisor.output import strip_time
        run.lines.append(strip_time(line.rstrip("\n")))
    sel.close()


if __name__ == "__main__":
    sys.exit(main())
