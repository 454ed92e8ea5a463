"""The benchmark suite: one command, every figure with its baselines.

    .venv/bin/python benchmarks/suite.py            # full: about 5 minutes here
    .venv/bin/python benchmarks/suite.py --quick    # smoke: every figure, tiny sizes

Writes benchmarks/results/latest.json and latest.md (the table that
docs/performance.md quotes) and prints the table.  Latency figures are
measured on 2 cores and again under `taskset -c 0`, in several rounds; each
round measures the baselines right before wsuper, and every ratio is taken
within a round, then the median over rounds is reported with the spread
(min..max) of the rounds.

Baselines, measured in the same run:
  C relay       A -> R -> B -> R -> A over socketpairs, 64-byte messages (relay.c);
                and batched: 100 calls in flight, R and B moving whatever is there
                with one read and one write per wake-up (calls/s)
  Python path   the same compartment call with the native forwarding path off
                (WSUPER_NATIVE=0): what the fast lane changes, in the same round
  Python relay  the same in plain Python
  pycapnp       its own RPC: a client calling a server directly, and through a
                relay process that hands B's capability to A (peers.py)

Throughput (100 calls in flight) is driven two ways: by the pycapnp client of
peers.py, as a user of pycapnp would call, and by loadgen.c, a client that
costs next to nothing per call, so that the figure measures the server and
not the client (the pycapnp client spends about as much CPU per call as the
systems it drives).  The targets use the load generator's figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from supervisor.output import strip_time  # noqa: E402
EX = os.path.join(ROOT, "examples", "calc")
PY = sys.executable

CALC_ID, LOG_ID, FILE_ID = 0xc0ffee0000000001, 0xa05a5e2c6b2f6d01, 0xa05a5e2c6b2f6d07


# ---------------------------------------------------------------- helpers

def _stats(times: list[float]) -> dict:
    t = sorted(times)
    return {"p50_us": t[len(t) // 2], "p99_us": t[min(len(t) - 1, int(len(t) * .99))],
            "mean_us": sum(t) / len(t)}


def _wsuper(system: str, d: str, *, timeout=600, native: bool = True):
    path = os.path.join(d, "system.toml")
    with open(path, "w") as f:
        f.write(system)
    env = dict(os.environ, WSUPER_STATS="1", WSUPER_NATIVE="1" if native else "0")
    return subprocess.run([PY, "-m", "supervisor.cli", "up", path], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _loop_wat(grant: str, iface: int, method: int, words: list[int], n: int,
              read_reply: bool = False) -> str:
    """A program that calls `grant` N times with the same params message."""
    stores = "".join(f"(i64.store (i32.const {1032 + 8 * i}) (i64.const {w:#x}))"
                     for i, w in enumerate(words))
    reply = "(drop (call $reply_read (i32.const 8192) (i32.const 60000)))" if read_reply else ""
    return f"""(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "reply_read" (func $reply_read (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "{grant}")
  (func (export "_start") (local $h i32) (local $i i32)
    (local.set $h (call $lookup (i32.const 100) (i32.const {len(grant)})))
    (i32.store (i32.const 1024) (i32.const 0)) (i32.store (i32.const 1028) (i32.const {len(words)}))
    {stores}
    (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (i32.const {n})))
      (if (i32.lt_s (call $call (local.get $h) (i64.const {iface:#x}) (i32.const {method})
            (i32.const 1024) (i32.const {8 + 8 * len(words)}) (i32.const 0) (i32.const 0)
            (i32.const 1000)) (i32.const 0))
          (then unreachable))
      {reply}
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))))
"""


def _call_stats(out: str) -> dict:
    for line in out.splitlines():
        if "call-stats " in line:
            fields = dict(kv.split("=") for kv in line.split("call-stats ", 1)[1].split())
            return {"p50_us": float(fields["p50_us"]), "p99_us": float(fields["p99_us"]),
                    "mean_us": float(fields["mean_us"]), "n": int(fields["n"])}
    raise RuntimeError("no call-stats line; output:\n" + out[-2000:])


# ---------------------------------------------------------------- baselines

def _relay_exe(d: str) -> str:
    exe = os.path.join(d, "relay")
    if not os.path.exists(exe):
        subprocess.run(["gcc", "-O2", "-o", exe, os.path.join(HERE, "relay.c")], check=True)
    return exe


def c_relay(n: int, d: str) -> dict:
    p50, p99, mean = map(float, subprocess.run([_relay_exe(d), str(n)], capture_output=True,
                                               text=True, check=True).stdout.split())
    return {"p50_us": p50, "p99_us": p99, "mean_us": mean}


def c_relay_batched(n: int, d: str, in_flight: int = 100) -> dict:
    out = subprocess.run([_relay_exe(d), str(n), str(in_flight)], capture_output=True, text=True,
                         check=True).stdout
    return {"calls_per_s": float(out.split()[0])}


def python_relay(n: int) -> dict:
    a_r, r_a = socket.socketpair()
    b_r, r_b = socket.socketpair()
    pids = []
    for role in ("relay", "echo"):
        pid = os.fork()
        if pid == 0:
            try:
                keep = (r_a, r_b) if role == "relay" else (b_r,)
                for s in (a_r, r_a, b_r, r_b):
                    if s not in keep:
                        s.close()
                if role == "relay":
                    while data := r_a.recv(4096):
                        r_b.sendall(data)
                        r_a.sendall(r_b.recv(4096))
                else:
                    while data := b_r.recv(4096):
                        b_r.sendall(data)
            finally:
                os._exit(0)
        pids.append(pid)
    r_a.close(), r_b.close()
    msg, times = b"x" * 64, []
    for i in range(n + 200):
        t = time.perf_counter()
        a_r.sendall(msg)
        a_r.recv(4096)
        if i >= 200:
            times.append((time.perf_counter() - t) * 1e6)
    a_r.close(), b_r.close()
    for pid in pids:
        os.waitpid(pid, 0)
    return _stats(times)


def _spawn_ready(args) -> subprocess.Popen:
    p = subprocess.Popen([PY, os.path.join(HERE, "peers.py"), *args], stdout=subprocess.PIPE,
                         text=True)
    if p.stdout.readline().strip() != "ready":
        raise RuntimeError(f"peers.py {args[0]} did not start")
    return p


def _client(sock: str, n: int, m: int, gateway: bool) -> dict:
    args = [PY, os.path.join(HERE, "peers.py"), "client", sock, str(n), str(m)]
    out = subprocess.run(args + (["gw"] if gateway else []), capture_output=True, text=True,
                         check=True, timeout=600).stdout
    return json.loads(out)


def _loadgen(sock: str, m: int, gateway: bool, d: str) -> float:
    import loadgen
    return loadgen.run(sock, m, gateway, d)


def pycapnp(n: int, m: int, lg: int, d: str) -> tuple[dict, dict]:
    """(direct, relayed): sequential latency and calls/s with 100 in flight (from
    the pycapnp client, and from the load generator: calls_per_s_loadgen)."""
    server_sock, relay_sock = os.path.join(d, "pc.sock"), os.path.join(d, "pr.sock")
    for s in (server_sock, relay_sock):
        if os.path.exists(s):
            os.unlink(s)
    server = _spawn_ready(["server", server_sock])
    try:
        direct = _client(server_sock, n, m, False)
        direct["calls_per_s_loadgen"] = _loadgen(server_sock, lg, False, d)
        relay = _spawn_ready(["relay", relay_sock, server_sock])
        try:
            relayed = _client(relay_sock, n, m, True)
            relayed["calls_per_s_loadgen"] = _loadgen(relay_sock, lg, True, d)
        finally:
            relay.terminate()
            relay.wait()
    finally:
        server.terminate()
        server.wait()
    return direct, relayed


# ---------------------------------------------------------------- wsuper

def wsuper_external(n: int, m: int, lg: int, d: str) -> dict:
    """The pycapnp client, then the load generator, through wsuper's external
    endpoint to the calc compartment."""
    sock = os.path.join(d, "ws.sock")
    path = os.path.join(d, "ext.toml")
    with open(path, "w") as f:
        f.write(f'[system]\nschemas = ["{EX}/calc.capnp"]\nsocket = "{sock}"\n'
                f'external_limits = {{ in_flight = 256 }}\n'
                f'[compartments.calc]\nmodule = "{EX}/calc.wat"\nexports = "Calc"\n'
                f'external = true\n[compartments.calc.limits]\nin_flight = 256\n')
    up = subprocess.Popen([PY, "-m", "supervisor.cli", "up", path], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while "ready calc" not in (line := up.stdout.readline()):
            if not line:
                raise RuntimeError("wsuper up ended early")
        out = _client(sock, n, m, True)
        out["calls_per_s_loadgen"] = _loadgen(sock, lg, True, d)
        return out
    finally:
        up.terminate()
        up.wait()


def compartment_call(kind: str, n: int, d: str, native: bool = True) -> dict:
    """Guest -> supervisor -> callee and back, timed by the calling engine (WSUPER_STATS)."""
    calc_words = [0x0000000100000000, 0x0000000300000002]      # Calc.add(2, 3)
    systems = {
        "call": (f'[system]\nschemas = ["{EX}/calc.capnp"]\n', "calc", CALC_ID, 0, calc_words,
                 '{ compartment = "calc" }'),
        "per_call": (f'[system]\nschemas = ["{EX}/calc.capnp"]\n', "calc", CALC_ID, 0,
                     calc_words, '{ compartment = "calc" }'),
        "attenuated": (f'[system]\nschemas = ["{EX}/calc.capnp"]\naudit = "{d}/audit.jsonl"\n',
                       "calc", CALC_ID, 0, calc_words,
                       '{ compartment = "calc", allow = ["add"], revocable = true }'),
        "log": ("", "log", LOG_ID, 0, [0x0001000000000000, 0x0000001200000001, 0x78],
                '{ host = "log" }'),
        "file": ("", "file", FILE_ID, 0, [0x0000000200000000, 0, 4096],
                 f'{{ host = "file", path = "{d}/4k.bin", read_only = true }}'),
    }
    head, grant, iface, method, words, spec = systems[kind]
    with open(os.path.join(d, "4k.bin"), "wb") as f:
        f.write(os.urandom(4096))
    with open(os.path.join(d, "app.wat"), "w") as f:
        f.write(_loop_wat(grant, iface, method, words, n, read_reply=kind == "file"))
    calc = f'[compartments.calc]\nmodule = "{EX}/calc.wat"\nexports = "Calc"\n' \
        if grant == "calc" else ""
    if kind == "per_call":
        calc += 'instance = "per_call"\n'
    r = _wsuper(f'{head}{calc}[compartments.app]\nmodule = "app.wat"\n'
                f'[compartments.app.limits]\nlog_rate = 1000000\n'
                f'[compartments.app.grants]\n{grant} = {spec}\n', d, native=native)
    if r.returncode != 0:
        raise RuntimeError(r.stdout[-2000:] + r.stderr[-2000:])
    return _call_stats(r.stdout)


def engine_micro(n: int) -> dict:
    """Inside one engine: a guest->host call, and a Python->guest call, against
    their baselines (an empty wasm loop; a Python function call), on the path in
    use and (when that is the native one) through ctypes too."""
    from compartments import unchecked
    out = _engine_crossings(n)
    native = unchecked._native
    if native is not None:
        unchecked._native = None
        try:
            out.update({k + "_ctypes": v for k, v in _engine_crossings(n).items()})
        finally:
            unchecked._native = native
    # instance = "per_call": what the engine does before each call (new store, instance)
    # and after it (the store closed), its instance from the pool (engine.pool_for) as a
    # per_call engine has it, and from the default allocator (a nested call's), in
    # interleaved rounds
    from compartments.engine import Engine
    from compartments.spec import EngineSpec
    a, b = socket.socketpair()
    engines = {key: Engine(a, EngineSpec("bench", os.path.join(EX, "calc.wat"), exports=True,
                                         per_call=True), pool=pool)
               for key, pool in (("fresh_instance_us", None),
                                 ("fresh_instance_default_us", False))}
    m = max(n // 1000, 50)
    times: dict = {key: [] for key in engines}
    for _ in range(10):
        for key, eng in engines.items():
            t = time.perf_counter()
            for _ in range(m):
                eng._leave_instance(eng._fresh_instance(time.monotonic() + 3600, 0))()
            times[key].append((time.perf_counter() - t) / m)
    a.close(), b.close()
    for key, values in times.items():
        out[key] = statistics.median(values) * 1e6
    return out


def _engine_crossings(n: int) -> dict:
    """A guest->host call and a Python->guest call on unchecked's current path, and
    their baselines."""
    import wasmtime

    from compartments import unchecked
    from compartments.unchecked import TypedFunc
    from compartments.wasm import engine_config, new_store
    eng = wasmtime.Engine(engine_config())
    module = wasmtime.Module(eng, """(module
      (import "h" "f" (func $f (param i32) (result i32)))
      (func (export "calls") (param $n i32) (local $i i32)
        (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $n)))
          (drop (call $f (local.get $i)))
          (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l))))
      (func (export "empty") (param $n i32) (local $i i32)
        (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $n)))
          (drop (local.get $i))
          (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l))))
      (func (export "nop") (result i32) (i32.const 0)))""")
    store = new_store(eng)
    store.set_fuel((1 << 63) - 1)
    linker = wasmtime.Linker(eng)
    unchecked.define(linker, "h", "f", ("i32",), ("i32",), lambda x: x, eng)
    inst = linker.instantiate(store, module)
    ex = inst.exports(store)
    calls = TypedFunc(store, ex["calls"], ("i32",), ())
    empty = TypedFunc(store, ex["empty"], ("i32",), ())
    nop = TypedFunc(store, ex["nop"], (), ("i32",))
    checked = ex["nop"]

    def timed(fn, *a):
        t = time.perf_counter()
        fn(*a)
        return time.perf_counter() - t

    host = (min(timed(calls, n) for _ in range(3)) - min(timed(empty, n) for _ in range(3))) / n
    def py_nop():
        return 0

    def loop(f):
        for _ in range(n):
            f()

    def loop_checked():
        for _ in range(n // 10):
            checked(store)
    py_to_wasm = min(timed(loop, nop) for _ in range(3)) / n
    py_call = min(timed(loop, py_nop) for _ in range(3)) / n
    wasmtime_checked = min(timed(loop_checked) for _ in range(3)) / (n // 10)
    return {"wasm_to_host_us": host * 1e6, "python_to_wasm_us": py_to_wasm * 1e6,
            "python_call_us": py_call * 1e6, "wasmtime_py_checked_call_us": wasmtime_checked * 1e6}


# ---------------------------------------------------------------- start-up and memory

def _smaps(pid: int) -> tuple[float, float]:
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return ((fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / 1024,
            fields.get("Pss", 0) / 1024)


TICK = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(all CPU time, idle time) of the machine so far, in seconds (/proc/stat)."""
    with open("/proc/stat") as f:
        x = [int(v) for v in f.readline().split()[1:]]
    return sum(x) / TICK, (x[3] + x[4]) / TICK


