"""Bad system files are refused before anything starts: one line, file:line, key, exit 2."""
import os

import pytest

from tests.conftest import EXAMPLES, run_wsuper

CALC = os.path.join(EXAMPLES, "calc.wat")
SCHEMA = os.path.join(EXAMPLES, "calc.capnp")
GOOD = f"""[system]
schemas = ["{SCHEMA}"]

[compartments.calc]
module = "{CALC}"
exports = "Calc"
"""

CASES = {
    "invalid_toml": ("[compartments.calc\nmodule = 1\n", 1, "", "invalid TOML"),
    "missing_module": (GOOD.replace(CALC, "/nonexistent/x.wasm"), 5,
                       "compartments.calc.module", "does not exist"),
    "unknown_interface": (GOOD.replace('exports = "Calc"', 'exports = "Nope"'), 6,
                          "compartments.calc.exports", "unknown interface 'Nope'"),
    "duplicate_compartment": (GOOD + f'\n[compartments.calc]\nmodule = "{CALC}"\n', 8, "",
                              "invalid TOML"),
    "unknown_key": (GOOD + "colour = 'red'\n", 7, "compartments.calc.colour", "unknown key"),
    "grant_of_nothing": (GOOD + "\n[compartments.calc.grants]\nx = { compartment = \"ghost\" }\n",
                         9, "compartments.calc.grants.x", "no compartment named 'ghost'"),
    "deep_nesting": ("x = " + "[" * 5000 + "]" * 5000 + "\n", None, "", "nested too deeply"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_system_file_is_refused_with_one_clear_line(tmp_path, name):
    text, line, key, reason = CASES[name]
    path = tmp_path / "system.toml"
    path.write_text(text)
    r = run_wsuper("up", str(path))
    assert r.returncode == 2
    assert r.stdout == ""                     # nothing started
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"wsuper: error: {path}" + (f":{line}:" if line else ":")), err
    assert key in err and reason in err


def test_module_importing_anything_else_is_refused_naming_the_import(tmp_path):
    (tmp_path / "m.wat").write_text(
        '(module (import "env" "open" (func (param i32) (result i32))) '
        '(memory (export "memory") 1) (func (export "_start")))')
    (tmp_path / "system.toml").write_text('[compartments.m]\nmodule = "m.wat"\n')
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 2
    assert "imports env.open, which is not granted" in r.stderr
    assert ":2: compartments.m.module:" in r.stderr


def test_not_wasm_is_refused(tmp_path):
    (tmp_path / "m.wasm").write_bytes(b"\x7fELF not wasm")
    (tmp_path / "system.toml").write_text('[compartments.m]\nmodule = "m.wasm"\n')
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 2 and "is not a valid wasm module" in r.stderr


def test_a_bad_path_in_a_policy_file_is_reported_in_that_file(tmp_path):
    (tmp_path / "p.toml").write_text('[grants]\ndata = { host = "directory", path = "/nonexistent/x" }\n')
    (tmp_path / "m.wat").write_text('(module (memory (export "memory") 1) (func (export "_start")))')
    (tmp_path / "system.toml").write_text('[compartments.m]\nmodule = "m.wat"\npolicy = "p.toml"\n')
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"wsuper: error: {tmp_path}/p.toml:2: grants.data.path: "
                                f"/nonexistent/x is not an existing directory")


def test_an_engine_that_cannot_start_names_why(tmp_path):
    (tmp_path / "big.wat").write_text('(module (memory (export "memory") 32) (func (export "_start")))')
    (tmp_path / "system.toml").write_text('[compartments.big]\nmodule = "big.wat"\nrestart = "never"\n'
                                          '[compartments.big.limits]\nmemory = "1MiB"\n')
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 1
    assert ("wsuper: compartment big failed to start: engine exited with code 3: error: cannot "
            "instantiate") in r.stderr
    assert "memory minimum size of 32 pages exceeds memory limits" in r.stderr


SCHEMAS = {"syntax.capnp": ("@0xbf5147cbbecf40c1;\ninterface Foo {\n  bar @0 ( -> ();\n}\n",
                            ":2: Parse error."),
           "noid.capnp": ("interface Foo {\n  bar @0 () -> ();\n}\n",
                          ": File does not declare an ID.")}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@pytest.mark.parametrize("command", ["check", "up", "bindgen", "build"])
def test_a_schema_that_does_not_parse_is_an_error_not_an_abort(tmp_path, name, command):
    text, expected = SCHEMAS[name]
    (tmp_path / name).write_text(text)
    (tmp_path / "m.wat").write_text('(module (memory (export "memory") 1) '
                                    '(func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) '
                                    '(result i32) i32.const 0))')
    (tmp_path / "p.c").write_text("int x;\n")
    (tmp_path / "system.toml").write_text(f'[system]\nschemas = ["{name}"]\n'
                                          f'[compartments.m]\nmodule = "m.wat"\nexports = "Foo"\n')
    args = {"check": ["check", str(tmp_path / "system.toml")],
            "up": ["up", str(tmp_path / "system.toml")],
            "bindgen": ["bindgen", str(tmp_path / name), "-o", str(tmp_path / "out")],
            "build": ["build", str(tmp_path / "p.c"), "--schema", str(tmp_path / name),
                      "-o", str(tmp_path / "p.wasm")]}[command]
    r = run_wsuper(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"wsuper: error: {tmp_path / name}{expected}"), line
    assert "terminate called" not in r.stderr
