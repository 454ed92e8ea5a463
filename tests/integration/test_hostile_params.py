"""A compartment that calls another with params it crafted (pointers past their
segment, into the header the callee's message has after them, a pointer loop, a
list of half a billion Voids, a far pointer to a segment that is not there, a
capability the call does not pass), thousands of times, through the
supervisor's native lane (which checks only what its route needs of a plain
call and forwards its params as they are): the callee refuses each such call
alone, answers the others, and serves an honest client's calls right all the
while, never cut off, never restarted."""
import struct

import capnp_schemas
from tests.conftest import EXAMPLES, external_client
from tests.integration.guests import CALC_ID, program

ROUNDS = 24000


def _sp(offset: int, data: int, ptrs: int) -> int:
    return ((offset & 0x3FFFFFFF) << 2) | (data << 32) | (ptrs << 48)


#: Calc.add params (a = k + 1, b = 100) whose first pointer field is hostile; the
#: root struct has one data word and two pointer words, none of them add's
HOSTILE = [
    _sp(1000, 1, 0),                     # a struct far past the segment: refused
    _sp(1, 8, 0),                        # eight words past it: the Call's header
    _sp(-2, 1, 2),                       # the root struct again: a loop, refused
    1 | ((2**29 - 1) << 35),             # 2^29 - 1 Voids: past the bound, refused
    2 | (5 << 32),                       # far, to segment 5 of 1: refused
    3 | (7 << 32),                       # capability 7 of none: copied as it is
]
REFUSED = {0, 2, 3, 4}


def _params(k: int, word: int) -> str:
    data = struct.pack("<II", 0, 4) + struct.pack("<QQQQ", _sp(0, 1, 2), (100 << 32) | (k + 1),
                                                  word, 0)
    return "".join(f"\\{b:02x}" for b in data)


def test_a_callers_crafted_params_fail_its_own_calls_only(tmp_path, wsuper):
    strings = {"calc": 200, "refused": 300, "answered": 400}
    strings.update({_params(k, w): 20000 + 64 * k for k, w in enumerate(HOSTILE)})
    # ROUNDS calls to add, round-robin over HOSTILE; counts at 7800 (refused) and 7804
    (tmp_path / "evil.wat").write_text(program(f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 4)))
    (loop $round
      (local.set $r (call $call (local.get $h) (i64.const {CALC_ID}) (i32.const 0)
                          (i32.add (i32.const 20000)
                                   (i32.mul (i32.rem_u (local.get $i) (i32.const 6)) (i32.const 64)))
                          (i32.const 40) (i32.const 0) (i32.const 0) (i32.const 1000)))
      (if (local.get $r)
        (then (i32.store (i32.const 7800) (i32.add (i32.load (i32.const 7800)) (i32.const 1))))
        (else (i32.store (i32.const 7804) (i32.add (i32.load (i32.const 7804)) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $round (i32.lt_u (local.get $i) (i32.const {ROUNDS}))))
    (call $log_int (i32.const 300) (i32.const 7) (i32.load (i32.const 7800)))
    (call $log_int (i32.const 400) (i32.const 8) (i32.load (i32.const 7804)))
    """, strings))
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{sock}"
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
external = true
[compartments.evil]
module = "evil.wat"
[compartments.evil.grants]
log = {{ host = "log" }}
calc = {{ compartment = "calc" }}
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready calc")
    schema = capnp_schemas.load(f"{EXAMPLES}/calc.capnp")

    async def body(gateway):
        calc = (await gateway.get("calc")).cap.as_interface(schema.Calc)
        return [((a, b), (await calc.add(a, b)).sum) for a in range(-3, 27) for b in (0, 7, -40)]

    honest = external_client(str(sock), body, timeout=60)
    assert all(s == a + b for (a, b), s in honest), honest
    assert run.wait_for("[evil] refused", timeout=120).strip() == \
        f"[evil] refused {ROUNDS * len(REFUSED) // len(HOSTILE)}"
    assert run.wait_for("[evil] answered").strip() == \
        f"[evil] answered {ROUNDS - ROUNDS * len(REFUSED) // len(HOSTILE)}"
    honest = external_client(str(sock), body, timeout=60)          # and after it
    assert all(s == a + b for (a, b), s in honest), honest
    assert not [line for line in run.lines if "exited" in line or "protocol error" in line
                or "restart" in line], run.lines
