"""Limits: a compartment over a limit gets the error; its peers and the supervisor carry on."""
import asyncio
import json
import os
import re
import time

import capnp
import pytest

import capnp_schemas
from compartments.zygote import readable
from tests.conftest import EXAMPLES, external_client, run_wsuper
from tests.integration.guests import CALC_ID, HERE, SPIN_ID, program


def system(tmp_path, app_body, strings, app_limits="", extra="",
           spin_limits="fuel_per_call = 200_000", spin_module="spin.wat", spin_instance="shared"):
    (tmp_path / "app.wat").write_text(program(app_body, strings))
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{HERE}/spin.capnp", "{EXAMPLES}/calc.capnp"]

[compartments.spin]
module = "{HERE}/{spin_module}"
exports = "Spin"
instance = "{spin_instance}"
[compartments.spin.limits]
{spin_limits}

[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"

[compartments.app]
module = "app.wat"
[compartments.app.grants]
log = {{ host = "log" }}
spin = {{ compartment = "spin" }}
calc = {{ compartment = "calc" }}
[compartments.app.limits]
{app_limits}
{extra}
""")
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    return r, [l[len("[app] "):] for l in r.stdout.splitlines() if l.startswith("[app] ")]


def test_a_looping_callee_runs_out_of_cpu_and_keeps_serving(tmp_path):
    r, logs = system(tmp_path, f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 4)))
    (local.set $r (call $call0 (local.get $h) (i64.const {SPIN_ID}) (i32.const 0)))
    (call $log_int (i32.const 300) (i32.const 6) (local.get $r))
    (call $log (i32.const 2048) (i32.load (i32.const 1000)))
    (call $log_int (i32.const 310) (i32.const 4)
          (call $call0 (local.get $h) (i64.const {SPIN_ID}) (i32.const 1)))
    (call $log_int (i32.const 320) (i32.const 5) (i32.load (i32.const 2064)))
    """, {"spin": 200, "looped": 300, "ping": 310, "value": 320})
    assert r.returncode == 0, r.stdout + r.stderr
    assert logs == ["looped -4",
                    "compartment spin used up its CPU budget for this call "
                    "(fuel_per_call = 200000)",
                    "ping 0", "value 7"]


def test_memory_and_table_growth_stop_at_the_limit(tmp_path):
    r, logs = system(tmp_path, """
    (block $done (loop $l
      (br_if $done (i32.lt_s (memory.grow (i32.const 1)) (i32.const 0)))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
    (call $log_int (i32.const 300) (i32.const 5) (local.get $i))
    (local.set $i (i32.const 0))
    (block $done (loop $l
      (br_if $done (i32.lt_s (table.grow $t (ref.null func) (i32.const 10)) (i32.const 0)))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
    (call $log_int (i32.const 310) (i32.const 6) (local.get $i))
    """, {"pages": 300, "tables": 310}, app_limits='memory = "1MiB"\ntable_elements = 101')
    assert r.returncode == 0, r.stdout + r.stderr
    assert logs == ["pages 15", "tables 10"]   # 1 MiB = 16 pages; 1 + 10*10 elements


def test_hoarding_handles_is_refused_and_the_hoarder_can_still_call(tmp_path):
    r, logs = system(tmp_path, f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 4)))
    (block $done (loop $l
      (local.set $r (call $call0 (local.get $h) (i64.const {CALC_ID}) (i32.const 1)))
      (br_if $done (i32.lt_s (local.get $r) (i32.const 0)))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
    (call $log_int (i32.const 300) (i32.const 8) (local.get $i))
    (call $log_int (i32.const 310) (i32.const 4) (local.get $r))
    (call $log (i32.const 2048) (i32.load (i32.const 1000)))
    (call $log_int (i32.const 320) (i32.const 3)
          (call $call0 (local.get $h) (i64.const {CALC_ID}) (i32.const 0)))
    """, {"calc": 200, "hoarded:": 300, "then": 310, "add": 320}, app_limits="handles = 20")
    assert r.returncode == 0, r.stdout + r.stderr
    # 3 grants + 17 counters fill the 20 entries of app's c-list
    assert logs == ["hoarded: 17", "then -4",
                    "app would hold more than 20 capabilities (limit handles); it must release some",
                    "add 0"]


def test_an_external_call_flood_is_refused_past_in_flight_and_others_are_served(tmp_path, wsuper):
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{HERE}/spin.capnp"]
socket = "{sock}"
[compartments.spin]
module = "{HERE}/spin.wat"
exports = "Spin"
external = true
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready spin")
    schema = capnp_schemas.load(os.path.join(HERE, "spin.capnp"))

    async def main():
        async with capnp.kj_loop():
            stream = await capnp.AsyncIoStream.create_unix_connection(str(sock))
            client = capnp.TwoPartyClient(stream)
            gateway = client.bootstrap().cast_as(capnp_schemas.host.Gateway)
            spin = (await gateway.get("spin")).cap.as_interface(schema.Spin)
            results = await asyncio.gather(*[spin.slow() for _ in range(200)],
                                           return_exceptions=True)
            after = (await spin.ping()).value
            return results, after

    results, after = asyncio.run(asyncio.wait_for(main(), 60))
    refused = [r for r in results if isinstance(r, capnp.KjException)]
    served = [r for r in results if not isinstance(r, Exception)]
    assert refused and all("limit in_flight = 64" in str(e) for e in refused)
    assert len(served) >= 64 and all(r.value == 1 for r in served)
    assert after == 7


def test_a_call_cycle_between_waiting_guests_ends_in_an_error_not_a_hang(tmp_path):
    """A calls B, B calls A back while A waits, and so on: served re-entrantly
    up to the engine's nesting limit, then the innermost call fails and every
    level returns; both compartments keep serving.  (in_flight is raised so the
    engine's limit, not the supervisor's, is what ends it: without it the engine
    ran out of stack and died.)"""
    r, logs = system(tmp_path, f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 1)))
    (local.set $r (call $call0 (local.get $h) (i64.const {SPIN_ID}) (i32.const 1)))
    (call $log_int (i32.const 300) (i32.const 5) (local.get $r))
    (call $log_int (i32.const 310) (i32.const 6) (i32.load (i32.const 2064)))
    (local.set $r (call $call0 (local.get $h) (i64.const {SPIN_ID}) (i32.const 1)))
    (call $log_int (i32.const 320) (i32.const 5) (local.get $r))
    """, {"a": 200, "cycle": 300, "answer": 310, "again": 320}, extra=f"""
[compartments.a]
module = "{HERE}/bounce.wat"
exports = "Spin"
[compartments.a.limits]
in_flight = 60000
[compartments.a.grants]
peer = {{ compartment = "b" }}
[compartments.b]
module = "{HERE}/bounce.wat"
exports = "Spin"
[compartments.b.limits]
in_flight = 60000
[compartments.b.grants]
peer = {{ compartment = "a" }}
[compartments.app.grants.a]
compartment = "a"
""")
    assert r.returncode == 0, r.stdout + r.stderr
    # the top call succeeds; its answer is the error the nested calls ended in
    assert logs == ["cycle 0", "answer -4", "again 0"]


def test_call_time_bounds_how_long_a_caller_waits(tmp_path):
    r, logs = system(tmp_path, f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 4)))
    (local.set $r (call $call0 (local.get $h) (i64.const {SPIN_ID}) (i32.const 0)))
    (call $log_int (i32.const 300) (i32.const 4) (local.get $r))
    (call $log (i32.const 2048) (i32.load (i32.const 1000)))
    (local.set $h (call $lookup (i32.const 210) (i32.const 4)))
    (call $log_int (i32.const 320) (i32.const 3)
          (call $call0 (local.get $h) (i64.const {CALC_ID}) (i32.const 0)))
    """, {"spin": 200, "calc": 210, "spun": 300, "add": 320},
        spin_limits="fuel_per_call = 4_000_000_000_000_000\ncall_time = 0.5")
    assert r.returncode == 0, r.stdout + r.stderr
    # the router's deadline, or the engine's, which stops the loop there (whichever
    # comes first)
    assert logs in (["spun -4", "compartment spin did not answer within 0.5 s (limit call_time)",
                     "add 0"],
                    ["spun -4", "compartment spin ran past the 0.5 s a call may take (limit "
                     "call_time), and its code was stopped", "add 0"])


@pytest.mark.parametrize("instance", ["shared", "per_call"])
def test_a_sleep_in_a_call_past_call_time_fails_the_call_and_the_callee_serves_on(
        tmp_path, instance):
    # fuel does not bound a WASI sleep: a call asking for one of 2^63 ns held its
    # engine for good (no restart, its status 'ready'), and every later call of
    # every caller failed "did not answer within" its call_time
    r, logs = system(tmp_path, f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 4)))
    (local.set $r (call $call0 (local.get $h) (i64.const {SPIN_ID}) (i32.const 0)))
    (call $log_int (i32.const 300) (i32.const 5) (local.get $r))
    (call $log (i32.const 2048) (i32.load (i32.const 1000)))
    (call $log_int (i32.const 310) (i32.const 4)
          (call $call0 (local.get $h) (i64.const {SPIN_ID}) (i32.const 1)))
    (call $log_int (i32.const 320) (i32.const 5) (i32.load (i32.const 2064)))
    """, {"spin": 200, "slept": 300, "ping": 310, "value": 320},
        spin_limits="call_time = 5", spin_module="sleep.wat", spin_instance=instance)
    assert r.returncode == 0, r.stdout + r.stderr
    assert logs == ["slept -4",
                    "compartment spin asked to sleep 9.22337e+09 s in a call, past the 5 s "
                    "it may take (limit call_time)",
                    "ping 0", "value 7"]


