"""A noisy neighbour, measured: does one hostile compartment (or external
client) hurt an honest pair of compartments?

    .venv/bin/python benchmarks/neighbour.py [MODE ...] [--rounds R] [--calls N] [--json FILE]

Each run is a real `wsuper up` of four compartments: `calc` (examples/calc),
`honest` (benchmarks/neighbour/honest.c: N calls to calc.add, one at a time,
each timed with the Clock grant, then p50/p99 and its errors on one line),
`hostile` (benchmarks/neighbour/hostile.c, whose argv says what it does for
ever) and `sink` (a Calc of its own for `huge`).  A MODE starting with `x` is
an external client (pycapnp, over the system's socket) doing the same from
outside while `hostile` idles.  Every MODE runs R times, each time right after a
baseline run (`idle`: the same system, the hostile one asleep), so each ratio
is against a baseline of the same minute.  Prints, per mode, the honest pair's
p50 and p99 (median over the rounds) and their ratios to the baseline's, and
every error the honest client got.

Modes: idle spin log stderr file clock random flood grow crash caps huge hold
(compartment; hostile.c says what each does) and xflood xcaps xhuge xhold
(external: 64 calls in flight to calc.add; calc.sumTo(0, an Observer of its
own), 64 in flight; sink.add with params of 8 MiB less 64 bytes, 8 in flight;
64 calc.sumTo(1, an Observer) whose step it never answers).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = os.path.join(ROOT, "examples", "calc")
WSUPER = [sys.executable, "-m", "supervisor.cli"]
COMPARTMENT_MODES = ("spin", "log", "stderr", "file", "clock", "random", "flood", "grow",
                     "crash", "caps", "huge", "hold")
EXTERNAL_MODES = ("xflood", "xcaps", "xhuge", "xhold")
HUGE = 8 << 20

SYSTEM = """
[system]
schemas = ["{examples}/calc.capnp"]
logs = "{d}/logs"
socket = "{d}/ext.sock"

[compartments.calc]
module = "{examples}/calc.wat"
exports = "Calc"
external = true

[compartments.sink]
module = "{build}/sink.wasm"
exports = "Calc"
external = true
[compartments.sink.limits]
memory = "64MiB"

[compartments.honest]
module = "{build}/honest.wasm"
[compartments.honest.grants]
calc = {{ compartment = "calc" }}
stdout = {{ host = "log" }}
clock = {{ host = "clock" }}
env = {{ host = "environment", args = ["{calls}", "300", "{delay}"] }}

[compartments.hostile]
module = "{build}/hostile.wasm"
restart = "{restart}"
max_restarts = 1000
restart_delay = 0
[compartments.hostile.limits]
log_rate = 1000000
[compartments.hostile.grants]
calc = {{ compartment = "calc" }}
sink = {{ compartment = "sink" }}
stdout = {{ host = "log" }}
stderr = {{ host = "log" }}
clock = {{ host = "clock" }}
random = {{ host = "random" }}
data = {{ host = "directory", path = "{d}/data", read_only = true }}
env = {{ host = "environment", args = ["{mode}", "{huge}"] }}
"""


def build(into: str) -> None:
    for src, kind in (("honest.c", "--command"), ("hostile.c", "--command"),
                      ("sink.c", "--reactor")):
        out = os.path.join(into, src.replace(".c", ".wasm"))
        subprocess.run(WSUPER + ["build", kind, "--schema", os.path.join(EXAMPLES, "calc.capnp"),
                                 os.path.join(HERE, "neighbour", src), "-o", out],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


HONEST = re.compile(r"honest n=(\d+) errors=(\d+) wrong=(\d+) p50_us=([\d.]+) p99_us=([\d.]+) "
                    r"max_us=([\d.]+)(?: first_error=(.*))?")


def run_once(build_dir: str, mode: str, calls: int, timeout: float = 300) -> dict:
    """One `wsuper up`: the honest pair beside `mode`; the honest client's line, parsed."""
    d = tempfile.mkdtemp(prefix="neighbour-")
    os.makedirs(os.path.join(d, "data"))
    with open(os.path.join(d, "data", "blob"), "wb") as f:
        f.write(os.urandom(1 << 16))
    external = mode.startswith("x")
    with open(os.path.join(d, "system.toml"), "w") as f:
        f.write(SYSTEM.format(examples=EXAMPLES, build=build_dir, d=d, calls=calls,
                              delay=2500 if external else 500,
                              mode="idle" if external else mode, huge=HUGE,
                              restart="permanent" if mode == "crash" else "transient"))
    up = subprocess.Popen(WSUPER + ["up", os.path.join(d, "system.toml")], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          errors="replace")
    client = None
    if external:
        # the client starts once the socket is there; the honest client waits 2.5 s first
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(d, "ext.sock")) and time.monotonic() < deadline:
            time.sleep(0.05)
        client = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--external",
                                   mode, os.path.join(d, "ext.sock")], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = {"mode": mode, "line": None, "hostile": []}
    # a system that never says the honest line (nor anything else) is ended at `timeout`
    watchdog = threading.Timer(timeout, up.kill)
    watchdog.start()
    try:
        for line in up.stdout:
            if line.startswith("[hostile] hostile") and len(result["hostile"]) < 5:
                result["hostile"].append(line.strip()[:300])
            m = HONEST.search(line)
            if m:
                result.update(n=int(m[1]), errors=int(m[2]), wrong=int(m[3]),
                              p50_us=float(m[4]), p99_us=float(m[5]), max_us=float(m[6]),
                              first_error=m[7], line=line.strip())
                break
    finally:
        watchdog.cancel()
        result["supervisor_cpu_s"] = _cpu_seconds(up.pid)    # every thread of it, so far
        if client:
            out, _ = _ended(client, 10)
            result["client"] = out.strip()[-300:]
        _, err = _ended(up, 30)
        result["supervisor_stderr_tail"] = err.strip().splitlines()[-3:]
    subprocess.run(["rm", "-rf", d])
    return result


