"""A real system run under tests/faults.py, and what is checked at each fault point
(tests/integration/test_injected_faults.py, fuzz/faults.py)."""
import os
import signal
import subprocess
import sys
import time

from tests.conftest import EXAMPLES, ROOT, Running, external_client, run_wsuper
from tests.integration.guests import _PRELUDE

# the ticker: a program that logs "tick" and sleeps 0.05 s, for ever (host calls,
# through the router, all the time); it has a revocable grant it never uses
TICKER = """(module
{prelude}
  (data (i32.const 100) "log")
  (data (i32.const 200) "tick")
  (func (export "_start")
    (global.set $log (call $lookup (i32.const 100) (i32.const 3)))
    (loop $l
      (call $log (i32.const 200) (i32.const 4))
      (i64.store (i32.const 1024) (i64.const 0))
      (i32.store (i32.const 1040) (i32.const 1))
      (i64.store (i32.const 1048) (i64.const 50000000))
      (drop (call $poll (i32.const 1024) (i32.const 2048) (i32.const 1) (i32.const 3000)))
      (br $l))))
""".format(prelude=_PRELUDE.replace(
    "(memory", '(import "wasi_snapshot_preview1" "poll_oneoff" '
               '(func $poll (param i32 i32 i32 i32) (result i32)))\n  (memory', 1))

TICKERS = ("t0", "t1", "t2")     # the faults shared among them: short restart delays
TICKER_TOML = """
[compartments.{name}]
module = "{tmp}/ticker.wat"
restart = "permanent"
restart_delay = 0
max_restarts = 1000

[compartments.{name}.grants]
log = {{ host = "log" }}
clock = {{ host = "clock", revocable = true }}

[compartments.{name}.limits]
log_rate = 1000
"""

SYSTEM = """
[system]
schemas = ["{examples}/calc.capnp"]
socket = "{tmp}/ext.sock"

[compartments.victim]
module = "{examples}/calc.wat"
exports = "Calc"
external = true
restart = "permanent"
restart_delay = 0
max_restarts = 1000

[compartments.other]
module = "{examples}/calc.wat"
exports = "Calc"
external = true
{tickers}"""


def add(sock, a, b, name):
    """calc's add(a, b) through a stock pycapnp client."""
    import capnp_schemas
    calc_schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))

    async def body(gateway):
        calc = (await gateway.get(name)).cap.as_interface(calc_schema.Calc)
        return (await calc.add(a, b)).sum

    return external_client(sock, body)


def add_error(sock, a, name="victim"):
    """add(a, 0)'s sum, or the exception it failed with."""
    try:
        return add(sock, a, 0, name)
    except Exception as e:  # noqa: BLE001 - whatever the client library raises
        return e


class Faulty(Running):
    """`wsuper up` under tests/faults.py, armed through its stdin."""

    def __init__(self, toml):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults", "up", toml], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines, self._unread = [], b""

    def arm(self, point, peer="", kind="runtime"):
        start = len(self.lines)
        self.proc.stdin.write(f"arm {point} {peer or '-'} {kind}\n".encode())
        self.proc.stdin.flush()
        self.wait_for(f"armed: {point}", start=start)
        return len(self.lines)


def write_system(tmp) -> str:
    """The system's files in directory `tmp` (a pathlib.Path); its system.toml."""
    (tmp / "ticker.wat").write_text(TICKER)
    tickers = "".join(TICKER_TOML.format(name=n, tmp=tmp) for n in TICKERS)
    (tmp / "system.toml").write_text(SYSTEM.format(examples=EXAMPLES, tmp=tmp,
                                                   tickers=tickers))
    return str(tmp / "system.toml")


def start(tmp) -> Faulty:
    """The system of `tmp` (write_system), once every compartment is ready."""
    run = Faulty(str(tmp / "system.toml"))
    for name in ("victim", "other", *TICKERS):
        run.wait_for(f"ready {name}")
    assert add(str(tmp / "ext.sock"), 1, 2, "victim") == 3
    return run


def pid(run, name, start=0):
    line = [x for x in run.lines[start:] if f"ready {name} pid=" in x][-1]
    return int(line.split("pid=")[1].split()[0])


#: point -> (peer it is armed for, what sets it off, what the line about it says);
#: "ticker" is one of TICKERS, each in turn
CASES = {
    "engine-input": ("ticker", None, "connection cut off: internal error while handling"),
    "client-input": ("client", "call", "external: connection cut off: internal error"),
    "host-call": ("ticker", None, "connection cut off: internal error while handling"),
    "host-done": ("ticker", None, "connection cut off: internal error while handling"),
    "delivery": ("ticker", None, "connection cut off: internal error while handling"),
    "new-client": ("", "call", "internal error in serving an external connection"),
    "engine-lost": ("ticker", "kill", "internal error in reading the engine of"),
    "engine-end": ("ticker", "kill", "internal error in reading the engine of"),
    "engine-ready": ("ticker", "kill", "connection cut off: internal error while handling"),
    "respawn": ("ticker", "kill", "internal error in starting"),
    "stderr": ("", "kill", "internal error in reading the stderr of"),
    "exit-watch": ("", "kill", "internal error in watching the process of"),
    "admin-answer": ("", "status", "internal error in serving an admin request"),
    "revoke": ("", "revoke", "internal error answering an admin request"),
    "probe": ("", "probe", "internal error answering an admin request"),
    "tick": ("", None, "internal error in expiring calls"),
    # the connection waits in the listener's backlog, taken at the loop's next turn
    "accept": ("", "connect", "internal error in accepting on the external socket"),
    # its engine made, not read yet: cut off, its start failed by the router
    "spawn-late": ("ticker", "kill", "internal error in starting"),
}


def check(run, sock, toml, point, kind="runtime", ticker="t0"):
    """Arm `point` with an exception of `kind`, set it off, and check: the fault
    is said (naming the point) in the line CASES has for it, the supervisor lives,
    every compartment answers, and a compartment cut off (or killed to set it off)
    is back and running its program.  `ticker`: the one of TICKERS it concerns."""
    peer, trigger, said = CASES[point]
    if peer == "ticker":
        peer = ticker
    start = run.arm(point, peer, kind)
    before = pid(run, ticker)
    if trigger == "call":
        assert isinstance(add_error(sock, 1), Exception)
    elif trigger == "connect":
        assert add(sock, 4, 5, "victim") == 9
    elif trigger == "kill":
        os.kill(before, signal.SIGKILL)
    elif trigger == "status":
        assert run_wsuper("status", toml).returncode != 0
    elif trigger in ("revoke", "probe"):
        r = run_wsuper("revoke", toml, f"{ticker}.clock") if trigger == "revoke" else \
            run_wsuper("probe", toml, ticker, "list")
        assert r.returncode != 0 and "internal error" in r.output, r.output
    run.wait_for(f"fault injected: {point}", start=start, timeout=25)
    line = run.wait_for(said, start=start, timeout=25)
    assert f"injected at {point}" in line, line
    # the supervisor lives, every compartment answers, and the one cut off is back
    assert run.proc.poll() is None, "\n".join(run.lines)
    assert add(sock, 20, 22, "other") == 42
    assert add(sock, 2, 3, "victim") == 5
    if peer == ticker or trigger == "kill":
        deadline = time.monotonic() + 25
        while pid(run, ticker) == before and time.monotonic() < deadline:
            run.wait_for(f"ready {ticker}", start=len(run.lines), timeout=25)
    run.wait_for(f"[{ticker}] tick", start=len(run.lines), timeout=25)
    assert run.proc.poll() is None, "\n".join(run.lines)