def test_a_sleep_in_a_per_call_instances_initialize_is_its_calls_and_bounded_so(tmp_path):
    # the instance's _initialize runs for the call (it spends of its fuel): its
    # sleep past call_time fails the call at once; at the compartment's start the
    # same sleep is start_time's, and is slept
    r, logs = system(tmp_path, f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 4)))
    (local.set $r (call $call0 (local.get $h) (i64.const {SPIN_ID}) (i32.const 1)))
    (call $log_int (i32.const 300) (i32.const 4) (local.get $r))
    (call $log (i32.const 2048) (i32.load (i32.const 1000)))
    """, {"spin": 200, "ping": 300},
        spin_limits="call_time = 0.5", spin_module="sleepinit.wat", spin_instance="per_call")
    assert r.returncode == 0, r.stdout + r.stderr
    assert logs == ["ping -4",
                    "compartment spin asked to sleep 1 s in a call, past the 0.5 s it may "
                    "take (limit call_time)"]


@pytest.mark.parametrize("instance", ["shared", "per_call"])
def test_a_call_spinning_in_wasm_past_call_time_is_stopped_and_the_callee_serves_on(
        tmp_path, wsuper, instance):
    # fuel counts instructions, not time: a loop given a large fuel_per_call ran on
    # after its caller had been told 'did not answer within', with no host call to
    # cut it off there, and every later call of every caller timed out behind it
    # (its engine spinning a core for hours); its code is stopped at call_time now
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{HERE}/spin.capnp"]
socket = "{sock}"
[compartments.spin]
module = "{HERE}/spin.wat"
exports = "Spin"
external = true
instance = "{instance}"
[compartments.spin.limits]
fuel_per_call = 4_000_000_000_000_000
call_time = 0.5
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("all compartments ready")
    schema = capnp_schemas.load(os.path.join(HERE, "spin.capnp"))

    async def body(gateway):
        spin = (await gateway.get("spin")).cap.as_interface(schema.Spin)
        errors = []
        for _ in range(2):
            try:
                await spin.spin()
            except capnp.KjException as e:
                errors.append(str(e))
        return errors, (await spin.ping()).value
    errors, value = external_client(str(sock), body)
    assert len(errors) == 2 and all("did not answer within 0.5 s" in e or
                                    "ran past the 0.5 s a call may take" in e for e in errors)
    assert value == 7
    run.stop()


def test_a_call_stopped_at_call_time_leaves_the_program_it_was_served_on_running(tmp_path):
    # p's _start calls r, which calls p's spin: served on top of _start, in its
    # store, it is stopped at p's call_time, and _start (code of no call, which has
    # no deadline) goes on and ends well; before, the spin never ended (its fuel
    # lasts hours) and the program never went on
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{HERE}/spin.capnp"]
[compartments.p]
module = "{HERE}/startspin.wat"
exports = "Spin"
[compartments.p.limits]
fuel_per_call = 4_000_000_000_000_000
call_time = 0.5
[compartments.p.grants]
next = {{ compartment = "r" }}
[compartments.r]
module = "{HERE}/relay.wat"
exports = "Spin"
[compartments.r.grants]
next = {{ compartment = "p" }}
""")
    r = run_wsuper("up", str(tmp_path / "system.toml"), timeout=30)
    assert "finished p exit=0" in r.stderr, r.stdout + r.stderr


def test_a_call_that_calls_out_in_a_loop_is_cut_off_at_call_time(tmp_path, wsuper):
    # a loop of calls out costs its guest a few instructions each: with the default
    # fuel_per_call it ran for hours after its caller had been told it failed, its
    # engine stuck and spending the supervisor's CPU and its callee's all along
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{HERE}/spin.capnp"]
socket = "{sock}"
[compartments.x]
module = "{HERE}/callloop.wat"
exports = "Spin"
external = true
[compartments.x.limits]
call_time = 0.5
[compartments.x.grants]
next = {{ compartment = "y" }}
[compartments.y]
module = "{HERE}/spin.wat"
exports = "Spin"
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("all compartments ready")
    schema = capnp_schemas.load(os.path.join(HERE, "spin.capnp"))
    status = lambda: {c["name"]: c for c in json.loads(run_wsuper(  # noqa: E731
        "status", "--json", str(tmp_path / "system.toml")).stdout)["compartments"]}

    async def body(gateway):
        x = (await gateway.get("x")).cap.as_interface(schema.Spin)
        # the router's deadline, or the engine's (as its guest calls out once more)
        with pytest.raises(capnp.KjException, match="did not answer within 0.5 s|made "
                           "a host call in a call that has run past the 0.5 s it may take|"
                           "ran past the 0.5 s a call may take"):
            await x.spin()
        # the loop ended with its call's time: x serves, and y is called no more
        await asyncio.sleep(1)
        served = status()["y"]["served"]
        await asyncio.sleep(0.5)
        return served, status()["y"]["served"], (await x.ping()).value
    served, later, value = external_client(str(sock), body)
    assert served == later and value == 7
    run.stop()


def test_a_call_waiting_as_its_program_starts_is_not_held_beneath_the_program(
        tmp_path, wsuper):
    # p's program starts once r is ready: the call to p made while r starts waits in
    # p for r's answer as run() comes, and _start ran on top of it on the engine's
    # one stack: the call could return only once the program did (this one never
    # does), its caller told 'did not answer within 3 s'.  call_time is 20 s: r's
    # start counts for a second or two on an idle machine, past 3 s on a loaded one
    # (a full run, once), and a call held beneath a program that never ends fails at
    # any call_time
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{HERE}/spin.capnp"]
socket = "{sock}"
[compartments.p]
module = "{HERE}/program_serving.wat"
exports = "Spin"
external = true
[compartments.p.limits]
call_time = 20
[compartments.p.grants]
next = {{ compartment = "r" }}
[compartments.r]
module = "{HERE}/slowstart.wat"
exports = "Spin"
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready p")
    schema = capnp_schemas.load(os.path.join(HERE, "spin.capnp"))

    async def body(gateway):
        p = (await gateway.get("p")).cap.as_interface(schema.Spin)
        await p.spin()              # answered, once r has
    external_client(str(sock), body)
    run.wait_for("ready r")
    # and the program runs, once the call has returned
    status = json.loads(run_wsuper("status", "--json", str(tmp_path / "system.toml")).stdout)
    assert [c["state"] for c in status["compartments"] if c["name"] == "p"] == ["running"]
    run.stop()


def test_a_per_call_instance_initializing_as_its_program_starts_is_not_held_beneath_it(
        tmp_path, wsuper):
    # the same with instance = "per_call": the call's own instance's _initialize
    # waits in p for r's answer as run() comes.  That code is a call's, though
    # no dispatch frame is on the stack yet: _start ran on top of it, in the
    # call's instance (its memory, handles and WASI state), and the call could
    # return only once the program did; its caller told 'did not answer within'
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{HERE}/spin.capnp"]
socket = "{sock}"
[compartments.p]
module = "{HERE}/program_per_call_init.wat"
exports = "Spin"
instance = "per_call"
external = true
[compartments.p.limits]
call_time = 20
[compartments.p.grants]
next = {{ compartment = "r" }}
[compartments.r]
module = "{HERE}/slowstart.wat"
exports = "Spin"
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready p")
    schema = capnp_schemas.load(os.path.join(HERE, "spin.capnp"))

    async def body(gateway):
        p = (await gateway.get("p")).cap.as_interface(schema.Spin)
        assert (await p.ping()).value == 7      # answered, once r has
    external_client(str(sock), body)
    run.wait_for("ready r")
    status = json.loads(run_wsuper("status", "--json", str(tmp_path / "system.toml")).stdout)
    assert [c["state"] for c in status["compartments"] if c["name"] == "p"] == ["running"]
    run.stop()


def test_a_log_flood_is_refused_past_log_rate(tmp_path):
    r, logs = system(tmp_path, """
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (i32.const 1000)))
      (call $log (i32.const 300) (i32.const 5))
      (br_if $done (i32.lt_s (i32.load (i32.const 7896)) (i32.const 0)))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
    """, {"flood": 300}, app_limits="log_rate = 20")
    assert r.returncode == 0, r.stdout + r.stderr
    # a burst of 20 (plus what refilled meanwhile), not 1000
    assert 20 <= logs.count("flood") < 40


def test_running_out_of_gc_heap_names_the_cause_not_a_backtrace(tmp_path):
    """A GC allocation past limits.memory is a WasmtimeError, not a Trap: its first
    line was all the report said ("error while executing at wasm backtrace:");
    the cause comes after the backtrace."""
    (tmp_path / "gc.wat").write_text("""(module
  (type $a (array (mut i8)))
  (table $t 0 anyref)
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $l
      (drop (table.grow $t (array.new $a (i32.const 1) (i32.const 1000000)) (i32.const 1)))
      (br $l))))""")
    (tmp_path / "system.toml").write_text(f"""
[compartments.app]
module = "gc.wat"
restart = "never"
[compartments.app.limits]
memory = "4 MiB"
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
""")
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    failed = [l for l in r.stderr.splitlines() if "compartment app failed:" in l]
    assert len(failed) == 1, r.stderr
    assert failed[0].endswith("compartment app failed: GC heap out of memory: no capacity "
                              "for allocation of 1000028 bytes"), failed[0]


