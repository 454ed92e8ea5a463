"""Probes on running compartments (issue 15): switched on and off through the
admin socket while calls are in flight, read as counts, traces and events
for an analysis compartment; real engines, real rewritten modules, real C."""
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest

import capnp_schemas
from tests.conftest import EXAMPLES, ROOT, external_client, lines_of, run_wsuper

GUESTS = os.path.join(ROOT, "tests", "integration", "guests")
#: a system of one calc compartment (examples/calc), to add others to
CALC = f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
"""


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    """examples/kv and examples/probes copied, their C plugins built with `wsuper build`."""
    top = tmp_path_factory.mktemp("probes")
    for name in ("kv", "probes"):
        shutil.copytree(os.path.join(ROOT, "examples", name), top / "examples" / name,
                        ignore=shutil.ignore_patterns("build", "data"))
    (top / "policies").mkdir()
    shutil.copy(os.path.join(ROOT, "policies", "kv-client.toml"), top / "policies")
    kv, probes = top / "examples" / "kv", top / "examples" / "probes"
    builds = [(kv / "store.c", kv / "kv.capnp", kv / "build" / "store.wasm"),
              (kv / "client.c", kv / "kv.capnp", kv / "build" / "client.wasm"),
              (probes / "analysis.c", os.path.join(ROOT, "capnp_schemas", "probe.capnp"),
               probes / "build" / "analysis.wasm")]
    for src, schema, out in builds:
        r = run_wsuper("build", str(src), "--schema", str(schema), "-o", str(out), timeout=300)
        assert r.returncode == 0, r.stderr
    for name in ("store", "client"):
        shutil.copy(kv / "build" / f"{name}.wasm", probes / "build" / f"{name}.wasm")
    return top


def _probe(system, *args):
    return run_wsuper("probe", str(system), *args, timeout=60)


def _store_system(plugins, tmp_path, extra=""):
    kv = plugins / "examples" / "kv"
    shutil.rmtree(kv / "data", ignore_errors=True)
    (kv / "data").mkdir()
    (kv / "audit.jsonl").unlink(missing_ok=True)
    sock = tmp_path / "kv.sock"
    path = kv / "probed.toml"
    path.write_text(f"""
[system]
schemas = ["kv.capnp"]
socket = "{sock}"
audit = "audit.jsonl"
[compartments.store]
module = "build/store.wasm"
exports = "Store"
external = true
instrument = ["functions", "blocks"]
{extra}
[compartments.store.grants]
data = {{ host = "directory", path = "${{SYSTEM_DIR}}/data", append_only = true }}
stdout = {{ host = "log" }}
""")
    return path, sock, kv


_WRITER = """
import os, sys, time
import capnp_schemas
from tests.conftest import external_client
sock, schema_path, prefix, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
gate, gate_at = sys.argv[5], int(sys.argv[6])
schema = capnp_schemas.load(schema_path)

async def body(gateway):
    store = (await gateway.get("store")).cap.as_interface(schema.Store)
    for i in range(n):
        if i == gate_at:           # hold here until the test has done what it must first
            deadline = time.monotonic() + 120
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
        key, value = f"{prefix}{i}", f"v{i}"
        await store.put(key, value)
        got = await store.get(key)
        if not got.found or got.value != value:
            print("wrong", key, got.found, got.value, flush=True)
        print("done", i + 1, flush=True)
        time.sleep(0.002)
    return len((await store.keys()).keys)
