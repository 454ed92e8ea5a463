"""Memory protection (issue 16) and probes (issue 15) on one compartment: its module
is rewritten by both (probe sites first, then protection's bulk-memory checks;
wasm.compile_for), probes are switched on and off while it runs, and a write into
its read-only data still traps with the address and the region named, probed or
not, through a plain store and through the check before a memory.fill."""
import json

import pytest

import capnp_schemas
from tests.conftest import external_client, run_wsuper
from tests.integration.test_protect import NA, PROBE_SCHEMA, RO
from tests.integration.test_protect import plugins  # noqa: F401 - the fixture


def _probe(system, *args):
    r = run_wsuper("probe", str(system), *args, timeout=60)
    assert r.returncode == 0, r.stderr
    return r


def _calls(sock, cases):
    """Each case run by the server: its result text, or the error it failed with."""
    schema = capnp_schemas.load(PROBE_SCHEMA)

    async def body(gateway):
        server = (await gateway.get("server")).cap.as_interface(schema.Probe)
        out = []
        for case in cases:
            try:
                out.append((await server.run(case)).result)
            except Exception as e:  # noqa: BLE001 - the call's failure is the answer
                out.append(f"error: {e}")
        return out
    return external_client(str(sock), body)


@pytest.mark.parametrize("instance", ["shared", "per_call"])
def test_probes_switched_on_and_off_on_a_protected_compartment(tmp_path, plugins, wsuper,  # noqa: F811
                                                               instance):
    sock = tmp_path / "s.sock"
    system = tmp_path / "system.toml"
    system.write_text(f"""
[system]
schemas = ["{PROBE_SCHEMA}"]
socket = "{sock}"
[compartments.server]
module = "{plugins['server']}"
exports = "Probe"
external = true
instance = "{instance}"
protect = {{ no_access = "4 KiB", read_only = "auto" }}
instrument = ["functions", "stores"]
""")
    run = wsuper("up", str(system))
    run.wait_for("ready server")
    traps = {
        "literal": f"write to read-only memory at 0x1000 ({RO}) (in probe_serve_run)",
        "fill": f"write to read-only memory at 0x1002 ({RO}) (in probe_serve_run)",
        "null-write": f"access to no-access memory at 0x0 ({NA}) (in probe_serve_run)",
    }
    cases = ["ok", *traps, "ok"]

    def check(results, first_call):
        assert results[0].startswith(f"ok: call {first_call} of this instance"), results
        for case, got in zip(traps, results[1:]):
            assert "compartment server trapped: " + traps[case] in got, (case, got)
        assert results[-1].endswith("ops[1](2,3)=5"), results    # its const table intact

    check(_calls(sock, cases), 1)                       # probes off
    _probe(system, "server", "add", "f", "--point", "functions", "--functions",
           "probe_serve_run")
    _probe(system, "server", "add", "s", "--point", "stores", "--functions",
           "probe_serve_run", "--events")
    shared = instance == "shared"
    check(_calls(sock, cases), len(cases) + 1 if shared else 1)      # probes on: the clones
    probes = {p["name"]: p for p in json.loads(
        _probe(system, "server", "list", "--json").stdout)}
    assert probes["f"]["count"] == len(cases)          # every entry, trapped ones included
    assert probes["s"]["count"] > 0
    _probe(system, "server", "remove", "f")
    _probe(system, "server", "remove", "s")
    # off again: the same traps, and a shared instance kept its state through it all
    check(_calls(sock, cases), 2 * len(cases) + 1 if shared else 1)
    assert "no probes" in run_wsuper("probe", str(system), "server", "list").stdout
    run.stop()
    assert not any("Traceback" in l for l in run.lines), run.lines


def test_the_rewritten_module_validates_and_keeps_its_names(plugins):  # noqa: F811
    """Both rewritings of the same bytes, in the engine's order: valid for wasmtime,
    every original function name kept, protection's checks named as such."""
    import wasmtime

    from compartments import instrument, protect, wasm
    engine = wasmtime.Engine(wasm.engine_config())
    setting = protect.Setting(4096, protect.AUTO)
    module, sites, layout = wasm.compile_for(engine, plugins["server"], ("functions", "stores"),
                                             setting, protect.STATIC_MEMORY)
    assert layout.regions == (4096, 4096, 8192) and layout.checks and layout.error is None
    with open(plugins["server"], "rb") as f:
        original = f.read()
    rewritten, _sites = instrument.rewrite(original, ("functions", "stores"))
    plan, bulk = protect.plan(original, setting, protect.STATIC_MEMORY)
    assert bulk and plan.regions == layout.regions
    both, _layout = protect.add_checks(rewritten, plan, setting)
    wasmtime.Module.validate(engine, both)
    before, after = instrument.function_names(original), instrument.function_names(both)
    imported = sites.imported
    defined = sum(1 for k in sites.kinds if instrument.KINDS[k] == "function")
    assert defined > 10 and len(before) > 10
    for i, name in before.items():        # the two probe hooks are imported after the rest
        assert after[i if i < imported else i + 2] == name
    checks = sorted(i for i, n in after.items() if protect.is_check(n))
    # protection's checks come after every function and every probed clone
    assert checks and checks[0] == imported + 2 + 2 * defined + 2
