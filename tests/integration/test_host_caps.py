"""Clock and Random are capabilities: a guest reads them only through its grants."""
import pytest

from capnp_schemas.hosted import BY_KIND

CLOCK_ID, RANDOM_ID = BY_KIND["clock"].id, BY_KIND["random"].id
from tests.conftest import run_wsuper
from tests.integration.guests import program


@pytest.mark.parametrize("worker", ["1", "0"], ids=["host-worker", "trio-task"])
def test_a_guest_reads_the_clock_and_random_bytes_through_its_grants(tmp_path, monkeypatch,
                                                                     worker):
    # the same through the lane's host worker and through the trio task it replaced
    monkeypatch.setenv("WSUPER_HOST_WORKER", worker)
    (tmp_path / "app.wat").write_text(program(f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 5)))
    (drop (call $call0 (local.get $h) (i64.const {CLOCK_ID}) (i32.const 1)))
    (i64.store (i32.const 4000) (i64.load (i32.const 2064)))
    (drop (call $call0 (local.get $h) (i64.const {CLOCK_ID}) (i32.const 1)))
    (call $log_int (i32.const 300) (i32.const 5)
          (i64.ge_s (i64.load (i32.const 2064)) (i64.load (i32.const 4000))))
    (drop (call $call0 (local.get $h) (i64.const {CLOCK_ID}) (i32.const 0)))
    (call $log_int (i32.const 310) (i32.const 10)
          (i64.gt_s (i64.load (i32.const 2064)) (i64.const 1600000000000000000)))
    (local.set $h (call $lookup (i32.const 210) (i32.const 6)))
    (i32.store (i32.const 1024) (i32.const 0))
    (i32.store (i32.const 1028) (i32.const 2))
    (i64.store (i32.const 1032) (i64.const 0x0000000100000000))
    (i64.store (i32.const 1040) (i64.const 16))
    (local.set $r (call $call (local.get $h) (i64.const {RANDOM_ID}) (i32.const 0)
                        (i32.const 1024) (i32.const 24) (i32.const 0) (i32.const 0) (i32.const 1000)))
    (drop (call $reply_read (i32.const 2048) (i32.const 3000)))
    (call $log_int (i32.const 320) (i32.const 5)
          (i32.wrap_i64 (i64.shr_u (i64.load (i32.const 2064)) (i64.const 35))))
    (call $log_int (i32.const 330) (i32.const 7) (call $lookup (i32.const 340) (i32.const 3)))
    """, {"clock": 200, "random": 210, "later": 300, "after-2020": 310, "bytes": 320,
          "no-env:": 330, "env": 340}))
    (tmp_path / "system.toml").write_text("""
[compartments.app]
module = "app.wat"
[compartments.app.grants]
log = { host = "log" }
clock = { host = "clock" }
random = { host = "random" }
""")
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    logs = [l[6:] for l in r.stdout.splitlines() if l.startswith("[app] ")]
    assert logs == ["later 1", "after-2020 1", "bytes 16", "no-env: -7"]


def test_a_grant_with_max_uses_is_used_up(tmp_path):
    (tmp_path / "app.wat").write_text(program(f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 5)))
    (call $log_int (i32.const 300) (i32.const 5) (call $call0 (local.get $h) (i64.const {CLOCK_ID}) (i32.const 1)))
    (call $log_int (i32.const 300) (i32.const 5) (call $call0 (local.get $h) (i64.const {CLOCK_ID}) (i32.const 1)))
    (call $log_int (i32.const 300) (i32.const 5) (call $call0 (local.get $h) (i64.const {CLOCK_ID}) (i32.const 1)))
    (call $log (i32.const 2048) (i32.load (i32.const 1000)))
    """, {"clock": 200, "tick:": 300}))
    (tmp_path / "system.toml").write_text("""
[compartments.app]
module = "app.wat"
[compartments.app.grants]
log = { host = "log" }
clock = { host = "clock", max_uses = 2 }
""")
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    logs = [l[6:] for l in r.stdout.splitlines() if l.startswith("[app] ")]
    assert logs == ["tick: 0", "tick: 0", "tick: -10", "denied: app.clock is used up (max_uses)"]
    assert "wsuper: denied: app -> app.clock is used up (max_uses)" in r.stderr