def proc_cpu(pid: int) -> dict:
    """A process's CPU seconds (/proc/PID/schedstat), those of the children it
    reaped, its minor faults, parent and name (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    with open(f"/proc/{pid}/schedstat") as f:
        ns = int(f.read().split()[0])
    return {"minflt": int(fields[7]), "cpu_s": ns / 1e9, "ppid": int(fields[1]),
            "children_cpu_s": (int(fields[13]) + int(fields[14])) / TICK,
            "comm": s[s.index("(") + 1:s.rindex(")")], "pid": pid}


def children_of(ppid: int, skip=()) -> list:
    """proc_cpu() of the processes whose parent is `ppid`, but those in `skip`."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in skip:
            try:
                p = proc_cpu(int(name))
            except (OSError, ValueError, IndexError):
                continue
            if p["ppid"] == ppid:
                found.append(p)
    return found


def cpu_of_up(sup_pid: int, engine_pids: list) -> dict:
    """CPU seconds of a `wsuper up` by kind: the supervisor, the zygote (and the
    children it reaped), its engines, its spares."""
    engines = [proc_cpu(p) for p in engine_pids]
    zygote = proc_cpu(engines[0]["ppid"])
    spares = children_of(engines[0]["ppid"], set(engine_pids))
    return {"supervisor": proc_cpu(sup_pid)["cpu_s"],
            "zygote": zygote["cpu_s"] + zygote["children_cpu_s"],
            "engine": sum(e["cpu_s"] for e in engines),
            "spare": sum(p["cpu_s"] for p in spares)}


