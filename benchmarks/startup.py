"""Cold start and memory of compartments, against a bare Python baseline.

Starts `wsuper up` on a system of N idle server compartments (calc.wat) and
measures the time until every one printed "ready", then each engine's USS and
PSS from /proc/PID/smaps_rollup.  Baseline, in the same run: N bare Python
processes that only `import wasmtime, capnp` (what an engine costs before it
does anything).  Usage: python benchmarks/startup.py [N]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = os.path.join(ROOT, "examples", "calc")


def smaps(pid: int) -> tuple[int, int]:
    """(USS, PSS) in KiB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0), fields.get("Pss", 0)


def baseline(n: int):
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-I", "-c",
                               "import wasmtime, capnp, sys; print('ok', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:
        p.stdout.readline()
    elapsed = time.perf_counter() - t
    mem = [smaps(p.pid) for p in procs]
    for p in procs:
        p.stdin.close()
        p.wait()
    return elapsed, mem


def system(n: int):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.toml")
        with open(path, "w") as f:
            f.write(f'[system]\nschemas = ["{EX}/calc.capnp"]\n')
            for i in range(n):
                f.write(f'[compartments.c{i}]\nmodule = "{EX}/calc.wat"\nexports = "Calc"\n')
        t = time.perf_counter()
        up = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "up", path], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
        pids = []
        while len(pids) < n:
            line = up.stdout.readline()
            if not line:
                raise RuntimeError("wsuper up ended early")
            if line.startswith("ready "):
                pids.append(int(line.split("pid=")[1].split()[0]))
        elapsed = time.perf_counter() - t
        time.sleep(0.5)                              # let them settle
        mem = [smaps(pid) for pid in pids]
        up.terminate()
        up.wait()
    return elapsed, mem


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    b_time, b_mem = baseline(n)
    s_time, s_mem = system(n)
    med = lambda xs: statistics.median(xs) / 1024          # noqa: E731
    print(f"{n} compartments ready in {s_time:.2f} s ({s_time / n * 1000:.0f} ms each); "
          f"bare python+imports x{n}: {b_time:.2f} s; ratio {s_time / b_time:.2f}x")
    print(f"memory per idle compartment: USS {med([u for u, _ in s_mem]):.1f} MiB, "
          f"PSS {med([p for _, p in s_mem]):.1f} MiB; bare python+imports: "
          f"USS {med([u for u, _ in b_mem]):.1f} MiB, PSS {med([p for _, p in b_mem]):.1f} MiB")


if __name__ == "__main__":
    main()