print("keys", external_client(sock, body, timeout=120), flush=True)
"""


class _Writer(threading.Thread):
    """An external client (a process of its own: pycapnp loads a schema id once per
    process) putting key i = value i and reading it back, n times; before the
    `gate_at`-th it waits for the file `gate` (`open_gate`), so that however fast
    calls are, some are made after whatever the test does first."""

    def __init__(self, sock, schema_path, prefix, n, gate, gate_at):
        super().__init__(daemon=True)
        self.gate = gate
        self.args = [str(sock), str(schema_path), prefix, str(n), str(gate), str(gate_at)]
        self.done = 0
        self.keys = None
        self.errors = []

    def run(self):
        import subprocess
        import sys
        p = subprocess.Popen([sys.executable, "-c", _WRITER, *self.args], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in lines_of(p):
            if line.startswith("done "):
                self.done = int(line.split()[1])
            elif line.startswith("keys "):
                self.keys = int(line.split()[1])
            else:
                self.errors.append(line.rstrip())
        if p.wait() != 0:
            self.errors.append(f"exit {p.returncode}")

    def open_gate(self):
        open(self.gate, "w").close()

    def wait_for(self, n, timeout=60):
        deadline = time.monotonic() + timeout
        while self.done < n and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.done >= n, (self.done, self.errors)


def test_function_coverage_of_the_running_kv_store(plugins, tmp_path, wsuper):
    system, sock, kv = _store_system(plugins, tmp_path)
    run = wsuper("up", str(system))
    run.wait_for("ready store")
    # one writer: the store (plain C stdio) is not written for a second caller
    # re-entering it while it waits on its own file operations
    writer = _Writer(sock, kv / "kv.capnp", "k", 200, tmp_path / "gate", 100)
    writer.start()
    writer.wait_for(20)

    r = _probe(system, "store", "add", "cov", "--point", "functions")
    assert r.returncode == 0, r.stderr
    r = _probe(system, "store", "add", "dispatch", "--point", "blocks",
               "--functions", "wsuper_dispatch")
    assert r.returncode == 0, r.stderr
    before = writer.done                   # at most 100: it waits for the gate
    writer.open_gate()
    writer.wait_for(before + 40)
    r = _probe(system, "store", "list", "--json")
    assert r.returncode == 0, r.stderr
    probes = {p["name"]: p for p in json.loads(r.stdout)}
    cov = probes["cov"]
    dispatched = cov["functions_hit"]["wsuper_dispatch"]["count"]
    assert dispatched >= 2 * 40           # a put and a get each time
    assert cov["functions_hit"]["wsuper_dispatch"]["covered"] == 1
    assert 0 < cov["covered"] < cov["sites"]               # not every function ran
    assert cov["functions_hit"]["abort"]["count"] == 0
    blocks = probes["dispatch"]
    assert 0 < blocks["covered"] < blocks["sites"]         # put and get, not every method
    text = _probe(system, "store", "list").stdout
    assert "probe cov on store: functions (counts)" in text and "wsuper_dispatch" in text

    r = _probe(system, "store", "remove", "cov")
    assert r.returncode == 0 and "removed probe cov on store" in r.stdout
    assert _probe(system, "store", "remove", "dispatch").returncode == 0
    writer.join(120)
    assert writer.errors == [] and writer.done == 200          # no call lost or failed
    assert writer.keys == 200                                  # every put is there
    assert "no probes" in _probe(system, "store", "list").stdout
    assert len((kv / "data" / "kv.log").read_text().splitlines()) == 200
    run.stop()
    audit = [json.loads(l) for l in (kv / "audit.jsonl").read_text().splitlines()]
    changes = [(a["event"], a["probe"], a["by"]) for a in audit if "probe" in a]
    assert changes == [("probe added", "cov", "operator"), ("probe added", "dispatch", "operator"),
                       ("probe removed", "cov", "operator"),
                       ("probe removed", "dispatch", "operator")]


def _chain(tmp_path, n=10_000_000):
    """app (a program calling relay n times) -> relay -> calc."""
    from benchmarks.suite import CALC_ID, _loop_wat     # the benchmarks' calling program
    (tmp_path / "app.wat").write_text(_loop_wat(
        "calc", CALC_ID, 0, [0x0000000100000000, 0x0000000300000002], n, read_reply=True))
    path = tmp_path / "chain.toml"
    path.write_text(CALC + f"""[compartments.relay]