def cold_start_one(restarts: int, d: str, spin: int = 0) -> dict:
    """Request -> ready for one compartment on a running system (a warm zygote):
    a program that ends at once, restarted `restarts` times.  `spin`: the program
    first counts to that (20_000_000: ~20 ms), so that each start finds the system
    idle, its spare waiting (docs/performance.md, "One cold start, third pass")."""
    with open(os.path.join(d, "quit.wat"), "w") as f:
        f.write('(module (memory (export "memory") 1) (func (export "_start")))' if not spin
                else '(module (memory (export "memory") 1) (func (export "_start") (local i32)'
                     ' (loop (local.set 0 (i32.add (local.get 0) (i32.const 1)))'
                     f' (br_if 0 (i32.lt_u (local.get 0) (i32.const {spin}))))))')
    r = _wsuper(f'[compartments.c]\nmodule = "quit.wat"\nrestart = "permanent"\n'
                f'restart_delay = 0.0\nmax_restarts = {restarts}\nrestart_window = 600\n', d)
    ms = [float(l.split()[4]) for l in map(strip_time, r.stderr.splitlines())
          if l.startswith("wsuper: stats start c ")]
    if len(ms) < 2:
        raise RuntimeError(r.stdout[-2000:])
    return {"first_ms": ms[0], "ms": statistics.median(ms[1:]), "samples": len(ms) - 1}


def many(n: int, d: str, settle: float = 0.5) -> dict:
    """`wsuper up` of N idle calc servers: launch -> all ready, then USS/PSS each.
    Also the CPU of all its processes a compartment (`cpu_ms_each`), and of the
    two cores what the run had (`cores_ours`: that CPU over the wall time) and
    what was idle (`cores_idle`, /proc/stat): all ready ~= N x cpu_ms_each /
    cores_ours, so a cost that grows with N is told from a machine shared
    (docs/performance.md, "Start-up at scale: what grows with N (r271)")."""
    path = os.path.join(d, f"many{n}.toml")
    with open(path, "w") as f:
        f.write(f'[system]\nschemas = ["{EX}/calc.capnp"]\n')
        for i in range(n):
            f.write(f'[compartments.c{i}]\nmodule = "{EX}/calc.wat"\nexports = "Calc"\n')
    machine = machine_cpu()
    t = time.perf_counter()
    up = subprocess.Popen([PY, "-m", "supervisor.cli", "up", path], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, WSUPER_STATS="1"))
    pids, starts = [], []
    try:
        while len(pids) < n:
            line = strip_time(up.stderr.readline())
            if not line:
                raise RuntimeError("wsuper up ended early")
            if line.startswith("wsuper: ready "):
                pids.append(int(line.split("pid=")[1].split()[0]))
            elif line.startswith("wsuper: stats start "):
                starts.append(float(line.split()[4]))
        ready = time.perf_counter() - t
        total, idle = (b - a for a, b in zip(machine, machine_cpu()))
        ours = sum(cpu_of_up(up.pid, pids).values())
        time.sleep(settle)
        mem = [_smaps(pid) for pid in pids]
    finally:
        up.terminate()
        up.wait()
    return {"n": n, "all_ready_s": ready, "per_compartment_ms": ready / n * 1000,
            "uss_mib": statistics.median(u for u, _ in mem),
            "pss_mib": statistics.median(p for _, p in mem),
            "median_start_ms": statistics.median(starts),
            "cpu_ms_each": ours / n * 1000, "cores_ours": ours / ready,
            "cores_idle": idle / ready, "cores_busy": (total - idle) / ready}


