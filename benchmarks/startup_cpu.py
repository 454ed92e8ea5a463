"""Where the CPU of `wsuper up` goes: N idle calc compartments started, then the
CPU time (/proc/PID/schedstat) and minor page faults (/proc/PID/stat) of the
supervisor, the zygote and each engine, read when the last one is ready.
These move far less than wall-clock times on a shared machine (docs/performance.md).

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


def _proc(pid: int) -> dict:
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    with open(f"/proc/{pid}/schedstat") as f:
        ns = int(f.read().split()[0])
    return {"minflt": int(fields[7]), "cpu_s": ns / 1e9, "ppid": int(fields[1])}


def main(n: int, root: str) -> dict:
    ex = os.path.join(root, "examples", "calc")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(f'[system]\nschemas = ["{ex}/calc.capnp"]\n')
        for i in range(n):
            f.write(f'[compartments.c{i}]\nmodule = "{ex}/calc.wat"\nexports = "Calc"\n')
    load = os.getloadavg()[0]
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
        sup = _proc(up.pid)
        engines = [_proc(p) for p in pids]
        zyg = _proc(engines[0]["ppid"])
        time.sleep(0.3)
        uss = statistics.median(suite._smaps(p)[0] for p in pids[:50])
    finally:
        up.terminate()
        up.wait()
        os.unlink(f.name)
    tenth = max(n // 10, 2)
    rate = lambda a, b: (at[b - 1] - at[a]) / (b - 1 - a) * 1000  # noqa: E731 - ms each
    return {"checkout": root, "n": n, "load": round(load, 2), "all_ready_s": round(at[-1], 3),
            "first_ready_s": round(at[0], 3),
            "ms_each_first_tenth": round(rate(0, tenth), 2) if n >= 4 else None,
            "ms_each_last_tenth": round(rate(n - tenth, n), 2) if n >= 4 else None,
            "supervisor_cpu_s": round(sup["cpu_s"], 3), "zygote_cpu_s": round(zyg["cpu_s"], 3),
            "zygote_faults": zyg["minflt"],
            "engine_cpu_ms": round(statistics.mean(e["cpu_s"] for e in engines) * 1000, 2),
            "engine_faults": statistics.median(e["minflt"] for e in engines),
            "engine_uss_mib": round(uss, 2)}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2
                          else os.path.dirname(HERE))))