def _memories(n: int) -> str:
    """A program with n memories that grows each to 64 MiB and writes every page."""
    grow = "".join(f"(drop (memory.grow {i} (i32.const 1023))) (memory.fill {i} (i32.const 0) "
                   f"(i32.const 7) (i32.mul (memory.size {i}) (i32.const 65536)))"
                   for i in range(n))
    return (f'(module (memory (export "memory") 1) '
            f'{"".join("(memory 1)" for _ in range(n - 1))} (func (export "_start") {grow}))')


def test_a_module_with_more_memories_cannot_use_more_than_its_memory_limit(tmp_path):
    """limits.memory is wasmtime's per memory: a module with ten memories could touch
    ten times its limit (490 MiB of RSS with 7 under the default 64 MiB).  It may
    have one: `check` and `up` refuse more, and the engine's store allows no more."""
    (tmp_path / "m.wat").write_text(_memories(7))
    (tmp_path / "system.toml").write_text('[compartments.m]\nmodule = "m.wat"\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(tmp_path / "system.toml"))
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert r.stderr.strip() == (
            f"wsuper: error: {tmp_path}/system.toml:2: compartments.m.module: {tmp_path}/m.wat "
            f"cannot be instantiated: it has 7 memories: a compartment's limits.memory bounds each linear memory, so "
            f"its module may have at most 1"), r.stderr


def test_the_engines_store_allows_one_memory_and_a_probe_memory(tmp_path):
    import socket

    from compartments.engine import Engine, EngineError
    from compartments.spec import EngineSpec
    ours, theirs = socket.socketpair()
    path = str(tmp_path / "two-memories.wat")
    try:
        with open(path, "w") as f:
            f.write(_memories(2))
        engine = Engine(theirs, EngineSpec(name="m", module=path), instantiate=False)
        try:
            engine.instantiate()
        except EngineError as e:
            assert "memory count too high" in str(e), e
        else:
            raise AssertionError("a second memory was allowed")
        # a rewritten module's probe memory is the one more it may have
        probed = Engine(theirs, EngineSpec(name="p", module=f"{EXAMPLES}/calc.wat",
                                           exports=True, instrument=("functions",)),
                        instantiate=False)
        probed.instantiate()
    finally:
        ours.close(), theirs.close()


def test_a_log_handed_on_and_flooded_leaves_its_owner_its_own_lines(tmp_path):
    """Real engines: app hands its Log to sink (in the capability table of a call),
    and sink writes 200 lines to it at once.  Those lines were taken from app's own
    log_rate budget, shared by every log app has: app's next line to its own log
    failed EAGAIN, a limit of app's reached by another compartment.  sink now
    writes from a budget of its own for that log (at the lower of the two rates),
    and app's own line is shown."""
    from tests.integration.guests import _PRELUDE
    (tmp_path / "sink.wat").write_text(f"""(module
  (import "wsuper" "params_read" (func $params_read (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
{_PRELUDE}
  (data (i32.const 300) "sunk")
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32)
        (param $ncaps i32) (result i32)
    (local $i i32)
    (drop (call $params_read (i32.const 4000) (i32.const 5000)))
    (global.set $log (i32.load (i32.const 5000)))     ;; the log app handed over
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (i32.const 200)))
      (call $log (i32.const 300) (i32.const 4))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
    (i32.const 0)))
""")
    (tmp_path / "app.wat").write_text(program(f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 4)))
    (i32.store (i32.const 3000) (global.get $log))
    (local.set $r (call $call (local.get $h) (i64.const {CALC_ID}) (i32.const 2)
                        (i32.const 0) (i32.const 0) (i32.const 3000) (i32.const 1)
                        (i32.const 1000)))
    (call $log_int (i32.const 230) (i32.const 4) (local.get $r))
    (call $log (i32.const 210) (i32.const 12))
    (if (i32.ne (i32.load (i32.const 7896)) (i32.const 0)) (then unreachable))
    """, {"sink": 200, "app is heard": 210, "sent": 230}))
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
[compartments.sink]
module = "sink.wat"
exports = "Calc"
[compartments.app]
module = "app.wat"
restart = "never"
[compartments.app.grants]
log = {{ host = "log" }}
sink = {{ compartment = "sink" }}
[compartments.app.limits]
log_rate = 20
""")
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    lines = [l[len("[app] "):] for l in r.stdout.splitlines() if l.startswith("[app] ")]
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sent 0" in lines and lines[-1] == "app is heard", lines
    # sink's lines went to app's log, at app's rate at most: a burst of 20
    assert 20 <= lines.count("sunk") < 40, lines
    assert "log lines of sink (to app's log) not shown" in r.stderr, r.stderr


def test_one_client_cannot_fill_a_compartments_c_list_for_the_others(tmp_path, wsuper):
    """An outside review: while spin ran a call, one client sent it 4 calls passing
    256 objects of its own each: spin's 1024 handles were full, and another client's
    call passing it one capability failed "spin would hold more than 1024
    capabilities" until spin had served them all.  The table is shared: the
    flooding client is refused past its share, and the other's call is served."""
    from tests.wireclient import WireClient
    sock = tmp_path / "s.sock"
    # spin.wat's interface, with a capability in ping's params (Spin carries none:
    # a call passing one is refused before it reaches the c-list)
    (tmp_path / "spincap.capnp").write_text("""@0xd3a7e5c1b0a99f02;
interface Spin @0xc0ffee00000000f1 {
  spin @0 () -> ();
  ping @1 (cb :Spin) -> (value :Int32);
  slow @2 () -> (value :Int32);
}
""")
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{tmp_path}/spincap.capnp"]
socket = "{sock}"
[compartments.spin]
module = "{HERE}/spin.wat"
exports = "Spin"
external = true
[compartments.spin.limits]
fuel_per_call = 3_000_000_000
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready spin")
    spin_id = int(SPIN_ID, 16)
    # (spin's busy call runs 3e9 fuel before y's is served: seconds, more than a
    # client's default 10 s on a machine at a load of 8-10)
    x, y = WireClient(str(sock), timeout=60), WireClient(str(sock), timeout=60)
    spin_x, spin_y = x.get(x.bootstrap(), "spin"), y.get(y.bootstrap(), "spin")
    busy = x.call(spin_x, spin_id, 0)                 # runs to its fuel limit
    floods = [x.call(spin_x, spin_id, 1, caps=[object() for _ in range(256)])
              for _ in range(4)]
    floods += [x.call(spin_x, spin_id, 1, caps=[object()]) for _ in range(4)]
    ping = y.call(spin_y, spin_id, 1, caps=[object()])
    ret = y.returned(ping)
    assert ret.payload is not None, ret.error
    refused = [r.error for r in map(x.returned, floods) if r.payload is None]
    assert refused and all("passed by" in e for e in refused), refused
    assert x.returned(busy).payload is None
    x.close()
    y.close()


def test_calls_a_client_left_on_the_native_lane_count_to_the_gone_clients_share(
        tmp_path, wsuper):
    """An outside review: while spin ran a long call, one connection sent it three
    calls of 7 MiB, which the fast lane forwarded (the callee's backlog was below its
    soft bound), and closed.  Handed to the router as calls of 0 bytes, they counted
    to nobody's share of what waits for spin: the client, connected again, had its
    quarter anew, and a call of 3.9 MiB went through past the soft bound (one of
    those of the gone clients counted 0 of the 21 MiB waiting).  They count now, as
    the calls the router forwards, and the call is refused naming them."""
    import time
    from tests.wireclient import WireClient
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{HERE}/spin.capnp"]
socket = "{sock}"
[compartments.spin]
module = "{HERE}/spin.wat"
exports = "Spin"
external = true
[compartments.spin.limits]
fuel_per_call = 40_000_000_000
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready spin")
    spin_id = int(SPIN_ID, 16)

    a = WireClient(str(sock), timeout=30)
    spin_a = a.get(a.bootstrap(), "spin")
    a.call(spin_a, spin_id, 0)                          # spins, reading nothing meanwhile
    for _ in range(3):                                  # forwarded natively
        a.call(spin_a, spin_id, 1, _ping_params(7 << 20))
    past = a.call(spin_a, spin_id, 1, _ping_params(7 << 20))  # past the soft bound: refused
    assert "is not reading its messages" in a.returned(past).error
    a.close()
    time.sleep(0.3)
    b = WireClient(str(sock), timeout=30)
    spin_b = b.get(b.bootstrap(), "spin")
    ret = b.returned(b.call(spin_b, spin_id, 1, _ping_params(3_900_000)))
    assert ret.payload is None, "a reconnected client got a quarter anew"
    assert "is not reading its messages" in ret.error, ret.error
    gone = int(re.search(r"(\d+) those of external clients that are gone", ret.error)[1])
    assert gone >= 3 * (7 << 20), ret.error
    b.close()


def test_calls_a_client_sent_on_the_native_lane_count_to_its_share_of_a_callees_backlog(
        tmp_path, wsuper):
    """An outside review: while spin ran a long call, one connection sent it three
    calls of 7 MiB, which the fast lane forwarded (spin's backlog was below its soft
    bound), and then a call of 3.9 MiB, which the router judged past the soft bound
    with only the calls it had forwarded itself as the caller's: holding 21 MiB
    there, the caller still had a quarter of its own, and the call went through.
    The calls the lane forwarded for it count now, and it is refused."""
    from tests.wireclient import WireClient
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{HERE}/spin.capnp"]
socket = "{sock}"
[compartments.spin]
module = "{HERE}/spin.wat"
exports = "Spin"
external = true
[compartments.spin.limits]
fuel_per_call = 40_000_000_000
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready spin")
    spin_id = int(SPIN_ID, 16)
    a = WireClient(str(sock), timeout=30)
    spin_a = a.get(a.bootstrap(), "spin")
    a.call(spin_a, spin_id, 0)                          # spins, reading nothing meanwhile
    for _ in range(3):                                  # forwarded natively
        a.call(spin_a, spin_id, 1, _ping_params(7 << 20))
    ret = a.returned(a.call(spin_a, spin_id, 1, _ping_params(3_900_000)))
    assert ret.payload is None, "a caller holding 21 MiB at spin still had a quarter"
    mine = int(re.search(r"(\d+) of them external's calls", ret.error)[1])
    assert mine >= 3 * (7 << 20), ret.error
    a.close()


