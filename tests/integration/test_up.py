"""`wsuper up` with real engine processes running real wasm."""
import os
import signal
import subprocess
import sys
import time

import pytest

from compartments.zygote import readable
from tests.conftest import EXAMPLES, ROOT, run_wsuper
from tests.integration.test_interop import SYSTEM, _client


def test_hello_prints_ready_lines_and_the_result():
    r = run_wsuper("up", os.path.join(EXAMPLES, "hello.toml"), merged=True)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    ready = [l for l in lines if l.startswith("wsuper: ready ")]
    assert sorted(l.split()[2] for l in ready) == ["app", "calc"]
    for l in ready:
        assert "pid=" in l and ("module=calc.wat" in l or "module=hello.wat" in l)
    assert "[app] 2 + 3 = 5" in lines
    assert lines[-1] == "wsuper: finished app exit=0"


_MANY_DESCRIPTORS = r"""
import os, sys
from supervisor.launch import raise_fd_limit
raise_fd_limit()
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
from supervisor.cli import main
sys.exit(main(["up", sys.argv[1]]))
"""


def test_a_system_started_holding_past_1023_descriptors_runs(tmp_path):
    """A supervisor that holds more than 1,023 descriptors when it starts its zygote
    (one started by a process that left many open, or a second zygote started
    after a system's grants are open) gives it a control socket numbered past
    1,023.  The zygote waited on it with select(2), which refuses such a number:
    it ended at the first start that found no spare (here, among 14), and the
    system with it ("the zygote is gone")."""
    import subprocess
    import sys
    from tests.conftest import ROOT
    text = f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\n'
    for name in ["calc"] + [f"c{i}" for i in range(12)]:
        text += f'[compartments.{name}]\nmodule = "{EXAMPLES}/calc.wat"\nexports = "Calc"\n'
    text += (f'[compartments.app]\nmodule = "{EXAMPLES}/hello.wat"\n'
             f'[compartments.app.grants]\ncalc = {{ compartment = "calc" }}\n'
             f'log = {{ host = "log" }}\n')
    (tmp_path / "system.toml").write_text(text)
    r = subprocess.run([sys.executable, "-c", _MANY_DESCRIPTORS,
                        str(tmp_path / "system.toml")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[app] 2 + 3 = 5" in r.stdout, r.stdout + r.stderr
    assert r.stderr.count("wsuper: ready ") == 14, r.stderr


def test_capability_in_result_and_callback():
    r = run_wsuper("up", os.path.join(EXAMPLES, "callback.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert "[app] counter = 12" in out          # Counter came back in a result
    partials = [l for l in out if l.startswith("[app] observer:")]
    assert partials == [f"[app] observer: sum so far {n}" for n in (1, 3, 6, 10)]  # callbacks
    assert "[app] sum 1..4 = 10" in out


HOSTILE = """
(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "release" (func $release (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "calc")
  (func (export "_start")
    (local $calc i32)
    (local.set $calc (call $lookup (i32.const 100) (i32.const 4)))
    (drop (call $call (local.get $calc) (i64.const 0xc0ffee0000000001) (i32.const 0)
                (i32.const {ptr}) (i32.const {length}) (i32.const 0) (i32.const 0) (i32.const 1000))))
)
"""


@pytest.mark.parametrize("ptr,length", [(-16, 24), (65530, 24), (0x7FFFFFF0, 0x7FFFFFF0), (0, -1)])
def test_out_of_range_pointer_traps_guest_and_system_keeps_serving(tmp_path, wsuper, ptr, length):
    (tmp_path / "bad.wat").write_text(HOSTILE.replace("{ptr}", str(ptr)).replace("{length}", str(length)))
    sock = tmp_path / "s.sock"
    text = SYSTEM.format(schema=os.path.join(EXAMPLES, "calc.capnp"),
                         module=os.path.join(EXAMPLES, "calc.wat"), socket=sock)
    text += ('\n[compartments.bad]\nmodule = "bad.wat"\nrestart = "never"\n'
             '[compartments.bad.grants]\ncalc = { compartment = "calc" }\n')
    (tmp_path / "system.toml").write_text(text)
    run = wsuper("up", str(tmp_path / "system.toml"))
    line = run.wait_for("compartment bad failed")
    assert "trapped" in line and "out-of-range memory" in line

    async def body(gateway, calc_schema):
        calc = (await gateway.get("calc")).cap.as_interface(calc_schema.Calc)
        return (await calc.add(40, 2)).sum

    assert _client(str(sock), body) == 42
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 143   # stopped by SIGTERM (128 + 15), everything with it


HANDLES = """
(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "release" (func $release (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "calc")
  (data (i32.const 200) "nothing")
  (func $add (param $h i32) (result i32)
    (i32.store (i32.const 1024) (i32.const 0))
    (i32.store (i32.const 1028) (i32.const 2))
    (i64.store (i32.const 1032) (i64.const 0x0000000100000000))
    (i64.store (i32.const 1040) (i64.const 0x0000000100000001))
    (call $call (local.get $h) (i64.const 0xc0ffee0000000001) (i32.const 0)
          (i32.const 1024) (i32.const 24) (i32.const 0) (i32.const 0) (i32.const 1000)))
  (func $expect (param $got i32) (param $want i32)
    (if (i32.ne (local.get $got) (local.get $want)) (then unreachable)))
  (func (export "_start")
    (local $calc i32)
    (call $expect (call $lookup (i32.const 200) (i32.const 7)) (i32.const -7))  ;; not granted
    (local.set $calc (call $lookup (i32.const 100) (i32.const 4)))
    (call $expect (call $add (local.get $calc)) (i32.const 0))
    (call $expect (call $add (i32.const 77)) (i32.const -1))          ;; never given
    (call $expect (call $add (i32.const 0)) (i32.const -1))           ;; 0 is never valid
    (call $expect (call $release (local.get $calc)) (i32.const 0))
    (call $expect (call $add (local.get $calc)) (i32.const -1))       ;; released
    (call $expect (call $release (local.get $calc)) (i32.const -1)))
)
"""


def test_handles_never_given_or_released_are_refused(tmp_path):
    (tmp_path / "h.wat").write_text(HANDLES)
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.h]
module = "h.wat"
[compartments.h.grants]
calc = {{ compartment = "calc" }}
""")
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "finished h exit=0" in r.stderr


def test_sigkill_of_the_supervisor_takes_every_engine_with_it(tmp_path, wsuper):
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(SYSTEM.format(
        schema=os.path.join(EXAMPLES, "calc.capnp"), module=os.path.join(EXAMPLES, "calc.wat"),
        socket=sock))
    run = wsuper("up", str(tmp_path / "system.toml"))
    line = run.wait_for("ready calc")
    pid = int(line.split("pid=")[1].split()[0])
    os.kill(pid, 0)
    run.proc.kill()
    run.proc.wait()
    assert not _running(pid, wait=10), f"engine {pid} outlived the supervisor"


_QUICK_IDLE = """
import sys
sys.path.insert(0, {root!r})
import trio._core._thread_cache
trio._core._thread_cache.IDLE_TIMEOUT = 1     # trio's worker threads retire after 1 s
from supervisor import cli
sys.exit(cli.main(["up", sys.argv[1]]))
"""


async def _add_1_1(gateway, calc_schema):
    calc = (await gateway.get("calc")).cap.as_interface(calc_schema.Calc)
    return (await calc.add(1, 1)).sum


def test_engines_outlive_the_thread_that_spawned_them(tmp_path):
    """Regression: engines forked from one of trio's worker threads were killed by
    their parent-death signal when that thread retired after 10 idle seconds (here
    after 1, which trio is told by a script that runs the command)."""
    from tests.conftest import Running
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(SYSTEM.format(
        schema=os.path.join(EXAMPLES, "calc.capnp"), module=os.path.join(EXAMPLES, "calc.wat"),
        socket=sock))
    script = tmp_path / "quick_idle.py"
    script.write_text(_QUICK_IDLE.format(root=ROOT))
    run = Running.__new__(Running)             # a Running of the script, not of -m
    run.proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "system.toml")],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run.lines, run._unread = [], b""
    try:
        run.wait_for("ready calc")
        time.sleep(3)
        assert _client(str(sock), _add_1_1) == 2
        run.proc.send_signal(signal.SIGTERM)
        assert run.finish() == 143   # SIGTERM: 128 + 15
    finally:
        run.stop()
    assert not any("stopped" in l or "failed" in l for l in run.lines), run.lines


def test_a_system_launched_with_signals_blocked_stops_on_sigterm(tmp_path):
    """The signal mask survives exec: `up` launched by a parent that had blocked
    SIGTERM, SIGINT and SIGHUP (and exec'd without unblocking them) stopped on
    none of them (a service manager's stop ended in its SIGKILL, the last records
    lost), and its zygote and engines inherited the mask.  Every command unblocks
    them first thing."""
    from tests.conftest import Running
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(SYSTEM.format(
        schema=os.path.join(EXAMPLES, "calc.capnp"), module=os.path.join(EXAMPLES, "calc.wat"),
        socket=sock))
    blocked = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    run = Running(["up", str(tmp_path / "system.toml")],
                  preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, blocked))
    try:
        line = run.wait_for("ready calc")
        engine = int(line.split("pid=")[1].split()[0])
        with open(f"/proc/{engine}/status") as f:
            mask = int(next(l for l in f if l.startswith("SigBlk:")).split()[1], 16)
        assert not mask & (1 << (signal.SIGTERM - 1)), f"the engine blocks SIGTERM: {mask:x}"
        run.proc.send_signal(signal.SIGTERM)
        assert run.finish(timeout=30) == 143        # SIGTERM: 128 + 15
        assert any("SIGTERM, stopping" in l for l in run.lines), run.lines
    finally:
        run.stop()


def test_a_system_launched_with_every_stopping_signal_ignored_runs_and_stops(tmp_path):
    """SIGINT, SIGTERM and SIGHUP ignored when `up` began (SIG_IGN survives exec:
    `trap '' INT TERM HUP`) stay ignored, as nohup's SIGHUP does; with all three
    ignored there was no signal left to receive, and `up` ended in a traceback
    (TypeError: No signals were provided) as its system started.  It runs, and
    `wsuper stop` stops it."""
    from tests.conftest import Running

    def ignore():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
    sock = tmp_path / "s.sock"
    system = tmp_path / "system.toml"
    system.write_text(SYSTEM.format(
        schema=os.path.join(EXAMPLES, "calc.capnp"), module=os.path.join(EXAMPLES, "calc.wat"),
        socket=sock))
    run = Running(["up", str(system)], preexec_fn=ignore)
    try:
        run.wait_for("all compartments ready")
        run.proc.send_signal(signal.SIGTERM)         # ignored, as it was when up began
        stop = run_wsuper("stop", str(system))
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert run.finish(timeout=30) == 0, run.lines
        assert not any("Traceback" in l or "SIGTERM, stopping" in l for l in run.lines), \
            run.lines
    finally:
        run.stop()


def test_binary_wasm_modules_run_like_wat(tmp_path):
    import wasmtime
    for name in ("calc", "hello"):
        with open(os.path.join(EXAMPLES, f"{name}.wat")) as f:
            (tmp_path / f"{name}.wasm").write_bytes(wasmtime.wat2wasm(f.read()))
    with open(os.path.join(EXAMPLES, "hello.toml")) as f:
        text = f.read().replace(".wat", ".wasm").replace("calc.capnp", f"{EXAMPLES}/calc.capnp")
    (tmp_path / "hello.toml").write_text(text)
    r = run_wsuper("up", str(tmp_path / "hello.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "module=calc.wasm" in r.stderr and "[app] 2 + 3 = 5" in r.stdout


def test_a_shared_policy_file_grants_what_the_program_needs():
    r = run_wsuper("up", os.path.join(EXAMPLES, "hello-policy.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[app] 2 + 3 = 5" in r.stdout
    r = run_wsuper("check", os.path.join(EXAMPLES, "hello-policy.toml"))
    assert "policies/calc-client.toml: grants.calc)" in r.stdout
    assert "[allow=add]" in r.stdout


def _children(pid):
    """(pid, cmdline) of the processes whose parent is `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.append((int(entry), cmd))
    return out


def test_if_the_zygote_dies_its_engines_die_and_the_supervisor_says_so(tmp_path, wsuper):
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(SYSTEM.format(
        schema=os.path.join(EXAMPLES, "calc.capnp"), module=os.path.join(EXAMPLES, "calc.wat"),
        socket=sock))
    run = wsuper("up", str(tmp_path / "system.toml"))
    engine = int(run.wait_for("ready calc").split("pid=")[1].split()[0])
    (zygote, _cmd), = [c for c in _children(run.proc.pid) if "compartments.zygote" in c[1]]
    assert any(pid == engine for pid, _ in _children(zygote))   # engines are its children
    os.kill(zygote, signal.SIGKILL)
    assert run.finish(timeout=30) == 1
    # said at once, naming it (not at calc's next start: test_restart.py,
    # test_a_dead_zygote_stops_the_system_at_once_whatever_the_restart_policies)
    assert any(f"the zygote (pid {zygote}) is gone (killed by SIGKILL), and every engine "
               f"with it: no compartment can start again; stopping" in l for l in run.lines), \
        run.lines
    assert not _running(engine)


def _signal_masks(pid) -> dict:
    """The signals process `pid` ignores, blocks (its main thread) and catches."""
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in f)
                if k in ("SigIgn", "SigBlk", "SigCgt")}


def _running(pid, wait=5.0):
    """False once `pid` is gone or a zombie (dead, waiting for init to reap it)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False
        except OSError:
            return False
        time.sleep(0.05)
    return True


def _ours() -> set[int]:
    """This process's children."""
    out = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            out.update(int(pid) for pid in f.read().split())
    return out


def test_the_zygote_started_early_goes_when_the_system_is_refused(tmp_path, capsys):
    """`wsuper up` starts its zygote before reading the system file (the two start-ups
    overlap); a system that is refused takes that zygote with it."""
    from supervisor import cli
    (tmp_path / "system.toml").write_text('[compartments.a]\nmodule = "missing.wat"\n')
    before = _ours()
    assert cli.main(["up", str(tmp_path / "system.toml")]) == 2
    assert "missing.wat" in capsys.readouterr().err
    assert _ours() == before          # neither running nor a zombie


@pytest.mark.parametrize("closed", [(0,), (1,), (2,), (1, 2), (0, 1, 2)],
                         ids=lambda c: "closed " + ",".join(map(str, c)))
def test_standard_descriptors_closed_at_launch_take_nothing_up_opens(tmp_path, closed):
    """A review of start-up in hostile environments: `wsuper up` launched with
    descriptor 0, 1 or 2 closed (`>&-`, a daemon manager) let the next descriptor it
    opened take that number: the zygote's socket landed on 2 and the zygote inherited
    it as its stderr (`up` then refused its system: "calc.capnp: no such file"), a
    socket on 1, a directory on 2, and writes meant for the terminal went into them.
    Each closed one is /dev/null from the start: the system runs as it would, and
    what goes to a stream still open is there."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    def close():
        for fd in closed:
            os.close(fd)
    streams = {fd: tmp_path / f"fd{fd}" for fd in (1, 2) if fd not in closed}
    files = {fd: open(path, "w") for fd, path in streams.items()}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "supervisor.cli", "up", os.path.join(EXAMPLES, "hello.toml")],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=files.get(1), stderr=files.get(2),
            preexec_fn=close, timeout=60)
    finally:
        for f in files.values():
            f.close()
    out = {fd: path.read_text() for fd, path in streams.items()}
    assert proc.returncode == 0, out
    if 1 in out:
        assert "[app] 2 + 3 = 5" in out[1].splitlines(), out
    if 2 in out:
        assert out[2].splitlines()[-1].endswith("wsuper: finished app exit=0"), out
        assert "error" not in out[2], out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stop_signal_sent_to_the_whole_service_is_the_supervisors_alone(
        tmp_path, wsuper, sig):
    """A review of the stop: a service manager that signals every process of the
    service at once (systemd's KillMode=control-group, its default; `kill 0`)
    killed the zygote with SIGTERM or SIGHUP too, and the supervisor, seeing it
    gone before its own signal, said "the zygote ... is gone (killed by SIGTERM),
    and every engine with it" and exited 1, not 143 (2 in 6 such stops).  The
    zygote ignores them (it goes when the supervisor stops it, or dies): sent the
    signal alone, the system serves on; the supervisor's own stops it, 128 + it."""
    sock = tmp_path / "s.sock"
    path = tmp_path / "system.toml"
    path.write_text(SYSTEM.format(
        schema=os.path.join(EXAMPLES, "calc.capnp"), module=os.path.join(EXAMPLES, "calc.wat"),
        socket=sock))
    run = wsuper("up", str(path))
    engine = int(run.wait_for("ready calc").split("pid=")[1].split()[0])
    # Once in a few runs of some groups of files in xdist workers, the supervisor
    # did nothing at SIGINT, as one started with it ignored does (nohup, `&`:
    # startsignals.stopping); said here, with this process's own masks, if so
    masks = {who: _signal_masks(pid) for who, pid in (("supervisor", run.proc.pid),
                                                      ("test", os.getpid()))}
    assert not (masks["supervisor"]["SigIgn"] | masks["supervisor"]["SigBlk"]) \
        & (1 << (sig - 1)), masks
    (zygote, _cmd), = [c for c in _children(run.proc.pid) if "compartments.zygote" in c[1]]
    os.kill(zygote, sig)
    r = run_wsuper("call", str(path), "calc.add", "(a = 1, b = 2)")
    assert r.returncode == 0 and "sum = 3" in r.stdout, r.output
    assert _running(zygote, wait=0.5) and not any("zygote" in l for l in run.lines), run.lines
    for pid in (zygote, run.proc.pid):       # both, as a service manager does
        os.kill(pid, sig)
    assert run.finish(timeout=30) == 128 + sig, run.lines
    assert not any("zygote" in l for l in run.lines), run.lines
    assert not _running(zygote) and not _running(engine)


def test_engines_and_spares_ignore_none_of_the_zygotes_stop_signals(tmp_path, wsuper):
    """A review of the zygote's stop signal: the zygote ignores SIGTERM and SIGHUP
    (zygote.IGNORED) and catches zygote.STOP; a disposition ignored survives fork,
    and _defaults gave its children SIGTERM's and STOP's back but not SIGHUP's:
    every engine and spare ignored SIGHUP, as none did before.  None of the
    zygote's children (engines, spares) ignores or catches SIGTERM, SIGHUP or
    STOP: each has its default."""
    from compartments import zygote as zygote_module
    sock = tmp_path / "s.sock"
    path = tmp_path / "system.toml"
    path.write_text(SYSTEM.format(
        schema=os.path.join(EXAMPLES, "calc.capnp"), module=os.path.join(EXAMPLES, "calc.wat"),
        socket=sock))
    run = wsuper("up", str(path))
    try:
        engine = int(run.wait_for("ready calc").split("pid=")[1].split()[0])
        (zygote, _cmd), = [c for c in _children(run.proc.pid) if "compartments.zygote" in c[1]]
        children = [pid for pid, _ in _children(zygote)]
        assert engine in children
        mask = 0
        for sig in (signal.SIGTERM, signal.SIGHUP, zygote_module.STOP):
            mask |= 1 << (sig - 1)
        for pid in children:
            # a child forked a moment ago has the zygote's dispositions until its first
            # steps give it the defaults (a spare forked as calc came ready): what it
            # has once it runs, or its end, is what counts
            deadline = time.monotonic() + 10
            while True:
                try:
                    with open(f"/proc/{pid}/status") as f:
                        fields = dict(line.split(":\t", 1) for line in f.read().splitlines()
                                      if ":\t" in line)
                except FileNotFoundError:
                    break
                held = [(field, fields[field]) for field in ("SigIgn", "SigCgt")
                        if int(fields[field], 16) & mask]
                if not held:
                    break
                assert time.monotonic() < deadline, (pid, pid == engine, held)
                time.sleep(0.05)
    finally:
        run.stop()


def test_a_dead_zygotes_engines_are_not_said_to_restart(tmp_path, wsuper):
    """The zygote killed, its engines die with it and their ends were decided before
    the zygote's: 'restarting calc in 0.1 s (engine killed by SIGKILL; restart 1 of
    at most 3 ...)' was said, then 'the zygote ... is gone ...: no compartment can
    start again; stopping' (a restart scheduled, and counted, that never came).
    An engine's end waits for the zygote's, which stops the system first."""
    sock = tmp_path / "s.sock"
    text = SYSTEM.format(schema=os.path.join(EXAMPLES, "calc.capnp"),
                         module=os.path.join(EXAMPLES, "calc.wat"), socket=sock)
    for i in range(2, 9):           # (each engine's end raced the zygote's: several)
        text += (f'\n[compartments.calc{i}]\nmodule = "{os.path.join(EXAMPLES, "calc.wat")}"'
                 f'\nexports = "Calc"\n')
    (tmp_path / "system.toml").write_text(text)
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("all compartments ready")
    engines = [int(l.split("pid=")[1].split()[0]) for l in run.lines if " ready calc" in l]
    (zygote, _cmd), = [c for c in _children(run.proc.pid) if "compartments.zygote" in c[1]]
    os.kill(zygote, signal.SIGKILL)
    assert run.finish(timeout=30) == 1
    assert any("no compartment can start again; stopping" in l for l in run.lines), run.lines
    assert not any("restarting calc" in l for l in run.lines), run.lines
    assert len(engines) == 8 and not any(_running(e) for e in engines)


_BACKGROUND_JOB = r"""
import os, signal, sys
os.setsid()
tty = os.open(sys.argv[1], os.O_RDWR)   # its controlling terminal: this group is the foreground
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)                     # `wsuper up ... &`: a background job
    os.dup2(tty, 1)
    os.dup2(tty, 2)
    os.execv(sys.executable, [sys.executable, "-m", "supervisor.cli", "up", sys.argv[2]])
signal.signal(signal.SIGALRM, lambda *a: (os.kill(pid, signal.SIGKILL), print("hung")))
signal.alarm(50)
_, status = os.waitpid(pid, os.WUNTRACED)
if os.WIFSTOPPED(status):
    print("stopped", signal.Signals(os.WSTOPSIG(status)).name, flush=True)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
else:
    print("exit", os.waitstatus_to_exitcode(status), flush=True)
"""


def test_up_in_the_background_of_a_terminal_that_stops_its_writers_runs_on():
    """A review of the operator's terminal: `wsuper up S &` in a shell whose terminal
    has `stty tostop` (background jobs that write to it are stopped): the first
    line the supervisor (or a plugin, whose log lines it shows) wrote there stopped
    the whole process with SIGTTOU, every compartment's calls, the external
    clients, `wsuper stop` with it (`Stopped (tty output)` in `jobs`).  The
    terminal is the operator's to read, never a reason for the system to stop:
    SIGTTOU is ignored, so the writes go through."""
    import pty
    import subprocess
    import sys
    import termios
    from tests.conftest import ROOT
    master, slave = pty.openpty()
    try:
        attrs = termios.tcgetattr(slave)
        attrs[3] |= termios.TOSTOP
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        name = os.ttyname(slave)
        os.close(slave)
        slave = None
        proc = subprocess.Popen([sys.executable, "-c", _BACKGROUND_JOB, name,
                                 os.path.join(EXAMPLES, "hello.toml")], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        seen = b""
        while proc.poll() is None:               # what it writes is read, as a terminal's
            if readable(master, 0.1):
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        out = proc.communicate(timeout=60)[0]
        while readable(master, 0.2):     # what is left in the terminal
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)
    assert out.strip() == "exit 0", out + seen.decode(errors="replace")
    assert b"[app] 2 + 3 = 5" in seen, seen


@pytest.mark.parametrize("command", ["up", "check"])
def test_a_command_ends_without_the_interpreters_teardown_yet_loses_nothing(tmp_path, command):
    """`wsuper` ends its process without the interpreter's teardown (cli.run: 12-95
    ms of CPU a command, freeing what the process held).  What that teardown did
    that shows must still be done: output written to a file (block-buffered)
    is all there, in order, the exit code is the command's, and the atexit
    handlers ran (the schemas' private copies, beneath $TMPDIR, are removed)."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    import shutil
    system = tmp_path / "system"          # a copy: one system file, one `up` at a time
    system.mkdir()
    for name in ("hello.toml", "calc.capnp", "calc.wat", "hello.wat"):
        shutil.copy(os.path.join(EXAMPLES, name), system / name)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**os.environ, "TMPDIR": str(temporary)}
    out_path = tmp_path / "out.txt"
    with open(out_path, "wb") as out:
        r = subprocess.run([sys.executable, "-m", "supervisor.cli", command,
                            str(system / "hello.toml")], cwd=ROOT, env=env,
                           stdout=out, stderr=subprocess.PIPE, timeout=60)
    text = out_path.read_text()
    assert r.returncode == 0, (text, r.stderr)
    if command == "up":
        assert text == "[app] 2 + 3 = 5\n", text
        assert r.stderr.decode().rstrip().endswith("wsuper: finished app exit=0"), r.stderr
    else:
        assert text.startswith("calc: ") and "log -> host Log" in text, text
    assert not [p for p in temporary.iterdir() if p.name.startswith("wsuper-schemas")], \
        list(temporary.iterdir())
