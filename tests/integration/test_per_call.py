"""instance = "per_call": every call meets a fresh instance of the module."""
import os

import capnp_schemas
from tests.conftest import EXAMPLES, external_client, run_wsuper

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guests")


def _counts(tmp_path, wsuper, instance):
    sock = tmp_path / f"{instance}.sock"
    (tmp_path / f"{instance}.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{sock}"
[compartments.calc]
module = "{HERE}/counting.wat"
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


def test_per_call_needs_an_exported_interface(tmp_path):
    (tmp_path / "s.toml").write_text(f"""
[compartments.app]
module = "{HERE}/counting.wat"
instance = "per_call"
""")
    r = run_wsuper("check", str(tmp_path / "s.toml"))
    assert r.returncode == 2 and "compartments.app.instance: per_call applies to a " \
        "compartment that exports an interface" in r.stderr