def _ping_params(size: int):
    """Spin.ping's params, with `size` bytes of data after them."""
    from capnp_schemas.protocol import Content
    n = size // 8
    return Content.standalone([(1 << 48).to_bytes(8, "little")
                               + ((n << 35) | (5 << 32) | 1).to_bytes(8, "little")
                               + b"\0" * (8 * n)])


#: big: `slow` (method 0) loops a while, reading nothing meanwhile, then answers
#: with 4 MiB of data (more than a socket's buffer takes at once); `ping`
#: (method 1) answers at once, with nothing.
BIG_ID = 0xC0FFEE00000000B1
BIG_SCHEMA = f"""@0xd3a7e5c1b0a99f0b;
interface Big @{BIG_ID:#x} {{
  slow @0 () -> (blob :Data);
  ping @1 (data :Data) -> ();
}}
"""
BIG_WAT = """(module
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 80)
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32)
        (param $ncaps i32) (result i32)
    (local $i i32)
    (if (i32.eqz (local.get $method))
      (then
        (loop $l
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 2000000000))))
        ;; one segment of 2 + 4 MiB / 8 words: the root struct (no data, one
        ;; pointer), then a list of 4 MiB bytes right after it
        (i32.store (i32.const 65536) (i32.const 0))
        (i32.store (i32.const 65540) (i32.const 524290))
        (i64.store (i32.const 65544) (i64.const 0x0001000000000000))
        (i64.store (i32.const 65552) (i64.const 0x0200000200000001))
        (return (call $results_set (i32.const 65536) (i32.const 4194328)
                                   (i32.const 0) (i32.const 0)))))
    (call $results_set (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))))
"""


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python"])
def test_a_callee_writing_a_large_answer_while_much_waits_for_it_is_still_read(
        tmp_path, wsuper, monkeypatch, native):
    """An outside review: while big ran a long call, a client sent it three calls of
    7 MiB (the fast lane forwarded them: big's backlog was below its soft bound, 16
    MiB), so 21 MiB waited for big.  The supervisor stopped reading from big while
    that much waited for it (backpressure), and big, done, wrote its answer of 4 MiB
    with a blocking write, which waited for the supervisor to read it: each waited
    for the other for good.  Every later call to big failed ('not reading its
    messages', then 'did not answer within 30 s') and its engine stayed stuck in
    that write.  An engine is read whatever waits for it (it writes blocking, and
    reads nothing until its write is done); past the hard bound it is cut off.
    On the fast lane (the lane's epoll_set) and off it (Supervisor._may_read)."""
    from tests.wireclient import WireClient
    monkeypatch.setenv("WSUPER_NATIVE", native)
    sock = tmp_path / "s.sock"
    (tmp_path / "big.capnp").write_text(BIG_SCHEMA)
    (tmp_path / "big.wat").write_text(BIG_WAT)
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{tmp_path}/big.capnp"]
socket = "{sock}"
[compartments.big]
module = "{tmp_path}/big.wat"
exports = "Big"
external = true
[compartments.big.limits]
fuel_per_call = 40_000_000_000
call_time = 20
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready big")
    a = WireClient(str(sock), timeout=60)
    big = a.get(a.bootstrap(), "big")
    slow = a.call(big, BIG_ID, 0)                        # loops, reading nothing meanwhile
    pings = [a.call(big, BIG_ID, 1, _ping_params(7 << 20)) for _ in range(3)]
    ret = a.returned(slow)
    assert ret.payload is not None, ret.error
    assert ret.payload.content.size() >= 4 << 20
    for q in pings:
        ret = a.returned(q)
        assert ret.payload is not None, ret.error
    assert run.proc.poll() is None
    a.close()


STACKY_C = r"""
#include <stdint.h>
#define WSUPER_SERVE_CALC
#include "calc.h"

WSUPER_SERVE_ONLY(calc)

/* 8 KiB of frame, then a loop to the fuel limit (b == 0) or a trap */
static int deep(int32_t b) {
  volatile char buf[8192];
  for (int i = 0; i < 8192; i++) buf[i] = (char)b;
  if (b) __builtin_trap();
  for (;;) buf[b & 8191]++;
  return buf[0];
}

int calc_serve_add(wsuper_arena *a, int32_t object, const calc_add_params *in,
                   calc_add_results *out) {
  (void)a; (void)object;
  if (in->a == 1) return deep(in->b);
  out->sum = in->a + in->b;
  return 0;
}

int calc_serve_new_counter(wsuper_arena *a, int32_t object,
                           const calc_new_counter_params *in, calc_new_counter_results *out) {
  (void)object; (void)in; (void)out;
  return wsuper_error(a, "no counters");
}

int calc_serve_sum_to(wsuper_arena *a, int32_t object, const calc_sum_to_params *in,
                      calc_sum_to_results *out) {
  (void)object; (void)in; (void)out;
  return wsuper_error(a, "no sums");
}
"""


