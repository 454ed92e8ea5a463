"""Where the CPU of a throughput run goes: each thread's CPU per call.

    .venv/bin/python benchmarks/throughput_cpu.py wsuper [CALLS] [RUNS]
    .venv/bin/python benchmarks/throughput_cpu.py relay  [CALLS] [RUNS]

Starts wsuper with the calc compartment on its external endpoint (or
pycapnp's server and relay, peers.py), drives CALLS calls of Calc.add with
the load generator (loadgen.py: 100 in flight), RUNS times, and prints the
calls/s of each run and the CPU each thread of the system used per call
(user + system, from /proc/PID/task/*/stat, so the load generator itself is
not counted; engines are forked from the zygote, so they carry its command
line, "-m compartments.zygote").  With wsuper, WSUPER_STATS=1 makes it print the fast lane's
counters at the end (calls and returns it forwarded, messages it left to
Python, wake-ups, reads, writes).  Run it under `taskset -c 0` for one core.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import loadgen  # noqa: E402

EX = os.path.join(ROOT, "examples", "calc")
TICK = os.sysconf("SC_CLK_TCK")


def threads(pids) -> dict:
    """(pid, tid, name) -> CPU seconds so far, for every thread of `pids`."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    name = f.read().split(b"\0")[2:4]
            except OSError:
                continue
            label = b" ".join(name).decode(errors="replace") or "?"
            out[(pid, int(tid), label)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def descendants(pid: int) -> list[int]:
    pids, found = [pid], True
    while found:
        found = False
        for p in os.listdir("/proc"):
            if not p.isdigit() or int(p) in pids:
                continue
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid in pids:
                pids.append(int(p))
                found = True
    return pids


def start(mode: str, d: str):
    """(processes, socket path) of the system under test, ready."""
    if mode == "wsuper":
        sock, path = os.path.join(d, "ws.sock"), os.path.join(d, "ext.toml")
        with open(path, "w") as f:
            f.write(f'[system]\nschemas = ["{EX}/calc.capnp"]\nsocket = "{sock}"\n'
                    f'external_limits = {{ in_flight = 256 }}\n'
                    f'[compartments.calc]\nmodule = "{EX}/calc.wat"\nexports = "Calc"\n'
                    f'external = true\n[compartments.calc.limits]\nin_flight = 256\n')
        up = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "up", path], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=dict(os.environ, WSUPER_STATS="1"))
        while "ready calc" not in (line := up.stdout.readline()):
            if not line:
                raise SystemExit("wsuper up ended early")
        return [up], sock
    procs = []
    for args in (["server", os.path.join(d, "s.sock")],
                 ["relay", os.path.join(d, "r.sock"), os.path.join(d, "s.sock")]):
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "peers.py"), *args],
                             stdout=subprocess.PIPE, text=True)
        if p.stdout.readline().strip() != "ready":
            raise SystemExit(f"peers.py {args[0]} did not start")
        procs.append(p)
    return procs, os.path.join(d, "r.sock")


def main(mode: str, calls: int, runs: int):
    with tempfile.TemporaryDirectory() as d:
        procs, sock = start(mode, d)
        try:
            pids = [p for proc in procs for p in descendants(proc.pid)]
            for _ in range(runs):
                before = threads(pids)
                t = time.perf_counter()
                rate = loadgen.run(sock, calls, True, d, warm=0)
                after = threads(pids)
                used = {k: (v - before.get(k, 0)) / calls * 1e6 for k, v in after.items()}
                shown = sorted(((v, k) for k, v in used.items() if v >= 0.3), reverse=True)
                print(f"{rate:8.0f} calls/s ({time.perf_counter() - t:.1f} s); CPU a call "
                      f"{sum(used.values()):.1f} µs: " + ", ".join(
                          f"{name} pid {pid} thread {tid} {v:.1f}"
                          for v, (pid, tid, name) in shown))
        finally:
            for p in procs:
                p.terminate()
            if mode == "wsuper":
                out = procs[0].communicate()[0]
                print(next((l for l in out.splitlines() if "fast lane:" in l), ""))
            for p in procs:
                p.wait()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 60000,
         int(sys.argv[3]) if len(sys.argv) > 3 else 3)
