"""instance = "per_call": every call meets a fresh instance of the module."""
import os

import capnp_schemas
from tests.conftest import EXAMPLES, external_client, run_wsuper

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guests")


def _counts(tmp_path, wsuper, instance, module="counting.wat"):
    sock = tmp_path / f"{instance}.sock"
    (tmp_path / f"{instance}.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{sock}"
[compartments.calc]
module = "{HERE}/{module}"
exports = "Calc"
external = true
instance = "{instance}"
""")
    run = wsuper("up", str(tmp_path / f"{instance}.toml"))
    run.wait_for("ready calc")
    schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))

    async def body(gateway):
        calc = (await gateway.get("calc")).cap.as_interface(schema.Calc)
        return [(await calc.add(1, 1)).sum for _ in range(4)]
    out = external_client(str(sock), body)
    run.stop()
    return out


def test_a_per_call_compartment_keeps_nothing_between_calls(tmp_path, wsuper):
    assert _counts(tmp_path, wsuper, "shared") == [1, 2, 3, 4]
    assert _counts(tmp_path, wsuper, "per_call") == [1, 1, 1, 1]


def test_a_per_call_instance_s_memory_holds_nothing_of_the_call_before(tmp_path, wsuper):
    """guests/leftovers.wat: each call leaves a secret in its memory (and in a page
    it grew, and over a byte a data segment wrote), and tells what it found of
    the call before's.  A per_call engine takes each call's instance from
    wasmtime's pooling allocator (engine.pool_for), whose memory slot is used
    again call after call: what the engine hands the next call must be a fresh
    memory all the same."""
    assert _counts(tmp_path, wsuper, "shared", "leftovers.wat") == [0, 15, 15, 15]
    assert _counts(tmp_path, wsuper, "per_call", "leftovers.wat") == [0, 0, 0, 0]


def test_per_call_needs_an_exported_interface(tmp_path):
    (tmp_path / "s.toml").write_text(f"""
[compartments.app]
module = "{HERE}/counting.wat"
instance = "per_call"
""")
    r = run_wsuper("check", str(tmp_path / "s.toml"))
    assert r.returncode == 2 and "compartments.app.instance: per_call applies to a " \
        "compartment that exports an interface" in r.stderr


def _leftovers(tmp_path, wsuper, instance):
    """guests/reset.wat under `instance`: each step's answer, and its stdout lines."""
    sock = tmp_path / f"r-{instance}.sock"
    (tmp_path / f"r-{instance}.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{sock}"
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.app]
module = "{HERE}/reset.wat"
exports = "Calc"
external = true
instance = "{instance}"
[compartments.app.grants]
calc = {{ compartment = "calc" }}
stdout = {{ host = "log" }}
""")
    run = wsuper("up", str(tmp_path / f"r-{instance}.toml"))
    run.wait_for("all compartments ready")
    schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))

    async def body(gateway):
        app = (await gateway.get("app")).cap.as_interface(schema.Calc)
        out = {}
        out["call, reply left unread"] = (await app.add(1, 0)).sum
        out["reply_read in the next call"] = (await app.add(2, 0)).sum
        out["half a line"] = (await app.add(3, 0)).sum
        out["the rest of it"] = (await app.add(4, 0)).sum
        counter = (await app.add(5, 0)).sum
        out["a handle from the call before"] = (await app.add(6, counter)).sum
        out["release the grant's handle"] = (await app.add(7, 0)).sum
        out["the grant, in the next call"] = (await app.add(8, 0)).sum
        return out
    answers = external_client(str(sock), body)
    run.stop()
    return answers, [line[len("[app] "):] for line in run.lines if line.startswith("[app] ")]


def test_a_per_call_instance_starts_from_the_grants_and_nothing_else(tmp_path, wsuper):
    shared, shared_out = _leftovers(tmp_path, wsuper, "shared")
    fresh, fresh_out = _leftovers(tmp_path, wsuper, "per_call")
    # what a shared instance keeps from call to call ...
    assert shared["reply_read in the next call"] == 0          # the unread reply is still there
    assert shared["a handle from the call before"] == 0        # the Counter still answers
    assert shared["the grant, in the next call"] == -1         # released for good (E_BADHANDLE)
    assert shared_out == ["halfend"]
    # ... a per_call instance does not: no reply pending, no handle but the grants',
    # no half-written line (written out when its call ended), and the grants stay
    assert fresh["call, reply left unread"] == 0
    assert fresh["reply_read in the next call"] == -8          # E_STATE: no reply pending
    assert fresh["a handle from the call before"] == -1        # E_BADHANDLE
    assert fresh["release the grant's handle"] == 0
    assert fresh["the grant, in the next call"] == 0
    assert fresh_out == ["half", "end"]


def test_a_per_call_compartment_out_of_room_for_instances_says_so(tmp_path, wsuper):
    """A per_call call served while others wait (each on a callback to its caller)
    runs in an instance of its own on top of theirs, each with its own memory, in
    the one engine's address space: with the default limits about seven fit.  One
    client holding that many calls (its observer calling sumTo again, or never
    answering) made every other caller's call fail 'failed: ... cannot
    instantiate: Cannot allocate memory (os error 12)': an error of the system's,
    said as if the module could not be instantiated at all, typed as a failure
    where it is a passing overload (as 'nested deeper than 32' is)."""
    sock = tmp_path / "n.sock"
    (tmp_path / "n.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{sock}"
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
external = true
instance = "per_call"
""")
    run = wsuper("up", str(tmp_path / "n.toml"))
    run.wait_for("ready calc")
    schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))

    async def body(gateway):
        calc = (await gateway.get("calc")).cap.as_interface(schema.Calc)
        other = (await gateway.get("calc")).cap.as_interface(schema.Calc)
        seen = {}

        class Deeper(schema.Observer.Server):
            async def step(self, i, partial, **_):
                if seen:
                    return
                try:            # one more call, served on top of the ones waiting
                    await calc.sumTo(1, Deeper())
                except Exception as e:  # noqa: BLE001 - what the call failed with
                    seen["deeper"] = str(e).split("\n")[0]
                    try:
                        await other.add(1, 2)
                    except Exception as e2:  # noqa: BLE001
                        seen["other"] = str(e2).split("\n")[0]
        total = (await calc.sumTo(1, Deeper())).total
        return total, seen, (await other.add(2, 3)).sum
    total, seen, after = external_client(str(sock), body)
    run.stop()
    assert total == 1 and after == 5            # the calls beneath are served on
    for why in (seen["deeper"], seen["other"]):
        assert "overloaded" in why and "Cannot allocate memory" not in why, why
        assert "compartment calc has no room for another instance" in why, why