def test_calls_that_trap_or_run_out_of_fuel_give_their_stack_back(tmp_path, wsuper):
    """A C plugin's stack pointer is a global of its instance, which its frames
    move back only when they return: a call that ran out of fuel_per_call (or
    trapped) left it where its frames had it, in a shared instance for good.
    One client's five calls with 8 KiB of frames took the plugin's 64 KiB stack,
    and every later call, any caller's, failed 'out of stack: calls nested too
    deep' (none restarted it: nothing had crashed).  wsuper build exports the
    pointer, and the engine puts it back when guest code does not return."""
    from supervisor import bindgen, toolchain
    bindgen.generate(os.path.join(EXAMPLES, "calc.capnp"), str(tmp_path / "include"))
    (tmp_path / "stacky.c").write_text(STACKY_C)
    module = toolchain.build([str(tmp_path / "stacky.c")], str(tmp_path / "stacky.wasm"),
                             reactor=True, include=[str(tmp_path / "include")])
    sock = tmp_path / "s.sock"
    (tmp_path / "s.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{sock}"
[compartments.stacky]
module = "{module}"
exports = "Calc"
external = true
limits = {{ fuel_per_call = 2000000 }}
""")
    run = wsuper("up", str(tmp_path / "s.toml"))
    run.wait_for("ready stacky")
    schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))

    async def body(gateway):
        hostile = (await gateway.get("stacky")).cap.as_interface(schema.Calc)
        honest = (await gateway.get("stacky")).cap.as_interface(schema.Calc)
        failed = []
        for b in (0, 1) * 6:            # out of fuel, then a trap, six times each
            try:
                await hostile.add(1, b)
            except capnp.KjException as e:
                failed.append(str(e).split("\n")[0])
        return failed, [(await honest.add(2, i)).sum for i in range(3)]
    failed, sums = external_client(str(sock), body)
    run.stop()
    assert len(failed) == 12 and all("out of stack" not in f for f in failed), failed
    assert sums == [2, 3, 4]


EATER_CAPNP = """@0xaa5c31c886a1bf79;
interface Eater {
  eat @0 (pad :Data, spin :Bool) -> (n :UInt32);
}
"""

EATER_C = r"""
#include <stdint.h>
#define WSUPER_SERVE_EATER
#include "eater.h"

WSUPER_SERVE_ONLY(eater)

int eater_serve_eat(wsuper_arena *a, int32_t object, const eater_eat_params *in,
                    eater_eat_results *out) {
  (void)a; (void)object;
  volatile uint32_t n = in->pad.len;
  while (in->spin) n++;               /* to the fuel limit */
  out->n = n;
  return 0;
}
"""


def test_calls_cut_short_give_their_params_memory_back(tmp_path, wsuper):
    """A generated dispatch kept the arena of the call it served (its params,
    decoded: up to message_size) in its frame and freed it when it returned: a
    call that ran out of fuel_per_call (or trapped) never did, and its params
    stayed in the plugin's memory for good.  One client's calls of 4 MiB that
    spin took a 64 MiB plugin's memory in sixteen, and every later call of every
    caller failed 'out of memory'.  The next call served frees what such a call
    left."""
    from supervisor import bindgen, toolchain
    (tmp_path / "eater.capnp").write_text(EATER_CAPNP)
    bindgen.generate(str(tmp_path / "eater.capnp"), str(tmp_path / "include"))
    (tmp_path / "eater.c").write_text(EATER_C)
    module = toolchain.build([str(tmp_path / "eater.c")], str(tmp_path / "eater.wasm"),
                             reactor=True, include=[str(tmp_path / "include")])
    sock = tmp_path / "e.sock"
    (tmp_path / "e.toml").write_text(f"""
[system]
schemas = ["{tmp_path}/eater.capnp"]
socket = "{sock}"
[compartments.eater]
module = "{module}"
exports = "Eater"
external = true
limits = {{ fuel_per_call = 2000000 }}
""")
    run = wsuper("up", str(tmp_path / "e.toml"))
    run.wait_for("ready eater")
    schema = capnp_schemas.load(str(tmp_path / "eater.capnp"))

    async def body(gateway):
        hostile = (await gateway.get("eater")).cap.as_interface(schema.Eater)
        honest = (await gateway.get("eater")).cap.as_interface(schema.Eater)
        failed = []
        for _ in range(24):
            try:
                await hostile.eat(b"x" * (4 << 20), True)
            except capnp.KjException as e:
                failed.append(str(e).split("\n")[0])
        return failed, (await honest.eat(b"y" * (1 << 20), False)).n
    failed, n = external_client(str(sock), body, timeout=60)
    run.stop()
    assert len(failed) == 24 and all("CPU budget" in f for f in failed), failed[-1]
    assert n == 1 << 20


RELAY_CAPNP = """@0x846a9f46039aed82;
interface Relay {
  eat @0 (pad :Data, spin :Bool) -> (n :UInt32);
  relay @1 (pad :Data, peer :Relay) -> (n :UInt32);
}
"""

RELAY_C = r"""
#include <stdint.h>
#define WSUPER_SERVE_RELAY
#include "relay.h"

WSUPER_SERVE_ONLY(relay)

int relay_serve_eat(wsuper_arena *a, int32_t object, const relay_eat_params *in,
                    relay_eat_results *out) {
  (void)a; (void)object;
  volatile uint32_t n = 0;
  for (uint32_t i = 0; i < in->pad.len; i++) n += in->pad.ptr[i];
  while (in->spin) n++;               /* to the fuel limit */
  out->n = n;
  return 0;
}

/* calls peer.eat, which calls back into eat meanwhile; then sums its own params */
int relay_serve_relay(wsuper_arena *a, int32_t object, const relay_relay_params *in,
                      relay_relay_results *out) {
  (void)object;
  relay_eat_results r;
  int rc = relay_eat(a, in->peer, in->pad, false, &r);
  if (rc) return rc;
  uint32_t n = 0;
  for (uint32_t i = 0; i < in->pad.len; i++) n += in->pad.ptr[i];
  out->n = n + r.n;
  return 0;
}
"""


def test_a_call_served_while_another_waits_keeps_the_params_of_the_one_beneath(
        tmp_path, wsuper):
    """The arenas of calls served live off the stack now, and a call frees those
    of frames at or below its own (calls that never returned): a call served
    while the plugin waits in one of its own (a callback) is below the one
    that waits, and must leave that one's params as they are; one before it
    that ran out of fuel at the same depth is freed."""
    from supervisor import bindgen, toolchain
    (tmp_path / "relay.capnp").write_text(RELAY_CAPNP)
    bindgen.generate(str(tmp_path / "relay.capnp"), str(tmp_path / "include"))
    (tmp_path / "relay.c").write_text(RELAY_C)
    module = toolchain.build([str(tmp_path / "relay.c")], str(tmp_path / "relay.wasm"),
                             reactor=True, include=[str(tmp_path / "include")])
    sock = tmp_path / "r.sock"
    (tmp_path / "r.toml").write_text(f"""
[system]
schemas = ["{tmp_path}/relay.capnp"]
socket = "{sock}"
[compartments.relay]
module = "{module}"
exports = "Relay"
external = true
limits = {{ fuel_per_call = 20000000 }}
""")
    run = wsuper("up", str(tmp_path / "r.toml"))
    run.wait_for("ready relay")
    schema = capnp_schemas.load(str(tmp_path / "relay.capnp"))

    async def body(gateway):
        relay = (await gateway.get("relay")).cap.as_interface(schema.Relay)
        spun = []

        class Peer(schema.Relay.Server):
            async def eat(self, pad, spin, **_):
                try:            # served in the plugin on top of relay, twice
                    await relay.eat(b"\x09" * 50000, True)
                except capnp.KjException as e:
                    spun.append(str(e).split("\n")[0])
                return (await relay.eat(b"\x05" * 70000, False)).n
        n = (await relay.relay(b"\x03" * 100000, Peer())).n
        return n, spun
    n, spun = external_client(str(sock), body, timeout=60)
    run.stop()
    assert len(spun) == 1 and "CPU budget" in spun[0], spun
    assert n == 3 * 100000 + 5 * 70000


#: quick: `get` (method 0) answers at once with 4 MiB of data; `ping` (method 1)
#: answers at once, with nothing.
QUICK_WAT = """(module
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 80)
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32)
        (param $ncaps i32) (result i32)
    (if (i32.eqz (local.get $method))
      (then
        (i32.store (i32.const 65536) (i32.const 0))
        (i32.store (i32.const 65540) (i32.const 524290))
        (i64.store (i32.const 65544) (i64.const 0x0001000000000000))
        (i64.store (i32.const 65552) (i64.const 0x0200000200000001))
        (return (call $results_set (i32.const 65536) (i32.const 4194328)
                                   (i32.const 0) (i32.const 0)))))
    (call $results_set (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))))
"""


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python"])
def test_a_client_writing_a_large_call_blocking_while_its_answers_wait_is_read_again(
        tmp_path, wsuper, monkeypatch, native):
    """An outside review: a client made six calls answered with 4 MiB each (24 MiB
    waited for it, past the soft bound of 16 MiB: the supervisor stopped reading it),
    then wrote a call of 7 MiB with a blocking write, as engines do, reading nothing
    until it was done.  It waited for the supervisor to read it, and the supervisor
    for it to read its answers: for good (no message_timeout either, as the
    supervisor was not reading it), on the lane and off it.  A client that took
    none of what waits for it for message_timeout while it was not read is read
    again (until it takes some; the hard bound still cuts it off): its call goes
    through, and then it reads every answer."""
    import time
    from tests.wireclient import WireClient
    monkeypatch.setenv("WSUPER_NATIVE", native)
    sock = tmp_path / "s.sock"
    (tmp_path / "big.capnp").write_text(BIG_SCHEMA)
    (tmp_path / "quick.wat").write_text(QUICK_WAT)
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{tmp_path}/big.capnp"]
socket = "{sock}"
message_timeout = 1
[compartments.quick]
module = "{tmp_path}/quick.wat"
exports = "Big"
external = true
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready quick")
    a = WireClient(str(sock), timeout=20)
    quick = a.get(a.bootstrap(), "quick")
    gets = [a.call(quick, BIG_ID, 0) for _ in range(6)]
    time.sleep(2)                       # 24 MiB of answers wait for it, unread
    ping = a.call(quick, BIG_ID, 1, _ping_params(7 << 20))   # sendall: it reads nothing
    for q in gets:
        ret = a.returned(q)
        assert ret.payload is not None, ret.error
        assert ret.payload.content.size() >= 4 << 20
    ret = a.returned(ping)
    assert ret.payload is not None, ret.error
    assert run.proc.poll() is None
    a.close()


#: cycle: `go` (method 1) calls its grant `other`'s `go` with 7 MiB of
#: parameters, and answers once that answers: a, b and c, each the next's
#: `other`, call each other round and round, nesting calls in every engine.
CYCLE_SCHEMA = f"""@0xd3a7e5c1b0a99f0c;
interface Cycle @{BIG_ID:#x} {{
  hit @0 (data :Data) -> ();
  go @1 (data :Data) -> ();
}}
"""
CYCLE_WAT = """(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (import "wsuper" "fail" (func $fail (param i32 i32) (result i32)))
  (memory (export "memory") 200)
  (data (i32.const 100) "other")
  (data (i32.const 120) "the call to other failed")
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32)
        (param $ncaps i32) (result i32)
    (if (i32.eq (local.get $method) (i32.const 1))
      (then
        (i32.store (i32.const 65536) (i32.const 0))
        (i32.store (i32.const 65540) (i32.const 917506))
        (i64.store (i32.const 65544) (i64.const 0x0001000000000000))
        (i64.store (i32.const 65552) (i64.const 0x0380000200000001))
        (if (i32.lt_s (call $call (call $lookup (i32.const 100) (i32.const 5))
                            (i64.const 0xC0FFEE00000000B1) (i32.const 1)
                            (i32.const 65536) (i32.const 7340056) (i32.const 0) (i32.const 0)
                            (i32.const 1000))
                      (i32.const 0))
          (then (drop (call $fail (i32.const 120) (i32.const 24))) (return (i32.const 0))))))
    (call $results_set (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))))
"""


def test_large_calls_nested_in_a_cycle_are_refused_before_they_take_an_engines_memory(
        tmp_path, wsuper):
    """An outside review: a, b and c each call the next with 7 MiB of parameters
    and wait for its answer, and the last calls the first: calls nest in every
    engine, which reads on while its guest waits (the supervisor's soft bound on
    what waits for it unread did not bound what it held).  Two such rounds begun
    at each of them at once took the engines past their address space in 1.5 s:
    'protocol error from supervisor: bad framing: MemoryError', the engines
    gone and restarted, every call in them failed 'compartment a is gone'.  A
    nested call that would take the parameters the calls nested in an engine
    hold past NESTED_BYTES fails `overloaded` instead; no engine ends."""
    from tests.wireclient import WireClient
    sock = tmp_path / "s.sock"
    (tmp_path / "cycle.capnp").write_text(CYCLE_SCHEMA)
    (tmp_path / "cycle.wat").write_text(CYCLE_WAT)
    body = "".join(f"""
