"""Where the CPU of `wsuper up` goes: N idle calc compartments started, then the
CPU time (/proc/PID/schedstat) and minor page faults (/proc/PID/stat) of the
supervisor, the zygote and each engine, read when the last one is ready.
These move far less than wall-clock times on a shared machine (docs/performance.md).

And how much of the machine the run had: `cpu_ms_each` is the CPU of all of
its processes (supervisor, zygote and the children it reaped, engines, spares)
a compartment, by kind in `*_ms_each`; `cores_ours` that CPU over the wall time
from launch to all ready; `cores_busy` and `cores_idle` the whole machine's
over the same span (/proc/stat), and `kthreads_cpu_s` the kernel threads'
(kdamond, kworkers: work no process is charged for; the three most in
`kthreads_top`; a kworker's work also other tenants').  All ready ~= N x
cpu_ms_each / cores_ours: a per-compartment cost that grows with N shows in
`*_ms_each`; a run that had less of the machine, in `cores_ours`
(docs/performance.md, "Start-up at scale: what grows with N (r271)").

    .venv/bin/python benchmarks/startup_cpu.py 100 [CHECKOUT]

CHECKOUT: another checkout with its own .venv (default: this one), to compare two
versions run by turns.  Prints one JSON line."""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import suite  # noqa: E402  (its reading of an engine's USS and PSS)


_proc, _machine, _children_of = suite.proc_cpu, suite.machine_cpu, suite.children_of


def _kthreads_cpu() -> dict:
    """{pid: (name, CPU seconds so far)} of the kernel's threads (children of
    kthreadd, pid 2)."""
    return {p["pid"]: (p["comm"], p["cpu_s"]) for p in _children_of(2)}


def _kthreads_since(before: dict) -> dict:
    """CPU seconds of the kernel's threads since `before` (_kthreads_cpu), by name:
    "kdamond.0", a kworker by the work it was doing last ("kworker:events")."""
    by = {}
    for pid, (name, cpu) in _kthreads_cpu().items():
        name = "kworker:" + name.split("-", 1)[-1] if name.startswith("kworker") \
            else name.split("/")[0]
        by[name] = by.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
    return by


def main(n: int, root: str) -> dict:
    ex = os.path.join(root, "examples", "calc")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(f'[system]\nschemas = ["{ex}/calc.capnp"]\n')
        for i in range(n):
            f.write(f'[compartments.c{i}]\nmodule = "{ex}/calc.wat"\nexports = "Calc"\n')
    load = os.getloadavg()[0]
    machine, kthreads = _machine(), _kthreads_cpu()
    t = time.perf_counter()
    up = subprocess.Popen([os.path.join(root, ".venv", "bin", "python"), "-m", "supervisor.cli",
                           "up", f.name], cwd=root, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=dict(os.environ, WSUPER_STATS="1"))
    try:
        pids, at = [], []
        while len(pids) < n:
            line = up.stderr.readline()
            if not line:
                raise RuntimeError("wsuper up ended early")
            if " wsuper: ready " in line:
                pids.append(int(line.split("pid=")[1].split()[0]))
                at.append(time.perf_counter() - t)
        wall = time.perf_counter() - t
        machine = [b - a for a, b in zip(machine, _machine())]
        sup = _proc(up.pid)
        engines = [_proc(p) for p in pids]
        zyg = _proc(engines[0]["ppid"])
        each = suite.cpu_of_up(up.pid, pids)
        kthreads = _kthreads_since(kthreads)
        time.sleep(0.3)
        uss = statistics.median(suite._smaps(p)[0] for p in pids[:50])
    finally:
        up.terminate()
        up.wait()
        os.unlink(f.name)
    tenth = max(n // 10, 2)
    rate = lambda a, b: (at[b - 1] - at[a]) / (b - 1 - a) * 1000  # noqa: E731 - ms each
    ours = sum(each.values())
    return {"checkout": root, "n": n, "load": round(load, 2), "all_ready_s": round(at[-1], 3),
            "first_ready_s": round(at[0], 3),
            "ms_each_first_tenth": round(rate(0, tenth), 2) if n >= 4 else None,
            "ms_each_last_tenth": round(rate(n - tenth, n), 2) if n >= 4 else None,
            "supervisor_cpu_s": round(sup["cpu_s"], 3), "zygote_cpu_s": round(zyg["cpu_s"], 3),
            "zygote_faults": zyg["minflt"],
            "engine_cpu_ms": round(statistics.mean(e["cpu_s"] for e in engines) * 1000, 2),
            "engine_faults": statistics.median(e["minflt"] for e in engines),
            "engine_uss_mib": round(uss, 2),
            "cpu_ms_each": round(ours / n * 1000, 2),
            **{f"{kind}_ms_each": round(v / n * 1000, 2) for kind, v in each.items()},
            "cores_ours": round(ours / wall, 2),
            "cores_busy": round((machine[0] - machine[1]) / wall, 2),
            "cores_idle": round(machine[1] / wall, 2),
            "kthreads_cpu_s": round(sum(kthreads.values()), 2),
            "kthreads_top": {k: round(v, 2) for k, v in
                             sorted(kthreads.items(), key=lambda kv: -kv[1])[:3]}}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2
                          else os.path.dirname(HERE))))