TAGGED = """(module
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (import "wsuper" "object" (func $object (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))
  (func (export "wsuper_dispatch") (param $obj i32) (param $iface i64) (param $method i32)
        (param $len i32) (param $ncaps i32) (result i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (if (i32.eqz (local.get $obj)) (then        ;; newCounter: the object tagged 42
      (i32.store (i32.const 300) (call $object (i32.const 42)))
      (i64.store (i32.const 200) (i64.const 0x0000000200000000))
      (i64.store (i32.const 208) (i64.const 0x0001000000000000))
      (i64.store (i32.const 216) (i64.const 3))
      (return (call $results_set (i32.const 200) (i32.const 24) (i32.const 300) (i32.const 1)))))
    ;; inc on an object: its tag, and the calls this instance has served
    (i64.store (i32.const 200) (i64.const 0x0000000200000000))
    (i64.store (i32.const 208) (i64.const 0x0000000100000000))
    (i64.store (i32.const 216) (i64.extend_i32_u
      (i32.add (i32.mul (local.get $obj) (i32.const 1000)) (global.get $calls))))
    (call $results_set (i32.const 200) (i32.const 24) (i32.const 0) (i32.const 0))))"""


def test_a_per_call_instance_s_objects_outlive_it_and_are_the_compartment_s(tmp_path, wsuper):
    """What docs/policy-reference.md and guest-abi.md say of per_call's objects:
    one an instance made with object(tag) outlives it, a call on it later runs
    in a new instance (which never made it), and every instance's object(tag)
    is that same object, whichever caller it goes to.  (The docs said nothing one
    call leaves behind reaches the next, and that the tags a call sees are the
    ones you passed to object: a plugin telling its callers apart by tag would
    hand each the same capability.)"""
    sock = tmp_path / "t.sock"
    (tmp_path / "tagged.wat").write_text(TAGGED)
    (tmp_path / "t.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{sock}"
[compartments.tagged]
module = "{tmp_path}/tagged.wat"
exports = "Calc"
external = true
instance = "per_call"
""")
    run = wsuper("up", str(tmp_path / "t.toml"))
    run.wait_for("ready tagged")
    schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))

    async def body(gateway):
        a = (await gateway.get("tagged")).cap.as_interface(schema.Calc)
        b = (await gateway.get("tagged")).cap.as_interface(schema.Calc)
        mine = (await a.newCounter()).counter
        theirs = (await b.newCounter()).counter
        return [(await c.inc(1)).value for c in (mine, theirs, mine)]
    values = external_client(str(sock), body)
    run.stop()
    # each call on tag 42 is the first its (new) instance serves
    assert values == [42001, 42001, 42001]