[compartments.{n}]
module = "{tmp_path}/cycle.wat"
exports = "Cycle"
external = true
[compartments.{n}.grants]
other = {{ compartment = "{m}" }}
""" for n, m in (("a", "b"), ("b", "c"), ("c", "a")))
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{tmp_path}/cycle.capnp"]
socket = "{sock}"
{body}""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("all compartments ready")
    c = WireClient(str(sock), timeout=60)
    gateway = c.bootstrap()
    caps = [c.get(gateway, n) for n in "abc"]
    calls = [c.call(cap, BIG_ID, 1) for cap in caps for _ in range(2)]
    for q in calls:
        ret = c.returned(q)
        assert ret.payload is not None or "is gone" not in ret.error, ret.error
    assert not [line for line in run.lines if "MemoryError" in line or "exited" in line], \
        run.lines[-5:]
    assert run.proc.poll() is None
    c.close()


def test_a_call_cancelled_while_it_waits_in_a_call_out_is_stopped_where_it_goes_on(
        tmp_path, wsuper):
    # x's spin calls y's spin (which never answers), then loops in wasm.  Its
    # client cancels it while it waits: x's engine reads the Finish, finishes its
    # call out, and goes on, but only its next host call was cut off, and its loop
    # ran on to x's call_time (60 s here), every later call to x waiting behind it
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{HERE}/spin.capnp"]
socket = "{sock}"
[compartments.x]
module = "{HERE}/callspin.wat"
exports = "Spin"
external = true
[compartments.x.limits]
call_time = 60
fuel_per_call = 4_000_000_000_000_000
[compartments.x.grants]
next = {{ compartment = "y" }}
[compartments.y]
module = "{HERE}/spin.wat"
exports = "Spin"
[compartments.y.limits]
call_time = 60
fuel_per_call = 4_000_000_000_000_000
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("all compartments ready")
    schema = capnp_schemas.load(os.path.join(HERE, "spin.capnp"))

    async def body(gateway):
        x = (await gateway.get("x")).cap.as_interface(schema.Spin)
        spin = asyncio.ensure_future(x.spin())
        await asyncio.sleep(1)                         # x waits in its call out
        spin.cancel()                                  # pycapnp sends Finish
        with pytest.raises(asyncio.CancelledError):
            await spin
        del spin
        # x's call out is answered 'canceled' meanwhile, and its loop goes on (a
        # ping that came first would be served on top of the call out's wait)
        await asyncio.sleep(1)
        return (await x.ping()).value                  # x serves again
    assert external_client(str(sock), body, timeout=20) == 7
    run.stop()


@pytest.mark.parametrize("how", ["cancel", "disconnect", "cancel through a relay"])
def test_a_call_its_client_cancels_or_leaves_stops_calling_down_the_chain(
        tmp_path, wsuper, how):
    # x's spin calls y's ping for ever (a few instructions a call).  A client that
    # cancelled the call (Finish), or went, left it running to x's call_time (60 s
    # here), y called all along for nobody: the router did not pass a live caller's
    # Finish on, and an engine ignored the Finish of a call it was running.  Now x
    # is sent Finish and fails the call at its next host call; through a relay
    # (client -> r -> x -> y), r's Finish of the call it waits for does that
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{HERE}/spin.capnp"]
socket = "{sock}"
[compartments.x]
module = "{HERE}/callloop.wat"
exports = "Spin"
external = true
[compartments.x.limits]
call_time = 60
[compartments.x.grants]
next = {{ compartment = "y" }}
[compartments.y]
module = "{HERE}/spin.wat"
exports = "Spin"
[compartments.r]
module = "{HERE}/relay.wat"
exports = "Spin"
external = true
[compartments.r.limits]
call_time = 60
[compartments.r.grants]
next = {{ compartment = "x" }}
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("all compartments ready")
    schema = capnp_schemas.load(os.path.join(HERE, "spin.capnp"))
    status = lambda: {c["name"]: c for c in json.loads(run_wsuper(  # noqa: E731
        "status", "--json", str(tmp_path / "system.toml")).stdout)["compartments"]}
    first = "r" if "relay" in how else "x"

    async def started(gateway):
        x = (await gateway.get(first)).cap.as_interface(schema.Spin)
        spin = asyncio.ensure_future(x.spin())
        while status()["y"]["served"] < 10:          # the loop runs
            await asyncio.sleep(0.05)
        return x, spin

    async def cancel(gateway):
        x, spin = await started(gateway)
        spin.cancel()                                  # pycapnp sends Finish
        with pytest.raises(asyncio.CancelledError):
            await spin
        del spin
        await asyncio.sleep(1)
        return (await x.ping()).value                  # x serves again

    async def disconnect(gateway):
        await started(gateway)                         # and the connection closes

    if how.startswith("cancel"):
        assert external_client(str(sock), cancel) == 7
    else:
        external_client(str(sock), disconnect)
    time.sleep(1)
    served = status()["y"]["served"]
    time.sleep(1)
    assert status()["y"]["served"] == served           # y is called no more
    run.stop()


def test_a_revoked_call_whose_callee_loops_calling_down_the_chain_stops_there(
        tmp_path, wsuper):
    # a client's call to r, relayed through r's revocable grant to x, whose call
    # loops calling y: `wsuper revoke` failed r's call and sent x Finish, which x's
    # engine ignored while it ran the call, so y was called on until x's call_time
    # (60 s here)
    sock = tmp_path / "s.sock"
    system = tmp_path / "system.toml"
    system.write_text(f"""