module = "{GUESTS}/relay.wat"
exports = "Calc"
instrument = ["functions"]
[compartments.relay.grants]
next = {{ compartment = "calc" }}
[compartments.app]
module = "app.wat"
[compartments.app.grants]
calc = {{ compartment = "relay" }}
""")
    return path


def _inside(slices, pid, tid, ts):
    return [s for s in slices if s["pid"] == pid and s["tid"] == tid
            and s["ts"] <= ts <= s["ts"] + s["dur"]]


def test_a_call_trace_across_three_compartments(tmp_path, wsuper):
    system = _chain(tmp_path)
    run = wsuper("up", str(system))
    run.wait_for("ready app")
    out = tmp_path / "trace.json"
    r = run_wsuper("trace", str(system), "--seconds", "1", "-o", str(out), "--functions", "*")
    assert r.returncode == 0, r.stderr
    assert "call records" in r.stdout
    trace = json.loads(out.read_text())
    events = trace["traceEvents"]
    # the trace-event format: every event has a phase, a process and a thread;
    # timed ones a number of microseconds; complete ones a duration
    for e in events:
        assert e["ph"] in ("M", "X", "B", "E", "s", "f", "i"), e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int), e
        if e["ph"] != "M":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
            assert isinstance(e["name"], str) and e["name"], e
        if e["ph"] == "X":
            assert e["dur"] > 0, e
    process = {e["pid"]: e["args"]["name"] for e in events
               if e["ph"] == "M" and e["name"] == "process_name"}
    assert set(process.values()) >= {"app", "relay", "calc"}
    pid = {v: k for k, v in process.items()}
    slices = [e for e in events if e["ph"] == "X" and e["cat"] == "call"]
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert starts and set(starts) == set(ends)
    links = set()
    for fid, s in starts.items():
        f = ends[fid]
        assert f["bp"] == "e" and f["cat"] == s["cat"]
        caller = _inside(slices, s["pid"], 2, s["ts"])       # "calls out" of the caller
        callee = _inside(slices, f["pid"], 1, f["ts"])       # "calls in" of the callee
        assert caller and callee, (s, f)
        assert caller[0]["args"]["callee"] == process[f["pid"]]
        assert callee[0]["args"]["caller"] == process[s["pid"]]
        links.add((process[s["pid"]], process[f["pid"]], callee[0]["name"]))
    assert links == {("app", "relay", "Calc.add"), ("relay", "calc", "Calc.add")}
    # each relay -> calc call happens inside an app -> relay call
    outer = [e for e in slices if e["pid"] == pid["relay"] and e["tid"] == 1]
    inner = [e for e in slices if e["pid"] == pid["relay"] and e["tid"] == 2]
    assert len(inner) > 10
    assert all(any(o["ts"] <= i["ts"] and i["ts"] + i["dur"] <= o["ts"] + o["dur"] + 1
                   for o in outer) for i in inner[1:-1])
    # the function probe was turned on while relay was inside calls: never an
    # exit without its entry
    depth = {}
    for e in sorted((e for e in events if e["ph"] in "BE"), key=lambda e: e["ts"]):
        depth[e["name"]] = depth.get(e["name"], 0) + (1 if e["ph"] == "B" else -1)
        assert depth[e["name"]] >= 0, e
    assert depth and any(e["ph"] == "E" for e in events)
    # and after the trace, nothing is left on
    assert "no probes" in _probe(system, "relay", "list").stdout
    assert run.proc.poll() is None


def test_a_trace_whose_client_stops_reading_ends_and_takes_its_probes_off(tmp_path, wsuper):
    """A trace client that asked for events and then read nothing kept the trace,
    and its probes on every compartment it chose, on for as long as it kept the
    connection open.  Now a line not taken within TRACE_SEND_TIMEOUT ends it."""
    import socket
    from supervisor import endpoint, prober
    system = _chain(tmp_path)
    run = wsuper("up", str(system))
    run.wait_for("ready app")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(endpoint.admin_socket_path(str(system)))
    client.sendall(json.dumps({"op": "trace", "system": endpoint.identity(str(system)),
                               "seconds": 1, "functions": "*"}).encode() + b"\n")
    deadline = time.monotonic() + 1 + prober.TRACE_SEND_TIMEOUT + 20
    while "no probes" not in _probe(system, "relay", "list").stdout:
        assert time.monotonic() < deadline, "the trace's probes are still on"
        time.sleep(0.5)
    assert run.proc.poll() is None
    client.close()


def test_a_trace_whose_client_closed_its_connection_ends_and_takes_its_probes_off(
        tmp_path, wsuper):
    """An outside review: a trace client that went away (Ctrl-C of `wsuper trace`, a
    closed connection) while nothing happened left the session running for all of
    its seconds (up to an hour): its probes stayed on, events included, and it held
    one of the MAX_TRACES places.  The session now writes an empty line every
    TRACE_HEARTBEAT when it has nothing else to send, and ends at the first that
    fails."""
    import socket
    from supervisor import endpoint
    system = tmp_path / "quiet.toml"               # serves until stopped; nobody calls
    system.write_text(CALC.replace("[system]\n", f'[system]\nsocket = "{tmp_path}/q.sock"\n')
                      + "external = true\n")
    run = wsuper("up", str(system))
    run.wait_for("ready calc")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(endpoint.admin_socket_path(str(system)))
    client.sendall(json.dumps({"op": "trace", "system": endpoint.identity(str(system)),
                               "seconds": 3600, "functions": "*"}).encode() + b"\n")
    client.settimeout(30)
    assert b'"ok":true' in client.recv(1 << 16)
    assert "trace-" in _probe(system, "calc", "list").stdout
    client.close()
    deadline = time.monotonic() + 20             # (one TRACE_HEARTBEAT, and some)
    while "no probes" not in _probe(system, "calc", "list").stdout:
        assert time.monotonic() < deadline, "the trace's probes are still on"
        time.sleep(0.5)
    run.wait_for("probe removed: calc.trace-")
    assert run.proc.poll() is None


def test_trace_clients_that_read_nothing_on_a_quiet_system_lose_their_places(tmp_path,
                                                                             wsuper):
    """An outside review of the admin socket as a hostile local client (r241): a
    trace client that reads nothing was found out only once its socket's buffer
    (~200 KiB) was full, and on a quiet system the heartbeat (an empty line a
    second) took many minutes to fill it: four clients that each asked for a trace
    of 3600 s and read nothing held every place of MAX_TRACES (the operator's
    `wsuper trace` refused "4 traces are running already", still after 4 minutes),
    and their calls probes on every compartment.  A session whose client takes
    nothing of what it was sent for TRACE_SEND_TIMEOUT ends (SIOCOUTQ:
    probes.ReaderWatch), whether or not the buffer is full."""
    import socket
    from supervisor import endpoint, prober
    system = tmp_path / "quiet.toml"               # serves until stopped; nobody calls
    system.write_text(CALC.replace("[system]\n", f'[system]\nsocket = "{tmp_path}/q.sock"\n')
                      + "external = true\n")
    run = wsuper("up", str(system))
    run.wait_for("ready calc")
    held = []
    for _ in range(prober.MAX_TRACES):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(endpoint.admin_socket_path(str(system)))
        client.sendall(json.dumps({"op": "trace", "system": endpoint.identity(str(system)),
                                   "seconds": 3600}).encode() + b"\n")
        held.append(client)
    run.wait_for(f"probe added: calc.trace-{prober.MAX_TRACES}")
    out = tmp_path / "trace.json"
    deadline = time.monotonic() + prober.TRACE_SEND_TIMEOUT + 40
    while True:
        r = run_wsuper("trace", str(system), "--seconds", "0.5", "-o", str(out))
        if r.returncode == 0:
            break
        assert "traces are running already" in r.stderr, r.stderr
        assert time.monotonic() < deadline, "clients that read nothing keep every trace"
        time.sleep(1)
    assert "no probes" in _probe(system, "calc", "list").stdout
    for client in held:                           # each session ended: its connection closed
        client.settimeout(30)
        while client.recv(1 << 16):
            pass
        client.close()
    assert run.proc.poll() is None


def test_a_trace_the_system_cuts_short_says_so_and_keeps_what_came(tmp_path, wsuper):
    """An outside review: `wsuper trace` of a system that stopped during the session
    wrote the file and exited 0, as if the trace had run its seconds."""
    import subprocess
    import sys
    system = tmp_path / "quiet.toml"
    system.write_text(CALC.replace("[system]\n", f'[system]\nsocket = "{tmp_path}/q.sock"\n')
                      + "external = true\n")
    run = wsuper("up", str(system))
    run.wait_for("ready calc")
    out = tmp_path / "cut.json"
    trace = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "trace", str(system),
                              "--seconds", "60", "-o", str(out)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run.wait_for("probe added: calc.trace-")
    assert run_wsuper("stop", str(system)).returncode == 0
    stdout, stderr = trace.communicate(timeout=30)
    assert trace.returncode == 1, (stdout, stderr)
    assert "the trace was cut short: the system ended the session before 60 s" in stderr
    assert json.loads(out.read_text())["traceEvents"] is not None


def test_a_trace_takes_a_name_no_probe_of_its_compartments_has(tmp_path, wsuper):
    """An outside review (r266): a trace session named its probes "trace-N" whatever
    probes the compartment had; with one of the operator's (or the system file's)
    named so, the session added none there ("calc has a probe named trace-1
    already (remove it first)") and its trace held none of calc's calls, exit 0."""
    import subprocess
    import sys
    system = tmp_path / "named.toml"
    system.write_text(CALC.replace("[system]\n", f'[system]\nsocket = "{tmp_path}/n.sock"\n')
                      + "external = true\n[compartments.calc.probes.trace-4]\npoint = \"calls\"\n")
    run = wsuper("up", str(system))
    run.wait_for("probe added: calc.trace-4")
    for name in ("trace-1", "trace-2", "trace-3-f", "trace-5-f"):
        r = _probe(system, "calc", "add", name, "--point", "calls")
        assert r.returncode == 0, r.stderr
    out = tmp_path / "t.json"
    trace = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "trace", str(system),
                              "--seconds", "3", "-o", str(out)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    added = run.wait_for("by wsuper trace")
    assert added.endswith("probe added: calc.trace-6 (calls, events) by wsuper trace"), added
    assert run_wsuper("call", str(system), "calc.add", "(a = 1, b = 2)").returncode == 0
    stdout, stderr = trace.communicate(timeout=60)
    assert trace.returncode == 0 and "already" not in stderr, (stdout, stderr)
    calls = [e for e in json.loads(out.read_text())["traceEvents"]
             if e.get("cat") == "call" and e.get("ph") == "X"]
    assert {(e["name"], e["args"]["callee"]) for e in calls} == {("Calc.add", "calc")}, calls
    names = {p["name"] for p in json.loads(_probe(system, "calc", "list", "--json").stdout)}
    assert names == {"trace-1", "trace-2", "trace-3-f", "trace-4", "trace-5-f"}


def test_a_trace_file_a_write_fails_into_is_left_with_no_part_of_the_trace(tmp_path, wsuper):
    """An outside review (r266): a trace whose file could not be written whole (a full
    disk; here the file-size limit, RLIMIT_FSIZE, which fails a write the same way)
    was said ("cannot write the trace: ...", exit 1) but the file kept the part that
    fitted: JSON cut short, where a trace is looked for.  A file the trace made is
    removed; one that was there was left empty, its old trace lost (r268): it is
    kept as it was, its mode too (the trace is written beside it and renamed over
    it only once whole: outfile.replacing), and nothing is left beside it."""
    import resource
    import signal
    import subprocess
    import sys
    import capnp_schemas
    system = tmp_path / "full.toml"
    system.write_text(CALC.replace("[system]\n", f'[system]\nsocket = "{tmp_path}/f.sock"\n')
                      + "external = true\n")
    run = wsuper("up", str(system))
    run.wait_for("ready calc")
    schema = capnp_schemas.load(f"{EXAMPLES}/calc.capnp")

    async def calls(gateway):
        calc = (await gateway.get("calc")).cap.as_interface(schema.Calc)
        for i in range(40):
            await calc.add(a=i, b=1)

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # a write past it fails, EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    (tmp_path / "old.json").write_text("an older trace\n")
    os.chmod(tmp_path / "old.json", 0o640)
    for name in ("new.json", "old.json"):
        out = tmp_path / name
        at = len(run.lines)
        trace = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "trace", str(system),
                                  "--seconds", "2", "-o", str(out)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=small_files)
        run.wait_for("probe added: calc.trace-", start=at)
        external_client(f"{tmp_path}/f.sock", calls)
        stdout, stderr = trace.communicate(timeout=60)
        assert trace.returncode == 1, (stdout, stderr)
        assert stderr == f"wsuper: error: -o {out}: cannot write the trace: File too large\n"
        if name == "new.json":
            assert not out.exists()
        else:
            assert out.read_bytes() == b"an older trace\n"
            assert stat.S_IMODE(out.stat().st_mode) == 0o640
        assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    # written whole, it replaces the old trace, keeping the old file's mode
    at = len(run.lines)
    trace = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "trace", str(system),
                              "--seconds", "2", "-o", str(tmp_path / "old.json")], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run.wait_for("probe added: calc.trace-", start=at)
    external_client(f"{tmp_path}/f.sock", calls)
    stdout, stderr = trace.communicate(timeout=60)
    assert trace.returncode == 0, (stdout, stderr)
    assert json.loads((tmp_path / "old.json").read_text())["traceEvents"]
    assert stat.S_IMODE((tmp_path / "old.json").stat().st_mode) == 0o640