def confine_layers(n: int) -> dict:
    """Start-up cost of each confinement layer, in µs (median of `n` engines'
    worth): forked from a parent prepared as the zygote is, each child loads
    the calc module from its sealed memfd and confines itself layer by layer."""
    import gc

    import wasmtime

    from compartments import abi, confine, engine, seccomp, unchecked, wasm, zygote
    from compartments.spec import EngineSpec
    wasm_engine = wasmtime.Engine(wasm.engine_config())
    for params, results in (*abi.IMPORTS.values(), *abi.WASI_IMPORTS.values()):
        unchecked.func_type(params, results, wasm_engine)
    confine.prepare()
    path = os.path.join(EX, "calc.wat")
    (fd, desc_fd), _error = zygote._Modules(wasm_engine).get(path)
    user = (65534, 65534) if os.geteuid() == 0 else None
    wanted = [name for name, why in confine.namespaces().items() if why is None]
    gc.collect()
    gc.freeze()
    names = ["module from its memfd", "engine (link, instantiate)", "descriptors, rlimits",
             "namespaces (empty mount namespace)", "privileges", "no_new_privs, Landlock",
             "seccomp"]
    rows = []
    for _ in range(n):
        r, w = os.pipe()
        a, b = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            t = [time.perf_counter_ns()]
            description = wasm.Description.from_json(
                os.pread(desc_fd, os.fstat(desc_fd).st_size, 0))
            module = wasmtime.Module.deserialize_file(wasm_engine, f"/proc/self/fd/{fd}")
            t.append(time.perf_counter_ns())
            engine.Engine(b, EngineSpec("calc", path, exports=True), module, wasm_engine,
                          description)
            t.append(time.perf_counter_ns())
            fds = confine._open_fds()
            confine._neutralize_fds_except({0, 1, 2, w, b.fileno()}, fds)
            confine._limit_resources(None, max(fds))
            t.append(time.perf_counter_ns())
            confine._enter_namespaces(wanted, strict=True)
            t.append(time.perf_counter_ns())
            confine._drop_privileges(user)
            t.append(time.perf_counter_ns())
            confine._libc.prctl(confine.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            if confine.landlock_abi():
                confine._landlock_deny_all(confine.landlock_abi())
            t.append(time.perf_counter_ns())
            if confine.seccomp_supported():
                seccomp.install()
            t.append(time.perf_counter_ns())
            os.write(w, json.dumps(t).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            rows.append(json.loads(f.read()))
        os.waitpid(pid, 0)
        a.close(), b.close()
    out = {name: statistics.median((row[i + 1] - row[i]) / 1000 for row in rows)
           for i, name in enumerate(names)}
    out["n"] = n
    return out


def bare_python(n: int) -> dict:
    """Baseline: N processes that only start Python and import wasmtime and capnp."""
    t = time.perf_counter()
    procs = [subprocess.Popen([PY, "-I", "-c", "import wasmtime, capnp, sys; print('ok', "
                               "flush=True); sys.stdin.read()"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:
        p.stdout.readline()
    elapsed = time.perf_counter() - t
    mem = [_smaps(p.pid) for p in procs]
    for p in procs:
        p.stdin.close()
        p.wait()
    return {"n": n, "all_ready_s": elapsed, "per_process_ms": elapsed / n * 1000,
            "uss_mib": statistics.median(u for u, _ in mem),
            "pss_mib": statistics.median(p for _, p in mem)}


# ---------------------------------------------------------------- probes (issue 15)

def _cpu_instance(module_bytes, probes_flags=None, export="run"):
    """An instance of benchmarks/cpu.c's module as an engine makes it (the engine's
    wasmtime configuration, fuel on); with probe sites, the engine's hooks linked
    and `probes_flags(sites)` written in."""
    import wasmtime

    from compartments import instrument, probing, unchecked
    from compartments.wasm import engine_config, new_store
    eng = wasmtime.Engine(engine_config())
    module = wasmtime.Module(eng, module_bytes)
    store = new_store(eng)
    store.set_fuel((1 << 63) - 1)
    linker = wasmtime.Linker(eng)
    sites = probes_flags[0] if probes_flags else None
    hooks = probing.EngineProbes(sites) if sites is not None else None
    if hooks is not None:
        for name, (params, results) in instrument.HOOKS.items():
            unchecked.define(linker, instrument.PROBE_MODULE, name, params, results,
                             getattr(hooks, name), eng)
    inst = linker.instantiate(store, module)
    ex = inst.exports(store)
    if hooks is not None:
        hooks.attach(ex, store)
        hooks.set(probes_flags[1], False)
    from compartments.unchecked import TypedFunc
    return TypedFunc(store, ex[export], ("i32",), ("i32",)), hooks


def probes_cpu(rounds: int, repeats: int, d: str) -> dict:
    """The CPU-bound guest (sorting with a comparison function, and hashing): its
    module as built (twice: the second copy gives the noise floor, an A/A ratio),
    rewritten with probe sites all off, and with sites on.  Times are the best
    of `repeats`, interleaved; fuel (wasm instructions executed, exact) is the
    noise-free measure of what the sites add."""
    from compartments import instrument
    from compartments.instrument import COUNT, EVENTS
    from supervisor import toolchain
    path = toolchain.build([os.path.join(HERE, "cpu.c")], os.path.join(d, "cpu.wasm"),
                           reactor=True)
    with open(path, "rb") as f:
        plain = f.read()
    t = time.perf_counter()
    functions, fsites = instrument.rewrite(plain, ["functions"])
    rewrite_s = time.perf_counter() - t
    every, esites = instrument.rewrite(plain, instrument.POINTS)

    def flags(sites, bit, kind=0):
        return bytes(bit if k == kind else 0 for k in sites.kinds)
    variants = {
        "plain": (plain, None),
        "plain_again": (plain, None),
        "functions_off": (functions, (fsites, bytes(len(fsites)))),
        "all_points_off": (every, (esites, bytes(len(esites)))),
        "functions_counted": (functions, (fsites, flags(fsites, COUNT))),
        "blocks_counted": (every, (esites, flags(esites, COUNT, 1))),
        "functions_events": (functions, (fsites, flags(fsites, EVENTS))),
    }
    runs = {name: _cpu_instance(m, f) for name, (m, f) in variants.items()}
    for name in ("plain", "plain_again", "functions_off", "all_points_off"):
        m, f = variants[name]
        runs[f"hash_{name}"] = _cpu_instance(m, f, "hash")
    fuel = {}
    for name, (fn, hooks) in runs.items():
        store = fn._store
        before = store.get_fuel()
        fn(1)
        fuel[name] = before - store.get_fuel()
        if hooks is not None:
            hooks.collect()
    best = {name: float("inf") for name in runs}
    expected = None
    for _ in range(repeats):
        for name, (fn, hooks) in runs.items():
            n = max(1, rounds // 20) if name == "functions_events" else rounds
            t = time.perf_counter()
            h = fn(n)
            dt = (time.perf_counter() - t) / n
            if hooks is not None:
                hooks.collect()
            if n == rounds and not name.startswith("hash_"):
                expected = h if expected is None else expected
                if h != expected:
                    raise RuntimeError(f"{name}: the rewritten module computed {h}, not "
                                       f"{expected}")
            best[name] = min(best[name], dt)
    out = {f"{k}_ms": v * 1000 for k, v in best.items()}
    for prefix in ("", "hash_"):
        base = prefix + "plain"
        out.update({f"{k}_vs_plain": best[k] / best[base] for k in runs
                    if k != base and k.startswith(prefix) and (prefix or not
                                                                k.startswith("hash_"))})
        out.update({f"{k}_fuel_vs_plain": fuel[k] / fuel[base] for k in runs
                    if k != base and k.startswith(prefix) and (prefix or not
                                                                k.startswith("hash_"))})
    out["functions"] = len(fsites)
    out["sites_all_points"] = len(esites)
    out["rewrite_ms"] = rewrite_s * 1000
    return out


def _probe_system(d: str, kind: str, n: int, analysis: str | None = None) -> str:
    calc = f'[compartments.calc]\nmodule = "{EX}/calc.wat"\nexports = "Calc"\n'
    if kind in ("functions_off", "events"):
        calc += 'instrument = ["functions"]\n'
    if kind == "calls_on":
        calc += '[compartments.calc.probes.c]\npoint = "calls"\n'
    if kind == "events":
        calc += ('[compartments.calc.probes.c]\npoint = "calls"\nevents = true\n'
                 '[compartments.calc.probes.f]\npoint = "functions"\nevents = true\n')
    with open(os.path.join(d, "app.wat"), "w") as f:
        f.write(_loop_wat("calc", CALC_ID, 0, [0x0000000100000000, 0x0000000300000002], n))
    system = (f'[system]\nschemas = ["{EX}/calc.capnp"]\n{calc}'
              f'[compartments.app]\nmodule = "app.wat"\n'
              f'[compartments.app.grants]\ncalc = {{ compartment = "calc" }}\n')
    if analysis:
        system += (f'[compartments.analysis]\nmodule = "{analysis}"\n'
                   f'[compartments.analysis.limits]\ncall_time = 600\n'
                   f'[compartments.analysis.grants]\n'
                   f'events = {{ host = "probe", on = "calc" }}\nclock = {{ host = "clock" }}\n'
                   f'stdout = {{ host = "log" }}\n'
                   f'env = {{ host = "environment", args = ["1500"] }}\n')
    return system


def probes_call(blocks: int, d: str) -> dict:
    """Compartment -> compartment calls from one C program (benchmarks/callmix.c) to
    three calc compartments: as built, with function probe sites compiled in
    (off), and with a calls probe on (counting in the supervisor), in
    interleaved blocks of 50 calls timed by the program; the median over
    blocks of each block's mean, in µs."""
    from supervisor import bindgen, toolchain
    inc = os.path.join(d, "include")
    bindgen.generate(os.path.join(EX, "calc.capnp"), inc)
    wasm = toolchain.build([os.path.join(HERE, "callmix.c")], os.path.join(d, "callmix.wasm"),
                           include=[inc])
    system = f'[system]\nschemas = ["{EX}/calc.capnp"]\n'
    for name, extra in (("plain", ""), ("functions_off", 'instrument = ["functions"]\n'),
                        ("calls_on", "")):
        system += f'[compartments.{name}]\nmodule = "{EX}/calc.wat"\nexports = "Calc"\n{extra}'
    system += '[compartments.calls_on.probes.c]\npoint = "calls"\n'
    system += (f'[compartments.app]\nmodule = "{wasm}"\n[compartments.app.limits]\n'
               f'log_rate = 1000000\n[compartments.app.grants]\n'
               f'plain = {{ compartment = "plain" }}\n'
               f'functions_off = {{ compartment = "functions_off" }}\n'
               f'calls_on = {{ compartment = "calls_on" }}\nclock = {{ host = "clock" }}\n'
               f'stdout = {{ host = "log" }}\n'
               f'env = {{ host = "environment", args = ["{blocks}"] }}\n')
    r = _wsuper(system, d)
    out = {}
    for line in r.stdout.splitlines():
        if "callmix " in line:
            name, us = line.split("callmix ", 1)[1].split()
            out[name] = {"mean_us": float(us)}
    if set(out) != {"plain", "functions_off", "calls_on"}:
        raise RuntimeError("no callmix lines; output:\n" + r.stdout[-2000:] + r.stderr[-2000:])
    return out


def probes_analysis(n: int, d: str) -> dict:
    """Events delivered to a wasm analysis compartment (benchmarks/analysis.c): a
    program calls calc, whose calls and function entries and exits are probed;
    the analysis lets its queue fill, then drains it in reads of 1024.  Events
    per second: the backlog it read, over how long that took."""
    from supervisor import toolchain
    schema = os.path.join(ROOT, "capnp_schemas", "probe.capnp")
    inc = os.path.join(d, "include")
    from supervisor import bindgen
    bindgen.generate(schema, inc)
    wasm = toolchain.build([os.path.join(HERE, "analysis.c")], os.path.join(d, "analysis.wasm"),
                           include=[inc])
    r = _wsuper(_probe_system(d, "events", n, wasm), d)
    for line in r.stdout.splitlines():
        if "analysis-stats " in line:
            f = dict(kv.split("=") for kv in line.split("analysis-stats ", 1)[1].split())
            events, seconds = int(f["events"]), float(f["seconds"])
            return {"events": events, "seconds": seconds, "dropped": int(f["dropped"]),
                    "reads": int(f["reads"]),
                    "events_per_s": events / seconds if seconds > 0 else 0.0,
                    "calls": _call_stats("\n".join(l for l in r.stdout.splitlines()
                                                    if l.startswith("[app]")))["n"]}
    raise RuntimeError("no analysis-stats line; output:\n" + r.stdout[-2000:] + r.stderr[-2000:])


def probes_section(cfg: dict, d: str) -> dict:
    cpu = probes_cpu(cfg["probe_rounds"], cfg["probe_repeats"], d)
    rounds = [probes_call(cfg["probe_call_blocks"], d) for _ in range(cfg["rounds"])]
    call = {}
    for kind in rounds[0]:
        call[kind] = {"mean_us": statistics.median(r[kind]["mean_us"] for r in rounds)}
    ratios = {}
    for kind in ("functions_off", "calls_on"):
        values = [r[kind]["mean_us"] / r["plain"]["mean_us"] for r in rounds]
        ratios[f"call_{kind}_vs_plain"] = {"median": statistics.median(values),
                                           "min": min(values), "max": max(values)}
    return {"cpu": cpu, "call": call, "ratios": ratios,
            "analysis": probes_analysis(cfg["probe_events_calls"], d)}


# ---------------------------------------------------------------- memory protection

def protect_bench(cfg: dict, d: str) -> dict:
    """Memory protection (docs/memory-protection.md): a memory-heavy guest (sort,
    copies: protect_guest.c) with and without it, and what applying it costs at
    start.  Each round times every variant once, interleaved, in CPU time (other
    processes on the machine take turns, not this one's instructions), and takes
    the ratio to its unprotected twin within the round: the median over rounds is
    reported, and the ratio of the variants' fastest rounds.  Both twins of the
    plain build run one compiled module; the bulk-memory build's protected twin
    runs the module with checks.  Fuel (wasm instructions executed) is the same
    comparison without noise."""
    import ctypes

    import wasmtime

    from compartments import protect, wasm
    from supervisor import toolchain
    src = os.path.join(HERE, "protect_guest.c")
    data = {}
    for kind, extra in (("", ()), ("bulk", ("-mbulk-memory", "-ftls-model=local-exec"))):
        out = toolchain.build([src], os.path.join(d, f"guest{kind}.wasm"), reactor=True,
                              extra=extra)
        with open(out, "rb") as f:
            data[kind] = f.read()
    engine = wasmtime.Engine(wasm.engine_config())
    setting = protect.Setting(protect.AUTO, protect.AUTO)

    def prepared(raw):
        t = time.perf_counter()
        checked, layout = protect.prepare(raw, setting, protect.STATIC_MEMORY)
        return checked, layout, time.perf_counter() - t

    variants = {}
    prep = {}
    fuel = {}
    for kind in data:
        checked, layout, prep[kind] = prepared(data[kind])
        regions = protect.regions_of(layout)
        plain = wasmtime.Module(engine, data[kind])
        for name, module, reg in ((f"plain{kind}", plain, None), (f"protected{kind}", plain
                                  if checked is data[kind] else wasmtime.Module(engine, checked),
                                  regions)):
            store = wasm.new_store(engine)
            store.set_fuel((1 << 63) - 1)
            store.set_limits(memory_size=protect.STATIC_MEMORY)
            ex = wasmtime.Instance(store, module, []).exports(store)
            ex["_initialize"](store)
            if reg is not None:
                protect.enforce(reg, store, ex["memory"])
            variants[name] = (store, ex["work"])
    sums = {}
    for name, (store, work) in variants.items():
        before = store.get_fuel()
        sums[name] = work(store, cfg["sort_n"])
        fuel[name] = before - store.get_fuel()
    if len(set(sums.values())) != 1:
        raise RuntimeError(f"the variants computed different results: {sums}")
    rounds = {name: [] for name in variants}
    for i in range(cfg["protect_rounds"]):
        order = list(variants) if i % 2 == 0 else list(reversed(variants))
        for name in order:
            store, work = variants[name]
            t = time.thread_time()
            work(store, cfg["sort_n"])
            rounds[name].append(time.thread_time() - t)

    def ratio(a, b):
        values = [x / y for x, y in zip(rounds[a], rounds[b])]
        return {"median": statistics.median(values), "min": min(values), "max": max(values),
                "fastest": min(rounds[a]) / min(rounds[b])}
    out = {"n": cfg["sort_n"], "rounds": cfg["protect_rounds"],
           "guest_ms": {k: statistics.median(v) * 1000 for k, v in rounds.items()},
           "fuel": fuel,
           "ratios": {"protected_vs_plain": ratio("protected", "plain"),
                      "protected_bulk_vs_plain_bulk": ratio("protectedbulk", "plainbulk")}}
    for key, a, b in (("protected_vs_plain", "protected", "plain"),
                      ("protected_bulk_vs_plain_bulk", "protectedbulk", "plainbulk")):
        out["ratios"][key]["fuel"] = fuel[a] / fuel[b]
    out["host_call"] = _protected_host_calls(cfg, d)
    # start-up: applying protection to a fresh instance, against instantiating it
    checked, layout, _t = prepared(data["bulk"])
    module, regions = wasmtime.Module(engine, checked), protect.regions_of(layout)
    inst_t, enforce_t = [], []
    for _ in range(cfg["protect_instances"]):
        store = wasm.new_store(engine)
        t = time.perf_counter()
        ex = wasmtime.Instance(store, module, []).exports(store)
        memory = ex["memory"]
        t1 = time.perf_counter()
        protect.enforce(regions, store, memory)
        enforce_t.append(time.perf_counter() - t1)
        inst_t.append(t1 - t)
        ctypes.addressof(memory.data_ptr(store).contents)
        store.close()
    compile_t = []
    for _ in range(3):
        t = time.perf_counter()
        wasmtime.Module(engine, data["bulk"])
        compile_t.append(time.perf_counter() - t)
    out["startup"] = {
        "instantiate_us": statistics.median(inst_t) * 1e6,
        "enforce_us": statistics.median(enforce_t) * 1e6,
        "enforce_vs_instantiate": statistics.median(enforce_t) / statistics.median(inst_t),
        "prepare_ms": prep["bulk"] * 1000, "compile_ms": min(compile_t) * 1000,
        "prepare_vs_compile": prep["bulk"] / min(compile_t),
        "module_kib": len(data["bulk"]) / 1024}
    return out


def _protected_host_calls(cfg: dict, d: str) -> dict:
    """A guest -> host call (wsuper.lookup, answered in the engine) in a real Engine,
    with and without protection: the cost of the check every guest pointer passes."""
    from compartments import protect
    from compartments.engine import Engine
    from compartments.spec import EngineSpec
    from compartments.unchecked import TypedFunc
    path = os.path.join(d, "lookups.wat")
    with open(path, "w") as f:
        f.write("""(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 8192) "nothing")
  (func (export "lookups") (param $n i32) (result i32) (local $s i32)
    (block $d (loop $l (br_if $d (i32.eqz (local.get $n)))
      (local.set $s (i32.add (local.get $s) (call $lookup (i32.const 8192) (i32.const 7))))
      (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br $l)))
    (local.get $s)))""")
    calls = {}
    for name, setting in (("plain", None), ("protected", protect.Setting(4096, protect.NONE))):
        a, b = socket.socketpair()
        engine = Engine(a, EngineSpec("bench", path, protect=setting))
        assert (engine.regions is not None) == (setting is not None)
        engine.store.set_fuel((1 << 63) - 1)
        calls[name] = (TypedFunc(engine.store, engine.instance.exports(engine.store)["lookups"],
                                 ("i32",), ("i32",)), (a, b))
    n = cfg["micro_calls"]
    rounds = {name: [] for name in calls}
    for i in range(cfg["protect_rounds"]):
        for name in (list(calls) if i % 2 == 0 else list(reversed(calls))):
            t = time.thread_time()
            calls[name][0](n)
            rounds[name].append((time.thread_time() - t) / n)
    for _f, socks in calls.values():
        for s in socks:
            s.close()
    values = [p / q for p, q in zip(rounds["protected"], rounds["plain"])]
    return {"plain_us": statistics.median(rounds["plain"]) * 1e6,
            "protected_us": statistics.median(rounds["protected"]) * 1e6,
            "ratio": {"median": statistics.median(values), "min": min(values),
                      "max": max(values)}}


# ---------------------------------------------------------------- sections

def latency_round(cfg: dict, d: str) -> dict:
    n, m = cfg["calls"], cfg["in_flight_calls"]
    out = {"c_relay": c_relay(cfg["relay_trips"], d), "python_relay": python_relay(n),
           "c_relay_batched": c_relay_batched(cfg["batched_calls"], d)}
    lg = cfg["loadgen_calls"]
    out["pycapnp_direct"], out["pycapnp_relay"] = pycapnp(n, m, lg, d)
    out["wsuper_external"] = wsuper_external(n, m, lg, d)
    for kind in ("call", "per_call", "attenuated", "log", "file"):
        out[f"compartment_{kind}"] = compartment_call(kind, n, d)
    out["compartment_call_python"] = compartment_call("call", n, d, native=False)
    return out


def _aggregate(rounds: list[dict]) -> dict:
    agg = {}
    for key in rounds[0]:
        agg[key] = {}
        for field in rounds[0][key]:
            values = [r[key][field] for r in rounds]
            agg[key][field] = {"median": statistics.median(values), "min": min(values),
                               "max": max(values)}
    ratios = {}
    for name, base, field in (("call_vs_c_relay", "c_relay", "p50_us"),
                              ("call_vs_python_relay", "python_relay", "p50_us"),
                              ("call_vs_pycapnp_relay", "pycapnp_relay", "p50_us"),
                              ("external_vs_pycapnp_relay", "pycapnp_relay", "p50_us")):
        subject = "wsuper_external" if name.startswith("external") else "compartment_call"
        values = [r[subject][field] / r[base][field] for r in rounds]
        ratios[name] = {"median": statistics.median(values), "min": min(values),
                        "max": max(values)}
    for name, base, field, base_field in (
            ("throughput_vs_pycapnp_relay", "pycapnp_relay", "calls_per_s_loadgen",
             "calls_per_s_loadgen"),
            ("throughput_vs_pycapnp_relay_pycapnp_client", "pycapnp_relay", "calls_per_s",
             "calls_per_s"),
            ("throughput_vs_c_relay_batched", "c_relay_batched", "calls_per_s_loadgen",
             "calls_per_s")):
        values = [r["wsuper_external"][field] / r[base][base_field] for r in rounds]
        ratios[name] = {"median": statistics.median(values), "min": min(values),
                        "max": max(values)}
    for name, subject in (("attenuated_vs_plain", "compartment_attenuated"),
                          ("per_call_vs_plain", "compartment_per_call"),
                          ("log_vs_plain", "compartment_log"),
                          ("file_vs_plain", "compartment_file"),
                          ("python_path_vs_plain", "compartment_call_python")):
        values = [r[subject]["p50_us"] / r["compartment_call"]["p50_us"] for r in rounds]
        ratios[name] = {"median": statistics.median(values), "min": min(values),
                        "max": max(values)}
    agg["ratios"] = ratios
    return agg


def section(name: str, cfg: dict) -> dict:
    with tempfile.TemporaryDirectory() as d:
        if name == "latency":
            return _aggregate([latency_round(cfg, d) for _ in range(cfg["rounds"])])
        if name == "engine":
            return engine_micro(cfg["micro_calls"])
        if name == "probes":
            return probes_section(cfg, d)
        if name == "protect":
            return protect_bench(cfg, d)
        if name == "startup":
            out = {"cold_start_one": cold_start_one(cfg["restarts"], d),
                   "bare_python": bare_python(cfg["bare"])}
            for n in cfg["many"]:
                out[f"many_{n}"] = many(n, d)
            out["confine_layers_us"] = confine_layers(cfg["layers"])
            # as ratios to the bare interpreter measured in this run, so that runs
            # on a busier or quieter machine (before and after a change) compare
            bare = out["bare_python"]["per_process_ms"]
            out["vs_bare_python"] = {"cold_start_one": out["cold_start_one"]["ms"] / bare, **{
                f"many_{n}": out[f"many_{n}"]["per_compartment_ms"] / bare for n in cfg["many"]}}
            return out
    raise ValueError(name)


def machine() -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from importlib.metadata import version
    return {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release(),
            "versions": {p: version(p) for p in ("wasmtime", "pycapnp", "trio")},
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


CONFIGS = {
    "full": {"rounds": 5, "calls": 1000, "in_flight_calls": 3000, "loadgen_calls": 60000,
             "relay_trips": 10000,
             "batched_calls": 300000,
             "micro_calls": 200000, "restarts": 10, "bare": 20, "many": [100, 1000],
             "layers": 50, "probe_rounds": 50, "probe_repeats": 15, "probe_events_calls": 5000,
             "probe_call_blocks": 60, "sort_n": 1 << 18, "protect_rounds": 21,
             "protect_instances": 200},
    "quick": {"rounds": 1, "calls": 100, "in_flight_calls": 200, "loadgen_calls": 2000,
              "relay_trips": 500,
              "batched_calls": 5000,
              "micro_calls": 5000, "restarts": 3, "bare": 3, "many": [5, 10], "layers": 3,
              "probe_rounds": 2, "probe_repeats": 2, "probe_events_calls": 300,
              "probe_call_blocks": 3, "sort_n": 1 << 12, "protect_rounds": 3,
              "protect_instances": 10},
}


def _child(name: str, cfg: dict, pin: bool) -> dict:
    cmd = [PY, __file__, "--section", name, "--config", json.dumps(cfg)]
    if pin:
        cmd = ["taskset", "-c", "0"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"section {name} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(quick: bool) -> dict:
    cfg = CONFIGS["quick" if quick else "full"]
    t = time.perf_counter()
    result = {"machine": machine(), "mode": "quick" if quick else "full", "config": cfg,
              "two_core": {"latency": _child("latency", cfg, False)},
              "one_core": {"latency": _child("latency", cfg, True)},
              "engine": _child("engine", cfg, False),
              "protect": _child("protect", cfg, False),
              "startup": _child("startup", cfg, False),
              "probes": _child("probes", cfg, False)}
    result["seconds"] = time.perf_counter() - t
    return result


# ---------------------------------------------------------------- report

TARGETS = [
    # (what, value(result), limit, "<=" or ">=", unit)
    ("call p50 / C relay p50, 2 cores", lambda r: r["two_core"]["latency"]["ratios"]
     ["call_vs_c_relay"]["median"], 3.0, "<=", "x"),
    ("call p50 / C relay p50, 1 core", lambda r: r["one_core"]["latency"]["ratios"]
     ["call_vs_c_relay"]["median"], 3.0, "<=", "x"),
    ("throughput (100 in flight, load generator) / pycapnp relay, 2 cores", lambda r: r["two_core"]["latency"]
     ["ratios"]["throughput_vs_pycapnp_relay"]["median"], 2.0, ">=", "x"),
    ("throughput (100 in flight, load generator) / pycapnp relay, 1 core", lambda r: r["one_core"]["latency"]
     ["ratios"]["throughput_vs_pycapnp_relay"]["median"], 2.0, ">=", "x"),
    ("throughput (100 in flight, load generator) / batched C relay, 2 cores", lambda r: r["two_core"]
     ["latency"]["ratios"]["throughput_vs_c_relay_batched"]["median"], 0.5, ">=", "x"),
    ("attenuated+audited / plain call, 2 cores", lambda r: r["two_core"]["latency"]["ratios"]
     ["attenuated_vs_plain"]["median"], 1.1, "<=", "x"),
    ("attenuated+audited / plain call, 1 core", lambda r: r["one_core"]["latency"]["ratios"]
     ["attenuated_vs_plain"]["median"], 1.1, "<=", "x"),
    ("Log.write / plain call, 2 cores", lambda r: r["two_core"]["latency"]["ratios"]
     ["log_vs_plain"]["median"], 1.5, "<=", "x"),
    ("Log.write / plain call, 1 core", lambda r: r["one_core"]["latency"]["ratios"]
     ["log_vs_plain"]["median"], 1.5, "<=", "x"),
    ("File.read 4 KiB / plain call, 2 cores", lambda r: r["two_core"]["latency"]["ratios"]
     ["file_vs_plain"]["median"], 1.5, "<=", "x"),
    ("File.read 4 KiB / plain call, 1 core", lambda r: r["one_core"]["latency"]["ratios"]
     ["file_vs_plain"]["median"], 1.5, "<=", "x"),
    ("cold start of one compartment", lambda r: r["startup"]["cold_start_one"]["ms"], 5.0,
     "<=", "ms"),
    ("100 compartments ready (wsuper up -> all ready)", lambda r: r["startup"].get(
        "many_100", {}).get("all_ready_s"), 0.6, "<=", "s"),
    ("1000 compartments ready (wsuper up -> all ready)", lambda r: r["startup"].get(
        "many_1000", {}).get("all_ready_s"), 5.0, "<=", "s"),
    ("USS per idle compartment", lambda r: r["startup"][sorted(
        (k for k in r["startup"] if k.startswith("many_")), key=lambda k: int(k[5:]))[-1]]
     ["uss_mib"], 6.0, "<=", "MiB"),
    ("guest -> host call", lambda r: r["engine"]["wasm_to_host_us"], 3.0, "<=", "us"),
    ("fresh instance per call: instantiation", lambda r: r["engine"]["fresh_instance_us"],
     50.0, "<=", "us"),
    ("probe sites compiled in, off: C hashing loop / as built", lambda r: r["probes"]["cpu"]
     ["hash_all_points_off_vs_plain"], 1.02, "<=", "x"),
    ("probe sites compiled in, off: C qsort, a call per comparison / as built",
     lambda r: r["probes"]["cpu"]["all_points_off_vs_plain"], 1.02, "<=", "x"),
    ("probe sites compiled in, off: call to it / to the module as built", lambda r: r["probes"]
     ["ratios"]["call_functions_off_vs_plain"]["median"], 1.02, "<=", "x"),
    ("memory-heavy guest, protected / unprotected (CPU, fastest rounds)", lambda r: r[
        "protect"]["ratios"]["protected_vs_plain"]["fastest"], 1.01, "<=", "x"),
    ("... built with bulk memory: inserted checks (CPU, fastest rounds)", lambda r: r[
        "protect"]["ratios"]["protected_bulk_vs_plain_bulk"]["fastest"], 1.01, "<=", "x"),
    ("... built with bulk memory: inserted checks (wasm instructions)", lambda r: r[
        "protect"]["ratios"]["protected_bulk_vs_plain_bulk"]["fuel"], 1.01, "<=", "x"),
]


def _f(x, unit=""):
    if x is None:
        return "-"
    return f"{x:.3g}{unit}" if x < 10 else f"{x:.0f}{unit}" if x >= 100 else f"{x:.1f}{unit}"


def table(r: dict) -> str:
    m = r["machine"]
    lines = [f"Machine: {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['cpu_model']}; "
             f"Python {m['python']}, kernel {m['kernel']}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
             + f". Mode: {r['mode']}, {r['config']['rounds']} rounds; took {r['seconds']:.0f} s.",
             "",
             "| latency (µs): median p50 [min..max over rounds], p99 | 2 cores | 1 core "
             "(taskset -c 0) |", "|---|---|---|"]
    names = [("c_relay", "C relay A→R→B→R→A (floor)"), ("python_relay", "Python relay"),
             ("pycapnp_direct", "pycapnp client → server"),
             ("pycapnp_relay", "pycapnp client → relay → server"),
             ("wsuper_external", "pycapnp client → wsuper → compartment"),
             ("compartment_call", "**compartment → compartment (guest to guest)**"),
             ("compartment_per_call", "… to a compartment with instance = \"per_call\""),
             ("compartment_attenuated", "… through allow-list + revocable, audited"),
             ("compartment_call_python", "… with the native path off (WSUPER_NATIVE=0)"),
             ("compartment_log", "compartment → Log.write (host)"),
             ("compartment_file", "compartment → File.read 4 KiB (host)")]
    for key, label in names:
        cells = []
        for core in ("two_core", "one_core"):
            v = r[core]["latency"][key]
            cells.append(f"{_f(v['p50_us']['median'])} [{_f(v['p50_us']['min'])}.."
                         f"{_f(v['p50_us']['max'])}], p99 {_f(v['p99_us']['median'])}")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    lines += ["", "| throughput, 100 calls in flight (calls/s) | 2 cores | 1 core |",
              "|---|---|---|"]
    for key, field, label in (
            ("c_relay_batched", "calls_per_s", "C relay, batched (64-byte messages)"),
            ("pycapnp_direct", "calls_per_s_loadgen", "load generator → pycapnp server"),
            ("pycapnp_relay", "calls_per_s_loadgen", "load generator → pycapnp relay → server"),
            ("wsuper_external", "calls_per_s_loadgen", "**load generator → wsuper → compartment**"),
            ("pycapnp_direct", "calls_per_s", "pycapnp client → pycapnp server"),
            ("pycapnp_relay", "calls_per_s", "pycapnp client → pycapnp relay → server"),
            ("wsuper_external", "calls_per_s", "pycapnp client → wsuper → compartment")):
        lines.append(f"| {label} | " + " | ".join(
            _f(r[c]["latency"][key][field]["median"]) for c in ("two_core", "one_core"))
            + " |")
    lines += ["", "| ratio (median [min..max]) | 2 cores | 1 core |", "|---|---|---|"]
    for key, label in (("call_vs_c_relay", "compartment call / C relay"),
                       ("call_vs_python_relay", "compartment call / Python relay"),
                       ("call_vs_pycapnp_relay", "compartment call / pycapnp relay"),
                       ("external_vs_pycapnp_relay", "external call via wsuper / pycapnp relay"),
                       ("throughput_vs_pycapnp_relay",
                        "throughput wsuper / pycapnp relay (load generator)"),
                       ("throughput_vs_pycapnp_relay_pycapnp_client",
                        "… the same, both driven by the pycapnp client"),
                       ("throughput_vs_c_relay_batched", "throughput wsuper / batched C relay"),
                       ("attenuated_vs_plain", "attenuated+audited / plain call"),
                       ("per_call_vs_plain", "fresh instance per call / plain call"),
                       ("log_vs_plain", "Log.write / plain call"),
                       ("file_vs_plain", "File.read 4 KiB / plain call"),
                       ("python_path_vs_plain", "native path off / on (same call)")):
        lines.append(f"| {label} | " + " | ".join(
            f"{_f(r[c]['latency']['ratios'][key]['median'])} [{_f(r[c]['latency']['ratios'][key]['min'])}"
            f"..{_f(r[c]['latency']['ratios'][key]['max'])}]" for c in ("two_core", "one_core"))
            + " |")
    e, s = r["engine"], r["startup"]
    lines += ["", "| inside an engine | µs |", "|---|---|",
              f"| guest → host call (unchecked callback; native) | {_f(e['wasm_to_host_us'])} |",
              f"| … the same through ctypes (WSUPER_NATIVE=0) | "
              f"{_f(e.get('wasm_to_host_us_ctypes'))} |",
              f"| Python → guest call (unchecked; native) | {_f(e['python_to_wasm_us'])} |",
              f"| … the same through ctypes (WSUPER_NATIVE=0) | "
              f"{_f(e.get('python_to_wasm_us_ctypes'))} |",
              f"| baseline: a Python function call | {_f(e['python_call_us'])} |",
              f"| wasmtime-py's checked call, for comparison | "
              f"{_f(e['wasmtime_py_checked_call_us'])} |",
              f"| a fresh instance (store + instantiate), per call with instance = "
              f"\"per_call\" | {_f(e['fresh_instance_us'])} |",
              f"| … the same from the default allocator (a call nested in another's) | "
              f"{_f(e.get('fresh_instance_default_us'))} |",
              "", "| start-up and memory | value | baseline: bare `python -c 'import wasmtime, "
              "capnp'` |", "|---|---|---|",
              f"| one compartment, request → ready (warm zygote; first one "
              f"{_f(s['cold_start_one']['first_ms'])} ms) | {_f(s['cold_start_one']['ms'])} ms | "
              f"{_f(s['bare_python']['per_process_ms'])} ms per process |"]
    for key in sorted((k for k in s if k.startswith("many_")), key=lambda k: int(k[5:])):
        v = s[key]
        lines.append(f"| {v['n']} compartments: `wsuper up` → all ready; USS / PSS each | "
                     f"{_f(v['all_ready_s'])} s ({_f(v['per_compartment_ms'])} ms each"
                     + (f"; {_f(v['cpu_ms_each'])} core-ms each, on {_f(v['cores_ours'])} "
                        f"of the cores, {_f(v['cores_idle'])} idle" if "cpu_ms_each" in v else "")
                     + f"); {_f(v['uss_mib'])} / {_f(v['pss_mib'])} MiB | "
                     f"{_f(s['bare_python']['uss_mib'])} / {_f(s['bare_python']['pss_mib'])} "
                     f"MiB |")
    lines += ["", "| start-up / a bare interpreter's start-up (same run) | ratio |", "|---|---|"]
    for key, v in s["vs_bare_python"].items():
        what = "one compartment, request → ready" if key == "cold_start_one" else \
            f"{key[5:]} compartments ready, per compartment"
        lines.append(f"| {what} | {_f(v)} |")
    p = r["protect"]
    lines += ["", f"| memory protection: sort + copies of {p['n']} numbers, median of "
              f"{p['rounds']} interleaved rounds | ratio [min..max] |", "|---|---|"]
    for key, label in (("protected_vs_plain", "protected / unprotected"),
                       ("protected_bulk_vs_plain_bulk", "built with -mbulk-memory: protected "
                        "(inserted checks) / unprotected")):
        v = p["ratios"][key]
        lines.append(f"| {label}: CPU time | {v['median']:.3f} [{v['min']:.3f}.."
                     f"{v['max']:.3f}]; fastest rounds {v['fastest']:.3f} |")
        lines.append(f"| {label}: wasm instructions (fuel) | {v['fuel']:.5f} |")
    h = p["host_call"]
    lines.append(f"| a guest → host call passing a pointer (wsuper.lookup): "
                 f"{_f(h['protected_us'])} µs protected / {_f(h['plain_us'])} µs | "
                 f"{h['ratio']['median']:.3f} [{h['ratio']['min']:.3f}.."
                 f"{h['ratio']['max']:.3f}] |")
    ps = p["startup"]
    lines += [f"| applying it to a fresh instance: {_f(ps['enforce_us'])} µs / instantiating "
              f"it: {_f(ps['instantiate_us'])} µs | {_f(ps['enforce_vs_instantiate'])} |",
              f"| preparing a {_f(ps['module_kib'])} KiB module (layout, checks): "
              f"{_f(ps['prepare_ms'])} ms / compiling it: {_f(ps['compile_ms'])} ms | "
              f"{_f(ps['prepare_vs_compile'])} |"]
    lay = s["confine_layers_us"]
    lines += ["", f"| an engine's start, step by step (median of {lay['n']}) | µs |", "|---|---|"]
    lines += [f"| {k} | {_f(v)} |" for k, v in lay.items() if k != "n"]
    p = r.get("probes")
    if p:
        c = p["cpu"]
        lines += ["", "| probes (docs/instrumentation.md): CPU-bound C guest (qsort with a "
                  "comparison function, then FNV-1a) | ms a run | time / as built | "
                  "wasm instructions (fuel) / as built |", "|---|---|---|---|"]
        for key, label in (("plain", "the module as built"),
                           ("plain_again", "the module as built, again (the noise floor)"),
                           ("functions_off", "function sites compiled in, off"),
                           ("all_points_off", "function, block and store sites compiled in, off"),
                           ("functions_counted", "every function's entry counted (in the module)"),
                           ("blocks_counted", "every block counted (in the module)"),
                           ("functions_events", "every entry and exit an event (a host call each)")):
            ratio = "1" if key == "plain" else _f(c[f"{key}_vs_plain"])
            fuel = "1" if key == "plain" else _f(c[f"{key}_fuel_vs_plain"])
            lines.append(f"| {label} | {_f(c[f'{key}_ms'])} | {ratio} | {fuel} |")
        for key, label in (("hash_plain_again", "hashing loop: the module as built, again"),
                           ("hash_functions_off", "hashing loop: function sites compiled in, off"),
                           ("hash_all_points_off", "hashing loop: every site compiled in, off")):
            lines.append(f"| {label} | {_f(c[f'{key}_ms'])} | {_f(c[f'{key}_vs_plain'])} | "
                         f"{_f(c[f'{key}_fuel_vs_plain'])} |")
        lines.append(f"| (rewriting the module: {_f(c['rewrite_ms'])} ms for {c['functions']} "
                     f"functions, {c['sites_all_points']} sites with every point) | | | |")
        lines += ["", "| probes: compartment → compartment call (one program, the three "
                  "callees in interleaved blocks; µs a call, median) | µs | / plain "
                  "[min..max over runs] |", "|---|---|---|"]
        for key, label in (("plain", "to calc as built"),
                           ("functions_off", "to calc with function sites compiled in, off"),
                           ("calls_on", "to calc with a calls probe on (counted)")):
            ratio = p["ratios"].get(f"call_{key}_vs_plain")
            cell = "1" if ratio is None else \
                f"{_f(ratio['median'])} [{_f(ratio['min'])}..{_f(ratio['max'])}]"
            lines.append(f"| {label} | {_f(p['call'][key]['mean_us'])} | {cell} |")
        a = p["analysis"]
        lines += ["", "| probes: events to a wasm analysis compartment | value |", "|---|---|",
                  f"| events per second delivered (a full queue drained in reads of 1024; "
                  f"calc's calls and function entries and exits while a program calls it) | "
                  f"{_f(a['events_per_s'])} |",
                  f"| events, reads, dropped | {a['events']}, {a['reads']}, {a['dropped']} |"]
    lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    for what, get, limit, op, unit in TARGETS:
        try:
            v = get(r)
        except (KeyError, ZeroDivisionError):
            v = None
        met = v is not None and (v <= limit if op == "<=" else v >= limit)
        lines.append(f"| {what} | {_f(v, unit)} | {op} {limit:g}{unit} | "
                     f"{'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round (CI smoke)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--section", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.section:
        print(json.dumps(section(args.section, json.loads(args.config))))
        return
    for tool in ("gcc", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"benchmarks need {tool}")
    result = run(args.quick)
    os.makedirs(args.out, exist_ok=True)
    name = "quick" if args.quick else "latest"
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = table(result)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