def _ended(proc: subprocess.Popen, timeout: float) -> tuple:
    """SIGTERM to `proc`, SIGKILL if it has not ended within `timeout`: what it said."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def _cpu_seconds(pid: int) -> float | None:
    """User and system CPU of process `pid` (all its threads), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the external client

def external(mode: str, path: str) -> None:
    import asyncio

    import capnp

    sys.path.insert(0, ROOT)
    import capnp_schemas
    calc_schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))
    # the same interface, with a Data field after a and b: params of any size
    padded = tempfile.NamedTemporaryFile("w", suffix=".capnp", delete=False)
    padded.write("@0xf0e7afc40966bc31;\ninterface Calc @0xc0ffee0000000001 {\n"
                 "  add @0 (a :Int32, b :Int32, pad :Data) -> (sum :Int32);\n}\n")
    padded.close()
    # its own parser: the id is calc.capnp's, which capnp_schemas keeps one of
    pad_schema = capnp.SchemaParser().load(padded.name)
    counts = {"calls": 0, "errors": 0}

    class Observer(calc_schema.Observer.Server):
        def __init__(self, hold):
            self.hold = hold

        async def step(self, i, partial, **_kw):
            if self.hold:
                await asyncio.Event().wait()         # never answered

    async def loop(call, in_flight):
        async def one():
            while True:
                try:
                    await call()
                    counts["calls"] += 1
                except Exception as e:
                    counts["errors"] += 1
                    counts.setdefault("first_error", str(e)[:200])
                    await asyncio.sleep(0.01)
        await asyncio.gather(*[one() for _ in range(in_flight)])

    async def main():
        async with capnp.kj_loop():
            stream = await capnp.AsyncIoStream.create_unix_connection(path)
            gateway = capnp.TwoPartyClient(stream).bootstrap().cast_as(capnp_schemas.host.Gateway)
            calc = (await gateway.get("calc")).cap.as_interface(calc_schema.Calc)
            print("connected", flush=True)
            if mode == "xflood":
                await loop(lambda: calc.add(1, 2), 64)
            elif mode == "xcaps":
                await loop(lambda: calc.sumTo(0, Observer(False)), 64)
            elif mode == "xhuge":
                sink = (await gateway.get("sink")).cap.as_interface(pad_schema.Calc)
                pad = b"\1" * (HUGE - 64)
                await loop(lambda: sink.add(1, 2, pad), 8)
            elif mode == "xhold":
                await loop(lambda: calc.sumTo(1, Observer(True)), 64)

    def stop(*_):
        print(json.dumps(counts), flush=True)
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    try:
        asyncio.run(main())
    except Exception as e:
        print(f"external client: {type(e).__name__}: {e}", flush=True)
        stop()


# ---------------------------------------------------------------- the figures

def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--external":
        return external(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser()
    ap.add_argument("modes", nargs="*", default=list(COMPARTMENT_MODES + EXTERNAL_MODES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--json", help="write every run's result here too")
    a = ap.parse_args()
    build_dir = tempfile.mkdtemp(prefix="neighbour-build-")
    try:
        build(build_dir)
        runs, table = [], []
        for mode in a.modes:
            base, hurt = [], []
            for _ in range(a.rounds):
                for m, into in (("idle", base), (mode, hurt)):
                    r = run_once(build_dir, m, a.calls)
                    runs.append(r)
                    into.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)

            def med(rs, k):
                vs = [r[k] for r in rs if r.get(k) is not None]
                return statistics.median(vs) if vs else None
            row = {"mode": mode}
            for k in ("p50_us", "p99_us"):
                row[f"base_{k}"], row[k] = med(base, k), med(hurt, k)
                row[f"{k[:3]}_ratio"] = (round(row[k] / row[f"base_{k}"], 2)
                                         if row[k] and row[f"base_{k}"] else None)
            row["errors"] = sum(r.get("errors", 0) for r in hurt)
            row["baseline_errors"] = sum(r.get("errors", 0) for r in base)
            row["unfinished"] = sum(1 for r in hurt if r["line"] is None)
            row["first_error"] = next((r["first_error"] for r in hurt
                                       if r.get("first_error")), None)
            table.append(row)
            print(json.dumps(row), flush=True)
    finally:         # the guests built (a day of runs left ~28 such directories)
        shutil.rmtree(build_dir, ignore_errors=True)
    print("\n| neighbour | p50 (base) | p99 (base) | p50 ×base | p99 ×base | honest errors |")
    print("|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['mode']} | {r['p50_us']} ({r['base_p50_us']}) µs | {r['p99_us']} "
              f"({r['base_p99_us']}) µs | {r['p50_ratio']} | {r['p99_ratio']} | "
              f"{r['errors']}{' unfinished ' + str(r['unfinished']) if r['unfinished'] else ''}"
              f"{' (' + r['first_error'] + ')' if r['first_error'] else ''} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"runs": runs, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