def test_a_trace_into_a_fifo_no_process_reads_is_refused_at_once(tmp_path, wsuper):
    """An outside review (r266, left to r268): `wsuper trace S -o FIFO` with no reader
    blocked in open() before it asked the system anything, for as long as nobody
    read.  The FIFO is opened without waiting: refused at once naming it, exit 1;
    with a reader, the trace goes into it (a pipe is written as it is)."""
    import subprocess
    import sys
    system = tmp_path / "fifo.toml"
    system.write_text(CALC)
    run = wsuper("up", str(system))
    run.wait_for("ready calc")
    fifo = tmp_path / "t.fifo"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", "trace", str(system),
                        "--seconds", "1", "-o", str(fifo)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stderr == (
        f"wsuper: error: -o {fifo} is a FIFO that no process reads (start its reader "
        f"first): nothing was written\n"), r.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)       # a reader, there first
    try:
        r = subprocess.run([sys.executable, "-m", "supervisor.cli", "trace", str(system),
                            "--seconds", "1", "-o", str(fifo)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        data = b""
        while chunk := os.read(reader, 1 << 16):
            data += chunk
        assert "traceEvents" in json.loads(data)
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_an_analysis_compartment_holds_only_its_probe_capability(plugins):
    here = plugins / "examples" / "probes"
    shutil.rmtree(here / "data", ignore_errors=True)
    (here / "data").mkdir()
    (here / "data" / "kv.log").write_text("runs\t42\n")
    from tests.conftest import Running
    run = Running(["up", str(here / "system.toml")])
    try:
        run.wait_for("[client] client: this is run")
        run.wait_for("analysis: lookup(\"data\") -> -7 (refused: not granted)")
        run.wait_for("analysis: fopen(/data/kv.log) -> Capabilities insufficient")
        line = run.wait_for("analysis: Directory.open on the probe capability -> ")
        assert "-5 (ENOTSUP: a probe implements Probe (read, target) only)" in line
        run.wait_for("calls seen")
        # a report comes every 8 calls and when the store goes quiet: the last
        # shows both puts (the first may come before the second put has ended)
        run.wait_for(f"analysis:   {'Store.put':<24} {2:5d} calls")
    finally:
        run.stop()
    assert (here / "data" / "kv.log").read_text() == "runs\t42\nruns\t43\ngreeting\thello\n"
    r = run_wsuper("check", str(here / "system.toml"))
    assert r.returncode == 0, r.stderr


def test_probes_on_a_per_call_compartment(tmp_path, wsuper):
    sock = tmp_path / "pc.sock"
    system = tmp_path / "pc.toml"
    system.write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{sock}"
[compartments.calc]
module = "{GUESTS}/counting.wat"
exports = "Calc"
external = true
instance = "per_call"
instrument = ["functions", "stores"]
""")
    run = wsuper("up", str(system))
    run.wait_for("ready calc")
    assert _probe(system, "calc", "add", "f", "--point", "functions").returncode == 0
    assert _probe(system, "calc", "add", "s", "--point", "stores").returncode == 0
    assert _probe(system, "calc", "add", "c", "--point", "calls").returncode == 0
    assert _probe(system, "calc", "add", "h", "--point", "hostcalls").returncode == 0
    schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))

    async def body(gateway):
        calc = (await gateway.get("calc")).cap.as_interface(schema.Calc)
        return [(await calc.add(1, 1)).sum for _ in range(5)]
    assert external_client(str(sock), body) == [1, 1, 1, 1, 1]    # still fresh every call
    probes = {p["name"]: p for p in json.loads(_probe(system, "calc", "list", "--json").stdout)}
    assert probes["f"]["count"] == 5            # every fresh instance's counters, added up
    assert probes["s"]["count"] >= 5
    assert sum(probes["c"]["counts"].values()) == 5
    assert list(probes["c"]["counts"]) == ["in external Calc.add"]
    assert probes["h"]["counts"] == {"wsuper.results_set": 5}     # what counting.wat calls
    assert set(probes["h"]["histograms"]) == {"wsuper.results_set"}
    text = _probe(system, "calc", "list").stdout
    assert "probe h on calc: hostcalls (counts); 5 events" in text
    assert "wsuper.results_set: 5  p50 " in text


def test_declared_probes_survive_a_restart_and_run_time_ones_do_not(tmp_path, wsuper):
    system = tmp_path / "r.toml"
    system.write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
audit = "{tmp_path}/audit.jsonl"
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
restart = "permanent"
instrument = ["functions"]
[compartments.calc.probes.entries]
point = "functions"
[compartments.calc.probes.served]
point = "calls"
events = true
""")
    run = wsuper("up", str(system))
    run.wait_for("probe added: calc.served")
    run.wait_for("probe added: calc.entries")
    assert _probe(system, "calc", "add", "mine", "--point", "hostcalls").returncode == 0
    names = {p["name"] for p in json.loads(_probe(system, "calc", "list", "--json").stdout)}
    assert names == {"entries", "served", "mine"}
    pid = int(run.wait_for("ready calc").split("pid=")[1].split()[0])
    os.kill(pid, 9)
    run.wait_for("probe dropped by a restart: calc.mine")
    at = len(run.lines)
    run.wait_for("probe added: calc.entries", start=at)
    run.wait_for("probe added: calc.served", start=at)
    names = {p["name"] for p in json.loads(_probe(system, "calc", "list", "--json").stdout)}
    assert names == {"entries", "served"}
    run.stop()
    audit = [json.loads(l) for l in open(tmp_path / "audit.jsonl")]
    dropped = [a for a in audit if a.get("event") == "probe dropped by a restart"]
    assert [(a["probe"], a["by"]) for a in dropped] == [("mine", "wsuper")]


def test_only_what_the_operator_asks_and_the_module_has(tmp_path, wsuper):
    system = tmp_path / "o.toml"
    system.write_text(CALC)
    run = wsuper("up", str(system))
    run.wait_for("ready calc")
    r = _probe(system, "calc", "add", "f", "--point", "functions")
    assert r.returncode == 1 and "calc was not loaded with functions probe sites: add " \
        "\"functions\" to instrument = [...]" in r.stderr
    for args, why in ((["x;rm", "--point", "calls"], "probe name 'x;rm' is not allowed"),
                      (["f", "--point", "calls", "--functions", "a"],
                       "functions applies to the points functions, blocks, stores"),
                      (["f", "--point", "calls", "--functions", "#x"], "an index is")):
        r = _probe(system, "calc", "add", *args)
        assert r.returncode == 1 and why in r.stderr, r.stderr
    r = _probe(system, "nobody", "list")
    assert r.returncode == 1 and "no compartment 'nobody'" in r.stderr
    assert _probe(system, "calc", "add", "c", "--point", "calls").returncode == 0
    r = _probe(system, "calc", "add", "c", "--point", "calls")
    assert r.returncode == 1 and "has a probe named c already" in r.stderr
    assert _probe(system, "calc", "remove", "c").returncode == 0
    r = _probe(system, "calc", "remove", "c")
    assert r.returncode == 1 and "no probe named 'c'" in r.stderr


@pytest.mark.parametrize("grant, why", [
    ('{ host = "probe" }', "on = \"NAME\""),
    ('{ host = "probe", on = "app" }', "cannot read its own probes"),
    ('{ host = "log", on = "calc" }', "applies only to probe grants"),
])
def test_probe_grants_name_another_compartment(tmp_path, grant, why):
    (tmp_path / "s.toml").write_text(f"""
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
[compartments.app]
module = "{EXAMPLES}/hello.wat"
[compartments.app.grants]
p = {grant}
""")
    r = run_wsuper("check", str(tmp_path / "s.toml"))
    assert r.returncode == 2 and why in r.stderr, r.stderr


def test_declared_in_module_probes_need_their_sites(tmp_path):
    (tmp_path / "s.toml").write_text(f"""
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
[compartments.calc.probes.f]
point = "blocks"
""")
    r = run_wsuper("check", str(tmp_path / "s.toml"))
    assert r.returncode == 2 and "add \"blocks\" to compartments.calc.instrument" in r.stderr


def test_a_stores_probe_sees_memset_and_memcpy(tmp_path, wsuper):
    """memory.fill and memory.copy (memset and memcpy, as newer compilers emit them)
    wrote the memory a `stores` probe watched without a word: the rewriter probed
    only plain stores, and the supervisor skipped a store of more than 16 bytes."""
    with open(os.path.join(GUESTS, "counting.wat")) as f:
        guest = f.read().replace(
            "(i32.store (i32.const 0) (i32.const 0))",
            "(memory.fill (i32.const 1024) (i32.const 7) (i32.const 300))\n"
            "    (memory.copy (i32.const 2048) (i32.const 1024) (i32.const 100))\n"
            "    (i32.store (i32.const 0) (i32.const 0))")
    (tmp_path / "bulk.wat").write_text(guest)
    sock = tmp_path / "bulk.sock"
    system = tmp_path / "bulk.toml"
    system.write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{sock}"
[compartments.calc]
module = "bulk.wat"
exports = "Calc"
external = true
instrument = ["stores"]
""")
    run = wsuper("up", str(system))
    run.wait_for("ready calc")
    assert _probe(system, "calc", "add", "s", "--point", "stores", "--events").returncode == 0
    schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))

    async def body(gateway):
        calc = (await gateway.get("calc")).cap.as_interface(schema.Calc)
        return [(await calc.add(1, 1)).sum for _ in range(3)]
    assert external_client(str(sock), body) == [1, 2, 3]
    (probe,) = json.loads(_probe(system, "calc", "list", "--json").stdout)
    assert probe["sizes"] == {"128": 3, "512": 3, "4": 6, "8": 6}, probe["sizes"]
    assert probe["bytes"] == 3 * (300 + 100 + 4 + 4 + 8 + 8)
    assert probe["range"] == [0, 2048 + 100]


def test_the_probes_example_runs_as_its_comments_say(tmp_path):
    """examples/probes/system.toml says how to build and run it: every command its
    comments give (the `#   ` lines), run as written from that directory in a
    fresh copy of the checkout's examples, leaves a system `wsuper check` (and so
    `up`) takes.  They built the plugins and stopped there: the store's grant of
    ${SYSTEM_DIR}/data named a directory nothing made (it is not in the checkout),
    and `wsuper up system.toml` said "... data is not an existing directory",
    exit 2."""
    for name in ("kv", "probes"):
        shutil.copytree(os.path.join(ROOT, "examples", name), tmp_path / "examples" / name,
                        ignore=shutil.ignore_patterns("build", "data", "*audit.jsonl"))
    shutil.copytree(os.path.join(ROOT, "policies"), tmp_path / "policies")
    (tmp_path / "capnp_schemas").mkdir()
    shutil.copy(os.path.join(ROOT, "capnp_schemas", "probe.capnp"), tmp_path / "capnp_schemas")
    here = tmp_path / "examples" / "probes"
    with open(here / "system.toml", encoding="utf-8") as f:
        commands = [line[4:].strip() for line in f if line.startswith("#   ")]
    assert any(c.startswith("wsuper build") for c in commands), commands
    wsuper = f"{sys.executable} -m supervisor.cli"
    env = dict(os.environ, PYTHONPATH=ROOT)
    for command in commands:
        if command.startswith("wsuper up") or command.startswith("Then:"):
            continue
        r = subprocess.run(command.replace("wsuper ", wsuper + " ", 1), shell=True, cwd=here,
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (command, r.stderr)
    r = run_wsuper("check", str(here / "system.toml"))
    assert r.returncode == 0, r.stderr


def test_probe_list_with_a_name_shows_that_probe_and_refuses_one_not_there(tmp_path, wsuper):
    """The README shows `wsuper probe SYSTEM store list|remove cov`: `list cov` printed
    every probe of the compartment, and `list` of a probe that is not there (a typo)
    printed the others and exited 0, as if it were there."""
    system = tmp_path / "l.toml"
    system.write_text(CALC)
    run = wsuper("up", str(system))
    run.wait_for("ready calc")
    assert _probe(system, "calc", "add", "one", "--point", "calls").returncode == 0
    assert _probe(system, "calc", "add", "two", "--point", "hostcalls").returncode == 0
    r = _probe(system, "calc", "list", "two")
    assert r.returncode == 0, r.stderr
    assert "probe two on calc" in r.stdout and "probe one" not in r.stdout, r.stdout
    r = _probe(system, "calc", "list", "two", "--json")
    assert [p["name"] for p in json.loads(r.stdout)] == ["two"]
    r = _probe(system, "calc", "list", "tow")
    assert r.returncode == 1 and r.stdout == "", r.stdout
    assert "calc has no probe named 'tow' (probes: one, two)" in r.stderr, r.stderr
    names = {p["name"] for p in json.loads(_probe(system, "calc", "list", "--json").stdout)}
    assert names == {"one", "two"}


def test_probe_list_before_a_compartment_is_ready_names_its_declared_probes(tmp_path, wsuper):
    """examples/probes/system.toml says to run `probe list` while the system starts:
    before the store was ready (its module rewritten, its start function run), its
    declared probe was not there yet and `list` said "no probes", as if the system
    file declared none."""
    (tmp_path / "spin.wat").write_text('(module (memory (export "memory") 1) '
                                       '(func $s (loop (br 0))) (start $s))')
    system = tmp_path / "w.toml"
    system.write_text(CALC + f"""
