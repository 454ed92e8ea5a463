"""Where a plain compartment call's three parties run on two cores, and what it costs.

    .venv/bin/python benchmarks/placement.py                 # 30,000 calls, left to the scheduler
    .venv/bin/python benchmarks/placement.py --pin 0:1:0     # caller : server : supervisor CPUs
    .venv/bin/python benchmarks/placement.py --pin 0:0:0 --pin 0:1:0 --rounds 3   # by turns

Runs the suite's own measure (`suite.compartment_call("call", n, d)`: a guest calling
Calc.add on another compartment, p50 as the calling engine times it) while a watcher
thread reads, every 10 ms, each thread of the supervisor and of the two engines
(`/proc/PID/task/TID/stat` field 39, the CPU it last ran on, and `schedstat`, its CPU
time).  With --pin, once both engines have run 20 ms of CPU (the serving engine is the
one with more), every thread of the calling engine, of the serving engine and of the
supervisor is pinned to the CPU given for it.  Prints one line a run: the p50, each
party's CPU time per call and the CPUs it was seen running on, and the vCPU halts per
call (cpuidle state 1 entries of all CPUs over the run, where the guest has them).
docs/performance.md, "Two cores: the plain call's two modes" (r255).
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import suite  # noqa: E402


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _tids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _state_cpu(pid: int, tid: int) -> tuple[str, int]:
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        s = f.read()
    rest = s[s.rindex(")") + 2:].split()
    return rest[0], int(rest[36])               # state, field 39: the CPU it last ran on


def _cpu_ms(pid: int, tid: int) -> float:
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e6


def _halts() -> int | None:
    paths = glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpuidle/state1/usage")
    if not paths:
        return None
    return sum(int(open(p).read()) for p in paths)


def run(n: int, pin: tuple[int, int, int] | None) -> str:
    me = os.getpid()
    seen: dict = collections.defaultdict(collections.Counter)
    cpu: dict = {}
    found: dict = {}
    stop = threading.Event()

    def watch():
        pinned = False
        while not stop.is_set():
            kids = _children(me)
            if kids:
                sup = kids[0]
                # the zygote's children: the two engines and its spare forks (idle)
                forks = [c for z in _children(sup) for c in _children(z)]
                for p in forks:
                    try:
                        cpu[(p, p)] = _cpu_ms(p, p)
                    except OSError:
                        pass
                engines = sorted(forks, key=lambda p: -cpu.get((p, p), 0))[:2]
                found["sup"] = sup
                busy = sum(cpu.get((p, p), 0) for p in engines)
                if len(engines) == 2 and busy > found.get("busy", 0):   # not the spares
                    found["engines"], found["busy"] = engines, busy      # once the engines end
                for p in [sup] + engines:
                    for t in _tids(p):
                        try:
                            state, where = _state_cpu(p, t)
                            cpu[(p, t)] = _cpu_ms(p, t)
                        except (OSError, ValueError):
                            continue
                        if state == "R":
                            seen[(p, t)][where] += 1
                if pin and not pinned and len(engines) == 2 \
                        and min(cpu.get((p, p), 0) for p in engines) > 20:
                    server, caller = engines
                    for p, c in ((caller, pin[0]), (server, pin[1]), (sup, pin[2])):
                        for t in _tids(p):
                            try:
                                os.sched_setaffinity(t, {c})
                            except OSError:
                                pass
                    pinned = True
            stop.wait(0.01)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    h0 = _halts()
    r = suite.compartment_call("call", n, tempfile.mkdtemp())
    h1 = _halts()
    stop.set()
    w.join()
    sup = found["sup"]
    server, caller = sorted(found["engines"], key=lambda p: -cpu.get((p, p), 0))
    threads = [k for k in cpu if k[0] == sup and k[1] != sup]
    lane = max(threads, key=cpu.get)              # the supervisor's busiest thread but trio's
    parts = [f"{':'.join(map(str, pin)) if pin else 'unpinned'}: p50 {r['p50_us']:.1f} us"]
    for name, k in (("caller", (caller, caller)), ("server", (server, server)),
                    ("lane", lane), ("trio", (sup, sup))):
        parts.append(f"{name} {cpu[k] * 1000 / n:.1f} us/call on {dict(sorted(seen[k].items()))}")
    if h0 is not None:
        parts.append(f"vCPU halts/call {(h1 - h0) / n:.2f}")
    return " | ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30000, help="calls a run")
    ap.add_argument("--pin", action="append", default=[],
                    help="CALLER:SERVER:SUPERVISOR CPUs (repeat to run placements by turns)")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    pins = [tuple(int(x) for x in p.split(":")) for p in a.pin] or [None]
    for _ in range(a.rounds):
        for p in pins:
            print(run(a.n, p), flush=True)


if __name__ == "__main__":
    main()