[system]
schemas = ["{HERE}/spin.capnp"]
socket = "{sock}"
[compartments.x]
module = "{HERE}/callloop.wat"
exports = "Spin"
[compartments.x.limits]
call_time = 60
[compartments.x.grants]
next = {{ compartment = "y" }}
[compartments.y]
module = "{HERE}/spin.wat"
exports = "Spin"
[compartments.r]
module = "{HERE}/relay.wat"
exports = "Spin"
external = true
[compartments.r.grants]
next = {{ compartment = "x", revocable = true }}
""")
    run = wsuper("up", str(system))
    run.wait_for("all compartments ready")
    schema = capnp_schemas.load(os.path.join(HERE, "spin.capnp"))
    status = lambda: {c["name"]: c for c in json.loads(run_wsuper(  # noqa: E731
        "status", "--json", str(system)).stdout)["compartments"]}

    async def body(gateway):
        r = (await gateway.get("r")).cap.as_interface(schema.Spin)
        spin = asyncio.ensure_future(r.spin())
        while status()["y"]["served"] < 10:          # the loop runs
            await asyncio.sleep(0.05)
        revoked = run_wsuper("revoke", str(system), "r.next")
        assert revoked.returncode == 0, revoked.output
        with pytest.raises(capnp.KjException):         # r's call out was denied
            await spin
        await asyncio.sleep(1)
        served = status()["y"]["served"]
        await asyncio.sleep(1)
        return served, status()["y"]["served"]
    served, later = external_client(str(sock), body)
    assert later == served                             # y is called no more
    run.stop()


#: quick, smaller: `get` (method 0) answers at once with 960,000 bytes of data (fits
#: a message_size of 1 MiB); `ping` (method 1) answers at once, with nothing.
QUICK_1M_WAT = QUICK_WAT.replace("(i32.const 524290)", "(i32.const 120002)") \
    .replace("0x0200000200000001", "0x0075300200000001") \
    .replace("(i32.const 4194328)", "(i32.const 960024)")


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python"])
def test_answers_external_clients_leave_unread_are_bounded_in_all_not_only_per_connection(
        tmp_path, wsuper, monkeypatch, native):
    """An outside review (reviewer 203): the bytes waiting to be written to a peer
    were bounded per connection only (its hard bound, 4 x its soft one + 16 MiB:
    80 MiB at the default message_size), and one local client holds up to
    max_connections of them.  32 connections, each making 19 calls of 40 bytes
    that `quick` answers with 4 MiB, reading none, held 2.4 GB of the
    supervisor's memory for as long as they stayed (RSS 48 MB before).  Beyond
    its soft bound, what waits for an external client now comes from one pool for
    all of them (twice what one may hold beyond its own): here, with message_size
    1 MiB, each connection's own is 2 MiB, its hard bound 24 MiB and the pool 44
    MiB; three connections leaving ~21 MiB each unread fill it, and the one
    writing past it is cut off, while the others and a new client are served."""
    from tests.wireclient import WireClient
    import socket as _socket
    monkeypatch.setenv("WSUPER_NATIVE", native)
    sock = tmp_path / "s.sock"
    (tmp_path / "big.capnp").write_text(BIG_SCHEMA)
    (tmp_path / "quick.wat").write_text(QUICK_1M_WAT)
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{tmp_path}/big.capnp"]
socket = "{sock}"
external_limits = {{ message_size = "1MiB" }}
[compartments.quick]
module = "{tmp_path}/quick.wat"
exports = "Big"
external = true
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready quick")
    clients, calls = [], []
    for _ in range(3):
        c = WireClient(str(sock), timeout=20)
        c.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 4096)
        quick = c.get(c.bootstrap(), "quick")
        # ~20 MiB each, in one write: read together, whatever the machine's load (the
        # supervisor stops reading a client once more than its own waits for it)
        sent = [c.conn.send_call(quick, BIG_ID, 0) for _ in range(22)]
        c.send(b"".join(data for _, data in sent))
        # its first answer came: all 22 are at quick, ahead of the honest call below
        # (sent on another connection, it could be read first by a busy supervisor)
        assert readable(c.sock.fileno(), 30)
        calls.append([q for q, _ in sent])
        clients.append(c)
    # quick answers in order: once this is answered, so are all the calls before it
    honest = WireClient(str(sock), timeout=20)
    ret = honest.returned(honest.call(honest.get(honest.bootstrap(), "quick"), BIG_ID, 1))
    assert ret.payload is not None, ret.error
    answered = cut = 0
    served = []
    for c, qids in zip(clients, calls):
        got = 0
        try:
            for q in qids:
                ret = c.returned(q)
                assert ret.payload is not None, ret.error
                got += 1
            served.append(c)
        except (AssertionError, OSError):
            cut += 1
            c.close()
        answered += got
    # all the answers of one it cut off may have been queued before (the pool sheds
    # the connection holding the most, e5626d7^..): they go out as it closes, if it
    # reads them (CLOSE_FLUSH), and then the connection ends, while the others stay
    # open.  The first end is awaited on all of them at once (each one's was given
    # 2 s, which a loaded machine may take to close it)
    import select
    waiting, deadline = select.poll(), time.monotonic() + 30
    for c in served:
        waiting.register(c.sock, select.POLLIN)
    while not cut and served and time.monotonic() < deadline:
        for fd, _ in waiting.poll(500):
            c = next(c for c in served if c.sock.fileno() == fd)
            try:
                ended = c.sock.recv(1 << 16) == b""
            except OSError:
                ended = True
            if ended:
                cut += 1
                waiting.unregister(fd)
    for c in served:
        c.close()
    assert cut >= 1, (cut, answered)
    line = run.wait_for("connection cut off: it does not read its messages")
    assert "external clients together" in line, line
    assert run.proc.poll() is None
    honest.close()


HUGE_SCHEMA = """@0xe7b3c1d2a4f50617;
interface Big @0xc0ffee0000000101 {
  get @0 (n :UInt32) -> (data :Data);
}
"""

#: answers Big.get(n) with n bytes of zeros: results of n + 24 bytes
HUGE_WAT = """(module
  (import "wsuper" "params_read" (func $pr (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $rs (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1100)
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) (local $n i32)
    (drop (call $pr (i32.const 0) (i32.const 0)))
    (local.set $n (i32.and (i32.add (i32.load (i32.const 16)) (i32.const 7)) (i32.const -8)))
    (i32.store (i32.const 65536) (i32.const 0))
    (i32.store (i32.const 65540) (i32.add (i32.const 2) (i32.shr_u (local.get $n) (i32.const 3))))
    (i64.store (i32.const 65544) (i64.const 0x0001000000000000))
    (i32.store (i32.const 65552) (i32.const 1))
    (i32.store (i32.const 65556) (i32.or (i32.const 2) (i32.shl (local.get $n) (i32.const 3))))
    (call $rs (i32.const 65536) (i32.add (i32.const 24) (local.get $n))
              (i32.const 0) (i32.const 0))))
"""


def test_wsuper_call_reads_results_as_large_as_external_limits_allows(tmp_path, wsuper):
    """`external_limits.message_size` allows up to 256 MiB, but `wsuper call`'s
    pycapnp client kept its own bound of 64 MiB a message: results past it, which
    the supervisor had sent whole, failed "disconnected: expected
    expectedSizeInWords <= options.traversalLimitInWords ...; incoming RPC message
    exceeds size limit".  It reads whatever a system may send it."""
    from supervisor import client
    (tmp_path / "big.capnp").write_text(HUGE_SCHEMA)
    (tmp_path / "big.wat").write_text(HUGE_WAT)
    sock = str(tmp_path / "big.sock")
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["big.capnp"]
socket = "{sock}"
logs = "{tmp_path}/logs"
[system.external_limits]
message_size = "80MiB"
[compartments.big]
module = "big.wat"
exports = "Big"
external = true
[compartments.big.limits]
message_size = "80MiB"
memory = "80MiB"
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("all compartments ready")
    big = capnp_schemas.load(str(tmp_path / "big.capnp")).Big
    n = (64 << 20) + 4096                         # one page past pycapnp's default
    out = client.call(sock, "big", big, "get", {"n": n}, timeout=60, as_json=True,
                      message_size=80 << 20)        # the system's external_limits
    assert len(json.loads(out)["data"]) == (n + 2) // 3 * 4      # base64 of n bytes


def test_wsuper_call_s_bound_is_the_largest_message_a_system_sends():
    from compartments.limits import Limits
    from supervisor import client, router
    assert client.MAX_MESSAGE_WORDS == \
        (Limits.RANGES["message_size"][1] >> 3) + router.HEADER_WORDS


AMPLIFIED_SCHEMA = """@0xd1e7afc40966bc32;
struct E {}
interface Amp @0xc0ffee0000000201 {
  get @0 (n :UInt32) -> (items :List(E));
}
"""

#: answers Amp.get(n) with a list of n empty structs: 24 bytes of results whatever n
AMPLIFIED_WAT = """(module
  (import "wsuper" "params_read" (func $pr (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $rs (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) (local $n i32)
    (drop (call $pr (i32.const 0) (i32.const 0)))
    (local.set $n (i32.load (i32.const 16)))
    (i32.store (i32.const 65536) (i32.const 0))
    (i32.store (i32.const 65540) (i32.const 3))
    (i64.store (i32.const 65544) (i64.const 0x0001000000000000))
    (i64.store (i32.const 65552) (i64.const 0x0000000700000001))
    (i64.store (i32.const 65560) (i64.shl (i64.extend_i32_u (local.get $n)) (i64.const 2)))
    (call $rs (i32.const 65536) (i32.const 32) (i32.const 0) (i32.const 0))))
"""


def test_wsuper_call_reads_results_only_as_large_as_the_systems_external_limits(tmp_path,
                                                                               wsuper):
    """`wsuper call` read results up to the largest message any system may send
    (256 MiB, 32 Mi words), whatever the system's `external_limits.message_size`:
    a compartment answering with 24 bytes that hold a list of 2^25 empty structs
    (each counted one word, as pycapnp counts them; the router measures the 24
    bytes) had the client build 2^25 elements, ~260 bytes of Python each (2
    million: 560 MB; 2^25: ~9 GB).  It now reads at most what the system's
    `external_limits.message_size` allows, and says so."""
    (tmp_path / "amp.capnp").write_text(AMPLIFIED_SCHEMA)
    (tmp_path / "amp.wat").write_text(AMPLIFIED_WAT)
    sock = str(tmp_path / "amp.sock")
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["amp.capnp"]
socket = "{sock}"
logs = "{tmp_path}/logs"
[system.external_limits]
message_size = "64KiB"
[compartments.amp]
module = "amp.wat"
exports = "Amp"
external = true
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("all compartments ready")
    system = str(tmp_path / "system.toml")
    fits = run_wsuper("call", system, "amp.get", "(n = 8000)")
    assert fits.returncode == 0, fits.output
    assert fits.stdout.count("()") == 8000
    for args in ((), ("--json",)):
        over = run_wsuper("call", system, "amp.get", "(n = 100000)", *args)
        assert over.returncode == 1, over.output[:300]
        assert "amp.get: its results are more than" in over.stderr, over.stderr
        assert "external_limits.message_size = 65536" in over.stderr, over.stderr


def test_a_client_that_reads_is_not_the_one_cut_off_when_others_filled_the_external_pool(
        tmp_path, wsuper, monkeypatch):
    """An outside review (reviewer 206) of the pool of the previous test: the
    connection cut off was whichever wrote past the pool first, not whichever held
    it.  Two connections that leave ~22 MiB each unread (message_size 1 MiB: own
    2 MiB each, pool 44 MiB) fill the pool and then stop calling; a client that
    reads its answers, but only once its few calls are all answered (~11 MiB
    waiting, 9 beyond its own), was cut off, and the two that held the pool kept
    it.  Now the connection holding the most beyond its own is the one cut off
    (the writer only if it holds the most).  Python's links: the lane reads a
    client no further while more than its own waits for it, so how much the
    reader has waiting there depends on timing; both kinds of link ask the same
    _ExternalQueues.room (tests/unit/test_eviction.py tests it alone)."""
    from tests.wireclient import WireClient
    import socket as _socket
    monkeypatch.setenv("WSUPER_NATIVE", "0")
    sock = tmp_path / "s.sock"
    (tmp_path / "big.capnp").write_text(BIG_SCHEMA)
    (tmp_path / "quick.wat").write_text(QUICK_1M_WAT)
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{tmp_path}/big.capnp"]
socket = "{sock}"
external_limits = {{ message_size = "1MiB" }}
[compartments.quick]
module = "{tmp_path}/quick.wat"
exports = "Big"
external = true
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready quick")

    def client():
        c = WireClient(str(sock), timeout=20)
        c.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 4096)
        return c, c.get(c.bootstrap(), "quick")

    def calls(c, quick, n):
        """`n` calls in one write: read together, whatever the machine's load (the
        supervisor stops reading a client once more than its own waits for it).
        Back once the first answer came: all `n` are at quick then, ahead of any
        call sent after.  Sent on another connection at once, the probe's call
        could be read first (a busy supervisor had both waiting): the reader then
        read its answers as they came, and no pool filled (a full run, once)."""
        sent = [c.conn.send_call(quick, BIG_ID, 0) for _ in range(n)]
        c.send(b"".join(data for _, data in sent))
        assert readable(c.sock.fileno(), 30)
        return [q for q, _ in sent]

    hogs = []
    for _ in range(2):
        c, quick = client()
        hogs.append((c, calls(c, quick, 26)))
    probe, quick = client()     # quick answers in order: all the calls before are answered
    ret = probe.returned(probe.call(quick, BIG_ID, 1))
    assert ret.payload is not None, ret.error
    reader, quick = client()
    qids = calls(reader, quick, 12)
    ret = probe.returned(probe.call(quick, BIG_ID, 1))
    assert ret.payload is not None, ret.error
    for q in qids:              # it reads now: every answer is there
        ret = reader.returned(q)
        assert ret.payload is not None, ret.error
    reader.close()
    line = run.wait_for("connection cut off: it does not read its messages")
    assert "the most of any external client" in line, line
    for c, _ in hogs:
        c.close()
    probe.close()
    assert run.proc.poll() is None