[compartments.calc.probes.mine]
point = "calls"
[compartments.spin]
module = "{tmp_path}/spin.wat"
[compartments.spin.limits]
start_time = 120
[compartments.spin.probes.served]
point = "calls"
""")
    run = wsuper("up", str(system))
    run.wait_for("ready calc")
    r = _probe(system, "spin", "list")                   # its start function spins
    assert r.returncode == 0, r.stderr
    assert "spin is not ready: the probes its system file declares (served) are added " \
           "when it is" in r.stdout, r.stdout
    assert "no probes" not in r.stdout, r.stdout
    assert _probe(system, "spin", "list", "served").returncode == 0
    assert _probe(system, "spin", "list", "other").returncode == 1
    # a ready compartment's declared probe that the operator removed is gone: no note
    run.wait_for("probe added: calc.mine")
    assert _probe(system, "calc", "remove", "mine").returncode == 0
    r = _probe(system, "calc", "list")
    assert "no probes" in r.stdout and "not ready" not in r.stdout, r.stdout
    assert _probe(system, "calc", "list", "mine").returncode == 1



def _reader(tmp_path):
    """guests/c/probe_reader.c built: an analysis of calc's probe events serving Calc,
    whose add(a, b) reads its events once, waiting up to `a` ms, and answers how many
    the read returned."""
    from supervisor import bindgen, toolchain
    include = str(tmp_path / "include")
    for schema in (f"{EXAMPLES}/calc.capnp",
                   os.path.join(ROOT, "capnp_schemas", "probe.capnp")):
        bindgen.generate(schema, include)
    return toolchain.build([os.path.join(GUESTS, "c", "probe_reader.c")],
                           str(tmp_path / "reader.wasm"), reactor=True, include=[include])


def _reader_system(tmp_path, wsuper, call_time):
    """calc (counting.wat, with a calls probe) and `reader`, granted a Probe on calc,
    whose calls may take `call_time` s: (external socket, system file)."""
    sock = tmp_path / "r.sock"
    system = tmp_path / "r.toml"
    system.write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{sock}"
[compartments.calc]
module = "{GUESTS}/counting.wat"
exports = "Calc"
external = true
[compartments.calc.probes.seen]
point = "calls"
[compartments.reader]
module = "{_reader(tmp_path)}"
exports = "Calc"
external = true
limits = {{ call_time = {call_time} }}
[compartments.reader.grants]
events = {{ host = "probe", on = "calc" }}
""")
    run = wsuper("up", str(system))
    run.wait_for("ready reader")
    run.wait_for("ready calc")
    return str(sock), system


