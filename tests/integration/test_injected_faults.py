"""The class of issue 10 ("one call from any plugin or local client can end the
supervisor and every compartment"), attacked from the inside: a real system (real
engines, real external clients, the admin socket), in a supervisor whose per-peer
code is made to raise an unexpected exception at one point at a time
(tests/faults.py).  Each time the supervisor lives on, the other compartment still
answers, the faulted peer is cut off (or its request answered with an error) and
comes back, and a line names what happened."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import EXAMPLES, ROOT, Running, run_wsuper
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


def _add(sock, a, b, name):
    from tests.integration.test_fail_closed import _add as add
    return add(sock, a, b, name)


class Faulty(Running):
    """`wsuper up` under tests/faults.py, armed through its stdin."""

    def __init__(self, toml):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults", "up", toml], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines, self._unread = [], b""

    def arm(self, point, peer=""):
        start = len(self.lines)
        self.proc.stdin.write(f"arm {point} {peer}\n".encode())
        self.proc.stdin.flush()
        self.wait_for(f"armed: {point}", start=start)
        return len(self.lines)


def _start(tmp):
    run = Faulty(str(tmp / "system.toml"))
    for name in ("victim", "other", *TICKERS):
        run.wait_for(f"ready {name}")
    assert _add(str(tmp / "ext.sock"), 1, 2, "victim") == 3
    return run


@pytest.fixture(scope="module")
def systems(tmp_path_factory):
    """One system for all the points, started again only if a point ended it (a
    failure then fails that point alone)."""
    tmp = tmp_path_factory.mktemp("faults")
    (tmp / "ticker.wat").write_text(TICKER)
    tickers = "".join(TICKER_TOML.format(name=n, tmp=tmp) for n in TICKERS)
    (tmp / "system.toml").write_text(SYSTEM.format(examples=EXAMPLES, tmp=tmp,
                                                   tickers=tickers))
    held = []
    try:
        yield tmp, held
    finally:
        for run in held:
            run.stop()


@pytest.fixture
def system(systems):
    tmp, held = systems
    if not held or held[-1].proc.poll() is not None:
        held.append(_start(tmp))
    return held[-1], str(tmp / "ext.sock"), str(tmp / "system.toml")


def _pid(run, name, start=0):
    line = [x for x in run.lines[start:] if f"ready {name} pid=" in x][-1]
    return int(line.split("pid=")[1].split()[0])


def _call_fails(sock, name):
    try:
        _add(sock, 1, 1, name)
    except Exception as e:  # noqa: BLE001 - whatever the client library raises
        return str(e)
    return None


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
}


@pytest.mark.parametrize("point", list(CASES))
def test_a_fault_inside_one_peers_handling_cuts_off_that_peer_only(system, point):
    run, sock, toml = system
    peer, trigger, said = CASES[point]
    ticker = TICKERS[list(CASES).index(point) % len(TICKERS)]
    if peer == "ticker":
        peer = ticker
    start = run.arm(point, peer)
    before = _pid(run, ticker)
    if trigger == "call":
        assert _call_fails(sock, "victim") is not None
    elif trigger == "kill":
        os.kill(before, signal.SIGKILL)
    elif trigger == "status":
        assert run_wsuper("status", toml).returncode != 0
    elif trigger in ("revoke", "probe"):
        r = run_wsuper("revoke", toml, f"{ticker}.clock") if trigger == "revoke" else \
            run_wsuper("probe", toml, ticker, "list")
        assert r.returncode != 0 and "internal error" in r.output, r.output
    run.wait_for(f"fault injected: {point}", start=start, timeout=10)
    line = run.wait_for(said, start=start, timeout=10)
    assert "FaultInjected" in line, line
    # the supervisor lives, every compartment answers, and the one cut off is back
    assert run.proc.poll() is None, "\n".join(run.lines)
    assert _add(sock, 20, 22, "other") == 42
    assert _add(sock, 2, 3, "victim") == 5
    if peer == ticker or trigger == "kill":
        deadline = time.monotonic() + 10
        while _pid(run, ticker) == before and time.monotonic() < deadline:
            run.wait_for(f"ready {ticker}", start=len(run.lines), timeout=10)
    run.wait_for(f"[{ticker}] tick", start=len(run.lines), timeout=10)
    assert run.proc.poll() is None, "\n".join(run.lines)


def _add_error(sock, a, name="victim"):
    try:
        return _add(sock, a, 0, name)
    except Exception as e:  # noqa: BLE001 - whatever the client library raises
        return e


def test_a_fault_in_an_engines_loop_ends_that_engine_with_a_line_saying_so(system):
    """An exception the engine's loop does not expect (here: as it sends an answer)
    ends that engine, saying why in one line the supervisor passes on; it is
    restarted, and nothing waits for it."""
    run, sock, _toml = system
    start, before = len(run.lines), _pid(run, "victim")
    assert isinstance(_add_error(sock, 1000000007), Exception)
    line = run.wait_for("restarting victim", start=start, timeout=10)
    assert "engine exited with code 70: error: internal error in the engine " \
           "(FaultInjected: injected at engine-loop)" in line, line
    run.wait_for("ready victim", start=start, timeout=10)
    assert _pid(run, "victim") != before
    assert _add(sock, 2, 3, "victim") == 5 and _add(sock, 20, 22, "other") == 42
    assert run.proc.poll() is None


def test_a_fault_in_handling_one_call_in_an_engine_fails_that_call_only(system):
    run, sock, _toml = system
    start, before = len(run.lines), _pid(run, "victim")
    e = _add_error(sock, 1000000009)
    assert "the engine could not handle this call (FaultInjected" in str(e), e
    assert _add(sock, 2, 3, "victim") == 5 and _pid(run, "victim") == before
    assert not [x for x in run.lines[start:] if "victim" in x and "fault" not in x]
