"""Small WAT programs for the integration tests, built around shared helpers."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SPIN_ID = "0xc0ffee00000000f1"
CALC_ID = "0xc0ffee0000000001"

_PRELUDE = """
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "reply_read" (func $reply_read (param i32 i32) (result i32)))
  (import "wsuper" "release" (func $release (param i32) (result i32)))
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (global $log (mut i32) (i32.const 0))

  ;; Log.write(text at $ptr, $n bytes); message built at 8192; status stored at 7896
  (func $log (param $ptr i32) (param $n i32)
    (local $words i32)
    (local.set $words (i32.add (i32.const 2) (i32.shr_u (i32.add (local.get $n) (i32.const 8)) (i32.const 3))))
    (memory.fill (i32.const 8192) (i32.const 0) (i32.shl (i32.add (local.get $words) (i32.const 1)) (i32.const 3)))
    (i32.store (i32.const 8196) (local.get $words))
    (i64.store (i32.const 8200) (i64.const 0x0001000000000000))
    (i64.store (i32.const 8208)
      (i64.or (i64.const 0x0000000200000001)
              (i64.shl (i64.extend_i32_u (i32.add (local.get $n) (i32.const 1))) (i64.const 35))))
    (memory.copy (i32.const 8216) (local.get $ptr) (local.get $n))
    (i32.store (i32.const 7896)
      (call $call (global.get $log) (i64.const 0xa05a5e2c6b2f6d01) (i32.const 0)
            (i32.const 8192) (i32.shl (i32.add (local.get $words) (i32.const 1)) (i32.const 3))
            (i32.const 0) (i32.const 0) (i32.const 7900))))

  ;; "<text> <v>": the text at $ptr/$n, a space, then $v in decimal
  (func $log_int (param $ptr i32) (param $n i32) (param $v i32)
    (local $len i32) (local $neg i32) (local $i i32) (local $d i32)
    (memory.copy (i32.const 6000) (local.get $ptr) (local.get $n))
    (i32.store8 (i32.add (i32.const 6000) (local.get $n)) (i32.const 32))
    (local.set $len (i32.add (local.get $n) (i32.const 1)))
    (if (i32.lt_s (local.get $v) (i32.const 0))
      (then (local.set $neg (i32.const 1)) (local.set $v (i32.sub (i32.const 0) (local.get $v)))
            (i32.store8 (i32.add (i32.const 6000) (local.get $len)) (i32.const 45))
            (local.set $len (i32.add (local.get $len) (i32.const 1)))))
    (loop $digits                          ;; reversed digits at 7000
      (i32.store8 (i32.add (i32.const 7000) (local.get $d))
                  (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $d (i32.add (local.get $d) (i32.const 1)))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digits (i32.ne (local.get $v) (i32.const 0))))
    (loop $copy
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (i32.const 6000) (local.get $len))
                  (i32.load8_u (i32.add (i32.const 7000) (i32.sub (local.get $d) (local.get $i)))))
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (br_if $copy (i32.lt_u (local.get $i) (local.get $d))))
    (call $log (i32.const 6000) (local.get $len)))

  ;; call $h.$method with empty params; returns the status; reply (if any) at 2048
  (func $call0 (param $h i32) (param $iface i64) (param $method i32) (result i32)
    (local $r i32)
    (local.set $r (call $call (local.get $h) (local.get $iface) (local.get $method)
                        (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000)))
    (if (i32.le_u (i32.load (i32.const 1000)) (i32.const 2048))
      (then (drop (call $reply_read (i32.const 2048) (i32.const 3000)))))
    (local.get $r))
"""


def program(body: str, strings: dict[str, int] | None = None) -> str:
    """A module whose `_start` is `body`.  `strings` maps text -> address; the
    log grant is looked up first (it must be granted as "log")."""
    strings = {"log": 100, **(strings or {})}
    data = "\n".join(f'  (data (i32.const {addr}) "{text}")' for text, addr in strings.items())
    return f"""(module
{_PRELUDE}
{data}
  (func (export "_start") (local $h i32) (local $i i32) (local $r i32)
    (global.set $log (call $lookup (i32.const 100) (i32.const 3)))
{body})
)
"""


def held_on_spin(tmp_path, grants: str = "", system: str = "", app: str = "",
                 spin_grant: str = '{ compartment = "spin" }') -> str:
    """A system whose `app` logs "calling" and then waits in a call to `spin` that
    runs for as long as the test needs (it ends with the system, or a revocation
    of app.spin when `spin_grant` makes it revocable), with `grants` more (TOML
    lines), `system` more [system] keys and `app` more keys of app's table.
    Returns the system file's path."""
    (tmp_path / "app.wat").write_text(program(f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 4)))
    (call $log (i32.const 210) (i32.const 7))
    (local.set $r (call $call0 (local.get $h) (i64.const {SPIN_ID}) (i32.const 0)))
    (call $log (i32.const 2048) (i32.load (i32.const 1000)))
    """, {"spin": 200, "calling": 210}))
    path = tmp_path / "system.toml"
    path.write_text(f"""
[system]
schemas = ["{HERE}/spin.capnp"]
socket = "{tmp_path}/s.sock"
{system}
[compartments.spin]
module = "{HERE}/spin.wat"
exports = "Spin"
[compartments.spin.limits]
fuel_per_call = 4_000_000_000_000_000
[compartments.app]
module = "app.wat"
{app}
[compartments.app.grants]
log = {{ host = "log" }}
spin = {spin_grant}
{grants}
""")
    return str(path)