CALC_SCHEMA = os.path.join(EXAMPLES, "calc.capnp")


def _add(gateway, name, a):
    schema = capnp_schemas.load(CALC_SCHEMA)

    async def call():
        cap = (await gateway.get(name)).cap.as_interface(schema.Calc)
        try:
            return (await cap.add(a, 0)).sum
        except Exception as e:  # noqa: BLE001 - the call's failure is the answer
            return str(e)
    return call()


def _seen_once(system):
    """Until calc's calls probe has taken its one call's record (and put it in the
    queue of the reads of its events)."""
    for _ in range(100):
        seen = json.loads(_probe(system, "calc", "list", "--json").stdout)[0]["seen"]
        if seen:
            break
        time.sleep(0.1)
    assert seen == 1


def test_a_read_its_caller_gave_up_on_takes_no_event_from_the_next(tmp_path, wsuper):
    """A Probe read that waits for events belongs to the call out that made it: once
    that call is given up (here the analysis's own call ran past its call_time, and
    its engine finished the read), the events that come are the next read's.  The
    supervisor's wait went on, took the first event that came into an answer that
    went nowhere, and the analysis never saw it, nor was it counted dropped (an
    outside review, r240)."""
    sock, system = _reader_system(tmp_path, wsuper, call_time=1)
    # waits for events for up to 10 s, in a call that may take 1 s
    assert "did not answer within" in external_client(
        sock, lambda gw: _add(gw, "reader", 10_000))
    # a read that does not wait: the reader's engine finished the first read (when the
    # supervisor finished the call it served) before it served this call, so the
    # supervisor has had that Finish by this read's answer
    assert external_client(sock, lambda gw: _add(gw, "reader", 0)) == 0
    assert external_client(sock, lambda gw: _add(gw, "calc", 2)) == 1   # its first call
    _seen_once(system)
    assert external_client(sock, lambda gw: _add(gw, "reader", 0)) == 1   # without waiting


