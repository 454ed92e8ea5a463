"""What a legitimate engine does still works inside its confinement.

The seccomp allow-list (compartments/seccomp.py) refuses every system call a
running engine was not seen to make.  These are the paths a refused call
would break: memory growth (within and beyond wasmtime's reservation), traps
(each signal wasmtime turns into one), the CPU budget, a fresh instance per
call, the process clock, stderr, and the socket, in a real engine under
`wsuper up`."""
import capnp
import pytest

import capnp_schemas
from tests.conftest import EXAMPLES, external_client
from tests.integration.guests import CALC_ID, HERE, program

# add(a, b) of guests/paths.wat: a picks the path
PATHS = [
    (0, 5, 5),                                   # a plain answer
    (1, 0, 2),                                   # memory.grow by one page
    (2, 0, 1600 + 77),                           # to 100 MiB, past the 64 MiB reservation
    (3, 0, "wasm `unreachable` instruction executed"),
    (4, 0, "out of bounds memory access"),       # SIGSEGV inside wasm
    (5, 0, "integer divide by zero"),
    (6, 0, "call stack exhausted"),              # the guard page of the native stack
    (7, 0, "used up its CPU budget"),            # fuel
    (8, 0, 1),                                   # CLOCK_PROCESS_CPUTIME_ID: a system call
]


@pytest.fixture
def paths_system(tmp_path, wsuper, monkeypatch):
    monkeypatch.setenv("WSUPER_STATS", "1")      # engines then write call-stats to stderr
    (tmp_path / "prog.wat").write_text(program(f"""
    (local.set $h (call $lookup (i32.const 200) (i32.const 5)))
    (call $log_int (i32.const 300) (i32.const 6)
          (call $call0 (local.get $h) (i64.const {CALC_ID}) (i32.const 0)))
    """, {"paths": 200, "called": 300}))
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{sock}"
[compartments.paths]
module = "{HERE}/paths.wat"
exports = "Calc"
external = true
limits = {{ memory = "256MiB", fuel_per_call = 50_000_000 }}
grants = {{ clock = {{ host = "clock" }} }}
[compartments.fresh]
module = "{HERE}/paths.wat"
exports = "Calc"
external = true
instance = "per_call"
limits = {{ memory = "256MiB", fuel_per_call = 50_000_000 }}
grants = {{ clock = {{ host = "clock" }} }}
[compartments.prog]
module = "prog.wat"
[compartments.prog.grants]
log = {{ host = "log" }}
paths = {{ compartment = "paths" }}
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready paths")
    run.wait_for("ready fresh")
    return run, str(sock)


@pytest.mark.parametrize("name", ["paths", "fresh"])
def test_every_path_of_a_legitimate_engine_works_in_its_confinement(paths_system, name):
    run, sock = paths_system
    schema = capnp_schemas.load(f"{EXAMPLES}/calc.capnp")

    async def body(gateway):
        calc = (await gateway.get(name)).cap.as_interface(schema.Calc)
        out = []
        for a, b, _want in PATHS:
            try:
                out.append((await calc.add(a, b)).sum)
            except capnp.KjException as e:
                out.append(e.description)
            out.append((await calc.add(0, 42)).sum)        # and it is still there
        return out

    got = external_client(sock, body)
    for (a, _b, want), answer, alive in zip(PATHS, got[::2], got[1::2]):
        assert alive == 42, (a, got)
        if isinstance(want, int):
            assert answer == want, (a, answer)
        else:
            assert isinstance(answer, str) and want in answer, (a, answer)
    # the engine wrote its stderr (the program's call times) and nobody died
    assert run.wait_for("[prog] called").strip() == "[prog] called 0", run.lines
    run.wait_for("[prog] stderr: call-stats n=2 ")        # the call, and its log line
    assert not [line for line in run.lines if "exited with code" in line or "killed by" in line]
