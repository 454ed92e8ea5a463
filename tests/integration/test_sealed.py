"""A compartment whose interface carries no capability (none anywhere in its
schema) takes none in calls, whatever the caller's cap table holds: what
`wsuper check --reach` says of such a grant holds in the running system."""
import os

import capnp_schemas
from compartments import abi
from tests.conftest import EXAMPLES, external_client, run_wsuper

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guests")

SEALED = """@0xd5a9f7e3b2c88e71;
interface Sealed @0xd5a1ed0000000001 { add @0 (a :Int32) -> (sum :Int32); }
"""


def test_a_capability_passed_to_an_object_whose_schema_carries_none_is_refused(
        tmp_path, wsuper):
    """app passes an object of its own to secret, whose Sealed interface has no
    capability anywhere: reach says nobody but app could reach app's objects,
    yet secret got it (a cap table is the sender's, and the router forwarded it
    whatever the schema).  Now the call is denied, and secret never sees it."""
    (tmp_path / "sealed.capnp").write_text(SEALED)
    sock = tmp_path / "s.sock"
    (tmp_path / "s.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp", "sealed.capnp"]
socket = "{sock}"
[compartments.secret]
module = "{HERE}/passer.wat"
exports = "Sealed"
[compartments.app]
module = "{HERE}/passer.wat"
exports = "Calc"
external = true
[compartments.app.grants]
secret = {{ compartment = "secret" }}
log = {{ host = "log" }}
""")
    reach = run_wsuper("check", str(tmp_path / "s.toml"), "--reach", "app:log")
    assert reach.returncode == 0, reach.stderr
    assert "could reach app:log: app\n" in reach.stdout, reach.stdout
    run = wsuper("up", str(tmp_path / "s.toml"))
    run.wait_for("all compartments ready")
    schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))

    async def body(gateway):
        app = (await gateway.get("app")).cap.as_interface(schema.Calc)
        return [(await app.add(1, 1)).sum for _ in range(2)]
    got = external_client(str(sock), body)
    run.stop()
    assert got == [abi.E_DENIED] * 2, got


def test_a_sealed_main_object_handed_on_by_its_own_compartment_takes_none(tmp_path, wsuper):
    """s, whose Sealed interface carries no capability, hands its own main object
    (wsuper.object(0)) to t across its grant of Calc, which carries some; t calls
    it with an object of its own.  s's main object got it (answered 1000 + 1): t
    held a plain object of s's, and its calls passed none of the proxy's checks.
    sealx hands it on once started (a call on it is a call on the proxy: denied);
    sealinit from its _initialize, before start's answer gives the proxy its main
    object (object(0) is refused then: E_STATE, and t is never called)."""
    (tmp_path / "sealed.capnp").write_text(SEALED)
    sock = tmp_path / "s.sock"
    results = {}
    for guest, client in (("sealx", "a"), ("sealinit", "t")):
        (tmp_path / f"{guest}.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp", "sealed.capnp"]
socket = "{sock}"
[compartments.s]
module = "{HERE}/{guest}.wat"
exports = "Sealed"
[compartments.s.grants]
t = {{ compartment = "t" }}
[compartments.t]
module = "{HERE}/{guest}.wat"
exports = "Calc"
external = {"true" if client == "t" else "false"}
[compartments.a]
module = "{HERE}/{guest}.wat"
exports = "Calc"
external = {"true" if client == "a" else "false"}
[compartments.a.grants]
s = {{ compartment = "s" }}
""")
        run = wsuper("up", str(tmp_path / f"{guest}.toml"))
        run.wait_for("all compartments ready")
        schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))

        async def body(gateway, client=client):
            calc = (await gateway.get(client)).cap.as_interface(schema.Calc)
            return [(await calc.add(1, 1)).sum for _ in range(2)]
        results[guest] = external_client(str(sock), body)
        run.stop()
    assert results == {"sealx": [abi.E_DENIED] * 2, "sealinit": [-77] * 2}, results