def test_every_read_waiting_on_a_probe_is_woken_by_its_events(tmp_path, wsuper):
    """Two reads of one Probe capability wait at once (the second in a call served
    while the first waits, re-entrantly): the queue woke only the last to wait, and
    the first to end took that away from the other.  Here the second waits 0.3 s
    and ends with nothing; the first, waiting up to 10 s, slept through the event
    that came next, and its call (which may take 9 s) failed past its call_time
    instead of answering with it (an outside review, r240)."""
    sock, system = _reader_system(tmp_path, wsuper, call_time=9)
    schema = capnp_schemas.load(CALC_SCHEMA)

    async def sum_of(promise):
        try:
            return (await promise).sum
        except Exception as e:  # noqa: BLE001 - the call's failure is the answer
            return str(e)

    async def body(gateway):
        reader = (await gateway.get("reader")).cap.as_interface(schema.Calc)
        calc = (await gateway.get("calc")).cap.as_interface(schema.Calc)
        first = reader.add(10_000, 0)          # sent now: its read waits for events
        second = await sum_of(reader.add(300, 0))   # served on top of it, in order
        event = await sum_of(calc.add(2, 0))        # the event the first waits for
        return await sum_of(first), second, event
    assert external_client(sock, body) == (1, 0, 1)


def test_a_hostcalls_probe_counts_wasi_errors_and_traps_as_failures(tmp_path, wsuper):
    """A WASI import fails when it returns an errno other than 0, and a host call
    that traps its guest fails too; only a negative result (the wsuper ABI's
    errors) was counted failed: every EBADF, ENOENT or EFAULT of a WASI call,
    and every trap in a host call, was a success in `probe list` (an outside
    review, r240)."""
    sock = tmp_path / "h.sock"
    system = tmp_path / "h.toml"
    system.write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{sock}"
[compartments.calc]
module = "{GUESTS}/hostcall_failures.wat"
exports = "Calc"
external = true
[compartments.calc.probes.h]
point = "hostcalls"
""")
    run = wsuper("up", str(system))
    run.wait_for("ready calc")
    assert external_client(str(sock), lambda gw: _add(gw, "calc", 1)) == 1
    assert "trapped" in external_client(str(sock), lambda gw: _add(gw, "calc", 1))
    for _ in range(100):        # the engine's records of both calls' host calls
        [p] = json.loads(_probe(system, "calc", "list", "--json").stdout)
        if p["seen"] >= 6:
            break
        time.sleep(0.1)
    assert p["counts"] == {"wasi.fd_close": 2, "wsuper.lookup": 3, "wsuper.results_set": 1}
    assert p["failed"] == {"wasi.fd_close": 2, "wsuper.lookup": 3}