def test_callers_holding_what_a_compartment_handed_them_do_not_get_its_own_calls_refused(
        tmp_path, wsuper):
    """Real engines: calc hands out a new Counter at each newCounter (this one without
    the example's cap of 999); an external connection and a compartment each keep
    700 of them, within their own `handles` (1024). The supervisor counted every
    object of calc's that anyone held against calc's own bound on what it passed the
    supervisor (`handles` + 256): calc's calls out were refused ("calc has passed the
    supervisor more than 1024 capabilities it still holds"), so an honest client's
    sumTo, whose callback is a call of calc's, failed ("dispatch returned 5"). What
    calc returned in answers counts to the holders' own c-lists, which bound it."""
    from tests.wireclient import WireClient
    src = open(os.path.join(EXAMPLES, "calc.wat")).read()
    capped = "(if (i32.ge_u (local.get $tag) (i32.const 1000)) (then (return (i32.const 3))))"
    assert capped in src
    (tmp_path / "factory.wat").write_text(src.replace(
        capped, "(local.set $tag (i32.and (local.get $tag) (i32.const 4095)))"))
    # the compartment: 700 newCounter, every handle kept, then it waits for good
    (tmp_path / "app.wat").write_text(program(f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 4)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (i32.const 700)))
      (br_if $done (i32.ne (call $call0 (local.get $h) (i64.const {CALC_ID}) (i32.const 1))
                           (i32.const 0)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (call $log_int (i32.const 210) (i32.const 4) (local.get $i))
    (local.set $h (call $lookup (i32.const 220) (i32.const 5)))
    (loop $wait (drop (call $call0 (local.get $h) (i64.const {SPIN_ID}) (i32.const 0)))
                (br $wait))""", {"calc": 200, "held": 210, "sleep": 220}))
    sock = tmp_path / "ext.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp", "{HERE}/spin.capnp"]
socket = "{sock}"
[compartments.calc]
module = "factory.wat"
exports = "Calc"
external = true
[compartments.sleep]
module = "{HERE}/sleep.wat"
exports = "Spin"
[compartments.app]
module = "app.wat"
[compartments.app.grants]
log = {{ host = "log" }}
calc = {{ compartment = "calc" }}
sleep = {{ compartment = "sleep" }}
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    assert run.wait_for("[app] held") == "[app] held 700"
    c = WireClient(str(sock), timeout=60)
    calc = c.get(c.bootstrap(), "calc")
    for _ in range(14):                         # 700 counters, 50 at a time (in_flight)
        for q in [c.call(calc, int(CALC_ID, 16), 1) for _ in range(50)]:
            ret = c.returned(q)
            assert ret.payload is not None, ret.error
    schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))
    steps = []

    class Observer(schema.Observer.Server):
        async def step(self, i, partial, **kwargs):
            steps.append(partial)

    async def body(gateway):
        calc = (await gateway.get("calc")).cap.as_interface(schema.Calc)
        total = (await calc.sumTo(3, Observer())).total
        counter = (await calc.newCounter()).counter
        return total, (await counter.inc(5)).value
    assert external_client(str(sock), body) == (6, 5)
    assert steps == [1, 3, 6]
    c.close()
    assert run.proc.poll() is None
    assert not any("has passed the supervisor" in line for line in run.lines), run.lines


def test_external_clients_cannot_take_every_descriptor_the_compartments_do_not_keep(tmp_path):
    """Real engines, a real WASI program: `share` hands external clients its
    read-only Directory; one local client, on two connections, opens a file
    through it again and again and keeps them all.  Its opens were counted to no
    compartment, and the supervisor's spare descriptors were first come, first
    served beyond each compartment's last 16: with RLIMIT_NOFILE 256 the client held
    all 120, and a program then opening 40 files got 15 (its 16 but the directory
    it was granted) and EMFILE.  External clients together may hold half of what
    the compartments' own leave."""
    import resource
    from supervisor import toolchain
    from capnp_schemas import hosted, payloads
    from tests.conftest import Running
    from tests.wireclient import WireClient
    (tmp_path / "share.capnp").write_text(
        "@0xd3a7e5c1b0a99f77;\n"
        "interface Share @0xc0ffee00000000a1 { get @0 () -> (dir :AnyPointer); }\n")
    (tmp_path / "share.wat").write_text("""(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "data")
  ;; any call: its "data" grant, as capability #0 of the results
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (i32.store (i32.const 8300) (call $lookup (i32.const 100) (i32.const 4)))
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0001000000000000))
    (i64.store (i32.const 8208) (i64.const 3))
    (drop (call $results_set (i32.const 8192) (i32.const 24) (i32.const 8300) (i32.const 1)))
    (i32.const 0)))
""")
    (tmp_path / "opener.c").write_text("""#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(void) {          /* once /sandbox/go is there, opens /sandbox/f 40 times */
  struct timespec t = {0, 50 * 1000 * 1000};
  while (access("/sandbox/go", F_OK) != 0) nanosleep(&t, NULL);
  int opened = 0, e = 0;
  for (int i = 0; i < 40; i++) {
    if (open("/sandbox/f", O_RDONLY) < 0) { e = errno; break; }
    opened++;
  }
  printf("opened %d errno %d\\n", opened, e);
  return 0;
}
""")
    toolchain.build([str(tmp_path / "opener.c")], str(tmp_path / "opener.wasm"))
    for d in ("data", "sandbox"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f").write_text("x")
    sock = tmp_path / "ext.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{tmp_path}/share.capnp"]
socket = "{sock}"
[compartments.share]
module = "{tmp_path}/share.wat"
exports = "Share"
external = true
[compartments.share.grants]
data = {{ host = "directory", path = "{tmp_path}/data", read_only = true }}
[compartments.app]
module = "{tmp_path}/opener.wasm"
restart = "never"
[compartments.app.grants]
stdout = {{ host = "log" }}
sandbox = {{ host = "directory", path = "{tmp_path}/sandbox", mount = "/sandbox" }}
""")

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    run = Running(["up", str(tmp_path / "system.toml")], preexec_fn=low_limit)
    try:
        run.wait_for("ready share")
        directory, opening = hosted.BY_NAME["Directory"], hosted.BY_NAME["Directory"].method("open")
        params = payloads.build(opening.params, {"path": "f", "mode": "read"})[0]
        clients, opened, refused = [], 0, None
        while refused is None and len(clients) < 3:
            c = WireClient(str(sock), timeout=30)
            clients.append(c)
            share = c.get(c.bootstrap(), "share")
            got = c.returned(c.call(share, 0xc0ffee00000000a1, 0))
            assert got.payload is not None, got.error
            d = got.payload.caps[0].import_id
            for _ in range(100):
                ret = c.returned(c.call(d, directory.id, opening.ordinal, params))
                if ret.payload is None:
                    refused = ret.error
                    break
                opened += 1
        (tmp_path / "sandbox" / "go").write_text("")
        assert run.wait_for("[app] opened", timeout=60) == "[app] opened 40 errno 0"
        assert refused is not None and refused.startswith("EMFILE: external clients hold"), \
            (opened, refused)
        assert 0 < opened < 120, opened
        for c in clients:
            c.close()
    finally:
        run.stop()


def test_calls_external_clients_cancel_at_a_busy_callee_do_not_get_a_compartments_refused(
        tmp_path, wsuper):
    """r276: the bound of calls cancelled at a callee and not answered yet
    (router.OVERDUE_LIMIT, 1,024) was one for all its callers.  While spin ran one
    long call, 16 connections sent it 64 calls each and cancelled them (Finish):
    the bound full, relay r's call to spin failed 'overloaded' at once, where it
    should wait for spin.  External clients together take at most half of it now:
    their calls are refused past it, r's waits for spin and is answered."""
    from tests.wireclient import WireClient
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{HERE}/spin.capnp"]
socket = "{sock}"
[compartments.spin]
module = "{HERE}/spin.wat"
exports = "Spin"
external = true
[compartments.spin.limits]
fuel_per_call = 3_000_000_000
[compartments.r]
module = "{HERE}/relay.wat"
exports = "Spin"
external = true
[compartments.r.grants]
next = {{ compartment = "spin" }}
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("all compartments ready")
    spin_id = int(SPIN_ID, 16)
    busy = WireClient(str(sock), timeout=60)
    long_call = busy.call(busy.get(busy.bootstrap(), "spin"), spin_id, 0)   # spins
    flood = []
    for _ in range(16):
        c = WireClient(str(sock), timeout=60)
        spin = c.get(c.bootstrap(), "spin")
        for q in [c.call(spin, spin_id, 1) for _ in range(64)]:
            c.send(c.conn.send_finish(q))
        flood.append(c)
    outside = WireClient(str(sock), timeout=60)
    refused = outside.returned(outside.call(outside.get(outside.bootstrap(), "spin"),
                                            spin_id, 1))
    honest = WireClient(str(sock), timeout=60)
    ret = honest.returned(honest.call(honest.get(honest.bootstrap(), "r"), spin_id, 1))
    assert ret.payload is not None and ret.error is None, ret.error   # it waited for spin
    # (theirs are refused: the flood filled the bound while spin was busy)
    assert refused.error_type == "overloaded" and "calls of external clients cancelled " \
        "there" in refused.error and "limit 512" in refused.error, refused.error
    assert "fuel_per_call" in busy.returned(long_call).error
    for c in (busy, outside, honest, *flood):
        c.close()
    run.stop()
