"""The fast lane with memory protection (issues 14 and 16): calls that the lane
forwards natively still reach guest memory only through the engine's checked
copies, so a protected page given to the wsuper ABI on either side of a native
call is refused with the region named (a trap or a failed call), never a fault
inside the engine or the supervisor, and everyone else carries on."""
import os

import pytest

from supervisor import fastlane
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(fastlane.Lane is None, reason=str(fastlane.unavailable))

CALC = os.path.join(ROOT, "examples", "calc")
NA = "in the no-access region [0x0, 0x1000)"
PARAMS, OUT, REPLY = 20100, 20200, 20300
GOOD = 3        # calls before the bad one: the first goes through Python, the rest natively


def _app(bad: str) -> str:
    """Calls calc's Calc.add GOOD times, then does one thing with protected memory."""
    def call(p=PARAMS, out=OUT, h="$h"):
        return (f"(call $call (local.get {h}) (i64.const 0xc0ffee0000000001) (i32.const 0) "
                f"(i32.const {p}) (i32.const 24) (i32.const 0) (i32.const 0) (i32.const {out}))")
    last = {
        "params": f"(drop {call(p=16)})",
        "out": f"(drop {call(out=8)})",
        "reply": f"(drop {call()}) (drop (call $reply_read (i32.const 64) (i32.const {REPLY})))",
        "ok": "",
        # the callee is protected and reads its params into its null page: the call
        # fails (it does not trap here); then the same call to an unprotected callee
        "callee": f"(if (i32.ge_s {call(h='$h2')} (i32.const 0)) (then unreachable))"
                  f"(if (i32.lt_s {call()} (i32.const 0)) (then unreachable))",
    }[bad]
    first = f"(if (i32.lt_s {call()} (i32.const 0)) (then unreachable))" \
        f"(drop (call $reply_read (i32.const {REPLY}) (i32.const {REPLY + 64})))"
    return f"""(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "reply_read" (func $reply_read (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 20000) "calc")
  (data (i32.const 20010) "pcalc")
  (func (export "_start") (local $h i32) (local $h2 i32) (local $i i32)
    (local.set $h (call $lookup (i32.const 20000) (i32.const 4)))
    (local.set $h2 (call $lookup (i32.const 20010) (i32.const 5)))
    (i64.store (i32.const {PARAMS}) (i64.const 0x0000000200000000))
    (i64.store (i32.const {PARAMS + 8}) (i64.const 0x0000000100000000))
    (i64.store (i32.const {PARAMS + 16}) (i64.const 0x0000000300000002))
    (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (i32.const {GOOD})))
      {first}
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
    {last}))
"""


def test_protected_memory_on_either_side_of_a_native_call_is_refused(tmp_path):
    system = [f'[system]\nschemas = ["{CALC}/calc.capnp"]\n',
              f'[compartments.calc]\nmodule = "{CALC}/calc.wat"\nexports = "Calc"\n',
              # calc.wat reads its params at 0: with a null page that is refused
              f'[compartments.pcalc]\nmodule = "{CALC}/calc.wat"\nexports = "Calc"\n'
              f'protect = {{ no_access = "4 KiB" }}\n']
    for bad in ("params", "out", "reply", "ok", "callee"):
        (tmp_path / f"{bad}.wat").write_text(_app(bad))
        system.append(f'[compartments.app_{bad}]\nmodule = "{tmp_path}/{bad}.wat"\n'
                      f'restart = "never"\nprotect = {{ no_access = "4 KiB" }}\n'
                      f'[compartments.app_{bad}.grants]\ncalc = {{ compartment = "calc" }}\n'
                      + ('pcalc = { compartment = "pcalc" }\n' if bad == "callee" else ""))
    (tmp_path / "system.toml").write_text("".join(system))
    r = _run_with_stats(tmp_path / "system.toml")
    out = r.stdout
    why = "a host call was given protected memory"
    for bad, span in (("params", "[0x10, 0x28)"), ("out", "[0x8, 0x10)")):
        assert f"app_{bad} failed: trapped: {why}: {span} starts {NA}" \
            in out, out
    assert f"app_reply failed: trapped: {why}: [0x40, 0x58) starts {NA}" \
        in out, out
    for ok in ("ok", "callee"):
        assert f"wsuper: finished app_{ok} exit=0" in out, out
    stats = dict(kv.split("=") for kv in out.split("fast lane: ", 1)[1].split("\n")[0].split())
    assert int(stats["calls"]) >= 4 * (GOOD - 1), out    # the good calls went natively
    assert "Traceback" not in out and "internal error" not in out


def _run_with_stats(path):
    import subprocess
    import sys
    from supervisor.output import strip_time
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", "up", str(path)], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
                       env=dict(os.environ, WSUPER_STATS="1"))
    r.stdout = "".join(strip_time(line) + "\n" for line in r.stdout.splitlines())
    return r
